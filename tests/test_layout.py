"""Tests of diffusion_jax/models/layout.py: logical-weight axes and layout conversion."""

import os
import sys

import jax
import numpy as np
import pytest

from diffusion_jax.models import ModelConfig, create_model, layout

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits  # noqa: E402


def _path(*names):
  return tuple(jax.tree_util.DictKey(n) for n in names)


@pytest.mark.parametrize(
  'names,shape,axes',
  [
    # Scanned compute layer: [blocks, layers, D, 3, H, Dh] -> per layer and per q/k/v.
    (('params', 'blocks', 'compute', 'attn', 'qkv', 'kernel'), (2, 3, 16, 3, 2, 8), (0, 1, 3)),
    (('params', 'blocks', 'compute', 'attn', 'qkv', 'bias'), (2, 3, 3, 2, 8), (0, 1, 2)),
    (('params', 'blocks', 'compute', 'attn', 'out', 'kernel'), (2, 3, 2, 8, 16), (0, 1)),
    (('params', 'blocks', 'compute', 'ln1', 'scale'), (2, 3, 16), (0, 1)),
    (('params', 'blocks', 'read_attn', 'kv', 'kernel'), (2, 16, 2, 2, 8), (0, 2)),
    (('params', 'blocks', 'read_attn', 'q', 'kernel'), (2, 16, 2, 8), (0,)),
    (('params', 'blocks', 'read_mlp', 'fc1', 'kernel'), (2, 16, 64), (0,)),
    # Unrolled layers and top-level weights: only the fused projection axis.
    (('params', 'block_0', 'compute_1', 'attn', 'qkv', 'kernel'), (16, 3, 2, 8), (1,)),
    (('params', 'block_0', 'write_attn', 'kv', 'bias'), (2, 2, 8), (0,)),
    (('params', 'tape_pos'), (64, 16), ()),
    (('params', 'stem', 'kernel'), (2, 2, 1, 16), ()),
  ],
)
def test_weight_axes_index_the_reference_variables(names, shape, axes):
  path = _path(*names)
  assert layout.weight_axes(path, shape) == axes
  want = tuple(d for a, d in enumerate(shape) if a not in axes)
  assert layout.logical_shape(path, shape) == want


def test_weight_axes_reject_a_shape_that_breaks_the_layout():
  with pytest.raises(ValueError, match='qkv'):
    layout.weight_axes(_path('attn', 'qkv', 'kernel'), (16, 48))  # unfused-style 2-D kernel
  with pytest.raises(ValueError, match='scanned layer axes'):
    layout.weight_axes(_path('blocks', 'compute', 'ln', 'bias'), (4,))


def test_stack_and_unstack_convert_between_the_model_layouts():
  """The scanned RIN's params, unstacked, have the unrolled RIN's tree and shapes (and
  stacking them back is exact); checked on eval_shape trees, nothing compiled."""
  config = digits.get_config()
  m = config.model
  m.tape_dim, m.latent_dim, m.num_latents, m.read_write_heads, m.latent_heads = 16, 16, 4, 2, 2
  m.num_blocks, m.num_compute_layers = 3, 2
  shapes = {}
  for scan in (True, False):
    m.scan_layers = scan
    shapes[scan] = create_model(ModelConfig.from_config(m, config.data)).param_shapes()
  rng = np.random.default_rng(0)
  scanned = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes[True])
  unrolled = layout.unstack_layers(scanned)
  assert jax.tree.structure(unrolled) == jax.tree.structure(shapes[False])
  for got, want in zip(jax.tree.leaves(unrolled), jax.tree.leaves(shapes[False]), strict=True):
    assert got.shape == want.shape
  np.testing.assert_array_equal(
    unrolled['params']['block_2']['compute_1']['attn']['qkv']['kernel'],
    scanned['params']['blocks']['compute']['attn']['qkv']['kernel'][2, 1],
  )
  back = layout.stack_layers(unrolled)
  assert jax.tree.structure(back) == jax.tree.structure(scanned)
  for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(scanned), strict=True):
    np.testing.assert_array_equal(np.asarray(got), want)


def test_stack_layers_rejects_missing_layers():
  leaf = {'kernel': np.ones((2, 2))}
  with pytest.raises(ValueError, match='block_'):
    layout.stack_layers({'block_0': leaf, 'block_2': leaf})
