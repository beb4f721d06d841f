"""Input pipeline throughput (images/s) next to the train step's consumption rate.

Generates ImageNet-like JPEGs (500x375, quality 90) in a temporary directory, once as an
image folder and once as a tfds data set, and measures how many training images per
second `create_input_iter` delivers at 64x64 and 256x256 on this machine's CPU cores.
Then times the RIN train step of configs/imagenet64.py and configs/imagenet256.py on the
same machine, which is the rate the pipeline has to keep up with.

    python -m benchmarks.input_pipeline           # full run, a few minutes
    python -m benchmarks.input_pipeline --quick   # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from benchmarks.report import write_section
from diffusion_jax.data import input_pipeline, sources

JPEG_SIZE = (500, 375)  # (width, height): a typical ImageNet photo.
NUM_CLASSES = 4


def _photo_like(rng: np.random.Generator) -> np.ndarray:
  """A smooth random colour field plus grain: JPEG size and decode cost like a photo."""
  w, h = JPEG_SIZE
  coarse = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
  img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
  img += rng.normal(0.0, 12.0, img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root: str, num_images: int) -> None:
  rng = np.random.default_rng(0)
  for i in range(num_images):
    folder = os.path.join(root, f'class_{i % NUM_CLASSES}')
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(_photo_like(rng)).save(os.path.join(folder, f'{i:05d}.jpg'), quality=90)


def make_tfds(data_dir: str, folder: str) -> str:
  """The folder's JPEG bytes as a tfds data set (as ImageNet is stored: encoded JPEGs)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  paths, labels, _, _ = sources.list_image_folder(folder)
  blobs = [tf.io.read_file(p) for p in paths]
  ds = tf.data.Dataset.from_tensor_slices(
    {'image': tf.stack([tf.io.decode_jpeg(b) for b in blobs]), 'label': labels}
  )
  name = 'bench_jpegs'
  features = tfds.features.FeaturesDict(
    {
      'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
      'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
    }
  )
  tfds.dataset_builders.TfDataBuilder(
    name=name, version='1.0.0', split_datasets={'train': ds}, features=features, data_dir=data_dir
  ).download_and_prepare()
  return name


def measure(data_cfg: dict, batch: int, num_batches: int, warmup: int = 2) -> float:
  """Images per second of `create_input_iter` after `warmup` batches."""
  it = input_pipeline.create_input_iter(data_cfg, batch, seed=0)
  for _ in range(warmup):
    next(it)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  rate = batch * num_batches / (time.perf_counter() - start)
  it.close()
  return rate


def measure_scan(folder: str, size: int) -> float:
  """Images per second of the start-up check that skips unreadable files."""
  start = time.perf_counter()
  src = sources.create_folder_source(folder, size, 3, 0, 1, num_workers=os.cpu_count() or 1)
  rate = len(src) / (time.perf_counter() - start)
  src.close()
  return rate


def train_rate(config_module: str, batch: int, steps: int):
  """(parameters, seconds per step, images/s) of the config's train step on this machine."""
  import importlib

  from diffusion_jax import training
  from diffusion_jax.training import sharding as sharding_lib

  config = importlib.import_module(config_module).get_config()
  config.training.batch_size = batch
  mesh = sharding_lib.create_mesh(1)
  setup = training.create_train_setup(config, mesh)  # validates the config first
  state = setup.init_state(jax.random.PRNGKey(0))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  size, channels = config.data.image_size, config.data.num_channels
  rng = np.random.default_rng(0)
  batch_np = {
    'image': rng.uniform(-1, 1, (batch, size, size, channels)).astype(np.float32),
    'label': rng.integers(0, config.data.num_classes, batch).astype(np.int32),
  }
  batch_arr = jax.make_array_from_process_local_data(setup.batch_sharding, batch_np)
  state, metrics = setup.train_step(state, batch_arr)  # compile
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = setup.train_step(state, batch_arr)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  return num_params, seconds, batch / seconds


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='small smoke run')
  args = parser.parse_args(argv)
  quick = args.quick
  num_images = 64 if quick else 384
  batch = 16 if quick else 32
  num_batches = num_images // batch - 2  # stay inside the first epoch after 2 warm-up batches
  cores = os.cpu_count()

  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    folder = os.path.join(tmp, 'jpegs')
    t0 = time.perf_counter()
    make_folder(folder, num_images)
    name = make_tfds(os.path.join(tmp, 'tfds'), folder)
    print(f'generated {num_images} JPEGs in {time.perf_counter() - t0:.1f} s', file=sys.stderr)
    for size in (64, 256):
      base = dict(image_size=size, num_channels=3, num_classes=NUM_CLASSES, random_flip=True)
      tfds_cfg = dict(base, name=name, data_dir=os.path.join(tmp, 'tfds'), shuffle_buffer=256)
      folder_cfg = dict(base, name='folder', folder=folder, verify_images=False)
      rows.append(
        ('tfds JPEG records (tf.data, ImageNet path)', size, measure(tfds_cfg, batch, num_batches))
      )
      rows.append(
        ('image folder (PIL, ADM center_crop_arr)', size, measure(folder_cfg, batch, num_batches))
      )
      if size == 64:
        aug_cfg = dict(folder_cfg, augment_prob=0.12)
        rows.append(
          ('image folder + EDM augmentation p=0.12', size, measure(aug_cfg, batch, num_batches))
        )
      rows.append(('image folder start-up check (decode once)', size, measure_scan(folder, size)))
    digits = dict(name='digits', image_size=32, num_channels=1, num_classes=10, random_flip=False)
    rows.append(('digits (in memory)', 32, measure(digits, 128, 20)))

  train_rows = []
  configs = ['configs.digits'] if quick else ['configs.imagenet64', 'configs.imagenet256']
  for module in configs:
    try:
      params, seconds, rate = train_rate(module, batch=2, steps=1 if quick else 2)
      train_rows.append(f'| {module} | {params / 1e6:.0f}M | 2 | {seconds:.2f} s | {rate:.2f} |')
    except Exception as e:  # noqa: BLE001 - report what failed instead of stopping
      train_rows.append(f'| {module} | - | 2 | failed: {type(e).__name__}: {e} | - |')

  body = [
    f'Synthetic ImageNet-like JPEGs ({JPEG_SIZE[0]}x{JPEG_SIZE[1]}, quality 90, '
    f'{num_images} images), batch {batch}, random flips on; images/s delivered by '
    f'`create_input_iter` (decode, ADM center crop + resize, flip, scale to [-1, 1]) '
    f'on {cores} CPU cores.',
    '',
    '| source | resolution | images/s | images/s per core |',
    '|---|---|---|---|',
  ]
  for label, size, rate in rows:
    body.append(f'| {label} | {size}x{size} | {rate:.0f} | {rate / cores:.0f} |')
  body += [
    '',
    'Train step of the RIN configs on the same CPU (batch 2, after compilation):',
    '',
    '| config | parameters | batch | seconds/step | images/s consumed |',
    '|---|---|---|---|---|',
    *train_rows,
  ]
  load = os.getloadavg()[1]
  body += [
    '',
    f'5-minute load average at the end of the run: {load:.1f} on {cores} cores (other jobs '
    'shared the machine: absolute rates scale with the CPU time this run actually got).',
  ]
  command = 'python -m benchmarks.input_pipeline' + (' --quick' if quick else '')
  write_section('input_pipeline', 'Input pipeline throughput', '\n'.join(body), command)


if __name__ == '__main__':
  main()
