"""Samplers: every paper's sampler as a pure function of an EDM-form denoiser.

Each sampler takes a data-space denoiser D(x; sigma) (stateless, or stateful for
self-conditioning carry; see `guidance`), the starting noise, a schedule and an
rng, and is traced inside the caller's `jax.jit` with a `lax.scan` step loop:

    x = jax.jit(lambda z, k: edm_sample(D, z * sigmas[0], sigmas, rng=k))(z, key)

The registry (`registry.py`, built-in entries in `builtin.py`) is the dispatch from
`config.sample.sampler` to those functions:

    images = samplers.sample(objective, model.apply, params, noise, label, rng, settings)
    samplers.nfe(settings, objective)

and `@samplers.register(name, nfe=..., needs=...)` adds one from anywhere.
"""

from diffusion_jax.samplers import builtin  # noqa: F401  (registers the built-in entries)
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
from diffusion_jax.samplers.registry import (
  NEEDS,
  Sampler,
  get,
  names,
  nfe,
  register,
  resolve,
  sample,
)
from diffusion_jax.samplers.settings import SampleSettings

__all__ = [
  'CHEN_DDPM_VARIANCES',
  'GUIDANCE_CARRIES',
  'NEEDS',
  'GaussianMixture',
  'SampleSettings',
  'Sampler',
  'as_stateful',
  'chen_sample',
  'classifier_free_guidance',
  'ddim_encode',
  'ddim_sample',
  'ddpm_sample',
  'edm_nfe',
  'edm_sample',
  'gaussian_mixture_denoiser',
  'get',
  'langevin_sample',
  'names',
  'nfe',
  'point_set_denoiser',
  'register',
  'resolve',
  'sample',
]
