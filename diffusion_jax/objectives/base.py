"""The Objective interface shared by every training objective.

An objective owns the forward process, the loss and the bridge from its model to the
EDM-form denoiser that every sampler drives. It is a frozen dataclass over a validated
`DiffusionConfig`, so it is hashable and may be closed over by a jitted step.

Losses are pure: `loss(apply_fn, params, batch, rng, state, train)` with the model
contract `apply(params, x, noise_level, label=None, self_cond=None, augment=None,
train=False, rng=None) -> (prediction, carry)`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax import schedules
from diffusion_jax.objectives import example_rng, self_conditioning
from diffusion_jax.objectives.config import DiffusionConfig
from diffusion_jax.samplers.guidance import classifier_free_guidance

Batch = dict[str, jax.Array]
LossOutput = tuple[jax.Array, dict[str, jax.Array], Any]


def mean_over_dims(x: jax.Array) -> jax.Array:
  """Mean over every axis but the first: [B, ...] -> [B]."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def per_example(level: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes a per-example level [B] to [B, 1, ..., 1] to broadcast against x."""
  return level.reshape(level.shape + (1,) * (x.ndim - level.ndim))


class LangevinStart(NamedTuple):
  """Where annealed Langevin dynamics starts and what it walks, in pipeline units."""

  x: jax.Array  # [B, H, W, C] the chain's start.
  sigmas: jax.Array  # [L] the levels, largest first.
  step_lr: float  # eps of alpha_i = eps sigma_i^2 / sigma_L^2.
  clip_denoiser: bool  # whether the scores see a clipped x0 when clip_x0 is set.


def _clip_out(out: Any) -> Any:
  """Clips the x0 estimate of a denoiser output (`x0` or `(x0, v)`) to [-1, 1]."""
  if isinstance(out, tuple):
    return (jnp.clip(out[0], -1.0, 1.0), *out[1:])
  return jnp.clip(out, -1.0, 1.0)


def _clip_first(out_state: tuple[Any, Any]) -> tuple[Any, Any]:
  out, state = out_state
  return _clip_out(out), state


@dataclasses.dataclass(frozen=True)
class Objective(abc.ABC):
  """Base class: label dropout, self-conditioning and the guided, stateful denoiser.

  Subclasses implement `loss` and `_denoise` and name their paper's sampler as
  `default_sampler`, the registered name `config.sample.sampler = 'default'` selects.
  """

  config: DiffusionConfig
  default_sampler: ClassVar[str]

  @property
  def input_scale(self) -> float:
    """b of model space X = b x0, which the Chen samplers walk; 1 but for Chen 2023."""
    return 1.0

  def langevin_step_lr(self, settings: Any) -> float:
    """Langevin's eps in the network's units: `settings.step_lr`, or Technique 4's when 0.

    Source: Song & Ermon 2020 (NCSNv2), Technique 4.
    """
    if settings.step_lr > 0:
      return settings.step_lr
    cfg = self.config
    ratio = (cfg.sigma_max / cfg.sigma_min) ** (1.0 / max(cfg.num_levels - 1, 1))
    return schedules.ncsn_solve_step_size(ratio, cfg.sigma_min, settings.n_steps_each)

  def langevin_start(self, noise: jax.Array, settings: Any) -> LangevinStart:
    """The 'langevin' sampler's start: sigma_1 noise over config.diffusion's ladder.

    Args:
      noise: N(0, I) [B, H, W, C].
      settings: the SampleSettings (step_lr, n_steps_each).
    """
    cfg = self.config
    sigmas = schedules.geometric_sigmas(cfg.sigma_max, cfg.sigma_min, cfg.num_levels)
    x = jnp.asarray(noise) * sigmas[0]
    return LangevinStart(x, sigmas, self.langevin_step_lr(settings), clip_denoiser=True)

  def sampling_schedule(self) -> schedules.DiscreteSchedule:
    """The discrete timesteps `config.sample.sigmas='discrete'` walks (a spacing of them).

    Objectives without a beta table of their own (EDM, NCSNv2) use the DDPM table of
    config.diffusion (beta_schedule, num_timesteps; linear x 1000 by default).
    """
    return self.config.discrete_schedule()

  def init_state(self) -> dict:
    """The objective's training state (iDDPM's loss history); `{}` when stateless."""
    return {}

  def update_state(self, state: Any, metrics: dict[str, jax.Array]) -> Any:
    """The state after a batch, from its loss metrics; the same state when stateless.

    A gradient-accumulating step draws every micro-batch with the step's starting
    state and updates it once, here, with the whole batch's metrics in batch order.
    """
    del metrics
    return state

  @abc.abstractmethod
  def loss(
    self,
    apply_fn: Callable,
    params: Any,
    batch: Batch,
    rng: jax.Array,
    state: Any,
    train: bool = True,
  ) -> LossOutput:
    """(scalar loss, metrics with 'loss_per_example' [B] and 'noise_t' [B], new state).

    `rng` is one key or per-example keys [B] (`example_rng`): each example's draws
    depend on its own key only. Metrics hold per-example arrays [B] and scalar means.
    """

  def call_model(
    self,
    apply_fn: Callable,
    params: Any,
    x_in: jax.Array,
    noise_level: jax.Array,
    batch: Batch,
    rng: jax.Array,
    train: bool,
  ) -> jax.Array:
    """Runs the model for a loss, with label dropout (training only) and self-conditioning.

    `rng` is one key or per-example keys [B]: the label dropout and the
    self-conditioning coin of an example come from its own key, the model's dropout
    key from `example_rng.model_key`.

    Source: Ho & Salimans 2021 (label dropout); Chen et al. 2022, Analog Bits
    (self-conditioning).
    """
    cfg = self.config
    keys = example_rng.example_keys(rng, x_in.shape[0])
    label = batch.get('label')
    if train:
      label = self_conditioning.drop_labels(label, keys, cfg.label_drop_prob)
    coin = None
    if 0.0 < cfg.self_cond_rate < 1.0:
      coin = self_conditioning.self_cond_coin(keys, cfg.self_cond_rate, x_in.shape[0])
    pred, _, _ = self_conditioning.apply_with_self_cond(
      apply_fn,
      params,
      x_in,
      noise_level,
      label=label,
      augment=batch.get('augment'),
      rate=cfg.self_cond_rate,
      rng=example_rng.model_key(keys),
      train=train,
      coin=coin,
    )
    return pred

  @abc.abstractmethod
  def _denoise(
    self,
    apply_fn: Callable,
    params: Any,
    x: jax.Array,
    sigma: jax.Array,
    label: jax.Array | None,
    self_cond: Any,
    return_variance: bool,
  ) -> tuple[Any, Any]:
    """One model call in EDM form: data-space x [B, ...], sigma [B] -> (x0_hat, carry).

    x0_hat is unclipped; with `return_variance` the output is (x0_hat, v).
    """

  def denoiser(
    self,
    apply_fn: Callable,
    params: Any,
    label: jax.Array | None = None,
    guidance: float = 0.0,
    *,
    x_shape: tuple[int, ...] | None = None,
    clip_x0: bool = True,
    return_variance: bool = False,
    guidance_carry: str = 'conditional',
  ) -> tuple[Callable, Any]:
    """The EDM-form denoiser of this model: (denoise_fn, init_state).

    Without self-conditioning, `denoise_fn(x, sigma) -> x0_hat` and init_state is
    None; with it, `denoise_fn(x, sigma, state) -> (x0_hat, new_state)` where the
    state is the model's carry (RIN latents), zeros at the first step. x is data
    space, x = x0 + sigma n; sigma is a scalar or [B].

    Guidance convention (Ho & Salimans 2021, Eq. 6, as in Chen 2023 / RIN):
    eps_guided = (1 + w) eps_cond - w eps_uncond. As x0 is affine in eps at fixed
    (x, sigma) this equals x0_guided = (1 + w) x0_cond - w x0_uncond, which is what is
    computed; clipping to the data range comes after the combination. w = 0 runs one
    conditional pass. With self-conditioning both branches read the conditional
    branch's carry, as the Chen 2023 reference sampler does (`guidance_carry=
    'separate'` gives each branch its own). With a learned variance, v comes from the
    conditional branch.

    Args:
      apply_fn: the model's apply function.
      params: model parameters (e.g. the EMA copy).
      label: int32 [B] labels (-1 = null) or None for an unconditional model.
      guidance: classifier-free guidance weight w >= 0.
      x_shape: the image batch shape [B, H, W, C]; needed with self-conditioning to
        build the zero carry.
      clip_x0: clip the x0 estimate to the data range [-1, 1].
      return_variance: (iddpm with learned variance) return (x0_hat, v) with v in
        [-1, 1] for `ddpm_sample(..., variance='learned')`.
      guidance_carry: 'conditional' or 'separate', see `classifier_free_guidance`.

    Raises:
      ValueError: guidance without labels, or self-conditioning without x_shape.
    """
    if return_variance and not self.config.learn_variance:
      raise ValueError(
        'return_variance=True needs a learned-variance model (objective iddpm with '
        'config.model.learn_variance=True).'
      )
    if label is None and not (isinstance(guidance, (int, float)) and guidance == 0):
      raise ValueError(
        f'guidance={guidance!r} needs labels: pass label (int32 [B], -1 = null) or guidance=0.'
      )

    def call(x, sigma, lab, state):
      sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])  # [B]
      return self._denoise(apply_fn, params, x, sigma, lab, state, return_variance)

    init_state = None
    if self.config.self_cond_rate > 0:
      init_state = _zero_carry(call, label, x_shape)
    fn, init_state = _guided(call, label, guidance, init_state, guidance_carry)
    if not clip_x0:
      return fn, init_state
    if init_state is not None:
      return (lambda x, sigma, state: _clip_first(fn(x, sigma, state))), init_state
    return (lambda x, sigma: _clip_out(fn(x, sigma))), None


def _zero_carry(call: Callable, label: Any, x_shape: tuple[int, ...] | None) -> Any:
  """The self-conditioned model's carry at the first step: zeros, or None if it has none."""
  if x_shape is None:
    raise ValueError(
      'x_shape is required when the model is self-conditioned '
      '(config.diffusion.self_cond_rate > 0): pass the image batch shape [B, H, W, C].'
    )
  carry_shape = jax.eval_shape(
    lambda x: call(x, jnp.ones(()), label, None)[1], jax.ShapeDtypeStruct(x_shape, jnp.float32)
  )
  init_state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), carry_shape)
  # A model that carries nothing is stateless after all.
  return init_state if jax.tree.leaves(init_state) else None


def _guided(
  call: Callable, label: Any, guidance: float, init_state: Any, guidance_carry: str
) -> tuple[Callable, Any]:
  """`call` as a (stateful when init_state is set) denoiser, guided when labelled."""
  stateful = init_state is not None
  if label is None:
    if stateful:
      return (lambda x, sigma, state: call(x, sigma, None, state)), init_state
    return (lambda x, sigma: call(x, sigma, None, None)[0]), None
  if stateful:
    base = lambda x, sigma, lab, state: call(x, sigma, lab, state)
  else:
    base = lambda x, sigma, lab: call(x, sigma, lab, None)[0]
  return classifier_free_guidance(
    base, label, guidance, init_state=init_state, carry=guidance_carry
  )
