"""Per-example random draws: each example's noise, level and coins come from its own key.

A loss takes `rng` as one key or as a batch of per-example keys [B] (typed keys of
shape [B], or raw uint32 keys [B, 2]). One key is split into B keys here; a batch
passes through. Every draw folds a fixed stream number into each example's key and
draws from it alone (vmap), so an example's draws do not depend on which other
examples share its batch: a micro-batch of gradient accumulation reproduces the
draws of the whole batch, example by example.

The model's own randomness (dropout, drop-path) takes one key per call, `model_key`,
derived from the first example's key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Stream numbers folded into each example's key, one per kind of draw.
TIME = 0  # t, sigma, level or timestep index
NOISE = 1  # the Gaussian noise of the forward process
LABEL = 2  # classifier-free guidance's label dropout
COIN = 3  # the self-conditioning coin
MODEL = 4  # the model's dropout key (from the first example's key)


def _is_typed(rng: jax.Array) -> bool:
  return jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)


def is_batch(rng: jax.Array) -> bool:
  """Whether `rng` is a batch of keys (typed [B] or raw [B, 2]) rather than one key."""
  return rng.ndim == (1 if _is_typed(rng) else 2)


def example_keys(rng: jax.Array, batch_size: int) -> jax.Array:
  """The B per-example keys: `rng` itself when it is a batch of B keys, else split from it."""
  if not is_batch(rng):
    return jax.random.split(rng, batch_size)
  if rng.shape[0] != batch_size:
    raise ValueError(
      f'rng holds {rng.shape[0]} per-example keys for a batch of {batch_size}: pass one key '
      'or one key per example.'
    )
  return rng


def model_key(keys: jax.Array) -> jax.Array:
  """The one key of a model call (dropout / drop-path) for a batch of per-example keys."""
  return jax.random.fold_in(keys[0], MODEL)


def _draw(keys: jax.Array, stream: int, fn) -> jax.Array:
  return jax.vmap(lambda k: fn(jax.random.fold_in(k, stream)))(keys)


def uniform(keys: jax.Array, stream: int, dtype=jnp.float32, minval=0.0, maxval=1.0) -> jax.Array:
  """U[minval, maxval) per example: [B]."""
  return _draw(keys, stream, lambda k: jax.random.uniform(k, (), dtype, minval, maxval))


def normal(keys: jax.Array, stream: int, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """N(0, I) of `shape` per example: [B, *shape]."""
  return _draw(keys, stream, lambda k: jax.random.normal(k, shape, dtype))


def bernoulli(keys: jax.Array, stream: int, p: float) -> jax.Array:
  """Bernoulli(p) per example: bool [B]."""
  return _draw(keys, stream, lambda k: jax.random.bernoulli(k, p))


def randint(keys: jax.Array, stream: int, minval: int, maxval: int) -> jax.Array:
  """Uniform integers in [minval, maxval) per example: int32 [B]."""
  return _draw(keys, stream, lambda k: jax.random.randint(k, (), minval, maxval, jnp.int32))


def categorical(keys: jax.Array, stream: int, logits: jax.Array) -> jax.Array:
  """One index per example from the shared (unnormalized log-) probabilities [K]: int32 [B]."""
  return _draw(keys, stream, lambda k: jax.random.categorical(k, logits)).astype(jnp.int32)
