"""The typed, validated settings of a training objective (`config.diffusion` converted once)."""

from __future__ import annotations

import dataclasses
from typing import Any

from diffusion_jax import parameterization, schedules

OBJECTIVES = ('chen', 'ddpm', 'iddpm', 'edm', 'ncsn')
GAMMA_SCHEDULES = ('linear', 'sigmoid', 'cosine')
BETA_SCHEDULES = ('linear', 'cosine')
LOSSES = ('simple', 'hybrid', 'vlb')
FIXED_VARIANCES = ('small', 'large')
DISCRETE = ('ddpm', 'iddpm')
DATA_RANGES = ('unit', 'symmetric')
REDUCTIONS = ('sum', 'mean')


def _one_of(name: str, value: Any, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise ValueError(f'config.diffusion.{name}={value!r} is not one of {", ".join(valid)}.')


def _positive(name: str, value: Any, fix: str = '') -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
    raise ValueError(f'config.diffusion.{name}={value!r} must be a number > 0.{fix}')


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """Settings of the diffusion process and its training loss, validated.

  Field names mirror `config.diffusion`; `learn_variance` comes from `config.model`.
  Build it with `from_config`.
  """

  objective: str = 'chen'
  # Chen 2023 (continuous time).
  train_schedule: str = 'linear'
  schedule_start: float = 0.0
  schedule_end: float = 1.0
  schedule_tau: float = 1.0
  scale: float = 1.0
  prediction: str = 'eps'
  normalize: str = 'per_example'
  self_cond_rate: float = 0.0
  label_drop_prob: float = 0.0
  # DDPM / iDDPM.
  num_timesteps: int = 1000
  beta_schedule: str = 'linear'
  loss: str = 'simple'
  importance_sampling: bool = False
  fixed_variance: str = 'small'  # reverse variance when not learned: betatilde or beta.
  hybrid_weight: float = 0.001  # iDDPM's lambda.
  # Feed the model t * 1000 / T (improved-diffusion's scripts' default); at T = 1000 a no-op.
  rescale_timesteps: bool = True
  # EDM.
  sigma_data: float = 0.5
  p_mean: float = -1.2
  p_std: float = 1.2
  precond: str = 'edm'  # EDM's 'edm' | 'vp' | 've' preconditioning (models/edm_precond.py).
  # NCSNv2.
  sigma_max: float = 50.0
  sigma_min: float = 0.01
  num_levels: int = 232
  # The network's data range: 'unit' = [0, 1] (the reference's CIFAR-10, `rescaled: false`,
  # which the ladder above is for) or 'symmetric' = the pipeline's [-1, 1].
  data_range: str = 'unit'
  # Per-example loss over dimensions: 'sum' (reference `losses/dsm.py`) or 'mean' (sum / D).
  ncsn_loss_reduction: str = 'sum'
  # From the model and data sections.
  learn_variance: bool = False

  def __post_init__(self):
    self.validate()

  @classmethod
  def from_config(cls, diffusion_cfg: Any, model_cfg: Any = None) -> DiffusionConfig:
    """Converts `config.diffusion` (plus the model's `learn_variance`) into a DiffusionConfig.

    Args:
      diffusion_cfg: `config.diffusion` (a ConfigDict, dict or DiffusionConfig).
      model_cfg: a ModelConfig or `config.model` (reads `learn_variance`), optional.

    Raises:
      ValueError: an unknown key or an invalid value, naming the config key.
    """
    if isinstance(diffusion_cfg, cls):
      values = dataclasses.asdict(diffusion_cfg)
    else:
      values = dict(diffusion_cfg.items())
      names = {f.name for f in dataclasses.fields(cls)} - {'learn_variance'}
      unknown = sorted(set(values) - names)
      if unknown:
        from diffusion_jax import config as config_lib  # one wording for unknown keys

        config_lib.check_keys('diffusion', unknown, names)
    if model_cfg is not None:
      values['learn_variance'] = bool(getattr(model_cfg, 'learn_variance', False))
    return cls(**values)

  @property
  def is_discrete(self) -> bool:
    return self.objective in DISCRETE

  def gamma_fn(self):
    """gamma(t) of the training schedule (Chen 2023, Algorithm 1)."""
    kwargs = {}
    if self.train_schedule != 'linear':
      kwargs = dict(start=self.schedule_start, end=self.schedule_end, tau=self.schedule_tau)
    return schedules.get_gamma_schedule(self.train_schedule, **kwargs)

  def discrete_schedule(self) -> schedules.DiscreteSchedule:
    """The DDPM / iDDPM schedule (cached per name and length)."""
    return _discrete_schedule(self.beta_schedule, self.num_timesteps)

  def validate(self) -> None:
    """Raises ValueError naming the first invalid config key."""
    _one_of('objective', self.objective, OBJECTIVES)
    _one_of('prediction', self.prediction, parameterization.PREDICTION_KINDS)
    _one_of('loss', self.loss, LOSSES)
    for name in ('self_cond_rate', 'label_drop_prob'):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise ValueError(f'config.diffusion.{name}={v!r} must lie in [0, 1]; 0 turns it off.')
    if self.learn_variance and self.objective != 'iddpm':
      raise ValueError(
        f'config.model.learn_variance=True needs config.diffusion.objective=iddpm, got '
        f'{self.objective!r}; set learn_variance=False or switch to iddpm.'
      )
    if self.loss != 'simple' and not self.is_discrete:
      raise ValueError(
        f'config.diffusion.loss={self.loss!r} is only defined for ddpm and iddpm; '
        f'objective {self.objective!r} takes loss=simple.'
      )
    if self.loss == 'hybrid' and not self.learn_variance:
      raise ValueError(
        "config.diffusion.loss='hybrid' trains the learned variance: set "
        "config.model.learn_variance=True (objective iddpm) or use loss='simple'."
      )
    if self.importance_sampling and not self.is_discrete:
      raise ValueError(
        'config.diffusion.importance_sampling=True is only defined for ddpm and iddpm '
        f'(timestep sampling for L_vlb), got objective {self.objective!r}.'
      )
    if self.objective == 'chen':
      _one_of('train_schedule', self.train_schedule, GAMMA_SCHEDULES)
      _one_of('normalize', self.normalize, parameterization.NORMALIZE_MODES)
      _positive('scale', self.scale, ' Chen 2023 uses b in (0, 1] for large images.')
      try:
        self.gamma_fn()
      except ValueError as e:
        raise ValueError(
          f'config.diffusion.schedule_start/schedule_end/schedule_tau are invalid for '
          f'train_schedule={self.train_schedule!r}: {e}'
        ) from None
    if self.is_discrete:
      _one_of('beta_schedule', self.beta_schedule, BETA_SCHEDULES)
      _one_of('fixed_variance', self.fixed_variance, FIXED_VARIANCES)
      if isinstance(self.num_timesteps, bool) or not isinstance(self.num_timesteps, int):
        raise ValueError(f'config.diffusion.num_timesteps={self.num_timesteps!r} must be an int.')
      if self.num_timesteps < 2:
        raise ValueError(f'config.diffusion.num_timesteps={self.num_timesteps} must be >= 2.')
      _positive('hybrid_weight', self.hybrid_weight, ' iDDPM uses 0.001.')
      if not isinstance(self.rescale_timesteps, bool):
        raise ValueError(
          f'config.diffusion.rescale_timesteps={self.rescale_timesteps!r} must be True or False.'
        )
      if self.beta_schedule == 'linear' and self.num_timesteps < 20:
        raise ValueError(
          f'config.diffusion.num_timesteps={self.num_timesteps} is too short for the linear '
          "schedule (betas scale by 1000 / T and pass 1 below T = 20); use >= 20 or 'cosine'."
        )
    if self.objective == 'edm':
      _positive('sigma_data', self.sigma_data, ' EDM uses 0.5 for data in [-1, 1].')
      _positive('p_std', self.p_std, ' EDM uses 1.2.')
      _one_of('precond', self.precond, ('edm', 'vp', 've'))
    if self.objective == 'ncsn':
      _positive('sigma_min', self.sigma_min)
      _positive('sigma_max', self.sigma_max)
      if not self.sigma_max > self.sigma_min:
        raise ValueError(
          f'config.diffusion.sigma_max={self.sigma_max} must exceed '
          f'config.diffusion.sigma_min={self.sigma_min}.'
        )
      if isinstance(self.num_levels, bool) or not isinstance(self.num_levels, int):
        raise ValueError(f'config.diffusion.num_levels={self.num_levels!r} must be an int.')
      if self.num_levels < 1:
        raise ValueError(f'config.diffusion.num_levels={self.num_levels} must be >= 1.')
      _one_of('data_range', self.data_range, DATA_RANGES)
      _one_of('ncsn_loss_reduction', self.ncsn_loss_reduction, REDUCTIONS)


_SCHEDULE_CACHE: dict = {}


def _discrete_schedule(name: str, num_timesteps: int) -> schedules.DiscreteSchedule:
  key = (name, num_timesteps)
  if key not in _SCHEDULE_CACHE:
    _SCHEDULE_CACHE[key] = schedules.DiscreteSchedule.from_name(name, num_timesteps)
  return _SCHEDULE_CACHE[key]
