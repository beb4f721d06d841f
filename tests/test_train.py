"""Tests of the trainer (diffusion_jax/training/) on the tiny digits config, 8 CPU devices.

The straight run's TrainSetup (the `setup` fixture) is passed to the other runs, so they
share its compiled train step and sampler: two step compilations (8 devices and 1
device) and one sampler compilation in all.
"""

import dataclasses
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits  # noqa: E402
from diffusion_jax import generation, models, objectives, training  # noqa: E402
from diffusion_jax.data import input_pipeline  # noqa: E402
from diffusion_jax.training import checkpointing  # noqa: E402
from diffusion_jax.training import sharding as sharding_lib  # noqa: E402


@pytest.fixture(scope='module')
def config():
  c = digits.get_config('tiny')  # 6 steps, checkpoint every 2, batch 16
  c.training.sample_every = 3  # periodic grids at steps 3 and 6
  return c


@pytest.fixture(scope='module')
def built(config, tmp_path_factory):
  """An uninterrupted run, counting constructions: (final state, workdir, setup, counts)."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  counts = {'model': 0, 'objective': 0}
  setups = []
  create_model, create_objective = models.create_model, objectives.create_objective
  create_setup = training.create_train_setup

  def counting_model(*args, **kwargs):
    counts['model'] += 1
    return create_model(*args, **kwargs)

  def counting_objective(*args, **kwargs):
    counts['objective'] += 1
    return create_objective(*args, **kwargs)

  def recording_setup(*args, **kwargs):
    setups.append(create_setup(*args, **kwargs))
    return setups[-1]

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(models, 'create_model', counting_model)
    mp.setattr(objectives, 'create_objective', counting_objective)
    mp.setattr(training.loop, 'create_train_setup', recording_setup)
    state = training.train_and_evaluate(config, workdir)
  return jax.device_get(state), workdir, setups[0], counts


@pytest.fixture(scope='module')
def straight_run(built):
  """An uninterrupted run: (final state, workdir)."""
  return built[0], built[1]


@pytest.fixture(scope='module')
def setup(built):
  """The straight run's TrainSetup (compiled train step and sampler)."""
  return built[2]


def _assert_trees_close(a, b, rtol=1e-6, atol=1e-7):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_one_step_on_8_devices_equals_1_device(config, setup):
  assert jax.device_count() == 8
  setup8 = setup  # the straight run's, over every device
  setup1 = training.create_train_setup(
    config, sharding_lib.create_mesh(1, devices=jax.devices()[:1])
  )
  state8 = setup8.init_state(jax.random.PRNGKey(3))
  state1 = jax.device_put(jax.device_get(state8), setup1.state_sharding)
  batch = next(input_pipeline.create_input_iter(config.data, 16, seed=0))  # numpy, global
  new8, m8 = setup8.train_step(state8, training.to_global_batch(batch, setup8.batch_sharding))
  new1, m1 = setup1.train_step(state1, training.to_global_batch(batch, setup1.batch_sharding))
  # The 8-device step really ran on 8 devices and produced replicated params.
  leaf = jax.tree.leaves(new8.params)[0]
  assert len(leaf.sharding.device_set) == 8
  assert float(m8['grad_norm']) > 0
  np.testing.assert_allclose(float(m8['loss']), float(m1['loss']), rtol=1e-5)
  np.testing.assert_allclose(float(m8['grad_norm']), float(m1['grad_norm']), rtol=1e-4)
  _assert_trees_close(new8.params, new1.params, rtol=1e-4, atol=1e-6)
  _assert_trees_close(new8.ema_params, new1.ema_params, rtol=1e-4, atol=1e-6)
  assert int(new8.step) == int(new1.step) == 1


def test_model_and_objective_are_built_once_per_training_run(built):
  # One construction serves the train step and the periodic grids (steps 3 and 6).
  _, workdir, _, counts = built
  assert counts == {'model': 1, 'objective': 1}
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_000003.png'))


def test_straight_run_trains_and_writes_samples(straight_run, config):
  state, workdir = straight_run
  assert int(state.step) == config.training.num_steps
  assert checkpointing.latest_step(workdir) == config.training.num_steps
  png = os.path.join(workdir, 'samples', f'step_{config.training.num_steps:06d}.png')
  assert os.path.exists(png)
  # EMA with warmup: after 6 steps ema != params but both finite.
  leaves = jax.tree.leaves(state.params)
  assert all(np.all(np.isfinite(x)) for x in leaves)
  diff = sum(float(np.abs(a - b).sum()) for a, b in zip(leaves, jax.tree.leaves(state.ema_params)))
  assert diff > 0


def test_killed_run_resumes_from_last_save_and_matches_straight_run(
  straight_run, config, setup, tmp_path
):
  workdir = str(tmp_path)

  def crash_at_5(step, state):
    if step == 5:
      raise RuntimeError('simulated crash')

  with pytest.raises(RuntimeError, match='simulated crash'):
    training.train_and_evaluate(config, workdir, step_callback=crash_at_5, setup=setup)
  assert checkpointing.latest_step(workdir) == 4  # lost only step 5 (saves every 2)

  seen = []
  resumed = training.train_and_evaluate(
    config, workdir, step_callback=lambda s, _: seen.append(s), setup=setup
  )
  assert seen == [5, 6]
  resumed = jax.device_get(resumed)
  straight, _ = straight_run
  # Same data order (iterator started at the step) and same noise (fold_in(rng, step)).
  _assert_trees_close(resumed.params, straight.params)
  _assert_trees_close(resumed.ema_params, straight.ema_params)
  _assert_trees_close(resumed.opt_state, straight.opt_state)


def test_sigterm_saves_then_stops_and_sample_mode_writes_png_and_npz(config, setup, tmp_path):
  workdir = str(tmp_path)

  def sigterm_at_3(step, state):
    if step == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  state = training.train_and_evaluate(config, workdir, step_callback=sigterm_at_3, setup=setup)
  assert int(state.step) == 3
  assert checkpointing.latest_step(workdir) == 3

  png, npz = generation.sample_and_save(setup.components, workdir)
  assert png.endswith('.png') and os.path.exists(png)
  with np.load(npz) as f:
    images, labels = f['images'], f['labels']
  n = config.sample.num_samples
  assert images.shape == (n, 16, 16, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.repeat(np.arange(10), n // 10))
  from PIL import Image

  with Image.open(png) as im:
    assert im.size[1] == 2 * (10 * 17 + 1)  # 10 rows (one per class), upscaled 2x


def test_nan_loss_stops_naming_the_step_without_saving(config, setup, tmp_path):
  calls = []

  def step(state, batch):
    new_state, metrics = setup.train_step(state, batch)
    if len(calls) == 2:  # the third step
      metrics = dict(metrics, loss=jnp.float32(jnp.nan))
    calls.append(1)
    return new_state, metrics

  poisoned = dataclasses.replace(setup, train_step=step)
  with pytest.raises(FloatingPointError, match='step 3'):
    training.train_and_evaluate(config, str(tmp_path), setup=poisoned)
  assert checkpointing.latest_step(str(tmp_path)) == 2  # step 4's save never happened


@pytest.mark.parametrize(
  'key,value,pattern',
  [
    ('training.batch_size', 12, r'config\.training\.batch_size=12.*jax\.device_count\(\)=8'),
    ('optim.name', 'sgd', r'config\.optim\.name'),
    ('optim.lr_schedule', 'step', r'config\.optim\.lr_schedule'),
    ('sample.sampler', 'euler_maruyama', r'config\.sample\.sampler'),
    ('diffusion.objective', 'flow', r'config\.diffusion\.objective'),
    ('model.name', 'dit', r'config\.model\.name'),
  ],
)
def test_config_errors_fail_at_start_naming_the_key(key, value, pattern, tmp_path):
  config = digits.get_config('tiny')
  section, name = key.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=pattern):
    training.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(checkpointing.checkpoint_dir(str(tmp_path / 'run')))


def test_loss_buckets_match_numpy():
  rng = np.random.default_rng(0)
  t = rng.uniform(size=64)
  t[:3] = [0.0, 1.0, 0.1]  # edges: 1.0 goes to the last bucket, 0.1 to the second
  loss = rng.exponential(size=64)
  sums, counts = training.loss_buckets(jnp.asarray(t, jnp.float32), jnp.asarray(loss, jnp.float32))
  idx = np.minimum((t * 10).astype(int), 9)
  np.testing.assert_allclose(np.asarray(sums), np.bincount(idx, loss, 10), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(counts), np.bincount(idx, minlength=10))


def test_summarize_averages_and_reports_buckets():
  def m(loss, b):
    bucket = np.zeros(10, np.float32)
    bucket[b] = loss
    return {
      'loss': np.float32(loss),
      'grad_norm': np.float32(1.0),
      'learning_rate': np.float32(0.1 * loss),
      'ema_decay': np.float32(0.5),
      'loss_bucket_sum': bucket,
      'loss_bucket_count': np.eye(10, dtype=np.float32)[b],
    }

  out = training.summarize([(1, m(1.0, 0)), (2, m(3.0, 0)), (3, m(5.0, 9))])
  assert out['loss'] == pytest.approx(3.0)
  assert out['learning_rate'] == pytest.approx(0.5)  # last value, not the mean
  assert out['loss_t/0.0-0.1'] == pytest.approx(2.0)
  assert out['loss_t/0.9-1.0'] == pytest.approx(5.0)
  assert 'loss_t/0.5-0.6' not in out
  with pytest.raises(FloatingPointError, match='step 7'):
    training.summarize([(6, m(1.0, 0)), (7, m(np.inf, 0))])


def test_fsdp_leaf_sharding_rule():
  mesh = sharding_lib.create_mesh(2)
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 2}
  P = jax.sharding.PartitionSpec
  assert sharding_lib.leaf_sharding(mesh, (64, 128)).spec == P(None, 'fsdp')
  assert sharding_lib.leaf_sharding(mesh, (127, 64)).spec == P(None, 'fsdp')  # 127 is odd
  assert sharding_lib.leaf_sharding(mesh, (4097,)).spec == P()  # nothing divides
  assert sharding_lib.leaf_sharding(mesh, (8, 8)).spec == P()  # too small to split
  assert sharding_lib.leaf_sharding(sharding_lib.create_mesh(1), (64, 128)).spec == P()
  with pytest.raises(ValueError, match='config.training.mesh_fsdp=3'):
    sharding_lib.create_mesh(3)
