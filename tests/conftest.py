"""Test setup: 8 fake CPU devices (multi-device code on one CPU) and float32 defaults."""

import os

# Must be set before jax is imported anywhere in the test process.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402

jax.config.update('jax_enable_x64', False)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_config_override_flags():
  """Drops the `--config.*` override flags an earlier in-process main.py parse defined.

  ml_collections' config flag defines one absl flag per override it parses; a later parse
  of the same override (another test, another config file) would define it again.
  """
  from absl import flags

  for name in [n for n in flags.FLAGS if n.startswith('config.')]:
    delattr(flags.FLAGS, name)
  yield
