"""The typed, frozen run config: built once at the boundary from a ConfigDict.

`build_run_config(config)` turns `configs/<experiment>.py`'s ConfigDict into a RunConfig,
a tree of frozen dataclasses (one per section), and checks every value once: an unknown
key in any section fails with a message naming the key and the closest valid one, so a
typo fails in a second instead of training the wrong model. Below this boundary no code
reads a ConfigDict; derived facts (`conditional`, the batch per process) live here only.

    run = build_run_config(config)            # main.py and the public entries
    run.model.num_latents, run.conditional, run.per_process_batch_size
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import jax

from diffusion_jax.data.input_pipeline import DataConfig
from diffusion_jax.evaluation.evaluate import EvalSettings
from diffusion_jax.models.config import ModelConfig
from diffusion_jax.objectives.config import DiffusionConfig
from diffusion_jax.samplers import SampleSettings
from diffusion_jax.training import optim
from diffusion_jax.training import sharding as sharding_lib

SECTIONS = ('data', 'model', 'diffusion', 'optim', 'training', 'sample', 'eval')
TOP_LEVEL_KEYS = ('seed',) + SECTIONS


class ConfigError(ValueError):
  """A config value is invalid; the one-line message names the key and the fix."""


def check_keys(section: str, keys: Iterable[str], allowed: Iterable[str]) -> None:
  """Raises ConfigError for the first key of `keys` not in `allowed`, naming the closest.

  Args:
    section: the section's name ('model', ...), or '' for the top level.
    keys: the keys the config sets.
    allowed: the keys the section reads.
  """
  allowed = sorted(set(allowed))
  unknown = sorted(set(keys) - set(allowed))
  if not unknown:
    return
  prefix = f'config.{section}.' if section else 'config.'
  key = unknown[0]
  close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
  hint = f'did you mean {prefix}{close[0]}?' if close else f'valid keys: {", ".join(allowed)}.'
  raise ConfigError(
    f'{prefix}{key} is not a known key; {hint} (configs/default.py lists every key.)'
  )


def field_names(cls: type) -> tuple[str, ...]:
  """The field names of a dataclass."""
  return tuple(f.name for f in dataclasses.fields(cls))


def as_mapping(section: Any) -> dict[str, Any]:
  """A plain dict of one config section (ConfigDict, dict, dataclass or None)."""
  if section is None:
    return {}
  if dataclasses.is_dataclass(section):
    return dataclasses.asdict(section)
  if isinstance(section, Mapping) or hasattr(section, 'items'):
    return dict(section.items())
  raise ConfigError(
    f'a config section must be a ConfigDict or dict, got {type(section).__name__}; '
    'start from configs/default.py.'
  )


def _integer(key: str, value: Any, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ConfigError(f'config.{key}={value!r} must be an integer >= {minimum}.')
  return int(value)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """`config.training`: the loop's lengths and intervals (see configs/default.py)."""

  batch_size: int = 128  # global batch over all devices and hosts.
  num_steps: int = 4000
  log_every: int = 50
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  sample_every: int = 1000  # 0 = only at the end.
  num_sample_images: int = 64
  profile: bool = False
  mesh_fsdp: int = 1
  grad_accum_steps: int = 1
  phema_stds: tuple[float, ...] = (0.05, 0.10)
  phema_snapshot_every: int = 0  # 0 = no post-hoc EMA.

  def __post_init__(self):
    for key in (
      'batch_size',
      'num_steps',
      'log_every',
      'checkpoint_every',
      'keep_checkpoints',
      'num_sample_images',
      'mesh_fsdp',
      'grad_accum_steps',
    ):
      _integer(f'training.{key}', getattr(self, key))
    _integer('training.sample_every', self.sample_every, minimum=0)
    _integer('training.phema_snapshot_every', self.phema_snapshot_every, minimum=0)
    stds = self.phema_stds
    if not isinstance(stds, (tuple, list)) or not all(
      isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 0.3 for v in stds
    ):
      raise ConfigError(
        f'config.training.phema_stds={stds!r} must be a tuple of relative standard '
        'deviations in (0, 0.3), e.g. (0.05, 0.10) (Karras et al. 2024).'
      )
    object.__setattr__(self, 'phema_stds', tuple(float(v) for v in stds))
    if not isinstance(self.profile, bool):
      raise ConfigError(f'config.training.profile={self.profile!r} must be True or False.')


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
  """`config.sample`'s output keys: how many images --mode=sample draws, and per batch."""

  num_samples: int = 100
  batch_size: int = 100  # images per jitted sampler call (rounded up to the devices).

  def __post_init__(self):
    _integer('sample.num_samples', self.num_samples)
    _integer('sample.batch_size', self.batch_size)


# Keys a section accepts that are no field of its dataclass: they shape other fields.
INPUT_ONLY_KEYS = {
  # model.class_conditional=False gives model.num_classes = 0 (an unconditional network).
  'model': ('class_conditional',),
}
# ModelConfig fields that come from config.data, never from config.model.
MODEL_FROM_DATA = ('image_size', 'num_channels', 'num_classes')


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """The whole run, typed and validated; build it with `build_run_config`."""

  seed: int
  data: DataConfig
  model: ModelConfig
  diffusion: DiffusionConfig
  optim: optim.OptimConfig
  training: TrainingConfig
  sample: SampleSettings
  generate: GenerateConfig
  eval: EvalSettings

  @property
  def conditional(self) -> bool:
    """Whether the network takes class labels: THE one answer (model.num_classes > 0)."""
    return self.model.num_classes > 0

  @property
  def global_batch_size(self) -> int:
    """The training batch over all devices and hosts."""
    return self.training.batch_size

  @property
  def per_process_batch_size(self) -> int:
    """This process's part of the training batch."""
    return self.training.batch_size // jax.process_count()

  def hparams(self) -> dict[str, Any]:
    """Flat {'section.key': value} of every setting, for the hparams summary."""
    flat: dict[str, Any] = {'seed': self.seed}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not dataclasses.is_dataclass(value):
        continue
      for key, v in dataclasses.asdict(value).items():
        flat[f'{field.name}.{key}'] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return flat


def _section(config: Any, name: str) -> dict[str, Any]:
  if isinstance(config, Mapping) or hasattr(config, 'items'):
    return as_mapping(config.get(name)) if name in config else {}
  return {}


def build_model_config(model_cfg: Any, data: Any) -> ModelConfig:
  """The model section: `config.model` plus the image shape and classes of the data.

  Args:
    model_cfg: `config.model` (ConfigDict or dict).
    data: a DataConfig or `config.data`.
  """
  values = as_mapping(model_cfg)
  if not isinstance(data, DataConfig):
    data = DataConfig.from_config(as_mapping(data))
  allowed = set(field_names(ModelConfig)) - set(MODEL_FROM_DATA)
  check_keys('model', values, allowed | set(INPUT_ONLY_KEYS['model']))
  conditional = values.get('class_conditional', True)
  if not isinstance(conditional, bool):
    raise ConfigError(f'config.model.class_conditional={conditional!r} must be True or False.')
  kwargs = {k: v for k, v in values.items() if k in allowed and v is not None}
  kwargs.update(
    image_size=data.image_size,
    num_channels=data.num_channels,
    num_classes=data.num_classes if conditional else 0,
  )
  return ModelConfig.from_values(kwargs)


def _build_sample(values: dict) -> tuple[SampleSettings, GenerateConfig]:
  sample_keys, output_keys = set(field_names(SampleSettings)), set(field_names(GenerateConfig))
  check_keys('sample', values, sample_keys | output_keys)
  settings = SampleSettings.from_config({k: v for k, v in values.items() if k in sample_keys})
  generate = GenerateConfig(**{k: v for k, v in values.items() if k in output_keys})
  return settings, generate


def _build(config: Any) -> RunConfig:
  check_keys('', list(config.keys()), TOP_LEVEL_KEYS)
  seed = config.get('seed', 0)
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ConfigError(f'config.seed={seed!r} must be an integer.')
  sections = {name: _section(config, name) for name in SECTIONS}
  check_keys('data', sections['data'], field_names(DataConfig))
  data = DataConfig.from_config(sections['data'])
  model = build_model_config(sections['model'], data)
  check_keys(
    'diffusion', sections['diffusion'], set(field_names(DiffusionConfig)) - {'learn_variance'}
  )
  diffusion = DiffusionConfig.from_config(sections['diffusion'], model)
  check_keys('training', sections['training'], field_names(TrainingConfig))
  training = TrainingConfig(**sections['training'])
  check_keys('optim', sections['optim'], set(field_names(optim.OptimConfig)) - {'num_steps'})
  optim_cfg = optim.OptimConfig.from_config(sections['optim'], training.num_steps)
  sample, generate = _build_sample(sections['sample'])
  check_keys('eval', sections['eval'], EvalSettings.config_keys())
  ev = EvalSettings.from_config(sections['eval'], seed=seed, sample_batch_size=generate.batch_size)
  return RunConfig(
    seed=seed,
    data=data,
    model=model,
    diffusion=diffusion,
    optim=optim_cfg,
    training=training,
    sample=sample,
    generate=generate,
    eval=ev,
  )


def check_devices(run: RunConfig, num_devices: int | None = None) -> None:
  """The batch splits over the devices and mesh_fsdp divides their number."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  sharding_lib.check_batch_size(run.training.batch_size, num_devices)
  k = run.training.grad_accum_steps
  if run.training.batch_size % (k * num_devices):
    raise ConfigError(
      f'config.training.batch_size={run.training.batch_size} must split into '
      f'config.training.grad_accum_steps={k} micro-batches that each divide over the '
      f'{num_devices} devices (a multiple of {k * num_devices}); change either one.'
    )
  fsdp = run.training.mesh_fsdp
  if num_devices % fsdp:
    raise ConfigError(
      f'config.training.mesh_fsdp={fsdp} must divide jax.device_count()={num_devices}; '
      'use 1 for pure data parallelism.'
    )


def build_run_config(config: Any, *, num_devices: int | None = None) -> RunConfig:
  """Converts and validates a whole run config, once, before anything is compiled.

  Missing sections and keys take their dataclass defaults; configs/default.py sets every
  key explicitly.

  Args:
    config: an ml_collections.ConfigDict or dict (configs/default.py layout), or a
      RunConfig (returned unchanged).
    num_devices: devices the batch is split over; default jax.device_count().

  Returns:
    The frozen RunConfig.

  Raises:
    ConfigError: (a ValueError) whose one-line message names the first bad key and the fix.
  """
  if isinstance(config, RunConfig):
    return config
  try:
    run = _build(config)
    check_devices(run, num_devices)
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise ConfigError(str(e)) from None
  return run


__all__ = [
  'ConfigError',
  'GenerateConfig',
  'RunConfig',
  'TrainingConfig',
  'as_mapping',
  'build_model_config',
  'build_run_config',
  'check_devices',
  'check_keys',
]


def load_config_file(spec: str) -> Any:
  """`get_config()` of `configs/X.py`, or `get_config(arg)` for `'configs/X.py:arg'`.

  A bare name (`'imagenet64'`) means `configs/imagenet64.py`; a relative path that is not
  found from the working directory is looked up from the repository root.
  """
  path, _, arg = spec.partition(':')
  if not path.endswith('.py'):
    path = os.path.join('configs', f'{path}.py')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if not os.path.isfile(path) and not os.path.isabs(path):
    path = os.path.join(root, path) if os.path.isfile(os.path.join(root, path)) else path
  if not os.path.isfile(path):
    raise ConfigError(f'--config={spec}: no such file {path!r}; pass one of configs/.')
  path = os.path.abspath(path)
  parent = os.path.dirname(os.path.dirname(path))  # configs/X.py imports `configs.default`
  if parent not in sys.path:
    sys.path.insert(0, parent)
  name = '_config_' + os.path.basename(path)[:-3]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
