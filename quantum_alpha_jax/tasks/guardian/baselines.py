"""What the Guardian must beat, and the statistics of the training split it needs before training:
the risk thresholds, the majority class, and two rules that read the past alone.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data.windows import SplitData
from quantum_alpha_jax.errors import ConfigError, DataError, describe
from quantum_alpha_jax.tasks.guardian.labels import BEAR
from quantum_alpha_jax.tasks.guardian.labels import BULL
from quantum_alpha_jax.tasks.guardian.labels import classify_trend
from quantum_alpha_jax.tasks.guardian.labels import realised_volatility
from quantum_alpha_jax.tasks.guardian.labels import SIDEWAYS
from quantum_alpha_jax.tasks.guardian.labels import trailing_features
from quantum_alpha_jax.tasks.guardian.labels import window_returns
from quantum_alpha_jax.tasks.guardian.task import GuardianTask


def training_statistics(task: GuardianTask, train: SplitData, max_windows: int = 100_000,
                        seed: int = 0) -> dict[str, Any]:
  """From the training split alone (at most ``max_windows`` windows, drawn with ``seed``): the
  risk thresholds (terciles of the realised forward volatility), the label counts (the majority
  class) and the trailing-volatility threshold of the trend/volatility baseline. JSON-ready."""
  source = train.source
  if source.spec.decoder_length < 2:
    raise ConfigError(describe('training_statistics', 'the windows carry no forward returns',
                               'build the splits with guardian.window_spec(config)'))
  anchors = source.anchors
  if len(anchors) > max_windows:
    anchors = np.sort(np.random.default_rng(seed).choice(anchors, max_windows, replace=False))
  encoder_returns, future_returns = window_returns(source, anchors)
  regime = source.arrays.regime[anchors].astype(np.int32)
  if task.label_source == 'true' and not (regime >= 0).any():
    raise DataError(describe(
        'config.labels.source', "'true' asks for the synthetic market's regimes, but this store "
        'has none (real data)', "use labels.source='auto' or 'rule'"))
  labels = np.asarray(task.labels({'regime': regime, 'encoder_returns': encoder_returns,
                                   'future_returns': future_returns}))
  counts = np.bincount(labels[labels >= 0], minlength=len(schema.REGIMES))
  thresholds = np.quantile(realised_volatility(future_returns), [1 / 3, 2 / 3])
  _, trailing_volatility = trailing_features(encoder_returns, task.label_lookback)
  sideways_share = counts[SIDEWAYS] / max(counts.sum(), 1)
  return {
      'windows': int(len(anchors)),
      'has_true_regimes': bool((regime >= 0).any()),
      'label_counts': {name: int(counts[i]) for i, name in enumerate(schema.REGIMES)},
      'majority_class': int(np.argmax(counts)),
      'risk_thresholds': [float(value) for value in thresholds],
      'trailing_volatility_threshold': float(np.quantile(trailing_volatility, sideways_share)),
  }


def baseline_predictions(task: GuardianTask, statistics: Mapping[str, Any],
                         trailing_trend: np.ndarray, trailing_volatility: np.ndarray,
                         count: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """``(predictions, descriptions)`` of the baselines on ``count`` windows: the training split's
  majority class, and two rules on the windows' past-only ``trailing_trend`` and
  ``trailing_volatility`` (:func:`.labels.trailing_features`)."""
  majority = np.full(count, statistics['majority_class'], np.int32)
  trend_rule = classify_trend(trailing_trend, task.trend_threshold)
  volatility_rule = np.where(
      trailing_volatility < statistics['trailing_volatility_threshold'], SIDEWAYS,
      np.where(trailing_trend >= 0, BULL, BEAR)).astype(np.int32)
  predictions = {'majority_class': majority, 'trailing_trend_rule': trend_rule,
                 'trailing_trend_volatility_rule': volatility_rule}
  descriptions = {
      'majority_class': f'always {schema.REGIMES[statistics["majority_class"]]}, the most '
                        'frequent label of the training split',
      'trailing_trend_rule': f'the rule on the last {task.label_lookback} bars only: trend '
                             f'statistic above {task.trend_threshold} bull, below minus it bear',
      'trailing_trend_volatility_rule': 'sideways when the trailing realised volatility is below '
                                        'its training quantile at the sideways share, else the '
                                        'sign of the trailing return',
  }
  return predictions, descriptions
