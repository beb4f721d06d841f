"""Drives the samplers package with an objective's denoiser (`Objective.sample`).

`config.sample` is converted once into `SampleSettings`. Any objective can run any
sampler, because every sampler takes the EDM-form denoiser; 'default' picks the
objective family's own: Chen -> 'chen_ddpm', DDPM / iDDPM -> 'ddpm', EDM -> 'edm_heun',
NCSNv2 -> 'langevin'.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax import samplers, schedules

SAMPLERS = (
  'default',
  'chen_ddpm',
  'chen_ddim',
  'ddpm',
  'ddim',
  'edm',
  'edm_heun',
  'edm_euler',
  'langevin',
)
FAMILY_DEFAULT = {
  'chen': 'chen_ddpm',
  'ddpm': 'ddpm',
  'iddpm': 'ddpm',
  'edm': 'edm_heun',
  'ncsn': 'langevin',
}


def _get(cfg: Any, key: str, default: Any) -> Any:
  if cfg is None:
    return default
  if isinstance(cfg, dict) or (hasattr(cfg, 'get') and not dataclasses.is_dataclass(cfg)):
    value = cfg.get(key, default)
  else:
    value = getattr(cfg, key, default)
  return default if value is None else value


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """The sampler settings an objective reads from `config.sample`."""

  sampler: str = 'default'
  num_steps: int = 100
  inference_schedule: str = 'cosine'  # Chen samplers' gamma(t).
  chen_ddpm_variance: str = 'large'  # 'large' (the reference's) | 'small' (posterior).
  guidance: float = 0.0
  guidance_carry: str = 'conditional'  # self-cond. carry under guidance | 'separate'.
  clip_x0: bool = True
  s_churn: float = 0.0
  s_tmin: float = 0.0
  s_tmax: float = float('inf')
  s_noise: float = 1.0
  sigma_min: float = 0.002  # EDM rho schedule.
  sigma_max: float = 80.0
  rho: float = 7.0
  n_steps_each: int = 5  # Langevin steps per level (NCSNv2's T).
  step_lr: float = 0.0  # Langevin eps; 0 = solve Technique 4 for it.

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(
        f'config.sample.sampler={self.sampler!r} is not one of {", ".join(SAMPLERS)}.'
      )
    if (
      isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1
    ):
      raise ValueError(f'config.sample.num_steps={self.num_steps!r} must be an int >= 1.')
    if self.inference_schedule not in ('linear', 'sigmoid', 'cosine'):
      raise ValueError(
        f'config.sample.inference_schedule={self.inference_schedule!r} is not one of '
        'linear, sigmoid, cosine.'
      )
    if not self.guidance >= 0:
      raise ValueError(f'config.sample.guidance={self.guidance!r} must be >= 0 (0 = off).')
    if self.chen_ddpm_variance not in samplers.CHEN_DDPM_VARIANCES:
      raise ValueError(
        f'config.sample.chen_ddpm_variance={self.chen_ddpm_variance!r} is not one of '
        f'{", ".join(samplers.CHEN_DDPM_VARIANCES)}.'
      )
    if self.guidance_carry not in samplers.GUIDANCE_CARRIES:
      raise ValueError(
        f'config.sample.guidance_carry={self.guidance_carry!r} is not one of '
        f'{", ".join(samplers.GUIDANCE_CARRIES)}.'
      )

  @classmethod
  def from_config(cls, sample_cfg: Any) -> SampleSettings:
    """Reads the known keys of `config.sample` (a ConfigDict, dict or SampleSettings)."""
    if isinstance(sample_cfg, cls):
      return sample_cfg
    values = {f.name: _get(sample_cfg, f.name, f.default) for f in dataclasses.fields(cls)}
    values['guidance'] = float(values['guidance'])
    return cls(**values)


def run_sampler(
  objective,
  apply_fn,
  params,
  noise: jax.Array,
  label,
  rng: jax.Array,
  sample_cfg: Any,
  default: str,
) -> jax.Array:
  """Samples images [B, H, W, C] in data space from unit Gaussian `noise` of that shape.

  Args:
    objective: the Objective whose `denoiser` is driven.
    apply_fn: the model's apply function.
    params: model parameters.
    noise: N(0, I) [B, H, W, C].
    label: int32 [B] or None.
    rng: PRNG key for stochastic samplers.
    sample_cfg: `config.sample` or SampleSettings.
    default: the sampler used for 'default'.
  """
  s = SampleSettings.from_config(sample_cfg)
  name = default if s.sampler == 'default' else s.sampler
  cfg = objective.config
  learned = cfg.learn_variance and name == 'ddpm'
  denoise_fn, init_state = objective.denoiser(
    apply_fn,
    params,
    label,
    s.guidance,
    x_shape=noise.shape,
    clip_x0=s.clip_x0,
    return_variance=learned,
    guidance_carry=s.guidance_carry,
  )
  if name in ('chen_ddpm', 'chen_ddim'):
    gamma_fn = schedules.get_gamma_schedule(s.inference_schedule)
    scale = cfg.scale if cfg.objective == 'chen' else 1.0
    return samplers.chen_sample(
      denoise_fn,
      noise,
      steps=s.num_steps,
      gamma_fn=gamma_fn,
      scale=scale,
      method=name[len('chen_') :],
      variance=s.chen_ddpm_variance,
      rng=rng,
      init_state=init_state,
    )
  if name in ('ddpm', 'ddim'):
    base = schedules.DiscreteSchedule.from_name(cfg.beta_schedule, cfg.num_timesteps)
    steps = min(s.num_steps, cfg.num_timesteps)
    schedule = base.respace(schedules.space_timesteps(cfg.num_timesteps, steps))
    if name == 'ddim':
      return samplers.ddim_sample(denoise_fn, noise, schedule, rng=rng, init_state=init_state)
    variance = 'learned' if learned else cfg.fixed_variance
    return samplers.ddpm_sample(
      denoise_fn, noise, schedule, variance=variance, rng=rng, init_state=init_state
    )
  if name in ('edm', 'edm_heun', 'edm_euler'):
    sigmas = schedules.karras_sigmas(s.num_steps, s.sigma_min, s.sigma_max, s.rho)
    return samplers.edm_sample(
      denoise_fn,
      noise * sigmas[0],
      sigmas,
      method='euler' if name == 'edm_euler' else 'heun',
      s_churn=s.s_churn,
      s_tmin=s.s_tmin,
      s_tmax=s.s_tmax,
      s_noise=s.s_noise,
      rng=rng,
      init_state=init_state,
    )
  # 'langevin': NCSNv2 annealed Langevin dynamics over the training levels.
  sigmas = schedules.geometric_sigmas(cfg.sigma_max, cfg.sigma_min, cfg.num_levels)
  step_lr = s.step_lr
  if step_lr <= 0:
    ratio = (cfg.sigma_max / cfg.sigma_min) ** (1.0 / max(cfg.num_levels - 1, 1))
    step_lr = schedules.ncsn_solve_step_size(ratio, cfg.sigma_min, s.n_steps_each)
  x = jnp.asarray(noise) * sigmas[0]
  out = samplers.langevin_sample(
    denoise_fn,
    x,
    sigmas,
    n_steps_each=s.n_steps_each,
    step_lr=step_lr,
    rng=rng,
    init_state=init_state,
  )
  return jnp.clip(out, -1.0, 1.0) if s.clip_x0 else out


def nfe(
  sample_cfg: Any, objective_name: str, num_timesteps: int = 1000, num_levels: int = 1
) -> int:
  """Network evaluations per sample of the configured sampler (guidance runs each on 2B)."""
  s = SampleSettings.from_config(sample_cfg)
  name = FAMILY_DEFAULT[objective_name] if s.sampler == 'default' else s.sampler
  if name in ('edm', 'edm_heun'):
    n = samplers.edm_nfe(s.num_steps, 'heun')
  elif name == 'edm_euler':
    n = s.num_steps
  elif name in ('ddpm', 'ddim'):
    n = min(s.num_steps, num_timesteps)
  elif name == 'langevin':
    n = num_levels * s.n_steps_each + 1
  else:
    n = s.num_steps
  return int(n)
