"""Sampler benchmarks: loop overhead over the network, and error vs. NFE.

    python -m benchmarks.samplers            # full run
    python -m benchmarks.samplers --quick    # smaller model and sample sizes (smoke run)
    python -m benchmarks.samplers --fast     # the fast samplers: (a) for three, and (c)

(a) Overhead: a RIN of the CIFAR-10 size (3 blocks x 2 compute layers, 128 x 512
    latents, tape 256, patch 2, 32x32x3, latent self-conditioning carried between
    steps) drives Chen's DDPM sampler, DDPM ancestral sampling, EDM Heun and the fast
    samplers DPM-Solver++(2M), UniPC and DPM-Solver++(2M) SDE inside one jit.
    Reported: sampler wall time / (NFE x one jitted denoiser call), for NFE about 10,
    50 and 250; 1.00 means the loop costs nothing beyond the network.
(b) Error vs. NFE with the exact denoiser of a 2-D Gaussian mixture: Euler, Heun,
    stochastic EDM, DDIM (eta = 0) and DDPM (small variance) against the mixture,
    measured by the sliced Wasserstein-2 distance to a large reference sample
    and the largest error of the per-component variances.
(c) `--fast`: the same for every fast sampler (k-diffusion's and diffusers' families),
    with the median distance to the exact ODE solution from the same start for the ODE
    samplers, and (a) for three of them; written to its own section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402
from diffusion_jax import models, samplers, schedules  # noqa: E402

# ---------------------------------------------------------------------------
# (a) Loop overhead over a RIN forward pass.


def _rin_config(quick: bool) -> models.ModelConfig:
  if quick:
    return models.ModelConfig(name='rin', image_size=16, num_channels=3, num_classes=10)
  return models.ModelConfig(
    name='rin',
    image_size=32,
    num_channels=3,
    num_classes=10,
    patch_size=2,
    tape_dim=256,
    tape_mlp_ratio=2,
    read_write_heads=8,
    num_latents=128,
    latent_dim=512,
    latent_heads=16,
    latent_mlp_ratio=4,
    num_blocks=3,
    num_compute_layers=2,
  )


def _chen_bridge(model, params, label):
  """EDM-form denoiser over an eps-predicting RIN (Chen, b = 1), carrying the latents."""

  def denoise(x, sigma, latents):
    g = 1.0 / (1.0 + sigma**2)  # gamma of this sigma at scale 1
    x_t = x * jnp.sqrt(g)  # [B, H, W, C] model space
    level = jnp.full((x.shape[0],), 1000.0 * g)
    eps, latents = model.apply(params, x_t, level, label, self_cond=latents)
    x0 = jnp.clip((x_t - jnp.sqrt(1.0 - g) * eps) / jnp.sqrt(g), -1.0, 1.0)
    return x0, latents

  return denoise


def _min_time(fn, *args, reps: int) -> tuple[float, float]:
  """Best (wall, process CPU) seconds of `reps` calls, compiled ahead of time.

  CPU time is reported beside wall time because on a shared machine other
  processes stretch wall time but not this process's CPU time.
  """
  compiled = fn.lower(*args).compile()
  wall, cpu = float('inf'), float('inf')
  for _ in range(reps):
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(*args))
    wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
  return wall, cpu


# Fast samplers timed in (a): a multistep ODE solver, a predictor-corrector and an SDE.
FAST_OVERHEAD = ('dpmpp_2m', 'unipc', 'dpmpp_2m_sde')


def overhead_table(
  quick: bool, batch: int, nfes: tuple[int, ...] = (), kinds: tuple[str, ...] = ()
) -> str:
  cfg = _rin_config(quick)
  model = models.create_model(cfg)
  shape = (batch, cfg.image_size, cfg.image_size, cfg.num_channels)
  x = jax.random.normal(jax.random.key(0), shape)
  label = jnp.zeros((batch,), jnp.int32)
  params = model.init(jax.random.key(1), x, jnp.zeros((batch,)), label)
  _, latents0 = model.apply(params, x, jnp.zeros((batch,)), label)
  latents0 = jnp.zeros_like(latents0)
  # Parameters are jit arguments, as in the trainer and `--mode=sample` (not constants).
  forward = jax.jit(lambda p, x, s, c: _chen_bridge(model, p, label)(x, s, c))
  reps = 1 if quick else 2
  nfes = nfes or ((10, 50) if quick else (10, 50, 250))
  discrete = schedules.DiscreteSchedule.from_name('cosine', 1000)

  def make(kind, nfe):
    if kind == 'chen (DDPM)':
      return nfe, jax.jit(
        lambda p, z, k: samplers.chen_sample(
          _chen_bridge(model, p, label), z, steps=nfe, rng=k, init_state=latents0
        )
      )
    if kind == 'ddpm':
      sched = discrete.respace(schedules.space_timesteps(1000, nfe))
      return nfe, jax.jit(
        lambda p, z, k: samplers.ddpm_sample(
          _chen_bridge(model, p, label), z, sched, rng=k, init_state=latents0
        )
      )
    if kind in FAST_OVERHEAD:
      from diffusion_jax.samplers import fast

      spec = {k: f.FAST_SAMPLERS[k] for f in fast.FAMILIES for k in f.FAST_SAMPLERS}[kind]
      sig = schedules.karras_sigmas(nfe)
      return spec.nfe(nfe), jax.jit(
        lambda p, z, k: spec.fn(
          _chen_bridge(model, p, label), z * sig[0], sig, rng=k, init_state=latents0
        )
      )
    n = (nfe + 1) // 2
    sig = schedules.karras_sigmas(n)
    return samplers.edm_nfe(n), jax.jit(
      lambda p, z, k: samplers.edm_sample(
        _chen_bridge(model, p, label), z * sig[0], sig, init_state=latents0
      )
    )

  rows = []
  t_fwd_all = []
  for nfe in nfes:
    for kind in kinds or ('chen (DDPM)', 'ddpm', 'edm heun', *FAST_OVERHEAD):
      true_nfe, fn = make(kind, nfe)
      t_sample, c_sample = _min_time(fn, params, x, jax.random.key(2), reps=reps)
      # The forward pass is timed right after, so both see the same machine load.
      t_fwd, c_fwd = _min_time(forward, params, x, jnp.float32(1.0), latents0, reps=10)
      t_fwd_all.append(t_fwd)
      ratio, c_ratio = t_sample / (true_nfe * t_fwd), c_sample / (true_nfe * c_fwd)
      rows.append(
        f'| {kind} | {true_nfe} | {t_sample:.3f} | {1e3 * t_fwd:.2f} | {ratio:.3f} | '
        f'{c_ratio:.3f} |'
      )
      print(rows[-1], flush=True)
  n_params = models.count_params(params)
  head = (
    f'RIN {cfg.image_size}x{cfg.image_size}x{cfg.num_channels}, {n_params / 1e6:.1f}M parameters '
    f'({cfg.num_blocks} blocks x {cfg.num_compute_layers} compute layers, {cfg.num_latents} x '
    f'{cfg.latent_dim} latents, tape {cfg.tape_dim}, patch {cfg.patch_size}), batch {batch}, '
    'latent self-conditioning carried through the scan. Forward = one jitted denoiser call '
    f'(median over runs {1e3 * np.median(t_fwd_all):.1f} ms); times are the best of '
    f'{reps} runs.\n\n'
    '| sampler | NFE | sampler wall (s) | forward wall (ms) | wall / (NFE x forward) | '
    'CPU time / (NFE x forward CPU time) |\n'
    '|---|---|---|---|---|---|\n'
  )
  return head + '\n'.join(rows)


# ---------------------------------------------------------------------------
# (b) Error vs. NFE with an exact denoiser.

MIXTURE = samplers.GaussianMixture(
  [0.2, 0.3, 0.5],
  [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]],
  [[0.10, 0.15], [0.20, 0.12], [0.15, 0.15]],
)


def sliced_w2(a: np.ndarray, b: np.ndarray, num_dirs: int = 128, seed: int = 0) -> float:
  """Sliced Wasserstein-2 between two 2-D samples, over random directions (quantile match)."""
  rng = np.random.default_rng(seed)
  dirs = rng.normal(size=(num_dirs, a.shape[1]))
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  q = np.linspace(0.0005, 0.9995, 1000)
  pa = np.quantile(a @ dirs.T, q, axis=0)
  pb = np.quantile(b @ dirs.T, q, axis=0)
  return float(np.sqrt(np.mean((pa - pb) ** 2)))


def error_table(quick: bool) -> str:
  num = 4000 if quick else 20000
  nfes = (10, 25, 50) if quick else (10, 25, 50, 100, 250)
  ref, _ = MIXTURE.sample(jax.random.key(100), 200_000)
  ref = np.asarray(ref)
  z = jax.random.normal(jax.random.key(101), (num, 2))
  key = jax.random.key(102)
  cosine = schedules.DiscreteSchedule.from_name('cosine', 1000)
  d = MIXTURE.denoise

  def run(method, nfe):
    if method in ('euler', 'heun', 'edm stochastic'):
      n = nfe if method == 'euler' else (nfe + 1) // 2
      sig = schedules.karras_sigmas(n, 0.002, 80.0)
      kw = dict(method='euler' if method == 'euler' else 'heun')
      if method == 'edm stochastic':
        kw.update(s_churn=0.5 * n, s_tmin=0.01, s_tmax=10.0, s_noise=1.0)
      fn = jax.jit(lambda z, k: samplers.edm_sample(d, z * sig[0], sig, rng=k, **kw))
      return (nfe if method == 'euler' else samplers.edm_nfe(n)), fn
    sched = cosine.respace(schedules.space_timesteps(1000, ('trailing', nfe)))
    if method == 'ddim':
      return nfe, jax.jit(lambda z, k: samplers.ddim_sample(d, z, sched, eta=0.0))
    return nfe, jax.jit(lambda z, k: samplers.ddpm_sample(d, z, sched, variance='small', rng=k))

  floor, _ = MIXTURE.sample(jax.random.key(103), num)
  floor_sw = sliced_w2(np.asarray(floor), ref)
  methods = ('euler', 'heun', 'edm stochastic', 'ddim', 'ddpm')
  table = {}
  for method in methods:
    for nfe in nfes:
      true_nfe, fn = run(method, nfe)
      x = np.asarray(fn(z, key))
      st = MIXTURE.summary(x)
      var_err = float(np.nanmax(np.abs(st['variances'] / MIXTURE.variances - 1)))
      w_err = float(np.max(np.abs(st['weights'] - MIXTURE.weights)))
      table[method, nfe] = (true_nfe, sliced_w2(x, ref), var_err, w_err)
      print(method, nfe, table[method, nfe], flush=True)
  lines = [
    f'2-D mixture of 3 Gaussians (stds 0.10-0.20), exact denoiser, {num} samples per cell. '
    'Cells: sliced W2 to a 200k reference sample / largest |variance ratio - 1| over '
    f'components and axes. Sampling noise floor of sliced W2 at this size: {floor_sw:.4f}. '
    'EDM: karras_sigmas(N, 0.002, 80), Heun NFE = 2N - 1, stochastic: S_churn = N/2, '
    'S_tmin 0.01, S_tmax 10. DDIM / DDPM: iDDPM cosine schedule, trailing respacing, '
    'NFE = steps.',
    '',
    '| NFE (target) | ' + ' | '.join(methods) + ' |',
    '|---' * (len(methods) + 1) + '|',
  ]
  for nfe in nfes:
    cells = []
    for m in methods:
      true_nfe, sw, ve, _ = table[m, nfe]
      cells.append(f'{sw:.4f} / {ve:.3f}' + (f' (NFE {true_nfe})' if true_nfe != nfe else ''))
    lines.append(f'| {nfe} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _steps_for(spec, target: int, **options) -> int:
  """The most steps whose NFE does not exceed `target` (at least 1)."""
  n = 1
  while spec.nfe(n + 1, **options) <= target:
    n += 1
  return n


def fast_table(quick: bool) -> str:
  """Every fast sampler: error vs. NFE on the exact mixture, from the same start."""
  from diffusion_jax.samplers import fast

  num = 4000 if quick else 20000
  targets = (5, 10, 20) if quick else (5, 10, 20, 50, 100)
  ref, _ = MIXTURE.sample(jax.random.key(100), 200_000)
  ref = np.asarray(ref)
  z = jax.random.normal(jax.random.key(101), (num, 2))
  key = jax.random.key(102)
  d = MIXTURE.denoise
  s_max, s_min = 80.0, 0.002
  fine_sig = schedules.karras_sigmas(1000 if not quick else 300, s_min, s_max)
  exact = np.asarray(jax.jit(lambda z: samplers.edm_sample(d, z * s_max, fine_sig))(z))
  specs = {n: f.FAST_SAMPLERS[n] for f in fast.FAMILIES for n in f.FAST_SAMPLERS}

  def cell(name, target):
    spec = specs[name]
    if name == 'dpm_adaptive':
      rtol = {5: 0.5, 10: 0.2, 20: 0.05, 50: 0.01, 100: 0.002}[target]

      def fn(z, k):
        return spec.fn(
          d,
          z * s_max,
          sigma_min=s_min,
          sigma_max=s_max,
          rng=k,
          rtol=rtol,
          atol=rtol / 10,
          return_info=True,
        )

      x, info = jax.jit(fn)(z, key)
      return np.asarray(x), int(info['nfe'])
    if spec.grid_free:
      fn = lambda z, k: spec.fn(d, z * s_max, sigma_min=s_min, sigma_max=s_max, n=target, rng=k)
      return np.asarray(jax.jit(fn)(z, key)), spec.nfe(target)
    n = _steps_for(spec, target)
    sig = schedules.karras_sigmas(n, s_min, s_max)
    x = jax.jit(lambda z, k: spec.fn(d, z * sig[0], sig, rng=k))(z, key)
    return np.asarray(x), spec.nfe(n)

  rows = []
  for name in sorted(specs):
    cells = []
    for target in targets:
      x, nfe = cell(name, target)
      sw = sliced_w2(x, ref)
      if specs[name].stochastic:
        text = f'- / {sw:.4f}'
      else:
        text = f'{float(np.median(np.linalg.norm(x - exact, axis=-1))):.2e} / {sw:.4f}'
      cells.append(text + (f' ({nfe})' if nfe != target else ''))
      print(name, target, nfe, text, flush=True)
    kind = 'SDE' if specs[name].stochastic else 'ODE'
    rows.append(f'| {name} | {kind} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(
    [
      f'2-D mixture of 3 Gaussians, exact denoiser, {num} samples, every sampler with its '
      'default options on karras_sigmas(N, 0.002, 80) with the most steps N whose NFE fits '
      'the column (actual NFE in brackets when it differs); dpm_fast / dpm_adaptive choose '
      'their own steps (dpm_adaptive: rtol 0.5, 0.2, 0.05, 0.01, 0.002 by column, atol = '
      'rtol / 10). Cells: median distance to the exact ODE solution from the same start '
      '(EDM Heun, 1000 steps; ODE samplers only; the median, as a few trajectories of a '
      'coarse solver end in another component) / sliced W2 to a 200k reference sample.',
      '',
      '| sampler | kind | ' + ' | '.join(f'NFE {t}' for t in targets) + ' |',
      '|---|---' + '|---' * len(targets) + '|',
      *rows,
    ]
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='small sizes, for a smoke run')
  parser.add_argument('--batch', type=int, default=2, help='images per sampler call in (a)')
  parser.add_argument('--skip_overhead', action='store_true', help='only run part (b)')
  parser.add_argument('--nfes', default='', help="NFEs for (a), e.g. '10,50' (default 10,50,250)")
  parser.add_argument(
    '--fast', action='store_true', help='only the fast samplers: (a) for three of them and (c)'
  )
  args = parser.parse_args()
  parts = []
  nfes = tuple(int(v) for v in args.nfes.split(',') if v)
  if args.fast:
    if not args.skip_overhead:
      parts.append(
        '### Loop overhead over the network\n\n'
        + overhead_table(args.quick, args.batch, nfes, ('edm heun', *FAST_OVERHEAD))
      )
    parts.append('### Error vs. NFE (exact denoiser)\n\n' + fast_table(args.quick))
  else:
    if not args.skip_overhead:
      parts.append(
        '### (a) Sampler loop overhead over the network\n\n'
        + overhead_table(args.quick, args.batch, nfes)
      )
    parts.append('### (b) Sample error vs. NFE (exact denoiser)\n\n' + error_table(args.quick))
  command = 'python -m benchmarks.samplers' + (' --quick' if args.quick else '')
  if args.fast:
    command += ' --fast'
  if args.skip_overhead:
    command += ' --skip_overhead'
  if args.nfes:
    command += f' --nfes {args.nfes}'
  if args.batch != 2:
    command += f' --batch {args.batch}'
  if args.fast:
    report.write_section('fast_samplers', 'Fast samplers', '\n\n'.join(parts), command)
    return
  report.write_section('samplers', 'Samplers', '\n\n'.join(parts), command)


if __name__ == '__main__':
  main()
