"""Optimizer, learning-rate schedule and parameter EMA of the trainer.

LAMB with weight decay masked off biases and normalization scales, linear warmup
then cosine decay, optional global-norm gradient clipping, and an exponential
moving average of the parameters with a warmup on its decay.

Source: Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models",
Sec. 4 (LAMB, beta1 0.9, beta2 0.999, weight decay 0.01, EMA 0.9999); You et al.
2020, "Large Batch Optimization for Deep Learning" (LAMB).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ('lamb', 'adamw', 'adam')
LR_SCHEDULES = ('cosine', 'constant')

# Leaf names that never get weight decay: biases, LayerNorm/GroupNorm scales.
_NO_DECAY_NAMES = ('bias', 'scale')


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Typed, validated view of `config.optim` (plus the run length).

  Attributes:
    name: optimizer, one of OPTIMIZERS.
    learning_rate: peak learning rate.
    lr_schedule: one of LR_SCHEDULES.
    warmup_steps: steps of linear warmup from 0 to `learning_rate`.
    num_steps: total training steps (the cosine reaches 0 there).
    b1, b2, eps: Adam/LAMB moment parameters.
    weight_decay: decoupled weight decay (masked, see `weight_decay_mask`).
    grad_clip: global-norm clipping threshold; 0 disables it.
    ema_decay: EMA decay of the parameters.
    ema_warmup: use min(ema_decay, (1 + step) / (10 + step)).
  """

  name: str = 'lamb'
  learning_rate: float = 2e-3
  lr_schedule: str = 'cosine'
  warmup_steps: int = 0
  num_steps: int = 1
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.01
  grad_clip: float = 0.0
  ema_decay: float = 0.9999
  ema_warmup: bool = True

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(
        f'config.optim.name={self.name!r} is not a known optimizer; '
        f'use one of {", ".join(OPTIMIZERS)}.'
      )
    if self.lr_schedule not in LR_SCHEDULES:
      raise ValueError(
        f'config.optim.lr_schedule={self.lr_schedule!r} is not a known learning-rate '
        f'schedule; use one of {", ".join(LR_SCHEDULES)}.'
      )
    if not self.learning_rate > 0:
      raise ValueError(f'config.optim.learning_rate={self.learning_rate} must be > 0 (e.g. 2e-3).')
    if self.num_steps < 1:
      raise ValueError(f'config.training.num_steps={self.num_steps} must be >= 1.')
    if not 0 <= self.warmup_steps <= self.num_steps:
      raise ValueError(
        f'config.optim.warmup_steps={self.warmup_steps} must lie in '
        f'[0, config.training.num_steps={self.num_steps}].'
      )
    if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
      raise ValueError(
        f'config.optim.b1={self.b1} and config.optim.b2={self.b2} must lie in [0, 1).'
      )
    if not self.eps > 0:
      raise ValueError(f'config.optim.eps={self.eps} must be > 0 (e.g. 1e-8).')
    if self.weight_decay < 0:
      raise ValueError(f'config.optim.weight_decay={self.weight_decay} must be >= 0.')
    if self.grad_clip < 0:
      raise ValueError(f'config.optim.grad_clip={self.grad_clip} must be >= 0 (0 = off).')
    if not 0 <= self.ema_decay < 1:
      raise ValueError(f'config.optim.ema_decay={self.ema_decay} must lie in [0, 1).')

  @classmethod
  def from_config(cls, optim_cfg: Any, num_steps: int) -> OptimConfig:
    """Builds the validated dataclass from `config.optim` and the run length."""
    fields = {f.name for f in dataclasses.fields(cls)} - {'num_steps'}
    kwargs = {k: optim_cfg[k] for k in fields if k in optim_cfg}
    for key in ('warmup_steps',):
      if key in kwargs:
        kwargs[key] = int(kwargs[key])
    return cls(num_steps=int(num_steps), **kwargs)


def create_learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then cosine decay to 0 (or constant).

  lr(s) = peak * s / W for s < W; cosine: peak * (1 + cos(pi (s - W) / (N - W))) / 2.

  Args:
    cfg: the optimizer settings.

  Returns:
    step -> learning rate.
  """
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
  if cfg.lr_schedule == 'constant':
    main = optax.constant_schedule(cfg.learning_rate)
  else:
    main = optax.cosine_decay_schedule(
      cfg.learning_rate, max(cfg.num_steps - cfg.warmup_steps, 1), alpha=0.0
    )
  if cfg.warmup_steps == 0:
    return main
  return optax.join_schedules([warmup, main], [cfg.warmup_steps])


def weight_decay_mask(params: Any) -> Any:
  """True for leaves that get weight decay: matrices/kernels/embeddings.

  Biases and normalization scales (LayerNorm, GroupNorm) are excluded by name,
  and any leaf with fewer than 2 dimensions is excluded as well.
  """

  def decays(path, leaf) -> bool:
    name = ''
    if path:
      last = path[-1]
      name = str(getattr(last, 'key', getattr(last, 'name', last)))
    return jnp.ndim(leaf) >= 2 and name not in _NO_DECAY_NAMES

  return jax.tree_util.tree_map_with_path(decays, params)


def lamb(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-6,
  weight_decay: float = 0.01,
) -> optax.GradientTransformation:
  """LAMB with biases and normalization parameters excluded from weight decay and from
  the layer-wise trust ratio.

  u = adam(g) + wd * w (decayed leaves only); update = -lr * (|w| / |u|) * u for matrices,
  -lr * u for the excluded leaves. Without the exclusion a zero-initialized bias or
  norm scale keeps |w| ~ 0, so its trust ratio pins it near zero for the whole run.

  Source: You et al. 2020 (LAMB), Algorithm 2; the exclusion follows their BERT setup
  (and Chen 2023's Pix2Seq-based trainer): no decay or adaptation for bias and LayerNorm.
  """
  return optax.chain(
    optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
    optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
    optax.masked(optax.scale_by_trust_ratio(), weight_decay_mask),
    optax.scale_by_learning_rate(learning_rate),
  )


def create_optimizer(
  cfg: OptimConfig,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The gradient transformation (clip -> LAMB/AdamW/Adam) and its LR schedule."""
  schedule = create_learning_rate_schedule(cfg)
  if cfg.name == 'lamb':
    opt = lamb(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  elif cfg.name == 'adamw':
    opt = optax.adamw(
      schedule,
      b1=cfg.b1,
      b2=cfg.b2,
      eps=cfg.eps,
      weight_decay=cfg.weight_decay,
      mask=weight_decay_mask,
    )
  else:
    opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  if cfg.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt)
  return opt, schedule


def ema_decay_at(step: jax.typing.ArrayLike, decay: float, warmup: bool = True) -> jax.Array:
  """EMA decay used at the update that follows optimizer step `step` (0-based).

  With warmup the decay is min(decay, (1 + step) / (10 + step)), so early
  averages do not lean on the random-ish first iterates.
  """
  step = jnp.asarray(step, jnp.float32)
  if not warmup:
    return jnp.full_like(step, decay)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params: Any, params: Any, decay: jax.typing.ArrayLike) -> Any:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf (in the leaf's dtype)."""
  return jax.tree.map(
    lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema_params, params
  )


def global_norm(tree: Any) -> jax.Array:
  """sqrt of the sum of squares of every leaf (float32)."""
  return optax.global_norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree))


__all__ = [
  'lamb',
  'LR_SCHEDULES',
  'OPTIMIZERS',
  'OptimConfig',
  'create_learning_rate_schedule',
  'create_optimizer',
  'ema_decay_at',
  'ema_update',
  'global_norm',
  'weight_decay_mask',
]
