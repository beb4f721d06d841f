"""EDM2's post-hoc EMA: power-function EMA profiles and their least-squares recombination.

Source: Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", Sec. 3 and App. C.1-C.2 (reference: NVlabs/edm2 `training/phema.py`,
`reconstruct_phema.py`).

A power-function EMA of exponent gamma averages the parameters theta_tau of steps
tau <= t with the weight profile p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1); its
relative standard deviation (the std of tau / t) names it. Training tracks a few such
profiles (config.training.phema_stds) and snapshots them every
config.training.phema_snapshot_every steps. After training, the EMA of any other std at
a snapshot time is the linear combination of the stored snapshots whose profiles best
match the wanted profile in L2, a small linear system of the profiles' inner products
(App. C.2).

    stds = (0.05, 0.10)
    profiles = init(params, stds)
    profiles = update(profiles, params, step + 1, stds)  # inside the train step
    coefs = solve(in_steps, in_stds, out_step, 0.08)  # after training
    params_008 = combine(coefs, snapshots)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.training import checkpointing

# Relative stds up to 0.3 have a profile (gamma > -1; the largest is 0.3003 at -0.38).
MAX_STD = 0.3


def gamma_to_std(gamma: Any) -> np.ndarray:
  """Relative std of the power-function profile of exponent gamma (App. C.1, Eq. 123).

  sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))), the std of tau / t when
  tau has density proportional to tau^gamma on [0, t].
  """
  gamma = np.asarray(gamma, np.float64)
  return np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def std_to_gamma(std: Any) -> np.ndarray:
  """Exponent gamma of the profile whose relative std is `std` (App. C.1, Eq. 126, Alg. 2).

  Eq. 123 rearranged: gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) = 0; gamma is
  its largest real root (std 0.05 -> 16.97, std 0.10 -> 6.94; std > 0.2887 gives
  -1 < gamma < 0).
  """
  std = np.asarray(std, np.float64)
  if np.any(~(std > 0)) or np.any(~(std < MAX_STD)):
    raise ValueError(
      f'post-hoc EMA std {std.tolist()} must lie in (0, {MAX_STD}); set '
      'config.training.phema_stds / --phema_std in that range, e.g. 0.05 to 0.15.'
    )
  inv = std.reshape(-1) ** -2
  roots = [np.roots([1.0, 7.0, 16.0 - s, 12.0 - s]).real.max() for s in inv]
  return np.asarray(roots, np.float64).reshape(std.shape)


def ema_coefficients(t: jax.Array, gamma: float) -> tuple[jax.Array, jax.Array]:
  """(beta_t, 1 - beta_t) with beta_t = (1 - 1/t)^(gamma + 1) (App. C.1, Eq. 127).

  t is the number of updates including this one (t = 1 gives beta = 0: the average
  starts at the first trained parameters). Computed through log1p / expm1 so 1 - beta
  keeps its float32 precision at millions of steps.
  """
  log_beta = (gamma + 1.0) * jnp.log1p(-1.0 / jnp.asarray(t, jnp.float32))
  return jnp.exp(log_beta), -jnp.expm1(log_beta)


def init(params: Any, stds: Sequence[float]) -> tuple[Any, ...]:
  """One copy of `params` per std (the first update overwrites them)."""
  return tuple(jax.tree.map(jnp.copy, params) for _ in stds)


def update(
  profiles: tuple[Any, ...], params: Any, t: jax.Array, stds: Sequence[float]
) -> tuple[Any, ...]:
  """Advances every power-function EMA to step t: ema <- beta_t ema + (1 - beta_t) params.

  Args:
    profiles: the averages after step t - 1, one parameter pytree per std; `()` when
      post-hoc EMA is off (then `()` is returned).
    params: the parameters after step t.
    t: updates so far including this one (state.step + 1); int or scalar array.
    stds: the profiles' relative stds (static), in the order of `profiles`.
  """
  if not profiles:
    return ()
  if len(profiles) != len(stds):
    raise ValueError(
      f'{len(profiles)} post-hoc EMA profiles for config.training.phema_stds={tuple(stds)}.'
    )
  return tuple(
    _lerp(ema, params, *ema_coefficients(t, gamma))
    for ema, gamma in zip(profiles, std_to_gamma(stds).tolist())
  )


def _lerp(ema: Any, params: Any, beta: jax.Array, weight: jax.Array) -> Any:
  return jax.tree.map(lambda e, p: (beta * e + weight * p).astype(e.dtype), ema, params)


def response(t: int, std: float) -> np.ndarray:
  """Weights [t] of theta_1..theta_t in the EMA tracked by `update` at step t (float64).

  Unrolling Eq. 127: theta_tau's weight is (tau^(gamma + 1) - (tau - 1)^(gamma + 1)) /
  t^(gamma + 1), the integral of the continuous profile p_t over (tau - 1, tau].
  """
  gamma = float(std_to_gamma(std))
  tau = np.arange(1, t + 1, dtype=np.float64) / t
  return tau ** (gamma + 1) - (tau - 1.0 / t) ** (gamma + 1)


def inner_products(a_t: Any, a_std: Any, b_t: Any, b_std: Any) -> np.ndarray:
  """<p_a, p_b> = integral of the two power-function profiles' product (App. C.2, Eq. 151).

  For profiles ending at t_a, t_b with exponents gamma_a, gamma_b:
  (gamma_a + 1)(gamma_b + 1) / ((gamma_a + gamma_b + 1) max(t_a, t_b)) times
  (t_a / t_b)^gamma_b if t_a < t_b, else (t_b / t_a)^gamma_a. Arguments broadcast.
  """
  a_t, b_t = np.asarray(a_t, np.float64), np.asarray(b_t, np.float64)
  ga, gb = std_to_gamma(a_std), std_to_gamma(b_std)
  ratio = np.where(a_t < b_t, (a_t / b_t) ** gb, (b_t / a_t) ** ga)
  return (ga + 1) * (gb + 1) * ratio / ((ga + gb + 1) * np.maximum(a_t, b_t))


def solve(
  in_t: Sequence[float], in_std: Sequence[float], out_t: float, out_std: float
) -> np.ndarray:
  """Coefficients [n] of the stored profiles whose sum best matches the target profile.

  Least squares in L2 over tau (App. C.2, Alg. 3): the normal equations A x = b with
  A_ij = <p_i, p_j>, b_i = <p_i, p_out>; x is then rescaled to sum to 1 (the result is
  an average). Profiles that end after out_t cannot contribute and must be left out.

  Args:
    in_t: steps of the stored profiles (snapshot times, > 0).
    in_std: their relative stds.
    out_t: the step to reconstruct at.
    out_std: the relative std to reconstruct.
  """
  in_t, in_std = np.broadcast_arrays(np.asarray(in_t, np.float64), np.asarray(in_std))
  if in_t.size == 0:
    raise ValueError('phema: no stored profiles to reconstruct from.')
  if np.any(in_t <= 0) or np.any(in_t > out_t):
    raise ValueError(f'phema: stored profile steps must lie in (0, {out_t}]; got {in_t}.')
  a = inner_products(in_t[:, None], in_std[:, None], in_t[None, :], in_std[None, :])
  b = inner_products(in_t, in_std, out_t, out_std)
  x = np.linalg.lstsq(a, b, rcond=None)[0]
  return x / np.sum(x)


def residual(
  in_t: Sequence[float], in_std: Sequence[float], out_t: float, out_std: float, x: Any
) -> float:
  """Relative L2 error ||sum_i x_i p_i - p_out|| / ||p_out|| of a reconstruction."""
  in_t, in_std = np.broadcast_arrays(np.asarray(in_t, np.float64), np.asarray(in_std))
  x = np.asarray(x, np.float64)
  a = inner_products(in_t[:, None], in_std[:, None], in_t[None, :], in_std[None, :])
  b = inner_products(in_t, in_std, out_t, out_std)
  c = inner_products(out_t, out_std, out_t, out_std)
  return float(np.sqrt(max(x @ a @ x - 2 * x @ b + c, 0.0) / c))


@jax.jit
def _axpy(acc: Any, coefficient: jax.Array, tree: Any) -> Any:
  return jax.tree.map(lambda a, p: a + coefficient * p.astype(jnp.float32), acc, tree)


def combine(coefficients: Sequence[float], trees: Iterable[Any]) -> Any:
  """sum_i coefficients[i] * trees[i], accumulated in float32, in the first tree's dtypes.

  `trees` may be a generator (snapshots are loaded one at a time).
  """
  acc, dtypes = None, None
  for coefficient, tree in zip(coefficients, trees, strict=True):
    if acc is None:
      dtypes = jax.tree.map(lambda p: p.dtype, tree)
      acc = jax.tree.map(
        lambda p: jnp.zeros(p.shape, jnp.float32, device=getattr(p, 'sharding', None)), tree
      )
    acc = _axpy(acc, jnp.float32(coefficient), tree)
  if acc is None:
    raise ValueError('phema.combine: no trees.')
  return jax.tree.map(lambda a, d: a.astype(d), acc, dtypes)


def export_dir(workdir: str, std: float) -> str:
  """Where `reconstruct` writes the EMA of `std`: a run directory for --mode=sample/eval."""
  return os.path.join(checkpointing.phema_dir(workdir), f'std-{std:.3f}')


def reconstruct(
  workdir: str, abstract_params: Any, std: float, step: int | None = None
) -> tuple[str, int, float]:
  """Reconstructs the EMA of relative std `std` at a snapshot step and writes it.

  Reads workdir/phema/snapshots (one snapshot at a time), solves for the coefficients
  (`solve`) and writes the combination as the EMA parameters of a checkpoint in
  `export_dir(workdir, std)`, which --mode=sample / --mode=eval read as a workdir.

  Args:
    workdir: the training run's directory.
    abstract_params: ShapeDtypeStructs (with shardings) of the parameters.
    std: the relative std to reconstruct, in (0, MAX_STD).
    step: the snapshot step to reconstruct at; default the newest.

  Returns:
    (export directory, step, relative L2 error of the reconstructed profile).
  """
  std_to_gamma(std)  # validates
  snapshots = checkpointing.PhemaSnapshots(workdir, read_only=True)
  with snapshots:
    steps = snapshots.steps()
    if not steps:
      raise FileNotFoundError(
        f'No post-hoc EMA snapshots in {snapshots.directory}; train with '
        'config.training.phema_snapshot_every > 0 first.'
      )
    step = steps[-1] if step is None else int(step)
    if step not in steps:
      raise ValueError(f'--phema_step={step} is not a snapshot step; available: {steps}.')
    used = [s for s in steps if s <= step]
    stds = {s: snapshots.stds(s) for s in used}
    in_t = [s for s in used for _ in stds[s]]
    in_std = [v for s in used for v in stds[s]]
    x = solve(in_t, in_std, step, std)
    error = residual(in_t, in_std, step, std, x)
    logging.info(
      'Post-hoc EMA std %.3f at step %d from %d profiles of %d snapshots (profile error %.2g).',
      std,
      step,
      len(in_t),
      len(used),
      error,
    )

    def trees():
      for s in used:
        yield from snapshots.restore(s, [abstract_params] * len(stds[s]))

    params = combine(x, trees())
  out = export_dir(workdir, std)
  checkpointing.save_ema_params(out, step, params)
  return out, step, error


__all__ = [
  'combine',
  'ema_coefficients',
  'export_dir',
  'gamma_to_std',
  'init',
  'inner_products',
  'reconstruct',
  'residual',
  'response',
  'solve',
  'std_to_gamma',
  'update',
]
