"""The training loop: a data-parallel train step, checkpoints, logs and sample grids.

`train_and_evaluate(config, workdir)` validates the whole config, builds one
compiled train step over a ('data', 'fsdp') mesh of every device of every host,
restores the latest checkpoint if there is one, and trains to
config.training.num_steps, writing metrics (clu), checkpoints (orbax) and sample
grids of the EMA parameters along the way.

Source: Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models",
Sec. 4 (LAMB, EMA 0.9999, self-conditioning rate 0.9 with the RIN backbone).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diffusion_jax import checkpointing, config_validation, optim, sampling
from diffusion_jax import sharding as sharding_lib
from diffusion_jax.state import TrainState

NUM_LOSS_BUCKETS = 10
# Dispatched-but-unfinished train steps allowed before the loop waits.
MAX_STEPS_IN_FLIGHT = 2

StepCallback = Callable[[int, TrainState], None]


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """The compiled pieces of a run (built once; the loop only calls them).

  Attributes:
    mesh: the device mesh.
    model: the network (init/apply).
    objective: the training objective (loss/sample).
    tx: the optimizer.
    lr_schedule: step -> learning rate.
    optim_cfg: the validated optimizer settings.
    state_sharding: TrainState-shaped pytree of NamedShardings.
    batch_sharding: sharding of every batch array (leading dim over all devices).
    init_state: rng -> TrainState, jitted with out_shardings (params are born on
      their shards).
    train_step: (state, batch) -> (state, metrics), jitted, state donated.
  """

  mesh: jax.sharding.Mesh
  model: Any
  objective: Any
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  optim_cfg: optim.OptimConfig
  state_sharding: Any
  batch_sharding: jax.sharding.NamedSharding
  init_state: Callable[[jax.Array], TrainState]
  train_step: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict]]


def _dummy_inputs(config: Any, batch: int = 1) -> dict[str, jax.Array]:
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  return {
    'x': jnp.zeros((batch, size, size, channels), jnp.float32),  # [B, H, W, C]
    'noise_level': jnp.zeros((batch,), jnp.float32),  # [B]
    'label': jnp.zeros((batch,), jnp.int32),  # [B]
  }


def loss_buckets(
  noise_t: jax.Array, loss_per_example: jax.Array, num_buckets: int = NUM_LOSS_BUCKETS
) -> tuple[jax.Array, jax.Array]:
  """Sums and counts of the per-example loss in `num_buckets` equal bins of t in [0, 1].

  Returns:
    (sums [K], counts [K]).
  """
  idx = jnp.clip(jnp.floor(noise_t * num_buckets), 0, num_buckets - 1).astype(jnp.int32)
  onehot = jax.nn.one_hot(idx, num_buckets, dtype=jnp.float32)  # [B, K]
  sums = jnp.einsum('bk,b->k', onehot, loss_per_example.astype(jnp.float32))
  return sums, onehot.sum(axis=0)


def create_train_setup(config: Any, mesh: jax.sharding.Mesh) -> TrainSetup:
  """Builds model, objective, optimizer and the jitted init and train step over `mesh`.

  Setups are cached per (config, mesh), so a second run in the same process (a
  restart after preemption, a test) reuses the compiled step.

  Args:
    config: the full run config (validated by config_validation.validate_config).
    mesh: a ('data', 'fsdp') mesh from sharding.create_mesh.

  Returns:
    The TrainSetup; nothing is compiled until its functions are first called.
  """
  return _cached_setup(step_config(config), mesh)


def step_config(config: Any) -> ml_collections.FrozenConfigDict:
  """The part of the config the compiled train step depends on (the cache key)."""
  return ml_collections.FrozenConfigDict(
    {
      'data': config.data,
      'model': config.model,
      'diffusion': config.diffusion,
      'optim': config.optim,
      'training': {
        'num_steps': config.training.num_steps,
        'batch_size': config.training.batch_size,  # EDM's EMA half-life is in images.
      },
    }
  )


@functools.lru_cache(maxsize=4)
def _cached_setup(config: Any, mesh: jax.sharding.Mesh) -> TrainSetup:
  model, objective = config_validation.build_model_and_objective(config)
  optim_cfg = optim.OptimConfig.from_config(config.optim, config.training.num_steps)
  tx, lr_schedule = optim.create_optimizer(optim_cfg)
  batch_size = int(config.training.batch_size)  # global, for the EMA half-life in images
  conditional = int(config.data.num_classes) > 0

  def init_fn(rng: jax.Array) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    d = _dummy_inputs(config)
    params = model.init(init_rng, d['x'], d['noise_level'], d['label'] if conditional else None)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      ema_params=jax.tree.map(jnp.copy, params),
      opt_state=tx.init(params),
      rng=state_rng,
      objective_state=objective.init_state(),
    )

  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  state_sharding = sharding_lib.tree_shardings(mesh, abstract)
  state_sharding = state_sharding.replace(
    step=sharding_lib.replicated(mesh), rng=sharding_lib.replicated(mesh)
  )
  batch_sharding = sharding_lib.batch_sharding(mesh)
  replicated = sharding_lib.replicated(mesh)

  def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      loss, metrics, new_obj_state = objective.loss(
        model.apply, params, batch, rng, state.objective_state, train=True
      )
      return loss, (metrics, new_obj_state)

    # The batch is the global batch: the mean inside the loss and hence the
    # gradient are over all devices (XLA inserts the cross-device reduction).
    (loss, (metrics, obj_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = optim.ema_decay_for(optim_cfg, state.step, batch_size)
    ema_params = optim.ema_update(state.ema_params, params, decay)
    new_state = state.replace(
      step=state.step + 1,
      params=params,
      ema_params=ema_params,
      opt_state=opt_state,
      objective_state=obj_state,
    )
    sums, counts = loss_buckets(metrics['noise_t'], metrics['loss_per_example'])
    out = {
      k: v.astype(jnp.float32)
      for k, v in metrics.items()
      if jnp.ndim(v) == 0 and jnp.issubdtype(v.dtype, jnp.floating)
    }
    out.update(
      loss=loss.astype(jnp.float32),
      grad_norm=optim.global_norm(grads),
      learning_rate=jnp.asarray(lr_schedule(state.step), jnp.float32),
      ema_decay=decay,
      loss_bucket_sum=sums,
      loss_bucket_count=counts,
    )
    return new_state, out

  return TrainSetup(
    mesh=mesh,
    model=model,
    objective=objective,
    tx=tx,
    lr_schedule=lr_schedule,
    optim_cfg=optim_cfg,
    state_sharding=state_sharding,
    batch_sharding=batch_sharding,
    init_state=jax.jit(init_fn, out_shardings=state_sharding),
    train_step=jax.jit(
      train_step,
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, replicated),
      donate_argnums=(0,),
    ),
  )


def abstract_state(setup: TrainSetup) -> TrainState:
  """ShapeDtypeStructs (with shardings) of the state `setup.init_state` makes."""
  shapes = jax.eval_shape(setup.init_state, jax.random.PRNGKey(0))
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, setup.state_sharding
  )


def to_global_batch(batch: dict[str, Any], sharding: jax.sharding.NamedSharding) -> dict:
  """Lays a per-process numpy batch out as global arrays; global arrays pass through."""
  out = {}
  for k, v in batch.items():
    if isinstance(v, jax.Array) and v.sharding == sharding:
      out[k] = v
    else:
      out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(v))
  return out


def check_finite(buffer: list[tuple[int, dict]]) -> None:
  """Raises FloatingPointError naming the first buffered step with a NaN/Inf loss.

  Args:
    buffer: (step, metrics) pairs of the steps since the last check; fetching
      their loss and gradient norm is the only host sync between log steps.
  """
  host = jax.device_get([(m['loss'], m['grad_norm']) for _, m in buffer])
  for (step, _), (loss, gnorm) in zip(buffer, host):
    if not (np.isfinite(loss) and np.isfinite(gnorm)):
      raise FloatingPointError(
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
  config: Any, workdir: str, *, step_callback: StepCallback | None = None
) -> TrainState:
  """Trains to config.training.num_steps (resuming from workdir's latest checkpoint).

  Args:
    config: the full run config (see configs/default.py).
    workdir: where checkpoints, summaries and sample grids go.
    step_callback: optional `callback(step, state)` after every step (tests use
      it to simulate failures).

  Returns:
    The final TrainState (or the one saved when a stop was requested).

  Raises:
    ValueError: for an invalid config, before anything is compiled.
    FloatingPointError: when the loss becomes NaN/Inf (names the step).
  """
  from clu import metric_writers, parameter_overview, periodic_actions

  from diffusion_jax import input_pipeline

  config_validation.validate_config(config)
  tcfg = config.training
  num_steps = int(tcfg.num_steps)
  is_chief = jax.process_index() == 0
  if is_chief:
    os.makedirs(workdir, exist_ok=True)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)

  mesh = sharding_lib.create_mesh(int(tcfg.mesh_fsdp))
  setup = create_train_setup(config, mesh)
  grid = sampling.GridSampler.create(config, mesh)

  ckpt = checkpointing.Checkpointer(
    workdir, save_every=int(tcfg.checkpoint_every), keep=int(tcfg.keep_checkpoints)
  )
  with ckpt, metric_writers.ensure_flushes(writer):
    rng = jax.random.PRNGKey(int(config.seed))
    latest = ckpt.latest_step()
    if latest is not None:
      logging.info('Restoring the checkpoint of step %d from %s.', latest, ckpt.directory)
      state = ckpt.restore(abstract_state(setup))
      step = latest
    else:
      state = None
      step = 0
    if step >= num_steps:
      logging.info('Step %d >= config.training.num_steps=%d: nothing to train.', step, num_steps)
      return state
    data: Iterator[dict] = input_pipeline.create_input_iter(
      config.data,
      int(tcfg.batch_size),
      seed=int(config.seed),
      start_step=step,
      sharding=setup.batch_sharding,
    )
    if state is None:
      state = setup.init_state(rng)
      writer.write_hparams(_flat_hparams(config))
    if is_chief:
      parameter_overview.log_parameter_overview(state.params, msg='Model parameters')

    try:
      hooks = []
      if is_chief:
        hooks.append(periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer))
        if bool(tcfg.profile):
          hooks.append(periodic_actions.Profile(num_profile_steps=5, logdir=workdir))
      log_every, ckpt_every = int(tcfg.log_every), int(tcfg.checkpoint_every)
      sample_every = int(tcfg.sample_every)
      buffer: list[tuple[int, dict]] = []
      inflight: collections.deque = collections.deque()
      logging.info('Training from step %d to %d.', step, num_steps)
      while step < num_steps:
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          batch = to_global_batch(next(data), setup.batch_sharding)
          state, metrics = setup.train_step(state, batch)
        step += 1
        buffer.append((step, metrics))
        # Bound how far Python runs ahead of the devices, so a stop request (SIGTERM
        # grace periods are short) is served within a couple of steps.
        inflight.append(metrics['loss'])
        if len(inflight) > MAX_STEPS_IN_FLIGHT:
          jax.block_until_ready(inflight.popleft())
        if step_callback is not None:
          step_callback(step, state)
        for hook in hooks:
          hook(step)
        last = step == num_steps
        stop = ckpt.should_stop(step)
        due_log = step % log_every == 0 or last
        due_ckpt = step % ckpt_every == 0 or last or stop
        due_sample = (sample_every > 0 and step % sample_every == 0) or last
        if due_ckpt:
          # Checked before every save, so a NaN state never reaches a checkpoint.
          check_finite(buffer)
        if due_log:
          writer.write_scalars(step, summarize(buffer))
          buffer = []
        if due_ckpt:
          ckpt.save(step, state, force=True)
        if stop:
          ckpt.wait_until_finished()
          logging.warning('Stopped at step %d after a stop request; checkpoint saved.', step)
          return state
        if due_sample:
          grid.write(writer, workdir, step, state.ema_params)
    finally:
      if hasattr(data, 'close'):
        data.close()
    ckpt.wait_until_finished()
  return state


def _flat_hparams(config: Any) -> dict[str, Any]:
  flat: dict[str, Any] = {}

  def walk(prefix: str, node: Any) -> None:
    for key, value in node.items():
      name = f'{prefix}{key}'
      if hasattr(value, 'items'):
        walk(name + '.', value)
      elif isinstance(value, (bool, int, float, str)):
        flat[name] = value
      else:
        flat[name] = str(value)

  walk('', config)
  return flat
