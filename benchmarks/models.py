"""Network cost: parameters, forward FLOPs, train-step memory, and CPU throughput.

    python -m benchmarks.models            # all ImageNet configs (several minutes)
    python -m benchmarks.models --quick    # ImageNet-64 only, fewer repeats
    python -m benchmarks.models --params   # parameter count per RIN config (seconds)

Sizes come from XLA's own analyses of compiled programs lowered on abstract inputs
(jax.ShapeDtypeStruct), so no full-size array is ever allocated:
- forward GFLOPs per image: `jit(forward).lower(...).compile().cost_analysis()['flops']`;
- train-step memory: `compiled.memory_analysis()` of a loss + grad + Adam update with
  donated parameters and optimizer state, compiled at two batch sizes; the difference
  is the marginal memory per example (activations kept for the backward pass), with and
  without rematerialisation of the RIN blocks.
Throughput: a small RIN's forward pass, timed against a 2048x2048 float32 matmul in the
same process (interleaved, best of N), for each attention implementation and with the
RIN blocks unrolled or scanned.
"""

import argparse
import importlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import report
from diffusion_jax.models import ModelConfig, count_params, create_model

IMAGENET = ('imagenet64', 'imagenet128', 'imagenet256', 'imagenet512', 'imagenet1024')
RIN_CONFIGS = ('digits', 'cifar10_rin') + IMAGENET
GIB = 2.0**30


def abstract_inputs(cfg: ModelConfig, batch: int):
  x = jax.ShapeDtypeStruct((batch, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  return x, t, y


def forward_gflops(model, params, cfg: ModelConfig, batch: int = 2) -> float:
  x, t, y = abstract_inputs(cfg, batch)
  fwd = jax.jit(lambda p, x, t, y: model.apply(p, x, t, y)[0])
  return fwd.lower(params, x, t, y).compile().cost_analysis()['flops'] / batch / 1e9


def train_step_bytes(model, params, cfg: ModelConfig, batch: int) -> int:
  """Peak bytes of one compiled train step (arguments + outputs + temporaries - aliased)."""
  opt = optax.adam(1e-4)
  opt_state = jax.eval_shape(opt.init, params)
  x, t, y = abstract_inputs(cfg, batch)
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)

  def step(params, opt_state, x, t, y, rng):
    def loss(p):
      out, _ = model.apply(p, x, t, y, train=True, rng=jax.random.wrap_key_data(rng))
      return jnp.mean((out - x) ** 2)

    grads = jax.grad(loss)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, x, t, y, rng).compile()
  mem = compiled.memory_analysis()
  return (
    mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    + mem.temp_size_in_bytes
    - mem.alias_size_in_bytes
  )


def size_table(names, batches) -> tuple[str, list[dict]]:
  rows = []
  for name in names:
    config = importlib.import_module(f'configs.{name}').get_config()
    start = time.time()
    # XLA's cost analysis counts a while-loop body once, so FLOPs come from unrolled layers.
    config.model.scan_layers = False
    cfg = ModelConfig.from_config(config.model, config.data)
    model = create_model(cfg)
    params = model.param_shapes()
    row = {'name': name, 'cfg': cfg, 'params': count_params(params)}
    row['gflops'] = forward_gflops(model, params, cfg)
    config.model.scan_layers = True
    for remat in (False, True):
      config.model.remat = remat
      cfg = ModelConfig.from_config(config.model, config.data)
      model = create_model(cfg)
      params = model.param_shapes()
      small, large = (train_step_bytes(model, params, cfg, b) for b in batches)
      key = 'remat' if remat else 'plain'
      row[f'{key}_per_example'] = (large - small) / (batches[1] - batches[0])
      row[f'{key}_fixed'] = small - batches[0] * row[f'{key}_per_example']
    print(f'{name}: {time.time() - start:.0f}s of compiles', file=sys.stderr, flush=True)
    rows.append(row)

  base = rows[0]
  lines = [
    '| config | image | dtype | patch -> tokens | latents x dim | blocks x layers | params | '
    'fwd GFLOPs / image | train MiB / example | with remat | fixed GiB (params + Adam) |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    c = r['cfg']
    lines.append(
      f'| {r["name"]} | {c.image_size} | {c.dtype} | {c.patch_size} -> {c.num_tokens} | '
      f'{c.num_latents} x {c.latent_dim} | {c.num_blocks} x {c.num_compute_layers} | '
      f'{r["params"] / 1e6:.1f}M | {r["gflops"]:.1f} | {r["plain_per_example"] / 2**20:.0f} | '
      f'{r["remat_per_example"] / 2**20:.0f} | {r["plain_fixed"] / GIB:.2f} |'
    )
  lines += [
    '',
    f'Growth relative to {base["name"]}:',
    '',
    '| config | pixels | params | fwd FLOPs | train memory / example | with remat |',
    '|---|---|---|---|---|---|',
  ]
  for r in rows:
    pix = (r['cfg'].image_size / base['cfg'].image_size) ** 2
    lines.append(
      f'| {r["name"]} | {pix:.0f}x | {r["params"] / base["params"]:.2f}x | '
      f'{r["gflops"] / base["gflops"]:.2f}x | '
      f'{r["plain_per_example"] / base["plain_per_example"]:.2f}x | '
      f'{r["remat_per_example"] / base["remat_per_example"]:.2f}x |'
    )
  return '\n'.join(lines), rows


def rin_param_groups(params) -> dict[str, int]:
  """Parameter count split into the tape side, the latent side and the blocks."""
  tree = params['params']
  blocks = {k: v for k, v in tree.items() if k == 'blocks' or k.startswith('block_')}
  rest = {k: v for k, v in tree.items() if k not in blocks}
  return {'blocks': count_params(blocks), 'embeddings + readout': count_params(rest)}


def param_table(names=RIN_CONFIGS) -> str:
  """Markdown table of each RIN config's parameter count (traced shapes, no allocation)."""
  lines = [
    '| config | image | patch -> tokens | tape dim | latents x dim | blocks x layers | '
    'read/write heads | latent heads | params | in blocks |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ]
  for name in names:
    config = importlib.import_module(f'configs.{name}').get_config()
    cfg = ModelConfig.from_config(config.model, config.data)
    params = create_model(cfg).param_shapes()
    groups = rin_param_groups(params)
    total = count_params(params)
    lines.append(
      f'| {name} | {cfg.image_size}x{cfg.image_size}x{cfg.num_channels} | '
      f'{cfg.patch_size} -> {cfg.num_tokens} | {cfg.tape_dim} | {cfg.num_latents} x '
      f'{cfg.latent_dim} | {cfg.num_blocks} x {cfg.num_compute_layers} | '
      f'{cfg.read_write_heads} | {cfg.latent_heads} | {total:,} ({total / 1e6:.2f}M) | '
      f'{groups["blocks"] / total:.1%} |'
    )
  return '\n'.join(lines)


def small_rin(**overrides) -> ModelConfig:
  """The 42M-parameter RIN of STACK.md: 32x32, patch 4, tape 256, 128 x 512 latents, 4 x 2."""
  kwargs = dict(
    name='rin',
    image_size=32,
    num_channels=3,
    num_classes=10,
    patch_size=4,
    tape_dim=256,
    read_write_heads=8,
    num_latents=128,
    latent_dim=512,
    latent_heads=8,
    num_blocks=4,
    num_compute_layers=2,
  )
  return ModelConfig(**{**kwargs, **overrides})


THROUGHPUT_VARIANTS = {
  'dot_product_attention (xla), unrolled layers': dict(attention_impl='xla', scan_layers=False),
  'einsum attention, unrolled layers': dict(attention_impl='einsum', scan_layers=False),
  'dot_product_attention (xla), scanned layers': dict(attention_impl='xla', scan_layers=True),
  'einsum attention, scanned layers': dict(attention_impl='einsum', scan_layers=True),
}


def throughput(batch: int, repeats: int) -> str:
  x = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3))
  t = jnp.full((batch,), 500.0)
  y = jnp.zeros((batch,), jnp.int32)
  # FLOPs from the unrolled program (cost analysis counts a loop body once); all variants
  # compute the same function.
  reference = create_model(small_rin(scan_layers=False))
  ref_params = reference.param_shapes(batch)
  flops = (
    jax.jit(lambda p, x, t, y: reference.apply(p, x, t, y)[0])
    .lower(ref_params, x, t, y)
    .compile()
    .cost_analysis()['flops']
  )
  variants, inits = {}, {}
  for label, overrides in THROUGHPUT_VARIANTS.items():
    model = create_model(small_rin(**overrides))
    scan = overrides['scan_layers']
    if scan not in inits:  # parameters depend only on the layout
      inits[scan] = jax.jit(model.init)(jax.random.key(0), x, t, y)
    params = inits[scan]
    fwd = jax.jit(lambda p, x, t, y, m=model: m.apply(p, x, t, y)[0])
    variants[label] = (fwd.lower(params, x, t, y).compile(), params)
  a = jax.random.normal(jax.random.key(0), (2048, 2048))
  matmul = jax.jit(lambda a: a @ a).lower(a).compile()

  def timed(fn, *args):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start

  best = {}
  for _ in range(repeats):  # interleaved, so background load hits every variant alike
    best['matmul'] = min(best.get('matmul', np.inf), timed(matmul, a))
    for label, (compiled, params) in variants.items():
      best[label] = min(best.get(label, np.inf), timed(compiled, params, x, t, y))
  mm_rate = 2 * 2048**3 / best['matmul'] / 1e9
  load = ', '.join(f'{v:.1f}' for v in os.getloadavg())
  lines = [
    f'Small RIN ({count_params(ref_params) / 1e6:.1f}M parameters: 32x32, patch 4, tape 256, '
    f'128 x 512 latents, 4 blocks x 2 layers, {flops / batch / 1e9:.2f} GFLOP / image), '
    f'forward at batch {batch}, best of {repeats} interleaved runs; float32 2048x2048 '
    f'matmul in the same run: **{mm_rate:.0f} GFLOP/s**. Load average during the run: '
    f'{load} (other processes share the 2 cores, which lowers both rates).',
    '',
    '| variant | ms / batch | GFLOP/s | share of matmul rate |',
    '|---|---|---|---|',
  ]
  for label in variants:
    rate = flops / best[label] / 1e9
    lines.append(f'| {label} | {best[label] * 1e3:.0f} | {rate:.0f} | {rate / mm_rate:.0%} |')
  return '\n'.join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='ImageNet-64 only, fewer repeats')
  parser.add_argument('--params', action='store_true', help='only the RIN parameter counts')
  args = parser.parse_args(argv)
  if args.params:
    body = (
      'Exact parameter counts of the RIN configs (kernels, biases, LayerNorms, learned '
      'latents and positions), from traced shapes; "in blocks" is the share in the '
      'read / compute / write blocks, the rest being the stem, positions, latents, '
      'conditioning, latent self-conditioning MLP and readout.\n\n' + param_table()
    )
    report.write_section(
      'rin_params', 'RIN parameter counts', body, 'python -m benchmarks.models --params'
    )
    return
  names = IMAGENET[:1] if args.quick else IMAGENET
  sizes, _ = size_table(names, batches=(2, 6))
  speed = throughput(batch=16, repeats=3 if args.quick else 8)
  body = (
    '### Size and cost per ImageNet config\n\n'
    'Forward FLOPs from XLA cost analysis of the compiled forward pass; train memory from '
    'the compiled train step (loss, grad, Adam update; parameters and optimizer state '
    'donated; blocks and layers scanned) at batch 2 and 6: "per example" is the marginal '
    'bytes per extra image, "fixed" the rest (float32 parameters, gradients, Adam '
    'moments). CPU compile, so the numbers describe XLA CPU buffers; accelerator layouts '
    'differ somewhat.\n\n'
    f'{sizes}\n\n### Forward throughput on this CPU\n\n{speed}\n'
  )
  command = 'python -m benchmarks.models' + (' --quick' if args.quick else '')
  report.write_section('models', 'Networks: size, FLOPs, memory, throughput', body, command)


if __name__ == '__main__':
  main()
