"""DPM-Solver (Lu et al. 2022) as k-diffusion's DPMSolver: the fast fixed-step and adaptive solvers.

Both work in the noise-prediction (eps) form of the VE ODE in time t = -log sigma, with
eps(x, t) = (x - D(x; sigma(t))) / sigma(t), sigma(t) = e^{-t}, h = t_next - t, and the
single-step updates (DPM-Solver Algorithms 1-2 / Eq. 3.7-3.8 in k-diffusion's form):
  1: x - sigma(t_next) (e^h - 1) eps
  2: u1 = x - sigma(s1) (e^{r1 h} - 1) eps, s1 = t + r1 h;
     x - sigma(t_next) (e^h - 1) eps - sigma(t_next) / (2 r1) (e^h - 1) (eps(u1, s1) - eps)
  3: r1 = 1/3, r2 = 2/3: u1 as above, u2 = x - sigma(s2) (e^{r2 h} - 1) eps -
     sigma(s2) (r2 / r1) ((e^{r2 h} - 1) / (r2 h) - 1) (eps_r1 - eps);
     x - sigma(t_next) (e^h - 1) eps - sigma(t_next) / r2 ((e^h - 1) / h - 1) (eps_r2 - eps).
They take keywords sigma_min, sigma_max (and n for dpm_fast) in place of a grid: the
solvers choose their own times between t(sigma_max) and t(sigma_min); x is the start
scaled by sigma_max. With eta > 0 a step from t to t_next stops at t_next' = min(t_end,
t(sigma_down)) and adds sqrt(sigma(t_next)^2 - sigma(t_next')^2) s_noise z.

Sources: Lu et al. 2022 (DPM-Solver, arXiv 2206.00927), Algorithms 1-2 and Section 3.3
(DPM-Solver-fast), Algorithm 5 / Appendix C (adaptive step size, DPM-Solver-12 / 23);
k-diffusion `DPMSolver.dpm_solver_fast` / `dpm_solver_adaptive`, `PIDStepSizeController`,
`sample_dpm_fast`, `sample_dpm_adaptive`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers import common, stepping

# The solver stops once t is within this of t_end (k-diffusion's loop condition).
T_TOL = 1e-5
# The PID controller's eps in 1 / (error + eps).
PID_EPS = 1e-8


def _sigma(t: jax.Array) -> jax.Array:
  return jnp.exp(-t)


def _check_range(name: str, sigma_min: Any, sigma_max: Any) -> None:
  lo, hi = common.concrete_or_none(sigma_min), common.concrete_or_none(sigma_max)
  for key, v in (('sigma_min', lo), ('sigma_max', hi)):
    if v is not None and (v.shape != () or not np.isfinite(v) or v <= 0):
      raise ValueError(f'{name}: {key}={float(v) if v.shape == () else v!r} must be > 0.')
  if lo is not None and hi is not None and not lo < hi:
    raise ValueError(f'{name}: sigma_min={float(lo)} must be below sigma_max={float(hi)}.')


def _setup(name, denoise_fn, x, sigma_min, sigma_max, init_state, eta, s_noise, rng, noise_fn):
  """Checks; returns (eps(x, t, state) -> (eps, state), state, x, t_start, t_end, noisy)."""
  _check_range(name, sigma_min, sigma_max)
  stepping.check_options(name, eta=eta, s_noise=s_noise)
  eta_static = common.concrete_or_none(eta)
  noisy = eta_static is None or float(eta_static) != 0.0
  if noisy:
    stepping.check_rng(rng, noise_fn, name)
  grid = jnp.stack([jnp.asarray(sigma_max, jnp.float32), jnp.asarray(sigma_min, jnp.float32)])
  fn, state, x, sig = stepping.prepare(denoise_fn, x, grid, init_state, name)

  def eps_fn(x, t, state):
    sigma = _sigma(t)
    denoised, state = fn(x, sigma, state)
    return ((x - denoised) / sigma).astype(x.dtype), state

  return eps_fn, state, x, stepping.lam(sig[0]), stepping.lam(sig[1]), noisy


def _step_1(x, t, t_next, eps):
  """DPM-Solver-1 (DDIM): x - sigma(t_next) (e^h - 1) eps."""
  return x - (_sigma(t_next) * jnp.expm1(t_next - t)).astype(x.dtype) * eps


def _step_2(eps_fn, x, t, t_next, eps, state, r1):
  """DPM-Solver-2 with intermediate time s1 = t + r1 h; returns (x, eps(u1, s1), state)."""
  h = t_next - t
  s1 = t + r1 * h
  u1 = x - (_sigma(s1) * jnp.expm1(r1 * h)).astype(x.dtype) * eps
  eps_r1, state = eps_fn(u1, s1, state)
  c = _sigma(t_next) * jnp.expm1(h)
  x_2 = x - c.astype(x.dtype) * eps - (c / (2.0 * r1)).astype(x.dtype) * (eps_r1 - eps)
  return x_2, eps_r1, state


def _step_3(eps_fn, x, t, t_next, eps, state, eps_r1=None):
  """DPM-Solver-3 (r1 = 1/3, r2 = 2/3); reuses eps_r1 when given (the adaptive solver's cache)."""
  r1, r2 = 1.0 / 3.0, 2.0 / 3.0
  h = t_next - t
  s1, s2 = t + r1 * h, t + r2 * h
  if eps_r1 is None:
    u1 = x - (_sigma(s1) * jnp.expm1(r1 * h)).astype(x.dtype) * eps
    eps_r1, state = eps_fn(u1, s1, state)
  e2 = jnp.expm1(r2 * h)
  u2 = (
    x
    - (_sigma(s2) * e2).astype(x.dtype) * eps
    - (_sigma(s2) * (r2 / r1) * (e2 / (r2 * h) - 1.0)).astype(x.dtype) * (eps_r1 - eps)
  )
  eps_r2, state = eps_fn(u2, s2, state)
  e = jnp.expm1(h)
  x_3 = (
    x
    - (_sigma(t_next) * e).astype(x.dtype) * eps
    - (_sigma(t_next) / r2 * (e / h - 1.0)).astype(x.dtype) * (eps_r2 - eps)
  )
  return x_3, state


def _ancestral_target(t, t_next, t_end, eta, noisy):
  """(t_next', su): the eta-step's stopping time min(t_end, t(sigma_down)) and its noise scale."""
  if not noisy:
    return t_next, jnp.zeros_like(t)
  sigma_next = _sigma(t_next)
  sd, su = stepping.ancestral_step(_sigma(t), sigma_next, eta)
  t_down = jnp.where((sd > 0) & (su < sigma_next), -jnp.log(jnp.where(sd > 0, sd, 1.0)), t_end)
  t_next_ = jnp.where(su > 0, jnp.minimum(t_end, t_down), t_next)
  # su = sqrt(sigma(t_next)^2 - sigma(t_next')^2): sigma_up, or with t_next' clamped to t_end,
  # the factored difference of squares (exactly 0 for equal levels; see edm.edm_sample).
  sigma_end = _sigma(t_end)
  su = jnp.where(
    t_down <= t_end,
    su,
    jnp.sqrt(jnp.maximum((sigma_next - sigma_end) * (sigma_next + sigma_end), 0.0)),
  )
  return t_next_, su


def fast_orders(n: int) -> list[int]:
  """k-diffusion's order of each of the m = n // 3 + 1 steps; they sum to n.

  n % 3 == 0: [3] * (m - 2) + [2, 1]; else [3] * (m - 1) + [n % 3].
  Source: k-diffusion `DPMSolver.dpm_solver_fast`; DPM-Solver Section 3.3.
  """
  m = n // 3 + 1
  return [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]


def dpm_fast(
  denoise_fn: Callable,
  x: jax.Array,
  *,
  sigma_min: Any,
  sigma_max: Any,
  n: int,
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
  init_state: Any = None,
  eta: Any = 0.0,
  s_noise: Any = 1.0,
) -> jax.Array:
  """DPM-Solver-fast: n denoiser calls over m = n // 3 + 1 steps uniform in t = -log sigma.

  Steps of order `fast_orders(n)` between m + 1 equally spaced times from t(sigma_max) to
  t(sigma_min) (the sample is returned at sigma_min). With eta > 0, step i adds
  su s_noise noise_fn(i, sigma(t_i), sigma(t_{i+1})) (module docstring). NFE = n.

  Source: k-diffusion `sample_dpm_fast` / `DPMSolver.dpm_solver_fast`; Lu et al. 2022
  (DPM-Solver), Section 3.3.
  """
  name = 'dpm_fast'
  n = common.check_steps(n, f'{name}: n')
  eps_fn, state, x, t_start, t_end, noisy = _setup(
    name, denoise_fn, x, sigma_min, sigma_max, init_state, eta, s_noise, rng, noise_fn
  )
  orders = fast_orders(n)
  m = len(orders)
  ts = jnp.linspace(t_start, t_end, m + 1)
  s_noise = jnp.asarray(s_noise, jnp.float32)
  dtype = x.dtype

  def step(x, state, i, t, t_next, order):
    t_next_, su = _ancestral_target(t, t_next, t_end, eta, noisy)
    eps, state = eps_fn(x, t, state)
    if order == 1:
      x = _step_1(x, t, t_next_, eps)
    elif order == 2:
      x, _, state = _step_2(eps_fn, x, t, t_next_, eps, state, 0.5)
    else:
      x, state = _step_3(eps_fn, x, t, t_next_, eps, state)
    if noisy:
      z = stepping.unit_noise(rng, noise_fn, i, _sigma(t), _sigma(t_next), x)
      x = x + z * (su * s_noise).astype(dtype)
    return x.astype(dtype), state

  k3 = sum(o == 3 for o in orders)

  def body(carry, xs):
    x, state = carry
    i, t, t_next = xs
    return step(x, state, i, t, t_next, 3), None

  idx = jnp.arange(m, dtype=jnp.int32)
  (x, state), _ = jax.lax.scan(body, (x, state), (idx[:k3], ts[:k3], ts[1 : k3 + 1]))
  for i in range(k3, m):  # the one or two lower-order final steps
    x, state = step(x, state, idx[i], ts[i], ts[i + 1], orders[i])
  return x


def fast_nfe(num_steps: int, **_: Any) -> int:
  """dpm_fast spends exactly n = num_steps denoiser calls."""
  return common.check_steps(num_steps, 'num_steps')


def _check_positive(name: str, **values: Any) -> None:
  for key, value in values.items():
    v = common.concrete_or_none(value)
    if v is not None and (v.shape != () or not np.isfinite(v) or v <= 0):
      raise ValueError(f'{name}: {key}={value!r} must be a finite scalar > 0.')


def dpm_adaptive(
  denoise_fn: Callable,
  x: jax.Array,
  *,
  sigma_min: Any,
  sigma_max: Any,
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
  init_state: Any = None,
  order: int = 3,
  rtol: Any = 0.05,
  atol: Any = 0.0078,
  h_init: Any = 0.05,
  pcoeff: Any = 0.0,
  icoeff: Any = 1.0,
  dcoeff: Any = 0.0,
  accept_safety: Any = 0.81,
  eta: Any = 0.0,
  s_noise: Any = 1.0,
  max_steps: int = 1000,
  return_info: bool = False,
):
  """DPM-Solver-12 (order 2) / -23 (order 3) with a PID step-size controller, in a while_loop.

  Each attempt from s to t = min(t_end, s + h) takes a lower- and a higher-order step
  (order 3: DPM-Solver-2 with r1 = 1/3 and DPM-Solver-3 sharing eps(u1, s1); order 2:
  DPM-Solver-1 and -2), `order` denoiser calls in all, and the error
  ||(x_low - x_high) / delta||_2 / sqrt(x.size), delta = max(atol, rtol max(|x_low|,
  |x_prev|)), over the whole batch (one step size for all of x, as in k-diffusion). The PID
  controller (k-diffusion `PIDStepSizeController`, b1 = (p + i + d) / k, b2 = -(p + 2d) / k,
  b3 = d / k, k = order, or 1.5 with eta != 0) sets factor = 1 + atan(e0^b1 e1^b2 e2^b3 -
  1) from the inverse errors, accepts if factor >= accept_safety, and always scales h by
  factor. An accepted attempt moves to x_high (plus, with eta, su s_noise
  noise_fn(k, sigma(s), sigma(t)) with k the number of steps accepted before it: the k-th
  call of k-diffusion's noise_sampler; evaluated on rejected attempts too, and discarded).

  The loop stops when s >= t(sigma_min) - 1e-5 or after `max_steps` attempts (accepted or
  rejected). At the bound the state at the last accepted time is returned as it is (not
  at sigma_min: no error can be raised under jit; info['done'] is False then).

  Returns:
    x, or (x, info) with return_info: int32 arrays 'nfe' (= order x attempts, the denoiser
    calls made), 'n_accept', 'n_reject', 'steps', and bool 'done' (sigma_min reached).

  Source: k-diffusion `sample_dpm_adaptive` / `DPMSolver.dpm_solver_adaptive`; Lu et al.
  2022 (DPM-Solver), Algorithm 5 (adaptive step size).
  """
  name = 'dpm_adaptive'
  stepping.check_choice(name, 'order', order, (2, 3))
  stepping.check_choice(name, 'return_info', return_info, (True, False))
  max_steps = common.check_steps(max_steps, f'{name}: max_steps')
  _check_positive(name, rtol=rtol, h_init=h_init, accept_safety=accept_safety)
  stepping.check_options(name, atol=atol, pcoeff=pcoeff, icoeff=icoeff, dcoeff=dcoeff)
  eps_fn, state, x, t_start, t_end, noisy = _setup(
    name, denoise_fn, x, sigma_min, sigma_max, init_state, eta, s_noise, rng, noise_fn
  )
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  rtol, atol, accept_safety, s_noise = f32(rtol), f32(atol), f32(accept_safety), f32(s_noise)
  pid_order = jnp.where(f32(eta) != 0, 1.5, float(order)) if noisy else f32(order)
  pcoeff, icoeff, dcoeff = f32(pcoeff), f32(icoeff), f32(dcoeff)
  b1 = (pcoeff + icoeff + dcoeff) / pid_order
  b2 = -(pcoeff + 2.0 * dcoeff) / pid_order
  b3 = dcoeff / pid_order
  dtype = x.dtype
  size = x.size

  def cond(carry):
    s, steps = carry['s'], carry['steps']
    return (s < t_end - T_TOL) & (steps < max_steps)

  def body(carry):
    x, x_prev, s, h, state = carry['x'], carry['x_prev'], carry['s'], carry['h'], carry['state']
    t = jnp.minimum(t_end, s + h)
    t_, su = _ancestral_target(s, t, t_end, eta, noisy)
    eps, state = eps_fn(x, s, state)
    if order == 2:
      x_low = _step_1(x, s, t_, eps)
      x_high, _, state = _step_2(eps_fn, x, s, t_, eps, state, 0.5)
    else:
      x_low, eps_r1, state = _step_2(eps_fn, x, s, t_, eps, state, 1.0 / 3.0)
      x_high, state = _step_3(eps_fn, x, s, t_, eps, state, eps_r1=eps_r1)
    delta = jnp.maximum(atol, rtol * jnp.maximum(jnp.abs(x_low), jnp.abs(x_prev)))
    ratio = ((x_low - x_high) / delta).astype(jnp.float32)
    error = jnp.sqrt(jnp.sum(ratio**2) / size)
    # PIDStepSizeController.propose_step: errs = [e0, e1, e2] of inverse errors.
    inv = 1.0 / (error + PID_EPS)
    first = carry['steps'] == 0
    e1 = jnp.where(first, inv, carry['e1'])
    e2 = jnp.where(first, inv, carry['e2'])
    factor = inv**b1 * e1**b2 * e2**b3
    factor = 1.0 + jnp.arctan(factor - 1.0)
    accept = factor >= accept_safety
    x_new = x_high
    if noisy:
      z = stepping.unit_noise(rng, noise_fn, carry['n_accept'], _sigma(s), _sigma(t), x)
      x_new = x_high + z * (su * s_noise).astype(dtype)
    one = jnp.int32(1)
    return {
      'x': jnp.where(accept, x_new, x).astype(dtype),
      'x_prev': jnp.where(accept, x_low, x_prev).astype(dtype),
      's': jnp.where(accept, t, s),
      'h': h * factor,
      'e1': jnp.where(accept, inv, e1),
      'e2': jnp.where(accept, e1, e2),
      'state': state,
      'steps': carry['steps'] + one,
      'n_accept': carry['n_accept'] + jnp.where(accept, one, 0),
      'n_reject': carry['n_reject'] + jnp.where(accept, 0, one),
    }

  zero = jnp.int32(0)
  carry = {
    'x': x,
    'x_prev': x,
    's': t_start,
    'h': jnp.abs(f32(h_init)),
    'e1': jnp.float32(1.0),
    'e2': jnp.float32(1.0),
    'state': state,
    'steps': zero,
    'n_accept': zero,
    'n_reject': zero,
  }
  out = jax.lax.while_loop(cond, body, carry)
  if not return_info:
    return out['x']
  info = {
    'nfe': out['steps'] * order,
    'n_accept': out['n_accept'],
    'n_reject': out['n_reject'],
    'steps': out['steps'],
    'done': out['s'] >= t_end - T_TOL,
  }
  return out['x'], info


def adaptive_nfe(num_steps: int, order: int = 3, max_steps: int = 1000, **_: Any) -> int:
  """The bound on dpm_adaptive's denoiser calls: order x max_steps (num_steps is unused)."""
  del num_steps
  return int(order) * common.check_steps(max_steps, 'max_steps')


_ADAPTIVE = ('order', *stepping.ADAPTIVE_KEYS, 'eta', 's_noise', 'max_steps')

FAST_SAMPLERS: dict[str, stepping.FastSampler] = {
  'dpm_fast': stepping.FastSampler(
    fn=dpm_fast, nfe=fast_nfe, stochastic=False, options=('eta', 's_noise'), grid_free=True
  ),
  'dpm_adaptive': stepping.FastSampler(
    fn=dpm_adaptive, nfe=adaptive_nfe, stochastic=False, options=_ADAPTIVE, grid_free=True
  ),
}

__all__ = [
  'FAST_SAMPLERS',
  'adaptive_nfe',
  'dpm_adaptive',
  'dpm_fast',
  'fast_nfe',
  'fast_orders',
]
