"""EDM's networks: SongUNet (DDPM++ / NCSN++) and DhariwalUNet (ADM), layer for layer.

Source: Karras et al. 2022 (EDM), reference `training/networks.py` (Linear, Conv2d with
fused resampling, GroupNorm, UNetBlock, PositionalEmbedding, FourierEmbedding, SongUNet,
DhariwalUNet), itself a re-implementation of Song et al. 2021 (score_sde's DDPM++ /
NCSN++) and Dhariwal & Nichol 2021 (ADM). Settings come from `config.model.network_kwargs`
under the reference constructor's names; the image shape and the label count come from
`config.data`. The parameter tree mirrors the reference's module names (`enc.32x32_block0`
is `enc_32x32_block0`), so a state dict maps by name (diffusion_jax/convert/edm.py).

Interface: NHWC images, `noise_level = 1000 c_noise` (the reference's `noise_labels`
times parameterization.NOISE_LEVEL_SCALE), labels [B] ints with -1 = null (a zero one-hot;
a float [B, label_dim] one-hot is taken as is), augment [B, augment_dim] or None (= zeros).
Returns `(F, F)`: the raw network output, before preconditioning.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import parameterization
from diffusion_jax.models import layers
from diffusion_jax.models.config import ModelConfig

_DIMS = ('NHWC', 'HWIO', 'NHWC')

# Constructor keyword arguments and defaults of the reference classes (beyond the shape).
SONG_DEFAULTS: dict[str, Any] = dict(
  augment_dim=0,
  model_channels=128,
  channel_mult=(1, 2, 2, 2),
  channel_mult_emb=4,
  num_blocks=4,
  attn_resolutions=(16,),
  dropout=0.10,
  label_dropout=0.0,
  embedding_type='positional',
  channel_mult_noise=1,
  encoder_type='standard',
  decoder_type='standard',
  resample_filter=(1, 1),
)
DHARIWAL_DEFAULTS: dict[str, Any] = dict(
  augment_dim=0,
  model_channels=192,
  channel_mult=(1, 2, 3, 4),
  channel_mult_emb=4,
  num_blocks=3,
  attn_resolutions=(32, 16, 8),
  dropout=0.10,
  label_dropout=0.0,
)
_CHOICES = {
  'embedding_type': ('positional', 'fourier'),
  'encoder_type': ('standard', 'skip', 'residual'),
  'decoder_type': ('standard', 'skip'),
}


def network_settings(cfg: ModelConfig, model_type: str) -> dict[str, Any]:
  """The reference constructor's kwargs for `cfg`: defaults, then config.model.network_kwargs.

  Raises:
    ValueError: an unknown key, a value the reference rejects, or a setting that
      disagrees with config.data / config.model (label_dim, augment_dim).
  """
  defaults = SONG_DEFAULTS if model_type == 'SongUNet' else DHARIWAL_DEFAULTS
  given = dict(cfg.kwargs)
  if given.pop('model_type', model_type) != model_type:
    raise ValueError(
      f'config.model.network_kwargs.model_type must be {model_type!r} for '
      f'config.model.name={cfg.name!r} (the name picks the network).'
    )
  label_dim = given.pop('label_dim', cfg.num_classes)
  if label_dim != cfg.num_classes:
    raise ValueError(
      f'config.model.network_kwargs.label_dim={label_dim} differs from the '
      f'{cfg.num_classes} classes of config.data / config.model.class_conditional; drop it.'
    )
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(
      f'config.model.network_kwargs has {unknown}, which {model_type} does not take; '
      f'valid keys: {sorted(defaults)}.'
    )
  s = {**defaults, **given}
  s['augment_dim'] = given.get('augment_dim', cfg.augment_dim)
  if s['augment_dim'] != cfg.augment_dim:
    raise ValueError(
      f'config.model.network_kwargs.augment_dim={s["augment_dim"]} differs from '
      f'config.model.augment_dim={cfg.augment_dim}; set both to the same width.'
    )
  if cfg.dropout and cfg.dropout != s['dropout']:
    raise ValueError(
      f'config.model.dropout={cfg.dropout} differs from config.model.network_kwargs.dropout='
      f'{s["dropout"]}, which {model_type} reads; set config.model.dropout to 0 or the same.'
    )
  if cfg.learn_variance or cfg.self_cond:
    raise ValueError(
      f'{model_type} has neither a learned variance nor self-conditioning; set '
      'config.model.learn_variance and config.model.self_cond to False.'
    )
  for key in ('channel_mult', 'attn_resolutions', 'resample_filter'):
    if key in s:
      s[key] = tuple(int(v) for v in s[key])
  for key, valid in _CHOICES.items():
    if key in s and s[key] not in valid:
      raise ValueError(f'config.model.network_kwargs.{key}={s[key]!r} must be one of {valid}.')
  for key in ('model_channels', 'num_blocks', 'channel_mult_emb'):
    if int(s[key]) < 1:
      raise ValueError(f'config.model.network_kwargs.{key} must be >= 1, got {s[key]}.')
  levels = len(s['channel_mult'])
  if not levels or cfg.image_size % 2 ** (levels - 1):
    raise ValueError(
      f'config.data.image_size={cfg.image_size} must be divisible by 2^(levels - 1) for '
      f'config.model.network_kwargs.channel_mult={s["channel_mult"]}.'
    )
  return s


# ---------------------------------------------------------------------------------------
# Layers.


def weight_init(mode: str, fan_in: int, fan_out: int, gain: float) -> Any:
  """The reference's `weight_init(shape, mode, fan_in, fan_out) * gain` as a Flax init."""

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    if gain == 0:
      return jnp.zeros(shape, dtype)
    if mode == 'xavier_uniform':
      w = math.sqrt(6 / (fan_in + fan_out)) * jax.random.uniform(key, shape, dtype, -1, 1)
    elif mode == 'xavier_normal':
      w = math.sqrt(2 / (fan_in + fan_out)) * jax.random.normal(key, shape, dtype)
    elif mode == 'kaiming_uniform':
      w = math.sqrt(3 / fan_in) * jax.random.uniform(key, shape, dtype, -1, 1)
    elif mode == 'kaiming_normal':
      w = math.sqrt(1 / fan_in) * jax.random.normal(key, shape, dtype)
    else:
      raise ValueError(f'invalid init mode {mode!r}.')
    return w * gain

  return init


def resample_kernel(resample_filter: tuple[int, ...]) -> np.ndarray:
  """The reference's 2-D filter: outer(f, f) / sum(f)^2, [k, k] float32."""
  f = np.asarray(resample_filter, np.float32)
  return np.outer(f, f) / np.square(f.sum())


def _depthwise(x: jax.Array, f: np.ndarray, stride: int, pad: int, up: bool) -> jax.Array:
  """Per-channel filtering of NHWC x: strided conv (down) or transposed conv (up, f x 4)."""
  c = x.shape[-1]
  k = f.shape[0]
  kernel = jnp.asarray(np.tile((f * 4 if up else f)[::-1, ::-1, None, None], (1, 1, 1, c)), x.dtype)
  if up:  # conv_transpose2d(stride=2, padding=pad) as a dilated conv with the flipped filter.
    q = k - 1 - pad
    return jax.lax.conv_general_dilated(
      x,
      kernel,
      (1, 1),
      [(q, q), (q, q)],
      lhs_dilation=(2, 2),
      dimension_numbers=_DIMS,
      feature_group_count=c,
    )
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    (stride, stride),
    [(pad, pad), (pad, pad)],
    dimension_numbers=_DIMS,
    feature_group_count=c,
  )


class Linear(nn.Module):
  """`x @ W + b`; kernel [in, out] (the reference's weight transposed)."""

  features: int
  use_bias: bool = True
  init_mode: str = 'kaiming_normal'
  init_weight: float = 1.0
  init_bias: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in, fan_out = x.shape[-1], self.features
    w = self.param(
      'kernel',
      weight_init(self.init_mode, fan_in, fan_out, self.init_weight),
      (fan_in, fan_out),
      self.param_dtype,
    )
    x = jnp.dot(x.astype(self.dtype), w.astype(self.dtype))
    if self.use_bias:
      b = self.param(
        'bias',
        weight_init(self.init_mode, fan_in, fan_out, self.init_bias),
        (fan_out,),
        self.param_dtype,
      )
      x = x + b.astype(self.dtype)
    return x


class Conv2d(nn.Module):
  """The reference's Conv2d: optional 2x up / down resampling with its FIR filter.

  `kernel=0` resamples only. Unfused: resample, then convolve; fused (the NCSN++ encoder's
  residual path): the convolution and the filter share their padding. Kernel [k, k, I, O].
  """

  out_channels: int
  kernel: int
  use_bias: bool = True
  up: bool = False
  down: bool = False
  resample_filter: tuple[int, ...] = (1, 1)
  fused_resample: bool = False
  init_mode: str = 'kaiming_normal'
  init_weight: float = 1.0
  init_bias: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin, k = x.shape[-1], self.kernel
    x = x.astype(self.dtype)
    w = b = None
    if k:
      fans = (cin * k * k, self.out_channels * k * k)
      w = self.param(
        'kernel',
        weight_init(self.init_mode, *fans, self.init_weight),
        (k, k, cin, self.out_channels),
        self.param_dtype,
      ).astype(self.dtype)
      if self.use_bias:
        b = self.param(
          'bias',
          weight_init(self.init_mode, *fans, self.init_bias),
          (self.out_channels,),
          self.param_dtype,
        ).astype(self.dtype)
    f = resample_kernel(self.resample_filter) if (self.up or self.down) else None
    w_pad = k // 2
    f_pad = (f.shape[0] - 1) // 2 if f is not None else 0
    conv = lambda x, pad: jax.lax.conv_general_dilated(
      x, w, (1, 1), [(pad, pad), (pad, pad)], dimension_numbers=_DIMS
    )
    if self.fused_resample and self.up and w is not None:
      x = _depthwise(x, f, 2, max(f_pad - w_pad, 0), up=True)
      x = conv(x, max(w_pad - f_pad, 0))
    elif self.fused_resample and self.down and w is not None:
      x = conv(x, w_pad + f_pad)
      x = _depthwise(x, f, 2, 0, up=False)
    else:
      if self.up:
        x = _depthwise(x, f, 2, f_pad, up=True)
      if self.down:
        x = _depthwise(x, f, 2, f_pad, up=False)
      if w is not None:
        x = conv(x, w_pad)
    if b is not None:
      x = x + b
    return x


class GroupNorm(nn.Module):
  """The reference's GroupNorm: min(num_groups, C // min_channels_per_group) groups.

  Statistics in float32 with the biased variance, as torch.nn.functional.group_norm.
  """

  num_groups: int = 32
  min_channels_per_group: int = 4
  eps: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    groups = min(self.num_groups, c // self.min_channels_per_group)
    scale = self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    h = x.astype(jnp.float32).reshape(x.shape[:-1] + (groups, c // groups))
    axes = (1, 2, 4)
    mean = h.mean(axes, keepdims=True)
    var = jnp.square(h - mean).mean(axes, keepdims=True)
    h = ((h - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
    return (h * scale + bias).astype(self.dtype)


def positional_embedding(
  x: jax.Array, num_channels: int, max_positions: int = 10000, endpoint: bool = False
) -> jax.Array:
  """[cos(x w_k), sin(x w_k)], w_k = (1 / max_positions)^(k / (C/2 - endpoint)), [B, C].

  Source: EDM `PositionalEmbedding` (DDPM++ and ADM).
  """
  half = num_channels // 2
  freqs = jnp.arange(half, dtype=jnp.float32) / (half - (1 if endpoint else 0))
  freqs = jnp.power(jnp.float32(1 / max_positions), freqs)
  x = jnp.outer(x.astype(jnp.float32), freqs)
  return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=1)


class FourierEmbedding(nn.Module):
  """[cos(2 pi x f_k), sin(2 pi x f_k)], f ~ N(0, scale^2): EDM `FourierEmbedding` (NCSN++).

  The reference keeps `freqs` as a fixed buffer; here it is a parameter behind
  stop_gradient (zero gradient: Adam leaves it where it was drawn).
  """

  num_channels: int
  scale: float = 16.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = lambda key, shape, dtype=jnp.float32: jax.random.normal(key, shape, dtype) * self.scale
    freqs = jax.lax.stop_gradient(self.param('freqs', init, (self.num_channels // 2,)))
    x = jnp.outer(x.astype(jnp.float32), 2 * np.pi * freqs)
    return jnp.concatenate([jnp.cos(x), jnp.sin(x)], axis=1)


class UNetBlock(nn.Module):
  """The reference's UNetBlock: DDPM++ / NCSN++ (additive embedding, sqrt(1/2) skips,
  1x1 resampling skip) and ADM (adaptive scale-shift, resampling-only skip), with optional
  self-attention (qkv channels ordered [head, channel, q|k|v], as the reference reshapes).
  """

  out_channels: int
  up: bool = False
  down: bool = False
  num_heads: int = 0  # 0 = no attention.
  dropout: float = 0.0
  skip_scale: float = 1.0
  eps: float = 1e-5
  resample_filter: tuple[int, ...] = (1, 1)
  resample_proj: bool = False
  adaptive_scale: bool = True
  init: tuple[tuple[str, Any], ...] = ()
  init_zero: tuple[tuple[str, Any], ...] = (('init_weight', 0.0),)
  init_attn: tuple[tuple[str, Any], ...] | None = None
  attention_impl: str = 'auto'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    init, init_zero = dict(self.init), dict(self.init_zero)
    init_attn = init if self.init_attn is None else dict(self.init_attn)
    cin, cout = x.shape[-1], self.out_channels
    norm = lambda name: GroupNorm(eps=self.eps, name=name, **kw)
    resample = dict(up=self.up, down=self.down, resample_filter=self.resample_filter)

    orig = x
    x = Conv2d(cout, 3, name='conv0', **resample, **init, **kw)(nn.silu(norm('norm0')(x)))
    params = Linear(cout * (2 if self.adaptive_scale else 1), name='affine', **init, **kw)(emb)
    params = params[:, None, None, :].astype(x.dtype)
    if self.adaptive_scale:
      scale, shift = jnp.split(params, 2, axis=-1)
      x = nn.silu(shift + norm('norm1')(x) * (scale + 1))
    else:
      x = nn.silu(norm('norm1')(x + params))
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    x = Conv2d(cout, 3, name='conv1', **init_zero, **kw)(x)
    if cout != cin or self.up or self.down:
      kernel = 1 if self.resample_proj or cout != cin else 0
      orig = Conv2d(cout, kernel, name='skip', **resample, **init, **kw)(orig)
    x = (x + orig) * self.skip_scale

    if self.num_heads:
      b, h, w, c = x.shape
      heads = self.num_heads
      qkv = Conv2d(3 * c, 1, name='qkv_conv', **init_attn, **kw)(norm('norm2')(x))
      qkv = qkv.reshape(b, h * w, heads, c // heads, 3).astype(jnp.float32)
      q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]  # [B, HW, heads, C / heads]
      a = layers.attention(q, k, v, jnp.float32, self.attention_impl).astype(x.dtype)
      x = Conv2d(c, 1, name='proj', **init_zero, **kw)(a.reshape(b, h, w, c)) + x
      x = x * self.skip_scale
    return x


def _labels(label: jax.Array | None, batch: int, label_dim: int, dtype: Any) -> jax.Array:
  """One-hot [B, label_dim]: ints with -1 = null give zero rows; a float one-hot as is."""
  if label is None:
    return jnp.zeros((batch, label_dim), dtype)
  label = jnp.asarray(label)
  if label.ndim == 2:
    return label.astype(dtype)
  return jax.nn.one_hot(label, label_dim, dtype=dtype)


def _drop_labels(module: nn.Module, y: jax.Array, rate: float, train: bool) -> jax.Array:
  """The reference's label_dropout (training only): zeroes whole one-hot rows."""
  if not (train and rate):
    return y
  keep = jax.random.uniform(module.make_rng('dropout'), (y.shape[0], 1)) >= rate
  return y * keep.astype(y.dtype)


def _c_noise(noise_level: jax.Array) -> jax.Array:
  """The reference's noise_labels from our noise level (1000 c_noise)."""
  return noise_level.astype(jnp.float32) / parameterization.NOISE_LEVEL_SCALE


def _init(mode: str, weight: float = 1.0, bias: float = 0.0) -> tuple[tuple[str, Any], ...]:
  return (('init_mode', mode), ('init_weight', weight), ('init_bias', bias))


class SongUNet(nn.Module):
  """DDPM++ (positional embedding, standard encoder, [1, 1] filter) and NCSN++ (Fourier
  embedding, residual encoder, [1, 3, 3, 1] filter): EDM's `SongUNet`.
  """

  config: ModelConfig

  def __post_init__(self):
    network_settings(self.config, 'SongUNet')  # fail at create_model, naming the key
    super().__post_init__()

  @nn.compact
  def __call__(self, x, noise_level, label=None, self_cond=None, augment=None, train=False):
    cfg = self.config
    s = network_settings(cfg, 'SongUNet')
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype)
    mc = s['model_channels']
    emb_channels = mc * s['channel_mult_emb']
    noise_channels = mc * s['channel_mult_noise']
    init = _init('xavier_uniform')
    init_zero = _init('xavier_uniform', 1e-5)
    init_attn = _init('xavier_uniform', math.sqrt(0.2))
    filt = s['resample_filter']
    out_channels = cfg.num_channels
    block = lambda cout, name, **extra: UNetBlock(
      cout,
      dropout=s['dropout'],
      skip_scale=math.sqrt(0.5),
      eps=1e-6,
      resample_filter=filt,
      resample_proj=True,
      adaptive_scale=False,
      init=init,
      init_zero=init_zero,
      init_attn=init_attn,
      attention_impl=cfg.attention_impl,
      name=name,
      **extra,
      **kw,
    )
    batch = x.shape[0]

    # Mapping.
    c_noise = _c_noise(noise_level)
    if s['embedding_type'] == 'positional':
      emb = positional_embedding(c_noise, noise_channels, endpoint=True)
    else:
      emb = FourierEmbedding(noise_channels, name='map_noise')(c_noise)
    emb = jnp.concatenate([emb[:, noise_channels // 2 :], emb[:, : noise_channels // 2]], 1)
    if cfg.num_classes:
      y = _drop_labels(
        self, _labels(label, batch, cfg.num_classes, jnp.float32), s['label_dropout'], train
      )
      emb = emb + Linear(noise_channels, name='map_label', **dict(init), **kw)(
        y * math.sqrt(cfg.num_classes)
      )
    if s['augment_dim']:  # no bias: zeros (augment=None) add nothing, as in the reference
      aug = jnp.zeros((batch, s['augment_dim'])) if augment is None else augment
      emb = emb + Linear(noise_channels, use_bias=False, name='map_augment', **dict(init), **kw)(
        aug
      )
    emb = nn.silu(Linear(emb_channels, name='map_layer0', **dict(init), **kw)(emb))
    emb = nn.silu(Linear(emb_channels, name='map_layer1', **dict(init), **kw)(emb))

    # Encoder.
    h = x.astype(cfg.compute_dtype)
    aux = h
    caux = x.shape[-1]
    skips = []
    for level, mult in enumerate(s['channel_mult']):
      res = cfg.image_size >> level
      if level == 0:
        h = Conv2d(mc, 3, name=f'enc_{res}x{res}_conv', **dict(init), **kw)(h)
        skips.append(h)
      else:
        h = block(h.shape[-1], f'enc_{res}x{res}_down', down=True)(h, emb, train)
        skips.append(h)
        if s['encoder_type'] == 'skip':
          aux = Conv2d(
            caux, 0, down=True, resample_filter=filt, name=f'enc_{res}x{res}_aux_down', **kw
          )(aux)
          h = skips[-1] = h + Conv2d(
            h.shape[-1], 1, name=f'enc_{res}x{res}_aux_skip', **dict(init), **kw
          )(aux)
        if s['encoder_type'] == 'residual':
          conv = Conv2d(
            h.shape[-1],
            3,
            down=True,
            resample_filter=filt,
            fused_resample=True,
            name=f'enc_{res}x{res}_aux_residual',
            **dict(init),
            **kw,
          )
          h = skips[-1] = aux = (h + conv(aux)) / np.sqrt(2)
      for idx in range(s['num_blocks']):
        heads = 1 if res in s['attn_resolutions'] else 0
        h = block(mc * mult, f'enc_{res}x{res}_block{idx}', num_heads=heads)(h, emb, train)
        skips.append(h)

    # Decoder.
    aux = None
    levels = len(s['channel_mult'])
    for level, mult in reversed(list(enumerate(s['channel_mult']))):
      res = cfg.image_size >> level
      if level == levels - 1:
        h = block(h.shape[-1], f'dec_{res}x{res}_in0', num_heads=1)(h, emb, train)
        h = block(h.shape[-1], f'dec_{res}x{res}_in1')(h, emb, train)
      else:
        h = block(h.shape[-1], f'dec_{res}x{res}_up', up=True)(h, emb, train)
      for idx in range(s['num_blocks'] + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        heads = 1 if (idx == s['num_blocks'] and res in s['attn_resolutions']) else 0
        h = block(mc * mult, f'dec_{res}x{res}_block{idx}', num_heads=heads)(h, emb, train)
      if s['decoder_type'] == 'skip' or level == 0:
        if s['decoder_type'] == 'skip' and level < levels - 1:
          aux = Conv2d(
            out_channels, 0, up=True, resample_filter=filt, name=f'dec_{res}x{res}_aux_up', **kw
          )(aux)
        tmp = GroupNorm(eps=1e-6, name=f'dec_{res}x{res}_aux_norm', **kw)(h)
        tmp = Conv2d(out_channels, 3, name=f'dec_{res}x{res}_aux_conv', **dict(init_zero), **kw)(
          nn.silu(tmp)
        )
        aux = tmp if aux is None else tmp + aux
    out = aux.astype(jnp.float32)
    return out, out


class DhariwalUNet(nn.Module):
  """ADM (Dhariwal & Nichol 2021) as EDM's `DhariwalUNet`: adaptive scale-shift blocks,
  64 channels per attention head, class embedding added after the noise MLP.
  """

  config: ModelConfig

  def __post_init__(self):
    network_settings(self.config, 'DhariwalUNet')
    super().__post_init__()

  @nn.compact
  def __call__(self, x, noise_level, label=None, self_cond=None, augment=None, train=False):
    cfg = self.config
    s = network_settings(cfg, 'DhariwalUNet')
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype)
    mc = s['model_channels']
    emb_channels = mc * s['channel_mult_emb']
    init = _init('kaiming_uniform', math.sqrt(1 / 3), math.sqrt(1 / 3))
    init_zero = _init('kaiming_uniform', 0.0, 0.0)

    def block(cout, name, attention=False, **extra):
      return UNetBlock(
        cout,
        num_heads=cout // 64 if attention else 0,
        dropout=s['dropout'],
        init=init,
        init_zero=init_zero,
        attention_impl=cfg.attention_impl,
        name=name,
        **extra,
        **kw,
      )

    batch = x.shape[0]
    emb = positional_embedding(_c_noise(noise_level), mc)
    if s['augment_dim']:
      aug = jnp.zeros((batch, s['augment_dim'])) if augment is None else augment
      emb = emb + Linear(mc, use_bias=False, name='map_augment', **dict(init_zero), **kw)(aug)
    emb = nn.silu(Linear(emb_channels, name='map_layer0', **dict(init), **kw)(emb))
    emb = Linear(emb_channels, name='map_layer1', **dict(init), **kw)(emb)
    if cfg.num_classes:
      y = _drop_labels(
        self, _labels(label, batch, cfg.num_classes, jnp.float32), s['label_dropout'], train
      )
      emb = emb + Linear(
        emb_channels,
        use_bias=False,
        init_mode='kaiming_normal',
        init_weight=math.sqrt(cfg.num_classes),
        name='map_label',
        **kw,
      )(y)
    emb = nn.silu(emb)

    h = x.astype(cfg.compute_dtype)
    skips = []
    for level, mult in enumerate(s['channel_mult']):
      res = cfg.image_size >> level
      if level == 0:
        h = Conv2d(mc * mult, 3, name=f'enc_{res}x{res}_conv', **dict(init), **kw)(h)
      else:
        h = block(h.shape[-1], f'enc_{res}x{res}_down', down=True)(h, emb, train)
      skips.append(h)
      for idx in range(s['num_blocks']):
        attn = res in s['attn_resolutions']
        h = block(mc * mult, f'enc_{res}x{res}_block{idx}', attn)(h, emb, train)
        skips.append(h)

    levels = len(s['channel_mult'])
    for level, mult in reversed(list(enumerate(s['channel_mult']))):
      res = cfg.image_size >> level
      if level == levels - 1:
        h = block(h.shape[-1], f'dec_{res}x{res}_in0', True)(h, emb, train)
        h = block(h.shape[-1], f'dec_{res}x{res}_in1')(h, emb, train)
      else:
        h = block(h.shape[-1], f'dec_{res}x{res}_up', up=True)(h, emb, train)
      for idx in range(s['num_blocks'] + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        attn = res in s['attn_resolutions']
        h = block(mc * mult, f'dec_{res}x{res}_block{idx}', attn)(h, emb, train)
    h = nn.silu(GroupNorm(name='out_norm', **kw)(h))
    out = Conv2d(cfg.num_channels, 3, name='out_conv', **dict(init_zero), **kw)(h)
    out = out.astype(jnp.float32)
    return out, out
