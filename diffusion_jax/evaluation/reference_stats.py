"""FID reference statistics (mu, sigma) of a real image set, as .npz files.

The files hold float64 arrays `mu` [2048] and `sigma` [2048, 2048], the keys of the reference
batches of the ADM evaluation suite (guided-diffusion's `evaluations/`), so its published
reference files (e.g. VIRTUAL_imagenet64_labeled.npz) load here directly. The other way round,
that suite's reader also expects `mu_s`/`sigma_s` (spatial features for sFID), which this module
does not compute: feed it the images (`arr_0`) instead. Note that our features come from the
PyTorch port of the Inception graph with torch-style bilinear resizing, so FIDs against ADM
statistics can differ slightly from that suite's own numbers.

Command line (needs the converted FID Inception weights):

    python -m diffusion_jax.evaluation.reference_stats --dataset=cifar10 --split=train \\
        --image_size=32 --inception_weights=inception_fid.npz --output=cifar10_train.npz

Sources of images: a tfds split (--dataset/--split), an .npz of uint8 images under `arr_0`
(the ADM suite's sample/reference batch format, --images_npz), or an array in memory
(`compute_reference_stats`).

Source: Heusel et al. 2017 (FID); Dhariwal & Nichol 2021 (ADM evaluation suite file format).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Iterator

import numpy as np

from diffusion_jax.evaluation import frechet

ADM_REFERENCE_URL = 'https://github.com/openai/guided-diffusion/tree/main/evaluations'


def save_reference_stats(path: str, mu: np.ndarray, sigma: np.ndarray, **extra) -> str:
  """Writes {'mu', 'sigma'} (float64) and any extra arrays to `path` (.npz); returns path."""
  mu = np.asarray(mu, np.float64)
  sigma = np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f'mu must be [D] and sigma [D, D]; got {mu.shape}, {sigma.shape}.')
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  np.savez(path, mu=mu, sigma=sigma, **extra)
  return path


def load_reference_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads (mu [D], sigma [D, D]) float64 from an .npz with keys 'mu' and 'sigma'.

  Raises:
    FileNotFoundError: no file at path (the message says how to make one).
    ValueError: the file lacks 'mu'/'sigma' or their shapes disagree.
  """
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(
      f'FID reference statistics not found at {path!r} (config.eval.reference_stats). Compute '
      'them with `python -m diffusion_jax.evaluation.reference_stats --dataset=NAME '
      '--split=train --image_size=SIZE --inception_weights=W.npz --output=PATH`, or use a '
      f'reference batch of the ADM evaluation suite ({ADM_REFERENCE_URL}), then set '
      'config.eval.reference_stats=PATH.'
    )
  with np.load(path) as data:
    if 'mu' not in data.files or 'sigma' not in data.files:
      hint = (
        ' It holds images under arr_0: compute their statistics with --images_npz.'
        if 'arr_0' in data.files
        else ''
      )
      raise ValueError(f"{path} has no 'mu'/'sigma' arrays (keys: {data.files}).{hint}")
    mu = np.asarray(data['mu'], np.float64)
    sigma = np.asarray(data['sigma'], np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f'{path}: mu must be [D] and sigma [D, D]; got {mu.shape}, {sigma.shape}.')
  return mu, sigma


def compute_reference_stats(
  batches: Iterable[np.ndarray] | np.ndarray, feature_fn, max_examples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of feature_fn's pool features over images.

  Args:
    batches: an array [N, H, W, C] or an iterable of such batches; float in [-1, 1] or uint8.
    feature_fn: images [B, H, W, C] in [-1, 1] -> {'pool': [B, D], ...} (an
      InceptionFeatureExtractor) or -> [B, D].
    max_examples: stop after this many images (None: all).

  Returns:
    (mu [D], sigma [D, D]) in float64.
  """
  if isinstance(batches, np.ndarray):
    batches = [batches]
  stats, seen = None, 0
  for batch in batches:
    batch = np.asarray(batch)
    if max_examples is not None:
      batch = batch[: max(0, max_examples - seen)]
    if batch.shape[0] == 0:
      break
    if batch.dtype == np.uint8:
      batch = batch.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    feats = feature_fn(batch)
    feats = feats['pool'] if isinstance(feats, dict) else feats
    if stats is None:
      stats = frechet.RunningStatistics(feats.shape[1])
    stats.update(feats)
    seen += batch.shape[0]
  if stats is None:
    raise ValueError('no images to compute reference statistics from.')
  return stats.statistics()


def tfds_image_batches(
  name: str,
  split: str,
  image_size: int,
  *,
  data_dir: str | None = None,
  batch_size: int = 500,
  num_channels: int = 3,
) -> Iterator[np.ndarray]:
  """uint8 batches [B, S, S, C] of a tfds split, center-cropped and resized as ADM does."""
  import tensorflow_datasets as tfds
  from PIL import Image

  from diffusion_jax.data import preprocess

  ds = tfds.load(name, split=split, data_dir=data_dir or None, shuffle_files=False)
  batch = []
  for example in tfds.as_numpy(ds):
    image = example['image']
    if image.shape[:2] != (image_size, image_size):
      mode = 'L' if num_channels == 1 else 'RGB'
      pil = Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).convert(mode)
      image = preprocess.center_crop_arr(pil, image_size)
    if image.ndim == 2:
      image = image[..., None]
    batch.append(image)
    if len(batch) == batch_size:
      yield np.stack(batch)
      batch = []
  if batch:
    yield np.stack(batch)


def npz_image_batches(path: str, batch_size: int = 500) -> Iterator[np.ndarray]:
  """uint8 batches of the images stored under 'arr_0' (ADM sample/reference batch format)."""
  with np.load(path) as data:
    images = data['arr_0']
  for start in range(0, images.shape[0], batch_size):
    yield images[start : start + batch_size]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', default='', help='tfds name, e.g. cifar10, imagenet2012')
  parser.add_argument('--split', default='train')
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--images_npz', default='', help='.npz with uint8 images under arr_0')
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--inception_weights', required=True)
  parser.add_argument('--output', required=True)
  parser.add_argument('--max_examples', type=int, default=None)
  parser.add_argument('--batch_size', type=int, default=200)
  args = parser.parse_args(argv)
  if bool(args.dataset) == bool(args.images_npz):
    parser.error('give exactly one of --dataset or --images_npz.')

  from diffusion_jax.evaluation import inception

  try:
    variables = inception.load_inception_variables(args.inception_weights)
  except inception.InceptionWeightsNotFoundError as e:
    raise SystemExit(str(e)) from None
  extractor = inception.InceptionFeatureExtractor(variables, batch_size=args.batch_size)
  if args.images_npz:
    batches = npz_image_batches(args.images_npz)
  else:
    batches = tfds_image_batches(
      args.dataset, args.split, args.image_size, data_dir=args.data_dir or None
    )
  mu, sigma = compute_reference_stats(batches, extractor, args.max_examples)
  save_reference_stats(args.output, mu, sigma)
  print(f'Wrote {args.output}: mu {mu.shape}, sigma {sigma.shape}.')


if __name__ == '__main__':
  main()
