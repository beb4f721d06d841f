"""Regenerates the papers' figures and tables into experiments/results/.

    python -m experiments.reproduce              # all of them
    python -m experiments.reproduce --only edm_sampler_error
    python -m experiments.reproduce --list

Each reproduction runs on CPU in well under a minute and writes NAME.png and NAME.md;
results/README.md indexes them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from experiments import chen_schedules, edm_samplers, iddpm_schedules, ncsn_techniques, report

# name -> (title, function(out_dir) -> result dict)
REPRODUCTIONS: dict[str, tuple[str, Callable[[str], dict]]] = {
  chen_schedules.FIG3_NAME: (
    'Chen 2023 Fig. 3: gamma(t) and logSNR(t) of the cosine, sigmoid and linear families',
    chen_schedules.schedule_families,
  ),
  chen_schedules.FIG5_NAME: (
    'Chen 2023 Fig. 5: input scaling shifts logSNR by 2 log b; shape changes do not',
    chen_schedules.input_scaling,
  ),
  edm_samplers.NAME: (
    'EDM: Euler vs Heun error against NFE, and the rho sweep (exact denoiser)',
    edm_samplers.sampler_error,
  ),
  ncsn_techniques.NAME: (
    'NCSNv2 Techniques 2 and 4: L = 219 vs 232, eps = 6.2e-6 for CIFAR-10',
    ncsn_techniques.technique_4_and_2,
  ),
  iddpm_schedules.NAME: (
    'Improved DDPM: linear vs cosine schedule (abar, logSNR, wasted steps)',
    iddpm_schedules.linear_vs_cosine,
  ),
}


def write_index(out_dir: str) -> str:
  """Writes out_dir/README.md listing every reproduction with its page and figure."""
  lines = [
    "# Reproductions of the papers' figures",
    '',
    'Regenerate all with `python -m experiments.reproduce` (CPU, about a minute in all),',
    'or one with `--only NAME`.',
    '',
    '| reproduction | page | figure |',
    '|---|---|---|',
  ]
  for name, (title, _) in REPRODUCTIONS.items():
    lines.append(f'| {title} | [{name}.md]({name}.md) | [{name}.png]({name}.png) |')
  path = os.path.join(out_dir, 'README.md')
  os.makedirs(out_dir, exist_ok=True)
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    '--only',
    action='append',
    choices=sorted(REPRODUCTIONS),
    help='run only this reproduction (repeatable)',
  )
  parser.add_argument('--out_dir', default=report.RESULTS_DIR, help='where results go')
  parser.add_argument('--list', action='store_true', help='list the reproductions and exit')
  args = parser.parse_args(argv)
  if args.list:
    for name, (title, _) in REPRODUCTIONS.items():
      print(f'{name}: {title}')
    return 0
  for name in args.only or list(REPRODUCTIONS):
    title, fn = REPRODUCTIONS[name]
    start = time.time()
    fn(args.out_dir)
    print(f'{name}: {time.time() - start:.1f} s -> {os.path.join(args.out_dir, name)}.{{png,md}}')
  write_index(args.out_dir)
  return 0


if __name__ == '__main__':
  sys.exit(main())
