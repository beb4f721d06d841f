"""The sampler registry, which is also the dispatch: config name -> function, NFE, needs.

`sample(objective, apply_fn, params, noise, label, rng, settings)` looks up
`settings.sampler` ('default' = `objective.default_sampler`), hands the entry a
builder of the objective's EDM-form denoiser and returns its images; `nfe(settings,
objective)` asks the same entry for its network evaluations. The built-in entries are
in `samplers/builtin.py`; one registered from outside the package is selected the
same way, with `config.sample.sampler = 'mine'`:

    @samplers.register('mine', nfe=lambda settings, objective: settings.num_steps)
    def mine(objective, denoiser, noise, rng, settings):
      denoise_fn, init_state = denoiser()  # D(x; sigma) -> x0 in [-1, 1]
      ...
      return images  # [B, H, W, C] in [-1, 1]

Register before the run config is built (`config.sample.sampler` is checked against
the registry then): in the config file itself, or in a module it imports.

`denoiser(clip_x0=settings.clip_x0)` returns `(denoise_fn, init_state)` as
`Objective.denoiser` does, with the settings' guidance and carry; init_state is None
unless the model is self-conditioned (then denoise_fn takes and returns the state).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

if TYPE_CHECKING:
  from diffusion_jax.objectives.base import Objective
  from diffusion_jax.samplers.settings import SampleSettings

# What an entry may declare it needs:
# - 'stochastic': it always draws from rng (sample() then refuses rng=None);
# - 'learned_variance': it takes (x0, v) from a learned-variance model (iDDPM), so the
#   denoiser returns v whenever the objective learns it;
# - 'discrete_schedule': it walks the objective's DDPM beta table
#   (config.diffusion.beta_schedule, num_timesteps), respaced to num_steps.
NEEDS = ('stochastic', 'learned_variance', 'discrete_schedule')

DenoiserBuilder = Callable[..., tuple[Callable, Any]]
SamplerFn = Callable[['Objective', DenoiserBuilder, jax.Array, jax.Array, 'SampleSettings'], Any]
NfeFn = Callable[['SampleSettings', 'Objective'], int]


@dataclasses.dataclass(frozen=True)
class Sampler:
  """One registered sampler: its config name, function, NFE rule and needs."""

  name: str
  fn: SamplerFn
  nfe: NfeFn
  needs: frozenset[str]


_REGISTRY: dict[str, Sampler] = {}


def register(
  name: str, *, nfe: NfeFn, needs: frozenset[str] | set[str] = frozenset()
) -> Callable[[SamplerFn], SamplerFn]:
  """Registers the decorated function as the sampler `config.sample.sampler = name`.

  Args:
    name: the config name; not 'default', which means the objective's own.
    nfe: (settings, objective) -> network evaluations per sample (without guidance's
      doubled batch).
    needs: a subset of `NEEDS`.

  Returns:
    A decorator that registers and returns the function unchanged.

  Raises:
    ValueError: a bad name or need, or a name already taken by another function.
  """
  if not isinstance(name, str) or not name or name == 'default':
    raise ValueError(
      f"a sampler name must be a non-empty string other than 'default'; got {name!r}."
    )
  unknown = set(needs) - set(NEEDS)
  if unknown:
    raise ValueError(
      f'sampler {name!r}: unknown needs {sorted(unknown)}; valid: {", ".join(NEEDS)}.'
    )
  if not callable(nfe):
    raise ValueError(f'sampler {name!r}: nfe must be a callable (settings, objective) -> int.')

  def add(fn: SamplerFn) -> SamplerFn:
    if name in _REGISTRY and _REGISTRY[name].fn is not fn:
      raise ValueError(f'a sampler named {name!r} is already registered; pick another name.')
    _REGISTRY[name] = Sampler(name, fn, nfe, frozenset(needs))
    return fn

  return add


def names() -> tuple[str, ...]:
  """Every registered sampler name, sorted."""
  return tuple(sorted(_REGISTRY))


def get(name: str) -> Sampler:
  """The entry registered as `name`.

  Raises:
    ValueError: one line listing the registered names.
  """
  if name not in _REGISTRY:
    raise ValueError(
      f'unknown sampler {name!r}; registered: {", ".join(names())} '
      "(or 'default'; register new ones with samplers.register)."
    )
  return _REGISTRY[name]


def resolve(settings: SampleSettings, objective: Objective) -> Sampler:
  """The entry `settings.sampler` selects; 'default' is `objective.default_sampler`."""
  name = settings.sampler
  return get(objective.default_sampler if name == 'default' else name)


def sample(
  objective: Objective,
  apply_fn: Callable,
  params: Any,
  noise: jax.Array,
  label: jax.Array | None,
  rng: jax.Array | None,
  settings: SampleSettings,
) -> jax.Array:
  """Images [B, H, W, C] in [-1, 1] from unit Gaussian `noise` with the selected sampler.

  Traceable: call it inside `jax.jit`.

  Args:
    objective: the Objective whose denoiser is driven.
    apply_fn: the model's apply function.
    params: model parameters (e.g. the EMA copy).
    noise: N(0, I) [B, H, W, C].
    label: int32 [B] (-1 = null) or None for an unconditional model.
    rng: PRNG key; may be None for deterministic samplers.
    settings: the run's SampleSettings.

  Raises:
    ValueError: an unknown sampler, or rng=None for a stochastic one.
  """
  entry = resolve(settings, objective)
  if rng is None and 'stochastic' in entry.needs:
    raise ValueError(f'sampler {entry.name!r} draws noise: pass an rng key.')
  learned = 'learned_variance' in entry.needs and objective.config.learn_variance

  def denoiser(clip_x0: bool = settings.clip_x0) -> tuple[Callable, Any]:
    return objective.denoiser(
      apply_fn,
      params,
      label,
      settings.guidance,
      x_shape=noise.shape,
      clip_x0=clip_x0,
      return_variance=learned,
      guidance_carry=settings.guidance_carry,
    )

  return entry.fn(objective, denoiser, noise, rng, settings)


def nfe(settings: SampleSettings, objective: Objective) -> int:
  """Network evaluations per sample of the selected sampler (guidance runs each on 2B)."""
  return int(resolve(settings, objective).nfe(settings, objective))
