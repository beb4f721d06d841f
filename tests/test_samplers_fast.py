"""The fast samplers as the config sees them: names, grids, NFE, guidance, carry, no recompiles.

Each family's math is tested against float64 transcriptions in its own file
(test_samplers_single_step.py, test_samplers_multistep.py, test_samplers_unipc_deis.py);
this file tests the registry entries built from them (`samplers/fast.py`).
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import build, samplers, schedules
from diffusion_jax import config as config_lib
from diffusion_jax.objectives import DiffusionConfig, SampleSettings, create_objective
from diffusion_jax.samplers import fast

sys.path.insert(0, '.')
from configs import digits  # noqa: E402

FAST = (
  'euler',
  'heun',
  'euler_ancestral',
  'dpm_2',
  'dpm_2_ancestral',
  'lms',
  'dpmpp_2s_ancestral',
  'dpmpp_2m',
  'dpmpp_sde',
  'dpmpp_2m_sde',
  'dpmpp_3m_sde',
  'dpmpp_3m',
  'dpm_fast',
  'dpm_adaptive',
  'unipc',
  'deis',
)
SHAPE = (4, 4, 4, 1)


def test_every_fast_sampler_is_registered_and_selectable():
  assert set(FAST) <= set(samplers.names())
  assert set(fast.NAMES) == set(FAST)
  for name in FAST:
    config = digits.get_config('tiny')
    config.sample.sampler = name
    assert config_lib.build_run_config(config).sample.sampler == name


def _calls_apply(counter):
  """A tiny class-conditional, self-conditioned network that counts its executions.

  The carry is the previous prediction (as a U-Net's self-conditioning), so a sampler
  that drops or reorders the state gives other images.
  """

  def apply(params, x, noise_level, label=None, self_cond=None, train=False, **_):
    jax.debug.callback(_tick(counter))
    level = noise_level.reshape(-1, 1, 1, 1) / 1000.0
    lab = 0.0 if label is None else (label.reshape(-1, 1, 1, 1) + 1.0) / 10.0
    prev = 0.0 if self_cond is None else self_cond
    out = params['w'] * jnp.tanh(x) + 0.1 * level + 0.2 * lab + 0.05 * prev
    return out, out

  return apply


def _tick(counter):
  def tick():
    counter[0] += 1

  return tick


@pytest.mark.parametrize('name', FAST)
def test_registry_entry_runs_guided_and_self_conditioned_with_its_nfe(name):
  obj = create_objective(DiffusionConfig(objective='edm', self_cond_rate=0.5))
  counter = [0]
  apply = _calls_apply(counter)
  s = SampleSettings(sampler=name, num_steps=5, guidance=1.5, sigma_max=5.0, sigma_min=0.02)
  params = {'w': 0.5}
  noise = jax.random.normal(jax.random.key(0), SHAPE)
  labels = jnp.arange(SHAPE[0], dtype=jnp.int32) % 3

  @jax.jit
  def run(noise, labels, rng):
    return samplers.sample(obj, apply, params, noise, labels, rng, s)

  out = jax.block_until_ready(run(noise, labels, jax.random.key(1)))
  jax.effects_barrier()
  calls = counter[0]
  assert out.shape == SHAPE and np.all(np.isfinite(np.asarray(out)))
  if name == 'dpm_adaptive':
    assert 0 < calls <= samplers.nfe(s, obj)
  else:
    assert calls == samplers.nfe(s, obj), (calls, samplers.nfe(s, obj))

  # The same call by hand: the objective's guided, stateful denoiser and the entry's grid.
  spec = next(f.FAST_SAMPLERS[name] for f in fast.FAMILIES if name in f.FAST_SAMPLERS)

  @jax.jit
  def by_hand(noise, labels, rng):
    d, state = obj.denoiser(apply, params, labels, 1.5, x_shape=SHAPE)
    assert state is not None  # the carry is threaded
    if spec.grid_free:
      kw = dict(sigma_min=0.02, sigma_max=5.0, **({'n': 5} if name == 'dpm_fast' else {}))
      return spec.fn(d, noise * 5.0, rng=rng, init_state=state, **kw)
    sigmas = fast.sampling_sigmas(s, obj)
    return spec.fn(d, noise * sigmas[0], sigmas, rng=rng, init_state=state)

  np.testing.assert_allclose(out, by_hand(noise, labels, jax.random.key(1)), atol=1e-6)


def test_grids():
  obj = create_objective(DiffusionConfig(objective='ddpm', num_timesteps=1000))
  n = 8
  for grid in ('karras', 'exponential', 'polyexponential', 'discrete'):
    sig = np.asarray(fast.sampling_sigmas(SampleSettings(num_steps=n, sigmas=grid), obj))
    assert sig.shape == (n + 1,) and sig[-1] == 0 and np.all(np.diff(sig) < 0), grid
  s = SampleSettings(num_steps=n, sigma_min=0.01, sigma_max=10.0)
  np.testing.assert_allclose(
    fast.sampling_sigmas(s, obj), schedules.karras_sigmas(n, 0.01, 10.0, 7.0), rtol=1e-6
  )
  expo = np.asarray(fast.sampling_sigmas(s.replace(sigmas='exponential'), obj))
  np.testing.assert_allclose(np.diff(np.log(expo[:-1])), np.log(0.001) / (n - 1), rtol=1e-5)
  poly = fast.sampling_sigmas(s.replace(sigmas='polyexponential', polyexponential_rho=1.0), obj)
  np.testing.assert_allclose(poly, expo, rtol=1e-6)
  table = obj.sampling_schedule()
  for spacing, first in (('linspace', 999), ('leading', 888), ('trailing', 999)):
    sig = fast.sampling_sigmas(s.replace(sigmas='discrete', timestep_spacing=spacing), obj)
    t = schedules.discrete_timesteps(1000, n, spacing)
    assert t[0] == first and np.all(np.diff(t) < 0)
    np.testing.assert_allclose(sig[:-1], table.edm_sigmas[t], rtol=1e-6)
  # Objectives without a beta table step over config.diffusion's DDPM table; Chen's over
  # its gamma(t) at T points.
  edm = create_objective(DiffusionConfig(objective='edm'))
  np.testing.assert_allclose(edm.sampling_schedule().edm_sigmas, table.edm_sigmas)
  chen = create_objective(DiffusionConfig(objective='chen'))
  g = chen.config.gamma_fn()(np.array([0.5]))
  np.testing.assert_allclose(
    chen.sampling_schedule().edm_sigmas[499], np.sqrt((1 - g) / g) / chen.config.scale, rtol=1e-5
  )


@pytest.mark.parametrize(
  'key,value,needle',
  [
    ('sigmas', 'linear', "config.sample.sigmas='linear'"),
    ('timestep_spacing', 'even', 'timestep_spacing'),
    ('solver_type', 'rk4', 'solver_type'),
    ('multistep_style', 'torch', 'multistep_style'),
    ('variant', 'bh3', 'variant'),
    ('order', 7, 'config.sample.order=7'),
    ('eta', -1.0, 'config.sample.eta=-1.0'),
  ],
)
def test_bad_fast_sampler_settings_fail_in_one_line(key, value, needle):
  config = digits.get_config('tiny')
  config.sample[key] = value
  with pytest.raises(config_lib.ConfigError, match=needle.replace('.', r'\.')) as info:
    config_lib.build_run_config(config)
  assert '\n' not in str(info.value)


def test_guidance_seed_labels_and_eta_do_not_recompile_the_sampler():
  """One compile of the real (tiny RIN, latent self-conditioning, guided) sampler serves
  every guidance weight, eta, seed and label set; a new step count compiles once more."""
  config = digits.get_config('tiny')
  config.sample.sampler = 'dpmpp_2m_sde'
  config.sample.num_steps = 3
  config.sample.guidance = 1.0
  components = build.build(config_lib.build_run_config(config))
  params = components.init_fn(jax.random.PRNGKey(0)).params
  shape = (8, 16, 16, 1)
  noise = jax.random.normal(jax.random.key(0), shape)
  fn = components.sample_batch

  def run(w, eta, seed, labels):
    overrides = {'guidance': jnp.float32(w), 'eta': jnp.float32(eta)}
    return np.asarray(fn(params, noise, labels, jax.random.key(seed), overrides))

  labels = jnp.arange(8, dtype=jnp.int32) % 10
  first = run(1.0, 1.0, 0, labels)
  others = [run(3.0, 1.0, 0, labels), run(1.0, 0.5, 0, labels), run(1.0, 1.0, 1, labels)]
  others.append(run(1.0, 1.0, 0, labels[::-1]))
  assert fn._cache_size() == 1
  for other in others:  # each traced value really reaches the sampler
    assert not np.allclose(first, other)
  # The traced override equals the same setting compiled in.
  np.testing.assert_allclose(
    first, np.asarray(fn(params, noise, labels, jax.random.key(0))), atol=2e-5
  )

  config.sample.num_steps = 4
  longer = build.build(config_lib.build_run_config(config)).sample_batch
  for w in (1.0, 2.0):
    longer(params, noise, labels, jax.random.key(0), {'guidance': jnp.float32(w)})
  assert longer._cache_size() == 1
