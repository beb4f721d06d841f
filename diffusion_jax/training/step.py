"""The compiled data-parallel train step and its setup.

`create_train_setup(components)` jits one train step over a ('data', 'fsdp') mesh of every
device of every host: the loss of the global batch, its gradient (XLA inserts the
cross-device mean), the optimizer update and the EMA, with the state donated. With
`config.training.grad_accum_steps = k` the gradient is the mean of k micro-batch
gradients taken in a `lax.scan` inside the same compiled step.

Source: Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models",
Sec. 4 (LAMB, EMA 0.9999, self-conditioning rate 0.9 with the RIN backbone).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from diffusion_jax import build as build_lib
from diffusion_jax import config as config_lib
from diffusion_jax.training import optim, phema
from diffusion_jax.training import sharding as sharding_lib
from diffusion_jax.training.state import TrainState

NUM_LOSS_BUCKETS = 10
StepCallback = Callable[[int, TrainState], None]


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """The run's components and its jitted functions (built once; the loop only calls them).

  Attributes:
    components: model, objective, optimizer, mesh and shardings (build.build).
    init_state: rng -> TrainState, jitted with out_shardings (params are born on
      their shards).
    train_step: (state, batch) -> (state, metrics), jitted, state donated.
  """

  components: build_lib.Components
  init_state: Callable[[jax.Array], TrainState]
  train_step: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict]]

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self.components.mesh

  @property
  def model(self) -> Any:
    return self.components.model

  @property
  def objective(self) -> Any:
    return self.components.objective

  @property
  def tx(self) -> optax.GradientTransformation:
    return self.components.tx

  @property
  def lr_schedule(self) -> optax.Schedule:
    return self.components.lr_schedule

  @property
  def state_sharding(self) -> Any:
    return self.components.state_sharding

  @property
  def batch_sharding(self) -> jax.sharding.NamedSharding:
    return self.components.batch_sharding


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


def create_train_setup(components: Any, mesh: jax.sharding.Mesh | None = None) -> TrainSetup:
  """Jits the init and train step of a run's components.

  Args:
    components: build.Components, or a run config (ConfigDict or RunConfig) whose
      components are built here, once.
    mesh: for a config only: the mesh to build over (default: every device).

  Returns:
    The TrainSetup; nothing is compiled until its functions are first called.
  """
  if not isinstance(components, build_lib.Components):
    num_devices = None if mesh is None else mesh.size
    components = build_lib.build(
      config_lib.build_run_config(components, num_devices=num_devices), mesh
    )
  c = components
  replicated = sharding_lib.replicated(c.mesh)
  return TrainSetup(
    components=c,
    init_state=jax.jit(c.init_fn, out_shardings=c.state_sharding),
    train_step=jax.jit(
      make_train_step(c),
      in_shardings=(c.state_sharding, c.batch_sharding),
      out_shardings=(c.state_sharding, replicated),
      donate_argnums=(0,),
    ),
  )


def split_micro_batches(tree: Any, k: int, num_devices: int) -> Any:
  """[B, ...] leaves -> [k, B / k, ...]: micro-batch j takes rows j of each device's share.

  The batch is split contiguously over the devices, so [B] -> [n, k, B / (n k)] keeps
  every micro-batch's rows on the device that holds them (no cross-device traffic).
  """

  def split(x):
    m = x.shape[0] // (num_devices * k)
    x = jnp.swapaxes(x.reshape((num_devices, k, m) + x.shape[1:]), 0, 1)
    return x.reshape((k, num_devices * m) + x.shape[3:])

  return jax.tree.map(split, tree)


def merge_micro_batches(tree: Any, k: int, num_devices: int) -> Any:
  """Inverse of `split_micro_batches` for [k, B / k, ...] leaves; [k] leaves are averaged."""

  def merge(x):
    if x.ndim == 1:  # one scalar per micro-batch: equal sizes, so the mean of means
      return jnp.mean(x, axis=0)
    m = x.shape[1] // num_devices
    x = jnp.swapaxes(x.reshape((k, num_devices, m) + x.shape[2:]), 0, 1)
    return x.reshape((k * num_devices * m,) + x.shape[3:])

  return jax.tree.map(merge, tree)


def make_train_step(components: build_lib.Components) -> Callable:
  """(state, batch) -> (state, metrics) of one optimizer step on the global batch.

  Every example's randomness (noise, t, self-conditioning coin, label dropout) comes
  from its own key, `split(fold_in(state.rng, step), B)[i]` at its position i in the
  global batch, so with `grad_accum_steps = k` the k micro-batches draw exactly what
  one pass over the batch draws. The objective's state (iDDPM's loss history) is read
  as it was at the start of the step by every micro-batch and updated once with the
  whole batch. The model's own dropout / drop-path key is one per micro-batch: k > 1
  equals k = 1 up to float rounding only for a model without dropout.
  """
  run, model, objective, tx = (
    components.run,
    components.model,
    components.objective,
    components.tx,
  )
  k = run.training.grad_accum_steps
  mesh = components.mesh
  num_devices = mesh.size
  batch_axes = sharding_lib.BATCH_AXES
  param_sharding = components.state_sharding.params

  def constrain(tree: Any, spec: P) -> Any:
    return jax.tree.map(
      lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec)), tree
    )

  def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
    if not run.conditional:  # an unconditional network never sees labels
      batch = {key: v for key, v in batch.items() if key != 'label'}
    b = batch['image'].shape[0]
    keys = jax.random.split(jax.random.fold_in(state.rng, state.step), b)  # [B] per example
    inputs = constrain({'batch': batch, 'rng': keys}, P(batch_axes))

    def grad_fn(micro: dict) -> tuple[jax.Array, dict, Any]:
      def loss_fn(params):
        loss, metrics, _ = objective.loss(
          model.apply, params, micro['batch'], micro['rng'], state.objective_state, train=True
        )
        return loss, metrics

      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      return loss, metrics, grads

    if k == 1:
      # The batch is the global batch: the mean inside the loss and hence the
      # gradient are over all devices (XLA inserts the cross-device reduction).
      loss, metrics, grads = grad_fn(inputs)
    else:
      micro = constrain(split_micro_batches(inputs, k, num_devices), P(None, batch_axes))

      def body(acc, micro):
        loss, metrics, grads = grad_fn(constrain(micro, P(batch_axes)))
        acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), acc, grads)
        return jax.lax.with_sharding_constraint(acc, param_sharding), (loss, metrics)

      zeros = jax.tree.map(
        lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), state.params
      )
      zeros = jax.lax.with_sharding_constraint(zeros, param_sharding)
      acc, (losses, metrics) = jax.lax.scan(body, zeros, micro)
      grads = jax.tree.map(lambda a, p: (a / k).astype(p.dtype), acc, state.params)
      loss = jnp.mean(losses)
      metrics = merge_micro_batches(metrics, k, num_devices)
    obj_state = objective.update_state(state.objective_state, metrics)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = optim.ema_decay_for(run.optim, state.step, run.global_batch_size)
    new_state = state.replace(
      step=state.step + 1,
      params=params,
      ema_params=optim.ema_update(state.ema_params, params, decay),
      phema_params=phema.update(
        state.phema_params, params, state.step + 1, run.training.phema_stds
      ),
      opt_state=opt_state,
      objective_state=obj_state,
    )
    out = step_metrics(metrics, loss, grads, components.lr_schedule(state.step), decay)
    return new_state, out

  return train_step


def step_metrics(metrics: dict, loss, grads, learning_rate, decay) -> dict[str, jax.Array]:
  """The logged scalars of a step, plus the per-noise-level loss sums and counts."""
  sums, counts = loss_buckets(metrics['noise_t'], metrics['loss_per_example'])
  out = {
    k: v.astype(jnp.float32)
    for k, v in metrics.items()
    if jnp.ndim(v) == 0 and jnp.issubdtype(v.dtype, jnp.floating)
  }
  out.update(
    loss=loss.astype(jnp.float32),
    grad_norm=optim.global_norm(grads),
    learning_rate=jnp.asarray(learning_rate, jnp.float32),
    ema_decay=decay,
    loss_bucket_sum=sums,
    loss_bucket_count=counts,
  )
  return out


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
