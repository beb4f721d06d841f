"""The built-in registry entries: each config name's sampler call, NFE and needs.

Every entry drives the objective's EDM-form denoiser, so any objective runs any of
them; each objective names its own as `default_sampler` (Chen -> 'chen_ddpm', DDPM /
iDDPM -> 'ddpm', EDM -> 'edm_heun', NCSNv2 -> 'langevin').
"""

from __future__ import annotations

import jax.numpy as jnp

from diffusion_jax import schedules
from diffusion_jax.samplers.chen import chen_sample
from diffusion_jax.samplers.discrete import ddim_sample, ddpm_sample
from diffusion_jax.samplers.edm import edm_nfe, edm_sample
from diffusion_jax.samplers.langevin import langevin_sample
from diffusion_jax.samplers.registry import register


def _num_steps(settings, objective) -> int:
  return settings.num_steps


def _chen(method: str):
  """Chen 2023 Algorithm 3 with its DDPM or DDIM step. Source: Chen 2023, Algorithm 3."""

  def run(objective, denoiser, noise, rng, settings):
    denoise_fn, init_state = denoiser()
    return chen_sample(
      denoise_fn,
      noise,
      steps=settings.num_steps,
      gamma_fn=schedules.get_gamma_schedule(settings.inference_schedule),
      scale=objective.input_scale,
      method=method,
      variance=settings.chen_ddpm_variance,
      rng=rng,
      init_state=init_state,
    )

  return run


register('chen_ddpm', nfe=_num_steps, needs={'stochastic'})(_chen('ddpm'))
register('chen_ddim', nfe=_num_steps)(_chen('ddim'))


def _respaced_schedule(objective, settings) -> schedules.DiscreteSchedule:
  """The objective's beta table respaced to num_steps (at most its T) steps."""
  cfg = objective.config
  base = schedules.DiscreteSchedule.from_name(cfg.beta_schedule, cfg.num_timesteps)
  steps = min(settings.num_steps, cfg.num_timesteps)
  return base.respace(schedules.space_timesteps(cfg.num_timesteps, steps))


def _discrete_nfe(settings, objective) -> int:
  return min(settings.num_steps, objective.config.num_timesteps)


@register('ddpm', nfe=_discrete_nfe, needs={'stochastic', 'learned_variance', 'discrete_schedule'})
def _ddpm(objective, denoiser, noise, rng, settings):
  """Ancestral sampling; iDDPM's learned variance when the model has one.

  Source: Ho 2020, Algorithm 2; Nichol & Dhariwal 2021, Eq. 15.
  """
  denoise_fn, init_state = denoiser()
  cfg = objective.config
  variance = 'learned' if cfg.learn_variance else cfg.fixed_variance
  schedule = _respaced_schedule(objective, settings)
  return ddpm_sample(denoise_fn, noise, schedule, variance=variance, rng=rng, init_state=init_state)


@register('ddim', nfe=_discrete_nfe, needs={'discrete_schedule'})
def _ddim(objective, denoiser, noise, rng, settings):
  """Deterministic DDIM (eta = 0). Source: Song et al. 2021 (DDIM), Eq. 12."""
  denoise_fn, init_state = denoiser()
  schedule = _respaced_schedule(objective, settings)
  return ddim_sample(denoise_fn, noise, schedule, rng=rng, init_state=init_state)


def _edm(method: str):
  """EDM's sampler on the rho grid. Source: Karras et al. 2022, Algorithms 1-2."""

  def run(objective, denoiser, noise, rng, settings):
    denoise_fn, init_state = denoiser()
    s = settings
    sigmas = schedules.karras_sigmas(s.num_steps, s.sigma_min, s.sigma_max, s.rho)
    return edm_sample(
      denoise_fn,
      noise * sigmas[0],
      sigmas,
      method=method,
      s_churn=s.s_churn,
      s_tmin=s.s_tmin,
      s_tmax=s.s_tmax,
      s_noise=s.s_noise,
      rng=rng,
      init_state=init_state,
    )

  return run


def _heun_nfe(settings, objective) -> int:
  return edm_nfe(settings.num_steps, 'heun')


register('edm', nfe=_heun_nfe)(_edm('heun'))
register('edm_heun', nfe=_heun_nfe)(_edm('heun'))
register('edm_euler', nfe=_num_steps)(_edm('euler'))


def _langevin_nfe(settings, objective) -> int:
  return objective.config.num_levels * settings.n_steps_each + 1


@register('langevin', nfe=_langevin_nfe, needs={'stochastic'})
def _langevin(objective, denoiser, noise, rng, settings):
  """Annealed Langevin dynamics from the objective's start over its ladder.

  The objective decides the start, the levels, the step size and whether scores see a
  clipped x0 (`Objective.langevin_start`); `clip_x0` clamps the final sample.

  Source: Song & Ermon 2020 (NCSNv2), Algorithm 1 and Appendix C.2.
  """
  start = objective.langevin_start(noise, settings)
  denoise_fn, init_state = denoiser(clip_x0=settings.clip_x0 and start.clip_denoiser)
  out = langevin_sample(
    denoise_fn,
    start.x,
    start.sigmas,
    n_steps_each=settings.n_steps_each,
    step_lr=start.step_lr,
    rng=rng,
    init_state=init_state,
  )
  return jnp.clip(out, -1.0, 1.0) if settings.clip_x0 else out
