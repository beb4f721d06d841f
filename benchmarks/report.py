"""Writes one benchmark's results into its own section of BENCHMARKS.md.

Each benchmark script owns the block between `<!-- BEGIN name -->` and
`<!-- END name -->`; re-running a script replaces only its block.
"""

import os
import platform
import re
from collections.abc import Callable

import jax

BENCHMARKS_MD = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'BENCHMARKS.md'
)


def machine_description() -> str:
  """One line naming the machine the numbers were measured on."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  return (
    f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, '
    f'{len(devices)} x {"/".join(kinds)} ({jax.default_backend()}), jax {jax.__version__}'
  )


def write_section(
  name: str, title: str, body: str, command: str, path: str = BENCHMARKS_MD
) -> None:
  """Replaces (or appends) the section `name` of BENCHMARKS.md and prints it."""
  block = (
    f'<!-- BEGIN {name} -->\n## {title}\n\n'
    f'Command: `{command}`  \nMachine: {machine_description()}\n\n'
    f'{body.strip()}\n<!-- END {name} -->'
  )
  print(block)
  text = ''
  if os.path.exists(path):
    with open(path) as f:
      text = f.read()
  else:
    text = '# Benchmarks\n\nMeasured numbers, each with the command that reproduces it.\n'
  pattern = re.compile(
    rf'<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->', re.DOTALL
  )
  if pattern.search(text):
    text = pattern.sub(lambda _: block, text)
  else:
    text = text.rstrip('\n') + '\n\n' + block + '\n'
  with open(path, 'w') as f:
    f.write(text)


def section_body(name: str, path: str = BENCHMARKS_MD) -> str | None:
  """The text between section `name`'s title block and its end marker, or None."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    text = f.read()
  match = re.search(
    rf'<!-- BEGIN {re.escape(name)} -->\n(.*?)<!-- END {re.escape(name)} -->', text, re.DOTALL
  )
  if match is None:
    return None
  # Drop the '## title', 'Command:' and 'Machine:' lines write_section puts first.
  lines = match.group(1).split('\n')
  while lines and (not lines[0].strip() or lines[0].startswith(('## ', 'Command:', 'Machine:'))):
    lines.pop(0)
  return '\n'.join(lines)


def table_rows(body: str) -> list[str]:
  """The table lines of a section body, without the separator line."""
  return [line for line in body.split('\n') if line.startswith('|') and not line.startswith('|---')]


def write_table_row(
  name: str,
  title: str,
  intro: str,
  header: str,
  row: str,
  command: str,
  key_cells: int = 1,
  path: str = BENCHMARKS_MD,
  footer: Callable[[list[str]], str] | None = None,
) -> None:
  """Adds `row` to the table of section `name`, replacing a row with the same key.

  The section is `intro`, then a markdown table whose first line is `header`, then
  `footer(rows)` if given. Rows are keyed by their first `key_cells` cells, so re-running
  one case replaces its own row and keeps the others (other configs, other machines).
  """

  def key(line: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in line.strip().strip('|').split('|')[:key_cells])

  rows = table_rows(section_body(name, path) or '')
  rows = [r for r in rows if r.strip() != header.strip() and key(r) != key(row)] + [row]
  separator = '|' + '---|' * (header.count('|') - 1)
  body = '\n'.join([intro.strip(), '', header, separator, *rows])
  if footer is not None:
    body += '\n\n' + footer(rows).strip()
  write_section(name, title, body, command, path)
