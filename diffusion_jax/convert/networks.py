"""Our network for a reference config: the Model and its abstract parameters."""

from __future__ import annotations

from typing import Any

import jax

from diffusion_jax import models
from diffusion_jax.config import build_model_config


def build_model(overrides: dict[str, dict[str, Any]]) -> models.Model:
  """The Model for `Format.model_overrides(config)` ({'model': {...}, 'data': {...}})."""
  data = {'image_size': 32, 'num_channels': 3, 'num_classes': 0, **overrides.get('data', {})}
  return models.create_model(build_model_config(overrides.get('model', {}), data))


def abstract_params(overrides: dict[str, dict[str, Any]]) -> Any:
  """ShapeDtypeStructs of the params `build_model(overrides)` initialises."""
  model = build_model(overrides)
  return model.param_shapes(batch_size=1)


def apply(overrides: dict[str, dict[str, Any]], params: Any, *args: Any, **kwargs: Any) -> Any:
  """`build_model(overrides).apply(params, ...)`, jitted once per network."""
  model = build_model(overrides)
  return jax.jit(model.apply, static_argnames=('train',))(params, *args, **kwargs)
