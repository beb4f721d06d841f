"""Optimizer, learning-rate schedule and parameter EMA of the trainer.

LAMB as the RIN reference trains it (a trust ratio per logical weight; no weight decay
and no trust ratio on biases and normalization parameters), the reference's warmup +
decay schedules (`cosine`, `cosine@rate`, `linear`, `exp@rate`, `constant`), optional
global-norm gradient clipping, and an exponential moving average of the parameters
defined either by a decay (with an optional warmup) or, as in EDM, by a half-life in
images with a ramp-up.

Source: Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models",
Sec. 4 (LAMB, beta1 0.9, beta2 0.999, weight decay 0.01, EMA 0.9999), trained with
pix2seq `models/model_utils.py` (WarmUpAndDecay, build_optimizer -> tfa LAMB); You et
al. 2020, "Large Batch Optimization for Deep Learning" (LAMB); Karras et al. 2022 (EDM),
NVlabs/edm `training/training_loop.py` (EMA half-life and ramp-up).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from diffusion_jax.models import layout

OPTIMIZERS = ('lamb', 'adamw', 'adam')
# 'cosine@<rate>' and 'exp@<rate>' take a rate in (0, 1]; see `parse_lr_schedule`.
LR_SCHEDULES = ('cosine', 'cosine@<rate>', 'linear', 'exp@<rate>', 'constant')
_RATE_SCHEDULES = ('cosine', 'exp')
_PLAIN_SCHEDULES = ('cosine', 'linear', 'constant')

# Leaf names that get neither weight decay nor a trust ratio: flax's names for the
# reference's excluded Keras variables 'bias' (Dense bias, LayerNorm beta) and 'gamma'
# (LayerNorm scale); pix2seq configs/config_diffusion_base.py sets
# exclude_from_weight_decay='bias,beta,gamma' and tfa LAMB reuses it for layer adaptation.
_NO_DECAY_NAMES = ('bias', 'scale')


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Typed, validated view of `config.optim` (plus the run length).

  Attributes:
    name: optimizer, one of OPTIMIZERS.
    learning_rate: peak learning rate.
    lr_schedule: one of LR_SCHEDULES (see `create_learning_rate_schedule`).
    warmup_steps: steps of linear warmup from 0 to `learning_rate`.
    num_steps: total training steps.
    end_lr_factor: the decay's floor as a fraction of the peak (cosine and linear;
      the reference's `end_lr_factor`, Keras CosineDecay's alpha).
    b1, b2, eps: Adam/LAMB moment parameters.
    weight_decay: decoupled weight decay (masked, see `weight_decay_mask`).
    grad_clip: global-norm clipping threshold; 0 disables it.
    ema_decay: EMA decay of the parameters (when `ema_halflife_kimg` is 0).
    ema_warmup: use min(ema_decay, (1 + step) / (10 + step)).
    ema_halflife_kimg: EDM's EMA half-life in thousands of images; > 0 replaces
      `ema_decay` / `ema_warmup` by `edm_ema_decay`. 0 = off.
    ema_rampup_ratio: EDM's ramp-up: the half-life is at most this fraction of the
      images seen so far. 0 = no ramp-up (EDM's None).
  """

  name: str = 'lamb'
  learning_rate: float = 2e-3
  lr_schedule: str = 'cosine'
  warmup_steps: int = 0
  num_steps: int = 1
  end_lr_factor: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.01
  grad_clip: float = 0.0
  ema_decay: float = 0.9999
  ema_warmup: bool = True
  ema_halflife_kimg: float = 0.0
  ema_rampup_ratio: float = 0.05

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(
        f'config.optim.name={self.name!r} is not a known optimizer; '
        f'use one of {", ".join(OPTIMIZERS)}.'
      )
    parse_lr_schedule(self.lr_schedule)
    if not self.learning_rate > 0:
      raise ValueError(f'config.optim.learning_rate={self.learning_rate} must be > 0 (e.g. 2e-3).')
    if self.num_steps < 1:
      raise ValueError(f'config.training.num_steps={self.num_steps} must be >= 1.')
    if not 0 <= self.warmup_steps <= self.num_steps:
      raise ValueError(
        f'config.optim.warmup_steps={self.warmup_steps} must lie in '
        f'[0, config.training.num_steps={self.num_steps}].'
      )
    if not 0 <= self.end_lr_factor <= 1:
      raise ValueError(f'config.optim.end_lr_factor={self.end_lr_factor} must lie in [0, 1].')
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
    if not 0 <= self.ema_halflife_kimg < math.inf:
      raise ValueError(
        f'config.optim.ema_halflife_kimg={self.ema_halflife_kimg} must be >= 0 '
        '(e.g. 500 as in EDM; 0 = use config.optim.ema_decay).'
      )
    if not 0 <= self.ema_rampup_ratio < math.inf:
      raise ValueError(
        f'config.optim.ema_rampup_ratio={self.ema_rampup_ratio} must be >= 0 '
        '(e.g. 0.05 as in EDM; 0 = no ramp-up).'
      )

  @classmethod
  def from_config(cls, optim_cfg: Any, num_steps: int) -> OptimConfig:
    """Builds the validated dataclass from `config.optim` and the run length."""
    fields = {f.name for f in dataclasses.fields(cls)} - {'num_steps'}
    kwargs = {k: optim_cfg[k] for k in fields if k in optim_cfg}
    for key in ('warmup_steps',):
      if key in kwargs:
        kwargs[key] = int(kwargs[key])
    return cls(num_steps=int(num_steps), **kwargs)


def parse_lr_schedule(spec: str) -> tuple[str, float]:
  """Splits a schedule name into (kind, rate): 'cosine@0.7' -> ('cosine', 0.7).

  'cosine', 'linear' and 'constant' have rate 1; 'exp' needs '@rate'.

  Raises:
    ValueError: naming config.optim.lr_schedule for an unknown name or a rate outside (0, 1].
  """
  usage = (
    f'config.optim.lr_schedule={spec!r} is not a known learning-rate schedule; use '
    f'{", ".join(LR_SCHEDULES)} with a rate in (0, 1] (e.g. cosine@0.7).'
  )
  kind, sep, arg = str(spec).partition('@')
  if not sep:
    if kind not in _PLAIN_SCHEDULES:
      raise ValueError(usage)
    return kind, 1.0
  if kind not in _RATE_SCHEDULES:
    raise ValueError(usage)
  try:
    rate = float(arg)
  except ValueError:
    raise ValueError(usage) from None
  if not 0 < rate <= 1:
    raise ValueError(usage)
  return kind, rate


def create_learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then the decay `cfg.lr_schedule` names.

  With W warmup steps, N total steps, s = step - W, D = N - W and floor a = end_lr_factor:
    step < W:      peak * step / W
    'cosine@r':    peak * ((1 - a) * (1 + cos(pi * min(s, D / r) / (D / r))) / 2 + a)
                   ('cosine' is r = 1; with r < 1 the run ends part-way down the curve,
                   at (1 + cos(pi r)) / 2 of the peak for a = 0)
    'linear':      peak * ((1 - a) * (1 - min(s, D) / D) + a)
    'exp@r':       peak * r ** (s / D)  (reaches r * peak at the last step)
    'constant':    peak  (the reference's 'none')

  Source: pix2seq models/model_utils.py, WarmUpAndDecay.__call__ (Keras CosineDecay,
  PolynomialDecay(power=1), ExponentialDecay evaluated at step - W).

  Args:
    cfg: the optimizer settings.

  Returns:
    step -> learning rate (float32).
  """
  kind, rate = parse_lr_schedule(cfg.lr_schedule)
  peak, warmup, floor = cfg.learning_rate, cfg.warmup_steps, cfg.end_lr_factor
  # Only steps >= W read the decay, and then D >= 1; the max keeps D = 0 finite.
  decay_steps = max(cfg.num_steps - warmup, 1)

  def decay(s: jax.Array) -> jax.Array:
    if kind == 'cosine':
      length = decay_steps / rate
      frac = jnp.minimum(s, length) / length
      return (1.0 - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)) + floor
    if kind == 'linear':
      return (1.0 - floor) * (1.0 - jnp.minimum(s, decay_steps) / decay_steps) + floor
    if kind == 'exp':
      return jnp.power(rate, s / decay_steps)
    return jnp.ones_like(s)

  def schedule(step: jax.typing.ArrayLike) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    lr = peak * decay(jnp.maximum(step - warmup, 0.0))
    if warmup == 0:
      return lr
    return jnp.where(step < warmup, peak * step / warmup, lr)

  return schedule


def weight_decay_mask(params: Any, exclude_low_rank: bool = False) -> Any:
  """True for leaves that get weight decay (and, in LAMB, a trust ratio).

  Biases and normalization parameters (leaves named 'bias' or 'scale') are excluded, as
  the reference's LAMB excludes variables named 'bias', 'beta' and 'gamma'; every other
  leaf (kernels, position tables, learned latents) decays, whatever its rank.

  Args:
    params: the params (or updates) tree.
    exclude_low_rank: also exclude leaves whose logical weights (`layout.logical_shape`:
      one layer's slice of a scanned array, one projection of a fused kernel) have
      fewer than 2 dimensions. Not the reference's rule; off by default.

  Returns:
    A tree of bools shaped like `params`.
  """

  def decays(path, leaf) -> bool:
    names = layout.path_names(path)
    if names and names[-1] in _NO_DECAY_NAMES:
      return False
    return not (exclude_low_rank and len(layout.logical_shape(path, jnp.shape(leaf))) < 2)

  return jax.tree_util.tree_map_with_path(decays, params)


def scale_by_weight_trust_ratio(per_weight: bool = True) -> optax.GradientTransformation:
  """LAMB's layer adaptation: u <- (|w| / |u|) u, one ratio per logical weight.

  The norms reduce over `layout.norm_axes` only, so each layer of a scanned stack and
  each of the q / k / v projections of a fused kernel gets the ratio it would get as a
  separate variable; the ratio is 1 where |w| or |u| is 0.

  Source: You et al. 2020, Algorithm 2; tfa.optimizers.LAMB._resource_apply_dense (one
  ratio per variable), used by pix2seq models/model_utils.py build_optimizer.

  Args:
    per_weight: False reduces over the whole array (optax.scale_by_trust_ratio), which
      shares one ratio between stacked layers and fused projections.

  Returns:
    The transformation; its state is optax's empty ScaleByTrustRatioState.
  """

  def init_fn(params: Any) -> optax.ScaleByTrustRatioState:
    del params
    return optax.ScaleByTrustRatioState()

  def update_fn(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
    if params is None:
      raise ValueError('scale_by_weight_trust_ratio needs the params in update().')

    def scale(path, u: jax.Array, w: jax.Array) -> jax.Array:
      axes = layout.norm_axes(path, w.shape) if per_weight else tuple(range(w.ndim))
      w_norm = _norm(w, axes)
      u_norm = _norm(u, axes)
      safe = (w_norm > 0) & (u_norm > 0)
      ratio = jnp.where(safe, w_norm / jnp.where(safe, u_norm, 1.0), 1.0)
      return (u * ratio).astype(u.dtype)

    return jax.tree_util.tree_map_with_path(scale, updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)


def _norm(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """L2 norm over `axes` in float32, kept as size-1 axes for broadcasting."""
  x = x.astype(jnp.float32)
  return jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=True))


def lamb(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-6,
  weight_decay: float = 0.01,
  exclude_low_rank: bool = False,
  per_weight: bool = True,
) -> optax.GradientTransformation:
  """LAMB with a trust ratio per logical weight, biases and norm parameters left plain.

  u = adam(g) + wd * w (decayed leaves only); update = -lr * (|w| / |u|) * u with norms
  per logical weight, and -lr * u for biases and normalization parameters. Without that
  exclusion a zero-initialized bias or norm scale keeps |w| ~ 0, so its trust ratio pins
  it near zero for the whole run.

  Source: You et al. 2020 (LAMB), Algorithm 2; tfa.optimizers.LAMB as pix2seq
  models/model_utils.py build_optimizer configures it (exclude_from_weight_decay
  'bias,beta,gamma', also used for layer adaptation).

  Args:
    learning_rate: the learning rate or its schedule.
    b1, b2, eps: Adam moment parameters.
    weight_decay: decoupled weight decay of the masked leaves.
    exclude_low_rank: see `weight_decay_mask` (off = the reference).
    per_weight: see `scale_by_weight_trust_ratio` (on = the reference).
  """
  mask = functools.partial(weight_decay_mask, exclude_low_rank=exclude_low_rank)
  return optax.chain(
    optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
    optax.add_decayed_weights(weight_decay, mask=mask),
    optax.masked(scale_by_weight_trust_ratio(per_weight), mask),
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


def edm_ema_decay(
  step: jax.typing.ArrayLike, batch_size: int, halflife_kimg: float, rampup_ratio: float
) -> jax.Array:
  """EDM's EMA decay at the update after optimizer step `step` (0-based).

  With n = step * batch_size the images seen before this update:
  h = min(1000 * halflife_kimg, rampup_ratio * n) (no min when rampup_ratio is 0) and
  beta = 0.5 ** (batch_size / max(h, 1e-8)), so the average forgets half its weight every
  h images; the first update (n = 0) copies the parameters.

  Source: Karras et al. 2022, NVlabs/edm training/training_loop.py (ema_halflife_kimg,
  ema_rampup_ratio; the EMA update after optimizer.step()).
  """
  nimg = jnp.asarray(step, jnp.float32) * float(batch_size)
  halflife = jnp.full_like(nimg, 1000.0 * halflife_kimg)
  if rampup_ratio > 0:
    halflife = jnp.minimum(halflife, nimg * rampup_ratio)
  return jnp.power(0.5, float(batch_size) / jnp.maximum(halflife, 1e-8))


def ema_decay_for(cfg: OptimConfig, step: jax.typing.ArrayLike, batch_size: int) -> jax.Array:
  """The EMA decay the config asks for: EDM's half-life if set, else `ema_decay_at`.

  Args:
    cfg: the optimizer settings.
    step: optimizer steps taken before this update (0-based).
    batch_size: the global batch (config.training.batch_size).
  """
  if cfg.ema_halflife_kimg > 0:
    return edm_ema_decay(step, batch_size, cfg.ema_halflife_kimg, cfg.ema_rampup_ratio)
  return ema_decay_at(step, cfg.ema_decay, cfg.ema_warmup)


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
  'edm_ema_decay',
  'ema_decay_at',
  'ema_decay_for',
  'ema_update',
  'global_norm',
  'parse_lr_schedule',
  'scale_by_weight_trust_ratio',
  'weight_decay_mask',
]
