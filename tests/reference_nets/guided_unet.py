"""guided-diffusion's `UNetModel` in PyTorch, transcribed for the converter parity tests.

Source: openai/guided-diffusion (MIT), guided_diffusion/unet.py, nn.py and
script_util.create_model, reduced to what the 2-D diffusion U-Net uses (no fp16, no
gradient checkpointing, no classifier / super-resolution models). Module and attribute
names are the reference's, so `state_dict()` has the reference's tensor names; the
tests check names, shapes and the parameter count against the reference code itself.
improved-diffusion's UNetModel is this module with legacy attention and no resampling
blocks; its 32x32 channel multipliers are added to `create_model`'s table.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
  """GroupNorm computed in float32 (nn.py)."""

  def forward(self, x):
    return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
  return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
  for p in module.parameters():
    p.detach().zero_()
  return module


def timestep_embedding(timesteps, dim, max_period=10000):
  """[cos, sin] of t * max_period^(-k / half) (nn.py)."""
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
  args = timesteps[:, None].float() * freqs[None]
  emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
  if dim % 2:
    emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
  return emb


class TimestepBlock(nn.Module):
  """A module whose forward takes the timestep embedding as a second argument."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
  def forward(self, x, emb):
    for layer in self:
      x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
    return x


class Upsample(nn.Module):
  def __init__(self, channels, use_conv, out_channels=None):
    super().__init__()
    self.channels, self.use_conv = channels, use_conv
    if use_conv:
      self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

  def forward(self, x):
    x = F.interpolate(x, scale_factor=2, mode='nearest')
    return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
  def __init__(self, channels, use_conv, out_channels=None):
    super().__init__()
    if use_conv:
      self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
    else:
      self.op = nn.AvgPool2d(kernel_size=2, stride=2)

  def forward(self, x):
    return self.op(x)


class ResBlock(TimestepBlock):
  def __init__(
    self,
    channels,
    emb_channels,
    dropout,
    out_channels=None,
    use_scale_shift_norm=False,
    up=False,
    down=False,
  ):
    super().__init__()
    self.out_channels = out_channels or channels
    self.use_scale_shift_norm = use_scale_shift_norm
    self.in_layers = nn.Sequential(
      normalization(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1)
    )
    self.updown = up or down
    if up:
      self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
    elif down:
      self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
    else:
      self.h_upd = self.x_upd = nn.Identity()
    self.emb_layers = nn.Sequential(
      nn.SiLU(),
      nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels),
    )
    self.out_layers = nn.Sequential(
      normalization(self.out_channels),
      nn.SiLU(),
      nn.Dropout(p=dropout),
      zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
    )
    if self.out_channels == channels:
      self.skip_connection = nn.Identity()
    else:
      self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

  def forward(self, x, emb):
    if self.updown:
      h = self.in_layers[:-1](x)
      h, x = self.h_upd(h), self.x_upd(x)
      h = self.in_layers[-1](h)
    else:
      h = self.in_layers(x)
    emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
    if self.use_scale_shift_norm:
      scale, shift = torch.chunk(emb_out, 2, dim=1)
      h = self.out_layers[0](h) * (1 + scale) + shift
      h = self.out_layers[1:](h)
    else:
      h = self.out_layers(h + emb_out)
    return self.skip_connection(x) + h


class QKVAttentionLegacy(nn.Module):
  """Heads split before q / k / v: channels (head, qkv, ch)."""

  def __init__(self, n_heads):
    super().__init__()
    self.n_heads = n_heads

  def forward(self, qkv):
    bs, width, length = qkv.shape
    ch = width // (3 * self.n_heads)
    q, k, v = qkv.reshape(bs * self.n_heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum('bct,bcs->bts', q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum('bts,bcs->bct', weight, v).reshape(bs, -1, length)


class QKVAttention(nn.Module):
  """q / k / v split before heads: channels (qkv, head, ch)."""

  def __init__(self, n_heads):
    super().__init__()
    self.n_heads = n_heads

  def forward(self, qkv):
    bs, width, length = qkv.shape
    ch = width // (3 * self.n_heads)
    q, k, v = qkv.chunk(3, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum(
      'bct,bcs->bts',
      (q * scale).view(bs * self.n_heads, ch, length),
      (k * scale).view(bs * self.n_heads, ch, length),
    )
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    a = torch.einsum('bts,bcs->bct', weight, v.reshape(bs * self.n_heads, ch, length))
    return a.reshape(bs, -1, length)


class AttentionBlock(nn.Module):
  def __init__(self, channels, num_heads=1, num_head_channels=-1, use_new_attention_order=False):
    super().__init__()
    self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
    self.norm = normalization(channels)
    self.qkv = nn.Conv1d(channels, channels * 3, 1)
    attention = QKVAttention if use_new_attention_order else QKVAttentionLegacy
    self.attention = attention(self.num_heads)
    self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

  def forward(self, x):
    b, c, *spatial = x.shape
    x = x.reshape(b, c, -1)
    h = self.proj_out(self.attention(self.qkv(self.norm(x))))
    return (x + h).reshape(b, c, *spatial)


class UNetModel(nn.Module):
  def __init__(
    self,
    image_size,
    in_channels,
    model_channels,
    out_channels,
    num_res_blocks,
    attention_resolutions,
    dropout=0,
    channel_mult=(1, 2, 4, 8),
    conv_resample=True,
    num_classes=None,
    num_heads=1,
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_scale_shift_norm=False,
    resblock_updown=False,
    use_new_attention_order=False,
  ):
    super().__init__()
    if num_heads_upsample == -1:
      num_heads_upsample = num_heads
    self.model_channels, self.num_classes = model_channels, num_classes
    emb_dim = model_channels * 4
    self.time_embed = nn.Sequential(
      nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
    )
    if num_classes is not None:
      self.label_emb = nn.Embedding(num_classes, emb_dim)

    def res(ch, out, **kw):
      return ResBlock(ch, emb_dim, dropout, out, use_scale_shift_norm=use_scale_shift_norm, **kw)

    def attn(ch, heads):
      return AttentionBlock(ch, heads, num_head_channels, use_new_attention_order)

    ch = input_ch = int(channel_mult[0] * model_channels)
    self.input_blocks = nn.ModuleList(
      [TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))]
    )
    chans, ds = [ch], 1
    for level, mult in enumerate(channel_mult):
      for _ in range(num_res_blocks):
        layers = [res(ch, int(mult * model_channels))]
        ch = int(mult * model_channels)
        if ds in attention_resolutions:
          layers.append(attn(ch, num_heads))
        self.input_blocks.append(TimestepEmbedSequential(*layers))
        chans.append(ch)
      if level != len(channel_mult) - 1:
        down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
        self.input_blocks.append(TimestepEmbedSequential(down))
        chans.append(ch)
        ds *= 2
    self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))
    self.output_blocks = nn.ModuleList([])
    for level, mult in list(enumerate(channel_mult))[::-1]:
      for i in range(num_res_blocks + 1):
        layers = [res(ch + chans.pop(), int(model_channels * mult))]
        ch = int(model_channels * mult)
        if ds in attention_resolutions:
          layers.append(attn(ch, num_heads_upsample))
        if level and i == num_res_blocks:
          up = res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, ch)
          layers.append(up)
          ds //= 2
        self.output_blocks.append(TimestepEmbedSequential(*layers))
    self.out = nn.Sequential(
      normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1))
    )

  def forward(self, x, timesteps, y=None):
    assert (y is not None) == (self.num_classes is not None)
    emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
    if self.num_classes is not None:
      emb = emb + self.label_emb(y)
    hs, h = [], x
    for module in self.input_blocks:
      h = module(h, emb)
      hs.append(h)
    h = self.middle_block(h, emb)
    for module in self.output_blocks:
      h = module(torch.cat([h, hs.pop()], dim=1), emb)
    return self.out(h)


CHANNEL_MULT = {
  512: (0.5, 1, 1, 2, 2, 4, 4),
  256: (1, 1, 2, 2, 4, 4),
  128: (1, 1, 2, 3, 4),
  64: (1, 2, 3, 4),
  32: (1, 2, 2, 2),  # improved-diffusion's create_model (guided-diffusion has none).
}


def create_model(
  image_size,
  num_channels,
  num_res_blocks,
  channel_mult='',
  learn_sigma=False,
  class_cond=False,
  attention_resolutions='16',
  num_heads=1,
  num_head_channels=-1,
  num_heads_upsample=-1,
  use_scale_shift_norm=False,
  dropout=0,
  resblock_updown=False,
  use_new_attention_order=False,
  num_classes=1000,
):
  """script_util.create_model (num_classes: the reference's NUM_CLASSES = 1000)."""
  if channel_mult == '':
    channel_mult = CHANNEL_MULT[image_size]
  elif isinstance(channel_mult, str):
    channel_mult = tuple(int(m) for m in channel_mult.split(','))
  attention_ds = tuple(image_size // int(r) for r in str(attention_resolutions).split(','))
  return UNetModel(
    image_size=image_size,
    in_channels=3,
    model_channels=num_channels,
    out_channels=6 if learn_sigma else 3,
    num_res_blocks=num_res_blocks,
    attention_resolutions=attention_ds,
    dropout=dropout,
    channel_mult=channel_mult,
    num_classes=num_classes if class_cond else None,
    num_heads=num_heads,
    num_head_channels=num_head_channels,
    num_heads_upsample=num_heads_upsample,
    use_scale_shift_norm=use_scale_shift_norm,
    resblock_updown=resblock_updown,
    use_new_attention_order=use_new_attention_order,
  )
