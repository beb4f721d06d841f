"""Denoising networks behind one interface, chosen by `config.model.name`.

    model_cfg = ModelConfig.from_config(config.model, config.data)
    model = create_model(model_cfg)
    params = model.init(rng, x, noise_level, label)
    prediction, carry = model.apply(params, x, noise_level, label, self_cond=carry)

`noise_level` [B] is the conditioning scalar already scaled by the objective (Chen:
1000 * gamma, DDPM/iDDPM: timestep index, EDM: 250 ln(sigma), NCSN: 0). `carry` is the
self-conditioning input of the next call (RIN: final latents; U-Net: the prediction).
"""

import dataclasses
import importlib
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.config import MODEL_NAMES, ModelConfig
from diffusion_jax.models.rin import RIN
from diffusion_jax.models.unet import UNet

__all__ = ['MODEL_NAMES', 'Model', 'ModelConfig', 'count_params', 'create_model', 'network_class']

_REGISTRY: dict[str, type[nn.Module]] = {'rin': RIN, 'unet': UNet}
# The papers' networks, imported on first use: 'module:Class' under diffusion_jax.models.
_PAPER_REGISTRY = {
  'ddpm_unet': 'ddpm_unet:DDPMUNet',  # DDPM as diffusers' UNet2DModel.
  'adm_unet': 'adm_unet:ADMUNet',  # improved / guided-diffusion's UNetModel.
  'edm_songunet': 'edm_networks:SongUNet',  # EDM's DDPM++ / NCSN++.
  'edm_dhariwalunet': 'edm_networks:DhariwalUNet',  # EDM's ADM.
  'ncsnv2': 'ncsnv2:NCSNv2',  # NCSNv2's RefineNet (and its Deeper / Deepest variants).
}


def network_class(name: str) -> type[nn.Module]:
  """The Flax module class registered as `config.model.name = name`."""
  if name in _REGISTRY:
    return _REGISTRY[name]
  if name not in _PAPER_REGISTRY:
    raise ValueError(
      f'config.model.name={name!r} is not registered; valid names: '
      f'{tuple(_REGISTRY) + tuple(_PAPER_REGISTRY)}.'
    )
  module, cls = _PAPER_REGISTRY[name].split(':')
  return getattr(importlib.import_module(f'diffusion_jax.models.{module}'), cls)


@dataclasses.dataclass(frozen=True)
class Model:
  """A network as two pure functions over a plain params pytree (`{'params': ...}`)."""

  config: ModelConfig
  module: nn.Module

  def _check_inputs(self, x: jax.Array, noise_level: jax.Array) -> None:
    cfg = self.config
    expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
      raise ValueError(
        f'x must have shape [B, {expected[0]}, {expected[1]}, {expected[2]}] (from '
        f'config.data), got {tuple(x.shape)}.'
      )
    if jnp.shape(noise_level) != (x.shape[0],):
      raise ValueError(
        f'noise_level must have shape [B] = ({x.shape[0]},), got {jnp.shape(noise_level)}.'
      )

  def init(
    self,
    rng: jax.Array,
    x: jax.Array,
    noise_level: jax.Array,
    label: jax.Array | None = None,
  ) -> dict[str, Any]:
    """Initial parameters `{'params': ...}` for inputs shaped like `x` [B, H, W, C]."""
    self._check_inputs(x, noise_level)
    return self.module.init({'params': rng}, x, noise_level, label, None, None, False)

  def apply(
    self,
    params: dict[str, Any],
    x: jax.Array,
    noise_level: jax.Array,
    label: jax.Array | None = None,
    self_cond: jax.Array | None = None,
    augment: jax.Array | None = None,
    train: bool = False,
    rng: jax.Array | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    """Runs the network: `(prediction [B, H, W, C_out], carry)`.

    `train=True` enables dropout / drop-path and needs `rng`.
    """
    self._check_inputs(x, noise_level)
    carry_shape = self.carry_shape(x.shape[0])
    if self_cond is not None and tuple(self_cond.shape) != carry_shape:
      raise ValueError(
        f'self_cond must have the carry shape {carry_shape} (what apply returned), '
        f'got {tuple(self_cond.shape)}.'
      )
    if augment is not None and tuple(augment.shape) != (x.shape[0], self.config.augment_dim):
      raise ValueError(
        f'augment must have shape [B, config.model.augment_dim] = '
        f'({x.shape[0]}, {self.config.augment_dim}), got {tuple(augment.shape)}.'
      )
    rngs = {}
    if train:
      if rng is None:
        raise ValueError('apply(train=True) needs rng (a jax.random key for dropout).')
      rngs = {'dropout': rng}
    return self.module.apply(params, x, noise_level, label, self_cond, augment, train, rngs=rngs)

  def carry_shape(self, batch_size: int) -> tuple[int, ...]:
    """Shape of the self-conditioning carry for a batch (its dtype is float32)."""
    cfg = self.config
    if cfg.name == 'rin':
      return (batch_size, cfg.num_latents, cfg.latent_dim)
    return (batch_size, cfg.image_size, cfg.image_size, cfg.out_channels)

  def param_shapes(self, batch_size: int = 1) -> Any:
    """Parameter ShapeDtypeStructs, computed without allocating (jax.eval_shape)."""
    cfg = self.config
    x = jax.ShapeDtypeStruct(
      (batch_size, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32
    )
    t = jax.ShapeDtypeStruct((batch_size,), jnp.float32)
    label = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    return jax.eval_shape(lambda r, x, t, y: self.init(r, x, t, y), jax.random.key(0), x, t, label)


def count_params(params: Any) -> int:
  """Total number of scalars in a params pytree (arrays or ShapeDtypeStructs)."""
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def create_model(model_cfg: ModelConfig) -> Model:
  """Builds the network named by `model_cfg.name` (MODEL_NAMES)."""
  if not isinstance(model_cfg, ModelConfig):
    raise ValueError(
      'create_model takes a ModelConfig; build one with '
      'ModelConfig.from_config(config.model, config.data).'
    )
  return Model(model_cfg, network_class(model_cfg.name)(model_cfg))
