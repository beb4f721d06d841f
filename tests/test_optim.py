"""Tests of diffusion_jax/optim.py: LR schedule, EMA and LAMB against closed forms."""

import math
import os
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion_jax import optim

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(**kw):
  base = dict(learning_rate=2e-3, warmup_steps=10, num_steps=50)
  base.update(kw)
  return optim.OptimConfig(**base)


@pytest.mark.parametrize('schedule', ['cosine', 'constant'])
def test_lr_schedule_matches_closed_form(schedule):
  cfg = _cfg(lr_schedule=schedule)
  fn = optim.create_learning_rate_schedule(cfg)
  peak, w, n = cfg.learning_rate, cfg.warmup_steps, cfg.num_steps
  for s in range(n + 1):
    if s < w:
      want = peak * s / w
    elif schedule == 'cosine':
      want = peak * 0.5 * (1 + math.cos(math.pi * (s - w) / (n - w)))
    else:
      want = peak
    np.testing.assert_allclose(float(fn(s)), want, rtol=1e-5, atol=1e-9, err_msg=f'step {s}')


def test_lr_schedule_without_warmup_starts_at_peak():
  fn = optim.create_learning_rate_schedule(_cfg(warmup_steps=0))
  np.testing.assert_allclose(float(fn(0)), 2e-3, rtol=1e-6)
  np.testing.assert_allclose(float(fn(50)), 0.0, atol=1e-9)


def test_ema_decay_warmup_closed_form():
  steps = np.arange(0, 200_000, 997)
  got = np.asarray(optim.ema_decay_at(jnp.asarray(steps), 0.9999, True))
  want = np.minimum(0.9999, (1.0 + steps) / (10.0 + steps))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert got[0] == pytest.approx(0.1)
  np.testing.assert_allclose(np.asarray(optim.ema_decay_at(5, 0.99, False)), 0.99, rtol=1e-7)


def test_ema_update_tracks_float64_recursion():
  rng = np.random.default_rng(0)
  thetas = rng.normal(size=(30, 3))
  ema = jnp.asarray(thetas[0], jnp.float32)
  ref = thetas[0].copy()
  for step in range(1, 30):
    d = float(optim.ema_decay_at(step - 1, 0.9, True))
    d64 = min(0.9, step / (9.0 + step))
    ema = optim.ema_update({'w': ema}, {'w': jnp.asarray(thetas[step], jnp.float32)}, d)['w']
    ref = d64 * ref + (1 - d64) * thetas[step]
  np.testing.assert_allclose(np.asarray(ema), ref, rtol=1e-5)


def test_weight_decay_mask_excludes_biases_and_norm_scales():
  params = {
    'params': {
      'dense': {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones((4,))},
      'LayerNorm_0': {'scale': jnp.ones((4,)), 'bias': jnp.ones((4,))},
      'pos_embedding': jnp.ones((1, 8, 4)),
    }
  }
  mask = optim.weight_decay_mask(params)['params']
  assert mask['dense']['kernel'] and mask['pos_embedding']
  assert not mask['dense']['bias']
  assert not mask['LayerNorm_0']['scale'] and not mask['LayerNorm_0']['bias']


def test_lamb_step_matches_numpy_reference():
  """One LAMB step against a float64 reimplementation: decay and trust ratio on the kernel
  only (a bias gets the plain Adam step)."""
  cfg = _cfg(warmup_steps=0, num_steps=10, lr_schedule='constant', weight_decay=0.01)
  tx, _ = optim.create_optimizer(cfg)
  rng = np.random.default_rng(1)
  w, b = rng.normal(size=(3, 4)), rng.normal(size=(4,))
  gw, gb = rng.normal(size=(3, 4)), rng.normal(size=(4,))
  params = {'kernel': jnp.asarray(w, jnp.float32), 'bias': jnp.asarray(b, jnp.float32)}
  grads = {'kernel': jnp.asarray(gw, jnp.float32), 'bias': jnp.asarray(gb, jnp.float32)}
  updates, _ = tx.update(grads, tx.init(params), params)

  def ref(p, g, decay):
    m = (1 - 0.9) * g / (1 - 0.9)  # bias-corrected first moment at step 1
    v = (1 - 0.999) * g**2 / (1 - 0.999)
    u = m / (np.sqrt(v) + 1e-8) + (0.01 * p if decay else 0.0)
    ratio = np.linalg.norm(p) / np.linalg.norm(u) if decay else 1.0
    return -2e-3 * ratio * u

  np.testing.assert_allclose(np.asarray(updates['kernel']), ref(w, gw, True), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(updates['bias']), ref(b, gb, False), rtol=1e-4)


def test_lamb_moves_zero_initialized_biases():
  # With a trust ratio on the bias, |b| = 0 would keep it at ~0 step after step.
  cfg = _cfg(warmup_steps=0, num_steps=10, lr_schedule='constant')
  tx, _ = optim.create_optimizer(cfg)
  params = {'bias': jnp.zeros((4,)), 'kernel': jnp.ones((2, 2))}
  grads = {'bias': jnp.ones((4,)), 'kernel': jnp.ones((2, 2))}
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(np.asarray(params['bias']), -3 * 2e-3, rtol=1e-3)


def test_grad_clip_scales_gradient_to_global_norm():
  # Adam with eps = 1 makes the first update depend on the gradient's scale:
  # u = -lr * g / (|g| + 1), with g the (clipped) gradient.
  g = np.full((5,), 10.0)
  for clip, g_used in ((1.0, g / np.linalg.norm(g)), (0.0, g)):
    cfg = _cfg(name='adam', warmup_steps=0, lr_schedule='constant', grad_clip=clip, eps=1.0)
    tx, _ = optim.create_optimizer(cfg)
    params = {'w': jnp.zeros((5,))}
    updates, _ = tx.update({'w': jnp.asarray(g, jnp.float32)}, tx.init(params), params)
    want = -2e-3 * g_used / (np.abs(g_used) + 1.0)
    np.testing.assert_allclose(np.asarray(updates['w']), want, rtol=1e-5)


@pytest.mark.parametrize(
  'key,value,name',
  [
    ('name', 'sgd', 'config.optim.name'),
    ('lr_schedule', 'linear', 'config.optim.lr_schedule'),
    ('learning_rate', 0.0, 'config.optim.learning_rate'),
    ('warmup_steps', 100, 'config.optim.warmup_steps'),
  ],
)
def test_bad_settings_name_the_key(key, value, name):
  with pytest.raises(ValueError, match=name.replace('.', r'\.')):
    _cfg(**{key: value})


def test_from_config_reads_configdict():
  from configs import default

  config = default.get_config()
  cfg = optim.OptimConfig.from_config(config.optim, config.training.num_steps)
  assert cfg.name == config.optim.name and cfg.num_steps == config.training.num_steps
  assert cfg.ema_decay == config.optim.ema_decay
