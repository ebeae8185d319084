"""The environment's markets from the feature store: one
:class:`~quantum_alpha_jax.rl.env.EnvParams` per time split of ``config.data``, and the per-symbol
tapes that evaluation backtests over.

Rows. A split's environment holds the rows of every symbol whose bar opens inside the split
(``[start, end)``), in store order (symbol by symbol, then time). A row is ``tradable`` when the
window of the last ``lookback`` bars and the next bar (the fill) is eligible in the sense of
:func:`quantum_alpha_jax.data.windows.split_anchors` with ``WindowSpec(lookback, 1)``: one symbol
and segment (consecutive bars), valid features, no filled hole longer than ``max_hole_bars``,
inside the split and after the purge gap of the previous split. Episode starts are the rows that begin a run of
``episode_length`` tradable rows, so episodes never cross a segment, symbol or split boundary.

Features. Each bar's 44 features go through the Oracle's :class:`~quantum_alpha_jax.data.windows.
Normalizer` with a one-bar window: made stationary relative to the bar itself (prices as
``log(x / close)``, volumes as ``log(v / volume_ma)``, ...), then z-scored with statistics fitted
on the training split only. The bar's own ``close`` and ``OBV`` are therefore the constant 0 (their
information sits in the returns and the other ratios), as is ``volume_ma``: these are set to 0
rather than z-scored round-off. Values are clipped to ``±feature_clip``; the warm-up rows that are
never tradable hold zeros.

Prices. The environment runs in float32 on the store's close and open; the tapes keep the float64
open (from the frames) and close for :func:`quantum_alpha_jax.backtest.engine.run_backtest`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Mapping

import ml_collections
import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.rl import env as env_lib

_CHUNK_ROWS = 65_536
_CONSTANT_STD = 1e-5  # a fitted feature std at or below this marks a constant feature


@dataclasses.dataclass(frozen=True)
class Tape:
  """One symbol's bars of a split, in time order: the path a policy is evaluated on."""

  symbol: str
  first: int  # the tape's first row in the split's EnvParams
  timestamps: np.ndarray  # [length] int64 ns, bar open times (UTC)
  open: np.ndarray  # [length] float64
  close: np.ndarray  # [length] float64
  observed: np.ndarray | None = None  # [length] bool, False at hole-filling bars (None: all)

  @property
  def length(self) -> int:
    return len(self.close)


@dataclasses.dataclass(frozen=True)
class SplitMarket:
  """A split's environment parameters and its tapes (one per symbol)."""

  split: windows.Split
  params: env_lib.EnvParams
  tapes: tuple[Tape, ...]

  @property
  def name(self) -> str:
    return self.split.name

  def summary(self) -> dict[str, int | str]:
    return {'rows': int(self.params.close.shape[0]),
            'tradable_rows': int(np.asarray(self.params.tradable).sum()),
            'episode_starts': int(self.params.starts.shape[0]),
            'symbols': ','.join(tape.symbol for tape in self.tapes)}


def env_options(env_config: ml_collections.ConfigDict) -> dict:
  """The keyword arguments of :func:`~quantum_alpha_jax.rl.env.make_params` in ``config.env``."""
  return {name: env_config[name] for name in (
      'episode_length', 'lookback', 'action_mode', 'allow_short', 'fee_rate', 'slippage_bps',
      'rebalance_threshold')}


def normalize_rows(normalizer: windows.Normalizer, features: np.ndarray,
                   clip: float) -> np.ndarray:
  """Each row of ``features [rows, 44]`` normalised relative to itself, clipped; float32."""
  output = np.empty(features.shape, np.float32)
  # Relative to the bar itself, close, volume_ma and OBV are constant: their fitted std sits at
  # the normaliser's floor and would only blow float round-off up. They are set to 0.
  constant = normalizer.std <= _CONSTANT_STD
  for begin in range(0, len(features), _CHUNK_ROWS):
    chunk = np.asarray(features[begin:begin + _CHUNK_ROWS], np.float32)
    with np.errstate(invalid='ignore', divide='ignore'):
      values = normalizer.apply(chunk[:, None, :], chunk)[:, 0]
    output[begin:begin + len(chunk)] = np.clip(np.nan_to_num(values, nan=0.0, posinf=clip,
                                                             neginf=-clip), -clip, clip)
    output[begin:begin + len(chunk), constant] = 0.0
  return output


def _open_prices(arrays: windows.WindowArrays, frames: Mapping[str, pd.DataFrame]) -> np.ndarray:
  """Float64 open of every flat row, from the frames the arrays were built from."""
  output = np.empty(arrays.num_rows, np.float64)
  for symbol in arrays.symbols:
    rows = arrays.symbol_rows(symbol)
    values = frames[symbol]['open'].to_numpy(np.float64)
    if len(values) != rows.stop - rows.start:
      raise errors.DataError(errors.describe(
          f'feature frame {symbol}', f'{len(values)} rows, the window cache has '
          f'{rows.stop - rows.start}', 'rebuild the window cache from the same frames'))
    output[rows] = values
  return output


def build_markets(data_config: ml_collections.ConfigDict, env_config: ml_collections.ConfigDict,
                  seed: int = 0, *, frames: Mapping[str, pd.DataFrame] | None = None,
                  normalizer: windows.Normalizer | None = None
                  ) -> tuple[dict[str, SplitMarket], windows.Normalizer]:
  """One :class:`SplitMarket` per split of ``data_config.splits`` (normaliser fitted on train)."""
  from quantum_alpha_jax.train import data as data_lib  # pylint: disable=g-import-not-at-top

  frames = data_lib.load_frames(data_config) if frames is None else frames
  arrays = windows.WindowArrays.from_frames(
      frames, pathlib.Path(data_config.store_dir) / 'windows_cache')
  splits = windows.splits_from_config(data_config.splits)
  options = env_options(env_config)
  env_lib.check_action_mode(options['action_mode'], options['allow_short'], 'config.env')
  lookback = options['lookback']
  if isinstance(lookback, bool) or not isinstance(lookback, int) or lookback < 1:
    raise errors.ConfigError(errors.describe('config.env.lookback',
                                             f'{lookback!r} must be an integer >= 1'))
  hole = int(env_config.max_hole_bars)
  decision_rows = windows.split_anchors(arrays, windows.WindowSpec(lookback, 1, hole), splits)
  if normalizer is None:
    if 'train' not in decision_rows:
      raise errors.ConfigError(errors.describe(
          'config.data.splits', f'no "train" split among {list(decision_rows)} to fit the '
          'feature normaliser on', 'add a train split'))
    spec = windows.WindowSpec(1, 0, hole)
    train_rows = windows.split_anchors(arrays, spec, splits)['train']
    normalizer = windows.Normalizer.fit(
        arrays, spec, train_rows, train_split=next(s for s in splits if s.name == 'train'),
        sample_size=int(env_config.normalizer_sample_size), seed=seed)
  open_prices = _open_prices(arrays, frames)
  timestamps = np.asarray(arrays.timestamp)
  markets = {}
  for split in splits:
    rows = np.flatnonzero((timestamps >= split.start_ns) & (timestamps < split.end_ns))
    tradable = np.zeros(len(rows), bool)
    tradable[np.searchsorted(rows, decision_rows[split.name])] = True
    features = normalize_rows(normalizer, arrays.features[rows], float(env_config.feature_clip))
    close = np.asarray(arrays.close[rows], np.float64)
    observed = np.asarray(arrays.observed[rows], bool)
    params = env_lib.make_params(features, open_prices[rows], close, tradable=tradable,
                                 observed=observed, where=f'env ({split.describe()})', **options)
    symbols = np.asarray(arrays.symbol[rows])
    tapes = []
    for symbol_id in np.unique(symbols):
      positions = np.flatnonzero(symbols == symbol_id)  # one block: rows are in store order
      tapes.append(Tape(symbol=arrays.symbols[symbol_id], first=int(positions[0]),
                        timestamps=timestamps[rows[positions]],
                        open=open_prices[rows[positions]], close=close[positions],
                        observed=observed[positions]))
    markets[split.name] = SplitMarket(split, params, tuple(tapes))
  return markets, normalizer


def array_market(features, open_price, close, *, name: str = 'market', symbol: str = 'ASSET',
                 start: str = '2024-01-01', tradable=None, **options) -> SplitMarket:
  """A one-tape :class:`SplitMarket` of plain arrays ``[rows]`` on a 5-minute grid from ``start``
  (tests, benchmarks, notebooks); ``options`` go to :func:`quantum_alpha_jax.rl.env.make_params`."""
  params = env_lib.make_params(features, open_price, close, tradable=tradable,
                               where=f'env ({name})', **options)
  times = pd.date_range(start, periods=len(close), freq='5min', tz='UTC')
  split = windows.Split(name, times[0], times[-1] + pd.Timedelta(minutes=5))
  tape = Tape(symbol=symbol, first=0, timestamps=times.as_unit('ns').asi8,
              open=np.asarray(open_price, np.float64), close=np.asarray(close, np.float64))
  return SplitMarket(split, params, (tape,))


def planted_signal_market(rows: int, seed: int = 0, *, num_features: int = 4,
                          drift: float = 0.002, volatility: float = 0.002,
                          switch_probability: float = 0.05
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A market with a learnable edge, for checking that an agent learns (tests, benchmarks).

  A hidden sign ``s_t`` in {-1, +1} flips with ``switch_probability`` per bar (mean run
  ``1 / switch_probability`` bars). Bar ``t + 1`` opens at ``close[t]`` and closes at
  ``close[t] exp(drift s_t + volatility z)``, ``z ~ N(0, 1)``. Feature 0 is ``s_t`` (seen at bar t's
  close, so it predicts the next bar only: no look-ahead); the others are N(0, 1) noise. The
  optimal long-only policy holds while ``s_t = 1`` and is flat otherwise. Returns
  ``(features [rows, num_features] float32, open [rows], close [rows])`` float64 prices.
  """
  rng = np.random.default_rng(seed)
  flips = rng.random(rows) < switch_probability
  sign = np.where(np.cumsum(flips) % 2 == 0, 1.0, -1.0)
  returns = np.zeros(rows)
  returns[1:] = drift * sign[:-1] + volatility * rng.normal(size=rows - 1)
  close = 100.0 * np.exp(np.cumsum(returns))
  open_price = np.r_[100.0, close[:-1]]
  features = rng.normal(size=(rows, num_features)).astype(np.float32)
  features[:, 0] = sign
  return features, open_price, close


def env_config(**overrides) -> ml_collections.ConfigDict:
  """The ``env`` block of the RL configs: the environment's rules and how its market is built."""
  config = ml_collections.ConfigDict({
      'episode_length': 512,  # steps (5-minute bars) per training episode
      'lookback': 1,  # bars of features in an observation
      'action_mode': 'discrete',  # or 'continuous'
      'allow_short': False,
      'fee_rate': 0.001,  # per side on traded notional (Binance spot taker)
      'slippage_bps': 1.0,
      # None: trade only when the target changes; a weight h: whenever |target - weight| > h.
      'rebalance_threshold': ml_collections.config_dict.placeholder(float),
      'max_hole_bars': 1,  # longest run of filled bars an episode may touch
      'feature_clip': 10.0,  # normalised features are clipped to [-clip, clip]
      'normalizer_sample_size': 100_000,  # training bars the feature statistics are fitted on
  })
  config.update(overrides)
  return config
