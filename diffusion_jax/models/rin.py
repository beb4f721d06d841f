"""Recurrent Interface Network (RIN): a patch "tape" read and written by a few latents.

Source: Jabri, Fleet & Chen 2022, "Scalable Adaptive Computation for Iterative
Generation" (sec. 2, Fig. 2); conditioning, self-conditioning and layout details follow
the authors' reference code as summarised in RIN_CONFIGS.md.

Each block reads the interface X into the latents Z with cross-attention, runs K
Transformer layers on Z alone, then writes Z back into X. Almost all compute is on the
latents, so cost grows slowly with the image size.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models import layers
from diffusion_jax.models.config import ModelConfig


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
  """Cuts images into non-overlapping patches: [B, H, W, C] -> [B, (H/p)(W/p), p*p*C].

  Patches are in row-major order; each patch vector is ordered (dy, dx, c), the order in
  which a Conv kernel of shape [p, p, C, D] flattens.
  """
  b, h, w, c = x.shape
  p = patch_size
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: jax.Array, patch_size: int, channels: int) -> jax.Array:
  """Depth-to-space, the inverse of `patchify`: [B, N, p*p*C] -> [B, H, W, C] (square)."""
  b, n, _ = tokens.shape
  p = patch_size
  grid = int(round(n**0.5))
  x = tokens.reshape(b, grid, grid, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid * p, grid * p, channels)


class TransformerLayer(nn.Module):
  """Pre-LN self-attention + MLP layer on the latents, with dropout and drop-path."""

  num_heads: int
  mlp_ratio: int
  dropout: float
  drop_path: float
  deterministic: bool
  attention_impl: str = 'auto'
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, _: None = None) -> tuple[jax.Array, None]:
    """Maps latents [B, M, D] to latents; (carry, None) in and out so it can be scanned."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.SelfAttention(self.num_heads, self.attention_impl, name='attn', **kw)(
      layers.layer_norm('ln1', **kw)(z)
    )
    h = nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
    z = z + layers.drop_path(self, h, self.drop_path, self.deterministic)
    h = layers.Mlp(z.shape[-1] * self.mlp_ratio, self.dropout, name='mlp', **kw)(
      layers.layer_norm('ln2', **kw)(z), deterministic=self.deterministic
    )
    h = nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
    return z + layers.drop_path(self, h, self.drop_path, self.deterministic), None


class RINBlock(nn.Module):
  """One read -> compute -> write block.

  read:    Z += CrossAttn(q=LN(Z), kv=X);  Z += MLP(LN(Z))
  compute: K pre-LN Transformer layers on Z (the only place with dropout / drop-path)
  write:   X += CrossAttn(q=LN(X), kv=LN(Z));  X += MLP(LN(X))
  """

  config: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(
    self, carry: tuple[jax.Array, jax.Array], _: None = None
  ) -> tuple[tuple[jax.Array, jax.Array], None]:
    """Maps (latents [B, M, Dz], tape [B, N, Dx]) to the same; scannable like the layers."""
    z, x = carry
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.parameter_dtype)
    inner = min(cfg.tape_dim, cfg.latent_dim)
    impl = cfg.attention_impl
    # Read: the tape is not layer-normed as keys/values (as in the reference code).
    z = z + layers.CrossAttention(cfg.read_write_heads, inner, impl, name='read_attn', **kw)(
      layers.layer_norm('read_ln_q', **kw)(z), x
    )
    z = z + layers.Mlp(cfg.latent_dim * cfg.latent_mlp_ratio, name='read_mlp', **kw)(
      layers.layer_norm('read_ln_mlp', **kw)(z)
    )
    layer_args = (cfg.latent_heads, cfg.latent_mlp_ratio, cfg.dropout, cfg.drop_path)
    layer_args += (self.deterministic, impl)
    if cfg.scan_layers:
      z, _ = _scanned(TransformerLayer, cfg.num_compute_layers)(*layer_args, name='compute', **kw)(
        z, None
      )
    else:
      for k in range(cfg.num_compute_layers):
        z, _ = TransformerLayer(*layer_args, name=f'compute_{k}', **kw)(z)
    x = x + layers.CrossAttention(cfg.read_write_heads, inner, impl, name='write_attn', **kw)(
      layers.layer_norm('write_ln_q', **kw)(x), layers.layer_norm('write_ln_kv', **kw)(z)
    )
    x = x + layers.Mlp(cfg.tape_dim * cfg.tape_mlp_ratio, name='write_mlp', **kw)(
      layers.layer_norm('write_ln_mlp', **kw)(x)
    )
    return (z, x), None


def _scanned(module_cls: type[nn.Module], length: int) -> type[nn.Module]:
  """`length` copies of a layer as one lax.scan: parameters stacked on a leading axis.

  One compiled body instead of `length` unrolled copies keeps compile time flat in depth.
  """
  return nn.scan(
    module_cls,
    variable_axes={'params': 0},
    split_rngs={'params': True, 'dropout': True},
    length=length,
  )


class RIN(nn.Module):
  """The RIN denoiser: images + noise level (+ class, + previous latents) -> prediction.

  Returns `(prediction [B, H, W, C_out], latents [B, M, D_z])`; the latents are the
  latent self-conditioning carry for the next call.
  """

  config: ModelConfig

  @nn.compact
  def __call__(
    self,
    x: jax.Array,  # [B, H, W, C]
    noise_level: jax.Array,  # [B]
    label: jax.Array | None = None,  # [B] int, -1 = null
    self_cond: jax.Array | None = None,  # [B, M, D_z]
    augment: jax.Array | None = None,  # [B, A]
    train: bool = False,
  ) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    dtype = cfg.compute_dtype
    kw = dict(dtype=dtype, param_dtype=cfg.parameter_dtype)
    batch, p = x.shape[0], cfg.patch_size
    grid = cfg.image_size // p
    num_learned = cfg.num_latents - cfg.num_cond_tokens

    # Interface ("tape"): patchify, LN (optional), + learned position embedding.
    tape = nn.Conv(cfg.tape_dim, (p, p), strides=(p, p), padding='VALID', name='stem', **kw)(
      x.astype(dtype)
    )  # [B, H/p, W/p, D]
    tape = tape.reshape(batch, grid * grid, cfg.tape_dim)
    if cfg.stem_norm:
      tape = layers.layer_norm('stem_ln', **kw)(tape)
    pos_init = (
      layers.sincos_2d_init(grid)
      if cfg.tape_pos_init == 'sincos'
      else nn.initializers.truncated_normal(0.02)
    )
    tape_pos = self.param(
      'tape_pos',
      pos_init,
      (grid * grid, cfg.tape_dim),
      cfg.parameter_dtype,
    )
    tape = tape + tape_pos.astype(dtype)  # [B, N, D]

    # Conditioning tokens: noise level, (augmentation), class.
    t_emb = layers.sinusoidal_embedding(noise_level, max(4, cfg.latent_dim // 4 // 2 * 2))
    t_emb = nn.Dense(cfg.latent_dim, name='time_fc1', **kw)(t_emb)
    t_emb = nn.Dense(cfg.latent_dim, name='time_fc2', **kw)(nn.silu(t_emb))
    if cfg.augment_dim:
      aug = jnp.zeros((batch, cfg.augment_dim)) if augment is None else augment
      t_emb = t_emb + nn.Dense(cfg.latent_dim, use_bias=False, name='augment_proj', **kw)(aug)
    cond = [t_emb[:, None]]
    if cfg.num_classes:
      lab = -jnp.ones((batch,), jnp.int32) if label is None else label
      one_hot = jax.nn.one_hot(lab, cfg.num_classes, dtype=dtype)  # -1 -> zeros (null label)
      cond.append(nn.Dense(cfg.latent_dim, name='class_proj', **kw)(one_hot)[:, None])

    latents = self.param(
      'latents',
      nn.initializers.truncated_normal(0.02),
      (num_learned, cfg.latent_dim),
      cfg.parameter_dtype,
    )
    z = jnp.concatenate(
      [jnp.broadcast_to(latents.astype(dtype), (batch,) + latents.shape)]
      + [c.astype(dtype) for c in cond],
      axis=1,
    )  # [B, M, D_z]

    # Latent self-conditioning, zero-initialised so a fresh model ignores it.
    prev = jnp.zeros(z.shape, jnp.float32) if self_cond is None else self_cond
    prev = jax.lax.stop_gradient(prev).astype(dtype)
    h = prev + layers.Mlp(cfg.latent_dim * cfg.latent_mlp_ratio, name='self_cond_mlp', **kw)(
      layers.layer_norm('self_cond_ln_in', **kw)(prev)
    )
    z = z + layers.layer_norm('self_cond_ln_out', scale_init=nn.initializers.zeros, **kw)(h)

    block_cls = nn.remat(RINBlock, prevent_cse=not cfg.scan_layers) if cfg.remat else RINBlock
    if cfg.scan_layers:
      blocks = _scanned(block_cls, cfg.num_blocks)(cfg, not train, name='blocks')
      (z, tape), _ = blocks((z, tape), None)
    else:
      for i in range(cfg.num_blocks):
        (z, tape), _ = block_cls(cfg, not train, name=f'block_{i}')((z, tape))

    # Readout: LN -> Dense(p * p * C_out) -> depth-to-space.
    out = layers.layer_norm('out_ln', **kw)(tape)
    out = nn.Dense(p * p * cfg.out_channels, name='out_proj', **kw)(out)  # [B, N, p*p*C]
    out = unpatchify(out, p, cfg.out_channels)  # [B, H, W, C_out]
    return out.astype(jnp.float32), z.astype(jnp.float32)
