"""Building blocks shared by the RIN and the U-Net: embeddings, attention, MLP, drop-path.

Attention keeps every projection fused (one matmul for Q, K and V in self-attention, one
for K and V in cross-attention) and calls `jax.nn.dot_product_attention` on the
`[batch, length, heads, head_dim]` layout, which lets XLA skip most transposes.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Initializer = Callable[..., jax.Array]


def sinusoidal_embedding(
  x: jax.typing.ArrayLike, dim: int, max_period: float = 10_000.0
) -> jax.Array:
  """Sinusoidal features of a scalar per example, `[sin(x w_k), cos(x w_k)]`.

  Source: Vaswani et al. 2017, sec. 3.5; used on the timestep by DDPM (Ho et al. 2020,
  appendix B) and on 1000 * gamma by Chen 2023. Frequencies w_k = max_period^(-k / (half - 1)).

  Args:
    x: [B] conditioning scalars (already scaled, e.g. 1000 * gamma or a timestep index).
    dim: number of features; must be even and >= 4.
    max_period: the longest period.

  Returns:
    [B, dim] float32 features.
  """
  if dim < 4 or dim % 2:
    raise ValueError(f'dim must be even and >= 4, got {dim}.')
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 1:
    raise ValueError(f'x must have shape [B], got {x.shape}.')
  half = dim // 2
  freqs = np.exp(-np.log(max_period) * np.arange(half) / (half - 1)).astype(np.float32)
  args = x[:, None] * freqs[None, :]  # [B, half]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def sincos_2d_init(grid: int) -> Initializer:
  """Initializer of a [grid * grid, D] position table with 2-D sin-cos values.

  Half of the channels encode the row, half the column, each as sin / cos at D/4
  geometric frequencies (periods 1 ... 10000), so every token starts with a distinct,
  unit-scale position code instead of a near-zero random one.

  Source: Vaswani et al. 2017, sec. 3.5, extended to 2-D as in He et al. 2022 (MAE).
  """

  def init(key, shape, dtype=jnp.float32):
    del key
    n, dim = shape
    if n != grid * grid or dim % 4:
      raise ValueError(f'sin-cos table needs shape [{grid * grid}, 4k]; got {shape}.')
    freqs = 1.0 / 10000 ** (np.arange(dim // 4) / (dim // 4))  # [D/4]
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing='ij')
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
      angles = pos[:, None] * freqs[None, :]  # [N, D/4]
      parts += [np.sin(angles), np.cos(angles)]
    return jnp.asarray(np.concatenate(parts, axis=1), dtype)

  return init


ATTENTION_IMPLS = ('auto', 'xla', 'cudnn', 'einsum')


def attention(
  q: jax.Array, k: jax.Array, v: jax.Array, dtype: Dtype = jnp.float32, impl: str = 'auto'
) -> jax.Array:
  """Softmax attention per head on `[B, T, H, Dh]` queries and `[B, S, H, Dh]` keys/values.

  Logits and softmax run in float32 even for bfloat16 inputs. `impl`: 'auto' lets
  `jax.nn.dot_product_attention` pick (cuDNN flash attention on GPUs where eligible,
  XLA elsewhere); 'xla' / 'cudnn' force one; 'einsum' spells the two matmuls out (on
  this CPU the faster choice for a whole RIN train step, 2.2 vs 2.5 s for the small RIN at
  batch 8: benchmarks/train_step.py; forward passes alone: benchmarks/models.py).

  Source: Vaswani et al. 2017, eq. 1.
  """
  if impl == 'einsum':
    # Scaling q (T x Dh values) instead of the logits (T x S) is the same math, less work.
    q = q * np.asarray(1.0 / np.sqrt(q.shape[-1]), q.dtype)
    logits = jnp.einsum('bthd,bshd->bhts', q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum('bhts,bshd->bthd', weights, v).astype(dtype)
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}.')
  out = jax.nn.dot_product_attention(q, k, v, implementation=None if impl == 'auto' else impl)
  return out.astype(dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention with one fused QKV projection.

  Source: Vaswani et al. 2017, sec. 3.2.
  """

  num_heads: int
  attention_impl: str = 'auto'
  out_init: Initializer = nn.initializers.xavier_uniform()
  kernel_init: Initializer = nn.initializers.xavier_uniform()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    head_dim = dim // self.num_heads
    qkv = nn.DenseGeneral(
      (3, self.num_heads, head_dim),
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='qkv',
    )(x)  # [B, N, 3, H, Dh]
    out = attention(
      qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], self.dtype, self.attention_impl
    )  # [B, N, H, Dh]
    return nn.DenseGeneral(
      dim,
      axis=(-2, -1),
      kernel_init=self.out_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='out',
    )(out)  # [B, N, D]


class CrossAttention(nn.Module):
  """Multi-head cross-attention: queries from `x`, fused keys/values from `context`.

  `inner_dim` is the width of the attention (heads * head_dim); RIN uses
  min(tape_dim, latent_dim). The output is projected back to x's width.
  """

  num_heads: int
  inner_dim: int
  attention_impl: str = 'auto'
  kernel_init: Initializer = nn.initializers.xavier_uniform()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    head_dim = self.inner_dim // self.num_heads
    dense = lambda features, name, axis=-1: nn.DenseGeneral(
      features,
      axis=axis,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )
    q = dense((self.num_heads, head_dim), 'q')(x)  # [B, T, H, Dh]
    kv = dense((2, self.num_heads, head_dim), 'kv')(context)  # [B, S, 2, H, Dh]
    out = attention(q, kv[:, :, 0], kv[:, :, 1], self.dtype, self.attention_impl)  # [B, T, H, Dh]
    return dense(x.shape[-1], 'out', axis=(-2, -1))(out)  # [B, T, D]


class Mlp(nn.Module):
  """Two-layer GELU MLP with dropout on the hidden units."""

  hidden_dim: int
  dropout: float = 0.0
  kernel_init: Initializer = nn.initializers.xavier_uniform()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    dim = x.shape[-1]
    h = nn.Dense(
      self.hidden_dim,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='fc1',
    )(x)
    h = nn.gelu(h)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return nn.Dense(
      dim,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='fc2',
    )(h)


def drop_path(module: nn.Module, x: jax.Array, rate: float, deterministic: bool) -> jax.Array:
  """Stochastic depth: zeroes the whole residual branch `x` per example, rescales the rest.

  Source: Huang et al. 2016, "Deep Networks with Stochastic Depth". Uses the
  module's 'dropout' rng stream.
  """
  if deterministic or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(module.make_rng('dropout'), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


def layer_norm(name: str, dtype: Dtype, param_dtype: Dtype, **kwargs: Any) -> nn.LayerNorm:
  """LayerNorm with RIN's epsilon (1e-6)."""
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, name=name, **kwargs)
