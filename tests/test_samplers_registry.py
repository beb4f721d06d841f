"""Tests of the sampler registry: dispatch, NFE, 'default', registering from outside."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import samplers, schedules
from diffusion_jax.objectives import DiffusionConfig, SampleSettings, create_objective

BUILT_IN = ('chen_ddim', 'chen_ddpm', 'ddim', 'ddpm', 'edm', 'edm_euler', 'edm_heun', 'langevin')
SHAPE = (2, 4, 4, 1)


def _objective(**kw):
  base = dict(self_cond_rate=0.0, label_drop_prob=0.0)
  base.update(kw)
  return create_objective(DiffusionConfig(**base))


def _apply(channels: int = 1):
  """A tiny deterministic network; with 2 channels the second is iDDPM's v."""

  def apply(params, x, noise_level, label=None, self_cond=None, train=False, **_):
    level = noise_level.reshape(-1, 1, 1, 1) / 1000.0
    out = params['w'] * jnp.tanh(x) + 0.1 * level
    return jnp.concatenate([out] * channels, axis=-1), None

  return apply


def _reference(name, obj, apply, params, noise, rng, s):
  """The dispatch as it was before the registry, written out per sampler."""
  cfg = obj.config
  learned = cfg.learn_variance and name == 'ddpm'
  make = lambda clip: obj.denoiser(
    apply, params, None, s.guidance, x_shape=noise.shape, clip_x0=clip, return_variance=learned
  )
  d, state = make(s.clip_x0)
  if name in ('chen_ddpm', 'chen_ddim'):
    return samplers.chen_sample(
      d,
      noise,
      steps=s.num_steps,
      gamma_fn=schedules.get_gamma_schedule(s.inference_schedule),
      scale=cfg.scale if cfg.objective == 'chen' else 1.0,
      method=name[len('chen_') :],
      variance=s.chen_ddpm_variance,
      rng=rng,
      init_state=state,
    )
  if name in ('ddpm', 'ddim'):
    base = schedules.DiscreteSchedule.from_name(cfg.beta_schedule, cfg.num_timesteps)
    steps = min(s.num_steps, cfg.num_timesteps)
    sched = base.respace(schedules.space_timesteps(cfg.num_timesteps, steps))
    if name == 'ddim':
      return samplers.ddim_sample(d, noise, sched, rng=rng, init_state=state)
    variance = 'learned' if learned else cfg.fixed_variance
    return samplers.ddpm_sample(d, noise, sched, variance=variance, rng=rng, init_state=state)
  if name.startswith('edm'):
    sigmas = schedules.karras_sigmas(s.num_steps, s.sigma_min, s.sigma_max, s.rho)
    method = 'euler' if name == 'edm_euler' else 'heun'
    return samplers.edm_sample(
      d, noise * sigmas[0], sigmas, method=method, s_churn=s.s_churn, rng=rng, init_state=state
    )
  ratio = (cfg.sigma_max / cfg.sigma_min) ** (1.0 / max(cfg.num_levels - 1, 1))
  step_lr = schedules.ncsn_solve_step_size(ratio, cfg.sigma_min, s.n_steps_each)
  sigmas = schedules.geometric_sigmas(cfg.sigma_max, cfg.sigma_min, cfg.num_levels)
  if cfg.objective == 'ncsn':  # its reference loop: uniform start, raw scores
    d, state = make(False)
    a = obj.data_scale
    x, sigmas, step_lr = 2.0 * jax.scipy.special.ndtr(noise) - 1.0, sigmas / a, step_lr / a**2
  else:
    x = noise * sigmas[0]
  out = samplers.langevin_sample(
    d, x, sigmas, n_steps_each=s.n_steps_each, step_lr=step_lr, rng=rng, init_state=state
  )
  return jnp.clip(out, -1.0, 1.0) if s.clip_x0 else out


@pytest.mark.parametrize(
  'name,objective,settings',
  [
    ('chen_ddpm', dict(objective='chen', scale=0.7), dict(chen_ddpm_variance='small')),
    ('chen_ddim', dict(objective='ddpm', num_timesteps=50), {}),
    ('ddpm', dict(objective='ddpm', num_timesteps=50), dict(num_steps=60)),
    ('ddpm', dict(objective='iddpm', num_timesteps=50, learn_variance=True), {}),
    ('ddim', dict(objective='iddpm', num_timesteps=50), dict(clip_x0=False)),
    ('edm', dict(objective='edm'), dict(s_churn=2.0)),
    ('edm_heun', dict(objective='chen'), {}),
    ('edm_euler', dict(objective='edm'), {}),
    ('langevin', dict(objective='ncsn', sigma_max=1.0, sigma_min=0.05, num_levels=3), {}),
    ('langevin', dict(objective='ncsn', sigma_max=1.0, sigma_min=0.05, num_levels=3), 'unclip'),
    ('langevin', dict(objective='edm', sigma_max=1.0, sigma_min=0.05, num_levels=3), {}),
  ],
)
def test_every_built_in_dispatches_as_before(name, objective, settings):
  settings = dict(clip_x0=False) if settings == 'unclip' else settings
  obj = _objective(**objective)
  apply = _apply(2 if obj.config.learn_variance else 1)
  s = SampleSettings(**{'sampler': name, 'num_steps': 4, 'n_steps_each': 2, **settings})
  params = {'w': 0.5}

  @jax.jit
  def both(noise, rng):
    new = samplers.sample(obj, apply, params, noise, None, rng, s)
    return new, _reference(name, obj, apply, params, noise, rng, s)

  new, old = both(jax.random.normal(jax.random.key(0), SHAPE), jax.random.key(1))
  assert new.shape == SHAPE
  np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


@pytest.mark.parametrize(
  'objective,default',
  [
    ('chen', 'chen_ddpm'),
    ('ddpm', 'ddpm'),
    ('iddpm', 'ddpm'),
    ('edm', 'edm_heun'),
    ('ncsn', 'langevin'),
  ],
)
def test_default_is_the_objectives_own(objective, default):
  obj = _objective(objective=objective)
  assert obj.default_sampler == default
  assert samplers.resolve(SampleSettings(), obj) is samplers.get(default)


def test_nfe_per_sampler():
  n = 7
  s = lambda name, **kw: SampleSettings(sampler=name, num_steps=n, **kw)
  discrete = _objective(objective='ddpm', num_timesteps=50)
  ncsn = _objective(objective='ncsn', num_levels=10)
  assert samplers.nfe(s('edm'), discrete) == samplers.edm_nfe(n, 'heun') == 2 * n - 1
  assert samplers.nfe(s('edm_heun'), discrete) == 2 * n - 1
  assert samplers.nfe(s('edm_euler'), discrete) == n
  assert samplers.nfe(s('chen_ddpm'), discrete) == samplers.nfe(s('chen_ddim'), discrete) == n
  assert samplers.nfe(s('ddim'), discrete) == n
  assert samplers.nfe(SampleSettings(sampler='ddpm', num_steps=80), discrete) == 50  # capped at T
  assert samplers.nfe(s('default', n_steps_each=3), ncsn) == 10 * 3 + 1
  assert samplers.nfe(s('default'), _objective(objective='edm')) == 2 * n - 1


def test_registered_names_and_needs():
  assert set(BUILT_IN) <= set(samplers.names())
  assert samplers.get('ddpm').needs == {'stochastic', 'learned_variance', 'discrete_schedule'}
  assert samplers.get('ddim').needs == {'discrete_schedule'}
  assert 'stochastic' in samplers.get('langevin').needs
  assert samplers.get('edm_euler').needs == frozenset()


def test_a_sampler_registered_from_outside_is_selected_by_config():
  calls = []

  @samplers.register('test_halfway', nfe=lambda settings, objective: 3 * settings.num_steps)
  def halfway(objective, denoiser, noise, rng, settings):
    denoise_fn, _ = denoiser()
    calls.append(settings.num_steps)
    return denoise_fn(noise, 1.0)

  try:
    settings = SampleSettings.from_config({'sampler': 'test_halfway', 'num_steps': 2})
    obj = _objective(objective='edm')
    out = samplers.sample(obj, _apply(), {'w': 0.5}, jnp.zeros(SHAPE), None, None, settings)
    assert out.shape == SHAPE and calls == [2]
    assert samplers.nfe(settings, obj) == 6
    with pytest.raises(ValueError, match='already registered'):
      samplers.register('test_halfway', nfe=lambda s, o: 1)(lambda *a: None)
    assert samplers.register('test_halfway', nfe=lambda s, o: 1)(halfway) is halfway
  finally:
    samplers.registry._REGISTRY.pop('test_halfway')
  with pytest.raises(ValueError, match='config.sample.sampler'):
    SampleSettings(sampler='test_halfway')


def test_an_outside_sampler_is_selected_through_the_run_config():
  import importlib.util
  import os

  from diffusion_jax import config as config_lib

  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs', 'default.py')
  spec = importlib.util.spec_from_file_location('default_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.sample.sampler = 'test_outside'
  samplers.register('test_outside', nfe=lambda settings, objective: 42)(lambda *a: None)
  try:
    run = config_lib.build_run_config(config, num_devices=1)
    objective = create_objective(run.diffusion, run.model)
    assert run.sample.sampler == 'test_outside'
    assert samplers.nfe(run.sample, objective) == 42
  finally:
    samplers.registry._REGISTRY.pop('test_outside')
  with pytest.raises(ValueError, match="config.sample.sampler='test_outside' is not one of"):
    config_lib.build_run_config(config, num_devices=1)


def test_unknown_names_and_bad_registrations_are_one_line_errors():
  with pytest.raises(
    ValueError, match=r"config.sample.sampler='nope' is not one of default, chen"
  ) as e:
    SampleSettings.from_config({'sampler': 'nope'})
  assert '\n' not in str(e.value) and all(name in str(e.value) for name in BUILT_IN)
  with pytest.raises(ValueError, match=r"unknown sampler 'nope'; registered: chen_ddim") as e:
    samplers.get('nope')
  assert '\n' not in str(e.value)
  with pytest.raises(ValueError, match='other than'):
    samplers.register('default', nfe=lambda s, o: 1)
  with pytest.raises(ValueError, match='unknown needs'):
    samplers.register('test_x', nfe=lambda s, o: 1, needs={'gpu'})
  with pytest.raises(ValueError, match='draws noise'):
    obj = _objective(objective='edm')
    samplers.sample(
      obj, _apply(), {'w': 0.5}, jnp.zeros(SHAPE), None, None, SampleSettings(sampler='langevin')
    )
