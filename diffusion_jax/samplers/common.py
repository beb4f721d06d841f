"""Shared pieces of the samplers: argument checks and trajectory recording.

Every sampler is a pure function traced inside its caller's `jax.jit`. Checks
that can be made on concrete (non-traced) arguments run at Python level, before
anything is traced, and raise `ValueError` naming the argument.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

TrajectorySpec = bool | Sequence[int]


def concrete_or_none(value: Any) -> np.ndarray | None:
  """Returns `value` as a float64 numpy array, or None if it is a tracer."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return np.asarray(value, dtype=np.float64)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def check_sigmas(sigmas: Any, name: str = 'sigmas', *, allow_final_zero: bool = True) -> None:
  """Raises ValueError unless `sigmas` is a 1-D, strictly decreasing, positive grid.

  Traced grids cannot be checked and are accepted as they are.

  Args:
    sigmas: the noise levels, largest first.
    name: the argument name used in the error message.
    allow_final_zero: whether the last entry may be exactly 0 (EDM's sigma_N).
  """
  s = concrete_or_none(sigmas)
  if s is None:
    return
  shown = np.array2string(s.ravel(), precision=4, threshold=8, edgeitems=3, max_line_width=10**6)
  if s.ndim != 1 or s.shape[0] < 2:
    raise ValueError(
      f'{name} must be a 1-D array with at least 2 noise levels (a start and an end); '
      f'got shape {s.shape}. Build one with schedules.karras_sigmas(n) for n >= 1.'
    )
  if not np.all(np.isfinite(s)):
    raise ValueError(f'{name} must be finite; got {shown}.')
  if np.any(np.diff(s) >= 0):
    raise ValueError(
      f'{name} must be strictly decreasing (largest noise level first); got {shown}. '
      'Reverse the grid or remove repeated levels.'
    )
  body = s[:-1] if allow_final_zero else s
  if np.any(body <= 0) or s[-1] < 0:
    raise ValueError(
      f'{name} must be positive'
      + (' (only the last entry may be 0)' if allow_final_zero else '')
      + f'; got {shown}.'
    )


def check_steps(steps: Any, name: str = 'steps') -> int:
  """Returns `steps` as an int, raising ValueError unless it is an integer >= 1."""
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
    raise ValueError(
      f'{name} must be a Python int >= 1 (the number of sampling steps); got {steps!r}.'
    )
  if steps < 1:
    raise ValueError(f'{name} must be >= 1 (the number of sampling steps); got {steps}.')
  return int(steps)


def check_nonnegative(value: Any, name: str) -> None:
  """Raises ValueError if a concrete scalar `value` is negative or not finite."""
  v = concrete_or_none(value)
  if v is None:
    return
  if v.shape != () or not np.isfinite(v) or v < 0:
    raise ValueError(f'{name} must be a finite scalar >= 0; got {value!r}.')


def check_rng(rng: Any, needed: bool, sampler: str) -> None:
  """Raises ValueError when a stochastic sampler is called without an rng key."""
  if needed and rng is None:
    raise ValueError(
      f'rng is required by {sampler} (it draws fresh noise every step); '
      'pass rng=jax.random.key(seed).'
    )


def trajectory_indices(spec: TrajectorySpec, num_steps: int) -> np.ndarray | None:
  """Which states to record: indices into x_0 (the start) .. x_{num_steps} (the result).

  Args:
    spec: False (none), True (every state), or a sequence of indices in
      [0, num_steps]; negative indices count from the end as in Python.
    num_steps: the number of sampler steps.

  Returns:
    A sorted int array of unique indices, or None for no trajectory.
  """
  if spec is False or spec is None:
    return None
  if spec is True:
    return np.arange(num_steps + 1)
  idx = np.asarray(list(spec), dtype=np.int64)
  if idx.ndim != 1 or idx.size == 0:
    raise ValueError(
      f'return_trajectory must be a bool or a non-empty sequence of step indices; got {spec!r}.'
    )
  idx = np.where(idx < 0, idx + num_steps + 1, idx)
  if np.any(idx < 0) or np.any(idx > num_steps):
    raise ValueError(
      f'return_trajectory indices must lie in [0, {num_steps}] (0 = the starting state, '
      f'{num_steps} = the result) or [-{num_steps + 1}, -1]; got {list(spec)}.'
    )
  return np.unique(idx)


class TrajectoryRecorder:
  """Records chosen loop states into a preallocated buffer carried through a scan.

  Only the requested states are stored, so a 1000-step sampler that records
  5 states holds 5 copies of x, not 1000.
  """

  def __init__(self, indices: np.ndarray | None, x: jax.Array):
    self.indices = indices
    if indices is None:
      self.slots = None
      return
    # slots[i] = position of state i in the buffer, or -1 when it is not recorded.
    num_states = int(indices.max()) + 1
    slots = np.full((num_states,), -1, np.int32)
    slots[indices] = np.arange(indices.size, dtype=np.int32)
    self.slots = slots
    self.x_shape, self.x_dtype = x.shape, x.dtype

  @property
  def enabled(self) -> bool:
    return self.indices is not None

  def init(self, x: jax.Array) -> jax.Array | None:
    """The empty buffer, with the starting state written if it is requested."""
    if not self.enabled:
      return None
    buf = jnp.zeros((self.indices.size, *x.shape), x.dtype)  # [K, *x.shape]
    if self.indices[0] == 0:
      buf = buf.at[0].set(x)
    return buf

  def record(self, buf: jax.Array | None, state_index: jax.Array, x: jax.Array) -> jax.Array | None:
    """Writes x into the buffer when `state_index` (traced int) is a recorded state."""
    if not self.enabled:
      return None
    slots = jnp.asarray(self.slots)
    in_range = state_index < slots.shape[0]
    slot = jnp.where(in_range, slots[jnp.minimum(state_index, slots.shape[0] - 1)], -1)
    safe = jnp.maximum(slot, 0)
    new = jnp.where(slot >= 0, x, buf[safe])
    return jax.lax.dynamic_update_index_in_dim(buf, new, safe, axis=0)
