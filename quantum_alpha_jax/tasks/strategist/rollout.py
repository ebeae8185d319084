"""The Strategist's free-running rollout over the bars of a split, conditioned on target returns,
and the per-bar signals for the ensemble read off it (the maths in :mod:`.task`'s doc).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import trajectories
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.progress import Progress
from quantum_alpha_jax.tasks.strategist.task import StrategistTask

OPEN = FEATURES.index('open')


@dataclasses.dataclass
class Rollout:
  """Per-bar results of :func:`rollout` for bars ``rows [bars]`` and targets ``[targets]``:
  ``action``, ``size``, ``held`` (the position fed to the model: what the engine holds since the
  bar's open), ``position`` (after the decision), ``return_token``, ``reward`` ``[targets,
  bars]``; the ``episode`` id of each bar, its ``timestep`` within the episode, and ``flat_start``
  (True where the rollout starts flat: a symbol's first bar and the first bar after bars with no
  signal, which the backtest holds flat)."""

  rows: np.ndarray
  targets: np.ndarray
  action: np.ndarray
  size: np.ndarray
  held: np.ndarray
  position: np.ndarray
  return_token: np.ndarray
  reward: np.ndarray
  episode: np.ndarray
  timestep: np.ndarray
  flat_start: np.ndarray
  seconds: float


def _sequences(arrays: windows.WindowArrays, rows: np.ndarray, length: int
               ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """One sequence per symbol: ``(bars [N * K], valid [N * K], flat_start [N])``. Each run of
  consecutive usable bars starts a new episode and is padded to whole episodes; it starts flat
  unless it directly follows the previous run's last bar (a segment break with no bar between)."""
  sequences = {}
  for run in trajectories.rows_to_runs(arrays, rows):
    parts = sequences.setdefault(int(arrays.symbol[run[0]]), [])
    episodes = math.ceil(len(run) / length)
    bars = np.full(episodes * length, run[-1], np.int64)
    bars[:len(run)] = run
    restart = np.zeros(episodes, bool)
    restart[0] = not parts or run[0] != parts[-1][3] + 1
    parts.append((bars, np.arange(episodes * length) < len(run), restart, run[-1]))
  return [tuple(np.concatenate([part[i] for part in parts]) for i in range(3))
          for _, parts in sorted(sequences.items())]


def rollout(task: StrategistTask, params: Any, arrays: windows.WindowArrays, rows: np.ndarray,
            target_returns: Sequence[float], *, batch_size: int = 64, max_bars_per_symbol: int = 0,
            progress: bool = True) -> Rollout:
  """Rolls the policy out over the bars ``rows`` (sorted rows of ``arrays``) once per target
  return (unscaled): one sequential pass per symbol, symbols and targets in parallel batches of
  ``batch_size`` (module doc). ``max_bars_per_symbol > 0`` keeps only each symbol's first bars."""
  if task.normalizer is None:
    raise ConfigError(describe('strategist rollout', 'the task has no state normaliser',
                               'build the task with strategist.load(workdir) or run()'))
  rows = np.unique(np.asarray(rows, np.int64))
  if max_bars_per_symbol > 0:
    symbol = np.asarray(arrays.symbol)[rows]
    rows = np.concatenate([rows[symbol == s][:max_bars_per_symbol] for s in np.unique(symbol)])
  if rows.size == 0:
    raise ConfigError(describe('strategist rollout', 'no bars to roll out over',
                               'pass a split with usable bars'))
  length = task.model.context_length
  sequences = _sequences(arrays, rows, length)
  episodes = max(len(restart) for _, _, restart in sequences)
  targets = np.asarray(target_returns, np.float64).reshape(-1)
  items = [(s, t) for t in range(len(targets)) for s in range(len(sequences))]
  size = max(1, min(int(batch_size), len(items)))
  open_column, close_column = arrays.features[:, OPEN], np.asarray(arrays.close)
  observed_column = np.asarray(arrays.observed, bool)
  names = ('action', 'size', 'held', 'position', 'return_token', 'reward')
  collected = {name: np.zeros((len(targets), rows.size), np.float32) for name in names}
  bar = Progress(math.ceil(len(items) / size), 'strategist rollout', unit='batches') \
      if progress else None
  started = time.perf_counter()
  pending = []
  for begin in range(0, len(items), size):
    part = items[begin:begin + size]
    # Item padding repeats the first row and is marked invalid (no decision, no trade).
    filled = np.full((size, episodes * length), rows[0], np.int64)
    valid = np.zeros((size, episodes * length), bool)
    restart = np.zeros((size, episodes), bool)
    tokens = np.zeros(size, np.float32)
    for slot, (sequence, target) in enumerate(part):
      bars, bar_valid, flat_start = sequences[sequence]
      filled[slot, :len(bars)], valid[slot, :len(bars)] = bars, bar_valid
      restart[slot, :len(flat_start)] = flat_start
      tokens[slot] = task.conditioning_token(targets[target])
    features = trajectories.normalized_features(arrays, task.normalizer, filled)
    shape = (size, episodes, length)
    outputs = task.rollout_function(
        params, jnp.asarray(features.reshape(shape + (len(FEATURES),))),
        jnp.asarray(open_column[filled].reshape(shape), jnp.float32),
        jnp.asarray(close_column[filled].reshape(shape), jnp.float32),
        jnp.asarray(valid.reshape(shape)), jnp.asarray(observed_column[filled].reshape(shape)),
        jnp.asarray(restart), jnp.asarray(tokens))
    pending.append((part, outputs))
    if bar:
      bar.update(1)
  for part, outputs in pending:
    outputs = jax.device_get(outputs)
    for slot, (sequence, target) in enumerate(part):
      bars, bar_valid, _ = sequences[sequence]
      where = np.searchsorted(rows, bars[bar_valid])
      for name in names:
        collected[name][target, where] = outputs[name][slot].reshape(-1)[:len(bars)][bar_valid]
  seconds = time.perf_counter() - started
  if bar:
    bar.close()
  episode = np.zeros(rows.size, np.int64)
  timestep = np.zeros(rows.size, np.int64)
  flat_start = np.zeros(rows.size, bool)
  for number, (bars, bar_valid, restart) in enumerate(sequences):
    where = np.searchsorted(rows, bars[bar_valid])
    slots = np.flatnonzero(bar_valid)
    episode[where] = number * episodes + slots // length
    timestep[where] = slots % length
    flat_start[where[slots % length == 0]] = restart[slots[slots % length == 0] // length]
  return Rollout(rows=rows, targets=targets, action=collected['action'].astype(np.int32),
                 size=collected['size'], held=collected['held'], position=collected['position'],
                 return_token=collected['return_token'], reward=collected['reward'],
                 episode=episode, timestep=timestep, flat_start=flat_start, seconds=seconds)


def split_rows(split: Any) -> tuple[windows.WindowArrays, np.ndarray, str]:
  """(arrays, sorted usable bars, name) of a SplitData or source: a trajectory source's ``rows``,
  else the anchors of a one-bar window source (each bar usable on its own, whatever follows)."""
  source = getattr(split, 'source', split)
  rows = getattr(source, 'rows', None)
  if rows is None:
    spec = source.spec
    if (spec.encoder_length, spec.decoder_length) != (1, 0):
      raise ConfigError(describe(
          f'strategist signals on {getattr(source, "name", "")!r}',
          f'a window source of {spec.encoder_length} past and {spec.decoder_length} future bars '
          '(its anchors depend on bars the Strategist does not read)',
          'pass the Strategist\'s SplitData, or a source of windows.WindowSpec(1, 0) anchors'))
    rows = source.anchors
  return source.arrays, np.unique(np.asarray(rows, np.int64)), getattr(source, 'name', '')


def bar_signals(task: StrategistTask, params: Any, split: Any, *, batch_size: int = 64,
                progress: bool = True, target_return: float | None = None) -> pd.DataFrame:
  """One row per usable bar of ``split`` (a SplitData or a one-bar source): ``symbol``,
  ``timestamp`` (the bar, UTC) and the conditioned rollout's decision at that bar's close:
  ``action`` (0 hold, 1 buy, 2 sell; canonical: hold when the position is unchanged), ``size``
  (the size head, in [0, 1]), ``held_position`` (the position the model was fed: the one held since
  the bar's open) and ``target_position`` (after the decision, filled at the next bar's open).
  Rows are ordered by symbol, then time.

  Causal: a row depends on its own and earlier bars and on which earlier bars were usable; bars
  with no row are to be held flat (module docstring). ``target_return`` defaults to
  ``task.target_return``.
  """
  target = task.target_return if target_return is None else target_return
  if target is None:
    raise ConfigError(describe('strategist.bar_signals', 'no conditioning target return',
                               'load the task with strategist.load(workdir), or pass '
                               'target_return=...'))
  arrays, rows, _ = split_rows(split)
  result = rollout(task, params, arrays, rows, [target], batch_size=batch_size,
                   progress=progress)
  return pd.DataFrame({
      'symbol': np.asarray(arrays.symbols, dtype=object)[np.take(arrays.symbol, rows)],
      'timestamp': schema.to_timestamps(np.take(arrays.timestamp, rows)),
      'action': result.action[0].astype(np.int8),
      'size': result.size[0],
      'held_position': result.held[0],
      'target_position': result.position[0],
  })

