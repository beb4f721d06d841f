"""Tests of the typed run config (diffusion_jax/config.py) and the factory (build.py)."""

import dataclasses
import importlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import cifar10_ddpm, default, digits  # noqa: E402
from diffusion_jax import (  # noqa: E402
  build,
  generation,
  training,  # noqa: E402
)
from diffusion_jax import config as config_lib  # noqa: E402

evaluate_lib = importlib.import_module('diffusion_jax.evaluation.evaluate')


@pytest.mark.parametrize(
  'key,typo,closest',
  [
    ('model', 'num_latnts', 'num_latents'),
    ('data', 'image_sise', 'image_size'),
    ('diffusion', 'self_cond_rat', 'self_cond_rate'),
    ('optim', 'learning_rat', 'learning_rate'),
    ('training', 'batch_szie', 'batch_size'),
    ('sample', 'num_stpes', 'num_steps'),
    ('eval', 'num_sampels', 'num_samples'),
  ],
)
def test_a_misspelled_key_fails_fast_naming_it_and_the_closest_key(key, typo, closest):
  config = digits.get_config('tiny')
  config[key][typo] = 8
  start = time.perf_counter()
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.build_run_config(config, num_devices=8)
  assert time.perf_counter() - start < 10
  message = str(info.value)
  assert f'config.{key}.{typo}' in message and f'config.{key}.{closest}' in message
  assert '\n' not in message


def test_an_unknown_section_is_rejected():
  config = digits.get_config('tiny')
  config.sampel = {'num_steps': 3}
  with pytest.raises(config_lib.ConfigError, match=r'config\.sampel .*config\.sample\b'):
    config_lib.build_run_config(config, num_devices=8)


def test_default_config_holds_every_key_the_code_reads():
  run = config_lib.build_run_config(default.get_config(), num_devices=8)
  config = default.get_config()
  for section in config_lib.SECTIONS:
    fields = dataclasses.asdict(getattr(run, section))
    if section == 'sample':
      fields.update(dataclasses.asdict(run.generate))
    if section == 'model':  # from config.data
      fields = {k: v for k, v in fields.items() if k not in config_lib.MODEL_FROM_DATA}
    if section == 'diffusion':  # from config.model
      fields.pop('learn_variance')
    if section == 'optim':  # config.training.num_steps
      fields.pop('num_steps')
    missing = sorted(set(fields) - set(config[section]))
    assert not missing, f'config.{section} lacks {missing} in configs/default.py'


def test_derived_facts_have_one_home():
  run = config_lib.build_run_config(digits.get_config('tiny'), num_devices=8)
  assert run.conditional and run.model.num_classes == 10
  assert run.global_batch_size == 16
  assert run.per_process_batch_size == 16 // jax.process_count()
  assert config_lib.build_run_config(run) is run
  assert run.hparams()['model.num_classes'] == 10
  unconditional = config_lib.build_run_config(cifar10_ddpm.get_config(), num_devices=8)
  assert unconditional.data.num_classes == 10 and not unconditional.conditional
  assert unconditional.model.num_classes == 0


def test_device_checks():
  config = digits.get_config('tiny')
  config.training.batch_size = 12
  with pytest.raises(config_lib.ConfigError, match=r'batch_size=12.*device_count\(\)=8'):
    config_lib.build_run_config(config, num_devices=8)
  config.training.batch_size = 16
  config.training.mesh_fsdp = 3
  with pytest.raises(config_lib.ConfigError, match='mesh_fsdp=3'):
    config_lib.build_run_config(config, num_devices=8)
  config.training.mesh_fsdp = 1
  config.training.num_steps = 0
  with pytest.raises(config_lib.ConfigError, match=r'config\.training\.num_steps=0'):
    config_lib.build_run_config(config, num_devices=8)


class _RecordingModel:
  """The network, recording the labels each traced apply receives."""

  def __init__(self, model):
    self._model = model
    self.labels = []

  def apply(self, params, x, noise_level, label=None, *args, **kwargs):
    self.labels.append(label)
    return self._model.apply(params, x, noise_level, label, *args, **kwargs)

  def __getattr__(self, name):
    return getattr(self._model, name)


def _tiny_unconditional():
  config = digits.get_config('tiny')
  config.model.class_conditional = False
  return config_lib.build_run_config(config, num_devices=8)


def test_an_unconditional_run_never_passes_labels_to_the_network():
  run = _tiny_unconditional()
  components = build.build(run)
  recorder = _RecordingModel(components.model)
  components = dataclasses.replace(components, model=recorder)
  state = jax.eval_shape(components.init_fn, jax.random.PRNGKey(0))
  batch = {
    'image': jax.ShapeDtypeStruct((16, 16, 16, 1), jnp.float32),
    'label': jax.ShapeDtypeStruct((16,), jnp.int32),  # the data set has classes
  }
  jax.eval_shape(training.make_train_step(components), state, batch)  # traced, not compiled
  noise = jax.ShapeDtypeStruct((8, 16, 16, 1), jnp.float32)
  labels = jax.ShapeDtypeStruct((8,), jnp.int32)

  def sample(params, noise, labels, rng):
    return build.sample_images(run, recorder, components.objective, params, noise, labels, rng)

  jax.eval_shape(sample, state.ema_params, noise, labels, jax.random.PRNGKey(1))
  assert recorder.labels and all(label is None for label in recorder.labels)
  labels, _ = generation.sample_labels(run, 12)
  np.testing.assert_array_equal(labels, -1)


def test_the_eval_protocol_of_an_unconditional_config_says_unconditional():
  run = config_lib.build_run_config(cifar10_ddpm.get_config(), num_devices=8)
  assert evaluate_lib.protocol(run, nfe=None)['labels'] == 'unconditional'
  conditional = config_lib.build_run_config(digits.get_config('tiny'), num_devices=8)
  assert evaluate_lib.protocol(conditional, nfe=3)['labels'] == 'class-balanced'
