"""Sample quality of the digits default, from the metrics `--mode=eval` wrote.

    python main.py --config=configs/digits.py --workdir=workdir/digits
    python main.py --config=configs/digits.py --workdir=workdir/digits --mode=eval
    python -m benchmarks.digits_quality --workdir=workdir/digits

Reads workdir/eval/metrics.json (class accuracy of class-conditional samples under the
digits classifier and the Frechet distance in its features, beside the real test split's)
and writes the `digits_quality` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import report  # noqa: E402


def table(metrics: dict) -> str:
  """The markdown body: samples vs the real test split, and the issue's targets."""
  m = metrics.get('metrics', metrics)
  acc, fd = m['digits_accuracy'], m['digits_frechet']
  real_acc, real_fd = m['digits_accuracy_real_test'], m['digits_frechet_real_test']
  protocol = metrics.get('protocol', {})
  lines = [
    'Class-conditional samples of the trained digits default, scored by the digits '
    'classifier (diffusion_jax/evaluation/digits_metric.py; trained on the real train '
    'split). Frechet distance: classifier features of the set vs the real train split.',
    '',
    f'Protocol: {json.dumps(protocol, sort_keys=True)}' if protocol else '',
    '',
    '| set | class accuracy | Frechet distance | target |',
    '|---|---|---|---|',
    f'| real test split ({int(m["digits_num_real_test"])} images) | {real_acc:.3f} | '
    f'{real_fd:.2f} | baseline |',
    f'| samples | {acc:.3f} | {fd:.2f} | accuracy >= 0.90, distance <= {2 * real_fd:.2f} '
    f'({"met" if acc >= 0.9 and fd <= 2 * real_fd else "not met"}) |',
  ]
  return '\n'.join(line for line in lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='workdir/digits')
  args = parser.parse_args()
  path = os.path.join(args.workdir, 'eval', 'metrics.json')
  if not os.path.isfile(path):
    sys.exit(
      f'{path} not found: run `python main.py --config=configs/digits.py '
      f'--workdir={args.workdir} --mode=eval` first.'
    )
  with open(path) as f:
    metrics = json.load(f)
  command = f'python -m benchmarks.digits_quality --workdir={args.workdir}'
  report.write_section('digits_quality', 'Digits default: sample quality', table(metrics), command)


if __name__ == '__main__':
  main()
