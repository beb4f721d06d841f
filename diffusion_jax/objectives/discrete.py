"""DDPM and Improved DDPM: L_simple, learned variance, L_hybrid, L_vlb, importance sampling.

Index i ~ U{0, ..., T - 1} (DDPM's t = i + 1); x_t = sqrt(abar) x0 + sqrt(1 - abar) eps;
the model is conditioned on i * 1000 / T (`rescale_timesteps`, Improved DDPM's scripts'
default; the same as i at T = 1000) or on i itself. Sampling over a respaced chain
feeds the original indices, rescaled by the original T. With a learned variance the
model outputs 2C channels: the mean prediction, then iDDPM's v in [-1, 1].

Losses (per example, then averaged):
- 'simple': mean squared error on the prediction target (eps, x0 or v);
- 'hybrid': simple + lambda T L_{t-1} with the mean stop-gradiented inside L_{t-1}
  (L_{t-1} in bits/dim, lambda = 0.001; T L_{t-1} estimates L_vlb);
- 'vlb': L_{t-1} alone (bits/dim), optionally with importance-sampled t.

Source: Ho 2020 (DDPM), Sections 3-4; Nichol & Dhariwal 2021 (Improved DDPM),
Sections 3.1 and 3.3, and its code (`_scale_timesteps`, `respace._WrappedModel`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax import parameterization, schedules
from diffusion_jax.objectives import example_rng, importance, vlb
from diffusion_jax.objectives.base import Batch, LossOutput, Objective, mean_over_dims


@dataclasses.dataclass(frozen=True)
class DiscreteObjective(Objective):
  """DDPM (`objective='ddpm'`) and Improved DDPM (`objective='iddpm'`)."""

  default_sampler = 'ddpm'  # ancestral sampling over a respaced chain.

  @property
  def schedule(self):
    """The training DiscreteSchedule (float64 tables)."""
    return self.config.discrete_schedule()

  def sampling_schedule(self) -> schedules.DiscreteSchedule:
    """The training schedule itself."""
    return self.schedule

  def model_timesteps(self, index: jax.Array) -> jax.Array:
    """The model's time input for original (possibly fractional) indices [B]."""
    cfg = self.config
    return schedules.scale_timesteps(index, cfg.num_timesteps, cfg.rescale_timesteps)

  def init_state(self) -> dict:
    """The importance-sampling loss history when enabled, else `{}`."""
    if self.config.importance_sampling:
      return importance.init_history(self.config.num_timesteps)
    return {}

  def loss(self, apply_fn, params, batch: Batch, rng, state, train=True) -> LossOutput:
    """One Monte Carlo term of the configured loss per example.

    Source: Ho 2020, Algorithm 1 (L_simple); Nichol & Dhariwal 2021, Eq. 16 (L_hybrid)
    and Section 3.3 (importance sampling, Eq. 18).
    """
    cfg = self.config
    tables = vlb.Tables(self.schedule)
    num_t = tables.num_timesteps
    x0 = batch['image']  # [B, H, W, C]
    b = x0.shape[0]
    keys = example_rng.example_keys(rng, b)  # [B]
    if cfg.importance_sampling:
      index, weights = importance.sample_timesteps(state, keys, b)
    else:
      index = example_rng.randint(keys, example_rng.TIME, 0, num_t)
      weights = jnp.ones((b,), x0.dtype)
    eps = example_rng.normal(keys, example_rng.NOISE, x0.shape[1:], x0.dtype)
    x_t = vlb.q_sample(x0, index, eps, tables)
    noise_level = self.model_timesteps(tables.timesteps[index])  # [B]
    output = self.call_model(apply_fn, params, x_t, noise_level, batch, keys, train)
    pred, v = vlb.split_output(output, cfg.learn_variance)
    abar = vlb.Tables.gather(tables.abar, index, x0.ndim)
    target = parameterization.prediction_target(cfg.prediction, x0, eps, abar)
    mse = mean_over_dims(jnp.square(pred - target))  # [B]
    metrics = {'mse': mse}
    if cfg.loss == 'simple':
      per_example = mse
    else:
      if cfg.loss == 'hybrid':
        # L_vlb only trains the variance; L_simple trains the mean.
        output = jnp.concatenate([jax.lax.stop_gradient(pred), v], axis=-1)
      mean, logvar, _ = vlb.p_mean_variance(
        output,
        x_t,
        index,
        tables,
        prediction=cfg.prediction,
        learn_variance=cfg.learn_variance,
        fixed_variance=cfg.fixed_variance,
      )
      vb = vlb.vlb_terms(x0, x_t, index, mean, logvar, tables)  # [B] bits/dim
      metrics['vb'] = vb
      if cfg.loss == 'hybrid':
        per_example = mse + cfg.hybrid_weight * num_t * vb
      else:
        per_example = vb
    if cfg.importance_sampling:
      metrics['importance_weight'] = weights
    metrics['loss_per_example'] = per_example
    metrics['noise_t'] = (index.astype(x0.dtype) + 1.0) / num_t
    metrics['index'] = index
    return jnp.mean(per_example * weights), metrics, self.update_state(state, metrics)

  def update_state(self, state: Any, metrics: dict[str, jax.Array]) -> Any:
    """With importance sampling, pushes the batch's (index, loss) pairs into the history."""
    if not self.config.importance_sampling:
      return state
    return importance.update_history(state, metrics['index'], metrics['loss_per_example'])

  def _denoise(self, apply_fn, params, x, sigma, label, self_cond, return_variance):
    cfg = self.config
    # Data space x = x0 + sigma n  <->  x_t = sqrt(abar) x, abar = 1 / (1 + sigma^2).
    x_t, abar = parameterization.edm_to_model(x, sigma, 1.0)
    # Samplers visit the table's own levels, where this is the exact (integer) index.
    index = parameterization.edm_sigma_to_timestep(jnp.maximum(sigma, 1e-20), self.schedule)
    t_in = self.model_timesteps(index)
    output, carry = apply_fn(params, x_t, t_in, label=label, self_cond=self_cond, train=False)
    pred, v = vlb.split_output(output, cfg.learn_variance)
    x0, _ = parameterization.predict_x0_eps(pred, x_t, abar, cfg.prediction)
    if return_variance:
      return (x0, v), carry
    return x0, carry

  def nll_bits_per_dim(
    self,
    apply_fn: Callable,
    params: Any,
    x0: jax.Array,
    rng: jax.Array,
    label: jax.Array | None = None,
    return_terms: bool = False,
  ):
    """Full-chain L_vlb of 256-level data in bits/dim [B] (see `vlb.nll_bits_per_dim`)."""
    cfg = self.config
    return vlb.nll_bits_per_dim(
      apply_fn,
      params,
      x0,
      rng,
      self.schedule,
      label=label,
      prediction=cfg.prediction,
      learn_variance=cfg.learn_variance,
      fixed_variance=cfg.fixed_variance,
      rescale_timesteps=cfg.rescale_timesteps,
      self_cond=cfg.self_cond_rate > 0,
      return_terms=return_terms,
    )
