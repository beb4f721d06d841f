"""Each paper's training recipe, setting by setting, against its reference implementation.

    python -m experiments.recipes            # writes experiments/results/recipes.md
    python -m experiments.recipes --check    # exits 1 if a config drifted from its reference

Every row names a config key, the value the reference code runs with and the reference
file it comes from; `check()` compares the value the config really sets. The tests run
`check()` on every config, so a config cannot drift from its paper without a failing
test, and a reviewer can read the recipe line by line in the generated page.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import sys
from typing import Any

from experiments import report

PIX2SEQ = 'google-research/pix2seq'
RIN_SWEEP_IN64 = f'{PIX2SEQ} configs/config_diffusion_imagenet64.py (tape sweep)'
RIN_SWEEP_C10 = f'{PIX2SEQ} configs/config_diffusion_cifar10.py (tape sweep)'
RIN_BASE = f'{PIX2SEQ} configs/config_diffusion_base.py'
PIX2SEQ_LAMB = f'{PIX2SEQ} models/model_utils.py build_optimizer (LAMB has no clipnorm)'
PIX2SEQ_SAMPLER = f'{PIX2SEQ} models/diffusion_utils.py Scheduler.transition_step'
PIX2SEQ_GUIDANCE = f'{PIX2SEQ} models/diffusion_utils.py Scheduler.generate'
PIX2SEQ_TAPE = f'{PIX2SEQ} architectures/tape.py'
PIX2SEQ_EMA = f'{PIX2SEQ} models/image_diffusion_model.py Trainer.train_step'
PIX2SEQ_LR = f'{PIX2SEQ} models/model_utils.py WarmUpAndDecay'

NAME = 'recipes'


@dataclasses.dataclass(frozen=True)
class Setting:
  """One line of a recipe: config key, the reference's value, where it comes from."""

  key: str  # dotted config path, e.g. 'optim.lr_schedule'
  reference: Any
  source: str
  note: str = ''  # the reference's own name for the setting, when it differs


def _rin_common(sweep: str) -> list[Setting]:
  """What the ImageNet-64 and CIFAR-10 RIN sweeps share."""
  return [
    Setting('model.name', 'rin', sweep, "arch 'tape'"),
    Setting('model.class_conditional', True, sweep, "conditional='class'"),
    Setting('diffusion.objective', 'chen', sweep, "'image_diffusion_model'"),
    Setting('diffusion.prediction', 'eps', sweep, "pred_type='eps'"),
    Setting('diffusion.scale', 1.0, sweep, 'b_scale=1.0'),
    Setting('diffusion.normalize', 'none', RIN_BASE, 'normalize_noisy_input=False'),
    Setting('diffusion.self_cond_rate', 0.9, sweep, "self_cond='latent', rate 0.9"),
    Setting('diffusion.label_drop_prob', 0.0, RIN_BASE, 'cond_dropout=0.'),
    Setting('model.write_kv_norm', False, RIN_BASE, 'xattn_enc_ln=False'),
    Setting('model.stem_norm', True, PIX2SEQ_TAPE, 'LayerNorm on the patch embeddings'),
    Setting('model.tape_pos_init', 'random', sweep, "tape_pos_encoding='learned'"),
    Setting('model.num_latents', 128, sweep, 'latent_slots'),
    Setting('model.latent_mlp_ratio', 4, sweep),
    Setting('model.latent_heads', 16, sweep, 'latent_num_heads'),
    Setting('optim.name', 'lamb', sweep),
    Setting('optim.warmup_steps', 10_000, sweep),
    Setting('optim.weight_decay', 0.01, sweep),
    Setting('optim.b1', 0.9, RIN_BASE, 'beta1'),
    Setting('optim.b2', 0.999, sweep, 'beta2'),
    Setting('optim.eps', 1e-8, RIN_BASE),
    Setting('optim.grad_clip', 0.0, PIX2SEQ_LAMB),
    Setting('optim.ema_decay', 0.9999, sweep),
    Setting('optim.ema_warmup', False, PIX2SEQ_EMA, 'constant decay from step 0'),
    Setting('optim.end_lr_factor', 0.0, sweep, 'end_lr_factor'),
    Setting('training.num_steps', 150_000, sweep),
    Setting('data.random_flip', True, RIN_BASE, "flipping='left_right'"),
    Setting('sample.sampler', 'chen_ddpm', sweep, "sampler_name='ddpm' (eval args)"),
    Setting('sample.inference_schedule', 'cosine', sweep, "infer_schedule='cosine'"),
    Setting('sample.chen_ddpm_variance', 'large', PIX2SEQ_SAMPLER, "ddpm_var_type='large'"),
    Setting('sample.guidance_carry', 'conditional', PIX2SEQ_GUIDANCE),
    Setting('sample.clip_x0', True, RIN_BASE, "x0_clip='auto'"),
  ]


RECIPES: dict[str, list[Setting]] = {
  'imagenet64': _rin_common(RIN_SWEEP_IN64)
  + [
    Setting('data.image_size', 64, RIN_SWEEP_IN64),
    Setting('model.patch_size', 8, RIN_SWEEP_IN64),
    Setting('model.num_blocks', 4, RIN_SWEEP_IN64, "num_layers='4,4,4,4'"),
    Setting('model.num_compute_layers', 4, RIN_SWEEP_IN64, "num_layers='4,4,4,4'"),
    Setting('model.latent_dim', 768, RIN_SWEEP_IN64),
    Setting('model.tape_dim', 512, RIN_SWEEP_IN64),
    Setting('model.tape_mlp_ratio', 4, RIN_SWEEP_IN64),
    Setting('model.read_write_heads', 16, RIN_SWEEP_IN64, 'rw_num_heads'),
    Setting('model.dropout', 0.0, RIN_SWEEP_IN64, 'drop_units'),
    Setting('model.drop_path', 0.0, RIN_SWEEP_IN64),
    Setting('diffusion.train_schedule', 'linear', RIN_SWEEP_IN64, "'simple_linear'"),
    Setting('optim.learning_rate', 2e-3, RIN_SWEEP_IN64),
    Setting('optim.lr_schedule', 'cosine@0.7', RIN_SWEEP_IN64),
    Setting('training.batch_size', 1024, RIN_SWEEP_IN64),
    Setting('sample.num_steps', 1000, RIN_SWEEP_IN64, 'infer_iterations 100 / 250 / 1000'),
  ],
  'cifar10_rin': _rin_common(RIN_SWEEP_C10)
  + [
    Setting('data.image_size', 32, RIN_BASE),
    Setting('model.patch_size', 2, RIN_SWEEP_C10),
    Setting('model.num_blocks', 3, RIN_SWEEP_C10, "num_layers='2,2,2'"),
    Setting('model.num_compute_layers', 2, RIN_SWEEP_C10, "num_layers='2,2,2'"),
    Setting('model.latent_dim', 512, RIN_SWEEP_C10),
    Setting('model.tape_dim', 256, RIN_SWEEP_C10),
    Setting('model.tape_mlp_ratio', 2, RIN_SWEEP_C10),
    Setting('model.read_write_heads', 8, RIN_SWEEP_C10, 'rw_num_heads'),
    Setting('model.dropout', 0.1, RIN_SWEEP_C10, 'drop_units (latent MLP hidden units)'),
    Setting('model.drop_path', 0.1, RIN_SWEEP_C10),
    Setting('diffusion.train_schedule', 'sigmoid', RIN_SWEEP_C10, "'sigmoid@-3,3,0.9'"),
    Setting('diffusion.schedule_start', -3.0, RIN_SWEEP_C10),
    Setting('diffusion.schedule_end', 3.0, RIN_SWEEP_C10),
    Setting('diffusion.schedule_tau', 0.9, RIN_SWEEP_C10),
    Setting('optim.learning_rate', 3e-3, RIN_SWEEP_C10),
    Setting('optim.lr_schedule', 'cosine@0.8', RIN_SWEEP_C10),
    Setting('training.batch_size', 256, RIN_SWEEP_C10),
    Setting('sample.num_steps', 1000, RIN_SWEEP_C10, 'infer_iterations 400 / 1000'),
  ],
}


def config_value(config: Any, key: str) -> Any:
  """The value at a dotted path of a ConfigDict, or a KeyError naming the path."""
  node = config
  for part in key.split('.'):
    if part not in node:
      raise KeyError(f'config has no key {key!r}')
    node = node[part]
  return node


def _equal(got: Any, want: Any) -> bool:
  if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
    return math.isclose(float(got), want, rel_tol=1e-9, abs_tol=0.0)
  if isinstance(want, (tuple, list)):
    return isinstance(got, (tuple, list)) and list(got) == list(want)
  return type(got) is type(want) and got == want


def load_config(name: str) -> Any:
  """configs/<name>.py's `get_config()`."""
  return importlib.import_module(f'configs.{name}').get_config()


def check(name: str) -> list[str]:
  """One line per setting of `name`'s recipe that its config does not match (empty: all do)."""
  config = load_config(name)
  problems = []
  for s in RECIPES[name]:
    try:
      got = config_value(config, s.key)
    except KeyError as e:
      problems.append(f'{name}: {e.args[0]} (reference {s.reference!r}, {s.source})')
      continue
    if not _equal(got, s.reference):
      problems.append(f'{name}: {s.key} = {got!r}, reference {s.reference!r} ({s.source})')
  return problems


def render() -> str:
  """The markdown page: one table per config."""
  lines = [
    "# Training recipes against the papers' reference code",
    '',
    'Generated by `python -m experiments.recipes`; `tests/test_experiments.py` checks',
    'that every config still sets each value. "reference" is what the reference',
    "implementation runs with; the note gives the reference's own name for it.",
  ]
  for name, settings in RECIPES.items():
    config = load_config(name)
    rows = [
      (f'`{s.key}`', repr(config_value(config, s.key)), repr(s.reference), s.note, s.source)
      for s in settings
    ]
    lines += ['', f'## configs/{name}.py', '']
    lines.append(
      report.markdown_table(('setting', 'ours', 'reference', 'reference name', 'source'), rows)
    )
  return '\n'.join(lines) + '\n'


def write(out_dir: str = report.RESULTS_DIR) -> str:
  """Writes out_dir/recipes.md and returns its path."""
  path = os.path.join(out_dir, f'{NAME}.md')
  os.makedirs(out_dir, exist_ok=True)
  with open(path, 'w') as f:
    f.write(render())
  return path


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--check', action='store_true', help='only compare; exit 1 on drift')
  args = parser.parse_args(argv)
  problems = [p for name in RECIPES for p in check(name)]
  for p in problems:
    print(p)
  if args.check:
    return 1 if problems else 0
  print(write())
  return 0


if __name__ == '__main__':
  sys.exit(main())
