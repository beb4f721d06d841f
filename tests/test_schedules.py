"""Tests for diffusion_jax.schedules against float64 numpy references of the papers' formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from diffusion_jax import schedules as S

T_GRID = np.linspace(0.0, 1.0, 257)


# ---------------------------------------------------------------------------
# float64 references, written from SPEC.md independently of the module.


def ref_sigmoid(t, start=-3.0, end=3.0, tau=1.0, clip_min=1e-9):
  sig = lambda z: 1.0 / (1.0 + np.exp(-z))
  v_start, v_end = sig(start / tau), sig(end / tau)
  out = sig((t * (end - start) + start) / tau)
  return np.clip((v_end - out) / (v_end - v_start), clip_min, 1.0)


def ref_cosine(t, start=0.0, end=1.0, tau=1.0, clip_min=1e-9):
  c = lambda u: np.abs(np.cos(u * np.pi / 2)) ** (2 * tau)
  v_start, v_end = c(start), c(end)
  out = c(t * (end - start) + start)
  return np.clip((v_end - out) / (v_end - v_start), clip_min, 1.0)


def ref_karras(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
  i = np.arange(n)
  s = (
    sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
  ) ** rho
  return np.append(s, 0.0)


# ---------------------------------------------------------------------------
# Chen 2023 Algorithm 1.


@pytest.mark.parametrize(
  'name,kwargs,ref',
  [
    ('linear', {}, lambda t: np.clip(1 - t, 1e-9, 1)),
    ('sigmoid', {}, ref_sigmoid),
    ('sigmoid', {'start': 0.0, 'end': 3.0, 'tau': 0.3}, ref_sigmoid),
    ('sigmoid', {'start': -3.0, 'end': 3.0, 'tau': 1.1}, ref_sigmoid),
    ('cosine', {}, ref_cosine),
    ('cosine', {'start': 0.2, 'end': 1.0, 'tau': 1.0}, ref_cosine),
    ('cosine', {'start': 0.0, 'end': 0.9, 'tau': 2.0}, ref_cosine),
    ('cosine', {'start': 0.0, 'end': 1.0, 'tau': 0.7}, ref_cosine),
  ],
)
def test_gamma_schedules_match_formula(name, kwargs, ref):
  fn = S.get_gamma_schedule(name, **kwargs)
  got = np.asarray(fn(jnp.asarray(T_GRID, jnp.float32)), np.float64)
  want = ref(T_GRID, **kwargs)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  assert got[0] == pytest.approx(1.0, abs=1e-6)
  assert got[-1] == pytest.approx(1e-9, rel=1e-3)
  assert np.all(got >= 1e-9 * (1 - 1e-6)) and np.all(got <= 1.0)
  assert np.all(np.diff(got) <= 1e-7), 'gamma must be non-increasing in t'
  # With a larger clip_min the floor is that value.
  clipped = np.asarray(S.get_gamma_schedule(name, clip_min=0.05, **kwargs)(T_GRID))
  assert clipped.min() == pytest.approx(0.05, rel=1e-6)


def test_named_functions_equal_registry():
  t = jnp.asarray(T_GRID[:9], jnp.float32)
  np.testing.assert_array_equal(S.simple_linear_schedule(t), S.get_gamma_schedule('linear')(t))
  np.testing.assert_array_equal(
    S.sigmoid_schedule(t, 0.0, 3.0, 0.5),
    S.get_gamma_schedule('sigmoid', start=0.0, end=3.0, tau=0.5)(t),
  )
  np.testing.assert_array_equal(S.cosine_schedule(t), S.get_gamma_schedule('cosine')(t))


# ---------------------------------------------------------------------------
# logSNR and EDM sigma conversions.


@pytest.mark.parametrize('scale', [1.0, 0.5, 0.3, 2.0])
def test_logsnr_formula_and_shift(scale):
  g = np.linspace(0.02, 0.98, 49)
  got = np.asarray(S.logsnr_from_gamma(g, scale), np.float64)
  want = np.log(g * scale**2 / (1 - g))
  np.testing.assert_allclose(got, want, atol=2e-6)
  shift = got - np.asarray(S.logsnr_from_gamma(g, 1.0), np.float64)
  np.testing.assert_allclose(shift, 2 * math.log(scale), atol=2e-6)
  # The SNR of x_t = sqrt(g) b x0 + sqrt(1 - g) eps is (signal power) / (noise power).
  np.testing.assert_allclose(np.exp(want), (np.sqrt(g) * scale) ** 2 / (1 - g), rtol=1e-12)
  np.testing.assert_allclose(S.gamma_from_logsnr(got, scale), g, atol=1e-6)


@pytest.mark.parametrize('scale', [1.0, 0.5, 2.0])
def test_edm_sigma_conversions(scale):
  g = np.linspace(0.02, 0.98, 49)
  sigma = np.asarray(S.gamma_to_edm_sigma(g, scale), np.float64)
  np.testing.assert_allclose(sigma, np.sqrt(1 - g) / (np.sqrt(g) * scale), rtol=2e-6)
  np.testing.assert_allclose(S.edm_sigma_to_gamma(sigma, scale), g, atol=1e-6)
  logsnr = S.logsnr_from_gamma(g, scale)
  np.testing.assert_allclose(S.logsnr_to_edm_sigma(logsnr), sigma, rtol=5e-6)
  np.testing.assert_allclose(S.edm_sigma_to_logsnr(sigma), logsnr, atol=5e-6)


# ---------------------------------------------------------------------------
# Discrete schedules.


def test_linear_betas_and_tables():
  betas = S.linear_betas(1000)
  assert betas.dtype == np.float64 and betas.shape == (1000,)
  assert betas[0] == 1e-4 and betas[-1] == 0.02
  np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-9)
  np.testing.assert_array_equal(S.get_betas('linear', 1000), betas)
  sched = S.DiscreteSchedule.from_betas(betas)
  abar = np.cumprod(1 - betas)
  np.testing.assert_allclose(sched.alphas_cumprod, abar, rtol=1e-12)
  np.testing.assert_allclose(sched.edm_sigmas, np.sqrt((1 - abar) / abar), rtol=1e-12)
  np.testing.assert_array_equal(sched.timesteps, np.arange(1000))
  # Posterior q(x_{t-1} | x_t, x0) by Gaussian conditioning on the joint of (x_{t-1}, x_t).
  prev = np.append(1.0, abar[:-1])
  cov = np.sqrt(1 - betas) * (1 - prev)  # Cov(x_{t-1}, x_t | x0)
  coef2 = cov / (1 - abar)
  coef1 = np.sqrt(prev) - coef2 * np.sqrt(abar)
  var = (1 - prev) - cov**2 / (1 - abar)
  np.testing.assert_allclose(sched.posterior_mean_coef1, coef1, rtol=1e-9, atol=1e-14)
  np.testing.assert_allclose(sched.posterior_mean_coef2, coef2, rtol=1e-9, atol=1e-14)
  np.testing.assert_allclose(sched.posterior_variance, var, rtol=1e-7, atol=1e-14)
  assert sched.posterior_variance[0] == 0.0
  np.testing.assert_allclose(sched.posterior_log_variance_clipped[1:], np.log(var[1:]), rtol=1e-9)
  assert sched.posterior_log_variance_clipped[0] == sched.posterior_log_variance_clipped[1]


def test_cosine_betas_follow_alpha_bar_and_prior_kl_vanishes():
  T, s = 1000, 0.008
  betas = S.cosine_betas(T)
  np.testing.assert_array_equal(S.get_betas('cosine', T), betas)
  assert betas.max() <= 0.999 and betas[-1] == 0.999
  f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
  abar = np.cumprod(1 - betas)
  steps = np.arange(1, T + 1)
  # Only the capped final step departs from abar_t = f(t) / f(0).
  np.testing.assert_allclose(abar[:-1], (f(steps) / f(0))[:-1], rtol=1e-9)
  # L_T = KL(q(x_T | x0) || N(0, I)) per dimension, worst case |x0| = 1.
  a = abar[-1]
  kl = 0.5 * (a * 1.0 + (1 - a) - 1 - np.log(1 - a))
  assert a < 1e-8 and 0 <= kl < 1e-8
  assert kl * 3072 / np.log(2) < 1e-4  # bits for a whole CIFAR-10 image


def test_respace_reproduces_alphas_cumprod():
  full = S.DiscreteSchedule.from_name('cosine', 200)
  kept = S.space_timesteps(200, 25)
  sub = full.respace(kept)
  assert sub.num_timesteps == 25
  np.testing.assert_allclose(sub.alphas_cumprod, full.alphas_cumprod[kept], rtol=1e-12)
  np.testing.assert_array_equal(sub.timesteps, kept)
  np.testing.assert_allclose(sub.edm_sigmas, full.edm_sigmas[kept], rtol=1e-10)
  # Respacing twice keeps the original indices.
  sub2 = sub.respace(np.array([0, 3, 24]))
  np.testing.assert_array_equal(sub2.timesteps, kept[[0, 3, 24]])
  np.testing.assert_allclose(sub2.alphas_cumprod, full.alphas_cumprod[kept[[0, 3, 24]]], rtol=1e-9)
  # Identity respacing reproduces the betas; equality and hashing follow the tables.
  same = full.respace(np.arange(200))
  np.testing.assert_allclose(same.betas, full.betas, rtol=1e-9)
  assert S.DiscreteSchedule.from_name('cosine', 200) == full
  assert hash(S.DiscreteSchedule.from_name('cosine', 200)) == hash(full)
  assert sub != full
  # Gathering at integer indices for a [B, H, W, C] batch.
  got = full.take('alphas_cumprod', jnp.array([0, 5, 199]), ndim=4)
  assert got.shape == (3, 1, 1, 1)
  np.testing.assert_allclose(got[:, 0, 0, 0], full.alphas_cumprod[[0, 5, 199]], rtol=1e-6)


@pytest.mark.parametrize(
  'spec,want',
  [
    (10, np.round(np.arange(10) * 999 / 9)),
    ('ddim50', np.arange(0, 1000, 20)),
    ('ddim1000', np.arange(1000)),
    (('leading', 10), np.arange(0, 1000, 100)),
    (('trailing', 10), np.arange(99, 1000, 100)),
    (('linspace', 10), np.round(np.linspace(0, 999, 10))),
    ('1,2', np.array([0, 500, 999])),
    ([1000], np.arange(1000)),
  ],
)
def test_space_timesteps(spec, want):
  got = S.space_timesteps(1000, spec)
  np.testing.assert_array_equal(got, want.astype(np.int64))
  assert got.min() >= 0 and got.max() <= 999 and np.all(np.diff(got) > 0)


def test_ddim_spacings_always_give_n_distinct_steps():
  for T in range(1, 61):
    for n in range(1, T + 1):
      for mode in ('leading', 'trailing', 'linspace'):
        got = S.space_timesteps(T, (mode, n))
        assert got.size == n and got.min() >= 0 and got.max() <= T - 1, (T, n, mode)
        assert np.all(np.diff(got) > 0), (T, n, mode)
        if mode == 'trailing':
          assert got[-1] == T - 1
        else:
          assert got[0] == 0


def test_discrete_schedule_is_a_static_jit_argument():
  traces = []

  @jax.jit
  def f(x, schedule):
    traces.append(1)
    return x * schedule.take('alphas_cumprod', jnp.array([0, 9]))

  a = S.DiscreteSchedule.from_name('cosine', 10)
  np.testing.assert_allclose(f(1.0, a), a.alphas_cumprod[[0, 9]], rtol=1e-6)
  f(2.0, S.DiscreteSchedule.from_name('cosine', 10))  # equal tables: cached
  assert len(traces) == 1
  f(1.0, a.respace(np.array([0, 4, 9])))  # new tables: a new trace
  assert len(traces) == 2


def test_space_timesteps_sections():
  # iDDPM: '10,15,20' over T = 1000 gives 45 steps in three sections of 334, 333, 333.
  got = S.space_timesteps(1000, '10,15,20')
  assert got.size == 45
  assert np.sum(got < 334) == 10 and np.sum((got >= 334) & (got < 667)) == 15
  assert {0, 333, 334, 666, 667, 999} <= set(got.tolist())


# ---------------------------------------------------------------------------
# Improved DDPM code interop: float64 transcriptions of its `gaussian_diffusion.py`
# (get_named_beta_schedule, betas_for_alpha_bar) and `respace.py` (space_timesteps).


def ref_linear_betas(T):
  scale = 1000 / T
  return np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)


def ref_cosine_betas(T, max_beta=0.999):
  abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.array([min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)])


def ref_space_timesteps(T, section_counts):
  if isinstance(section_counts, str):
    if section_counts.startswith('ddim'):
      n = int(section_counts[4:])
      for k in range(1, T):
        if len(range(0, T, k)) == n:
          return sorted(range(0, T, k))
      return None  # the reference raises
    section_counts = [int(c) for c in section_counts.split(',')]
  size_per, extra = T // len(section_counts), T % len(section_counts)
  start, steps = 0, []
  for i, count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    frac = 1 if count <= 1 else (size - 1) / (count - 1)
    cur = 0.0
    for _ in range(count):
      steps.append(start + round(cur))
      cur += frac
    start += size
  return sorted(set(steps))


@pytest.mark.parametrize('T', [20, 50, 1000, 4000])
def test_linear_and_cosine_betas_match_improved_diffusion(T):
  np.testing.assert_array_equal(S.get_betas('linear', T), ref_linear_betas(T))
  np.testing.assert_allclose(S.get_betas('cosine', T), ref_cosine_betas(T), rtol=1e-14, atol=0)
  if T == 1000:  # DDPM's own schedule: the scale is exactly 1
    np.testing.assert_array_equal(S.get_betas('linear', T), np.linspace(1e-4, 0.02, 1000))
  else:  # unscaled endpoints are a different schedule (the test can tell)
    assert not np.allclose(S.linear_betas(T, reference_steps=None), ref_linear_betas(T))
    np.testing.assert_array_equal(
      S.linear_betas(T, reference_steps=None), np.linspace(1e-4, 0.02, T)
    )
  if T == 4000:
    assert S.get_betas('linear', T)[0] == pytest.approx(2.5e-5, rel=1e-15)
    assert S.get_betas('linear', T)[-1] == pytest.approx(0.005, rel=1e-15)


def test_linear_betas_too_short_chain_names_the_fix():
  with pytest.raises(ValueError, match='num_timesteps >= 20'):
    S.linear_betas(10)


def test_space_timesteps_match_improved_diffusion_for_every_count():
  for T, counts in [(1000, range(1, 1001)), (4000, [1, 2, 25, 50, 100, 250, 333, 999, 4000])]:
    for n in counts:
      want = ref_space_timesteps(T, [n])
      np.testing.assert_array_equal(S.space_timesteps(T, n), want, err_msg=f'T={T} n={n}')
      np.testing.assert_array_equal(S.space_timesteps(T, str(n)), want)
  for T in (7, 37, 250, 1001):
    for n in range(1, T + 1, max(1, T // 50)):
      np.testing.assert_array_equal(S.space_timesteps(T, n), ref_space_timesteps(T, [n]))
  for T, spec in [
    (1000, '10,15,20'),
    (1000, '0,5'),
    (4000, '3,7,11,2'),
    (300, [10, 15, 20]),
    (1001, '21,23,31'),
  ]:
    np.testing.assert_array_equal(S.space_timesteps(T, spec), ref_space_timesteps(T, spec))
  # An accumulated float stride is not round(j * stride): e.g. 21 steps out of 1000.
  stride = 999 / 20
  assert [round(j * stride) for j in range(21)] != ref_space_timesteps(1000, [21])


def test_ddim_spacing_matches_improved_diffusion():
  for T in (10, 1000):
    for n in range(1, T + 1):
      want = ref_space_timesteps(T, f'ddim{n}')
      if want is None:
        with pytest.raises(ValueError, match=f'ddim{n}'):
          S.space_timesteps(T, f'ddim{n}')
      else:
        np.testing.assert_array_equal(S.space_timesteps(T, f'ddim{n}'), want)
  with pytest.raises(ValueError, match='ddim1'):  # stride T is not tried, as in the reference
    S.space_timesteps(1000, 'ddim1')


@pytest.mark.parametrize('T', [1000, 4000, 50])
def test_scale_timesteps(T):
  t = jnp.array([0, 1, 7, T - 1], jnp.float32)
  want = np.asarray(t, np.float32) * np.float32(1000.0 / T)
  np.testing.assert_array_equal(S.scale_timesteps(t, T), want)
  np.testing.assert_array_equal(S.scale_timesteps(t, T, rescale=False), t)
  if T == 4000:
    np.testing.assert_array_equal(S.scale_timesteps(t, T), t / 4)


# ---------------------------------------------------------------------------
# EDM.


@pytest.mark.parametrize(
  'n,kwargs',
  [(18, {}), (256, {}), (7, {'sigma_min': 0.02, 'sigma_max': 100.0, 'rho': 3.0}), (2, {})],
)
def test_karras_sigmas(n, kwargs):
  got = S.karras_sigmas(n, **kwargs)
  assert got.shape == (n + 1,) and got.dtype == jnp.float32
  want = ref_karras(n, **kwargs)
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-6, atol=0)
  assert got[-1] == 0.0
  assert got[0] == np.float32(kwargs.get('sigma_max', 80.0))
  assert got[n - 1] == np.float32(kwargs.get('sigma_min', 0.002))
  assert np.all(np.diff(np.asarray(got)) < 0)


def test_karras_sigmas_single_level_and_traced():
  np.testing.assert_array_equal(S.karras_sigmas(1), np.array([80.0, 0.0], np.float32))
  traced = jax.jit(lambda hi: S.karras_sigmas(18, 0.002, hi))(80.0)
  np.testing.assert_allclose(traced, ref_karras(18), rtol=2e-6)


def test_vp_ve_sigma():
  t = np.linspace(1e-3, 1.0, 101)
  vp = np.asarray(S.vp_sigma(t), np.float64)
  np.testing.assert_allclose(vp, np.sqrt(np.exp(19.9 * t**2 / 2 + 0.1 * t) - 1), rtol=2e-6)
  assert np.all(np.diff(vp) > 0)
  assert vp[-1] == pytest.approx(152.0, rel=2e-3)  # EDM's VP sigma_max
  np.testing.assert_allclose(S.vp_sigma_inverse(vp), t, rtol=2e-5, atol=1e-7)
  sig = np.geomspace(0.002, 80, 50)
  np.testing.assert_allclose(S.vp_sigma(S.vp_sigma_inverse(sig)), sig, rtol=2e-5)
  np.testing.assert_allclose(S.vp_scale(t), 1 / np.sqrt(1 + vp**2), rtol=2e-6)
  grad = jax.vmap(jax.grad(lambda u: S.vp_sigma(u)))(jnp.asarray(t[1:-1], jnp.float32))
  np.testing.assert_allclose(S.vp_sigma_deriv(t[1:-1]), grad, rtol=1e-4)
  tv = np.linspace(4e-4, 1e4, 101)
  np.testing.assert_allclose(S.ve_sigma(tv), np.sqrt(tv), rtol=1e-6)
  np.testing.assert_allclose(S.ve_sigma_inverse(S.ve_sigma(tv)), tv, rtol=1e-6)


# ---------------------------------------------------------------------------
# NCSNv2.


def test_geometric_sigmas_and_technique_1():
  sig = S.geometric_sigmas(50.0, 0.01, 232)
  assert sig.shape == (232,)
  np.testing.assert_allclose(sig, np.geomspace(50.0, 0.01, 232), rtol=2e-6)
  ratio = S.ncsn_sigma_ratio(50.0, 0.01, 232)
  np.testing.assert_allclose(np.asarray(sig[:-1]) / np.asarray(sig[1:]), ratio, rtol=1e-5)
  x = np.random.default_rng(0).normal(size=(37, 3, 2, 2)).astype(np.float32) + 5.0
  flat = x.reshape(37, -1).astype(np.float64)
  brute = np.max(np.linalg.norm(flat[:, None] - flat[None], axis=-1))
  assert float(S.ncsn_sigma_max_from_data(x, block_size=8)) == pytest.approx(brute, rel=1e-5)
  assert float(S.ncsn_sigma_max_from_data(x)) == pytest.approx(brute, rel=1e-5)


def test_technique_2_cifar10_numbers():
  D = 3072
  g = np.array([1.01, 1.04, 1.1], np.float32).astype(np.float64)  # exact float32 inputs
  want = norm.cdf(np.sqrt(2 * D) * (g - 1) + 3 * g) - norm.cdf(np.sqrt(2 * D) * (g - 1) - 3 * g)
  np.testing.assert_allclose(S.ncsn_level_criterion(g, D), want, atol=1e-6)
  assert S.ncsn_choose_num_levels(50.0, 0.01, D, 0.5) == 219
  crit_232 = float(S.ncsn_level_criterion(S.ncsn_sigma_ratio(50.0, 0.01, 232), D))
  assert crit_232 == pytest.approx(0.567, abs=1e-3)


def test_technique_4_cifar10_step_size():
  ratio = S.ncsn_sigma_ratio(50.0, 0.01, 232)
  eps = S.ncsn_solve_step_size(ratio, 0.01, 5)
  assert eps == pytest.approx(6.18e-6, rel=0.01)
  value = float(S.ncsn_variance_ratio(eps, ratio, 0.01, 5))
  assert value == pytest.approx(1.055, abs=1e-3)
  # A minimizer: nearby step sizes are no closer to 1.
  for f in (0.99, 1.01):
    assert abs(float(S.ncsn_variance_ratio(eps * f, ratio, 0.01, 5)) - 1) >= abs(value - 1) - 1e-6


@pytest.mark.parametrize('ratio,T', [(1.001, 100), (1.01, 50), (1.2, 1)])
def test_technique_4_solver_matches_brute_force(ratio, T):
  sigma_l = 0.01
  a = np.geomspace(1e-12, 1 - 1e-9, 400_001)  # eps / sigma_L^2
  value = (1 - a) ** (2 * T) * (ratio**2 - 2 / (2 - a)) + 2 / (2 - a)
  best = np.min(np.abs(value - 1))
  eps = S.ncsn_solve_step_size(ratio, sigma_l, T)
  a_hat = eps / sigma_l**2
  got = abs((1 - a_hat) ** (2 * T) * (ratio**2 - 2 / (2 - a_hat)) + 2 / (2 - a_hat) - 1)
  assert got <= best + 1e-9
  assert 0 < eps < sigma_l**2


@pytest.mark.parametrize('eps,T', [(6.2e-6, 5), (2e-5, 3), (1e-6, 100)])
def test_proposition_3_against_langevin_variance_recursion(eps, T):
  ratio, sigma_l, sigma_i = 1.0376, 0.01, 0.7
  # x ~ N(0, (ratio sigma_i)^2); T Langevin steps on N(0, sigma_i^2) with
  # alpha = eps sigma_i^2 / sigma_L^2: v <- (1 - alpha / sigma_i^2)^2 v + 2 alpha.
  alpha, v = eps * sigma_i**2 / sigma_l**2, (ratio * sigma_i) ** 2
  for _ in range(T):
    v = (1 - alpha / sigma_i**2) ** 2 * v + 2 * alpha
  a = eps / sigma_l**2
  paper = (1 - a) ** (2 * T) * (ratio**2 - 2 * eps / (sigma_l**2 - sigma_l**2 * (1 - a) ** 2))
  paper += 2 * eps / (sigma_l**2 - sigma_l**2 * (1 - a) ** 2)
  assert paper == pytest.approx(v / sigma_i**2, rel=1e-9)
  assert float(S.ncsn_variance_ratio(eps, ratio, sigma_l, T)) == pytest.approx(paper, rel=1e-5)


# ---------------------------------------------------------------------------
# jit / vmap / grad, and no retracing on new values.

CONTINUOUS = [
  ('linear', S.simple_linear_schedule, (0.05, 0.95)),
  ('sigmoid', lambda t: S.sigmoid_schedule(t, -3.0, 3.0, 0.9), (0.05, 0.95)),
  ('cosine', lambda t: S.cosine_schedule(t, 0.2, 1.0, 1.0), (0.05, 0.95)),
  ('logsnr', lambda g: S.logsnr_from_gamma(g, 0.5), (0.05, 0.95)),
  ('gamma_from_logsnr', lambda l: S.gamma_from_logsnr(l, 0.5), (-5.0, 5.0)),
  ('gamma_to_sigma', lambda g: S.gamma_to_edm_sigma(g, 2.0), (0.05, 0.95)),
  ('sigma_to_gamma', lambda s: S.edm_sigma_to_gamma(s, 2.0), (0.01, 50.0)),
  ('logsnr_to_sigma', S.logsnr_to_edm_sigma, (-5.0, 5.0)),
  ('sigma_to_logsnr', S.edm_sigma_to_logsnr, (0.01, 50.0)),
  ('vp', S.vp_sigma, (1e-3, 1.0)),
  ('vp_inv', S.vp_sigma_inverse, (0.01, 50.0)),
  ('vp_deriv', S.vp_sigma_deriv, (1e-3, 1.0)),
  ('vp_scale', S.vp_scale, (1e-3, 1.0)),
  ('ve', S.ve_sigma, (1e-3, 1.0)),
  ('ve_inv', S.ve_sigma_inverse, (0.01, 50.0)),
  ('criterion', lambda g: S.ncsn_level_criterion(g, 3072), (1.01, 1.1)),
  ('prop3', lambda e: S.ncsn_variance_ratio(e, 1.0376, 0.01, 5), (1e-7, 5e-5)),
  ('karras_max', jnp.vectorize(lambda hi: S.karras_sigmas(4, 0.002, hi)[1]), (10.0, 80.0)),
  ('geometric_max', jnp.vectorize(lambda hi: S.geometric_sigmas(hi, 0.01, 5)[2]), (10.0, 80.0)),
]


@pytest.mark.parametrize('name,fn,bounds', CONTINUOUS, ids=[c[0] for c in CONTINUOUS])
def test_jit_vmap_grad_no_retrace(name, fn, bounds):
  traces = []

  @jax.jit
  def f(x):
    traces.append(1)
    return fn(x)

  lo, hi = bounds
  x1 = jnp.linspace(lo, hi, 6, dtype=jnp.float32).reshape(2, 3)
  x2 = jnp.geomspace(lo, hi, 6, dtype=jnp.float32).reshape(2, 3)
  eager = np.asarray(fn(x1))
  np.testing.assert_allclose(f(x1), eager, rtol=2e-5)
  f(x2)
  assert len(traces) == 1, f'{name} retraced on new values of the same shape'
  np.testing.assert_allclose(jax.vmap(fn)(x1), eager, rtol=2e-5)
  grads = jax.vmap(jax.grad(lambda v: jnp.sum(fn(v))))(x1.reshape(-1))
  assert np.all(np.isfinite(grads)), f'{name} has non-finite gradients: {grads}'
  assert np.any(grads != 0), f'{name} has an all-zero gradient'


def test_sigma_max_from_data_jits_and_differentiates():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(9, 4)), jnp.float32)
  g = jax.jit(jax.grad(lambda y: S.ncsn_sigma_max_from_data(y, block_size=4)))(x)
  assert np.all(np.isfinite(g)) and np.any(g != 0)


# ---------------------------------------------------------------------------
# Bad arguments.


@pytest.mark.parametrize(
  'call,match',
  [
    (lambda: S.get_gamma_schedule('quadratic'), 'name'),
    (lambda: S.get_gamma_schedule('sigmoid', start=3.0, end=3.0), 'start'),
    (lambda: S.get_gamma_schedule('cosine', start=1.0, end=0.5), 'start'),
    (lambda: S.get_gamma_schedule('sigmoid', tau=0.0), 'tau'),
    (lambda: S.get_gamma_schedule('cosine', tau=-1.0), 'tau'),
    (lambda: S.get_gamma_schedule('linear', tau=1.0), 'unknown arguments'),
    (lambda: S.get_gamma_schedule('linear', clip_min=1.5), 'clip_min'),
    (lambda: S.sigmoid_schedule(0.5, start=2.0, end=-2.0), 'start'),
    (lambda: S.cosine_schedule(0.5, tau=0.0), 'tau'),
    (lambda: S.logsnr_from_gamma(0.5, scale=0.0), 'scale'),
    (lambda: S.get_betas('quadratic', 10), 'name'),
    (lambda: S.linear_betas(0), 'num_timesteps'),
    (lambda: S.linear_betas(10, beta_start=0.02, beta_end=1e-4), 'beta_start'),
    (lambda: S.linear_betas(10, beta_start=0.1, beta_end=1.5), r'\(0, 1\]'),
    (lambda: S.cosine_betas(0), 'num_timesteps'),
    (lambda: S.cosine_betas(10, max_beta=1.0), 'max_beta'),
    (lambda: S.DiscreteSchedule.from_betas(np.array([0.1, 1.2])), 'betas'),
    (lambda: S.DiscreteSchedule.from_name('cosine', 10).respace(np.array([3, 3, 5])), 'increasing'),
    (lambda: S.DiscreteSchedule.from_name('cosine', 10).respace(np.array([5, 2])), 'increasing'),
    (lambda: S.DiscreteSchedule.from_name('cosine', 10).respace(np.array([0, 10])), r'\[0, 9\]'),
    (lambda: S.DiscreteSchedule.from_name('cosine', 10).respace(np.array([-1, 4])), r'\[0, 9\]'),
    (lambda: S.space_timesteps(0, 5), 'num_timesteps'),
    (lambda: S.space_timesteps(10, 11), 'section'),
    (lambda: S.space_timesteps(10, 'ddim7'), 'ddim7'),
    (lambda: S.space_timesteps(10, ('leading', 11)), r'\[1, 10\]'),
    (lambda: S.space_timesteps(10, ('uniform', 5)), 'leading'),
    (lambda: S.space_timesteps(10, 'ddimx'), 'not understood'),
    (lambda: S.space_timesteps(10, '3,a'), 'not understood'),
    (lambda: S.karras_sigmas(0), 'n must'),
    (lambda: S.karras_sigmas(10, rho=0.0), 'rho'),
    (lambda: S.karras_sigmas(10, sigma_min=80.0, sigma_max=0.002), 'sigma_min'),
    (lambda: S.karras_sigmas(10, sigma_min=0.0), 'sigma_min'),
    (lambda: S.geometric_sigmas(0.01, 50.0, 10), 'sigma_min'),
    (lambda: S.geometric_sigmas(50.0, 0.01, 0), 'num_levels'),
    (lambda: S.ncsn_choose_num_levels(50.0, 0.01, 3072, target=1.5), 'target'),
    (lambda: S.ncsn_variance_ratio(1e-6, 1.04, 0.01, 0), 'num_steps'),
    (lambda: S.ncsn_solve_step_size(1.04, 0.01, 0), 'num_steps'),
    (lambda: S.ncsn_solve_step_size(1.04, -0.01, 5), 'sigma_min'),
  ],
)
def test_bad_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_traced_arguments_are_not_validated():
  # A traced start / tau cannot be checked; the function must still trace and run.
  out = jax.jit(lambda t, tau: S.sigmoid_schedule(t, -3.0, 3.0, tau))(0.5, 1.0)
  assert float(out) == pytest.approx(0.5, abs=1e-6)
