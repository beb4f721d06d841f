"""Gradient accumulation (config.training.grad_accum_steps) on 8 CPU devices.

k = 4 micro-batches of 16 give the same update as k = 1 at batch 64: every example's
noise, t, self-conditioning coin and label dropout come from its own key, and iDDPM's
importance-sampling history is read at the start of the step and updated once.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits  # noqa: E402
from diffusion_jax import config as config_lib  # noqa: E402
from diffusion_jax import training  # noqa: E402
from diffusion_jax.data import input_pipeline  # noqa: E402
from diffusion_jax.objectives import example_rng, importance  # noqa: E402
from diffusion_jax.training import step as step_lib  # noqa: E402

BATCH = 64
NUM_STEPS = 3


def _config(objective: str, k: int):
  c = digits.get_config('tiny')  # RIN without dropout: k > 1 matches k = 1 exactly
  c.training.batch_size = BATCH
  c.training.grad_accum_steps = k
  if objective == 'iddpm':  # the same network, so both objectives share one initial state
    d = c.diffusion
    d.objective = 'iddpm'
    d.num_timesteps = 8
    d.beta_schedule = 'cosine'
    d.loss = 'vlb'
    d.importance_sampling = True
    d.self_cond_rate = 0.0
  return c


def _warm_history(num_timesteps: int) -> dict:
  """A full history with unequal rows, so the sampler is far from uniform."""
  state = importance.init_history(num_timesteps)
  k = state['history'].shape[1]
  rows = jnp.linspace(0.1, 3.0, num_timesteps)[:, None] * jnp.linspace(0.5, 1.5, k)[None]
  return {'history': rows.astype(jnp.float32), 'counts': jnp.full((num_timesteps,), k, jnp.int32)}


@pytest.fixture(scope='module')
def initial_state():
  """One initialization (host arrays) for every run: init compiles once, not four times."""
  setup = training.create_train_setup(_config('chen', 1))
  return jax.device_get(setup.init_state(jax.random.PRNGKey(0)))


def _run(objective: str, k: int, initial_state):
  config = _config(objective, k)
  setup = training.create_train_setup(config)
  state = initial_state
  if objective == 'iddpm':
    state = state.replace(objective_state=_warm_history(8))
  state = jax.device_put(state, setup.state_sharding)  # a fresh copy: the step donates it
  batches = input_pipeline.create_input_iter(config.data, BATCH, seed=0)
  metrics = []
  for _ in range(NUM_STEPS):
    batch = training.to_global_batch(next(batches), setup.batch_sharding)
    state, m = setup.train_step(state, batch)
    metrics.append(m)
  return jax.device_get(state), jax.device_get(metrics), setup.train_step._cache_size()


def _without_key_biases(params):
  """Zeros the attention key biases: softmax is blind to them, so their gradient is pure
  rounding noise, which LAMB's normalized update turns into O(lr) steps of either sign."""

  def zero(path, x):
    names = [getattr(p, 'key', None) for p in path][-2:]
    key_slot = {('qkv', 'bias'): 1, ('kv', 'bias'): 0}.get(tuple(names))  # [3 | 2, H, Dh]
    if key_slot is None:
      return x
    x = np.array(x)
    x[key_slot] = 0.0
    return x

  return jax.tree_util.tree_map_with_path(zero, params)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize('objective', ['chen', 'iddpm'])
def test_four_micro_batches_equal_one_batch(objective, initial_state):
  one, m1, _ = _run(objective, 1, initial_state)
  four, m4, compiles = _run(objective, 4, initial_state)
  assert compiles == 1  # one compiled step serves every step
  assert int(four.step) == NUM_STEPS
  _assert_trees_close(_without_key_biases(four.params), _without_key_biases(one.params))
  _assert_trees_close(_without_key_biases(four.ema_params), _without_key_biases(one.ema_params))
  _assert_trees_close(four.opt_state, one.opt_state)
  # The loss history got the same (t, loss) pairs in the same order.
  _assert_trees_close(four.objective_state, one.objective_state)
  for a, b in zip(m4, m1, strict=True):
    assert a.keys() == b.keys()
    _assert_trees_close(a, b)
  assert float(m1[-1]['grad_norm']) > 0
  if objective == 'iddpm':
    history = four.objective_state['history']
    assert not np.allclose(history, np.asarray(_warm_history(8)['history']))


def test_per_example_draws_do_not_depend_on_the_batch_around_them():
  keys = jax.random.split(jax.random.key(1), 8)
  whole = example_rng.normal(keys, example_rng.NOISE, (3,))
  halves = [example_rng.normal(keys[i : i + 4], example_rng.NOISE, (3,)) for i in (0, 4)]
  np.testing.assert_array_equal(np.concatenate(halves), whole)
  # Different streams of one key differ; a single key is split into B keys.
  assert not np.allclose(example_rng.normal(keys, example_rng.TIME, (3,)), whole)
  assert example_rng.example_keys(jax.random.key(2), 5).shape == (5,)
  with pytest.raises(ValueError, match='per-example keys'):
    example_rng.example_keys(keys, 5)


def test_micro_batch_split_is_device_local_and_inverts():
  x = jnp.arange(64)
  micro = step_lib.split_micro_batches(x, 4, 8)
  assert micro.shape == (4, 16)
  # Device d holds rows [8d, 8d + 8); micro-batch j takes rows 8d + 2j, 8d + 2j + 1.
  np.testing.assert_array_equal(micro[1, :4], [2, 3, 10, 11])
  np.testing.assert_array_equal(step_lib.merge_micro_batches(micro, 4, 8), x)


def test_bad_grad_accum_steps_is_a_one_line_config_error():
  config = _config('chen', 3)  # 64 is not a multiple of 3 x 8
  with pytest.raises(config_lib.ConfigError, match=r'grad_accum_steps=3') as err:
    config_lib.build_run_config(config, num_devices=8)
  assert '\n' not in str(err.value)
