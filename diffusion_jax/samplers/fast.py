"""Registry entries of the fast samplers: k-diffusion's and diffusers' families by name.

Each family module exports `FAST_SAMPLERS` (name -> `stepping.FastSampler`); this module
registers every one as a `config.sample.sampler` value. The entry builds the noise-level
grid of `config.sample.sigmas` (`sampling_sigmas`), scales the unit noise by its first
level, and passes the options the sampler takes from `config.sample` (those left None
keep the sampler's own default):

    config.sample.sampler = 'dpmpp_2m'
    config.sample.sigmas = 'karras'     # | exponential | polyexponential | discrete
    config.sample.num_steps = 20

so any of them drives any objective through its EDM-form denoiser, with classifier-free
guidance and the self-conditioning carry as every other sampler.
"""

from __future__ import annotations

from typing import Any

import jax

from diffusion_jax import schedules
from diffusion_jax.samplers import (
  deis_multistep,
  dpm_solver,
  multistep,
  single_step,
  stepping,
  unipc_multistep,
)
from diffusion_jax.samplers.registry import register

FAMILIES = (single_step, dpm_solver, multistep, unipc_multistep, deis_multistep)


def sampling_sigmas(settings: Any, objective: Any) -> jax.Array:
  """The grid `settings.sigmas` names with `settings.num_steps` steps: f32 [num_steps + 1].

  karras: EDM's rho schedule (sigma_min, sigma_max, rho); exponential / polyexponential:
  k-diffusion's (polyexponential_rho); discrete: the objective's training timesteps
  (`Objective.sampling_schedule`) at diffusers' `timestep_spacing`.
  """
  n, s = settings.num_steps, settings
  if s.sigmas == 'karras':
    return schedules.karras_sigmas(n, s.sigma_min, s.sigma_max, s.rho)
  if s.sigmas == 'exponential':
    return schedules.exponential_sigmas(n, s.sigma_min, s.sigma_max)
  if s.sigmas == 'polyexponential':
    return schedules.polyexponential_sigmas(n, s.sigma_min, s.sigma_max, s.polyexponential_rho)
  return schedules.discrete_sigmas(objective.sampling_schedule(), n, s.timestep_spacing)


def _options(spec: stepping.FastSampler, settings: Any) -> dict[str, Any]:
  return {k: getattr(settings, k) for k in spec.options if getattr(settings, k) is not None}


def _entry(name: str, spec: stepping.FastSampler):
  def run(objective, denoiser, noise, rng, settings):
    denoise_fn, init_state = denoiser()
    options = _options(spec, settings)
    if spec.grid_free:
      kwargs = {'sigma_min': settings.sigma_min, 'sigma_max': settings.sigma_max}
      if name == 'dpm_fast':
        kwargs['n'] = settings.num_steps
      return spec.fn(
        denoise_fn,
        noise * settings.sigma_max,
        rng=rng,
        init_state=init_state,
        **kwargs,
        **options,
      )
    sigmas = sampling_sigmas(settings, objective)
    return spec.fn(denoise_fn, noise * sigmas[0], sigmas, rng=rng, init_state=init_state, **options)

  def nfe(settings, objective) -> int:
    options = {k: v for k, v in _options(spec, settings).items() if not _traced(v)}
    return int(spec.nfe(settings.num_steps, **options))

  run.__doc__ = spec.fn.__doc__
  return run, nfe


def _traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def register_all() -> tuple[str, ...]:
  """Registers every family's FAST_SAMPLERS; returns their names."""
  added = []
  for family in FAMILIES:
    for name, spec in family.FAST_SAMPLERS.items():
      run, nfe = _entry(name, spec)
      register(name, nfe=nfe, needs={'stochastic'} if spec.stochastic else set())(run)
      added.append(name)
  return tuple(added)


NAMES = register_all()

__all__ = ['FAMILIES', 'NAMES', 'register_all', 'sampling_sigmas']
