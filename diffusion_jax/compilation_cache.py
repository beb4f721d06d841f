"""JAX's persistent compilation cache, on by default for main.py, and a count of its use.

A second `python main.py --mode=sample` (or a resumed training run) then loads its
compiled programs from disk instead of compiling them again:

    python main.py --config=... --mode=sample                          # compiles, writes
    python main.py --config=... --mode=sample                          # reads: 0 compiled
    python main.py --config=... --compilation_cache_dir=/fast/disk/xla  # elsewhere
    python main.py --config=... --compilation_cache_dir=none            # off

The default directory is $JAX_COMPILATION_CACHE_DIR, else ~/.cache/diffusion_jax/xla.
Every program is cached however quickly it compiled (JAX's default skips those under
one second, which on a CPU is most of them).
"""

from __future__ import annotations

import dataclasses
import os

import jax

_REQUESTS = '/jax/compilation_cache/compile_requests_use_cache'
_HITS = '/jax/compilation_cache/cache_hits'


def default_dir() -> str:
  """$JAX_COMPILATION_CACHE_DIR, else ~/.cache/diffusion_jax/xla."""
  return os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(
    os.path.expanduser('~'), '.cache', 'diffusion_jax', 'xla'
  )


@dataclasses.dataclass
class CacheUse:
  """Programs compiled through the persistent cache in this process, and how many it had."""

  directory: str | None = None
  requests: int = 0
  hits: int = 0

  @property
  def compiled(self) -> int:
    return self.requests - self.hits

  def summary(self) -> str:
    if self.directory is None:
      return 'persistent compilation cache off'
    return (
      f'XLA programs: {self.compiled} compiled, {self.hits} loaded from the persistent '
      f'compilation cache ({self.directory})'
    )

  def _listen(self, event: str, **kwargs) -> None:
    del kwargs
    if event == _REQUESTS:
      self.requests += 1
    elif event == _HITS:
      self.hits += 1


_USE = CacheUse()
_LISTENING = False


def enable(directory: str | None = None) -> CacheUse:
  """Turns the persistent cache on at `directory` (default `default_dir()`; 'none' = off).

  Returns the process's CacheUse, which counts compilations and cache hits from now on.
  """
  global _LISTENING
  directory = default_dir() if directory is None else directory
  if directory.lower() in ('', 'none', 'off'):
    return _USE
  directory = os.path.abspath(os.path.expanduser(directory))
  os.makedirs(directory, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  _USE.directory = directory
  if not _LISTENING:
    jax.monitoring.register_event_listener(_USE._listen)
    _LISTENING = True
  return _USE


def use() -> CacheUse:
  """This process's counts (directory None while the cache is off)."""
  return _USE


__all__ = ['CacheUse', 'default_dir', 'enable', 'use']
