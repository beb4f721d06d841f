"""Compiled per-device memory of the real train step as the 'fsdp' mesh axis grows.

    python -m benchmarks.fsdp_memory                          # imagenet64, imagenet256
    python -m benchmarks.fsdp_memory --configs=digits --fsdp=1,2 --no-write

For each config, the train step of `diffusion_jax.training.create_train_setup` (LAMB,
EMA, self-conditioning, everything) is lowered on abstract inputs for a ('data', 'fsdp')
mesh of 8 devices with fsdp = 1, 2, 4, 8 and compiled; XLA's memory analysis of the
per-device program gives the bytes each device holds: arguments (the state shard and
the batch shard), temporaries (activations, gathered weights) and outputs, less what the
donated state aliases. Nothing full-size is allocated, so ImageNet configs run on a CPU
(8 forced host devices; the batch is shrunk to `--batch` per device so the compile is
quick: the state's share is what FSDP divides).
"""

import os

if (
  __name__ == '__main__'
):  # 8 host devices before jax is imported (a library import keeps its own).
  os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import argparse
import importlib
import sys
import time

import jax
import numpy as np

from benchmarks import report
from diffusion_jax import build as build_lib
from diffusion_jax import config as config_lib
from diffusion_jax import training
from diffusion_jax.models import count_params
from diffusion_jax.training import sharding as sharding_lib

GIB = 2.0**30


def step_memory(config, fsdp: int, per_device_batch: int) -> dict:
  """Per-device bytes of the compiled train step on an (n / fsdp, fsdp) mesh."""
  n = jax.device_count()
  config = config.copy_and_resolve_references()
  config.training.mesh_fsdp = fsdp
  config.training.batch_size = per_device_batch * n
  config.training.grad_accum_steps = 1
  mesh = sharding_lib.create_mesh(fsdp)
  components = build_lib.build(config_lib.build_run_config(config, num_devices=n), mesh)
  setup = training.create_train_setup(components)
  state = training.abstract_state(setup)
  run = components.run
  shape = (run.global_batch_size, run.data.image_size, run.data.image_size, run.data.num_channels)
  batch = {'image': jax.ShapeDtypeStruct(shape, np.float32, sharding=setup.batch_sharding)}
  if run.conditional:
    batch['label'] = jax.ShapeDtypeStruct(shape[:1], np.int32, sharding=setup.batch_sharding)
  start = time.perf_counter()
  mem = setup.train_step.lower(state, batch).compile().memory_analysis()
  state_bytes = sum(
    int(np.prod(s.sharding.shard_shape(s.shape))) * np.dtype(s.dtype).itemsize
    for s in jax.tree.leaves(state)
  )
  return {
    'params': count_params(state.params),
    'state': state_bytes,
    'arguments': mem.argument_size_in_bytes,
    'temp': mem.temp_size_in_bytes,
    'total': mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    + mem.temp_size_in_bytes
    - mem.alias_size_in_bytes,
    'compile_s': time.perf_counter() - start,
  }


def table(names: list[str], fsdps: list[int], per_device_batch: int) -> str:
  lines = [
    f'| config | params | mesh (data, fsdp) | state / device | temporaries | total / device '
    f'| vs fsdp={fsdps[0]} |',
    '|---|---|---|---|---|---|---|',
  ]
  for name in names:
    config = importlib.import_module(f'configs.{name}').get_config()
    base = None
    for fsdp in fsdps:
      row = step_memory(config, fsdp, per_device_batch)
      base = base or row['total']
      lines.append(
        f'| {name} | {row["params"] / 1e6:.1f}M | ({jax.device_count() // fsdp}, {fsdp}) | '
        f'{row["state"] / GIB:.3f} GiB | {row["temp"] / GIB:.3f} GiB | '
        f'{row["total"] / GIB:.3f} GiB | {row["total"] / base:.2f} |'
      )
      print(lines[-1], f'(compiled in {row["compile_s"]:.0f} s)', flush=True)
  return '\n'.join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default='imagenet64,imagenet256')
  parser.add_argument('--fsdp', default='1,2,4,8', help='fsdp axis sizes to compile.')
  parser.add_argument('--batch', type=int, default=2, help='examples per device.')
  parser.add_argument('--no-write', action='store_true', help='print only; keep BENCHMARKS.md.')
  args = parser.parse_args(argv)
  names = [c for c in args.configs.split(',') if c]
  fsdps = [int(f) for f in args.fsdp.split(',')]
  if jax.device_count() < max(fsdps):
    sys.exit(
      f'{jax.device_count()} devices: set XLA_FLAGS=--xla_force_host_platform_device_count=8.'
    )
  body = table(names, fsdps, args.batch)
  body += (
    '\n\nPer-device bytes from `compiled.memory_analysis()` of the train step (arguments + '
    'outputs + temporaries - donated aliases), batch '
    f'{args.batch} per device. "state / device" is the TrainState shard (params, EMA, '
    'LAMB moments); FSDP divides it by the fsdp size for every leaf of at least '
    f'{sharding_lib._MIN_FSDP_SIZE} values, while the gathered weights show up as '
    'temporaries.'
  )
  if args.no_write:
    print(body)
    return
  command = 'python -m benchmarks.fsdp_memory ' + ' '.join(argv or sys.argv[1:])
  report.write_section('fsdp_memory', 'FSDP: compiled memory per device', body, command.strip())


if __name__ == '__main__':
  main()
