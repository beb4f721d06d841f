"""Recurrent Interface Network (RIN): a patch "tape" read and written by a few latents.

Source: Jabri, Fleet & Chen 2022, "Scalable Adaptive Computation for Iterative
Generation" (sec. 2, Fig. 2); every layer follows the authors' reference code,
google-research/pix2seq architectures/tape.py (RIN is called "tape" there; built by
models/image_diffusion_model.py with time_on_latent = cond_on_latent = True and
xattn_enc_ln = False), with the layers of architectures/transformers.py.

Each block reads the interface X into the latents Z with cross-attention, runs K
Transformer layers on Z alone, then writes Z back into X. Almost all compute is on the
latents, so cost grows slowly with the image size.

Where this module departs from the reference, a ModelConfig option chooses and the
reference is the default: `write_kv_norm` (a LayerNorm on the write unit's keys/values),
`stem_norm` (the reference always norms the patch embeddings), `tape_pos_init='sincos'`
(the reference draws learned positions from a truncated normal, std 0.02) and
`augment_dim` (EDM's augmentation conditioning, added to the noise-level token).
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


# Keras' defaults, which every layer of the reference keeps: glorot_uniform kernels (flax's
# xavier_uniform on the same shapes), zero biases (flax's default too).
_glorot = nn.initializers.xavier_uniform()
# pix2seq transformers.py get_variable_initializer: learned latents and tape positions.
_embedding_init = nn.initializers.truncated_normal(0.02)


class TransformerLayer(nn.Module):
  """Pre-LN self-attention + MLP layer on the latents.

  z += DropPath(MHA(LN(z)));  z += DropPath(MLP(LN(z))), with dropout only on the MLP's
  hidden units: no dropout on the attention weights (drop_att = 0 in every reference
  config), the attention output or the MLP output.

  Source: pix2seq architectures/transformers.py, TransformerEncoderLayer and MLP.
  """

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
    h = layers.SelfAttention(
      self.num_heads, self.attention_impl, fans='per_projection', name='attn', **kw
    )(layers.layer_norm('ln1', **kw)(z))
    z = z + layers.drop_path(self, h, self.drop_path, self.deterministic)
    h = layers.Mlp(z.shape[-1] * self.mlp_ratio, self.dropout, name='mlp', **kw)(
      layers.layer_norm('ln2', **kw)(z), deterministic=self.deterministic
    )
    return z + layers.drop_path(self, h, self.drop_path, self.deterministic), None


def _cross_unit(
  prefix: str,
  cfg: ModelConfig,
  x: jax.Array,
  context: jax.Array,
  mlp_ratio: int,
  kv_norm: bool,
  kw: dict,
) -> jax.Array:
  """x += CrossAttn(q=LN(x), kv=context);  x += MLP(LN(x)) (no MLP when mlp_ratio = 0).

  No dropout or drop-path: the reference builds its read and write units with
  drop_path = drop_units = drop_att = 0. Call inside a compact method: the layers are
  named `{prefix}_*` in the caller's scope.

  Source: pix2seq architectures/transformers.py, TransformerDecoderLayer with
  self_attention=False (as tape.py's read and write units use it).
  """
  inner = min(cfg.tape_dim, cfg.latent_dim)
  if kv_norm:
    context = layers.layer_norm(f'{prefix}_ln_kv', **kw)(context)
  attn = layers.CrossAttention(
    cfg.read_write_heads,
    inner,
    cfg.attention_impl,
    fans='per_projection',
    name=f'{prefix}_attn',
    **kw,
  )
  x = x + attn(layers.layer_norm(f'{prefix}_ln_q', **kw)(x), context)
  if mlp_ratio:
    mlp = layers.Mlp(x.shape[-1] * mlp_ratio, name=f'{prefix}_mlp', **kw)
    x = x + mlp(layers.layer_norm(f'{prefix}_ln_mlp', **kw)(x))
  return x


def read_unit(cfg: ModelConfig, z: jax.Array, tape: jax.Array, kw: dict) -> jax.Array:
  """Latents [B, M, Dz] read the tape [B, N, Dx]; the tape is not layer-normed as keys/values.

  Source: pix2seq architectures/tape.py, read_units (use_enc_ln = xattn_enc_ln = False).
  """
  return _cross_unit('read', cfg, z, tape, cfg.latent_mlp_ratio, False, kw)


def write_unit(cfg: ModelConfig, tape: jax.Array, z: jax.Array, kw: dict) -> jax.Array:
  """The tape [B, N, Dx] reads the latents [B, M, Dz]: keys/values are the raw latents.

  `cfg.write_kv_norm` adds a LayerNorm on them (`write_ln_kv`, not the reference's).

  Source: pix2seq architectures/tape.py, write_units (use_enc_ln = xattn_enc_ln = False;
  use_mlp only when tape_mlp_ratio > 0).
  """
  return _cross_unit('write', cfg, tape, z, cfg.tape_mlp_ratio, cfg.write_kv_norm, kw)


class RINBlock(nn.Module):
  """One read -> compute -> write block.

  read:    Z += CrossAttn(q=LN(Z), kv=X);  Z += MLP(LN(Z))
  compute: K pre-LN Transformer layers on Z (the only place with dropout / drop-path)
  write:   X += CrossAttn(q=LN(X), kv=Z);  X += MLP(LN(X))

  Source: pix2seq architectures/tape.py, TapeDenoiser.compute.
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
    z = read_unit(cfg, z, x, kw)
    layer_args = (cfg.latent_heads, cfg.latent_mlp_ratio, cfg.dropout, cfg.drop_path)
    layer_args += (self.deterministic, cfg.attention_impl)
    if cfg.scan_layers:
      z, _ = _scanned(TransformerLayer, cfg.num_compute_layers)(*layer_args, name='compute', **kw)(
        z, None
      )
    else:
      for k in range(cfg.num_compute_layers):
        z, _ = TransformerLayer(*layer_args, name=f'compute_{k}', **kw)(z)
    return (z, write_unit(cfg, x, z, kw)), None


def time_features(noise_level: jax.Array, dim: int) -> jax.Array:
  """Standardised sinusoidal features of the noise level: [B] -> [B, dim].

  `noise_level` arrives scaled (the Chen objective passes 1000 * gamma, the reference's
  time_scaling = 1000 applied to gamma), so it is not rescaled here.

  Source: pix2seq architectures/transunet.py, ScalarEmbedding.call(normalize=True) with
  transformers.py positional_encoding.
  """
  return layers.standardize(layers.sinusoidal_embedding(noise_level, dim, spacing='vaswani'))


def time_embedding(cfg: ModelConfig, noise_level: jax.Array, kw: dict) -> jax.Array:
  """Noise-level token [B, Dz]: features of width Dz / 4 -> Dense -> SiLU -> Dense.

  Both Dense layers are Dz wide (the reference's dim * expansion with dim = Dz / 4,
  expansion 4) and glorot-uniform (its VarianceScaling(1, 'fan_avg', 'uniform')); no
  activation after the second (last_swish=False). Call inside a compact method.

  Source: pix2seq architectures/tape.py, TapeDenoiser.initialize_cond (time_emb with
  time_on_latent) and transunet.py ScalarEmbedding.
  """
  h = time_features(noise_level, max(4, cfg.latent_dim // 4 // 2 * 2))
  h = nn.Dense(cfg.latent_dim, kernel_init=_glorot, name='time_fc1', **kw)(h)
  return nn.Dense(cfg.latent_dim, kernel_init=_glorot, name='time_fc2', **kw)(nn.silu(h))


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

  Source: pix2seq architectures/tape.py, ImageTapeDenoiser.call: tape = LN(Conv(x)) +
  positions; latents = [learned, time token, class token] + LN_zero(MLP(prev latents));
  blocks; readout LN -> Dense -> depth-to-space.
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
    stem = nn.Conv(
      cfg.tape_dim,
      (p, p),
      strides=(p, p),
      padding='VALID',
      kernel_init=_glorot,
      name='stem',
      **kw,
    )
    tape = stem(x.astype(dtype))  # [B, H/p, W/p, D]
    tape = tape.reshape(batch, grid * grid, cfg.tape_dim)
    if cfg.stem_norm:
      tape = layers.layer_norm('stem_ln', **kw)(tape)
    pos_init = layers.sincos_2d_init(grid) if cfg.tape_pos_init == 'sincos' else _embedding_init
    tape_pos = self.param('tape_pos', pos_init, (grid * grid, cfg.tape_dim), cfg.parameter_dtype)
    tape = tape + tape_pos.astype(dtype)  # [B, N, D]

    # Conditioning tokens, appended to the learned latents in the reference's order:
    # noise level (+ augmentation, ours), then class.
    t_emb = time_embedding(cfg, noise_level, kw)
    if cfg.augment_dim:
      aug = jnp.zeros((batch, cfg.augment_dim)) if augment is None else augment
      proj = nn.Dense(
        cfg.latent_dim, use_bias=False, kernel_init=_glorot, name='augment_proj', **kw
      )
      t_emb = t_emb + proj(aug)
    cond = [t_emb[:, None]]
    if cfg.num_classes:
      lab = -jnp.ones((batch,), jnp.int32) if label is None else label
      one_hot = jax.nn.one_hot(lab, cfg.num_classes, dtype=dtype)  # -1 -> zeros (null label)
      proj = nn.Dense(cfg.latent_dim, kernel_init=_glorot, name='class_proj', **kw)
      cond.append(proj(one_hot)[:, None])

    latents = self.param(
      'latents', _embedding_init, (num_learned, cfg.latent_dim), cfg.parameter_dtype
    )
    z = jnp.concatenate(
      [jnp.broadcast_to(latents.astype(dtype), (batch,) + latents.shape)]
      + [c.astype(dtype) for c in cond],
      axis=1,
    )  # [B, M, D_z]

    # Latent self-conditioning on every latent token (conditioning tokens included):
    # z += LN_zero(prev + MLP(LN(prev))), zero-initialised so a fresh model ignores it.
    # Without previous latents (the first self-conditioning pass, the first sampling
    # step) every token's prev is 0, so the unit's output is one row: computed once on a
    # [1, 1, Dz] zero and broadcast instead of B x M times.
    if self_cond is None:
      prev = jnp.zeros((1, 1, z.shape[-1]), dtype)
    else:
      prev = jax.lax.stop_gradient(self_cond).astype(dtype)
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
    out = nn.Dense(
      p * p * cfg.out_channels,
      kernel_init=_glorot,
      dot_general=layers.flat_dot_general,
      name='out_proj',
      **kw,
    )(out)
    out = unpatchify(out, p, cfg.out_channels)  # [B, H, W, C_out]
    return out.astype(jnp.float32), z.astype(jnp.float32)
