"""Evaluation at scale (diffusion_jax/evaluation/streaming.py, shards.py): shards on disk, a
killed evaluation resumed with the metrics of an uninterrupted one, stale shards not reused,
and the streaming statistics against numpy."""

import dataclasses
import functools
import glob
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits as digits_config
from diffusion_jax import build, generation
from diffusion_jax import config as config_lib
from diffusion_jax.evaluation import (
  digits_metric,
  frechet,
  inception,
  inception_score,
  reference_stats,
  shards,
)
from diffusion_jax.training import checkpointing
from diffusion_jax.training import sharding as sharding_lib

evaluate = importlib.import_module('diffusion_jax.evaluation.evaluate')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_SAMPLES, SHARD = 40, 8  # 5 shards


class Preempted(Exception):
  """Stands for the kill of a preempted job."""


class CountingSampler:
  """load_sampler's sampler, counting the shards it samples; raises once `fail_after` ran."""

  takes_labels = True

  def __init__(self, sample_fn, fail_after=None):
    self.inner, self.fail_after, self.calls = sample_fn, fail_after, 0
    self.fingerprint = sample_fn.fingerprint

  def __call__(self, labels, rng):
    raise AssertionError('the evaluator samples through process_local')

  def process_local(self, labels, rng):
    if self.fail_after is not None and self.calls >= self.fail_after:
      raise Preempted
    self.calls += 1
    return self.inner.process_local(labels, rng)


def _config(**eval_overrides):
  config = digits_config.get_config('tiny')
  config.eval.metrics = ('digits',)
  config.eval.num_samples = NUM_SAMPLES
  config.eval.batch_size = SHARD
  config.sample.batch_size = SHARD  # load_sampler's own batches: the same compiled shape
  for key, value in eval_overrides.items():
    config.eval[key] = value
  return config


def _untrained_classifier():
  """A fixed random digits classifier: deterministic, and nothing to train."""
  rng = np.random.default_rng(0)
  sizes = {'hidden': (256, 256), 'penultimate': (256, 64), 'head': (64, 10)}
  params = {
    name: {'kernel': rng.standard_normal(shape, np.float32) / 16, 'bias': np.zeros(shape[1:])}
    for name, shape in sizes.items()
  }
  return digits_metric.DigitsClassifier({'params': params}, 16)


@pytest.fixture(scope='module', autouse=True)
def untrained_classifier():
  classifier = _untrained_classifier()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(digits_metric, 'load_or_train_classifier', lambda *a, **k: classifier)
    yield classifier


def _random_state(components, seed):
  # A checkpoint-shaped state of random parameters, without compiling the initializer.
  rng = np.random.default_rng(seed)

  def leaf(shape, sharding):
    if jax.dtypes.issubdtype(shape.dtype, jax.dtypes.prng_key):
      return jax.device_put(jax.random.key(seed), sharding)
    if jax.dtypes.issubdtype(shape.dtype, np.floating):
      value = 0.05 * rng.standard_normal(shape.shape)
    else:
      value = np.zeros(shape.shape)
    return jax.device_put(value.astype(shape.dtype), sharding)

  abstract = jax.eval_shape(components.init_fn, jax.random.key(0))
  return jax.tree.map(leaf, abstract, components.state_sharding)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A workdir with a checkpoint of random parameters, its components and its sampler."""
  workdir = str(tmp_path_factory.mktemp('eval_resume') / 'base')
  components = build.build(config_lib.build_run_config(_config()))
  state = _random_state(components, 0)
  with checkpointing.Checkpointer(workdir, save_every=1, async_save=False) as ckpt:
    ckpt.save(1, state, force=True)
  sample_fn, step = generation.load_sampler(components, workdir)
  assert step == 1 and sample_fn.fingerprint['checkpoint_step'] == 1
  return workdir, components, sample_fn, state


def _copy(run_dir, name):
  workdir = os.path.join(os.path.dirname(run_dir[0]), name)
  shutil.copytree(run_dir[0], workdir)
  return workdir


def _metrics(results):
  return {k: v for k, v in results.items() if not k.endswith('seconds')}


def _components(components, config):
  # The same jitted sampler under another config's eval settings (no recompile).
  return dataclasses.replace(components, run=config_lib.build_run_config(config))


def _eval(components, config, workdir, sampler):
  return evaluate.evaluate(config, workdir, sampler, components=_components(components, config))


@pytest.fixture(scope='module')
def straight(run_dir):
  """An uninterrupted evaluation: (workdir, results)."""
  workdir = _copy(run_dir, 'straight')
  sampler = CountingSampler(run_dir[2])
  results = _eval(run_dir[1], _config(), workdir, sampler)
  assert sampler.calls == NUM_SAMPLES // SHARD
  return workdir, results


def test_running_statistics_match_numpy():
  rng = np.random.default_rng(0)
  feats = rng.standard_normal((1003, 16)) @ rng.standard_normal((16, 16)) * 0.01 + 50.0
  stats = frechet.RunningStatistics(16)
  for chunk in np.split(feats, [1, 250, 251, 700]):  # uneven shards, one of a single row
    stats.update(chunk.astype(np.float32).astype(np.float64))
  mu, sigma = stats.statistics()
  want = feats.astype(np.float32).astype(np.float64)
  np.testing.assert_allclose(mu, want.mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(want, rowvar=False), rtol=1e-9, atol=1e-15)
  # The Inception Score's per-split sums, the splits cutting through the batches.
  logits = 4 * rng.standard_normal((1003, 12))
  score = inception_score.RunningInceptionScore(1003, 7)
  for chunk in np.split(logits, [100, 101, 600]):
    score.update(chunk)
  np.testing.assert_allclose(score.result(), inception_score.inception_score(logits, 7), rtol=1e-10)
  with pytest.raises(ValueError, match='num_splits'):
    inception_score.RunningInceptionScore(5, 6)


def test_process_local_rows_are_those_of_the_whole_batch(run_dir):
  sample_fn = run_dir[2]
  labels, rng = np.arange(12) % 10, jax.random.key(5)
  whole = sample_fn(labels, rng)  # two batches of 8, the second padded
  assert whole.shape == (12, 16, 16, 1) and whole.dtype == np.uint8
  rows, local = sample_fn.process_local(labels[:5], rng)  # one process holds every row
  np.testing.assert_array_equal(rows, np.arange(8))  # 3 rows of padding
  np.testing.assert_array_equal(local[:5], whole[:5])
  assert len(np.unique(whole.reshape(12, -1), axis=0)) == 12


def test_kill_and_resume_gives_the_metrics_of_an_uninterrupted_eval(run_dir, straight):
  straight_dir, want = straight
  workdir = _copy(run_dir, 'resumed')
  config = _config()
  killed = CountingSampler(run_dir[2], fail_after=2)
  with pytest.raises(Preempted):
    _eval(run_dir[1], config, workdir, killed)
  store = shards.ShardStore(os.path.join(workdir, 'eval'), NUM_SAMPLES, SHARD)
  assert [store.has_samples(i) for i in range(5)] == [True, True, False, False, False]
  # A kill while a shard was being written leaves only a temporary file.
  with open(os.path.join(store.samples_dir, '.shard_00002.npz.tmp-99'), 'wb') as f:
    f.write(b'partial')
  config.eval.save_samples = True  # not part of what the samples depend on
  resumed = CountingSampler(run_dir[2])
  got = _eval(run_dir[1], config, workdir, resumed)
  assert resumed.calls == 3  # the two finished shards were not sampled again
  assert _metrics(got) == _metrics(want)
  assert got['digits_frechet'] > 0 and 0 <= got['digits_accuracy'] <= 1
  other = shards.ShardStore(os.path.join(straight_dir, 'eval'), NUM_SAMPLES, SHARD)
  for i in range(5):
    for a, b in zip(store.load_samples(i), other.load_samples(i), strict=True):
      np.testing.assert_array_equal(a, b)
  assert not glob.glob(os.path.join(store.samples_dir, '.*'))
  with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
    assert json.load(f)['metrics']['digits_frechet'] == want['digits_frechet']
  # The ADM suite's file, streamed from the shards.
  with np.load(os.path.join(workdir, 'eval', f'samples_{NUM_SAMPLES}x16x16x1.npz')) as f:
    np.testing.assert_array_equal(
      f['arr_0'], np.concatenate([store.load_samples(i)[0] for i in range(5)])
    )
    np.testing.assert_array_equal(f['arr_1'], np.arange(NUM_SAMPLES) % 10)


def test_changed_settings_do_not_reuse_shards(run_dir, straight):
  workdir = _copy(run_dir, 'changed')
  components, sample_fn, state = run_dir[1:]
  first = CountingSampler(sample_fn)
  base = _eval(components, _config(), workdir, first)
  assert first.calls == 5 and _metrics(base) == _metrics(straight[1])
  # Another seed: every shard is sampled again, with other images.
  reseeded = CountingSampler(sample_fn)
  other = _eval(components, _config(seed=7), workdir, reseeded)
  assert reseeded.calls == 5 and other['digits_frechet'] != base['digits_frechet']
  manifest = shards.ShardStore(os.path.join(workdir, 'eval'), NUM_SAMPLES, SHARD).read_manifest()
  assert manifest['samples']['settings']['seed'] == 7
  # More samples with the same settings: only the new shard is sampled.
  more = CountingSampler(sample_fn)
  _eval(components, _config(seed=7, num_samples=NUM_SAMPLES + SHARD), workdir, more)
  assert more.calls == 1
  # Other parameters (a newer checkpoint): every shard again.
  moved = state.replace(ema_params=jax.tree.map(lambda x: x * 1.5, state.ema_params))
  with checkpointing.Checkpointer(workdir, save_every=1, async_save=False) as ckpt:
    ckpt.save(2, moved, force=True)
  newer, step = generation.load_sampler(components, workdir)
  assert step == 2 and newer.fingerprint != sample_fn.fingerprint
  resampled = CountingSampler(newer)
  _eval(components, _config(seed=7), workdir, resampled)
  assert resampled.calls == 5


def test_new_metric_reuses_the_stored_images(run_dir, straight, monkeypatch, tmp_path, caplog):
  # The Inception network is replaced by a fixed linear map (no compile): adding 'fid' to
  # a finished evaluation computes features from the stored shards and samples nothing.
  workdir = _copy(run_dir, 'new_metric')
  shutil.copytree(
    os.path.join(straight[0], 'eval'), os.path.join(workdir, 'eval'), dirs_exist_ok=True
  )
  proj = np.random.default_rng(1).standard_normal((256, 20)) / 16

  class FakeExtractor:
    def __init__(self, variables, batch_size):
      del variables, batch_size

    def __call__(self, images):
      feats = images.reshape(len(images), -1) @ proj
      return {'pool': feats, 'logits': feats[:, :5]}

  monkeypatch.setattr(inception, 'load_inception_variables', lambda path: {})
  monkeypatch.setattr(inception, 'InceptionFeatureExtractor', FakeExtractor)
  ref = np.random.default_rng(2).standard_normal((100, 20))
  ref_path = reference_stats.save_reference_stats(
    str(tmp_path / 'ref.npz'), *frechet.feature_statistics(ref)
  )
  config = _config(metrics=('digits', 'fid'), reference_stats=ref_path, inception_weights='w.npz')
  sampler = CountingSampler(run_dir[2])
  got = _eval(run_dir[1], config, workdir, sampler)
  assert sampler.calls == 0
  assert _metrics(got) == {**_metrics(straight[1]), 'fid': got['fid']}
  store = shards.ShardStore(os.path.join(workdir, 'eval'), NUM_SAMPLES, SHARD)
  images = np.concatenate([store.load_samples(i)[0] for i in range(5)])
  feats = (images.astype(np.float32) / np.float32(127.5) - 1).reshape(NUM_SAMPLES, -1) @ proj
  want = frechet.frechet_distance(
    *frechet.feature_statistics(feats), *frechet.feature_statistics(ref)
  )
  np.testing.assert_allclose(got['fid'], want, rtol=1e-8)
  assert all(store.has_features(i, 'inception') for i in range(5))
  # Other Inception weights: those features are recomputed, the images kept.
  config.eval.inception_weights = 'other.npz'
  with caplog.at_level(logging.WARNING):
    again = _eval(run_dir[1], config, workdir, sampler)
  assert sampler.calls == 0 and again['fid'] == got['fid']
  assert 'hold inception features of other settings (weights)' in caplog.text
  assert all(store.has_samples(i) and store.has_features(i, 'digits') for i in range(5))


def test_host_memory_holds_about_one_shard(monkeypatch, tmp_path):
  # 60 shards of 32x32x3 samples, their features and the ADM file streamed from them: the
  # evaluator's peak allocation (numpy's, traced) is that of 6 shards, a few shards' bytes.
  class FakeExtractor:  # 8x8 block means: 48-d 'pool' features, no network
    def __init__(self, variables, batch_size):
      del variables, batch_size

    def __call__(self, images):
      pool = images.reshape(len(images), 4, 8, 4, 8, 3).mean((2, 4)).reshape(len(images), -1)
      return {'pool': pool, 'logits': pool[:, :10]}

  monkeypatch.setattr(inception, 'load_inception_variables', lambda path: {})
  monkeypatch.setattr(inception, 'InceptionFeatureExtractor', FakeExtractor)
  ref = np.random.default_rng(3).standard_normal((200, 48))
  ref_path = reference_stats.save_reference_stats(
    str(tmp_path / 'ref.npz'), *frechet.feature_statistics(ref)
  )
  shard = 50

  def peak_bytes(n):
    config = _config(metrics=('fid', 'is'), num_samples=n, batch_size=shard, save_samples=True)
    config.eval.reference_stats, config.eval.inception_weights = ref_path, 'w.npz'
    config.data.image_size, config.data.num_channels = 32, 3
    components = build.build(config_lib.build_run_config(config))
    workdir = str(tmp_path / f'n{n}')
    tracemalloc.start()
    try:
      results = evaluate.evaluate(config, workdir, sample_fn, components=components)
      peak = tracemalloc.get_traced_memory()[1]
    finally:
      tracemalloc.stop()
    assert np.isfinite(results['fid']) and results['inception_score'] > 1
    with np.load(os.path.join(workdir, 'eval', f'samples_{n}x32x32x3.npz')) as f:
      assert f['arr_0'].shape == (n, 32, 32, 3)
    return peak

  def sample_fn(num_samples, rng):
    seed = int(jax.random.randint(rng, (), 0, 2**30))
    images = np.random.default_rng(seed).integers(0, 256, (num_samples, 32, 32, 3), np.uint8)
    return images, np.zeros(num_samples, np.int32)

  few, many = peak_bytes(300), peak_bytes(3000)  # 6 and 60 shards
  assert many < 1.2 * few + 50_000, (few, many)  # does not grow with the number of samples
  assert many < 3000 * 32 * 32 * 3 / 4, many  # under a quarter of the samples' bytes


# ---------------------------------------------------------------------------------------------
# Two hosts: 2 processes x 4 CPU devices (gloo) write the shards of 1 process x 8 devices.


class ToySampler:
  """A sampler without a network, over the global batch like load_sampler's process_local:
  tanh(noise / 2 + label / 10), each process returning the rows its devices hold."""

  takes_labels = True
  fingerprint = {'toy': 1}

  def __init__(self, fail_after=None):
    self.sharding = sharding_lib.batch_sharding(sharding_lib.create_mesh(1))
    self.fail_after, self.calls = fail_after, 0

  def __call__(self, labels, rng):
    raise AssertionError('the evaluator samples through process_local')

  def process_local(self, labels, rng):
    if self.fail_after is not None and self.calls >= self.fail_after:
      raise Preempted
    self.calls += 1
    size = -(-len(labels) // jax.device_count()) * jax.device_count()
    padded = np.pad(labels, (0, size - len(labels)))
    labels = jax.make_array_from_callback((size,), self.sharding, lambda index: padded[index])
    images = _toy_images(rng, labels, self.sharding)
    rows, local = generation.local_rows(images)
    return rows, generation.to_uint8(local)


@functools.partial(jax.jit, static_argnums=2)
def _toy_images(rng, labels, sharding):
  noise = jax.random.normal(rng, (labels.shape[0], 16, 16, 1))
  images = jnp.tanh(noise / 2 + labels[:, None, None, None] / 10)
  return jax.lax.with_sharding_constraint(images, sharding)


def _host(argv):
  """One process of the two-host job: killed after 2 shards, then resumed."""
  args = dict(a.removeprefix('--').split('=', 1) for a in argv)
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
    coordinator_address=args['coordinator'],
    num_processes=2,
    process_id=int(args['process_id']),
    initialization_timeout=120,
  )
  classifier = _untrained_classifier()
  digits_metric.load_or_train_classifier = lambda *a, **k: classifier
  with pytest.raises(Preempted):
    evaluate.evaluate(_config(), args['workdir'], ToySampler(fail_after=2))
  sampler = ToySampler()
  results = evaluate.evaluate(_config(), args['workdir'], sampler)
  with open(args['out'], 'w') as f:
    json.dump({'calls': sampler.calls, 'devices': jax.local_device_count(), **results}, f)


def test_two_hosts_resume_and_match_one_host(tmp_path):
  from experiments.multihost_check import free_port

  one = str(tmp_path / 'one')
  want = evaluate.evaluate(_config(), one, ToySampler())
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  env['PYTHONPATH'] = os.pathsep.join([ROOT, *filter(None, [env.get('PYTHONPATH')])])
  two, coordinator = str(tmp_path / 'two'), f'127.0.0.1:{free_port()}'
  command = [sys.executable, os.path.abspath(__file__), f'--coordinator={coordinator}']
  procs = [
    subprocess.Popen(
      [*command, f'--process_id={i}', f'--workdir={two}', f'--out={tmp_path}/host{i}.json'],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  for p in procs:
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0, log[-3000:]
  for i in range(2):
    with open(tmp_path / f'host{i}.json') as f:
      got = json.load(f)
    assert got['devices'] == 4 and got['calls'] == 3  # the 2 finished shards were kept
    assert _metrics(got) == {**_metrics(want), 'calls': 3, 'devices': 4}
  a = shards.ShardStore(os.path.join(one, 'eval'), NUM_SAMPLES, SHARD)
  b = shards.ShardStore(os.path.join(two, 'eval'), NUM_SAMPLES, SHARD)
  for i in range(a.num_shards):
    for x, y in zip(a.load_samples(i), b.load_samples(i), strict=True):
      np.testing.assert_array_equal(x, y)
  assert len(np.unique(a.load_samples(0)[0].reshape(SHARD, -1), axis=0)) == SHARD


if __name__ == '__main__':
  _host(sys.argv[1:])
