"""Training objectives of the five papers, chosen by `config.diffusion.objective`.

    objective = create_objective(run.diffusion, run.model)
    state = objective.init_state()
    loss, metrics, state = objective.loss(model.apply, params, batch, rng, state)
    denoise_fn, init_state = objective.denoiser(model.apply, params, label, guidance=3.0,
                                                x_shape=images.shape)
    images = samplers.sample(objective, model.apply, params, noise, label, rng, run.sample)

Each objective names its paper's sampler as `default_sampler`; the samplers themselves
and their registry are in `diffusion_jax.samplers`.

Objectives: 'chen' (Chen 2023), 'ddpm' (Ho 2020), 'iddpm' (Nichol & Dhariwal 2021),
'edm' (Karras 2022), 'ncsn' (Song & Ermon 2020).
"""

from __future__ import annotations

from typing import Any

from diffusion_jax.objectives import example_rng, importance, self_conditioning, vlb
from diffusion_jax.objectives.base import Objective
from diffusion_jax.objectives.chen import ChenObjective
from diffusion_jax.objectives.config import OBJECTIVES, DiffusionConfig
from diffusion_jax.objectives.discrete import DiscreteObjective
from diffusion_jax.objectives.edm import EDMObjective
from diffusion_jax.objectives.ncsn import NCSNObjective
from diffusion_jax.objectives.vlb import nll_bits_per_dim

# Kept importable here for callers of the old path; diffusion_jax.samplers is canonical.
from diffusion_jax.samplers.settings import SampleSettings

_REGISTRY: dict[str, type[Objective]] = {
  'chen': ChenObjective,
  'ddpm': DiscreteObjective,
  'iddpm': DiscreteObjective,
  'edm': EDMObjective,
  'ncsn': NCSNObjective,
}
assert set(_REGISTRY) == set(OBJECTIVES)


def create_objective(diffusion_cfg: Any, model_cfg: Any = None) -> Objective:
  """Builds the objective named by `config.diffusion.objective`.

  The config is converted and validated once here (`DiffusionConfig.from_config`).

  Args:
    diffusion_cfg: `config.diffusion` (ConfigDict / dict) or a DiffusionConfig.
    model_cfg: a ModelConfig (or `config.model`); its `learn_variance` is read.

  Raises:
    ValueError: unknown objective, schedule, prediction or loss, or any invalid value,
      naming the config key (e.g. "config.diffusion.objective='foo' is not one of ...").
  """
  cfg = DiffusionConfig.from_config(diffusion_cfg, model_cfg)
  return _REGISTRY[cfg.objective](cfg)


__all__ = [
  'OBJECTIVES',
  'ChenObjective',
  'DiffusionConfig',
  'DiscreteObjective',
  'EDMObjective',
  'NCSNObjective',
  'Objective',
  'SampleSettings',
  'create_objective',
  'example_rng',
  'importance',
  'nll_bits_per_dim',
  'self_conditioning',
  'vlb',
]
