"""diffusers `UNet2DModel` checkpoints (google/ddpm-*) -> config.model.name='ddpm_unet'.

    python -m diffusion_jax.convert --from=diffusers_unet2d --input=ddpm-cifar10-32 \
        --workdir=workdir/ddpm_cifar10

Reads `diffusion_pytorch_model.safetensors` (or `.bin`) with the `config.json` beside it.
Our modules carry diffusers' names (diffusion_jax/models/ddpm_unet.py), so each parameter
is the tensor of the same dotted name: 'down_blocks_0/resnets_1/conv1/kernel' <-
'down_blocks.0.resnets.1.conv1.weight'. Checkpoints saved before diffusers 0.15 name the
attention projections query / key / value / proj_attn; those are read as to_q / to_k /
to_v / to_out.0, as diffusers' loader does (ModelMixin._fix_state_dict_keys_on_load).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from diffusion_jax.convert import common, networks

WEIGHT_FILES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')
# Flax names '<list>_<i>' are diffusers' ModuleList entries '<list>.<i>'.
_LISTS = ('down_blocks', 'up_blocks', 'resnets', 'attentions', 'downsamplers', 'upsamplers')
_DEPRECATED = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}
_DEPRECATED_RE = re.compile(r'^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$')
# Our configs for each google/ddpm-* checkpoint, found by a word of its name or path.
CONFIGS = {
  'cifar10': 'configs/ddpm_cifar10.py',
  'celebahq': 'configs/ddpm_celebahq256.py',
  'church': 'configs/ddpm_lsun_church256.py',
  'bedroom': 'configs/ddpm_lsun_bedroom256.py',
  'cat': 'configs/ddpm_lsun_cat256.py',
}


def _find_weights(path: str) -> str:
  """The weight file at `path`: the file itself, or the first of WEIGHT_FILES in the
  directory (or its unet/ subdirectory, a pipeline's layout)."""
  if os.path.isfile(path):
    return path
  for folder in (path, os.path.join(path, 'unet')):
    for name in WEIGHT_FILES:
      if os.path.isfile(os.path.join(folder, name)):
        return os.path.join(folder, name)
  raise FileNotFoundError(
    f'--input={path}: no {" or ".join(WEIGHT_FILES)} there (nor in its unet/ folder); pass '
    'the directory of a diffusers UNet2DModel (save_pretrained / the hub repository).'
  )


def load(path: str) -> tuple[common.StateDict, dict[str, Any] | None]:
  """(state dict as float32 numpy arrays, config.json beside the weights or None)."""
  weights = _find_weights(path)
  if weights.endswith('.safetensors'):
    from safetensors.numpy import load_file

    state = load_file(weights)
  else:
    import torch

    raw = torch.load(weights, map_location='cpu', weights_only=True)
    state = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in raw.items()}
  config_path = os.path.join(os.path.dirname(weights), 'config.json')
  config = None
  if os.path.isfile(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return {k: np.asarray(v) for k, v in state.items()}, config


def network_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
  """config.json without diffusers' bookkeeping keys ('_class_name', ...), lists as lists."""
  return {k: v for k, v in config.items() if not k.startswith('_')}


def model_overrides(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """config.model / config.data values of our network for a UNet2DModel config.json."""
  name = config.get('_class_name', 'UNet2DModel')
  if name != 'UNet2DModel':
    raise common.ConversionError(
      f"config.json has _class_name={name!r}; the diffusers_unet2d format reads 'UNet2DModel'."
    )
  size = config.get('sample_size')
  if isinstance(size, (list, tuple)):
    if len(set(size)) != 1:
      raise common.ConversionError(f'config.json sample_size={size} is not square.')
    size = size[0]
  if not isinstance(size, int):
    raise common.ConversionError(
      f'config.json has sample_size={size!r}; set it to the image size the model was trained on.'
    )
  channels = int(config.get('in_channels', 3))
  out = int(config.get('out_channels', 3))
  return {
    'model': {
      'name': 'ddpm_unet',
      'class_conditional': False,
      'learn_variance': out == 2 * channels,
      'network_kwargs': network_kwargs(config),
    },
    'data': {'image_size': size, 'num_channels': channels, 'num_classes': 0},
  }


def default_config(config: Mapping[str, Any], path: str = '') -> str | None:
  """Our config for a google/ddpm-* checkpoint, from its name, its path or its image size."""
  words = set(re.split(r'[^a-z0-9]+', f'{config.get("_name_or_path", "")} {path}'.lower()))
  for key, config_path in CONFIGS.items():
    if key in words:
      return config_path
  return CONFIGS['cifar10'] if config.get('sample_size') == 32 else None


def torch_name(path: tuple[str, ...]) -> tuple[str, str]:
  """(diffusers tensor name, layout) of our parameter at module path + leaf name."""
  *modules, leaf = path
  parts = []
  for m in modules:
    match = re.fullmatch(r'(.+)_(\d+)', m)
    if match and (match.group(1) in _LISTS or m == 'to_out_0'):
      parts += [match.group(1), match.group(2)]
    else:
      parts.append(m)
  prefix = '.'.join(parts)
  if leaf == 'bias':
    return f'{prefix}.bias', 'raw'
  if leaf == 'scale':  # GroupNorm
    return f'{prefix}.weight', 'raw'
  if leaf == 'kernel':
    return f'{prefix}.weight', 'kernel'
  raise common.ConversionError(f'no diffusers tensor for our parameter {"/".join(path)}.')


def rename_deprecated(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Pre-0.15 attention names (query, key, value, proj_attn) as to_q, to_k, to_v, to_out.0."""
  out = {}
  for name, value in state_dict.items():
    match = _DEPRECATED_RE.match(name)
    if match:
      name = f'{match.group(1)}.{_DEPRECATED[match.group(2)]}.{match.group(3)}'
    out[name] = value
  return out


def convert(state_dict: common.StateDict, config: dict[str, Any], abstract: Any) -> Any:
  """Our `{'params': ...}` with `abstract`'s tree, every tensor taken by name and shape."""
  del config
  take = common.TensorTaker(rename_deprecated(state_dict))

  def tensor(path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    name, layout = torch_name(path)
    if layout == 'kernel' and len(shape) == 4:  # Conv HWIO <- OIHW
      return take.raw(name, (shape[3], shape[2], shape[0], shape[1])).transpose(2, 3, 1, 0)
    if layout == 'kernel':  # Dense [in, out] <- Linear [out, in]
      return take.raw(name, (shape[1], shape[0])).T
    return take.raw(name, shape)

  params = common.fill_params(abstract, tensor, 'the DDPM U-Net')
  take.finish()
  return params


def forward(params: Any, config: dict[str, Any], inputs: Mapping[str, Any]) -> np.ndarray:
  """`UNet2DModel(**config)(x_nchw, timesteps).sample` computed by our network (NCHW)."""
  x = np.asarray(inputs['x_nchw'], np.float32)
  t = np.broadcast_to(np.asarray(inputs['timesteps'], np.float32), (x.shape[0],))
  out, _ = networks.apply(model_overrides(config), params, x.transpose(0, 2, 3, 1), t)
  return np.asarray(out).transpose(0, 3, 1, 2)


FORMAT = common.Format(
  name='diffusers_unet2d',
  description=(
    'diffusers UNet2DModel (google/ddpm-*): diffusion_pytorch_model.safetensors or .bin with '
    'its config.json -> ddpm_unet.'
  ),
  load=load,
  model_overrides=model_overrides,
  convert=convert,
  forward=forward,
  default_config=default_config,
)
