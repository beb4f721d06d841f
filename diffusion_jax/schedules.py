"""Noise schedules: continuous gamma(t), discrete betas, EDM and NCSNv2 noise levels.

Everything here is pure. Continuous functions take jnp arrays of any shape and are
safe under jit, vmap and grad; argument checks run only on concrete Python-level
values, so a traced argument is never inspected. Discrete tables are float64 numpy,
as in the Improved DDPM reference design, and are meant to be baked into a jitted
function as constants.

Conventions: t in [0, 1] with 0 = clean; gamma(t) = alpha(t)^2 decreasing from 1;
input scale b gives x_t = sqrt(gamma) b x0 + sqrt(1 - gamma) eps and
logSNR = log(gamma b^2 / (1 - gamma)); EDM form x = x0 + sigma n.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

# ---------------------------------------------------------------------------
# Argument checks (concrete values only, so the functions stay traceable).


def _concrete(value) -> float | None:
  """Returns `value` as a float when it is a concrete scalar, else None."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    arr = np.asarray(value)
  except Exception:  # noqa: BLE001 - anything not array-like is left to jnp.
    return None
  if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
    return None
  return float(arr.reshape(()))


def _check_positive(name: str, value, fix: str = '') -> None:
  v = _concrete(value)
  if v is not None and not v > 0:
    raise ValueError(f'{name} must be > 0, got {v}.{" " + fix if fix else ""}')


def _check_order(lo_name: str, lo, hi_name: str, hi) -> None:
  a, b = _concrete(lo), _concrete(hi)
  if a is not None and b is not None and not a < b:
    raise ValueError(
      f'{lo_name} must be < {hi_name}, got {lo_name}={a}, {hi_name}={b}; swap or change them.'
    )


def _check_count(name: str, value, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name} must be a Python int >= {minimum}, got {value!r}.')
  if value < minimum:
    raise ValueError(f'{name} must be >= {minimum}, got {value}.')
  return int(value)


# ---------------------------------------------------------------------------
# Chen 2023, Algorithm 1: continuous-time gamma(t).


def simple_linear_schedule(t: ArrayLike, clip_min: float = 1e-9) -> jax.Array:
  """gamma(t) = 1 - t, clipped to [clip_min, 1].

  Source: Chen 2023, "On the Importance of Noise Scheduling", Algorithm 1.
  """
  return jnp.clip(1.0 - jnp.asarray(t), clip_min, 1.0)


def sigmoid_schedule(
  t: ArrayLike, start: float = -3.0, end: float = 3.0, tau: float = 1.0, clip_min: float = 1e-9
) -> jax.Array:
  """Sigmoid gamma(t) over the input range [start, end] with temperature tau.

  Source: Chen 2023, Algorithm 1 (sigmoid_schedule).
  """
  _check_order('start', start, 'end', end)
  _check_positive('tau', tau, 'Use a positive temperature such as 1.0.')
  t = jnp.asarray(t)
  v_start = jax.nn.sigmoid(start / tau)
  v_end = jax.nn.sigmoid(end / tau)
  out = jax.nn.sigmoid((t * (end - start) + start) / tau)
  return jnp.clip((v_end - out) / (v_end - v_start), clip_min, 1.0)


def cosine_schedule(
  t: ArrayLike, start: float = 0.0, end: float = 1.0, tau: float = 1.0, clip_min: float = 1e-9
) -> jax.Array:
  """Cosine gamma(t) over [start, end] with power 2 tau.

  Source: Chen 2023, Algorithm 1 (cosine_schedule).
  """
  _check_order('start', start, 'end', end)
  _check_positive('tau', tau, 'Use a positive power such as 1.0.')
  t = jnp.asarray(t)
  power = 2.0 * tau
  # Clamp before the power: cos(pi / 2) is a hair below 0 in float32.
  cos_pow = lambda u: jnp.maximum(jnp.cos(u * (math.pi / 2)), 0.0) ** power
  v_start, v_end = cos_pow(start), cos_pow(end)
  out = cos_pow(t * (end - start) + start)
  return jnp.clip((v_end - out) / (v_end - v_start), clip_min, 1.0)


_GAMMA_SCHEDULES = {
  'linear': (simple_linear_schedule, ('clip_min',)),
  'sigmoid': (sigmoid_schedule, ('start', 'end', 'tau', 'clip_min')),
  'cosine': (cosine_schedule, ('start', 'end', 'tau', 'clip_min')),
}


def get_gamma_schedule(name: str, **kwargs) -> Callable[[ArrayLike], jax.Array]:
  """Returns gamma(t) for a schedule name with its keyword arguments bound.

  Source: Chen 2023, Algorithm 1.

  Args:
    name: 'linear', 'sigmoid' or 'cosine'.
    **kwargs: the schedule's keyword arguments (start, end, tau, clip_min).

  Raises:
    ValueError: unknown name or keyword, start >= end, tau <= 0.
  """
  if name not in _GAMMA_SCHEDULES:
    raise ValueError(
      f'Unknown gamma schedule name {name!r}; valid names are {sorted(_GAMMA_SCHEDULES)}.'
    )
  fn, allowed = _GAMMA_SCHEDULES[name]
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(f'Schedule {name!r} got unknown arguments {unknown}; it takes {allowed}.')
  if 'start' in kwargs or 'end' in kwargs:
    defaults = {'sigmoid': (-3.0, 3.0), 'cosine': (0.0, 1.0)}[name]
    _check_order('start', kwargs.get('start', defaults[0]), 'end', kwargs.get('end', defaults[1]))
  if 'tau' in kwargs:
    _check_positive('tau', kwargs['tau'])
  if 'clip_min' in kwargs:
    c = _concrete(kwargs['clip_min'])
    if c is not None and not 0.0 <= c < 1.0:
      raise ValueError(f'clip_min must be in [0, 1), got {c}.')
  return functools.partial(fn, **kwargs)


# ---------------------------------------------------------------------------
# Noise-level conversions: gamma (with scale b) <-> logSNR <-> EDM sigma.


def logsnr_from_gamma(gamma: ArrayLike, scale: float = 1.0) -> jax.Array:
  """logSNR = log(gamma b^2 / (1 - gamma)); the scale shifts it by 2 log b.

  Source: Chen 2023, Section 3 (input scaling).
  """
  _check_positive('scale', scale)
  gamma = jnp.asarray(gamma)
  return jnp.log(gamma) - jnp.log1p(-gamma) + 2.0 * jnp.log(scale)


def gamma_from_logsnr(logsnr: ArrayLike, scale: float = 1.0) -> jax.Array:
  """Inverse of `logsnr_from_gamma`: gamma = sigmoid(logSNR - 2 log b).

  Source: Chen 2023, Section 3 (input scaling).
  """
  _check_positive('scale', scale)
  return jax.nn.sigmoid(jnp.asarray(logsnr) - 2.0 * jnp.log(scale))


def gamma_to_edm_sigma(gamma: ArrayLike, scale: float = 1.0) -> jax.Array:
  """EDM sigma of a gamma level: sqrt(1 - gamma) / (sqrt(gamma) b).

  Source: Karras 2022 (EDM), Eq. 1 form x = x0 + sigma n, with x = x_t / (sqrt(gamma) b).
  """
  _check_positive('scale', scale)
  gamma = jnp.asarray(gamma)
  return jnp.sqrt((1.0 - gamma) / gamma) / scale


def edm_sigma_to_gamma(sigma: ArrayLike, scale: float = 1.0) -> jax.Array:
  """gamma of an EDM sigma: 1 / (1 + b^2 sigma^2).

  Source: Karras 2022 (EDM), Eq. 1; Chen 2023 input scaling.
  """
  _check_positive('scale', scale)
  sigma = jnp.asarray(sigma)
  return 1.0 / (1.0 + (scale * sigma) ** 2)


def logsnr_to_edm_sigma(logsnr: ArrayLike) -> jax.Array:
  """EDM sigma of a logSNR: exp(-logSNR / 2).

  Source: Karras 2022 (EDM), Table 1 (SNR = 1 / sigma^2 in data space).
  """
  return jnp.exp(-0.5 * jnp.asarray(logsnr))


def edm_sigma_to_logsnr(sigma: ArrayLike) -> jax.Array:
  """logSNR of an EDM sigma: -2 log sigma.

  Source: Karras 2022 (EDM), Table 1.
  """
  return -2.0 * jnp.log(jnp.asarray(sigma))


# ---------------------------------------------------------------------------
# Discrete-time schedules (DDPM, Improved DDPM), float64 numpy tables.


def linear_betas(
  num_timesteps: int = 1000,
  beta_start: float = 1e-4,
  beta_end: float = 0.02,
  reference_steps: int | None = 1000,
) -> np.ndarray:
  """DDPM's linear betas, stretched to keep their shape for any T: float64 [T].

  With `reference_steps` R the endpoints are scaled by R / T, so T = 4000 takes
  betas 2.5e-5 .. 0.005 and the chain's abar curve stays that of T = R (at T = R the
  scale is exactly 1, DDPM's own schedule). `reference_steps=None` keeps the endpoints
  as given for every T.

  Source: Ho 2020 (DDPM), Section 4; Nichol & Dhariwal 2021 code
  (`gaussian_diffusion.get_named_beta_schedule`, 'linear').
  """
  num_timesteps = _check_count('num_timesteps', num_timesteps)
  _check_order('beta_start', beta_start, 'beta_end', beta_end)
  scale = 1.0
  if reference_steps is not None:
    scale = _check_count('reference_steps', reference_steps) / num_timesteps
  lo, hi = scale * beta_start, scale * beta_end
  if not (0.0 < lo and hi <= 1.0):
    hint = ''
    if scale != 1.0:
      hint = (
        f' (beta_start={beta_start}, beta_end={beta_end} scaled by {reference_steps} / '
        f'{num_timesteps}); use num_timesteps >= {math.ceil(reference_steps * beta_end)} '
        'or reference_steps=None'
      )
    raise ValueError(f'betas must lie in (0, 1]: got beta_start={lo}, beta_end={hi}{hint}.')
  return np.linspace(lo, hi, num_timesteps, dtype=np.float64)


def cosine_alpha_bar(t: ArrayLike, s: float = 0.008) -> np.ndarray:
  """abar(t) = f(t) / f(0), f(t) = cos(((t + s) / (1 + s)) pi / 2)^2, t in [0, 1], float64.

  Source: Nichol & Dhariwal 2021 (Improved DDPM), Eq. 17.
  """
  f = lambda u: np.cos((np.asarray(u, np.float64) + s) / (1.0 + s) * np.pi / 2) ** 2
  return f(t) / f(0.0)


def cosine_betas(
  num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> np.ndarray:
  """Improved DDPM's cosine betas, beta_t = min(1 - abar_t / abar_{t-1}, max_beta), float64 [T].

  The ratio is taken of f itself (f(0) cancels), in the reference code's order of
  operations.

  Source: Nichol & Dhariwal 2021 (Improved DDPM), Eq. 17 and Section 3.2; its code,
  `gaussian_diffusion.betas_for_alpha_bar`.
  """
  num_timesteps = _check_count('num_timesteps', num_timesteps)
  _check_positive('s', s)
  if not 0.0 < max_beta < 1.0:
    raise ValueError(f'max_beta must be in (0, 1), got {max_beta}.')
  f = lambda u: math.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2
  ratios = [f((i + 1) / num_timesteps) / f(i / num_timesteps) for i in range(num_timesteps)]
  return np.minimum(1.0 - np.asarray(ratios, np.float64), max_beta)


_BETA_SCHEDULES = {'linear': linear_betas, 'cosine': cosine_betas}


def get_betas(name: str, num_timesteps: int = 1000) -> np.ndarray:
  """Betas of a named discrete schedule ('linear' DDPM or 'cosine' Improved DDPM), float64 [T].

  'linear' is scaled by 1000 / T as in the Improved DDPM code (unchanged at T = 1000).

  Source: Ho 2020 (linear); Nichol & Dhariwal 2021 (cosine; code,
  `get_named_beta_schedule`).
  """
  if name not in _BETA_SCHEDULES:
    raise ValueError(
      f'Unknown beta schedule name {name!r}; valid names are {sorted(_BETA_SCHEDULES)}.'
    )
  return _BETA_SCHEDULES[name](num_timesteps)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, eq=False)
class DiscreteSchedule:
  """The float64 tables of a discrete diffusion, each of shape [T].

  Index i in [0, T - 1] is DDPM's t = i + 1. `timesteps` holds the original
  training indices (arange(T) unless respaced), which is what a model trained on
  the full chain must be conditioned on.

  The class is a static pytree node hashed by its tables: it can be passed straight
  to a jitted function, which retraces only when the tables change.

  Source: Ho 2020 (DDPM) Eqs. 4, 6, 7; Nichol & Dhariwal 2021 (Improved DDPM) Section 4.
  """

  betas: np.ndarray
  alphas: np.ndarray
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray
  posterior_variance: np.ndarray
  posterior_log_variance_clipped: np.ndarray
  posterior_mean_coef1: np.ndarray
  posterior_mean_coef2: np.ndarray
  edm_sigmas: np.ndarray
  timesteps: np.ndarray

  @classmethod
  def from_betas(cls, betas: ArrayLike, timesteps: ArrayLike | None = None) -> DiscreteSchedule:
    """Builds every table from betas [T] in (0, 1]."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 1:
      raise ValueError(f'betas must be a non-empty 1-D array, got shape {betas.shape}.')
    if not (np.all(betas > 0) and np.all(betas <= 1)):
      raise ValueError('betas must lie in (0, 1]; got values outside that range.')
    T = betas.size
    if timesteps is None:
      timesteps = np.arange(T, dtype=np.int64)
    timesteps = np.asarray(timesteps, dtype=np.int64)
    if timesteps.shape != (T,):
      raise ValueError(f'timesteps must have shape ({T},), got {timesteps.shape}.')
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    # log(0) at i = 0 is replaced by the next value, as in the Improved DDPM code.
    post_log_var = np.log(
      np.append(post_var[1], post_var[1:]) if T > 1 else np.maximum(post_var, 1e-20)
    )
    return cls(
      betas=betas,
      alphas=alphas,
      alphas_cumprod=abar,
      alphas_cumprod_prev=abar_prev,
      posterior_variance=post_var,
      posterior_log_variance_clipped=post_log_var,
      posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
      posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
      edm_sigmas=np.sqrt((1.0 - abar) / abar),
      timesteps=timesteps,
    )

  @classmethod
  def from_name(cls, name: str, num_timesteps: int = 1000) -> DiscreteSchedule:
    """Builds the schedule of `get_betas(name, num_timesteps)`."""
    return cls.from_betas(get_betas(name, num_timesteps))

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.size)

  def respace(self, timesteps: ArrayLike) -> DiscreteSchedule:
    """A schedule over an increasing subsequence S of this one's indices.

    beta_i = 1 - abar_{S_i} / abar_{S_{i-1}} (abar before S_0 is 1), so abar at the
    kept steps is unchanged; `timesteps` maps back to the original indices.

    Source: Nichol & Dhariwal 2021 (Improved DDPM), Section 4.
    """
    idx = np.asarray(timesteps)
    T = self.num_timesteps
    if idx.ndim != 1 or idx.size < 1 or not np.issubdtype(idx.dtype, np.integer):
      raise ValueError(f'timesteps must be a non-empty 1-D integer array, got {idx!r}.')
    if idx.min() < 0 or idx.max() > T - 1:
      raise ValueError(f'timesteps must lie in [0, {T - 1}], got min {idx.min()}, max {idx.max()}.')
    if np.any(np.diff(idx) <= 0):
      raise ValueError('timesteps must be strictly increasing; sort them and drop duplicates.')
    abar = self.alphas_cumprod[idx]
    betas = 1.0 - abar / np.append(1.0, abar[:-1])
    return DiscreteSchedule.from_betas(betas, timesteps=self.timesteps[idx])

  def take(self, name: str, t: ArrayLike, ndim: int = 1) -> jax.Array:
    """Gathers table `name` at integer indices t [B], reshaped to [B, 1, ...] of rank ndim."""
    table = jnp.asarray(getattr(self, name), dtype=jnp.float32)
    out = table[jnp.asarray(t)]
    return out.reshape(out.shape + (1,) * (ndim - out.ndim))

  def _key(self):
    return (self.betas.tobytes(), self.timesteps.tobytes())

  def __eq__(self, other) -> bool:
    return isinstance(other, DiscreteSchedule) and self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())


def _parse_counts(items, spec) -> list[int]:
  parts = items.split(',') if isinstance(items, str) else list(items)
  try:
    return [int(p) for p in parts]
  except (TypeError, ValueError):
    raise ValueError(
      f"spec {spec!r} is not understood; use an int N, 'N1,N2,...', 'ddimN' or "
      "('leading' | 'trailing' | 'linspace', N)."
    ) from None


def _strided_section(start: int, size: int, count: int) -> list[int]:
  """`count` indices from a section [start, start + size), first and last kept.

  The position is accumulated in floating point (x += stride, then rounded with
  Python's round-half-to-even), not computed as round(j * stride): the two differ
  for some counts (e.g. 21, 23 and 31 out of 1000), and the accumulated form is
  the reference's.
  """
  stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
  pos, out = 0.0, []
  for _ in range(count):
    out.append(start + round(pos))
    pos += stride
  return out


def space_timesteps(num_timesteps: int, spec: int | str | Sequence) -> np.ndarray:
  """Sorted indices in [0, T - 1] of a sampling subsequence.

  The integer, list, 'N1,N2,...' and 'ddimN' forms give exactly the indices of the
  Improved DDPM code's `space_timesteps`.

  Source: Nichol & Dhariwal 2021 (Improved DDPM code, `respace.space_timesteps`); Song
  2021 (DDIM, Section 5 'uniform'); Lin 2024 (Common Diffusion Noise Schedules, Table 2).

  Args:
    num_timesteps: T of the training chain.
    spec: one of
      - an int N, a list of ints, or a string '10,15,20': the chain is cut into equal
        sections (the first T mod k one longer) and each is strided evenly with that
        many steps (first and last kept; a count of 0 skips its section);
      - 'ddimN': the smallest integer stride k in [1, T - 1] with
        len(range(0, T, k)) == N;
      - ('leading' | 'trailing' | 'linspace', N): DDIM-style spacings.
  """
  T = _check_count('num_timesteps', num_timesteps)
  if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
    mode, n = spec
    n = _check_count('spec count', n)
    if n > T:
      raise ValueError(f'spec count must be in [1, {T}], got {n}.')
    if mode == 'leading':
      out = np.arange(n) * (T // n)
    elif mode == 'trailing':
      # k T / n for k < n, not arange(T, 0, -T / n): float steps can add an extra point.
      out = (np.round(T - np.arange(n) * (T / n)).astype(np.int64) - 1)[::-1]
    elif mode == 'linspace':
      out = np.round(np.linspace(0, T - 1, n)).astype(np.int64)
    else:
      raise ValueError(f"spec mode must be 'leading', 'trailing' or 'linspace', got {mode!r}.")
    return np.asarray(out, dtype=np.int64)
  if isinstance(spec, str) and spec.startswith('ddim'):
    n = _parse_counts(spec[4:], spec)[0]
    # Strides stop at T - 1 as in the reference, so 'ddim1' has no solution for T > 1.
    for stride in range(1, T):
      if len(range(0, T, stride)) == n:
        return np.arange(0, T, stride, dtype=np.int64)
    raise ValueError(f'spec {spec!r}: no integer stride gives exactly {n} steps out of {T}.')
  if isinstance(spec, str):
    counts = _parse_counts(spec, spec)
  elif isinstance(spec, (int, np.integer)):
    counts = [int(spec)]
  else:
    counts = _parse_counts(spec, spec)
  if not counts or any(c < 0 for c in counts) or sum(counts) < 1:
    raise ValueError(f'spec section counts must be >= 0 with at least one step, got {counts}.')
  size_per, extra = divmod(T, len(counts))
  start, steps = 0, []
  for i, count in enumerate(counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ValueError(f'spec: cannot take {count} steps from a section of {size} (T={T}).')
    steps += _strided_section(start, size, count)
    start += size
  return np.asarray(sorted(set(steps)), dtype=np.int64)


def scale_timesteps(t: ArrayLike, num_timesteps: int, rescale: bool = True) -> jax.Array:
  """The timestep a discrete model is fed for (original, 0-based) index t.

  With `rescale`, t * 1000 / T, so models of any chain length see inputs in
  [0, 1000) (Improved DDPM's `rescale_timesteps`, its scripts' default); else t.
  For a respaced chain pass the original indices and the original T, as the
  reference's `_WrappedModel` does.

  Source: Nichol & Dhariwal 2021 code (`GaussianDiffusion._scale_timesteps`,
  `respace._WrappedModel`).
  """
  num_timesteps = _check_count('num_timesteps', num_timesteps)
  t = jnp.asarray(t, jnp.float32)
  return t * (1000.0 / num_timesteps) if rescale else t


# ---------------------------------------------------------------------------
# EDM (Karras 2022): sampling noise levels and the VP / VE sigma(t).


def karras_sigmas(
  n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> jax.Array:
  """n decreasing noise levels of the rho schedule, then a final 0: float32 [n + 1].

  Source: Karras 2022 (EDM), Eq. 5.
  """
  n = _check_count('n', n)
  _check_positive('rho', rho)
  _check_positive('sigma_min', sigma_min)
  _check_order('sigma_min', sigma_min, 'sigma_max', sigma_max)
  # Concrete arguments are evaluated in float64 so the endpoints are exact in float32.
  xp = np if all(_concrete(v) is not None for v in (sigma_min, sigma_max, rho)) else jnp
  ramp = xp.arange(n) / max(n - 1, 1)
  lo, hi = xp.power(sigma_min, 1.0 / rho), xp.power(sigma_max, 1.0 / rho)
  sigmas = xp.append(xp.power(hi + ramp * (lo - hi), rho), 0.0)
  return jnp.asarray(sigmas, dtype=jnp.float32)


def exponential_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0) -> jax.Array:
  """n levels evenly spaced in log sigma from sigma_max to sigma_min, then 0: float32 [n + 1].

  Source: k-diffusion `get_sigmas_exponential`.
  """
  return polyexponential_sigmas(n, sigma_min, sigma_max, rho=1.0)


def polyexponential_sigmas(
  n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 1.0
) -> jax.Array:
  """n levels with log sigma = log sigma_min + r^rho (log sigma_max - log sigma_min), r
  from 1 to 0 evenly, then 0: float32 [n + 1]. rho = 1 is the exponential grid.

  Source: k-diffusion `get_sigmas_polyexponential`.
  """
  n = _check_count('n', n)
  _check_positive('rho', rho)
  _check_positive('sigma_min', sigma_min)
  _check_order('sigma_min', sigma_min, 'sigma_max', sigma_max)
  ramp = np.linspace(1.0, 0.0, n) ** float(rho)
  lo, hi = math.log(sigma_min), math.log(sigma_max)
  return jnp.asarray(np.append(np.exp(ramp * (hi - lo) + lo), 0.0), dtype=jnp.float32)


TIMESTEP_SPACINGS = ('linspace', 'leading', 'trailing')


def discrete_timesteps(num_timesteps: int, n: int, spacing: str = 'linspace') -> np.ndarray:
  """n decreasing training timesteps in [0, T - 1] for an n-step sampler: int64 [n].

  The spacings of diffusers' multistep schedulers (DPMSolverMultistep / UniPC / DEIS,
  `steps_offset = 0`): 'linspace' rounds linspace(0, T - 1, n + 1) and drops its 0;
  'leading' takes multiples of T // (n + 1); 'trailing' steps down from T by T / n.

  Source: diffusers `DPMSolverMultistepScheduler.set_timesteps`; Lin et al. 2024
  ("Common Diffusion Noise Schedules and Sample Steps are Flawed"), Table 2.
  """
  T = _check_count('num_timesteps', num_timesteps)
  n = _check_count('n', n)
  if spacing not in TIMESTEP_SPACINGS:
    raise ValueError(
      f'unknown timestep spacing {spacing!r}; valid: {", ".join(TIMESTEP_SPACINGS)}.'
    )
  if n > T:
    raise ValueError(f'n={n} sampler steps exceed the {T} training timesteps; use n <= {T}.')
  if spacing == 'linspace':
    t = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
  elif spacing == 'leading':
    t = (np.arange(0, n + 1) * (T // (n + 1))).round()[::-1][:-1]
  else:
    t = np.arange(T, 0, -T / n).round() - 1
  return t.astype(np.int64)


def discrete_sigmas(schedule: DiscreteSchedule, n: int, spacing: str = 'linspace') -> jax.Array:
  """EDM noise levels sqrt((1 - abar_t) / abar_t) at `discrete_timesteps`, then 0: f32 [n + 1].

  The grid diffusers' multistep schedulers step over (`final_sigmas_type='zero'`), so a
  sampler fed it takes the same steps as the diffusers scheduler of that name.
  """
  t = discrete_timesteps(schedule.num_timesteps, n, spacing)
  sigmas = np.sqrt((1.0 - schedule.alphas_cumprod[t]) / schedule.alphas_cumprod[t])
  return jnp.asarray(np.append(sigmas, 0.0), dtype=jnp.float32)


def vp_sigma(t: ArrayLike, beta_d: float = 19.9, beta_min: float = 0.1) -> jax.Array:
  """VP noise level sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1).

  Source: Karras 2022 (EDM), Table 1 (VP column).
  """
  t = jnp.asarray(t)
  return jnp.sqrt(jnp.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_sigma_inverse(sigma: ArrayLike, beta_d: float = 19.9, beta_min: float = 0.1) -> jax.Array:
  """t of a VP noise level: (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d.

  Source: Karras 2022 (EDM), Table 1 (VP column).
  """
  _check_positive('beta_d', beta_d)
  sigma = jnp.asarray(sigma)
  return (jnp.sqrt(beta_min**2 + 2.0 * beta_d * jnp.log1p(sigma**2)) - beta_min) / beta_d


def vp_sigma_deriv(t: ArrayLike, beta_d: float = 19.9, beta_min: float = 0.1) -> jax.Array:
  """d sigma / dt of the VP schedule: (beta_d t + beta_min)(sigma + 1 / sigma) / 2.

  Source: Karras 2022 (EDM), Table 1 (VP column).
  """
  t = jnp.asarray(t)
  s = vp_sigma(t, beta_d, beta_min)
  return 0.5 * (beta_d * t + beta_min) * (s + 1.0 / s)


def vp_scale(t: ArrayLike, beta_d: float = 19.9, beta_min: float = 0.1) -> jax.Array:
  """VP scaling s(t) = 1 / sqrt(1 + sigma(t)^2).

  Source: Karras 2022 (EDM), Table 1 (VP column).
  """
  return jax.lax.rsqrt(1.0 + vp_sigma(t, beta_d, beta_min) ** 2)


def ve_sigma(t: ArrayLike) -> jax.Array:
  """VE noise level sigma(t) = sqrt(t).

  Source: Karras 2022 (EDM), Table 1 (VE column).
  """
  return jnp.sqrt(jnp.asarray(t))


def ve_sigma_inverse(sigma: ArrayLike) -> jax.Array:
  """t of a VE noise level: sigma^2.

  Source: Karras 2022 (EDM), Table 1 (VE column).
  """
  return jnp.asarray(sigma) ** 2


# ---------------------------------------------------------------------------
# NCSNv2 (Song & Ermon 2020): Techniques 1, 2 and 4.


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> jax.Array:
  """num_levels geometric noise levels from sigma_max down to sigma_min: [L].

  Source: Song & Ermon 2020 (NCSNv2), Section 3.
  """
  num_levels = _check_count('num_levels', num_levels)
  _check_positive('sigma_min', sigma_min)
  _check_order('sigma_min', sigma_min, 'sigma_max', sigma_max)
  xp = np if _concrete(sigma_max) is not None and _concrete(sigma_min) is not None else jnp
  sigmas = xp.exp(xp.linspace(xp.log(sigma_max), xp.log(sigma_min), num_levels))
  return jnp.asarray(sigmas, dtype=jnp.float32)


def ncsn_sigma_ratio(sigma_max: float, sigma_min: float, num_levels: int) -> float:
  """The common ratio gamma = sigma_{i-1} / sigma_i of `geometric_sigmas` (float64)."""
  num_levels = _check_count('num_levels', num_levels, minimum=2)
  _check_order('sigma_min', sigma_min, 'sigma_max', sigma_max)
  return float((sigma_max / sigma_min) ** (1.0 / (num_levels - 1)))


def ncsn_sigma_max_from_data(x: ArrayLike, block_size: int = 1024) -> jax.Array:
  """Technique 1: sigma_1 = the largest pairwise Euclidean distance between examples.

  Memory is O(block_size * N); x is [N, ...] and is centred first for float32 accuracy.

  Source: Song & Ermon 2020 (NCSNv2), Technique 1.
  """
  x = jnp.asarray(x)
  x = x.reshape(x.shape[0], -1)  # [N, D]
  x = x - jnp.mean(x, axis=0)
  n = x.shape[0]
  sq = jnp.sum(x * x, axis=1)  # [N]
  block = min(_check_count('block_size', block_size), n)
  pad = (-n) % block
  xb = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, block, x.shape[1])  # [nb, block, D]
  sqb = jnp.pad(sq, (0, pad), constant_values=-jnp.inf).reshape(-1, block)  # padding never wins

  def block_max(args):
    xi, sqi = args
    d2 = sqi[:, None] + sq[None, :] - 2.0 * xi @ x.T  # [block, N]
    return jnp.max(d2)

  return jnp.sqrt(jnp.maximum(jnp.max(jax.lax.map(block_max, (xb, sqb))), 0.0))


def ncsn_level_criterion(ratio: ArrayLike, dim: int) -> jax.Array:
  """Technique 2 overlap: Phi(sqrt(2D)(g - 1) + 3g) - Phi(sqrt(2D)(g - 1) - 3g).

  Source: Song & Ermon 2020 (NCSNv2), Technique 2.
  """
  _check_positive('dim', dim)
  g = jnp.asarray(ratio)
  c = math.sqrt(2.0 * dim) * (g - 1.0)
  return jax.scipy.stats.norm.cdf(c + 3.0 * g) - jax.scipy.stats.norm.cdf(c - 3.0 * g)


def _criterion_np(g: np.ndarray, dim: int) -> np.ndarray:
  from scipy.special import ndtr

  c = np.sqrt(2.0 * dim) * (g - 1.0)
  return ndtr(c + 3.0 * g) - ndtr(c - 3.0 * g)


def ncsn_choose_num_levels(
  sigma_max: float, sigma_min: float, dim: int, target: float = 0.5, max_levels: int = 100_000
) -> int:
  """Technique 2: the number of levels L whose criterion is closest to `target`.

  CIFAR-10 (D = 3072, sigma 50 .. 0.01) gives L = 219 for 0.5; the paper used 232.

  Source: Song & Ermon 2020 (NCSNv2), Technique 2.
  """
  _check_positive('sigma_min', sigma_min)
  _check_order('sigma_min', sigma_min, 'sigma_max', sigma_max)
  _check_positive('dim', dim)
  if not 0.0 < target < 1.0:
    raise ValueError(f'target must be in (0, 1), got {target}.')
  levels = np.arange(2, _check_count('max_levels', max_levels, minimum=2) + 1)
  ratios = (sigma_max / sigma_min) ** (1.0 / (levels - 1.0))
  return int(levels[np.argmin(np.abs(_criterion_np(ratios, dim) - target))])


def ncsn_variance_ratio(
  eps: ArrayLike, ratio: ArrayLike, sigma_min: float, num_steps: int
) -> jax.Array:
  """Proposition 3: s_T^2 / sigma_i^2 after T Langevin steps of size eps sigma_i^2 / sigma_L^2.

  (1 - a)^(2T) (g^2 - 2 / (2 - a)) + 2 / (2 - a) with a = eps / sigma_L^2, which equals
  the paper's form since 2 eps / (sigma_L^2 - sigma_L^2 (1 - a)^2) = 2 / (2 - a).

  Source: Song & Ermon 2020 (NCSNv2), Proposition 3 and Technique 4.
  """
  _check_count('num_steps', num_steps)
  _check_positive('sigma_min', sigma_min)
  a = jnp.asarray(eps) / sigma_min**2
  g = jnp.asarray(ratio)
  fixed = 2.0 / (2.0 - a)
  return (1.0 - a) ** (2 * num_steps) * (g**2 - fixed) + fixed


def ncsn_solve_step_size(
  ratio: float, sigma_min: float, num_steps: int, num_grid: int = 4001, iters: int = 200
) -> float:
  """Technique 4: the eps in (0, sigma_L^2) minimizing |variance ratio - 1| (float64).

  A dense grid in log eps brackets the best point, then golden-section search refines
  it. CIFAR-10 (gamma = (50 / 0.01)^(1/231), T = 5): eps = 6.18e-6, ratio 1.055.

  Source: Song & Ermon 2020 (NCSNv2), Technique 4.
  """
  num_steps = _check_count('num_steps', num_steps)
  _check_positive('sigma_min', sigma_min)
  _check_positive('ratio', ratio)
  s2 = float(sigma_min) ** 2

  def loss(log_eps):
    a = np.exp(log_eps) / s2
    fixed = 2.0 / (2.0 - a)
    return np.abs((1.0 - a) ** (2 * num_steps) * (ratio**2 - fixed) + fixed - 1.0)

  grid = np.linspace(np.log(s2) - 30.0, np.log(s2) + np.log1p(-1e-9), num_grid)
  k = int(np.argmin(loss(grid)))
  lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, num_grid - 1)]
  inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
  c, d = hi - inv_phi * (hi - lo), lo + inv_phi * (hi - lo)
  fc, fd = loss(c), loss(d)
  for _ in range(iters):
    if fc < fd:
      hi, d, fd = d, c, fc
      c = hi - inv_phi * (hi - lo)
      fc = loss(c)
    else:
      lo, c, fc = c, d, fd
      d = lo + inv_phi * (hi - lo)
      fd = loss(d)
  return float(np.exp(0.5 * (lo + hi)))
