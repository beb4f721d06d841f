"""Typed, validated network settings: the model section of the run config.

`diffusion_jax.config.build_run_config` turns `config.model` (plus the image shape and
classes of `config.data`) into this frozen dataclass and checks every value once, so the
networks never see a ConfigDict and bad settings fail with a message naming the config key.
"""

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from diffusion_jax.models.layers import ATTENTION_IMPLS

# The papers' own networks, ported exactly; each reads its reference constructor's keyword
# arguments from config.model.network_kwargs (diffusion_jax/models/<name>.py validates them).
PAPER_NETWORKS = ('ddpm_unet', 'adm_unet', 'edm_songunet', 'edm_dhariwalunet', 'ncsnv2')
MODEL_NAMES = ('rin', 'unet') + PAPER_NETWORKS
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}

# Interface tokens may be outnumbered by latents (ImageNet-64 uses 128 latents on an
# 8x8 grid of patches), but beyond this many latents per token the "latents carry the
# compute" design stops paying for itself: use a smaller patch instead.
MAX_LATENTS_PER_TOKEN = 4


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every setting the networks read. Field meanings follow configs/default.py."""

  name: str = 'rin'
  image_size: int = 16
  num_channels: int = 1
  num_classes: int = 10  # 0 = unconditional (labels are ignored).
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: bool = False
  scan_layers: bool = True  # RIN: blocks and compute layers as lax.scan (fast compiles).
  learn_variance: bool = False
  self_cond: bool = False  # U-Net: extra input channels for the previous prediction.
  augment_dim: int = 0
  dropout: float = 0.0
  attention_impl: str = 'auto'  # see layers.attention: 'auto' | 'xla' | 'cudnn' | 'einsum'.
  # RIN.
  patch_size: int = 2
  stem_norm: bool = True  # LayerNorm on the patch embeddings (see configs/default.py).
  tape_pos_init: str = 'random'  # learned tape positions start 'random' (std 0.02) or 'sincos'.
  write_kv_norm: bool = False  # LayerNorm on the write unit's keys/values (not the reference's).
  tape_dim: int = 128
  tape_mlp_ratio: int = 2  # 0 = no MLP in the write unit (as the reference allows).
  read_write_heads: int = 4
  num_latents: int = 32
  latent_dim: int = 128
  latent_heads: int = 4
  latent_mlp_ratio: int = 4
  num_blocks: int = 2
  num_compute_layers: int = 2
  drop_path: float = 0.0
  # U-Net.
  base_channels: int = 64
  channel_mults: tuple[int, ...] = (1, 2, 2)
  num_res_blocks: int = 2
  attention_resolutions: tuple[int, ...] = (16,)
  num_heads: int = 4
  scale_shift_norm: bool = False  # iDDPM/ADM: the embedding scales and shifts the norm.
  resblock_updown: bool = False  # EDM/ADM: resample inside residual blocks.
  skip_scale: float = 1.0  # EDM's DDPM++ multiplies residual sums by sqrt(1/2).
  # A paper's network: its reference constructor's keyword arguments, frozen (see `kwargs`).
  network_kwargs: tuple[tuple[str, Any], ...] = ()

  @property
  def kwargs(self) -> dict[str, Any]:
    """`network_kwargs` as a plain dict (nested sections as dicts, sequences as tuples)."""
    return thaw_kwargs(self.network_kwargs)

  @property
  def out_channels(self) -> int:
    """Channels of the prediction: the image's, doubled for iDDPM's learned variance."""
    return self.num_channels * (2 if self.learn_variance else 1)

  @property
  def num_tokens(self) -> int:
    """RIN interface tokens: (H / p) * (W / p)."""
    return (self.image_size // self.patch_size) ** 2

  @property
  def num_cond_tokens(self) -> int:
    """RIN latent slots taken by conditioning: the noise level, plus the class if any."""
    return 1 + (1 if self.num_classes > 0 else 0)

  @property
  def compute_dtype(self) -> Any:
    return DTYPES[self.dtype]

  @property
  def parameter_dtype(self) -> Any:
    return DTYPES[self.param_dtype]

  @classmethod
  def from_config(cls, model_cfg: Any, data_cfg: Any) -> 'ModelConfig':
    """Builds and validates from `config.model` and `config.data` (ConfigDicts or dicts).

    The run config's model-section builder (`diffusion_jax.config.build_model_config`):
    unknown keys are rejected, `model.class_conditional=False` gives num_classes = 0.

    Raises:
      ValueError: naming the offending config key, its valid range and the fix.
    """
    from diffusion_jax import config as config_lib  # the boundary owns the key checks

    return config_lib.build_model_config(model_cfg, data_cfg)

  @classmethod
  def from_values(cls, values: dict[str, Any]) -> 'ModelConfig':
    """Builds and validates from field values (sequences become tuples)."""
    values = dict(values)
    for key in ('channel_mults', 'attention_resolutions'):
      if key in values:
        values[key] = tuple(int(v) for v in values[key])
    if 'network_kwargs' in values:
      values['network_kwargs'] = freeze_kwargs(values['network_kwargs'])
    config = cls(**values)
    config.validate()
    return config

  def validate(self) -> None:
    """Checks every value; raises ValueError naming the config key and the fix."""
    if self.name not in MODEL_NAMES:
      raise ValueError(
        f'config.model.name={self.name!r} is not a known network; valid names: {MODEL_NAMES}.'
      )
    for key in ('dtype', 'param_dtype'):
      if getattr(self, key) not in DTYPES:
        raise ValueError(
          f'config.model.{key}={getattr(self, key)!r} is not supported; use one of {tuple(DTYPES)}.'
        )
    if self.tape_pos_init not in ('random', 'sincos'):
      raise ValueError(
        f"config.model.tape_pos_init={self.tape_pos_init!r} must be 'random' or 'sincos'."
      )
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
        f'config.model.attention_impl={self.attention_impl!r} is not supported; use one of '
        f'{ATTENTION_IMPLS}.'
      )
    _positive('config.data.image_size', self.image_size)
    _positive('config.data.num_channels', self.num_channels)
    if self.num_classes < 0:
      raise ValueError(f'config.data.num_classes must be >= 0, got {self.num_classes}.')
    if self.augment_dim < 0:
      raise ValueError(f'config.model.augment_dim must be >= 0, got {self.augment_dim}.')
    for key in ('dropout', 'drop_path'):
      value = getattr(self, key)
      if not 0.0 <= value < 1.0:
        raise ValueError(f'config.model.{key} must lie in [0, 1), got {value}.')
    if self.name in PAPER_NETWORKS:
      return  # the network's module checks its reference keyword arguments.
    if self.network_kwargs:
      raise ValueError(
        f"config.model.network_kwargs is only read by the papers' networks {PAPER_NETWORKS}; "
        f'config.model.name={self.name!r} takes its settings from config.model directly.'
      )
    if self.name == 'rin':
      self._validate_rin()
    else:
      self._validate_unet()

  def _validate_rin(self) -> None:
    size, patch = self.image_size, self.patch_size
    _positive('config.model.patch_size', patch)
    if size % patch:
      valid = [p for p in range(1, size + 1) if size % p == 0]
      raise ValueError(
        f'config.model.patch_size={patch} does not divide config.data.image_size={size}; '
        f'valid patch sizes: {valid}.'
      )
    for key in ('tape_dim', 'latent_dim', 'num_blocks', 'num_compute_layers'):
      _positive(f'config.model.{key}', getattr(self, key))
    _positive('config.model.latent_mlp_ratio', self.latent_mlp_ratio)
    if self.tape_mlp_ratio < 0:
      raise ValueError(
        f'config.model.tape_mlp_ratio must be >= 0 (0 = no write MLP), got {self.tape_mlp_ratio}.'
      )
    inner = min(self.tape_dim, self.latent_dim)
    _divides(
      'config.model.read_write_heads', self.read_write_heads, 'min(tape_dim, latent_dim)', inner
    )
    _divides(
      'config.model.latent_heads', self.latent_heads, 'config.model.latent_dim', self.latent_dim
    )
    low = self.num_cond_tokens + 1
    high = MAX_LATENTS_PER_TOKEN * self.num_tokens
    if not low <= self.num_latents <= high:
      raise ValueError(
        f'config.model.num_latents={self.num_latents} is out of range [{low}, {high}]: it '
        f'counts the {self.num_cond_tokens} conditioning token(s) plus at least one learned '
        f'latent, and may be at most {MAX_LATENTS_PER_TOKEN} x the {self.num_tokens} patches '
        f'of a {self.image_size}px image at config.model.patch_size={self.patch_size}. Use '
        'fewer latents or a smaller patch size.'
      )

  def _validate_unet(self) -> None:
    for key in ('base_channels', 'num_res_blocks', 'num_heads'):
      _positive(f'config.model.{key}', getattr(self, key))
    if not self.channel_mults or min(self.channel_mults) < 1:
      raise ValueError(
        f'config.model.channel_mults={self.channel_mults} must be a non-empty tuple of '
        'positive ints.'
      )
    factor = 2 ** (len(self.channel_mults) - 1)
    if self.image_size % factor:
      raise ValueError(
        f'config.data.image_size={self.image_size} must be divisible by 2^(levels - 1) = '
        f'{factor} for config.model.channel_mults={self.channel_mults}.'
      )
    resolutions = [self.image_size // 2**i for i in range(len(self.channel_mults))]
    bad = [r for r in self.attention_resolutions if r not in resolutions]
    if bad:
      raise ValueError(
        f'config.model.attention_resolutions has {bad}, which the U-Net never reaches; '
        f'valid resolutions: {resolutions}.'
      )
    for mult in self.channel_mults:
      _divides(
        'config.model.num_heads', self.num_heads, 'every level width', self.base_channels * mult
      )
    if self.skip_scale <= 0:
      raise ValueError(f'config.model.skip_scale must be > 0, got {self.skip_scale}.')


def freeze_kwargs(values: Any) -> tuple[tuple[str, Any], ...]:
  """A hashable, sorted (key, value) tuple of a mapping; nested mappings frozen the same way."""
  if isinstance(values, tuple):
    return values
  items = dict(values.items()) if hasattr(values, 'items') else dict(values)

  def freeze(v: Any) -> Any:
    if hasattr(v, 'items'):
      return ('__mapping__', freeze_kwargs(v))
    if isinstance(v, (list, tuple)):
      return tuple(freeze(x) for x in v)
    return v

  return tuple(sorted((str(k), freeze(v)) for k, v in items.items()))


def thaw_kwargs(frozen: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
  """The inverse of `freeze_kwargs`: plain dicts, sequences as tuples."""

  def thaw(v: Any) -> Any:
    if isinstance(v, tuple) and len(v) == 2 and v[0] == '__mapping__':
      return thaw_kwargs(v[1])
    if isinstance(v, tuple):
      return tuple(thaw(x) for x in v)
    return v

  return {k: thaw(v) for k, v in frozen}


def group_norm_groups(channels: int) -> int:
  """GroupNorm groups: 32 as in DDPM/ADM, fewer for narrow (test-size) layers."""
  return math.gcd(32, channels)


def _positive(key: str, value: int) -> None:
  if value < 1:
    raise ValueError(f'{key} must be a positive integer, got {value}.')


def _divides(key: str, value: int, other_key: str, other: int) -> None:
  _positive(key, value)
  if other % value:
    raise ValueError(f'{key}={value} must divide {other_key}={other}.')
