"""`SampleSettings`: the typed `config.sample` every registered sampler reads.

Built once at the boundary (`diffusion_jax.config.build_run_config`) and passed to
`samplers.sample` / `samplers.nfe`. `sampler` is 'default' (the objective's own,
`Objective.default_sampler`) or any registered name, including samplers registered
from outside the package before the settings are built.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from diffusion_jax.samplers import registry
from diffusion_jax.samplers.chen import DDPM_VARIANCES as CHEN_DDPM_VARIANCES
from diffusion_jax.samplers.guidance import GUIDANCE_CARRIES

INFERENCE_SCHEDULES = ('linear', 'sigmoid', 'cosine')
# The noise-level grids of the fast samplers (`config.sample.sigmas`).
SIGMA_GRIDS = ('karras', 'exponential', 'polyexponential', 'discrete')
SOLVER_TYPES = ('midpoint', 'heun')
MULTISTEP_STYLES = ('k_diffusion', 'diffusers')
UNIPC_VARIANTS = ('bh1', 'bh2')
# Settings that may be traced values: a jitted sampler given them as arguments (see
# `build.Components.sample_batch`) runs any value without recompiling.
TRACEABLE = ('guidance', 'eta', 's_noise', 's_churn')


def _is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


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
  # The fast samplers (samplers/fast.py). None = the sampler's own default.
  sigmas: str = 'karras'  # their noise-level grid, one of SIGMA_GRIDS.
  polyexponential_rho: float = 1.0
  timestep_spacing: str = 'linspace'  # 'discrete' grid: linspace | leading | trailing.
  eta: float | None = None  # ancestral / SDE noise scale (k-diffusion's eta).
  order: int | None = None  # lms, dpm_adaptive, unipc, deis.
  r: float | None = None  # dpmpp_sde's intermediate step fraction.
  solver_type: str | None = None  # dpmpp_2m_sde: midpoint | heun.
  multistep_style: str | None = None  # dpmpp_2m / dpmpp_3m: k_diffusion | diffusers.
  variant: str | None = None  # unipc: bh2 | bh1.
  lower_order_final: bool | None = None  # diffusers-style multistep solvers.
  rtol: float | None = None  # dpm_adaptive's error control.
  atol: float | None = None
  h_init: float | None = None
  pcoeff: float | None = None
  icoeff: float | None = None
  dcoeff: float | None = None
  accept_safety: float | None = None
  max_steps: int | None = None  # dpm_adaptive's step bound.

  def __post_init__(self):
    _one_of('sampler', self.sampler, ('default', *registry.names()))
    steps = self.num_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
      raise ValueError(f'config.sample.num_steps={steps!r} must be an int >= 1.')
    _one_of('inference_schedule', self.inference_schedule, INFERENCE_SCHEDULES)
    if not _is_traced(self.guidance) and not self.guidance >= 0:
      raise ValueError(f'config.sample.guidance={self.guidance!r} must be >= 0 (0 = off).')
    _one_of('chen_ddpm_variance', self.chen_ddpm_variance, CHEN_DDPM_VARIANCES)
    _one_of('guidance_carry', self.guidance_carry, GUIDANCE_CARRIES)
    _one_of('sigmas', self.sigmas, SIGMA_GRIDS)
    _one_of('timestep_spacing', self.timestep_spacing, ('linspace', 'leading', 'trailing'))
    for key, valid in (
      ('solver_type', SOLVER_TYPES),
      ('multistep_style', MULTISTEP_STYLES),
      ('variant', UNIPC_VARIANTS),
    ):
      if getattr(self, key) is not None:
        _one_of(key, getattr(self, key), valid)
    for key in ('eta', 's_noise', 's_churn'):
      value = getattr(self, key)
      if value is not None and not _is_traced(value) and not float(value) >= 0:
        raise ValueError(f'config.sample.{key}={value!r} must be >= 0.')
    if self.order is not None and (isinstance(self.order, bool) or self.order not in (1, 2, 3, 4)):
      raise ValueError(f'config.sample.order={self.order!r} must be 1, 2, 3 or 4 (None = default).')

  def replace(self, **values: Any) -> SampleSettings:
    """A copy with `values` set; the TRACEABLE ones may be traced arrays (inside jit)."""
    return dataclasses.replace(self, **values)

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
