"""Training: state, sharding, optimizer, checkpoints, the compiled step and the loop.

from diffusion_jax import training
training.train_and_evaluate(config, workdir)
"""

from diffusion_jax.training.loop import (
  NonFiniteLossError,
  check_finite,
  summarize,
  train_and_evaluate,
)
from diffusion_jax.training.state import TrainState
from diffusion_jax.training.step import (
  TrainSetup,
  abstract_state,
  create_train_setup,
  loss_buckets,
  make_train_step,
  step_metrics,
  to_global_batch,
)

__all__ = [
  'NonFiniteLossError',
  'TrainSetup',
  'TrainState',
  'abstract_state',
  'check_finite',
  'create_train_setup',
  'loss_buckets',
  'make_train_step',
  'step_metrics',
  'summarize',
  'to_global_batch',
  'train_and_evaluate',
]
