"""Tests of the progress lines: rates, MFU, ETA, device peaks, and the train loop's files."""

import json
import os

import jax
import jax.numpy as jnp
import pytest

from diffusion_jax.training import progress


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_train_progress_rates_mfu_and_eta():
  clock = FakeClock()
  meter = progress.TrainProgress(
    total_steps=1000, images_per_step=64, flops_per_step=2e12, peak=8e12, clock=clock
  )
  meter.start(10)
  clock.now += 20.0  # 40 steps in 20 s
  line, scalars = meter.report(50, 0.123456)
  assert scalars['steps_per_sec'] == pytest.approx(2.0)
  assert scalars['images_per_sec'] == pytest.approx(128.0)
  assert scalars['tflops_per_sec'] == pytest.approx(4.0)
  assert scalars['mfu'] == pytest.approx(0.5)
  assert scalars['eta_seconds'] == pytest.approx(475.0)
  assert line == (
    'step 50/1000 | loss 0.1235 | 128.0 img/s | 2.00 steps/s | 4 TFLOP/s | MFU 50.0% | ETA 7m55s'
  )
  # The next interval is measured from this report; no peak (CPU) -> no MFU.
  meter.peak = None
  clock.now += 10.0
  line, scalars = meter.report(60, 0.1)
  assert scalars['steps_per_sec'] == pytest.approx(1.0) and 'mfu' not in scalars
  assert 'MFU' not in line and 'ETA 15m40s' in line


def test_peaks_durations_and_step_flops():
  assert progress.peak_flops('TPU v5 lite') == 197e12
  assert progress.peak_flops('TPU v4') == 275e12
  assert progress.peak_flops('NVIDIA H200') == 989e12
  assert progress.peak_flops('cpu') is None
  assert [progress.format_duration(s) for s in (5, 225, 7500, 3 * 86400 + 4 * 3600)] == [
    '5s',
    '3m45s',
    '2h05m',
    '3d04h',
  ]
  lowered = jax.jit(lambda a, b: a @ b).lower(jnp.ones((32, 16)), jnp.ones((16, 8)))
  assert progress.step_flops(lowered) == pytest.approx(2 * 32 * 16 * 8, rel=0.01)


def test_throughput_line():
  clock = FakeClock()
  meter = progress.Throughput('sampled', 1000, clock=clock)
  meter.begin()
  clock.now += 10.0
  assert meter.line(200) == 'sampled 200/1000 images | 20.0 img/s | ETA 40s'


def test_run_files_are_written(tmp_path):
  from configs import digits
  from diffusion_jax import config as config_lib
  from diffusion_jax.training import loop

  run = config_lib.build_run_config(digits.get_config('tiny'))
  params = {'dense': {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros((4,))}}
  loop._write_run_files(str(tmp_path), run, params)
  with open(os.path.join(tmp_path, 'hparams.json')) as f:
    hparams = json.load(f)
  assert hparams['data.name'] == 'digits' and hparams['seed'] == run.seed
  table = open(os.path.join(tmp_path, 'parameters.txt')).read()
  assert 'dense/kernel' in table and '(3, 4)' in table
