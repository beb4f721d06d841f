"""Tests for diffusion_jax.parameterization: target conversions, normalization, EDM bridges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import parameterization as P
from diffusion_jax import schedules as S

B, H, W, C = 4, 3, 3, 2


def _sample(seed=0, scale=1.0):
  """x0 in [-1, 1], eps, gamma [B] and x_t in model space, all float64 numpy."""
  rng = np.random.default_rng(seed)
  x0 = rng.uniform(-1, 1, size=(B, H, W, C))
  eps = rng.normal(size=(B, H, W, C))
  gamma = np.array([0.999, 0.7, 0.2, 0.01])
  g = gamma[:, None, None, None]
  x_t = np.sqrt(g) * scale * x0 + np.sqrt(1 - g) * eps
  return x0, eps, gamma, x_t


def _f32(*arrays):
  return [jnp.asarray(a, jnp.float32) for a in arrays]


def test_eps_x0_v_round_trip():
  x0, eps, gamma, x_t = _sample()
  g = gamma[:, None, None, None]
  v_ref = np.sqrt(g) * eps - np.sqrt(1 - g) * x0
  x0_, eps_, gamma_, x_t_ = _f32(x0, eps, gamma, x_t)
  np.testing.assert_allclose(P.x0_from_eps(x_t_, eps_, gamma_), x0, atol=1e-4)
  np.testing.assert_allclose(P.eps_from_x0(x_t_, x0_, gamma_), eps, atol=1e-4)
  v = P.v_from_eps_x0(eps_, x0_, gamma_)
  np.testing.assert_allclose(v, v_ref, atol=1e-6)
  np.testing.assert_allclose(P.x0_from_v(x_t_, v, gamma_), x0, atol=1e-5)
  np.testing.assert_allclose(P.eps_from_v(x_t_, v, gamma_), eps, atol=1e-5)
  for kind, pred in (('eps', eps_), ('x0', x0_), ('v', v)):
    x0_hat, eps_hat = P.predict_x0_eps(pred, x_t_, gamma_, kind)
    np.testing.assert_allclose(x0_hat, x0, atol=1e-4, err_msg=kind)
    np.testing.assert_allclose(eps_hat, eps, atol=1e-4, err_msg=kind)


def test_gamma_broadcasting_forms_agree():
  x0, eps, gamma, x_t = _f32(*_sample(1))
  per_example = P.x0_from_eps(x_t, eps, gamma)  # [B]
  full = P.x0_from_eps(x_t, eps, gamma[:, None, None, None])  # [B, 1, 1, 1]
  np.testing.assert_array_equal(per_example, full)
  one = P.x0_from_eps(x_t[1], eps[1], gamma[1])  # scalar gamma, single example
  np.testing.assert_allclose(one, per_example[1], rtol=1e-6)


def test_clip_x0_bounds():
  x = jnp.linspace(-3, 3, 61)
  for scale in (1.0, 0.5, 2.0):
    y = np.asarray(P.clip_x0(x, scale))
    assert y.min() == -scale and y.max() == scale
    inside = np.abs(np.asarray(x)) <= scale
    np.testing.assert_array_equal(y[inside], np.asarray(x)[inside])


def test_normalize_input_per_example_and_none():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(B, H, W, C)) * np.array([0.1, 1.0, 3.0, 10.0])[:, None, None, None] + 0.3
  out = np.asarray(P.normalize_input(jnp.asarray(x, jnp.float32), jnp.ones(B), 0.5, 'per_example'))
  np.testing.assert_allclose(out, x / x.std(axis=(1, 2, 3), keepdims=True), rtol=1e-5)
  np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, rtol=1e-5)
  x32 = np.asarray(x, np.float32)
  np.testing.assert_array_equal(P.normalize_input(x32, 0.3, 0.5, 'none'), x32)
  # Constant input stays finite.
  assert np.all(np.isfinite(P.normalize_input(jnp.zeros((2, 2, 2, 1)), 0.5, 1.0)))


@pytest.mark.parametrize('scale', [0.3, 0.7, 2.0])
def test_normalize_input_analytic_gives_unit_variance(scale):
  n = 200_000
  rng = np.random.default_rng(3)
  gamma = np.array([0.9, 0.5, 0.1])
  x0 = rng.normal(size=(3, n))  # unit-variance data
  x_t = np.sqrt(gamma)[:, None] * scale * x0 + np.sqrt(1 - gamma)[:, None] * rng.normal(size=(3, n))
  out = np.asarray(
    P.normalize_input(jnp.asarray(x_t, jnp.float32), jnp.asarray(gamma), scale, 'analytic')
  )
  np.testing.assert_allclose(out, x_t / np.sqrt((scale**2 - 1) * gamma + 1)[:, None], rtol=1e-5)
  # Sample variance of n Gaussians: std error sqrt(2 / n); allow 5 standard errors.
  np.testing.assert_allclose(out.var(axis=1), 1.0, atol=5 * np.sqrt(2 / n))


def test_edm_preconditioning():
  sd = 0.5
  sigma = np.geomspace(0.002, 80, 33)
  c_skip, c_out, c_in, c_noise = (
    np.asarray(c, np.float64) for c in P.edm_preconditioning(sigma, sd)
  )
  np.testing.assert_allclose(c_skip, sd**2 / (sigma**2 + sd**2), rtol=1e-6)
  np.testing.assert_allclose(c_out, sigma * sd / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
  np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
  np.testing.assert_allclose(c_noise, np.log(sigma) / 4, rtol=1e-6, atol=1e-7)
  # EDM's design goals: unit-variance input and unit-variance training target
  # F = (y - c_skip (y + n)) / c_out for y ~ N(0, sd^2), n ~ N(0, sigma^2).
  np.testing.assert_allclose(c_in**2 * (sd**2 + sigma**2), 1.0, rtol=1e-5)
  target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
  np.testing.assert_allclose(target_var, 1.0, rtol=1e-5)
  np.testing.assert_allclose(
    P.edm_loss_weight(sigma, sd), (sigma**2 + sd**2) / (sigma * sd) ** 2, rtol=1e-5
  )
  np.testing.assert_allclose(P.edm_loss_weight(sigma, sd) * c_out**2, 1.0, rtol=1e-5)


@pytest.mark.parametrize('scale', [1.0, 0.5, 2.0])
def test_model_edm_bridge(scale):
  x0, eps, gamma, x_t = _sample(4, scale)
  sigma_ref = np.sqrt(1 - gamma) / (np.sqrt(gamma) * scale)
  x, sigma = P.model_to_edm(*_f32(x_t, gamma), scale)
  np.testing.assert_allclose(sigma, sigma_ref, rtol=2e-5)
  # EDM form of the same sample: x = x0 + sigma eps in data space.
  np.testing.assert_allclose(x, x0 + sigma_ref[:, None, None, None] * eps, rtol=1e-5, atol=1e-5)
  x_t2, gamma2 = P.edm_to_model(x, sigma, scale)
  np.testing.assert_allclose(gamma2, gamma, atol=1e-6)
  np.testing.assert_allclose(x_t2, x_t, atol=1e-5)
  # A model-space x0 estimate of b x0 is the EDM denoiser output times b.
  x0_hat, _ = P.predict_x0_eps(*_f32(eps, x_t, gamma), 'eps')
  np.testing.assert_allclose(np.asarray(x0_hat) / scale, x0, atol=1e-3)


def test_noise_level_round_trips():
  gamma = jnp.linspace(0.01, 0.99, 21)
  for scale in (0.5, 1.0, 2.0):
    sigma = P.gamma_to_edm_sigma(gamma, scale)
    logsnr = P.edm_sigma_to_logsnr(sigma)
    np.testing.assert_allclose(logsnr, P.logsnr_from_gamma(gamma, scale), atol=1e-5)
    np.testing.assert_allclose(P.gamma_from_logsnr(logsnr, scale), gamma, atol=1e-6)
    np.testing.assert_allclose(P.logsnr_to_edm_sigma(logsnr), sigma, rtol=1e-5)
    np.testing.assert_allclose(P.edm_sigma_to_gamma(sigma, scale), gamma, atol=1e-6)
  abar = np.linspace(0.01, 0.99, 21)
  np.testing.assert_allclose(P.abar_to_edm_sigma(abar), np.sqrt((1 - abar) / abar), rtol=2e-6)
  np.testing.assert_allclose(P.abar_to_logsnr(abar), np.log(abar / (1 - abar)), atol=2e-6)
  np.testing.assert_allclose(P.edm_sigma_to_abar(P.abar_to_edm_sigma(abar)), abar, atol=1e-6)


def test_discrete_index_conversions():
  sched = S.DiscreteSchedule.from_name('linear', 100)
  idx = np.array([0, 1, 17, 50, 99])
  got = P.edm_sigma_to_timestep(sched.edm_sigmas[idx], sched)
  np.testing.assert_allclose(got, idx, atol=2e-3)
  np.testing.assert_allclose(P.timestep_to_edm_sigma(idx, sched), sched.edm_sigmas[idx], rtol=1e-5)
  # Midway in log sigma lies midway in index; outside the table clamps.
  mid = np.sqrt(sched.edm_sigmas[10] * sched.edm_sigmas[11])
  assert float(P.edm_sigma_to_timestep(mid, sched)) == pytest.approx(10.5, abs=2e-3)
  assert float(P.edm_sigma_to_timestep(1e-6, sched)) == 0.0
  assert float(P.edm_sigma_to_timestep(1e6, sched)) == 99.0
  frac = jnp.array([3.25, 40.5, 97.9])
  np.testing.assert_allclose(
    P.edm_sigma_to_timestep(P.timestep_to_edm_sigma(frac, sched), sched), frac, atol=5e-3
  )
  # A respaced schedule maps back to the original training indices.
  sub = sched.respace(S.space_timesteps(100, 10))
  np.testing.assert_allclose(P.edm_sigma_to_timestep(sub.edm_sigmas, sub), sub.timesteps, atol=5e-3)


def test_score_conversions_on_gaussian():
  # Data N(0, s^2): p(x; sigma) = N(0, s^2 + sigma^2), score -x / (s^2 + sigma^2),
  # and the exact denoiser is D = x s^2 / (s^2 + sigma^2).
  s2 = 0.8
  sigma = jnp.array([0.1, 1.0, 5.0, 20.0])
  x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 2, 2, 1)) * 3, jnp.float32)
  var = (s2 + sigma**2)[:, None, None, None]
  score = -x / var
  np.testing.assert_allclose(P.x0_from_score(x, score, sigma), x * s2 / var, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(P.score_from_x0(x, x * s2 / var, sigma), score, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# jit / vmap / grad and retracing.

ELEMENTWISE = [
  ('x0_from_eps', lambda x, g: P.x0_from_eps(x, 0.5 * x, g)),
  ('eps_from_x0', lambda x, g: P.eps_from_x0(x, 0.5 * x, g)),
  ('v_from_eps_x0', lambda x, g: P.v_from_eps_x0(x, 0.5 * x, g)),
  ('x0_from_v', lambda x, g: P.x0_from_v(x, 0.5 * x, g)),
  ('eps_from_v', lambda x, g: P.eps_from_v(x, 0.5 * x, g)),
  ('predict_v', lambda x, g: P.predict_x0_eps(0.5 * x, x, g, 'v')[0]),
  ('clip_x0', lambda x, g: P.clip_x0(x * g[:, None, None, None], 0.5)),
  ('normalize_per_example', lambda x, g: P.normalize_input(x, g, 0.5, 'per_example')),
  ('normalize_analytic', lambda x, g: P.normalize_input(x, g, 0.5, 'analytic')),
  ('model_to_edm', lambda x, g: P.model_to_edm(x, g, 0.5)[0]),
  ('edm_to_model', lambda x, g: P.edm_to_model(x, 1.0 / g, 0.5)[0]),
  (
    'preconditioning',
    lambda x, g: sum(c[:, None, None, None] for c in P.edm_preconditioning(g)) * x,
  ),
  ('x0_from_score', lambda x, g: P.x0_from_score(x, -x, g)),
  ('score_from_x0', lambda x, g: P.score_from_x0(x, 0.5 * x, g)),
]


@pytest.mark.parametrize('name,fn', ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_jit_vmap_grad_no_retrace(name, fn):
  traces = []

  @jax.jit
  def f(x, g):
    traces.append(1)
    return fn(x, g)

  rng = np.random.default_rng(6)
  x1, x2 = (jnp.asarray(rng.normal(size=(B, H, W, C)), jnp.float32) for _ in range(2))
  g1, g2 = jnp.array([0.9, 0.6, 0.3, 0.1]), jnp.array([0.8, 0.5, 0.2, 0.05])
  eager = np.asarray(fn(x1, g1))
  np.testing.assert_allclose(f(x1, g1), eager, rtol=1e-5, atol=1e-6)
  f(x2, g2)
  assert len(traces) == 1, f'{name} retraced on new values of the same shape'
  # vmap over the batch (each example with a leading batch of one).
  per_example = jax.vmap(lambda x, g: fn(x[None], g[None])[0])(x1, g1)
  np.testing.assert_allclose(per_example, eager, rtol=1e-5, atol=1e-6)
  gx, gg = jax.grad(lambda x, g: jnp.sum(fn(x, g) ** 2), argnums=(0, 1))(x1, g1)
  assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gg)), name
  assert np.any(gx != 0), name


LEVELS = [
  ('abar_to_logsnr', P.abar_to_logsnr, (0.05, 0.95)),
  ('abar_to_edm_sigma', P.abar_to_edm_sigma, (0.05, 0.95)),
  ('edm_sigma_to_abar', P.edm_sigma_to_abar, (0.01, 50.0)),
  ('edm_loss_weight', P.edm_loss_weight, (0.01, 50.0)),
  ('sigma_to_timestep', lambda s: P.edm_sigma_to_timestep(s, _SCHED), (0.05, 5.0)),
  ('timestep_to_sigma', lambda t: P.timestep_to_edm_sigma(t, _SCHED), (1.5, 90.5)),
]
_SCHED = S.DiscreteSchedule.from_name('cosine', 100)


@pytest.mark.parametrize('name,fn,bounds', LEVELS, ids=[e[0] for e in LEVELS])
def test_noise_levels_jit_vmap_grad_no_retrace(name, fn, bounds):
  traces = []

  @jax.jit
  def f(x):
    traces.append(1)
    return fn(x)

  x1 = jnp.linspace(*bounds, 6, dtype=jnp.float32).reshape(2, 3)
  x2 = jnp.geomspace(*bounds, 6, dtype=jnp.float32).reshape(2, 3)
  eager = np.asarray(fn(x1))
  np.testing.assert_allclose(f(x1), eager, rtol=1e-5)
  f(x2)
  assert len(traces) == 1, f'{name} retraced on new values of the same shape'
  np.testing.assert_allclose(jax.vmap(fn)(x1), eager, rtol=1e-5)
  grads = jax.vmap(jax.grad(fn))(x1.reshape(-1))
  assert np.all(np.isfinite(grads)) and np.all(grads != 0), (name, grads)


@pytest.mark.parametrize(
  'call,match',
  [
    (lambda: P.predict_x0_eps(jnp.zeros(2), jnp.zeros(2), 0.5, 'score'), 'kind'),
    (lambda: P.normalize_input(jnp.zeros((1, 2)), 0.5, 1.0, 'batch'), 'mode'),
    (lambda: P.model_to_edm(jnp.zeros(2), 0.5, scale=0.0), 'scale'),
    (lambda: P.clip_x0(jnp.zeros(2), scale=-1.0), 'scale'),
    (lambda: P.normalize_input(jnp.zeros((1, 2)), 0.5, 0.0, 'analytic'), 'scale'),
  ],
)
def test_bad_arguments_raise(call, match):
  with pytest.raises(ValueError, match=match):
    call()
