"""Writes one benchmark's results into its own section of BENCHMARKS.md.

Each benchmark script owns the block between `<!-- BEGIN name -->` and
`<!-- END name -->`; re-running a script replaces only its block.
"""

import os
import platform
import re

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
