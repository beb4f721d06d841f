"""EDM's networks in PyTorch, transcribed for the converter parity tests.

Source: NVlabs/edm (CC BY-NC-SA 4.0), training/networks.py: Linear, Conv2d (with fused
resampling), GroupNorm, UNetBlock, PositionalEmbedding, FourierEmbedding, SongUNet,
DhariwalUNet, VPPrecond, VEPrecond, EDMPrecond. Left out: the persistence decorator
(see `pickle_like_edm`), fp16, the custom attention backward, iDDPMPrecond. Module and
attribute names and the order of submodule creation are the reference's, so
`state_dict()` has its tensor names in its order; the tests check names, shapes and the
parameter counts against the reference code when its repository is importable.
"""

from __future__ import annotations

import inspect
import io
import pickle
import sys
import types

import numpy as np
import torch
from torch.nn.functional import silu


def weight_init(shape, mode, fan_in, fan_out):
  if mode == 'xavier_uniform':
    return np.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
  if mode == 'xavier_normal':
    return np.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
  if mode == 'kaiming_uniform':
    return np.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
  if mode == 'kaiming_normal':
    return np.sqrt(1 / fan_in) * torch.randn(*shape)
  raise ValueError(f'Invalid init mode "{mode}"')


class Linear(torch.nn.Module):
  def __init__(
    self,
    in_features,
    out_features,
    bias=True,
    init_mode='kaiming_normal',
    init_weight=1,
    init_bias=0,
  ):
    super().__init__()
    self.in_features, self.out_features = in_features, out_features
    kw = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
    self.weight = torch.nn.Parameter(weight_init([out_features, in_features], **kw) * init_weight)
    self.bias = torch.nn.Parameter(weight_init([out_features], **kw) * init_bias) if bias else None

  def forward(self, x):
    x = x @ self.weight.to(x.dtype).t()
    if self.bias is not None:
      x = x.add_(self.bias.to(x.dtype))
    return x


class Conv2d(torch.nn.Module):
  def __init__(
    self,
    in_channels,
    out_channels,
    kernel,
    bias=True,
    up=False,
    down=False,
    resample_filter=(1, 1),
    fused_resample=False,
    init_mode='kaiming_normal',
    init_weight=1,
    init_bias=0,
  ):
    assert not (up and down)
    super().__init__()
    self.in_channels, self.out_channels = in_channels, out_channels
    self.up, self.down, self.fused_resample = up, down, fused_resample
    kw = dict(
      mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel
    )
    self.weight = (
      torch.nn.Parameter(
        weight_init([out_channels, in_channels, kernel, kernel], **kw) * init_weight
      )
      if kernel
      else None
    )
    self.bias = (
      torch.nn.Parameter(weight_init([out_channels], **kw) * init_bias) if kernel and bias else None
    )
    f = torch.as_tensor(list(resample_filter), dtype=torch.float32)
    f = f.ger(f).unsqueeze(0).unsqueeze(1) / f.sum().square()
    self.register_buffer('resample_filter', f if up or down else None)

  def forward(self, x):
    F = torch.nn.functional
    w = self.weight.to(x.dtype) if self.weight is not None else None
    b = self.bias.to(x.dtype) if self.bias is not None else None
    f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
    w_pad = w.shape[-1] // 2 if w is not None else 0
    f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
    if self.fused_resample and self.up and w is not None:
      x = F.conv_transpose2d(
        x,
        f.mul(4).tile([self.in_channels, 1, 1, 1]),
        groups=self.in_channels,
        stride=2,
        padding=max(f_pad - w_pad, 0),
      )
      x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
    elif self.fused_resample and self.down and w is not None:
      x = F.conv2d(x, w, padding=w_pad + f_pad)
      x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
    else:
      if self.up:
        x = F.conv_transpose2d(
          x,
          f.mul(4).tile([self.in_channels, 1, 1, 1]),
          groups=self.in_channels,
          stride=2,
          padding=f_pad,
        )
      if self.down:
        x = F.conv2d(
          x, f.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=f_pad
        )
      if w is not None:
        x = F.conv2d(x, w, padding=w_pad)
    if b is not None:
      x = x.add_(b.reshape(1, -1, 1, 1))
    return x


class GroupNorm(torch.nn.Module):
  def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
    super().__init__()
    self.num_groups = min(num_groups, num_channels // min_channels_per_group)
    self.eps = eps
    self.weight = torch.nn.Parameter(torch.ones(num_channels))
    self.bias = torch.nn.Parameter(torch.zeros(num_channels))

  def forward(self, x):
    return torch.nn.functional.group_norm(
      x,
      num_groups=self.num_groups,
      weight=self.weight.to(x.dtype),
      bias=self.bias.to(x.dtype),
      eps=self.eps,
    )


def attention_weights(q, k):
  """softmax_k(q . k / sqrt(C)) in float32 (the reference's AttentionOp.forward)."""
  w = torch.einsum('ncq,nck->nqk', q.to(torch.float32), (k / np.sqrt(k.shape[1])).to(torch.float32))
  return w.softmax(dim=2).to(q.dtype)


class UNetBlock(torch.nn.Module):
  def __init__(
    self,
    in_channels,
    out_channels,
    emb_channels,
    up=False,
    down=False,
    attention=False,
    num_heads=None,
    channels_per_head=64,
    dropout=0,
    skip_scale=1,
    eps=1e-5,
    resample_filter=(1, 1),
    resample_proj=False,
    adaptive_scale=True,
    init=dict(),  # noqa: B006 (the reference signature; never mutated)
    init_zero=dict(init_weight=0),  # noqa: B006
    init_attn=None,
  ):
    super().__init__()
    self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
    self.num_heads = (
      0
      if not attention
      else num_heads
      if num_heads is not None
      else out_channels // channels_per_head
    )
    self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
    self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
    self.conv0 = Conv2d(
      in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter, **init
    )
    self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
    self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
    self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
    self.skip = None
    if out_channels != in_channels or up or down:
      kernel = 1 if resample_proj or out_channels != in_channels else 0
      self.skip = Conv2d(
        in_channels,
        out_channels,
        kernel=kernel,
        up=up,
        down=down,
        resample_filter=resample_filter,
        **init,
      )
    if self.num_heads:
      self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
      self.qkv = Conv2d(
        out_channels, out_channels * 3, kernel=1, **(init_attn if init_attn is not None else init)
      )
      self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

  def forward(self, x, emb):
    orig = x
    x = self.conv0(silu(self.norm0(x)))
    params = self.affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype)
    if self.adaptive_scale:
      scale, shift = params.chunk(chunks=2, dim=1)
      x = silu(torch.addcmul(shift, self.norm1(x), scale + 1))
    else:
      x = silu(self.norm1(x.add_(params)))
    x = self.conv1(torch.nn.functional.dropout(x, p=self.dropout, training=self.training))
    x = x.add_(self.skip(orig) if self.skip is not None else orig)
    x = x * self.skip_scale
    if self.num_heads:
      q, k, v = (
        self.qkv(self.norm2(x))
        .reshape(x.shape[0] * self.num_heads, x.shape[1] // self.num_heads, 3, -1)
        .unbind(2)
      )
      w = attention_weights(q, k)
      a = torch.einsum('nqk,nck->ncq', w, v)
      x = self.proj(a.reshape(*x.shape)).add_(x)
      x = x * self.skip_scale
    return x


class PositionalEmbedding(torch.nn.Module):
  def __init__(self, num_channels, max_positions=10000, endpoint=False):
    super().__init__()
    self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

  def forward(self, x):
    freqs = torch.arange(start=0, end=self.num_channels // 2, dtype=torch.float32, device=x.device)
    freqs = freqs / (self.num_channels // 2 - (1 if self.endpoint else 0))
    freqs = (1 / self.max_positions) ** freqs
    x = x.ger(freqs.to(x.dtype))
    return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(torch.nn.Module):
  def __init__(self, num_channels, scale=16):
    super().__init__()
    self.register_buffer('freqs', torch.randn(num_channels // 2) * scale)

  def forward(self, x):
    x = x.ger((2 * np.pi * self.freqs).to(x.dtype))
    return torch.cat([x.cos(), x.sin()], dim=1)


class SongUNet(torch.nn.Module):
  def __init__(
    self,
    img_resolution,
    in_channels,
    out_channels,
    label_dim=0,
    augment_dim=0,
    model_channels=128,
    channel_mult=(1, 2, 2, 2),
    channel_mult_emb=4,
    num_blocks=4,
    attn_resolutions=(16,),
    dropout=0.10,
    label_dropout=0,
    embedding_type='positional',
    channel_mult_noise=1,
    encoder_type='standard',
    decoder_type='standard',
    resample_filter=(1, 1),
  ):
    assert embedding_type in ['fourier', 'positional']
    assert encoder_type in ['standard', 'skip', 'residual']
    assert decoder_type in ['standard', 'skip']
    super().__init__()
    self.label_dropout = label_dropout
    emb_channels = model_channels * channel_mult_emb
    noise_channels = model_channels * channel_mult_noise
    init = dict(init_mode='xavier_uniform')
    init_zero = dict(init_mode='xavier_uniform', init_weight=1e-5)
    init_attn = dict(init_mode='xavier_uniform', init_weight=np.sqrt(0.2))
    block_kwargs = dict(
      emb_channels=emb_channels,
      num_heads=1,
      dropout=dropout,
      skip_scale=np.sqrt(0.5),
      eps=1e-6,
      resample_filter=resample_filter,
      resample_proj=True,
      adaptive_scale=False,
      init=init,
      init_zero=init_zero,
      init_attn=init_attn,
    )
    self.map_noise = (
      PositionalEmbedding(num_channels=noise_channels, endpoint=True)
      if embedding_type == 'positional'
      else FourierEmbedding(num_channels=noise_channels)
    )
    self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
    self.map_augment = (
      Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
    )
    self.map_layer0 = Linear(noise_channels, emb_channels, **init)
    self.map_layer1 = Linear(emb_channels, emb_channels, **init)

    self.enc = torch.nn.ModuleDict()
    cout = caux = in_channels
    for level, mult in enumerate(channel_mult):
      res = img_resolution >> level
      if level == 0:
        cin, cout = cout, model_channels
        self.enc[f'{res}x{res}_conv'] = Conv2d(cin, cout, kernel=3, **init)
      else:
        self.enc[f'{res}x{res}_down'] = UNetBlock(cout, cout, down=True, **block_kwargs)
        if encoder_type == 'skip':
          self.enc[f'{res}x{res}_aux_down'] = Conv2d(
            caux, caux, kernel=0, down=True, resample_filter=resample_filter
          )
          self.enc[f'{res}x{res}_aux_skip'] = Conv2d(caux, cout, kernel=1, **init)
        if encoder_type == 'residual':
          self.enc[f'{res}x{res}_aux_residual'] = Conv2d(
            caux,
            cout,
            kernel=3,
            down=True,
            resample_filter=resample_filter,
            fused_resample=True,
            **init,
          )
          caux = cout
      for idx in range(num_blocks):
        cin, cout = cout, model_channels * mult
        self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(
          cin, cout, attention=(res in attn_resolutions), **block_kwargs
        )
    skips = [block.out_channels for name, block in self.enc.items() if 'aux' not in name]

    self.dec = torch.nn.ModuleDict()
    for level, mult in reversed(list(enumerate(channel_mult))):
      res = img_resolution >> level
      if level == len(channel_mult) - 1:
        self.dec[f'{res}x{res}_in0'] = UNetBlock(cout, cout, attention=True, **block_kwargs)
        self.dec[f'{res}x{res}_in1'] = UNetBlock(cout, cout, **block_kwargs)
      else:
        self.dec[f'{res}x{res}_up'] = UNetBlock(cout, cout, up=True, **block_kwargs)
      for idx in range(num_blocks + 1):
        cin, cout = cout + skips.pop(), model_channels * mult
        attn = idx == num_blocks and res in attn_resolutions
        self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
      if decoder_type == 'skip' or level == 0:
        if decoder_type == 'skip' and level < len(channel_mult) - 1:
          self.dec[f'{res}x{res}_aux_up'] = Conv2d(
            out_channels, out_channels, kernel=0, up=True, resample_filter=resample_filter
          )
        self.dec[f'{res}x{res}_aux_norm'] = GroupNorm(num_channels=cout, eps=1e-6)
        self.dec[f'{res}x{res}_aux_conv'] = Conv2d(cout, out_channels, kernel=3, **init_zero)

  def forward(self, x, noise_labels, class_labels, augment_labels=None):
    emb = self.map_noise(noise_labels)
    emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # swap sin/cos
    if self.map_label is not None:
      tmp = class_labels
      if self.training and self.label_dropout:
        keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
        tmp = tmp * keep.to(tmp.dtype)
      emb = emb + self.map_label(tmp * np.sqrt(self.map_label.in_features))
    if self.map_augment is not None and augment_labels is not None:
      emb = emb + self.map_augment(augment_labels)
    emb = silu(self.map_layer0(emb))
    emb = silu(self.map_layer1(emb))

    skips = []
    aux = x
    for name, block in self.enc.items():
      if 'aux_down' in name:
        aux = block(aux)
      elif 'aux_skip' in name:
        x = skips[-1] = x + block(aux)
      elif 'aux_residual' in name:
        x = skips[-1] = aux = (x + block(aux)) / np.sqrt(2)
      else:
        x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
        skips.append(x)

    aux = tmp = None
    for name, block in self.dec.items():
      if 'aux_up' in name:
        aux = block(aux)
      elif 'aux_norm' in name:
        tmp = block(x)
      elif 'aux_conv' in name:
        tmp = block(silu(tmp))
        aux = tmp if aux is None else tmp + aux
      else:
        if x.shape[1] != block.in_channels:
          x = torch.cat([x, skips.pop()], dim=1)
        x = block(x, emb)
    return aux


class DhariwalUNet(torch.nn.Module):
  def __init__(
    self,
    img_resolution,
    in_channels,
    out_channels,
    label_dim=0,
    augment_dim=0,
    model_channels=192,
    channel_mult=(1, 2, 3, 4),
    channel_mult_emb=4,
    num_blocks=3,
    attn_resolutions=(32, 16, 8),
    dropout=0.10,
    label_dropout=0,
  ):
    super().__init__()
    self.label_dropout = label_dropout
    emb_channels = model_channels * channel_mult_emb
    init = dict(init_mode='kaiming_uniform', init_weight=np.sqrt(1 / 3), init_bias=np.sqrt(1 / 3))
    init_zero = dict(init_mode='kaiming_uniform', init_weight=0, init_bias=0)
    block_kwargs = dict(
      emb_channels=emb_channels,
      channels_per_head=64,
      dropout=dropout,
      init=init,
      init_zero=init_zero,
    )
    self.map_noise = PositionalEmbedding(num_channels=model_channels)
    self.map_augment = (
      Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
    )
    self.map_layer0 = Linear(model_channels, emb_channels, **init)
    self.map_layer1 = Linear(emb_channels, emb_channels, **init)
    self.map_label = (
      Linear(
        label_dim,
        emb_channels,
        bias=False,
        init_mode='kaiming_normal',
        init_weight=np.sqrt(label_dim),
      )
      if label_dim
      else None
    )

    self.enc = torch.nn.ModuleDict()
    cout = in_channels
    for level, mult in enumerate(channel_mult):
      res = img_resolution >> level
      if level == 0:
        cin, cout = cout, model_channels * mult
        self.enc[f'{res}x{res}_conv'] = Conv2d(cin, cout, kernel=3, **init)
      else:
        self.enc[f'{res}x{res}_down'] = UNetBlock(cout, cout, down=True, **block_kwargs)
      for idx in range(num_blocks):
        cin, cout = cout, model_channels * mult
        self.enc[f'{res}x{res}_block{idx}'] = UNetBlock(
          cin, cout, attention=(res in attn_resolutions), **block_kwargs
        )
    skips = [block.out_channels for block in self.enc.values()]

    self.dec = torch.nn.ModuleDict()
    for level, mult in reversed(list(enumerate(channel_mult))):
      res = img_resolution >> level
      if level == len(channel_mult) - 1:
        self.dec[f'{res}x{res}_in0'] = UNetBlock(cout, cout, attention=True, **block_kwargs)
        self.dec[f'{res}x{res}_in1'] = UNetBlock(cout, cout, **block_kwargs)
      else:
        self.dec[f'{res}x{res}_up'] = UNetBlock(cout, cout, up=True, **block_kwargs)
      for idx in range(num_blocks + 1):
        cin, cout = cout + skips.pop(), model_channels * mult
        self.dec[f'{res}x{res}_block{idx}'] = UNetBlock(
          cin, cout, attention=(res in attn_resolutions), **block_kwargs
        )
    self.out_norm = GroupNorm(num_channels=cout)
    self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

  def forward(self, x, noise_labels, class_labels, augment_labels=None):
    emb = self.map_noise(noise_labels)
    if self.map_augment is not None and augment_labels is not None:
      emb = emb + self.map_augment(augment_labels)
    emb = silu(self.map_layer0(emb))
    emb = self.map_layer1(emb)
    if self.map_label is not None:
      tmp = class_labels
      if self.training and self.label_dropout:
        keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
        tmp = tmp * keep.to(tmp.dtype)
      emb = emb + self.map_label(tmp)
    emb = silu(emb)
    skips = []
    for block in self.enc.values():
      x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
      skips.append(x)
    for block in self.dec.values():
      if x.shape[1] != block.in_channels:
        x = torch.cat([x, skips.pop()], dim=1)
      x = block(x, emb)
    return self.out_conv(silu(self.out_norm(x)))


NETWORKS = {'SongUNet': SongUNet, 'DhariwalUNet': DhariwalUNet}


def _class_labels(module, x, class_labels):
  if module.label_dim == 0:
    return None
  if class_labels is None:
    return torch.zeros([1, module.label_dim], device=x.device)
  return class_labels.to(torch.float32).reshape(-1, module.label_dim)


class VPPrecond(torch.nn.Module):
  def __init__(
    self,
    img_resolution,
    img_channels,
    label_dim=0,
    use_fp16=False,
    beta_d=19.9,
    beta_min=0.1,
    M=1000,
    epsilon_t=1e-5,
    model_type='SongUNet',
    **model_kwargs,
  ):
    super().__init__()
    self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
    self.use_fp16, self.beta_d, self.beta_min, self.M, self.epsilon_t = (
      use_fp16,
      beta_d,
      beta_min,
      M,
      epsilon_t,
    )
    self.sigma_min = float(self.sigma(epsilon_t))
    self.sigma_max = float(self.sigma(1))
    self.model = NETWORKS[model_type](
      img_resolution=img_resolution,
      in_channels=img_channels,
      out_channels=img_channels,
      label_dim=label_dim,
      **model_kwargs,
    )

  def forward(self, x, sigma, class_labels=None, **model_kwargs):
    x = x.to(torch.float32)
    sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
    class_labels = _class_labels(self, x, class_labels)
    c_skip = 1
    c_out = -sigma
    c_in = 1 / (sigma**2 + 1).sqrt()
    c_noise = (self.M - 1) * self.sigma_inv(sigma)
    F_x = self.model(c_in * x, c_noise.flatten(), class_labels=class_labels, **model_kwargs)
    return c_skip * x + c_out * F_x.to(torch.float32)

  def sigma(self, t):
    t = torch.as_tensor(t)
    return ((0.5 * self.beta_d * (t**2) + self.beta_min * t).exp() - 1).sqrt()

  def sigma_inv(self, sigma):
    sigma = torch.as_tensor(sigma)
    return (
      (self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min
    ) / self.beta_d


class VEPrecond(torch.nn.Module):
  def __init__(
    self,
    img_resolution,
    img_channels,
    label_dim=0,
    use_fp16=False,
    sigma_min=0.02,
    sigma_max=100,
    model_type='SongUNet',
    **model_kwargs,
  ):
    super().__init__()
    self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
    self.use_fp16, self.sigma_min, self.sigma_max = use_fp16, sigma_min, sigma_max
    self.model = NETWORKS[model_type](
      img_resolution=img_resolution,
      in_channels=img_channels,
      out_channels=img_channels,
      label_dim=label_dim,
      **model_kwargs,
    )

  def forward(self, x, sigma, class_labels=None, **model_kwargs):
    x = x.to(torch.float32)
    sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
    class_labels = _class_labels(self, x, class_labels)
    c_skip, c_out, c_in = 1, sigma, 1
    c_noise = (0.5 * sigma).log()
    F_x = self.model(c_in * x, c_noise.flatten(), class_labels=class_labels, **model_kwargs)
    return c_skip * x + c_out * F_x.to(torch.float32)


class EDMPrecond(torch.nn.Module):
  def __init__(
    self,
    img_resolution,
    img_channels,
    label_dim=0,
    use_fp16=False,
    sigma_min=0,
    sigma_max=float('inf'),
    sigma_data=0.5,
    model_type='DhariwalUNet',
    **model_kwargs,
  ):
    super().__init__()
    self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
    self.use_fp16, self.sigma_min, self.sigma_max, self.sigma_data = (
      use_fp16,
      sigma_min,
      sigma_max,
      sigma_data,
    )
    self.model = NETWORKS[model_type](
      img_resolution=img_resolution,
      in_channels=img_channels,
      out_channels=img_channels,
      label_dim=label_dim,
      **model_kwargs,
    )

  def forward(self, x, sigma, class_labels=None, **model_kwargs):
    x = x.to(torch.float32)
    sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
    class_labels = _class_labels(self, x, class_labels)
    sd = self.sigma_data
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
    c_in = 1 / (sd**2 + sigma**2).sqrt()
    c_noise = sigma.log() / 4
    F_x = self.model(c_in * x, c_noise.flatten(), class_labels=class_labels, **model_kwargs)
    return c_skip * x + c_out * F_x.to(torch.float32)


PRECONDS = {'VPPrecond': VPPrecond, 'VEPrecond': VEPrecond, 'EDMPrecond': EDMPrecond}


def build(precond: str, **kwargs) -> torch.nn.Module:
  """`precond(**kwargs)` with the constructor kwargs recorded (as the persistence decorator)."""
  net = PRECONDS[precond](**kwargs)
  net._init_args, net._init_kwargs = (), dict(kwargs)
  return net.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------
# EDM's pickle layout without its repository.


def _reconstruct_persistent_obj(meta):  # pickled by reference only; never called here
  raise RuntimeError('stand-in for torch_utils.persistence._reconstruct_persistent_obj')


class _PersistencePickler(pickle.Pickler):
  """Pickles every module of this file as `torch_utils.persistence.persistent_class` does.

  Each instance becomes `_reconstruct_persistent_obj(meta)` with meta = {type: 'class',
  version: 6, module_src: this file's source, class_name, state: the instance __dict__
  (parameters, buffers, submodules, `_init_args` / `_init_kwargs`)}; torch.nn containers
  (ModuleDict) and tensors pickle as torch pickles them. What differs from a real EDM
  snapshot: the embedded source is this transcription, and `_init_kwargs` is recorded on
  the top-level network only (the decorator records it on every persistent module).
  """

  _src = None

  def reducer_override(self, obj):
    if type(obj).__module__ == __name__ and isinstance(obj, torch.nn.Module):
      if _PersistencePickler._src is None:
        _PersistencePickler._src = inspect.getsource(sys.modules[__name__])
      state = dict(obj.__getstate__())
      state.setdefault('_init_args', None)
      state.setdefault('_init_kwargs', None)
      meta = dict(
        type='class', version=6, module_src=self._src, class_name=type(obj).__name__, state=state
      )
      return _reconstruct_persistent_obj, (meta,)
    return NotImplemented


def pickle_like_edm(net: torch.nn.Module, path: str) -> None:
  """Writes {'ema': net, ...} as EDM's training loop writes network-snapshot-*.pkl."""
  fake = types.ModuleType('torch_utils.persistence')
  fake._reconstruct_persistent_obj = _reconstruct_persistent_obj
  _reconstruct_persistent_obj.__module__ = 'torch_utils.persistence'
  saved = {k: sys.modules.get(k) for k in ('torch_utils', 'torch_utils.persistence')}
  sys.modules['torch_utils'] = types.ModuleType('torch_utils')
  sys.modules['torch_utils.persistence'] = fake
  try:
    buf = io.BytesIO()
    data = dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs=dict(resolution=0))
    _PersistencePickler(buf, protocol=pickle.DEFAULT_PROTOCOL).dump(data)
  finally:
    _reconstruct_persistent_obj.__module__ = __name__
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
  with open(path, 'wb') as f:
    f.write(buf.getvalue())
