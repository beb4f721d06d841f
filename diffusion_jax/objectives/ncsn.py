"""NCSNv2 denoising score matching with a noise-unconditional network.

Geometric levels sigma_1 > ... > sigma_L; x~ = x + sigma z; the score model is
s(x~, sigma) = F(x~) / sigma (Technique 3) and the per-example loss
1/2 sigma^2 ||s(x~, sigma) + (x~ - x) / sigma^2||^2 = 1/2 ||F(x~) + z||^2, summed over
dimensions (`ncsn_loss_reduction='sum'`, the reference's) or averaged ('mean', 1 / D
of it). The network's noise level input is 0.

Data range (`data_range`). The input pipeline gives x in [-1, 1]. With 'unit' (the
default) the network works on x_net = (x + 1) / 2 in [0, 1], as the reference's
CIFAR-10 run does (`rescaled: false`): the ladder (sigma_1 = 50, sigma_L = 0.01) and
the Langevin eps (6.2e-6) are then the paper's numbers verbatim. With 'symmetric' the
network sees [-1, 1] itself, and the same ladder relative to the data needs sigma x2
and eps x4. Outside the objective everything is in the pipeline's [-1, 1]: the EDM-form
denoiser takes pipeline-space x and sigma (sigma_pipe = sigma_net / a, a = 1/2 for
'unit'), and samples come back in [-1, 1].

Source: Song & Ermon 2020 (NCSNv2), Section 3 (Technique 3) and Eq. 2; reference code
ermongroup/ncsnv2 `losses/dsm.py` (anneal_dsm_score_estimation), `datasets/__init__.py`
(data_transform, inverse_data_transform), `configs/cifar10.yml`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax import schedules
from diffusion_jax.objectives import example_rng
from diffusion_jax.objectives.base import (
  Batch,
  LangevinStart,
  LossOutput,
  Objective,
  mean_over_dims,
  per_example,
)

# x_net = a x + c for pipeline data x in [-1, 1].
_AFFINE = {'unit': (0.5, 0.5), 'symmetric': (1.0, 0.0)}


def sum_over_dims(x: jax.Array) -> jax.Array:
  """Sum over every axis but the first: [B, ...] -> [B]."""
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


@dataclasses.dataclass(frozen=True)
class NCSNObjective(Objective):
  """NCSNv2: sigma^2-weighted denoising score matching over geometric levels."""

  default_sampler = 'langevin'  # annealed Langevin dynamics with the final denoising.

  @property
  def sigmas(self) -> jax.Array:
    """The L training levels in the network's data units, largest first: [L]."""
    cfg = self.config
    return schedules.geometric_sigmas(cfg.sigma_max, cfg.sigma_min, cfg.num_levels)

  @property
  def data_scale(self) -> float:
    """a of x_net = a x + c: network-space lengths (and sigmas) per pipeline-space unit."""
    return _AFFINE[self.config.data_range][0]

  def to_network(self, x: jax.Array) -> jax.Array:
    """Pipeline data [-1, 1] to the network's range (reference `data_transform`)."""
    a, c = _AFFINE[self.config.data_range]
    return a * x + c

  def from_network(self, x: jax.Array) -> jax.Array:
    """The network's range back to the pipeline's [-1, 1] (`inverse_data_transform`)."""
    a, c = _AFFINE[self.config.data_range]
    return (x - c) / a

  def loss(self, apply_fn, params, batch: Batch, rng, state, train=True) -> LossOutput:
    """A uniform level per example, then the sigma^2-weighted score matching loss.

    Source: Song & Ermon 2020 (NCSNv2), Eq. 2 with lambda(sigma) = sigma^2 (the
    reference's anneal_power = 2); ermongroup/ncsnv2 `losses/dsm.py`.
    """
    x0 = self.to_network(batch['image'])  # [B, H, W, C] in the network's range
    sigmas = self.sigmas
    num_levels = sigmas.shape[0]
    keys = example_rng.example_keys(rng, x0.shape[0])  # [B]
    level = example_rng.randint(keys, example_rng.TIME, 0, num_levels)  # [B]
    sigma = sigmas[level].astype(x0.dtype)  # [B]
    z = example_rng.normal(keys, example_rng.NOISE, x0.shape[1:], x0.dtype)
    x = x0 + per_example(sigma, x0) * z
    f = self.call_model(apply_fn, params, x, jnp.zeros_like(sigma), batch, keys, train)
    # sigma^2 ||F / sigma + z / sigma||^2 / 2 without the 1 / sigma^2 round trip.
    sq = 0.5 * jnp.square(f + z)
    if self.config.ncsn_loss_reduction == 'sum':
      loss_per_example = sum_over_dims(sq)
    else:
      loss_per_example = mean_over_dims(sq)
    noise_t = 1.0 - level.astype(x0.dtype) / max(num_levels - 1, 1)
    if num_levels == 1:
      noise_t = jnp.ones_like(noise_t)
    metrics = {'loss_per_example': loss_per_example, 'noise_t': noise_t, 'sigma': sigma}
    return jnp.mean(loss_per_example), metrics, state

  def _denoise(self, apply_fn, params, x, sigma, label, self_cond, return_variance):
    # Tweedie in the network's space: D(x; sigma) = x + sigma^2 s(x, sigma) = x + sigma F(x).
    a = self.data_scale
    x_net = self.to_network(x)
    f, carry = apply_fn(
      params, x_net, jnp.zeros_like(sigma), label=label, self_cond=self_cond, train=False
    )
    return self.from_network(x_net + per_example(a * sigma, x) * f), carry

  def langevin_start(self, noise: jax.Array, settings: Any) -> LangevinStart:
    """The reference sampler's start: uniform noise over the data range, raw scores.

    The reference starts from uniform noise over the data range (`torch.rand` through
    `data_transform`, `data_init: false`), here Phi(noise) so the start is a function
    of the given N(0, I) `noise`; the 'langevin' entry then runs T = `n_steps_each`
    steps per level of size alpha_i = eps sigma_i^2 / sigma_L^2 (eps = `step_lr` in
    the network's units, or Technique 4's when 0) and x <- x + sigma_L^2 s(x, sigma_L).
    Scores are never clipped; `clip_x0` clamps the final sample to the data range, as
    the reference's `inverse_data_transform` does. The chain runs in pipeline space
    with sigma / a and eps / a^2, the network-space chain mapped by x = (x_net - c) / a.

    Source: Song & Ermon 2020 (NCSNv2), Algorithm 1 and Appendix C.2 (denoising);
    ermongroup/ncsnv2 `models/__init__.py` (anneal_Langevin_dynamics),
    `runners/ncsn_runner.py` (sample).

    Args:
      noise: N(0, I) [B, H, W, C].
      settings: the SampleSettings (step_lr, n_steps_each).
    """
    a = self.data_scale
    # Uniform over the pipeline's [-1, 1]: U[0, 1] in the network's range for 'unit'.
    x = 2.0 * jax.scipy.special.ndtr(jnp.asarray(noise)) - 1.0
    step_lr = self.langevin_step_lr(settings) / a**2
    return LangevinStart(x, self.sigmas / a, step_lr, clip_denoiser=False)
