"""Input pipeline: seeded, resumable, per-host batches of images in [-1, 1] with labels.

`create_input_iter(config.data, global_batch_size, seed=..., start_step=...)` yields
`{'image': [B, H, W, C] float32 in [-1, 1], 'label': [B] int32}` (plus `'augment'`
[B, 9] when config.data.augment_prob > 0), as global jax.Arrays on the given sharding or
as numpy arrays of this process's part of the batch.

Data sets (config.data.name):
- 'digits': scikit-learn's 8x8 digits (offline), upsampled to image_size, 1 channel;
- 'cifar10' (and any tfds name with `config.data.cache_in_memory=True`): read once into
  memory, shuffled by an exact permutation per epoch;
- 'imagenet2012' (and any other tfds name): streamed with tf.data, center-cropped and
  resized as in ADM to any size 8..1024;
- 'folder': `config.data.folder`, one subfolder per class (sorted names = labels).

Order: batch k depends only on (seed, k, process), so a run resumed at step k yields the
same batches as one that never stopped. Hosts read disjoint parts of the data
(`tfds.even_splits` / the same even split of a file or example list).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from diffusion_jax.data import augment as augment_lib
from diffusion_jax.data import preprocess, sources
from diffusion_jax.data.augment import AUGMENT_DIM, AugmentConfig
from diffusion_jax.data.sources import (
  DatasetMissingError,
  derive_seed,
  load_digits_split,
  process_split_bounds,
  tfds_process_split,
)

__all__ = [
  'AUGMENT_DIM',
  'DataConfig',
  'DatasetMissingError',
  'InputIterator',
  'create_input_iter',
  'load_digits_split',
  'process_split_bounds',
  'tfds_process_split',
]

_IN_MEMORY_TFDS = ('cifar10', 'cifar100', 'mnist', 'fashion_mnist')


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """`config.data`, typed and validated (the data section of the run config)."""

  name: str = 'digits'
  image_size: int = 16
  num_channels: int = 1
  num_classes: int = 10
  data_dir: str = ''
  folder: str = ''
  train_split: str = 'train'
  random_flip: bool = False
  shuffle_buffer: int = 10_000
  augment_prob: float = 0.0
  prefetch: int = 2
  num_workers: int = 0  # folder decoding threads; 0 = one per CPU core (at most 32).
  verify_images: bool = True  # folder: decode every file once at start-up, skip bad ones.
  cache_in_memory: bool | None = None  # tfds: None = only for small data sets (CIFAR-10).

  def __post_init__(self):
    if not self.name:
      raise ValueError("config.data.name must name a data set, e.g. 'digits' or 'cifar10'.")
    if not preprocess.MIN_IMAGE_SIZE <= self.image_size <= preprocess.MAX_IMAGE_SIZE:
      raise ValueError(
        f'config.data.image_size must be in [{preprocess.MIN_IMAGE_SIZE}, '
        f'{preprocess.MAX_IMAGE_SIZE}], got {self.image_size}.'
      )
    if self.num_channels not in (1, 3):
      raise ValueError(f'config.data.num_channels must be 1 or 3, got {self.num_channels}.')
    if self.num_classes < 0:
      raise ValueError(
        f'config.data.num_classes must be >= 0 (0 = unconditional), got {self.num_classes}.'
      )
    if self.shuffle_buffer < 1:
      raise ValueError(f'config.data.shuffle_buffer must be >= 1, got {self.shuffle_buffer}.')
    if self.prefetch < 1:
      raise ValueError(f'config.data.prefetch must be >= 1 batch, got {self.prefetch}.')
    if self.name == 'folder' and not self.folder:
      raise ValueError("config.data.folder must be set when config.data.name='folder'.")
    AugmentConfig(p=self.augment_prob)  # validates the probability

  @classmethod
  def from_config(cls, data_cfg: Any) -> DataConfig:
    """Builds from the keys of `config.data` (a dict or ConfigDict; None = the default).

    Unknown keys are rejected by the run config (`diffusion_jax.config`), which calls this.
    """
    if isinstance(data_cfg, DataConfig):
      return data_cfg
    get = data_cfg.get
    kwargs = {}
    for field in dataclasses.fields(cls):
      value = get(field.name, None)
      if value is not None:
        kwargs[field.name] = value
    for key in ('image_size', 'num_channels', 'num_classes', 'shuffle_buffer', 'prefetch'):
      if key in kwargs:
        kwargs[key] = int(kwargs[key])
    if 'augment_prob' in kwargs:
      kwargs['augment_prob'] = float(kwargs['augment_prob'])
    return cls(**kwargs)


def _fill(produce: Callable[[], Iterator[dict]], out: queue.Queue, stop: threading.Event):
  """Background thread body: puts batches (or the exception that ended them) into `out`."""

  def put(item) -> bool:
    while not stop.is_set():
      try:
        out.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  try:
    for batch in produce():
      if not put(batch):
        return
  except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
    put(e)


class InputIterator(Iterator):
  """Iterator over batches, filled by a background thread `prefetch` batches ahead.

  The thread holds no reference to the iterator, so dropping the iterator (or calling
  `close()`) stops it.

  Attributes:
    step: the step whose batch `next()` returns next.
    num_examples: examples of this process's part of the data.
    num_skipped: files left out (folder data: not images or unreadable).
  """

  def __init__(self, produce: Callable[[], Iterator[dict]], prefetch: int, source, start_step):
    self.step = start_step
    self._source = source
    self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
    self._stop = threading.Event()
    self._thread = threading.Thread(
      target=_fill, args=(produce, self._queue, self._stop), daemon=True
    )
    self._thread.start()

  @property
  def num_examples(self) -> int:
    src = self._source
    return src.num_examples if isinstance(src, sources.TfdsStream) else len(src)

  @property
  def num_skipped(self) -> int:
    return self._source.num_skipped

  def __next__(self) -> dict:
    if self._stop.is_set():
      raise StopIteration
    item = self._queue.get()
    if isinstance(item, BaseException):
      self.close()
      raise item
    self.step += 1
    return item

  def close(self, timeout: float = 30.0) -> None:
    """Stops the background thread (waits up to `timeout` s) and releases the source."""
    self._stop.set()
    if self._thread.is_alive() and threading.current_thread() is not self._thread:
      self._thread.join(timeout)
    self._source.close()

  def __del__(self):
    self.close()


def _epoch_order(seed: int, epoch: int, process_index: int, n: int, random_flip: bool):
  rng = np.random.default_rng([seed, epoch, process_index])
  perm = rng.permutation(n)
  flips = rng.random(n) < 0.5 if random_flip else np.zeros(n, bool)
  return perm, flips


def indexed_batches(
  source, batch_size: int, seed: int, start_step: int, random_flip: bool, process_index: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(images uint8, labels) batches of an indexed source, from `start_step` on.

  Examples are visited epoch by epoch in a permutation drawn from (seed, epoch, process);
  the flip of each visit is drawn with it. Batch k holds stream positions
  [k * batch_size, (k + 1) * batch_size) of the concatenated epochs, so it is a pure
  function of (seed, k) and resuming is exact.
  """
  n = len(source)
  orders: dict[int, tuple[np.ndarray, np.ndarray]] = {}
  step = start_step
  while True:
    pos = step * batch_size + np.arange(batch_size)
    epochs, offsets = np.divmod(pos, n)
    idx = np.empty(batch_size, np.int64)
    flip = np.empty(batch_size, bool)
    for e in np.unique(epochs):
      if e not in orders:
        orders = {k: v for k, v in orders.items() if k >= e - 1}
        orders[e] = _epoch_order(seed, int(e), process_index, n, random_flip)
      perm, flips = orders[e]
      sel = epochs == e
      idx[sel], flip[sel] = perm[offsets[sel]], flips[offsets[sel]]
    images, labels = source.load(idx)
    yield preprocess.flip_where(images, flip), labels
    step += 1


def _check_sharding(sharding, global_batch_size: int):
  """Per-array shardings splitting only the batch dimension, or ValueError."""
  if sharding is None:
    return None
  if isinstance(sharding, NamedSharding):
    batch_axes = sharding.spec[0] if len(sharding.spec) else None
    sharding = NamedSharding(sharding.mesh, PartitionSpec(batch_axes))
  try:
    sharding.shard_shape((global_batch_size,))
  except ValueError:
    raise ValueError(
      f'config.training.batch_size={global_batch_size} must be divisible by the number of '
      f'devices the batch is split over ({sharding}); use a multiple of {jax.device_count()}.'
    ) from None
  return sharding


def _create_source(cfg: DataConfig, seed, local_batch, process_index, process_count):
  if cfg.name == 'digits':
    images, labels = sources.load_digits_uint8(cfg.train_split, cfg.image_size)
    start, stop = process_split_bounds(len(labels), process_index, process_count)
    images, labels = images[start:stop], labels[start:stop]
    if cfg.num_channels == 3:
      images = np.repeat(images, 3, axis=-1)
    return sources.ArraySource(images, labels)
  if cfg.name == 'folder':
    workers = cfg.num_workers or min(32, os.cpu_count() or 1)
    return sources.create_folder_source(
      cfg.folder,
      cfg.image_size,
      cfg.num_channels,
      process_index,
      process_count,
      workers,
      verify=cfg.verify_images,
    )
  builder = sources.get_tfds_builder(cfg.name, cfg.data_dir)
  split = tfds_process_split(cfg.train_split, process_index, process_count)
  in_memory = cfg.cache_in_memory
  if in_memory is None:
    in_memory = cfg.name.split('/')[0].split(':')[0] in _IN_MEMORY_TFDS
  if in_memory:
    return sources.load_tfds_in_memory(builder, split, cfg.image_size, cfg.num_channels)
  return sources.TfdsStream(
    builder,
    split,
    cfg.image_size,
    cfg.num_channels,
    local_batch,
    cfg.shuffle_buffer,
    cfg.random_flip,
    seed,
    process_index,
  )


def _raw_batches(cfg: DataConfig, source, local_batch: int, seed: int, process_index: int):
  """step -> iterator of (images uint8, labels) of this process from that step on."""
  if isinstance(source, sources.TfdsStream):
    return source.batches
  if cfg.num_classes > 0 and len(source) and int(source.labels.max()) >= cfg.num_classes:
    source.close()
    raise ValueError(
      f'config.data.num_classes={cfg.num_classes} but {cfg.name} has labels up to '
      f'{int(source.labels.max())}; set num_classes to {int(source.labels.max()) + 1}.'
    )

  def raw_batches(step):
    return indexed_batches(source, local_batch, seed, step, cfg.random_flip, process_index)

  return raw_batches


def _make_batch(cfg: DataConfig, images, labels, aug_seed: int, sharding) -> dict:
  """One batch dict: float images in [-1, 1], int32 labels (-1 without classes), augment."""
  labels = labels.astype(np.int32)
  if cfg.num_classes == 0:
    labels = np.full_like(labels, -1)
  batch = {'image': preprocess.to_float(images), 'label': labels}
  if cfg.augment_prob > 0:
    batch['image'], batch['augment'] = augment_lib.augment_numpy(
      aug_seed, batch['image'], AugmentConfig(p=cfg.augment_prob)
    )
  if sharding is not None:
    batch = jax.make_array_from_process_local_data(sharding, batch)
  return batch


def create_input_iter(
  data_cfg: Any,
  global_batch_size: int,
  *,
  seed: int,
  start_step: int = 0,
  sharding: jax.sharding.Sharding | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> InputIterator:
  """Creates the training batch iterator.

  Args:
    data_cfg: a DataConfig (run.data), or the keys of config.data.
    global_batch_size: batch size over all processes and devices.
    seed: the run's seed; with start_step it fixes every batch.
    start_step: the step of the first batch (a resumed run passes its checkpoint's step).
    sharding: a Sharding whose first dimension splits the batch (e.g. NamedSharding over
      the ('data', 'fsdp') mesh); None = numpy arrays of this process's part.
    process_index: this process's index (default jax.process_index(); set explicitly only
      to simulate hosts without a sharding).
    process_count: number of processes (default jax.process_count()).

  Returns:
    An InputIterator of dicts {'image': [B, H, W, C] float32 in [-1, 1], 'label': [B]
    int32, 'augment': [B, 9] float32 (only when config.data.augment_prob > 0)}; B is the
    global batch with a sharding, else global_batch_size / process_count.

  Raises:
    ValueError: bad config values or batch sizes (the message names the key).
    DatasetMissingError: the data set is not on disk (the message says where it goes).
  """
  cfg = DataConfig.from_config(data_cfg)
  seed = int(seed) % 2**63
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  simulated = process_index is not None or process_count is not None
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  process_split_bounds(0, process_index, process_count)
  if sharding is not None and simulated and process_count != jax.process_count():
    raise ValueError('process_index/process_count can only be simulated without a sharding.')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
      f'config.training.batch_size={global_batch_size} must be a positive multiple of the '
      f'number of processes ({process_count}).'
    )
  local_batch = global_batch_size // process_count
  sharding = _check_sharding(sharding, global_batch_size)
  source = _create_source(cfg, seed, local_batch, process_index, process_count)
  raw_batches = _raw_batches(cfg, source, local_batch, seed, process_index)

  def produce() -> Iterator[dict]:
    for step, (images, labels) in enumerate(raw_batches(start_step), start=start_step):
      yield _make_batch(cfg, images, labels, derive_seed(seed, step, process_index, 3), sharding)

  return InputIterator(produce, cfg.prefetch, source, start_step)
