"""Our network for a reference config: the Model and its abstract parameters."""

from __future__ import annotations

import functools
from typing import Any

import jax

from diffusion_jax import models
from diffusion_jax.config import build_model_config


def model_config(overrides: dict[str, dict[str, Any]]) -> models.ModelConfig:
  """The ModelConfig for `Format.model_overrides(config)` ({'model': {...}, 'data': {...}})."""
  data = {'image_size': 32, 'num_channels': 3, 'num_classes': 0, **overrides.get('data', {})}
  return build_model_config(overrides.get('model', {}), data)


def build_model(overrides: dict[str, dict[str, Any]]) -> models.Model:
  """The Model for `Format.model_overrides(config)` ({'model': {...}, 'data': {...}})."""
  return models.create_model(model_config(overrides))


def abstract_params(overrides: dict[str, dict[str, Any]]) -> Any:
  """ShapeDtypeStructs of the params `build_model(overrides)` initialises."""
  model = build_model(overrides)
  return model.param_shapes(batch_size=1)


@functools.lru_cache(maxsize=16)
def _jitted_apply(cfg: models.ModelConfig) -> Any:
  return jax.jit(models.create_model(cfg).apply, static_argnames=('train',))


def apply(overrides: dict[str, dict[str, Any]], params: Any, *args: Any, **kwargs: Any) -> Any:
  """`build_model(overrides).apply(params, ...)`, jitted once per network configuration."""
  return _jitted_apply(model_config(overrides))(params, *args, **kwargs)
