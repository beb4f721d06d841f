"""Trains, samples from or evaluates a diffusion model.

    python main.py --config=configs/digits.py --workdir=workdir/digits
    python main.py --config=configs/digits.py --config.training.batch_size=256
    python main.py --config=configs/digits.py --workdir=workdir/digits --mode=sample
    python main.py --config=configs/digits.py --workdir=workdir/digits --mode=eval

A run resumes from the latest checkpoint in --workdir. On a TPU pod or any
multi-process launch (JAX_COORDINATOR_ADDRESS, SLURM, Open MPI, or --multihost)
JAX's distributed runtime is initialized first; only process 0 writes logs,
summaries and images.
"""

import logging as py_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Config file, optionally with an argument: configs/digits.py:tiny.'
)
flags.DEFINE_string('workdir', None, 'Run directory (default: ./workdir/<config name>).')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval'], 'What to do.')
flags.DEFINE_bool(
  'multihost', None, 'Initialize jax.distributed (default: detect from the environment).'
)
flags.mark_flags_as_required(['config'])

# Environment variables that mean "one of several processes of a job".
_MULTIPROCESS_ENV = (
  'JAX_COORDINATOR_ADDRESS',
  'COORDINATOR_ADDRESS',
  'MEGASCALE_COORDINATOR_ADDRESS',
)
_PROCESS_COUNT_ENV = ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'JAX_NUM_PROCESSES')


def is_multiprocess_environment(environ=os.environ) -> bool:
  """True on a TPU pod slice or under a multi-process launcher."""
  if any(environ.get(k) for k in _MULTIPROCESS_ENV):
    return True
  for key in _PROCESS_COUNT_ENV:
    if environ.get(key, '').isdigit() and int(environ[key]) > 1:
      return True
  hosts = environ.get('TPU_WORKER_HOSTNAMES', '')
  return len([h for h in hosts.split(',') if h]) > 1


def default_workdir(config_path: str) -> str:
  """./workdir/<config file name>[_<config argument>]."""
  path, _, arg = config_path.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join('workdir', f'{name}_{arg}' if arg else name)


class _QuietLibraries(py_logging.Filter):
  """Drops the INFO chatter of orbax and the JAX backend probe; keeps warnings."""

  _NOISY = (os.sep + 'orbax' + os.sep, 'xla_bridge.py', 'signaling_client.py')

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING:
      return True
    return not any(part in record.pathname for part in self._NOISY)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from diffusion_jax.config_validation import ConfigError

  try:
    _run()
  except (ConfigError, FileNotFoundError) as e:
    # A bad config, or a missing data set / weights file / checkpoint: the message
    # (DatasetMissingError, InceptionWeightsNotFoundError, ...) says what to do.
    sys.exit(f'error: {e}')


def _run():
  # TensorFlow (tfds, clu) must not take the accelerators JAX uses.
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')

  import jax

  multihost = FLAGS.multihost
  if multihost is None:
    multihost = is_multiprocess_environment()
  if multihost:
    jax.distributed.initialize()

  from diffusion_jax import train

  config = FLAGS.config
  workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS['config']))
  logging.info(
    'JAX process %d / %d, %d local / %d global devices (%s); workdir %s.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.default_backend(),
    workdir,
  )
  if FLAGS.mode == 'train':
    train.train_and_evaluate(config, workdir)
  elif FLAGS.mode == 'sample':
    from diffusion_jax import sampling

    png, npz = sampling.sample_and_save(config, workdir)
    logging.info('Samples: %s, %s', png, npz)
  else:
    from diffusion_jax import evaluation, sampling

    sample_fn, _ = sampling.load_sampler(config, workdir)
    evaluation.evaluate(config, workdir, sample_fn)


if __name__ == '__main__':
  app.run(main)
