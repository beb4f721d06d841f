"""Tests of the DDPM / DDIM / DDIM-encode samplers and Chen 2023 Algorithm 3."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mixture_reference import MIXTURE, NUM, assert_matches_mixture

from diffusion_jax import samplers, schedules
from diffusion_jax.schedules import DiscreteSchedule, space_timesteps

LINEAR = DiscreteSchedule.from_name('linear', 1000)
COSINE = DiscreteSchedule.from_name('cosine', 1000)


def _gaussian_x0(mu, var, x_data, sigma):
  return mu + var / (var + sigma**2) * (x_data - mu)


def test_ddim_eta0_matches_float64_reference():
  # Independent float64 DDIM (Song 2021, eq. 12 with sigma = 0) for Gaussian data.
  mu, var = np.array([0.3, -0.4]), np.array([0.04, 0.25])
  gauss = samplers.GaussianMixture([1.0], mu[None], np.sqrt(var)[None])
  idx = np.arange(19, 1000, 50)  # 20 strided steps
  abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[idx]
  z = jax.random.normal(jax.random.key(0), (8, 2))
  got = jax.jit(lambda z: samplers.ddim_sample(gauss.denoise, z, LINEAR, timesteps=idx))(z)
  x = np.asarray(z, np.float64)
  for i in range(len(idx) - 1, -1, -1):
    a, a_prev = abar[i], (abar[i - 1] if i > 0 else 1.0)
    x0 = _gaussian_x0(mu, var, x / np.sqrt(a), np.sqrt((1 - a) / a))
    eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
    x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
  np.testing.assert_allclose(np.asarray(got), x, rtol=1e-4, atol=1e-5)


def test_ddpm_variances_and_ddim_eta1_agree_pathwise():
  sched = LINEAR.respace(space_timesteps(1000, 50))

  def learned(v):
    return lambda x, s: (MIXTURE.denoise(x, s), jnp.full_like(x, v))

  @jax.jit
  def run(z, key):
    kw = dict(rng=key)
    return {
      'small': samplers.ddpm_sample(MIXTURE.denoise, z, sched, variance='small', **kw),
      'large': samplers.ddpm_sample(MIXTURE.denoise, z, sched, variance='large', **kw),
      'v-1': samplers.ddpm_sample(learned(-1.0), z, sched, variance='learned', **kw),
      'v+1': samplers.ddpm_sample(learned(1.0), z, sched, variance='learned', **kw),
      'ddim1': samplers.ddim_sample(MIXTURE.denoise, z, sched, eta=1.0, **kw),
    }

  out = run(jax.random.normal(jax.random.key(1), (256, 2)), jax.random.key(2))
  # DDIM with eta = 1 is the DDPM posterior: same path for the same noise.
  np.testing.assert_allclose(out['ddim1'], out['small'], atol=2e-4)
  # iDDPM's v = -1 is betatilde ('small'), v = +1 is beta ('large').
  np.testing.assert_allclose(out['v-1'], out['small'], atol=1e-4)
  np.testing.assert_allclose(out['v+1'], out['large'], atol=1e-4)
  assert not np.allclose(out['small'], out['large'], atol=1e-2)


@pytest.mark.parametrize(
  'sampler,schedule,timesteps,kwargs',
  [
    ('ddpm', LINEAR, None, dict(variance='small')),  # the full 1000-step chain
    ('ddpm', COSINE, 250, dict(variance='large')),  # iDDPM strided respacing
    ('ddpm', LINEAR, 'ddim250', dict(variance='learned')),  # v = 0: the geometric mean
    ('ddim', COSINE, ('trailing', 250), dict(eta=1.0)),
    ('ddim', COSINE, ('leading', 100), dict(eta=0.0)),
  ],
)
def test_discrete_samplers_match_mixture(sampler, schedule, timesteps, kwargs):
  ts = None if timesteps is None else space_timesteps(1000, timesteps)
  denoise = MIXTURE.denoise
  if kwargs.get('variance') == 'learned':
    denoise = lambda x, s: (MIXTURE.denoise(x, s), jnp.zeros_like(x))
  fn = {'ddpm': samplers.ddpm_sample, 'ddim': samplers.ddim_sample}[sampler]
  run = jax.jit(lambda z, k: fn(denoise, z, schedule, timesteps=ts, rng=k, **kwargs))
  x = run(jax.random.normal(jax.random.key(3), (NUM, 2)), jax.random.key(4))
  assert_matches_mixture(MIXTURE, x)


def test_ddim_deterministic_and_encode_decode_round_trip():
  x0, _ = MIXTURE.sample(jax.random.key(5), 2000)

  @jax.jit
  def round_trip(x0, key_a, key_b):
    out = {}
    for n in (250, 1000):
      ts = space_timesteps(1000, n)
      xt = samplers.ddim_encode(MIXTURE.denoise, x0, COSINE, timesteps=ts)
      out[f'n{n}'] = (
        xt,
        samplers.ddim_sample(MIXTURE.denoise, xt, COSINE, timesteps=ts, rng=key_a),
      )
    # eta = 0 ignores the rng: the same latent decodes to the same sample.
    out['other_rng'] = samplers.ddim_sample(MIXTURE.denoise, xt, COSINE, timesteps=ts, rng=key_b)
    return out

  out = jax.tree.map(np.asarray, round_trip(x0, jax.random.key(1), jax.random.key(2)))
  np.testing.assert_array_equal(out['other_rng'], out['n1000'][1])
  err = {n: np.median(np.linalg.norm(out[f'n{n}'][1] - x0, axis=-1)) for n in (250, 1000)}
  # Encoding and decoding are both first-order (Euler) in sigma: 4x the steps, ~4x less error.
  assert err[1000] < 0.004 and err[250] / err[1000] > 2.5, err
  # The codes of data samples are standard normal (the ODE maps the data to the prior).
  xt = out['n1000'][0]
  np.testing.assert_array_less(np.abs(xt.mean(0)), 4.5 / np.sqrt(2000))
  np.testing.assert_array_less(np.abs(xt.var(0) - 1), 4.5 * np.sqrt(2 / 2000) + 0.02)


def _chen_step_estimates(x, step, steps, b, mu, var):
  """Float64 Algorithm 3 quantities at one step: g_now, g_next, model-space x0 and eps.

  Cosine inference schedule; the exact x0 of Gaussian data N(mu, var) in data space.
  """
  t_now, t_next = 1 - step / steps, max(1 - (step + 1) / steps, 0.0)
  g_now, g_next = (np.clip(np.cos(t * np.pi / 2) ** 2, 1e-9, 1.0) for t in (t_now, t_next))
  sigma = np.sqrt(1 - g_now) / (np.sqrt(g_now) * b)
  x0 = b * _gaussian_x0(mu, var, x / (np.sqrt(g_now) * b), sigma)  # model space: b * x0
  eps = (x - np.sqrt(g_now) * x0) / np.sqrt(1 - g_now)
  return g_now, g_next, x0, eps


def test_chen_ddim_matches_float64_algorithm3():
  mu, var, b, steps = np.array([0.2, -0.5]), np.array([0.09, 0.01]), 0.5, 16
  gauss = samplers.GaussianMixture([1.0], mu[None], np.sqrt(var)[None])
  z = jax.random.normal(jax.random.key(6), (8, 2))
  got = jax.jit(
    lambda z: samplers.chen_sample(gauss.denoise, z, steps=steps, scale=b, method='ddim')
  )(z)
  x = np.asarray(z, np.float64)
  for step in range(steps):
    g_now, g_next, x0, eps = _chen_step_estimates(x, step, steps, b, mu, var)
    x = np.sqrt(g_next) * x0 + np.sqrt(1 - g_next) * eps
  np.testing.assert_allclose(np.asarray(got), x0 / b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize('variance', ['large', 'small'])
def test_chen_ddpm_matches_float64_reference_transition(variance):
  # The authors' transition step (pix2seq diffusion_utils.Scheduler.transition_step) in
  # float64, eps form, replaying the sampler's own per-step noise draws.
  mu, var, b, steps = np.array([0.2, -0.5]), np.array([0.09, 0.01]), 0.5, 12
  gauss = samplers.GaussianMixture([1.0], mu[None], np.sqrt(var)[None])
  z0, key = jax.random.normal(jax.random.key(16), (8, 2)), jax.random.key(17)
  got = jax.jit(
    lambda z, k: samplers.chen_sample(
      gauss.denoise, z, steps=steps, scale=b, method='ddpm', variance=variance, rng=k
    )
  )(z0, key)
  draws = [np.asarray(jax.random.normal(jax.random.fold_in(key, k), (8, 2))) for k in range(steps)]
  x = np.asarray(z0, np.float64)
  for step in range(steps):
    g_now, g_prev, x0, eps = _chen_step_estimates(x, step, steps, b, mu, var)
    alpha = np.clip(np.exp(np.log(g_now) - np.log(g_prev)), 0.0, 1.0)
    mean = (x - (1 - alpha) * eps / np.sqrt(1 - g_now)) / np.sqrt(alpha)
    v = 1 - alpha if variance == 'large' else (1 - g_prev) / (1 - g_now) * (1 - alpha)
    x = mean + np.sqrt(v) * draws[step]
  np.testing.assert_allclose(np.asarray(got), x0 / b, rtol=1e-3, atol=2e-4)


def test_chen_ddpm_large_and_small_variance_differ_and_both_match_mixture():
  @jax.jit
  def run(z, key):
    kw = dict(steps=250, rng=key)
    return tuple(
      samplers.chen_sample(MIXTURE.denoise, z, variance=v, **kw) for v in ('large', 'small')
    )

  large, small = run(jax.random.normal(jax.random.key(18), (NUM, 2)), jax.random.key(19))
  assert np.max(np.abs(np.asarray(large) - np.asarray(small))) > 1e-2  # different paths
  assert_matches_mixture(MIXTURE, large)
  assert_matches_mixture(MIXTURE, small)


@pytest.mark.parametrize('scale,gamma', [(1.0, 'cosine'), (0.5, 'cosine')])
def test_chen_ddpm_matches_mixture_and_threads_state(scale, gamma):
  gamma_fn = schedules.get_gamma_schedule(gamma)

  def stateful(x, sigma, state):
    # The carried state counts the calls; call k must be at step k's sigma, else NaN.
    g = gamma_fn(1.0 - state / 200)
    want = jnp.sqrt(1 - g) / (jnp.sqrt(g) * scale)
    ok = jnp.abs(sigma / want - 1) < 1e-3
    return jnp.where(ok, MIXTURE.denoise(x, sigma), jnp.nan), state + 1

  @jax.jit
  def run(z, key):
    return samplers.chen_sample(
      stateful,
      z,
      steps=200,
      gamma_fn=gamma_fn,
      scale=scale,
      variance='small',  # the posterior: the last state is exactly b * x0
      rng=key,
      init_state=jnp.int32(0),
      return_trajectory=[0, 1, -1],
    )

  z = jax.random.normal(jax.random.key(7), (NUM, 2))
  x, traj = run(z, jax.random.key(8))
  assert_matches_mixture(MIXTURE, x)
  np.testing.assert_array_equal(traj[0], z)
  # The last state is g = 1 (t = 0): model space = scale * the returned x0.
  np.testing.assert_allclose(traj[-1], scale * np.asarray(x), atol=1e-5)


def test_bad_arguments_raise_value_errors():
  d = MIXTURE.denoise
  x = jnp.zeros((2, 2))
  key = jax.random.key(0)
  with pytest.raises(ValueError, match='steps must be >= 1'):
    samplers.chen_sample(d, x, steps=0, rng=key)
  with pytest.raises(ValueError, match='scale'):
    samplers.chen_sample(d, x, steps=4, scale=-1.0, rng=key)
  with pytest.raises(ValueError, match='rng is required'):
    samplers.chen_sample(d, x, steps=4)
  with pytest.raises(ValueError, match='variance must be one of'):
    samplers.chen_sample(d, x, steps=4, variance='fixed', rng=key)
  with pytest.raises(ValueError, match='eta must be in'):
    samplers.ddim_sample(d, x, LINEAR, eta=1.5, rng=key)
  with pytest.raises(ValueError, match='variance must be one of'):
    samplers.ddpm_sample(d, x, LINEAR, variance='fixed', rng=key)
  with pytest.raises(ValueError, match='schedule must be a schedules.DiscreteSchedule'):
    samplers.ddpm_sample(d, x, np.linspace(1e-4, 0.02, 10), rng=key)
  with pytest.raises(ValueError, match='strictly increasing'):
    samplers.ddim_sample(d, x, LINEAR, timesteps=[10, 5])
