"""Data sources: scikit-learn digits, image folders and tfds data sets.

Two kinds of source feed the pipeline:
- indexed sources (`ArraySource`, `FolderSource`): `len(source)` examples readable in
  any order by index, so the pipeline can shuffle by an exact per-epoch permutation
  (digits, CIFAR-10 held in memory, image folders);
- `TfdsStream`: a tfds split read as a tf.data stream (ImageNet), shuffled per epoch by
  file order and a seeded buffer, resumable by skipping undecoded records.

Every source sees only this process's part of the data (`process_split_bounds` /
`tfds.even_splits`), so hosts read disjoint examples. TensorFlow and tfds are imported
inside functions: importing this module does not start TensorFlow.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import threading
import urllib.parse
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging

from diffusion_jax.data import preprocess

IMAGE_EXTENSIONS = (
  '.jpg',
  '.jpeg',
  '.png',
  '.bmp',
  '.gif',
  '.webp',
  '.tif',
  '.tiff',
  '.ppm',
  '.pgm',
)
DIGITS_NUM_EXAMPLES = 1797
DIGITS_NUM_TRAIN = 1437  # 80 % of 1,797; the other 360 are the test split.
_DIGITS_SPLIT_SEED = 0
_IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
_DOWNLOAD_RETRIES = 2  # per URL: offline, a failed download then takes about a second


class DatasetMissingError(FileNotFoundError):
  """A data set is not on disk and cannot be fetched automatically; the message says how."""


def process_split_bounds(num_examples: int, process_index: int, process_count: int):
  """Returns [start, stop) of this process's contiguous part of `num_examples` examples.

  Same rule as `tfds.even_splits(drop_remainder=False)`: the first `num_examples %
  process_count` processes get one example more, so the parts are disjoint and cover all.
  """
  if process_count < 1:
    raise ValueError(f'process_count must be >= 1, got {process_count}.')
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index must be in [0, {process_count}) for process_count={process_count}, '
      f'got {process_index}.'
    )
  base, extra = divmod(num_examples, process_count)
  start = process_index * base + min(process_index, extra)
  stop = start + base + (1 if process_index < extra else 0)
  return start, stop


def tfds_process_split(split: str, process_index: int, process_count: int):
  """This process's sub-split of a tfds split (`tfds.even_splits(split, count)[index]`)."""
  import tensorflow_datasets as tfds

  process_split_bounds(0, process_index, process_count)  # validates the arguments
  if process_count == 1:
    return split
  return tfds.even_splits(split, process_count)[process_index]


@dataclasses.dataclass
class ArraySource:
  """In-memory examples: uint8 images [N, H, W, C] and int32 labels [N]."""

  images: np.ndarray  # [N, H, W, C] uint8
  labels: np.ndarray  # [N] int32
  num_skipped: int = 0

  def __len__(self) -> int:
    return len(self.labels)

  def load(self, indices: np.ndarray):
    """Returns (images [b, H, W, C] uint8, labels [b] int32) at `indices`."""
    return self.images[indices], self.labels[indices]

  def close(self) -> None:
    pass


# ----------------------------------------------------------------------------- digits


def _linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] matrix of 1-D linear interpolation with half-pixel centers, edges clamped."""
  u = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  u = np.clip(u, 0.0, in_size - 1)
  lo = np.floor(u).astype(int)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = u - lo
  m = np.zeros((out_size, in_size))
  np.add.at(m, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(m, (np.arange(out_size), hi), frac)
  return m


@functools.lru_cache(maxsize=4)
def _digits_uint8(image_size: int):
  """All 1,797 digits upsampled bilinearly to image_size and quantized to uint8."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  x = digits.images.astype(np.float64) / 16.0  # [N, 8, 8] in [0, 1]
  m = _linear_resize_matrix(8, image_size)
  x = np.einsum('hi,niw,vw->nhv', m, x, m)  # separable bilinear upsampling
  images = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)[..., None]
  return images, digits.target.astype(np.int32)


def digits_split_indices(split: str) -> np.ndarray:
  """Sorted example indices of the digits split: 'train' (1,437), 'test' (360) or 'all'.

  The split is a fixed permutation (seed 0) of the 1,797 digits: the first 1,437 of it
  are 'train', the rest 'test'; it never changes between runs or machines.
  """
  if split == 'all':
    return np.arange(DIGITS_NUM_EXAMPLES)
  perm = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(DIGITS_NUM_EXAMPLES)
  if split == 'train':
    return np.sort(perm[:DIGITS_NUM_TRAIN])
  if split == 'test':
    return np.sort(perm[DIGITS_NUM_TRAIN:])
  raise ValueError(f"digits split must be 'train', 'test' or 'all', got {split!r}.")


def load_digits_uint8(split: str, image_size: int):
  """Digits split as (uint8 images [N, S, S, 1], int32 labels [N]) (see load_digits_split)."""
  if not preprocess.MIN_IMAGE_SIZE <= image_size <= preprocess.MAX_IMAGE_SIZE:
    raise ValueError(
      f'image_size must be in [{preprocess.MIN_IMAGE_SIZE}, {preprocess.MAX_IMAGE_SIZE}] '
      f'for digits, got {image_size}; 16 or 32 are the usual choices.'
    )
  images, labels = _digits_uint8(image_size)
  idx = digits_split_indices(split)
  return images[idx], labels[idx]


def load_digits_split(split: str, image_size: int = 16):
  """scikit-learn's 8x8 handwritten digits, upsampled, as float images in [-1, 1].

  1,797 images, 10 classes, ink values 0..16 (bright digit on a dark background), shipped
  inside scikit-learn (offline). Upsampled with bilinear interpolation to image_size,
  quantized to 8 bits like any image data set, then mapped to [-1, 1].

  Args:
    split: 'train' (1,437 images), 'test' (360) or 'all' (1,797); a fixed split.
    image_size: output side, in [8, 1024] (16 or 32 are the usual choices).

  Returns:
    (images float32 [N, image_size, image_size, 1] in [-1, 1], labels int32 [N] in 0..9).
  """
  images, labels = load_digits_uint8(split, image_size)
  return preprocess.to_float(images), labels


# ----------------------------------------------------------------------------- folders


def list_image_folder(root: str):
  """Lists the image files under `root`; classes are the sorted subfolder names.

  Files directly in `root` are used only when it has no subfolders; they get label -1
  (unconditional). Files whose extension is not an image's are left out and counted.

  Returns:
    (paths: list[str] sorted, labels: int32 [N], class_names: list[str], num_not_images).
  """
  if not root or not os.path.isdir(root):
    raise DatasetMissingError(
      f'config.data.folder={root!r} is not a directory: with config.data.name=folder, set '
      'config.data.folder to a directory of images (one subfolder per class).'
    )
  class_names = sorted(e.name for e in os.scandir(root) if e.is_dir() and e.name[0] != '.')
  if class_names:
    groups = []
    for label, name in enumerate(class_names):
      found = []
      for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
        dirnames[:] = [d for d in dirnames if d[0] != '.']
        found.extend(os.path.join(dirpath, f) for f in filenames if f[0] != '.')
      groups.append((sorted(found), label))
  else:
    found = [e.path for e in os.scandir(root) if e.is_file() and e.name[0] != '.']
    groups = [(sorted(found), -1)]
  paths, labels, num_not_images = [], [], 0
  for found, label in groups:
    for path in found:
      if path.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(path)
        labels.append(label)
      else:
        num_not_images += 1
  return paths, np.asarray(labels, np.int32), class_names, num_not_images


class FolderSource:
  """Images decoded on demand from files by a thread pool (PIL releases the GIL)."""

  def __init__(
    self,
    paths: Sequence[str],
    labels: np.ndarray,
    image_size: int,
    num_channels: int,
    num_workers: int,
    num_skipped: int = 0,
  ):
    if not paths:
      raise DatasetMissingError(
        'config.data.folder holds no readable images for this process: add image files '
        f'({", ".join(IMAGE_EXTENSIONS)}) or point config.data.folder elsewhere.'
      )
    self.paths = list(paths)
    self.labels = np.asarray(labels, np.int32)
    self.image_size = image_size
    self.num_channels = num_channels
    self.num_skipped = num_skipped
    self._failed = set()
    self._lock = threading.Lock()
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, num_workers))

  def __len__(self) -> int:
    return len(self.paths)

  def _load_one(self, index: int):
    # A file that became unreadable after the scan is replaced by the next readable one,
    # so the example at a given index is still the same in every run.
    for k in range(len(self.paths)):
      i = (int(index) + k) % len(self.paths)
      try:
        return preprocess.load_image_file(self.paths[i], self.image_size, self.num_channels), i
      except Exception as e:  # noqa: BLE001 - any decoder error means "not an image"
        with self._lock:
          if i not in self._failed:
            self._failed.add(i)
            self.num_skipped += 1
            logging.warning('Skipping unreadable image %s (%s).', self.paths[i], e)
    raise ValueError('config.data.folder: no file of this process could be decoded.')

  def load(self, indices: np.ndarray):
    """Returns (images [b, S, S, C] uint8, labels [b] int32) at `indices`."""
    results = list(self._pool.map(self._load_one, indices))
    images = np.stack([r[0] for r in results])
    labels = self.labels[np.asarray([r[1] for r in results], dtype=np.int64)]
    return images, labels

  def close(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)


def _is_readable(path: str, image_size: int, num_channels: int) -> bool:
  try:
    preprocess.load_image_file(path, image_size, num_channels)
    return True
  except Exception:  # noqa: BLE001
    return False


def create_folder_source(
  root: str,
  image_size: int,
  num_channels: int,
  process_index: int,
  process_count: int,
  num_workers: int,
  verify: bool = True,
) -> FolderSource:
  """This process's part of an image folder, with unreadable files skipped and counted.

  The sorted file list is split between processes first, so each host decodes (when
  `verify`) only its own files once at start-up; a file that is not an image, or does
  not decode, is left out with a warning. Skipping at start-up (rather than on first
  use) keeps the example order a pure function of the folder and the seed.
  """
  paths, labels, _, num_not_images = list_image_folder(root)
  start, stop = process_split_bounds(len(paths), process_index, process_count)
  paths, labels = paths[start:stop], labels[start:stop]
  num_skipped = num_not_images
  if verify and paths:
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
      ok = list(pool.map(lambda p: _is_readable(p, image_size, num_channels), paths))
    bad = [p for p, k in zip(paths, ok) if not k]
    if bad:
      logging.warning(
        'Skipping %d unreadable image file(s) in %s, e.g. %s.', len(bad), root, bad[:3]
      )
    num_skipped += len(bad)
    keep = np.asarray(ok, bool)
    paths = [p for p, k in zip(paths, ok) if k]
    labels = labels[keep]
  if num_not_images:
    logging.warning('Skipped %d non-image file(s) in %s.', num_not_images, root)
  return FolderSource(paths, labels, image_size, num_channels, num_workers, num_skipped)


# ----------------------------------------------------------------------------- tfds


def _missing_message(name: str, builder, error: BaseException) -> str:
  root = str(builder.data_dir_root)
  if name.startswith('imagenet2012'):
    manual = os.path.join(root, 'downloads', 'manual')
    return (
      f'ImageNet ({name}) is not prepared in {root} and its files are missing. Download '
      f'{" and ".join(_IMAGENET_MANUAL_FILES)} from https://image-net.org/download-images '
      f'(registration needed) into {manual} and run again; tfds then extracts and prepares '
      f'the data set there once. Set config.data.data_dir to use another root.'
    )
  reason = _short(error)
  return (
    f'Data set {name!r} is not prepared in {root} and could not be downloaded ({reason}). '
    f'Copy a prepared copy (the {name}/ folder of a tfds data_dir) into {root}, or set '
    f'config.data.data_dir to the directory that holds it.'
  )


def _short(error: BaseException, limit: int = 200) -> str:
  """The reason of a failed preparation in one short line (network errors nest deeply)."""
  import requests

  if isinstance(error, requests.exceptions.ConnectionError):
    url = getattr(error.request, 'url', None) or ''
    return f'no connection to {urllib.parse.urlparse(url).hostname or "its server"}'
  text = f'{type(error).__name__}: {str(error).strip()}'.splitlines()[0]
  return text if len(text) <= limit else text[: limit - 3] + '...'


def get_tfds_builder(name: str, data_dir: str | None):
  """Returns a prepared tfds builder, preparing it when possible, else DatasetMissingError."""
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetMissingError(
      f'config.data.name={name!r} is neither a built-in source (digits, folder) nor a tfds '
      f'data set found in data_dir={data_dir or "the tfds default"}: {e}'
    ) from None
  if not builder.is_prepared():
    try:
      with _few_download_retries():
        builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001 - AssertionError (manual dir), network errors, ...
      raise DatasetMissingError(_missing_message(name, builder, e)) from None
  return builder


@contextlib.contextmanager
def _few_download_retries():
  """Bounds tfds's HTTP retries while preparing, so an offline machine fails in seconds.

  tfds retries each URL 10 times with exponential backoff: offline, CIFAR-10 took 3.5
  minutes to fail. A probe before the download cannot replace this, because under
  `tfds.testing.mock_data` the builder is unprepared too but downloads nothing.
  """
  from tensorflow_datasets.core.download import downloader

  saved = getattr(downloader, 'MAX_RETRIES', None)
  if saved is None:  # a tfds without the knob: its own retry policy
    yield
    return
  downloader.MAX_RETRIES = min(saved, _DOWNLOAD_RETRIES)
  try:
    yield
  finally:
    downloader.MAX_RETRIES = saved


def _configure_tf() -> None:
  import tensorflow as tf

  # TensorFlow only reads and decodes; the accelerators belong to JAX.
  try:
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
  except (RuntimeError, ValueError):
    pass  # already initialized, or no such device type


def load_tfds_in_memory(
  builder, split, image_size: int, num_channels: int, batch: int = 1024
) -> ArraySource:
  """Reads a whole (small) tfds split into memory, center-cropped/resized (e.g. CIFAR-10)."""
  import tensorflow as tf

  _configure_tf()
  ds = builder.as_dataset(split=split, shuffle_files=False)

  def prep(ex):
    image = preprocess.tf_center_crop_resize(ex['image'], image_size, num_channels)
    label = tf.cast(ex['label'], tf.int32) if 'label' in ex else tf.constant(-1, tf.int32)
    return image, label

  ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)
  images, labels = [], []
  for im, lb in ds.as_numpy_iterator():
    images.append(im)
    labels.append(lb)
  if not images:
    raise ValueError(f'tfds split {split} of {builder.name} is empty.')
  return ArraySource(np.concatenate(images), np.concatenate(labels).astype(np.int32))


def derive_seed(*values: int) -> int:
  """A 31-bit seed from a tuple of non-negative integers (e.g. seed, epoch, process)."""
  return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0] >> 1)


class TfdsStream:
  """A tfds split as a seeded, epoch-wise shuffled stream of uint8 batches.

  Epoch e reads the files in an order seeded by (seed, e, process) and shuffles records
  in a buffer with the same seed, then drops the last partial batch, so every epoch has
  `steps_per_epoch` batches. Resuming at step k rebuilds epoch k // steps_per_epoch and
  skips the already used records before they are decoded.
  """

  def __init__(
    self,
    builder,
    split,
    image_size: int,
    num_channels: int,
    batch_size: int,
    shuffle_buffer: int,
    random_flip: bool,
    seed: int,
    process_index: int,
  ):
    import tensorflow_datasets as tfds

    _configure_tf()
    self.builder, self.split = builder, split
    self.image_size, self.num_channels = image_size, num_channels
    self.batch_size, self.shuffle_buffer = batch_size, max(1, shuffle_buffer)
    self.random_flip, self.seed, self.process_index = random_flip, seed, process_index
    self.num_skipped = 0
    self._decoders = {'image': tfds.decode.SkipDecoding()}
    n = int(self._records(0).cardinality().numpy())
    if n < 0:
      n = int(builder.info.splits[split].num_examples)
    self.num_examples = n
    self.steps_per_epoch = n // batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(
        f'The per-process batch size {batch_size} exceeds the {n} examples of this '
        f"process's part of {builder.name} {split}: lower config.training.batch_size."
      )

  def _records(self, epoch: int):
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(
      shuffle_seed=derive_seed(self.seed, epoch, self.process_index, 1),
      try_autocache=False,
    )
    return self.builder.as_dataset(
      split=self.split, shuffle_files=True, read_config=read_config, decoders=self._decoders
    )

  def _epoch(self, epoch: int, skip_batches: int):
    import tensorflow as tf

    epoch_seed = derive_seed(self.seed, epoch, self.process_index, 2)
    ds = self._records(epoch)
    ds = ds.shuffle(self.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    ds = ds.enumerate().skip(skip_batches * self.batch_size)
    size, channels, flip = self.image_size, self.num_channels, self.random_flip

    def decode(position, ex):
      image = preprocess.tf_decode_center_crop(ex['image'], size, channels)
      if flip:
        image = tf.image.stateless_random_flip_left_right(
          image, seed=tf.stack([tf.constant(epoch_seed, tf.int64), position])
        )
      label = tf.cast(ex['label'], tf.int32) if 'label' in ex else tf.constant(-1, tf.int32)
      return image, label

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(self.batch_size, drop_remainder=True).prefetch(2)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)

  def batches(self, start_step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (images uint8 [b, S, S, C], labels int32 [b]) for steps start_step, ..."""
    epoch, skip = divmod(start_step, self.steps_per_epoch)
    while True:
      yield from self._epoch(epoch, skip).as_numpy_iterator()
      epoch, skip = epoch + 1, 0

  def close(self) -> None:
    pass
