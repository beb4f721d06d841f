"""Log-likelihood under the probability-flow ODE of an EDM-form denoiser.

With sigma(t) = t the probability-flow ODE is dx/dsigma = (x - D(x; sigma)) / sigma (EDM Eq. 1
with the score (D - x) / sigma^2). In u = log sigma it is smooth over the whole range:

    dx/du = x - D(x; e^u),        d/du log p(x(u)) = -div_x (x - D(x; e^u)),

so log p_{sigma_min}(x) = log N(x(u_max); 0, sigma_max^2 I) + int_{u_min}^{u_max} div(x - D) du.
The divergence is Hutchinson's estimate eps^T J eps (one probe per example kept for the whole
path, as in Song et al.'s likelihood code), or exact (a full Jacobian, for small test problems).
The integral is a fixed-step RK4 in u inside one lax.scan.

Bits/dim for 8-bit data in [-1, 1]: dequantize uniformly inside the bin of width 2/256, then
bpd = -log p / (D ln 2) + 7 (log2 of 128 bins per unit length).

Any objective's `denoiser` gives `denoise_fn`. `--mode=eval` reports the variational bound
(`nll`), not this estimate, so the module lives with the experiments; `tests/test_experiments.py`
checks it against closed-form Gaussian densities.

Source: Song et al. 2021, "Score-Based Generative Modeling through SDEs", Section 4.3 and
Appendix D.2 (probability-flow likelihood, Hutchinson estimator); Karras et al. 2022 (EDM),
Eq. 1 and Table 1 (sigma(t) = t); Grathwohl et al. 2019 (FFJORD, Hutchinson trace).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PROBES = ('rademacher', 'gaussian', 'exact')


def _stateful(denoise_fn: Callable, init_state: Any):
  if init_state is None:
    return lambda x, sigma, state: (denoise_fn(x, sigma), state)
  return denoise_fn


def ode_log_likelihood(
  denoise_fn: Callable,
  x: jax.Array,
  rng: jax.Array,
  *,
  sigma_min: float = 0.002,
  sigma_max: float = 80.0,
  num_steps: int = 64,
  probe: str = 'rademacher',
  init_state: Any = None,
) -> tuple[jax.Array, jax.Array]:
  """log p_{sigma_min}(x) in nats per example under the denoiser's probability-flow ODE.

  Source: Song et al. 2021, Section 4.3 / Appendix D.2; EDM Eq. 1.

  Args:
    denoise_fn: `D(x, sigma) -> x0_hat` in data space (sigma a scalar), or with `init_state`
      the stateful `D(x, sigma, state) -> (x0_hat, state)`.
    x: [B, ...] points (data plus any dequantization noise).
    rng: PRNG key for the Hutchinson probes.
    sigma_min: noise level the likelihood refers to (the ODE's start).
    sigma_max: end of the ODE; the prior there is N(0, sigma_max^2 I).
    num_steps: RK4 steps in log sigma (4 denoiser calls each).
    probe: 'rademacher' or 'gaussian' (Hutchinson, one probe per example), or 'exact'
      (trace of the full Jacobian: D extra Jacobian-vector products per call; small D only).
    init_state: initial state of a stateful denoiser (None: stateless).

  Returns:
    (log_p [B] in nats, x at sigma_max [B, ...]).
  """
  if probe not in PROBES:
    raise ValueError(f'probe must be one of {PROBES}; got {probe!r}.')
  if not 0 < sigma_min < sigma_max:
    raise ValueError(f'need 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}.')
  if num_steps < 1:
    raise ValueError(f'num_steps must be >= 1; got {num_steps}.')
  fn = _stateful(denoise_fn, init_state)
  batch = x.shape[0]
  dim = math.prod(x.shape[1:])
  if probe == 'rademacher':
    eps = jax.random.rademacher(rng, x.shape, x.dtype)
  else:
    eps = jax.random.normal(rng, x.shape, x.dtype)

  def drift(x, u, state):
    """dx/du and d(log-det)/du = div_x (x - D(x; e^u)) = dim - div_x D [B]."""
    sigma = jnp.exp(u)

    def denoise(y):
      return fn(y, sigma, state)

    # Only div D is estimated: the identity part of the Jacobian is known exactly, and leaving
    # it to a Gaussian probe would add variance 2 dim per unit of u for nothing.
    if probe == 'exact':
      basis = jnp.eye(dim, dtype=x.dtype).reshape((dim, 1) + x.shape[1:])

      def column(e):  # J_D e for one basis vector e, for every example
        return jax.jvp(lambda y: denoise(y)[0], (x,), (jnp.broadcast_to(e, x.shape),))[1]

      x0, new_state = denoise(x)
      columns = jax.lax.map(column, basis).reshape(dim, batch, dim)  # [k, B, D]
      div_d = jnp.einsum('kbk->b', columns)  # sum_k (J_D e_k)_k
    else:
      x0, jvp, new_state = jax.jvp(denoise, (x,), (eps,), has_aux=True)
      div_d = jnp.sum((jvp * eps).reshape(batch, -1), axis=1)
    return x - x0, dim - div_d, new_state

  u0, u1 = math.log(sigma_min), math.log(sigma_max)
  h = (u1 - u0) / num_steps

  def rk4(carry, i):
    x, logdet, state = carry
    u = u0 + i * h
    k1, d1, state = drift(x, u, state)
    k2, d2, state = drift(x + 0.5 * h * k1, u + 0.5 * h, state)
    k3, d3, state = drift(x + 0.5 * h * k2, u + 0.5 * h, state)
    k4, d4, state = drift(x + h * k3, u + h, state)
    x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    logdet = logdet + h / 6.0 * (d1 + 2 * d2 + 2 * d3 + d4)
    return (x, logdet, state), None

  init = (x, jnp.zeros((batch,), x.dtype), init_state)
  (x_end, logdet, _), _ = jax.lax.scan(rk4, init, jnp.arange(num_steps, dtype=x.dtype))
  sq = jnp.sum(jnp.square(x_end).reshape(batch, -1), axis=1)
  log_prior = -0.5 * dim * math.log(2 * math.pi * sigma_max**2) - 0.5 * sq / sigma_max**2
  return log_prior + logdet, x_end


def ode_nll_bits_per_dim(
  denoise_fn: Callable,
  images: jax.Array,
  rng: jax.Array,
  *,
  dequantize: bool = True,
  **kwargs,
) -> jax.Array:
  """Negative log-likelihood of 8-bit images in [-1, 1], bits/dim [B], via the ODE.

  Uniform dequantization inside each of the 256 bins (width 2/256), then
  bpd = -log p(x) / (D ln 2) + 7.

  Source: Song et al. 2021, Appendix D.2 (dequantized bits/dim of centered data).

  Args:
    denoise_fn: EDM-form denoiser (see ode_log_likelihood).
    images: [B, H, W, C] in [-1, 1] on the 256-level grid.
    rng: PRNG key (dequantization noise and probes).
    dequantize: add uniform noise within each bin (False: evaluate at bin centres).
    **kwargs: ode_log_likelihood options (sigma_min, sigma_max, num_steps, probe, init_state).

  Returns:
    bits/dim [B].
  """
  noise_rng, probe_rng = jax.random.split(rng)
  levels = jnp.round((images + 1.0) * 127.5)  # 0..255
  u = jax.random.uniform(noise_rng, images.shape, images.dtype) if dequantize else 0.5
  x = (levels + u) / 128.0 - 1.0  # bin k is [k/128 - 1, (k+1)/128 - 1)
  log_p, _ = ode_log_likelihood(denoise_fn, x, probe_rng, **kwargs)
  dim = math.prod(images.shape[1:])
  return -log_p / (dim * math.log(2.0)) + 7.0
