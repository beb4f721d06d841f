"""What the parity families share: the batch, the step counts, the mixture and our run."""

from __future__ import annotations

import numpy as np

BATCH = 64
STEPS = (10, 25)


def mixture():
  """(MIXTURE, np_denoise) from tests/mixture_reference.py (the exact mixture denoiser)."""
  import sys

  sys.path.insert(0, 'tests')
  from mixture_reference import MIXTURE, np_denoise

  return MIXTURE, np_denoise


def ours(fn, sigmas, z: np.ndarray, noise: np.ndarray | None = None, **options) -> np.ndarray:
  """Our sampler `fn` in float32 JAX from z sigma_0 on the mixture (noise: step i's draws)."""
  import jax
  import jax.numpy as jnp

  mix, _ = mixture()
  sig = jnp.asarray(sigmas, jnp.float32)
  if noise is not None:
    draws = jnp.asarray(noise, jnp.float32)
    options['noise_fn'] = lambda i, s, s_next: draws[i]
  run = jax.jit(lambda x: fn(mix.denoise, x, sig, **options))
  return np.asarray(run(jnp.asarray(z, jnp.float32) * sig[0]), np.float64)


def row(sampler: str, setting: str, reference: str, ours: np.ndarray, ref: np.ndarray) -> dict:
  """One parity-table row: the largest absolute difference and the reference's scale."""
  return {
    'sampler': sampler,
    'setting': setting,
    'reference': reference,
    'max_abs': float(np.max(np.abs(ours - ref))),
    'scale': float(np.max(np.abs(ref))),
  }
