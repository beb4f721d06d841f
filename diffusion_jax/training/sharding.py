"""Device mesh and shardings for data-parallel (and optionally FSDP) training.

The mesh has two axes, ('data', 'fsdp'). The batch is split over both of them;
parameters and optimizer state are replicated when the 'fsdp' axis has size 1,
and otherwise split along their largest dimension that the 'fsdp' size divides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# Leaves smaller than this stay replicated even under FSDP: splitting them saves
# nothing and costs an all-gather each.
_MIN_FSDP_SIZE = 2**12


def create_mesh(fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: every device of every host).

  Args:
    fsdp: size of the 'fsdp' axis (config.training.mesh_fsdp); must divide the
      number of devices.
    devices: the devices to use; default jax.devices().

  Returns:
    The mesh, with Auto axis types (sharding propagated by XLA).
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise ValueError(
      f'config.training.mesh_fsdp={fsdp} must be >= 1 and divide the number of devices '
      f'({n}); use 1 for pure data parallelism.'
    )
  return jax.make_mesh(
    (n // fsdp, fsdp), BATCH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated sharding."""
  return NamedSharding(mesh, P())


def leaf_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
  """Replicated, or split on 'fsdp' along the largest dimension it divides."""
  fsdp = mesh.shape[FSDP_AXIS]
  if fsdp == 1 or int(np.prod(shape)) < _MIN_FSDP_SIZE:
    return replicated(mesh)
  order = sorted(range(len(shape)), key=lambda i: -shape[i])
  for axis in order:
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = FSDP_AXIS
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def tree_shardings(mesh: Mesh, abstract_tree: Any) -> Any:
  """Per-leaf shardings for a pytree of arrays or ShapeDtypeStructs."""
  return jax.tree.map(lambda x: leaf_sharding(mesh, x.shape), abstract_tree)


def check_batch_size(global_batch_size: int, num_devices: int | None = None) -> None:
  """Raises ValueError unless the global batch splits evenly over the devices."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  if global_batch_size < 1 or global_batch_size % num_devices:
    lower = max(num_devices, global_batch_size // num_devices * num_devices)
    raise ValueError(
      f'config.training.batch_size={global_batch_size} must be a positive multiple of '
      f'the device count jax.device_count()={num_devices}; use e.g. '
      f'--config.training.batch_size={lower} or {lower + num_devices}.'
    )


__all__ = [
  'BATCH_AXES',
  'DATA_AXIS',
  'FSDP_AXIS',
  'batch_sharding',
  'check_batch_size',
  'create_mesh',
  'leaf_sharding',
  'replicated',
  'tree_shardings',
]
