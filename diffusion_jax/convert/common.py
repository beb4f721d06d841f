"""What every checkpoint format shares: the Format record and name-by-name tensor mapping.

A format module (diffusion_jax/convert/<name>.py) exports `FORMAT = Format(...)`. Its
`convert` walks our network's parameter tree and takes each tensor from the reference's
state dict by name through a `TensorTaker`, which checks shapes, transposes the layouts
(PyTorch OIHW / [out, in] -> Flax HWIO / [in, out]) and, at the end, fails on the first
reference tensor that nothing took.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

StateDict = dict[str, np.ndarray]


class ConversionError(ValueError):
  """A tensor is missing, unmapped or of the wrong shape; the message names it."""


@dataclasses.dataclass(frozen=True)
class Format:
  """One reference checkpoint format.

  Attributes:
    name: the `--from` value and `reference_forward`'s `fmt`.
    description: one line for `python -m diffusion_jax.convert --help`.
    load: path -> (state dict of numpy arrays by the reference's names, the reference
      config found in or beside the file, or None).
    model_overrides: reference config -> `config.model` / `config.data` values
      ({'model': {...}, 'data': {...}}) that build our network.
    convert: (state dict, reference config, abstract params of our network) -> params
      (`{'params': ...}`) with the same tree and shapes.
    forward: (params, reference config, inputs dict) -> output in the reference's
      layout and conventions (see `reference_forward`).
    default_config: optional (reference config, input path) -> the configs/X.py that
      fits the checkpoint, or None; the CLI uses it when --config is not given.
    reference_from_config: optional (our ConfigDict) -> the reference config its
      `model.network_kwargs` spell, or None; the CLI uses it for a file that carries no
      config of its own when --config is given.
  """

  name: str
  description: str
  load: Callable[[str], tuple[StateDict, dict[str, Any] | None]]
  model_overrides: Callable[[dict[str, Any]], dict[str, dict[str, Any]]]
  convert: Callable[[StateDict, dict[str, Any], Any], Any]
  forward: Callable[[Any, dict[str, Any], Mapping[str, Any]], np.ndarray]
  default_config: Callable[[dict[str, Any], str], str | None] | None = None
  reference_from_config: Callable[[Any], dict[str, Any] | None] | None = None


class TensorTaker:
  """Hands out a state dict's tensors by name, once each, in Flax layouts.

  Example:
    take = TensorTaker(state_dict)
    kernel = take.dense('time_embedding.linear_1.weight')  # [out, in] -> [in, out]
    take.finish()  # raises on the first tensor nobody took
  """

  def __init__(self, state_dict: Mapping[str, Any], ignore: Callable[[str], bool] | None = None):
    self._tensors = {k: np.asarray(v) for k, v in state_dict.items()}
    self._taken: set[str] = set()
    self._ignore = ignore or (lambda name: False)

  def raw(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The tensor `name` as stored; checks `shape` when given."""
    if name not in self._tensors:
      close = sorted(k for k in self._tensors if k.split('.')[0] == name.split('.')[0])[:5]
      raise ConversionError(
        f'the checkpoint has no tensor {name!r} that our network needs'
        + (f'; tensors under that prefix: {close}.' if close else '.')
      )
    value = self._tensors[name]
    if shape is not None and tuple(value.shape) != tuple(shape):
      raise ConversionError(
        f'tensor {name!r} has shape {tuple(value.shape)}, our network expects {tuple(shape)}: '
        'the config does not match the checkpoint.'
      )
    self._taken.add(name)
    return value.astype(np.float32) if value.dtype.kind == 'f' else value

  def dense(self, name: str) -> np.ndarray:
    """A torch Linear weight [out, in] as a Flax Dense kernel [in, out]."""
    return self.raw(name).T

  def conv(self, name: str) -> np.ndarray:
    """A torch Conv2d weight [O, I, kh, kw] as a Flax Conv kernel [kh, kw, I, O]."""
    return self.raw(name).transpose(2, 3, 1, 0)

  def finish(self) -> None:
    """Raises ConversionError naming the first reference tensor nothing took."""
    left = sorted(k for k in self._tensors if k not in self._taken and not self._ignore(k))
    if left:
      raise ConversionError(
        f'{len(left)} checkpoint tensor(s) map to no parameter of our network, the first '
        f'{left[0]!r} (shape {tuple(self._tensors[left[0]].shape)}): the config does not '
        'match the checkpoint.'
      )


def fill_params(
  abstract: Any, tensor: Callable[[tuple[str, ...], tuple[int, ...]], np.ndarray], network: str
) -> Any:
  """`{'params': ...}` with `abstract`'s tree: each leaf is `tensor(path, shape)`, `path` the
  leaf's module path without 'params', as a contiguous array of the leaf's dtype."""
  import jax
  from flax import traverse_util

  flat = {}
  for key_path, spec in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    path = tuple(str(getattr(k, 'key', k)) for k in key_path)
    if path[0] != 'params':
      raise ConversionError(f'unexpected variable collection {path[0]!r} in {network}.')
    flat[path] = np.ascontiguousarray(tensor(path[1:], tuple(spec.shape)), dtype=spec.dtype)
  return traverse_util.unflatten_dict(flat)


def check_tree(params: Any, abstract: Any) -> None:
  """Raises ConversionError unless `params` has `abstract`'s tree, shapes and dtypes."""
  import jax

  flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path, spec in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    name = jax.tree_util.keystr(path)
    if path not in flat:
      raise ConversionError(f'the converted parameters have no {name}.')
    if tuple(np.shape(flat[path])) != tuple(spec.shape):
      raise ConversionError(
        f'converted {name} has shape {tuple(np.shape(flat[path]))}, the network expects '
        f'{tuple(spec.shape)}.'
      )
  if len(flat) != len(jax.tree.leaves(abstract)):
    raise ConversionError('the converted parameters have leaves the network does not.')
