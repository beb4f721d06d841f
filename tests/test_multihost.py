"""The multi-host training path on one machine: 2 processes x 4 CPU devices vs 1 x 8.

Both jobs run the real train step (`train.create_train_setup`) of the tiny digits config
on identical global batches from the same initial state, so their parameters must agree
to float tolerance; the 2-process job talks through jax.distributed (gloo collectives).
experiments/multihost_check.py is the per-process program; this test only launches it.
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import multihost_check  # noqa: E402

STEPS = 2
# One model pass per step (no self-conditioning) and XLA's quickest compile keep the three
# processes' compiles short; the code path under test is the same.
OVERRIDES = ('diffusion.self_cond_rate=0.0',)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp('multihost'))
  old = os.environ.get('XLA_FLAGS')
  os.environ['XLA_FLAGS'] = '--xla_backend_optimization_level=0'
  try:
    kwargs = dict(steps=STEPS, overrides=OVERRIDES, timeout=400)
    multi = multihost_check.launch_job(tmp, num_processes=2, devices=4, pipeline_steps=1, **kwargs)
    single = multihost_check.launch_job(tmp, num_processes=1, devices=8, **kwargs)
  finally:
    if old is None:
      os.environ.pop('XLA_FLAGS')
    else:
      os.environ['XLA_FLAGS'] = old
  load = lambda p: dict(np.load(p))
  return [load(p) for p in multi], load(single[0])


def test_two_processes_match_one_process(results):
  multi, single = results
  assert int(single['process_count']) == 1 and int(single['device_count']) == 8
  for r in multi:
    assert int(r['process_count']) == 2 and int(r['device_count']) == 8
    assert int(r['local_device_count']) == 4
    assert int(r['step']) == STEPS and int(single['step']) == STEPS
  # Training moved the parameters, by the same amount in both jobs.
  assert single['update_norm'] > 1e-3
  np.testing.assert_allclose(multi[0]['update_norm'], single['update_norm'], rtol=1e-4)
  np.testing.assert_allclose(multi[0]['loss'], single['loss'], rtol=1e-5)
  assert np.all(np.isfinite(single['loss']))
  for r in multi:
    worst = multihost_check.compare(single, r, rtol=1e-4, atol=1e-5)
    assert worst < 1e-4


def test_processes_agree_after_per_process_input_pipeline(results):
  multi, _ = results
  p0, p1 = multi
  # Replicated parameters are the same everywhere, also after steps fed by the multi-host
  # input pipeline, where each process reads its own part of the data set.
  np.testing.assert_array_equal(p0['pipeline_checksum'], p1['pipeline_checksum'])
  np.testing.assert_array_equal(p0['pipeline_loss'], p1['pipeline_loss'])
  assert np.all(np.isfinite(p0['pipeline_loss']))
  assert p0['pipeline_local_labels'].shape == p1['pipeline_local_labels'].shape
  for key in p0:
    if key.startswith(('params/', 'ema_params/')):
      np.testing.assert_array_equal(p0[key], p1[key], err_msg=key)


def test_compare_rejects_a_perturbed_result(results):
  _, single = results
  other = dict(single)
  key = next(k for k in other if k.startswith('params/'))
  other[key] = other[key] + 1e-2
  with pytest.raises(AssertionError):
    multihost_check.compare(single, other, rtol=1e-4, atol=1e-5)


def test_local_rows_and_config_overrides():
  import jax
  from jax.sharding import NamedSharding, PartitionSpec

  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  rows = multihost_check.local_rows(NamedSharding(mesh, PartitionSpec('data')), (16, 3))
  assert rows == slice(0, 16)  # one process holds every row
  config = multihost_check.load_config(
    'digits:tiny', ['training.batch_size=32', 'diffusion.self_cond_rate=0']
  )
  assert config.training.batch_size == 32 and config.diffusion.self_cond_rate == 0.0
  assert isinstance(config.diffusion.self_cond_rate, float)
  with pytest.raises(ValueError, match='key=value'):
    multihost_check.load_config('digits:tiny', ['training.batch_size'])
