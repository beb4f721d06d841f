"""Inception-v3, FID variant (the 2015-12-05 TensorFlow graph), in Flax Linen.

The layer names mirror torchvision's `Inception3` and pytorch-fid's `FIDInceptionA/C/E_1/E_2`
blocks, so the converted pytorch-fid weights (`pt_inception-2015-12-05-6726825d.pth`) map one to
one onto this module (see experiments/convert_inception_weights.py). The FID variant differs from
torchvision's Inception-v3 in three places: the average pools of the A, C and E_1 blocks exclude
the zero padding from the average (`count_include_pad=False`), E_2 (`Mixed_7c`) pools its branch
with a max instead of an average, and the classifier has 1008 outputs.

Source: Szegedy et al. 2016, "Rethinking the Inception Architecture" (Inception-v3); Heusel et
al. 2017 (FID, pool3 features); pytorch-fid's `inception.py` (the FID block patches).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

FID_WEIGHTS_URL = (
  'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
  'pt_inception-2015-12-05-6726825d.pth'
)
NUM_POOL_FEATURES = 2048
NUM_LOGITS = 1008  # The 2015-12-05 graph: 1000 ImageNet classes + 8 unused.
INPUT_SIZE = 299
MIN_INPUT_SIZE = 75  # Smallest input for which every VALID convolution/pool has >= 1 output.

Variables = dict[str, Any]


class InceptionWeightsNotFoundError(FileNotFoundError):
  """The converted FID Inception weights file is missing; the message says how to make it."""


def missing_weights_message(path: str) -> str:
  """The message of InceptionWeightsNotFoundError: the path, and how to produce the file."""
  shown = path or '<empty: config.eval.inception_weights is not set>'
  target = path or 'inception_fid.npz'
  return (
    f'FID Inception weights not found at {shown!r}. FID and Inception Score need the '
    'converted "FID Inception" (2015-12-05) weights. To make them:\n'
    f'  1. download {FID_WEIGHTS_URL}\n'
    '  2. pip install torch  (CPU build is enough; only the conversion needs it)\n'
    '  3. python experiments/convert_inception_weights.py '
    f'--input pt_inception-2015-12-05-6726825d.pth --output {target}\n'
    f'  4. set config.eval.inception_weights={target!r} '
    '(e.g. --config.eval.inception_weights=PATH on the command line).'
  )


_he_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'truncated_normal')


class BasicConv2d(nn.Module):
  """Convolution without bias, batch norm (inference statistics, eps 1e-3), ReLU."""

  features: int
  kernel_size: tuple[int, int] = (1, 1)
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(
      self.features,
      self.kernel_size,
      strides=self.strides,
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      kernel_init=_he_init,
      precision=self.precision,
      name='conv',
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


def _avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
  # TensorFlow's 3x3/1 'SAME' average pool: padded zeros are not counted.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


class FIDInceptionA(nn.Module):
  """Mixed_5b/c/d: 1x1, 5x5, double 3x3 and pooled branches (35x35 grid)."""

  pool_features: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(64, name='branch1x1')(x)
    b5 = conv(48, name='branch5x5_1')(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = conv(64, name='branch3x3dbl_1')(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = conv(self.pool_features, name='branch_pool')(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction 35x35 -> 17x17."""

  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(384, (3, 3), strides=(2, 2), name='branch3x3')(x)
    bd = conv(64, name='branch3x3dbl_1')(x)
    bd = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = conv(96, (3, 3), strides=(2, 2), name='branch3x3dbl_3')(bd)
    bp = nn.max_pool(x, (3, 3), strides=(2, 2))
    return jnp.concatenate([b3, bd, bp], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b..e: factorized 7x7 branches (17x17 grid)."""

  channels_7x7: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, name='branch1x1')(x)
    b7 = conv(c7, name='branch7x7_1')(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = conv(c7, name='branch7x7dbl_1')(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = conv(192, name='branch_pool')(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction 17x17 -> 8x8."""

  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(192, name='branch3x3_1')(x)
    b3 = conv(320, (3, 3), strides=(2, 2), name='branch3x3_2')(b3)
    b7 = conv(192, name='branch7x7x3_1')(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = conv(192, (3, 3), strides=(2, 2), name='branch7x7x3_4')(b7)
    bp = nn.max_pool(x, (3, 3), strides=(2, 2))
    return jnp.concatenate([b3, b7, bp], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (E_1: average pool without padding) and Mixed_7c (E_2: max pool) on 8x8."""

  max_pool_branch: bool
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(320, name='branch1x1')(x)
    b3 = conv(384, name='branch3x3_1')(x)
    b3 = jnp.concatenate(
      [
        conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3),
      ],
      axis=-1,
    )
    bd = conv(448, name='branch3x3dbl_1')(x)
    bd = conv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate(
      [
        conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd),
      ],
      axis=-1,
    )
    if self.max_pool_branch:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_exclude_pad(x)
    bp = conv(192, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3: images in [-1, 1] -> pool3 features [B, 2048] and logits [B, 1008].

  Attributes:
    resize: side the input is bilinearly resized to first (299 for the standard metric; None
      keeps the input size, which must then be >= 75).
    num_classes: classifier outputs (1008 for the FID weights).
    precision: matmul/conv precision (HIGHEST keeps float32 on accelerators that default to
      reduced-precision matmuls, so features match the reference implementation).
  """

  resize: int | None = INPUT_SIZE
  num_classes: int = NUM_LOGITS
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    x = images.astype(jnp.float32)  # [B, H, W, C] in [-1, 1]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
      raise ValueError(f'images must be [B, H, W, 1 or 3]; got shape {x.shape}.')
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    if self.resize is not None and x.shape[1:3] != (self.resize, self.resize):
      # Half-pixel-centre bilinear without antialiasing = torch's
      # F.interpolate(mode='bilinear', align_corners=False) used by pytorch-fid.
      x = jax.image.resize(
        x, (x.shape[0], self.resize, self.resize, 3), 'bilinear', antialias=False
      )
    if min(x.shape[1:3]) < MIN_INPUT_SIZE:
      raise ValueError(
        f'Inception needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} '
        f'pixels; got {x.shape[1:3]}. Set resize (default 299).'
      )
    conv = functools.partial(BasicConv2d, precision=self.precision)
    x = conv(32, (3, 3), strides=(2, 2), name='Conv2d_1a_3x3')(x)  # [B, 149, 149, 32]
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x)  # [B, 147, 147, 32]
    x = conv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)  # [B, 147, 147, 64]
    x = nn.max_pool(x, (3, 3), strides=(2, 2))  # [B, 73, 73, 64]
    x = conv(80, name='Conv2d_3b_1x1')(x)  # [B, 73, 73, 80]
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x)  # [B, 71, 71, 192]
    x = nn.max_pool(x, (3, 3), strides=(2, 2))  # [B, 35, 35, 192]
    p = self.precision
    x = FIDInceptionA(32, precision=p, name='Mixed_5b')(x)  # [B, 35, 35, 256]
    x = FIDInceptionA(64, precision=p, name='Mixed_5c')(x)  # [B, 35, 35, 288]
    x = FIDInceptionA(64, precision=p, name='Mixed_5d')(x)  # [B, 35, 35, 288]
    x = InceptionB(precision=p, name='Mixed_6a')(x)  # [B, 17, 17, 768]
    x = FIDInceptionC(128, precision=p, name='Mixed_6b')(x)
    x = FIDInceptionC(160, precision=p, name='Mixed_6c')(x)
    x = FIDInceptionC(160, precision=p, name='Mixed_6d')(x)
    x = FIDInceptionC(192, precision=p, name='Mixed_6e')(x)  # [B, 17, 17, 768]
    x = InceptionD(precision=p, name='Mixed_7a')(x)  # [B, 8, 8, 1280]
    x = FIDInceptionE(max_pool_branch=False, precision=p, name='Mixed_7b')(x)  # [B, 8, 8, 2048]
    x = FIDInceptionE(max_pool_branch=True, precision=p, name='Mixed_7c')(x)  # [B, 8, 8, 2048]
    pool = jnp.mean(x, axis=(1, 2))  # [B, 2048]
    logits = nn.Dense(self.num_classes, precision=p, name='fc')(pool)  # [B, 1008]
    return {'pool': pool, 'logits': logits}


# ---------------------------------------------------------------------------------------------
# Weights: flat .npz  <->  Flax variables.


def flatten_variables(variables: Variables) -> dict[str, np.ndarray]:
  """Flax variables -> {'params/Mixed_5b/branch1x1/conv/kernel': array, ...}."""
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep='/')
  return {k: np.asarray(v) for k, v in flat.items()}


def unflatten_variables(flat: dict[str, np.ndarray]) -> Variables:
  """The inverse of flatten_variables."""
  return traverse_util.unflatten_dict({k: np.asarray(v) for k, v in flat.items()}, sep='/')


def save_variables_npz(variables: Variables, path: str) -> None:
  """Writes Flax variables as a flat .npz (keys are '/'-joined variable paths)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, **flatten_variables(variables))


@functools.lru_cache(maxsize=4)
def expected_variable_shapes(num_classes: int = NUM_LOGITS) -> dict[str, tuple[int, ...]]:
  """The flat key -> shape table of the FID Inception (computed abstractly, no FLOPs)."""
  model = InceptionV3(resize=None, num_classes=num_classes)
  shapes = jax.eval_shape(
    model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  )
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes, sep='/').items()}


def load_inception_variables(path: str) -> Variables:
  """Loads the converted FID Inception weights from a flat .npz, checking every key and shape.

  Args:
    path: file written by experiments/convert_inception_weights.py (or save_variables_npz).

  Returns:
    Flax variables {'params': ..., 'batch_stats': ...} for InceptionV3.

  Raises:
    InceptionWeightsNotFoundError: the file does not exist (the message says how to make it).
    ValueError: keys or shapes do not match the FID Inception.
  """
  if not path or not os.path.isfile(path):
    raise InceptionWeightsNotFoundError(missing_weights_message(path))
  with np.load(path) as data:
    flat = {k: data[k].astype(np.float32) for k in data.files}
  expected = expected_variable_shapes()
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  wrong = sorted(k for k in set(expected) & set(flat) if flat[k].shape != expected[k])
  if missing or unexpected or wrong:
    details = [
      f'missing {missing[:5]}' if missing else '',
      f'unexpected {unexpected[:5]}' if unexpected else '',
      ', '.join(f'{k}: {flat[k].shape} != {expected[k]}' for k in wrong[:5]),
    ]
    raise ValueError(
      f'{path} is not an FID Inception weights file ({len(missing)} missing, '
      f'{len(unexpected)} unexpected, {len(wrong)} wrong-shape keys: '
      f'{"; ".join(d for d in details if d)}). Re-create it with '
      'experiments/convert_inception_weights.py.'
    )
  return unflatten_variables(flat)


def init_random_variables(seed: int = 0, num_classes: int = NUM_LOGITS) -> Variables:
  """Random variables with the FID Inception's structure (He-normal kernels), for tests.

  Drawn with numpy from the abstract shapes: jitting `model.init` for 24M parameters compiles
  slowly on CPU, and tests only need well-scaled weights.
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in expected_variable_shapes(num_classes).items():
    name = key.rsplit('/', 1)[-1]
    if name == 'kernel':
      gain = 1.0 if key.startswith('params/fc/') else 2.0
      std = np.sqrt(gain / np.prod(shape[:-1]))
      flat[key] = (std * rng.standard_normal(shape)).astype(np.float32)
    elif name in ('scale', 'var'):
      flat[key] = np.ones(shape, np.float32)
    else:  # bias, mean
      flat[key] = np.zeros(shape, np.float32)
  return unflatten_variables(flat)


# ---------------------------------------------------------------------------------------------
# Batched feature extraction.


def quantize_images(images: np.ndarray) -> np.ndarray:
  """Rounds [-1, 1] images to the 256 levels of a saved uint8 image (what FID suites see)."""
  levels = np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255)
  return levels / np.float32(127.5) - np.float32(1.0)


@dataclasses.dataclass
class InceptionFeatureExtractor:
  """Runs the FID Inception over many images in fixed-size, device-sharded batches.

  One compiled program: every batch (the last one zero-padded) has `batch_size` rows, sharded
  over a one-axis ('data',) mesh of the local devices; the padding rows are dropped on return.

  Attributes:
    variables: Flax variables (load_inception_variables or init_random_variables).
    batch_size: rows per forward pass, rounded up to a multiple of the device count.
    resize: input side fed to the network (299 for the standard metric).
    quantize: round images to 8 bits first, as the reference suites (which read saved PNG/uint8
      samples) do.
  """

  variables: Variables
  batch_size: int = 200
  resize: int | None = INPUT_SIZE
  quantize: bool = True
  devices: Sequence[jax.Device] | None = None

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f'batch_size must be >= 1; got {self.batch_size}.')
    devices = list(self.devices) if self.devices is not None else jax.local_devices()
    self.mesh = Mesh(np.asarray(devices), ('data',))
    n = len(devices)
    self.batch_size = -(-self.batch_size // n) * n
    num_classes = self.variables['params']['fc']['bias'].shape[0]
    model = InceptionV3(resize=self.resize, num_classes=num_classes)
    self._data_sharding = NamedSharding(self.mesh, P('data'))
    replicated = NamedSharding(self.mesh, P())
    self._variables = jax.device_put(self.variables, replicated)
    self._forward = jax.jit(
      model.apply, in_shardings=(replicated, self._data_sharding), out_shardings=self._data_sharding
    )

  def __call__(self, images: np.ndarray | jax.Array) -> dict[str, np.ndarray]:
    """Features of images [N, H, W, C] in [-1, 1] -> {'pool': [N, 2048], 'logits': [N, 1008]}."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
      raise ValueError(f'images must be [N, H, W, C]; got shape {images.shape}.')
    if images.shape[-1] == 1:  # gray -> RGB here, so 1- and 3-channel inputs share a compile
      images = np.repeat(images, 3, axis=-1)
    if self.quantize:
      images = quantize_images(images)
    outputs = {'pool': [], 'logits': []}
    for start in range(0, images.shape[0], self.batch_size):
      chunk = images[start : start + self.batch_size]
      n = chunk.shape[0]
      if n < self.batch_size:
        chunk = np.concatenate(
          [chunk, np.zeros((self.batch_size - n,) + chunk.shape[1:], chunk.dtype)]
        )
      out = self._forward(self._variables, jax.device_put(chunk, self._data_sharding))
      for k in outputs:
        outputs[k].append(np.asarray(out[k])[:n])
    if not outputs['pool']:
      num_classes = self.variables['params']['fc']['bias'].shape[0]
      return {
        'pool': np.zeros((0, NUM_POOL_FEATURES), np.float32),
        'logits': np.zeros((0, num_classes), np.float32),
      }
    return {k: np.concatenate(v) for k, v in outputs.items()}
