"""Loss-aware importance sampling of the timestep for L_vlb (Improved DDPM).

A per-index history of the last `history_per_term` losses lives in a small pytree
that the train step carries and updates functionally inside jit:

    {'history': float32 [T, K], 'counts': int32 [T]}

Until every index has K losses the sampler is uniform; afterwards
p_t ∝ sqrt(E[L_t^2]) over the history, mixed with a `uniform_prob` share of the
uniform distribution, and each example's loss is weighted by 1 / (T p_t) so the
estimate stays unbiased.

Source: Nichol & Dhariwal 2021 (Improved DDPM), Section 3.1, Eq. 18; its code's
`LossSecondMomentResampler` (history 10, uniform share 0.001).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffusion_jax.objectives import example_rng

HISTORY_PER_TERM = 10
UNIFORM_PROB = 0.001


def init_history(num_timesteps: int, history_per_term: int = HISTORY_PER_TERM) -> dict:
  """An empty loss history for T indices."""
  if num_timesteps < 1 or history_per_term < 1:
    raise ValueError(
      f'num_timesteps ({num_timesteps}) and history_per_term ({history_per_term}) must be >= 1.'
    )
  return {
    'history': jnp.zeros((num_timesteps, history_per_term), jnp.float32),
    'counts': jnp.zeros((num_timesteps,), jnp.int32),
  }


def is_warm(state: dict) -> jax.Array:
  """Whether every index already holds a full history (scalar bool)."""
  return jnp.all(state['counts'] >= state['history'].shape[1])


def probabilities(state: dict, uniform_prob: float = UNIFORM_PROB) -> jax.Array:
  """Sampling probabilities p [T]: uniform until warm, then ∝ sqrt(E[L^2]) plus a uniform share.

  Source: Nichol & Dhariwal 2021, Eq. 18; code `LossSecondMomentResampler.weights`.
  """
  num_t = state['counts'].shape[0]
  rms = jnp.sqrt(jnp.mean(jnp.square(state['history']), axis=1))  # [T]
  total = jnp.sum(rms)
  learned = jnp.where(total > 0, rms / jnp.where(total > 0, total, 1.0), 1.0 / num_t)
  learned = learned * (1.0 - uniform_prob) + uniform_prob / num_t
  return jnp.where(is_warm(state), learned, jnp.full((num_t,), 1.0 / num_t))


def sample_timesteps(
  state: dict, rng: jax.Array, batch_size: int, uniform_prob: float = UNIFORM_PROB
) -> tuple[jax.Array, jax.Array]:
  """Draws indices [B] from `probabilities` and their importance weights 1 / (T p_t) [B].

  `rng` is one key or per-example keys [B]: each index comes from its example's key.

  Source: Nichol & Dhariwal 2021 code, `ScheduleSampler.sample`.
  """
  p = probabilities(state, uniform_prob)
  num_t = p.shape[0]
  keys = example_rng.example_keys(rng, batch_size)
  index = example_rng.categorical(keys, example_rng.TIME, jnp.log(p))
  weights = 1.0 / (num_t * p[index])
  return index, weights


def update_history(state: dict, index: jax.Array, losses: jax.Array) -> dict:
  """Pushes each (index, loss) pair into the history, in batch order.

  A full row drops its oldest value, as the reference's sequential update does; a
  lax.scan over the batch keeps repeated indices in one batch exact.

  Source: Nichol & Dhariwal 2021 code, `LossSecondMomentResampler.update_with_all_losses`.
  """
  k = state['history'].shape[1]
  losses = jax.lax.stop_gradient(losses).astype(jnp.float32)

  def push(carry, item):
    history, counts = carry
    t, loss = item
    row, count = history[t], counts[t]
    shifted = jnp.roll(row, -1).at[k - 1].set(loss)
    filled = row.at[jnp.minimum(count, k - 1)].set(loss)
    row = jnp.where(count >= k, shifted, filled)
    history = history.at[t].set(row)
    counts = counts.at[t].set(jnp.minimum(count + 1, k))
    return (history, counts), None

  (history, counts), _ = jax.lax.scan(
    push, (state['history'], state['counts']), (index.astype(jnp.int32), losses)
  )
  return {'history': history, 'counts': counts}
