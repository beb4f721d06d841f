"""Trains, samples from or evaluates a diffusion model.

    python main.py --config=configs/digits.py --workdir=workdir/digits
    python main.py --config=configs/digits.py --config.training.batch_size=256
    python main.py --config=configs/digits.py --workdir=workdir/digits --mode=sample
    python main.py --config=configs/digits.py --workdir=workdir/digits --mode=eval
    python main.py --config=configs/digits.py --workdir=workdir/digits --mode=phema \
      --phema_std=0.08

A run resumes from the latest checkpoint in --workdir. Compiled programs are kept in
JAX's persistent compilation cache (--compilation_cache_dir), so a second run starts
without compiling. On a TPU pod or any
multi-process launch (JAX_COORDINATOR_ADDRESS, SLURM, Open MPI, or --multihost)
JAX's distributed runtime is initialized first; only process 0 writes logs,
summaries and images.

--mode=phema reconstructs EDM2's post-hoc EMA of relative std --phema_std from the
snapshots of a run trained with config.training.phema_snapshot_every > 0 and writes it to
<workdir>/phema/std-<std>/; --mode=sample / --mode=eval with the same --phema_std sample
from it (their outputs go to that directory too): add --phema_std=0.08 to the sample
command above.
"""

import logging as py_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Config file, optionally with an argument: configs/digits.py:tiny.'
)
flags.DEFINE_string('workdir', None, 'Run directory (default: ./workdir/<config name>).')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval', 'phema'], 'What to do.')
flags.DEFINE_float(
  'phema_std',
  None,
  'Post-hoc EMA relative std: --mode=phema reconstructs it, --mode=sample / eval use it.',
)
flags.DEFINE_integer(
  'phema_step', None, '--mode=phema: the snapshot step to reconstruct at (default newest).'
)
flags.DEFINE_bool(
  'multihost', None, 'Initialize jax.distributed (default: detect from the environment).'
)
flags.DEFINE_string(
  'compilation_cache_dir',
  None,
  'JAX persistent compilation cache: a second run loads its compiled programs from here '
  '(default $JAX_COMPILATION_CACHE_DIR or ~/.cache/diffusion_jax/xla; none = off).',
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


def _last_line(text: str) -> str:
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return lines[-1] if lines else ''


def _override_error(error: Exception, argv: list[str]) -> str | None:
  """One line for a `--config.a.b=v` override whose key the config does not have."""
  # ml_collections wraps a KeyError whose text is "'key'\nDid you mean "k" instead of ...".
  while error.args and isinstance(error.args[0], Exception):
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  key = text.splitlines()[0].strip('\'" ')
  hint = re.search(r'Did you mean "([^"]+)"', text)
  overrides = [a[2:].partition('=')[0] for a in argv if a.startswith('--config.')]
  override = next((o for o in overrides if key in o.split('.')), None)
  if override is None:
    if any(o.partition('.')[2] in text for o in overrides):
      return f'bad config override: {_last_line(text)}'
    return None  # not about an override (e.g. a bug in the config file): keep the traceback
  parts = override.split('.')
  section = '.'.join(parts[: parts.index(key)])
  fix = f'did you mean {section}.{hint.group(1)}?' if hint else 'see configs/default.py.'
  return f'--{override}: {section} has no key {key!r}; {fix}'


def _config_file_error(error: OSError, argv: list[str]) -> str:
  """One line for a --config file that does not exist or cannot be read."""
  # The flag may be unparsed here (the file failed to load), so read its value from argv.
  value = ''
  for i, arg in enumerate(argv):
    if arg.startswith(('--config=', '-config=')):
      value = arg.partition('=')[2]
    elif arg in ('--config', '-config') and i + 1 < len(argv):
      value = argv[i + 1]
  path = value.partition(':')[0]
  if not os.path.isfile(path):
    return f'--config={value}: no such file {path!r}; pass one of configs/, e.g. configs/digits.py.'
  return f'--config={value}: {_last_line(error)}'


def _flag_error(error: Exception) -> str:
  """One line for a bad flag value, or for a config file whose get_config() raised."""
  message = str(error)
  # config_flags puts the config file's traceback in the message: keep its last line and
  # the deepest frame's location.
  frames = re.findall(r'File "([^"]+)", line (\d+)', message)
  where = f' ({frames[-1][0]}, line {frames[-1][1]})' if frames else ''
  return _last_line(message) + where


def parse_flags(argv: list[str]) -> list[str]:
  """Parses the command line; a bad flag or config override exits with one `error:` line.

  absl's parser would print a traceback for an unknown `--config.*` key (ml_collections
  raises AttributeError) and a multi-line report for a config file that raised; the last
  line alone names the problem. The config file is loaded here too (config_flags loads
  a missing file lazily and fails only at first use, after TensorFlow and JAX start).
  """
  try:
    rest = FLAGS(argv)
    FLAGS.config.keys()  # forces the lazy load
    return rest
  except (AttributeError, KeyError) as e:
    message = _override_error(e, argv)
    if message is None:
      raise
  except OSError as e:
    message = _config_file_error(e, argv)
  except flags.Error as e:
    message = _flag_error(e)
  sys.exit(f'error: {message}')


def main(argv):
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments {argv[1:]}; flags take the form --name=value.')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from diffusion_jax.config import ConfigError
  from diffusion_jax.training import NonFiniteLossError

  try:
    _run()
  except (ConfigError, FileNotFoundError, NonFiniteLossError) as e:
    # A bad config, a missing data set / weights file / checkpoint, or a diverged run:
    # the message (DatasetMissingError, InceptionWeightsNotFoundError, ...) says what to do.
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

  from diffusion_jax import compilation_cache

  cache = compilation_cache.enable(FLAGS.compilation_cache_dir)
  try:
    _run_mode()
  finally:
    logging.info('%s.', cache.summary())


def _run_mode():
  import jax

  from diffusion_jax import build, config, generation, training

  # The one conversion of the ConfigDict: everything below reads the typed RunConfig.
  run = config.build_run_config(FLAGS.config)
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
    training.train_and_evaluate(run, workdir)
    return
  components = build.build(run)
  if FLAGS.mode == 'phema' or FLAGS.phema_std is not None:
    workdir = _phema(components, workdir)
    if workdir is None:
      return
  if FLAGS.mode == 'sample':
    png, npz = generation.sample_and_save(components, workdir)
    logging.info('Samples: %s, %s', png, npz)
  else:
    from diffusion_jax import evaluation

    sample_fn, _ = generation.load_sampler(components, workdir)
    evaluation.evaluate(run, workdir, sample_fn, components=components)


def _phema(components, workdir: str) -> str | None:
  """--mode=phema: reconstructs and writes --phema_std; otherwise its directory."""
  from diffusion_jax import build
  from diffusion_jax.training import phema

  std = FLAGS.phema_std
  if std is None:
    sys.exit('error: --mode=phema needs --phema_std, e.g. --phema_std=0.08.')
  if FLAGS.mode != 'phema':
    out = phema.export_dir(workdir, std)
    if not os.path.isdir(out):
      raise FileNotFoundError(
        f'No post-hoc EMA of std {std:.3f} in {out}; reconstruct it first with '
        f'--mode=phema --phema_std={std} --workdir={workdir}.'
      )
    return out
  try:
    out, step, error = phema.reconstruct(
      workdir, build.abstract_params(components), std, FLAGS.phema_step
    )
  except ValueError as e:
    sys.exit(f'error: {e}')
  logging.info(
    'Wrote the post-hoc EMA of std %.3f at step %d (profile error %.2g) to %s; sample it '
    'with --mode=sample --phema_std=%s.',
    std,
    step,
    error,
    out,
    std,
  )
  return None


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
