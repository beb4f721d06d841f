"""The one factory: a RunConfig -> the run's components, built once per process.

`build(run)` creates the network, the objective, the optimizer and its schedule, the
device mesh and the shardings of the train state and of the batches. The trainer, the
grid sampler, --mode=sample and --mode=eval share one Components, so the model and the
objective are constructed once.

    run = config_lib.build_run_config(config)
    components = build(run)
    images = components.sample_batch(params, noise, labels, rng)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from diffusion_jax import models, objectives, samplers
from diffusion_jax.config import RunConfig
from diffusion_jax.training import optim, phema
from diffusion_jax.training import sharding as sharding_lib
from diffusion_jax.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class Components:
  """Everything a run is made of; nothing here is compiled yet.

  Attributes:
    run: the typed run config.
    model: the network (init/apply).
    objective: the training objective (loss/denoiser).
    tx: the optimizer.
    lr_schedule: step -> learning rate.
    mesh: the ('data', 'fsdp') device mesh.
    init_fn: rng -> TrainState (not jitted).
    state_sharding: TrainState-shaped pytree of NamedShardings.
    batch_sharding: sharding of every batch array (leading dim over all devices).
    sample_batch: (params, noise [B, H, W, C], labels [B], rng, overrides=None) -> images
      in [-1, 1], jitted with the output split like the batch: the one sampler of the
      trainer's grids, --mode=sample and --mode=eval (compiled on first call, once per
      shape). `overrides` maps settings of `samplers.settings.TRACEABLE` (guidance, eta,
      s_noise, s_churn) to values that are traced: new values reuse the compiled sampler.
  """

  run: RunConfig
  model: models.Model
  objective: objectives.Objective
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  mesh: jax.sharding.Mesh
  init_fn: Callable[[jax.Array], TrainState]
  state_sharding: Any
  batch_sharding: jax.sharding.NamedSharding
  sample_batch: Callable[..., jax.Array]


def dummy_inputs(run: RunConfig, batch: int = 1) -> dict[str, Any]:
  """Zero network inputs of the run's shapes; 'label' is None for an unconditional run."""
  size, channels = run.data.image_size, run.data.num_channels
  return {
    'x': jnp.zeros((batch, size, size, channels), jnp.float32),  # [B, H, W, C]
    'noise_level': jnp.zeros((batch,), jnp.float32),  # [B]
    'label': jnp.zeros((batch,), jnp.int32) if run.conditional else None,  # [B]
  }


def _init_fn(run: RunConfig, model: Any, objective: Any, tx: Any) -> Callable:
  t = run.training
  if t.phema_snapshot_every:
    phema.std_to_gamma(t.phema_stds)  # validates before anything is traced

  def init_fn(rng: jax.Array) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    d = dummy_inputs(run)
    params = model.init(init_rng, d['x'], d['noise_level'], d['label'])
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      ema_params=jax.tree.map(jnp.copy, params),
      opt_state=tx.init(params),
      rng=state_rng,
      objective_state=objective.init_state(),
      phema_params=phema.init(params, t.phema_stds) if t.phema_snapshot_every else (),
    )

  return init_fn


def build(run: RunConfig, mesh: jax.sharding.Mesh | None = None) -> Components:
  """Builds the run's components from its typed config.

  Args:
    run: from `config.build_run_config`.
    mesh: the device mesh; default a ('data', 'fsdp') mesh of every device with
      run.training.mesh_fsdp.

  Returns:
    The Components (model and objective constructed here, once).
  """
  if not isinstance(run, RunConfig):
    raise TypeError(
      f'build takes a RunConfig, got {type(run).__name__}; use config.build_run_config first.'
    )
  if mesh is None:
    mesh = sharding_lib.create_mesh(run.training.mesh_fsdp)
  model = models.create_model(run.model)
  objective = objectives.create_objective(run.diffusion, run.model)
  tx, lr_schedule = optim.create_optimizer(run.optim)
  init_fn = _init_fn(run, model, objective, tx)
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  state_sharding = sharding_lib.tree_shardings(mesh, abstract)
  state_sharding = state_sharding.replace(
    step=sharding_lib.replicated(mesh), rng=sharding_lib.replicated(mesh)
  )
  batch = sharding_lib.batch_sharding(mesh)

  def sample_batch(params, noise, labels, rng, overrides=None):
    return sample_images(run, model, objective, params, noise, labels, rng, overrides)

  return Components(
    run=run,
    model=model,
    objective=objective,
    tx=tx,
    lr_schedule=lr_schedule,
    mesh=mesh,
    init_fn=init_fn,
    state_sharding=state_sharding,
    batch_sharding=batch,
    sample_batch=jax.jit(sample_batch, out_shardings=batch),
  )


def abstract_params(components: Components) -> Any:
  """ShapeDtypeStructs (with the train state's shardings) of the network's parameters."""
  shapes = jax.eval_shape(components.init_fn, jax.random.PRNGKey(0)).params
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
    shapes,
    components.state_sharding.params,
  )


def sample_images(
  run: RunConfig,
  model: models.Model,
  objective: objectives.Objective,
  params: Any,
  noise: jax.Array,
  labels: jax.Array | None,
  rng: jax.Array,
  overrides: dict[str, Any] | None = None,
) -> jax.Array:
  """Images [B, H, W, C] in [-1, 1] from unit noise [B, H, W, C] with run.sample's sampler.

  Any registered sampler drives any model through the objective's EDM-form denoiser.
  Labels reach the network only for a class-conditional run. `overrides` replaces
  settings of `samplers.settings.TRACEABLE` with (possibly traced) values.
  """
  label = labels if run.conditional else None
  settings = run.sample
  if overrides:
    unknown = set(overrides) - set(samplers.settings.TRACEABLE)
    if unknown:
      raise ValueError(
        f'sampler overrides {sorted(unknown)} cannot be traced; valid: '
        f'{", ".join(samplers.settings.TRACEABLE)} (set the others in config.sample).'
      )
    settings = settings.replace(**overrides)
  images = samplers.sample(objective, model.apply, params, noise, label, rng, settings)
  return jnp.clip(images, -1.0, 1.0)


def sampler_nfe(components: Components) -> int:
  """Network evaluations per sample of run.sample's sampler."""
  return samplers.nfe(components.run.sample, components.objective)


__all__ = ['Components', 'abstract_params', 'build', 'dummy_inputs', 'sample_images', 'sampler_nfe']
