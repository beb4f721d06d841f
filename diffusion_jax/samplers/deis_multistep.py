"""DEIS: the diffusion exponential integrator sampler, multistep, log-rho polynomial ("tAB-DEIS").

Works in the EDM (VE) form x = x_vp / alpha with rho = sigma_vp / alpha = sigma (EDM's sigma).
DEIS integrates the probability-flow ODE dx/drho = eps(x, rho), eps = (x - D(x; rho)) / rho,
with eps extrapolated by the Lagrange polynomial in log rho through the last p outputs:
    x_t = x_s + sum_k coef_k eps_{s-k},  coef_k = int_{rho_s}^{rho_t} l_k(log rho) d rho.
diffusers' VP update x_t = alpha_t (x_s / alpha_s + sum_k coef_k eps_k) is the same update
times alpha_t, and its first-order step (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) eps_s is
x_t = x_s + (rho_t - rho_s) eps_s here (DDIM).

Grids: diffusers' DEISMultistepScheduler has no final_sigmas_type='zero'; its last level is
sigma(t=0) > 0 (about 0.01 for the linear betas), where it returns x_vp. This sampler takes
any contract grid: a positive last level returns the sample there (diffusers' behaviour),
and a final step to sigma = 0 is always the first-order (DDIM) step, which lands on
x_N = D(x_{N-1}; sigma_{N-1}) (the log-rho integrals reach log 0 = -inf there, and
diffusers' VP form would evaluate 0 * inf).

Precision: diffusers evaluates its `ind_fn` antiderivatives at unshifted log rho from float32
sigmas, and at order 3 their differences cancel: its own run is off its float64 result by
up to ~2e-3 (25 steps). The same integrals are computed here in a shifted form (psi
functions of h) that keeps float32 accuracy, so this sampler matches diffusers run with
float64 sigmas to ~1e-5 rather than its float32 rounding.

Source: Zhang & Chen 2023 (DEIS), Eq. 14-15 (tAB-DEIS with log-rho interpolation);
diffusers 0.42.1 `DEISMultistepScheduler.step` (the `ind_fn` integrals, lower_order_final
for fewer than 15 steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers import common, stepping

NAME = 'deis'
ORDERS = (1, 2, 3)


def _orders(n: int, order: int, lower_order_final: bool) -> np.ndarray:
  """DEIS order of each step: warm-up min(order, i + 1); with lower_order_final and N < 15,
  order 1 at the last step and at most 2 at the one before.

  Source: diffusers `DEISMultistepScheduler.step` (lower_order_final / lower_order_second).
  """
  i = np.arange(n)
  p = np.minimum(order, i + 1)
  if lower_order_final and n < 15:
    p = np.minimum(p, np.maximum(n - i, 1))
  return p


def _psi(h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """psi_k(h) = int_0^1 e^{-h theta} theta^{k-1} / (k-1)! d theta for k = 1, 2, 3 (h > 0).

  psi_k = e^{-h} phi_k(h) with the exponential-integrator phi functions. Below h = 1 the
  Taylor series (the recursion psi_{k+1} = (psi_k - e^{-h} / k!) / h cancels in float32),
  above it the recursion.
  """
  small = h < 1.0
  hs = jnp.where(small, h, 0.0)
  hr = jnp.where(small, 1.0, h)
  series = []
  for k in (1, 2, 3):
    term, total = jnp.ones_like(h), jnp.zeros_like(h)
    for j in range(12):
      total = total + term / ((k + j) * math.factorial(k - 1))
      term = term * (-hs) / (j + 1)
    series.append(total)
  e = jnp.exp(-hr)
  p1 = -jnp.expm1(-hr) / hr
  p2 = (p1 - e) / hr
  p3 = (p2 - 0.5 * e) / hr
  return tuple(jnp.where(small, a, b) for a, b in zip(series, (p1, p2, p3)))


def _coefficients(sig: jax.Array, order: int, lower_order_final: bool) -> jax.Array:
  """coef [N, 3]: step i is x_{i+1} = x_i + coef[i] . (eps_i, eps_{i-1}, eps_{i-2}).

  With u = log(rho / rho_i), U = -h = log(rho_{i+1} / rho_i) and I_k = int_0^U u^k e^u du
  = (-h)^{k+1} k! psi_{k+1}(h), coef = rho_i int_0^U l(u) e^u du for the Lagrange basis
  l over the nodes u = 0, u_1 = log(rho_{i-1} / rho_i), u_2 = log(rho_{i-2} / rho_i).
  The same integrals as diffusers' `ind_fn` differences, which in float32 lose up to
  ~1e-3 relative accuracy at order 3 (log rho enters unshifted and the antiderivatives
  cancel); these shifted forms keep float32 accuracy.
  """
  n = sig.shape[0] - 1
  p = _orders(n, order, lower_order_final)
  j = np.arange(n)
  r0 = sig[:-1]
  final_zero = (j == n - 1) & (sig[-1] <= 0)
  # Stand-ins (masked below) keep every log finite: rho_t = 0 and levels before the grid.
  rt = jnp.where(final_zero, 0.5 * r0, sig[1:])
  h = jnp.log(r0 / rt)
  u1 = jnp.where(j >= 1, jnp.log(sig[np.maximum(j - 1, 0)] / r0), h)
  u2 = jnp.where(j >= 2, jnp.log(sig[np.maximum(j - 2, 0)] / r0), u1 + h)
  psi1, psi2, psi3 = _psi(h)
  i0 = -h * psi1 * r0  # rho_i I_0 = rho_{i+1} - rho_i
  i1 = h**2 * psi2 * r0
  i2 = -2.0 * h**3 * psi3 * r0
  zero = jnp.zeros_like(r0)
  first = (sig[1:] - r0, zero, zero)
  second = (i0 - i1 / u1, i1 / u1, zero)
  third = (
    i0 - (u1 + u2) / (u1 * u2) * i1 + i2 / (u1 * u2),
    (i2 - u2 * i1) / (u1 * (u1 - u2)),
    (i2 - u1 * i1) / (u2 * (u2 - u1)),
  )
  cols = []
  for c in range(3):
    col = jnp.where(p == 3, third[c], jnp.where(p == 2, second[c], first[c]))
    cols.append(jnp.where(final_zero, first[c], col))  # the step to sigma = 0: DDIM
  return jnp.stack(cols, -1)


def deis(
  denoise_fn: Callable,
  x: jax.Array,
  sigmas: Any,
  *,
  order: int = 2,
  lower_order_final: bool = True,
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
  init_state: Any = None,
) -> jax.Array:
  """Multistep DEIS-p with log-rho Lagrange extrapolation of eps (algorithm 'deis', 'logrho').

  Matches diffusers `DEISMultistepScheduler(solver_order=order,
  lower_order_final=lower_order_final)` on its grid (discrete sigmas ending at sigma(t=0),
  see the module docstring). Deterministic: rng and noise_fn are ignored. NFE = N.

  Source: Zhang & Chen 2023 (DEIS), Eq. 14-15; diffusers 0.42.1 scheduling_deis_multistep.
  """
  del rng, noise_fn
  stepping.check_choice(NAME, 'order', order, ORDERS)
  stepping.check_choice(NAME, 'lower_order_final', lower_order_final, (True, False))
  fn, state, x, sig = stepping.prepare(denoise_fn, x, sigmas, init_state, NAME)
  coef = _coefficients(sig, order, bool(lower_order_final))
  k = order - 1  # history eps_{i-1} .. eps_{i-k}

  def body(carry, xs):
    x, hist, state = carry
    sigma, c = xs
    m, state = fn(x, sigma, state)
    eps = (x - m) / sigma
    x_next = x + c[0] * eps + sum(c[j + 1] * hist[j] for j in range(k))
    if k:
      hist = jnp.concatenate([eps[None], hist[:-1]], 0)
    return (x_next, hist, state), None

  hist = jnp.zeros((max(k, 1), *x.shape), x.dtype)
  (x, _, _), _ = jax.lax.scan(body, (x, hist, state), (sig[:-1], coef))
  return x


def deis_nfe(num_steps: int, **_: Any) -> int:
  """One denoiser call per step."""
  return common.check_steps(num_steps, 'num_steps')


FAST_SAMPLERS: dict[str, stepping.FastSampler] = {
  'deis': stepping.FastSampler(
    fn=deis,
    nfe=deis_nfe,
    stochastic=False,
    options=('order', 'lower_order_final'),
  ),
}

__all__ = ['FAST_SAMPLERS', 'deis', 'deis_nfe']
