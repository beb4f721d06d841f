"""PyTorch transcription of NCSNv2's score networks, for the converter's parity tests.

Only what NCSNv2, NCSNv2Deeper and NCSNv2Deepest build with the published settings
(non-conditional InstanceNorm++, no spectral norm), with the reference's module names,
so its state dicts have the reference's tensor names. tests/test_convert_ncsnv2.py checks
it against the reference code itself (names, shapes, outputs) when that is available.

Source: ermongroup/ncsnv2 `models/ncsnv2.py`, `models/layers.py`,
`models/normalization.py`, `models/__init__.py` (get_sigmas), `models/ema.py`.
"""

from functools import partial
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def namespace(config: dict) -> SimpleNamespace:
  """A yml-like dict as the attribute tree the reference's constructors read."""
  return SimpleNamespace(
    **{k: namespace(v) if isinstance(v, dict) else v for k, v in config.items()}
  )


def get_sigmas(config) -> torch.Tensor:
  m = config.model
  if m.sigma_dist == 'geometric':
    values = np.exp(np.linspace(np.log(m.sigma_begin), np.log(m.sigma_end), m.num_classes))
  else:
    values = np.linspace(m.sigma_begin, m.sigma_end, m.num_classes)
  return torch.tensor(values).float()


def get_act(config):
  name = config.model.nonlinearity.lower()
  return {
    'elu': nn.ELU(),
    'relu': nn.ReLU(),
    'lrelu': nn.LeakyReLU(negative_slope=0.2),
    'swish': lambda x: x * torch.sigmoid(x),
  }[name]


class InstanceNorm2dPlus(nn.Module):
  def __init__(self, num_features, bias=True):
    super().__init__()
    self.num_features = num_features
    self.bias = bias
    self.instance_norm = nn.InstanceNorm2d(num_features, affine=False, track_running_stats=False)
    self.alpha = nn.Parameter(torch.zeros(num_features).normal_(1, 0.02))
    self.gamma = nn.Parameter(torch.zeros(num_features).normal_(1, 0.02))
    if bias:
      self.beta = nn.Parameter(torch.zeros(num_features))

  def forward(self, x):
    means = torch.mean(x, dim=(2, 3))
    m = torch.mean(means, dim=-1, keepdim=True)
    v = torch.var(means, dim=-1, keepdim=True)
    means = (means - m) / torch.sqrt(v + 1e-5)
    h = self.instance_norm(x) + means[..., None, None] * self.alpha[..., None, None]
    out = self.gamma.view(-1, self.num_features, 1, 1) * h
    if self.bias:
      out = out + self.beta.view(-1, self.num_features, 1, 1)
    return out


def conv1x1(cin, cout, bias=True):
  return nn.Conv2d(cin, cout, 1, stride=1, padding=0, bias=bias)


def conv3x3(cin, cout, bias=True):
  return nn.Conv2d(cin, cout, 3, stride=1, padding=1, bias=bias)


def dilated_conv3x3(cin, cout, dilation, bias=True):
  return nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=bias)


class ConvMeanPool(nn.Module):
  def __init__(self, cin, cout, kernel_size=3, biases=True):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel_size, stride=1, padding=kernel_size // 2, bias=biases)

  def forward(self, x):
    out = self.conv(x)
    parts = [out[:, :, ::2, ::2], out[:, :, 1::2, ::2], out[:, :, ::2, 1::2], out[:, :, 1::2, 1::2]]
    return sum(parts) / 4.0


class ResidualBlock(nn.Module):
  def __init__(self, cin, cout, resample=None, act=None, normalization=None, dilation=None):
    super().__init__()
    self.non_linearity = act
    self.input_dim, self.output_dim, self.resample = cin, cout, resample
    if resample == 'down':
      if dilation is not None:
        self.conv1 = dilated_conv3x3(cin, cin, dilation)
        self.normalize2 = normalization(cin)
        self.conv2 = dilated_conv3x3(cin, cout, dilation)
        shortcut = partial(dilated_conv3x3, dilation=dilation)
      else:
        self.conv1 = conv3x3(cin, cin)
        self.normalize2 = normalization(cin)
        self.conv2 = ConvMeanPool(cin, cout, 3)
        shortcut = partial(ConvMeanPool, kernel_size=1)
    elif resample is None:
      if dilation is not None:
        shortcut = partial(dilated_conv3x3, dilation=dilation)
        self.conv1 = dilated_conv3x3(cin, cout, dilation)
        self.normalize2 = normalization(cout)
        self.conv2 = dilated_conv3x3(cout, cout, dilation)
      else:
        shortcut = conv1x1
        self.conv1 = conv3x3(cin, cout)
        self.normalize2 = normalization(cout)
        self.conv2 = conv3x3(cout, cout)
    else:
      raise ValueError(f'invalid resample value {resample!r}')
    if cout != cin or resample is not None:
      self.shortcut = shortcut(cin, cout)
    self.normalize1 = normalization(cin)

  def forward(self, x):
    out = self.conv1(self.non_linearity(self.normalize1(x)))
    out = self.conv2(self.non_linearity(self.normalize2(out)))
    if self.output_dim == self.input_dim and self.resample is None:
      return x + out
    return self.shortcut(x) + out


class CRPBlock(nn.Module):
  def __init__(self, features, n_stages, act):
    super().__init__()
    self.convs = nn.ModuleList([conv3x3(features, features, bias=False) for _ in range(n_stages)])
    self.maxpool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
    self.act = act

  def forward(self, x):
    x = self.act(x)
    path = x
    for conv in self.convs:
      path = conv(self.maxpool(path))
      x = path + x
    return x


class RCUBlock(nn.Module):
  def __init__(self, features, n_blocks, n_stages, act):
    super().__init__()
    for i in range(n_blocks):
      for j in range(n_stages):
        setattr(self, f'{i + 1}_{j + 1}_conv', conv3x3(features, features, bias=False))
    self.n_blocks, self.n_stages, self.act = n_blocks, n_stages, act

  def forward(self, x):
    for i in range(self.n_blocks):
      residual = x
      for j in range(self.n_stages):
        x = getattr(self, f'{i + 1}_{j + 1}_conv')(self.act(x))
      x = x + residual
    return x


class MSFBlock(nn.Module):
  def __init__(self, in_planes, features):
    super().__init__()
    self.convs = nn.ModuleList([conv3x3(c, features, bias=True) for c in in_planes])
    self.features = features

  def forward(self, xs, shape):
    sums = torch.zeros(xs[0].shape[0], self.features, *shape)
    for conv, x in zip(self.convs, xs):
      sums = sums + F.interpolate(conv(x), size=shape, mode='bilinear', align_corners=True)
    return sums


class RefineBlock(nn.Module):
  def __init__(self, in_planes, features, act, start=False, end=False):
    super().__init__()
    self.n_blocks = len(in_planes)
    self.adapt_convs = nn.ModuleList([RCUBlock(c, 2, 2, act) for c in in_planes])
    self.output_convs = RCUBlock(features, 3 if end else 1, 2, act)
    if not start:
      self.msf = MSFBlock(in_planes, features)
    self.crp = CRPBlock(features, 2, act)

  def forward(self, xs, output_shape):
    hs = [adapt(x) for adapt, x in zip(self.adapt_convs, xs)]
    h = self.msf(hs, output_shape) if self.n_blocks > 1 else hs[0]
    return self.output_convs(self.crp(h))


class _Base(nn.Module):
  """The shared head and tail of the three networks (begin_conv, normalizer, end_conv)."""

  def __init__(self, config):
    super().__init__()
    self.logit_transform = config.data.logit_transform
    self.rescaled = config.data.rescaled
    self.norm = InstanceNorm2dPlus
    self.ngf = config.model.ngf
    self.num_classes = config.model.num_classes
    self.act = get_act(config)
    self.register_buffer('sigmas', get_sigmas(config))
    self.config = config
    channels = config.data.channels
    self.begin_conv = nn.Conv2d(channels, self.ngf, 3, stride=1, padding=1)
    self.normalizer = self.norm(self.ngf, self.num_classes)
    self.end_conv = nn.Conv2d(self.ngf, channels, 3, stride=1, padding=1)

  def _block(self, cin, cout, resample=None, dilation=None):
    return ResidualBlock(cin, cout, resample, self.act, self.norm, dilation)

  def _pair(self, cin, cout, dilation=None):
    return nn.ModuleList(
      [
        self._block(cin, cout, 'down', dilation),
        self._block(cout, cout, None, dilation),
      ]
    )

  def forward(self, x, y):
    h = 2 * x - 1.0 if not self.logit_transform and not self.rescaled else x
    output = self.refine(self.begin_conv(h))
    output = self.end_conv(self.act(self.normalizer(output)))
    used_sigmas = self.sigmas[y].view(x.shape[0], *([1] * len(x.shape[1:])))
    return output / used_sigmas


def _run(blocks, x):
  for block in blocks:
    x = block(x)
  return x


class NCSNv2(_Base):
  def __init__(self, config):
    super().__init__(config)
    n, act = self.ngf, self.act
    self.res1 = nn.ModuleList([self._block(n, n), self._block(n, n)])
    self.res2 = self._pair(n, 2 * n)
    self.res3 = self._pair(2 * n, 2 * n, dilation=2)
    self.res4 = self._pair(2 * n, 2 * n, dilation=4)
    self.refine1 = RefineBlock([2 * n], 2 * n, act, start=True)
    self.refine2 = RefineBlock([2 * n, 2 * n], 2 * n, act)
    self.refine3 = RefineBlock([2 * n, 2 * n], n, act)
    self.refine4 = RefineBlock([n, n], n, act, end=True)

  def refine(self, h):
    l1 = _run(self.res1, h)
    l2 = _run(self.res2, l1)
    l3 = _run(self.res3, l2)
    l4 = _run(self.res4, l3)
    r1 = self.refine1([l4], l4.shape[2:])
    r2 = self.refine2([l3, r1], l3.shape[2:])
    r3 = self.refine3([l2, r2], l2.shape[2:])
    return self.refine4([l1, r3], l1.shape[2:])


class NCSNv2Deeper(_Base):
  def __init__(self, config):
    super().__init__(config)
    n, act = self.ngf, self.act
    self.res1 = nn.ModuleList([self._block(n, n), self._block(n, n)])
    self.res2 = self._pair(n, 2 * n)
    self.res3 = self._pair(2 * n, 2 * n)
    self.res4 = self._pair(2 * n, 4 * n, dilation=2)
    self.res5 = self._pair(4 * n, 4 * n, dilation=4)
    self.refine1 = RefineBlock([4 * n], 4 * n, act, start=True)
    self.refine2 = RefineBlock([4 * n, 4 * n], 2 * n, act)
    self.refine3 = RefineBlock([2 * n, 2 * n], 2 * n, act)
    self.refine4 = RefineBlock([2 * n, 2 * n], n, act)
    self.refine5 = RefineBlock([n, n], n, act, end=True)

  def refine(self, h):
    l1 = _run(self.res1, h)
    l2 = _run(self.res2, l1)
    l3 = _run(self.res3, l2)
    l4 = _run(self.res4, l3)
    l5 = _run(self.res5, l4)
    r1 = self.refine1([l5], l5.shape[2:])
    r2 = self.refine2([l4, r1], l4.shape[2:])
    r3 = self.refine3([l3, r2], l3.shape[2:])
    r4 = self.refine4([l2, r3], l2.shape[2:])
    return self.refine5([l1, r4], l1.shape[2:])


class NCSNv2Deepest(_Base):
  def __init__(self, config):
    super().__init__(config)
    n, act = self.ngf, self.act
    self.res1 = nn.ModuleList([self._block(n, n), self._block(n, n)])
    self.res2 = self._pair(n, 2 * n)
    self.res3 = self._pair(2 * n, 2 * n)
    self.res31 = self._pair(2 * n, 2 * n)
    self.res4 = self._pair(2 * n, 4 * n, dilation=2)
    self.res5 = self._pair(4 * n, 4 * n, dilation=4)
    self.refine1 = RefineBlock([4 * n], 4 * n, act, start=True)
    self.refine2 = RefineBlock([4 * n, 4 * n], 2 * n, act)
    self.refine3 = RefineBlock([2 * n, 2 * n], 2 * n, act)
    self.refine31 = RefineBlock([2 * n, 2 * n], 2 * n, act)
    self.refine4 = RefineBlock([2 * n, 2 * n], n, act)
    self.refine5 = RefineBlock([n, n], n, act, end=True)

  def refine(self, h):
    l1 = _run(self.res1, h)
    l2 = _run(self.res2, l1)
    l3 = _run(self.res3, l2)
    l31 = _run(self.res31, l3)
    l4 = _run(self.res4, l31)
    l5 = _run(self.res5, l4)
    r1 = self.refine1([l5], l5.shape[2:])
    r2 = self.refine2([l4, r1], l4.shape[2:])
    r31 = self.refine31([l31, r2], l31.shape[2:])
    r3 = self.refine3([l3, r31], l3.shape[2:])
    r4 = self.refine4([l2, r3], l2.shape[2:])
    return self.refine5([l1, r4], l1.shape[2:])


NETWORKS = {'NCSNv2': NCSNv2, 'NCSNv2Deeper': NCSNv2Deeper, 'NCSNv2Deepest': NCSNv2Deepest}


def ema_state_dict(model: nn.Module) -> dict:
  """EMAHelper.state_dict(): the shadow of every trainable parameter, unprefixed names."""
  return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
