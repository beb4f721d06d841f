"""Progress a person can read: one compact console line per log interval, with rates.

    step 1200/3000 | loss 0.1234 | 512 img/s | 8.00 steps/s | 812 TFLOP/s | MFU 41% | ETA 3m45s

MFU = (model FLOPs per step x steps/s) / (number of devices x the device's dense bf16
peak), the FLOPs counted by XLA's cost analysis of the compiled train step; shown when
the device's peak is in `PEAK_BF16_FLOPS` (not on a CPU). `Throughput` gives sampling and
evaluation the same line: images done / total, images/s, ETA.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

# Dense bf16 peak FLOP/s per chip (vendor specifications), matched by substring of
# `jax.Device.device_kind`, most specific first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
  ('TPU v6', 918e12),  # Trillium (v6e)
  ('TPU v5p', 459e12),
  ('TPU v5 lite', 197e12),  # v5e
  ('TPU v5e', 197e12),
  ('TPU v5', 459e12),
  ('TPU v4', 275e12),
  ('TPU v3', 123e12),
  ('H200', 989e12),
  ('H100', 989e12),
  ('A100', 312e12),
  ('L4', 121e12),
)


def peak_flops(device_kind: str) -> float | None:
  """The dense bf16 peak FLOP/s of one device of this kind, or None when unknown."""
  for needle, flops in PEAK_BF16_FLOPS:
    if needle.lower() in device_kind.lower():
      return flops
  return None


def format_duration(seconds: float) -> str:
  """'45s', '3m45s', '2h05m', '3d04h'."""
  s = max(int(round(seconds)), 0)
  if s < 60:
    return f'{s}s'
  if s < 3600:
    return f'{s // 60}m{s % 60:02d}s'
  if s < 86400:
    return f'{s // 3600}h{s % 3600 // 60:02d}m'
  return f'{s // 86400}d{s % 86400 // 3600:02d}h'


def step_flops(lowered: Any) -> float | None:
  """FLOPs of one call of a lowered (or compiled) jitted function, from XLA's cost analysis."""
  try:
    cost = lowered.cost_analysis()
  except Exception:  # noqa: BLE001  (a backend without cost analysis)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get('flops')
  return float(flops) if flops and flops > 0 else None


@dataclasses.dataclass
class TrainProgress:
  """Rates and ETA between log lines of the train loop.

  Attributes:
    total_steps: config.training.num_steps.
    images_per_step: the global batch size.
    flops_per_step: model FLOPs of one global train step (None = unknown: no MFU).
    peak: total peak FLOP/s of the devices (None = unknown: no MFU).
    clock: seconds, for tests.
  """

  total_steps: int
  images_per_step: int
  flops_per_step: float | None = None
  peak: float | None = None
  clock: Callable[[], float] = time.perf_counter
  _last: tuple[int, float] | None = None

  def start(self, step: int) -> None:
    """Marks `step` (e.g. after the first, compiling, step) as the rates' origin."""
    self._last = (step, self.clock())

  def report(self, step: int, loss: float) -> tuple[str, dict[str, float]]:
    """(console line, scalars for TensorBoard) for the interval since the last report."""
    now = self.clock()
    scalars: dict[str, float] = {}
    parts = [f'step {step}/{self.total_steps}', f'loss {loss:.4f}']
    if self._last is not None and now > self._last[1] and step > self._last[0]:
      steps_per_sec = (step - self._last[0]) / (now - self._last[1])
      scalars['steps_per_sec'] = steps_per_sec
      scalars['images_per_sec'] = steps_per_sec * self.images_per_step
      parts += [f'{scalars["images_per_sec"]:.1f} img/s', f'{steps_per_sec:.2f} steps/s']
      if self.flops_per_step:
        scalars['tflops_per_sec'] = self.flops_per_step * steps_per_sec / 1e12
        parts.append(f'{scalars["tflops_per_sec"]:.3g} TFLOP/s')
      if self.flops_per_step and self.peak:
        scalars['mfu'] = self.flops_per_step * steps_per_sec / self.peak
        parts.append(f'MFU {100 * scalars["mfu"]:.1f}%')
      scalars['eta_seconds'] = (self.total_steps - step) / steps_per_sec
      parts.append(f'ETA {format_duration(scalars["eta_seconds"])}')
    self._last = (step, now)
    return ' | '.join(parts), scalars


@dataclasses.dataclass
class Throughput:
  """'what 200/1000 images | 12.3 img/s | ETA 1m05s' for sampling and evaluation."""

  what: str
  total: int
  clock: Callable[[], float] = time.perf_counter
  _start: float | None = None

  def line(self, done: int) -> str:
    now = self.clock()
    if self._start is None:
      self._start = now
    parts = [f'{self.what} {done}/{self.total} images']
    elapsed = now - self._start
    if done > 0 and elapsed > 0:
      rate = done / elapsed
      parts += [f'{rate:.1f} img/s', f'ETA {format_duration((self.total - done) / rate)}']
    return ' | '.join(parts)

  def begin(self) -> None:
    """Starts the clock (before the first batch)."""
    self._start = self.clock()


__all__ = [
  'PEAK_BF16_FLOPS',
  'Throughput',
  'TrainProgress',
  'format_duration',
  'peak_flops',
  'step_flops',
]
