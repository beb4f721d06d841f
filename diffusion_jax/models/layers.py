"""Building blocks shared by the RIN and the U-Net: embeddings, attention, MLP, drop-path.

Attention keeps every projection fused (one matmul for Q, K and V in self-attention, one
for K and V in cross-attention) and calls `jax.nn.dot_product_attention` on the
`[batch, length, heads, head_dim]` layout, which lets XLA skip most transposes. Fusing is
a storage choice only: with `fans='per_projection'` each fused slice is initialised as
the separate Keras MultiHeadAttention kernel it stands for.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Initializer = Callable[..., jax.Array]


FREQUENCY_SPACINGS = ('ddpm', 'vaswani')


def sinusoidal_embedding(
  x: jax.typing.ArrayLike, dim: int, max_period: float = 10_000.0, spacing: str = 'ddpm'
) -> jax.Array:
  """Sinusoidal features of a scalar per example, `[sin(x w_k), cos(x w_k)]`, k < dim / 2.

  Source: Vaswani et al. 2017, sec. 3.5. `spacing` picks the frequencies w_k:
  'ddpm': max_period^(-k / (half - 1)), so the lowest frequency is exactly 1 / max_period
  (DDPM's get_timestep_embedding, Ho et al. 2020, appendix B; the U-Net's features);
  'vaswani': max_period^(-k / half), the paper's 10000^(-2i / d) (pix2seq
  architectures/transformers.py positional_encoding, which RIN's noise-level embedding
  uses: Chen 2023 conditions on 1000 * gamma).

  Args:
    x: [B] conditioning scalars (already scaled, e.g. 1000 * gamma or a timestep index).
    dim: number of features; must be even and >= 4.
    max_period: the longest period.
    spacing: 'ddpm' or 'vaswani' (see above).

  Returns:
    [B, dim] float32 features.
  """
  if dim < 4 or dim % 2:
    raise ValueError(f'dim must be even and >= 4, got {dim}.')
  if spacing not in FREQUENCY_SPACINGS:
    raise ValueError(f'spacing must be one of {FREQUENCY_SPACINGS}, got {spacing!r}.')
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 1:
    raise ValueError(f'x must have shape [B], got {x.shape}.')
  half = dim // 2
  steps = half - 1 if spacing == 'ddpm' else half
  freqs = np.exp(-np.log(max_period) * np.arange(half) / steps).astype(np.float32)
  args = x[:, None] * freqs[None, :]  # [B, half]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def standardize(x: jax.Array, axis: int = -1) -> jax.Array:
  """(x - mean) / std along `axis`, population std and no epsilon.

  Source: pix2seq architectures/transunet.py, ScalarEmbedding.call(normalize=True):
  RIN standardises each example's noise-level features before its Dense layers.
  Sinusoidal features never have zero spread (sin^2 + cos^2 = 1 per pair), so no
  epsilon is needed.
  """
  mean = jnp.mean(x, axis=axis, keepdims=True)
  return (x - mean) / jnp.std(x, axis=axis, keepdims=True)


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


def flat_dot_general(
  lhs: jax.Array,
  rhs: jax.Array,
  dimension_numbers: Any,
  precision: Any = None,
  preferred_element_type: Any = None,
) -> jax.Array:
  """`lax.dot_general` of a Dense layer as one 2-D matmul: [..., K...] x [K..., N...].

  A Dense layer on [B, N, D] tokens contracts D; its kernel gradient then contracts
  both B and N, a two-axis contraction that XLA's CPU backend feeds to its matmul
  through a transposed copy of the (large) output gradient. Folding the leading axes
  into one ([B N, D] @ [D, F]) keeps every matmul of the forward and backward pass a
  plain 2-D one: the same products and sums (the kernel gradient may add its B N terms
  in another order), no copies. Falls back to `lax.dot_general` for any other layout.
  """
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  n_in = len(lhs_contract)
  lhs_trailing = tuple(lhs_contract) == tuple(range(lhs.ndim - n_in, lhs.ndim))
  if lhs_batch or rhs_batch or not lhs_trailing or tuple(rhs_contract) != tuple(range(n_in)):
    return jax.lax.dot_general(
      lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type
    )
  lead, out = lhs.shape[: lhs.ndim - n_in], rhs.shape[n_in:]
  k = int(np.prod(rhs.shape[:n_in]))
  flat = jax.lax.dot_general(
    lhs.reshape(-1, k),
    rhs.reshape(k, -1),
    (((1,), (0,)), ((), ())),
    precision,
    preferred_element_type=preferred_element_type,
  )
  return flat.reshape(lead + out)


ATTENTION_IMPLS = ('auto', 'xla', 'cudnn', 'einsum')


def attention(
  q: jax.Array, k: jax.Array, v: jax.Array, dtype: Dtype = jnp.float32, impl: str = 'auto'
) -> jax.Array:
  """Softmax attention per head on `[B, T, H, Dh]` queries and `[B, S, H, Dh]` keys/values.

  Logits and softmax run in float32 even for bfloat16 inputs. `impl`: 'auto' lets
  `jax.nn.dot_product_attention` pick (cuDNN flash attention on GPUs where eligible,
  XLA elsewhere); 'xla' / 'cudnn' force one; 'einsum' spells the two matmuls out on
  heads-major copies (on CPU the faster choice for a whole RIN train step:
  benchmarks/train_step.py; forward passes alone: benchmarks/models.py).

  Source: Vaswani et al. 2017, eq. 1.
  """
  if impl == 'einsum':
    # Scaling q (T x Dh values) instead of the logits (T x S) is the same math, less work.
    q = q * np.asarray(1.0 / np.sqrt(q.shape[-1]), q.dtype)
    # Heads-major copies make both products plain batched matmuls over (B, H); einsums
    # on the [B, T, H, Dh] layout itself ran the forward products 4x slower on CPU.
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    logits = jnp.einsum('bhtd,bhsd->bhts', q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum('bhts,bhsd->bhtd', weights, v).transpose(0, 2, 1, 3).astype(dtype)
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}.')
  out = jax.nn.dot_product_attention(q, k, v, implementation=None if impl == 'auto' else impl)
  return out.astype(dtype)


ATTENTION_FANS = ('flat', 'per_projection')


def projection_init(
  init: Initializer, shape: tuple[int, ...], copies: int | None = None
) -> Initializer:
  """A DenseGeneral kernel_init that draws each projection on its own unflattened shape.

  `nn.DenseGeneral` hands its kernel_init the kernel flattened to 2-D, so a fused
  [D, 3, H, Dh] QKV kernel gets the fans of one [D, 3 H Dh] matrix. This wrapper ignores
  that shape: it draws `init` on `shape` (e.g. [D, H, Dh]) — `copies` times, stacked on
  axis 1, for fused K/V or Q/K/V — so every slice has exactly the distribution of a
  separate kernel of that shape.
  """

  def wrapped(key: jax.Array, flat_shape: tuple[int, ...], dtype: Dtype = jnp.float32):
    if copies is None:
      kernel = init(key, shape, dtype)
    else:
      keys = jax.random.split(key, copies)
      kernel = jnp.stack([init(k, shape, dtype) for k in keys], axis=1)
    return kernel.reshape(flat_shape)

  return wrapped


def _attention_inits(
  fans: str,
  kernel_init: Initializer,
  out_init: Initializer,
  in_dims: tuple[tuple[int, ...], ...],
  out_dim: int,
  heads: int,
  head_dim: int,
) -> tuple[list[Initializer], Initializer]:
  """Input-projection inits (one per entry of `in_dims`) and the output projection's.

  'flat': the initializers as given, on DenseGeneral's flattened kernels. 'per_projection':
  Keras MultiHeadAttention's kernels, [D_in, H, Dh] for q, k and v and [H, Dh, D_out]
  for the output; jax's variance-scaling fans on these shapes (receptive field = all
  axes but the last two) are Keras' `_compute_fans`. Each entry of `in_dims` is
  (width,) for one projection or (width, copies) for a fused one.
  """
  if fans not in ATTENTION_FANS:
    raise ValueError(f'attention fans must be one of {ATTENTION_FANS}, got {fans!r}.')
  if fans == 'flat':
    return [kernel_init] * len(in_dims), out_init
  ins = [
    projection_init(kernel_init, (d[0], heads, head_dim), d[1] if len(d) > 1 else None)
    for d in in_dims
  ]
  return ins, projection_init(out_init, (heads, head_dim, out_dim))


class SelfAttention(nn.Module):
  """Multi-head self-attention with one fused QKV projection.

  `fans`: 'flat' (the U-Net's, the initializers see the fused kernel as one matrix) or
  'per_projection' (RIN's: each of q, k, v and the output is initialised as the separate
  3-D kernel Keras MultiHeadAttention builds; see `_attention_inits`).

  Source: Vaswani et al. 2017, sec. 3.2; pix2seq architectures/transformers.py
  (tf.keras.layers.MultiHeadAttention in TransformerEncoderLayer).
  """

  num_heads: int
  attention_impl: str = 'auto'
  out_init: Initializer = nn.initializers.xavier_uniform()
  kernel_init: Initializer = nn.initializers.xavier_uniform()
  fans: str = 'flat'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    head_dim = dim // self.num_heads
    (qkv_init,), out_init = _attention_inits(
      self.fans, self.kernel_init, self.out_init, ((dim, 3),), dim, self.num_heads, head_dim
    )
    qkv = nn.DenseGeneral(
      (3, self.num_heads, head_dim),
      kernel_init=qkv_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      dot_general=flat_dot_general,
      name='qkv',
    )(x)  # [B, N, 3, H, Dh]
    out = attention(
      qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], self.dtype, self.attention_impl
    )  # [B, N, H, Dh]
    return nn.DenseGeneral(
      dim,
      axis=(-2, -1),
      kernel_init=out_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      dot_general=flat_dot_general,
      name='out',
    )(out)  # [B, N, D]


class CrossAttention(nn.Module):
  """Multi-head cross-attention: queries from `x`, fused keys/values from `context`.

  `inner_dim` is the width of the attention (heads * head_dim); RIN uses
  min(tape_dim, latent_dim). The output is projected back to x's width. `fans` as in
  `SelfAttention`. Neither input is normalised here: callers pass LN(x) and whatever
  keys/values their reference uses.

  Source: Vaswani et al. 2017, sec. 3.2; pix2seq architectures/transformers.py
  (TransformerDecoderLayer's cross_mha).
  """

  num_heads: int
  inner_dim: int
  attention_impl: str = 'auto'
  kernel_init: Initializer = nn.initializers.xavier_uniform()
  fans: str = 'flat'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    head_dim = self.inner_dim // self.num_heads
    dim = x.shape[-1]
    (q_init, kv_init), out_init = _attention_inits(
      self.fans,
      self.kernel_init,
      self.kernel_init,
      ((dim,), (context.shape[-1], 2)),
      dim,
      self.num_heads,
      head_dim,
    )
    dense = lambda features, name, init, axis=-1: nn.DenseGeneral(
      features,
      axis=axis,
      kernel_init=init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      dot_general=flat_dot_general,
      name=name,
    )
    q = dense((self.num_heads, head_dim), 'q', q_init)(x)  # [B, T, H, Dh]
    kv = dense((2, self.num_heads, head_dim), 'kv', kv_init)(context)  # [B, S, 2, H, Dh]
    out = attention(q, kv[:, :, 0], kv[:, :, 1], self.dtype, self.attention_impl)  # [B, T, H, Dh]
    return dense(dim, 'out', out_init, axis=(-2, -1))(out)  # [B, T, D]


def gelu_exact(x: jax.Array) -> jax.Array:
  """The exact GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 (Hendrycks & Gimpel 2016, eq. 1).

  The same function as `jax.nn.gelu(x, approximate=False)`, which writes it with erfc;
  XLA's float32 erf is a single rational polynomial and erfc is not, so this form costs
  about half as much on CPU (benchmarks/train_step.py). The two differ by float32 rounding
  only (about 1 ulp of |x|; tests/test_layers.py checks both against a float64 GELU).
  """
  half = jnp.asarray(0.5, x.dtype)
  return half * x * (1 + jax.lax.erf(x * jnp.asarray(1 / np.sqrt(2), x.dtype)))


class Mlp(nn.Module):
  """Two-layer GELU MLP with dropout on the hidden units (not on its output).

  `approximate_gelu=False` (default) is the exact erf GELU of tf.nn.gelu, which the
  reference's Dense(activation=tf.nn.gelu) uses (`gelu_exact`); True is flax's tanh
  approximation.

  Source: pix2seq architectures/transformers.py, FeedForwardLayer
  (dense1 -> gelu -> dropout -> dense2).
  """

  hidden_dim: int
  dropout: float = 0.0
  kernel_init: Initializer = nn.initializers.xavier_uniform()
  approximate_gelu: bool = False
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
      dot_general=flat_dot_general,
      name='fc1',
    )(x)
    h = nn.gelu(h, approximate=True) if self.approximate_gelu else gelu_exact(h)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return nn.Dense(
      dim,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      dot_general=flat_dot_general,
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
  """LayerNorm with RIN's epsilon (1e-6, every LayerNormalization in pix2seq's tape.py)."""
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, name=name, **kwargs)
