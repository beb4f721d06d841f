"""Runs experiments/colab_tpu_quickstart.ipynb top to bottom on CPU with the tiny config."""

import os
import re
import sys

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'experiments', 'colab_tpu_quickstart.ipynb')


def _source(cell) -> str:
  return cell.source if isinstance(cell.source, str) else ''.join(cell.source)


def _text(cell) -> str:
  parts = []
  for out in cell.get('outputs', []):
    if out.output_type == 'stream':
      parts.append(out.text)
    elif 'data' in out and 'text/plain' in out.data:
      parts.append(out.data['text/plain'])
  return ''.join(parts)


def test_notebook_structure():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  params = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(params) == 1 and params[0].cell_type == 'code'
  assert 'TINY = False' in _source(params[0])
  assert nb.metadata.kernelspec.name == 'python3'
  code = '\n'.join(_source(c) for c in nb.cells if c.cell_type == 'code')
  # Install only when the package is missing; JAX for the accelerator that is present.
  assert "importlib.util.find_spec('diffusion_jax') is None" in code
  assert 'jax[tpu]' in code and "'git', 'clone'" in code
  for name in ('chen_ddpm', 'ddim', 'edm_heun'):
    assert f"'{name}'" in code
  # Committed without outputs, so the file stays small and diffs stay readable.
  assert all(not c.get('outputs') for c in nb.cells if c.cell_type == 'code')


def test_notebook_runs_on_cpu_with_the_tiny_config(tmp_path):
  from nbclient import NotebookClient

  nb = nbformat.read(NOTEBOOK, as_version=4)
  index = next(i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', []))
  overrides = nbformat.v4.new_code_cell(
    f'TINY = True\nWORKDIR = {str(tmp_path / "workdir")!r}\nNUM_IMAGES_PER_CLASS = 2'
  )
  overrides.metadata['tags'] = ['injected-parameters']
  nb.cells.insert(index + 1, overrides)
  client = NotebookClient(
    nb,
    timeout=600,
    kernel_name='python3',
    resources={'metadata': {'path': os.path.join(REPO, 'experiments')}},
  )
  # The kernel inherits this environment: one CPU device, as on a CPU-only Colab, and
  # XLA's quickest compile (the tiny model's train step dominates the run time).
  env = {
    'XLA_FLAGS': '--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0',
    'JAX_PLATFORMS': 'cpu',
  }
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    client.execute()
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  text = '\n'.join(_text(c) for c in nb.cells if c.cell_type == 'code')
  # The install cell found this checkout instead of installing anything.
  assert f'code from {REPO}' in text
  assert 'backend: cpu' in text
  assert f'python: {sys.executable}' in text  # the kernel runs this interpreter
  assert re.search(r'trained to step 6 in', text), text
  nfe = dict(re.findall(r'(chen_ddpm|ddim|edm_heun)\s+3 steps, NFE\s+(\d+)', text))
  assert nfe == {'chen_ddpm': '3', 'ddim': '3', 'edm_heun': '5'}, text
  images = [o for c in nb.cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
  assert len(images) == 2  # the sample grid and the sampler comparison
  assert (tmp_path / 'workdir').is_dir()


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
