"""Checkpoints of the training state (the only module that imports orbax).

A checkpoint has two items: 'train' (step, params, optimizer state, rng,
objective state) and 'ema_params', so sampling can restore the EMA weights
alone. Saves are asynchronous: the device-to-host copy happens in `save`, the
write in the background. On SIGTERM (or a multi-host preemption notice) the
loop saves the current step, waits for the write and exits cleanly. With post-hoc EMA
on, a third item 'phema_params' holds the power-function EMA profiles, and
`PhemaSnapshots` keeps one snapshot of them per config.training.phema_snapshot_every
steps in workdir/phema.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

from diffusion_jax.config import ConfigError
from diffusion_jax.training.state import TrainState

CHECKPOINT_SUBDIR = 'checkpoints'
PHEMA_SUBDIR = 'phema'


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
      self.directory, item_names=('train', 'ema_params', 'phema_params'), options=options
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
    items = {
      'train': ocp.args.StandardRestore(_as_abstract(train)),
      'ema_params': ocp.args.StandardRestore(_as_abstract(ema)),
    }
    if abstract_state.phema_params:
      if not os.path.isdir(os.path.join(self.directory, str(step), 'phema_params')):
        raise ConfigError(
          f'The checkpoint of step {step} in {self.directory} has no post-hoc EMA profiles '
          '(trained without them): set config.training.phema_snapshot_every=0 to resume it, '
          'or train in a new --workdir.'
        )
      items['phema_params'] = ocp.args.StandardRestore(_as_abstract(abstract_state.phema_params))
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    t = restored['train']
    return TrainState(
      step=t['step'],
      params=t['params'],
      ema_params=restored['ema_params'],
      opt_state=t['opt_state'],
      rng=t['rng'],
      objective_state=t['objective_state'],
      phema_params=restored.get('phema_params') or (),
    )

  def save(self, step: int, state: TrainState, *, force: bool = False) -> bool:
    """Saves when `step` is due (or `force`); returns whether a save started."""
    train, ema = _split(state)
    items = {'train': ocp.args.StandardSave(train), 'ema_params': ocp.args.StandardSave(ema)}
    if state.phema_params:
      items['phema_params'] = ocp.args.StandardSave(state.phema_params)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

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


def save_ema_params(workdir: str, step: int, params: Any) -> str:
  """Writes `params` as the EMA parameters of a checkpoint of `step` in workdir/checkpoints.

  The result is a run directory that `restore_ema_params` (--mode=sample / --mode=eval
  with --workdir) reads like a trained run's; it has no 'train' item, and replaces any
  earlier checkpoint there. Every process calls this (orbax writes each array once).
  """
  directory = checkpoint_dir(workdir)
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(
    directory, item_names=('train', 'ema_params'), options=options
  ) as manager:
    for old in manager.all_steps():  # one set of parameters per directory
      manager.delete(old)
    manager.save(step, args=ocp.args.Composite(ema_params=ocp.args.StandardSave(params)))
    manager.wait_until_finished()
  return os.path.abspath(workdir)


def phema_dir(workdir: str) -> str:
  """workdir/phema: the post-hoc EMA snapshots and reconstructions of a run."""
  return os.path.abspath(os.path.join(workdir, PHEMA_SUBDIR))


class PhemaSnapshots:
  """The post-hoc EMA snapshots of a run: workdir/phema/snapshots/<step>/.

  Each snapshot holds every profile of that step ('profiles', a tuple of parameter
  pytrees) and their stds ('meta', JSON). Saves are asynchronous (the device-to-host
  copy happens in `save`) and, like checkpoints, made by every process: orbax writes
  replicated arrays from the primary process and each shard from its owner. None is
  ever deleted except by `delete_after` (a resumed run drops the lost future's).

  Args:
    workdir: the run's directory.
    read_only: open existing snapshots for reading (reconstruction).
  """

  def __init__(self, workdir: str, *, read_only: bool = False):
    self.directory = os.path.join(phema_dir(workdir), 'snapshots')
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(
        f'No post-hoc EMA snapshots in {self.directory}; train with '
        'config.training.phema_snapshot_every > 0 first.'
      )
    options = ocp.CheckpointManagerOptions(
      max_to_keep=None,
      enable_async_checkpointing=not read_only,
      create=not read_only,
      read_only=read_only,
    )
    self._manager = ocp.CheckpointManager(
      self.directory, item_names=('profiles', 'meta'), options=options
    )

  def steps(self) -> list[int]:
    """The snapshot steps, ascending."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, stds: tuple[float, ...], profiles: tuple[Any, ...]) -> None:
    """Snapshots the profiles of `step` (one per std)."""
    meta = {'step': int(step), 'stds': [float(v) for v in stds]}
    self._manager.save(
      step,
      args=ocp.args.Composite(
        profiles=ocp.args.StandardSave(tuple(profiles)), meta=ocp.args.JsonSave(meta)
      ),
      force=True,
    )

  def stds(self, step: int) -> list[float]:
    """The stds of the profiles in the snapshot of `step`."""
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return [float(v) for v in restored['meta']['stds']]

  def restore(self, step: int, abstract_profiles: list[Any]) -> tuple[Any, ...]:
    """The profiles of `step` on the shardings of `abstract_profiles` (one per std)."""
    abstract = tuple(_as_abstract(a) for a in abstract_profiles)
    restored = self._manager.restore(
      step, args=ocp.args.Composite(profiles=ocp.args.StandardRestore(abstract))
    )
    return tuple(restored['profiles'])

  def delete_after(self, step: int) -> list[int]:
    """Deletes the snapshots of steps > `step`; returns their steps."""
    stale = [s for s in self.steps() if s > step]
    for s in stale:
      self._manager.delete(s)
    return stale

  def wait_until_finished(self) -> None:
    """Blocks until pending snapshot writes are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> PhemaSnapshots:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


__all__ = [
  'Checkpointer',
  'PhemaSnapshots',
  'checkpoint_dir',
  'export_ema',
  'latest_step',
  'load_exported',
  'phema_dir',
  'restore_ema_params',
  'save_ema_params',
]
