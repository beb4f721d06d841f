"""LMS and DPM-Solver++ 2M / 3M / 2M SDE / 3M SDE vs k-diffusion and diffusers.

k-diffusion's samplers run in float64 torch on the exact float64 mixture denoiser, fed the
per-step draws ours gets through noise_fn (its noise_sampler returns draw i on its i-th
call, which is step i's). diffusers' DPMSolverMultistepScheduler (dpmsolver++,
prediction_type='sample', final_sigmas_type='zero') runs in VP space, x_vp = alpha x, from
alpha_0 z sigma_0; its final x_vp (alpha = 1 at sigma 0) is compared with ours on
`schedules.discrete_sigmas` at the same num_inference_steps and timestep_spacing.

The 3M rows sit near 1e-5 (the others near 1e-6): the 3M update amplifies per-call
denoiser errors (the float32 mixture denoiser is 3e-7 off the float64 one) by ~50 on the
worst sample, as the 'float64 reference itself on the float32 denoiser' rows show; ours
run entirely in float64 matches the reference to 2e-14.

    PYTHONPATH=/path/to/k-diffusion:. python -m experiments.sampler_parity --families=multistep
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from experiments.parity.common import BATCH, STEPS, row
from experiments.parity.common import mixture as _mixture
from experiments.parity.common import ours as _ours


def _k_diffusion(
  name: str,
  sigmas,
  z: np.ndarray,
  noise: np.ndarray | None = None,
  f32_model: bool = False,
  **options,
):
  """k-diffusion's sampler `name` in float64 (f32_model: on ours' float32 JAX denoiser)."""
  import jax.numpy as jnp
  import k_diffusion.sampling as K
  import torch

  mixture, np_denoise = _mixture()
  sig = torch.tensor(np.asarray(sigmas, np.float64))

  def model(x, s):
    if f32_model:
      out = mixture.denoise(
        jnp.asarray(x.numpy(), jnp.float32), jnp.asarray(s.numpy(), jnp.float32)
      )
      return torch.from_numpy(np.asarray(out, np.float64))
    return torch.from_numpy(np_denoise(x.numpy(), s.numpy()))

  if noise is not None:
    calls = iter(range(len(noise)))
    options['noise_sampler'] = lambda s, s_next: torch.from_numpy(noise[next(calls)])
  x = torch.from_numpy(z * float(sig[0]))
  return getattr(K, name)(model, x, sig, disable=True, **options).numpy()


def _diffusers(n: int, spacing: str, order: int, lower_order_final: bool, z: np.ndarray):
  import torch
  from diffusers import DPMSolverMultistepScheduler

  _, np_denoise = _mixture()
  sched = DPMSolverMultistepScheduler(
    algorithm_type='dpmsolver++',
    solver_order=order,
    solver_type='midpoint',
    lower_order_final=lower_order_final,
    euler_at_final=False,
    final_sigmas_type='zero',
    prediction_type='sample',
    timestep_spacing=spacing,
  )
  sched.set_timesteps(n)
  sig = sched.sigmas.double().numpy()
  alpha = lambda s: 1.0 / np.sqrt(s**2 + 1.0)
  x = torch.from_numpy(z * sig[0] * alpha(sig[0]))
  for i, t in enumerate(sched.timesteps):
    s = float(sched.sigmas[i])
    x0 = np_denoise(x.numpy() / alpha(s), s)
    x = sched.step(torch.from_numpy(x0), t, x).prev_sample
  return x.numpy() / alpha(sig[-1])


def cases() -> Iterator[dict]:
  from diffusion_jax import schedules
  from diffusion_jax.samplers import multistep

  table = schedules.DiscreteSchedule.from_name('linear', 1000)
  z = np.random.default_rng(0).normal(size=(BATCH, 2))

  for n in STEPS:
    grid = np.asarray(schedules.karras_sigmas(n, 0.002, 80.0), np.float64)
    noise = np.random.default_rng(n).normal(size=(n, BATCH, 2))
    setting = f'karras N={n}'
    for order in (4, 2):
      yield row(
        'lms',
        f'order={order} {setting}',
        'k_diffusion.sampling.sample_lms',
        _ours(multistep.lms, grid, z, order=order),
        _k_diffusion('sample_lms', grid, z, order=order),
      )
    yield row(
      'dpmpp_2m',
      setting,
      'k_diffusion.sampling.sample_dpmpp_2m',
      _ours(multistep.dpmpp_2m, grid, z),
      _k_diffusion('sample_dpmpp_2m', grid, z),
    )
    yield row(
      'dpmpp_3m',
      setting,
      'k_diffusion.sampling.sample_dpmpp_3m_sde(eta=0)',
      _ours(multistep.dpmpp_3m, grid, z),
      _k_diffusion('sample_dpmpp_3m_sde', grid, z, eta=0.0),
    )
    # The 3M update's conditioning: the float64 reference on the float32 denoiser (3e-7
    # off the float64 one) moves by as much as ours differs from it.
    yield row(
      'dpmpp_3m',
      f'{setting}; the float64 reference itself on the float32 denoiser',
      'k_diffusion.sampling.sample_dpmpp_3m_sde(eta=0)',
      _k_diffusion('sample_dpmpp_3m_sde', grid, z, eta=0.0, f32_model=True),
      _k_diffusion('sample_dpmpp_3m_sde', grid, z, eta=0.0),
    )
    for solver_type in ('midpoint', 'heun'):
      for eta, s_noise in ((1.0, 1.0), (0.5, 0.8)):
        yield row(
          'dpmpp_2m_sde',
          f'{solver_type} eta={eta} s_noise={s_noise} {setting}',
          'k_diffusion.sampling.sample_dpmpp_2m_sde',
          _ours(
            multistep.dpmpp_2m_sde,
            grid,
            z,
            noise,
            eta=eta,
            s_noise=s_noise,
            solver_type=solver_type,
          ),
          _k_diffusion(
            'sample_dpmpp_2m_sde',
            grid,
            z,
            noise,
            eta=eta,
            s_noise=s_noise,
            solver_type=solver_type,
          ),
        )
    for eta, s_noise in ((1.0, 1.0), (0.5, 0.8)):
      yield row(
        'dpmpp_3m_sde',
        f'eta={eta} s_noise={s_noise} {setting}',
        'k_diffusion.sampling.sample_dpmpp_3m_sde',
        _ours(multistep.dpmpp_3m_sde, grid, z, noise, eta=eta, s_noise=s_noise),
        _k_diffusion('sample_dpmpp_3m_sde', grid, z, noise, eta=eta, s_noise=s_noise),
      )

  # diffusers: N < 15 and N >= 15 (its lower_order_final rule), every spacing.
  for n, spacing in ((10, 'linspace'), (14, 'leading'), (15, 'trailing'), (25, 'linspace')):
    grid = schedules.discrete_sigmas(table, n, spacing)
    for order, fn in ((2, multistep.dpmpp_2m), (3, multistep.dpmpp_3m)):
      for lof in (True, False):
        ref = _diffusers(n, spacing, order, lof, z)
        reference = (
          f'diffusers DPMSolverMultistepScheduler(solver_order={order}, lower_order_final={lof})'
        )
        setting = f'N={n} {spacing}'
        ours = _ours(fn, grid, z, multistep_style='diffusers', lower_order_final=lof)
        yield row(fn.__name__, f'diffusers style {setting}', reference, ours, ref)
        if lof:
          # The k-diffusion style on the same grid: identical for 2M, not for 3M.
          ours = _ours(fn, grid, z)
          yield row(fn.__name__, f'k_diffusion style {setting}', reference, ours, ref)
