"""UniPC and DEIS vs diffusers' UniPCMultistepScheduler / DEISMultistepScheduler.

The diffusers loop runs in float64 torch (VP space, x_vp = alpha x) with a model function
computed from the exact float64 mixture denoiser (as 'sample' or 'epsilon' prediction);
ours in float32 JAX in the EDM form on `schedules.discrete_sigmas` (UniPC, the grid of
final_sigmas_type='zero') or on the discrete sigmas ending at sigma(t=0) (DEIS's grid,
and UniPC's final_sigmas_type='sigma_min'). Ours starts from z sigma_0, diffusers from
alpha_0 z sigma_0; the reference's final x_vp is divided by alpha at its last level.

    PYTHONPATH=/path/to/k-diffusion:. python -m experiments.sampler_parity --families=unipc_deis
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from experiments.parity.common import BATCH, STEPS, row
from experiments.parity.common import mixture as _mixture
from experiments.parity.common import ours as _ours


def _reference(
  scheduler, n: int, z: np.ndarray, np_denoise, prediction: str, sigmas64: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Runs diffusers' loop; returns (final sample / alpha_last, the last x0 it was fed, its
  sigmas)."""
  import torch

  scheduler.set_timesteps(n)
  if sigmas64:
    scheduler.sigmas = scheduler.sigmas.double()
  sig = scheduler.sigmas.double().numpy()
  alpha = lambda s: 1.0 / np.sqrt(s**2 + 1.0)
  x = torch.from_numpy(z * sig[0] * alpha(sig[0]))
  last = None
  for i, t in enumerate(scheduler.timesteps):
    s = float(scheduler.sigmas[i])
    a = alpha(s)
    x0 = np_denoise(x.numpy() / a, s)
    last = x0
    out = x0 if prediction == 'sample' else (x.numpy() - a * x0) / (a * s)
    x = scheduler.step(torch.from_numpy(out), t, x).prev_sample
  return x.numpy() / alpha(sig[-1]), last, sig


def cases() -> Iterator[dict]:
  from diffusers import DEISMultistepScheduler, UniPCMultistepScheduler

  from diffusion_jax import schedules
  from diffusion_jax.samplers import deis_multistep as deis
  from diffusion_jax.samplers import unipc_multistep as unipc

  _, np_denoise = _mixture()
  table = schedules.DiscreteSchedule.from_name('linear', 1000)
  z = np.random.default_rng(0).normal(size=(BATCH, 2))

  def t0_grid(n: int, spacing: str) -> np.ndarray:
    t = schedules.discrete_timesteps(1000, n, spacing)
    return np.append(table.edm_sigmas[t], table.edm_sigmas[0])

  for n, spacing in zip(STEPS, ('linspace', 'trailing')):
    for order in (1, 2, 3):
      for variant in ('bh2', 'bh1'):
        for prediction in ('sample', 'epsilon'):
          sched = UniPCMultistepScheduler(
            solver_order=order,
            solver_type=variant,
            lower_order_final=True,
            final_sigmas_type='zero',
            prediction_type=prediction,
            timestep_spacing=spacing,
          )
          ref, last, _ = _reference(sched, n, z, np_denoise, prediction)
          note = ''
          if not np.all(np.isfinite(ref)):
            # bh1's B(h) = -h is -inf at sigma = 0 and diffusers' -inf * 0 gives NaN; the
            # limit of its last (first-order) step is the x0 it was fed.
            ref, note = last, '; diffusers NaN at sigma 0, vs its limit D(x_{N-1})'
          ours = _ours(
            unipc.unipc,
            schedules.discrete_sigmas(table, n, spacing),
            z,
            order=order,
            variant=variant,
          )
          yield row(
            'unipc',
            f'order={order} {variant} N={n} {spacing} {prediction}{note}',
            f"diffusers UniPCMultistepScheduler(solver_order={order}, solver_type='{variant}')",
            ours,
            ref,
          )
    # A positive last level (final_sigmas_type='sigma_min'), without lower_order_final.
    for variant in ('bh2', 'bh1'):
      sched = UniPCMultistepScheduler(
        solver_order=3,
        solver_type=variant,
        lower_order_final=False,
        final_sigmas_type='sigma_min',
        prediction_type='sample',
        timestep_spacing=spacing,
      )
      ref, _, grid = _reference(sched, n, z, np_denoise, 'sample')
      options = dict(order=3, variant=variant, lower_order_final=False)
      setting = f"order=3 {variant} lower_order_final=False N={n} {spacing} 'sigma_min'"
      reference = f"diffusers UniPCMultistepScheduler(solver_order=3, solver_type='{variant}')"
      ours = _ours(unipc.unipc, t0_grid(n, spacing), z, **options)
      yield row('unipc', setting, reference, ours, ref)
      # The order-3 step to sigma(t=0) ~ 0.01 amplifies the last level's difference:
      # diffusers' float32 sqrt((1 - abar_0) / abar_0) is 8e-5 off the float64 value.
      ours = _ours(unipc.unipc, grid, z, **options)
      yield row('unipc', setting + " on diffusers' float32 sigmas", reference, ours, ref)

  for n, spacing in ((10, 'linspace'), (25, 'linspace'), (10, 'leading'), (25, 'trailing')):
    for order in (1, 2, 3):
      for prediction in ('sample', 'epsilon'):
        ours = _ours(deis.deis, t0_grid(n, spacing), z, order=order)
        ref, _, _ = _reference(
          DEISMultistepScheduler(
            solver_order=order, prediction_type=prediction, timestep_spacing=spacing
          ),
          n,
          z,
          np_denoise,
          prediction,
        )
        yield row(
          'deis',
          f'order={order} N={n} {spacing} {prediction}',
          f'diffusers DEISMultistepScheduler(solver_order={order})',
          ours,
          ref,
        )
      if order == 3:
        # diffusers computes its coefficients from float32 sigmas; its order-3 ind_fn
        # differences cancel there. The same run with its sigmas cast to float64:
        ref64, _, grid = _reference(
          DEISMultistepScheduler(solver_order=3, timestep_spacing=spacing),
          n,
          z,
          np_denoise,
          'epsilon',
          sigmas64=True,
        )
        yield row(
          'deis',
          f'order=3 N={n} {spacing} epsilon; reference sigmas cast to float64',
          'diffusers DEISMultistepScheduler(solver_order=3)',
          ours,
          ref64,
        )
        yield row(
          'deis',
          f"order=3 N={n} {spacing} epsilon; float64-cast reference, diffusers' sigmas",
          'diffusers DEISMultistepScheduler(solver_order=3)',
          _ours(deis.deis, grid, z, order=3),
          ref64,
        )
