"""EDM training: preconditioned denoiser, log-normal noise levels, lambda(sigma) weighting.

D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), ln sigma ~ N(P_mean, P_std^2),
loss lambda(sigma) ||D(y + n; sigma) - y||^2 with lambda = (sigma^2 + sd^2) / (sigma sd)^2.
The model is conditioned on 1000 c_noise = 250 ln sigma and on the batch's augmentation
vector (non-leaking augmentation; zeros at sampling).

Source: Karras et al. 2022 (EDM), Section 5 and Table 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffusion_jax import parameterization
from diffusion_jax.models import edm_precond
from diffusion_jax.objectives import example_rng
from diffusion_jax.objectives.base import Batch, LossOutput, Objective, mean_over_dims, per_example


def effective_target(y: jax.Array, n: jax.Array, sigma: jax.Array, sigma_data: float) -> jax.Array:
  """F's regression target (y - c_skip (y + n)) / c_out; unit variance when std(y) = sd.

  The EDM loss equals ||F - target||^2 because lambda(sigma) c_out^2 = 1.

  Source: Karras et al. 2022 (EDM), Eq. 8 and Appendix B.6.
  """
  c_skip, c_out, _, _ = parameterization.edm_preconditioning(per_example(sigma, y), sigma_data)
  return (y - c_skip * (y + n)) / c_out


@dataclasses.dataclass(frozen=True)
class EDMObjective(Objective):
  """EDM (Karras 2022) with its preconditioning, noise distribution and weighting."""

  default_sampler = 'edm_heun'  # Algorithm 1 on the rho = 7 grid.

  def sample_sigma(self, rng: jax.Array, batch_size: int) -> jax.Array:
    """ln sigma ~ N(P_mean, P_std^2): [B]; `rng` is one key or per-example keys [B]."""
    cfg = self.config
    keys = example_rng.example_keys(rng, batch_size)
    return jnp.exp(cfg.p_mean + cfg.p_std * example_rng.normal(keys, example_rng.TIME, ()))

  def loss(self, apply_fn, params, batch: Batch, rng, state, train=True) -> LossOutput:
    """lambda(sigma) ||D(y + n; sigma) - y||^2, averaged over dimensions.

    Source: Karras et al. 2022 (EDM), Eq. 2 and Table 1 ("ours").
    """
    cfg = self.config
    y = batch['image']  # [B, H, W, C]
    keys = example_rng.example_keys(rng, y.shape[0])  # [B]
    sigma = self.sample_sigma(keys, y.shape[0]).astype(y.dtype)  # [B]
    n = example_rng.normal(keys, example_rng.NOISE, y.shape[1:], y.dtype)
    x = y + per_example(sigma, y) * n
    c_skip, c_out, c_in, c_noise = edm_precond.preconditioning(cfg.precond, sigma, cfg.sigma_data)
    f = self.call_model(
      apply_fn,
      params,
      per_example(c_in, y) * x,
      parameterization.NOISE_LEVEL_SCALE * c_noise,
      batch,
      keys,
      train,
    )
    d = per_example(c_skip, y) * x + per_example(c_out, y) * f
    weight = parameterization.edm_loss_weight(sigma, cfg.sigma_data)  # [B]
    loss_per_example = weight * mean_over_dims(jnp.square(d - y))
    # Buckets by the quantile of ln sigma under the training distribution.
    noise_t = jax.scipy.stats.norm.cdf((jnp.log(sigma) - cfg.p_mean) / cfg.p_std)
    metrics = {'loss_per_example': loss_per_example, 'noise_t': noise_t, 'sigma': sigma}
    return jnp.mean(loss_per_example), metrics, state

  def _denoise(self, apply_fn, params, x, sigma, label, self_cond, return_variance):
    # sigma = 0 never reaches the network in EDM's samplers; the floor keeps ln finite.
    c_skip, c_out, c_in, c_noise = edm_precond.preconditioning(
      self.config.precond, jnp.maximum(sigma, 1e-20), self.config.sigma_data
    )
    f, carry = apply_fn(
      params,
      per_example(c_in, x) * x,
      parameterization.NOISE_LEVEL_SCALE * c_noise,
      label=label,
      self_cond=self_cond,
      train=False,
    )
    return per_example(c_skip, x) * x + per_example(c_out, x) * f, carry
