"""Tests of the evaluation metrics: Frechet distance, Inception Score, precision/recall,
reference statistics, the digits metric and evaluate() (diffusion_jax/evaluation/)."""

import importlib
import json
import math
import os

import ml_collections
import numpy as np
import pytest
import scipy.linalg

from diffusion_jax.evaluation import (
  digits_metric,
  frechet,
  inception,
  inception_score,
  precision_recall,
  reference_stats,
)

# The package attribute `evaluate` is the function; this is the module.
evaluate = importlib.import_module('diffusion_jax.evaluation.evaluate')

# ---------------------------------------------------------------------------------------------
# Frechet distance.


def _random_cov(rng, d, n=None):
  n = n or 3 * d
  a = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
  return np.cov(a, rowvar=False)


def _reference_fd(mu1, s1, mu2, s2):
  # Independent float64 route: eigenvalues of S1 S2 are those of S1^(1/2) S2 S1^(1/2) >= 0.
  eig = np.linalg.eigvals(s1 @ s2).real
  return float(
    np.sum((mu1 - mu2) ** 2)
    + np.trace(s1)
    + np.trace(s2)
    - 2 * np.sum(np.sqrt(np.clip(eig, 0, None)))
  )


@pytest.mark.parametrize('method', ['sqrtm', 'eigh'])
def test_frechet_matches_float64_reference(method):
  rng = np.random.default_rng(0)
  d = 24
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) + 0.5
  s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
  got = frechet.frechet_distance(mu1, s1, mu2, s2, method=method)
  np.testing.assert_allclose(got, _reference_fd(mu1, s1, mu2, s2), rtol=1e-8)
  # Also the scipy formula written out (what pytorch-fid computes).
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  np.testing.assert_allclose(got, direct, rtol=1e-8)


def test_frechet_closed_form_diagonal_and_zero_for_identical():
  rng = np.random.default_rng(1)
  a, b = rng.uniform(0.1, 3, 10), rng.uniform(0.1, 3, 10)
  mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  for method in ('sqrtm', 'eigh'):
    got = frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    np.testing.assert_allclose(got, want, rtol=1e-10)
  # Identical statistics of realistic size: zero relative to the covariance scale.
  feats = rng.standard_normal((500, 64)) @ rng.standard_normal((64, 64)) + 3.0
  mu, sigma = frechet.feature_statistics(feats)
  for method in ('sqrtm', 'eigh'):
    assert abs(frechet.frechet_distance(mu, sigma, mu, sigma, method=method)) < (
      1e-6 * np.trace(sigma)
    )


def test_frechet_singular_covariances_agree():
  rng = np.random.default_rng(2)
  d = 32  # N < D: rank-deficient covariances, the case the eps fallback exists for.
  f1, f2 = rng.standard_normal((20, d)), rng.standard_normal((20, d)) + 0.1
  (mu1, s1), (mu2, s2) = frechet.feature_statistics(f1), frechet.feature_statistics(f2)
  a = frechet.frechet_distance(mu1, s1, mu2, s2, method='sqrtm')
  b = frechet.frechet_distance(mu1, s1, mu2, s2, method='eigh')
  assert np.isfinite(a) and np.isfinite(b)
  np.testing.assert_allclose(a, b, rtol=1e-3)


def test_frechet_bad_input():
  with pytest.raises(ValueError, match='sigma1 and sigma2'):
    frechet.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match='method'):
    frechet.trace_sqrt_product(np.eye(2), np.eye(2), method='svd')
  with pytest.raises(ValueError, match='N >= 2'):
    frechet.feature_statistics(np.zeros((1, 4)))


def test_running_statistics_match_numpy():
  rng = np.random.default_rng(3)
  feats = rng.standard_normal((301, 7)) * 0.01 + 1e3  # large offset, small spread
  stats = frechet.RunningStatistics(7)
  for chunk in np.array_split(feats, 5):
    stats.update(chunk)
  mu, sigma = stats.statistics()
  np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-7, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Inception Score.


def test_inception_score_uniform_and_one_hot():
  k, splits = 10, 10
  mean, std = inception_score.inception_score(np.zeros((200, k)), splits)
  assert abs(mean - 1.0) < 1e-12 and std < 1e-12
  labels = np.tile(np.arange(k), 50)  # 500 = 10 splits of 50: every class 5 times per split
  mean, std = inception_score.inception_score(100.0 * np.eye(k)[labels], splits)
  np.testing.assert_allclose(mean, k, rtol=1e-6)
  assert std < 1e-6
  # All samples confidently the same class: no diversity, IS 1.
  mean, _ = inception_score.inception_score(100.0 * np.eye(k)[np.zeros(500, int)], splits)
  np.testing.assert_allclose(mean, 1.0, rtol=1e-6)


def test_inception_score_matches_definition():
  rng = np.random.default_rng(4)
  logits = 3 * rng.standard_normal((90, 6))
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  scores = []
  for part in np.array_split(p, 3):
    py = part.mean(0)
    scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
  mean, std = inception_score.inception_score(logits, 3)
  np.testing.assert_allclose([mean, std], [np.mean(scores), np.std(scores)], rtol=1e-10)
  with pytest.raises(ValueError, match='num_splits'):
    inception_score.inception_score(logits, 0)


# ---------------------------------------------------------------------------------------------
# Precision / recall.


def test_precision_recall_matches_brute_force():
  rng = np.random.default_rng(5)
  real = rng.standard_normal((60, 3))
  fake = rng.standard_normal((50, 3)) * 1.5 + 0.7

  def brute(ref, query, k=3):
    d_ref = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
    radii = np.sort(d_ref, axis=1)[:, k]
    d = np.linalg.norm(query[:, None] - ref[None], axis=-1)
    return np.mean(np.any(d <= radii[None], axis=1))

  got = precision_recall.precision_recall(real, fake, k=3, batch_size=16)
  assert got['precision'] == pytest.approx(brute(real, fake), abs=1e-12)
  assert got['recall'] == pytest.approx(brute(fake, real), abs=1e-12)
  assert 0.0 < got['precision'] < 1.0 and 0.0 < got['recall'] < 1.0
  same = precision_recall.precision_recall(real, real.copy())
  assert same == {'precision': 1.0, 'recall': 1.0}
  far = precision_recall.precision_recall(real, real + 100.0)
  assert far == {'precision': 0.0, 'recall': 0.0}


# ---------------------------------------------------------------------------------------------
# Reference statistics files.


def test_reference_stats_round_trip_and_adm_format(tmp_path):
  rng = np.random.default_rng(6)
  mu, sigma = rng.standard_normal(5), _random_cov(rng, 5)
  path = reference_stats.save_reference_stats(str(tmp_path / 'ref.npz'), mu, sigma)
  got_mu, got_sigma = reference_stats.load_reference_stats(path)
  np.testing.assert_array_equal(got_mu, mu)
  np.testing.assert_array_equal(got_sigma, sigma)
  # An ADM-suite reference batch: images plus mu/sigma and spatial statistics.
  adm = str(tmp_path / 'VIRTUAL_ref.npz')
  np.savez(adm, arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=mu, sigma=sigma, mu_s=mu, sigma_s=sigma)
  np.testing.assert_array_equal(reference_stats.load_reference_stats(adm)[1], sigma)
  images_only = str(tmp_path / 'samples.npz')
  np.savez(images_only, arr_0=np.zeros((2, 4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match='arr_0'):
    reference_stats.load_reference_stats(images_only)
  with pytest.raises(FileNotFoundError, match='config.eval.reference_stats'):
    reference_stats.load_reference_stats(str(tmp_path / 'missing.npz'))


def test_compute_reference_stats_streams_batches():
  rng = np.random.default_rng(7)
  images = rng.integers(0, 256, (37, 4, 4, 1), dtype=np.uint8)
  proj = rng.standard_normal((16, 3))

  def feature_fn(x):  # float images in [-1, 1] -> a linear feature
    assert x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    return {'pool': x.reshape(len(x), -1) @ proj}

  batches = (images[i : i + 10] for i in range(0, 37, 10))
  mu, sigma = reference_stats.compute_reference_stats(batches, feature_fn, max_examples=33)
  feats = (images[:33].astype(np.float64) / 127.5 - 1).reshape(33, -1) @ proj
  np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-6)


def test_tfds_reference_batches_resize_and_batch():
  tfds = pytest.importorskip('tensorflow_datasets')
  from PIL import Image

  from diffusion_jax.data import preprocess

  with tfds.testing.mock_data(num_examples=12):
    batches = list(reference_stats.tfds_image_batches('cifar10', 'train', 16, batch_size=5))
    raw = [ex['image'] for ex in tfds.as_numpy(tfds.load('cifar10', split='train'))]
  assert [b.shape for b in batches] == [(5, 16, 16, 3), (5, 16, 16, 3), (2, 16, 16, 3)]
  assert batches[0].dtype == np.uint8
  # Same crop/resize as the training pipeline's ADM center crop.
  np.testing.assert_array_equal(
    batches[0][0], preprocess.center_crop_arr(Image.fromarray(raw[0]), 16)
  )


# ---------------------------------------------------------------------------------------------
# Digits metric.


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('run'))


@pytest.fixture(scope='module')
def cache_dir(workdir):
  return os.path.join(workdir, 'eval')  # where evaluate() caches the classifier


@pytest.fixture(scope='module')
def digits(cache_dir):
  return digits_metric.DigitsMetric(16, cache_dir=cache_dir)


def test_digits_metric_real_vs_noise(digits):
  assert digits.real['accuracy'] >= 0.95
  n = 1000
  rng = np.random.default_rng(8)
  noise = rng.uniform(-1, 1, (n, 16, 16, 1)).astype(np.float32)
  labels = np.arange(n) % 10
  scores = digits.score(noise, labels)
  # Predictions cannot depend on labels that are balanced and independent of the images:
  # accuracy is 0.1 up to binomial noise (4 standard deviations).
  assert abs(scores['accuracy'] - 0.1) < 4 * math.sqrt(0.1 * 0.9 / n)
  assert scores['frechet'] > 20 * digits.real['frechet']
  train_images, train_labels = digits_metric.load_digits('train', 16)
  train = digits.score(train_images, train_labels)
  assert abs(train['frechet']) < 1e-6 * scores['frechet']  # train vs its own statistics
  assert 'accuracy' not in digits.score(noise, np.full(n, -1))  # unconditional: no accuracy


def test_digits_classifier_cache(digits, cache_dir):
  files = [f for f in os.listdir(cache_dir) if f.startswith('digits_classifier_16px')]
  assert len(files) == 1
  again = digits_metric.load_or_train_classifier(16, cache_dir)
  x, _ = digits_metric.load_digits('test', 16)
  np.testing.assert_array_equal(again(x[:5])[0], digits.classifier(x[:5])[0])
  with pytest.raises(ValueError, match=r'\[N, 16, 16, 1\]'):
    digits.classifier(np.zeros((2, 8, 8, 1), np.float32))


# ---------------------------------------------------------------------------------------------
# evaluate().


def _config(metrics, objective='chen'):
  c = ml_collections.ConfigDict()
  c.seed = 3
  c.data = ml_collections.ConfigDict(
    dict(name='digits', image_size=16, num_channels=1, num_classes=10)
  )
  c.diffusion = ml_collections.ConfigDict(dict(objective=objective, num_timesteps=1000))
  c.sample = ml_collections.ConfigDict(
    dict(sampler='chen_ddpm', num_steps=100, batch_size=64, guidance=0.0)
  )
  c.training = ml_collections.ConfigDict(dict(mesh_fsdp=1))
  c.eval = ml_collections.ConfigDict(
    dict(num_samples=150, metrics=metrics, inception_weights='', reference_stats='')
  )
  return c


@pytest.fixture(scope='module')
def test_split():
  return digits_metric.load_digits('test', 16)


def test_evaluate_digits_with_label_sampler(digits, workdir, test_split, capsys):
  images, labels = test_split
  by_class = {c: images[labels == c] for c in range(10)}
  calls = []

  def sample_fn(labels, rng):  # the trainer's convention: labels in, uint8 images out
    calls.append(len(labels))
    out = np.stack([by_class[c][i % len(by_class[c])] for i, c in enumerate(labels)])
    return np.round((out + 1) * 127.5).astype(np.uint8)

  config = _config(('digits',))
  config.eval.save_samples = True
  results = evaluate.evaluate(config, workdir, sample_fn)
  assert calls == [64, 64, 22]
  with np.load(os.path.join(workdir, 'eval', 'samples_150x16x16x1.npz')) as saved_npz:
    assert saved_npz['arr_0'].dtype == np.uint8
    np.testing.assert_array_equal(saved_npz['arr_1'], np.arange(150) % 10)
  assert results['digits_accuracy'] >= 0.95
  assert results['digits_frechet'] < 5 * results['digits_frechet_real_test'] + 1.0
  with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
    saved = json.load(f)
  assert saved['metrics']['digits_accuracy'] == results['digits_accuracy']
  assert saved['protocol']['num_samples'] == 150 and saved['protocol']['seed'] == 3
  printed = capsys.readouterr().out
  for needle in ('150', "'chen_ddpm'", 'NFE', 'seed 3', 'digits train split'):
    assert needle in printed


def test_evaluate_count_sampler_and_fid_wiring(monkeypatch, tmp_path):
  # The Inception network is replaced by a fixed linear feature map (no compile): this
  # checks the plumbing (batches, statistics, reference file, IS, JSON), not the network.
  rng = np.random.default_rng(9)
  proj = rng.standard_normal((256, 40)) / 16  # 40-d 'pool' features: a cheap Frechet

  class FakeExtractor:
    def __init__(self, variables, batch_size):
      del variables, batch_size

    def __call__(self, images):
      feats = images.reshape(len(images), -1) @ proj
      return {'pool': feats, 'logits': feats[:, :12]}

  monkeypatch.setattr(evaluate.inception, 'load_inception_variables', lambda path: {})
  monkeypatch.setattr(evaluate.inception, 'InceptionFeatureExtractor', FakeExtractor)
  ref_images = rng.uniform(-1, 1, (300, 16, 16, 1))
  ref_feats = ref_images.reshape(300, -1) @ proj
  ref_path = reference_stats.save_reference_stats(
    str(tmp_path / 'ref.npz'), *frechet.feature_statistics(ref_feats)
  )
  seen = []

  def sample_fn(num_samples, rng):  # the (num_samples, rng) -> (images, labels) convention
    seen.append(num_samples)
    x = np.random.default_rng(len(seen)).uniform(-1, 1, (num_samples, 16, 16, 1))
    return x.astype(np.float32), np.zeros(num_samples, np.int32)

  config = _config(('fid', 'is'))
  config.eval.reference_stats = ref_path
  config.eval.inception_weights = 'unused.npz'
  results = evaluate.evaluate(config, str(tmp_path), sample_fn)
  assert seen == [64, 64, 22]
  all_x = np.concatenate(
    [np.random.default_rng(i).uniform(-1, 1, (n, 16, 16, 1)) for i, n in zip((1, 2, 3), seen)]
  ).astype(np.float32)
  # The fake extractor sees the images as stored in the shards: on the 8-bit grid.
  feats = inception.quantize_images(all_x).reshape(150, -1) @ proj
  want = frechet.frechet_distance(
    *frechet.feature_statistics(feats), *frechet.feature_statistics(ref_feats)
  )
  np.testing.assert_allclose(results['fid'], want, rtol=1e-8)
  want_is = inception_score.inception_score(feats[:, :12], 10)
  np.testing.assert_allclose(results['inception_score'], want_is[0], rtol=1e-6)


def test_evaluate_fails_before_sampling(tmp_path):
  def sample_fn(num_samples, rng):
    raise AssertionError('must not sample when a prerequisite is missing')

  config = _config(('fid',))
  config.eval.inception_weights = str(tmp_path / 'inception.npz')
  with pytest.raises(inception.InceptionWeightsNotFoundError, match='inception.npz'):
    evaluate.evaluate(config, str(tmp_path), sample_fn)
  with pytest.raises(ValueError, match='discrete-time objective'):
    evaluate.evaluate(_config(('digits', 'nll'), objective='chen'), str(tmp_path), sample_fn)
  with pytest.raises(ValueError, match='config.eval.metrics'):
    evaluate.evaluate(_config(('fid', 'kid')), str(tmp_path), sample_fn)
  bad = _config(('digits',))
  bad.data.name = 'cifar10'
  with pytest.raises(ValueError, match="config.data.name='digits'"):
    evaluate.evaluate(bad, str(tmp_path), sample_fn)


def test_evaluate_nll_with_given_fn(tmp_path, test_split):
  images, labels = test_split
  batches = [{'image': images[i : i + 50], 'label': labels[i : i + 50]} for i in range(0, 150, 50)]
  seen = []

  def nll_fn(x, y, rng):  # a stand-in bound: checks quantized inputs and the averaging
    seen.append(x)
    return 3.0 + x.reshape(len(x), -1).mean(1)

  results = evaluate.evaluate(
    _config(('nll',), objective='ddpm'), str(tmp_path), None, nll_fn=nll_fn, nll_batches=batches
  )
  x = np.concatenate(seen)
  np.testing.assert_allclose(x, inception.quantize_images(images[:150]))
  per = 3.0 + x.reshape(150, -1).mean(1)
  np.testing.assert_allclose(results['nll_bpd'], per.mean(), rtol=1e-6)
  np.testing.assert_allclose(results['nll_bpd_stderr'], per.std(ddof=1) / np.sqrt(150), rtol=1e-6)
