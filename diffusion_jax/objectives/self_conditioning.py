"""Self-conditioning (two passes, stop-gradient, per-example coin) and label dropout.

The model contract: `apply(params, x, noise_level, label=None, self_cond=None,
augment=None, train=False, rng=None) -> (prediction, carry)`. `carry` is what a later
call takes as `self_cond` (RIN: its latents; U-Net: its prediction); None means zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax.objectives import example_rng


def check_rate(rate: float, name: str) -> float:
  """Returns a probability as a Python float, or raises ValueError naming the config key."""
  if isinstance(rate, bool) or not isinstance(rate, (int, float)):
    raise ValueError(f'{name} must be a Python number in [0, 1], got {rate!r}.')
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f'{name}={rate} must lie in [0, 1] (a probability); 0 turns it off.')
  return float(rate)


def drop_labels(label: jax.Array | None, rng: jax.Array, prob: float) -> jax.Array | None:
  """Replaces each label by the null label -1 with probability `prob` (per example).

  Trains the unconditional model used by classifier-free guidance alongside the
  conditional one. `rng` is one key or per-example keys [B] (example_rng).

  Source: Ho & Salimans 2021 (classifier-free guidance), Algorithm 1.
  """
  if label is None or prob == 0.0:
    return label
  keys = example_rng.example_keys(rng, label.shape[0])
  drop = example_rng.bernoulli(keys, example_rng.LABEL, prob)  # [B]
  return jnp.where(drop, jnp.asarray(-1, label.dtype), label)


def self_cond_coin(rng: jax.Array, rate: float, batch_size: int) -> jax.Array:
  """Which examples are self-conditioned: Bernoulli(rate) per example, bool [B].

  `rng` is one key or per-example keys [B] (example_rng).
  """
  keys = example_rng.example_keys(rng, batch_size)
  return example_rng.bernoulli(keys, example_rng.COIN, rate)


def mask_carry(carry: Any, keep: jax.Array) -> Any:
  """Zeros every leaf of a carry pytree (leading axis B) where keep [B] is False."""

  def mask(leaf):
    k = keep.reshape(keep.shape + (1,) * (leaf.ndim - 1))
    return jnp.where(k, leaf, jnp.zeros_like(leaf))

  return jax.tree.map(mask, carry)


def apply_with_self_cond(
  apply_fn: Callable,
  params: Any,
  x: jax.Array,
  noise_level: jax.Array,
  *,
  label: jax.Array | None = None,
  augment: jax.Array | None = None,
  rate: float = 0.0,
  rng: jax.Array | None = None,
  train: bool = False,
  coin: jax.Array | None = None,
) -> tuple[jax.Array, Any, jax.Array | None]:
  """Runs the model with self-conditioning: (prediction, carry, coin [B] or None).

  rate == 0: one pass with `self_cond=None` (zeros). rate > 0: a first pass with zero
  self-conditioning; its carry goes through `stop_gradient` and is zeroed for the
  examples whose coin (Bernoulli(rate), per example) comes up False; a second pass
  conditioned on it gives the prediction. rate == 1 skips the coin (every example is
  self-conditioned), which is how evaluation runs.

  Source: Chen, Zhang & Hinton 2022 (Analog Bits), Section 3 and Figure 3;
  Jabri, Fleet & Chen 2022 (RIN), Section 3.4 (latent self-conditioning).

  Args:
    apply_fn: the model's apply function.
    params: model parameters.
    x: model input [B, H, W, C].
    noise_level: [B] conditioning scalar, already scaled for the model.
    label: int32 [B] or None.
    augment: [B, A] augmentation vector or None.
    rate: static probability of self-conditioning an example.
    rng: PRNG key (needed when rate is in (0, 1) without `coin`, or when train is True).
    train: enables dropout and friends in the model.
    coin: bool [B], the examples to self-condition when rate is in (0, 1); drawn from
      `rng` (`self_cond_coin`) when None.
  """
  if rng is None:
    if train or (0.0 < rate < 1.0 and coin is None):
      raise ValueError('rng is required for training or for a self-conditioning rate in (0, 1).')
    rng = jax.random.key(0)
  rng_first, rng_second, rng_coin = jax.random.split(rng, 3)
  kwargs = dict(label=label, augment=augment, train=train)
  if rate == 0.0:
    pred, carry = apply_fn(params, x, noise_level, self_cond=None, rng=rng_second, **kwargs)
    return pred, carry, None
  _, carry = apply_fn(params, x, noise_level, self_cond=None, rng=rng_first, **kwargs)
  carry = jax.lax.stop_gradient(carry)
  if rate < 1.0:
    if coin is None:
      coin = self_cond_coin(rng_coin, rate, x.shape[0])  # [B]
    carry = mask_carry(carry, coin)
  else:
    coin = jnp.ones((x.shape[0],), bool)
  pred, carry = apply_fn(params, x, noise_level, self_cond=carry, rng=rng_second, **kwargs)
  return pred, carry, coin
