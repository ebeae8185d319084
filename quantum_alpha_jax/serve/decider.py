"""The decision service: one closed kline per symbol in, one decision record out.

:class:`Decider` loads an export (``serve/models.py``: ONNX by default, JAX as an option; refused
when its feature order or normaliser is not the stream's) and, for each closed 5-minute bar of a
symbol:

1. updates the 44 features incrementally (``serve/stream.py`` ``SymbolStream``; a bad bar is
   refused with one line and leaves every state untouched);
2. keeps the last ``encoder_length`` feature rows and decides each model's eligibility exactly as
   the batch path does (``data/windows.py`` ``eligible_anchors`` with no decoder, as
   ``signal_source`` uses it: the window's rows all ``valid``, no run of filled bars longer than
   the model's ``max_hole_bars``; the Strategist's one-bar windows likewise);
3. runs the Guardian and the Oracle on the window normalised relative to its last bar
   (``Normalizer.apply``), with the Oracle's ``decoder_known`` from the clock
   (``windows.calendar_features``);
4. runs the Strategist's cached one-step decode (the export's ``strategist_step`` in ONNX, or
   the JAX decode) and its account (``serve/strategist_state.py``, equal to ``tasks/strategist``
   ``_rollout_core``);
5. applies the ensemble rule (``serve/ensemble_state.py``, equal to ``backtest/ensemble.py``
   ``positions``, its uncertainty EMA carried as state) and returns one decision record.

Decisions start at ``start`` (default: the first bar): the bars before it only warm the features
up, as the bars before a split do for the batch backtest, and get a flat ``before_start`` record.
The target is filled at the next bar's open by the engine (``backtest/engine.py``).
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Iterable, Mapping, Sequence

from absl import logging
import ml_collections
import numpy as np
import pandas as pd

from quantum_alpha_jax.backtest import ensemble
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import trajectories
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.data.features import KNOWN_FUTURE_FEATURES
from quantum_alpha_jax.errors import DataError, describe
from quantum_alpha_jax.serve import ensemble_state
from quantum_alpha_jax.serve import models as models_lib
from quantum_alpha_jax.serve import strategist_state

_OPEN = FEATURES.index('open')
_KNOWN_COLUMNS = np.array([FEATURES.index(name) for name in KNOWN_FUTURE_FEATURES])
STRATEGIST_SPEC = windows.WindowSpec(1, 0)  # the bars the batch Strategist trades on


def _risk_levels(score: float, thresholds: Sequence[float]) -> int:
  # tasks/guardian.py risk_levels on one score (numpy), float32 like the exported output.
  score = np.float32(score)
  return int(score > np.float32(thresholds[0])) + int(score > np.float32(thresholds[1]))


def _lap(since: float) -> tuple[float, float]:
  now = time.perf_counter()
  return now, round((now - since) * 1e3, 4)


class _Eligibility:
  """Whether the window of the last ``length`` bars is usable (``windows.eligible_anchors``):
  every row valid and no filled row deeper than ``max_hole_bars`` into its run of filled bars.
  Carries the count of consecutive usable rows and the depth of the current filled run."""

  def __init__(self, length: int, max_hole_bars: int):
    self.length, self.max_hole_bars = length, max_hole_bars
    self.streak = 0
    self.depth = 0

  def update(self, bar: Any) -> bool:
    self.depth = 0 if bar.observed else self.depth + 1
    usable = bool(bar.valid) and (bar.observed or self.depth <= self.max_hole_bars)
    self.streak = self.streak + 1 if usable else 0
    return self.streak >= self.length

  def new_segment(self) -> None:
    self.streak = self.depth = 0

  @property
  def remaining(self) -> int:
    return max(0, self.length - self.streak)

  def state(self) -> tuple[int, int]:
    return self.streak, self.depth


@dataclasses.dataclass
class _SymbolState:
  stream: Any
  rows: np.ndarray  # [history, 44] float32: the last feature rows, oldest first
  count: int = 0
  eligibility: dict[str, _Eligibility] = dataclasses.field(default_factory=dict)
  strategist: Any = None
  ensemble: Any = None
  last_time_ns: int | None = None


class Decider:
  """Per-bar ensemble decisions from an export directory (module docstring).

  ``push(symbol, kline)`` takes one closed kline (a mapping with the columns the store reads:
  ``timestamp`` or ``open_time``, ``open``, ``high``, ``low``, ``close``, ``volume``) and returns
  the decision records of the bars it closes (hole-filling bars first). ``push_bars`` takes bars
  already featurised (``StreamBar`` s).
  """

  def __init__(self, export: str | pathlib.Path | models_lib.LoadedModels, *,
               backend: str = 'onnx', ensemble_config: ml_collections.ConfigDict | None = None,
               start: Any = None, fill_limit_bars: int = 72):
    self.models = (export if isinstance(export, models_lib.LoadedModels)
                   else models_lib.load_models(export, backend=backend))
    self.config = ensemble_config or ensemble.ensemble_config()
    self.config = ml_collections.ConfigDict(self.config.to_dict())
    for name in ensemble.COMPONENTS:
      if self.config[f'use_{name}'] and not self._has(name):
        logging.warning('The export has no %s: the ensemble runs without it', name)
        self.config[f'use_{name}'] = False
    ensemble.check_config(self.config)
    self.start_ns = (None if start is None
                     else int(schema.to_utc(start, 'serve start').value))
    self.fill_limit_bars = int(fill_limit_bars)
    self.symbols: dict[str, _SymbolState] = {}
    oracle = self.models.window_models.get('oracle')
    if oracle is not None:
      config = oracle.metadata.get('config', {})
      self._oracle_symbols = sorted(config.get('data', {}).get('symbols', ()))
      self._decoder_length = int(oracle.input_shapes['decoder_known'][1])
    guardian = self.models.window_models.get('guardian')
    if guardian is not None:
      self._risk_thresholds = tuple(float(x) for x in guardian.metadata['risk_thresholds'])
    self._history = max([model.spec.encoder_length
                         for model in self.models.window_models.values()] + [1])

  def _has(self, name: str) -> bool:
    if name == 'strategist':
      return self.models.strategist is not None
    return name in self.models.window_models

  # ------------------------------------------------------------------------------------------
  # State per symbol.

  def _state(self, symbol: str) -> _SymbolState:
    if symbol in self.symbols:
      return self.symbols[symbol]
    from quantum_alpha_jax.serve import stream as stream_lib  # pylint: disable=g-import-not-at-top
    if 'oracle' in self.models.window_models and symbol not in self._oracle_symbols:
      raise DataError(describe(
          f'serve {symbol}', f'the Oracle was trained on {self._oracle_symbols} only',
          'serve those symbols, or export an Oracle trained on this one'))
    state = _SymbolState(stream=stream_lib.SymbolStream(symbol,
                                                        fill_limit_bars=self.fill_limit_bars),
                         rows=np.zeros((self._history, len(FEATURES)), np.float32))
    for name, model in self.models.window_models.items():
      state.eligibility[name] = _Eligibility(model.spec.encoder_length, model.spec.max_hole_bars)
    if self.models.strategist is not None:
      state.eligibility['strategist'] = _Eligibility(1, STRATEGIST_SPEC.max_hole_bars)
      task, params = self.models.strategist
      state.strategist = strategist_state.StrategistState(task, params,
                                                          self.models.strategist_decode)
    state.ensemble = ensemble_state.EnsembleState(self.config)
    self.symbols[symbol] = state
    return state

  def warmup_remaining(self, symbol: str) -> int:
    """In how many bars ``symbol`` gets its first decision from every model (0: this one had it):
    the features' warm-up of the segment, then the longest model window of valid rows."""
    state = self._state(symbol)
    stream = int(getattr(state.stream, 'warmup_remaining', 0))
    windows_left = max(e.remaining for e in state.eligibility.values())
    return max(stream + max(e.length for e in state.eligibility.values()), windows_left) \
        if stream else windows_left

  # ------------------------------------------------------------------------------------------
  # Bars in, decisions out.

  def push(self, symbol: str, kline: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One closed kline of ``symbol`` → the decision records of the bars it closes (hole-filling
    bars first). A bad bar raises ``stream.BarRejected`` (one line) and changes nothing."""
    started = time.perf_counter()
    state = self._state(symbol)
    previous = state.last_time_ns
    bars = state.stream.push(kline)  # raises before any state changes
    records = self.push_bars(symbol, bars, started=started)
    for bar, record in zip(bars, records):
      if getattr(bar, 'new_segment', False) and previous is not None:
        gap = (bar.open_time_ns - previous) // schema.BAR_NANOSECONDS - 1
        record['event'] = (
            f'{symbol}: {gap} bars missing before {record["time"]}, more than the fill limit '
            f'({self.fill_limit_bars}): a new segment; the first decision comes '
            f'{record["warmup_remaining"]} bars later (warm-up)')
        logging.warning('%s', record['event'])
    return records

  def push_bars(self, symbol: str, bars: Iterable[Any], *, started: float | None = None
                ) -> list[dict[str, Any]]:
    """Decisions for featurised bars of ``symbol`` in time order (``stream.StreamBar`` s, or any
    objects with ``open_time_ns``, ``close``, ``observed``, ``valid``, ``features [44]`` and
    optionally ``new_segment``). ``latency_ms`` runs from ``started`` (default: the bar's turn)."""
    state = self._state(symbol)
    records = []
    for bar in bars:
      begin = time.perf_counter() if started is None or records else started
      if state.last_time_ns is not None and bar.open_time_ns <= state.last_time_ns:
        raise DataError(describe(
            f'serve {symbol} bar {pd.Timestamp(bar.open_time_ns, tz="UTC")}',
            f'not after the last bar {pd.Timestamp(state.last_time_ns, tz="UTC")}',
            'send each symbol\'s bars once, in time order'))
      if getattr(bar, 'new_segment', False) or (
          state.last_time_ns is not None
          and bar.open_time_ns - state.last_time_ns > schema.BAR_NANOSECONDS):
        for eligibility in state.eligibility.values():  # A new segment (a gap past the limit).
          eligibility.new_segment()
      records.append(self._decide(symbol, state, bar))
      records[-1]['latency_ms'] = round((time.perf_counter() - begin) * 1e3, 4)
    return records

  def _decide(self, symbol: str, state: _SymbolState, bar: Any) -> dict[str, Any]:
    features = np.asarray(bar.features, np.float32)
    state.rows[:-1] = state.rows[1:]
    state.rows[-1] = features
    state.count += 1
    state.last_time_ns = int(bar.open_time_ns)
    eligible = {name: e.update(bar) for name, e in state.eligibility.items()}
    record: dict[str, Any] = {
        'symbol': symbol, 'time': pd.Timestamp(bar.open_time_ns, tz='UTC').isoformat(),
        'open_time_ns': int(bar.open_time_ns), 'close': float(bar.close),
        'observed': bool(bar.observed), 'valid': bool(bar.valid)}
    if self.start_ns is not None and bar.open_time_ns < self.start_ns:
      record.update(status='before_start', target=0.0,
                    warmup_remaining=self.warmup_remaining(symbol))
      return record
    signals: dict[str, Any] = {}
    model_ms: dict[str, float] = {}
    clock = time.perf_counter()
    if eligible.get('oracle'):
      signals.update(self._oracle(symbol, state, bar))
      clock, model_ms['oracle'] = _lap(clock)
    if eligible.get('guardian'):
      signals.update(self._guardian(state))
      clock, model_ms['guardian'] = _lap(clock)
    if state.strategist is not None:
      if eligible['strategist']:
        normalizer = state.strategist.task.normalizer
        normalized = normalizer.apply(features[None, None], features[None])[0, 0]
        signals.update(state.strategist.decide(
            normalized, float(features[_OPEN]), float(np.float32(bar.close)), bool(bar.observed)))
        clock, model_ms['strategist'] = _lap(clock)
      else:
        state.strategist.skip()
    needed = ensemble.required_signals(self.config)
    available = all(name in signals for name in needed)
    target = state.ensemble.step(signals, available)
    remaining = self.warmup_remaining(symbol)
    record.update(signals)
    record.update(
        status='ready' if available else ('warming_up' if remaining else 'no_signal'),
        target=target, available=available, warmup_remaining=remaining,
        models={name: bool(eligible.get(name)) for name in ensemble.components(self.config)},
        model_ms=model_ms)
    if 'action' in signals:
      record['action_name'] = trajectories.ACTIONS[signals['action']]
    return record

  def _window(self, state: _SymbolState, length: int) -> np.ndarray:
    return state.rows[-length:][None]  # [1, length, 44]

  def _oracle(self, symbol: str, state: _SymbolState, bar: Any) -> dict[str, Any]:
    model = self.models.window_models['oracle']
    window = self._window(state, model.spec.encoder_length)
    anchor = window[:, -1]
    encoder = model.normalizer.apply(window, anchor)
    ahead = np.arange(1, self._decoder_length + 1, dtype=np.int64) * schema.BAR_NANOSECONDS
    known = model.normalizer.apply(
        windows.calendar_features(np.int64(bar.open_time_ns) + ahead)[None], anchor,
        _KNOWN_COLUMNS)
    outputs = model.run(encoder, known, np.asarray([self._oracle_symbols.index(symbol)],
                                                   np.int32))
    quantiles = np.asarray(outputs['quantiles'])[0, -1]
    levels = list(model.metadata.get('quantiles', ()))
    median = levels.index(0.5) if 0.5 in levels else len(quantiles) // 2
    return {'p_up': float(np.float32(outputs['p_up'][0, -1])),
            'uncertainty': float(np.float32(outputs['uncertainty'][0, -1])),
            'q50': float(np.float32(quantiles[median]))}

  def _guardian(self, state: _SymbolState) -> dict[str, Any]:
    model = self.models.window_models['guardian']
    window = self._window(state, model.spec.encoder_length)
    encoder = model.normalizer.apply(window, window[:, -1])
    outputs = model.run(encoder)
    probabilities = np.asarray(outputs['regime_probabilities'])[0]
    score = float(np.asarray(outputs['risk_score'])[0])
    regime = int(np.argmax(probabilities))
    return {'regime': regime, 'regime_name': schema.REGIMES[regime],
            'p_bull': float(probabilities[ensemble.BULL]),
            'p_bear': float(probabilities[ensemble.BEAR]),
            'p_sideways': float(probabilities[ensemble.SIDEWAYS]),
            'risk_level': _risk_levels(score, self._risk_thresholds), 'risk_score': score}
