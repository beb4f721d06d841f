"""Prediction targets and noise-level conversions shared by objectives and samplers.

Model space (Chen 2023): X = b x0, x_t = alpha X + sigma eps with alpha = sqrt(gamma),
sigma = sqrt(1 - gamma). Discrete DDPM / Improved DDPM is the same space with b = 1
and gamma = abar_t. EDM form (Karras 2022) is data space, x = x0 + sigma_edm n with
x = x_t / (alpha b) and sigma_edm = sigma / (alpha b). The bridges below let a model
trained with one target (eps, x0, v, score) at one noise parameterization (gamma,
abar index, EDM sigma) be driven by any sampler.

`gamma` (and `sigma`) broadcast against images: a [B] array is reshaped to
[B, 1, 1, 1] for a [B, H, W, C] x; scalars pass through.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from diffusion_jax.schedules import (
  DiscreteSchedule,
  _check_positive,
  edm_sigma_to_gamma,
  edm_sigma_to_logsnr,
  gamma_from_logsnr,
  gamma_to_edm_sigma,
  logsnr_from_gamma,
  logsnr_to_edm_sigma,
)

__all__ = [
  'NOISE_LEVEL_SCALE',
  'PREDICTION_KINDS',
  'NORMALIZE_MODES',
  'abar_to_edm_sigma',
  'abar_to_logsnr',
  'clip_x0',
  'edm_loss_weight',
  'edm_preconditioning',
  'edm_sigma_to_abar',
  'edm_sigma_to_gamma',
  'edm_sigma_to_logsnr',
  'edm_sigma_to_timestep',
  'edm_to_model',
  'eps_from_v',
  'eps_from_x0',
  'gamma_from_logsnr',
  'gamma_to_edm_sigma',
  'logsnr_from_gamma',
  'logsnr_to_edm_sigma',
  'model_to_edm',
  'normalize_input',
  'predict_x0_eps',
  'prediction_target',
  'score_from_x0',
  'timestep_to_edm_sigma',
  'v_from_eps_x0',
  'x0_from_eps',
  'x0_from_score',
  'x0_from_v',
]

PREDICTION_KINDS = ('eps', 'x0', 'v')
NORMALIZE_MODES = ('per_example', 'analytic', 'none')
# The continuous noise level the networks are conditioned on, times this: 1000 gamma
# (Chen 2023) or 1000 c_noise = 250 ln sigma (EDM), the range the time embedding expects.
NOISE_LEVEL_SCALE = 1000.0


def _bcast(level: ArrayLike, x: jax.Array) -> jax.Array:
  """Reshapes a per-example level [B] (or a scalar) to broadcast against x [B, ...]."""
  level = jnp.asarray(level)
  if level.ndim == 0 or level.ndim >= x.ndim:
    return level
  return level.reshape(level.shape + (1,) * (x.ndim - level.ndim))


def _alpha_sigma(gamma: ArrayLike, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  g = _bcast(gamma, x)
  return jnp.sqrt(g), jnp.sqrt(1.0 - g)


# ---------------------------------------------------------------------------
# eps / x0 / v conversions in model space.


def x0_from_eps(x_t: ArrayLike, eps: ArrayLike, gamma: ArrayLike) -> jax.Array:
  """x0 = (x_t - sigma eps) / alpha.

  Source: Ho 2020 (DDPM), Eq. 4 solved for x0; Chen 2023, Algorithm 3.
  """
  x_t = jnp.asarray(x_t)
  alpha, sigma = _alpha_sigma(gamma, x_t)
  return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: ArrayLike, x0: ArrayLike, gamma: ArrayLike) -> jax.Array:
  """eps = (x_t - alpha x0) / sigma.

  Source: Ho 2020 (DDPM), Eq. 4 solved for eps.
  """
  x_t = jnp.asarray(x_t)
  alpha, sigma = _alpha_sigma(gamma, x_t)
  return (x_t - alpha * x0) / sigma


def v_from_eps_x0(eps: ArrayLike, x0: ArrayLike, gamma: ArrayLike) -> jax.Array:
  """v = alpha eps - sigma x0.

  Source: Salimans & Ho 2022 (Progressive Distillation), Section 4.
  """
  eps = jnp.asarray(eps)
  alpha, sigma = _alpha_sigma(gamma, eps)
  return alpha * eps - sigma * jnp.asarray(x0)


def x0_from_v(x_t: ArrayLike, v: ArrayLike, gamma: ArrayLike) -> jax.Array:
  """x0 = alpha x_t - sigma v (uses alpha^2 + sigma^2 = 1).

  Source: Salimans & Ho 2022 (Progressive Distillation), Section 4.
  """
  x_t = jnp.asarray(x_t)
  alpha, sigma = _alpha_sigma(gamma, x_t)
  return alpha * x_t - sigma * jnp.asarray(v)


def eps_from_v(x_t: ArrayLike, v: ArrayLike, gamma: ArrayLike) -> jax.Array:
  """eps = sigma x_t + alpha v.

  Source: Salimans & Ho 2022 (Progressive Distillation), Section 4.
  """
  x_t = jnp.asarray(x_t)
  alpha, sigma = _alpha_sigma(gamma, x_t)
  return sigma * x_t + alpha * jnp.asarray(v)


def prediction_target(
  kind: str, x0_model: ArrayLike, eps: ArrayLike, gamma: ArrayLike
) -> jax.Array:
  """The regression target of a prediction kind, in model space: eps, b x0, or v.

  Source: Ho 2020 (eps); Salimans & Ho 2022 (v = alpha eps - sigma x0).
  """
  if kind == 'eps':
    return eps
  if kind == 'x0':
    return x0_model
  if kind == 'v':
    return v_from_eps_x0(eps, x0_model, gamma)
  raise ValueError(f'prediction must be one of {PREDICTION_KINDS}, got {kind!r}.')


def predict_x0_eps(
  prediction: ArrayLike, x_t: ArrayLike, gamma: ArrayLike, kind: str
) -> tuple[jax.Array, jax.Array]:
  """Turns a network output of the given kind into (x0_hat, eps_hat), both model space.

  Source: Chen 2023, Algorithm 3 ("prediction turned into x0_hat, eps_hat").

  Args:
    prediction: the network output [B, ...] ('eps', 'x0' or 'v' target).
    x_t: the noisy input [B, ...] (before any input normalization).
    gamma: noise level, scalar or [B].
    kind: 'eps', 'x0' or 'v'.
  """
  x_t = jnp.asarray(x_t)
  prediction = jnp.asarray(prediction)
  if kind == 'eps':
    return x0_from_eps(x_t, prediction, gamma), prediction
  if kind == 'x0':
    return prediction, eps_from_x0(x_t, prediction, gamma)
  if kind == 'v':
    return x0_from_v(x_t, prediction, gamma), eps_from_v(x_t, prediction, gamma)
  raise ValueError(f'prediction kind must be one of {PREDICTION_KINDS}, got {kind!r}.')


def clip_x0(x0: ArrayLike, scale: float = 1.0) -> jax.Array:
  """Clips a model-space x0 estimate to [-b, b] (data range [-1, 1] times the scale).

  Source: Ho 2020 (DDPM code, clip_denoised); Chen 2023 input scaling.
  """
  _check_positive('scale', scale, 'The input scale b is a positive number such as 1.0.')
  return jnp.clip(jnp.asarray(x0), -scale, scale)


def normalize_input(
  x_t: ArrayLike, gamma: ArrayLike, scale: float = 1.0, mode: str = 'per_example'
) -> jax.Array:
  """Rescales x_t to about unit variance before the network.

  'per_example' divides each example by its own standard deviation over all
  non-batch axes; 'analytic' divides by sqrt((b^2 - 1) gamma + 1), the standard
  deviation of x_t for unit-variance data; 'none' returns x_t.

  Source: Chen 2023, Section 3 (variance normalization).
  """
  _check_positive('scale', scale, 'The input scale b is a positive number such as 1.0.')
  x_t = jnp.asarray(x_t)
  if mode == 'none':
    return x_t
  if mode == 'analytic':
    g = _bcast(gamma, x_t)
    return x_t * jax.lax.rsqrt((scale**2 - 1.0) * g + 1.0)
  if mode == 'per_example':
    axes = tuple(range(1, x_t.ndim))
    var = jnp.var(x_t, axis=axes, keepdims=True)
    # The floor keeps constant inputs finite (and their gradient defined).
    return x_t * jax.lax.rsqrt(var + 1e-12)
  raise ValueError(f'normalize mode must be one of {NORMALIZE_MODES}, got {mode!r}.')


# ---------------------------------------------------------------------------
# EDM preconditioning and the model-space <-> EDM-form bridge.


def edm_preconditioning(
  sigma: ArrayLike, sigma_data: float = 0.5
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(c_skip, c_out, c_in, c_noise) of D(x; sigma) = c_skip x + c_out F(c_in x; c_noise).

  Source: Karras 2022 (EDM), Table 1 (preconditioning, "ours").
  """
  sigma = jnp.asarray(sigma)
  total = sigma**2 + sigma_data**2
  c_skip = sigma_data**2 / total
  c_out = sigma * sigma_data * jax.lax.rsqrt(total)
  c_in = jax.lax.rsqrt(total)
  c_noise = 0.25 * jnp.log(sigma)
  return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: ArrayLike, sigma_data: float = 0.5) -> jax.Array:
  """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

  Source: Karras 2022 (EDM), Table 1 (loss weighting, "ours").
  """
  sigma = jnp.asarray(sigma)
  return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def model_to_edm(
  x_t: ArrayLike, gamma: ArrayLike, scale: float = 1.0
) -> tuple[jax.Array, jax.Array]:
  """Model-space (x_t, gamma) to EDM form (x = x_t / (sqrt(gamma) b), sigma_edm).

  Source: Karras 2022 (EDM), Eq. 1; Chen 2023 input scaling.
  """
  x_t = jnp.asarray(x_t)
  g = jnp.asarray(gamma)
  x = x_t / (jnp.sqrt(_bcast(g, x_t)) * scale)
  return x, gamma_to_edm_sigma(g, scale)


def edm_to_model(x: ArrayLike, sigma: ArrayLike, scale: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """EDM form (x, sigma_edm) to model space (x_t = sqrt(gamma) b x, gamma).

  Source: Karras 2022 (EDM), Eq. 1; Chen 2023 input scaling.
  """
  x = jnp.asarray(x)
  g = edm_sigma_to_gamma(sigma, scale)
  return jnp.sqrt(_bcast(g, x)) * scale * x, g


def x0_from_score(x: ArrayLike, score: ArrayLike, sigma: ArrayLike) -> jax.Array:
  """Tweedie: D(x; sigma) = x + sigma^2 grad log p(x; sigma) in EDM form.

  Source: Karras 2022 (EDM), Eq. 3; Song & Ermon 2020 (NCSNv2) denoising step.
  """
  x = jnp.asarray(x)
  return x + _bcast(sigma, x) ** 2 * jnp.asarray(score)


def score_from_x0(x: ArrayLike, x0: ArrayLike, sigma: ArrayLike) -> jax.Array:
  """grad log p(x; sigma) = (D(x; sigma) - x) / sigma^2 in EDM form.

  Source: Karras 2022 (EDM), Eq. 3.
  """
  x = jnp.asarray(x)
  return (jnp.asarray(x0) - x) / _bcast(sigma, x) ** 2


# ---------------------------------------------------------------------------
# Discrete abar <-> continuous levels.


def abar_to_logsnr(abar: ArrayLike) -> jax.Array:
  """logSNR of a discrete level: log(abar / (1 - abar)) (scale 1).

  Source: Kingma 2021 (VDM), Eq. 2 with alpha^2 = abar.
  """
  return logsnr_from_gamma(abar, 1.0)


def abar_to_edm_sigma(abar: ArrayLike) -> jax.Array:
  """EDM sigma of a discrete level: sqrt((1 - abar) / abar).

  Source: Karras 2022 (EDM), Table 1 (VP / DDIM columns).
  """
  return gamma_to_edm_sigma(abar, 1.0)


def edm_sigma_to_abar(sigma: ArrayLike) -> jax.Array:
  """Discrete abar of an EDM sigma: 1 / (1 + sigma^2).

  Source: Karras 2022 (EDM), Table 1 (VP / DDIM columns).
  """
  return edm_sigma_to_gamma(sigma, 1.0)


def edm_sigma_to_timestep(sigma: ArrayLike, schedule: DiscreteSchedule) -> jax.Array:
  """Fractional index in [0, T - 1] of an EDM sigma on a discrete schedule.

  Interpolates linearly in log sigma between the schedule's `edm_sigmas` and maps
  through `schedule.timesteps`, so a respaced schedule returns original indices.
  Levels outside the table clamp to its ends.

  Source: Karras 2022 (EDM), Appendix C.3.4 (continuous index of a discrete model).
  """
  log_table = jnp.log(jnp.asarray(schedule.edm_sigmas, jnp.float32))
  steps = jnp.asarray(schedule.timesteps, jnp.float32)
  return jnp.interp(jnp.log(jnp.asarray(sigma)), log_table, steps)


def timestep_to_edm_sigma(t: ArrayLike, schedule: DiscreteSchedule) -> jax.Array:
  """EDM sigma at a (possibly fractional, original) index, log-linear between table entries.

  Inverse of `edm_sigma_to_timestep` on the schedule's range.

  Source: Karras 2022 (EDM), Appendix C.3.4.
  """
  log_table = jnp.log(jnp.asarray(schedule.edm_sigmas, jnp.float32))
  steps = jnp.asarray(schedule.timesteps, jnp.float32)
  return jnp.exp(jnp.interp(jnp.asarray(t, jnp.float32), steps, log_table))
