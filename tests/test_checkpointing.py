"""Tests of diffusion_jax/training/checkpointing.py: sharded round trips, EMA restore, SIGTERM."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion_jax.training import checkpointing
from diffusion_jax.training import sharding as sharding_lib
from diffusion_jax.training.state import TrainState


def _state(seed: int, mesh) -> TrainState:
  rng = np.random.default_rng(seed)
  params = {
    'params': {
      'dense': {'kernel': rng.normal(size=(16, 8)), 'bias': rng.normal(size=(8,))},
      'embed': rng.normal(size=(64, 128)),  # large enough to shard under FSDP
    }
  }
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  tx = optax.adam(1e-3)
  state = TrainState(
    step=jnp.asarray(seed, jnp.int32),
    params=params,
    ema_params=jax.tree.map(lambda x: x * 0.5, params),
    opt_state=tx.init(params),
    rng=jax.random.PRNGKey(seed),
    objective_state={'history': jnp.arange(6.0).reshape(2, 3) + seed},
  )
  shardings = sharding_lib.tree_shardings(mesh, state)
  return jax.device_put(state, shardings)


def _assert_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def mesh():
  return sharding_lib.create_mesh(1)


def test_save_restore_round_trip_keeps_shardings_and_prunes(tmp_path, mesh):
  workdir = str(tmp_path)
  with checkpointing.Checkpointer(workdir, save_every=1, keep=2) as ckpt:
    states = {s: _state(s, mesh) for s in (1, 2, 3)}
    for s, st in states.items():
      assert ckpt.save(s, st)
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 3
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), states[3]
    )
    restored = ckpt.restore(abstract)
  _assert_equal(restored, states[3])
  for x in jax.tree.leaves(restored):
    assert x.sharding.is_equivalent_to(sharding_lib.replicated(mesh), x.ndim)
  steps = sorted(int(d) for d in os.listdir(checkpointing.checkpoint_dir(workdir)) if d.isdigit())
  assert steps == [2, 3]  # keep=2
  assert checkpointing.latest_step(workdir) == 3


def test_restore_onto_fsdp_mesh(tmp_path):
  mesh = sharding_lib.create_mesh(1)
  fsdp_mesh = sharding_lib.create_mesh(2)
  state = _state(5, mesh)
  with checkpointing.Checkpointer(str(tmp_path), save_every=1) as ckpt:
    ckpt.save(5, state)
    ckpt.wait_until_finished()
    # Shard a large-enough leaf over 'fsdp' in the target.
    target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=sharding_lib.leaf_sharding(fsdp_mesh, x.shape)
      ),
      state,
    )
    restored = ckpt.restore(target)
  _assert_equal(restored, state)
  embed = restored.params['params']['embed']
  assert embed.sharding.spec == jax.sharding.PartitionSpec(None, 'fsdp')  # largest dim, 128


def test_ema_only_restore_and_export(tmp_path, mesh):
  workdir = str(tmp_path / 'run')
  state = _state(7, mesh)
  with checkpointing.Checkpointer(workdir, save_every=1) as ckpt:
    ckpt.save(7, state)
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state.ema_params
  )
  ema = checkpointing.restore_ema_params(workdir, abstract)
  _assert_equal(ema, state.ema_params)
  path = checkpointing.export_ema(workdir, str(tmp_path / 'ema'), abstract)
  _assert_equal(checkpointing.load_exported(path, abstract), state.ema_params)


def test_missing_checkpoint_says_how_to_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match='train first'):
    checkpointing.restore_ema_params(str(tmp_path), {'w': jax.ShapeDtypeStruct((2,), jnp.float32)})
  assert checkpointing.latest_step(str(tmp_path)) is None


def test_sigterm_requests_stop_and_handler_is_restored(tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  with checkpointing.Checkpointer(str(tmp_path), save_every=1) as ckpt:
    assert not ckpt.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert ckpt.should_stop(2)
  assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize('key,value', [('save_every', 0), ('keep', 0)])
def test_bad_options(tmp_path, key, value):
  kwargs = {'save_every': 1, 'keep': 1, key: value}
  name = 'checkpoint_every' if key == 'save_every' else 'keep_checkpoints'
  with pytest.raises(ValueError, match=f'config.training.{name}'):
    checkpointing.Checkpointer(str(tmp_path), **kwargs)
