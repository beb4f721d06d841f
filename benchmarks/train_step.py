"""Train-step throughput: images/s, achieved FLOP/s vs. the matmul peak, trainer overhead.

    python -m benchmarks.train_step                  # digits RIN, batch 128, attention auto
    python -m benchmarks.train_step --model=small    # 40M RIN, batch 8, einsum attention
    python -m benchmarks.train_step --model=small --batch_size=32  # its own section
    python -m benchmarks.train_step --quick          # fewer repetitions

Measures, in one process on the same devices:
- the machine's sustained float32 matmul rate (a chain of 2048 x 2048 jnp.dot about one
  step long, timed alternately with the step), the reference peak;
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
import ml_collections
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import models as models_benchmark  # noqa: E402
from benchmarks import report  # noqa: E402
from configs import digits  # noqa: E402
from diffusion_jax import training  # noqa: E402
from diffusion_jax.training import optim  # noqa: E402
from diffusion_jax.training import sharding as sharding_lib  # noqa: E402


def _times(fn, *args, reps: int) -> np.ndarray:
  """Wall seconds of `reps` blocked calls of fn(*args), after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return np.asarray(times)


def _time(fn, *args, reps: int) -> float:
  """Best wall seconds of fn(*args) over `reps` calls (other processes only add time)."""
  return float(np.min(_times(fn, *args, reps=reps)))


def _flops(jitted, *args) -> float:
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', 0.0)) if cost else 0.0


MATMUL_N = 2048
TARGET_PERCENT = 70  # of the matmul rate, for the train step (best and median)


def _matmul_operands() -> tuple[jax.Array, jax.Array]:
  n = MATMUL_N
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32) / np.sqrt(n)
  return a, b


def matmul_rates(reps: int) -> np.ndarray:
  """FLOP/s of `reps` calls of one float32 2048 x 2048 matmul (a short burst each)."""
  a, b = _matmul_operands()
  return 2 * MATMUL_N**3 / _times(jax.jit(jnp.dot), a, b, reps=reps)


def matmul_chain(count: int):
  """(a zero-argument jitted call of `count` dependent 2048^2 matmuls, its FLOPs).

  One call lasts about as long as a train step when `count` is chosen so: the sustained
  matmul rate over the same stretch of time, not a short call's burst.
  """
  a, b = _matmul_operands()
  chain = jax.jit(lambda a, b: jax.lax.fori_loop(0, count, lambda _, c: jnp.dot(c, b), a))
  return (lambda: chain(a, b)), 2 * MATMUL_N**3 * count


def interleaved_times(fns, reps: int) -> list[np.ndarray]:
  """Wall seconds of `reps` blocked calls of each of `fns`, alternating between them
  (after one warm-up call each), so that they sample the same stretch of machine time."""
  for fn in fns:
    jax.block_until_ready(fn())
  times = [[] for _ in fns]
  for _ in range(reps):
    for fn, out in zip(fns, times):
      t = time.perf_counter()
      jax.block_until_ready(fn())
      out.append(time.perf_counter() - t)
  return [np.asarray(t) for t in times]


# The small RIN of benchmarks/models.py (42M parameters, 32x32x3): big enough that the
# CPU spends its time in matmuls, as an accelerator does with the ImageNet configs.
SMALL_RIN_KEYS = (
  'patch_size',
  'tape_dim',
  'read_write_heads',
  'num_latents',
  'latent_dim',
  'latent_heads',
  'num_blocks',
  'num_compute_layers',
)


# (batch size, attention) of each model when the command line leaves them out: the
# settings of its BENCHMARKS.md section. Another batch writes a section of its own.
DEFAULTS = {'digits': (128, 'auto'), 'small': (8, 'einsum')}


def benchmark_config(model: str, batch_size: int, attention: str = 'auto'):
  """configs/digits.py (model='digits') or it with the small RIN at 32x32x3."""
  config = digits.get_config()
  config.training.batch_size = batch_size
  config.model.attention_impl = attention
  if model == 'small':
    config.data.image_size = 32
    config.data.num_channels = 3
    small = models_benchmark.small_rin()
    config.model.update({k: getattr(small, k) for k in SMALL_RIN_KEYS})
  elif model != 'digits':
    raise ValueError(f"--model={model!r}: use 'digits' or 'small'.")
  return config


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def with_layout(config, scan_layers: bool):
  """A copy of `config` with the RIN blocks and layers scanned or unrolled."""
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.model.scan_layers = scan_layers
  return copy


def step_flops(config, mesh, batch) -> tuple[float, float]:
  """XLA FLOPs of (full train step, bare forward+backward) with the layers unrolled.

  XLA's cost analysis counts a while-loop body once, so a step with scanned blocks and
  layers under-reports its FLOPs by about blocks x layers; the unrolled program does the
  same arithmetic and is counted in full. Compiled on abstract inputs only.
  """
  unrolled = with_layout(config, False)
  setup = training.create_train_setup(unrolled, mesh)
  full = _flops(setup.train_step, training.abstract_state(setup), _abstract(batch))
  model = setup.model
  params = training.abstract_state(setup).params
  return full, _flops(jax.jit(jax.grad(bare_loss_fn(model, batch))), params)


def network_inputs(batch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(images, a fixed noise level, labels): one plain network call's arguments."""
  x = batch['image']
  return x, jnp.full(x.shape[:1], 500.0), batch['label']


def bare_loss_fn(model, batch):
  """params -> a plain MSE of one network call (no self-conditioning): forward+backward."""
  inputs = network_inputs(batch)

  def loss(params):
    pred, _ = model.apply(params, *inputs)
    return jnp.mean((pred - inputs[0]) ** 2)

  return loss


def run(quick: bool, batch_size: int, model_name: str = 'digits', attention: str = 'auto') -> str:
  reps = 3 if quick else 10
  config = benchmark_config(model_name, batch_size, attention)
  mesh = sharding_lib.create_mesh(1)
  setup = training.create_train_setup(config, mesh)
  model = setup.model
  size, channels = config.data.image_size, config.data.num_channels
  rng = np.random.default_rng(0)
  batch = training.to_global_batch(
    {
      'image': rng.uniform(-1, 1, (batch_size, size, size, channels)).astype(np.float32),
      'label': rng.integers(0, 10, batch_size).astype(np.int32),
    },
    setup.batch_sharding,
  )
  flops_step, flops_fb = step_flops(config, mesh, batch)
  # The peak reference: a chain of matmuls lasting about one step, timed call for call
  # alternately with the configured step (the same stretch of machine time).
  holder = {'state': setup.init_state(jax.random.PRNGKey(0))}

  def full_step():  # the state is donated: thread it through
    holder['state'], m = setup.train_step(holder['state'], batch)
    return m['loss']

  burst = matmul_rates(2 * reps)
  jax.block_until_ready(full_step())
  t0 = time.perf_counter()
  jax.block_until_ready(full_step())
  count = max(1, round((time.perf_counter() - t0) * float(np.median(burst)) / (2 * MATMUL_N**3)))
  chain, chain_flops = matmul_chain(count)
  step_times, chain_times = interleaved_times([full_step, chain], reps)
  state = holder['state']
  peaks = chain_flops / chain_times
  burst = np.concatenate([burst, matmul_rates(2 * reps)])

  def timed_step(layout_setup) -> np.ndarray:
    held = {'state': layout_setup.init_state(jax.random.PRNGKey(0))}

    def step():
      held['state'], m = layout_setup.train_step(held['state'], batch)
      return m['loss']

    return _times(step, reps=reps)

  t_step = float(step_times.min())
  scanned = bool(config.model.get('scan_layers', True))
  other_times = timed_step(training.create_train_setup(with_layout(config, not scanned), mesh))

  params = state.params
  fwd_bwd = jax.jit(jax.grad(bare_loss_fn(model, batch)))
  fb_times = _times(fwd_bwd, params, reps=reps)
  t_fb = float(fb_times.min())
  inputs = network_inputs(batch)
  fwd = jax.jit(lambda p: model.apply(p, *inputs)[1])
  t_fwd = _time(fwd, params, reps=reps)
  grads = fwd_bwd(params)

  @jax.jit
  def opt_update(p, g, s):
    u, s = setup.tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  t_opt = _time(opt_update, params, grads, state.opt_state, reps=reps)
  ema = jax.jit(lambda e, p: optim.ema_update(e, p, 0.999))
  t_ema = _time(ema, state.ema_params, params, reps=reps)
  peak, peak_median = float(peaks.max()), float(np.median(peaks))

  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

  def row(name, times, flops):
    best, median = float(times.min()), float(np.median(times))
    return (
      f'| {name} | {best * 1e3:.1f} / {median * 1e3:.1f} ms | {batch_size / best:.1f} | '
      f'{flops / best / 1e9:.1f} / {flops / median / 1e9:.1f} | '
      f'{100 * flops / best / peak:.0f}% / {100 * flops / median / peak_median:.0f}% |'
    )

  def part(name, t):
    return f'| {name} | {t * 1e3:.1f} ms | {100 * t / t_step:.0f}% |'

  layout = ('scanned', 'unrolled') if scanned else ('unrolled', 'scanned')
  rest = t_step - t_fb - t_fwd - t_opt - t_ema
  load = ', '.join(f'{v:.1f}' for v in os.getloadavg())
  burst_best = 100 * flops_step / t_step / burst.max()
  burst_median = 100 * flops_step / float(np.median(step_times)) / np.median(burst)
  ratio_best = 100 * flops_step / t_step / peak
  ratio_median = 100 * flops_step / float(np.median(step_times)) / peak_median
  verdict = 'met' if min(ratio_best, ratio_median) >= TARGET_PERCENT else 'not met'
  lines = [
    f'**The configured train step runs at {ratio_best:.0f}% (best) / {ratio_median:.0f}% '
    f'(median) of the sustained matmul rate measured alongside it** (target >= '
    f'{TARGET_PERCENT}%: {verdict}).',
    '',
    f'Model: {model_name} RIN (configs/digits.py'
    + (' with benchmarks/models.small_rin' if model_name == 'small' else '')
    + f'), {n_params / 1e6:.2f}M parameters, {size}x{size}x{channels}, '
    f'batch {batch_size}, float32, attention {attention!r}, {jax.device_count()} device(s). '
    f'Self-conditioning rate '
    f'{config.diffusion.self_cond_rate} (the first pass runs on the whole batch every step). '
    f'{reps} timed calls of each program; each cell gives the best call / the median call, '
    'and the percentages compare best with best and median with median. The peak '
    f'reference is the sustained matmul rate: one call chains {count} dependent float32 '
    f'{MATMUL_N}x{MATMUL_N} matmuls (about one step long) and its {reps} calls alternate '
    "call for call with the configured step's, so both sample the same stretch of machine "
    'time. A single short matmul call (the burst rate, '
    f'{4 * reps} calls) reached {burst.max() / 1e9:.1f} / {np.median(burst) / 1e9:.1f} '
    f'GFLOP/s; against it the configured step is at {burst_best:.0f}% / {burst_median:.0f}%. '
    'Load average '
    f'at the end (1, 5, 15 min): {load}.',
    '',
    '| measurement | time / call | images/s | GFLOP/s (XLA cost analysis) | % of matmul rate |',
    '|---|---|---|---|---|',
    f'| {count} chained {MATMUL_N}x{MATMUL_N} f32 matmuls (peak reference) | '
    f'{chain_times.min() * 1e3:.1f} / {np.median(chain_times) * 1e3:.1f} ms | | '
    f'{peak / 1e9:.1f} / {peak_median / 1e9:.1f} '
    '| 100% / 100% |',
    row(f'full train step ({layout[0]} layers, as configured)', step_times, flops_step),
    row(f'full train step ({layout[1]} layers)', other_times, flops_step),
    row('bare forward+backward (MSE, no self-cond)', fb_times, flops_fb),
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
    f'FLOPs per step (XLA cost analysis of the unrolled program, which does the same '
    f'arithmetic as the scanned one and is counted in full): train step '
    f'{flops_step / 1e9:.2f} GFLOP, bare forward+backward {flops_fb / 1e9:.2f} GFLOP. The '
    'parts are timed as separate jitted calls, so their sum need not equal the fused step.',
  ]
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='fewer repetitions')
  parser.add_argument('--batch_size', type=int, default=0, help="0: the model's default")
  parser.add_argument('--model', default='digits', choices=('digits', 'small'))
  parser.add_argument(
    '--attention', default='', choices=('', 'auto', 'xla', 'einsum'), help='model.attention_impl'
  )
  args = parser.parse_args()
  batch_size, attention = DEFAULTS[args.model]
  args.batch_size = args.batch_size or batch_size
  args.attention = args.attention or attention
  body = run(args.quick, args.batch_size, args.model, args.attention)
  command = 'python -m benchmarks.train_step' + (' --quick' if args.quick else '')
  command += f' --model={args.model} --batch_size={args.batch_size} --attention={args.attention}'
  name = 'train_step' if args.model == 'digits' else f'train_step_{args.model}'
  title = f'Train step ({args.model} RIN): throughput and trainer overhead'
  if args.batch_size != batch_size:
    name += f'_batch{args.batch_size}'
    title = f'Train step ({args.model} RIN, batch {args.batch_size}): throughput and overhead'
  report.write_section(name, title, body, command)


if __name__ == '__main__':
  main()
