"""Reference checkpoints -> our networks: DDPM (diffusers), ADM (OpenAI), EDM, NCSNv2.

    python -m diffusion_jax.convert --from=edm --input=net.pkl --workdir=workdir/edm
    out = reference_forward('diffusers_unet2d', config_json, state_dict, inputs)

Each format lives in its own module (`FORMAT = common.Format(...)`); torch and
safetensors (`pip install -e '.[convert]'`) are imported only to read the files.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from diffusion_jax.convert.common import ConversionError, Format, StateDict, TensorTaker

# fmt -> module under diffusion_jax.convert.
FORMAT_MODULES = {
  'diffusers_unet2d': 'diffusers_unet2d',
  'openai_unet': 'openai_unet',
  'edm': 'edm',
  'ncsnv2': 'ncsnv2',
}


def get_format(fmt: str) -> Format:
  """The Format registered as `fmt`; ValueError naming the valid ones otherwise."""
  if fmt not in FORMAT_MODULES:
    raise ValueError(f'unknown checkpoint format {fmt!r}; valid formats: {tuple(FORMAT_MODULES)}.')
  return importlib.import_module(f'diffusion_jax.convert.{FORMAT_MODULES[fmt]}').FORMAT


def reference_forward(
  fmt: str, config: dict[str, Any], state_dict: Mapping[str, Any], inputs: Mapping[str, Any]
) -> np.ndarray:
  """Converts `state_dict`, builds our network from `config`, runs it on `inputs`.

  Args:
    fmt: 'diffusers_unet2d' | 'openai_unet' | 'edm' | 'ncsnv2'.
    config: the reference's own config (config.json; create_model kwargs; EDM's
      {'precond', 'img_resolution', 'img_channels', 'label_dim', **network_kwargs};
      NCSNv2's {'data': ..., 'model': ...}).
    state_dict: numpy arrays by the reference's tensor names.
    inputs: the reference forward's inputs, NCHW (see each format's module).

  Returns:
    The output in the reference's layout and conventions (NCHW).
  """
  f = get_format(fmt)
  return f.forward(convert_state_dict(fmt, config, state_dict), config, inputs)


def convert_state_dict(fmt: str, config: dict[str, Any], state_dict: Mapping[str, Any]) -> Any:
  """Our network's `{'params': ...}` from a reference state dict (checked tree and shapes)."""
  from diffusion_jax.convert import common, networks

  f = get_format(fmt)
  abstract = networks.abstract_params(f.model_overrides(config))
  params = f.convert({k: np.asarray(v) for k, v in state_dict.items()}, config, abstract)
  common.check_tree(params, abstract)
  return params


__all__ = [
  'FORMAT_MODULES',
  'ConversionError',
  'Format',
  'StateDict',
  'TensorTaker',
  'convert_state_dict',
  'get_format',
  'reference_forward',
]
