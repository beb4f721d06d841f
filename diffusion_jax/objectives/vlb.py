"""The variational bound of discrete-time diffusion: KL terms, decoder, prior and bits/dim.

All terms are in nats per dimension unless a name says bits. A term for a batch is
averaged over the non-batch axes (iDDPM's `mean_flat`), so dividing by ln 2 gives
bits per dimension directly.

Index convention (schedules.DiscreteSchedule): 0-based index i in [0, T - 1] is DDPM's
t = i + 1. L_{t-1} for t >= 2 is KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)); at i = 0
it is the decoder NLL L_0 = -log p(x0 | x1); the prior term L_T = KL(q(x_T | x0) || N(0, I)).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from diffusion_jax import parameterization
from diffusion_jax.objectives import self_conditioning
from diffusion_jax.schedules import DiscreteSchedule, scale_timesteps

FIXED_VARIANCES = ('small', 'large')
NUM_BINS = 256


def normal_kl(
  mean1: ArrayLike, logvar1: ArrayLike, mean2: ArrayLike, logvar2: ArrayLike
) -> jax.Array:
  """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats.

  Source: Nichol & Dhariwal 2021 (Improved DDPM) code, `normal_kl`; standard closed form.
  """
  mean1, logvar1, mean2, logvar2 = map(jnp.asarray, (mean1, logvar1, mean2, logvar2))
  return 0.5 * (
    -1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2)
  )


def _log_normal_cdf_diff(upper: jax.Array, lower: jax.Array) -> jax.Array:
  """log(Phi(upper) - Phi(lower)) for upper > lower, stable in both tails."""
  # In the right tail Phi(u) - Phi(l) = Phi(-l) - Phi(-u) loses nothing to cancellation.
  flip = lower > 0
  hi = jnp.where(flip, -lower, upper)
  lo = jnp.where(flip, -upper, lower)
  log_hi = jax.scipy.special.log_ndtr(hi)
  log_lo = jax.scipy.special.log_ndtr(lo)
  # log(exp(a) - exp(b)) = a + log1p(-exp(b - a)), with a tiny floor for equal arguments.
  return log_hi + jnp.log(jnp.maximum(-jnp.expm1(log_lo - log_hi), 1e-30))


def discretized_gaussian_log_likelihood(
  x: ArrayLike, means: ArrayLike, log_scales: ArrayLike, num_bins: int = NUM_BINS
) -> jax.Array:
  """Elementwise log-probability (nats) of data x on a `num_bins` grid in [-1, 1].

  Bin k has centre -1 + 2k / (num_bins - 1) and half-width 1 / (num_bins - 1). The two
  edge bins take the Gaussian's whole tail, (-inf, -1 + h] and [1 - h, inf), so the
  probabilities of all bins sum to exactly 1. Uses exact log-CDFs (the reference code's
  tanh approximation is not needed in JAX).

  Source: Ho 2020 (DDPM) Eq. 13; Nichol & Dhariwal 2021 code,
  `discretized_gaussian_log_likelihood`.

  Args:
    x: data on the grid (e.g. uint8 images mapped to [-1, 1]).
    means: decoder means, broadcastable to x.
    log_scales: decoder log standard deviations, broadcastable to x.
    num_bins: number of levels (256 for 8-bit images).
  """
  x = jnp.asarray(x)
  half = 1.0 / (num_bins - 1)
  inv_std = jnp.exp(-jnp.asarray(log_scales))
  centered = x - jnp.asarray(means)
  upper = inv_std * (centered + half)
  lower = inv_std * (centered - half)
  edge = 1.0 - 0.5 * half  # any value strictly between the last two bin centres
  log_cdf_upper = jax.scipy.special.log_ndtr(upper)  # bin 0: P(X <= -1 + h)
  log_sf_lower = jax.scipy.special.log_ndtr(-lower)  # last bin: P(X >= 1 - h)
  log_mid = _log_normal_cdf_diff(upper, lower)
  return jnp.where(x < -edge, log_cdf_upper, jnp.where(x > edge, log_sf_lower, log_mid))


def mean_over_dims(x: jax.Array) -> jax.Array:
  """Mean over every axis but the first: [B, ...] -> [B]."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


class Tables:
  """float32 jnp views of a DiscreteSchedule's tables, gathered per example.

  Built at trace time from float64 numpy so every table is a jit constant.
  """

  def __init__(self, schedule: DiscreteSchedule):
    self.schedule = schedule
    f32 = lambda a: jnp.asarray(np.asarray(a, np.float64), jnp.float32)
    s = schedule
    self.abar = f32(s.alphas_cumprod)
    self.sqrt_abar = f32(np.sqrt(s.alphas_cumprod))
    self.sqrt_one_minus_abar = f32(np.sqrt(1.0 - s.alphas_cumprod))
    self.log_betas = f32(np.log(s.betas))
    self.post_logvar = f32(s.posterior_log_variance_clipped)
    self.coef1 = f32(s.posterior_mean_coef1)
    self.coef2 = f32(s.posterior_mean_coef2)
    # DDPM's "large" variance beta_t, with beta_1 replaced by betatilde_2 so the decoder
    # variance is not needlessly wide (as in the Improved DDPM code).
    large = np.append(s.posterior_variance[1], s.betas[1:]) if s.num_timesteps > 1 else s.betas
    self.large_logvar = f32(np.log(large))
    self.timesteps = jnp.asarray(s.timesteps, jnp.float32)
    self.num_timesteps = s.num_timesteps
    self.final_abar = float(s.alphas_cumprod[-1])

  @staticmethod
  def gather(table: jax.Array, index: jax.Array, ndim: int) -> jax.Array:
    """table[index] reshaped to [B, 1, ..., 1] of rank ndim."""
    out = table[index]
    return out.reshape(out.shape + (1,) * (ndim - out.ndim))


def q_sample(x0: jax.Array, index: jax.Array, eps: jax.Array, tables: Tables) -> jax.Array:
  """x_t = sqrt(abar) x0 + sqrt(1 - abar) eps at per-example indices [B].

  Source: Ho 2020 (DDPM), Eq. 4.
  """
  nd = x0.ndim
  return (
    Tables.gather(tables.sqrt_abar, index, nd) * x0
    + Tables.gather(tables.sqrt_one_minus_abar, index, nd) * eps
  )


def q_posterior(
  x0: jax.Array, x_t: jax.Array, index: jax.Array, tables: Tables
) -> tuple[jax.Array, jax.Array]:
  """Mean and clipped log-variance of q(x_{t-1} | x_t, x0).

  Source: Ho 2020 (DDPM), Eqs. 6-7.
  """
  nd = x_t.ndim
  mean = Tables.gather(tables.coef1, index, nd) * x0 + Tables.gather(tables.coef2, index, nd) * x_t
  logvar = jnp.broadcast_to(Tables.gather(tables.post_logvar, index, nd), x_t.shape)
  return mean, logvar


def model_log_variance(
  v: jax.Array | None, index: jax.Array, tables: Tables, ndim: int, fixed_variance: str = 'small'
) -> jax.Array:
  """log Sigma of the reverse step: learned interpolation when v is given, else fixed.

  Learned: frac = (v + 1) / 2, log Sigma = frac log beta_t + (1 - frac) log betatilde_t
  (betatilde clipped at t = 1). Fixed: 'small' = log betatilde_t, 'large' = log beta_t.

  Source: Nichol & Dhariwal 2021 (Improved DDPM), Eq. 15; Ho 2020 Section 3.2.
  """
  min_log = Tables.gather(tables.post_logvar, index, ndim)
  if v is not None:
    max_log = Tables.gather(tables.log_betas, index, ndim)
    frac = (v + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log
  if fixed_variance == 'small':
    return min_log
  if fixed_variance == 'large':
    return Tables.gather(tables.large_logvar, index, ndim)
  raise ValueError(f'fixed_variance must be one of {FIXED_VARIANCES}, got {fixed_variance!r}.')


def split_output(output: jax.Array, learn_variance: bool) -> tuple[jax.Array, jax.Array | None]:
  """Splits a model output [B, H, W, 2C] into (mean prediction, v) when learning variance."""
  if not learn_variance:
    return output, None
  c = output.shape[-1]
  if c % 2:
    raise ValueError(
      f'a learned-variance model must output 2C channels, got {c}; set '
      'config.model.learn_variance=True so the model emits the extra channels.'
    )
  return output[..., : c // 2], output[..., c // 2 :]


def p_mean_variance(
  output: jax.Array,
  x_t: jax.Array,
  index: jax.Array,
  tables: Tables,
  *,
  prediction: str = 'eps',
  learn_variance: bool = False,
  fixed_variance: str = 'small',
  clip_denoised: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Reverse-step Gaussian p(x_{t-1} | x_t) of a model output: (mean, log-variance, x0_hat).

  Source: Ho 2020 (DDPM), Eq. 11 via the posterior mean; Nichol & Dhariwal 2021, Eq. 15.
  """
  pred, v = split_output(output, learn_variance)
  abar = Tables.gather(tables.abar, index, x_t.ndim)
  x0_hat, _ = parameterization.predict_x0_eps(pred, x_t, abar, prediction)
  if clip_denoised:
    x0_hat = parameterization.clip_x0(x0_hat, 1.0)
  mean, _ = q_posterior(x0_hat, x_t, index, tables)
  logvar = jnp.broadcast_to(
    model_log_variance(v, index, tables, x_t.ndim, fixed_variance), x_t.shape
  )
  return mean, logvar, x0_hat


def vlb_terms(
  x0: jax.Array,
  x_t: jax.Array,
  index: jax.Array,
  model_mean: jax.Array,
  model_logvar: jax.Array,
  tables: Tables,
) -> jax.Array:
  """Per-example L_{t-1} in bits/dim [B]: the KL to the posterior, or the decoder NLL at i = 0.

  Source: Ho 2020 (DDPM), Eq. 5; Nichol & Dhariwal 2021 code, `_vb_terms_bpd`.
  """
  true_mean, true_logvar = q_posterior(x0, x_t, index, tables)
  kl = mean_over_dims(normal_kl(true_mean, true_logvar, model_mean, model_logvar))
  nll = -mean_over_dims(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar))
  return jnp.where(index == 0, nll, kl) / math.log(2.0)


def prior_bits_per_dim(x0: jax.Array, tables: Tables) -> jax.Array:
  """L_T = KL(q(x_T | x0) || N(0, I)) in bits/dim [B]; no parameters.

  Source: Ho 2020 (DDPM), Eq. 5 (L_T); Nichol & Dhariwal 2021 code, `_prior_bpd`.
  """
  abar = tables.final_abar
  mean = math.sqrt(abar) * x0
  logvar = jnp.full_like(x0, math.log1p(-abar))
  return mean_over_dims(normal_kl(mean, logvar, 0.0, 0.0)) / math.log(2.0)


def nll_bits_per_dim(
  apply_fn: Callable,
  params,
  x0: jax.Array,
  rng: jax.Array,
  schedule: DiscreteSchedule,
  *,
  label: jax.Array | None = None,
  prediction: str = 'eps',
  learn_variance: bool = False,
  fixed_variance: str = 'small',
  rescale_timesteps: bool = True,
  self_cond: bool = False,
  clip_denoised: bool = True,
  return_terms: bool = False,
):
  """Full-chain negative log-likelihood bound of discretized data, in bits/dim [B].

  Sums L_{t-1} over all T indices (one fresh x_t per index, lax.scan) plus the prior
  L_T. Terms are already per-dimension means, so the sum is the bound divided by
  D ln 2. `x0` must lie on the 256-level grid in [-1, 1].

  Source: Ho 2020 (DDPM), Eq. 5 and Table 2; Nichol & Dhariwal 2021 code, `calc_bpd_loop`.

  Args:
    apply_fn: the model's `apply(params, x, noise_level, label=..., self_cond=...)`.
    params: model parameters.
    x0: data [B, H, W, C] in [-1, 1] on the 256-level grid.
    rng: PRNG key.
    schedule: the discrete schedule the model was trained with (not respaced).
    label: int32 [B] labels or None.
    prediction: what the model's mean channels predict: 'eps', 'x0' or 'v'.
    learn_variance: the model outputs 2C channels, the last C being iDDPM's v.
    fixed_variance: 'small' or 'large' when the variance is not learned.
    rescale_timesteps: feed the model t * 1000 / T (Improved DDPM's scripts' default;
      a no-op at T = 1000) instead of the index t.
    self_cond: run two passes, the second conditioned on the first's carry.
    clip_denoised: clip x0_hat to [-1, 1] before forming the posterior mean.
    return_terms: also return the per-index terms [T, B] and the prior [B].

  Returns:
    total bits/dim [B], or (total [B], terms [T, B], prior [B]) with `return_terms`.
  """
  if fixed_variance not in FIXED_VARIANCES:
    raise ValueError(f'fixed_variance must be one of {FIXED_VARIANCES}, got {fixed_variance!r}.')
  tables = Tables(schedule)
  batch = x0.shape[0]

  def term(carry, i):
    index = jnp.full((batch,), i, jnp.int32)
    eps = jax.random.normal(jax.random.fold_in(rng, i), x0.shape, x0.dtype)
    x_t = q_sample(x0, index, eps, tables)
    noise_level = scale_timesteps(
      Tables.gather(tables.timesteps, index, 1), tables.num_timesteps, rescale_timesteps
    )
    output, _, _ = self_conditioning.apply_with_self_cond(
      apply_fn,
      params,
      x_t,
      noise_level,
      label=label,
      rate=1.0 if self_cond else 0.0,
      rng=jax.random.fold_in(jax.random.fold_in(rng, i), 1),
      train=False,
    )
    mean, logvar, _ = p_mean_variance(
      output,
      x_t,
      index,
      tables,
      prediction=prediction,
      learn_variance=learn_variance,
      fixed_variance=fixed_variance,
      clip_denoised=clip_denoised,
    )
    return carry, vlb_terms(x0, x_t, index, mean, logvar, tables)

  _, terms = jax.lax.scan(term, None, jnp.arange(tables.num_timesteps))  # [T, B]
  prior = prior_bits_per_dim(x0, tables)
  total = jnp.sum(terms, axis=0) + prior
  if return_terms:
    return total, terms, prior
  return total
