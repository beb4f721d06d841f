"""Tests of the benchmarks: the train step's FLOP count, the MFU benchmark, report tables."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import mfu, paper_networks, report  # noqa: E402
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


def test_table_row_replaces_its_own_row_and_keeps_the_others(tmp_path):
  path = str(tmp_path / 'BENCHMARKS.md')
  header = '| config | device | value |'

  def write(row):
    report.write_table_row('t', 'Title', 'Intro.', header, row, 'cmd', 2, path)

  write('| a | cpu | 1 |')
  write('| b | cpu | 2 |')
  write('| a | gpu | 3 |')
  write('| a | cpu | 4 |')
  body = report.section_body('t', path)
  rows = [line for line in body.split('\n') if line.startswith('|')]
  assert rows == [header, '|---|---|---|', '| b | cpu | 2 |', '| a | gpu | 3 |', '| a | cpu | 4 |']
  assert body.startswith('Intro.')


def test_mfu_tiny_runs_on_cpu_and_writes_its_row(tmp_path, capsys):
  path = str(tmp_path / 'BENCHMARKS.md')
  mfu.main(['--config=configs/imagenet64.py', '--tiny', '--steps=1', f'--output={path}'])
  body = report.section_body(mfu.SECTION, path)
  row = [line for line in body.split('\n') if line.startswith('| imagenet64 (tiny)')]
  assert len(row) == 1, body
  cells = [c.strip() for c in row[0].strip('|').split('|')]
  n = jax.device_count()
  assert cells[1] == f'{n} x cpu' and cells[3] == str(n)  # one image per device
  assert float(cells[5]) > 0  # model GFLOP per image, from XLA's cost analysis
  assert cells[-1].startswith('n/a')  # no bf16 peak for a CPU: no MFU
  assert 'No row has an accelerator yet' in body
  assert mfu.footer([row[0].replace(cells[-1], '40.0% / 39.0%')]) == ''
  assert 'compiled in' in capsys.readouterr().out


def test_paper_networks_times_a_network_and_writes_its_row(tmp_path):
  path = str(tmp_path / 'BENCHMARKS.md')
  paper_networks.main(['--configs=edm_cifar10_vp:tiny', '--repeats=1', f'--output={path}'])
  body = report.section_body(paper_networks.SECTION, path)
  rows = [line for line in body.split('\n') if line.startswith('| edm_cifar10_vp (tiny) |')]
  assert len(rows) == 1, body
  cells = [c.strip() for c in rows[0].strip('|').split('|')]
  assert cells[2] == 'edm_songunet' and cells[5] == '4'  # 4 images per call at 16-64 px
  assert float(cells[6]) > 0  # GFLOP per image, from XLA's cost analysis
  best, median = (float(v) for v in cells[7].split('/'))
  assert 0 < best <= median
  assert 'No accelerator row yet' in body


def test_matmul_chain_multiplies_in_sequence_and_counts_its_flops():
  call, flops = benchmark.matmul_chain(2)
  a, b = benchmark._matmul_operands()
  np.testing.assert_allclose(call(), jnp.dot(jnp.dot(a, b), b), rtol=1e-4, atol=1e-3)
  assert flops == 2 * 2 * benchmark.MATMUL_N**3
  order = []
  times = benchmark.interleaved_times([lambda: order.append('a'), lambda: order.append('b')], 2)
  assert order == ['a', 'b'] * 3 and [len(t) for t in times] == [2, 2]
