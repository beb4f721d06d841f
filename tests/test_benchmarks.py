"""Tests of the train-step benchmark's FLOP count (benchmarks/train_step.py), tiny RIN."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import train_step as benchmark  # noqa: E402
from configs import digits  # noqa: E402
from diffusion_jax import training  # noqa: E402
from diffusion_jax.training import sharding as sharding_lib  # noqa: E402


def _scanned_config(num_blocks: int):
  config = digits.get_config('tiny')
  config.model.num_blocks = num_blocks
  config.model.scan_layers = True
  return config


def test_step_flops_count_every_block_even_for_scanned_configs():
  mesh = sharding_lib.create_mesh(1)
  config = _scanned_config(1)
  size, bs = config.data.image_size, config.training.batch_size
  rng = np.random.default_rng(0)
  host_batch = {
    'image': rng.uniform(-1, 1, (bs, size, size, 1)).astype(np.float32),
    'label': rng.integers(0, 10, bs).astype(np.int32),
  }
  setup = training.create_train_setup(config, mesh)
  batch = training.to_global_batch(host_batch, setup.batch_sharding)
  counts = {n: benchmark.step_flops(_scanned_config(n), mesh, batch) for n in (1, 2, 3)}
  step = {n: c[0] for n, c in counts.items()}
  fwd_bwd = {n: c[1] for n, c in counts.items()}
  # Each block adds the same arithmetic, so the count is affine in the number of blocks
  # (up to XLA's different fusion of the elementwise remainder).
  assert step[2] - step[1] > 0
  np.testing.assert_allclose(step[3] - step[2], step[2] - step[1], rtol=0.05)
  np.testing.assert_allclose(fwd_bwd[3] - fwd_bwd[2], fwd_bwd[2] - fwd_bwd[1], rtol=0.05)
  # Why the benchmark unrolls: XLA counts a scanned body once, so 3 scanned blocks cost
  # what 1 does.
  scanned = training.create_train_setup(_scanned_config(3), mesh)
  abstract_batch = benchmark._abstract(batch)
  scanned_count = benchmark._flops(
    scanned.train_step, training.abstract_state(scanned), abstract_batch
  )
  assert scanned_count < 0.7 * step[3]
