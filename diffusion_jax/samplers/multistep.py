"""Multistep samplers: k-diffusion's LMS and DPM-Solver++ (2M, 3M, 2M SDE, 3M SDE).

A multistep sampler spends one denoiser call per step (NFE = N) and reuses the model
outputs of the previous steps, kept in a fixed-size history buffer in the scan carry.

DPM-Solver++ works in the EDM (VE) form with lambda = -log sigma and h = lambda_{i+1} -
lambda_i. Every variant here is one linear update per step,
    x_{i+1} = a_i x_i + w_i0 m_i + w_i1 m_{i-1} + w_i2 m_{i-2} + g_i s_noise z_i,
with m_j = D(x_j; sigma_j), whose weights are computed once from the grid (traced sigmas
and eta work) before the scan. With h_eta = (1 + eta) h and b = 1 - e^{-h_eta}:
    first order:  a = (sigma_{i+1} / sigma_i) e^{-eta h},  w = (b, 0, 0);
    second order: + k2 (m_i - m_{i-1}) / r,  r = h_{i-1} / h, with k2 = b / 2 ('midpoint')
                  or phi_2 = 1 - b / h_eta ('heun', also the 3M samplers' warm-up step);
    third order:  + phi_2 D1 - phi_3 D2 (phi_3 = phi_2 / h_eta - 1/2, D1 / D2 from the
                  divided differences with r0 = h_{i-1} / h, r1 = h_{i-2} / h);
    noise:        g = sigma_{i+1} sqrt(1 - e^{-2 eta h})  (the SDE samplers only).
The step to sigma = 0 is the first-order one, x_{i+1} = m_i, in every variant.
diffusers' update in VP space, x_vp = alpha x, divided by alpha_{i+1} is the same update
with every alpha gone (its sigma_t / sigma_s (alpha_s / alpha_t) = sigma_{i+1} / sigma_i in
EDM sigmas and its lambda_t - lambda_s is the EDM h), so both libraries are stepped here.

Where k-diffusion and diffusers (DPMSolverMultistepScheduler, algorithm_type='dpmsolver++',
lower_order_final=True, final_sigmas_type='zero', euler_at_final=False) differ:
- 2M: nowhere on a grid that ends at 0. k-diffusion's (1 + 1/(2r)) m_i - 1/(2r) m_{i-1}
  is diffusers' solver_type='midpoint' term -(e^{-h} - 1)/2 D1; both take a first-order
  first step and a first-order step to 0 (diffusers' final_sigmas_type='zero' forces it,
  whatever lower_order_final says). On a grid ending at sigma > 0 diffusers (as with
  'sigma_min') takes a first-order last step when lower_order_final and N < 15;
  k-diffusion stays second order.
- 3M: k-diffusion has no ODE 3M; 'k_diffusion' style here is sample_dpmpp_3m_sde at eta = 0
  (the third-order update is then term for term diffusers'). They differ in (1) the
  second-order warm-up step i = 1: k-diffusion's phi_2 = 1 + (e^{-h} - 1)/h weight
  (diffusers' 'heun') vs diffusers' 'midpoint' (1 - e^{-h})/2; (2) the final steps: with
  lower_order_final and N < 15 diffusers takes step N - 2 at second order (midpoint),
  and the last step first order also for a grid ending at sigma > 0; k-diffusion keeps
  third order up to the step to 0.
- Both libraries' third-order update is, globally, second order: D2 = (D1_0 - D1_1) /
  (r0 + r1) is h^2 x''/2 (x'' = d^2 D / d lambda^2), and it enters as -phi_3 D2 where the
  exponential integrator's Taylor term is -phi_3 h^2 x'' (= h^3 x'' / 6), so its local
  error is O(h^3). Kept as the references have it (tests/test_samplers_multistep.py
  measures 2M and 3M at order ~2, and the Taylor-consistent 2 D2 at ~3). Its error
  constant is still below 2M's; its larger extrapolation weights also amplify float32
  denoiser error more (~1e-5 vs ~1e-6 in the parity table).

Sources: Lu et al. 2022, DPM-Solver++ (arXiv 2211.01095), Algorithm 2 and Eq. 9
(multistep 2M), Appendix B (3M); k-diffusion `sample_lms`, `sample_dpmpp_2m`,
`sample_dpmpp_2m_sde`, `sample_dpmpp_3m_sde`; diffusers 0.42.1
`DPMSolverMultistepScheduler.step` / `multistep_dpm_solver_{second,third}_order_update`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers import common, stepping

STYLES = ('k_diffusion', 'diffusers')
SOLVER_TYPES = ('midpoint', 'heun')
# diffusers' lower_order_final applies only to grids of fewer than this many steps.
LOWER_ORDER_FINAL_STEPS = 15


# ---------------------------------------------------------------------------
# LMS.


def _lms_coefficients(sig: jax.Array, order: int) -> jax.Array:
  """[N, order]: c[i, j] = integral over [sigma_i, sigma_{i+1}] of Lagrange basis l_j.

  l_j is the basis polynomial of the nodes sigma_i, sigma_{i-1}, .., sigma_{i-p+1}
  (p = min(order, i + 1)) that is 1 at sigma_{i-j}; Gauss-Legendre with ceil(p / 2)
  points integrates its degree p - 1 exactly (k-diffusion integrates it with scipy quad).

  Source: k-diffusion `linear_multistep_coeff`.
  """
  n = sig.shape[0] - 1
  coeff = jnp.zeros((n, order), sig.dtype)
  for p in range(1, order + 1):
    rows = np.arange(p - 1, n) if p == order else np.arange(p - 1, min(p, n))
    if rows.size == 0:
      continue
    u, wq = np.polynomial.legendre.leggauss(max((p + 1) // 2, 1))
    nodes = jnp.stack([sig[rows - k] for k in range(p)], -1)  # [R, p]
    lo, hi = sig[rows], sig[rows + 1]
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    tau = mid[:, None] + half[:, None] * jnp.asarray(u, sig.dtype)  # [R, Q]
    cols = []
    for j in range(p):
      basis = jnp.ones_like(tau)
      for k in range(p):
        if k != j:
          basis = basis * (tau - nodes[:, k : k + 1]) / (nodes[:, j : j + 1] - nodes[:, k : k + 1])
      cols.append(half * (basis @ jnp.asarray(wq, sig.dtype)))
    coeff = coeff.at[rows, :p].set(jnp.stack(cols, -1))
  return coeff


def lms(
  denoise_fn: Callable,
  x: jax.Array,
  sigmas: Any,
  *,
  order: int = 4,
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
  init_state: Any = None,
) -> jax.Array:
  """Linear multistep (Adams-Bashforth in sigma) on dx/dsigma = (x - D(x; sigma)) / sigma.

  x_{i+1} = x_i + sum_j c_ij d_{i-j} over the last p = min(order, i + 1) derivatives,
  c_ij the integral of the Lagrange basis polynomial of sigma_{i-j} over [sigma_i,
  sigma_{i+1}] (exact here, in the sampler's float32; k-diffusion uses quad, epsrel 1e-4).
  Deterministic: rng and noise_fn are ignored. NFE = N.

  Source: k-diffusion `sample_lms` / `linear_multistep_coeff`.
  """
  del rng, noise_fn
  name = 'lms'
  if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
    raise ValueError(f'{name}: order={order!r} must be an int >= 1.')
  fn, state, x, sig = stepping.prepare(denoise_fn, x, sigmas, init_state, name)
  coeff = _lms_coefficients(sig, int(order))

  def body(carry, xs):
    x, hist, state = carry
    sigma, c = xs
    m, state = fn(x, sigma, state)
    hist = jnp.concatenate([stepping.to_d(x, sigma, m)[None], hist[:-1]], 0)
    x = x + sum(c[j].astype(x.dtype) * hist[j] for j in range(order))
    return (x, hist, state), None

  hist = jnp.zeros((order, *x.shape), x.dtype)
  (x, _, _), _ = jax.lax.scan(body, (x, hist, state), (sig[:-1], coeff))
  return x


# ---------------------------------------------------------------------------
# DPM-Solver++ multistep.


def _orders(n: int, order: int, style: str, lower_order_final: bool) -> np.ndarray:
  """Static order of each step: min(order, i + 1), and diffusers' lower-order final steps.

  diffusers with lower_order_final and N < 15: the last step first order, step N - 2 at
  most second. (The first-order step to sigma = 0 of both styles is applied on the grid,
  in `_dpmpp_weights`, since a traced grid's last level is not known here.)

  Source: diffusers `DPMSolverMultistepScheduler.step` (lower_order_nums, lower_order_final,
  lower_order_second); k-diffusion `sample_dpmpp_2m` / `sample_dpmpp_3m_sde`.
  """
  p = np.minimum(order, np.arange(n) + 1)
  if style == 'diffusers' and lower_order_final and n < LOWER_ORDER_FINAL_STEPS:
    p[-1] = 1
    if n >= 2:
      p[-2] = min(p[-2], 2)
  return p


def _dpmpp_weights(
  sig: jax.Array, orders: np.ndarray, eta: Any, second: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-step (a [N], w [N, 3], g [N]) of the module docstring's update.

  `orders` is static; `second` is the second-order weight ('midpoint': (1 - e^{-h_eta}) / 2,
  'heun': phi_2). Rows whose sigma_{i+1} = 0 are the first-order step to 0: (0, (1, 0, 0), 0).

  Source: k-diffusion `sample_dpmpp_2m_sde` / `sample_dpmpp_3m_sde` (eta = 0: `sample_dpmpp_2m`);
  diffusers `multistep_dpm_solver_second_order_update` / `_third_order_update` (dpmsolver++).
  """
  n = sig.shape[0] - 1
  final_zero = sig[-1] <= 0
  lam = stepping.safe_lam(sig)
  lam = lam.at[-1].set(jnp.where(final_zero, lam[-2] + 1.0, lam[-1]))  # stand-in, masked
  h = lam[1:] - lam[:-1]
  j = np.arange(n)
  r0 = h[np.maximum(j - 1, 0)] / h  # h_{i-1} / h (stand-ins where unused)
  r1 = h[np.maximum(j - 2, 0)] / h
  eta = jnp.asarray(eta, sig.dtype)
  h_eta = (1.0 + eta) * h
  b = -jnp.expm1(-h_eta)
  a = sig[1:] / sig[:-1] * jnp.exp(-eta * h)
  g = sig[1:] * jnp.sqrt(jnp.maximum(-jnp.expm1(-2.0 * eta * h), 0.0))
  phi_2 = 1.0 - b / h_eta
  phi_3 = phi_2 / h_eta - 0.5
  zero = jnp.zeros_like(h)

  k2 = 0.5 * b if second == 'midpoint' else phi_2
  w2 = (b + k2 / r0, -k2 / r0, zero)
  s = r0 + r1
  c0 = phi_2 * (1.0 + r0 / s) - phi_3 / s  # weight of (m_i - m_{i-1}) / r0
  c1 = (phi_3 - phi_2 * r0) / s  # weight of (m_{i-1} - m_{i-2}) / r1
  w3 = (b + c0 / r0, -c0 / r0 + c1 / r1, -c1 / r1)
  w = [
    jnp.where(orders == 3, w3[c], jnp.where(orders == 2, w2[c], (b, zero, zero)[c]))
    for c in range(3)
  ]
  w = jnp.stack(w, -1)
  to_zero = sig[1:] <= 0
  a = jnp.where(to_zero, 0.0, a)
  w = jnp.where(to_zero[:, None], jnp.array([1.0, 0.0, 0.0], sig.dtype), w)
  g = jnp.where(to_zero, 0.0, g)
  return a, w, g


def _multistep(
  name: str,
  denoise_fn: Callable,
  x: jax.Array,
  sigmas: Any,
  init_state: Any,
  *,
  order: int,
  orders_fn: Callable[[int], np.ndarray],
  second: str,
  eta: Any = 0.0,
  s_noise: Any = 1.0,
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
) -> jax.Array:
  """Runs the linear multistep update (module docstring) in one scan; noise only if eta != 0."""
  stepping.check_options(name, eta=eta, s_noise=s_noise)
  eta_static = common.concrete_or_none(eta)
  noisy = eta_static is None or float(eta_static) != 0.0
  if noisy:
    stepping.check_rng(rng, noise_fn, name)
  fn, state, x, sig = stepping.prepare(denoise_fn, x, sigmas, init_state, name)
  n = sig.shape[0] - 1
  a, w, g = _dpmpp_weights(sig, orders_fn(n), eta, second)
  g = g * jnp.asarray(s_noise, sig.dtype)
  k = max(order - 1, 1)  # history m_{i-1} .. m_{i-k}

  def body(carry, xs):
    x, hist, state = carry
    i, sigma, sigma_next, a_i, w_i, g_i = xs
    m, state = fn(x, sigma, state)
    w_i = w_i.astype(x.dtype)
    x_next = a_i.astype(x.dtype) * x + w_i[0] * m
    for c in range(1, min(order, 3)):
      x_next = x_next + w_i[c] * hist[c - 1]
    if noisy:
      z = stepping.unit_noise(rng, noise_fn, i, sigma, sigma_next, x)
      x_next = x_next + g_i.astype(x.dtype) * z
    hist = jnp.concatenate([m[None], hist[:-1]], 0)
    return (x_next, hist, state), None

  hist = jnp.zeros((k, *x.shape), x.dtype)
  xs = (jnp.arange(n, dtype=jnp.int32), sig[:-1], sig[1:], a, w, g)
  (x, _, _), _ = jax.lax.scan(body, (x, hist, state), xs)
  return x


def _ode(
  name, order, second, denoise_fn, x, sigmas, multistep_style, lower_order_final, init_state
):
  """The deterministic DPM-Solver++ multistep samplers (2M, 3M) after their option checks."""
  stepping.check_choice(name, 'multistep_style', multistep_style, STYLES)
  stepping.check_choice(name, 'lower_order_final', lower_order_final, (True, False))
  return _multistep(
    name,
    denoise_fn,
    x,
    sigmas,
    init_state,
    order=order,
    orders_fn=lambda n: _orders(n, order, multistep_style, bool(lower_order_final)),
    second=second,
  )


def _sde(name, order, second, denoise_fn, x, sigmas, eta, s_noise, rng, noise_fn, init_state):
  """The DPM-Solver++ multistep SDE samplers (2M SDE, 3M SDE): k-diffusion's step orders."""
  return _multistep(
    name,
    denoise_fn,
    x,
    sigmas,
    init_state,
    order=order,
    orders_fn=lambda n: _orders(n, order, 'k_diffusion', False),
    second=second,
    eta=eta,
    s_noise=s_noise,
    rng=rng,
    noise_fn=noise_fn,
  )


def dpmpp_2m(
  denoise_fn: Callable,
  x: jax.Array,
  sigmas: Any,
  *,
  multistep_style: str = 'k_diffusion',
  lower_order_final: bool = True,
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
  init_state: Any = None,
) -> jax.Array:
  """DPM-Solver++(2M): second-order multistep, first order on the first step and the step to 0.

  'k_diffusion' is k-diffusion `sample_dpmpp_2m`; 'diffusers' is DPMSolverMultistepScheduler
  (dpmsolver++, solver_order=2, solver_type='midpoint', lower_order_final, final_sigmas_type
  'zero' for a grid ending at 0, else 'sigma_min'). On a grid ending at 0 the two are the
  same update (module docstring); they differ only on a grid ending at sigma > 0 with
  N < 15, where diffusers' lower_order_final makes the last step first order.
  Deterministic: rng and noise_fn are ignored. NFE = N.

  Source: Lu et al. 2022 (DPM-Solver++), Algorithm 2; k-diffusion `sample_dpmpp_2m`.
  """
  del rng, noise_fn
  return _ode(
    'dpmpp_2m', 2, 'midpoint', denoise_fn, x, sigmas, multistep_style, lower_order_final, init_state
  )


def dpmpp_3m(
  denoise_fn: Callable,
  x: jax.Array,
  sigmas: Any,
  *,
  multistep_style: str = 'k_diffusion',
  lower_order_final: bool = True,
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
  init_state: Any = None,
) -> jax.Array:
  """DPM-Solver++(3M), deterministic: third order after a first- and a second-order step.

  'k_diffusion': k-diffusion `sample_dpmpp_3m_sde` at eta = 0 (warm-up step 1 with the
  phi_2 weight, third order up to the first-order step to 0). 'diffusers':
  DPMSolverMultistepScheduler(dpmsolver++, solver_order=3, solver_type='midpoint',
  lower_order_final): warm-up step 1 with the midpoint weight; with lower_order_final and
  N < 15, step N - 2 second order and step N - 1 first order. Both references' third-order
  update halves the D2 Taylor term (module docstring), so it converges at order ~2 with a
  smaller constant than 2M. Deterministic: rng and noise_fn are ignored. NFE = N.

  Source: Lu et al. 2022 (DPM-Solver++), Appendix B; diffusers
  `multistep_dpm_solver_third_order_update`.
  """
  del rng, noise_fn
  second = 'heun' if multistep_style == 'k_diffusion' else 'midpoint'
  return _ode(
    'dpmpp_3m', 3, second, denoise_fn, x, sigmas, multistep_style, lower_order_final, init_state
  )


def dpmpp_2m_sde(
  denoise_fn: Callable,
  x: jax.Array,
  sigmas: Any,
  *,
  eta: Any = 1.0,
  s_noise: Any = 1.0,
  solver_type: str = 'midpoint',
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
  init_state: Any = None,
) -> jax.Array:
  """DPM-Solver++(2M) SDE: the 2M update on h_eta = (1 + eta) h plus fresh noise each step.

  x_{i+1} = (sigma_{i+1} / sigma_i) e^{-eta h} x_i + (1 - e^{-h_eta}) m_i + k2 (m_i -
  m_{i-1}) / r + sigma_{i+1} sqrt(1 - e^{-2 eta h}) s_noise z_i, k2 from solver_type; the
  step to 0 is x = m. One draw per step (none for eta = 0); noise_fn(i, sigma_i,
  sigma_{i+1}) replays k-diffusion's noise_sampler(sigma_i, sigma_{i+1}). NFE = N.

  Source: k-diffusion `sample_dpmpp_2m_sde`; Lu et al. 2022 (DPM-Solver++), Eq. 18.
  """
  name = 'dpmpp_2m_sde'
  stepping.check_choice(name, 'solver_type', solver_type, SOLVER_TYPES)
  return _sde(name, 2, solver_type, denoise_fn, x, sigmas, eta, s_noise, rng, noise_fn, init_state)


def dpmpp_3m_sde(
  denoise_fn: Callable,
  x: jax.Array,
  sigmas: Any,
  *,
  eta: Any = 1.0,
  s_noise: Any = 1.0,
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
  init_state: Any = None,
) -> jax.Array:
  """DPM-Solver++(3M) SDE: the third-order update on h_eta = (1 + eta) h plus fresh noise.

  First order on step 0, phi_2 second order on step 1, then third order; the step to 0 is
  x = m. One draw per step (none for eta = 0), as `dpmpp_2m_sde`. NFE = N.

  Source: k-diffusion `sample_dpmpp_3m_sde`.
  """
  return _sde(
    'dpmpp_3m_sde', 3, 'heun', denoise_fn, x, sigmas, eta, s_noise, rng, noise_fn, init_state
  )


def multistep_nfe(num_steps: int, **_: Any) -> int:
  """One denoiser call per step for every multistep sampler: NFE = N."""
  return common.check_steps(num_steps, 'num_steps')


FAST_SAMPLERS: dict[str, stepping.FastSampler] = {
  'lms': stepping.FastSampler(fn=lms, nfe=multistep_nfe, stochastic=False, options=('order',)),
  'dpmpp_2m': stepping.FastSampler(
    fn=dpmpp_2m,
    nfe=multistep_nfe,
    stochastic=False,
    options=('multistep_style', 'lower_order_final'),
  ),
  'dpmpp_3m': stepping.FastSampler(
    fn=dpmpp_3m,
    nfe=multistep_nfe,
    stochastic=False,
    options=('multistep_style', 'lower_order_final'),
  ),
  'dpmpp_2m_sde': stepping.FastSampler(
    fn=dpmpp_2m_sde,
    nfe=multistep_nfe,
    stochastic=True,
    options=('eta', 's_noise', 'solver_type'),
  ),
  'dpmpp_3m_sde': stepping.FastSampler(
    fn=dpmpp_3m_sde, nfe=multistep_nfe, stochastic=True, options=('eta', 's_noise')
  ),
}

__all__ = [
  'FAST_SAMPLERS',
  'STYLES',
  'dpmpp_2m',
  'dpmpp_2m_sde',
  'dpmpp_3m',
  'dpmpp_3m_sde',
  'lms',
  'multistep_nfe',
]
