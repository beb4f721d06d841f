"""FSDP proven on 8 CPU devices: ('data', 'fsdp') meshes of (4, 2) and (2, 4) train like
(8, 1), and a checkpoint saved on one mesh restores on another and trains on."""

import os
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits  # noqa: E402
from diffusion_jax import training  # noqa: E402
from diffusion_jax.data import input_pipeline  # noqa: E402
from diffusion_jax.training import checkpointing  # noqa: E402
from diffusion_jax.training import sharding as sharding_lib  # noqa: E402

STEPS = 2


def _config(fsdp: int):
  c = digits.get_config('tiny')
  c.training.mesh_fsdp = fsdp
  return c


@pytest.fixture(scope='module', autouse=True)
def shard_small_leaves():
  """The tiny digits weights are below the FSDP size floor: shard them anyway."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sharding_lib, '_MIN_FSDP_SIZE', 256)
    yield


@pytest.fixture(scope='module')
def setups(shard_small_leaves):
  assert jax.device_count() == 8
  return {
    f: training.create_train_setup(_config(f), sharding_lib.create_mesh(f)) for f in (1, 2, 4)
  }


@pytest.fixture(scope='module')
def batches():
  data = input_pipeline.create_input_iter(_config(1).data, 16, seed=0)
  return [next(data) for _ in range(STEPS + 1)]


def _train(setup, state, batches):
  for batch in batches:
    state, metrics = setup.train_step(state, training.to_global_batch(batch, setup.batch_sharding))
  return state, metrics


def _is_sharded(state) -> bool:
  return any(
    sharding_lib.FSDP_AXIS in tuple(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)
  )


# Attention key biases get an exactly zero gradient (a bias on every key shifts each query's
# logits by one constant, which softmax ignores), so the gradient they see is reduction-order
# noise that LAMB's normalisation turns into +-lr steps: a mesh-dependent, harmless walk.
# Compare every other entry; the key slots are the [1] of 'qkv' and the [0] of 'kv' biases.
_KEY_BIAS_SLOT = {"['qkv']['bias']": 1, "['kv']['bias']": 0}


def _without_key_biases(tree) -> list[np.ndarray]:
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    leaf = np.array(leaf)
    name = jax.tree_util.keystr(path)
    for suffix, slot in _KEY_BIAS_SLOT.items():
      if name.endswith(suffix) and leaf.ndim == 3:
        leaf[slot] = 0
    out.append(leaf)
  return out


def _assert_close(a, b, rtol=2e-5, atol=2e-6):
  for x, y in zip(_without_key_biases(a), _without_key_biases(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def test_fsdp_meshes_train_like_data_parallel(setups, batches):
  host = jax.device_get(setups[1].init_state(jax.random.PRNGKey(0)))
  results = {}
  for fsdp, setup in setups.items():
    state = jax.device_put(host, setup.state_sharding)
    assert _is_sharded(state) == (fsdp > 1)
    assert setup.components.mesh.shape == {'data': 8 // fsdp, 'fsdp': fsdp}
    results[fsdp] = jax.device_get(_train(setup, state, batches[:STEPS])[0])
  for fsdp in (2, 4):
    _assert_close(results[fsdp].params, results[1].params)
    _assert_close(results[fsdp].ema_params, results[1].ema_params)
    _assert_close(results[fsdp].opt_state, results[1].opt_state)


def test_checkpoint_saved_on_one_mesh_restores_on_another(setups, batches, tmp_path):
  dp, fsdp = setups[1], setups[2]
  state, _ = _train(dp, dp.init_state(jax.random.PRNGKey(1)), batches[:2])
  with checkpointing.Checkpointer(str(tmp_path), save_every=1) as ckpt:
    ckpt.save(2, state, force=True)
    ckpt.wait_until_finished()
  host = jax.device_get(state)
  with checkpointing.Checkpointer(str(tmp_path), save_every=1) as ckpt:
    restored = ckpt.restore(training.abstract_state(fsdp))
  assert _is_sharded(restored) and not _is_sharded(state)
  # Restored bit for bit, laid out on the (4, 2) mesh ...
  for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # ... it continues on (4, 2) bit for bit as the in-memory state moved there does ...
  cont_fsdp, m_fsdp = _train(fsdp, restored, batches[2:3])
  moved, m_moved = _train(fsdp, jax.device_put(host, fsdp.state_sharding), batches[2:3])
  for a, b in zip(
    jax.tree.leaves(jax.device_get(cont_fsdp)), jax.tree.leaves(jax.device_get(moved))
  ):
    np.testing.assert_array_equal(a, b)
  # ... and as the original run does on its own (8, 1) mesh, to float tolerance.
  cont_dp, m_dp = _train(dp, state, batches[2:3])
  np.testing.assert_allclose(float(m_fsdp['loss']), float(m_dp['loss']), rtol=1e-6)
  _assert_close(jax.device_get(cont_fsdp.params), jax.device_get(cont_dp.params))
