"""Discrete-time samplers: DDPM ancestral sampling, DDIM, and DDIM encoding.

The loop state is the model-space x_t = sqrt(abar) x0 + sqrt(1 - abar) eps.
The denoiser is called in EDM form on the data-space x = x_t / sqrt(abar) at
sigma = sqrt((1 - abar) / abar), so any EDM-form denoiser drives these samplers.
Every step is x_prev = c_x0 * x0_hat + c_x * x_t + std * z with per-step
coefficients computed in float64 from the schedule. Sampling over a respaced
schedule (`DiscreteSchedule.respace` or `timesteps=`) reproduces iDDPM's strided
sampling and DDIM's leading / trailing spacings.

Source: Ho et al. 2020 (DDPM) Algorithm 2 and eq. 6-7; Nichol & Dhariwal 2021
(iDDPM) section 3.1 (learned variance) and section 4 (respacing); Song et al.
2021 (DDIM) eq. 12 and 16.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers import common
from diffusion_jax.samplers.guidance import as_stateful, x0_of
from diffusion_jax.schedules import DiscreteSchedule

VARIANCES = ('small', 'large', 'learned')


def _resolve_schedule(schedule: Any, timesteps: Any) -> DiscreteSchedule:
  if not isinstance(schedule, DiscreteSchedule):
    raise ValueError(
      'schedule must be a schedules.DiscreteSchedule (e.g. DiscreteSchedule.from_name('
      f"'linear', 1000)); got {type(schedule).__name__}."
    )
  if timesteps is not None:
    schedule = schedule.respace(np.asarray(timesteps))
  return schedule


def _f32(a: np.ndarray) -> jax.Array:
  return jnp.asarray(np.asarray(a, np.float64), jnp.float32)


def _run(
  fn,
  state: Any,
  x: jax.Array,
  coefs: dict[str, np.ndarray],
  rng: jax.Array | None,
  learned: bool,
  recorder: common.TrajectoryRecorder,
  ascending: bool = False,
) -> tuple[jax.Array, jax.Array, Any]:
  """The shared step loop; `coefs` holds per-step float64 tables in loop order.

  Returns (x, buffer, last x0_hat).
  """
  n = coefs['c_x0'].shape[0]
  stochastic = rng is not None
  xs = {k: _f32(v) for k, v in coefs.items()}
  xs['k'] = jnp.arange(n, dtype=jnp.int32)  # loop position
  # The rng of schedule position i is fold_in(rng, i) whichever sampler runs, so
  # DDPM and DDIM(eta=1) draw identical noise from the same key.
  xs['pos'] = jnp.asarray(np.arange(n)[::-1] if not ascending else np.arange(n), jnp.int32)

  def body(carry, c):
    x, state, buf, _ = carry
    out, state = fn(x * c['inv_sqrt_abar'], c['sigma'], state)
    x0 = x0_of(out)
    x_next = c['c_x0'] * x0 + c['c_x'] * x
    if stochastic:
      if learned:
        frac = (out[1] + 1.0) * 0.5
        log_var = frac * c['log_beta'] + (1.0 - frac) * c['log_post']
        std = jnp.exp(0.5 * log_var)
      else:
        std = c['std']
      z = jax.random.normal(jax.random.fold_in(rng, c['pos']), x.shape, x.dtype)
      x_next = x_next + c['noise_mask'] * std * z
    buf = recorder.record(buf, c['k'] + 1, x_next)
    return (x_next, state, buf, x0), None

  carry = (x, state, recorder.init(x), jnp.zeros_like(x))
  (x, _, buf, x0), _ = jax.lax.scan(body, carry, xs)
  return x, buf, x0


def _finish(x: jax.Array, buf: jax.Array | None):
  return (x, buf) if buf is not None else x


def _base_coefs(s: DiscreteSchedule) -> dict[str, np.ndarray]:
  abar = s.alphas_cumprod
  return {'inv_sqrt_abar': 1.0 / np.sqrt(abar), 'sigma': s.edm_sigmas}


def ddpm_sample(
  denoise_fn,
  x: jax.Array,
  schedule: DiscreteSchedule,
  *,
  variance: str = 'small',
  rng: jax.Array,
  timesteps: Any = None,
  init_state: Any = None,
  return_trajectory: common.TrajectorySpec = False,
):
  """DDPM ancestral sampling, over the full chain or a respaced one.

  x_{t-1} = mu(x0_hat, x_t) + std_t z with the posterior mean coefficients of
  the (respaced) schedule and std_t^2 = betatilde_t ('small'), beta_t ('large')
  or iDDPM's exp(u log beta_t + (1 - u) log betatilde_t), u = (v + 1) / 2
  ('learned'). No noise is added at the last step, whose output is x0_hat.

  Source: Ho et al. 2020 (DDPM) Algorithm 2; Nichol & Dhariwal 2021 (iDDPM) eq. 15.

  Args:
    denoise_fn: EDM-form data-space denoiser `(x, sigma) -> x0` (or stateful with
      `init_state`); with variance='learned' it returns `(x0, v)`, v in [-1, 1]
      with x's shape.
    x: starting noise x_T ~ N(0, I) in model space (unit variance); any shape.
    schedule: the `DiscreteSchedule` to sample (respaced or not).
    variance: 'small', 'large' or 'learned'.
    rng: PRNG key for the per-step noise.
    timesteps: optional increasing indices into `schedule` to sample over
      (shorthand for `schedule.respace(timesteps)`, e.g. from
      `schedules.space_timesteps`).
    init_state: starting state of a stateful (self-conditioning) denoiser.
    return_trajectory: False, True (all states x_T .. x_0) or state indices
      (0 = the starting noise, N = the sample).

  Returns:
    The sample in data space, or `(sample, trajectory)`; trajectory states are
    model-space x_t.
  """
  if variance not in VARIANCES:
    raise ValueError(f'variance must be one of {VARIANCES}; got {variance!r}.')
  common.check_rng(rng, True, 'ddpm_sample')
  s = _resolve_schedule(schedule, timesteps)
  n = s.num_timesteps
  x = jnp.asarray(x)
  coefs = _base_coefs(s)
  coefs['c_x0'] = s.posterior_mean_coef1
  coefs['c_x'] = s.posterior_mean_coef2
  coefs['noise_mask'] = (np.arange(n) > 0).astype(np.float64)
  if variance == 'small':
    coefs['std'] = np.sqrt(s.posterior_variance)
  elif variance == 'large':
    coefs['std'] = np.sqrt(s.betas)
  else:
    coefs['log_beta'] = np.log(s.betas)
    coefs['log_post'] = s.posterior_log_variance_clipped
  coefs = {k: v[::-1] for k, v in coefs.items()}  # loop runs from t = T down to 1
  fn, state = as_stateful(denoise_fn, init_state)
  recorder = common.TrajectoryRecorder(common.trajectory_indices(return_trajectory, n), x)
  x, buf, _ = _run(fn, state, x, coefs, rng, variance == 'learned', recorder)
  return _finish(x, buf)


def ddim_coefficients(s: DiscreteSchedule, eta: float) -> dict[str, np.ndarray]:
  """Per-step DDIM tables in schedule order (index i steps from abar_i to abar_{i-1}).

  x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps_hat + s z with
  s = eta sqrt((1 - abar_prev) / (1 - abar) (1 - abar / abar_prev)) and
  eps_hat = (x_t - sqrt(abar) x0) / sqrt(1 - abar).

  Source: Song et al. 2021 (DDIM) eq. 12 and 16.
  """
  abar, abar_prev = s.alphas_cumprod, s.alphas_cumprod_prev
  std = eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
  c_eps = np.sqrt(np.maximum(1.0 - abar_prev - std**2, 0.0))
  inv_sqrt_1m = 1.0 / np.sqrt(1.0 - abar)
  return {
    'c_x0': np.sqrt(abar_prev) - c_eps * np.sqrt(abar) * inv_sqrt_1m,
    'c_x': c_eps * inv_sqrt_1m,
    'std': std,
  }


def _check_eta(eta: Any) -> float:
  if isinstance(eta, jax.core.Tracer):
    raise ValueError('eta must be a concrete Python float in [0, 1], not a traced value.')
  eta = float(eta)
  if not 0.0 <= eta <= 1.0:
    raise ValueError(
      f'eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM posterior); got {eta}.'
    )
  return eta


def ddim_sample(
  denoise_fn,
  x: jax.Array,
  schedule: DiscreteSchedule,
  *,
  eta: float = 0.0,
  rng: jax.Array | None = None,
  timesteps: Any = None,
  init_state: Any = None,
  return_trajectory: common.TrajectorySpec = False,
):
  """DDIM sampling with stochasticity eta over a (respaced) discrete schedule.

  eta = 0 is the deterministic DDIM (Euler on the probability-flow ODE in
  sigma); eta = 1 has the DDPM posterior variance and matches `ddpm_sample`
  with variance='small' (same distribution, and the same path for the same rng).

  Source: Song et al. 2021 (DDIM) eq. 12 and 16.

  Args:
    denoise_fn: EDM-form data-space denoiser (see `ddpm_sample`).
    x: starting noise x_T ~ N(0, I) in model space.
    schedule: the `DiscreteSchedule` whose steps are visited, e.g.
      `DiscreteSchedule.from_name('linear').respace(space_timesteps(1000, ('trailing', 50)))`.
    eta: in [0, 1].
    rng: PRNG key, required when eta > 0.
    timesteps: optional increasing indices into `schedule` (see `ddpm_sample`).
    init_state: starting state of a stateful denoiser.
    return_trajectory: False, True or state indices (see `ddpm_sample`).

  Returns:
    The sample in data space, or `(sample, trajectory)`.
  """
  eta = _check_eta(eta)
  common.check_rng(rng, eta > 0, 'ddim_sample with eta > 0')
  s = _resolve_schedule(schedule, timesteps)
  n = s.num_timesteps
  x = jnp.asarray(x)
  coefs = {**_base_coefs(s), **ddim_coefficients(s, eta)}
  coefs['noise_mask'] = np.ones((n,))
  coefs = {k: v[::-1] for k, v in coefs.items()}
  fn, state = as_stateful(denoise_fn, init_state)
  recorder = common.TrajectoryRecorder(common.trajectory_indices(return_trajectory, n), x)
  x, buf, _ = _run(fn, state, x, coefs, rng if eta > 0 else None, False, recorder)
  return _finish(x, buf)


def ddim_encode(
  denoise_fn,
  x0: jax.Array,
  schedule: DiscreteSchedule,
  *,
  timesteps: Any = None,
  init_state: Any = None,
  return_trajectory: common.TrajectorySpec = False,
):
  """Deterministic DDIM encoding x0 -> x_T, the eta = 0 sampler run backwards.

  The clean image is taken as the data-space point at the schedule's first
  (least noisy) level, then each step moves up one level:
  x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next) eps_hat, with x0_hat and
  eps_hat evaluated at the current level (N - 1 denoiser calls for N levels).
  `ddim_sample(..., eta=0)` over the same schedule decodes it back; the round
  trip error vanishes as the steps shrink.

  Source: Song et al. 2021 (DDIM) section 4.3 and eq. 14; Nichol & Dhariwal
  2021 code (ddim_reverse_sample).

  Args:
    denoise_fn: EDM-form data-space denoiser (or stateful with `init_state`).
    x0: data-space images; any shape.
    schedule: the `DiscreteSchedule` (respaced or not).
    timesteps: optional increasing indices into `schedule`.
    init_state: starting state of a stateful denoiser.
    return_trajectory: False, True or state indices (0 = level 0, N - 1 = x_T).

  Returns:
    Model-space x_T at the schedule's last level, or `(x_T, trajectory)`.
  """
  s = _resolve_schedule(schedule, timesteps)
  n = s.num_timesteps
  if n < 2:
    raise ValueError('schedule must have at least 2 timesteps to encode (one step up).')
  abar = s.alphas_cumprod
  x = jnp.asarray(x0) * np.float32(np.sqrt(abar[0]))
  cur, nxt = abar[:-1], abar[1:]
  coefs = {
    'inv_sqrt_abar': 1.0 / np.sqrt(cur),
    'sigma': s.edm_sigmas[:-1],
    'c_x0': np.sqrt(nxt) - np.sqrt(1.0 - nxt) * np.sqrt(cur) / np.sqrt(1.0 - cur),
    'c_x': np.sqrt(1.0 - nxt) / np.sqrt(1.0 - cur),
    'noise_mask': np.zeros((n - 1,)),
  }
  fn, state = as_stateful(denoise_fn, init_state)
  recorder = common.TrajectoryRecorder(common.trajectory_indices(return_trajectory, n - 1), x)
  x, buf, _ = _run(fn, state, x, coefs, None, False, recorder, ascending=True)
  return _finish(x, buf)
