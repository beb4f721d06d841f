"""EDM's three preconditionings of D(x; sigma) = c_skip x + c_out F(c_in x; c_noise).

'edm' (EDMPrecond), 'vp' (VPPrecond: DDPM++ / score_sde's VP SDE) and 've' (VEPrecond:
NCSN++ / the VE SDE), as pure functions of sigma returning (c_skip, c_out, c_in, c_noise).
The network is conditioned on c_noise (our models receive 1000 c_noise).

Source: Karras et al. 2022 (EDM), Table 1 and reference `training/networks.py`
(VPPrecond, VEPrecond, EDMPrecond).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from diffusion_jax import parameterization

PRECONDS = ('edm', 'vp', 've')
# The reference class of each preconditioning.
PRECOND_CLASSES = {'edm': 'EDMPrecond', 'vp': 'VPPrecond', 've': 'VEPrecond'}
# VPPrecond's defaults: the VP SDE's beta(t) = beta_min + beta_d t, DDPM's M timesteps.
VP_BETA_D = 19.9
VP_BETA_MIN = 0.1
VP_M = 1000
VP_EPSILON_T = 1e-5


def vp_sigma(t: ArrayLike, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN) -> jax.Array:
  """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1): EDM Table 1, VP (expm1: exact
  near t = 0, where the reference's float32 exp(.) - 1 cancels)."""
  t = jnp.asarray(t)
  return jnp.sqrt(jnp.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_sigma_inv(
  sigma: ArrayLike, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN
) -> jax.Array:
  """t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(1 + sigma^2)) - beta_min) / beta_d."""
  sigma = jnp.asarray(sigma)
  return (jnp.sqrt(beta_min**2 + 2 * beta_d * jnp.log(1 + sigma**2)) - beta_min) / beta_d


def vp_preconditioning(
  sigma: ArrayLike, beta_d: float = VP_BETA_D, beta_min: float = VP_BETA_MIN, M: int = VP_M
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1), c_noise = (M - 1) t(sigma).

  Source: EDM Table 1 (VP column); reference `VPPrecond.forward`.
  """
  sigma = jnp.asarray(sigma)
  c_noise = (M - 1) * vp_sigma_inv(sigma, beta_d, beta_min)
  return jnp.ones_like(sigma), -sigma, 1 / jnp.sqrt(sigma**2 + 1), c_noise


def ve_preconditioning(sigma: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma / 2).

  Source: EDM Table 1 (VE column); reference `VEPrecond.forward`.
  """
  sigma = jnp.asarray(sigma)
  return jnp.ones_like(sigma), sigma, jnp.ones_like(sigma), jnp.log(0.5 * sigma)


def preconditioning(
  kind: str, sigma: ArrayLike, sigma_data: float = 0.5, **vp_kwargs: float
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(c_skip, c_out, c_in, c_noise) of preconditioning `kind` ('edm' | 'vp' | 've').

  `vp_kwargs` (beta_d, beta_min, M) override VPPrecond's defaults.
  """
  if kind == 'edm':
    return parameterization.edm_preconditioning(sigma, sigma_data)
  if kind == 'vp':
    return vp_preconditioning(sigma, **vp_kwargs)
  if kind == 've':
    return ve_preconditioning(sigma)
  raise ValueError(f'config.diffusion.precond={kind!r} is not one of {", ".join(PRECONDS)}.')
