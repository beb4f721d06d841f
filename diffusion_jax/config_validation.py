"""Checks a whole run config once, at start, before anything is compiled.

Every registry key (model, objective, optimizer, learning-rate schedule, sampler)
and every trainer setting is checked here, so a typo fails in a second with a
message naming the config key, instead of after minutes of compilation.
"""

from __future__ import annotations

from typing import Any

import jax

from diffusion_jax import optim
from diffusion_jax import sharding as sharding_lib

REQUIRED_SECTIONS = ('data', 'model', 'diffusion', 'optim', 'training', 'sample')


class ConfigError(ValueError):
  """A config value is invalid; the message names the key and the fix."""


def _positive_int(config: Any, key: str, minimum: int = 1) -> int:
  value = config.training[key]
  if isinstance(value, bool) or int(value) != value or value < minimum:
    raise ValueError(f'config.training.{key}={value!r} must be an integer >= {minimum}.')
  return int(value)


def validate_training(config: Any, num_devices: int | None = None) -> None:
  """Checks config.training (batch split over the devices, step counts, mesh)."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  t = config.training
  batch = _positive_int(config, 'batch_size')
  sharding_lib.check_batch_size(batch, num_devices)
  for key in ('num_steps', 'log_every', 'checkpoint_every', 'keep_checkpoints'):
    _positive_int(config, key)
  _positive_int(config, 'num_sample_images')
  _positive_int(config, 'sample_every', minimum=0)
  fsdp = _positive_int(config, 'mesh_fsdp')
  if num_devices % fsdp:
    raise ValueError(
      f'config.training.mesh_fsdp={fsdp} must divide jax.device_count()={num_devices}; '
      'use 1 for pure data parallelism.'
    )
  if not isinstance(t.profile, bool):
    raise ValueError(f'config.training.profile={t.profile!r} must be True or False.')


def validate_sampler(config: Any) -> None:
  """Checks config.sample (sampler name, steps, guidance) as the objectives read it."""
  from diffusion_jax.objectives import sampling as objective_sampling

  objective_sampling.SampleSettings.from_config(config.sample)


def build_model_and_objective(config: Any) -> tuple[Any, Any]:
  """Creates the network and the objective named by the config.

  Raises:
    ValueError: naming config.model.* / config.diffusion.* keys that are invalid.
  """
  from diffusion_jax import models, objectives

  model_cfg = models.ModelConfig.from_config(config.model, config.data)
  model = models.create_model(model_cfg)
  objective = objectives.create_objective(config.diffusion, model_cfg, config.data)
  return model, objective


def validate_config(config: Any, num_devices: int | None = None) -> None:
  """Validates the whole config; raises ValueError naming the first bad key.

  Args:
    config: the run config (configs/default.py layout).
    num_devices: devices the batch is split over; default jax.device_count().

  Raises:
    ConfigError: (a ValueError) with the message of the first check that failed.
  """
  try:
    _validate(config, num_devices)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from e


def _validate(config: Any, num_devices: int | None) -> None:
  for section in REQUIRED_SECTIONS:
    if section not in config:
      raise ValueError(
        f'config.{section} is missing; start from configs/default.py, which has every section.'
      )
  validate_training(config, num_devices)
  optim.OptimConfig.from_config(config.optim, config.training.num_steps)
  build_model_and_objective(config)
  validate_sampler(config)


__all__ = [
  'ConfigError',
  'build_model_and_objective',
  'validate_config',
  'validate_sampler',
  'validate_training',
]
