"""Samplers: every paper's sampler as a pure function of an EDM-form denoiser.

Each sampler takes a data-space denoiser D(x; sigma) (stateless, or stateful for
self-conditioning carry; see `guidance`), the starting noise, a schedule and an
rng, and is traced inside the caller's `jax.jit` with a `lax.scan` step loop.
Samplers are registered by name:

  sampler = get_sampler('edm')
  x = jax.jit(lambda z, k: sampler(D, z * sigmas[0], sigmas, rng=k))(z, key)
"""

from collections.abc import Callable

from diffusion_jax.samplers.chen import DDPM_VARIANCES as CHEN_DDPM_VARIANCES
from diffusion_jax.samplers.chen import chen_sample
from diffusion_jax.samplers.discrete import ddim_encode, ddim_sample, ddpm_sample
from diffusion_jax.samplers.edm import edm_nfe, edm_sample
from diffusion_jax.samplers.exact import (
  GaussianMixture,
  gaussian_mixture_denoiser,
  point_set_denoiser,
)
from diffusion_jax.samplers.guidance import (
  GUIDANCE_CARRIES,
  as_stateful,
  classifier_free_guidance,
)
from diffusion_jax.samplers.langevin import langevin_sample

_REGISTRY: dict[str, Callable] = {}


def register_sampler(name: str, fn: Callable | None = None):
  """Registers `fn` under `name`; usable as `@register_sampler('name')`."""
  if not isinstance(name, str) or not name:
    raise ValueError(f'name must be a non-empty string; got {name!r}.')

  def add(f: Callable) -> Callable:
    if name in _REGISTRY and _REGISTRY[name] is not f:
      raise ValueError(f'a sampler named {name!r} is already registered; pick another name.')
    _REGISTRY[name] = f
    return f

  return add if fn is None else add(fn)


def get_sampler(name: str) -> Callable:
  """The sampler registered as `name` (see `sampler_names()`)."""
  if name not in _REGISTRY:
    raise ValueError(f'unknown sampler {name!r}; valid names: {sorted(_REGISTRY)}.')
  return _REGISTRY[name]


def sampler_names() -> list[str]:
  """All registered sampler names."""
  return sorted(_REGISTRY)


register_sampler('edm', edm_sample)
register_sampler('ddpm', ddpm_sample)
register_sampler('ddim', ddim_sample)
register_sampler('ddim_encode', ddim_encode)
register_sampler('chen', chen_sample)
register_sampler('langevin', langevin_sample)

__all__ = [
  'CHEN_DDPM_VARIANCES',
  'GUIDANCE_CARRIES',
  'GaussianMixture',
  'as_stateful',
  'chen_sample',
  'classifier_free_guidance',
  'ddim_encode',
  'ddim_sample',
  'ddpm_sample',
  'edm_nfe',
  'edm_sample',
  'gaussian_mixture_denoiser',
  'get_sampler',
  'langevin_sample',
  'point_set_denoiser',
  'register_sampler',
  'sampler_names',
]
