"""DDPM's U-Net as diffusers' `UNet2DModel` expresses it (the google/ddpm-* checkpoints).

Settings come from `config.model.network_kwargs` under the names of diffusers'
`config.json` (block_out_channels, down_block_types, layers_per_block, ...); keys it
leaves out take `UNet2DModel`'s defaults. Submodules carry diffusers' names
('down_blocks_0/resnets_1/conv1', 'mid_block/attentions_0/to_q', ...), so a checkpoint maps
tensor by tensor (diffusion_jax/convert/diffusers_unet2d.py).

Source: Ho et al. 2020, appendix B (the network); diffusers 0.42.1
`models/unets/unet_2d.py` (UNet2DModel), `unet_2d_blocks.py` (DownBlock2D, AttnDownBlock2D,
UNetMidBlock2D, UpBlock2D, AttnUpBlock2D), `resnet.py` (ResnetBlock2D), `embeddings.py`
(get_timestep_embedding, TimestepEmbedding), `attention_processor.py` (AttnProcessor2_0).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models import layers
from diffusion_jax.models.config import ModelConfig

DOWN_BLOCKS = ('DownBlock2D', 'AttnDownBlock2D')
UP_BLOCKS = ('UpBlock2D', 'AttnUpBlock2D')
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  'silu': nn.silu,
  'swish': nn.silu,
  'relu': nn.relu,
  'gelu': layers.gelu_exact,  # torch.nn.GELU()
  'mish': lambda x: x * jnp.tanh(nn.softplus(x)),
}
# UNet2DModel.__init__'s defaults (diffusers 0.42.1): what a config.json key left out means.
DEFAULTS: dict[str, Any] = {
  'sample_size': None,
  'in_channels': 3,
  'out_channels': 3,
  'center_input_sample': False,
  'time_embedding_type': 'positional',
  'time_embedding_dim': None,
  'freq_shift': 0,
  'flip_sin_to_cos': True,
  'down_block_types': ('DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'),
  'mid_block_type': 'UNetMidBlock2D',
  'up_block_types': ('AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
  'block_out_channels': (224, 448, 672, 896),
  'layers_per_block': 2,
  'mid_block_scale_factor': 1.0,
  'downsample_padding': 1,
  'downsample_type': 'conv',
  'upsample_type': 'conv',
  'dropout': None,  # None: config.model.dropout (diffusers' default is 0.0).
  'act_fn': 'silu',
  'attention_head_dim': 8,
  'norm_num_groups': 32,
  'attn_norm_num_groups': None,
  'norm_eps': 1e-5,
  'resnet_time_scale_shift': 'default',
  'add_attention': True,
  'class_embed_type': None,
  'num_class_embeds': None,
  'num_train_timesteps': None,
}

# DDPM's variance_scaling(1, 'fan_avg', 'uniform'); the last layer of each branch starts at 0.
_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
_zeros = nn.initializers.zeros


def _bad(key: str, value: Any, fix: str) -> ValueError:
  return ValueError(f'config.model.network_kwargs.{key}={value!r} {fix}')


@dataclasses.dataclass(frozen=True)
class UNet2DSettings:
  """`UNet2DModel` keyword arguments, checked against our network and the data."""

  in_channels: int
  out_channels: int
  center_input_sample: bool
  time_embed_dim: int
  freq_shift: float
  flip_sin_to_cos: bool
  down_block_types: tuple[str, ...]
  up_block_types: tuple[str, ...]
  mid_block: bool
  block_out_channels: tuple[int, ...]
  layers_per_block: int
  mid_block_scale_factor: float
  downsample_padding: int
  dropout: float
  act_fn: str
  attention_head_dim: int | None
  norm_num_groups: int
  attn_norm_num_groups: int | None
  norm_eps: float
  scale_shift: bool
  add_attention: bool

  @classmethod
  def from_config(cls, cfg: ModelConfig) -> UNet2DSettings:
    """Reads `cfg.kwargs` (config.json names); ValueError naming the key on anything else."""
    kwargs = {k: v for k, v in cfg.kwargs.items() if not k.startswith('_')}  # _class_name, ...
    unknown = sorted(set(kwargs) - set(DEFAULTS))
    if unknown:
      raise ValueError(
        f'config.model.network_kwargs has {unknown}, which UNet2DModel does not take; '
        f'valid keys: {sorted(DEFAULTS)}.'
      )
    k = {**DEFAULTS, **kwargs}
    _check_fixed(k)
    size = k['sample_size']
    if size is not None:
      sizes = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
      if sizes != (cfg.image_size, cfg.image_size):
        raise _bad('sample_size', size, f'differs from config.data.image_size={cfg.image_size}.')
    if k['in_channels'] != cfg.num_channels:
      fix = f'differs from config.data.num_channels={cfg.num_channels}.'
      raise _bad('in_channels', k['in_channels'], fix)
    if k['out_channels'] != cfg.out_channels:
      raise _bad(
        'out_channels',
        k['out_channels'],
        f'differs from the prediction channels {cfg.out_channels} (config.data.num_channels, '
        'doubled with config.model.learn_variance).',
      )
    channels = tuple(int(c) for c in k['block_out_channels'])
    down, up = tuple(k['down_block_types']), tuple(k['up_block_types'])
    for key, types, valid in (
      ('down_block_types', down, DOWN_BLOCKS),
      ('up_block_types', up, UP_BLOCKS),
    ):
      if len(types) != len(channels) or any(t not in valid for t in types):
        raise _bad(
          key, types, f'must list one of {valid} per entry of block_out_channels ({len(channels)}).'
        )
    factor = 2 ** (len(channels) - 1)
    if cfg.image_size % factor:
      raise _bad(
        'block_out_channels',
        channels,
        f'halves the image {len(channels) - 1} times; config.data.image_size={cfg.image_size} '
        f'must be divisible by {factor}.',
      )
    groups = k['norm_num_groups']
    if not isinstance(groups, int) or groups < 1 or any(c % groups for c in channels):
      fix = f'must be a positive int dividing every width {channels}.'
      raise _bad('norm_num_groups', groups, fix)
    head = k['attention_head_dim']
    if head is not None and (head < 1 or any(c % head for c in channels)):
      raise _bad('attention_head_dim', head, f'must be None or divide every width {channels}.')
    if k['act_fn'] not in ACTIVATIONS:
      raise _bad('act_fn', k['act_fn'], f'is not supported; use one of {tuple(ACTIVATIONS)}.')
    if k['mid_block_type'] not in ('UNetMidBlock2D', None):
      raise _bad('mid_block_type', k['mid_block_type'], "must be 'UNetMidBlock2D' or None.")
    if k['resnet_time_scale_shift'] not in ('default', 'scale_shift'):
      fix = "must be 'default' or 'scale_shift'."
      raise _bad('resnet_time_scale_shift', k['resnet_time_scale_shift'], fix)
    if int(k['layers_per_block']) < 1:
      raise _bad('layers_per_block', k['layers_per_block'], 'must be >= 1.')
    dropout = cfg.dropout if k['dropout'] is None else float(k['dropout'])
    if not 0.0 <= dropout < 1.0:
      raise _bad('dropout', dropout, 'must lie in [0, 1).')
    return cls(
      in_channels=int(k['in_channels']),
      out_channels=int(k['out_channels']),
      center_input_sample=bool(k['center_input_sample']),
      time_embed_dim=int(k['time_embedding_dim'] or 4 * channels[0]),
      freq_shift=float(k['freq_shift']),
      flip_sin_to_cos=bool(k['flip_sin_to_cos']),
      down_block_types=down,
      up_block_types=up,
      mid_block=k['mid_block_type'] is not None,
      block_out_channels=channels,
      layers_per_block=int(k['layers_per_block']),
      mid_block_scale_factor=float(k['mid_block_scale_factor']),
      downsample_padding=int(k['downsample_padding']),
      dropout=dropout,
      act_fn=k['act_fn'],
      attention_head_dim=None if head is None else int(head),
      norm_num_groups=groups,
      attn_norm_num_groups=k['attn_norm_num_groups'],
      norm_eps=float(k['norm_eps']),
      scale_shift=k['resnet_time_scale_shift'] == 'scale_shift',
      add_attention=bool(k['add_attention']),
    )


def _check_fixed(k: dict[str, Any]) -> None:
  """Rejects the UNet2DModel options this port does not implement (google/ddpm-* use none)."""
  fixed = {
    'time_embedding_type': 'positional',
    'downsample_type': 'conv',
    'upsample_type': 'conv',
    'class_embed_type': None,
    'num_class_embeds': None,
  }
  for key, value in fixed.items():
    if k[key] != value:
      raise _bad(key, k[key], f'is not supported by config.model.name=ddpm_unet; use {value!r}.')


def _check_model_config(cfg: ModelConfig) -> None:
  """The generic model settings UNet2DModel has no input for."""
  if cfg.num_classes:
    raise ValueError(
      'config.model.name=ddpm_unet is unconditional (UNet2DModel without a class embedding); '
      'set config.model.class_conditional=False.'
    )
  if cfg.self_cond:
    raise ValueError('config.model.self_cond is not supported by ddpm_unet; set it to False.')
  if cfg.augment_dim:
    raise ValueError('config.model.augment_dim is not supported by ddpm_unet; set it to 0.')


def timestep_embedding(
  t: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0
) -> jax.Array:
  """[B] timesteps -> [B, dim]: sin / cos of t * max_period^(-i / (dim/2 - freq_shift)).

  Source: diffusers `get_timestep_embedding` (DDPM's embedding at freq_shift=1, no flip).
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class _Layers:
  """Conv / Dense / GroupNorm factories with the run's dtypes."""

  def __init__(self, cfg: ModelConfig, s: UNet2DSettings):
    self.kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype)
    self.eps = s.norm_eps

  def conv(self, ch: int, name: str, size: int = 3, stride: int = 1, padding: Any = 1, init=_init):
    pad = ((padding, padding), (padding, padding)) if isinstance(padding, int) else padding
    return nn.Conv(ch, (size, size), (stride, stride), pad, kernel_init=init, name=name, **self.kw)

  def dense(self, features: int, name: str, init=_init) -> nn.Dense:
    return nn.Dense(features, kernel_init=init, name=name, **self.kw)

  def norm(self, groups: int, name: str) -> nn.GroupNorm:
    # Two-pass variance, as torch's GroupNorm (E[x^2] - E[x]^2 loses float32 digits).
    return nn.GroupNorm(groups, epsilon=self.eps, use_fast_variance=False, name=name, **self.kw)


class ResnetBlock2D(nn.Module):
  """norm1-act-conv1 (+ time projection) norm2-act-dropout-conv2, skip, / output scale.

  'default': the projected embedding is added before norm2; 'scale_shift': norm2's output
  is multiplied by (1 + scale) and shifted.
  """

  out_channels: int
  config: ModelConfig
  settings: UNet2DSettings
  deterministic: bool
  output_scale_factor: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    s = self.settings
    lay, act = _Layers(self.config, s), ACTIVATIONS[s.act_fn]
    ch = self.out_channels
    h = lay.conv(ch, 'conv1')(act(lay.norm(s.norm_num_groups, 'norm1')(x)))
    e = lay.dense(ch * (2 if s.scale_shift else 1), 'time_emb_proj')(act(temb))[:, None, None]
    if s.scale_shift:
      scale, shift = jnp.split(e, 2, axis=-1)
      h = lay.norm(s.norm_num_groups, 'norm2')(h) * (1 + scale) + shift
    else:
      h = lay.norm(s.norm_num_groups, 'norm2')(h + e)
    h = nn.Dropout(s.dropout)(act(h), deterministic=self.deterministic)
    h = lay.conv(ch, 'conv2', init=_zeros)(h)
    if x.shape[-1] != ch:
      x = lay.conv(ch, 'conv_shortcut', size=1, padding=0)(x)
    return (x + h) / self.output_scale_factor


class AttentionBlock(nn.Module):
  """GroupNorm, multi-head self-attention over H*W, output projection, residual, / rescale.

  Source: diffusers `Attention(_from_deprecated_attn_block=True)` run by AttnProcessor2_0.
  """

  heads: int
  groups: int | None
  config: ModelConfig
  settings: UNet2DSettings
  rescale_output_factor: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    lay = _Layers(self.config, self.settings)
    b, hh, ww, c = x.shape
    h = x if self.groups is None else lay.norm(self.groups, 'group_norm')(x)
    h = h.reshape(b, hh * ww, c)
    split = lambda y: y.reshape(b, hh * ww, self.heads, c // self.heads)
    q, k, v = (split(lay.dense(c, name)(h)) for name in ('to_q', 'to_k', 'to_v'))
    out = layers.attention(q, k, v, h.dtype, self.config.attention_impl).reshape(b, hh * ww, c)
    out = lay.dense(c, 'to_out_0', init=_zeros)(out).reshape(b, hh, ww, c)
    return (out + x) / self.rescale_output_factor


class TimestepEmbedding(nn.Module):
  """linear_1 - SiLU - linear_2 on the sinusoidal embedding (diffusers' TimestepEmbedding)."""

  features: int
  config: ModelConfig
  settings: UNet2DSettings

  @nn.compact
  def __call__(self, emb: jax.Array) -> jax.Array:
    lay = _Layers(self.config, self.settings)
    return lay.dense(self.features, 'linear_2')(nn.silu(lay.dense(self.features, 'linear_1')(emb)))


def _attention(ch: int, name: str, groups: int | None, cfg, s, scale: float = 1.0):
  heads = ch // (s.attention_head_dim or ch)  # None: one head over all channels.
  return AttentionBlock(heads, groups, cfg, s, scale, name=name)


def _resnet(ch: int, name: str, cfg: ModelConfig, s: UNet2DSettings, train: bool, scale=1.0):
  block_cls = nn.remat(ResnetBlock2D) if cfg.remat else ResnetBlock2D
  return block_cls(ch, cfg, s, not train, scale, name=name)


class _Conv(nn.Module):
  """A module holding one conv named 'conv' (diffusers' Downsample2D / Upsample2D)."""

  features: int
  stride: int
  padding: Any
  config: ModelConfig
  settings: UNet2DSettings

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    lay = _Layers(self.config, self.settings)
    return lay.conv(self.features, 'conv', stride=self.stride, padding=self.padding)(x)


class DownBlock(nn.Module):
  """DownBlock2D / AttnDownBlock2D: resnets (each + attention), then a stride-2 conv."""

  kind: str
  out_channels: int
  add_downsample: bool
  config: ModelConfig
  settings: UNet2DSettings

  @nn.compact
  def __call__(self, h: jax.Array, temb: jax.Array, train: bool) -> tuple[jax.Array, list]:
    cfg, s, ch = self.config, self.settings, self.out_channels
    states = []
    for j in range(s.layers_per_block):
      h = _resnet(ch, f'resnets_{j}', cfg, s, train)(h, temb)
      if self.kind == 'AttnDownBlock2D':
        h = _attention(ch, f'attentions_{j}', s.norm_num_groups, cfg, s)(h)
      states.append(h)
    if self.add_downsample:
      p = s.downsample_padding
      pad = ((0, 1), (0, 1)) if p == 0 else p  # padding 0: diffusers pads right/bottom by 1.
      h = _Conv(ch, 2, pad, cfg, s, name='downsamplers_0')(h)
      states.append(h)
    return h, states


class MidBlock(nn.Module):
  """UNetMidBlock2D: resnet, attention (optional), resnet, all / mid_block_scale_factor."""

  config: ModelConfig
  settings: UNet2DSettings

  @nn.compact
  def __call__(self, h: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
    cfg, s = self.config, self.settings
    ch, scale = h.shape[-1], s.mid_block_scale_factor
    groups = s.attn_norm_num_groups
    if groups is None and not s.scale_shift:  # diffusers: no attention norm with scale_shift
      groups = s.norm_num_groups
    h = _resnet(ch, 'resnets_0', cfg, s, train, scale)(h, temb)
    if s.add_attention:
      h = _attention(ch, 'attentions_0', groups, cfg, s, scale)(h)
    return _resnet(ch, 'resnets_1', cfg, s, train, scale)(h, temb)


class UpBlock(nn.Module):
  """UpBlock2D / AttnUpBlock2D: resnets on [h, skip] (each + attention), then 2x up + conv."""

  kind: str
  out_channels: int
  add_upsample: bool
  config: ModelConfig
  settings: UNet2DSettings

  @nn.compact
  def __call__(self, h: jax.Array, skips: list, temb: jax.Array, train: bool) -> jax.Array:
    cfg, s, ch = self.config, self.settings, self.out_channels
    for j in range(s.layers_per_block + 1):
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = _resnet(ch, f'resnets_{j}', cfg, s, train)(h, temb)
      if self.kind == 'AttnUpBlock2D':
        h = _attention(ch, f'attentions_{j}', s.norm_num_groups, cfg, s)(h)
    if self.add_upsample:
      h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest, x2
      h = _Conv(ch, 1, 1, cfg, s, name='upsamplers_0')(h)
    return h


class DDPMUNet(nn.Module):
  """diffusers' UNet2DModel. Returns `(prediction, prediction)`: `.sample`, NHWC.

  `noise_level` [B] is the timestep diffusers feeds (the discrete objective's index);
  `label`, `self_cond` and `augment` are ignored (the network is unconditional).
  """

  config: ModelConfig

  def __post_init__(self) -> None:
    _check_model_config(self.config)  # bad settings fail when the model is created
    UNet2DSettings.from_config(self.config)
    super().__post_init__()

  @nn.compact
  def __call__(
    self,
    x: jax.Array,  # [B, H, W, C]
    noise_level: jax.Array,  # [B]
    label: jax.Array | None = None,
    self_cond: jax.Array | None = None,
    augment: jax.Array | None = None,
    train: bool = False,
  ) -> tuple[jax.Array, jax.Array]:
    del label, self_cond, augment
    cfg = self.config
    s = UNet2DSettings.from_config(cfg)
    lay, act = _Layers(cfg, s), ACTIVATIONS[s.act_fn]
    channels, last = s.block_out_channels, len(s.block_out_channels) - 1

    h = x.astype(cfg.compute_dtype)
    if s.center_input_sample:
      h = 2 * h - 1.0
    emb = timestep_embedding(noise_level, channels[0], s.flip_sin_to_cos, s.freq_shift)
    temb = TimestepEmbedding(s.time_embed_dim, cfg, s, name='time_embedding')(emb.astype(h.dtype))

    h = lay.conv(channels[0], 'conv_in')(h)
    skips = [h]
    for i, (kind, ch) in enumerate(zip(s.down_block_types, channels)):
      h, states = DownBlock(kind, ch, i != last, cfg, s, name=f'down_blocks_{i}')(h, temb, train)
      skips += states
    if s.mid_block:
      h = MidBlock(cfg, s, name='mid_block')(h, temb, train)
    for i, kind in enumerate(s.up_block_types):
      block = UpBlock(kind, channels[last - i], i != last, cfg, s, name=f'up_blocks_{i}')
      h = block(h, skips, temb, train)

    h = act(lay.norm(s.norm_num_groups, 'conv_norm_out')(h))
    out = lay.conv(s.out_channels, 'conv_out', init=_zeros)(h).astype(jnp.float32)
    return out, out
