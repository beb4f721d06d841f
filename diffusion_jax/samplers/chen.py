"""Chen 2023 Algorithm 3: continuous-time DDIM / DDPM sampling in gamma notation.

The loop state is the model-space x_t = sqrt(g) b x0 + sqrt(1 - g) eps (b = the
input scale). The denoiser is called in EDM form on the data-space
x = x_t / (sqrt(g) b) at sigma = sqrt(1 - g) / (sqrt(g) b); its x0 estimate
(clipped, normalized and self-conditioned as the denoiser sees fit) becomes
x0_hat = b * D, and eps_hat is re-derived from it.

Source: Chen 2023, "On the Importance of Noise Scheduling for Diffusion
Models", Algorithm 3 and the DDIM / DDPM steps of its appendix.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import schedules
from diffusion_jax.samplers import common
from diffusion_jax.samplers.guidance import as_stateful, x0_of

METHODS = ('ddpm', 'ddim')
# DDPM transition variance: 'large' = 1 - alpha_ts (the authors' code default),
# 'small' = the posterior variance (1 - alpha_ts)(1 - g_next)/(1 - g_now) (their 'ddpm@small').
DDPM_VARIANCES = ('large', 'small')


def chen_time_grid(steps: int) -> np.ndarray:
  """t_now for step = 0 .. steps - 1, then the final t = 0: float64 [steps + 1]."""
  steps = common.check_steps(steps)
  return np.maximum(1.0 - np.arange(steps + 1) / steps, 0.0)


def chen_sample(
  denoise_fn,
  noise: jax.Array,
  *,
  steps: int,
  gamma_fn: Callable[[jax.Array], jax.Array] | None = None,
  scale: float = 1.0,
  method: str = 'ddpm',
  variance: str = 'large',
  rng: jax.Array | None = None,
  init_state: Any = None,
  return_trajectory: common.TrajectorySpec = False,
):
  """Samples with Chen 2023 Algorithm 3 and returns the last x0 estimate.

  For step in range(steps): t_now = 1 - step / steps, t_next = max(t_now - 1 / steps, 0),
  g = gamma_fn(t); then
  DDIM: x_next = sqrt(g_next) x0_hat + sqrt(1 - g_next) eps_hat;
  DDPM: a = clip(g_now / g_next, 0, 1),
        x_next = sqrt(g_next)(1 - a)/(1 - g_now) x0_hat + sqrt(a)(1 - g_next)/(1 - g_now) x_t
                 + sqrt(var) z,
        var = 1 - a ('large', the default) or (1 - a)(1 - g_next)/(1 - g_now) ('small').
  The mean equals the reference's (x_t - (1 - a) eps_hat / sqrt(1 - g_now)) / sqrt(a) with
  eps_hat re-derived from the clipped x0_hat. Like the reference, the last step (to
  g_next = 1) adds its noise to the state too; the returned sample is the x0 estimate.

  Source: Chen 2023, Algorithm 3; the transition step and its 'large' default follow the
  authors' `diffusion_utils.Scheduler.transition_step` (google-research/pix2seq).

  Args:
    denoise_fn: EDM-form data-space denoiser `(x, sigma) -> x0` or, with
      `init_state`, `(x, sigma, state) -> (x0, state)`; sigma follows the
      contract's sigma = sqrt(1 - g) / (sqrt(g) b).
    noise: starting x_1 ~ N(0, I) in model space; any shape.
    steps: number of steps (= NFE), >= 1.
    gamma_fn: inference schedule t -> gamma; default the cosine schedule.
    scale: the input scale b > 0 (model space = b * data).
    method: 'ddpm' (ancestral) or 'ddim' (deterministic).
    variance: DDPM transition variance, 'large' (1 - alpha_ts, the reference default) or
      'small' (the posterior variance); ignored by 'ddim'.
    rng: PRNG key, required for 'ddpm'.
    init_state: starting state of a stateful (self-conditioning) denoiser.
    return_trajectory: False, True (states x_1 .. x_0) or state indices.

  Returns:
    The final x0 estimate in data space (shape of noise), or
    `(x0, trajectory)`; trajectory states are model-space x_t.
  """
  steps = common.check_steps(steps)
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}; got {method!r}.')
  if variance not in DDPM_VARIANCES:
    raise ValueError(f'variance must be one of {DDPM_VARIANCES}; got {variance!r}.')
  b = common.concrete_or_none(scale)
  if b is not None and (b.shape != () or not b > 0):
    raise ValueError(f'scale (the input scale b) must be a positive scalar; got {scale!r}.')
  common.check_rng(rng, method == 'ddpm', "chen_sample with method='ddpm'")
  gamma_fn = schedules.cosine_schedule if gamma_fn is None else gamma_fn
  if not callable(gamma_fn):
    raise ValueError(f'gamma_fn must be a callable t -> gamma; got {gamma_fn!r}.')

  t = jnp.asarray(chen_time_grid(steps), jnp.float32)  # [steps + 1]
  g = jnp.asarray(gamma_fn(t), jnp.float32)
  g_now, g_next = g[:-1], g[1:]
  scale = jnp.asarray(scale, jnp.float32)
  sqrt_g = jnp.sqrt(g_now)
  xs = {
    'k': jnp.arange(steps, dtype=jnp.int32),
    'inv_in': 1.0 / (sqrt_g * scale),  # model space -> data space
    'sigma': jnp.sqrt(1.0 - g_now) / (sqrt_g * scale),
    'sqrt_g': sqrt_g,
    'inv_sqrt_1m_g': 1.0 / jnp.sqrt(1.0 - g_now),
    'g_now': g_now,
    'g_next': g_next,
  }
  noise = jnp.asarray(noise)
  fn, state = as_stateful(denoise_fn, init_state)
  recorder = common.TrajectoryRecorder(common.trajectory_indices(return_trajectory, steps), noise)

  def body(carry, c):
    x, state, buf, _ = carry
    out, state = fn(x * c['inv_in'], c['sigma'], state)
    x0_data = x0_of(out)
    x0 = scale * x0_data
    if method == 'ddim':
      eps = (x - c['sqrt_g'] * x0) * c['inv_sqrt_1m_g']
      x_next = jnp.sqrt(c['g_next']) * x0 + jnp.sqrt(1.0 - c['g_next']) * eps
    else:
      g_now, g_next = c['g_now'], c['g_next']
      alpha_ts = jnp.clip(g_now / g_next, 0.0, 1.0)
      inv = 1.0 / (1.0 - g_now)
      mean = (
        jnp.sqrt(g_next) * (1.0 - alpha_ts) * inv * x0
        + jnp.sqrt(alpha_ts) * (1.0 - g_next) * inv * x
      )
      var = 1.0 - alpha_ts
      if variance == 'small':
        var = var * (1.0 - g_next) * inv
      std = jnp.sqrt(jnp.maximum(var, 0.0))
      z = jax.random.normal(jax.random.fold_in(rng, c['k']), x.shape, x.dtype)
      x_next = mean + std * z
    buf = recorder.record(buf, c['k'] + 1, x_next)
    return (x_next, state, buf, x0_data), None

  carry = (noise, state, recorder.init(noise), jnp.zeros_like(noise))
  (_, _, buf, x0_data), _ = jax.lax.scan(body, carry, xs)
  if recorder.enabled:
    return x0_data, buf
  return x0_data
