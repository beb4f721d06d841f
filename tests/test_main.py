"""Tests of main.py: flags, config overrides, default workdir, multi-host detection, modes."""

import os
import sys

import numpy as np
import pytest
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main as main_lib  # noqa: E402
from diffusion_jax import checkpointing  # noqa: E402


def _parse(argv, monkeypatch):
  # config_flags reads its --config.* overrides from sys.argv.
  argv = ['main.py', *argv]
  monkeypatch.setattr(sys, 'argv', argv)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)


def _run(argv, monkeypatch):
  _parse(argv, monkeypatch)
  main_lib.main(['main.py'])


@pytest.mark.parametrize(
  'path,want',
  [
    ('configs/digits.py', os.path.join('workdir', 'digits')),
    ('configs/digits.py:tiny', os.path.join('workdir', 'digits_tiny')),
    ('/abs/configs/cifar10.py', os.path.join('workdir', 'cifar10')),
  ],
)
def test_default_workdir(path, want):
  assert main_lib.default_workdir(path) == want


@pytest.mark.parametrize(
  'env,want',
  [
    ({}, False),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, True),
    ({'SLURM_NTASKS': '1'}, False),
    ({'SLURM_NTASKS': '4'}, True),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, True),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, False),
    ({'TPU_WORKER_HOSTNAMES': 'h0,h1,h2,h3'}, True),
  ],
)
def test_multiprocess_detection(env, want):
  assert main_lib.is_multiprocess_environment(env) is want


def test_train_then_sample_with_config_overrides(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  config = f'--config={ROOT}/configs/digits.py:tiny'
  _run([config, f'--workdir={workdir}', '--config.training.num_steps=2'], monkeypatch)
  assert flags.FLAGS.config.training.num_steps == 2
  assert checkpointing.latest_step(workdir) == 2
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_000002.png'))
  # Summaries for TensorBoard were written by process 0.
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))

  _run(
    [config, f'--workdir={workdir}', '--mode=sample', '--config.sample.num_samples=10'],
    monkeypatch,
  )
  npz = os.path.join(workdir, 'samples', f'{flags.FLAGS.config.sample.sampler}_step_000002.npz')
  with np.load(npz) as f:
    assert f['images'].shape == (10, 16, 16, 1)
    np.testing.assert_array_equal(f['labels'], np.arange(10))


def test_unknown_config_override_is_rejected(monkeypatch):
  with pytest.raises((flags.Error, AttributeError), match='nope'):
    _parse([f'--config={ROOT}/configs/digits.py:tiny', '--config.training.nope=1'], monkeypatch)
  flags.FLAGS.unparse_flags()
