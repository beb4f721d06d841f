"""OpenAI improved-diffusion / guided-diffusion `.pt` state dicts -> `adm_unet`.

    python -m diffusion_jax.convert --from=openai_unet --input=64x64_diffusion.pt ...
    out = reference_forward('openai_unet', flags, state_dict,
                            {'x_nchw': x, 'timesteps': t, 'labels': y})

The `.pt` files hold only tensors; the model flags are the ones on the reference README
(`--image_size 64 --num_channels 192 ...`), given as `create_model`'s keyword arguments:
a dict (values may be the command-line strings, 'True', '32,16,8'), a flag string, a
JSON file beside the checkpoint (`<name>.json`), or, for the released checkpoints under
their published file names, the README's flags (RELEASED). Missing flags take the scripts'
defaults (model_and_diffusion_defaults), as on the reference command line. Diffusion
and sampling flags (diffusion_steps, noise_schedule, ...) are accepted and ignored here;
they belong in the run config. use_fp16 is ignored as well: the reference saves float32
master weights.

Our parameter names are the reference's with `_` for `.` (diffusion_jax/models/
adm_unet.py), so every tensor maps by rule; Conv2d [O, I, kh, kw] -> HWIO, Linear and the
attention's 1x1 Conv1d [O, I(, 1)] -> [I, O], GroupNorm weight -> scale.
"""

from __future__ import annotations

import json
import os
import re
import shlex
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
from diffusion_jax.models import adm_unet
from diffusion_jax.models.adm_unet import KWARG_DEFAULTS

# Flags of the reference scripts that do not shape the network.
NON_MODEL_FLAGS = frozenset(
  {
    'diffusion_steps',
    'noise_schedule',
    'timestep_respacing',
    'use_kl',
    'predict_xstart',
    'rescale_timesteps',
    'rescale_learned_sigmas',
    'sigma_small',
    'use_fp16',
    'use_ddim',
    'clip_denoised',
    'batch_size',
    'num_samples',
    'model_path',
    'microbatch',
    'lr',
  }
)
# The README flags of the released UNetModel checkpoints, by file name.
_GUIDED = (
  '--attention_resolutions 32,16,8 --diffusion_steps 1000 --learn_sigma True '
  '--resblock_updown True --use_fp16 True --use_scale_shift_norm True '
)
_GUIDED_256 = _GUIDED + '--noise_schedule linear --num_channels 256 --num_head_channels 64 '
_GUIDED_LSUN = _GUIDED_256 + '--class_cond False --image_size 256 --num_res_blocks 2 '
_IMPROVED_64 = '--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True '
_IMPROVED_64 += '--diffusion_steps 4000 --noise_schedule cosine'
_IMPROVED_32 = '--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True '
_IMPROVED_32 += '--dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine'
_IMPROVED_LSUN = (
  '--image_size 256 --num_channels 128 --num_res_blocks 2 --num_heads 1 --learn_sigma True '
  '--use_scale_shift_norm False --attention_resolutions 16 --diffusion_steps 1000 '
  '--noise_schedule linear --rescale_learned_sigmas False --rescale_timesteps False'
)
RELEASED = {
  # guided-diffusion (jul-2021).
  '64x64_diffusion.pt': _GUIDED + '--class_cond True --dropout 0.1 --image_size 64 '
  '--noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 '
  '--use_new_attention_order True',
  '128x128_diffusion.pt': _GUIDED + '--class_cond True --image_size 128 '
  '--noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2',
  '256x256_diffusion.pt': _GUIDED_256 + '--class_cond True --image_size 256 --num_res_blocks 2',
  '256x256_diffusion_uncond.pt': _GUIDED_LSUN,
  '512x512_diffusion.pt': _GUIDED_256 + '--class_cond True --image_size 512 --num_res_blocks 2',
  'lsun_bedroom.pt': _GUIDED_LSUN + '--dropout 0.1',
  'lsun_cat.pt': _GUIDED_LSUN + '--dropout 0.1',
  'lsun_horse.pt': _GUIDED_LSUN + '--dropout 0.1',
  'lsun_horse_nodropout.pt': _GUIDED_LSUN + '--dropout 0.0',
  # improved-diffusion (march-2021).
  'imagenet64_uncond_100M_1500K.pt': _IMPROVED_64,
  'imagenet64_uncond_vlb_100M_1500K.pt': _IMPROVED_64 + ' --use_kl True',
  'cifar10_uncond_50M_500K.pt': _IMPROVED_32,
  'cifar10_uncond_vlb_50M_500K.pt': _IMPROVED_32 + ' --use_kl True',
  'imagenet64_cond_270M_250K.pt': '--image_size 64 --num_channels 192 --num_res_blocks 3 '
  '--learn_sigma True --class_cond True --diffusion_steps 4000 --noise_schedule cosine '
  '--rescale_learned_sigmas False --rescale_timesteps False',
  'lsun_uncond_100M_1200K_bs128.pt': _IMPROVED_LSUN,
  'lsun_uncond_100M_2400K_bs64.pt': _IMPROVED_LSUN,
}
# Our configs for the released checkpoints.
CONFIGS = {
  '64x64_diffusion.pt': 'configs/adm_imagenet64.py',
  'cifar10_uncond_50M_500K.pt': 'configs/adm_cifar10.py',
  'cifar10_uncond_vlb_50M_500K.pt': 'configs/adm_cifar10.py',
}
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight', 'bias': 'bias'}
_CONV1D = ('qkv', 'proj_out')  # the attention's 1x1 Conv1d layers, Dense here.


def parse_flags(flags: Mapping[str, Any] | str) -> dict[str, Any]:
  """create_model's keyword arguments from a dict or a README flag string.

  Booleans and integers given as strings ('True', '192') are converted; lists stay
  comma-separated strings, as create_model takes them.
  """
  if isinstance(flags, str):
    tokens = shlex.split(flags)
    if len(tokens) % 2 or not all(t.startswith('--') for t in tokens[::2]):
      raise ValueError(f'model flags {flags!r} must be "--name value" pairs, as on the README.')
    flags = {k[2:]: v for k, v in zip(tokens[::2], tokens[1::2])}
  out: dict[str, Any] = {}
  for key, value in dict(flags).items():
    if isinstance(value, str):
      if value in ('True', 'False', 'true', 'false'):
        value = value.lower() == 'true'
      elif re.fullmatch(r'-?\d+', value):
        value = int(value)
      elif re.fullmatch(r'-?\d*\.\d+(e-?\d+)?', value):
        value = float(value)
    out[key] = value
  return out


def network_kwargs(flags: Mapping[str, Any] | str) -> dict[str, Any]:
  """The flags that shape the network, all of them (config.model.network_kwargs of adm_unet).

  Missing flags take the reference scripts' defaults (adm_unet.KWARG_DEFAULTS).
  """
  flags = parse_flags(flags)
  unknown = sorted(set(flags) - set(KWARG_DEFAULTS) - NON_MODEL_FLAGS)
  if unknown:
    raise ValueError(
      f'unknown model flag(s) {unknown} for openai_unet; create_model takes '
      f'{tuple(KWARG_DEFAULTS)}.'
    )
  model = {k: v for k, v in flags.items() if k in KWARG_DEFAULTS and k != 'use_fp16'}
  for key in ('image_size', 'num_channels', 'num_res_blocks'):
    if model.get(key) is None:
      raise ValueError(f'openai_unet needs the model flag {key!r} (see the reference README).')
  return adm_unet.canonical_kwargs(model)


def model_overrides(config: Mapping[str, Any] | str) -> dict[str, dict[str, Any]]:
  """`config.model` / `config.data` values of our `adm_unet` for the reference flags."""
  kwargs = network_kwargs(config)
  class_cond, learn_sigma = kwargs['class_cond'], kwargs['learn_sigma']
  return {
    'model': {
      'name': 'adm_unet',
      'network_kwargs': kwargs,
      'learn_variance': learn_sigma,
      'class_conditional': class_cond,
    },
    'data': {
      'image_size': kwargs['image_size'],
      'num_channels': 3,
      'num_classes': 1000 if class_cond else 0,  # script_util.NUM_CLASSES
    },
  }


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):
    value = value.detach().cpu()
    if str(value.dtype) == 'torch.bfloat16':
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def load(path: str) -> tuple[StateDict, dict[str, Any] | None]:
  """The `.pt` state dict (torch.load, weights_only) and its flags, if known.

  The flags: `<name>.json` beside the file, else the README's for a released file name.
  """
  import torch

  obj = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(obj, Mapping) or not all(hasattr(v, 'shape') for v in obj.values()):
    raise ConversionError(
      f'{path} is not a state dict of tensors (what improved / guided-diffusion save).'
    )
  state_dict = {k: _to_numpy(v) for k, v in obj.items()}
  for candidate in (os.path.splitext(path)[0] + '.json', path + '.json'):
    if os.path.exists(candidate):
      with open(candidate) as f:
        return state_dict, json.load(f)
  flags = RELEASED.get(os.path.basename(path))
  return state_dict, (parse_flags(flags) if flags else None)


def default_config(config: Mapping[str, Any], path: str = '') -> str | None:
  """Our config for a released checkpoint (by its file name), or None."""
  return CONFIGS.get(os.path.basename(path))


def torch_name(path: tuple[str, ...]) -> str:
  """Our parameter path (without 'params') -> the reference's state-dict name."""
  *modules, leaf = path
  return '.'.join([re.sub(r'_(\d+)', r'.\1', m) for m in modules] + [_LEAF_NAMES[leaf]])


def reference_layout(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """The reference tensor's shape for our parameter of `shape` at `path`."""
  if path[-1] != 'kernel':
    return shape
  if len(shape) == 4:  # HWIO -> OIHW
    return (shape[3], shape[2], shape[0], shape[1])
  return (shape[1], shape[0], 1) if path[-2] in _CONV1D else (shape[1], shape[0])


def convert(state_dict: StateDict, config: Any, abstract: Any) -> Any:
  """`{'params': ...}` of `adm_unet` from the reference state dict, tensor by tensor."""
  take = TensorTaker(state_dict)

  def tensor(path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    value = take.raw(torch_name(path), reference_layout(path, shape))
    if path[-1] == 'kernel':
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.reshape(shape[::-1]).T
    return value

  params = fill_params(abstract, tensor, 'adm_unet')
  take.finish()
  return params


def forward(params: Any, config: Any, inputs: Mapping[str, Any]) -> np.ndarray:
  """UNetModel.forward(x, timesteps, y): the raw NCHW output, learned-sigma channels included.

  inputs: `x_nchw` [B, 3, H, W], `timesteps` [B] (as the model sees them), `labels` [B]
  (class-conditional models; -1 = no class, a zero embedding).
  """
  from diffusion_jax.convert import networks

  overrides = model_overrides(config)
  x = np.asarray(inputs['x_nchw'], np.float32).transpose(0, 2, 3, 1)
  t = np.asarray(inputs['timesteps'], np.float32)
  labels = inputs.get('labels')
  labels = None if labels is None else np.asarray(labels, np.int32)
  out, _ = networks.apply(overrides, params, x, t, labels)
  return np.asarray(out).transpose(0, 3, 1, 2)


def reference_from_config(config: Any) -> dict[str, Any] | None:
  """The create_model flags of an adm_unet config (its network_kwargs), else None."""
  model = config.model
  if model.get('name') != 'adm_unet' or not model.get('network_kwargs'):
    return None
  return dict(model.network_kwargs)


FORMAT = Format(
  name='openai_unet',
  description='OpenAI improved / guided-diffusion UNetModel .pt state dict + create_model flags',
  load=load,
  model_overrides=model_overrides,
  convert=convert,
  forward=forward,
  default_config=default_config,
  reference_from_config=reference_from_config,
)
