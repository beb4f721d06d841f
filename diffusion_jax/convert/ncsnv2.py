"""NCSNv2 `checkpoint.pth` (ermongroup/ncsnv2) -> config.model.name='ncsnv2'.

    python -m diffusion_jax.convert --from=ncsnv2 --input=exp/logs/cifar10 \
        --workdir=workdir/ncsnv2_cifar10

The reference saves `[score.state_dict(), optimizer.state_dict(), epoch, step,
ema_helper.state_dict()]` (runners/ncsn_runner.py), the model wrapped in DataParallel
(names 'module.*') and the EMA shadow (index 4, unprefixed, parameters only) when
`model.ema`. The reference samples with the EMA weights, so they are the default. Its
`config.yml` (the run's, beside the checkpoint; a dumped argparse.Namespace) gives the
network and the noise ladder. Our modules carry the reference's names
(diffusion_jax/models/ncsnv2.py): 'res2_0/conv2/conv/kernel' <- 'res2.0.conv2.conv.weight'.
The `sigmas` buffer is checked against the config's ladder and not converted: our network
returns F(x) and the score is F(x) / sigma_i (Technique 3).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from diffusion_jax.convert import common, networks
from diffusion_jax.models import ncsnv2 as ncsnv2_lib

CONFIG_FILE = 'config.yml'
# Flax names '<list>_<i>' are the reference's ModuleList entries '<list>.<i>'.
_LIST = re.compile(r'(res\d+|adapt_convs|convs)_(\d+)')
# Our config per reference data set ('LSUN' by its category).
CONFIGS = {
  'CIFAR10': 'configs/ncsnv2_cifar10.py',
  'CELEBA': 'configs/ncsnv2_celeba.py',
  'church_outdoor': 'configs/ncsnv2_church.py',
  'bedroom': 'configs/ncsnv2_bedroom.py',
  'tower': 'configs/ncsnv2_tower.py',
  'FFHQ': 'configs/ncsnv2_ffhq.py',
}


def read_config(path: str) -> dict[str, Any]:
  """A reference yml: configs/*.yml or a run's config.yml (an argparse.Namespace dump)."""
  import yaml

  class Loader(yaml.SafeLoader):
    pass

  def as_mapping(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    del suffix  # python/object:argparse.Namespace: its attributes
    return loader.construct_mapping(node, deep=True)

  Loader.add_multi_constructor('tag:yaml.org,2002:python/object:', as_mapping)
  with open(path) as f:
    config = yaml.load(f, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)
  if not isinstance(config, dict) or 'model' not in config or 'data' not in config:
    raise common.ConversionError(
      f'{path} is not an ncsnv2 config: it needs the sections data and model (configs/*.yml).'
    )
  return config


def _checkpoint_file(path: str) -> str:
  """`path` itself, or in a run directory checkpoint.pth, else its latest checkpoint_N.pth."""
  if os.path.isfile(path):
    return path
  if os.path.isfile(os.path.join(path, 'checkpoint.pth')):
    return os.path.join(path, 'checkpoint.pth')
  numbered = glob.glob(os.path.join(path, 'checkpoint_*.pth'))
  steps = [int(m.group(1)) for f in numbered if (m := re.search(r'checkpoint_(\d+)\.pth$', f))]
  if not steps:
    raise FileNotFoundError(
      f'--input={path}: no checkpoint.pth or checkpoint_<step>.pth there; pass the file or '
      'the run directory (exp/logs/<doc>).'
    )
  return os.path.join(path, f'checkpoint_{max(steps)}.pth')


def load_checkpoint(path: str, use_ema: bool = True) -> tuple[common.StateDict, dict | None]:
  """(state dict by the unwrapped model's names, config.yml beside the file or None).

  `use_ema`: the EMA shadow (states[4]) with the buffers of states[0], as the reference
  samples; False: the raw weights states[0]. A checkpoint without EMA gives states[0].
  """
  import torch

  file = _checkpoint_file(path)
  states = torch.load(file, map_location='cpu', weights_only=True)
  if isinstance(states, Mapping):  # a bare state_dict() export
    states = [states]
  if not isinstance(states, (list, tuple)) or not isinstance(states[0], Mapping):
    raise common.ConversionError(
      f'{file} is not an ncsnv2 checkpoint: expected [state_dict, optimizer, epoch, step, ema].'
    )
  strip = lambda name: name[len('module.') :] if name.startswith('module.') else name
  state = {strip(k): v for k, v in states[0].items()}
  if use_ema and len(states) > 4 and isinstance(states[4], Mapping):
    shadow = {strip(k): v for k, v in states[4].items()}
    unknown = sorted(set(shadow) - set(state))
    if unknown:
      raise common.ConversionError(
        f'{file}: EMA tensor {unknown[0]!r} is not a parameter of the saved model.'
      )
    state.update(shadow)
  arrays = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
  config_path = os.path.join(os.path.dirname(file), CONFIG_FILE)
  config = read_config(config_path) if os.path.isfile(config_path) else None
  return arrays, config


def load(path: str) -> tuple[common.StateDict, dict[str, Any] | None]:
  """`load_checkpoint(path)` with the EMA weights (the reference's sampling weights)."""
  return load_checkpoint(path, use_ema=True)


def _sections(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  data, model = config.get('data'), config.get('model')
  if not isinstance(data, Mapping) or not isinstance(model, Mapping):
    raise common.ConversionError(
      "the ncsnv2 config needs the yml's sections {'data': {...}, 'model': {...}}."
    )
  return dict(data), dict(model)


def network_kwargs(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """The yml's network as config.model.network_kwargs, in our configs' form: the network
  by name (from data.dataset as the reference's get_model picks it) and its settings."""
  data, model = _sections(config)
  arch = model.get('arch', ncsnv2_lib.DATASET_ARCHITECTURE.get(data.get('dataset')))
  if arch is None:
    raise common.ConversionError(
      f'data.dataset={data.get("dataset")!r} names no NCSNv2 network; the reference builds one '
      f'for {tuple(ncsnv2_lib.DATASET_ARCHITECTURE)} (runners/ncsn_runner.py get_model).'
    )
  if model.get('spec_norm', False):
    raise common.ConversionError('model.spec_norm=true: spectral norm is not ported.')
  if 'ngf' not in model:
    raise common.ConversionError('the ncsnv2 config needs model.ngf.')
  return {
    'model': {
      'arch': arch,
      'ngf': model['ngf'],
      'normalization': model.get('normalization', 'InstanceNorm++'),
      'nonlinearity': model.get('nonlinearity', 'elu'),
    },
    'data': {
      'logit_transform': data.get('logit_transform', False),
      'rescaled': data.get('rescaled', False),
    },
  }


def sigmas(config: Mapping[str, Any]) -> np.ndarray:
  """models/__init__.py get_sigmas: the L levels, largest first, float32."""
  _, model = _sections(config)
  begin, end, num = float(model['sigma_begin']), float(model['sigma_end']), model['num_classes']
  dist = model.get('sigma_dist', 'geometric')
  if dist == 'geometric':
    values = np.exp(np.linspace(np.log(begin), np.log(end), num))
  elif dist == 'uniform':
    values = np.linspace(begin, end, num)
  else:
    raise common.ConversionError(f"model.sigma_dist={dist!r} must be 'geometric' or 'uniform'.")
  return values.astype(np.float32)


def run_overrides(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """config.diffusion / config.sample values of the yml's ladder and sampler."""
  data, model = _sections(config)
  if model.get('sigma_dist', 'geometric') != 'geometric':
    raise common.ConversionError("our ncsn objective's ladder is geometric (model.sigma_dist).")
  sampling = dict(config.get('sampling', {}))
  sample = {'sampler': 'langevin', 'num_steps': int(model['num_classes']), 'clip_x0': True}
  if 'step_lr' in sampling:
    sample['step_lr'] = float(sampling['step_lr'])
  if 'n_steps_each' in sampling:
    sample['n_steps_each'] = int(sampling['n_steps_each'])
  diffusion = {
    'objective': 'ncsn',
    'sigma_max': float(model['sigma_begin']),
    'sigma_min': float(model['sigma_end']),
    'num_levels': int(model['num_classes']),
    'data_range': 'symmetric' if data.get('rescaled', False) else 'unit',
  }
  return {'diffusion': diffusion, 'sample': sample}


def model_overrides(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """config.model / config.data values of our network for a reference yml, and the
  config.diffusion / config.sample values of its ladder and sampler (`run_overrides`)."""
  data, _ = _sections(config)
  for key in ('image_size', 'channels'):
    if not isinstance(data.get(key), int):
      raise common.ConversionError(f'the ncsnv2 config needs data.{key} (an int).')
  return {
    'model': {
      'name': 'ncsnv2',
      'class_conditional': False,
      'network_kwargs': network_kwargs(config),
    },
    'data': {'image_size': data['image_size'], 'num_channels': data['channels'], 'num_classes': 0},
    **run_overrides(config),
  }


def default_config(config: Mapping[str, Any], path: str = '') -> str | None:
  """Our config for a published checkpoint, from the yml's data set (LSUN: its category)."""
  del path
  data = dict(config.get('data', {}))
  key = data.get('category') if data.get('dataset') == 'LSUN' else data.get('dataset')
  return CONFIGS.get(key)


def torch_name(path: tuple[str, ...]) -> str:
  """The reference tensor name of our parameter at module path + leaf name."""
  *modules, leaf = path
  parts = [_LIST.sub(r'\1.\2', m) if _LIST.fullmatch(m) else m for m in modules]
  leaf = {'kernel': 'weight'}.get(leaf, leaf)  # bias, alpha, gamma, beta keep their names
  return '.'.join([*parts, leaf])


def convert(state_dict: common.StateDict, config: dict[str, Any], abstract: Any) -> Any:
  """Our `{'params': ...}` with `abstract`'s tree, every tensor taken by name and shape."""
  take = common.TensorTaker(state_dict, ignore=lambda name: name == 'sigmas')
  if 'sigmas' in state_dict:
    saved, expected = np.asarray(state_dict['sigmas'], np.float64), sigmas(config)
    if saved.shape != expected.shape or not np.allclose(saved, expected, rtol=1e-5):
      raise common.ConversionError(
        f"tensor 'sigmas' {saved.shape} is not the config's ladder (model.sigma_begin, "
        f'sigma_end, num_classes give {expected.shape}): the config does not match the checkpoint.'
      )

  def tensor(path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    name = torch_name(path)
    if path[-1] == 'kernel':  # Conv HWIO <- OIHW
      return take.raw(name, (shape[3], shape[2], shape[0], shape[1])).transpose(2, 3, 1, 0)
    return take.raw(name, shape)

  params = common.fill_params(abstract, tensor, 'the NCSNv2 RefineNet')
  take.finish()
  return params


def forward(params: Any, config: dict[str, Any], inputs: Mapping[str, Any]) -> np.ndarray:
  """The reference's `score(x, y)`: F(x) / sigmas[y], NCHW, x in [0, 1] (`x_nchw_01`)."""
  x = np.asarray(inputs['x_nchw_01'], np.float32)
  index = np.broadcast_to(np.asarray(inputs['sigma_index'], np.int64), (x.shape[0],))
  levels = sigmas(config)
  if index.min() < 0 or index.max() >= levels.shape[0]:
    raise ValueError(f'sigma_index must lie in [0, {levels.shape[0]}), got {index.tolist()}.')
  zeros = np.zeros((x.shape[0],), np.float32)
  out, _ = networks.apply(model_overrides(config), params, x.transpose(0, 2, 3, 1), zeros)
  out = np.asarray(out).transpose(0, 3, 1, 2)
  return out / levels[index][:, None, None, None]


FORMAT = common.Format(
  name='ncsnv2',
  description=(
    'NCSNv2 (ermongroup/ncsnv2): checkpoint.pth (EMA weights) with the config.yml beside it '
    '-> ncsnv2.'
  ),
  load=load,
  model_overrides=model_overrides,
  convert=convert,
  forward=forward,
  default_config=default_config,
)
