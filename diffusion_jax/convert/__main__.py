"""Converts a reference checkpoint into a run directory that main.py samples from.

    python -m diffusion_jax.convert --from=diffusers_unet2d --input=ddpm-cifar10-32 \
        --workdir=workdir/ddpm_cifar10 [--config=configs/ddpm_cifar10.py]
    python main.py --config=configs/ddpm_cifar10.py --workdir=workdir/ddpm_cifar10 --mode=sample

The converted weights become both the parameters and the EMA parameters of a step-0
training checkpoint (fresh optimizer state), so --mode=sample / eval restore them and
--mode=train fine-tunes from them. The network settings come from the checkpoint: when
they differ from --config's, the config that matches is written to DIR/config.py (the
base config with the checkpoint's network) and the command printed names it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from diffusion_jax.convert import FORMAT_MODULES, common, get_format


def _format_lines() -> str:
  """One line per format for --help; a format whose module is missing says so."""
  lines = []
  for fmt in FORMAT_MODULES:
    try:
      description = get_format(fmt).description
    except Exception as e:  # a format being written must not break --help
      description = f'(not available in this installation: {type(e).__name__})'
    lines.append(f'  {fmt:18s} {description}')
  return '\n'.join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog='python -m diffusion_jax.convert',
    description='Converts a reference checkpoint into a checkpoint main.py restores.',
    epilog='formats (--from):\n' + _format_lines(),
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('--from', dest='fmt', required=True, choices=tuple(FORMAT_MODULES))
  parser.add_argument('--input', required=True, help='the reference checkpoint (file or directory)')
  parser.add_argument('--workdir', required=True, help='the run directory to write')
  parser.add_argument(
    '--config',
    default=None,
    help="our config file (configs/X.py[:arg]); default: the format's config for the checkpoint",
  )
  parser.add_argument(
    '--reference_config',
    default=None,
    help='a JSON file with the reference config, for checkpoints that do not carry it',
  )
  return parser.parse_args(argv)


def apply_overrides(config: Any, overrides: dict[str, dict[str, Any]]) -> Any:
  """`config` with `overrides` ({'model': {...}, 'data': {...}}) set key by key."""
  for section, values in overrides.items():
    for key, value in values.items():
      config[section][key] = value
  return config


_CONFIG_TEMPLATE = '''"""The network of {input} ({fmt}) on {base}.

    python main.py --config={path} --workdir={workdir} --mode=sample
"""

from diffusion_jax.config import load_config_file

BASE = {base_abs!r}
OVERRIDES = {overrides!r}


def get_config():
  config = load_config_file(BASE)
  for section, values in OVERRIDES.items():
    for key, value in values.items():
      config[section][key] = value
  return config
'''


def _jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def write_checkpoint(components: Any, params: Any, workdir: str) -> None:
  """A step-0 TrainState checkpoint with `params` as params and EMA params.

  The state is the one `components.init_fn` builds (fresh optimizer and objective state),
  assembled around `params` without running the network's initializer.
  """
  import jax

  from diffusion_jax.training import checkpointing
  from diffusion_jax.training.state import TrainState

  run = components.run
  params = jax.tree.map(np.asarray, params)
  state = TrainState(
    step=np.zeros((), np.int32),
    params=params,
    ema_params=jax.tree.map(np.copy, params),
    opt_state=components.tx.init(params),
    rng=jax.random.split(jax.random.PRNGKey(run.seed))[1],
    objective_state=components.objective.init_state(),
  )
  expected = jax.eval_shape(components.init_fn, jax.random.PRNGKey(0))
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  if jax.tree.structure(state) != jax.tree.structure(expected) or shapes(state) != shapes(expected):
    raise common.ConversionError("the assembled training state differs from init_fn's.")
  state = jax.device_get(state)  # host arrays: written without per-shard device transfers
  with checkpointing.Checkpointer(workdir, save_every=1, keep=1, handle_sigterm=False) as ckpt:
    ckpt.save(0, state, force=True)
    ckpt.wait_until_finished()


def convert(
  fmt: str,
  input_path: str,
  workdir: str,
  config_spec: str | None = None,
  reference_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Converts `input_path` into `workdir`; returns what was written (also DIR/convert.json).

  Raises:
    ValueError / ConversionError: with a one-line message naming the fix.
  """
  import jax

  from diffusion_jax import build as build_lib
  from diffusion_jax import config as config_lib
  from diffusion_jax.training import checkpointing

  f = get_format(fmt)
  if checkpointing.latest_step(workdir) is not None:
    raise ValueError(
      f'--workdir={workdir} already holds checkpoints; convert into a new directory.'
    )
  state_dict, found = f.load(input_path)
  ref = reference_config if reference_config is not None else found
  if ref is None and config_spec is not None and f.reference_from_config is not None:
    ref = f.reference_from_config(config_lib.load_config_file(config_spec))
  if ref is None:
    raise ValueError(
      f'{input_path} carries no {fmt} config; pass it as JSON with --reference_config=FILE'
      + (' or a --config=configs/X.py whose network it is.' if f.reference_from_config else '.')
    )
  if config_spec is None:
    config_spec = f.default_config(ref, input_path) if f.default_config else None
    if config_spec is None:
      raise ValueError(
        f'no config of ours is known for {input_path}; pass --config=configs/X.py '
        "(the paper's config for this checkpoint)."
      )
  base = config_lib.load_config_file(config_spec)
  overrides = f.model_overrides(ref)
  config = apply_overrides(config_lib.load_config_file(config_spec), overrides)
  run = config_lib.build_run_config(config)
  # The checkpoint may change more than the network (an NCSNv2 ladder and sampler, an EDM
  # preconditioning): the base config serves as is only when what draws samples is equal.
  base_run = config_lib.build_run_config(base)
  matches = all(getattr(base_run, s) == getattr(run, s) for s in ('model', 'diffusion', 'sample'))

  components = build_lib.build(run)
  abstract = build_lib.abstract_params(components)
  params = f.convert(state_dict, ref, abstract)
  common.check_tree(params, abstract)
  write_checkpoint(components, params, workdir)

  os.makedirs(workdir, exist_ok=True)
  base_path, _, arg = config_spec.partition(':')
  written_config = config_spec
  if not matches:
    written_config = os.path.join(workdir, 'config.py')
    with open(written_config, 'w') as out:
      out.write(
        _CONFIG_TEMPLATE.format(
          input=os.path.basename(os.path.normpath(input_path)),
          fmt=fmt,
          base=config_spec,
          path=written_config,
          workdir=workdir,
          base_abs=os.path.abspath(base_path) + (f':{arg}' if arg else ''),
          overrides=_jsonable(overrides),
        )
      )
  record = {
    'format': fmt,
    'input': os.path.abspath(input_path),
    'config': written_config,
    'base_config': config_spec,
    'config_matches_checkpoint': matches,
    'reference_config': _jsonable(ref),
    'num_params': int(sum(p.size for p in jax.tree.leaves(params))),
    'sample_command': (
      f'python main.py --config={written_config} --workdir={workdir} --mode=sample'
    ),
  }
  with open(os.path.join(workdir, 'convert.json'), 'w') as out:
    json.dump(record, out, indent=2, default=str)
  return record


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  reference = None
  if args.reference_config:
    with open(args.reference_config) as f:
      reference = json.load(f)
  try:
    record = convert(args.fmt, args.input, args.workdir, args.config, reference)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(
    f'Converted {record["num_params"]:,} parameters from {args.input} into {args.workdir} '
    f'(config: {record["config"]}).'
  )
  if not record['config_matches_checkpoint']:
    print(
      f"The checkpoint's network or sampling settings differ from {record['base_config']}'s: "
      f"{record['config']} is that config with the checkpoint's."
    )
  print(f'Sample with:\n  {record["sample_command"]}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
