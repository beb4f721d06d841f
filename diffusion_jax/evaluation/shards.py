"""The samples of --mode=eval on disk: fixed-size shards, written atomically, fingerprinted.

    eval/samples/manifest.json            what the shards depend on (settings + fingerprints)
    eval/samples/shard_00012.npz          images uint8 [n, H, W, C], labels int32 [n], start
    eval/features/shard_00012.NAME.npz    features of those images (e.g. NAME = inception:
                                          pool [n, 2048], logits [n, 1008]) and count

Shard i holds the global samples [i * shard_size, min(N, (i + 1) * shard_size)). Every file goes
to a temporary name in its directory and is renamed into place, so a killed run leaves whole
shards or none; a shard counts as done when its file exists with the expected rows. The
manifest records the settings the samples depend on and, per feature set, the settings its
features depend on. When the current ones differ, the old files are deleted (with a log line
naming what changed) instead of being reused: all shards for other sample settings, only that
feature set's files for other feature settings (they are recomputed from the stored images).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import zipfile
from typing import Any

import numpy as np

FORMAT_VERSION = 1
SAMPLES_DIR = 'samples'
FEATURES_DIR = 'features'
MANIFEST = 'manifest.json'


def canonical(settings: Any) -> Any:
  """The JSON form of settings (tuples as lists, unknown types as str): what is compared."""
  return json.loads(json.dumps(settings, sort_keys=True, default=str))


def fingerprint(settings: Any) -> str:
  """16 hex digits of the SHA-256 of the settings' canonical JSON."""
  text = json.dumps(canonical(settings), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def changed_keys(old: Any, new: Any, prefix: str = '') -> list[str]:
  """Dotted keys whose values differ between two settings dicts (canonical form)."""
  if not isinstance(old, dict) or not isinstance(new, dict):
    return [prefix or '(all)'] if old != new else []
  out = []
  for key in sorted(set(old) | set(new)):
    name = f'{prefix}.{key}' if prefix else key
    if key not in old or key not in new:
      out.append(name)
    else:
      out += changed_keys(old[key], new[key], name)
  return out


def _temp_path(path: str) -> str:
  head, tail = os.path.split(path)
  return os.path.join(head, f'.{tail}.tmp-{os.getpid()}')


def _commit(tmp: str, path: str, f) -> None:
  f.flush()
  os.fsync(f.fileno())
  f.close()
  os.replace(tmp, path)


def save_npz(path: str, **arrays: np.ndarray) -> str:
  """np.savez to a temporary file that is renamed to `path` once complete."""
  tmp = _temp_path(path)
  f = open(tmp, 'wb')
  try:
    np.savez(f, **arrays)
    _commit(tmp, path, f)
  except BaseException:
    f.close()
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def save_json(path: str, obj: Any) -> str:
  """Writes obj as indented JSON, atomically (temporary file + rename)."""
  tmp = _temp_path(path)
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def _delete(paths: list[str], why: str) -> None:
  if paths:
    logging.warning('eval: deleting %d shard files (%s ...): they %s.', len(paths), paths[0], why)
  for path in paths:
    os.remove(path)


@dataclasses.dataclass(frozen=True)
class ShardStore:
  """The shard files of one evaluation directory.

  Attributes:
    eval_dir: workdir/eval.
    num_samples: samples of the evaluation (the last shard may be short).
    shard_size: samples per shard (the evaluator's global batch).
  """

  eval_dir: str
  num_samples: int
  shard_size: int

  def __post_init__(self):
    if self.num_samples < 1 or self.shard_size < 1:
      raise ValueError(
        f'num_samples={self.num_samples} and shard_size={self.shard_size} must be >= 1.'
      )

  @property
  def num_shards(self) -> int:
    return math.ceil(self.num_samples / self.shard_size)

  @property
  def samples_dir(self) -> str:
    return os.path.join(self.eval_dir, SAMPLES_DIR)

  @property
  def features_dir(self) -> str:
    return os.path.join(self.eval_dir, FEATURES_DIR)

  @property
  def manifest_path(self) -> str:
    return os.path.join(self.samples_dir, MANIFEST)

  def bounds(self, shard: int) -> tuple[int, int]:
    """(first global sample index, number of samples) of a shard."""
    start = shard * self.shard_size
    return start, min(self.shard_size, self.num_samples - start)

  def sample_path(self, shard: int) -> str:
    return os.path.join(self.samples_dir, f'shard_{shard:05d}.npz')

  def feature_path(self, shard: int, name: str) -> str:
    return os.path.join(self.features_dir, f'shard_{shard:05d}.{name}.npz')

  def read_manifest(self) -> dict[str, Any] | None:
    if not os.path.isfile(self.manifest_path):
      return None
    with open(self.manifest_path) as f:
      return json.load(f)

  def reconcile(self, sample_settings: dict, feature_settings: dict[str, dict]) -> dict:
    """Deletes the files the settings make stale and writes the manifest (call on one host).

    Args:
      sample_settings: what the images depend on (checkpoint, sampler, seed, shard size...).
      feature_settings: {feature set name: what its features depend on}.

    Returns:
      The manifest now on disk.
    """
    os.makedirs(self.samples_dir, exist_ok=True)
    os.makedirs(self.features_dir, exist_ok=True)
    for tmp in self._glob('.*.tmp-*'):
      os.remove(tmp)  # left by a killed run
    sample_settings = canonical(sample_settings)
    old = self.read_manifest() or {}
    old_samples = old.get('samples', {})
    features: dict[str, Any] = {}
    if old.get('version') != FORMAT_VERSION:
      _delete(self._glob('shard_*.npz'), 'were made without a manifest of the current format')
    elif old_samples.get('fingerprint') != fingerprint(sample_settings):
      changed = ', '.join(changed_keys(old_samples.get('settings'), sample_settings))
      _delete(self._glob('shard_*.npz'), f'were made with other settings ({changed})')
    else:
      features = dict(old.get('features', {}))
    for name, settings in feature_settings.items():
      settings = canonical(settings)
      entry = features.get(name)
      if entry is None or entry.get('fingerprint') != fingerprint(settings):
        changed = ', '.join(changed_keys((entry or {}).get('settings'), settings))
        _delete(
          self._glob(f'shard_*.{name}.npz', samples=False),
          f'hold {name} features of other settings ({changed}); they are recomputed from the '
          'stored images',
        )
      features[name] = {'fingerprint': fingerprint(settings), 'settings': settings}
    manifest = {
      'version': FORMAT_VERSION,
      'samples': {'fingerprint': fingerprint(sample_settings), 'settings': sample_settings},
      'features': features,
      'shard_size': self.shard_size,
    }
    save_json(self.manifest_path, manifest)
    return manifest

  def _glob(self, pattern: str, samples: bool = True) -> list[str]:
    dirs = [self.samples_dir, self.features_dir] if samples else [self.features_dir]
    return sorted(p for d in dirs for p in glob.glob(os.path.join(d, pattern)))

  def _rows(self, path: str, key: str) -> int | None:
    if not os.path.isfile(path):
      return None
    try:
      with np.load(path) as data:
        value = data[key]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
      logging.warning('eval: unreadable shard file %s (%s); it will be rewritten.', path, e)
      return None
    return int(value) if value.ndim == 0 else int(value.shape[0])

  def has_samples(self, shard: int) -> bool:
    """Whether the shard's images are on disk with the expected number of rows."""
    return self._rows(self.sample_path(shard), 'labels') == self.bounds(shard)[1]

  def has_features(self, shard: int, name: str) -> bool:
    """Whether the shard's features of one set are on disk with the expected rows."""
    return self._rows(self.feature_path(shard, name), 'count') == self.bounds(shard)[1]

  def write_samples(self, shard: int, images: np.ndarray, labels: np.ndarray) -> str:
    """Writes a shard's uint8 images [n, H, W, C] and labels [n]."""
    start, count = self.bounds(shard)
    if images.dtype != np.uint8 or images.shape[0] != count or labels.shape != (count,):
      raise ValueError(
        f'shard {shard} takes uint8 images [{count}, H, W, C] and labels [{count}]; got '
        f'{images.dtype} {images.shape}, {labels.shape}.'
      )
    os.makedirs(self.samples_dir, exist_ok=True)
    return save_npz(
      self.sample_path(shard), images=images, labels=labels.astype(np.int32), start=np.int64(start)
    )

  def write_features(self, shard: int, name: str, arrays: dict[str, np.ndarray]) -> str:
    """Writes one feature set of a shard ({key: [n, ...]})."""
    count = self.bounds(shard)[1]
    bad = {k: v.shape for k, v in arrays.items() if v.shape[:1] != (count,)}
    if bad or 'count' in arrays:
      raise ValueError(f'shard {shard} features must be [{count}, ...] arrays; got {bad}.')
    os.makedirs(self.features_dir, exist_ok=True)
    return save_npz(self.feature_path(shard, name), count=np.int64(count), **arrays)

  def load_samples(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [n, H, W, C], labels [n]) of a shard."""
    with np.load(self.sample_path(shard)) as data:
      return data['images'], data['labels']

  def load_labels(self, shard: int) -> np.ndarray:
    """labels [n] of a shard (without reading its images)."""
    with np.load(self.sample_path(shard)) as data:
      return data['labels']

  def load_features(self, shard: int, name: str) -> dict[str, np.ndarray]:
    """{key: [n, ...]} of one feature set of a shard."""
    with np.load(self.feature_path(shard, name)) as data:
      return {k: data[k] for k in data.files if k != 'count'}

  def write_adm_npz(self, path: str) -> str:
    """All shards' images as one .npz in the ADM suite's format (arr_0 uint8 images, arr_1
    labels), streamed shard by shard: memory holds one shard."""
    first, _ = self.load_samples(0)
    shape = (self.num_samples, *first.shape[1:])
    tmp = _temp_path(path)
    with zipfile.ZipFile(tmp, 'w', allowZip64=True) as zf:
      for key, dtype, take in (('arr_0', np.uint8, 0), ('arr_1', np.int32, 1)):
        header = {
          'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)),
          'fortran_order': False,
          'shape': shape if take == 0 else (self.num_samples,),
        }
        with zf.open(f'{key}.npy', 'w', force_zip64=True) as f:
          np.lib.format.write_array_header_2_0(f, header)
          for shard in range(self.num_shards):
            f.write(np.ascontiguousarray(self.load_samples(shard)[take], dtype).tobytes())
    os.replace(tmp, path)
    return path
