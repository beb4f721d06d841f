"""Forward time per image of the papers' own networks (DDPM, ADM, EDM, NCSNv2).

    python -m benchmarks.paper_networks                         # every published network
    python -m benchmarks.paper_networks --configs=ddpm_cifar10,ncsnv2_cifar10
    python -m benchmarks.paper_networks --configs=edm_cifar10_vp:tiny --repeats=1 --no-write

Each config is the one its converted checkpoint runs under (configs/<name>.py). The
network is built at full size with random weights, jitted once (inference: no dropout),
and called `--repeats` times on a batch of random images, noise levels and labels; the
row gives the parameters, XLA's FLOPs per image and the time per image (best / median
call divided by the batch). One sampler step costs one such forward (EDM's Heun two).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402
from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax import models  # noqa: E402
from diffusion_jax.training import progress  # noqa: E402

SECTION = 'paper_networks'
TITLE = 'Paper networks: forward time per image'
# One config per released checkpoint family and resolution (the README's table).
CONFIGS = (
  'ddpm_cifar10',
  'ddpm_celebahq256',
  'adm_cifar10',
  'adm_imagenet64',
  'edm_cifar10_vp',
  'edm_cifar10_ve',
  'edm_imagenet64_adm',
  'ncsnv2_cifar10',
  'ncsnv2_church',
  'ncsnv2_ffhq',
)
HEADER = (
  '| config | device | network | resolution | params | batch | GFLOP / image '
  '| ms / image (best / median) | GFLOP/s (median) |'
)
INTRO = (
  'One jitted inference forward of each paper network at full size with random weights, '
  'float32, on a batch of random inputs; time per image = call time / batch, over '
  "`--repeats` calls after the compiling one; FLOPs from XLA's cost analysis of the "
  "compiled call. A sampler step is one forward (EDM's Heun step two, its last step one)."
)


def footer(rows: list[str]) -> str:
  """What the table covers: says so while no accelerator has added its rows."""
  text = (
    "A sample costs its sampler's NFE forwards (the README's Pretrained checkpoints table "
    "gives each paper's), e.g. NFE x ms / image for one image at that batch."
  )
  if all(row.split('|')[2].strip() == 'cpu' for row in rows):
    text += ' No accelerator row yet: the same command on a GPU or TPU host adds its rows.'
  return text


def default_batch(image_size: int) -> int:
  """Images per call: 4 at 32-64 px, 1 at 128 px and up (fits a laptop's memory)."""
  return 4 if image_size <= 64 else 1


def random_inputs(model_cfg: models.ModelConfig, batch: int) -> tuple[jax.Array, ...]:
  """Images in [-1, 1], noise levels in [0, 1000) and labels (or None) for `batch`."""
  k_x, k_t, k_y = jax.random.split(jax.random.key(0), 3)
  size, channels = model_cfg.image_size, model_cfg.num_channels
  x = jax.random.uniform(k_x, (batch, size, size, channels), jnp.float32, -1.0, 1.0)
  t = jax.random.uniform(k_t, (batch,), jnp.float32, 0.0, 1000.0)
  y = None
  if model_cfg.num_classes:
    y = jax.random.randint(k_y, (batch,), 0, model_cfg.num_classes)
  return x, t, y


def measure(spec: str, batch: int = 0, repeats: int = 5) -> dict:
  """Builds `spec`'s network and times its jitted forward; returns the row's numbers."""
  run = config_lib.build_run_config(config_lib.load_config_file(spec), num_devices=1)
  model = models.create_model(run.model)
  batch = batch or default_batch(run.model.image_size)
  x, t, y = random_inputs(run.model, batch)
  params = jax.jit(model.init)(jax.random.key(1), x, t, y)
  forward = jax.jit(lambda p, x, t, y: model.apply(p, x, t, y)[0])
  compiled = forward.lower(params, x, t, y).compile()
  flops = progress.step_flops(compiled)
  start = time.perf_counter()
  jax.block_until_ready(compiled(params, x, t, y))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, x, t, y))
    times.append(time.perf_counter() - start)
  times = np.asarray(times) / batch
  return dict(
    network=run.model.name,
    resolution=run.model.image_size,
    params=models.count_params(params),
    batch=batch,
    flops_per_image=flops / batch if flops else None,
    best=float(times.min()),
    median=float(np.median(times)),
    first=first,
  )


def table_row(spec: str, result: dict) -> str:
  """One row of HEADER's columns."""
  flops = result['flops_per_image']
  gflop = f'{flops / 1e9:.4g}' if flops else 'n/a'
  rate = f'{flops / result["median"] / 1e9:.1f}' if flops else 'n/a'
  name = os.path.basename(spec.partition(':')[0]).removesuffix('.py')
  name += f' ({spec.partition(":")[2]})' if ':' in spec else ''
  kind = jax.devices()[0].device_kind
  size = result['resolution']
  return (
    f'| {name} | {kind} | {result["network"]} | {size}x{size} | '
    f'{result["params"] / 1e6:.2f}M | {result["batch"]} | {gflop} | '
    f'{result["best"] * 1e3:.1f} / {result["median"] * 1e3:.1f} | {rate} |'
  )


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default=','.join(CONFIGS), help='comma-separated configs')
  parser.add_argument('--batch_size', type=int, default=0, help='0: 4 up to 64 px, else 1')
  parser.add_argument('--repeats', type=int, default=5, help='timed calls per network')
  parser.add_argument('--no-write', action='store_true', help='print only; keep BENCHMARKS.md')
  parser.add_argument('--output', default=report.BENCHMARKS_MD, help='the markdown file to update')
  args = parser.parse_args(argv)
  command = 'python -m benchmarks.paper_networks --configs=<config>'
  for spec in filter(None, args.configs.split(',')):
    result = measure(spec, args.batch_size, args.repeats)
    row = table_row(spec, result)
    print(f'{spec}: first call {result["first"]:.1f} s', flush=True)
    print(row, flush=True)
    if not args.no_write:
      report.write_table_row(SECTION, TITLE, INTRO, HEADER, row, command, 2, args.output, footer)


if __name__ == '__main__':
  main()
