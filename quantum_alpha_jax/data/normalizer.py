"""The per-window normalisation: each window is made stationary relative to its anchor bar (by
``FEATURE_KINDS``) and z-scored with statistics fitted on the training split alone. Split out of
``data/windows.py`` (issue #17).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import arrays as arrays_lib
from quantum_alpha_jax.data import features as features_lib
from quantum_alpha_jax.data import splits as splits_lib

FEATURES = features_lib.FEATURES
FEATURE_KINDS = features_lib.FEATURE_KINDS
WindowArrays = arrays_lib.WindowArrays
WindowSpec = splits_lib.WindowSpec
Split = splits_lib.Split
_ALL_COLUMNS = np.arange(len(FEATURES))


NORMALIZER_FORMAT_VERSION = 1


_LOG_EPSILON = 1e-12


_STD_FLOOR = 1e-6


_KIND_NAMES = ('none', 'price', 'price_diff', 'volume', 'obv')


_KIND_INDEX = np.array([_KIND_NAMES.index(FEATURE_KINDS[name]) for name in FEATURES])


_IS_LOG_KIND = np.array([FEATURE_KINDS[name] in ('price', 'volume') for name in FEATURES])


_CLOSE, _VOLUME_MA, _OBV = (FEATURES.index(name) for name in ('close', 'volume_ma', 'OBV'))


@dataclasses.dataclass(frozen=True, eq=False)
class Normalizer:
  """Per-window stationarising transform by ``FEATURE_KINDS``, then train-fitted z-scoring.

  ``mean`` and ``std`` are ``[len(FEATURES)]`` float32 statistics of the stationarised encoder
  windows of the training split.
  """

  spec: WindowSpec
  mean: np.ndarray
  std: np.ndarray
  train_split: Split | None = None
  num_windows: int = 0
  seed: int = 0

  def __post_init__(self):
    mean = np.asarray(self.mean, np.float32).reshape(-1)
    std = np.maximum(np.asarray(self.std, np.float32).reshape(-1), np.float32(_STD_FLOOR))
    if mean.shape != (len(FEATURES),) or std.shape != (len(FEATURES),):
      raise errors.ConfigError(errors.describe(
          'Normalizer', f'mean/std have shapes {mean.shape}/{std.shape}, expected '
          f'({len(FEATURES)},)'))
    object.__setattr__(self, 'mean', mean)
    object.__setattr__(self, 'std', std)

  @classmethod
  def identity(cls, spec: WindowSpec) -> Normalizer:
    """Stationarising only (mean 0, std 1); the transform :meth:`fit` measures."""
    return cls(spec, np.zeros(len(FEATURES), np.float32), np.ones(len(FEATURES), np.float32))

  @classmethod
  def fit(cls, arrays: WindowArrays, spec: WindowSpec, anchors: np.ndarray, *,
          train_split: Split | None = None, sample_size: int = 4096, seed: int = 0,
          chunk_size: int = 512) -> Normalizer:
    """Fits mean/std on a seeded sample of up to ``sample_size`` windows (all encoder steps)."""
    anchors = np.asarray(anchors, np.int64)
    if len(anchors) == 0:
      raise errors.DataError(errors.describe('Normalizer.fit', 'no training windows'))
    rng = np.random.default_rng(seed)
    if len(anchors) > sample_size:
      anchors = np.sort(rng.choice(anchors, size=sample_size, replace=False))
    identity = cls.identity(spec)
    offsets = spec.offsets[:spec.encoder_length]
    total = np.zeros(len(FEATURES), np.float64)
    total_squares = np.zeros(len(FEATURES), np.float64)
    count = 0
    for begin in range(0, len(anchors), chunk_size):
      chunk = anchors[begin:begin + chunk_size]
      window = np.take(arrays.features, chunk[:, None] + offsets, axis=0)
      values = identity.stationarize(window, window[:, -1]).astype(np.float64)
      values = values.reshape(-1, len(FEATURES))
      total += values.sum(axis=0)
      total_squares += np.square(values).sum(axis=0)
      count += len(values)
    mean = total / count
    variance = np.maximum(total_squares / count - np.square(mean), 0.0)
    broken = [name for name, m, v in zip(FEATURES, mean, variance)
              if not (np.isfinite(m) and np.isfinite(v))]
    if broken:
      raise errors.DataError(errors.describe(
          'Normalizer.fit', f'non-finite statistics for {broken} (a price feature <= 0?)',
          'check data.features output on the training split'))
    return cls(spec, mean, np.sqrt(variance), train_split=train_split,
               num_windows=len(anchors), seed=seed)

  def stationarize(self, values: np.ndarray, anchor_row: np.ndarray,
                   columns: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
    """Scales ``values [batch, time, C]`` relative to ``anchor_row [batch, 44]`` by feature kind.

    Every kind is ``g(x * scale + shift)`` with per-item ``scale``/``shift`` and ``g = log`` for the
    price and volume kinds. ``columns``: the ``FEATURES`` index of each of the C columns.
    """
    values = np.asarray(values, np.float32)
    anchor_row = np.asarray(anchor_row, np.float32)
    columns = _ALL_COLUMNS if columns is None else np.asarray(columns, np.int64)
    epsilon = np.float32(_LOG_EPSILON)
    with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
      inverse_close = np.float32(1) / anchor_row[:, _CLOSE]
      inverse_volume = np.float32(1) / (anchor_row[:, _VOLUME_MA] + epsilon)
      obv_scale = np.float32(1) / (
          anchor_row[:, _VOLUME_MA] * np.float32(self.spec.encoder_length) + epsilon)
      ones = np.ones_like(inverse_close)
      # Columns of these stacks follow _KIND_NAMES: none, price, price_diff, volume, obv.
      scales = np.stack([ones, inverse_close, inverse_close, inverse_volume, obv_scale], axis=1)
      shifts = np.stack([0 * ones, 0 * ones, 0 * ones, epsilon * inverse_volume,
                         -anchor_row[:, _OBV] * obv_scale], axis=1)
      kind = _KIND_INDEX[columns]
      output = values * scales[:, None, kind]
      output += shifts[:, None, kind]
      is_log = _IS_LOG_KIND[columns]
      if is_log.any():
        # log over every column is contiguous (fast); keep it only where the kind asks for it.
        np.copyto(output, np.log(output), where=is_log)
    return output

  def apply(self, values: np.ndarray, anchor_row: np.ndarray,
            columns: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
    """Stationarises then z-scores ``values [batch, time, C]``; returns float32, same shape."""
    columns = _ALL_COLUMNS if columns is None else np.asarray(columns, np.int64)
    output = self.stationarize(values, anchor_row, columns)
    output -= self.mean[columns]
    output *= np.float32(1.0) / self.std[columns]
    return output

  def to_dict(self) -> dict[str, Any]:
    """JSON-serialisable form, stored with a run (features, spec, train dates, statistics)."""
    return {
        'format': NORMALIZER_FORMAT_VERSION,
        'features': list(FEATURES),
        'kinds': [FEATURE_KINDS[name] for name in FEATURES],
        'spec': self.spec.to_dict(),
        'train_split': None if self.train_split is None else self.train_split.to_dict(),
        'num_windows': int(self.num_windows),
        'seed': int(self.seed),
        'mean': [float(value) for value in self.mean],
        'std': [float(value) for value in self.std],
    }

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> Normalizer:
    """Inverse of :meth:`to_dict`; refuses statistics fitted for another feature list."""
    if data.get('format') != NORMALIZER_FORMAT_VERSION:
      raise errors.ConfigError(errors.describe(
          'Normalizer.from_dict', f'unknown format {data.get("format")!r}'))
    if tuple(data.get('features', ())) != FEATURES:
      raise errors.ConfigError(errors.describe(
          'Normalizer.from_dict', 'statistics were fitted for a different FEATURES list',
          'refit the normaliser on the current features'))
    train = data.get('train_split')
    return cls(
        spec=WindowSpec(**data['spec']),
        mean=np.asarray(data['mean'], np.float32),
        std=np.asarray(data['std'], np.float32),
        train_split=None if train is None else Split(**train),
        num_windows=int(data.get('num_windows', 0)),
        seed=int(data.get('seed', 0)),
    )
