"""The training loop: a data-parallel train step, checkpoints, logs and sample grids.

`train_and_evaluate(config, workdir)` builds the typed run config once
(config.build_run_config) and the run's components (build.build), jits one train
step over a ('data', 'fsdp') mesh of every device of every host,
restores the latest checkpoint if there is one, and trains to
config.training.num_steps, writing metrics (clu), checkpoints (orbax) and sample
grids of the EMA parameters along the way. With config.training.phema_snapshot_every
> 0 it also snapshots the post-hoc EMA profiles (training/phema.py) to workdir/phema.

Source: Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models",
Sec. 4 (LAMB, EMA 0.9999, self-conditioning rate 0.9 with the RIN backbone).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from diffusion_jax import build as build_lib
from diffusion_jax import config as config_lib
from diffusion_jax import generation
from diffusion_jax.training import checkpointing
from diffusion_jax.training import progress as progress_lib
from diffusion_jax.training.state import TrainState
from diffusion_jax.training.step import (
  StepCallback,
  TrainSetup,
  abstract_state,
  create_train_setup,
  to_global_batch,
)

# Dispatched-but-unfinished train steps allowed before the loop waits.
MAX_STEPS_IN_FLIGHT = 2


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN/Inf; the one-line message names the step and the fix."""


def check_finite(buffer: list[tuple[int, dict]]) -> None:
  """Raises NonFiniteLossError naming the first buffered step with a NaN/Inf loss.

  Args:
    buffer: (step, metrics) pairs of the steps since the last check; fetching
      their loss and gradient norm is the only host sync between log steps.
  """
  host = jax.device_get([(m['loss'], m['grad_norm']) for _, m in buffer])
  for (step, _), (loss, gnorm) in zip(buffer, host):
    if not (np.isfinite(loss) and np.isfinite(gnorm)):
      raise NonFiniteLossError(
        f'Non-finite training loss at step {step} (loss={float(loss)}, '
        f'grad_norm={float(gnorm)}). Stopping without saving; the last good checkpoint '
        'is kept. Lower config.optim.learning_rate, set config.optim.grad_clip (e.g. '
        "1.0) or use config.model.dtype='float32'."
      )


def summarize(buffer: list[tuple[int, dict]]) -> dict[str, float]:
  """Averages buffered step metrics into scalars (plus per-noise-level losses).

  Raises:
    FloatingPointError: as `check_finite`.
  """
  check_finite(buffer)
  host = jax.device_get([m for _, m in buffer])
  scalars: dict[str, float] = {}
  for key, value in host[-1].items():
    if np.ndim(value) == 0:
      scalars[key] = float(np.mean([m[key] for m in host]))
  # Schedules: report the value at the last step, not the interval's mean.
  scalars['learning_rate'] = float(host[-1]['learning_rate'])
  scalars['ema_decay'] = float(host[-1]['ema_decay'])
  sums = np.sum([m['loss_bucket_sum'] for m in host], axis=0)
  counts = np.sum([m['loss_bucket_count'] for m in host], axis=0)
  k = len(sums)
  for i in range(k):
    if counts[i] > 0:
      scalars[f'loss_t/{i / k:.1f}-{(i + 1) / k:.1f}'] = float(sums[i] / counts[i])
  return scalars


def train_and_evaluate(
  config: Any,
  workdir: str,
  *,
  step_callback: StepCallback | None = None,
  setup: TrainSetup | None = None,
) -> TrainState:
  """Trains to config.training.num_steps (resuming from workdir's latest checkpoint).

  Args:
    config: the run config: a ConfigDict (see configs/default.py) or a RunConfig.
    workdir: where checkpoints, summaries and sample grids go.
    step_callback: optional `callback(step, state)` after every step (tests use
      it to simulate failures).
    setup: a TrainSetup of this same config to reuse (its compiled functions);
      default: built here.

  Returns:
    The final TrainState (or the one saved when a stop was requested).

  Raises:
    ConfigError: (a ValueError) for an invalid config, before anything is compiled.
    FloatingPointError: when the loss becomes NaN/Inf (names the step).
  """
  from clu import metric_writers

  run = config_lib.build_run_config(config)
  if setup is None:
    setup = create_train_setup(build_lib.build(run))
  elif setup.components.run != run:
    raise ValueError('train_and_evaluate: `setup` was built from a different config.')
  is_chief = jax.process_index() == 0
  if is_chief:
    os.makedirs(workdir, exist_ok=True)
  # TensorBoard only: the console gets one compact progress line per log interval.
  if is_chief:
    writer = metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(workdir)])
  else:
    writer = metric_writers.MultiWriter([])
  grid = generation.GridSampler.create(setup.components)
  t = run.training
  ckpt = checkpointing.Checkpointer(workdir, save_every=t.checkpoint_every, keep=t.keep_checkpoints)
  snapshots = checkpointing.PhemaSnapshots(workdir) if t.phema_snapshot_every else None
  with ckpt, metric_writers.ensure_flushes(writer), snapshots or contextlib.nullcontext():
    state, step = _restore(ckpt, setup)
    if step >= t.num_steps:
      logging.info('Step %d >= config.training.num_steps=%d: nothing to train.', step, t.num_steps)
      return state
    if state is None:
      state = setup.init_state(jax.random.PRNGKey(run.seed))
      writer.write_hparams(run.hparams())
    if is_chief:
      _write_run_files(workdir, run, state.params)
    if snapshots is not None:
      _resume_snapshots(snapshots, state, step, t)
    loop = _Loop(setup, ckpt, writer, grid, workdir, step_callback, snapshots)
    state = loop.run(state, step)
    ckpt.wait_until_finished()
  return state


def _resume_snapshots(
  snapshots: checkpointing.PhemaSnapshots, state: TrainState, step: int, t: Any
) -> None:
  """Drops post-hoc EMA snapshots newer than the restored step (a lost future the run
  redoes) and writes the restored step's own if it is due and missing."""
  stale = snapshots.delete_after(step)
  if stale:
    logging.info('Dropped post-hoc EMA snapshots of steps %s (after the checkpoint).', stale)
  if step > 0 and step % t.phema_snapshot_every == 0 and step not in snapshots.steps():
    snapshots.save(step, t.phema_stds, state.phema_params)


def _write_run_files(workdir: str, run: config_lib.RunConfig, params: Any) -> None:
  """workdir/hparams.json (every setting) and workdir/parameters.txt (the parameter table).

  At ImageNet size the table has hundreds of rows: it goes to a file, the console gets
  one line.
  """
  from clu import parameter_overview

  with open(os.path.join(workdir, 'hparams.json'), 'w') as f:
    json.dump(run.hparams(), f, indent=1, sort_keys=True)
  table = parameter_overview.get_parameter_overview(params, include_stats=False)
  path = os.path.join(workdir, 'parameters.txt')
  with open(path, 'w') as f:
    f.write(table + '\n')
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  logging.info('Model: %s parameters (table: %s; settings: hparams.json).', f'{count:,}', path)


def _restore(ckpt: checkpointing.Checkpointer, setup: TrainSetup) -> tuple[Any, int]:
  latest = ckpt.latest_step()
  if latest is None:
    return None, 0
  logging.info('Restoring the checkpoint of step %d from %s.', latest, ckpt.directory)
  return ckpt.restore(abstract_state(setup)), latest


@dataclasses.dataclass
class _Loop:
  """The step loop: logs, checkpoints, sample grids and stop requests on their schedule."""

  setup: TrainSetup
  ckpt: checkpointing.Checkpointer
  writer: Any
  grid: generation.GridSampler
  workdir: str
  step_callback: StepCallback | None
  snapshots: checkpointing.PhemaSnapshots | None = None
  progress: progress_lib.TrainProgress | None = None

  def _start_progress(self, state, batch, step: int, metrics: dict) -> progress_lib.TrainProgress:
    """The progress meter, its FLOPs per step from XLA's cost analysis of the train step."""
    run, setup = self.setup.components.run, self.setup
    flops = peak = None
    lower = getattr(setup.train_step, 'lower', None)  # None: a wrapped (test) step
    if jax.process_index() == 0 and lower is not None:
      abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), (state, batch)
      )
      flops = progress_lib.step_flops(lower(*abstract))
      per_device = progress_lib.peak_flops(jax.devices()[0].device_kind)
      peak = per_device * jax.device_count() if per_device else None
    jax.block_until_ready(metrics['loss'])
    meter = progress_lib.TrainProgress(
      run.training.num_steps, run.global_batch_size, flops_per_step=flops, peak=peak
    )
    meter.start(step)
    return meter

  def _hooks(self) -> list:
    from clu import periodic_actions

    if jax.process_index() != 0:
      return []
    t = self.setup.components.run.training
    hooks = []
    if t.profile:
      hooks.append(periodic_actions.Profile(num_profile_steps=5, logdir=self.workdir))
    return hooks

  def run(self, state: TrainState, step: int) -> TrainState:
    """Trains from `step` to num_steps; returns early (saved) on a stop request."""
    from diffusion_jax.data import input_pipeline

    run, setup = self.setup.components.run, self.setup
    data: Iterator[dict] = input_pipeline.create_input_iter(
      run.data,
      run.global_batch_size,
      seed=run.seed,
      start_step=step,
      sharding=setup.batch_sharding,
    )
    try:
      hooks = self._hooks()
      buffer: list[tuple[int, dict]] = []
      inflight: collections.deque = collections.deque()
      logging.info('Training from step %d to %d.', step, run.training.num_steps)
      while step < run.training.num_steps:
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          batch = to_global_batch(next(data), setup.batch_sharding)
          state, metrics = setup.train_step(state, batch)
        step += 1
        if self.progress is None:  # after the first (compiling) step: the rates' origin
          self.progress = self._start_progress(state, batch, step, metrics)
        buffer.append((step, metrics))
        # Bound how far Python runs ahead of the devices, so a stop request (SIGTERM
        # grace periods are short) is served within a couple of steps.
        inflight.append(metrics['loss'])
        if len(inflight) > MAX_STEPS_IN_FLIGHT:
          jax.block_until_ready(inflight.popleft())
        if self.step_callback is not None:
          self.step_callback(step, state)
        for hook in hooks:
          hook(step)
        buffer, stop = self._after_step(step, state, buffer)
        if stop:
          return state
    finally:
      if hasattr(data, 'close'):
        data.close()
    return state

  def _after_step(self, step: int, state: TrainState, buffer: list) -> tuple[list, bool]:
    """Logs, saves and samples when due; returns (buffer, stopped)."""
    t = self.setup.components.run.training
    last = step == t.num_steps
    stop = self.ckpt.should_stop(step)
    due_log = step % t.log_every == 0 or last
    due_ckpt = step % t.checkpoint_every == 0 or last or stop
    due_sample = (t.sample_every > 0 and step % t.sample_every == 0) or last
    if due_ckpt:
      # Checked before every save, so a NaN state never reaches a checkpoint.
      check_finite(buffer)
    if due_log:
      scalars = summarize(buffer)
      line, rates = self.progress.report(step, scalars['loss'])
      if jax.process_index() == 0:
        logging.info('%s', line)
      self.writer.write_scalars(step, {**scalars, **rates})
      buffer = []
    if due_ckpt:
      self.ckpt.save(step, state, force=True)
    if self.snapshots is not None and (step % t.phema_snapshot_every == 0 or last):
      self.snapshots.save(step, t.phema_stds, state.phema_params)
    if stop:
      if self.snapshots is not None:
        self.snapshots.wait_until_finished()
      self.ckpt.wait_until_finished()
      logging.warning('Stopped at step %d after a stop request; checkpoint saved.', step)
      return buffer, True
    if due_sample:
      self.grid.write(self.writer, self.workdir, step, state.ema_params)
    return buffer, False
