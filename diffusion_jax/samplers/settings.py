"""`SampleSettings`: the typed `config.sample` every registered sampler reads.

Built once at the boundary (`diffusion_jax.config.build_run_config`) and passed to
`samplers.sample` / `samplers.nfe`. `sampler` is 'default' (the objective's own,
`Objective.default_sampler`) or any registered name, including samplers registered
from outside the package before the settings are built.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from diffusion_jax.samplers import registry
from diffusion_jax.samplers.chen import DDPM_VARIANCES as CHEN_DDPM_VARIANCES
from diffusion_jax.samplers.guidance import GUIDANCE_CARRIES

INFERENCE_SCHEDULES = ('linear', 'sigmoid', 'cosine')


def _one_of(key: str, value: Any, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise ValueError(f'config.sample.{key}={value!r} is not one of {", ".join(valid)}.')


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """The sampler settings of `config.sample` (see configs/default.py)."""

  sampler: str = 'default'  # 'default' = the objective's own, or a registered name.
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
    _one_of('sampler', self.sampler, ('default', *registry.names()))
    steps = self.num_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
      raise ValueError(f'config.sample.num_steps={steps!r} must be an int >= 1.')
    _one_of('inference_schedule', self.inference_schedule, INFERENCE_SCHEDULES)
    if not self.guidance >= 0:
      raise ValueError(f'config.sample.guidance={self.guidance!r} must be >= 0 (0 = off).')
    _one_of('chen_ddpm_variance', self.chen_ddpm_variance, CHEN_DDPM_VARIANCES)
    _one_of('guidance_carry', self.guidance_carry, GUIDANCE_CARRIES)

  @classmethod
  def from_config(cls, sample_cfg: Any) -> SampleSettings:
    """Reads the sampler fields of `config.sample` (or returns a SampleSettings as is).

    Unknown keys are rejected at the boundary (`diffusion_jax.config.build_run_config`),
    which also owns the section's output keys (num_samples, batch_size); this reads
    only the fields above.

    Args:
      sample_cfg: a dict or ConfigDict with `config.sample` keys, or a SampleSettings.
        Missing keys and None values take the defaults above.

    Raises:
      ValueError: an invalid value, naming its key.
    """
    if isinstance(sample_cfg, cls):
      return sample_cfg
    values = dict(sample_cfg.items()) if sample_cfg is not None else {}
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if k in names and v is not None}
    if 'guidance' in values:
      values['guidance'] = float(values['guidance'])
    return cls(**values)
