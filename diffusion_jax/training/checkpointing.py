"""Checkpoints of the training state (the only module that imports orbax).

A checkpoint has two items: 'train' (step, params, optimizer state, rng,
objective state) and 'ema_params', so sampling can restore the EMA weights
alone. Saves are asynchronous: the device-to-host copy happens in `save`, the
write in the background. On SIGTERM (or a multi-host preemption notice) the
loop saves the current step, waits for the write and exits cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

from diffusion_jax.training.state import TrainState

CHECKPOINT_SUBDIR = 'checkpoints'


def checkpoint_dir(workdir: str) -> str:
  """Where the checkpoints of a run in `workdir` live (absolute path)."""
  return os.path.abspath(os.path.join(workdir, CHECKPOINT_SUBDIR))


def _split(state: TrainState) -> tuple[dict[str, Any], Any]:
  train = {
    'step': state.step,
    'params': state.params,
    'opt_state': state.opt_state,
    'rng': state.rng,
    'objective_state': state.objective_state,
  }
  return train, state.ema_params


def _as_abstract(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings where known) describing `tree`."""

  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None))

  return jax.tree.map(one, tree)


class Checkpointer:
  """Periodic, asynchronous, preemption-aware checkpoints of a TrainState.

  Args:
    workdir: the run's directory; checkpoints go to workdir/checkpoints.
    save_every: save every this many steps (config.training.checkpoint_every).
    keep: number of checkpoints kept (config.training.keep_checkpoints).
    async_save: write in a background thread.
    handle_sigterm: install a SIGTERM handler that asks the loop to stop
      (single-process runs; multi-host runs use JAX's preemption sync point).
  """

  def __init__(
    self,
    workdir: str,
    *,
    save_every: int,
    keep: int = 3,
    async_save: bool = True,
    handle_sigterm: bool = True,
  ):
    if save_every < 1:
      raise ValueError(f'config.training.checkpoint_every={save_every} must be >= 1.')
    if keep < 1:
      raise ValueError(f'config.training.keep_checkpoints={keep} must be >= 1.')
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_every,
      max_to_keep=keep,
      enable_async_checkpointing=async_save,
      create=True,
    )
    self._manager = ocp.CheckpointManager(
      self.directory, item_names=('train', 'ema_params'), options=options
    )
    self._stop_requested = threading.Event()
    self._previous_handler = None
    if handle_sigterm and jax.process_count() == 1:
      try:
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
      except ValueError:  # Not the main thread: leave signals alone.
        self._previous_handler = None

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint and stopping.')
    self._stop_requested.set()

  def latest_step(self) -> int | None:
    """The newest saved step, or None."""
    return self._manager.latest_step()

  def restore(self, abstract_state: TrainState, step: int | None = None) -> TrainState:
    """Restores `step` (default latest) onto the shardings of `abstract_state`."""
    step = self._manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}.')
    train, ema = _split(abstract_state)
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        train=ocp.args.StandardRestore(_as_abstract(train)),
        ema_params=ocp.args.StandardRestore(_as_abstract(ema)),
      ),
    )
    t = restored['train']
    return TrainState(
      step=t['step'],
      params=t['params'],
      ema_params=restored['ema_params'],
      opt_state=t['opt_state'],
      rng=t['rng'],
      objective_state=t['objective_state'],
    )

  def save(self, step: int, state: TrainState, *, force: bool = False) -> bool:
    """Saves when `step` is due (or `force`); returns whether a save started."""
    train, ema = _split(state)
    return self._manager.save(
      step,
      args=ocp.args.Composite(
        train=ocp.args.StandardSave(train), ema_params=ocp.args.StandardSave(ema)
      ),
      force=force,
    )

  def should_stop(self, step: int) -> bool:
    """True after SIGTERM or when every host reached the preemption sync point."""
    return self._stop_requested.is_set() or self._manager.reached_preemption(step)

  def wait_until_finished(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Finishes pending saves and restores the previous SIGTERM handler."""
    self._manager.wait_until_finished()
    self._manager.close()
    if self._previous_handler is not None:
      try:
        signal.signal(signal.SIGTERM, self._previous_handler)
      except ValueError:
        pass
      self._previous_handler = None

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def latest_step(workdir: str) -> int | None:
  """The newest checkpoint step of the run in `workdir`, or None."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return None
  with ocp.CheckpointManager(
    directory,
    item_names=('train', 'ema_params'),
    options=ocp.CheckpointManagerOptions(create=False),
  ) as manager:
    return manager.latest_step()


def restore_ema_params(workdir: str, abstract_params: Any, step: int | None = None) -> Any:
  """Restores only the EMA parameters of the run in `workdir` (latest step by default).

  Args:
    workdir: the run's directory.
    abstract_params: pytree of ShapeDtypeStructs (or arrays) giving the structure,
      dtypes and shardings of the parameters.
    step: which checkpoint; default the newest.

  Returns:
    The EMA parameters.
  """
  directory = checkpoint_dir(workdir)
  options = ocp.CheckpointManagerOptions(create=False, read_only=True)
  if not os.path.isdir(directory):
    raise FileNotFoundError(
      f'No checkpoints in {directory}; train first (--mode=train) with --workdir={workdir}.'
    )
  with ocp.CheckpointManager(
    directory, item_names=('train', 'ema_params'), options=options
  ) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(
        f'No checkpoints in {directory}; train first (--mode=train) with --workdir={workdir}.'
      )
    restored = manager.restore(
      step,
      args=ocp.args.Composite(ema_params=ocp.args.StandardRestore(_as_abstract(abstract_params))),
    )
  return restored['ema_params']


def export_ema(workdir: str, path: str, abstract_params: Any, step: int | None = None) -> str:
  """Writes the EMA parameters of the run alone to `path` (a standard orbax tree)."""
  params = restore_ema_params(workdir, abstract_params, step)
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params, force=True)
    ckptr.wait_until_finished()
  return path


def load_exported(path: str, abstract_params: Any) -> Any:
  """Loads parameters written by `export_ema`."""
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(path), _as_abstract(abstract_params))


__all__ = [
  'Checkpointer',
  'checkpoint_dir',
  'export_ema',
  'latest_step',
  'load_exported',
  'restore_ema_params',
]
