"""Tests for diffusion_jax/models: RIN and U-Net behind one interface.

Compiles are the cost here, so each tiny network is jitted a handful of times with
XLA's cheap optimisation level and reused across tests; full-size configs are only
traced (jax.eval_shape), never run.
"""

import functools
import importlib
import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import traverse_util

from diffusion_jax.models import ModelConfig, count_params, create_model, layers
from diffusion_jax.models import rin as rin_lib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

CONFIGS = (
  'imagenet64',
  'imagenet128',
  'imagenet256',
  'imagenet512',
  'imagenet1024',
  'cifar10_ddpm',
  'cifar10_iddpm',
  'cifar10_ncsnv2',
  'cifar10_edm',
  'cifar10_rin',
)
FAST = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def load_config(name):
  return importlib.import_module(f'configs.{name}').get_config()


def shrink(config, **overrides):
  """Keeps a config's structure and options but makes every width tiny."""
  m = config.model
  m.tape_dim, m.latent_dim = 16, 16
  m.read_write_heads, m.latent_heads = 2, 2
  m.num_latents = 8
  m.num_blocks, m.num_compute_layers = 1, 1
  m.base_channels, m.num_res_blocks, m.num_heads = 8, 1, 2
  m.channel_mults = tuple(m.channel_mults)[:2]
  reachable = [config.data.image_size // 2**i for i in range(len(m.channel_mults))]
  m.attention_resolutions = tuple(r for r in m.attention_resolutions if r in reachable)
  for key, value in overrides.items():
    setattr(m, key, value)
  return config


def fast_jit(fn, *args):
  return jax.jit(fn).lower(*args).compile(FAST)


def random_params(shapes, seed=0):
  """Random parameters shaped like `shapes` (no init compile); nothing zero-initialised."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(path[-1])
    if len(leaf.shape) >= 2:
      value = rng.normal(size=leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1]))
    elif 'scale' in name:
      value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
    else:
      value = 0.1 * rng.normal(size=leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def replace_param(params, suffix, fn):
  """Applies fn to every parameter whose flattened path ends with `suffix`."""
  flat = traverse_util.flatten_dict(params)
  hits = [k for k in flat if k[-len(suffix) :] == suffix]
  assert hits, suffix
  for k in hits:
    flat[k] = fn(flat[k])
  return traverse_util.unflatten_dict(flat)


def inputs(cfg, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(
    rng.normal(size=(batch, cfg.image_size, cfg.image_size, cfg.num_channels)), jnp.float32
  )
  t = jnp.asarray(rng.uniform(0, 1000, size=batch), jnp.float32)
  y = jnp.asarray([3, -1][:batch], jnp.int32)
  return x, t, y


def rel_err(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# ---------------------------------------------------------------------------------------
# Tiny RIN (ImageNet-64 layout: patch 8, class-conditional) with dropout and drop-path.


@functools.cache
def tiny_rin():
  # Unrolled layers compile faster at this depth; the scanned form is checked against it.
  config = shrink(load_config('imagenet64'), dropout=0.2, drop_path=0.2, scan_layers=False)
  cfg = ModelConfig.from_config(config.model, config.data)
  model = create_model(cfg)
  x, t, y = inputs(cfg)
  key = jax.random.key(0, impl='rbg')
  params = fast_jit(model.init, key, x, t, y)(key, x, t, y)
  return cfg, model, params


@functools.cache
def rin_eval_fn(dtype='float32'):
  cfg, _, params = tiny_rin()
  model = create_model(ModelConfig(**{**cfg.__dict__, 'dtype': dtype}))
  x, t, y = inputs(cfg)
  sc = jnp.zeros(model.carry_shape(2))
  fn = lambda p, x, t, y, sc: model.apply(p, x, t, y, self_cond=sc)
  return fast_jit(fn, params, x, t, y, sc)


def test_rin_output_shapes_and_carry():
  cfg, model, params = tiny_rin()
  x, t, y = inputs(cfg)
  out, carry = rin_eval_fn()(params, x, t, y, jnp.zeros(model.carry_shape(2)))
  assert out.shape == (2, 64, 64, 3) and out.dtype == jnp.float32
  assert carry.shape == (2, cfg.num_latents, cfg.latent_dim)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(carry))
  assert float(jnp.std(out)) > 0.1  # a real, non-degenerate output


def test_rin_latent_self_conditioning_is_a_noop_at_init():
  cfg, model, params = tiny_rin()
  x, t, y = inputs(cfg)
  f = rin_eval_fn()
  sc = jax.random.normal(jax.random.key(1), model.carry_shape(2))
  out0, _ = f(params, x, t, y, jnp.zeros_like(sc))
  out1, _ = f(params, x, t, y, sc)
  np.testing.assert_array_equal(out0, out1)
  # Once the zero-initialised LayerNorm scale moves, the carry matters.
  moved = replace_param(params, ('self_cond_ln_out', 'scale'), jnp.ones_like)
  out2, _ = f(moved, x, t, y, sc)
  assert rel_err(out2, out0) > 1e-3


def test_rin_self_conditioning_passes_no_gradient_to_the_first_pass():
  cfg, model, params = tiny_rin()
  x, t, y = inputs(cfg)
  params = replace_param(params, ('self_cond_ln_out', 'scale'), jnp.ones_like)
  remat_model = create_model(ModelConfig(**{**cfg.__dict__, 'remat': True}))  # scanned
  loss = lambda m, p, sc: jnp.sum(m.apply(p, x, t, y, self_cond=sc)[0] ** 2)

  def grads(p, carry):
    two_pass = lambda p: loss(model, p, model.apply(p, x, t, y)[1])
    # Gradient may only flow through the second pass, so it must equal the gradient with
    # the first pass's latents held constant (computed here by the rematerialised model).
    return jax.grad(two_pass)(p), jax.grad(lambda p: loss(remat_model, p, carry))(p)

  carry = rin_eval_fn()(params, x, t, y, jnp.zeros(model.carry_shape(2)))[1]
  g_free, g_const = fast_jit(grads, params, carry)(params, carry)
  leaves = lambda g: np.concatenate([np.ravel(v) for v in jax.tree.leaves(g)])
  scale = np.abs(leaves(g_const)).max()
  assert scale > 0
  np.testing.assert_allclose(leaves(g_free), leaves(g_const), atol=1e-5 * scale)


def unstack_rin_params(params, cfg):
  """Scanned parameters ('blocks', 'compute' stacked) -> the unrolled layout."""
  params = dict(params['params'])
  blocks = params.pop('blocks')
  for i in range(cfg.num_blocks):
    block = jax.tree.map(lambda v, i=i: v[i], blocks)
    compute = block.pop('compute')
    for k in range(cfg.num_compute_layers):
      block[f'compute_{k}'] = jax.tree.map(lambda v, k=k: v[k], compute)
    params[f'block_{i}'] = block
  return {'params': params}


def test_rin_scanned_layers_equal_unrolled_layers():
  cfg, model, params = tiny_rin()
  cfg2 = ModelConfig(
    **{**cfg.__dict__, 'num_blocks': 2, 'num_compute_layers': 2, 'scan_layers': True}
  )
  scanned = create_model(cfg2)
  unrolled = create_model(ModelConfig(**{**cfg2.__dict__, 'scan_layers': False}))
  shapes = scanned.param_shapes()
  params = random_params(shapes)
  flat = unstack_rin_params(params, cfg2)
  assert jax.tree.structure(flat) == jax.tree.structure(unrolled.param_shapes())
  x, t, y = inputs(cfg)
  fn = lambda p, q: (scanned.apply(p, x, t, y), unrolled.apply(q, x, t, y))
  (out_s, z_s), (out_u, z_u) = fast_jit(fn, params, flat)(params, flat)
  np.testing.assert_allclose(out_s, out_u, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(z_s, z_u, rtol=1e-4, atol=1e-4)


def test_rin_null_label_is_a_zero_one_hot():
  cfg, model, params = tiny_rin()
  x, t, _ = inputs(cfg)
  f = rin_eval_fn()
  sc = jnp.zeros(model.carry_shape(2))
  null = jnp.array([-1, -1], jnp.int32)
  real = jnp.array([3, 3], jnp.int32)
  no_class = replace_param(params, ('class_proj', 'kernel'), jnp.zeros_like)
  out_null, _ = f(params, x, t, null, sc)
  out_zero_onehot, _ = f(no_class, x, t, real, sc)
  out_real, _ = f(params, x, t, real, sc)
  np.testing.assert_allclose(out_null, out_zero_onehot, rtol=1e-5, atol=1e-5)
  assert rel_err(out_real, out_null) > 1e-3


def test_rin_bfloat16_forward_is_finite_and_close():
  cfg, model, params = tiny_rin()
  x, t, y = inputs(cfg)
  sc = jnp.zeros(model.carry_shape(2))
  out32, _ = rin_eval_fn()(params, x, t, y, sc)
  out16, carry16 = rin_eval_fn('bfloat16')(params, x, t, y, sc)
  assert out16.dtype == jnp.float32 and carry16.dtype == jnp.float32
  assert np.all(np.isfinite(out16))
  assert rel_err(out16, out32) < 0.05


@functools.cache
def rin_train_fn():
  cfg, model, params = tiny_rin()
  x, t, y = inputs(cfg)
  sc = jnp.zeros(model.carry_shape(2))
  fn = lambda p, r: model.apply(p, x, t, y, self_cond=sc, train=True, rng=r)[0]
  return fast_jit(fn, params, jax.random.key(0))


def test_rin_train_mode_dropout():
  cfg, model, params = tiny_rin()
  x, t, y = inputs(cfg)
  sc = jnp.zeros(model.carry_shape(2))
  train = rin_train_fn()
  a, b, c = (train(params, jax.random.key(s)) for s in (0, 1, 0))
  np.testing.assert_array_equal(a, c)  # same rng, same output
  assert rel_err(a, b) > 1e-3  # dropout / drop-path active
  e1, _ = rin_eval_fn()(params, x, t, y, sc)
  e2, _ = rin_eval_fn()(params, x, t, y, sc)
  np.testing.assert_array_equal(e1, e2)
  assert rel_err(a, e1) > 1e-3


def test_rin_dropout_lives_only_in_the_compute_layers():
  """With every compute layer's residual branches zeroed, train mode equals eval mode.

  The branches then output zero whatever dropout / drop-path do, so any difference left
  would come from dropout in the read / write units, the conditioning or the readout,
  which the reference does not have.
  """
  cfg, model, params = tiny_rin()
  x, t, y = inputs(cfg)
  # Only the compute layers have modules named 'attn' and 'mlp' (read_attn, self_cond_mlp...).
  for branch in (('attn', 'out'), ('mlp', 'fc2')):
    for leaf in ('kernel', 'bias'):
      params = replace_param(params, branch + (leaf,), jnp.zeros_like)
  out_train = rin_train_fn()(params, jax.random.key(3))
  out_eval, _ = rin_eval_fn()(params, x, t, y, jnp.zeros(model.carry_shape(2)))
  np.testing.assert_allclose(out_train, out_eval, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Layer by layer against float64 transcriptions of the reference (pix2seq tape.py and
# transformers.py, Keras layers).


def np_layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


def np_gelu(x):
  return 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))  # tf.nn.gelu(approximate=False)


def np_mlp(x, p):
  h = np_gelu(x @ p['fc1']['kernel'] + p['fc1']['bias'])
  return h @ p['fc2']['kernel'] + p['fc2']['bias']


def np_cross_attention(x, ctx, p):
  """Keras MultiHeadAttention with separate q / k / v kernels [D, H, Dh]."""
  q = np.einsum('btd,dhk->bthk', x, p['q']['kernel']) + p['q']['bias']
  kv = np.einsum('bsd,dnhk->bsnhk', ctx, p['kv']['kernel']) + p['kv']['bias']
  k, v = kv[:, :, 0], kv[:, :, 1]
  logits = np.einsum('bthk,bshk->bhts', q / np.sqrt(q.shape[-1]), k)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum('bhts,bshk->bthk', w, v)
  return np.einsum('bthk,hkd->btd', out, p['out']['kernel']) + p['out']['bias']


class CrossUnit(nn.Module):
  """The read or write unit alone, in its own scope."""

  cfg: ModelConfig
  which: str

  @nn.compact
  def __call__(self, a, b):
    unit = rin_lib.write_unit if self.which == 'write' else rin_lib.read_unit
    return unit(self.cfg, a, b, dict(dtype=jnp.float32, param_dtype=jnp.float32))


@pytest.mark.parametrize(
  'which, overrides',
  [
    ('write', {}),
    ('write', {'tape_mlp_ratio': 0}),  # the reference's write unit without an MLP
    ('write', {'write_kv_norm': True}),  # the option: LN on the latents first
    ('read', {}),
  ],
)
def test_read_and_write_units_match_the_reference_transcription(which, overrides):
  """x += CrossAttn(q=LN(x), kv=context); x += MLP(LN(x)), keys/values not normed."""
  cfg = ModelConfig(tape_dim=12, latent_dim=8, read_write_heads=2, **overrides)
  rng = np.random.default_rng(0)
  dx, dc = (cfg.tape_dim, cfg.latent_dim) if which == 'write' else (cfg.latent_dim, cfg.tape_dim)
  x = rng.normal(size=(2, 5, dx)).astype(np.float32)
  ctx = 3.0 * rng.normal(size=(2, 4, dc)).astype(np.float32)  # not unit scale: LN would show
  unit = CrossUnit(cfg, which)
  params = random_params(jax.eval_shape(unit.init, jax.random.key(0), x, ctx))
  got = np.asarray(jax.jit(unit.apply)(params, x, ctx))
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params['params'])
  assert (f'{which}_ln_kv' in p) == cfg.write_kv_norm
  assert (f'{which}_mlp' in p) == (which == 'read' or cfg.tape_mlp_ratio > 0)
  kv = np_layer_norm(ctx, p[f'{which}_ln_kv']) if cfg.write_kv_norm else ctx
  want = x + np_cross_attention(np_layer_norm(x, p[f'{which}_ln_q']), kv, p[f'{which}_attn'])
  if f'{which}_mlp' in p:
    want = want + np_mlp(np_layer_norm(want, p[f'{which}_ln_mlp']), p[f'{which}_mlp'])
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  # Raw keys/values: the unit sees the latents' scale (a LayerNorm would divide it out).
  scaled = np.asarray(jax.jit(unit.apply)(params, x, 2.0 * ctx))
  if cfg.write_kv_norm:
    np.testing.assert_allclose(scaled, got, rtol=1e-5, atol=1e-5)
  else:
    assert rel_err(scaled, got) > 1e-2


def test_mlp_gelu_is_the_exact_erf_form():
  mlp = layers.Mlp(32)
  x = 3.0 * np.random.default_rng(1).normal(size=(4, 8)).astype(np.float32)
  params = random_params(jax.eval_shape(mlp.init, jax.random.key(0), x))
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params['params'])
  np.testing.assert_allclose(mlp.apply(params, x), np_mlp(x, p), rtol=1e-5, atol=1e-5)
  # The tanh approximation is measurably different at this tolerance.
  approx = layers.Mlp(32, approximate_gelu=True).apply(params, x)
  assert np.abs(np.asarray(approx) - np_mlp(x, p)).max() > 1e-4


def test_transformer_layer_drops_only_the_mlp_hidden_units():
  """Dropout 0.5 changes nothing when the MLP's output kernel is zero (bias kept)."""
  args = dict(num_heads=2, mlp_ratio=4, dropout=0.5, drop_path=0.0)
  train = rin_lib.TransformerLayer(**args, deterministic=False)
  evaluate = rin_lib.TransformerLayer(**args, deterministic=True)
  z = np.random.default_rng(2).normal(size=(4, 6, 8)).astype(np.float32)
  params = random_params(jax.eval_shape(evaluate.init, jax.random.key(0), z))
  run = lambda m, p: m.apply(p, z, rngs={'dropout': jax.random.key(5)})[0]
  # No dropout on the attention output (it reaches the output unmasked) nor on the MLP
  # output (its bias would be dropped) ...
  zeroed = replace_param(params, ('mlp', 'fc2', 'kernel'), jnp.zeros_like)
  np.testing.assert_allclose(run(train, zeroed), run(evaluate, zeroed), rtol=1e-6, atol=1e-6)
  # ... while with the kernel back the hidden-unit dropout shows.
  assert rel_err(run(train, params), run(evaluate, params)) > 1e-2


def test_time_features_are_the_reference_standardised_sinusoids():
  gamma = np.array([1.0, 0.9, 0.5, 0.01, 1e-9])
  dim = 16
  # pix2seq transformers.py positional_encoding: rate_i = 1 / 10000^(2 (i // 2) / dim),
  # sin of the even entries, then cos of the odd ones; then ScalarEmbedding's
  # standardisation with the population std.
  i = np.arange(dim)
  angles = (1000.0 * gamma)[:, None] / 10000.0 ** (2 * (i // 2) / dim)[None, :]
  feats = np.concatenate([np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])], axis=1)
  want = (feats - feats.mean(-1, keepdims=True)) / feats.std(-1, keepdims=True)
  got = rin_lib.time_features(jnp.asarray(1000.0 * gamma, jnp.float32), dim)
  np.testing.assert_allclose(got, want, atol=3e-4)

  class TimeToken(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, t):
      return rin_lib.time_embedding(self.cfg, t, dict(dtype=jnp.float32, param_dtype=jnp.float32))

  cfg = ModelConfig(latent_dim=4 * dim)
  token = TimeToken(cfg)
  t = jnp.asarray(1000.0 * gamma, jnp.float32)
  params = random_params(jax.eval_shape(token.init, jax.random.key(0), t))
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), params['params'])
  assert p['time_fc1']['kernel'].shape == (dim, cfg.latent_dim)  # features Dz / 4
  h = want @ p['time_fc1']['kernel'] + p['time_fc1']['bias']
  h = h / (1.0 + np.exp(-h))  # SiLU between the Dense layers, none after
  h = h @ p['time_fc2']['kernel'] + p['time_fc2']['bias']
  np.testing.assert_allclose(token.apply(params, t), h, rtol=1e-3, atol=1e-3)


def keras_glorot_bound(shape):
  """glorot_uniform's limit sqrt(6 / (fan_in + fan_out)), fans as Keras' _compute_fans."""
  if len(shape) == 2:
    fan_in, fan_out = shape
  else:
    receptive = math.prod(shape[:-2])
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
  return math.sqrt(6.0 / (fan_in + fan_out))


def check_uniform(kernel, bound):
  kernel = np.asarray(kernel)
  assert np.abs(kernel).max() <= bound * (1 + 1e-6)
  if kernel.size >= 2000:
    assert np.abs(kernel).max() > 0.98 * bound
    np.testing.assert_allclose(kernel.std(), bound / math.sqrt(3), rtol=0.05)


def test_fused_attention_kernels_get_keras_per_projection_fans():
  """Each q / k / v slice of a fused kernel is distributed as Keras' own [D, H, Dh] kernel."""
  dim, heads = 256, 8
  attn = layers.SelfAttention(heads, fans='per_projection')
  p = attn.init(jax.random.key(0), jnp.zeros((1, 1, dim)))['params']
  qkv = np.asarray(p['qkv']['kernel'])  # [D, 3, H, Dh]
  assert qkv.shape == (dim, 3, heads, dim // heads)
  for s in range(3):
    check_uniform(qkv[:, s], keras_glorot_bound((dim, heads, dim // heads)))
  assert not np.allclose(qkv[:, 0], qkv[:, 1])
  check_uniform(p['out']['kernel'], keras_glorot_bound((heads, dim // heads, dim)))
  # The flattened fans give the wide [D, 3D] matrix's bound, about 3x larger here.
  flat = layers.SelfAttention(heads).init(jax.random.key(0), jnp.zeros((1, 1, dim)))['params']
  assert np.abs(flat['qkv']['kernel']).max() > 2 * keras_glorot_bound((dim, heads, dim // heads))

  cross = layers.CrossAttention(4, 64, fans='per_projection')
  p = cross.init(jax.random.key(1), jnp.zeros((1, 1, 128)), jnp.zeros((1, 1, 256)))['params']
  check_uniform(p['q']['kernel'], keras_glorot_bound((128, 4, 16)))
  for s in range(2):
    check_uniform(np.asarray(p['kv']['kernel'])[:, s], keras_glorot_bound((256, 4, 16)))
  check_uniform(p['out']['kernel'], keras_glorot_bound((4, 16, 128)))


def test_rin_init_is_the_keras_default():
  """Every kernel glorot-uniform with Keras' fans, every bias zero, embeddings std 0.02."""
  _, _, params = tiny_rin()
  for path, value in traverse_util.flatten_dict(params['params']).items():
    value = np.asarray(value)
    name = '/'.join(path)
    if path[-1] == 'bias':
      np.testing.assert_array_equal(value, 0.0, err_msg=name)
    elif path[-1] == 'scale':
      np.testing.assert_array_equal(value, 0.0 if path[0] == 'self_cond_ln_out' else 1.0)
    elif path[-1] in ('latents', 'tape_pos'):
      assert np.abs(value).max() <= 0.04  # truncated at 2 std
      np.testing.assert_allclose(value.std(), 0.02 * 0.8796, rtol=0.15)
    elif path[-2] in ('qkv', 'kv'):  # fused [D, n, H, Dh]: one Keras kernel per slice
      for s in range(value.shape[1]):
        check_uniform(value[:, s], keras_glorot_bound(value[:, s].shape))
    else:  # Dense [in, out], Conv [p, p, C, D], attention q [D, H, Dh] / out [H, Dh, D]
      assert path[-1] == 'kernel', name
      check_uniform(value, keras_glorot_bound(value.shape))


def test_patchify_matches_the_stem_convolution_and_inverts():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(4, 4, 3, 5)), jnp.float32)
  conv = jax.lax.conv_general_dilated(
    x, kernel, (4, 4), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  ).reshape(2, 4, 5)
  patches = rin_lib.patchify(x, 4)  # [2, 4, 48]
  np.testing.assert_allclose(patches @ kernel.reshape(48, 5), conv, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(rin_lib.unpatchify(patches, 4, 3), x)


def test_sinusoidal_embedding_matches_float64_reference():
  t = np.array([0.0, 1.0, 37.5, 999.0])
  dim = 16
  freqs = np.exp(-np.log(10_000.0) * np.arange(8) / 7.0)
  expected = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], axis=1)
  np.testing.assert_allclose(layers.sinusoidal_embedding(t, dim), expected, atol=2e-4)
  with pytest.raises(ValueError, match='even'):
    layers.sinusoidal_embedding(t, 7)


# ---------------------------------------------------------------------------------------
# Tiny U-Net combining the papers' options: learned variance, scale-shift norm, residual
# resampling, sqrt(1/2) skips, class + augmentation conditioning, self-conditioning.


@functools.cache
def tiny_unet():
  config = shrink(
    load_config('cifar10_edm'),
    name='unet',  # the house U-Net with EDM's DDPM++-like options
    network_kwargs={},
    learn_variance=True,
    scale_shift_norm=True,
    self_cond=True,
    channel_mults=(1, 2),
    attention_resolutions=(8,),
  )
  config.data.image_size = 16
  cfg = ModelConfig.from_config(config.model, config.data)
  model = create_model(cfg)
  params = random_params(model.param_shapes())
  return cfg, model, params


def unet_inputs(cfg, model):
  x, t, y = inputs(cfg)
  sc = jax.random.normal(jax.random.key(2), model.carry_shape(2))
  aug = jax.random.normal(jax.random.key(3), (2, cfg.augment_dim))
  return x, t, y, sc, aug


@functools.cache
def unet_eval_fn(dtype='float32'):
  cfg, _, params = tiny_unet()
  model = create_model(ModelConfig(**{**cfg.__dict__, 'dtype': dtype}))
  fn = lambda p, x, t, y, sc, aug: model.apply(p, x, t, y, self_cond=sc, augment=aug)
  return fast_jit(fn, params, *unet_inputs(cfg, model))


def test_unet_shapes_conditioning_and_null_label():
  cfg, model, params = tiny_unet()
  x, t, y, sc, aug = unet_inputs(cfg, model)
  f = unet_eval_fn()
  out, carry = f(params, x, t, y, sc, aug)
  assert out.shape == (2, 16, 16, 6)  # mean + iDDPM's v channels
  np.testing.assert_array_equal(out, carry)
  assert np.all(np.isfinite(out)) and float(jnp.std(out)) > 1e-2
  # Each conditioning input changes the output.
  for args in ((x, t * 0.5, y, sc, aug), (x, t, y, sc * 0, aug), (x, t, y, sc, aug * 0)):
    assert rel_err(f(params, *args)[0], out) > 1e-4
  null = jnp.array([-1, -1], jnp.int32)
  real = jnp.array([3, 3], jnp.int32)
  no_class = replace_param(params, ('class_proj', 'kernel'), jnp.zeros_like)
  np.testing.assert_allclose(
    f(params, x, t, null, sc, aug)[0], f(no_class, x, t, real, sc, aug)[0], rtol=1e-5, atol=1e-5
  )
  assert rel_err(f(params, x, t, real, sc, aug)[0], f(params, x, t, null, sc, aug)[0]) > 1e-4


def test_unet_bfloat16_and_dropout():
  cfg, model, params = tiny_unet()
  x, t, y, sc, aug = unet_inputs(cfg, model)
  out32, _ = unet_eval_fn()(params, x, t, y, sc, aug)
  out16, _ = unet_eval_fn('bfloat16')(params, x, t, y, sc, aug)
  assert np.all(np.isfinite(out16)) and rel_err(out16, out32) < 0.05
  fn = lambda p, r: model.apply(p, x, t, y, sc, aug, train=True, rng=r)[0]
  train = fast_jit(fn, params, jax.random.key(0))
  a, b, c = (train(params, jax.random.key(s)) for s in (0, 1, 0))
  np.testing.assert_array_equal(a, c)
  assert rel_err(a, b) > 1e-4 and rel_err(a, out32) > 1e-4


def test_unet_init_zero_output_and_label_free_variant():
  """A real init: DDPM/ADM zero-initialise the last conv, so the first output is zero."""
  config = shrink(load_config('cifar10_ddpm'))
  config.data.image_size = 8
  config.model.attention_resolutions = (4,)
  cfg = ModelConfig.from_config(config.model, config.data)
  model = create_model(cfg)
  x, t, _ = inputs(cfg)
  label = jnp.array([1, 2])  # ignored: the network is unconditional
  fn = lambda k: model.module.init_with_output({'params': k}, x, t, label)
  key = jax.random.key(0, impl='rbg')
  (out, _), params = fast_jit(fn, key)(key)
  assert out.shape == (2, 8, 8, 3)
  np.testing.assert_array_equal(out, 0.0)
  assert 'class_proj' not in params['params']


# ---------------------------------------------------------------------------------------
# Every config at full size, traced only.


@functools.cache
def full_size_shapes(name):
  config = load_config(name)
  cfg = ModelConfig.from_config(config.model, config.data)
  model = create_model(cfg)
  x = jax.ShapeDtypeStruct((2, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((2,), jnp.float32)
  init = lambda k, x, t: model.module.init_with_output({'params': k}, x, t, jnp.array([0, -1]))
  (out, carry), params = jax.eval_shape(init, jax.random.key(0), x, t)
  return cfg, model, params, out, carry


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_output_shape(name):
  cfg, model, _, out, carry = full_size_shapes(name)
  channels = 3 * (2 if cfg.learn_variance else 1)
  assert out.shape == (2, cfg.image_size, cfg.image_size, channels)
  assert carry.shape == model.carry_shape(2)


def expected_rin_params(cfg):
  """Closed-form RIN parameter count (kernels + biases + norms), independent of Flax."""
  dz, dt, p = cfg.latent_dim, cfg.tape_dim, cfg.patch_size
  inner = min(dz, dt)
  dense = lambda i, o: i * o + o
  ln = lambda d: 2 * d
  mlp = lambda d, r: dense(d, r * d) + dense(r * d, d)
  total = dense(p * p * cfg.num_channels, dt) + cfg.num_tokens * dt
  total += ln(dt) if cfg.stem_norm else 0
  total += dense(dz // 4, dz) + dense(dz, dz) + cfg.augment_dim * dz
  total += dense(cfg.num_classes, dz) if cfg.num_classes else 0
  total += (cfg.num_latents - cfg.num_cond_tokens) * dz
  total += ln(dz) + mlp(dz, cfg.latent_mlp_ratio) + ln(dz)
  read = ln(dz) + dense(dz, inner) + dense(dt, 2 * inner) + dense(inner, dz)
  read += ln(dz) + mlp(dz, cfg.latent_mlp_ratio)
  compute = ln(dz) + dense(dz, 3 * dz) + dense(dz, dz) + ln(dz) + mlp(dz, cfg.latent_mlp_ratio)
  write = ln(dt) + dense(dt, inner) + dense(dz, 2 * inner) + dense(inner, dt)
  write += ln(dz) if cfg.write_kv_norm else 0
  write += ln(dt) + mlp(dt, cfg.tape_mlp_ratio) if cfg.tape_mlp_ratio else 0
  total += cfg.num_blocks * (read + cfg.num_compute_layers * compute + write)
  total += ln(dt) + dense(dt, p * p * cfg.out_channels)
  return total


@pytest.mark.parametrize(
  'name, low, high',
  [
    ('digits', 0.7e6, 0.8e6),
    ('imagenet64', 100e6, 300e6),
    ('imagenet512', 400e6, 450e6),
    ('cifar10_rin', 25e6, 40e6),  # RIN paper: about 31M for CIFAR-10
    ('cifar10_ddpm', 35.6e6, 35.8e6),  # DDPM paper: 35.7M
    ('cifar10_iddpm', 40e6, 60e6),
    ('cifar10_ncsnv2', 25e6, 45e6),
    ('cifar10_edm', 54e6, 58e6),  # EDM DDPM++ (conditional): about 56M
  ],
)
def test_full_size_parameter_counts(name, low, high):
  cfg, _, params, _, _ = full_size_shapes(name)
  n = count_params(params)
  print(f'{name}: {n / 1e6:.2f}M parameters')
  assert low <= n <= high
  if cfg.name == 'rin':
    assert n == expected_rin_params(cfg)
    unrolled = create_model(ModelConfig(**{**cfg.__dict__, 'scan_layers': False}))
    assert count_params(unrolled.param_shapes()) == n


# ---------------------------------------------------------------------------------------
# Validation and interface errors.


def test_bad_patch_size_names_the_keys_and_choices():
  config = load_config('imagenet64')
  config.model.patch_size = 6
  with pytest.raises(ValueError, match=r'config\.model\.patch_size=6.*config\.data\.image_size=64'):
    ModelConfig.from_config(config.model, config.data)
  with pytest.raises(ValueError, match=r'\[1, 2, 4, 8, 16, 32, 64\]'):
    ModelConfig.from_config(config.model, config.data)


@pytest.mark.parametrize('num_latents', [2, 257])
def test_latent_count_bounds(num_latents):
  config = load_config('imagenet64')  # 64 tokens, 2 conditioning slots: valid 3..256
  config.model.num_latents = num_latents
  with pytest.raises(ValueError, match=r'config\.model\.num_latents'):
    ModelConfig.from_config(config.model, config.data)


@pytest.mark.parametrize(
  'key, value, pattern',
  [
    ('name', 'vit', r'config\.model\.name'),
    ('dtype', 'float64', r'config\.model\.dtype'),
    ('dropout', 1.0, r'config\.model\.dropout'),
    ('latent_heads', 5, r'config\.model\.latent_heads'),
  ],
)
def test_bad_model_settings(key, value, pattern):
  config = load_config('imagenet64')
  setattr(config.model, key, value)
  with pytest.raises(ValueError, match=pattern):
    ModelConfig.from_config(config.model, config.data)


def test_bad_unet_settings():
  config = load_config('cifar10_ddpm')
  config.model.attention_resolutions = (12,)
  with pytest.raises(ValueError, match=r'attention_resolutions.*\[32, 16, 8, 4\]'):
    ModelConfig.from_config(config.model, config.data)


def test_apply_rejects_wrong_shapes_and_missing_rng():
  cfg, model, params = tiny_rin()
  x, t, y = inputs(cfg)
  with pytest.raises(ValueError, match=r'x must have shape \[B, 64, 64, 3\]'):
    model.apply(params, x[:, :32], t, y)
  with pytest.raises(ValueError, match='noise_level'):
    model.apply(params, x, t[:1], y)
  with pytest.raises(ValueError, match='rng'):
    model.apply(params, x, t, y, train=True)
  with pytest.raises(ValueError, match='self_cond'):
    model.apply(params, x, t, y, self_cond=jnp.zeros((2, 3, cfg.latent_dim)))
  with pytest.raises(ValueError, match='augment'):
    model.apply(params, x, t, y, augment=jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match='ModelConfig'):
    create_model({'name': 'rin'})


def test_sincos_tape_positions_are_distinct_unit_scale_codes():
  from diffusion_jax.models import layers

  table = np.asarray(layers.sincos_2d_init(4)(None, (16, 8)))
  assert table.shape == (16, 8)
  np.testing.assert_allclose(np.sum(table**2, axis=1), 4.0, rtol=1e-6)  # sin^2 + cos^2 pairs
  # Row code: token (r, c) and (r, c') share the first half, differ in the second.
  np.testing.assert_allclose(table[1, :4], table[0, :4])
  assert not np.allclose(table[1, 4:], table[0, 4:])
  assert len({tuple(np.round(row, 6)) for row in table}) == 16
  with pytest.raises(ValueError, match='sin-cos'):
    layers.sincos_2d_init(4)(None, (16, 6))


# ---------------------------------------------------------------------------------------
# Fast paths that must not change the numbers.


@pytest.mark.parametrize(
  'features, axis, shape',
  [(24, -1, (2, 5, 16)), ((3, 2, 4), -1, (2, 5, 16)), (16, (-2, -1), (2, 5, 2, 4))],
)
def test_flat_dot_general_dense_equals_the_plain_one(features, axis, shape):
  """A Dense layer on [B, N, ...] as one 2-D matmul: same outputs and gradients."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  plain = nn.DenseGeneral(features, axis=axis)
  flat = nn.DenseGeneral(features, axis=axis, dot_general=layers.flat_dot_general)
  params = random_params(jax.eval_shape(plain.init, jax.random.key(0), x))
  assert jax.tree.structure(params) == jax.tree.structure(
    jax.eval_shape(flat.init, jax.random.key(0), x)
  )

  def loss(module):
    return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))

  np.testing.assert_allclose(flat.apply(params, x), plain.apply(params, x), rtol=1e-6, atol=1e-6)
  got, want = (jax.grad(loss(m), argnums=(0, 1))(params, x) for m in (flat, plain))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


def test_flat_dot_general_falls_back_for_batch_dimensions():
  a = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 5)), jnp.float32)
  b = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5, 2)), jnp.float32)
  dims = (((2,), (1,)), ((0,), (0,)))
  np.testing.assert_allclose(
    layers.flat_dot_general(a, b, dims), jax.lax.dot_general(a, b, dims), rtol=1e-6
  )


def test_rin_without_self_cond_equals_zero_self_cond():
  """self_cond=None runs the self-conditioning unit on one zero row and broadcasts it."""
  cfg, model, params = tiny_rin()
  x, t, y = inputs(cfg)
  moved = replace_param(params, ('self_cond_ln_out', 'scale'), jnp.ones_like)
  moved = replace_param(moved, ('self_cond_ln_in', 'bias'), lambda b: b + 0.5)
  zeros = jnp.zeros(model.carry_shape(2))
  want = rin_eval_fn()(moved, x, t, y, zeros)
  got = jax.jit(lambda p: model.apply(p, x, t, y, self_cond=None)).lower(moved).compile(FAST)
  for a, b in zip(got(moved), want):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  assert rel_err(want[0], rin_eval_fn()(params, x, t, y, zeros)[0]) > 1e-3  # the unit acts


def _np_attention(q, k, v):
  logits = np.einsum('bthd,bshd->bhts', q, k) / np.sqrt(q.shape[-1])
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum('bhts,bshd->bthd', w, v)


@pytest.mark.parametrize('impl', ['einsum', 'xla'])
def test_attention_impls_equal_a_float64_attention_and_its_gradient(impl):
  rng = np.random.default_rng(3)
  q, k, v = (rng.normal(size=(2, n, 3, 8)).astype(np.float32) for n in (5, 7, 7))
  np.testing.assert_allclose(
    layers.attention(q, k, v, impl=impl),
    _np_attention(*(a.astype(np.float64) for a in (q, k, v))),
    rtol=1e-5,
    atol=1e-6,
  )
  # d/dq of sum(out * c) by central differences of the float64 reference.
  c = rng.normal(size=(2, 5, 3, 8))
  grad = jax.grad(lambda q: jnp.sum(layers.attention(q, k, v, impl=impl) * c))(q)
  qd, eps = q.astype(np.float64), 1e-6
  for idx in [(0, 0, 0, 0), (1, 4, 2, 7), (0, 2, 1, 3)]:
    plus, minus = qd.copy(), qd.copy()
    plus[idx] += eps
    minus[idx] -= eps
    fd = (np.sum(_np_attention(plus, k, v) * c) - np.sum(_np_attention(minus, k, v) * c)) / (
      2 * eps
    )
    np.testing.assert_allclose(grad[idx], fd, rtol=1e-4, atol=1e-5)


def test_gelu_exact_equals_the_float64_erf_gelu_and_its_derivative():
  x = np.linspace(-12, 12, 2001).astype(np.float32)
  xd = x.astype(np.float64)
  exact = 0.5 * xd * (1 + scipy.special.erf(xd / np.sqrt(2)))
  got = np.asarray(layers.gelu_exact(jnp.asarray(x)), np.float64)
  np.testing.assert_allclose(got, exact, rtol=0, atol=2e-6 * np.maximum(1, np.abs(xd)).max() / 12)
  np.testing.assert_allclose(got, jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=2e-6)
  # Phi(x) + x phi(x)
  deriv = 0.5 * (1 + scipy.special.erf(xd / np.sqrt(2))) + xd * np.exp(-(xd**2) / 2) / np.sqrt(
    2 * np.pi
  )
  np.testing.assert_allclose(jax.vmap(jax.grad(layers.gelu_exact))(x), deriv, rtol=1e-5, atol=2e-6)
