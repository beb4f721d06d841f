"""NCSNv2 Techniques 2 and 4: the number of noise levels and the Langevin step size.

Technique 4 picks eps so that the variance ratio of Proposition 3 after T Langevin
steps at one level is as close to 1 as it gets; for CIFAR-10 (sigma_1 = 50, L = 232,
sigma_L = 0.01, T = 5) that is eps = 6.2e-6. Technique 2 picks L so that neighbouring
Gaussian shells overlap: the criterion Phi(sqrt(2D)(g - 1) + 3g) - Phi(sqrt(2D)(g - 1) - 3g)
should be about 0.5, which gives L = 219 for D = 3072; the paper used L = 232.

Source: Song & Ermon 2020, "Improved Techniques for Training Score-Based Generative
Models", Techniques 1, 2 and 4, Proposition 3, Section 4 (CIFAR-10 settings).
"""

from __future__ import annotations

import numpy as np

from diffusion_jax import schedules
from experiments import report

NAME = 'ncsnv2_techniques'

# CIFAR-10 settings of the paper.
CIFAR_SIGMA_MAX, CIFAR_SIGMA_MIN, CIFAR_LEVELS, CIFAR_STEPS, CIFAR_DIM = 50.0, 0.01, 232, 5, 3072
STEP_COUNTS = (1, 2, 3, 5, 10, 20, 100)
LEVEL_COUNTS = (50, 100, 150, 200, 219, 232, 250, 300, 400, 500)


def simulate_variance_ratio(
  eps: float, ratio: float, sigma_min: float, num_steps: int, num_samples: int, seed: int = 0
) -> tuple[float, float]:
  """Monte Carlo check of Proposition 3, float64 numpy.

  Data is a single point at 0, so p_sigma_i = N(0, sigma_i^2) and the score is exact:
  start from the previous level, x ~ N(0, (ratio sigma_i)^2), and run `num_steps`
  Langevin steps x <- x + alpha s(x) + sqrt(2 alpha) z with alpha = eps sigma_i^2 / sigma_L^2.
  The ratio does not depend on sigma_i, so sigma_i = 1.

  Returns:
    (estimated Var[x_T] / sigma_i^2, its standard error).
  """
  rng = np.random.default_rng(seed)
  alpha = eps / sigma_min**2
  x = ratio * rng.standard_normal(num_samples)
  for _ in range(num_steps):
    x = x - alpha * x + np.sqrt(2.0 * alpha) * rng.standard_normal(num_samples)
  var = float(np.mean(x**2))
  return var, var * np.sqrt(2.0 / num_samples)


def technique_4_and_2(out_dir: str | None = None, num_samples: int = 400_000) -> dict:
  """Reproduces eps = 6.2e-6 (Technique 4) and tabulates Technique 2's criterion against L.

  Returns:
    {'ratio': gamma of CIFAR-10, 'eps': solved eps for T = 5, 'variance_ratio': at eps,
     'mc_ratio', 'mc_stderr': Monte Carlo of the same, 'steps': [{'T', 'eps', 'ratio'}],
     'levels': [{'L', 'gamma', 'criterion'}], 'chosen_levels': L for criterion 0.5,
     'criterion_232': criterion of the paper's L, 'digits': Techniques 1, 2, 4 on 8x8 digits}.
  """
  ratio = schedules.ncsn_sigma_ratio(CIFAR_SIGMA_MAX, CIFAR_SIGMA_MIN, CIFAR_LEVELS)
  eps = schedules.ncsn_solve_step_size(ratio, CIFAR_SIGMA_MIN, CIFAR_STEPS)
  var_ratio = float(schedules.ncsn_variance_ratio(eps, ratio, CIFAR_SIGMA_MIN, CIFAR_STEPS))
  mc, mc_err = simulate_variance_ratio(eps, ratio, CIFAR_SIGMA_MIN, CIFAR_STEPS, num_samples)
  steps = []
  for T in STEP_COUNTS:
    e = schedules.ncsn_solve_step_size(ratio, CIFAR_SIGMA_MIN, T)
    steps.append(
      {
        'T': T,
        'eps': e,
        'ratio': float(schedules.ncsn_variance_ratio(e, ratio, CIFAR_SIGMA_MIN, T)),
      }
    )
  levels = []
  for L in LEVEL_COUNTS:
    g = schedules.ncsn_sigma_ratio(CIFAR_SIGMA_MAX, CIFAR_SIGMA_MIN, L)
    levels.append(
      {
        'L': L,
        'gamma': g,
        'criterion': float(schedules.ncsn_level_criterion(g, CIFAR_DIM)),
      }
    )
  chosen = schedules.ncsn_choose_num_levels(CIFAR_SIGMA_MAX, CIFAR_SIGMA_MIN, CIFAR_DIM)
  criterion_232 = float(schedules.ncsn_level_criterion(ratio, CIFAR_DIM))
  result = {
    'ratio': ratio,
    'eps': eps,
    'variance_ratio': var_ratio,
    'mc_ratio': mc,
    'mc_stderr': mc_err,
    'num_samples': num_samples,
    'steps': steps,
    'levels': levels,
    'chosen_levels': chosen,
    'criterion_232': criterion_232,
    'digits': _digits_settings(),
  }
  if out_dir is not None:
    _plot(result, out_dir)
  return result


def _digits_settings() -> dict:
  """Techniques 1, 2 and 4 applied to the 8x8 digits data set in [-1, 1] (D = 64)."""
  from sklearn.datasets import load_digits

  x = load_digits().images.astype(np.float32) / 8.0 - 1.0  # [N, 8, 8] in [-1, 1]
  sigma_max = float(schedules.ncsn_sigma_max_from_data(x))
  sigma_min = CIFAR_SIGMA_MIN
  L = schedules.ncsn_choose_num_levels(sigma_max, sigma_min, x[0].size)
  g = schedules.ncsn_sigma_ratio(sigma_max, sigma_min, L)
  eps = schedules.ncsn_solve_step_size(g, sigma_min, CIFAR_STEPS)
  return {
    'sigma_max': sigma_max,
    'sigma_min': sigma_min,
    'L': L,
    'gamma': g,
    'eps': eps,
    'dim': int(x[0].size),
    'num_examples': int(x.shape[0]),
  }


def _plot(result: dict, out_dir: str) -> None:
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  eps_grid = np.logspace(-8, np.log10(CIFAR_SIGMA_MIN**2) - 1e-3, 400)
  for T in (1, 5, 20, 100):
    r = np.asarray(schedules.ncsn_variance_ratio(eps_grid, result['ratio'], CIFAR_SIGMA_MIN, T))
    axes[0].semilogx(eps_grid, r, label=f'T = {T}', lw=2 if T == CIFAR_STEPS else 1)
  axes[0].axhline(1.0, color='k', lw=0.8)
  axes[0].axvline(
    result['eps'], color='r', ls='--', label=f'eps = {result["eps"]:.3g} (T = {CIFAR_STEPS})'
  )
  axes[0].set(
    title='Technique 4: s_T^2 / sigma_i^2 (CIFAR-10, L = 232)',
    xlabel='eps',
    ylabel='variance ratio',
    ylim=(0.99, 1.12),
  )
  levels = np.arange(20, 601)
  gammas = (CIFAR_SIGMA_MAX / CIFAR_SIGMA_MIN) ** (1.0 / (levels - 1.0))
  crit = np.asarray(schedules.ncsn_level_criterion(gammas, CIFAR_DIM))
  axes[1].plot(levels, crit)
  axes[1].axhline(0.5, color='k', lw=0.8)
  axes[1].axvline(
    result['chosen_levels'],
    color='r',
    ls='--',
    label=f'criterion 0.5: L = {result["chosen_levels"]}',
  )
  axes[1].axvline(
    CIFAR_LEVELS, color='g', ls=':', label=f'paper: L = 232 ({result["criterion_232"]:.3f})'
  )
  axes[1].set(
    title='Technique 2 criterion (D = 3072)', xlabel='number of levels L', ylabel='criterion'
  )
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  report.save_figure(fig, NAME, out_dir)
  d = result['digits']
  steps_table = report.markdown_table(
    ['Langevin steps T', 'eps minimizing abs(ratio - 1)', 'ratio at eps'],
    [[s['T'], s['eps'], s['ratio']] for s in result['steps']],
  )
  levels_table = report.markdown_table(
    ['L', 'gamma = sigma_(i-1) / sigma_i', 'Technique 2 criterion'],
    [[lv['L'], lv['gamma'], lv['criterion']] for lv in result['levels']],
  )
  body = f"""
CIFAR-10 settings of NCSNv2: sigma_1 = {CIFAR_SIGMA_MAX:g}, sigma_L = {CIFAR_SIGMA_MIN:g},
L = {CIFAR_LEVELS}, so gamma = {result['ratio']:.6f}; D = {CIFAR_DIM}.

**Technique 4.** With T = {CIFAR_STEPS} the variance ratio of Proposition 3 never reaches 1
(left panel); its closest approach is at eps = {result['eps']:.4e} (paper: 6.2e-6), ratio
{result['variance_ratio']:.4f}. A Monte Carlo run of the same Langevin chain on a single-point
data set (exact score, float64, {result['num_samples']:,} samples) gives
{result['mc_ratio']:.4f} +- {result['mc_stderr']:.4f}. More steps bring the ratio to 1:

{steps_table}

**Technique 2.** The 0.5 criterion picks L = {result['chosen_levels']}; the paper's
L = 232 has criterion {result['criterion_232']:.4f} (it is a guideline, not an identity).

{levels_table}

**Techniques 1, 2, 4 on the 8x8 digits** (scikit-learn, {d['num_examples']} images in [-1, 1],
D = {d['dim']}): the largest pairwise distance gives sigma_1 = {d['sigma_max']:.3f}; with
sigma_L = {d['sigma_min']:g} the 0.5 criterion gives L = {d['L']} (gamma = {d['gamma']:.4f}),
and T = {CIFAR_STEPS} gives eps = {d['eps']:.3e}.
"""
  report.write_page(NAME, 'NCSNv2 Techniques 2 and 4 (CIFAR-10 settings)', body, out_dir)
