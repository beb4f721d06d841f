"""Training: state, sharding, optimizer, checkpoints, the compiled step and the loop.

    from diffusion_jax import training
    training.train_and_evaluate(config, workdir)

The step and the loop are imported on first use, so that the run config (which needs
only `training.optim` and `training.sharding`) can be imported without them.
"""

import importlib

_LAZY = {
  'NonFiniteLossError': 'loop',
  'check_finite': 'loop',
  'summarize': 'loop',
  'train_and_evaluate': 'loop',
  'TrainState': 'state',
  'TrainSetup': 'step',
  'abstract_state': 'step',
  'create_train_setup': 'step',
  'loss_buckets': 'step',
  'make_train_step': 'step',
  'step_metrics': 'step',
  'to_global_batch': 'step',
}


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(f'diffusion_jax.training.{_LAZY[name]}'), name)
  if name in ('checkpointing', 'loop', 'optim', 'sharding', 'state', 'step'):
    return importlib.import_module(f'diffusion_jax.training.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = sorted(_LAZY)
