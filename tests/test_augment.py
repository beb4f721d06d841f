"""Tests for diffusion_jax/data/augment.py (EDM non-leaking augmentation)."""

import math

import jax
import numpy as np
import pytest

from diffusion_jax.data import augment as aug

ZERO = dict(xflip=0.0, yflip=0.0, scale=0.0, angle=0.0, aniso=0.0, aniso_angle=0.0, tx=0.0, ty=0.0)


def _params(batch, **values):
  out = {k: np.full((batch,), v, np.float32) for k, v in ZERO.items()}
  out.update({k: np.asarray(v, np.float32) * np.ones(batch, np.float32) for k, v in values.items()})
  return out


@pytest.fixture(scope='module')
def apply():
  cfg = aug.AugmentConfig(p=1.0)
  fn = jax.jit(lambda x, p: aug.apply_params(x, p, cfg))
  return lambda x, **v: np.asarray(fn(x, _params(x.shape[0], **v)))


def _smooth_images(batch, size, channels=2, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((batch, size, size, channels)).astype(np.float32)


def test_probability_zero_is_identity_with_zero_vector():
  x = _smooth_images(4, 9)
  out, vec = aug.augment_numpy(3, x, aug.AugmentConfig(p=0.0))
  np.testing.assert_array_equal(out, x)
  assert vec.shape == (4, aug.AUGMENT_DIM) and vec.dtype == np.float32
  np.testing.assert_array_equal(vec, 0.0)


def test_zero_parameters_resample_exactly(apply):
  x = _smooth_images(2, 7)
  np.testing.assert_array_equal(apply(x), x)


def test_probability_one_transforms_with_nonzero_parameters():
  x = _smooth_images(16, 9)
  out, vec = aug.augment_numpy(5, x, aug.AugmentConfig(p=1.0))
  assert out.shape == x.shape
  # Every continuous transform is on for every example (p * multiplier >= 1).
  assert np.all(vec[:, 2] != 0) and np.all(vec[:, 4] != 0)
  assert np.all(np.abs(vec[:, 5:7]).sum(-1) > 0) and np.all(np.abs(vec[:, 7:9]).sum(-1) > 0)
  assert np.all(np.abs(out - x).reshape(16, -1).max(-1) > 1e-3)


def test_flip_parameter_matches_image_flip():
  cfg = aug.AugmentConfig(p=1.0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0)
  x = _smooth_images(32, 6)
  out, vec = aug.augment_numpy(11, x, cfg)
  flipped = vec[:, 0] == 1
  assert 0 < flipped.sum() < 32  # both cases occur (P(fail) = 2^-31)
  np.testing.assert_allclose(out[flipped], x[flipped][:, :, ::-1], atol=1e-6)
  np.testing.assert_allclose(out[~flipped], x[~flipped], atol=1e-6)
  np.testing.assert_array_equal(vec[:, 1:], 0.0)


def test_quarter_turn_rotation_is_rot90(apply):
  x = _smooth_images(2, 8)
  out = apply(x, angle=math.pi / 2)
  # out(p) = in(R(90) p): a pixel-grid permutation, so bilinear sampling is exact.
  np.testing.assert_allclose(out, np.rot90(x, k=1, axes=(1, 2)), atol=1e-4)


def test_translation_by_whole_pixels_with_mirror_edges(apply):
  size, shift = 8, 2
  x = _smooth_images(1, size)
  out = apply(x, tx=shift / (size * 0.125))  # tx in units of translate_frac_std * width
  cols = np.abs(np.arange(size) - shift)  # mirror about the first column
  np.testing.assert_allclose(out, x[:, :, cols], atol=1e-5)


def test_isotropic_scale_two_magnifies_about_center(apply):
  x = _smooth_images(1, 9)
  out = apply(x, scale=1.0 / 0.2)  # s = 2^(w * scale_std) = 2
  c, k = 4, np.arange(-2, 3)
  np.testing.assert_allclose(
    out[:, c + 2 * k][:, :, c + 2 * k], x[:, c + k][:, :, c + k], atol=1e-5
  )


def test_anisotropic_scale_stretches_x_and_squeezes_y(apply):
  x = _smooth_images(1, 9)
  out = apply(x, aniso=1.0 / 0.2)  # a = 2 along angle r = 0: in = (x / 2, 2 y)
  c, k = 4, np.arange(-2, 3)
  np.testing.assert_allclose(
    out[:, c + k][:, :, c + 2 * k], x[:, c + 2 * k][:, :, c + k], atol=1e-5
  )


def test_parameter_frequencies_match_probability():
  n, p = 4000, 0.4
  params = aug.sample_params(np.random.default_rng(0), n, aug.AugmentConfig(p=p))
  vec = aug.params_to_vector(params)

  def check(frac, expected):
    assert abs(frac - expected) < 4 * math.sqrt(expected * (1 - expected) / n)

  check(np.mean(vec[:, 0]), 0.5)  # x-flip: gate always on (multiplier 1e8), fair coin
  check(np.mean(vec[:, 1]), p / 2)  # y-flip: gate p, then a fair coin
  check(np.mean(vec[:, 2] != 0), p)
  check(np.mean(vec[:, 4] != 0), p)
  check(np.mean(vec[:, 7] != 0), p)
  on = vec[:, 2] != 0  # log2-scale / scale_std ~ N(0, 1)
  assert abs(np.std(vec[on, 2]) - 1) < 4 / math.sqrt(2 * on.sum())
  angle = np.arctan2(vec[:, 4], vec[:, 3] + 1)[vec[:, 4] != 0]  # uniform on (-pi, pi)
  assert abs(np.mean(np.abs(angle)) - math.pi / 2) < 4 * math.pi / math.sqrt(12 * len(angle))


def test_bad_probability_names_the_key():
  with pytest.raises(ValueError, match='augment_prob'):
    aug.AugmentConfig(p=1.5)
