"""Checks the multi-host training path on one machine: N CPU processes vs one process.

Each process of a JAX multi-process job owns some devices; the trainer lays the global
batch out over all of them and XLA runs the cross-process reductions (gloo on CPU, ICI
and DCN on a TPU pod). This script runs a few steps of the real train step
(`diffusion_jax.training.create_train_setup`) as one process of such a job and saves the
resulting parameters, so a 2 x 4-device run can be compared with a 1 x 8-device run:
same config, same global batches, same initial state, so the parameters must agree to
float tolerance.

    # Everything at once: launches the processes, runs the reference, compares.
    python -m experiments.multihost_check --launch=2 --devices_per_process=4

    # Or by hand, one command per process (e.g. on two machines, with the first
    # machine's address as the coordinator):
    python -m experiments.multihost_check --num_processes=2 --process_id=0 \\
        --coordinator=127.0.0.1:8476 --devices_per_process=4 --out=/tmp/p0.npz
    python -m experiments.multihost_check --num_processes=2 --process_id=1 \\
        --coordinator=127.0.0.1:8476 --devices_per_process=4 --out=/tmp/p1.npz

Batches: every process draws the same global batches from the real input pipeline (as a
single simulated host) and hands the trainer only the rows its devices hold, through
`training.to_global_batch`, so both runs see identical data. `--pipeline_steps` then adds
steps fed by the multi-host input pipeline itself (each process reads its own part of
the data set); those cannot be compared with a single process, but every process must
still end with the same replicated parameters.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time

DEFAULT_CONFIG = 'digits:tiny'
_START = time.time()


def _log(message: str) -> None:
  wall, cpu = time.time() - _START, time.process_time()
  print(f'[{wall:6.1f} s, cpu {cpu:6.1f} s] {message}', file=sys.stderr, flush=True)


def _set_device_count(devices: int) -> None:
  """Sets the CPU device count through XLA_FLAGS (must run before jax is imported)."""
  flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '', os.environ.get('XLA_FLAGS', ''))
  os.environ['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count={devices}'.strip()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def load_config(spec: str, overrides: list[str] | None = None):
  """'digits:tiny' -> configs/digits.py get_config('tiny'), then 'a.b=value' overrides."""
  import ast
  import importlib

  name, _, arg = spec.partition(':')
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  for item in overrides or []:
    key, sep, text = item.partition('=')
    if not sep:
      raise ValueError(
        f'--set expects key=value (e.g. diffusion.self_cond_rate=0.0), got {item!r}.'
      )
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    node, *path = key.split('.')
    parent = config
    for part in [node, *path][:-1]:
      parent = parent[part]
    old = parent[[node, *path][-1]]
    parent[[node, *path][-1]] = type(old)(value) if old is not None else value
  return config


def flatten(tree, prefix: str) -> dict:
  """{'prefix/path/to/leaf': numpy array} of a pytree of host arrays."""
  import jax
  import numpy as np

  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    out[prefix + jax.tree_util.keystr(path, simple=True, separator='/')] = np.asarray(leaf)
  return out


def local_rows(sharding, global_shape) -> slice:
  """The contiguous rows of a batch-sharded array that this process's devices hold."""
  spans = {
    (idx[0].start or 0, global_shape[0] if idx[0].stop is None else idx[0].stop)
    for idx in sharding.addressable_devices_indices_map(tuple(global_shape)).values()
  }
  lo, hi = min(s for s, _ in spans), max(e for _, e in spans)
  if sum(e - s for s, e in spans) != hi - lo:
    raise RuntimeError(f'rows held by this process are not contiguous: {sorted(spans)}.')
  return slice(lo, hi)


def run_process(args) -> dict:
  """Runs the steps as one process of the job; returns the flattened results (on host)."""
  import jax

  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if args.num_processes > 1:
    jax.distributed.initialize(
      coordinator_address=args.coordinator,
      num_processes=args.num_processes,
      process_id=args.process_id,
      initialization_timeout=args.timeout,
    )
  import numpy as np
  from jax.experimental import multihost_utils

  from diffusion_jax import build, training
  from diffusion_jax import config as config_lib
  from diffusion_jax.data import input_pipeline

  _log(f'process {jax.process_index()} of {jax.process_count()}: {jax.device_count()} devices')
  run = config_lib.build_run_config(load_config(args.config, args.set))
  batch_size = run.global_batch_size
  setup = training.create_train_setup(build.build(run))
  state = setup.init_state(jax.random.PRNGKey(args.seed))
  _log('state initialized')

  # Process 0 .. N-1 all get the full values of the (replicated or sharded) global arrays.
  if jax.process_count() > 1:
    gather = lambda tree: multihost_utils.process_allgather(tree, tiled=True)
  else:
    gather = jax.device_get
  init_params = gather(state.params)

  # Identical global batches in every process: the pipeline as one simulated host.
  data = input_pipeline.create_input_iter(
    run.data, batch_size, seed=args.seed, process_index=0, process_count=1
  )
  losses = []
  for _ in range(args.steps):
    batch = next(data)
    rows = local_rows(setup.batch_sharding, batch['image'].shape)
    local = {k: v[rows] for k, v in batch.items()}
    state, metrics = setup.train_step(state, training.to_global_batch(local, setup.batch_sharding))
    losses.append(metrics['loss'])
    _log(f'step {len(losses)} done')
  data.close()
  host = gather(
    {'params': state.params, 'ema_params': state.ema_params, 'step': state.step, 'loss': losses}
  )
  out = flatten(host['params'], 'params/')
  out.update(flatten(host['ema_params'], 'ema_params/'))
  out['step'] = np.asarray(host['step'])
  out['loss'] = np.asarray(host['loss'], np.float64)
  out['process_count'] = np.asarray(jax.process_count())
  out['device_count'] = np.asarray(jax.device_count())
  out['local_device_count'] = np.asarray(jax.local_device_count())
  out['update_norm'] = np.sqrt(
    sum(
      np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
      for a, b in zip(jax.tree.leaves(host['params']), jax.tree.leaves(init_params))
    )
  )

  if args.pipeline_steps:
    # The real multi-host input path: each process reads its own part of the data set.
    data = input_pipeline.create_input_iter(
      run.data,
      batch_size,
      seed=args.seed,
      start_step=args.steps,
      sharding=setup.batch_sharding,
    )
    pipeline_losses, local_labels = [], []
    for _ in range(args.pipeline_steps):
      batch = next(data)
      local_labels += [np.asarray(s.data) for s in batch['label'].addressable_shards]
      state, metrics = setup.train_step(state, batch)
      pipeline_losses.append(metrics['loss'])
      _log(f'input-pipeline step {len(pipeline_losses)} done')
    data.close()
    final = gather({'params': state.params, 'loss': pipeline_losses})
    out['pipeline_loss'] = np.asarray(final['loss'], np.float64)
    out['pipeline_checksum'] = np.asarray(
      [np.sum(np.abs(np.asarray(x, np.float64))) for x in jax.tree.leaves(final['params'])]
    )
    out['pipeline_local_labels'] = np.concatenate(local_labels)
  return out


def compare(reference: dict, other: dict, rtol: float, atol: float) -> float:
  """Largest abs difference over matching arrays; raises AssertionError past tolerance."""
  import numpy as np

  keys = sorted(k for k in reference if k.startswith(('params/', 'ema_params/')) or k == 'loss')
  if sorted(k for k in other if k in keys or k.startswith(('params/', 'ema_params/'))) != keys:
    raise AssertionError('the two results hold different parameter trees.')
  worst = 0.0
  for k in keys:
    a, b = np.asarray(reference[k], np.float64), np.asarray(other[k], np.float64)
    if a.shape != b.shape:
      raise AssertionError(f'{k}: shape {a.shape} vs {b.shape}.')
    np.testing.assert_allclose(b, a, rtol=rtol, atol=atol, err_msg=k)
    worst = max(worst, float(np.max(np.abs(a - b), initial=0.0)))
  return worst


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def child_command(
  out: str,
  *,
  num_processes: int,
  process_id: int,
  devices: int,
  coordinator: str,
  steps: int,
  pipeline_steps: int,
  config: str,
  seed: int,
  timeout: int,
  overrides: tuple[str, ...] = (),
) -> list[str]:
  """The command line of one process (run from the repository root)."""
  return [
    sys.executable,
    '-m',
    'experiments.multihost_check',
    f'--num_processes={num_processes}',
    f'--process_id={process_id}',
    f'--devices_per_process={devices}',
    f'--coordinator={coordinator}',
    f'--steps={steps}',
    f'--pipeline_steps={pipeline_steps}',
    f'--config={config}',
    f'--seed={seed}',
    f'--timeout={timeout}',
    f'--out={out}',
    *(f'--set={item}' for item in overrides),
  ]


def launch_job(
  out_dir: str,
  *,
  num_processes: int,
  devices: int,
  steps: int = 3,
  pipeline_steps: int = 0,
  config: str = DEFAULT_CONFIG,
  seed: int = 0,
  timeout: int = 120,
  overrides: tuple[str, ...] = (),
) -> list[str]:
  """Runs `num_processes` processes of one job on this machine; returns their output files.

  Raises:
    RuntimeError: a process failed or did not finish within `timeout` seconds (its
      output is included).
  """
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  coordinator = f'127.0.0.1:{free_port()}'
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([root, *filter(None, [env.get('PYTHONPATH')])])
  procs, outs = [], []
  for pid in range(num_processes):
    out = os.path.join(out_dir, f'process{pid}_of{num_processes}.npz')
    outs.append(out)
    cmd = child_command(
      out,
      num_processes=num_processes,
      process_id=pid,
      devices=devices,
      coordinator=coordinator,
      steps=steps,
      pipeline_steps=pipeline_steps,
      config=config,
      seed=seed,
      timeout=timeout,
      overrides=overrides,
    )
    procs.append(
      subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
      )
    )
  deadline = time.time() + timeout
  failures = []
  for pid, p in enumerate(procs):
    try:
      log, _ = p.communicate(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      log, _ = p.communicate()
      failures.append(f'process {pid} timed out after {timeout} s:\n{log[-3000:]}')
      continue
    if p.returncode != 0:
      failures.append(f'process {pid} exited with {p.returncode}:\n{log[-3000:]}')
  if failures:
    raise RuntimeError('\n\n'.join(failures))
  return outs


def _load(path: str) -> dict:
  import numpy as np

  with np.load(path) as f:
    return dict(f)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    '--launch',
    type=int,
    default=0,
    help='launch this many processes here, run a 1-process reference and compare',
  )
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--coordinator', default='127.0.0.1:8476', help='host:port of process 0')
  parser.add_argument('--devices_per_process', type=int, default=4, help='CPU devices each')
  parser.add_argument('--config', default=DEFAULT_CONFIG, help='configs/NAME.py:ARG')
  parser.add_argument('--steps', type=int, default=3, help='steps on identical global batches')
  parser.add_argument(
    '--pipeline_steps',
    type=int,
    default=0,
    help='further steps fed by the multi-host input pipeline',
  )
  parser.add_argument(
    '--set',
    action='append',
    default=[],
    help='config override key=value (repeatable), e.g. training.batch_size=32',
  )
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--timeout', type=int, default=180, help='seconds')
  parser.add_argument('--out', default=None, help=".npz file for this process's result")
  parser.add_argument('--rtol', type=float, default=1e-4)
  parser.add_argument('--atol', type=float, default=1e-5)
  args = parser.parse_args(argv)

  if args.launch:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
      common = dict(
        steps=args.steps,
        config=args.config,
        seed=args.seed,
        timeout=args.timeout,
        overrides=tuple(args.set),
      )
      multi = launch_job(tmp, num_processes=args.launch, devices=args.devices_per_process, **common)
      single = launch_job(
        tmp, num_processes=1, devices=args.launch * args.devices_per_process, **common
      )
      ref = _load(single[0])
      for path in multi:
        worst = compare(ref, _load(path), args.rtol, args.atol)
        print(f'{os.path.basename(path)}: matches the 1-process run (max abs diff {worst:.2e})')
    return 0

  if not 0 <= args.process_id < args.num_processes:
    parser.error(f'--process_id must be in [0, {args.num_processes - 1}].')
  _set_device_count(args.devices_per_process)
  result = run_process(args)
  if args.out:
    import numpy as np

    np.savez(args.out, **result)
  print(
    f'process {args.process_id}/{args.num_processes}: {int(result["device_count"])} devices, '
    f'step {int(result["step"])}, losses {[round(float(v), 5) for v in result["loss"]]}'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
