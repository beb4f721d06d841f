"""Tests of the exact denoisers, the EDM samplers, guidance and the sampler registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mixture_reference import (
  MEANS,
  MIXTURE,
  NUM,
  STDS,
  WEIGHTS,
  assert_matches_mixture,
  mixture_posterior_mean_np,
)

from diffusion_jax import samplers, schedules
from diffusion_jax.samplers import common, exact

# ---------------------------------------------------------------------------
# Exact denoisers.


def test_gaussian_mixture_denoiser_matches_bayes_and_tweedie():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 2)) * 1.5
  sigma = np.exp(rng.uniform(np.log(0.05), np.log(5.0), size=64))

  def log_p(xi, s):  # log density of the mixture convolved with N(0, s^2 I)
    var = jnp.asarray(STDS**2) + s**2
    ll = -0.5 * jnp.sum((xi - jnp.asarray(MEANS)) ** 2 / var + jnp.log(var), -1)
    return jax.nn.logsumexp(ll + jnp.log(jnp.asarray(WEIGHTS)))

  iso = samplers.gaussian_mixture_denoiser(
    [1.0, 3.0], np.array([0.5, -0.5])[:, None, None, None] * np.ones((2, 2, 2, 1)), [0.2, 0.3]
  )
  diag = samplers.gaussian_mixture_denoiser(
    [1.0, 3.0],
    np.array([0.5, -0.5])[:, None, None, None] * np.ones((2, 2, 2, 1)),
    np.array([0.2, 0.3])[:, None, None, None] * np.ones((2, 2, 2, 1)),
  )

  @jax.jit
  def run(x, sigma, xi):
    s = jnp.float32(0.7)
    # Tweedie: D(x; s) = x + s^2 grad log p_s(x).
    tweedie = x[:8] + s**2 * jax.vmap(jax.grad(log_p), (0, None))(x[:8], s)
    return (
      MIXTURE.denoise(x, sigma),
      MIXTURE.denoise(x[:8], s),
      tweedie,
      iso(xi, 0.4),
      diag(xi, 0.4),
    )

  xi = jnp.asarray(rng.normal(size=(3, 2, 2, 1)), jnp.float32)
  got, d_tw, tweedie, d_iso, d_diag = run(
    jnp.asarray(x, jnp.float32), jnp.asarray(sigma, jnp.float32), xi
  )
  want = mixture_posterior_mean_np(x, sigma, MIXTURE.weights, MEANS, STDS**2)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
  np.testing.assert_allclose(np.asarray(d_tw), np.asarray(tweedie), atol=1e-4)
  # Isotropic stds give the same as the equivalent diagonal ones, for image-shaped events.
  np.testing.assert_allclose(np.asarray(d_iso), np.asarray(d_diag), atol=1e-6)


def test_point_set_denoiser_softmax_mean_and_limits():
  rng = np.random.default_rng(1)
  pts = rng.normal(size=(5, 3))
  x = rng.normal(size=(7, 3))
  sigma = 0.8
  logits = -np.sum((x[:, None] - pts[None]) ** 2, -1) / (2 * sigma**2)
  w = np.exp(logits - logits.max(1, keepdims=True))
  want = (w / w.sum(1, keepdims=True)) @ pts
  d = samplers.point_set_denoiser(pts)
  out = jax.jit(lambda x: jnp.stack([d(x, sigma), d(x, 1e3), d(x, 1e-3)]))(
    jnp.asarray(x, jnp.float32)
  )
  np.testing.assert_allclose(np.asarray(out[0]), want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out[1]), np.tile(pts.mean(0), (7, 1)), atol=1e-4)
  nearest = pts[np.argmin(np.sum((x[:, None] - pts[None]) ** 2, -1), 1)]
  np.testing.assert_allclose(np.asarray(out[2]), nearest, atol=1e-5)


# ---------------------------------------------------------------------------
# EDM samplers.


def _affine_reference(sigmas, mu, var, method):
  """float64 Euler / Heun for Gaussian data N(mu, var): x_N = A x_0 + c, returns (A, c)."""
  d_coef = lambda t: (1 - var / (var + t**2)) / t  # d = d_coef(t) (x - mu)
  a = 1.0
  for i in range(len(sigmas) - 1):
    t, tn = sigmas[i], sigmas[i + 1]
    a_euler = a * (1 + (tn - t) * d_coef(t))
    if method == 'heun' and tn > 0:
      a = a * (1 + (tn - t) * 0.5 * (d_coef(t) + d_coef(tn) * (1 + (tn - t) * d_coef(t))))
    else:
      a = a_euler
  return a, mu * (1 - a)


@pytest.mark.parametrize('method', ['euler', 'heun'])
def test_edm_ode_matches_float64_affine_map_for_gaussian_data(method):
  # For Gaussian data D is affine, so the whole ODE solve is one affine map per dimension.
  mu, std = np.array([0.3, -0.2]), np.array([0.5, 0.25])
  gauss = samplers.GaussianMixture([1.0], mu[None], std[None])
  sigmas = schedules.karras_sigmas(7, 0.02, 5.0)
  z = jax.random.normal(jax.random.key(0), (16, 2)) * 5.0
  got = np.asarray(
    jax.jit(lambda z: samplers.edm_sample(gauss.denoise, z, sigmas, method=method))(z)
  )
  a, c = _affine_reference(np.asarray(sigmas, np.float64), mu, std**2, method)
  np.testing.assert_allclose(got, np.asarray(z, np.float64) * a + c, rtol=1e-4, atol=1e-5)


def test_edm_convergence_order_euler_first_heun_second():
  gm = samplers.GaussianMixture(WEIGHTS, MEANS, [0.3, 0.4, 0.35])  # overlapping: a smooth ODE
  z = jax.random.normal(jax.random.key(1), (256, 2))

  @jax.jit
  def errors():
    run = lambda n, m: samplers.edm_sample(
      gm.denoise, z, schedules.karras_sigmas(n, 0.1, 1.0), method=m
    )
    ref = run(1024, 'heun')
    rms = lambda n, m: jnp.sqrt(jnp.mean((run(n, m) - ref) ** 2))
    return {m: jnp.stack([rms(n, m) for n in (16, 32, 64)]) for m in ('euler', 'heun')}

  err = jax.tree.map(np.asarray, errors())
  euler_ratio = err['euler'][:-1] / err['euler'][1:]
  heun_ratio = err['heun'][:-1] / err['heun'][1:]
  assert np.all((euler_ratio > 1.8) & (euler_ratio < 2.4)), euler_ratio
  assert np.all((heun_ratio > 3.5) & (heun_ratio < 5.0)), heun_ratio
  assert np.all(err['heun'] < err['euler'])


@pytest.mark.parametrize(
  'kwargs',
  [
    dict(method='heun'),
    dict(method='heun', s_churn=30.0, s_tmin=0.01, s_tmax=5.0, s_noise=1.0),
    dict(method='euler', s_churn=10.0),
  ],
)
def test_edm_samples_match_mixture(kwargs):
  n = 32 if kwargs['method'] == 'heun' else 128
  sigmas = schedules.karras_sigmas(n, 0.002, 10.0)
  z = jax.random.normal(jax.random.key(2), (NUM, 2))
  fn = jax.jit(
    lambda z, k: samplers.edm_sample(MIXTURE.denoise, z * sigmas[0], sigmas, rng=k, **kwargs)
  )
  assert_matches_mixture(MIXTURE, fn(z, jax.random.key(3)))


def test_edm_call_order_nfe_and_state_carry():
  calls = []

  def denoise(x, sigma, state):
    jax.debug.callback(lambda s, c: calls.append((float(s), int(c))), sigma, state, ordered=True)
    return MIXTURE.denoise(x, sigma), state + 1

  sigmas = schedules.karras_sigmas(5, 0.01, 3.0)
  x = jnp.ones((2, 2))
  jax.block_until_ready(
    jax.jit(lambda x: samplers.edm_sample(denoise, x, sigmas, init_state=jnp.int32(0)))(x)
  )
  s = np.asarray(sigmas)
  want = [s[0]] + [
    v for v in s[1:-1] for _ in (0, 1)
  ]  # Heun: t0, t1, t1, ..., t_{N-1}; no call at 0
  assert len(calls) == samplers.edm_nfe(5) == 9
  np.testing.assert_allclose([c[0] for c in calls], want, rtol=1e-6)
  assert [c[1] for c in calls] == list(range(9))  # the state is threaded through every call


def test_edm_trajectory_vmap_and_no_retrace():
  sigmas = schedules.karras_sigmas(6, 0.01, 4.0)
  traces = []

  def sample(z, key):
    traces.append(1)
    return samplers.edm_sample(
      MIXTURE.denoise, z * 4.0, sigmas, s_churn=5.0, rng=key, return_trajectory=True
    )

  fn = jax.jit(sample)
  z = jax.random.normal(jax.random.key(4), (3, 2))
  x, traj = fn(z, jax.random.key(5))
  assert traj.shape == (7, 3, 2)
  np.testing.assert_allclose(traj[0], z * 4.0, rtol=1e-6)
  np.testing.assert_array_equal(traj[-1], x)
  x2, _ = fn(z + 1.0, jax.random.key(6))  # new noise and rng: same executable
  assert len(traces) == 1 and not np.allclose(x, x2)
  keys = jax.random.split(jax.random.key(7), 3)
  zs = jax.random.normal(jax.random.key(8), (3, 4, 2))
  run = lambda z, k: samplers.edm_sample(MIXTURE.denoise, z * 4.0, sigmas, s_churn=5.0, rng=k)

  @jax.jit
  def others(z, zs, keys):
    some = samplers.edm_sample(
      MIXTURE.denoise,
      z * 4.0,
      sigmas,
      s_churn=5.0,
      rng=jax.random.key(5),
      return_trajectory=[2, -1],
    )[1]
    return some, jax.vmap(run)(zs, keys), run(zs[1], keys[1])

  some, batched, single = others(z, zs, keys)
  # Chosen states are the same as the full trajectory's.
  np.testing.assert_allclose(some, traj[jnp.array([2, 6])], atol=1e-5)
  # vmap over independent chains equals running each chain on its own.
  np.testing.assert_allclose(batched[1], single, atol=1e-5)


# ---------------------------------------------------------------------------
# Guidance and adapters.


def _conditional_mixture_denoiser(x, sigma, label):
  """Exact D(x; sigma | label): component `label`'s Gaussian, the whole mixture for -1."""
  per_comp = jnp.stack(
    [
      samplers.GaussianMixture([1.0], MEANS[k : k + 1], STDS[k : k + 1]).denoise(x, sigma)
      for k in range(3)
    ]
  )  # [K, B, 2]
  cond = jnp.take_along_axis(per_comp, jnp.maximum(label, 0)[None, :, None], 0)[0]
  return jnp.where((label >= 0)[:, None], cond, MIXTURE.denoise(x, sigma))


def test_guidance_weight_zero_samples_the_labelled_component_without_retrace():
  sigmas = schedules.karras_sigmas(24, 0.002, 10.0)
  traces = []

  def sample(z, label):
    traces.append(1)
    d, _ = samplers.classifier_free_guidance(_conditional_mixture_denoiser, label, 0.0)
    return samplers.edm_sample(d, z * sigmas[0], sigmas)

  fn = jax.jit(sample)
  z = jax.random.normal(jax.random.key(9), (2000, 2))
  for k in (1, 2):
    x = np.asarray(fn(z, jnp.full((2000,), k, jnp.int32)))
    comp = samplers.GaussianMixture([1.0], MEANS[k : k + 1], STDS[k : k + 1])
    assert_matches_mixture(comp, x)
  assert len(traces) == 1  # new labels: same executable


@pytest.mark.parametrize('batched', [True, False])
def test_guidance_combines_conditional_and_unconditional(batched):
  x = jax.random.normal(jax.random.key(10), (4, 2))
  label = jnp.array([0, 1, 2, 1], jnp.int32)
  w = 2.5

  # Stateful: the output is shifted by the state it reads; a conditional pass adds 1 to
  # its state, an unconditional one 10, so the states show which pass wrote them.
  def stateful(x, sigma, lab, state):
    out = _conditional_mixture_denoiser(x, sigma, lab) + state[:, None]
    return out, state + jnp.where(lab >= 0, 1.0, 10.0)

  @jax.jit
  def run(x, label):
    d, _ = samplers.classifier_free_guidance(
      _conditional_mixture_denoiser, label, w, batched=batched
    )
    want = (1 + w) * _conditional_mixture_denoiser(x, 0.5, label) - w * MIXTURE.denoise(x, 0.5)
    zeros = jnp.zeros((4,))
    shared, s0 = samplers.classifier_free_guidance(
      stateful, label, w, init_state=zeros, batched=batched
    )
    out1, s1 = shared(x, 0.5, s0)
    out2, s2 = shared(x, 0.5, s1)
    separate, p0 = samplers.classifier_free_guidance(
      stateful, label, w, init_state=zeros, batched=batched, carry='separate'
    )
    _, p1 = separate(x, 0.5, p0)
    out2_sep, p2 = separate(x, 0.5, p1)
    return d(x, 0.5), want, (out1, s1, out2, s2), (out2_sep, p2)

  got, want, (out1, s1, out2, s2), (out2_sep, (p_c, p_u)) = run(x, label)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  np.testing.assert_allclose(np.asarray(out1), np.asarray(want), atol=1e-5)
  # Default (the Chen 2023 reference): both passes read the conditional branch's state.
  np.testing.assert_array_equal(s1, 1.0)
  np.testing.assert_array_equal(s2, 2.0)
  np.testing.assert_allclose(np.asarray(out2), np.asarray(want) + 1.0, atol=1e-5)
  # carry='separate': each branch its own state (cond 1 then 2, uncond 10 then 20).
  np.testing.assert_array_equal(p_c, 2.0)
  np.testing.assert_array_equal(p_u, 20.0)
  np.testing.assert_allclose(np.asarray(out2_sep), np.asarray(want) + 1.0 - 9.0 * w, atol=1e-4)


# ---------------------------------------------------------------------------
# Validation and registry.


def test_bad_arguments_raise_value_errors():
  d = MIXTURE.denoise
  x = jnp.zeros((2, 2))
  with pytest.raises(ValueError, match='sigmas must be strictly decreasing'):
    samplers.edm_sample(d, x, jnp.array([0.5, 1.0, 0.0]))
  with pytest.raises(ValueError, match='s_churn must be a finite scalar >= 0'):
    samplers.edm_sample(d, x, schedules.karras_sigmas(4), s_churn=-1.0, rng=jax.random.key(0))
  with pytest.raises(ValueError, match='rng is required'):
    samplers.edm_sample(d, x, schedules.karras_sigmas(4), s_churn=1.0)
  with pytest.raises(ValueError, match='method must be one of'):
    samplers.edm_sample(d, x, schedules.karras_sigmas(4), method='rk4')
  with pytest.raises(ValueError, match='needs class labels'):
    samplers.classifier_free_guidance(_conditional_mixture_denoiser, None, 3.0)
  with pytest.raises(ValueError, match='guidance weight w\\) must be >= 0'):
    samplers.classifier_free_guidance(
      _conditional_mixture_denoiser, jnp.zeros((2,), jnp.int32), -1.0
    )
  with pytest.raises(ValueError, match='carry must be one of'):
    samplers.classifier_free_guidance(
      _conditional_mixture_denoiser, jnp.zeros((2,), jnp.int32), 1.0, carry='both'
    )
  with pytest.raises(ValueError, match='return_trajectory indices'):
    samplers.edm_sample(d, x, schedules.karras_sigmas(4), return_trajectory=[9])
  with pytest.raises(ValueError, match='stds must have shape'):
    samplers.GaussianMixture([1.0, 1.0], np.zeros((2, 3)), np.ones((3,)))
  assert common.trajectory_indices(False, 3) is None


def test_package_exports_the_family_modules():
  # The registry itself is tested in test_samplers_registry.py.
  assert exact.GaussianMixture is samplers.GaussianMixture
