"""EDM: Euler vs Heun error against NFE, and the rho sweep, with an exact denoiser.

The data distribution is a Gaussian mixture built from the 8x8 digits (one component per
class: the class mean and per-pixel std, std floored at 0.05), so its denoiser
D(x; sigma) is exact (`samplers.GaussianMixture`) and the probability-flow ODE can be
solved without a trained network. Every solve starts from the same noise; the error of
a sample is its RMS distance per dimension to a Heun solve with 512 steps (NFE 1023).

The table reports the median of that error over samples: a few trajectories of a
coarse solver end in a different mixture component than the reference (an error of
order 1), which dominates the mean but says nothing about the solver's order; their
share is reported separately.

Source: Karras et al. 2022 (EDM), Section 3, Algorithm 1, eq. 5, Figures 2 and 3.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from diffusion_jax import schedules
from diffusion_jax.samplers import GaussianMixture, edm_nfe, edm_sample
from experiments import report

NAME = 'edm_sampler_error'
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
STEP_COUNTS = (4, 8, 16, 32, 64, 128)
RHOS = (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 40.0)
RHO_STEP_COUNTS = (8, 16, 32)
REFERENCE_STEPS = 512
# Error (RMS per dimension) above which a sample is counted apart: at fine step counts,
# these are the samples that ended in another mixture component than the reference.
FAR_ERROR = 0.1


def digits_mixture(std_floor: float = 0.05) -> GaussianMixture:
  """A 10-component diagonal Gaussian mixture fitted per class to the 8x8 digits in [-1, 1]."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  x = digits.images.reshape(len(digits.images), -1) / 8.0 - 1.0  # [N, 64]
  means = np.stack([x[digits.target == k].mean(0) for k in range(10)])  # [10, 64]
  stds = np.stack([np.maximum(x[digits.target == k].std(0), std_floor) for k in range(10)])
  weights = np.bincount(digits.target, minlength=10).astype(np.float64)
  return GaussianMixture(weights, means, stds)


def padded_sigmas(num_steps: int, length: int, rho: float = 7.0) -> np.ndarray:
  """karras_sigmas(num_steps, rho) with sigma_max repeated in front to `length` + 1 entries.

  A step from sigma to the same sigma moves x by (t_next - t_cur) d = 0 exactly, for
  Euler and Heun alike, so the padded grid gives the same sample as the unpadded one
  while every grid shares one compiled solver.
  """
  sig = np.asarray(schedules.karras_sigmas(num_steps, SIGMA_MIN, SIGMA_MAX, rho), np.float32)
  if num_steps > length:
    raise ValueError(f'num_steps={num_steps} must be <= length={length}; raise the length.')
  return np.concatenate([np.full((length - num_steps,), sig[0], np.float32), sig])


@functools.lru_cache(maxsize=16)
def make_solver(denoise_fn, method: str):
  """jit-compiled `(sigmas [L + 1], z [B, D]) -> sample [B, D]` for one method.

  Cached, so repeated calls with the same denoiser reuse one compiled solver per shape.
  """
  return jax.jit(lambda sig, z: edm_sample(denoise_fn, z * sig[0], sig, method=method))


def sample_errors(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
  """Per-sample RMS distance per dimension, float64 [B]."""
  d = np.asarray(x, np.float64) - np.asarray(ref, np.float64)
  return np.sqrt(np.mean(d.reshape(d.shape[0], -1) ** 2, axis=-1))


def loglog_slope(nfe, err) -> float:
  """Least-squares slope of log(err) against log(NFE)."""
  return float(np.polyfit(np.log(np.asarray(nfe, np.float64)), np.log(err), 1)[0])


def sampler_error(
  out_dir: str | None = None,
  *,
  num_samples: int = 128,
  step_counts=STEP_COUNTS,
  rhos=RHOS,
  rho_step_counts=RHO_STEP_COUNTS,
  reference_steps: int = REFERENCE_STEPS,
  slope_from: int = 16,
  seed: int = 0,
  mixture: GaussianMixture | None = None,
) -> dict:
  """Error vs NFE for Euler and Heun (rho = 7), and Heun's error vs rho at fixed steps.

  Args:
    out_dir: where to write the PNG and markdown page; None computes only.
    num_samples: number of ODE solves (starting noises).
    step_counts: N values of the NFE sweep.
    rhos: rho values of the rho sweep.
    rho_step_counts: Heun step counts N of the rho sweep.
    reference_steps: Heun steps of the reference solve.
    slope_from: the log-log slope is fitted over step counts >= this.
    seed: PRNG seed of the starting noise.
    mixture: the data distribution (default `digits_mixture()`).

  Returns:
    {'nfe': {method: [{'steps', 'nfe', 'median', 'mean', 'far_share'}]},
     'slope': {method: float}, 'rho': {N: [{'rho', 'median', 'mean', 'far_share'}]},
     'reference': [B, D] samples, 'z': [B, D] starting noise}.
  """
  mixture = digits_mixture() if mixture is None else mixture
  length = max(*step_counts, *rho_step_counts)
  z = jax.random.normal(jax.random.key(seed), (num_samples, mixture.dim))  # [B, D]
  solvers = {m: make_solver(mixture.denoise, m) for m in ('euler', 'heun')}

  def solve(method, steps, rho=7.0, grid_length=length):
    return np.asarray(solvers[method](padded_sigmas(steps, grid_length, rho), z))

  # The reference has its own grid length (one more compile) so the sweeps stay short.
  ref = solve('heun', reference_steps, grid_length=reference_steps)

  def stats(x):
    e = sample_errors(x, ref)
    return {
      'median': float(np.median(e)),
      'mean': float(np.mean(e)),
      'far_share': float(np.mean(e > FAR_ERROR)),
    }

  nfe = {}
  slope = {}
  for method in ('euler', 'heun'):
    rows = []
    for n in step_counts:
      rows.append({'steps': n, 'nfe': edm_nfe(n, method), **stats(solve(method, n))})
    nfe[method] = rows
    fit = [r for r in rows if r['steps'] >= slope_from]
    slope[method] = loglog_slope([r['nfe'] for r in fit], [r['median'] for r in fit])
  rho_rows = {}
  for n in rho_step_counts:
    rho_rows[n] = [{'rho': rho, **stats(solve('heun', n, rho))} for rho in rhos]
  result = {
    'nfe': nfe,
    'slope': slope,
    'rho': rho_rows,
    'reference': ref,
    'z': np.asarray(z),
    'reference_steps': reference_steps,
    'num_samples': num_samples,
    'slope_from': slope_from,
  }
  if out_dir is not None:
    _plot(result, out_dir)
  return result


def _plot(result: dict, out_dir: str) -> None:
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for method, marker in (('euler', 'o'), ('heun', 's')):
    rows = result['nfe'][method]
    axes[0].loglog(
      [r['nfe'] for r in rows],
      [r['median'] for r in rows],
      marker=marker,
      label=f'{method} (slope {result["slope"][method]:.2f})',
    )
  nfe_ref = np.array([8.0, 255.0])
  for order, anchor in ((1, result['nfe']['euler'][1]), (2, result['nfe']['heun'][2])):
    axes[0].loglog(nfe_ref, anchor['median'] * (nfe_ref / anchor['nfe']) ** -order, 'k:', lw=0.8)
  axes[0].set(title='median error vs NFE (rho = 7)', xlabel='NFE', ylabel='RMS error per dimension')
  for n, rows in result['rho'].items():
    axes[1].semilogy(
      [r['rho'] for r in rows],
      [r['median'] for r in rows],
      marker='o',
      label=f'Heun, N = {n} (NFE {2 * n - 1})',
    )
  axes[1].axvline(7.0, color='k', ls=':', lw=0.8)
  axes[1].set(
    title='median error vs rho', xlabel='rho', ylabel='RMS error per dimension', xscale='log'
  )
  for ax in axes:
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
  fig.tight_layout()
  report.save_figure(fig, NAME, out_dir)
  nfe_rows = []
  for method in ('euler', 'heun'):
    for r in result['nfe'][method]:
      nfe_rows.append([method, r['steps'], r['nfe'], r['median'], r['mean'], r['far_share']])
  nfe_table = report.markdown_table(
    ['method', 'steps N', 'NFE', 'median error', 'mean error', f'share with error > {FAR_ERROR}'],
    nfe_rows,
  )
  ns = list(result['rho'])
  rho_table = report.markdown_table(
    ['rho'] + [f'Heun N = {n}: median error' for n in ns],
    [
      [rho] + [result['rho'][n][i]['median'] for n in ns]
      for i, rho in enumerate(r['rho'] for r in result['rho'][ns[0]])
    ],
  )
  best = ', '.join(f'{min(result["rho"][n], key=lambda r: r["median"])["rho"]:g}' for n in ns)
  body = f"""
Exact denoiser of a 10-component Gaussian mixture fitted to the 8x8 digits (D = 64, one
diagonal component per class), EDM's time steps (eq. 5) with sigma_max = {SIGMA_MAX:g},
sigma_min = {SIGMA_MIN:g}, `samplers.edm_sample`. {result['num_samples']} solves from the
same starting noise; error = RMS distance per dimension to a Heun solve with
{result['reference_steps']} steps. The fitted log-log slopes (N >= {result['slope_from']})
are {result['slope']['euler']:.2f} for Euler and {result['slope']['heun']:.2f} for Heun:
first and second order, as EDM Algorithm 1 intends. Once the median error is well below
{FAR_ERROR}, the samples with an error above {FAR_ERROR} are those that ended in a different
mixture component than the reference; they are why Euler's mean error falls more slowly than
its median.

{nfe_table}

The rho sweep (right panel, Heun): rho = 1 (uniform steps in sigma) is far worse; the
error falls steeply up to rho of about 3 to 5, is smallest at rho = {best} (for N =
{', '.join(str(n) for n in ns)}), and rises slowly beyond. EDM's rho = 7 sits on that
plateau, where large rho shortens the steps near sigma_min.

{rho_table}
"""
  report.write_page(NAME, 'EDM: Euler vs Heun error against NFE, and the rho sweep', body, out_dir)
