"""Tests of main.py: flags, config overrides, default workdir, multi-host detection, modes."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main as main_lib  # noqa: E402
from diffusion_jax.training import checkpointing  # noqa: E402


def _parse(argv, monkeypatch):
  # config_flags reads its --config.* overrides from sys.argv. In-process runs leave
  # the persistent compilation cache off (its own test runs main.py in subprocesses).
  if not any(a.startswith('--compilation_cache_dir') for a in argv):
    argv = [*argv, '--compilation_cache_dir=none']
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
  # The settings and the parameter table go to files, not the console.
  assert os.path.isfile(os.path.join(workdir, 'hparams.json'))
  assert os.path.isfile(os.path.join(workdir, 'parameters.txt'))

  _run(
    [config, f'--workdir={workdir}', '--mode=sample', '--config.sample.num_samples=10'],
    monkeypatch,
  )
  npz = os.path.join(workdir, 'samples', f'{flags.FLAGS.config.sample.sampler}_step_000002.npz')
  with np.load(npz) as f:
    assert f['images'].shape == (10, 16, 16, 1)
    images = f['images']
    np.testing.assert_array_equal(f['labels'], np.arange(10))

  # Two more --mode=sample processes with the persistent compilation cache: the first
  # compiles and writes it, the second compiles nothing and samples the same images.
  cache = str(tmp_path / 'xla_cache')
  command = [
    sys.executable,
    os.path.join(ROOT, 'main.py'),
    config,
    f'--workdir={workdir}',
    '--mode=sample',
    '--config.sample.num_samples=10',
    f'--compilation_cache_dir={cache}',
  ]
  logs = []
  for _ in range(2):
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    logs.append(re.search(r'XLA programs: (\d+) compiled, (\d+) loaded', done.stderr))
  assert logs[0] and int(logs[0][1]) > 0 and int(logs[0][2]) == 0, logs[0]
  assert logs[1] and int(logs[1][1]) == 0 and int(logs[1][2]) == int(logs[0][1]), logs[1]
  with np.load(npz) as f:
    np.testing.assert_array_equal(f['images'], images)


def test_unknown_config_override_is_rejected(monkeypatch):
  with pytest.raises((flags.Error, AttributeError), match='nope'):
    _parse([f'--config={ROOT}/configs/digits.py:tiny', '--config.training.nope=1'], monkeypatch)
  flags.FLAGS.unparse_flags()


def _assert_one_error_line(text, *needles):
  lines = [line for line in text.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), text
  assert 'Traceback' not in text
  for needle in needles:
    assert needle in lines[0], text


@pytest.mark.parametrize(
  'args,needles',
  [
    (
      ['--config.training.batch_szie=8'],
      ['--config.training.batch_szie', 'did you mean config.training.batch_size?'],
    ),
    (['--config.trainin.batch_size=8'], ["no key 'trainin'", 'did you mean config.training?']),
    (['--config.training.batch_size=abc'], ['--config.training.batch_size=abc']),
    (['--config=configs/nope.py'], ["no such file 'configs/nope.py'"]),
    (['--config=configs/nope.py', '--config.seed=1'], ["no such file 'configs/nope.py'"]),
    (['--config=configs/digits.py:nope'], ["argument 'nope' is not known"]),
    (['extra'], ["unexpected arguments ['extra']"]),
  ],
)
def test_bad_command_line_fails_in_one_line(args, needles):
  import subprocess
  import time

  if not any(a.startswith('--config=') for a in args):
    args = ['--config=configs/digits.py:tiny', *args]
  start = time.monotonic()
  proc = subprocess.run(
    [sys.executable, 'main.py', '--workdir=unused', *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  # Flags and the config file are checked before TensorFlow or JAX start.
  assert time.monotonic() - start < 10
  assert proc.returncode != 0
  _assert_one_error_line(proc.stderr, *needles)


def _exit_message(monkeypatch, run):
  monkeypatch.setattr(main_lib, '_run', run)
  with pytest.raises(SystemExit) as info:
    main_lib.main(['main.py'])
  return str(info.value.code)


def test_missing_image_folder_fails_in_one_line(tmp_path, monkeypatch):
  from diffusion_jax.data import sources

  missing = str(tmp_path / 'nope')
  message = _exit_message(monkeypatch, lambda: sources.list_image_folder(missing))
  _assert_one_error_line(message, f'config.data.folder={missing!r}')


def test_diverged_run_fails_in_one_line(monkeypatch):
  from diffusion_jax import training

  def run():
    training.check_finite([(5, {'loss': np.float32(np.nan), 'grad_norm': np.float32(1.0)})])

  message = _exit_message(monkeypatch, run)
  _assert_one_error_line(message, 'step 5', 'config.optim.learning_rate')
