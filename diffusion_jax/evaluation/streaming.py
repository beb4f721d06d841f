"""The sample metrics of --mode=eval at scale: sharded over every host, on disk, resumable.

1. Sampling. The N samples are cut into shards of config.eval.batch_size (one global batch,
   split over every device of every host). Shard i's labels (class_balanced_labels of its
   sample indices) and rng (fold_in(key(config.eval.seed), i)) come from the shard index
   alone, so neither the host count nor a resume changes a sample. Each process samples its
   rows of the batch (`sample_fn.process_local`, which generation.load_sampler's sampler has;
   another sampler is called whole on every host and each keeps its part), computes their
   features on its own devices, and the rows are gathered to the first process, which writes
   the shard and its features (shards.ShardStore). A rerun samples only the shards not on disk.
2. Statistics. The first process reads the feature files shard by shard in index order (and
   computes the features of stored shards that lack a requested set) and accumulates float64
   statistics: the running mean / covariance of Frechet distances, per-split sums of the
   Inception Score, the first PR_MAX_SAMPLES pool features for precision/recall, digit
   accuracy counts. The numbers depend on the stored uint8 shards only, so an interrupted and
   resumed evaluation gives those of an uninterrupted one.

Host memory holds one shard of images and PR_MAX_SAMPLES x 2048 features at most, whatever
the number and size of the samples.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from diffusion_jax.evaluation import frechet, inception_score, precision_recall, shards

if TYPE_CHECKING:
  from diffusion_jax.config import RunConfig

PR_MAX_SAMPLES = 10_000  # the ADM suite's precision/recall subset size.

SampleFn = Callable[..., Any]


def class_balanced_labels(start: int, count: int, num_classes: int) -> np.ndarray:
  """Labels start..start+count-1 cycling over the classes (-1 for unconditional models)."""
  if num_classes <= 0:
    return np.full((count,), -1, np.int32)
  return ((start + np.arange(count)) % num_classes).astype(np.int32)


def takes_labels(sample_fn: SampleFn) -> bool:
  """Which calling convention sample_fn has.

  Either sample_fn(num_samples, rng) -> (images, labels), or the trainer's
  sample_fn(labels, rng) -> images (the evaluator then picks class-balanced labels): the
  latter when its first parameter is named `labels` or it has `takes_labels = True`.
  """
  flag = getattr(sample_fn, 'takes_labels', None)
  if flag is not None:
    return bool(flag)
  try:
    params = list(inspect.signature(sample_fn).parameters)
  except (TypeError, ValueError):
    return False
  return bool(params) and params[0] == 'labels'


@dataclasses.dataclass(frozen=True)
class FeatureSet:
  """Features stored per shard: a name, what they depend on, and the extractor.

  Attributes:
    name: file suffix ('inception', 'digits').
    settings: fingerprinted in the manifest; other settings make stored features stale.
    extract: float images [n, H, W, C] in [-1, 1] -> {key: [n, ...] arrays}.
  """

  name: str
  settings: dict[str, Any]
  extract: Callable[[np.ndarray], dict[str, np.ndarray]]


def feature_sets(run: RunConfig, pre: Any) -> list[FeatureSet]:
  """The feature sets the requested metrics need (from evaluate's prerequisites)."""
  out = []
  if pre.extractor is not None:
    weights = run.eval.inception_weights
    settings = {
      'extractor': type(pre.extractor).__name__,
      'weights': os.path.abspath(weights) if weights else '',
      'weights_bytes': os.path.getsize(weights) if weights and os.path.isfile(weights) else None,
      'resize': getattr(pre.extractor, 'resize', None),
      'quantize': getattr(pre.extractor, 'quantize', None),
    }
    extractor = pre.extractor
    out.append(FeatureSet('inception', settings, lambda x: dict(extractor(x))))
  if pre.digits is not None:
    out.append(FeatureSet('digits', pre.digits.settings(), pre.digits.features))
  return out


def sample_settings(run: RunConfig, sample_fn: SampleFn) -> dict[str, Any]:
  """What the stored images depend on (not num_samples: a larger N reuses the shards).

  A sampler's own `fingerprint` attribute (load_sampler's: checkpoint step and a parameter
  checksum) identifies its parameters; a sampler without one is known by the config alone.
  """
  return {
    'shard_format': shards.FORMAT_VERSION,
    'seed': run.eval.seed,
    'shard_size': run.eval.batch_size,
    'labels': 'class-balanced' if takes_labels(sample_fn) else 'from sample_fn',
    'image_shape': [run.data.image_size, run.data.image_size, run.data.num_channels],
    'model': dataclasses.asdict(run.model),
    'diffusion': dataclasses.asdict(run.diffusion),
    'sample': dataclasses.asdict(run.sample),
    'sampler': getattr(sample_fn, 'fingerprint', None),
  }


def _as_uint8(images: Any, count: int, run: RunConfig) -> np.ndarray:
  images = np.asarray(jax.device_get(images))
  want = (count, run.data.image_size, run.data.image_size, run.data.num_channels)
  if images.shape != want:
    raise ValueError(
      f'sample_fn returned images of shape {images.shape}; expected {want} '
      '(config.data.image_size / num_channels).'
    )
  if images.dtype == np.uint8:
    return images
  levels = np.round((np.clip(images.astype(np.float32), -1.0, 1.0) + 1.0) * np.float32(127.5))
  return levels.astype(np.uint8)


def _to_float(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _local_batch(
  sample_fn: SampleFn, run: RunConfig, start: int, count: int, rng: jax.Array
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(rows [m], uint8 images [m, H, W, C], labels [m]) of this process's part of a batch.

  Rows index the batch; -1 marks padding. Every process returns the same m.
  """
  if takes_labels(sample_fn):
    labels = class_balanced_labels(start, count, run.model.num_classes)
    local = getattr(sample_fn, 'process_local', None)
    if local is not None:
      rows, images = local(labels, rng)
      rows = np.asarray(rows, np.int64).reshape(-1)
      rows = np.where(rows < count, rows, -1)
      return rows, _as_uint8(images, len(rows), run), np.where(rows >= 0, labels[rows], -1)
    images = sample_fn(labels, rng)
  else:
    out = sample_fn(count, rng)
    images, labels = out if isinstance(out, tuple) else (out, np.full((count,), -1, np.int32))
  images = _as_uint8(images, count, run)
  labels = np.asarray(labels, np.int32).reshape(-1)
  if labels.shape != (count,):
    raise ValueError(f'sample_fn returned {labels.shape} labels for {count} samples.')
  if jax.process_count() == 1:
    return np.arange(count), images, labels
  per = math.ceil(count / jax.process_count())
  rows = np.arange(jax.process_index() * per, (jax.process_index() + 1) * per)
  rows = np.where(rows < count, rows, -1)
  take = np.minimum(np.maximum(rows, 0), count - 1)
  valid = rows >= 0
  return (
    rows,
    np.where(valid[:, None, None, None], images[take], 0),
    np.where(valid, labels[take], -1),
  )


def _gather(tree: Any) -> Any:
  """Concatenates every process's arrays along axis 0 (identity on one process)."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils

  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def _broadcast(value: np.ndarray) -> np.ndarray:
  """The first process's array on every process."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.broadcast_one_to_all(value))


def _broadcast_json(obj: Any) -> Any:
  """The first process's JSON-able object on every process."""
  if jax.process_count() == 1:
    return obj
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if jax.process_index() == 0 else None
  size = int(_broadcast(np.int32(0 if data is None else len(data))))
  buf = data if data is not None else np.zeros(size, np.uint8)
  return json.loads(bytes(_broadcast(buf).astype(np.uint8)).decode())


def _in_order(rows: np.ndarray, count: int, tree: Any) -> Any:
  if np.array_equal(rows, np.arange(count)):
    return tree  # one process, no padding: already in order
  valid = rows >= 0
  order = np.argsort(rows[valid], kind='stable')
  if not np.array_equal(rows[valid][order], np.arange(count)):
    raise RuntimeError(
      f'the processes returned rows {np.sort(rows[valid]).tolist()[:20]}... of a batch of '
      f'{count}; expected each of 0..{count - 1} once.'
    )
  return jax.tree.map(lambda a: a[valid][order], tree)


def _features(sets: list[FeatureSet], images: np.ndarray, valid: np.ndarray) -> dict:
  # Features of the valid rows, zero rows for the padding (equal shapes on every process).
  out = {}
  x = _to_float(images[valid])
  for fs in sets:
    arrays = {}
    for key, value in fs.extract(x).items():
      value = np.asarray(value)
      full = np.zeros((len(valid), *value.shape[1:]), value.dtype)
      full[valid] = value
      arrays[key] = full
    out[fs.name] = arrays
  return out


def generate_shards(
  store: shards.ShardStore,
  todo: list[int],
  sample_fn: SampleFn,
  run: RunConfig,
  sets: list[FeatureSet],
  on_disk: int = 0,
) -> None:
  """Samples the shards `todo` on every process; the first process writes them."""
  from diffusion_jax.training import progress

  key = jax.random.key(run.eval.seed)
  what = f'eval: sampled ({on_disk} on disk) +' if on_disk else 'eval: sampled'
  meter = progress.Throughput(what, run.eval.num_samples - on_disk)
  meter.begin()
  done = 0
  for shard in todo:
    start, count = store.bounds(shard)
    rows, images, labels = _local_batch(
      sample_fn, run, start, count, jax.random.fold_in(key, shard)
    )
    local = {'images': images, 'labels': labels, 'features': _features(sets, images, rows >= 0)}
    gathered = _gather({'rows': rows, **local})
    done += count
    if jax.process_index() != 0:
      continue
    batch = _in_order(gathered.pop('rows'), count, gathered)
    for fs in sets:
      store.write_features(shard, fs.name, batch['features'][fs.name])
    store.write_samples(shard, batch['images'], batch['labels'].astype(np.int32))
    logging.info('%s', meter.line(done))


def _shard_features(store: shards.ShardStore, shard: int, fs: FeatureSet) -> dict:
  if store.has_features(shard, fs.name):
    return store.load_features(shard, fs.name)
  images, _ = store.load_samples(shard)  # stored by an evaluation that did not need this set
  arrays = {k: np.asarray(v) for k, v in fs.extract(_to_float(images)).items()}
  store.write_features(shard, fs.name, arrays)
  return arrays


def accumulate(
  store: shards.ShardStore, sets: list[FeatureSet], run: RunConfig, pre: Any
) -> dict[str, float]:
  """The sample metrics from the shards on disk, streamed in index order (float64)."""
  wanted, results = run.eval.metrics, {}
  pool = None  # frechet.RunningStatistics of the pool features, sized at the first shard
  score = None
  if 'is' in wanted:
    score = inception_score.RunningInceptionScore(store.num_samples, run.eval.is_splits)
  pr_feats, pr_count = [], 0
  digits = pre.digits.accumulator() if pre.digits is not None else None
  for shard in range(store.num_shards):
    feats = {fs.name: _shard_features(store, shard, fs) for fs in sets}
    if 'inception' in feats:
      f = feats['inception']
      if 'fid' in wanted:
        pool = pool or frechet.RunningStatistics(f['pool'].shape[1])
        pool.update(f['pool'])
      if 'is' in wanted:
        score.update(f['logits'])
      if 'pr' in wanted and pr_count < PR_MAX_SAMPLES:
        pr_feats.append(f['pool'][: PR_MAX_SAMPLES - pr_count])
        pr_count += len(pr_feats[-1])
    if digits is not None:
      f = feats['digits']
      digits.update(f['logits'], f['features'], store.load_labels(shard))
  if digits is not None:
    results.update(digits.report())
  if 'fid' in wanted:
    results['fid'] = frechet.frechet_distance(*pool.statistics(), *pre.ref_stats)
  if 'is' in wanted:
    results['inception_score'], results['inception_score_std'] = score.result()
  if 'pr' in wanted:
    results.update(precision_recall.precision_recall(pre.real_pr_feats, np.concatenate(pr_feats)))
  return results


def sample_metrics(
  run: RunConfig, sample_fn: SampleFn, pre: Any, eval_dir: str
) -> dict[str, float]:
  """The sample metrics of config.eval.metrics, resuming from the shards in eval_dir.

  Args:
    run: the run config.
    sample_fn: the sampler (see evaluate.evaluate).
    pre: evaluate's prerequisites (feature extractors, reference statistics).
    eval_dir: workdir/eval; the shards go to eval_dir/samples and eval_dir/features.

  Returns:
    {metric: value} (the same on every process), with 'sampling_and_features_seconds'.
  """
  t0 = time.time()
  results: dict[str, float] = {'sampling_and_features_seconds': 0.0}
  store = shards.ShardStore(eval_dir, run.eval.num_samples, run.eval.batch_size)
  sets = feature_sets(run, pre)
  chief = jax.process_index() == 0
  done = np.zeros(store.num_shards, np.int32)
  if chief:
    store.reconcile(sample_settings(run, sample_fn), {fs.name: fs.settings for fs in sets})
    done = np.asarray([store.has_samples(i) for i in range(store.num_shards)], np.int32)
  done = _broadcast(done)
  todo = [int(i) for i in np.flatnonzero(done == 0)]
  on_disk = sum(store.bounds(i)[1] for i in np.flatnonzero(done))
  if chief and on_disk:
    logging.info(
      'eval: %d of %d shards (%d of %d samples) already in %s; sampling the other %d.',
      store.num_shards - len(todo),
      store.num_shards,
      on_disk,
      store.num_samples,
      store.samples_dir,
      len(todo),
    )
  generate_shards(store, todo, sample_fn, run, sets, on_disk)
  if chief:
    results.update(accumulate(store, sets, run, pre))
    if run.eval.save_samples:
      shape = store.load_samples(0)[0].shape[1:]
      name = 'samples_' + 'x'.join(str(d) for d in (store.num_samples, *shape)) + '.npz'
      path = store.write_adm_npz(os.path.join(eval_dir, name))
      print(f'Saved the evaluated samples to {path}.', flush=True)
  results['sampling_and_features_seconds'] = time.time() - t0
  return _broadcast_json(results)
