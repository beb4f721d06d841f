"""NCSNv2's RefineNet score networks: NCSNv2 (CIFAR-10, CelebA), NCSNv2Deeper, NCSNv2Deepest.

The network is noise-unconditional (Technique 3): it returns F(x), and the score is
s(x, sigma_i) = F(x) / sigma_i, the reference's final `output / used_sigmas`. The
division belongs to the caller (objectives/ncsn.py, convert/ncsnv2.py), so `noise_level`
and `label` are ignored here.

Settings: `config.model.network_kwargs = {'data': {...}, 'model': {...}}`, the keys of
the reference yml's sections that the network reads (see `Settings.from_model_config`).
The noise ladder (`sigma_begin`, `sigma_end`, `num_classes`) lives in config.diffusion.

Source: Song & Ermon 2020 (NCSNv2), appendix B.1; ermongroup/ncsnv2 `models/ncsnv2.py`
(NCSNv2, NCSNv2Deeper, NCSNv2Deepest), `models/layers.py` (ResidualBlock, ConvMeanPool,
RefineBlock, RCUBlock, MSFBlock, CRPBlock), `models/normalization.py` (InstanceNorm2dPlus),
`runners/ncsn_runner.py` (get_model: which data set uses which network).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.config import ModelConfig

# Per network, bottom-up: (stage name, its two residual blocks as (width / ngf, resample,
# dilation)), and top-down the refine block of each stage as (name, width / ngf).
# `resample='down'` with a dilation keeps the resolution (the dilated RefineNet).
ARCHITECTURES = {
  'NCSNv2': (
    (('res1', ((1, None, None), (1, None, None))), ('refine4', 1)),
    (('res2', ((2, 'down', None), (2, None, None))), ('refine3', 1)),
    (('res3', ((2, 'down', 2), (2, None, 2))), ('refine2', 2)),
    (('res4', ((2, 'down', 4), (2, None, 4))), ('refine1', 2)),
  ),
  'NCSNv2Deeper': (
    (('res1', ((1, None, None), (1, None, None))), ('refine5', 1)),
    (('res2', ((2, 'down', None), (2, None, None))), ('refine4', 1)),
    (('res3', ((2, 'down', None), (2, None, None))), ('refine3', 2)),
    (('res4', ((4, 'down', 2), (4, None, 2))), ('refine2', 2)),
    (('res5', ((4, 'down', 4), (4, None, 4))), ('refine1', 4)),
  ),
  'NCSNv2Deepest': (
    (('res1', ((1, None, None), (1, None, None))), ('refine5', 1)),
    (('res2', ((2, 'down', None), (2, None, None))), ('refine4', 1)),
    (('res3', ((2, 'down', None), (2, None, None))), ('refine3', 2)),
    (('res31', ((2, 'down', None), (2, None, None))), ('refine31', 2)),
    (('res4', ((4, 'down', 2), (4, None, 2))), ('refine2', 2)),
    (('res5', ((4, 'down', 4), (4, None, 4))), ('refine1', 4)),
  ),
}
# runners/ncsn_runner.py get_model: the network of each reference data set.
DATASET_ARCHITECTURE = {
  'CIFAR10': 'NCSNv2',
  'CELEBA': 'NCSNv2',
  'LSUN': 'NCSNv2Deeper',
  'FFHQ': 'NCSNv2Deepest',
}
NONLINEARITIES: dict[str, Callable[[jax.Array], jax.Array]] = {
  'elu': nn.elu,
  'relu': nn.relu,
  'lrelu': functools.partial(nn.leaky_relu, negative_slope=0.2),
  'swish': nn.swish,
}
MODEL_KEYS = ('ngf', 'normalization', 'nonlinearity', 'spec_norm', 'arch')
DATA_KEYS = ('dataset', 'image_size', 'channels', 'logit_transform', 'rescaled')
# Reference yml keys the network does not read, and where our config keeps them.
ELSEWHERE = {
  'sigma_begin': 'config.diffusion.sigma_max',
  'sigma_end': 'config.diffusion.sigma_min',
  'num_classes': 'config.diffusion.num_levels',
  'sigma_dist': "config.diffusion (the ladder is 'geometric')",
  'ema': 'config.optim.ema_decay',
  'ema_rate': 'config.optim.ema_decay',
  'random_flip': 'config.data.random_flip',
}
_EPS = 1e-5  # InstanceNorm2dPlus / nn.InstanceNorm2d


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the network reads from `config.model.network_kwargs`, validated."""

  arch: str  # 'NCSNv2' | 'NCSNv2Deeper' | 'NCSNv2Deepest'
  ngf: int
  nonlinearity: str
  centered_input: bool  # h = 2 x - 1: data in [0, 1], neither rescaled nor logit

  @classmethod
  def from_model_config(cls, cfg: ModelConfig) -> Settings:
    """Checks `cfg.kwargs` ({'data': {...}, 'model': {...}}) and the unused model fields.

    model: ngf (required), normalization ('InstanceNorm++'), nonlinearity ('elu' | 'relu'
    | 'lrelu' | 'swish', default 'elu'), spec_norm (False), arch (default from
    data.dataset as the reference's get_model picks it). data: logit_transform and
    rescaled (default False), optional dataset, image_size and channels (must match
    config.data).
    """
    key = 'config.model.network_kwargs'
    kwargs = cfg.kwargs
    extra = sorted(set(kwargs) - {'data', 'model'})
    if extra:
      raise ValueError(f"{key} has {extra}; it takes only the sections 'data' and 'model'.")
    model, data = dict(kwargs.get('model', {})), dict(kwargs.get('data', {}))
    _check_keys(f"{key}['model']", model, MODEL_KEYS)
    _check_keys(f"{key}['data']", data, DATA_KEYS)
    ngf = model.get('ngf')
    if isinstance(ngf, bool) or not isinstance(ngf, int) or ngf < 1:
      raise ValueError(f"{key}['model']['ngf']={ngf!r} must be a positive int (the papers: 128).")
    norm = model.get('normalization', 'InstanceNorm++')
    if norm != 'InstanceNorm++':
      raise ValueError(
        f"{key}['model']['normalization']={norm!r} is not supported; NCSNv2 uses 'InstanceNorm++'."
      )
    act = model.get('nonlinearity', 'elu')
    if not isinstance(act, str) or act.lower() not in NONLINEARITIES:
      raise ValueError(
        f"{key}['model']['nonlinearity']={act!r} must be one of {tuple(NONLINEARITIES)}."
      )
    if model.get('spec_norm', False) is not False:
      raise ValueError(f"{key}['model']['spec_norm'] must be False (spectral norm is not ported).")
    arch = model.get('arch', DATASET_ARCHITECTURE.get(data.get('dataset')))
    if arch not in ARCHITECTURES:
      raise ValueError(
        f"{key}['model']['arch']={arch!r} must be one of {tuple(ARCHITECTURES)}, or set "
        f"{key}['data']['dataset'] to one of {tuple(DATASET_ARCHITECTURE)}."
      )
    flags = {}
    for name in ('logit_transform', 'rescaled'):
      flags[name] = data.get(name, False)
      if not isinstance(flags[name], bool):
        raise ValueError(f"{key}['data'][{name!r}]={flags[name]!r} must be True or False.")
    for name, ours, ours_key in (
      ('image_size', cfg.image_size, 'config.data.image_size'),
      ('channels', cfg.num_channels, 'config.data.num_channels'),
    ):
      if data.get(name, ours) != ours:
        raise ValueError(f"{key}['data'][{name!r}]={data[name]!r} must equal {ours_key}={ours}.")
    _check_model_fields(cfg, arch)
    return cls(
      arch=arch,
      ngf=ngf,
      nonlinearity=act.lower(),
      centered_input=not flags['logit_transform'] and not flags['rescaled'],
    )


def downsampling(arch: str) -> int:
  """The factor by which a network reduces the resolution (2 ** stages that pool)."""
  return 2 ** sum(
    blocks[0][1] == 'down' and blocks[0][2] is None for (_, blocks), _ in ARCHITECTURES[arch]
  )


def _check_keys(where: str, values: dict[str, Any], allowed: tuple[str, ...]) -> None:
  for k in sorted(values):
    if k in allowed:
      continue
    home = ELSEWHERE.get(k)
    if home:
      raise ValueError(f'{where}[{k!r}] is not a network setting; set {home} instead.')
    raise ValueError(f'{where} has unknown key {k!r}; valid keys: {allowed}.')


def _check_model_fields(cfg: ModelConfig, arch: str) -> None:
  if cfg.num_classes:
    raise ValueError(
      'NCSNv2 is unconditional: set config.model.class_conditional=False '
      f'(config.data.num_classes={cfg.num_classes}).'
    )
  for name in ('learn_variance', 'self_cond'):
    if getattr(cfg, name):
      raise ValueError(f'config.model.{name} must be False for config.model.name=ncsnv2.')
  if cfg.augment_dim:
    raise ValueError('config.model.augment_dim must be 0 for config.model.name=ncsnv2.')
  factor = downsampling(arch)
  if cfg.image_size % factor:
    raise ValueError(
      f'config.data.image_size={cfg.image_size} must be divisible by {factor} for {arch}.'
    )


# ---------------------------------------------------------------------------------------
# Layers (NHWC; torch's NCHW names kept so the converter maps them one to one).


def _torch_bias_init(fan_in: int) -> Callable[..., jax.Array]:
  """nn.Conv2d's default bias init, U(-1 / sqrt(fan_in), 1 / sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _near_one(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
  """N(1, 0.02), InstanceNorm2dPlus's alpha and gamma init."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def conv(
  features: int,
  in_channels: int,
  kernel_size: int = 3,
  dilation: int = 1,
  use_bias: bool = True,
  *,
  name: str,
  dtype: Any = jnp.float32,
  param_dtype: Any = jnp.float32,
) -> nn.Conv:
  """nn.Conv2d(stride 1, padding = dilation * (k // 2)) with torch's default init."""
  k, d = kernel_size, dilation
  pad = d * (k // 2)
  return nn.Conv(
    features,
    (k, k),
    padding=((pad, pad), (pad, pad)),
    kernel_dilation=(d, d),
    use_bias=use_bias,
    # kaiming_uniform(a = sqrt(5)): U(+-sqrt(1 / fan_in)).
    kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
    bias_init=_torch_bias_init(in_channels * k * k),
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
  )


def mean_pool(x: jax.Array) -> jax.Array:
  """2x2 mean pooling as ConvMeanPool sums the four strided slices: [B, H, W, C]."""
  parts = (x[:, ::2, ::2], x[:, 1::2, ::2], x[:, ::2, 1::2], x[:, 1::2, 1::2])
  total = parts[0]
  for part in parts[1:]:
    total = total + part
  return total / 4.0


def bilinear_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """F.interpolate(mode='bilinear', align_corners=True) to `size` (H, W): [B, H, W, C]."""
  height, width = x.shape[1:3]
  if (height, width) == tuple(size):
    return x
  rows = jnp.asarray(_interpolation_matrix(size[0], height), x.dtype)
  cols = jnp.asarray(_interpolation_matrix(size[1], width), x.dtype)
  x = jnp.einsum('oh,bhwc->bowc', rows, x)
  return jnp.einsum('pw,bowc->bopc', cols, x)


def _interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
  """[n_out, n_in] linear-interpolation weights with the end points aligned."""
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  src = np.arange(n_out, dtype=np.float64) * scale
  low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  high = np.minimum(low + 1, n_in - 1)
  frac = src - low
  weights = np.zeros((n_out, n_in), np.float64)
  np.add.at(weights, (np.arange(n_out), low), 1.0 - frac)
  np.add.at(weights, (np.arange(n_out), high), frac)
  return weights


class InstanceNormPlus(nn.Module):
  """InstanceNorm++: instance norm plus the normalized channel means, gamma h + beta.

  h = (x - mu_c) / sqrt(var_c + eps) + alpha_c (mu_c - mean(mu)) / sqrt(var(mu) + eps),
  var(mu) over channels unbiased (torch.var). Source: NCSNv2 appendix B.1 (Song &
  Ermon 2019, Eq. 4 without the class); ermongroup/ncsnv2 InstanceNorm2dPlus(bias=True).
  """

  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    alpha = self.param('alpha', _near_one, (c,), self.param_dtype)
    gamma = self.param('gamma', _near_one, (c,), self.param_dtype)
    beta = self.param('beta', nn.initializers.zeros, (c,), self.param_dtype)
    h = x.astype(jnp.float32)
    mu = jnp.mean(h, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    var = jnp.mean(jnp.square(h - mu), axis=(1, 2), keepdims=True)
    means = mu[:, 0, 0, :]
    means = (means - jnp.mean(means, -1, keepdims=True)) / jnp.sqrt(
      jnp.var(means, -1, keepdims=True, ddof=1) + _EPS
    )
    h = (h - mu) / jnp.sqrt(var + _EPS) + means[:, None, None, :] * alpha
    return (gamma * h + beta).astype(x.dtype)


class ConvMeanPool(nn.Module):
  """A stride-1 convolution, then 2x2 mean pooling (ConvMeanPool, adjust_padding=False)."""

  features: int
  kernel_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    return mean_pool(conv(self.features, x.shape[-1], self.kernel_size, name='conv', **kw)(x))


class ResidualBlock(nn.Module):
  """norm-act-conv twice plus the (projected) input; `resample='down'` halves H and W
  unless the block is dilated (ermongroup/ncsnv2 layers.ResidualBlock)."""

  out_channels: int
  resample: str | None
  dilation: int | None
  act: Callable[[jax.Array], jax.Array]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    cin, cout, d = x.shape[-1], self.out_channels, self.dilation
    mid = cin if self.resample == 'down' else cout
    h = self.act(InstanceNormPlus(self.param_dtype, name='normalize1')(x))
    h = conv(mid, cin, 3, d or 1, name='conv1', **kw)(h)
    h = self.act(InstanceNormPlus(self.param_dtype, name='normalize2')(h))
    if self.resample == 'down' and d is None:
      h = ConvMeanPool(cout, 3, name='conv2', **kw)(h)
      shortcut = ConvMeanPool(cout, 1, name='shortcut', **kw)
    else:
      h = conv(cout, mid, 3, d or 1, name='conv2', **kw)(h)
      shortcut = conv(cout, cin, 3 if d else 1, d or 1, name='shortcut', **kw)
    if cin == cout and self.resample is None:
      return x + h
    return shortcut(x) + h


class RCUBlock(nn.Module):
  """Residual conv units: n_blocks x (n_stages x (act, bias-free 3x3 conv)) + input."""

  n_blocks: int
  n_stages: int
  act: Callable[[jax.Array], jax.Array]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.n_blocks):
      residual = x
      for j in range(self.n_stages):
        c = x.shape[-1]
        x = conv(c, c, 3, use_bias=False, name=f'{i + 1}_{j + 1}_conv', **kw)(self.act(x))
      x = x + residual
    return x


class CRPBlock(nn.Module):
  """Chained residual pooling: act, then twice path = conv(maxpool5x5(path)), x += path."""

  n_stages: int
  act: Callable[[jax.Array], jax.Array]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = self.act(x)
    path = x
    for i in range(self.n_stages):
      path = nn.max_pool(path, (5, 5), strides=(1, 1), padding=((2, 2), (2, 2)))
      c = x.shape[-1]
      path = conv(c, c, 3, use_bias=False, name=f'convs_{i}', **kw)(path)
      x = path + x
    return x


class MSFBlock(nn.Module):
  """Multi-resolution fusion: sum of 3x3 convs, each resized to `shape` (bilinear, corners
  aligned)."""

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: list[jax.Array], shape: tuple[int, int]) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    total = None
    for i, x in enumerate(xs):
      h = conv(self.features, x.shape[-1], 3, name=f'convs_{i}', **kw)(x)
      h = bilinear_align_corners(h, shape)
      total = h if total is None else total + h
    return total


class RefineBlock(nn.Module):
  """RefineNet block: RCU per input, multi-resolution fusion (bilinear, corners aligned)
  to `shape`, chained residual pooling, output RCUs (3 in the last block, else 1)."""

  features: int
  act: Callable[[jax.Array], jax.Array]
  start: bool = False
  end: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, xs: list[jax.Array], shape: tuple[int, int]) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    hs = [RCUBlock(2, 2, self.act, name=f'adapt_convs_{i}', **kw)(x) for i, x in enumerate(xs)]
    h = MSFBlock(self.features, name='msf', **kw)(hs, shape) if len(hs) > 1 else hs[0]
    h = CRPBlock(2, self.act, name='crp', **kw)(h)
    return RCUBlock(3 if self.end else 1, 2, self.act, name='output_convs', **kw)(h)


class NCSNv2(nn.Module):
  """NCSNv2's RefineNet. Returns `(F(x), F(x))`, F the output before `/ sigma`.

  Input x [B, H, W, C] is the reference's: in [0, 1] (mapped to 2 x - 1 inside) unless
  data.rescaled or data.logit_transform.
  """

  config: ModelConfig

  def __post_init__(self) -> None:
    Settings.from_model_config(self.config)  # fail at construction, naming the key
    super().__post_init__()

  @nn.compact
  def __call__(
    self,
    x: jax.Array,  # [B, H, W, C]
    noise_level: jax.Array,  # [B], ignored (noise-unconditional)
    label: jax.Array | None = None,  # ignored (unconditional)
    self_cond: jax.Array | None = None,  # ignored
    augment: jax.Array | None = None,  # ignored
    train: bool = False,
  ) -> tuple[jax.Array, jax.Array]:
    del noise_level, label, self_cond, augment, train
    cfg = self.config
    s = Settings.from_model_config(cfg)
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype)
    act = NONLINEARITIES[s.nonlinearity]
    h = 2.0 * x - 1.0 if s.centered_input else x
    h = conv(s.ngf, cfg.num_channels, 3, name='begin_conv', **kw)(h.astype(cfg.compute_dtype))
    layers = []
    for (stage, blocks), _ in ARCHITECTURES[s.arch]:
      for i, (mult, resample, dilation) in enumerate(blocks):
        h = ResidualBlock(mult * s.ngf, resample, dilation, act, name=f'{stage}_{i}', **kw)(h)
      layers.append(h)
    ref = None
    refines = [refine for _, refine in ARCHITECTURES[s.arch]]
    for depth in reversed(range(len(layers))):
      name, mult = refines[depth]
      xs = [layers[depth]] if ref is None else [layers[depth], ref]
      block = RefineBlock(mult * s.ngf, act, start=ref is None, end=depth == 0, name=name, **kw)
      ref = block(xs, layers[depth].shape[1:3])
    h = act(InstanceNormPlus(cfg.parameter_dtype, name='normalizer')(ref))
    out = conv(cfg.num_channels, s.ngf, 3, name='end_conv', **kw)(h).astype(jnp.float32)
    return out, out
