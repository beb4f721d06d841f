"""UniPC: the unified predictor-corrector multistep solver (data prediction, B(h) variants).

Works in the EDM (VE) form x = x_vp / alpha, sigma = sigma_vp / alpha, with the half-logSNR
lambda = -log sigma. diffusers steps x_vp with
    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) m_s - alpha_t B(h) sum_k rho_k D1_k
(`multistep_uni_p_bh_update` / `multistep_uni_c_bh_update`, predict_x0=True); dividing by
alpha_t, with sigma_t / sigma_s = (sigma_t / alpha_t) / (sigma_s / alpha_s) * alpha_t / alpha_s,
gives the same update with every alpha gone:
    x_t = (sigma_t / sigma_s) x_s - (e^{-h} - 1) m_s - B(h) sum_k rho_k D1_k,
where h = lambda_t - lambda_s and D1_k = (m_{s-k} - m_s) / r_k, r_k = (lambda_{s-k} - lambda_s) / h.
The predictor UniP-p uses p model outputs; the corrector UniC-p refines x_t with the model
output at x_t itself (computed for the next step, so it costs no extra evaluation: NFE = N).

The final step to sigma = 0 (lambda = inf) is the first-order step, which lands on
x_N = D(x_{N-1}; sigma_{N-1}). diffusers gets the same value there for bh2; for bh1 its
B(h) = -h is -inf and -inf * 0 makes NaN, and with lower_order_final=False its order-p step
divides by r_k = 0 (inf). Here the step to 0 is always the first-order one, finite.

Source: Zhao et al. 2023 (UniPC), Algorithms 2 and 3 (B(h) = h for bh1, e^h - 1 for bh2);
diffusers 0.42.1 `UniPCMultistepScheduler.step`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers import common, stepping

NAME = 'unipc'
ORDERS = (1, 2, 3)
VARIANTS = ('bh2', 'bh1')


def _orders(n: int, order: int, lower_order_final: bool) -> np.ndarray:
  """UniP order of each step i: min(order, i + 1, N - i) (the last term with lower_order_final).

  Source: diffusers `UniPCMultistepScheduler.step` (this_order, the lower_order_nums warm-up).
  """
  i = np.arange(n)
  p = np.minimum(order, i + 1)
  if lower_order_final:
    p = np.minimum(p, n - i)
  return p


def _coefficients(
  sig: jax.Array, order: int, variant: str, lower_order_final: bool
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Per-step weights: (pred_a [N], pred_w [N, 3], corr_a [N], corr_w [N, 4]).

  Step i predicts x_{i+1} = pred_a[i] x_i^c + pred_w[i] . (m_i, m_{i-1}, m_{i-2}) and
  corrects x_i^c = corr_a[i] x_{i-1}^c + corr_w[i] . (m_i, m_{i-1}, m_{i-2}, m_{i-3})
  (step 0: no correction). The rho_k come from diffusers' linear systems R rho = b with
  b_k = k! phi~_k(hh) / B(h), phi~ by its recursion, in the sampler's float32.
  """
  n = sig.shape[0] - 1
  p = _orders(n, order, lower_order_final)  # predictor orders, static
  q = np.concatenate([[0], p[:-1]])  # corrector order at step i = predictor order of i - 1
  final_zero = sig[-1] <= 0
  lam = stepping.safe_lam(sig)
  lam = lam.at[-1].set(jnp.where(final_zero, lam[-2] + 1.0, lam[-1]))
  j = np.arange(n)
  lam_s = lam[:-1]
  h = lam[1:] - lam_s
  # lambda of the two previous levels; stand-ins (masked below) before the grid starts.
  lam_1 = jnp.where(j >= 1, lam[np.maximum(j - 1, 0)], lam_s - h)
  lam_2 = jnp.where(j >= 2, lam[np.maximum(j - 2, 0)], lam_1 - h)
  r1 = (lam_1 - lam_s) / h
  r2 = (lam_2 - lam_s) / h
  hh = -h
  h_phi_1 = jnp.expm1(hh)
  b_h = hh if variant == 'bh1' else h_phi_1
  phi = h_phi_1 / hh - 1.0
  b = []
  factorial = 1.0
  for k in range(1, 4):
    b.append(phi * factorial / b_h)
    factorial *= k + 1
    phi = phi / hh - 1.0 / factorial
  b1, b2, b3 = b
  a = sig[1:] / sig[:-1]  # sigma_{j+1} / sigma_j (0 for the step to sigma = 0)
  zero = jnp.zeros_like(h)
  base = -h_phi_1

  # Predictor UniP-p: p = 2 uses rho = 1/2; p = 3 solves [[1, 1], [r1, r2]] rho = (b1, b2).
  w_p = {1: (base, zero, zero)}
  half = 0.5 * b_h / r1
  w_p[2] = (base + half, -half, zero)
  rho = jnp.linalg.solve(
    jnp.stack([jnp.stack([jnp.ones_like(r1), jnp.ones_like(r1)], -1), jnp.stack([r1, r2], -1)], -2),
    jnp.stack([b1, b2], -1)[..., None],
  )[..., 0]
  c1, c2 = b_h * rho[:, 0] / r1, b_h * rho[:, 1] / r2
  w_p[3] = (base + c1 + c2, -c1, -c2)
  pred_w = jnp.stack([_select(p, [w_p[o][c] for o in ORDERS]) for c in range(3)], -1)
  # The step to sigma = 0 is the first-order one: x_N = m_{N-1}.
  pred_w = pred_w.at[-1].set(jnp.where(final_zero, jnp.array([1.0, 0.0, 0.0]), pred_w[-1]))

  # Corrector UniC-q over interval j (applied at step j + 1); weights on (m_t, m_j, m_j-1, m_j-2).
  ones = jnp.ones_like(r1)
  w_c = {1: (-0.5 * b_h, base + 0.5 * b_h, zero, zero)}
  rc = jnp.linalg.solve(
    jnp.stack([jnp.stack([ones, ones], -1), jnp.stack([r1, ones], -1)], -2),
    jnp.stack([b1, b2], -1)[..., None],
  )[..., 0]
  t, c1 = b_h * rc[:, 1], b_h * rc[:, 0] / r1
  w_c[2] = (-t, base + t + c1, -c1, zero)
  rc = jnp.linalg.solve(
    jnp.stack(
      [
        jnp.stack([ones, ones, ones], -1),
        jnp.stack([r1, r2, ones], -1),
        jnp.stack([r1**2, r2**2, ones], -1),
      ],
      -2,
    ),
    jnp.stack([b1, b2, b3], -1)[..., None],
  )[..., 0]
  t, c1, c2 = b_h * rc[:, 2], b_h * rc[:, 0] / r1, b_h * rc[:, 1] / r2
  w_c[3] = (-t, base + t + c1 + c2, -c1, -c2)
  qs = np.maximum(q[1:], 1)  # interval j = i - 1 for steps i = 1 .. N - 1
  corr = [_select(qs, [w_c[o][c][:-1] for o in ORDERS]) for c in range(4)]
  corr_w = jnp.concatenate([jnp.zeros((1, 4)), jnp.stack(corr, -1)], 0)
  corr_a = jnp.concatenate([jnp.ones((1,)), a[:-1]])
  return a, pred_w, corr_a, corr_w


def _select(orders: np.ndarray, values: list[jax.Array]) -> jax.Array:
  """values[orders[j] - 1][j] for each j (orders static)."""
  out = values[0]
  for o in ORDERS[1:]:
    out = jnp.where(orders == o, values[o - 1], out)
  return out


def unipc(
  denoise_fn: Callable,
  x: jax.Array,
  sigmas: Any,
  *,
  order: int = 2,
  variant: str = 'bh2',
  lower_order_final: bool = True,
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
  init_state: Any = None,
) -> jax.Array:
  """UniPC-p (UniP-p predictor + UniC corrector after every step but the last), data prediction.

  Matches diffusers `UniPCMultistepScheduler(solver_order=order, solver_type=variant,
  lower_order_final=lower_order_final, predict_x0=True, disable_corrector=[])` on the same
  grid (e.g. `schedules.discrete_sigmas`, its final_sigmas_type='zero'; a positive last
  level is its 'sigma_min'). Deterministic: rng and noise_fn are ignored. NFE = N.

  Source: Zhao et al. 2023 (UniPC), Algorithms 2-3; diffusers 0.42.1 scheduling_unipc_multistep.
  """
  del rng, noise_fn
  stepping.check_choice(NAME, 'order', order, ORDERS)
  stepping.check_choice(NAME, 'variant', variant, VARIANTS)
  stepping.check_choice(NAME, 'lower_order_final', lower_order_final, (True, False))
  fn, state, x, sig = stepping.prepare(denoise_fn, x, sigmas, init_state, NAME)
  pred_a, pred_w, corr_a, corr_w = _coefficients(sig, order, variant, bool(lower_order_final))
  k = order  # history m_{i-1} .. m_{i-k}

  def body(carry, xs):
    x, x_c, hist, state = carry
    sigma, pa, pw, ca, cw = xs
    m, state = fn(x, sigma, state)
    ms = [m] + [hist[j] for j in range(k)]
    x_c = ca * x_c + sum(cw[j] * ms[j] for j in range(min(k + 1, 4)))
    x_next = pa * x_c + sum(pw[j] * ms[j] for j in range(min(k, 3)))
    hist = jnp.concatenate([m[None], hist[:-1]], 0)
    return (x_next, x_c, hist, state), None

  hist = jnp.zeros((k, *x.shape), x.dtype)
  xs = (sig[:-1], pred_a, pred_w, corr_a, corr_w)
  (x, _, _, _), _ = jax.lax.scan(body, (x, x, hist, state), xs)
  return x


def unipc_nfe(num_steps: int, **_: Any) -> int:
  """One denoiser call per step: the corrector reuses the next step's model output."""
  return common.check_steps(num_steps, 'num_steps')


FAST_SAMPLERS: dict[str, stepping.FastSampler] = {
  'unipc': stepping.FastSampler(
    fn=unipc,
    nfe=unipc_nfe,
    stochastic=False,
    options=('order', 'variant', 'lower_order_final'),
  ),
}

__all__ = ['FAST_SAMPLERS', 'unipc', 'unipc_nfe']
