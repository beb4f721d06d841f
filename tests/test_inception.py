"""Tests of the FID Inception-v3 (diffusion_jax/evaluation/inception.py) and its weight converter.

The FID-specific blocks are checked against float64 numpy re-implementations written from
torchvision's InceptionA/C/E definitions with pytorch-fid's patches; the full network is run
once (one compile, random weights, 75 px) for shapes and batch independence.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # experiments/

from diffusion_jax.evaluation import inception  # noqa: E402
from experiments import convert_inception_weights as convert  # noqa: E402


@pytest.fixture(scope='module')
def variables():
  return inception.init_random_variables(seed=0)


@pytest.fixture(scope='module')
def extractor(variables):
  # 75 px (the smallest valid input) instead of 299 keeps the single compile cheap on CPU.
  return inception.InceptionFeatureExtractor(variables, batch_size=8, resize=75, quantize=False)


def test_shapes_and_finite(extractor):
  images = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32)
  out = extractor(images)
  assert out['pool'].shape == (3, inception.NUM_POOL_FEATURES) == (3, 2048)
  assert out['logits'].shape == (3, inception.NUM_LOGITS) == (3, 1008)
  assert np.isfinite(out['pool']).all() and np.isfinite(out['logits']).all()
  assert (out['pool'] >= 0).all()  # mean of ReLU outputs
  assert out['pool'].std() > 1e-3  # random weights still give non-degenerate features


def test_per_example_output_independent_of_batch(extractor):
  rng = np.random.default_rng(1)
  a, b, c = (rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32) for _ in range(3))
  alone = extractor(a)
  first = extractor(np.concatenate([a, b, c]))
  last = extractor(np.concatenate([c, b, a]))
  for key in ('pool', 'logits'):
    scale = np.abs(alone[key]).max()
    np.testing.assert_allclose(first[key][0], alone[key][0], atol=1e-5 * scale)
    np.testing.assert_allclose(last[key][2], alone[key][0], atol=1e-5 * scale)
    np.testing.assert_allclose(first[key][2], last[key][0], atol=1e-5 * scale)
  assert not np.allclose(first['pool'][0], first['pool'][1])  # different images differ


def test_grayscale_equals_repeated_rgb_and_quantization(variables, extractor):
  gray = np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 1)).astype(np.float32)
  out_gray = extractor(gray)
  out_rgb = extractor(np.repeat(gray, 3, axis=-1))
  np.testing.assert_allclose(out_gray['pool'], out_rgb['pool'], rtol=1e-6, atol=1e-7)
  q = inception.quantize_images(gray)
  np.testing.assert_allclose(q, np.round((gray + 1) * 127.5) / 127.5 - 1, atol=1e-6)
  assert len(np.unique(np.round((q + 1) * 127.5, 3))) <= 256


def test_bad_input_errors(variables):
  with pytest.raises(ValueError, match='at least 75'):
    inception.InceptionV3(resize=None).apply(variables, jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match='batch_size'):
    inception.InceptionFeatureExtractor(variables, batch_size=0)


# ---------------------------------------------------------------------------------------------
# FID-specific blocks against float64 numpy references.


def _np_conv(x, kernel, padding=(0, 0), stride=1):
  """Cross-correlation, NHWC x HWIO, symmetric zero padding (as torch's Conv2d)."""
  ph, pw = padding
  x = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  kh, kw = kernel.shape[:2]
  h = (x.shape[1] - kh) // stride + 1
  w = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], h, w, kernel.shape[3]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i : i + stride * h : stride, j : j + stride * w : stride, :]
      out += patch @ kernel[i, j]
  return out


def _np_basic(v, name, x, padding=(0, 0)):
  """BasicConv2d: conv (no bias), BatchNorm with running stats (eps 1e-3), ReLU."""
  p = v['params'][name]
  s = v['batch_stats'][name]
  y = _np_conv(x, p['conv']['kernel'].astype(np.float64), padding)
  y = (y - s['bn']['mean']) / np.sqrt(s['bn']['var'] + 1e-3) * p['bn']['scale'] + p['bn']['bias']
  return np.maximum(y, 0.0)


def _np_pool3(x, kind):
  """3x3 stride-1 pool with padding 1: 'avg' excludes padded cells, 'max' pads with -inf."""
  fill = -np.inf if kind == 'max' else 0.0
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=fill)
  ones = np.pad(np.ones(x.shape[1:3]), 1)
  h, w = x.shape[1:3]
  windows = np.stack([xp[:, i : i + h, j : j + w] for i in range(3) for j in range(3)])
  if kind == 'max':
    return windows.max(axis=0)
  counts = sum(ones[i : i + h, j : j + w] for i in range(3) for j in range(3))
  return windows.sum(axis=0) / counts[None, :, :, None]


def _randomize(variables, seed):
  """Random BN statistics and affine parameters so the BN arithmetic is exercised."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep='/')
  out = {}
  for k, val in flat.items():
    val = np.asarray(val, np.float64)
    if k.endswith('/var'):
      val = rng.uniform(0.5, 2.0, val.shape)
    elif k.endswith(('/mean', '/bias')):
      val = 0.1 * rng.standard_normal(val.shape)
    elif k.endswith('/scale'):
      val = rng.uniform(0.5, 1.5, val.shape)
    out[k] = val
  return traverse_util.unflatten_dict(out, sep='/')


def _np_block_a(v, x):
  b1 = _np_basic(v, 'branch1x1', x)
  b5 = _np_basic(v, 'branch5x5_2', _np_basic(v, 'branch5x5_1', x), (2, 2))
  b3 = _np_basic(v, 'branch3x3dbl_1', x)
  b3 = _np_basic(v, 'branch3x3dbl_3', _np_basic(v, 'branch3x3dbl_2', b3, (1, 1)), (1, 1))
  bp = _np_basic(v, 'branch_pool', _np_pool3(x, 'avg'))
  return np.concatenate([b1, b5, b3, bp], -1)


def _np_block_c(v, x):
  b1 = _np_basic(v, 'branch1x1', x)
  b7 = _np_basic(v, 'branch7x7_1', x)
  b7 = _np_basic(v, 'branch7x7_2', b7, (0, 3))
  b7 = _np_basic(v, 'branch7x7_3', b7, (3, 0))
  bd = _np_basic(v, 'branch7x7dbl_1', x)
  for name, pad in (('2', (3, 0)), ('3', (0, 3)), ('4', (3, 0)), ('5', (0, 3))):
    bd = _np_basic(v, f'branch7x7dbl_{name}', bd, pad)
  bp = _np_basic(v, 'branch_pool', _np_pool3(x, 'avg'))
  return np.concatenate([b1, b7, bd, bp], -1)


def _np_block_e(v, x, pool):
  b1 = _np_basic(v, 'branch1x1', x)
  b3 = _np_basic(v, 'branch3x3_1', x)
  b3 = np.concatenate(
    [_np_basic(v, 'branch3x3_2a', b3, (0, 1)), _np_basic(v, 'branch3x3_2b', b3, (1, 0))], -1
  )
  bd = _np_basic(v, 'branch3x3dbl_2', _np_basic(v, 'branch3x3dbl_1', x), (1, 1))
  bd = np.concatenate(
    [_np_basic(v, 'branch3x3dbl_3a', bd, (0, 1)), _np_basic(v, 'branch3x3dbl_3b', bd, (1, 0))], -1
  )
  bp = _np_basic(v, 'branch_pool', _np_pool3(x, pool))
  return np.concatenate([b1, b3, bd, bp], -1)


@pytest.mark.parametrize('block', ['A', 'C', 'E_1', 'E_2'])
def test_fid_blocks_match_numpy_reference(variables, block):
  # Real Mixed_* weights of the (random) network on small grids; the reference is float64.
  name, module, ref, channels = {
    'A': ('Mixed_5b', inception.FIDInceptionA(32), _np_block_a, 192),
    'C': ('Mixed_6b', inception.FIDInceptionC(128), _np_block_c, 768),
    'E_1': (
      'Mixed_7b',
      inception.FIDInceptionE(max_pool_branch=False),
      lambda v, x: _np_block_e(v, x, 'avg'),
      1280,
    ),
    'E_2': (
      'Mixed_7c',
      inception.FIDInceptionE(max_pool_branch=True),
      lambda v, x: _np_block_e(v, x, 'max'),
      2048,
    ),
  }[block]
  v = _randomize(
    {'params': variables['params'][name], 'batch_stats': variables['batch_stats'][name]}, seed=3
  )
  # Signed inputs: the max pool's -inf padding matters only if some values are negative.
  x = np.random.default_rng(4).standard_normal((2, 5, 5, channels))
  got = np.asarray(jax.jit(module.apply)(jax.tree.map(jnp.float32, v), jnp.asarray(x, jnp.float32)))
  want = ref(v, x)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_avg_pool_excludes_padding_and_max_pool_pads_with_minus_inf():
  x = np.ones((1, 4, 4, 1), np.float32)
  np.testing.assert_allclose(np.asarray(inception._avg_pool_exclude_pad(jnp.asarray(x))), 1.0)
  np.testing.assert_allclose(_np_pool3(-x, 'max'), -1.0)


# ---------------------------------------------------------------------------------------------
# Weights files.


def test_npz_round_trip(variables, tmp_path):
  path = str(tmp_path / 'w.npz')
  inception.save_variables_npz(variables, path)
  loaded = inception.load_inception_variables(path)
  a = traverse_util.flatten_dict(jax.device_get(variables), sep='/')
  b = traverse_util.flatten_dict(loaded, sep='/')
  assert a.keys() == b.keys() and len(a) == 472
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), b[k])


def test_load_rejects_wrong_file(variables, tmp_path):
  flat = inception.flatten_variables(variables)
  del flat['params/fc/bias']
  flat['params/Mixed_5b/branch1x1/conv/kernel'] = np.zeros((1, 1, 3, 3), np.float32)
  path = str(tmp_path / 'bad.npz')
  np.savez(path, **flat)
  with pytest.raises(ValueError, match='1 missing.*1 wrong-shape'):
    inception.load_inception_variables(path)


def test_missing_weights_error_names_path_and_fix(tmp_path):
  path = str(tmp_path / 'nowhere' / 'inception.npz')
  with pytest.raises(inception.InceptionWeightsNotFoundError) as info:
    inception.load_inception_variables(path)
  assert isinstance(info.value, FileNotFoundError)
  message = str(info.value)
  for needle in (
    path,
    inception.FID_WEIGHTS_URL,
    'convert_inception_weights.py',
    'pt_inception-2015-12-05',
    'config.eval.inception_weights',
  ):
    assert needle in message
  with pytest.raises(inception.InceptionWeightsNotFoundError, match='not set'):
    inception.load_inception_variables('')


def test_converter_maps_torch_layout(variables):
  flat = inception.flatten_variables(variables)
  torch_sd = convert.flax_to_torch_state_dict(flat)
  # torchvision layouts: conv [O, I, kh, kw], linear [out, in].
  assert torch_sd['Conv2d_1a_3x3.conv.weight'].shape == (32, 3, 3, 3)
  assert torch_sd['Mixed_6b.branch7x7_2.conv.weight'].shape == (128, 128, 1, 7)
  assert torch_sd['Mixed_7c.branch3x3_2b.conv.weight'].shape == (384, 384, 3, 1)
  assert torch_sd['fc.weight'].shape == (1008, 2048)
  assert torch_sd['Mixed_5b.branch_pool.bn.running_var'].shape == (32,)
  torch_sd['Mixed_5b.branch_pool.bn.num_batches_tracked'] = np.array(7)
  back = convert.convert_state_dict(torch_sd)
  assert back.keys() == flat.keys()
  for k in flat:
    np.testing.assert_array_equal(back[k], flat[k])
  # Element-level: torch w[o, i, y, x] is Flax kernel[y, x, i, o].
  w = torch_sd['Mixed_6b.branch7x7_2.conv.weight']
  kernel = back['params/Mixed_6b/branch7x7_2/conv/kernel']
  assert kernel[0, 5, 7, 3] == w[3, 7, 0, 5]
  assert back['params/fc/kernel'][11, 13] == torch_sd['fc.weight'][13, 11]
  with pytest.raises(ValueError, match='unexpected tensor'):
    convert.convert_state_dict({'features.0.weight': np.zeros(3)})
