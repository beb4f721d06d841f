"""EDM's non-leaking geometric augmentation, with its parameters as a conditioning vector.

Each transform is switched on per example with probability `p` (times a per-transform
multiplier); the network is told which transforms were applied through a vector of
`AUGMENT_DIM` = 9 numbers, and sampling uses the zero vector (no augmentation), so the
augmentations do not leak into generated images.

Layout of the vector (EDM's order, CIFAR-10 setting: xflip, yflip, scale, rotate_frac,
aniso, translate_frac):
  0: x-flip (0/1)          1: y-flip (0/1)          2: log2 isotropic scale / scale_std
  3: cos(angle) - 1        4: sin(angle)            (rotation)
  5: w cos(r), 6: w sin(r) (anisotropic scale: log2 stretch / aniso_std w along angle r)
  7, 8: translation (x, y) in units of translate_frac_std * (width, height).
All zero = identity.

Source: Karras et al. 2022 (EDM), Appendix F.2 and training/augment.py (AugmentPipe);
x-flip multiplier 1e8 and augment_dim 9 as in its CIFAR-10 configuration.

Resampling differs from EDM on purpose: bilinear with mirror padding at the image's own
resolution (EDM supersamples 2x with sym6 wavelet filters). Pixel-grid transforms (flips,
90 degree rotations, integer shifts) are then exact.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

AUGMENT_DIM = 9


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Probabilities and strengths of the augmentations (EDM's AugmentPipe arguments)."""

  p: float = 0.0  # overall probability; 0 = off.
  xflip: float = 1e8  # multipliers of p per transform (EDM CIFAR-10 setting).
  yflip: float = 1.0
  scale: float = 1.0
  rotate_frac: float = 1.0
  aniso: float = 1.0
  translate_frac: float = 1.0
  scale_std: float = 0.2
  rotate_frac_max: float = 1.0
  aniso_std: float = 0.2
  translate_frac_std: float = 0.125

  def __post_init__(self):
    if not 0.0 <= self.p <= 1.0:
      raise ValueError(
        f'config.data.augment_prob must be in [0, 1] (0 = off; EDM used 0.12 on CIFAR-10), '
        f'got {self.p}.'
      )


def sample_params(rng: np.random.Generator, batch_size: int, cfg: AugmentConfig):
  """Draws the raw transform parameters of `batch_size` examples (on the host, numpy).

  Source: EDM training/augment.py (AugmentPipe.forward), same distributions.

  Returns:
    dict of float32 [B] arrays: xflip, yflip (0/1), scale (log2 / scale_std), angle
    (radians), aniso (log2 / aniso_std), aniso_angle (radians), tx, ty (units of
    translate_frac_std). A transform that is off has all its entries exactly 0.
  """
  u = rng.random((11, batch_size))
  z = rng.standard_normal((4, batch_size))

  def gate(row, mult):
    return u[row] < min(mult * cfg.p, 1.0)

  def flip(row, mult):
    return gate(row, mult) & (u[row + 1] < 0.5)

  on_aniso, on_shift = gate(7, cfg.aniso), gate(9, cfg.translate_frac)
  params = dict(
    xflip=flip(0, cfg.xflip),
    yflip=flip(2, cfg.yflip),
    scale=np.where(gate(4, cfg.scale), z[0], 0.0),
    angle=np.where(gate(5, cfg.rotate_frac), (u[6] * 2 - 1) * math.pi * cfg.rotate_frac_max, 0.0),
    aniso=np.where(on_aniso, z[1], 0.0),
    aniso_angle=np.where(on_aniso, (u[8] * 2 - 1) * math.pi, 0.0),
    tx=np.where(on_shift, z[2], 0.0),
    ty=np.where(on_shift, z[3], 0.0),
  )
  return {k: v.astype(np.float32) for k, v in params.items()}


def params_to_vector(params: dict[str, np.ndarray]) -> np.ndarray:
  """The [B, 9] conditioning vector of raw parameters (layout in the module docstring)."""
  cols = [
    params['xflip'],
    params['yflip'],
    params['scale'],
    np.cos(params['angle']) - 1.0,
    np.sin(params['angle']),
    params['aniso'] * np.cos(params['aniso_angle']),
    params['aniso'] * np.sin(params['aniso_angle']),
    params['tx'],
    params['ty'],
  ]
  return np.stack(cols, axis=-1).astype(np.float32)


def _rot(theta):
  c, s = jnp.cos(theta), jnp.sin(theta)
  return jnp.array([[c, -s], [s, c]])


def inverse_matrix(params: dict[str, jax.Array], height: int, width: int, cfg: AugmentConfig):
  """Maps output pixel offsets from the center to input offsets: (A [B, 2, 2], t [B, 2]).

  The composition follows EDM: G_inv = S(s)^-1 R(angle) R(-r) S(a, 1/a)^-1 R(r) T(tx, ty)^-1
  with s = 2^(scale * scale_std), a = 2^(aniso * aniso_std), in (x right, y down)
  coordinates.
  """

  def one(p):
    s = jnp.exp2(p['scale'] * cfg.scale_std)
    a = jnp.exp2(p['aniso'] * cfg.aniso_std)
    r = p['aniso_angle']
    m = jnp.diag(jnp.stack([1.0 / s, 1.0 / s])) @ _rot(p['angle'])
    m = m @ _rot(-r) @ jnp.diag(jnp.stack([1.0 / a, a])) @ _rot(r)
    shift = jnp.stack([p['tx'] * width, p['ty'] * height]) * cfg.translate_frac_std
    return m, -(m @ shift)

  return jax.vmap(one)(params)


def _mirror(i: jax.Array, n: int) -> jax.Array:
  """Reflects integer indices into [0, n) about the edge pixels (d c b | a b c d | c b a)."""
  if n == 1:
    return jnp.zeros_like(i)
  i = jnp.mod(i, 2 * (n - 1))
  return (n - 1) - jnp.abs((n - 1) - i)


def _bilinear_mirror(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
  """Samples image [H, W, C] at real coordinates y, x [P] -> [P, C], mirror boundary."""
  h, w, _ = image.shape
  y0, x0 = jnp.floor(y), jnp.floor(x)
  fy, fx = (y - y0)[:, None], (x - x0)[:, None]
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
  ya, yb = _mirror(y0, h), _mirror(y0 + 1, h)
  xa, xb = _mirror(x0, w), _mirror(x0 + 1, w)
  top = image[ya, xa] * (1 - fx) + image[ya, xb] * fx
  bottom = image[yb, xa] * (1 - fx) + image[yb, xb] * fx
  return top * (1 - fy) + bottom * fy


def apply_params(images: jax.Array, params: dict[str, jax.Array], cfg: AugmentConfig) -> jax.Array:
  """Applies flips, then the geometric transform, to images [B, H, W, C].

  Bilinear resampling with mirror padding (EDM pads by reflection as well).
  """
  _, h, w, _ = images.shape
  images = jnp.where(params['xflip'][:, None, None, None] > 0, images[:, :, ::-1], images)
  images = jnp.where(params['yflip'][:, None, None, None] > 0, images[:, ::-1], images)
  mats, shifts = inverse_matrix(params, h, w, cfg)
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = jnp.meshgrid(jnp.arange(h) - cy, jnp.arange(w) - cx, indexing='ij')
  out_xy = jnp.stack([xx.ravel(), yy.ravel()])  # [2, H*W]

  def warp(image, m, t):  # image [H, W, C]
    in_xy = m @ out_xy + t[:, None]  # [2, H*W]
    return _bilinear_mirror(image, in_xy[1] + cy, in_xy[0] + cx).reshape(image.shape)

  return jax.vmap(warp)(images, mats, shifts)


@functools.lru_cache(maxsize=8)
def _jitted_apply(cfg: AugmentConfig):
  return jax.jit(functools.partial(apply_params, cfg=cfg))


def augment_numpy(seed: int, images: np.ndarray, cfg: AugmentConfig):
  """Randomly augments a numpy batch on the host CPU.

  Source: EDM (Karras et al. 2022), Appendix F.2, non-leaking augmentation.

  Args:
    seed: integer seed of this batch's draws.
    images: [B, H, W, C] float32.
    cfg: probabilities and strengths.

  Returns:
    numpy (images [B, H, W, C], augment vectors [B, 9]).
  """
  params = sample_params(np.random.default_rng(seed), images.shape[0], cfg)
  vectors = np.asarray(params_to_vector(params))
  if cfg.p == 0:
    return images, vectors
  cpu = jax.local_devices(backend='cpu')[0]
  images, params = jax.device_put((images, params), cpu)
  return np.asarray(_jitted_apply(cfg)(images, params)), vectors
