"""DDPM / ADM-style U-Net for the CIFAR-scale papers (DDPM, iDDPM, NCSNv2, EDM).

Source: Ho et al. 2020, appendix B (the PixelCNN++-like U-Net: residual blocks with
GroupNorm, timestep embedding added in every block, self-attention at 16x16);
Nichol & Dhariwal 2021 (scale-shift norm, learned-variance output); Karras et al. 2022,
appendix F.2 (DDPM++: residual up/down sampling, sqrt(1/2) skip scaling, augmentation
conditioning). One configurable network covers the four families.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models import layers
from diffusion_jax.models.config import ModelConfig, group_norm_groups

_zeros = nn.initializers.zeros
# DDPM's variance_scaling(1, 'fan_avg', 'uniform') for every conv and dense layer.
_default_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')


def _group_norm(name: str, channels: int, dtype: jnp.dtype, param_dtype: jnp.dtype) -> nn.GroupNorm:
  return nn.GroupNorm(
    num_groups=group_norm_groups(channels),
    epsilon=1e-6,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
  )


def _resample(x: jax.Array, mode: str | None) -> jax.Array:
  """2x nearest-neighbour upsampling ('up') or 2x2 average pooling ('down')."""
  if mode == 'up':
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, 2 * h, 2 * w, c), 'nearest')
  if mode == 'down':
    return nn.avg_pool(x, (2, 2), strides=(2, 2))
  return x


class ResBlock(nn.Module):
  """GroupNorm-SiLU-Conv residual block conditioned on the embedding.

  With `scale_shift_norm` the embedding gives (scale, shift) applied after the second
  norm (iDDPM/ADM); otherwise it is added after the first conv (DDPM).
  """

  out_channels: int
  config: ModelConfig
  deterministic: bool
  resample: str | None = None  # None | 'up' | 'down' (EDM/ADM residual resampling).

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype)
    conv = lambda ch, name, size=3, init=_default_init: nn.Conv(
      ch, (size, size), kernel_init=init, name=name, **kw
    )
    h = nn.silu(_group_norm('norm1', x.shape[-1], **kw)(x))
    h, x = _resample(h, self.resample), _resample(x, self.resample)
    h = conv(self.out_channels, 'conv1')(h)
    e = nn.Dense(
      self.out_channels * (2 if cfg.scale_shift_norm else 1),
      kernel_init=_default_init,
      name='emb_proj',
      **kw,
    )(nn.silu(emb))[:, None, None, :]
    if cfg.scale_shift_norm:
      scale, shift = jnp.split(e, 2, axis=-1)
      h = _group_norm('norm2', self.out_channels, **kw)(h) * (1 + scale) + shift
    else:
      h = _group_norm('norm2', self.out_channels, **kw)(h + e)
    h = nn.Dropout(cfg.dropout)(nn.silu(h), deterministic=self.deterministic)
    h = conv(self.out_channels, 'conv2', init=_zeros)(h)
    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 'skip', size=1)(x)
    return (x + h) * cfg.skip_scale


class AttnBlock(nn.Module):
  """GroupNorm + multi-head self-attention over the H*W positions, zero-initialised output."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype)
    b, hh, ww, c = x.shape
    h = _group_norm('norm', c, **kw)(x).reshape(b, hh * ww, c)
    h = layers.SelfAttention(
      cfg.num_heads,
      cfg.attention_impl,
      kernel_init=_default_init,
      out_init=_zeros,
      name='attn',
      **kw,
    )(h)
    return (x + h.reshape(b, hh, ww, c)) * cfg.skip_scale


class UNet(nn.Module):
  """The U-Net denoiser. Returns `(prediction, prediction)`: the carry is the output.

  With `config.self_cond` the previous prediction is concatenated to the input
  (zeros when absent); without it `self_cond` is ignored.
  """

  config: ModelConfig

  @nn.compact
  def __call__(
    self,
    x: jax.Array,  # [B, H, W, C]
    noise_level: jax.Array,  # [B]
    label: jax.Array | None = None,  # [B] int, -1 = null
    self_cond: jax.Array | None = None,  # [B, H, W, C_out]
    augment: jax.Array | None = None,  # [B, A]
    train: bool = False,
  ) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    dtype = cfg.compute_dtype
    kw = dict(dtype=dtype, param_dtype=cfg.parameter_dtype)
    batch = x.shape[0]
    ch = cfg.base_channels
    emb_dim = 4 * ch
    dense = lambda features, name, use_bias=True: nn.Dense(
      features, use_bias=use_bias, kernel_init=_default_init, name=name, **kw
    )

    emb = layers.sinusoidal_embedding(noise_level, ch)
    emb = dense(emb_dim, 'time_fc2')(nn.silu(dense(emb_dim, 'time_fc1')(emb)))
    if cfg.num_classes:
      lab = -jnp.ones((batch,), jnp.int32) if label is None else label
      one_hot = jax.nn.one_hot(lab, cfg.num_classes, dtype=dtype)  # -1 -> zeros (null label)
      emb = emb + dense(emb_dim, 'class_proj', use_bias=False)(one_hot)
    if cfg.augment_dim:
      aug = jnp.zeros((batch, cfg.augment_dim), dtype) if augment is None else augment
      emb = emb + dense(emb_dim, 'augment_proj', use_bias=False)(aug.astype(dtype))

    h = x.astype(dtype)
    if cfg.self_cond:
      prev = jnp.zeros(x.shape[:-1] + (cfg.out_channels,)) if self_cond is None else self_cond
      h = jnp.concatenate([h, jax.lax.stop_gradient(prev).astype(dtype)], axis=-1)

    block_cls = nn.remat(ResBlock) if cfg.remat else ResBlock
    block = lambda out, name, resample=None: block_cls(
      out, cfg, deterministic=not train, resample=resample, name=name
    )
    h = nn.Conv(ch, (3, 3), kernel_init=_default_init, name='conv_in', **kw)(h)
    skips = [h]
    res = cfg.image_size
    levels = len(cfg.channel_mults)
    for level, mult in enumerate(cfg.channel_mults):
      for i in range(cfg.num_res_blocks):
        h = block(ch * mult, f'down_{level}_{i}')(h, emb)
        if res in cfg.attention_resolutions:
          h = AttnBlock(cfg, name=f'down_{level}_{i}_attn')(h)
        skips.append(h)
      if level != levels - 1:
        if cfg.resblock_updown:
          h = block(h.shape[-1], f'down_{level}_resample', 'down')(h, emb)
        else:
          h = nn.Conv(
            h.shape[-1],
            (3, 3),
            strides=(2, 2),
            kernel_init=_default_init,
            name=f'down_{level}_resample',
            **kw,
          )(h)
        skips.append(h)
        res //= 2

    h = block(h.shape[-1], 'mid_0')(h, emb)
    h = AttnBlock(cfg, name='mid_attn')(h)
    h = block(h.shape[-1], 'mid_1')(h, emb)

    for level in reversed(range(levels)):
      mult = cfg.channel_mults[level]
      for i in range(cfg.num_res_blocks + 1):
        h = block(ch * mult, f'up_{level}_{i}')(jnp.concatenate([h, skips.pop()], axis=-1), emb)
        if res in cfg.attention_resolutions:
          h = AttnBlock(cfg, name=f'up_{level}_{i}_attn')(h)
      if level != 0:
        if cfg.resblock_updown:
          h = block(h.shape[-1], f'up_{level}_resample', 'up')(h, emb)
        else:
          h = _resample(h, 'up')
          h = nn.Conv(
            h.shape[-1], (3, 3), kernel_init=_default_init, name=f'up_{level}_resample', **kw
          )(h)
        res *= 2

    h = nn.silu(_group_norm('norm_out', h.shape[-1], **kw)(h))
    out = nn.Conv(cfg.out_channels, (3, 3), kernel_init=_zeros, name='conv_out', **kw)(h)
    out = out.astype(jnp.float32)
    return out, out
