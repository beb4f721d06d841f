"""k-diffusion's single-step samplers: Euler, Heun, DPM-2, their ancestral forms, DPM++ 2S / SDE.

Every sampler steps the EDM probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma
(or its SDE with ancestral noise) from sigmas[i] to sigmas[i + 1] with one or two
denoiser calls per step, in one `lax.scan`. The step that lands on sigma = 0 is a plain
Euler step (x = D(x; sigma_i)) wherever k-diffusion takes one; that choice is a
`lax.cond` on the (possibly traced) grid, so a traced grid never evaluates the
second-order branch at sigma = 0, and the branch not taken is fed finite stand-ins (under
vmap both run and are selected).

Ancestral steps (eta) split sigma_i -> sigma_{i+1} into a deterministic step to sigma_down
and fresh noise of scale sigma_up (`stepping.ancestral_step`). Churn (s_churn, s_tmin,
s_tmax, s_noise; EDM Algorithm 2) first raises sigma_i to sigma_hat = sigma_i (1 + gamma_i).
Replay: each sampler's unit draw of step i comes from `noise_fn(i, sigma_i, sigma_{i+1})`
(k-diffusion's `noise_sampler(sigmas[i], sigmas[i + 1])`, or its i-th `randn_like` for the
churn of sample_euler / sample_heun / sample_dpm_2); dpmpp_sde's two draws are documented
on it.

Sources: Karras et al. 2022 (EDM), Algorithms 1-2; Lu et al. 2022 (DPM-Solver, arXiv
2206.00927) Algorithm 1 (DPM-Solver-2); Lu et al. 2022 (DPM-Solver++, arXiv 2211.01095)
Algorithm 1 (2S); k-diffusion `sample_euler`, `sample_heun`, `sample_euler_ancestral`,
`sample_dpm_2`, `sample_dpm_2_ancestral`, `sample_dpmpp_2s_ancestral`, `sample_dpmpp_sde`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax.samplers import common, edm, stepping

# ---------------------------------------------------------------------------
# Euler and Heun: EDM's sampler.


def _check_churn(name: str, s_churn: Any, s_noise: Any, rng: Any, noise_fn: Any) -> bool:
  """Checks churn options; returns whether the run draws noise (s_churn traced or > 0)."""
  stepping.check_options(name, s_churn=s_churn, s_noise=s_noise)
  churn = common.concrete_or_none(s_churn)
  stochastic = churn is None or float(churn) > 0
  if stochastic:
    stepping.check_rng(rng, noise_fn, f'{name} with s_churn > 0')
  return stochastic


def _edm_method(
  method, denoise_fn, x, sigmas, s_churn, s_tmin, s_tmax, s_noise, rng, noise_fn, init_state
):
  """`edm.edm_sample(method=method)` after the churn and grid checks (euler, heun)."""
  _check_churn(method, s_churn, s_noise, rng, noise_fn)
  common.check_sigmas(sigmas, f'{method}: sigmas')
  return edm.edm_sample(
    denoise_fn,
    x,
    sigmas,
    method=method,
    s_churn=s_churn,
    s_tmin=s_tmin,
    s_tmax=s_tmax,
    s_noise=s_noise,
    rng=rng,
    noise_fn=noise_fn,
    init_state=init_state,
  )


def euler(
  denoise_fn: Callable,
  x: jax.Array,
  sigmas: Any,
  *,
  s_churn: Any = 0.0,
  s_tmin: Any = 0.0,
  s_tmax: Any = float('inf'),
  s_noise: Any = 1.0,
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
  init_state: Any = None,
) -> jax.Array:
  """Euler steps of the probability-flow ODE, with EDM's churn (first-order Algorithm 2).

  gamma_i = min(s_churn / N, sqrt(2) - 1) for s_tmin <= sigma_i <= s_tmax, else 0;
  sigma_hat = sigma_i (1 + gamma_i), x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) s_noise z_i,
  x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (x_hat - D(x_hat; sigma_hat)) / sigma_hat.
  The churn draw z_i is noise_fn(i, sigma_i, sigma_{i+1}) (k-diffusion's i-th randn_like).
  Deterministic for s_churn = 0. NFE = N.

  Source: k-diffusion `sample_euler`; `edm.edm_sample(method='euler')`.
  """
  return _edm_method(
    'euler', denoise_fn, x, sigmas, s_churn, s_tmin, s_tmax, s_noise, rng, noise_fn, init_state
  )


def heun(
  denoise_fn: Callable,
  x: jax.Array,
  sigmas: Any,
  *,
  s_churn: Any = 0.0,
  s_tmin: Any = 0.0,
  s_tmax: Any = float('inf'),
  s_noise: Any = 1.0,
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
  init_state: Any = None,
) -> jax.Array:
  """Heun's second-order steps with EDM's churn (Algorithm 2); Euler on the step to 0.

  After the churn of `euler`: x' = x_hat + dt d, x_{i+1} = x_hat + dt (d + d') / 2 with
  d' = (x' - D(x'; sigma_{i+1})) / sigma_{i+1}, dt = sigma_{i+1} - sigma_hat; when
  sigma_{i+1} = 0, x_{i+1} = x_hat + dt d. NFE = 2N - 1 on a grid ending at 0 (else 2N).

  Source: k-diffusion `sample_heun`; `edm.edm_sample(method='heun')`.
  """
  return _edm_method(
    'heun', denoise_fn, x, sigmas, s_churn, s_tmin, s_tmax, s_noise, rng, noise_fn, init_state
  )


# ---------------------------------------------------------------------------
# DPM-2 (with churn).


def dpm_2(
  denoise_fn: Callable,
  x: jax.Array,
  sigmas: Any,
  *,
  s_churn: Any = 0.0,
  s_tmin: Any = 0.0,
  s_tmax: Any = float('inf'),
  s_noise: Any = 1.0,
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
  init_state: Any = None,
) -> jax.Array:
  """DPM-Solver-2 midpoint steps in sigma, with EDM's churn; Euler on the step to 0.

  After the churn of `euler` (sigma_hat, x_hat, d = (x_hat - D(x_hat; sigma_hat)) /
  sigma_hat): sigma_mid = exp((log sigma_hat + log sigma_{i+1}) / 2) (the midpoint in
  lambda = -log sigma), x' = x_hat + (sigma_mid - sigma_hat) d,
  x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (x' - D(x'; sigma_mid)) / sigma_mid.
  When sigma_{i+1} = 0: x_{i+1} = x_hat - sigma_hat d. NFE = 2N - 1 on a grid ending at 0.

  Source: k-diffusion `sample_dpm_2`; Lu et al. 2022 (DPM-Solver), Algorithm 1 (r = 1/2).
  """
  name = 'dpm_2'
  stochastic = _check_churn(name, s_churn, s_noise, rng, noise_fn)
  fn, state, x, sig = stepping.prepare(denoise_fn, x, sigmas, init_state, name)
  n = sig.shape[0] - 1
  gammas = edm._churn_gammas(sig, s_churn, s_tmin, s_tmax) if stochastic else jnp.zeros((n,))
  s_noise = jnp.asarray(s_noise, jnp.float32)
  dtype = x.dtype

  def step(x, state, i, sigma, sigma_next, gamma):
    sigma_hat = sigma * (1.0 + gamma)
    if stochastic:
      z = stepping.unit_noise(rng, noise_fn, i, sigma, sigma_next, x)
      # sqrt(sigma_hat^2 - sigma^2), exactly 0 at gamma = 0 (see edm.edm_sample).
      x = x + z * (s_noise * sigma * jnp.sqrt(gamma * (2.0 + gamma))).astype(dtype)
    denoised, state = fn(x, sigma_hat, state)
    d = stepping.to_d(x, sigma_hat, denoised)

    def to_zero(x, state):
      return x + d * (sigma_next - sigma_hat), state

    def midpoint(x, state):
      s_next = jnp.where(sigma_next > 0, sigma_next, 0.5 * sigma_hat)  # finite stand-in
      sigma_mid = jnp.exp(0.5 * (jnp.log(sigma_hat) + jnp.log(s_next)))
      x_2 = x + d * (sigma_mid - sigma_hat)
      denoised_2, state = fn(x_2, sigma_mid, state)
      return x + stepping.to_d(x_2, sigma_mid, denoised_2) * (s_next - sigma_hat), state

    return jax.lax.cond(sigma_next > 0, midpoint, to_zero, x, state)

  return stepping.scan_steps(step, x, state, sig, gammas)


# ---------------------------------------------------------------------------
# Ancestral samplers.


def _ancestral_setup(
  name: str,
  denoise_fn: Callable,
  x: jax.Array,
  sigmas: Any,
  eta: Any,
  s_noise: Any,
  rng: Any,
  noise_fn: Any,
  init_state: Any,
) -> tuple[bool, Callable, Any, jax.Array, jax.Array, jax.Array]:
  """Checks eta / s_noise and the grid: (noisy, fn, state, x, sigmas f32, s_noise f32).

  noisy: whether noise is drawn (eta traced or != 0); the rest as `stepping.prepare`.
  """
  stepping.check_options(name, eta=eta, s_noise=s_noise)
  eta_static = common.concrete_or_none(eta)
  noisy = eta_static is None or float(eta_static) != 0.0
  if noisy:
    stepping.check_rng(rng, noise_fn, name)
  fn, state, x, sig = stepping.prepare(denoise_fn, x, sigmas, init_state, name)
  return noisy, fn, state, x, sig, jnp.asarray(s_noise, jnp.float32)


def _add_noise(x, rng, noise_fn, i, sigma, sigma_next, scale, dtype):
  """x + scale z_i, z_i = step i's unit draw (`stepping.unit_noise`); scale cast to dtype."""
  z = stepping.unit_noise(rng, noise_fn, i, sigma, sigma_next, x)
  return x + z * scale.astype(dtype)


def euler_ancestral(
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
  """Ancestral Euler: an Euler step to sigma_down, then sigma_up s_noise z_i (if sigma_{i+1} > 0).

  (sigma_down, sigma_up) = `stepping.ancestral_step(sigma_i, sigma_{i+1}, eta)`;
  x_{i+1} = x + (sigma_down - sigma_i) (x - D(x; sigma_i)) / sigma_i + sigma_up s_noise z_i,
  z_i = noise_fn(i, sigma_i, sigma_{i+1}). eta = 0 is Euler. NFE = N.

  Source: k-diffusion `sample_euler_ancestral`.
  """
  name = 'euler_ancestral'
  noisy, fn, state, x, sig, s_noise = _ancestral_setup(
    name, denoise_fn, x, sigmas, eta, s_noise, rng, noise_fn, init_state
  )
  dtype = x.dtype

  def step(x, state, i, sigma, sigma_next):
    denoised, state = fn(x, sigma, state)
    sigma_down, sigma_up = stepping.ancestral_step(sigma, sigma_next, eta)
    x = x + stepping.to_d(x, sigma, denoised) * (sigma_down - sigma)
    if noisy:
      x_noised = _add_noise(x, rng, noise_fn, i, sigma, sigma_next, s_noise * sigma_up, dtype)
      x = jnp.where(sigma_next > 0, x_noised, x)
    return x, state

  return stepping.scan_steps(step, x, state, sig)


def dpm_2_ancestral(
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
  """Ancestral DPM-2: a DPM-Solver-2 step to sigma_down, then sigma_up s_noise z_i.

  sigma_mid = exp((log sigma_i + log sigma_down) / 2), x' = x + (sigma_mid - sigma_i) d,
  x_{i+1} = x + (sigma_down - sigma_i) d(x'; sigma_mid) + sigma_up s_noise z_i. When
  sigma_down = 0 (the step to 0, or eta large enough that sigma_up = sigma_{i+1}) the step
  is Euler, x_{i+1} = D(x; sigma_i), and, as in k-diffusion, no noise is added.
  NFE = 2N - 1 on a grid ending at 0 with eta <= 1.

  Source: k-diffusion `sample_dpm_2_ancestral`.
  """
  name = 'dpm_2_ancestral'
  noisy, fn, state, x, sig, s_noise = _ancestral_setup(
    name, denoise_fn, x, sigmas, eta, s_noise, rng, noise_fn, init_state
  )
  dtype = x.dtype

  def step(x, state, i, sigma, sigma_next):
    denoised, state = fn(x, sigma, state)
    sigma_down, sigma_up = stepping.ancestral_step(sigma, sigma_next, eta)
    d = stepping.to_d(x, sigma, denoised)

    def euler_step(x, state):
      return x + d * (sigma_down - sigma), state

    def dpm2_step(x, state):
      s_down = jnp.where(sigma_down > 0, sigma_down, 0.5 * sigma)  # finite stand-in
      sigma_mid = jnp.exp(0.5 * (jnp.log(sigma) + jnp.log(s_down)))
      x_2 = x + d * (sigma_mid - sigma)
      denoised_2, state = fn(x_2, sigma_mid, state)
      x = x + stepping.to_d(x_2, sigma_mid, denoised_2) * (s_down - sigma)
      if noisy:
        x = _add_noise(x, rng, noise_fn, i, sigma, sigma_next, s_noise * sigma_up, dtype)
      return x, state

    return jax.lax.cond(sigma_down > 0, dpm2_step, euler_step, x, state)

  return stepping.scan_steps(step, x, state, sig)


def dpmpp_2s_ancestral(
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
  """Ancestral DPM-Solver++(2S): a data-prediction single-step update to sigma_down, then noise.

  With h = log sigma_i - log sigma_down and sigma_s = sigma_i e^{-h/2} (r = 1/2):
  x' = e^{-h/2} x + (1 - e^{-h/2}) D(x; sigma_i),
  x_{i+1} = e^{-h} x + (1 - e^{-h}) D(x'; sigma_s) + sigma_up s_noise z_i (if sigma_{i+1} > 0).
  When sigma_down = 0 the step is Euler, x = D(x; sigma_i), plus the noise if sigma_{i+1} >
  0. NFE = 2N - 1 on a grid ending at 0 with eta <= 1.

  Source: k-diffusion `sample_dpmpp_2s_ancestral`; Lu et al. 2022 (DPM-Solver++),
  Algorithm 1.
  """
  name = 'dpmpp_2s_ancestral'
  noisy, fn, state, x, sig, s_noise = _ancestral_setup(
    name, denoise_fn, x, sigmas, eta, s_noise, rng, noise_fn, init_state
  )
  dtype = x.dtype

  def step(x, state, i, sigma, sigma_next):
    denoised, state = fn(x, sigma, state)
    sigma_down, sigma_up = stepping.ancestral_step(sigma, sigma_next, eta)

    def euler_step(x, state):
      return x + stepping.to_d(x, sigma, denoised) * (sigma_down - sigma), state

    def dpmpp_step(x, state):
      s_down = jnp.where(sigma_down > 0, sigma_down, 0.5 * sigma)  # finite stand-in
      h = jnp.log(sigma) - jnp.log(s_down)
      sigma_s = sigma * jnp.exp(-0.5 * h)
      x_2 = jnp.exp(-0.5 * h) * x + (-jnp.expm1(-0.5 * h)) * denoised
      denoised_2, state = fn(x_2, sigma_s, state)
      return jnp.exp(-h) * x + (-jnp.expm1(-h)) * denoised_2, state

    x, state = jax.lax.cond(sigma_down > 0, dpmpp_step, euler_step, x, state)
    if noisy:
      x_noised = _add_noise(x, rng, noise_fn, i, sigma, sigma_next, s_noise * sigma_up, dtype)
      x = jnp.where(sigma_next > 0, x_noised, x)
    return x, state

  return stepping.scan_steps(step, x, state, sig)


def brownian_pair(
  rng: jax.Array, i: jax.Array, sigma: jax.Array, sigma_s: jax.Array, sigma_next: jax.Array, like
) -> tuple[jax.Array, jax.Array]:
  """dpmpp_sde's two unit draws of step i with the Brownian tree's correlation.

  k-diffusion's BrownianTreeNoiseSampler returns (W(b) - W(a)) / sqrt(|b - a|) for the
  interval a = sigma -> b = sigma_next of a Brownian motion W indexed by sigma. The two
  draws of step i are over sigma -> sigma_s and sigma -> sigma_next, which overlap: with
  independent A = W(sigma_s) - W(sigma) ~ N(0, sigma - sigma_s) and
  B = W(sigma_next) - W(sigma_s) ~ N(0, sigma_s - sigma_next),
    z1 = A / sqrt(sigma - sigma_s),  z2 = (A + B) / sqrt(sigma - sigma_next),
  so corr(z1, z2) = sqrt((sigma - sigma_s) / (sigma - sigma_next)). Steps use disjoint
  intervals, so draws of different steps are independent (as on the tree).
  """
  a = stepping.unit_noise(rng, None, i, sigma, sigma_s, like, draw=1)
  b = stepping.unit_noise(rng, None, i, sigma_s, sigma_next, like, draw=2)
  span = jnp.maximum(sigma - sigma_next, 1e-30)
  w_a = jnp.sqrt(jnp.clip((sigma - sigma_s) / span, 0.0, 1.0)).astype(like.dtype)
  w_b = jnp.sqrt(jnp.clip((sigma_s - sigma_next) / span, 0.0, 1.0)).astype(like.dtype)
  return a, w_a * a + w_b * b


def dpmpp_sde(
  denoise_fn: Callable,
  x: jax.Array,
  sigmas: Any,
  *,
  eta: Any = 1.0,
  s_noise: Any = 1.0,
  r: Any = 0.5,
  rng: jax.Array | None = None,
  noise_fn: stepping.NoiseFn | None = None,
  init_state: Any = None,
) -> jax.Array:
  """DPM-Solver++ SDE: two ancestral data-prediction substeps per step; Euler on the step to 0.

  With lambda = -log sigma, h = lambda_{i+1} - lambda_i, sigma_s = sigma_i e^{-r h}:
    1. (sd, su) = ancestral_step(sigma_i, sigma_s, eta);
       x' = (sd / sigma_i) x + (1 - sd / sigma_i) m_i + su s_noise z1,  m_i = D(x; sigma_i);
    2. (sd, su) = ancestral_step(sigma_i, sigma_{i+1}, eta), m = (1 - 1/(2r)) m_i +
       1/(2r) D(x'; sigma_s); x_{i+1} = (sd / sigma_i) x + (1 - sd / sigma_i) m + su s_noise z2.
  When sigma_{i+1} = 0: x_{i+1} = m_i. NFE = 2N - 1 on a grid ending at 0.

  Noise: with noise_fn, z1 = noise_fn(i, sigma_i, sigma_s) and z2 = noise_fn(i, sigma_i,
  sigma_{i+1}) (k-diffusion's two noise_sampler calls; a replay function tells them apart
  by the interval). With rng, k-diffusion's default Brownian-tree noise: z1, z2 correlated
  as the tree makes them (`brownian_pair`), independent across steps.

  Source: k-diffusion `sample_dpmpp_sde`; Lu et al. 2022 (DPM-Solver++), Algorithm 1 and
  Eq. 18 (SDE form).
  """
  name = 'dpmpp_sde'
  noisy, fn, state, x, sig, s_noise = _ancestral_setup(
    name, denoise_fn, x, sigmas, eta, s_noise, rng, noise_fn, init_state
  )
  r_static = common.concrete_or_none(r)
  if r_static is not None and (r_static.shape != () or not 0 < float(r_static) <= 1):
    raise ValueError(f'{name}: r={r!r} must be a scalar in (0, 1].')
  dtype = x.dtype
  r = jnp.asarray(r, jnp.float32)
  fac = 0.5 / r

  def update(x, sigma, sigma_down, m):
    ratio = sigma_down / sigma
    return ratio * x + (1.0 - ratio) * m

  def step(x, state, i, sigma, sigma_next):
    denoised, state = fn(x, sigma, state)

    def to_zero(x, state):
      return x + stepping.to_d(x, sigma, denoised) * (sigma_next - sigma), state

    def sde_step(x, state):
      s_next = jnp.where(sigma_next > 0, sigma_next, 0.5 * sigma)  # finite stand-in
      h = jnp.log(sigma) - jnp.log(s_next)
      sigma_s = sigma * jnp.exp(-r * h)
      if noisy:
        if noise_fn is not None:
          z1 = stepping.unit_noise(None, noise_fn, i, sigma, sigma_s, x)
          z2 = stepping.unit_noise(None, noise_fn, i, sigma, s_next, x)
        else:
          z1, z2 = brownian_pair(rng, i, sigma, sigma_s, s_next, x)
      sd, su = stepping.ancestral_step(sigma, sigma_s, eta)
      x_2 = update(x, sigma, sd, denoised)
      if noisy:
        x_2 = x_2 + z1 * (s_noise * su).astype(dtype)
      denoised_2, state = fn(x_2.astype(dtype), sigma_s, state)
      sd, su = stepping.ancestral_step(sigma, s_next, eta)
      x = update(x, sigma, sd, (1.0 - fac) * denoised + fac * denoised_2)
      if noisy:
        x = x + z2 * (s_noise * su).astype(dtype)
      return x.astype(dtype), state

    return jax.lax.cond(sigma_next > 0, sde_step, to_zero, x, state)

  return stepping.scan_steps(step, x, state, sig)


# ---------------------------------------------------------------------------
# NFE and the registry table.


def one_call_nfe(num_steps: int, **_: Any) -> int:
  """Euler, Euler ancestral: one denoiser call per step, NFE = N."""
  return common.check_steps(num_steps, 'num_steps')


def two_call_nfe(num_steps: int, **_: Any) -> int:
  """Heun, DPM-2 (ancestral), DPM++ 2S / SDE: two calls per step but one on the step to 0.

  NFE = 2N - 1 (grids end at 0; ancestral samplers with eta <= 1).
  """
  return 2 * common.check_steps(num_steps, 'num_steps') - 1


_CHURN = ('s_churn', 's_tmin', 's_tmax', 's_noise')
_ANCESTRAL = ('eta', 's_noise')

FAST_SAMPLERS: dict[str, stepping.FastSampler] = {
  'euler': stepping.FastSampler(fn=euler, nfe=one_call_nfe, stochastic=False, options=_CHURN),
  'heun': stepping.FastSampler(fn=heun, nfe=two_call_nfe, stochastic=False, options=_CHURN),
  'euler_ancestral': stepping.FastSampler(
    fn=euler_ancestral, nfe=one_call_nfe, stochastic=True, options=_ANCESTRAL
  ),
  'dpm_2': stepping.FastSampler(fn=dpm_2, nfe=two_call_nfe, stochastic=False, options=_CHURN),
  'dpm_2_ancestral': stepping.FastSampler(
    fn=dpm_2_ancestral, nfe=two_call_nfe, stochastic=True, options=_ANCESTRAL
  ),
  'dpmpp_2s_ancestral': stepping.FastSampler(
    fn=dpmpp_2s_ancestral, nfe=two_call_nfe, stochastic=True, options=_ANCESTRAL
  ),
  'dpmpp_sde': stepping.FastSampler(
    fn=dpmpp_sde, nfe=two_call_nfe, stochastic=True, options=(*_ANCESTRAL, 'r')
  ),
}

__all__ = [
  'FAST_SAMPLERS',
  'brownian_pair',
  'dpm_2',
  'dpm_2_ancestral',
  'dpmpp_2s_ancestral',
  'dpmpp_sde',
  'euler',
  'euler_ancestral',
  'heun',
  'one_call_nfe',
  'two_call_nfe',
]
