"""The reference repositories, when at hand: a checkout or a bare git mirror named by an
environment variable (GUIDED_DIFFUSION_REPO, IMPROVED_DIFFUSION_REPO, EDM_REPO, NCSNV2_REPO)."""

import os
import subprocess

import pytest


def reference_tree(env: str, paths: tuple[str, ...], tmp_path) -> str:
  """A directory holding `paths` of the repository that `env` names.

  A checkout is used in place; from a bare mirror, HEAD's `paths` are extracted into
  `tmp_path`. The test skips, naming `env`, when it is unset or not a directory.
  """
  source = os.environ.get(env, '')
  if not os.path.isdir(source):
    pytest.skip(f'the reference repository is not here (set {env})')
  if all(os.path.exists(os.path.join(source, p)) for p in paths):
    return source
  archive = subprocess.run(
    ['git', f'--git-dir={source}', 'archive', 'HEAD', *paths], capture_output=True, check=True
  )
  subprocess.run(['tar', '-x', '-C', str(tmp_path)], input=archive.stdout, check=True)
  return str(tmp_path)
