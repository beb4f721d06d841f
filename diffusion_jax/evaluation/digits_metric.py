"""An offline sample-quality metric for the digits data set (no downloads, trains in seconds).

A small classifier (an MLP) is trained on the digits train split. Class-conditional samples
are scored by (1) the classifier's accuracy on them (does a sample of class c look like a c?)
and (2) the Frechet distance between Gaussians fitted to the classifier's penultimate features
of the samples and of the real train split: FID's recipe with a domain-specific feature network.
The same distance from the real *test* split to the train split is reported beside it: what a
generator of real-quality images reaches with that many images. DigitsMetric.report scores images
in memory; features() per batch and accumulator() give the same numbers streamed, as the evaluator
uses them.

Source: Heusel et al. 2017 (Frechet distance of feature Gaussians); the classifier accuracy of
conditional samples follows the "classification accuracy score" idea of Ravuri & Vinyals 2019,
used here the other way round (a classifier trained on real data scores the samples).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax.evaluation import frechet

NUM_CLASSES = 10
FEATURE_DIM = 64
_CACHE_VERSION = 1


class DigitsClassifierNet(nn.Module):
  """MLP on the pixels: 256 hidden units, a 64-d penultimate layer (the feature space), 10 logits.

  An MLP rather than a CNN: on CPU its matmuls train in a couple of seconds, where XLA's small
  convolution gradients take far longer, and it reaches ~98% test accuracy on digits.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = x.reshape(x.shape[0], -1)  # [B, S*S]
    x = nn.relu(nn.Dense(256, name='hidden')(x))  # [B, 256]
    features = nn.relu(nn.Dense(FEATURE_DIM, name='penultimate')(x))  # [B, 64]
    logits = nn.Dense(NUM_CLASSES, name='head')(features)  # [B, 10]
    return logits, features


def load_digits(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(images [N, S, S, 1] in [-1, 1], labels [N] int32) of the digits split the trainer uses."""
  from diffusion_jax.data.input_pipeline import load_digits_split

  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
  images, labels = load_digits_split(split, image_size)
  return np.asarray(images, np.float32), np.asarray(labels, np.int32)


@functools.partial(jax.jit, static_argnames=('num_steps', 'batch_size'))
def _train(images, labels, rng, *, num_steps: int, batch_size: int):
  model = DigitsClassifierNet()
  init_rng, rng = jax.random.split(rng)
  params = model.init(init_rng, images[:1])
  schedule = optax.cosine_decay_schedule(3e-3, num_steps)
  tx = optax.adamw(schedule, weight_decay=1e-4)
  opt_state = tx.init(params)

  def loss_fn(params, x, y):
    logits, _ = model.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(carry, rng):
    params, opt_state = carry
    idx_rng, noise_rng, shift_rng = jax.random.split(rng, 3)
    idx = jax.random.randint(idx_rng, (batch_size,), 0, images.shape[0])
    x = images[idx]
    # Light augmentation (pixel noise, one-pixel shifts) so imperfect samples of a class are
    # still read as that class rather than falling off the training distribution.
    x = x + 0.1 * jax.random.normal(noise_rng, x.shape)
    shift = jax.random.randint(shift_rng, (2,), -1, 2)
    x = jnp.roll(x, shift, axis=(1, 2))
    loss, grads = jax.value_and_grad(loss_fn)(params, x, labels[idx])
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, _), losses = jax.lax.scan(step, (params, opt_state), jax.random.split(rng, num_steps))
  return params, losses


@jax.jit
def _apply(params, images):
  return DigitsClassifierNet().apply(params, images)


@dataclasses.dataclass
class DigitsClassifier:
  """A trained DigitsClassifierNet for one image size; call it for (logits, features) arrays."""

  params: dict
  image_size: int
  batch_size: int = 512

  def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 1):
      raise ValueError(
        f'images must be [N, {self.image_size}, {self.image_size}, 1] (the size '
        f'the classifier was trained at); got {images.shape}.'
      )
    logits, feats = [], []
    for start in range(0, images.shape[0], self.batch_size):
      chunk = images[start : start + self.batch_size]
      n = chunk.shape[0]
      padded = np.concatenate(
        [chunk, np.zeros((self.batch_size - n,) + chunk.shape[1:], np.float32)]
      )  # one compiled shape
      lg, ft = _apply(self.params, padded)
      logits.append(np.asarray(lg)[:n])
      feats.append(np.asarray(ft)[:n])
    if not logits:
      return np.zeros((0, NUM_CLASSES), np.float32), np.zeros((0, FEATURE_DIM), np.float32)
    return np.concatenate(logits), np.concatenate(feats)


def train_classifier(
  image_size: int, *, seed: int = 0, num_steps: int = 600, batch_size: int = 128
) -> DigitsClassifier:
  """Trains the digits classifier on the train split (deterministic given seed; seconds on CPU)."""
  images, labels = load_digits('train', image_size)
  if image_size < 4:
    raise ValueError(f'image_size must be >= 4 for the digits classifier; got {image_size}.')
  params, _ = _train(
    jnp.asarray(images),
    jnp.asarray(labels),
    jax.random.key(seed),
    num_steps=num_steps,
    batch_size=batch_size,
  )
  return DigitsClassifier(jax.device_get(params), image_size)


def load_or_train_classifier(
  image_size: int, cache_dir: str | None = None, seed: int = 0
) -> DigitsClassifier:
  """The classifier from `cache_dir/digits_classifier_{S}px.npz`, training and caching it first
  when the file is absent (or always training when cache_dir is None)."""
  from flax import traverse_util

  path = None
  if cache_dir:
    path = os.path.join(cache_dir, f'digits_classifier_{image_size}px_seed{seed}.npz')
    if os.path.isfile(path):
      with np.load(path) as data:
        if int(data['__version__']) == _CACHE_VERSION:
          flat = {k: data[k] for k in data.files if k != '__version__'}
          return DigitsClassifier(traverse_util.unflatten_dict(flat, sep='/'), image_size)
  classifier = train_classifier(image_size, seed=seed)
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    flat = traverse_util.flatten_dict(classifier.params, sep='/')
    tmp = f'{path}.tmp-{os.getpid()}.npz'  # one per process: hosts may train it at once
    np.savez(tmp, __version__=_CACHE_VERSION, **{k: np.asarray(v) for k, v in flat.items()})
    os.replace(tmp, path)
  return classifier


class DigitsMetric:
  """Scores digit images: classifier accuracy and penultimate-feature Frechet distance.

  On construction it loads (or trains) the classifier and computes the train-split feature
  statistics, the real test split's accuracy and its Frechet distance to train (the baseline).
  """

  def __init__(self, image_size: int, cache_dir: str | None = None, seed: int = 0):
    self.classifier = load_or_train_classifier(image_size, cache_dir, seed)
    train_images, _ = load_digits('train', image_size)
    test_images, test_labels = load_digits('test', image_size)
    _, train_feats = self.classifier(train_images)
    self.train_stats = frechet.feature_statistics(train_feats)
    self.num_test = int(test_images.shape[0])
    self.real = self.score(test_images, test_labels)

  def score(self, images: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """{'accuracy' (when labels >= 0 are given), 'frechet'} of images [N, S, S, 1] in [-1, 1]."""
    logits, feats = self.classifier(images)
    out = {
      'frechet': frechet.frechet_distance(*frechet.feature_statistics(feats), *self.train_stats)
    }
    if labels is not None:
      labels = np.asarray(labels).reshape(-1)
      known = labels >= 0
      if known.any():
        out['accuracy'] = float(np.mean(np.argmax(logits[known], -1) == labels[known]))
    return out

  def report(self, images: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """score() of the samples with the real test split's numbers beside it."""
    return self._with_real({f'digits_{k}': v for k, v in self.score(images, labels).items()})

  def _with_real(self, out: dict[str, float]) -> dict[str, float]:
    out['digits_frechet_real_test'] = self.real['frechet']
    out['digits_accuracy_real_test'] = self.real['accuracy']
    out['digits_num_real_test'] = float(self.num_test)
    return out

  def features(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """{'logits' [N, 10], 'features' [N, 64]} of images [N, S, S, 1] in [-1, 1]."""
    logits, feats = self.classifier(images)
    return {'logits': logits, 'features': feats}

  def settings(self) -> dict[str, object]:
    """What the features depend on: the classifier (its size, version and weights)."""
    leaves = jax.tree.leaves(self.classifier.params)
    checksum = sum(float(np.abs(np.asarray(x, np.float64)).sum()) for x in leaves)
    return {
      'image_size': self.classifier.image_size,
      'cache_version': _CACHE_VERSION,
      'params_abs_sum': f'{checksum:.10e}',
    }

  def accumulator(self) -> DigitsAccumulator:
    """A streaming report(): feed it features() batch by batch."""
    return DigitsAccumulator(self)


class DigitsAccumulator:
  """DigitsMetric.report() from features() of batches: float64 running feature statistics
  and accuracy counts, so memory does not grow with the number of samples."""

  def __init__(self, metric: DigitsMetric):
    self.metric = metric
    self.stats = frechet.RunningStatistics(FEATURE_DIM)
    self.correct = 0
    self.known = 0

  def update(self, logits: np.ndarray, features: np.ndarray, labels: np.ndarray) -> None:
    """Adds a batch: logits [B, 10], features [B, 64], labels [B] (-1 = unconditional)."""
    labels = np.asarray(labels).reshape(-1)
    self.stats.update(features)
    known = labels >= 0
    self.correct += int(np.sum(np.argmax(logits[known], -1) == labels[known]))
    self.known += int(known.sum())

  def report(self) -> dict[str, float]:
    """The keys of DigitsMetric.report()."""
    mu, sigma = self.stats.statistics()
    out = {'digits_frechet': frechet.frechet_distance(mu, sigma, *self.metric.train_stats)}
    if self.known:
      out['digits_accuracy'] = self.correct / self.known
    return self.metric._with_real(out)
