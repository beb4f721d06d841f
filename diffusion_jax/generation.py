"""Sampling from trained EMA parameters: grids during training and --mode=sample.

The network is sampled inside one jitted function per batch shape (the sampler's
loop is a lax.scan/fori_loop inside it), the batch split over every device.
Images are written as a PNG grid (row i = class i for class-conditional data)
and as an .npz with the float images, uint8 images and labels.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import build as build_lib
from diffusion_jax import config as config_lib
from diffusion_jax.training import checkpointing
from diffusion_jax.training import progress as progress_lib

SampleFn = Callable[[np.ndarray, jax.Array], np.ndarray]


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 in [0, 255] (clipped, rounded)."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, ncols: int, pad: int = 1) -> np.ndarray:
  """Tiles [N, H, W, C] images (uint8) row-major into one [H', W', C] image.

  Image i goes to row i // ncols, column i % ncols; cells are separated by
  `pad` pixels of 0 (black) and missing cells stay black.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'images must be [N, H, W, C]; got shape {images.shape}.')
  if ncols < 1:
    raise ValueError(f'ncols={ncols} must be >= 1.')
  n, h, w, c = images.shape
  nrows = math.ceil(n / ncols)
  out = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), images.dtype)
  for i in range(n):
    r, q = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    out[y : y + h, x : x + w] = images[i]
  return out


def write_png(path: str, grid: np.ndarray, upscale: int = 1) -> str:
  """Writes a uint8 [H, W, C] grid (C = 1 or 3) as PNG, nearest-upscaled."""
  from PIL import Image

  grid = np.asarray(grid, np.uint8)
  if upscale > 1:
    grid = grid.repeat(upscale, axis=0).repeat(upscale, axis=1)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(grid).save(path)
  return path


def grid_labels(num_classes: int, num_images: int) -> tuple[np.ndarray, int]:
  """Labels of a sample grid and its number of columns.

  Class-conditional: `num_classes` rows, row i all of class i, with
  max(1, num_images // num_classes) columns. Unconditional: labels -1 in a
  near-square grid.

  Returns:
    (labels [N] int32, ncols).
  """
  if num_classes > 0:
    ncols = max(1, num_images // num_classes)
    return np.repeat(np.arange(num_classes, dtype=np.int32), ncols), ncols
  ncols = max(1, math.isqrt(num_images))
  return np.full((num_images,), -1, np.int32), ncols


def restore_ema_params(
  components: build_lib.Components, workdir: str, step: int | None = None
) -> tuple[Any, int]:
  """The EMA parameters of workdir's latest (or given) checkpoint, on the run's shardings.

  Returns:
    (params, checkpoint step).

  Raises:
    FileNotFoundError: no checkpoint in workdir (the message says to train first).
  """
  step = checkpointing.latest_step(workdir) if step is None else step
  if step is None:
    raise FileNotFoundError(
      f'No checkpoint in {checkpointing.checkpoint_dir(workdir)}; train first with '
      f'`python main.py --config=... --workdir={workdir}`.'
    )
  abstract = build_lib.abstract_params(components)
  return checkpointing.restore_ema_params(workdir, abstract, step), step


def sample_labels(run: config_lib.RunConfig, num_images: int) -> tuple[np.ndarray, int]:
  """Labels of `num_images` samples (row i of the grid = class i) and the grid's columns.

  Unconditional runs get labels -1. When `num_images` is not a multiple of the
  classes, the last row cycles through them.
  """
  num_classes = run.model.num_classes
  labels, ncols = grid_labels(num_classes, num_images)
  if len(labels) < num_images:
    extra = np.arange(num_images - len(labels), dtype=np.int32) % max(num_classes, 1)
    labels = np.concatenate([labels, extra if num_classes else -np.ones_like(extra)])
  return labels, ncols


@dataclasses.dataclass
class GridSampler:
  """Fixed noise and labels, sampled from the EMA parameters every few steps."""

  sample_fn: Callable
  noise: jax.Array  # [N, H, W, C]
  labels: jax.Array  # [N]
  rng: jax.Array
  ncols: int
  num_images: int

  @classmethod
  def create(cls, components: build_lib.Components) -> GridSampler:
    """Draws the fixed noise/labels over the run's mesh; samples with components.sample_batch."""
    run, mesh = components.run, components.mesh
    labels, ncols = grid_labels(run.model.num_classes, run.training.num_sample_images)
    n = len(labels)
    padded = math.ceil(n / mesh.size) * mesh.size  # split evenly over the devices
    size, channels = run.data.image_size, run.data.num_channels
    noise_rng, rng = jax.random.split(jax.random.PRNGKey(run.seed + 1))
    noise = jax.random.normal(noise_rng, (padded, size, size, channels), jnp.float32)
    batch = components.batch_sharding
    noise = jax.device_put(noise, batch)
    labels = jax.device_put(jnp.asarray(np.pad(labels, (0, padded - n))), batch)
    fn = components.sample_batch
    return cls(sample_fn=fn, noise=noise, labels=labels, rng=rng, ncols=ncols, num_images=n)

  def __call__(self, params: Any) -> np.ndarray:
    """Samples the grid's images [N, H, W, C] (uint8) from `params`."""
    images = self.sample_fn(params, self.noise, self.labels, self.rng)
    return to_uint8(jax.device_get(images))[: self.num_images]

  def write(self, writer: Any, workdir: str, step: int, params: Any) -> str | None:
    """Samples and writes workdir/samples/step_XXXXXX.png (host 0) and a summary image."""
    images = self(params)
    grid = make_grid(images, self.ncols)
    path = None
    if jax.process_index() == 0:
      path = write_png(os.path.join(workdir, 'samples', f'step_{step:06d}.png'), grid, upscale=2)
      logging.info('Wrote the sample grid of step %d to %s.', step, path)
    writer.write_images(step, {'samples': grid[None]})
    return path


def load_sampler(config: Any, workdir: str, step: int | None = None) -> tuple[SampleFn, int]:
  """A host-level sampler `sample_fn(labels [N], rng, **overrides) -> uint8 [N, H, W, C]`.

  `overrides` (guidance=, eta=, s_noise=, s_churn=) are traced: sampling again with new
  values reuses the compiled sampler.

  Restores only the EMA parameters of the latest (or given) checkpoint. Batches of
  config.sample.batch_size (rounded up to the devices) run through one jitted function;
  the last batch is padded to that size. Every process gets all N images (gathered from
  the other hosts in a multi-process job).

  The function also carries
  - `sample_fn.process_local(labels [N], rng, **overrides) -> (rows [m], uint8 [m, H, W, C])`:
    the N labels as one global batch (padded to a multiple of the devices), each process
    returning only the rows its devices hold (rows >= N are padding; every process gets
    the same m). The initial noise and the sampler's draws are positions of arrays of the
    batch's shape, so a row's sample depends on its labels, rng and position alone: not on
    the number of hosts, devices or padding rows (for N <= the batch, the draws of
    sample_fn(labels, rng)).
  - `sample_fn.fingerprint`: {'checkpoint_step', 'params_abs_sum'}, identifying the
    parameters for the evaluator's resumable shards.

  Args:
    config: build.Components (shared with the caller), or a run config (ConfigDict or
      RunConfig) whose components are built here.
    workdir: the run directory.
    step: the checkpoint step; default the latest.

  Returns:
    (sample_fn, checkpoint step).
  """
  components = _components(config)
  run, mesh = components.run, components.mesh
  params, step = restore_ema_params(components, workdir, step)
  bs = math.ceil(run.generate.batch_size / mesh.size) * mesh.size
  batch = components.batch_sharding
  fn = components.sample_batch
  image_shape = (run.data.image_size, run.data.image_size, run.data.num_channels)

  def global_batch(labels: np.ndarray, rng: jax.Array, size: int, overrides: dict) -> jax.Array:
    # One global batch of `size` rows: noise drawn on its shards, labels from every host's copy.
    padded = np.pad(labels, (0, size - len(labels)))
    traced = {k: jnp.asarray(v, jnp.float32) for k, v in overrides.items()} or None
    noise_rng, sample_rng = jax.random.split(rng)
    label_array = jax.make_array_from_callback((size,), batch, lambda index: padded[index])
    noise = _unit_noise(noise_rng, (size, *image_shape), batch)
    return fn(params, noise, label_array, sample_rng, traced)

  def sample_fn(labels: np.ndarray, rng: jax.Array, **overrides: Any) -> np.ndarray:
    labels = np.asarray(labels, np.int32).reshape(-1)
    out = []
    meter = progress_lib.Throughput('sampled', len(labels))
    meter.begin()
    for i, start in enumerate(range(0, len(labels), bs)):
      chunk = labels[start : start + bs]
      images = global_batch(chunk, jax.random.fold_in(rng, i), bs, overrides)
      out.append(to_uint8(_to_host(images))[: len(chunk)])
      if len(labels) > bs and jax.process_index() == 0:
        logging.info('%s', meter.line(start + len(chunk)))
    return np.concatenate(out, axis=0)

  def process_local(
    labels: np.ndarray, rng: jax.Array, **overrides: Any
  ) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, np.int32).reshape(-1)
    size = math.ceil(len(labels) / mesh.size) * mesh.size
    images = global_batch(labels, jax.random.fold_in(rng, 0), size, overrides)
    rows, local = local_rows(images)
    return rows, to_uint8(local)

  sample_fn.process_local = process_local
  # 5 significant digits: the same parameters on another mesh may differ in the last bits.
  sample_fn.fingerprint = {
    'checkpoint_step': int(step),
    'params_abs_sum': f'{float(_abs_sum(params)):.5e}',
  }
  return sample_fn, step


@functools.partial(jax.jit, static_argnums=(1, 2))
def _unit_noise(key: jax.Array, shape: tuple[int, ...], sharding: Any) -> jax.Array:
  # Drawn on the batch's shards; the values are those of the unsharded draw.
  return jax.lax.with_sharding_constraint(jax.random.normal(key, shape, jnp.float32), sharding)


@jax.jit
def _abs_sum(params: Any) -> jax.Array:
  return sum(jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in jax.tree.leaves(params))


def local_rows(array: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """(row indices [m], rows [m, ...]) of a batch-sharded array held by this process's devices."""
  held: dict[int, np.ndarray] = {}
  for shard in array.addressable_shards:
    start = shard.index[0].start or 0
    if start not in held:  # replicas of a row block
      held[start] = np.asarray(shard.data)
  starts = sorted(held)
  rows = np.concatenate([np.arange(s, s + len(held[s])) for s in starts])
  return rows, np.concatenate([held[s] for s in starts], axis=0)


def _to_host(array: jax.Array) -> np.ndarray:
  if array.is_fully_addressable:
    return np.asarray(jax.device_get(array))
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _components(config: Any) -> build_lib.Components:
  if isinstance(config, build_lib.Components):
    return config
  return build_lib.build(config_lib.build_run_config(config))


def sample_and_save(
  config: Any, workdir: str, *, num_samples: int | None = None, out_dir: str | None = None
) -> tuple[str, str]:
  """--mode=sample: N samples from the latest checkpoint's EMA params -> PNG grid + .npz.

  Labels cycle through the classes in blocks (row i of the grid = class i).

  Args:
    config: a run config (ConfigDict or RunConfig) or build.Components.
    workdir: the run directory.
    num_samples: default config.sample.num_samples.
    out_dir: default workdir/samples.

  Returns:
    (png path, npz path) under out_dir.
  """
  components = _components(config)
  run = components.run
  n = run.generate.num_samples if num_samples is None else int(num_samples)
  if n < 1:
    raise config_lib.ConfigError(f'config.sample.num_samples={n} must be >= 1.')
  sample_fn, step = load_sampler(components, workdir)
  labels, ncols = sample_labels(run, n)
  images = sample_fn(labels, jax.random.PRNGKey(run.seed + 2))
  out_dir = out_dir or os.path.join(workdir, 'samples')
  name = f'{run.sample.sampler}_step_{step:06d}'
  png = os.path.join(out_dir, name + '.png')
  npz = os.path.join(out_dir, name + '.npz')
  if jax.process_index() == 0:
    write_png(png, make_grid(images, ncols), upscale=2)
    np.savez_compressed(npz, images=images, labels=labels, step=step)
    logging.info('Wrote %d samples to %s and %s.', n, png, npz)
  return png, npz


__all__ = [
  'GridSampler',
  'grid_labels',
  'load_sampler',
  'local_rows',
  'make_grid',
  'restore_ema_params',
  'sample_and_save',
  'sample_labels',
  'to_uint8',
  'write_png',
]
