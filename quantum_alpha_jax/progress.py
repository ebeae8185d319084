"""A plain progress display: done/total, rate, ETA and the latest figures, on one line.

On a terminal it redraws one line in place; elsewhere (CI, log files) it writes a line at most every
``interval_seconds``, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
  """``progress.update(n, loss=0.3)`` after each unit of work; ``progress.close()`` at the end."""

  def __init__(self, total: int | None, description: str, unit: str = 'it',
               interval_seconds: float = 5.0, stream: TextIO | None = None):
    self.total, self.description, self.unit = total, description, unit
    self.stream = stream or sys.stderr
    self.interactive = self.stream.isatty()
    self.interval = 0.2 if self.interactive else interval_seconds
    self.done = 0
    self.start = time.perf_counter()
    self._last_draw = 0.0
    self.figures: dict[str, float | str] = {}

  def update(self, count: int = 1, **figures: float | str) -> None:
    self.done += count
    self.figures.update(figures)
    now = time.perf_counter()
    if now - self._last_draw >= self.interval or (self.total and self.done >= self.total):
      self._draw(now)

  def line(self, now: float | None = None) -> str:
    elapsed = max((now or time.perf_counter()) - self.start, 1e-9)
    rate = self.done / elapsed
    parts = [f'{self.description}: {self.done}' + (f'/{self.total}' if self.total else '')]
    parts.append(f'{rate:.2f} {self.unit}/s')
    if self.total and rate > 0:
      parts.append(f'ETA {_clock((self.total - self.done) / rate)}')
    parts.append(f'elapsed {_clock(elapsed)}')
    parts += [f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in self.figures.items()]
    return ' | '.join(parts)

  def _draw(self, now: float) -> None:
    self._last_draw = now
    self._drawn_at = self.done
    if self.interactive:
      self.stream.write('\r' + self.line(now).ljust(100))
    else:
      self.stream.write(self.line(now) + '\n')
    self.stream.flush()

  def close(self) -> None:
    if getattr(self, '_drawn_at', None) != self.done:
      self._draw(time.perf_counter())
    if self.interactive:
      self.stream.write('\n')
    self.stream.flush()


def _clock(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'
