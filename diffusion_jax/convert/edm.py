"""EDM network pickles (`edm-*.pkl`) or state_dict exports -> edm_songunet / edm_dhariwalunet.

    python -m diffusion_jax.convert --from=edm --input=edm-cifar10-32x32-cond-vp.pkl \
        --workdir=workdir/edm_cifar10
    out = reference_forward('edm', {'precond': 'EDMPrecond', 'img_resolution': 32,
                                    'img_channels': 3, 'label_dim': 10, **network_kwargs},
                            state_dict, {'x_nchw': x, 'sigma': s, 'class_labels_onehot': y})

EDM pickles `{'ema': <VPPrecond | VEPrecond | EDMPrecond>, ...}` whose classes are
`torch_utils.persistence` wrappers: each object is `_reconstruct_persistent_obj(meta)`
with the module's source code, the class name and the instance state (parameters,
buffers, submodules, constructor kwargs). `load` reads that pickle as data, without the
EDM repository and without running the embedded source: a restricted Unpickler turns
every persistent object and every torch.nn container into a record of its state and
rebuilds only tensors, through torch's own rebuild functions (storages with
`torch.load(weights_only=True)`). A `.pt`/`.pth` `state_dict()` export is accepted too,
with the constructor kwargs in `<name>.json` ({'precond': 'EDMPrecond', ...}) or given
to the CLI as --reference_config.

Our parameter names are the reference's (diffusion_jax/models/edm_networks.py):
`model.enc.32x32_block0.conv0.weight` is `enc_32x32_block0/conv0/kernel` (OIHW -> HWIO),
Linear [out, in] -> [in, out], GroupNorm weight -> scale, `qkv` -> `qkv_conv`. The
resampling filters (buffers) are checked against the config's `resample_filter`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from diffusion_jax.convert.common import (
  ConversionError,
  Format,
  StateDict,
  TensorTaker,
  fill_params,
)

PRECOND_KINDS = {'EDMPrecond': 'edm', 'VPPrecond': 'vp', 'VEPrecond': 've'}
MODEL_NAMES = {'SongUNet': 'edm_songunet', 'DhariwalUNet': 'edm_dhariwalunet'}
DEFAULT_MODEL_TYPE = {
  'EDMPrecond': 'DhariwalUNet',
  'VPPrecond': 'SongUNet',
  'VEPrecond': 'SongUNet',
}
# Constructor kwargs of each preconditioning that are not the network's.
PRECOND_KWARGS = {
  'EDMPrecond': ('sigma_min', 'sigma_max', 'sigma_data'),
  'VPPrecond': ('beta_d', 'beta_min', 'M', 'epsilon_t'),
  'VEPrecond': ('sigma_min', 'sigma_max'),
}
IGNORED_KWARGS = ('use_fp16',)  # our forward runs in config.model.dtype
# Our configs for the published checkpoints: (model_type, embedding_type, resolution).
CONFIGS = {
  ('SongUNet', 'positional', 32): 'configs/edm_cifar10_vp.py',
  ('SongUNet', 'fourier', 32): 'configs/edm_cifar10_ve.py',
  ('DhariwalUNet', None, 64): 'configs/edm_imagenet64_adm.py',
}
_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'freqs': 'freqs'}

# ---------------------------------------------------------------------------------------
# The pickle as data.


class PersistentRecord:
  """A `torch_utils.persistence` object of the pickle: class name, source and state."""

  def __init__(self, meta: Any):
    meta = dict(meta) if isinstance(meta, Mapping) else {}
    self.class_name = meta.get('class_name')
    self.module_src = meta.get('module_src')
    self.state = dict(meta.get('state') or {})


class Record:
  """Any other class of the pickle (torch.nn containers, EasyDict, ...): its state only."""

  where = '?'

  def __init__(self, *args: Any, **kwargs: Any):
    self.args, self.kwargs, self.items, self.state = args, kwargs, {}, {}

  def __setstate__(self, state: Any) -> None:
    self.state = state if isinstance(state, dict) else {'_state': state}

  def __setitem__(self, key: Any, value: Any) -> None:
    self.items[key] = value

  def append(self, value: Any) -> None:
    self.items[len(self.items)] = value

  def extend(self, values: Any) -> None:
    for v in values:
      self.append(v)


def _load_storage(b: bytes) -> Any:
  """torch.storage._load_from_bytes, restricted to tensors (weights_only)."""
  import torch

  return torch.load(io.BytesIO(b), weights_only=True, map_location='cpu')


class _Unpickler(pickle.Unpickler):
  """Rebuilds tensors with torch; every other class becomes a Record, no code runs."""

  _records: dict[tuple[str, str], type] = {}

  def find_class(self, module: str, name: str) -> Any:
    import collections
    import copyreg

    import torch

    if (module, name) == ('torch_utils.persistence', '_reconstruct_persistent_obj'):
      return PersistentRecord
    if (module, name) == ('torch.storage', '_load_from_bytes'):
      return _load_storage
    if module == 'torch._utils' and name.startswith('_rebuild_'):
      return getattr(torch._utils, name)
    if module == 'torch' and (name.endswith('Storage') or name in ('Size', 'device')):
      return getattr(torch, name)
    if module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype):
      return getattr(torch, name)
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if (module, name) == ('copyreg', '_reconstructor'):
      return copyreg._reconstructor
    if module == 'builtins' and name in ('set', 'frozenset', 'object', 'slice', 'complex'):
      return getattr(__import__('builtins'), name)
    if module.split('.')[0] == 'numpy' and name in ('_reconstruct', 'scalar', 'dtype', 'ndarray'):
      return super().find_class(module, name)
    key = (module, name)
    if key not in self._records:
      self._records[key] = type(name, (Record,), {'where': f'{module}.{name}'})
    return self._records[key]


def read_pickle(path: str) -> Any:
  """The object tree of an EDM pickle, with records in place of its classes."""
  with open(path, 'rb') as f:
    return _Unpickler(f).load()


def _state(node: Any) -> dict:
  if isinstance(node, (PersistentRecord, Record)):
    return node.state
  raise ConversionError(f'expected a torch module in the pickle, found {type(node).__name__}.')


def module_state_dict(node: Any, prefix: str = '') -> StateDict:
  """`state_dict()` of a module record: parameters, persistent buffers, then submodules."""
  state = _state(node)
  skip = set(state.get('_non_persistent_buffers_set') or ())
  out: StateDict = {}
  for key, value in dict(state.get('_parameters') or {}).items():
    if value is not None:
      out[prefix + key] = value.detach().cpu().float().numpy()
  for key, value in dict(state.get('_buffers') or {}).items():
    if value is not None and key not in skip:
      out[prefix + key] = value.detach().cpu().float().numpy()
  for key, child in dict(state.get('_modules') or {}).items():
    if child is not None:
      out.update(module_state_dict(child, f'{prefix}{key}.'))
  return out


def _plain(value: Any) -> Any:
  if isinstance(value, Record):
    return {k: _plain(v) for k, v in {**value.items, **value.state}.items()}
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def network_from_pickle(obj: Any, path: str = '') -> tuple[StateDict, dict[str, Any]]:
  """(state dict, {'precond': class name, **constructor kwargs}) of the pickled network."""
  net = obj.get('ema') if isinstance(obj, Mapping) else obj
  if not isinstance(net, PersistentRecord) or net.class_name not in PRECOND_KINDS:
    found = getattr(net, 'class_name', type(net).__name__)
    raise ConversionError(
      f'{path} holds no EDM network (expected a dict with "ema" = one of '
      f'{tuple(PRECOND_KINDS)}, found {found}).'
    )
  kwargs = net.state.get('_init_kwargs')
  if not isinstance(kwargs, Mapping):
    raise ConversionError(
      f'{path}: the pickled {net.class_name} records no constructor kwargs; export its '
      'state_dict() to .pt with the kwargs in a JSON file beside it.'
    )
  return module_state_dict(net), {'precond': net.class_name, **_plain(kwargs)}


def load(path: str) -> tuple[StateDict, dict[str, Any] | None]:
  """An EDM `.pkl` (read as data), or a `.pt` state_dict export plus `<name>.json`."""
  if not os.path.isfile(path):
    raise ValueError(f'--input={path}: no such file (an EDM .pkl or a .pt state_dict export).')
  if path.endswith('.pkl'):
    return network_from_pickle(read_pickle(path), path)
  import torch

  obj = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(obj, Mapping) or not all(hasattr(v, 'shape') for v in obj.values()):
    raise ConversionError(f'{path} is not a state_dict() of tensors (EDMPrecond.state_dict()).')
  state_dict = {k: v.detach().cpu().float().numpy() for k, v in obj.items()}
  for candidate in (os.path.splitext(path)[0] + '.json', path + '.json'):
    if os.path.exists(candidate):
      with open(candidate) as f:
        return state_dict, json.load(f)
  return state_dict, None


# ---------------------------------------------------------------------------------------
# Reference config -> our config.


def split_config(config: Mapping[str, Any]) -> dict[str, Any]:
  """The reference config's parts: precond class, shape, precond kwargs, network kwargs."""
  from diffusion_jax.models import edm_networks

  rest = dict(config)
  precond = rest.pop('precond', None) or str(rest.pop('class_name', '')).rsplit('.', 1)[-1]
  if precond not in PRECOND_KINDS:
    raise ValueError(
      f"EDM config 'precond'={precond!r} must be one of {tuple(PRECOND_KINDS)} "
      '(iDDPMPrecond is not supported).'
    )
  rest.pop('class_name', None)
  for key in ('img_resolution', 'img_channels'):
    if key not in rest:
      raise ValueError(f'EDM config needs {key!r} (the constructor argument of {precond}).')
  shape = {k: int(rest.pop(k)) for k in ('img_resolution', 'img_channels')}
  shape['label_dim'] = int(rest.pop('label_dim', 0) or 0)
  model_type = rest.pop('model_type', DEFAULT_MODEL_TYPE[precond])
  if model_type not in MODEL_NAMES:
    raise ValueError(f"EDM config 'model_type'={model_type!r} must be one of {tuple(MODEL_NAMES)}.")
  precond_kwargs = {k: rest.pop(k) for k in PRECOND_KWARGS[precond] if k in rest}
  for key in IGNORED_KWARGS:
    rest.pop(key, None)
  defaults = (
    edm_networks.SONG_DEFAULTS if model_type == 'SongUNet' else edm_networks.DHARIWAL_DEFAULTS
  )
  unknown = sorted(set(rest) - set(defaults))
  if unknown:
    raise ValueError(
      f'EDM config has {unknown}, which {precond} / {model_type} do not take; valid network '
      f'keys: {sorted(defaults)}.'
    )
  network = {k: tuple(v) if isinstance(v, list) else v for k, v in {**defaults, **rest}.items()}
  return dict(
    precond=precond, model_type=model_type, precond_kwargs=precond_kwargs, network=network, **shape
  )


def model_overrides(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """config.model / config.data (and config.diffusion's precond) values for the checkpoint."""
  parts = split_config(config)
  network = parts['network']
  diffusion = {'objective': 'edm', 'precond': PRECOND_KINDS[parts['precond']]}
  if 'sigma_data' in parts['precond_kwargs']:
    diffusion['sigma_data'] = float(parts['precond_kwargs']['sigma_data'])
  return {
    'model': {
      'name': MODEL_NAMES[parts['model_type']],
      'network_kwargs': network,
      'augment_dim': int(network['augment_dim']),
      'class_conditional': parts['label_dim'] > 0,
      'dropout': float(network['dropout']),  # the network reads network_kwargs.dropout
      'learn_variance': False,
      'self_cond': False,
    },
    'data': {
      'image_size': parts['img_resolution'],
      'num_channels': parts['img_channels'],
      'num_classes': parts['label_dim'],
    },
    'diffusion': diffusion,
  }


def default_config(config: Mapping[str, Any], path: str = '') -> str | None:
  """Our configs/edm_*.py for a checkpoint of this architecture and resolution; at 64x64
  the SongUNet checkpoints (FFHQ, AFHQv2) are told apart by their released file names."""
  parts = split_config(config)
  embedding = parts['network'].get('embedding_type')
  if parts['model_type'] == 'SongUNet' and parts['img_resolution'] == 64:
    name = os.path.basename(path).lower()
    data = 'ffhq' if 'ffhq' in name else 'afhq' if 'afhq' in name else None
    arch = {'positional': 'vp', 'fourier': 've'}.get(embedding)
    return f'configs/edm_{data}64_{arch}.py' if data and arch else None
  return CONFIGS.get((parts['model_type'], embedding, parts['img_resolution']))


# ---------------------------------------------------------------------------------------
# Tensors.


def torch_name(path: tuple[str, ...], prefix: str = 'model.') -> str:
  """Our parameter path (without 'params') -> the reference's state-dict name."""
  *modules, leaf = path
  parts = []
  for i, m in enumerate(modules):
    if i == 0 and m.startswith(('enc_', 'dec_')):
      parts += m.split('_', 1)  # ModuleDict key: enc.32x32_block0
    else:
      parts.append('qkv' if m == 'qkv_conv' else m)
  return prefix + '.'.join(parts + [_LEAVES[leaf]])


def reference_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if leaf == 'kernel' and len(shape) == 4:  # HWIO -> OIHW
    return (shape[3], shape[2], shape[0], shape[1])
  if leaf == 'kernel':
    return (shape[1], shape[0])
  return shape


def convert(state_dict: StateDict, config: Any, abstract: Any) -> Any:
  """`{'params': ...}` of our network from the reference state dict, tensor by tensor."""
  from diffusion_jax.models import edm_networks

  parts = split_config(config)
  prefix = 'model.' if any(k.startswith('model.') for k in state_dict) else ''
  take = TensorTaker(state_dict)

  def tensor(path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    value = take.raw(torch_name(path, prefix), reference_shape(path[-1], shape))
    if path[-1] == 'kernel':
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    return value

  params = fill_params(abstract, tensor, 'the EDM network')
  filt = edm_networks.resample_kernel(parts['network'].get('resample_filter', (1, 1)))
  for name in [k for k in state_dict if k.endswith('.resample_filter')]:
    value = take.raw(name)
    if value.shape[-2:] != filt.shape or not np.allclose(value.reshape(filt.shape), filt):
      raise ConversionError(
        f'buffer {name!r} is not the resample_filter of the config '
        f'({parts["network"].get("resample_filter")}): the config does not match the checkpoint.'
      )
  take.finish()
  return params


def precondition(config: Mapping[str, Any], sigma: np.ndarray) -> tuple[np.ndarray, ...]:
  """(c_skip, c_out, c_in, c_noise) [B] of the config's preconditioning."""
  from diffusion_jax.models import edm_precond

  parts = split_config(config)
  kind = PRECOND_KINDS[parts['precond']]
  kw = parts['precond_kwargs']
  vp = {k: float(kw[k]) for k in ('beta_d', 'beta_min') if k in kw}
  if kind == 'vp' and 'M' in kw:
    vp['M'] = int(kw['M'])
  sigma_data = float(kw.get('sigma_data', 0.5))
  cs = edm_precond.preconditioning(kind, sigma, sigma_data, **(vp if kind == 'vp' else {}))
  return tuple(np.broadcast_to(np.asarray(c, np.float32), sigma.shape) for c in cs)


def forward(params: Any, config: Any, inputs: Mapping[str, Any]) -> np.ndarray:
  """The preconditioned D(x; sigma) [B, C, H, W] of the reference's `Precond.forward`.

  inputs: `x_nchw` [B, C, H, W], `sigma` [B] or a scalar, `class_labels_onehot`
  [B, label_dim] (None = the zero vector), `augment_labels` [B, augment_dim] (optional).
  """
  from diffusion_jax import parameterization
  from diffusion_jax.convert import networks

  overrides = model_overrides(config)
  x = np.asarray(inputs['x_nchw'], np.float32).transpose(0, 2, 3, 1)
  sigma = np.broadcast_to(np.asarray(inputs['sigma'], np.float32).reshape(-1), (x.shape[0],))
  c_skip, c_out, c_in, c_noise = (c[:, None, None, None] for c in precondition(config, sigma))
  labels = inputs.get('class_labels_onehot')
  if labels is not None and overrides['data']['num_classes']:
    labels = np.asarray(labels, np.float32).reshape(x.shape[0], -1)
  else:
    labels = None
  augment = inputs.get('augment_labels')
  augment = None if augment is None else np.asarray(augment, np.float32)
  noise_level = parameterization.NOISE_LEVEL_SCALE * c_noise.reshape(-1)
  f, _ = networks.apply(overrides, params, c_in * x, noise_level, labels, augment=augment)
  d = c_skip * x + c_out * np.asarray(f, np.float32)
  return d.transpose(0, 3, 1, 2)


FORMAT = Format(
  name='edm',
  description='EDM network pickle (edm-*.pkl, read as data) or state_dict .pt + kwargs JSON',
  load=load,
  model_overrides=model_overrides,
  convert=convert,
  forward=forward,
  default_config=default_config,
)
