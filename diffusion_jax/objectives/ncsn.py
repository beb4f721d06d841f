"""NCSNv2 denoising score matching with a noise-unconditional network.

Geometric levels sigma_1 > ... > sigma_L; x~ = x + sigma z; the score model is
s(x~, sigma) = F(x~) / sigma (Technique 3) and the loss
1/2 sigma^2 ||s(x~, sigma) + (x~ - x) / sigma^2||^2 = 1/2 ||F(x~) + z||^2,
averaged over dimensions. The network's noise level input is 0.

Source: Song & Ermon 2020 (NCSNv2), Section 3 (Technique 3) and Eq. 2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax import schedules
from diffusion_jax.objectives.base import Batch, LossOutput, Objective, mean_over_dims, per_example
from diffusion_jax.objectives.sampling import run_sampler


@dataclasses.dataclass(frozen=True)
class NCSNObjective(Objective):
  """NCSNv2: sigma^2-weighted denoising score matching over geometric levels."""

  @property
  def sigmas(self) -> jax.Array:
    """The L training levels, largest first: [L]."""
    cfg = self.config
    return schedules.geometric_sigmas(cfg.sigma_max, cfg.sigma_min, cfg.num_levels)

  def loss(
    self,
    apply_fn: Callable,
    params: Any,
    batch: Batch,
    rng: jax.Array,
    state: Any,
    train: bool = True,
  ) -> LossOutput:
    """A uniform level per example, then the sigma^2-weighted score matching loss.

    Source: Song & Ermon 2020 (NCSNv2), Eq. 2 with lambda(sigma) = sigma^2.
    """
    x0 = batch['image']  # [B, H, W, C]
    sigmas = self.sigmas
    num_levels = sigmas.shape[0]
    rng_level, rng_z, rng_model = jax.random.split(rng, 3)
    level = jax.random.randint(rng_level, x0.shape[:1], 0, num_levels)  # [B]
    sigma = sigmas[level].astype(x0.dtype)  # [B]
    z = jax.random.normal(rng_z, x0.shape, x0.dtype)
    x = x0 + per_example(sigma, x0) * z
    f = self.call_model(apply_fn, params, x, jnp.zeros_like(sigma), batch, rng_model, train)
    s = per_example(sigma, x0)
    score = f / s
    target = -(x - x0) / jnp.square(s)
    loss_per_example = 0.5 * jnp.square(sigma) * mean_over_dims(jnp.square(score - target))
    noise_t = 1.0 - level.astype(x0.dtype) / max(num_levels - 1, 1)
    if num_levels == 1:
      noise_t = jnp.ones_like(noise_t)
    metrics = {'loss_per_example': loss_per_example, 'noise_t': noise_t, 'sigma': sigma}
    return jnp.mean(loss_per_example), metrics, state

  def _denoise(self, apply_fn, params, x, sigma, label, self_cond, return_variance):
    # Tweedie: D(x; sigma) = x + sigma^2 s(x, sigma) = x + sigma F(x).
    f, carry = apply_fn(
      params, x, jnp.zeros_like(sigma), label=label, self_cond=self_cond, train=False
    )
    return x + per_example(sigma, x) * f, carry

  def sample(self, apply_fn, params, noise, label, rng, sample_cfg):
    """Annealed Langevin dynamics with the final denoising step (or `sample_cfg.sampler`)."""
    return run_sampler(self, apply_fn, params, noise, label, rng, sample_cfg, default='langevin')
