"""EDM samplers: Euler, Heun (Algorithm 1) and the stochastic sampler (Algorithm 2).

The probability-flow ODE with sigma(t) = t, s(t) = 1 is dx/dt = (x - D(x; t)) / t,
integrated from sigmas[0] down to sigmas[-1] (usually 0) in data space.

Source: Karras et al. 2022 (EDM), Algorithms 1 and 2, eq. 4-5.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax.samplers import common
from diffusion_jax.samplers.guidance import as_stateful, x0_of

METHODS = ('euler', 'heun')


def _churn_gammas(sigmas: jax.Array, s_churn, s_tmin, s_tmax) -> jax.Array:
  """gamma_i = min(S_churn / N, sqrt(2) - 1) for t_i in [S_tmin, S_tmax], else 0; [N]."""
  n = sigmas.shape[0] - 1
  t = sigmas[:-1]
  g = jnp.minimum(jnp.asarray(s_churn, jnp.float32) / n, math.sqrt(2.0) - 1.0)
  inside = (t >= s_tmin) & (t <= s_tmax)
  return jnp.where(inside, g, 0.0).astype(jnp.float32)


def edm_sample(
  denoise_fn,
  x: jax.Array,
  sigmas: jax.typing.ArrayLike,
  *,
  method: str = 'heun',
  s_churn: float = 0.0,
  s_tmin: float = 0.0,
  s_tmax: float = float('inf'),
  s_noise: float = 1.0,
  rng: jax.Array | None = None,
  noise_fn: Any = None,
  init_state: Any = None,
  return_trajectory: common.TrajectorySpec = False,
):
  """Samples by integrating EDM's probability-flow ODE, optionally with churn.

  With `s_churn = 0` this is Algorithm 1 (Heun, NFE 2N - 1: the last step to
  sigma = 0 is a plain Euler step) or Euler (NFE N). With `s_churn > 0` it is
  Algorithm 2: before step i, noise raises t_i to t_i (1 + gamma_i) for t_i in
  [s_tmin, s_tmax]. Euler with churn is the first-order variant of Algorithm 2.

  Source: Karras et al. 2022 (EDM), Algorithms 1 and 2.

  Args:
    denoise_fn: EDM-form denoiser in data space, `(x, sigma) -> x0` or, with
      `init_state`, `(x, sigma, state) -> (x0, state)` (see samplers.guidance).
    x: starting point, the noise already scaled by sigmas[0]:
      `x = sigmas[0] * N(0, I)`; any shape.
    sigmas: [N + 1] strictly decreasing noise levels, e.g.
      `schedules.karras_sigmas(N)`; the last may be 0.
    method: 'heun' (second order) or 'euler'.
    s_churn: total stochasticity S_churn >= 0 (0 = deterministic).
    s_tmin: churn is applied only for t_i >= s_tmin.
    s_tmax: churn is applied only for t_i <= s_tmax.
    s_noise: scale of the added noise, S_noise (slightly above 1 in EDM's tuned
      settings to offset the denoiser's detail loss).
    rng: PRNG key, required when s_churn > 0 (unless noise_fn is given).
    noise_fn: optional `(i, sigma_i, sigma_{i+1}) -> N(0, I) like x`, the churn draw of
      step i in place of the rng's (to replay another run's draws, e.g. k-diffusion's
      i-th `randn_like` in sample_euler / sample_heun); see `samplers.stepping`.
    init_state: the starting state of a stateful (self-conditioning) denoiser.
    return_trajectory: False, True (all N + 1 states x_0 .. x_N), or a sequence
      of state indices to keep.

  Returns:
    The sample (same shape as x), or `(sample, trajectory [K, *x.shape])` when a
    trajectory is requested.
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}; got {method!r}.')
  common.check_sigmas(sigmas)
  common.check_nonnegative(s_churn, 's_churn')
  common.check_nonnegative(s_noise, 's_noise')
  churn_static = common.concrete_or_none(s_churn)
  stochastic = churn_static is None or float(churn_static) > 0
  common.check_rng(rng, stochastic and noise_fn is None, 'edm_sample with s_churn > 0')

  sig = jnp.asarray(sigmas, jnp.float32)  # [N + 1]
  if sig.ndim != 1 or sig.shape[0] < 2:
    raise ValueError(f'sigmas must be 1-D with at least 2 entries; got shape {sig.shape}.')
  n = sig.shape[0] - 1
  gammas = _churn_gammas(sig, s_churn, s_tmin, s_tmax) if stochastic else jnp.zeros((n,))
  x = jnp.asarray(x)
  fn, state = as_stateful(denoise_fn, init_state)
  recorder = common.TrajectoryRecorder(common.trajectory_indices(return_trajectory, n), x)
  heun = method == 'heun'

  def step(x, state, i, t_cur, t_next, gamma, second_order: bool):
    if stochastic:
      t_hat = t_cur * (1.0 + gamma)
      if noise_fn is not None:
        z = jnp.asarray(noise_fn(i, t_cur, t_next), x.dtype).reshape(x.shape)
      else:
        z = jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
      # sqrt(t_hat^2 - t_cur^2) as t_cur sqrt(gamma (2 + gamma)): exactly 0 at gamma = 0
      # (the difference of squares is not, once XLA fuses it into an FMA).
      x_hat = x + t_cur * jnp.sqrt(gamma * (2.0 + gamma)) * s_noise * z
    else:
      t_hat, x_hat = t_cur, x
    out, state = fn(x_hat, t_hat, state)
    d = (x_hat - x0_of(out)) / t_hat
    x_next = x_hat + (t_next - t_hat) * d
    if second_order:
      out, state = fn(x_next, t_next, state)
      d_prime = (x_next - x0_of(out)) / t_next
      x_next = x_hat + (t_next - t_hat) * 0.5 * (d + d_prime)
    return x_next, state

  def body(carry, xs):
    x, state, buf = carry
    i, t_cur, t_next, gamma = xs
    x, state = step(x, state, i, t_cur, t_next, gamma, heun)
    buf = recorder.record(buf, i + 1, x)
    return (x, state, buf), None

  # All steps but the last run in the scan; the last is special for Heun when
  # it lands on sigma = 0, where the second-order correction is undefined.
  idx = jnp.arange(n, dtype=jnp.int32)
  carry = (x, state, recorder.init(x))
  carry, _ = jax.lax.scan(body, carry, (idx[:-1], sig[:-2], sig[1:-1], gammas[:-1]))
  x, state, buf = carry
  last = (idx[-1], sig[-2], sig[-1], gammas[-1])
  if not heun:
    x, state = step(x, state, *last, False)
  else:
    s_np = common.concrete_or_none(sigmas)
    if s_np is not None:
      x, state = step(x, state, *last, bool(s_np[-1] > 0))
    else:
      x, state = jax.lax.cond(
        last[2] > 0,
        lambda x, s: step(x, s, *last, True),
        lambda x, s: step(x, s, *last, False),
        x,
        state,
      )
  buf = recorder.record(buf, idx[-1] + 1, x)
  if recorder.enabled:
    return x, buf
  return x


def edm_nfe(num_steps: int, method: str = 'heun', final_sigma_zero: bool = True) -> int:
  """Denoiser evaluations of `edm_sample` for `num_steps` steps (Heun: 2N - 1)."""
  common.check_steps(num_steps, 'num_steps')
  if method == 'euler':
    return num_steps
  return 2 * num_steps - (1 if final_sigma_zero else 0)
