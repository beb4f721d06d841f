"""Model FLOPs per image, images/s and MFU of a config's real train step on the local devices.

    python -m benchmarks.mfu --config=configs/imagenet64.py
    python -m benchmarks.mfu --config=configs/imagenet256.py --batch_size=128
    python -m benchmarks.mfu --config=configs/imagenet64.py --tiny --no-write  # CPU, seconds

Builds the config's model and train step (`training.create_train_setup`: the objective
with self-conditioning, LAMB, EMA, the ('data', 'fsdp') mesh) on every local device, feeds
it a random batch and times `--steps` steps after the compiling one.

- Model FLOPs per step: XLA's cost analysis (`progress.step_flops`) of the same train step
  with the RIN blocks and layers unrolled, lowered on abstract inputs. A scanned body is
  counted once by XLA, so the configured (scanned) program would under-count by about
  blocks x layers; the unrolled one does the same arithmetic. The self-conditioning first
  pass is part of the recipe and is counted.
- MFU = model FLOPs per step / step time / (devices x the device's dense bf16 peak,
  `progress.PEAK_BF16_FLOPS`); shown only where the peak is known (not on a CPU).

`--tiny` shrinks the network (1 block, 1 layer, width 32) and the batch (1 per device) so
the benchmark compiles and runs on a CPU in seconds: CI checks the code path with it;
its numbers mean nothing. Without `--batch_size` the batch is the config's global batch,
capped at 64 per device (a single accelerator rarely holds a pod's batch).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402
from benchmarks import train_step as train_step_benchmark  # noqa: E402
from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax import training  # noqa: E402
from diffusion_jax.models import count_params  # noqa: E402
from diffusion_jax.training import progress  # noqa: E402
from diffusion_jax.training import sharding as sharding_lib  # noqa: E402

SECTION = 'mfu'
TITLE = 'MFU: model FLOPs, images/s and MFU of the train step'
HEADER = (
  '| config | device | dtype | batch | params | GFLOP / image | step (best / median) '
  '| images/s | TFLOP/s | MFU (bf16 peak) |'
)
PER_DEVICE_BATCH = 64
# The shrunken network of --tiny: small enough that a CPU compiles and runs a step in seconds.
TINY_MODEL = dict(
  tape_dim=32,
  read_write_heads=2,
  num_latents=8,
  latent_dim=32,
  latent_heads=2,
  num_blocks=1,
  num_compute_layers=1,
)


def load_config(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file (`configs/imagenet64.py`), module (`imagenet64`) or
  `file.py:arg`."""
  return config_lib.load_config_file(path)


def prepare(
  config: ml_collections.ConfigDict,
  batch_size: int = 0,
  tiny: bool = False,
  dtype: str = '',
) -> ml_collections.ConfigDict:
  """A copy of `config` with the benchmark's batch (and the tiny network if asked)."""
  config = ml_collections.ConfigDict(config.to_dict())
  n = jax.device_count()
  if tiny:
    config.model.update(TINY_MODEL)
    batch_size = batch_size or n
  if not batch_size:
    batch_size = min(config.training.batch_size, PER_DEVICE_BATCH * n)
  if batch_size % n:
    raise ValueError(f'--batch_size={batch_size} must be a multiple of the {n} devices.')
  config.training.batch_size = batch_size
  if 'grad_accum_steps' in config.training:
    config.training.grad_accum_steps = 1
  fsdp = int(config.training.get('mesh_fsdp', 1))
  config.training.mesh_fsdp = fsdp if n % fsdp == 0 else 1
  if dtype:
    config.model.dtype = dtype
  return config


def model_flops(config: ml_collections.ConfigDict, mesh, batch) -> float | None:
  """XLA's FLOPs of one train step with the layers unrolled (lowered, not compiled)."""
  setup = training.create_train_setup(train_step_benchmark.with_layout(config, False), mesh)
  state = training.abstract_state(setup)
  lowered = setup.train_step.lower(state, train_step_benchmark._abstract(batch))
  return progress.step_flops(lowered)


def random_batch(config, sharding) -> dict:
  """A random global batch of images in [-1, 1] (and labels) laid out on `sharding`."""
  rng = np.random.default_rng(0)
  local = config.training.batch_size // jax.process_count()
  size, channels = config.data.image_size, config.data.num_channels
  batch = {'image': rng.uniform(-1, 1, (local, size, size, channels)).astype(np.float32)}
  if config.data.get('num_classes', 0):
    batch['label'] = rng.integers(0, config.data.num_classes, local).astype(np.int32)
  return training.to_global_batch(batch, sharding)


def measure(config: ml_collections.ConfigDict, steps: int) -> dict:
  """Times `steps` train steps after the compiling one; FLOPs, rates and MFU."""
  mesh = sharding_lib.create_mesh(config.training.mesh_fsdp)
  setup = training.create_train_setup(config, mesh)
  batch = random_batch(config, setup.batch_sharding)
  flops = model_flops(config, mesh, batch)
  state = setup.init_state(jax.random.PRNGKey(0))
  start = time.perf_counter()
  state, metrics = setup.train_step(state, batch)
  jax.block_until_ready(metrics['loss'])
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = setup.train_step(state, batch)
    jax.block_until_ready(metrics['loss'])
    times.append(time.perf_counter() - start)
  kind = jax.devices()[0].device_kind
  peak = progress.peak_flops(kind)
  times = np.asarray(times)
  best, median = float(times.min()), float(np.median(times))
  out = dict(
    device=f'{jax.device_count()} x {kind}',
    params=count_params(state.params),
    batch=config.training.batch_size,
    flops_per_step=flops,
    step_best=best,
    step_median=median,
    images_per_sec=config.training.batch_size / median,
    compile_s=compile_s,
    loss=float(metrics['loss']),
    mfu_best=None,
    mfu_median=None,
  )
  if flops:
    out['tflops_per_sec'] = flops / median / 1e12
    if peak:
      out['mfu_best'] = flops / best / (jax.device_count() * peak)
      out['mfu_median'] = flops / median / (jax.device_count() * peak)
  return out


def table_row(name: str, config: ml_collections.ConfigDict, result: dict, tiny: bool) -> str:
  """One row of the MFU table (HEADER's columns)."""
  flops = result['flops_per_step']
  per_image = f'{flops / result["batch"] / 1e9:.4g}' if flops else 'n/a'
  tflops = f'{result["tflops_per_sec"]:.3g}' if flops else 'n/a'
  if result['mfu_median'] is None:
    mfu = 'n/a (no bf16 peak for this device)'
  else:
    mfu = f'{100 * result["mfu_best"]:.1f}% / {100 * result["mfu_median"]:.1f}%'
  label = f'{name} (tiny)' if tiny else name
  return (
    f'| {label} | {result["device"]} | {config.model.dtype} | {result["batch"]} | '
    f'{result["params"] / 1e6:.1f}M | {per_image} | '
    f'{result["step_best"] * 1e3:.1f} / {result["step_median"] * 1e3:.1f} ms | '
    f'{result["images_per_sec"]:.1f} | {tflops} | {mfu} |'
  )


INTRO = (
  "Model FLOPs per step from XLA's cost analysis of the train step with the RIN layers "
  'unrolled (self-conditioning first pass, forward, backward, LAMB and EMA; a scanned '
  'body would be counted once), step time over `--steps` steps after the compiling one, '
  'images/s from the median step, MFU = FLOPs / step time / (devices x dense bf16 peak of '
  'the device kind, diffusion_jax/training/progress.py), best / median. Each row is '
  '`python -m benchmarks.mfu --config=configs/<config>.py --batch_size=<batch>`; rows '
  'marked (tiny) ran with `--tiny` (a shrunken network: a code-path check, not a '
  'measurement).'
)


def footer(rows: list[str]) -> str:
  """Says so when no row has an MFU yet (no accelerator has run the benchmark)."""
  if any('%' in row.split('|')[-2] for row in rows):
    return ''
  return (
    'No row has an accelerator yet, so no MFU is measured: the rows give the model FLOPs '
    'per image; run the command on a GPU or TPU host to add its row.'
  )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/imagenet64.py', help='config file')
  parser.add_argument('--batch_size', type=int, default=0, help='global batch (0 = see doc)')
  parser.add_argument('--steps', type=int, default=10, help='timed steps')
  parser.add_argument('--dtype', default='', help="compute dtype override, e.g. 'bfloat16'")
  parser.add_argument('--tiny', action='store_true', help='shrink model and batch (CPU check)')
  parser.add_argument('--no-write', action='store_true', help='print only; keep BENCHMARKS.md')
  parser.add_argument('--output', default=report.BENCHMARKS_MD, help='the markdown file to update')
  args = parser.parse_args(argv)
  config = prepare(load_config(args.config), args.batch_size, args.tiny, args.dtype)
  result = measure(config, args.steps)
  name = os.path.basename(args.config).removesuffix('.py')
  row = table_row(name, config, result, args.tiny)
  print(f'{name}: compiled in {result["compile_s"]:.1f} s, loss {result["loss"]:.4f}', flush=True)
  if args.no_write:
    print(HEADER)
    print(row)
    return
  command = 'python -m benchmarks.mfu --config=configs/<config>.py'
  report.write_table_row(SECTION, TITLE, INTRO, HEADER, row, command, 4, args.output, footer)


if __name__ == '__main__':
  main()
