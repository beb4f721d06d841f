"""Train-step throughput: images/s, achieved FLOP/s vs. the matmul peak, trainer overhead.

    python -m benchmarks.train_step            # digits RIN, batch 128
    python -m benchmarks.train_step --quick    # fewer repetitions

Measures, in one process on the same devices:
- the machine's float32 matmul rate (2048 x 2048 jnp.dot), the reference peak;
- the full train step (objective with self-conditioning, LAMB, EMA): images/s
  and FLOP/s = XLA's cost-analysis FLOPs of the compiled step / measured time;
- the parts separately: a bare forward+backward of the network on an eps loss,
  the self-conditioning first pass (forward only), the optimizer update and the
  EMA update, so the trainer's overhead over forward+backward is accounted for.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402
from configs import digits  # noqa: E402
from diffusion_jax import config_validation, optim, train  # noqa: E402
from diffusion_jax import sharding as sharding_lib  # noqa: E402


def _time(fn, *args, reps: int) -> float:
  """Median wall seconds of fn(*args) (blocked), after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def _flops(jitted, *args) -> float:
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', 0.0)) if cost else 0.0


def matmul_rate(reps: int) -> float:
  """FLOP/s of a float32 2048 x 2048 matmul."""
  n = 2048
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  return 2 * n**3 / _time(f, a, b, reps=reps)


def run(quick: bool, batch_size: int) -> str:
  reps = 3 if quick else 10
  config = digits.get_config()
  config.training.batch_size = batch_size
  mesh = sharding_lib.create_mesh(1)
  setup = train.create_train_setup(config, mesh)
  model, objective = config_validation.build_model_and_objective(config)
  state = setup.init_state(jax.random.PRNGKey(0))
  size = config.data.image_size
  rng = np.random.default_rng(0)
  batch = train.to_global_batch(
    {
      'image': rng.uniform(-1, 1, (batch_size, size, size, 1)).astype(np.float32),
      'label': rng.integers(0, 10, batch_size).astype(np.int32),
    },
    setup.batch_sharding,
  )
  peak = matmul_rate(reps)

  # Full train step (state donated: thread it through).
  step_flops = _flops(setup.train_step, state, batch)
  holder = {'state': state}

  def full_step():
    holder['state'], m = setup.train_step(holder['state'], batch)
    return m['loss']

  t_step = _time(full_step, reps=reps)

  x, labels = batch['image'], batch['label']
  noise_level = jnp.full((batch_size,), 500.0)
  params = holder['state'].params

  def bare_loss(p):
    pred, _ = model.apply(p, x, noise_level, labels)
    return jnp.mean((pred - x) ** 2)

  fwd_bwd = jax.jit(jax.grad(bare_loss))
  fb_flops = _flops(fwd_bwd, params)
  t_fb = _time(fwd_bwd, params, reps=reps)

  fwd = jax.jit(lambda p: model.apply(p, x, noise_level, labels)[1])
  t_fwd = _time(fwd, params, reps=reps)

  grads = fwd_bwd(params)

  @jax.jit
  def opt_update(p, g, s):
    u, s = setup.tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  t_opt = _time(opt_update, params, grads, holder['state'].opt_state, reps=reps)
  ema = jax.jit(lambda e, p: optim.ema_update(e, p, 0.999))
  t_ema = _time(ema, holder['state'].ema_params, params, reps=reps)

  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

  def row(name, t, flops):
    gf = flops / t / 1e9
    pct = 100 * gf * 1e9 / peak
    return f'| {name} | {t * 1e3:.1f} ms | {batch_size / t:.0f} | {gf:.1f} | {pct:.0f}% |'

  def part(name, t):
    return f'| {name} | {t * 1e3:.1f} ms | {100 * t / t_step:.0f}% |'

  rest = t_step - t_fb - t_fwd - t_opt - t_ema
  lines = [
    f'Model: digits RIN (configs/digits.py), {n_params / 1e6:.2f}M parameters, 16x16x1, '
    f'batch {batch_size}, float32, {jax.device_count()} device(s). Self-conditioning rate '
    f'{config.diffusion.self_cond_rate} (the first pass runs on the whole batch every step). '
    f'Median of {reps} timed calls.',
    '',
    '| measurement | time / call | images/s | GFLOP/s (XLA cost analysis) | % of matmul rate |',
    '|---|---|---|---|---|',
    f'| 2048x2048 f32 matmul (peak reference) | | | {peak / 1e9:.1f} | 100% |',
    row('full train step', t_step, step_flops),
    row('bare forward+backward (eps MSE, no self-cond)', t_fb, fb_flops),
    '',
    f'Trainer overhead over the bare forward+backward: {(t_step - t_fb) * 1e3:.1f} ms per '
    f'step ({100 * (t_step - t_fb) / t_fb:.0f}%), made of:',
    '',
    '| part | time / call | share of the step |',
    '|---|---|---|',
    part('self-conditioning first pass (forward)', t_fwd),
    part('LAMB update (+ apply)', t_opt),
    part('EMA update', t_ema),
    part('rest (noising, label drop, loss, fusion effects)', rest),
    '',
    f'FLOPs per step (XLA): train step {step_flops / 1e9:.2f} GFLOP, bare forward+backward '
    f'{fb_flops / 1e9:.2f} GFLOP. The parts are timed as separate jitted calls, so their '
    'sum need not equal the fused step exactly.',
  ]
  body = '\n'.join(lines)
  return body


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='fewer repetitions')
  parser.add_argument('--batch_size', type=int, default=128)
  args = parser.parse_args()
  body = run(args.quick, args.batch_size)
  command = 'python -m benchmarks.train_step' + (' --quick' if args.quick else '')
  report.write_section('train_step', 'Train step: throughput and trainer overhead', body, command)


if __name__ == '__main__':
  main()
