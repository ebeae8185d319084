"""Grain data over sliding windows of the feature store: time splits, purging, train-only scaling.

The flow, for training JAX models data-parallel (each step in its own module):

1. ``data/arrays.py``: :class:`WindowArrays` flattens ``{symbol: feature frame}`` into contiguous
   ``.npy`` files in a cache directory and reopens them as read-only memmaps.
2. ``data/splits.py``: :func:`eligible_anchors` finds every usable window and :func:`split_anchors`
   keeps those inside each time split, purging the start of each later split.
3. ``data/normalizer.py``: :class:`Normalizer` makes each window stationary relative to its anchor
   bar and z-scores it with statistics fitted on the training split alone.
4. Here: :class:`WindowSource` and :func:`training_dataset` / :func:`evaluation_dataset` build
   ``grain.MapDataset`` pipelines over window indices (shuffle, shard, repeat and batch act on
   indices only); one vectorised gather then reads and normalises the whole batch;
   :func:`make_datasets` runs the whole flow, :func:`signal_source` gives the causal per-bar source.
   The names of steps 1-3 are bound here too, as the one import the rest of the library uses.

An anchor ``t`` is the row of the last encoder bar; its window spans rows
``[t - encoder_length + 1, t + decoder_length]``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

from absl import flags
import grain
import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import arrays as arrays_lib
from quantum_alpha_jax.data import features as features_lib
from quantum_alpha_jax.data import normalizer as normalizer_lib
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import splits as splits_lib

FEATURES = features_lib.FEATURES
KNOWN_FUTURE_FEATURES = features_lib.KNOWN_FUTURE_FEATURES
FEATURE_KINDS = features_lib.FEATURE_KINDS
EXTRA_FEATURES = features_lib.EXTRA_FEATURES
WindowArrays = arrays_lib.WindowArrays
WindowSpec = splits_lib.WindowSpec
Split = splits_lib.Split
Normalizer = normalizer_lib.Normalizer
eligible_anchors = splits_lib.eligible_anchors
split_anchors = splits_lib.split_anchors
splits_from_config = splits_lib.splits_from_config
validate_splits = splits_lib.validate_splits


_KNOWN_FUTURE_COLUMNS = np.array([FEATURES.index(name) for name in KNOWN_FUTURE_FEATURES])
_ALL_COLUMNS = np.arange(len(FEATURES))


# ----------------------------------------------------------------------------------------------
# Specs and splits.


# ----------------------------------------------------------------------------------------------
# Flat arrays in a cache directory.


# ----------------------------------------------------------------------------------------------
# Anchor selection.


# ----------------------------------------------------------------------------------------------
# Normalisation.


# ----------------------------------------------------------------------------------------------
# Random access and vectorised batches.


def calendar_features(timestamps: np.ndarray) -> np.ndarray:
  """``KNOWN_FUTURE_FEATURES`` (hour, day_of_week, is_trading_hour) of bars opening at
  ``timestamps [...]`` (int64 ns, UTC), ``[..., 3]`` float32: the clock alone, by the rules of
  ``features.compute_features``, so a decoder's known inputs need no row of a future bar."""
  timestamps = np.asarray(timestamps, np.int64)
  # One definition of the calendar rules: features.py's.
  hour = (timestamps // features_lib.NANOSECONDS_PER_HOUR) % 24
  day_of_week = (timestamps // features_lib.NANOSECONDS_PER_DAY
                 + features_lib.EPOCH_DAY_OF_WEEK) % 7
  session_start, session_end = features_lib.TRADING_HOURS
  trading = (day_of_week < 5) & (hour >= session_start) & (hour < session_end)
  return np.stack([hour, day_of_week, trading], axis=-1).astype(np.float32)


class WindowSource(grain.sources.RandomAccessDataSource):
  """The windows of one split: ``source[i]`` is the window at ``anchors[i]``; :meth:`gather`
  reads a whole batch of anchors at once (what the Grain pipelines map over).

  ``past_only``: the anchors need only their encoder rows (:func:`signal_source`); :meth:`gather`
  reads no row after an anchor and returns NaN ``future_returns``.
  """

  def __init__(self, arrays: WindowArrays, spec: WindowSpec, anchors: np.ndarray,
               normalizer: Normalizer, name: str = '', *, past_only: bool = False):
    self.arrays = arrays
    self.spec = spec
    self.anchors = np.ascontiguousarray(anchors, dtype=np.int64)
    self.normalizer = normalizer
    self.name = name
    self.past_only = bool(past_only)
    if len(self.anchors) == 0:
      raise errors.DataError(errors.describe(f'WindowSource {name!r}', 'no windows'))
    if spec.extra_features:
      lacking = [m['symbol'] for m in arrays.metadata['symbols'] if not m['has_extra_features']]
      if lacking:
        raise errors.DataError(errors.describe(
            f'WindowSource {name!r}', f'extra_features asked for, but {", ".join(lacking)} has no '
            'trade-count/taker-buy columns (freqtrade files carry OHLCV only)',
            'set extra_features=False, or ingest Binance dumps that have them'))
    if normalizer.spec.encoder_length != spec.encoder_length:
      raise errors.ConfigError(errors.describe(
          f'WindowSource {name!r}', f'normaliser was fitted for encoder_length '
          f'{normalizer.spec.encoder_length}, windows have {spec.encoder_length}'))

  def __len__(self) -> int:
    return len(self.anchors)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    batch = self.gather(self.anchors[np.asarray([index])])
    return {name: value[0] for name, value in batch.items()}

  def __repr__(self) -> str:
    return f'WindowSource({self.name!r}, windows={len(self)}, spec={self.spec})'

  def gather(self, anchors: np.ndarray) -> dict[str, np.ndarray]:
    """Reads and normalises the windows at row ``anchors [batch]``; -1 marks padding (mask 0).

    Returns ``encoder [batch, encoder, 44]``, ``decoder_known [batch, decoder, 3]`` (the calendar
    of the coming bars, known at the anchor), ``future_returns [batch, decoder]`` (NaN when
    ``past_only``), ``encoder_returns [batch, encoder]`` and per-item ``symbol``, ``anchor``,
    ``timestamp``, ``regime``, ``mask``; with ``spec.extra_features`` also
    ``encoder_extra [batch, encoder, 2]``.
    """
    anchors = np.asarray(anchors, np.int64).reshape(-1)
    real = anchors >= 0
    anchors = np.where(real, anchors, self.anchors[0])
    encoder_length, decoder_length = self.spec.encoder_length, self.spec.decoder_length
    rows = anchors[:, None] + self.spec.offsets[:encoder_length]
    window = np.take(self.arrays.features, rows, axis=0)  # [batch, encoder, 44]
    anchor_row = window[:, -1]
    encoder = self.normalizer.apply(window, anchor_row)
    timestamp = np.take(self.arrays.timestamp, anchors)
    ahead = np.arange(1, decoder_length + 1, dtype=np.int64) * schema.BAR_NANOSECONDS
    decoder_known = self.normalizer.apply(calendar_features(timestamp[:, None] + ahead),
                                          anchor_row, _KNOWN_FUTURE_COLUMNS)
    if self.past_only:
      future_returns = np.full((len(anchors), decoder_length), np.nan, np.float32)
    else:
      future_returns = np.take(self.arrays.log_return,
                               anchors[:, None] + np.arange(1, decoder_length + 1))
    extra = {}
    if self.spec.extra_features:
      # Fixed scaling, no fitted statistics: 2 (ratio - 1/2) lies in [-1, 1]; the z-score is one.
      values = np.take(self.arrays.array('extra_features'), rows, axis=0)
      values[..., 0] = 2.0 * (values[..., 0] - 0.5)
      extra = {'encoder_extra': values}
    return {**extra,
        'encoder': encoder,
        'decoder_known': decoder_known,
        'future_returns': future_returns,
        'encoder_returns': np.take(self.arrays.log_return, rows),
        'symbol': np.take(self.arrays.symbol, anchors),
        'anchor': np.where(real, anchors, -1),
        'timestamp': timestamp,
        'regime': np.take(self.arrays.regime, anchors).astype(np.int32),
        'mask': real.astype(np.float32),
    }


def local_batch_size(batch_size: int, shard_count: int, num_devices: int | None = None) -> int:
  """Per-process batch of a global ``batch_size``; it must split evenly over the local devices."""
  if num_devices is None:
    import jax  # pylint: disable=g-import-not-at-top  (workers never need jax)
    num_devices = jax.local_device_count()
  if batch_size <= 0 or batch_size % shard_count:
    raise errors.ConfigError(errors.describe(
        'batch_size', f'{batch_size} is not a positive multiple of the {shard_count} processes',
        f'use a multiple of {shard_count * num_devices}'))
  per_process = batch_size // shard_count
  if per_process % num_devices:
    raise errors.ConfigError(errors.describe(
        'batch_size', f'{batch_size} ({per_process} per process) does not split evenly over '
        f'{num_devices} devices per process',
        f'use a multiple of {shard_count * num_devices}, e.g. '
        f'{max(1, round(batch_size / (shard_count * num_devices))) * shard_count * num_devices}'))
  return per_process


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise errors.ConfigError(errors.describe(
        'sharding', f'shard_index={shard_index} not in [0, {shard_count})'))
  return int(shard_index), int(shard_count)


class _GatherPositions:
  """Grain map: a batch of positions into ``table`` (-1 = padding) -> :meth:`WindowSource.gather`.

  The pipelines shuffle and batch positions ``0..len-1`` (``MapDataset.range`` has the least
  per-element overhead in Grain) and resolve them to anchor rows here, vectorised.
  """

  def __init__(self, source: WindowSource, table: np.ndarray):
    self.source = source
    self.table = np.ascontiguousarray(table, dtype=np.int64)

  def __call__(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    positions = np.asarray(positions, np.int64)
    anchors = np.where(positions >= 0, self.table[np.maximum(positions, 0)], -1)
    return self.source.gather(anchors)


def training_dataset(source: WindowSource, batch_size: int, seed: int, *,
                     num_epochs: int | None = None, shard_index: int | None = None,
                     shard_count: int | None = None,
                     num_devices: int | None = None) -> grain.MapDataset:
  """Shuffled (reshuffled every epoch) batches of this process's shard; infinite by default.

  ``batch_size`` is global; each process gets ``batch_size // shard_count`` items per batch.
  """
  shard_index, shard_count = _shard(shard_index, shard_count)
  per_process = local_batch_size(batch_size, shard_count, num_devices)
  usable = len(source) - len(source) % shard_count
  if usable // shard_count < per_process:
    raise errors.DataError(errors.describe(
        f'split {source.name!r}', f'{len(source)} windows do not fill one batch of {batch_size}',
        'use a smaller batch or a longer split'))
  dataset = grain.MapDataset.range(len(source)).shuffle(seed=seed)
  # Each epoch is one permutation of all windows; process k takes every shard_count-th of it.
  dataset = dataset.slice(slice(shard_index, usable, shard_count))
  dataset = dataset.repeat(num_epochs)
  dataset = dataset.batch(per_process, drop_remainder=True, batch_fn=np.asarray)
  return dataset.map(_GatherPositions(source, source.anchors))


def evaluation_dataset(source: WindowSource, batch_size: int, *,
                       anchors: np.ndarray | None = None,
                       shard_index: int | None = None, shard_count: int | None = None,
                       num_devices: int | None = None) -> grain.MapDataset:
  """One ordered pass over this process's shard of ``anchors`` (default: all of the source's, or
  a subset from :func:`evaluation_subset`); the last batch is padded with ``mask`` 0.

  Process k takes positions k, k + P, ... Every shard yields the same number of batches, so
  multi-host evaluation steps stay in lockstep.
  """
  shard_index, shard_count = _shard(shard_index, shard_count)
  per_process = local_batch_size(batch_size, shard_count, num_devices)
  anchors = source.anchors if anchors is None else np.asarray(anchors, np.int64)
  per_shard = math.ceil(len(anchors) / shard_count)
  num_batches = math.ceil(per_shard / per_process)
  mine = anchors[shard_index::shard_count]
  padded = np.full(num_batches * per_process, -1, np.int64)
  padded[:len(mine)] = mine
  dataset = grain.MapDataset.range(len(padded))
  dataset = dataset.batch(per_process, drop_remainder=True, batch_fn=np.asarray)
  return dataset.map(_GatherPositions(source, padded))


def make_iterator(dataset: grain.MapDataset, *, num_workers: int = 0, num_threads: int = 2,
                  prefetch_batches: int = 4) -> grain.DatasetIterator:
  """A checkpointable iterator (``get_state``/``set_state``), in ``num_workers`` processes if > 0.

  Each batch is one big vectorised gather, so a few threads and a short buffer suffice (Grain's
  defaults, 16 threads and 500 elements, are tuned for small records and waste memory here).
  """
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
  iterable = dataset.to_iter_dataset(read_options)
  if num_workers > 0:
    # Grain's worker processes read absl flags; outside an absl app (pytest, notebooks) nobody
    # has parsed them, so accept the defaults rather than fail.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=prefetch_batches))
  return iter(iterable)


@dataclasses.dataclass(frozen=True)
class SplitData:
  """One split's windows: the random-access source and its batched Grain dataset."""

  split: Split
  source: WindowSource
  dataset: grain.MapDataset
  steps_per_epoch: int  # batches per pass over the split (eval: including the padded one)

  @property
  def num_windows(self) -> int:
    return len(self.source)

  def iterator(self, **kwargs) -> grain.DatasetIterator:
    """``make_iterator(self.dataset, **kwargs)``: ``for batch in data['train'].iterator(): ...``."""
    return make_iterator(self.dataset, **kwargs)


def make_datasets(frames: Mapping[str, pd.DataFrame], spec: WindowSpec,
                  splits: Sequence[Split], batch_size: int, cache_dir: str | os.PathLike[str],
                  seed: int = 0, *, train_split: str = 'train', purge_bars: int | None = None,
                  num_epochs: int | None = None, normalizer: Normalizer | None = None,
                  normalizer_sample_size: int = 4096, shard_index: int | None = None,
                  shard_count: int | None = None,
                  num_devices: int | None = None) -> tuple[dict[str, SplitData], Normalizer]:
  """Windows per split: ``train_split`` shuffled and repeated (this process's shard of each
  global batch), the others single padded passes over the whole split (in every process).

  Fits the normaliser on ``train_split`` (unless one is given). Iterate with
  ``for batch in data['train'].iterator(): ...``.
  """
  arrays = WindowArrays.from_frames(frames, cache_dir)
  by_name = {split.name: split for split in splits}
  if normalizer is None and train_split not in by_name:
    raise errors.ConfigError(errors.describe(
        'make_datasets', f'no split named {train_split!r} among {list(by_name)} to fit the '
        'normaliser on', 'add it, set train_split=..., or pass a fitted normalizer'))
  anchors = split_anchors(arrays, spec, splits, purge_bars)
  if normalizer is None:
    normalizer = Normalizer.fit(arrays, spec, anchors[train_split],
                                train_split=by_name[train_split],
                                sample_size=normalizer_sample_size, seed=seed)
  shard_index, shard_count = _shard(shard_index, shard_count)
  per_process = local_batch_size(batch_size, shard_count, num_devices)
  result = {}
  for split in splits:
    source = WindowSource(arrays, spec, anchors[split.name], normalizer, split.name)
    if split.name == train_split:
      dataset = training_dataset(source, batch_size, seed, num_epochs=num_epochs,
                                 shard_index=shard_index, shard_count=shard_count,
                                 num_devices=num_devices)
      steps = (len(source) // shard_count) // per_process
    else:
      # Whole in every process: train.loop.evaluate shards it by process for the distributed
      # validation, and evaluation after training runs process-locally over every window.
      dataset = evaluation_dataset(source, batch_size, shard_index=0, shard_count=1,
                                   num_devices=num_devices)
      steps = len(dataset)
    result[split.name] = SplitData(split, source, dataset, steps)
  return result, normalizer


# ----------------------------------------------------------------------------------------------
# The bars a model trades on, and the validation subset that picks the best checkpoint.


def signal_source(split: SplitData | WindowSource) -> WindowSource:
  """Every bar of ``split`` whose past window is usable, as a ``past_only`` source of the split's
  window spec: whether a bar gets a signal depends on bars up to it alone, never on its label
  horizon (a bar just before a data hole or the split's end keeps its signal).

  A bar belongs to a SplitData's split when it opens in ``[start, end)``; its encoder may read the
  bars before the start (the past is known at that bar). For a bare WindowSource, the span runs
  from the first bar of its earliest window to the last bar of its latest.
  """
  source = getattr(split, 'source', split)
  spec, arrays = source.spec, source.arrays
  timestamps = np.asarray(arrays.timestamp)
  if isinstance(split, SplitData):
    start, end = split.split.start_ns, split.split.end_ns
  else:
    start = timestamps[source.anchors - spec.encoder_length + 1].min()
    end = timestamps[source.anchors + spec.decoder_length].max() + 1
  anchors = eligible_anchors(arrays, WindowSpec(spec.encoder_length, 0, spec.max_hole_bars))
  inside = (timestamps[anchors] >= start) & (timestamps[anchors] < end)
  return WindowSource(arrays, spec, anchors[inside], source.normalizer, source.name,
                      past_only=True)


def anchor_bars(source: Any, anchors: np.ndarray | None = None) -> np.ndarray:
  """The bar (row of ``source.arrays``) of each of ``anchors`` (default: ``source.anchors``): a
  window's anchor row, or an episode's first bar for a trajectory source
  (``episodes['start_row']``)."""
  anchors = np.asarray(source.anchors if anchors is None else anchors, np.int64)
  episodes = getattr(source, 'episodes', None)
  if episodes is not None:
    return np.asarray(episodes['start_row'], np.int64)[anchors]
  return anchors


def _shares(count: int, sizes: np.ndarray) -> np.ndarray:
  """``count`` items over groups of ``sizes``: one per group (the largest first when ``count`` is
  short), the rest in proportion to ``sizes - 1`` by largest remainder."""
  if count < len(sizes):
    shares = np.zeros(len(sizes), np.int64)
    shares[np.argsort(-sizes, kind='stable')[:count]] = 1
    return shares
  spare = sizes - 1
  exact = (count - len(sizes)) * spare / max(int(spare.sum()), 1)
  shares = np.floor(exact).astype(np.int64)
  remainder = count - len(sizes) - int(shares.sum())
  shares[np.argsort(-(exact - shares), kind='stable')[:remainder]] += 1
  return shares + 1


def evaluation_subset(source: Any, count: int, seed: int = 0) -> np.ndarray:
  """``count`` of ``source.anchors`` spread over every symbol and the split's whole time range
  (all of them when ``count`` is 0 or covers the split).

  Each symbol gets a share of ``count`` in proportion to its windows (at least one each); its
  windows, in time order, are cut into that many equal slices and one window is drawn from each
  slice with ``seed`` (random within a slice, so the subset cannot alias with the daily cycle).
  Returned by symbol, then time: the same subset for the same arguments, in every process and at
  every evaluation.
  """
  anchors = np.asarray(source.anchors, np.int64)
  if count <= 0 or count >= len(anchors):
    return anchors
  bars = anchor_bars(source)
  symbol = np.asarray(source.arrays.symbol)[bars]
  order = np.lexsort((np.asarray(source.arrays.timestamp)[bars], symbol))
  _, sizes = np.unique(symbol[order], return_counts=True)
  rng = np.random.default_rng(seed)
  chosen, begin = [], 0
  for size, share in zip(sizes, _shares(int(count), sizes)):
    if share:
      edges = np.arange(share + 1, dtype=np.int64) * size // share  # slices, none empty
      picks = edges[:-1] + np.floor(rng.random(share) * np.diff(edges)).astype(np.int64)
      chosen.append(order[begin + picks])
    begin += size
  return anchors[np.concatenate(chosen)]


def describe_anchors(source: Any, anchors: np.ndarray | None = None) -> dict[str, Any]:
  """JSON-ready summary of ``anchors`` (default: all) of ``source``: their number and, per symbol,
  the count and the first and last bar (UTC)."""
  anchors = np.asarray(source.anchors if anchors is None else anchors, np.int64)
  bars = anchor_bars(source, anchors)
  symbol = np.asarray(source.arrays.symbol)[bars]
  timestamp = np.asarray(source.arrays.timestamp)[bars]
  per_symbol = {}
  for index in np.unique(symbol):
    times = timestamp[symbol == index]
    per_symbol[source.arrays.symbols[index]] = {
        'windows': int(len(times)), 'first': pd.Timestamp(times.min(), tz='UTC').isoformat(),
        'last': pd.Timestamp(times.max(), tz='UTC').isoformat()}
  return {'windows': int(len(anchors)), 'of': int(len(source.anchors)), 'symbols': per_symbol}
