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

The fast samplers (k-diffusion's and diffusers' families: euler_ancestral, dpm_2,
dpmpp_2m, dpmpp_3m, dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde, lms, dpm_fast,
dpm_adaptive, unipc, deis, and euler / heun under those names) share one contract
(`stepping.py`), are registered from `fast.py` and are callable directly:

    x0 = samplers.dpmpp_2m(D, z * sigmas[0], sigmas)
    x0 = samplers.dpmpp_2m_sde(D, z * sigmas[0], sigmas, rng=key, eta=1.0)
"""

from diffusion_jax.samplers import (
  builtin,  # noqa: F401  (registers the built-in entries)
  fast,  # noqa: F401  (registers the fast samplers)
)
from diffusion_jax.samplers.chen import DDPM_VARIANCES as CHEN_DDPM_VARIANCES
from diffusion_jax.samplers.chen import chen_sample
from diffusion_jax.samplers.deis_multistep import deis
from diffusion_jax.samplers.discrete import ddim_encode, ddim_sample, ddpm_sample
from diffusion_jax.samplers.dpm_solver import dpm_adaptive, dpm_fast
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
from diffusion_jax.samplers.multistep import dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, dpmpp_3m_sde, lms
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
from diffusion_jax.samplers.single_step import (
  dpm_2,
  dpm_2_ancestral,
  dpmpp_2s_ancestral,
  dpmpp_sde,
  euler,
  euler_ancestral,
  heun,
)
from diffusion_jax.samplers.unipc_multistep import unipc

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
  'deis',
  'dpm_2',
  'dpm_2_ancestral',
  'dpm_adaptive',
  'dpm_fast',
  'dpmpp_2m',
  'dpmpp_2m_sde',
  'dpmpp_2s_ancestral',
  'dpmpp_3m',
  'dpmpp_3m_sde',
  'dpmpp_sde',
  'edm_nfe',
  'edm_sample',
  'euler',
  'euler_ancestral',
  'gaussian_mixture_denoiser',
  'get',
  'heun',
  'langevin_sample',
  'lms',
  'names',
  'nfe',
  'point_set_denoiser',
  'register',
  'resolve',
  'sample',
  'unipc',
]
