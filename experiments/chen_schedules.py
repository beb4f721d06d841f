"""Chen 2023, Figures 3 and 5: noise schedule functions gamma(t), their logSNR, and input scaling.

Figure 3 varies the shape of gamma(t) (cosine and sigmoid families with their start, end
and temperature tau); Figure 5 contrasts that with scaling the input by b, which moves
logSNR(t) by exactly 2 log b at every t and leaves its shape alone.

Source: Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models",
Algorithm 1, Figures 3 and 5, Section 2.2.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from diffusion_jax import schedules
from experiments import report

FIG3_NAME = 'chen_fig3_schedules'
FIG5_NAME = 'chen_fig5_input_scaling'

# The families of Chen 2023 Table 3 (start, end, tau); cosine(0, 1, 1) is the standard cosine.
COSINE_VARIANTS = ((0.0, 1.0, 1.0), (0.2, 1.0, 1.0), (0.2, 1.0, 2.0), (0.2, 1.0, 3.0))
SIGMOID_VARIANTS = (
  (-3.0, 3.0, 0.9),
  (-3.0, 3.0, 1.1),
  (0.0, 3.0, 0.3),
  (0.0, 3.0, 0.5),
  (0.0, 3.0, 0.7),
  (0.0, 3.0, 0.9),
)
SCALES = (1.0, 0.7, 0.5, 0.3)
# Shape variants shown next to input scaling in Figure 5.
FIG5_SHAPES = (('cosine', (0.2, 1.0, 2.0)), ('sigmoid', (0.0, 3.0, 0.5)))

# logSNR is infinite at t = 0 (gamma = 1) and hits the clip at t = 1, so curves are
# evaluated on the open interval.
_T_LO, _T_HI = 0.005, 0.995


def schedule_label(family: str, params: tuple[float, ...] = ()) -> str:
  """'cosine(0.2,1,2)'-style label of a schedule."""
  if family == 'linear':
    return 'linear (1 - t)'
  return f'{family}(' + ','.join(f'{p:g}' for p in params) + ')'


def _gamma_fn(family: str, params: tuple[float, ...] = ()):
  if family == 'linear':
    return schedules.get_gamma_schedule('linear')
  start, end, tau = params
  return schedules.get_gamma_schedule(family, start=start, end=end, tau=tau)


def _half_noise_time(t: np.ndarray, logsnr: np.ndarray) -> float:
  """The t where logSNR(t) crosses 0 (gamma = 1/2), by linear interpolation on the grid."""
  k = int(np.argmax(logsnr < 0.0))
  if k == 0:
    return float(t[0]) if logsnr[0] < 0 else float('nan')
  t0, t1, y0, y1 = t[k - 1], t[k], logsnr[k - 1], logsnr[k]
  return float(t0 + (t1 - t0) * y0 / (y0 - y1))


def schedule_families(out_dir: str | None = None, num_points: int = 20001) -> dict:
  """Figure 3: gamma(t) and logSNR(t) of the linear, cosine and sigmoid families.

  For each schedule it measures t_half, where gamma = 1/2 (logSNR = 0): the fraction
  1 - t_half of uniformly drawn training times is then noise-dominated (logSNR < 0).

  Args:
    out_dir: where to write the PNG and markdown page; None computes only.
    num_points: size of the t grid.

  Returns:
    {'rows': [{'label', 'family', 'params', 't_half', 'noisy_fraction',
    'logsnr_at': {0.1: ., 0.5: ., 0.9: .}}], 't': grid, 'curves': {label: (gamma, logsnr)}}.
  """
  t = np.linspace(_T_LO, _T_HI, num_points)
  specs = [('linear', ())]
  specs += [('cosine', p) for p in COSINE_VARIANTS]
  specs += [('sigmoid', p) for p in SIGMOID_VARIANTS]
  rows, curves = [], {}
  for family, params in specs:
    label = schedule_label(family, params)
    gamma = _gamma_fn(family, params)(jnp.asarray(t, jnp.float32))
    logsnr = np.asarray(schedules.logsnr_from_gamma(gamma), np.float64)
    curves[label] = (np.asarray(gamma, np.float64), logsnr)
    t_half = _half_noise_time(t, logsnr)
    rows.append(
      {
        'label': label,
        'family': family,
        'params': params,
        't_half': t_half,
        'noisy_fraction': 1.0 - t_half,
        'logsnr_at': {q: float(np.interp(q, t, logsnr)) for q in (0.1, 0.5, 0.9)},
      }
    )
  result = {'rows': rows, 't': t, 'curves': curves}
  if out_dir is not None:
    _plot_fig3(result, out_dir)
  return result


def _plot_fig3(result: dict, out_dir: str) -> None:
  import matplotlib.pyplot as plt

  t, curves = result['t'], result['curves']
  stride = max(len(t) // 500, 1)  # plotted points: enough for smooth curves, small PNGs
  t = t[::stride]
  fig, axes = plt.subplots(2, 2, figsize=(10, 7))
  for col, family in enumerate(('cosine', 'sigmoid')):
    labels = ['linear (1 - t)'] + [r['label'] for r in result['rows'] if r['family'] == family]
    for label in labels:
      gamma, logsnr = (c[::stride] for c in curves[label])
      style = dict(ls='--', color='k') if label.startswith('linear') else {}
      axes[0, col].plot(t, gamma, label=label, **style)
      axes[1, col].plot(t, logsnr, label=label, **style)
    axes[0, col].set(title=f'{family} schedules: gamma(t)', xlabel='t', ylabel='gamma(t)')
    axes[1, col].set(title=f'{family} schedules: logSNR(t)', xlabel='t', ylabel='logSNR(t)')
    axes[1, col].set_ylim(-15, 12)
    axes[0, col].legend(fontsize=7)
    for ax in axes[:, col]:
      ax.grid(alpha=0.3)
  fig.tight_layout()
  report.save_figure(fig, FIG3_NAME, out_dir)
  table = report.markdown_table(
    [
      'schedule',
      't where gamma = 1/2',
      'share of t with logSNR < 0',
      'logSNR(0.1)',
      'logSNR(0.5)',
      'logSNR(0.9)',
    ],
    [
      [r['label'], r['t_half'], r['noisy_fraction'], *r['logsnr_at'].values()]
      for r in result['rows']
    ],
  )
  body = f"""
Noise schedule functions of Chen 2023 Algorithm 1 (`diffusion_jax.schedules`), with the
cosine and sigmoid settings of the paper's Table 3: cosine(start, end, tau) for
{', '.join(schedule_label('cosine', p) for p in COSINE_VARIANTS)} and sigmoid(start, end, tau)
for {', '.join(schedule_label('sigmoid', p) for p in SIGMOID_VARIANTS)}, next to the simple
linear gamma(t) = 1 - t. Training draws t uniformly, so the schedule sets how often each noise
level is trained on: the column "share of t with logSNR < 0" is the fraction of training
steps spent where noise dominates the signal. Raising cosine's start and tau, or moving the
sigmoid's range to (0, 3) with a low temperature, shifts weight to the noisy end (the
paper's choice for large images).

{table}
"""
  report.write_page(
    FIG3_NAME, 'Chen 2023 Figure 3: gamma(t) and logSNR(t) by schedule', body, out_dir
  )


def input_scaling(out_dir: str | None = None, num_points: int = 2001) -> dict:
  """Figure 5: input scaling by b shifts logSNR(t) by 2 log b; shape changes do not.

  The shift is measured twice: with `logsnr_from_gamma(gamma, scale=b)` and through
  the EDM conversion layer (`gamma_to_edm_sigma(gamma, b)` then `edm_sigma_to_logsnr`).

  Returns:
    {'scales': [{'b', 'two_log_b', 'mean_shift', 'max_dev', 'edm_mean_shift',
    'edm_max_dev'}], 'shapes': [{'label', 'diff_at', 'diff_range'}], 't': grid,
    'curves': {label: logsnr}}.
  """
  t = np.linspace(_T_LO, _T_HI, num_points)
  gamma_lin = schedules.simple_linear_schedule(jnp.asarray(t, jnp.float32))
  base = np.asarray(schedules.logsnr_from_gamma(gamma_lin), np.float64)
  scales, curves = [], {}
  for b in SCALES:
    direct = np.asarray(schedules.logsnr_from_gamma(gamma_lin, scale=b), np.float64)
    via_edm = np.asarray(
      schedules.edm_sigma_to_logsnr(schedules.gamma_to_edm_sigma(gamma_lin, scale=b)), np.float64
    )
    curves[f'linear, b={b:g}'] = direct
    target = 2.0 * math.log(b)
    scales.append(
      {
        'b': b,
        'two_log_b': target,
        'mean_shift': float(np.mean(direct - base)),
        'max_dev': float(np.max(np.abs(direct - base - target))),
        'edm_mean_shift': float(np.mean(via_edm - base)),
        'edm_max_dev': float(np.max(np.abs(via_edm - base - target))),
      }
    )
  inner = (t >= 0.05) & (t <= 0.95)
  scaled = curves['linear, b=0.5'] - base
  shapes = [
    {
      'label': 'linear (1 - t), b = 0.5',
      'diff_at': {q: float(np.interp(q, t, scaled)) for q in (0.1, 0.5, 0.9)},
      'diff_range': float(np.ptp(scaled[inner])),
    }
  ]
  for family, params in FIG5_SHAPES:
    label = schedule_label(family, params)
    g = _gamma_fn(family, params)(jnp.asarray(t, jnp.float32))
    logsnr = np.asarray(schedules.logsnr_from_gamma(g), np.float64)
    curves[label] = logsnr
    diff = logsnr - base
    shapes.append(
      {
        'label': label,
        'diff_at': {q: float(np.interp(q, t, diff)) for q in (0.1, 0.5, 0.9)},
        'diff_range': float(np.ptp(diff[inner])),
      }
    )
  result = {'scales': scales, 'shapes': shapes, 't': t, 'curves': curves, 'base': base}
  if out_dir is not None:
    _plot_fig5(result, out_dir)
  return result


def _plot_fig5(result: dict, out_dir: str) -> None:
  import matplotlib.pyplot as plt

  t, base = result['t'], result['base']
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for label, logsnr in result['curves'].items():
    style = dict(ls='--') if not label.startswith('linear') else {}
    axes[0].plot(t, logsnr, label=label, **style)
    axes[1].plot(t, logsnr - base, label=label, **style)
  axes[0].set(title='logSNR(t)', xlabel='t', ylabel='logSNR', ylim=(-12, 10))
  axes[1].set(title='logSNR(t) - logSNR of linear, b = 1', xlabel='t', ylabel='difference')
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  report.save_figure(fig, FIG5_NAME, out_dir)
  scale_table = report.markdown_table(
    [
      'b',
      '2 log b',
      'measured shift (mean over t)',
      'max abs(shift - 2 log b)',
      'shift via EDM sigma',
      'max abs deviation via EDM sigma',
    ],
    [
      [r['b'], r['two_log_b'], r['mean_shift'], r['max_dev'], r['edm_mean_shift'], r['edm_max_dev']]
      for r in result['scales']
    ],
  )
  shape_table = report.markdown_table(
    ['schedule', 'difference at t=0.1', 't=0.5', 't=0.9', 'range over t in [0.05, 0.95]'],
    [[r['label'], *r['diff_at'].values(), r['diff_range']] for r in result['shapes']],
  )
  body = f"""
Input scaling (Chen 2023 Section 2.2): x_t = sqrt(gamma) b x0 + sqrt(1 - gamma) eps, so
logSNR(t) = log(gamma b^2 / (1 - gamma)) is the b = 1 curve moved by 2 log b at every t. The
shift is measured on {len(t)} values of t in [{_T_LO}, {_T_HI}] for gamma(t) = 1 - t, once with
`logsnr_from_gamma(gamma, scale=b)` and once through the EDM conversion layer
(`gamma_to_edm_sigma` then `edm_sigma_to_logsnr`); deviations are float32 rounding.

{scale_table}

Changing the schedule's shape instead (b = 1) moves logSNR by different amounts at
different t (right panel): its difference from the linear schedule varies over t, while
for input scaling the range over t is zero up to float32 rounding.

{shape_table}
"""
  report.write_page(FIG5_NAME, 'Chen 2023 Figure 5: input scaling vs schedule shape', body, out_dir)
