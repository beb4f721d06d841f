"""The training state: one pytree that is checkpointed, sharded and donated."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  Attributes:
    step: number of optimizer steps taken so far; int32 scalar.
    params: model parameters (plain pytree).
    ema_params: exponential moving average of `params` (sampling uses these).
    opt_state: optimizer state (optax).
    rng: base PRNG key; step s uses fold_in(rng, s), so a resumed run draws the
      same noise as an uninterrupted one.
    objective_state: the objective's own state (e.g. iDDPM's importance-sampling
      loss history); `{}` when it has none.
    phema_params: EDM2's power-function EMA profiles, one parameter pytree per
      config.training.phema_stds entry (training/phema.py); `()` when
      config.training.phema_snapshot_every is 0.
  """

  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array
  objective_state: Any
  phema_params: Any = ()


__all__ = ['TrainState']
