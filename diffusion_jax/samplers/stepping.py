"""Shared pieces of the fast samplers (k-diffusion / diffusers families).

Every fast sampler follows one contract:

    x0 = sampler(denoise_fn, x, sigmas, *, rng=None, noise_fn=None, init_state=None, **options)

- `denoise_fn` is an EDM-form data-space denoiser D(x; sigma) -> x0 (stateless), or
  `(x, sigma, state) -> (x0, state)` with `init_state` (self-conditioning carry);
  see `samplers.guidance`.
- `x` is data-space noise already scaled by `sigmas[0]`: `x = sigmas[0] * N(0, I)`.
- `sigmas` is 1-D, strictly decreasing, and ends at 0 for a clean sample (a positive
  last level returns the sample at that level, as in k-diffusion).
- A stochastic sampler draws its unit noise from `rng`, or from
  `noise_fn(i, sigma, sigma_next) -> N(0, I) like x` when that is given (i = the step
  index, sigma / sigma_next = the interval the draw is for), so a run can be replayed
  draw for draw against another library. Deterministic samplers accept and ignore both.

All loops are `lax.scan`s traced inside the caller's `jax.jit`; options such as eta and
s_noise may be traced values (changing them does not recompile).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax.samplers import common
from diffusion_jax.samplers.guidance import as_stateful, x0_of

NoiseFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

# The step-size controller's options (DPM-Solver's adaptive sampler).
ADAPTIVE_KEYS = ('rtol', 'atol', 'h_init', 'pcoeff', 'icoeff', 'dcoeff', 'accept_safety')

# The `config.sample` keys a fast sampler may take as options (`FastSampler.options`).
OPTION_KEYS = (
  'eta',
  's_noise',
  's_churn',
  's_tmin',
  's_tmax',
  'order',
  'r',
  'solver_type',
  'multistep_style',
  'variant',
  'lower_order_final',
  *ADAPTIVE_KEYS,
  'max_steps',
)


@dataclasses.dataclass(frozen=True)
class FastSampler:
  """A fast sampler as the registry sees it.

  fn: the contract above. With `grid_free=True` it takes keywords `sigma_min`,
    `sigma_max` (and `n`) in place of `sigmas` (DPM-Solver's own step selection).
  nfe: (num_steps, **options) -> denoiser evaluations per sample; num_steps is
    len(sigmas) - 1 (or `n`); for an adaptive sampler, its bound.
  stochastic: whether it draws noise (with its default options).
  options: the `OPTION_KEYS` it accepts; the registry passes the ones set in config.sample.
  """

  fn: Callable[..., Any]
  nfe: Callable[..., int]
  stochastic: bool
  options: tuple[str, ...] = ()
  grid_free: bool = False

  def __post_init__(self):
    unknown = set(self.options) - set(OPTION_KEYS)
    if unknown:
      raise ValueError(f'unknown fast-sampler options {sorted(unknown)}; valid: {OPTION_KEYS}.')


def prepare(
  denoise_fn: Callable, x: jax.Array, sigmas: Any, init_state: Any, name: str
) -> tuple[Callable, Any, jax.Array, jax.Array]:
  """Checks the grid and returns (fn(x, sigma, state) -> (x0, state), state, x, sigmas f32).

  The returned `fn` yields only the x0 estimate (a learned variance is dropped).
  """
  common.check_sigmas(sigmas, f'{name}: sigmas')
  stateful, state = as_stateful(denoise_fn, init_state)

  def fn(x, sigma, state):
    out, state = stateful(x, sigma, state)
    return x0_of(out), state

  sig = jnp.asarray(sigmas, jnp.float32)
  return fn, state, jnp.asarray(x), sig


def check_rng(rng: Any, noise_fn: NoiseFn | None, name: str) -> None:
  """A stochastic sampler needs an rng key or a noise_fn."""
  if rng is None and noise_fn is None:
    raise ValueError(
      f'{name} draws fresh noise every step: pass rng=jax.random.key(seed) '
      '(or noise_fn(i, sigma, sigma_next) to replay given draws).'
    )


def unit_noise(
  rng: jax.Array | None,
  noise_fn: NoiseFn | None,
  i: jax.Array,
  sigma: jax.Array,
  sigma_next: jax.Array,
  like: jax.Array,
  draw: int = 0,
) -> jax.Array:
  """N(0, I) shaped like `like` for draw `draw` of step i (over sigma -> sigma_next).

  From `noise_fn(i, sigma, sigma_next)` when given, else from
  `fold_in(rng, i)` (draw 0) or `fold_in(fold_in(rng, i), draw)`.
  """
  if noise_fn is not None:
    return jnp.asarray(noise_fn(i, sigma, sigma_next), like.dtype).reshape(like.shape)
  key = jax.random.fold_in(rng, i)
  if draw:
    key = jax.random.fold_in(key, draw)
  return jax.random.normal(key, like.shape, like.dtype)


def ancestral_step(
  sigma_from: jax.Array, sigma_to: jax.Array, eta: Any = 1.0
) -> tuple[jax.Array, jax.Array]:
  """(sigma_down, sigma_up) of an ancestral step from sigma_from to sigma_to.

  sigma_up = min(sigma_to, eta sqrt(sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2)),
  sigma_down = sqrt(sigma_to^2 - sigma_up^2); eta = 0 gives (sigma_to, 0).

  Source: k-diffusion `get_ancestral_step` (DDPM's posterior variance in sigma form,
  Ho 2020 Eq. 7 with eta as in DDIM, Song et al. 2021 Eq. 16).
  """
  eta = jnp.asarray(eta, jnp.float32)
  safe_from = jnp.where(sigma_from > 0, sigma_from, 1.0)
  var = sigma_to**2 * jnp.maximum(sigma_from**2 - sigma_to**2, 0.0) / safe_from**2
  sigma_up = jnp.minimum(sigma_to, eta * jnp.sqrt(var))
  # A product, not a difference of squares: exactly 0 where sigma_up is clipped to sigma_to
  # (XLA fuses the difference of squares into an FMA that leaves a residue).
  sigma_down = jnp.sqrt(jnp.maximum((sigma_to - sigma_up) * (sigma_to + sigma_up), 0.0))
  return sigma_down, sigma_up


def scan_steps(
  step: Callable, x: jax.Array, state: Any, sig: jax.Array, *per_step: Any
) -> jax.Array:
  """Runs `step(x, state, i, sigma_i, sigma_{i+1}, *per_step[i]) -> (x, state)` in one scan.

  i runs over the N = len(sig) - 1 steps; each step's x is cast back to the input's dtype.
  Returns the last x.
  """
  dtype = x.dtype

  def body(carry, xs):
    x, state = step(*carry, *xs)
    return (x.astype(dtype), state), None

  xs = (jnp.arange(sig.shape[0] - 1, dtype=jnp.int32), sig[:-1], sig[1:], *per_step)
  (x, _), _ = jax.lax.scan(body, (x, state), xs)
  return x


def to_d(x: jax.Array, sigma: jax.Array, denoised: jax.Array) -> jax.Array:
  """The probability-flow ODE derivative dx/dsigma = (x - D(x; sigma)) / sigma (EDM Eq. 4)."""
  return (x - denoised) / sigma


def lam(sigma: jax.Array) -> jax.Array:
  """DPM-Solver's time t = -log sigma (half-logSNR lambda of the VE form); +inf at 0."""
  return -jnp.log(sigma)


def safe_lam(sigma: jax.Array) -> jax.Array:
  """-log sigma with sigma = 0 mapped to a finite stand-in (callers mask that case)."""
  return -jnp.log(jnp.where(sigma > 0, sigma, 1.0))


def check_options(name: str, **values: Any) -> None:
  """Raises ValueError for a concrete negative eta / s_noise (traced values pass)."""
  for key, value in values.items():
    common.check_nonnegative(value, f'{name}: {key}')


def check_choice(name: str, key: str, value: Any, valid: tuple) -> None:
  """Raises ValueError unless `value` is one of `valid`, naming the option."""
  if value not in valid:
    raise ValueError(f'{name}: {key}={value!r} is not one of {", ".join(map(repr, valid))}.')


__all__ = [
  'ADAPTIVE_KEYS',
  'OPTION_KEYS',
  'FastSampler',
  'NoiseFn',
  'ancestral_step',
  'check_choice',
  'check_options',
  'check_rng',
  'lam',
  'prepare',
  'safe_lam',
  'scan_steps',
  'to_d',
  'unit_noise',
]
