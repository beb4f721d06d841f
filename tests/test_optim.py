"""Tests of diffusion_jax/training/optim.py: LR schedule, EMA and LAMB against closed forms."""

import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffusion_jax.models import layout
from diffusion_jax.training import optim

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(**kw):
  base = dict(learning_rate=2e-3, warmup_steps=10, num_steps=50)
  base.update(kw)
  return optim.OptimConfig(**base)


def _reference_lr(step, peak, warmup, total, schedule, end=0.0):
  """float64 transcription of pix2seq models/model_utils.py WarmUpAndDecay.__call__."""
  kind, _, arg = schedule.partition('@')
  s = step - warmup
  if kind == 'linear':  # Keras PolynomialDecay(power=1), step clamped to decay_steps
    ds = total - warmup
    decayed = (peak - peak * end) * (1 - min(s, ds) / ds) + peak * end
  elif kind == 'cosine':  # Keras CosineDecay(alpha=end) over (total - warmup) / rate
    ds = (total - warmup) / (float(arg) if arg else 1.0)
    decayed = peak * ((1 - end) * 0.5 * (1 + math.cos(math.pi * min(s, ds) / ds)) + end)
  elif kind == 'exp':  # Keras ExponentialDecay(decay_rate=rate), not clamped
    decayed = peak * float(arg) ** (s / (total - warmup))
  else:
    decayed = peak
  warm = step / warmup * peak if warmup else peak
  return warm if step < warmup else decayed


@pytest.mark.parametrize(
  'schedule,end,warmup',
  [
    ('cosine', 0.0, 10),
    ('cosine@0.7', 0.0, 10),
    ('cosine@0.8', 0.1, 10),
    ('cosine@0.5', 0.0, 0),
    ('linear', 0.2, 10),
    ('exp@0.1', 0.0, 10),
    ('constant', 0.0, 10),
  ],
)
def test_lr_schedule_matches_float64_reference(schedule, end, warmup):
  cfg = _cfg(lr_schedule=schedule, end_lr_factor=end, warmup_steps=warmup)
  fn = optim.create_learning_rate_schedule(cfg)
  steps = np.arange(cfg.num_steps + 5)  # a few steps past the end: the clamps
  got = np.asarray(fn(jnp.asarray(steps)))
  want = [_reference_lr(s, cfg.learning_rate, warmup, cfg.num_steps, schedule, end) for s in steps]
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-10)


@pytest.mark.parametrize('rate,final', [(0.7, 0.2061), (0.8, 0.0955), (1.0, 0.0)])
def test_cosine_at_rate_ends_part_way_down(rate, final):
  cfg = _cfg(lr_schedule=f'cosine@{rate}', warmup_steps=10, num_steps=110)
  fn = optim.create_learning_rate_schedule(cfg)
  np.testing.assert_allclose(float(fn(110)) / cfg.learning_rate, final, atol=1e-4)
  np.testing.assert_allclose(float(fn(10)), cfg.learning_rate, rtol=1e-6)  # peak after warmup


@pytest.mark.parametrize(
  'spec',
  [
    'cosine@0',
    'cosine@1.5',
    'cosine@-0.5',
    'cosine@',
    'cosine@x',
    'cosine@nan',
    'exp',
    'linear@0.5',
    'constant@1',
    'step',
    'Cosine',
  ],
)
def test_bad_lr_schedule_is_a_one_line_config_error(spec):
  with pytest.raises(ValueError, match=r'config\.optim\.lr_schedule') as err:
    _cfg(lr_schedule=spec)
  assert '\n' not in str(err.value)


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


def _edm_beta(step, batch, halflife_kimg, rampup_ratio):
  """float64 transcription of NVlabs/edm training/training_loop.py's EMA beta."""
  cur_nimg = step * batch  # images seen before this update
  halflife_nimg = halflife_kimg * 1000
  if rampup_ratio is not None:
    halflife_nimg = min(halflife_nimg, cur_nimg * rampup_ratio)
  return 0.5 ** (batch / max(halflife_nimg, 1e-8))


@pytest.mark.parametrize('ratio', [0.05, None])
def test_edm_ema_decay_matches_float64_reference(ratio):
  steps = np.concatenate([np.arange(0, 50), np.arange(50, 400_000, 4099)])
  got = np.asarray(optim.edm_ema_decay(jnp.asarray(steps), 512, 500, ratio or 0.0))
  want = np.array([_edm_beta(int(s), 512, 500, ratio) for s in steps])
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30)
  first = 0.0 if ratio else 0.5 ** (512 / 500_000)  # the ramp-up copies the params first
  assert got[0] == pytest.approx(first, abs=0.0)


def test_ema_decay_for_uses_the_half_life_only_when_set():
  cfg = _cfg(ema_decay=0.99, ema_warmup=True)
  np.testing.assert_allclose(optim.ema_decay_for(cfg, 3, 64), optim.ema_decay_at(3, 0.99, True))
  cfg = _cfg(ema_halflife_kimg=0.5, ema_rampup_ratio=0.0)
  np.testing.assert_allclose(optim.ema_decay_for(cfg, 3, 64), 0.5 ** (64 / 500), rtol=1e-6)


def test_cifar10_edm_uses_edms_ema():
  from configs import cifar10_edm

  config = cifar10_edm.get_config()
  cfg = optim.OptimConfig.from_config(config.optim, config.training.num_steps)
  assert (cfg.ema_halflife_kimg, cfg.ema_rampup_ratio) == (500, 0.05)  # EDM train.py --ema 0.5
  batch = config.training.batch_size
  # Past the ramp-up (5% of the images seen >= 500k: step 19,532) the half-life is 500k
  # images; before it, the half-life is 5% of the images seen.
  np.testing.assert_allclose(optim.ema_decay_for(cfg, 20_000, batch), 0.5 ** (batch / 5e5))
  np.testing.assert_allclose(
    optim.ema_decay_for(cfg, 1000, batch), 0.5 ** (batch / (0.05 * 1000 * batch)), rtol=1e-6
  )


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


def test_weight_decay_mask_on_scanned_layers_uses_names_and_logical_rank():
  # Scanned: [layers] leading axis. A stacked bias is 2-D and still a bias.
  params = {
    'blocks': {
      'ln': {'scale': jnp.ones((2, 4)), 'bias': jnp.ones((2, 4))},
      'fc': {'kernel': jnp.ones((2, 4, 4)), 'bias': jnp.ones((2, 4))},
      'gain': jnp.ones((2, 4)),  # one 1-D weight per layer
    },
    'latents': jnp.ones((3, 4)),
  }
  mask = optim.weight_decay_mask(params)
  assert not any(jax.tree.leaves(mask['blocks']['ln'])) and not mask['blocks']['fc']['bias']
  # The reference decays every variable not named bias / beta / gamma, whatever its rank.
  assert mask['blocks']['fc']['kernel'] and mask['blocks']['gain'] and mask['latents']
  low = optim.weight_decay_mask(params, exclude_low_rank=True)
  assert not low['blocks']['gain']  # logical rank 1 (ndim 2 minus the layer axis)
  assert low['blocks']['fc']['kernel'] and low['latents']


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
    ('lr_schedule', 'cosine@2', 'config.optim.lr_schedule'),
    ('end_lr_factor', 1.5, 'config.optim.end_lr_factor'),
    ('ema_halflife_kimg', -1.0, 'config.optim.ema_halflife_kimg'),
    ('ema_rampup_ratio', -0.1, 'config.optim.ema_rampup_ratio'),
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


# ---------------------------------------------------------------------------------------
# LAMB per logical weight: stacked layers and fused projections.


def _numpy_lamb(w, grads, lr, wd, decay=True, b1=0.9, b2=0.999, eps=1e-8):
  """float64 transcription of tfa.optimizers.LAMB._resource_apply_dense, one variable."""
  m, v = np.zeros_like(w), np.zeros_like(w)
  for t, g in enumerate(grads, start=1):
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    ratio = 1.0
    if decay:
      u = u + wd * w
      w_norm, u_norm = np.linalg.norm(w), np.linalg.norm(u)
      ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
    w = w - ratio * lr * u
  return w


def _stacked_fused_problem(steps=3, layers=(2, 3), d=4, heads=2, head_dim=3):
  """Separate per-layer q/k/v kernels (float64) of very different norms, and grads."""
  rng = np.random.default_rng(0)
  shape = layers + (3, d, heads, head_dim)  # [L1, L2, q/k/v, D, H, Dh]
  # Every layer and projection gets its own norm (weights) and gradient scale.
  per_layer = (1.0 + np.arange(layers[0] * layers[1])).reshape(layers + (1, 1, 1, 1))
  per_proj = np.array([0.1, 1.0, 10.0]).reshape(3, 1, 1, 1)
  w = rng.normal(size=shape) * per_layer * per_proj
  grads = [rng.normal(size=shape) * per_layer / per_proj for _ in range(steps)]
  return w, grads


def _fuse(x):
  """[L1, L2, 3, D, H, Dh] -> the tree of a scanned, fused [L1, L2, D, 3, H, Dh] kernel."""
  kernel = jnp.asarray(np.moveaxis(x, 2, 3), jnp.float32)
  return {'blocks': {'compute': {'attn': {'qkv': {'kernel': kernel}}}}}


@pytest.mark.parametrize('per_weight', [True, False])
def test_lamb_on_stacked_fused_kernel_equals_lamb_per_variable(per_weight):
  """A scanned [L1, L2, D, 3, H, Dh] QKV kernel takes the steps that tfa LAMB takes on
  L1 * L2 * 3 separate [D, H, Dh] kernels; the shared ratio (per_weight=False, optax's
  scale_by_trust_ratio, the old optimizer) does not."""
  lr, wd = 1e-2, 0.01
  w, grads = _stacked_fused_problem()
  tx = optim.lamb(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd, per_weight=per_weight)
  params = _fuse(w)
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(_fuse(g), state, params)
    params = optax.apply_updates(params, updates)
  got = np.moveaxis(np.asarray(params['blocks']['compute']['attn']['qkv']['kernel']), 3, 2)
  want = np.empty_like(w)
  for idx in np.ndindex(w.shape[:3]):  # every (block, layer, projection)
    want[idx] = _numpy_lamb(w[idx], [g[idx] for g in grads], lr, wd)
  if per_weight:
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
  else:
    assert np.max(np.abs(got - want) / (np.abs(want) + 1e-3)) > 1e-2


def test_lamb_ratio_per_layer_of_a_stacked_kernel_and_bias_left_plain():
  """Stacked [L, D, F] Dense kernel: per-layer ratio; its stacked bias: plain Adam."""
  lr, wd = 1e-2, 0.01
  rng = np.random.default_rng(1)
  k = rng.normal(size=(3, 4, 5)) * np.array([0.1, 1.0, 10.0])[:, None, None]
  b = rng.normal(size=(3, 5))
  gk = [rng.normal(size=k.shape) for _ in range(2)]
  gb = [rng.normal(size=b.shape) for _ in range(2)]
  tx = optim.lamb(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)

  def as_tree(k, b):
    fc = {'kernel': jnp.asarray(k, jnp.float32), 'bias': jnp.asarray(b, jnp.float32)}
    return {'blocks': {'fc': fc}}

  params = as_tree(k, b)
  state = tx.init(params)
  for g_k, g_b in zip(gk, gb):
    updates, state = tx.update(as_tree(g_k, g_b), state, params)
    params = optax.apply_updates(params, updates)
  got = params['blocks']['fc']
  for i in range(3):
    want_k = _numpy_lamb(k[i], [g[i] for g in gk], lr, wd)
    want_b = _numpy_lamb(b[i], [g[i] for g in gb], lr, wd, decay=False)
    np.testing.assert_allclose(np.asarray(got['kernel'][i]), want_k, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got['bias'][i]), want_b, rtol=2e-5, atol=1e-6)


def _tiny_rin_config(scan_layers):
  """configs/digits.py (dropout 0) at the smallest widths that keep 2 blocks x 2 layers."""
  from configs import digits

  config = digits.get_config()
  m = config.model
  m.tape_dim, m.latent_dim, m.num_latents, m.read_write_heads, m.latent_heads = 16, 16, 4, 2, 2
  m.num_blocks, m.num_compute_layers, m.scan_layers = 2, 2, scan_layers
  config.optim.warmup_steps = 0  # every one of the 3 steps moves the weights
  config.training.batch_size, config.training.num_steps = 8, 10
  return config


def _key_bias_slices(path):
  """Key-projection slices of fused biases: their gradient is zero in exact arithmetic
  (softmax ignores a shift shared by all keys), so what reaches Adam is rounding noise,
  which its normalisation turns into O(lr) steps that differ between any two programs."""
  names = layout.path_names(path)
  if names[-1] != 'bias' or names[-2] not in layout.FUSED_PROJECTIONS:
    return None
  return 1 if names[-2] == 'qkv' else 0  # (q, k, v) and (k, v)


def test_three_lamb_steps_agree_between_scanned_and_unrolled_layers():
  """The real train step, from one initialization mapped between the layouts: LAMB's
  per-layer trust ratios make both runs identical (with one ratio per stacked array the
  scanned run drifts by ~1e-4, far outside these tolerances)."""
  import jax.tree_util as jtu

  from diffusion_jax import training
  from diffusion_jax.data import input_pipeline
  from diffusion_jax.training import sharding as sharding_lib

  mesh = sharding_lib.create_mesh(1, devices=jax.devices()[:1])
  scan = training.create_train_setup(_tiny_rin_config(True), mesh)
  unrolled = training.create_train_setup(_tiny_rin_config(False), mesh)
  start = jax.device_get(scan.init_state(jax.random.PRNGKey(0)))
  flat = layout.unstack_layers(start.params)
  states = [
    jax.device_put(start, scan.state_sharding),
    jax.device_put(
      start.replace(params=flat, ema_params=flat, opt_state=unrolled.tx.init(flat)),
      unrolled.state_sharding,
    ),
  ]
  data = input_pipeline.create_input_iter(_tiny_rin_config(True).data, 8, seed=0)
  for _ in range(3):
    batch = next(data)
    for i, setup in enumerate((scan, unrolled)):
      states[i], _ = setup.train_step(
        states[i], training.to_global_batch(batch, setup.batch_sharding)
      )
  got = layout.unstack_layers(jax.device_get(states[0].params))
  want = jax.device_get(states[1].params)
  moved = 0.0
  for (path, a), b, a0 in zip(
    jtu.tree_flatten_with_path(got)[0], jax.tree.leaves(want), jax.tree.leaves(flat), strict=True
  ):
    a, b, a0 = np.asarray(a), np.asarray(b), np.asarray(a0)
    key = _key_bias_slices(path)
    if key is not None:
      a, b, a0 = (np.delete(x, key, axis=0) for x in (a, b, a0))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6, err_msg=jtu.keystr(path))
    moved = max(moved, float(np.max(np.abs(a - a0))))
  assert moved > 1e-3  # the steps really changed the weights
