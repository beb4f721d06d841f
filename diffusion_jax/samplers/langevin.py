"""NCSNv2 annealed Langevin dynamics with the final denoising step.

For each level sigma_i (largest first), T steps of
x <- x + alpha_i s(x, sigma_i) + sqrt(2 alpha_i) z, alpha_i = eps sigma_i^2 / sigma_L^2,
with the score from an EDM-form denoiser, s(x, sigma) = (D(x; sigma) - x) / sigma^2;
then x <- x + sigma_L^2 s(x, sigma_L) = D(x; sigma_L).

Source: Song & Ermon 2020 (NCSNv2), Algorithm 1, Technique 4 and the final
denoising step of appendix C.2; EDM (Karras 2022) eq. 3 for the score.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers import common
from diffusion_jax.samplers.guidance import as_stateful, x0_of


def langevin_sample(
  denoise_fn,
  x: jax.Array,
  sigmas: jax.typing.ArrayLike,
  *,
  n_steps_each: int,
  step_lr: float,
  rng: jax.Array,
  final_denoise: bool = True,
  init_state: Any = None,
  return_trajectory: common.TrajectorySpec = False,
):
  """Annealed Langevin dynamics over decreasing noise levels.

  Source: Song & Ermon 2020 (NCSNv2), Algorithm 1 with Technique 4's step size.

  Args:
    denoise_fn: EDM-form data-space denoiser `(x, sigma) -> x0` (or stateful
      with `init_state`).
    x: starting point, e.g. uniform noise or sigmas[0] * N(0, I); any shape.
    sigmas: [L] strictly decreasing positive levels, e.g.
      `schedules.geometric_sigmas(sigma_max, sigma_min, L)`.
    n_steps_each: Langevin steps per level, T >= 1.
    step_lr: eps > 0, the step size at the last level; choose it with
      `schedules.ncsn_solve_step_size(ratio, sigma_min, T)` (Technique 4).
    rng: PRNG key.
    final_denoise: end with x <- D(x; sigma_L) (the final denoising step).
    init_state: starting state of a stateful denoiser.
    return_trajectory: False, True or state indices; state k (1 <= k <= L T) is
      x after k Langevin steps (k = i T ends level i), state L T + 1 the
      denoised result when `final_denoise`.

  Returns:
    The sample, or `(sample, trajectory [K, *x.shape])`.
  """
  steps = common.check_steps(n_steps_each, 'n_steps_each')
  common.check_sigmas(sigmas, allow_final_zero=False)
  lr = common.concrete_or_none(step_lr)
  if lr is not None and (lr.shape != () or not lr > 0):
    raise ValueError(
      f'step_lr (eps of Technique 4) must be a positive scalar; got {step_lr!r}. '
      'Use schedules.ncsn_solve_step_size(ratio, sigma_min, n_steps_each).'
    )
  common.check_rng(rng, True, 'langevin_sample')

  sig = jnp.asarray(sigmas, jnp.float32)  # [L]
  if sig.ndim != 1:
    raise ValueError(f'sigmas must be 1-D; got shape {sig.shape}.')
  levels = sig.shape[0]
  per_step = jnp.repeat(sig, steps)  # [L T]
  alpha = jnp.asarray(step_lr, jnp.float32) * (per_step / sig[-1]) ** 2
  n = levels * steps
  x = jnp.asarray(x)
  fn, state = as_stateful(denoise_fn, init_state)
  total = n + (1 if final_denoise else 0)
  recorder = common.TrajectoryRecorder(common.trajectory_indices(return_trajectory, total), x)

  def body(carry, c):
    x, state, buf = carry
    k, sigma, a = c
    out, state = fn(x, sigma, state)
    score = (x0_of(out) - x) / sigma**2
    z = jax.random.normal(jax.random.fold_in(rng, k), x.shape, x.dtype)
    x = x + a * score + jnp.sqrt(2.0 * a) * z
    buf = recorder.record(buf, k + 1, x)
    return (x, state, buf), None

  xs = (jnp.arange(n, dtype=jnp.int32), per_step, alpha)
  (x, state, buf), _ = jax.lax.scan(body, (x, state, recorder.init(x)), xs)
  if final_denoise:
    out, state = fn(x, sig[-1], state)
    x = x0_of(out)
    buf = recorder.record(buf, jnp.int32(n + 1), x)
  if recorder.enabled:
    return x, buf
  return x


def langevin_variance_recursion(
  ratio: float, eps: float, sigma_min: float, num_levels: int, num_steps: int
) -> np.ndarray:
  """Predicted Var[x] / sigma_i^2 at the end of each level for one data point (float64 [L]).

  Starts level 1 from variance (ratio sigma_1)^2, as Proposition 3 assumes, and
  carries each level's end variance into the next, so level 1 equals
  `schedules.ncsn_variance_ratio` and later levels show how errors compound.

  Source: Song & Ermon 2020 (NCSNv2), Proposition 3 (its recursion, level by level).
  """
  a = eps / sigma_min**2
  out = np.empty((num_levels,))
  start = ratio**2  # Var / sigma_i^2 at the start of the level
  for i in range(num_levels):
    v = start
    for _ in range(num_steps):
      v = (1.0 - a) ** 2 * v + 2.0 * a
    out[i] = v
    start = v * ratio**2
  return out
