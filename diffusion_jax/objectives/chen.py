"""Chen 2023 continuous-time objective: gamma(t) schedules, input scaling, normalization.

Model space X = b x0, x_t = sqrt(gamma) X + sqrt(1 - gamma) eps, t ~ U(0, 1); the network
sees x_t divided by its standard deviation and is conditioned on 1000 gamma(t).

Source: Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models",
Algorithms 1-3.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import parameterization, schedules
from diffusion_jax.objectives import example_rng
from diffusion_jax.objectives.base import Batch, LossOutput, Objective, mean_over_dims, per_example


def noise_input(
  x0: jax.Array, eps: jax.Array, gamma: jax.Array, scale: float, normalize: str
) -> tuple[jax.Array, jax.Array]:
  """Forward noising and the network input: (x_t [B, ...], normalized x_t [B, ...]).

  x_t = sqrt(gamma) b x0 + sqrt(1 - gamma) eps; the input is x_t divided by its own
  per-example standard deviation ('per_example'), by sqrt((b^2 - 1) gamma + 1)
  ('analytic') or left alone ('none').

  Source: Chen 2023, Algorithm 2 and Section 3 (variance normalization).
  """
  g = per_example(gamma, x0)
  x_t = jnp.sqrt(g) * scale * x0 + jnp.sqrt(1.0 - g) * eps
  return x_t, parameterization.normalize_input(x_t, gamma, scale, normalize)


@dataclasses.dataclass(frozen=True)
class ChenObjective(Objective):
  """Chen 2023: mean squared error on eps / x0 / v at t ~ U(0, 1)."""

  default_sampler = 'chen_ddpm'  # Algorithm 3.

  @property
  def input_scale(self) -> float:
    """b of model space X = b x0 (`config.diffusion.scale`)."""
    return self.config.scale

  def sampling_schedule(self) -> schedules.DiscreteSchedule:
    """gamma(t) at t_i = (i + 1) / T (T = config.diffusion.num_timesteps) as a discrete
    schedule in data space: abar_i = 1 / (1 + sigma_i^2), sigma_i = the EDM level of
    gamma(t_i) at this input scale.
    """
    cfg = self.config
    t = (np.arange(cfg.num_timesteps) + 1.0) / cfg.num_timesteps
    gamma = np.clip(np.asarray(cfg.gamma_fn()(t), np.float64), 1e-12, 1.0 - 1e-12)
    sigma = np.sqrt((1.0 - gamma) / gamma) / cfg.scale
    abar = 1.0 / (1.0 + sigma**2)
    betas = 1.0 - abar / np.append(1.0, abar[:-1])
    return schedules.DiscreteSchedule.from_betas(np.clip(betas, 1e-12, 1.0))

  def loss(self, apply_fn, params, batch: Batch, rng, state, train=True) -> LossOutput:
    """Algorithm 2: t ~ U(0, 1), noise, normalize, predict, mean squared error.

    Source: Chen 2023, Algorithm 2.
    """
    cfg = self.config
    x0 = batch['image']  # [B, H, W, C]
    keys = example_rng.example_keys(rng, x0.shape[0])  # [B]
    t = example_rng.uniform(keys, example_rng.TIME, x0.dtype)  # [B]
    gamma = cfg.gamma_fn()(t)  # [B]
    eps = example_rng.normal(keys, example_rng.NOISE, x0.shape[1:], x0.dtype)
    _, x_in = noise_input(x0, eps, gamma, cfg.scale, cfg.normalize)
    pred = self.call_model(
      apply_fn, params, x_in, parameterization.NOISE_LEVEL_SCALE * gamma, batch, keys, train
    )
    target = parameterization.prediction_target(cfg.prediction, cfg.scale * x0, eps, gamma)
    loss_per_example = mean_over_dims(jnp.square(pred - target))  # [B]
    metrics = {'loss_per_example': loss_per_example, 'noise_t': t}
    return jnp.mean(loss_per_example), metrics, state

  def _denoise(self, apply_fn, params, x, sigma, label, self_cond, return_variance):
    cfg = self.config
    # Data space x = x0 + sigma n  <->  model space x_t = sqrt(g) b x, g = 1 / (1 + b^2 sigma^2).
    x_t, gamma = parameterization.edm_to_model(x, sigma, cfg.scale)
    x_in = parameterization.normalize_input(x_t, gamma, cfg.scale, cfg.normalize)
    pred, carry = apply_fn(
      params,
      x_in,
      parameterization.NOISE_LEVEL_SCALE * gamma,
      label=label,
      self_cond=self_cond,
      train=False,
    )
    x0_model, _ = parameterization.predict_x0_eps(pred, x_t, gamma, cfg.prediction)
    return x0_model / cfg.scale, carry
