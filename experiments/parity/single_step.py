"""Single-step samplers and DPM-Solver vs k-diffusion's sample_* functions.

k-diffusion runs in float64 torch (torch.set_default_dtype(float64)) on the exact float64
mixture denoiser; ours in float32 JAX on the same grid (ours, cast to float64 for the
reference) from the same start. Noise is replayed: sample_euler / sample_heun /
sample_dpm_2 draw their churn with torch.randn_like, so the reference runs from a seed and
ours gets the same sequence of draws; the ancestral samplers and DPM-Solver get a
noise_sampler that hands out a pre-drawn table (ours: noise_fn looks it up by step, or by
accepted step for dpm_adaptive); dpmpp_sde runs with k-diffusion's own BrownianTreeNoiseSampler
and ours replays its recorded draws, told apart by interval.

    PYTHONPATH=/path/to/k-diffusion:. python -m experiments.sampler_parity --families=single_step
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

from experiments.parity.common import BATCH, STEPS
from experiments.parity.common import mixture as _mixture

SIGMA_MIN, SIGMA_MAX = 0.002, 10.0


def _model(np_denoise):
  import torch

  def model(x, sigma, **_):
    return torch.from_numpy(np_denoise(x.numpy(), sigma.numpy()))

  return model


class _Table:
  """A k-diffusion noise_sampler that returns table[k] on its k-th call (and records calls)."""

  def __init__(self, table):
    self.table, self.calls = table, []

  def __call__(self, sigma, sigma_next):
    import torch

    self.calls.append((float(sigma), float(sigma_next)))
    return torch.from_numpy(self.table[len(self.calls) - 1])


def _two_draws(sig, first, second):
  """dpmpp_sde's replay: draw 2 of step i is the one over (sigma_i, sigma_{i+1})."""
  import jax.numpy as jnp

  sig = jnp.asarray(sig)
  t1, t2 = jnp.asarray(first, jnp.float32), jnp.asarray(second, jnp.float32)
  return lambda i, s, sn: jnp.where(sn == sig[i + 1], t2[i], t1[i])


def _row(sampler, setting, reference, ours, ref):
  return {
    'sampler': sampler,
    'setting': setting,
    'reference': reference,
    'max_abs': float(np.max(np.abs(np.asarray(ours, np.float64) - ref))),
    'scale': float(np.max(np.abs(ref))),
  }


def cases() -> Iterator[dict]:
  import jax
  import jax.numpy as jnp
  import k_diffusion.sampling as K
  import torch

  from diffusion_jax import schedules
  from diffusion_jax.samplers import dpm_solver, single_step

  torch.set_default_dtype(torch.float64)
  mixture, np_denoise = _mixture()
  model = _model(np_denoise)
  rng = np.random.default_rng(0)
  z = rng.normal(size=(BATCH, 2))

  def ours(fn, x, *args, **kw):
    return np.asarray(jax.jit(lambda x: fn(mixture.denoise, x, *args, **kw))(jnp.asarray(x)))

  grids = {f'karras N={n}': schedules.karras_sigmas(n, SIGMA_MIN, SIGMA_MAX) for n in STEPS} | {
    'exponential N=10': schedules.exponential_sigmas(10, SIGMA_MIN, SIGMA_MAX)
  }

  # Euler / Heun / DPM-2 with and without churn (the churn draws: torch.randn_like per step).
  churn = {'s_churn': 0.0}, {'s_churn': 2.0, 's_tmin': 0.05, 's_tmax': 5.0, 's_noise': 1.003}
  for gname, sig in grids.items():
    sig64 = np.asarray(sig, np.float64)
    x0 = z * sig64[0]
    n = len(sig64) - 1
    for name, ref_fn in (
      ('euler', K.sample_euler),
      ('heun', K.sample_heun),
      ('dpm_2', K.sample_dpm_2),
    ):
      for opts in churn:
        torch.manual_seed(1)
        draws = np.stack([torch.randn(BATCH, 2).numpy() for _ in range(n)])
        torch.manual_seed(1)
        ref = ref_fn(model, torch.from_numpy(x0), torch.from_numpy(sig64), **opts).numpy()
        table = jnp.asarray(draws, jnp.float32)
        got = ours(
          single_step.FAST_SAMPLERS[name].fn,
          x0,
          sig,
          noise_fn=lambda i, s, sn, t=table: t[i],
          **opts,
        )
        churned = ' churn 2, [0.05, 5], s_noise 1.003'
        setting = gname + ('' if opts['s_churn'] == 0 else churned)
        yield _row(name, setting, f'k_diffusion.sampling.sample_{name}', got, ref)

    # Ancestral samplers: a noise table, one draw per step.
    for name, ref_fn in (
      ('euler_ancestral', K.sample_euler_ancestral),
      ('dpm_2_ancestral', K.sample_dpm_2_ancestral),
      ('dpmpp_2s_ancestral', K.sample_dpmpp_2s_ancestral),
    ):
      for eta, s_noise in ((1.0, 1.0), (0.5, 0.9)):
        draws = rng.normal(size=(n, BATCH, 2))
        ref = ref_fn(
          model,
          torch.from_numpy(x0),
          torch.from_numpy(sig64),
          eta=eta,
          s_noise=s_noise,
          noise_sampler=_Table(draws),
        ).numpy()
        table = jnp.asarray(draws, jnp.float32)
        got = ours(
          single_step.FAST_SAMPLERS[name].fn,
          x0,
          sig,
          eta=eta,
          s_noise=s_noise,
          noise_fn=lambda i, s, sn, t=table: t[i],
        )
        yield _row(
          name,
          f'{gname} eta={eta} s_noise={s_noise}',
          f'k_diffusion.sampling.sample_{name}',
          got,
          ref,
        )

    # DPM++ SDE with k-diffusion's Brownian tree; ours replays the recorded draws.
    for eta, r in ((1.0, 0.5), (0.5, 1 / 3)):
      sig_t = torch.from_numpy(sig64)
      tree = K.BrownianTreeNoiseSampler(
        torch.from_numpy(x0), sig_t[sig_t > 0].min(), sig_t.max(), seed=7
      )
      calls = []

      def recording(sigma, sigma_next, tree=tree, calls=calls):
        w = tree(sigma, sigma_next)
        calls.append(w.numpy())
        return w

      ref = K.sample_dpmpp_sde(
        model, torch.from_numpy(x0), sig_t, eta=eta, r=r, noise_sampler=recording
      ).numpy()
      first = np.zeros((n, BATCH, 2))
      second = np.zeros((n, BATCH, 2))
      first[: len(calls) // 2] = np.stack(calls[0::2])
      second[: len(calls) // 2] = np.stack(calls[1::2])
      got = ours(
        single_step.dpmpp_sde, x0, sig, eta=eta, r=r, noise_fn=_two_draws(sig, first, second)
      )
      yield _row(
        'dpmpp_sde',
        f'{gname} eta={eta} r={r:.3g} Brownian tree (seed 7)',
        'k_diffusion.sampling.sample_dpmpp_sde',
        got,
        ref,
      )

  # DPM-Solver-fast: n denoiser calls, noise table per step.
  x0 = z * SIGMA_MAX
  for n in (10, 25, 9):
    for eta in (0.0, 0.5):
      draws = rng.normal(size=(n, BATCH, 2))
      ref = K.sample_dpm_fast(
        model, torch.from_numpy(x0), SIGMA_MIN, SIGMA_MAX, n, eta=eta, noise_sampler=_Table(draws)
      ).numpy()
      table = jnp.asarray(draws, jnp.float32)
      got = ours(
        dpm_solver.dpm_fast,
        x0,
        sigma_min=SIGMA_MIN,
        sigma_max=SIGMA_MAX,
        n=n,
        eta=eta,
        noise_fn=lambda i, s, sn, t=table: t[i],
      )
      yield _row('dpm_fast', f'n={n} eta={eta}', 'k_diffusion.sampling.sample_dpm_fast', got, ref)

  # DPM-Solver adaptive: the info counts are compared too.
  for order, rtol, atol, eta in (
    (3, 0.05, 0.0078, 0.0),
    (2, 0.05, 0.0078, 0.0),
    (3, 0.01, 0.001, 0.0),
    (3, 0.05, 0.0078, 0.5),
  ):
    draws = rng.normal(size=(400, BATCH, 2))
    ref, info = K.sample_dpm_adaptive(
      model,
      torch.from_numpy(x0),
      SIGMA_MIN,
      SIGMA_MAX,
      order=order,
      rtol=rtol,
      atol=atol,
      eta=eta,
      noise_sampler=_Table(draws),
      return_info=True,
    )
    table = jnp.asarray(draws, jnp.float32)
    adaptive = functools.partial(
      dpm_solver.dpm_adaptive,
      mixture.denoise,
      sigma_min=SIGMA_MIN,
      sigma_max=SIGMA_MAX,
      order=order,
      rtol=rtol,
      atol=atol,
      eta=eta,
      noise_fn=lambda k, s, sn, t=table: t[k],
      return_info=True,
    )
    got, got_info = jax.jit(adaptive)(jnp.asarray(x0))
    counts = lambda d: '/'.join(str(int(d[k])) for k in ('nfe', 'n_accept', 'n_reject'))
    yield _row(
      'dpm_adaptive',
      f'order={order} rtol={rtol} atol={atol} eta={eta}; nfe/accept/reject ours '
      f'{counts(got_info)}, k-diffusion {counts(info)}',
      'k_diffusion.sampling.sample_dpm_adaptive',
      np.asarray(got),
      ref.numpy(),
    )
