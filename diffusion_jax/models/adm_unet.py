"""The ADM U-Net of improved-diffusion / guided-diffusion (OpenAI's `UNetModel`), exactly.

Source: Nichol & Dhariwal 2021 (improved-diffusion, `improved_diffusion/unet.py`) and
Dhariwal & Nichol 2021, sec. 3 (guided-diffusion, `guided_diffusion/unet.py`,
`script_util.create_model`): residual blocks with scale-shift norm, BigGAN-style
resampling residual blocks, multi-head attention at several resolutions, learned sigma.

`config.model.network_kwargs` holds `create_model`'s keyword arguments by their names
(image_size, num_channels, num_res_blocks, channel_mult, learn_sigma, class_cond,
attention_resolutions, num_heads, num_head_channels, num_heads_upsample,
use_scale_shift_norm, dropout, resblock_updown, use_new_attention_order, use_checkpoint,
use_fp16 = False); a missing one takes the value the reference scripts give it
(KWARG_DEFAULTS). improved-diffusion's `create_model` takes a subset of these and builds
the same module: its attention is guided-diffusion's `QKVAttentionLegacy` (the default,
use_new_attention_order=False), and its 32x32 channel multipliers (1, 2, 2, 2) are the
`channel_mult=''` default here at image_size 32 (guided-diffusion has no 32x32 default).

Parameter names mirror the reference's state dict with `_` for `.` (`input_blocks_1_0/
in_layers_0` is `input_blocks.1.0.in_layers.0`), so the converter maps them by rule. The
reference has no null class: label -1 (or no label) adds a zero class embedding, i.e.
the network sees only the timestep embedding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models import layers
from diffusion_jax.models.config import ModelConfig

# create_model's keyword arguments. Defaults: the scripts' model_and_diffusion_defaults()
# (script_util.py), which every reference command line runs with (create_model's own
# signature defaults are never used by the scripts: 1 head, attention at 16 only, no
# scale-shift norm).
KWARG_DEFAULTS: dict[str, Any] = {
  'image_size': None,  # None = config.data.image_size.
  'num_channels': None,  # required: the base width (UNetModel's model_channels).
  'num_res_blocks': None,  # required.
  'channel_mult': '',
  'learn_sigma': None,  # None = config.model.learn_variance.
  'class_cond': None,  # None = (config.data.num_classes > 0 and model.class_conditional).
  'use_checkpoint': False,
  'attention_resolutions': '16,8',
  'num_heads': 4,
  'num_head_channels': -1,
  'num_heads_upsample': -1,
  'use_scale_shift_norm': True,
  'dropout': 0.0,
  'resblock_updown': False,
  'use_fp16': False,
  'use_new_attention_order': False,
}
# create_model's channel_mult='' table (guided-diffusion), plus improved-diffusion's 32x32.
DEFAULT_CHANNEL_MULT = {
  512: (0.5, 1, 1, 2, 2, 4, 4),
  256: (1, 1, 2, 2, 4, 4),
  128: (1, 1, 2, 3, 4),
  64: (1, 2, 3, 4),
  32: (1, 2, 2, 2),
}
_INT_KEYS = (
  'image_size',
  'num_channels',
  'num_res_blocks',
  'num_heads',
  'num_head_channels',
  'num_heads_upsample',
)
_BOOL_KEYS = (
  'learn_sigma',
  'class_cond',
  'use_checkpoint',
  'use_scale_shift_norm',
  'resblock_updown',
  'use_fp16',
  'use_new_attention_order',
)
GROUPS = 32  # normalization(): GroupNorm32(32, channels).
_KEY = 'config.model.network_kwargs'


@dataclasses.dataclass(frozen=True)
class ADMSettings:
  """UNetModel's constructor arguments, resolved from create_model's keywords."""

  model_channels: int
  num_res_blocks: int
  channel_mult: tuple[float, ...]
  attention_ds: tuple[int, ...]  # downsampling rates with attention: image_size // res.
  num_heads: int
  num_head_channels: int
  num_heads_upsample: int
  use_scale_shift_norm: bool
  resblock_updown: bool
  use_new_attention_order: bool
  use_checkpoint: bool
  dropout: float
  learn_sigma: bool
  class_cond: bool

  def width(self, mult: float) -> int:
    return int(mult * self.model_channels)

  def heads(self, channels: int, upsample: bool = False) -> int:
    """AttentionBlock's head count: channels / num_head_channels, else num_heads."""
    if self.num_head_channels != -1:
      return channels // self.num_head_channels
    return self.num_heads_upsample if upsample else self.num_heads


def _as_bool(name: str, value: Any) -> bool:
  if isinstance(value, str) and value.lower() in ('true', 'false'):
    return value.lower() == 'true'
  if not isinstance(value, bool):
    raise ValueError(f'{_KEY}.{name}={value!r} must be True or False.')
  return value


def _as_int(name: str, value: Any) -> int:
  if isinstance(value, str) and value.lstrip('-').isdigit():
    return int(value)
  if isinstance(value, bool) or not isinstance(value, int):
    raise ValueError(f'{_KEY}.{name}={value!r} must be an integer.')
  return value


def _as_numbers(name: str, value: Any, cast: type) -> tuple:
  """A comma-separated string (the reference's flag form) or a sequence of numbers."""
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    value = (value,)  # one resolution, as a flag string '16' parses
  items = value.split(',') if isinstance(value, str) else value
  try:
    numbers = tuple(cast(v) for v in items)
  except (TypeError, ValueError):
    raise ValueError(
      f'{_KEY}.{name}={value!r} must be a comma-separated string or a sequence of numbers, '
      "e.g. '32,16,8'."
    ) from None
  if not numbers or min(numbers) <= 0:
    raise ValueError(f'{_KEY}.{name}={value!r} must list positive numbers.')
  return numbers


def canonical_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
  """Every create_model keyword, resolved: equal networks give equal dicts.

  Missing keys take the scripts' defaults (learn_sigma and class_cond False), flag strings
  ('True', '192', '32,16,8') are parsed, channel_mult='' becomes the image size's table
  entry and the multipliers ints where integral.
  """
  unknown = sorted(set(kwargs) - set(KWARG_DEFAULTS))
  if unknown:
    raise ValueError(f'unknown create_model keyword(s) {unknown}; valid: {tuple(KWARG_DEFAULTS)}.')
  kw = {**KWARG_DEFAULTS, 'learn_sigma': False, 'class_cond': False}
  kw.update((k, v) for k, v in kwargs.items() if v is not None)
  for key in ('image_size', 'num_channels', 'num_res_blocks'):
    if kw[key] is None:
      raise ValueError(f'create_model needs {key!r} (the reference scripts have no default).')
  out = {key: _as_int(key, kw[key]) for key in _INT_KEYS}
  out.update((key, _as_bool(key, kw[key])) for key in _BOOL_KEYS)
  out['dropout'] = float(kw['dropout'])
  mult = kw['channel_mult']
  if mult in ('', ()):
    if out['image_size'] not in DEFAULT_CHANNEL_MULT:
      raise ValueError(
        f"{_KEY}.channel_mult='' has no default at image_size {out['image_size']} (defaults "
        f'for {sorted(DEFAULT_CHANNEL_MULT)}); give channel_mult, e.g. "1,2,2,2".'
      )
    mult = DEFAULT_CHANNEL_MULT[out['image_size']]
  mult = _as_numbers('channel_mult', mult, float)
  out['channel_mult'] = tuple(int(m) if m == int(m) else m for m in mult)
  out['attention_resolutions'] = _as_numbers(
    'attention_resolutions', kw['attention_resolutions'], int
  )
  return out


def settings_from_config(cfg: ModelConfig) -> ADMSettings:
  """Validates `config.model.network_kwargs` against the run config; the resolved settings.

  Raises:
    ValueError: one line naming the bad key and the fix.
  """
  kwargs = cfg.kwargs
  unknown = sorted(set(kwargs) - set(KWARG_DEFAULTS))
  if unknown:
    raise ValueError(
      f"{_KEY} has unknown key(s) {unknown}; adm_unet takes create_model's keywords "
      f'{tuple(KWARG_DEFAULTS)} (diffusion flags belong in config.diffusion).'
    )
  for key in ('num_channels', 'num_res_blocks'):
    if kwargs.get(key) is None:
      raise ValueError(f'{_KEY}.{key} is required (create_model has no default for it).')
  kw = {**KWARG_DEFAULTS, **{k: v for k, v in kwargs.items() if v is not None}}
  image_size = cfg.image_size
  if kw['image_size'] is not None:
    image_size = _as_int('image_size', kw['image_size'])
  if image_size != cfg.image_size:
    raise ValueError(
      f'{_KEY}.image_size={image_size} differs from config.data.image_size={cfg.image_size}; '
      'make them equal.'
    )
  if _as_bool('use_fp16', kw['use_fp16']):
    raise ValueError(
      f'{_KEY}.use_fp16=True is not supported: set it False (checkpoints hold float32 '
      'weights either way) and choose the compute dtype with config.model.dtype.'
    )
  learn_sigma = cfg.learn_variance if kw['learn_sigma'] is None else kw['learn_sigma']
  if _as_bool('learn_sigma', learn_sigma) != cfg.learn_variance:
    raise ValueError(
      f'{_KEY}.learn_sigma={learn_sigma} disagrees with config.model.learn_variance='
      f'{cfg.learn_variance}; set both alike (learned sigma = 2x the image channels out).'
    )
  class_cond = cfg.num_classes > 0 if kw['class_cond'] is None else kw['class_cond']
  if _as_bool('class_cond', class_cond) != (cfg.num_classes > 0):
    raise ValueError(
      f'{_KEY}.class_cond={class_cond} disagrees with the run config (num_classes='
      f'{cfg.num_classes}); set config.model.class_conditional and config.data.num_classes '
      'to match (the reference uses 1000 classes).'
    )
  if cfg.self_cond or cfg.augment_dim:
    raise ValueError(
      'adm_unet has no self-conditioning or augment input; set config.model.self_cond=False '
      'and config.model.augment_dim=0.'
    )
  dropout = float(kw['dropout'])
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f'{_KEY}.dropout={dropout} must lie in [0, 1).')
  if cfg.dropout not in (0.0, dropout):
    raise ValueError(
      f'config.model.dropout={cfg.dropout} differs from {_KEY}.dropout={dropout}, which '
      'adm_unet reads; set config.model.dropout=0.0.'
    )

  if kw['channel_mult'] in ('', None, ()):
    if image_size not in DEFAULT_CHANNEL_MULT:
      raise ValueError(
        f"{_KEY}.channel_mult='' has no default at image_size {image_size} (defaults for "
        f'{sorted(DEFAULT_CHANNEL_MULT)}); give channel_mult, e.g. "1,2,2,2".'
      )
    channel_mult = DEFAULT_CHANNEL_MULT[image_size]
  else:
    channel_mult = _as_numbers('channel_mult', kw['channel_mult'], float)
  resolutions = _as_numbers('attention_resolutions', kw['attention_resolutions'], int)
  attention_ds = tuple(image_size // r for r in resolutions)
  reached = [2**i for i in range(len(channel_mult))]
  bad = [r for r, ds in zip(resolutions, attention_ds) if ds not in reached]
  if bad:
    raise ValueError(
      f'{_KEY}.attention_resolutions has {bad}, which the U-Net never reaches at '
      f'image_size {image_size}; valid: {[image_size // d for d in reached]}.'
    )
  s = ADMSettings(
    model_channels=_as_int('num_channels', kw['num_channels']),
    num_res_blocks=_as_int('num_res_blocks', kw['num_res_blocks']),
    channel_mult=channel_mult,
    attention_ds=attention_ds,
    num_heads=_as_int('num_heads', kw['num_heads']),
    num_head_channels=_as_int('num_head_channels', kw['num_head_channels']),
    num_heads_upsample=_as_int('num_heads_upsample', kw['num_heads_upsample']),
    use_scale_shift_norm=_as_bool('use_scale_shift_norm', kw['use_scale_shift_norm']),
    resblock_updown=_as_bool('resblock_updown', kw['resblock_updown']),
    use_new_attention_order=_as_bool('use_new_attention_order', kw['use_new_attention_order']),
    use_checkpoint=_as_bool('use_checkpoint', kw['use_checkpoint']),
    dropout=dropout,
    learn_sigma=cfg.learn_variance,
    class_cond=cfg.num_classes > 0,
  )
  if s.num_heads_upsample == -1:
    s = dataclasses.replace(s, num_heads_upsample=s.num_heads)
  _check_widths(s, image_size)
  return s


def _check_widths(s: ADMSettings, image_size: int) -> None:
  if s.model_channels < 1 or s.num_res_blocks < 1:
    raise ValueError(f'{_KEY}.num_channels and num_res_blocks must be positive integers.')
  levels = len(s.channel_mult)
  if image_size % 2 ** (levels - 1):
    raise ValueError(
      f'config.data.image_size={image_size} must be divisible by 2^(levels - 1) for '
      f'{_KEY}.channel_mult={s.channel_mult}.'
    )
  for level, mult in enumerate(s.channel_mult):
    width = s.width(mult)
    if width < GROUPS or width % GROUPS:
      raise ValueError(
        f'{_KEY}: level {level} has {width} channels (num_channels x channel_mult), not a '
        f'multiple of the {GROUPS} GroupNorm groups; change num_channels or channel_mult.'
      )
    keys = ('num_heads', 'num_heads_upsample') if 2**level in s.attention_ds else ()
    keys += ('num_heads',) if level == levels - 1 else ()  # the middle block attends
    if not keys:
      continue
    if s.num_head_channels != -1:
      if s.num_head_channels < 1 or width % s.num_head_channels:
        raise ValueError(
          f'{_KEY}.num_head_channels={s.num_head_channels} must divide the {width} channels '
          f'of level {level}.'
        )
      continue
    for key in keys:
      heads = getattr(s, key)
      if heads < 1 or width % heads:
        raise ValueError(f'{_KEY}.{key}={heads} must divide the {width} channels of level {level}.')


def timestep_embedding(timesteps: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """`[cos(t w_k), sin(t w_k)]`, w_k = max_period^(-k / half), zero-padded to odd `dim`.

  Source: guided_diffusion/nn.py timestep_embedding (frequencies in float32 as there).
  """
  half = dim // 2
  k = jnp.arange(half, dtype=jnp.float32)
  freqs = jnp.exp(-np.float32(math.log(max_period)) * k / np.float32(half))
  args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb  # [B, dim]


def _torch_uniform(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default Linear / Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


@dataclasses.dataclass(frozen=True)
class _Layers:
  """Layer factories with the reference's initialisation (zero=True: zero_module)."""

  dtype: Any
  param_dtype: Any

  def conv(self, features, fan_in_ch, name, size=3, stride=1, zero=False):
    init = nn.initializers.zeros if zero else _torch_uniform(fan_in_ch * size * size)
    pad = (size - 1) // 2
    return nn.Conv(
      features,
      (size, size),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      kernel_init=init,
      bias_init=init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )

  def dense(self, features, fan_in, name, zero=False):
    init = nn.initializers.zeros if zero else _torch_uniform(fan_in)
    return nn.Dense(
      features,
      kernel_init=init,
      bias_init=init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )

  def norm(self, name):
    """GroupNorm32: 32 groups, eps 1e-5, computed in float32 and cast back."""
    gn = nn.GroupNorm(
      num_groups=GROUPS,
      epsilon=1e-5,
      use_fast_variance=False,
      dtype=jnp.float32,
      param_dtype=self.param_dtype,
      name=name,
    )
    return lambda x: gn(x.astype(jnp.float32)).astype(x.dtype)


def _upsample(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x (F.interpolate(scale_factor=2, mode='nearest'))."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _avg_pool(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ResBlock(nn.Module):
  """guided_diffusion.unet.ResBlock (dims=2, use_conv=False), optionally resampling."""

  out_channels: int
  settings: ADMSettings
  lay: _Layers
  deterministic: bool
  updown: str | None = None  # None | 'up' | 'down'

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    s, lay, ch, out = self.settings, self.lay, x.shape[-1], self.out_channels
    h = nn.silu(lay.norm('in_layers_0')(x))
    if self.updown is not None:
      resample = _upsample if self.updown == 'up' else _avg_pool
      h, x = resample(h), resample(x)
    h = lay.conv(out, ch, 'in_layers_2')(h)
    e = lay.dense(2 * out if s.use_scale_shift_norm else out, emb.shape[-1], 'emb_layers_1')
    e = e(nn.silu(emb)).astype(h.dtype)[:, None, None, :]
    if s.use_scale_shift_norm:
      scale, shift = jnp.split(e, 2, axis=-1)
      h = lay.norm('out_layers_0')(h) * (1 + scale) + shift
    else:
      h = lay.norm('out_layers_0')(h + e)
    h = nn.Dropout(s.dropout)(nn.silu(h), deterministic=self.deterministic)
    h = lay.conv(out, out, 'out_layers_3', zero=True)(h)
    skip = x if out == ch else lay.conv(out, ch, 'skip_connection', size=1)(x)
    return skip + h


class AttentionBlock(nn.Module):
  """guided_diffusion.unet.AttentionBlock: QKVAttention (new order) or QKVAttentionLegacy."""

  num_heads: int
  new_order: bool
  lay: _Layers
  attention_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, hh, ww, c = x.shape
    heads, lay = self.num_heads, self.lay
    h = lay.norm('norm')(x).reshape(b, hh * ww, c)
    qkv = lay.dense(3 * c, c, 'qkv')(h)  # [B, T, 3C], the 1x1 Conv1d
    # New order: channels are (q|k|v, head, ch); legacy: (head, q|k|v, ch).
    if self.new_order:
      qkv, axis = qkv.reshape(b, hh * ww, 3, heads, c // heads), 2
    else:
      qkv, axis = qkv.reshape(b, hh * ww, heads, 3, c // heads), 3
    q, k, v = (jnp.take(qkv, i, axis=axis) for i in range(3))  # [B, T, H, ch]
    a = layers.attention(q, k, v, dtype=h.dtype, impl=self.attention_impl).reshape(b, hh * ww, c)
    h = lay.dense(c, c, 'proj_out', zero=True)(a)
    return x + h.reshape(b, hh, ww, c)


class ADMUNet(nn.Module):
  """improved / guided-diffusion's UNetModel. Returns `(output, output)` NHWC.

  `noise_level` is the timestep as the reference model sees it (the objective applies
  rescale_timesteps). The output has 2C channels with learned sigma (eps, then v).
  """

  config: ModelConfig

  def __post_init__(self) -> None:
    settings_from_config(self.config)  # fail at create_model on bad network_kwargs
    super().__post_init__()

  @nn.compact
  def __call__(
    self,
    x: jax.Array,  # [B, H, W, C]
    noise_level: jax.Array,  # [B]
    label: jax.Array | None = None,  # [B] int, -1 = null (zero class embedding)
    self_cond: jax.Array | None = None,  # ignored (no self-conditioning)
    augment: jax.Array | None = None,  # ignored (no augment input)
    train: bool = False,
  ) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    s = settings_from_config(cfg)
    lay = _Layers(cfg.compute_dtype, cfg.parameter_dtype)
    mc = s.model_channels
    emb_dim = 4 * mc
    block_cls = nn.remat(ResBlock) if (cfg.remat or s.use_checkpoint) else ResBlock

    def res(out, name, updown=None):
      return block_cls(out, s, lay, not train, updown, name=name)

    def attn(name, channels, upsample=False):
      heads = s.heads(channels, upsample)
      return AttentionBlock(heads, s.use_new_attention_order, lay, cfg.attention_impl, name=name)

    emb = timestep_embedding(noise_level, mc)
    emb = lay.dense(emb_dim, mc, 'time_embed_0')(emb)
    emb = lay.dense(emb_dim, emb_dim, 'time_embed_2')(nn.silu(emb))
    if s.class_cond:
      lab = -jnp.ones(x.shape[:1], jnp.int32) if label is None else jnp.asarray(label, jnp.int32)
      table = nn.Embed(
        cfg.num_classes,
        emb_dim,
        embedding_init=nn.initializers.normal(1.0),
        dtype=cfg.compute_dtype,
        param_dtype=cfg.parameter_dtype,
        name='label_emb',
      )
      emb = emb + jnp.where((lab >= 0)[:, None], table(jnp.maximum(lab, 0)), 0).astype(emb.dtype)

    ch = s.width(s.channel_mult[0])
    h = lay.conv(ch, x.shape[-1], 'input_blocks_0_0')(x.astype(cfg.compute_dtype))
    hs = [h]
    ds, index = 1, 1
    levels = len(s.channel_mult)
    for level, mult in enumerate(s.channel_mult):
      for _ in range(s.num_res_blocks):
        ch = s.width(mult)
        h = res(ch, f'input_blocks_{index}_0')(h, emb)
        if ds in s.attention_ds:
          h = attn(f'input_blocks_{index}_1', ch)(h)
        hs.append(h)
        index += 1
      if level != levels - 1:
        name = f'input_blocks_{index}_0'
        if s.resblock_updown:
          h = res(ch, name, 'down')(h, emb)
        else:
          h = _Downsample(ch, lay, name=name)(h)
        hs.append(h)
        ds *= 2
        index += 1

    h = res(ch, 'middle_block_0')(h, emb)
    h = attn('middle_block_1', ch)(h)
    h = res(ch, 'middle_block_2')(h, emb)

    index = 0
    for level, mult in list(enumerate(s.channel_mult))[::-1]:
      for i in range(s.num_res_blocks + 1):
        ch = s.width(mult)
        h = res(ch, f'output_blocks_{index}_0')(jnp.concatenate([h, hs.pop()], axis=-1), emb)
        sub = 1
        if ds in s.attention_ds:
          h = attn(f'output_blocks_{index}_1', ch, upsample=True)(h)
          sub = 2
        if level and i == s.num_res_blocks:
          name = f'output_blocks_{index}_{sub}'
          if s.resblock_updown:
            h = res(ch, name, 'up')(h, emb)
          else:
            h = _Upsample(ch, lay, name=name)(h)
          ds //= 2
        index += 1

    h = nn.silu(lay.norm('out_0')(h))
    out = lay.conv(cfg.out_channels, ch, 'out_2', zero=True)(h).astype(jnp.float32)
    return out, out


class _Downsample(nn.Module):
  """guided_diffusion.unet.Downsample with conv_resample: 3x3 conv, stride 2, padding 1."""

  channels: int
  lay: _Layers

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return self.lay.conv(self.channels, x.shape[-1], 'op', stride=2)(x)


class _Upsample(nn.Module):
  """guided_diffusion.unet.Upsample with conv_resample: nearest 2x, then a 3x3 conv."""

  channels: int
  lay: _Layers

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return self.lay.conv(self.channels, x.shape[-1], 'conv')(_upsample(x))
