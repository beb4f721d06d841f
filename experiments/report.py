"""Writes a reproduction's figure (PNG) and markdown page into experiments/results/.

Figures use matplotlib's Agg backend, so nothing needs a display.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use('Agg')

import matplotlib.pyplot as plt  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def format_number(value) -> str:
  """Short, readable text for a table cell (ints as ints, floats to 4 significant digits)."""
  if isinstance(value, str):
    return value
  if isinstance(value, bool):
    return 'yes' if value else 'no'
  if isinstance(value, int):
    return str(value)
  v = float(value)
  if v == 0.0:
    return '0'
  if 1e-3 <= abs(v) < 1e5:
    return f'{v:.4g}'
  return f'{v:.3e}'


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  """A GitHub markdown table with formatted cells."""
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in rows:
    if len(row) != len(header):
      raise ValueError(f'row {row!r} has {len(row)} cells; the header has {len(header)}.')
    lines.append('| ' + ' | '.join(format_number(c) for c in row) + ' |')
  return '\n'.join(lines)


def save_figure(fig, name: str, out_dir: str) -> str:
  """Saves `fig` as out_dir/name.png (small enough to commit) and closes it."""
  from PIL import Image

  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f'{name}.png')
  buf = io.BytesIO()
  fig.savefig(buf, dpi=80, bbox_inches='tight')
  plt.close(fig)
  buf.seek(0)
  # A 256-colour palette keeps line plots sharp at about a third of the RGBA size.
  image = Image.open(buf).convert('RGB').quantize(colors=256, method=Image.Quantize.MEDIANCUT)
  image.save(path, optimize=True)
  return path


def write_page(name: str, title: str, body: str, out_dir: str, figure: bool = True) -> str:
  """Writes out_dir/name.md: title, the command that regenerates it, the figure and `body`."""
  os.makedirs(out_dir, exist_ok=True)
  parts = [f'# {title}', '', f'Regenerate: `python -m experiments.reproduce --only {name}`', '']
  if figure:
    parts += [f'![{title}]({name}.png)', '']
  parts.append(body.strip())
  path = os.path.join(out_dir, f'{name}.md')
  with open(path, 'w') as f:
    f.write('\n'.join(parts) + '\n')
  return path
