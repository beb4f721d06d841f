"""Where the logical weights live in a params tree: stacked layers and fused projections.

Two storage choices make one array hold several of the reference's variables:
- Scanned layers (`model.scan_layers=True`): the RIN's `blocks` and, inside each block,
  `compute` are `nn.scan` modules, so every parameter under them carries one leading axis
  per scan ([num_blocks] under `blocks`, [num_blocks, num_compute_layers] under
  `blocks/compute`). Unrolled, the same weights are `block_{i}` / `compute_{k}`.
- Fused projections (`layers.SelfAttention.qkv`, `layers.CrossAttention.kv`): one
  DenseGeneral with features (n, H, Dh) instead of n separate query / key / value
  projections (kernel [D, n, H, Dh], bias [n, H, Dh]).

Per-variable rules of the reference code (LAMB's trust ratio, weight-decay masks) must see
one slice per layer and per q / k / v projection. `weight_axes` says which axes of a leaf
index those separate weights; `stack_layers` / `unstack_layers` convert a params tree
between the scanned and unrolled layouts (e.g. to load a checkpoint into the other one).

Source: Jabri et al. 2022 (RIN) reference code (pix2seq `architectures/tape.py`), whose
attention is Keras `MultiHeadAttention` with separate query / key / value / output kernels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

# Scanned module name -> name prefix of its unrolled copies (`blocks` <-> `block_{i}`).
SCANNED_STACKS = {'blocks': 'block', 'compute': 'compute'}
# Fused projection module name -> number of projections in it (q, k, v or k, v).
FUSED_PROJECTIONS = {'qkv': 3, 'kv': 2}
# A fused DenseGeneral's features are (n, heads, head_dim): n is 3rd from last.
_FUSED_AXIS_FROM_END = 3


def path_names(path: Sequence[Any]) -> tuple[str, ...]:
  """The names along a `jax.tree_util` key path (dict keys, attribute names, indices)."""
  names = []
  for entry in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(entry, attr):
        names.append(str(getattr(entry, attr)))
        break
    else:
      names.append(str(entry))
  return tuple(names)


def num_stacked_axes(path: Sequence[Any]) -> int:
  """Leading layer axes of a leaf: one per scanned module (`blocks`, `compute`) above it."""
  return sum(name in SCANNED_STACKS for name in path_names(path)[:-1])


def weight_axes(path: Sequence[Any], shape: Sequence[int]) -> tuple[int, ...]:
  """Axes of a parameter leaf that index separate logical weights.

  The leading stacked axes of scanned layers, plus the projection axis of a fused
  `qkv` / `kv` kernel or bias. A slice that fixes these axes is one variable of the
  reference code (one layer's query kernel, say).

  Args:
    path: the leaf's key path in the params tree.
    shape: the leaf's shape.

  Returns:
    Sorted axis indices; () for an ordinary single weight.

  Raises:
    ValueError: if the shape cannot hold the layout its path implies.
  """
  names = path_names(path)
  stacked = num_stacked_axes(path)
  if len(shape) < stacked:
    raise ValueError(
      f'Parameter {"/".join(names)} has shape {tuple(shape)}: fewer axes than its '
      f'{stacked} scanned layer axes.'
    )
  axes = tuple(range(stacked))
  if len(names) >= 2 and names[-2] in FUSED_PROJECTIONS and names[-1] in ('kernel', 'bias'):
    fused = len(shape) - _FUSED_AXIS_FROM_END
    count = FUSED_PROJECTIONS[names[-2]]
    if fused < stacked or shape[fused] != count:
      raise ValueError(
        f'Fused projection {"/".join(names)} has shape {tuple(shape)}; expected '
        f'[..., {count}, heads, head_dim] after {stacked} layer axes.'
      )
    axes += (fused,)
  return axes


def norm_axes(path: Sequence[Any], shape: Sequence[int]) -> tuple[int, ...]:
  """The complement of `weight_axes`: axes a per-weight norm reduces over."""
  separate = weight_axes(path, shape)
  return tuple(a for a in range(len(shape)) if a not in separate)


def logical_shape(path: Sequence[Any], shape: Sequence[int]) -> tuple[int, ...]:
  """Shape of one logical weight of the leaf (its shape without `weight_axes`)."""
  return tuple(shape[a] for a in norm_axes(path, shape))


def unstack_layers(params: Any) -> Any:
  """Scanned layout -> unrolled: `blocks` -> `block_{i}`, `compute` -> `compute_{k}`.

  Args:
    params: a params tree (nested mappings of arrays), e.g. `{'params': {...}}`.

  Returns:
    A new tree of plain dicts with every scanned stack split along its leading axis;
    trees without stacks come back unchanged (as dicts).
  """
  if not isinstance(params, Mapping):
    return params
  out = {}
  for key, value in params.items():
    if key in SCANNED_STACKS:
      length = _stack_length(key, value)
      for i in range(length):
        layer = jax.tree.map(lambda x, i=i: x[i], value)
        out[f'{SCANNED_STACKS[key]}_{i}'] = unstack_layers(layer)
    else:
      out[key] = unstack_layers(value)
  return out


def stack_layers(params: Any) -> Any:
  """Unrolled layout -> scanned: `block_{i}` -> `blocks`, `compute_{k}` -> `compute`.

  Args:
    params: a params tree with unrolled layers named `<prefix>_0 ... <prefix>_{n-1}`.

  Returns:
    A new tree of plain dicts with each run of layers stacked on a new leading axis.

  Raises:
    ValueError: if the layer indices are not 0..n-1 or the layers differ in structure.
  """
  if not isinstance(params, Mapping):
    return params
  out, layers = {}, {}
  for key, value in params.items():
    match = re.fullmatch(r'(\w+)_(\d+)', str(key))
    scanned = _scanned_name(match.group(1)) if match else None
    if scanned is None:
      out[key] = stack_layers(value)
    else:
      layers.setdefault(scanned, {})[int(match.group(2))] = stack_layers(value)
  for scanned, by_index in layers.items():
    if sorted(by_index) != list(range(len(by_index))):
      raise ValueError(
        f'Layers {SCANNED_STACKS[scanned]}_* have indices {sorted(by_index)}; '
        f'expected 0..{len(by_index) - 1}.'
      )
    ordered = [by_index[i] for i in range(len(by_index))]
    out[scanned] = jax.tree.map(lambda *xs: jnp.stack(xs), *ordered)
  return out


def _scanned_name(prefix: str) -> str | None:
  for scanned, unrolled in SCANNED_STACKS.items():
    if unrolled == prefix:
      return scanned
  return None


def _stack_length(key: str, stack: Any) -> int:
  lengths = {jnp.shape(x)[0] for x in jax.tree.leaves(stack)}
  if len(lengths) != 1:
    raise ValueError(f'Scanned stack {key!r} has leaves with different layer counts {lengths}.')
  return lengths.pop()


__all__ = [
  'FUSED_PROJECTIONS',
  'SCANNED_STACKS',
  'logical_shape',
  'norm_axes',
  'num_stacked_axes',
  'path_names',
  'stack_layers',
  'unstack_layers',
  'weight_axes',
]
