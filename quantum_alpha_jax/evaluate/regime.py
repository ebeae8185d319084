"""Regime classification metrics (sklearn) and the silhouette of latent vectors, on host arrays.

Labels are integer class indices into ``class_names`` (default ``schema.REGIMES``:
bull, bear, sideways). Every class in ``class_names`` is reported, present or not; a class that is
never predicted has precision 0 (sklearn's ``zero_division=0``), one that never occurs recall 0.
Results are JSON-ready dicts.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn import metrics

from quantum_alpha_jax import errors
from quantum_alpha_jax.data import schema

SILHOUETTE_MAX_POINTS = 5000


def _labels(values, mask, name: str) -> np.ndarray:
  values = np.asarray(values)
  if mask is not None:
    mask = np.asarray(mask)
    if mask.shape != values.shape[:1]:
      raise errors.DataError(errors.describe(
          name, f'mask has shape {mask.shape}, expected {values.shape[:1]}', 'pass a mask [items]'))
    values = values[mask != 0]
  return values


def classification_metrics(y_true, y_pred, class_names: Sequence[str] = schema.REGIMES,
                           mask=None) -> dict:
  """Accuracy, macro and per-class precision/recall/F1 and the confusion matrix.

  y_true, y_pred [items] integer classes; mask [items]. confusion[i][j] counts true i predicted j.
  """
  y_true = _labels(y_true, mask, 'classification_metrics: y_true').astype(np.int64).ravel()
  y_pred = _labels(y_pred, mask, 'classification_metrics: y_pred').astype(np.int64).ravel()
  if y_true.shape != y_pred.shape:
    raise errors.DataError(errors.describe(
        'classification_metrics', f'{y_true.size} true labels but {y_pred.size} predictions'))
  if y_true.size == 0:
    raise errors.DataError(errors.describe('classification_metrics', 'no items left after masking'))
  classes = np.arange(len(class_names))
  for name, labels in (('y_true', y_true), ('y_pred', y_pred)):
    outside = labels[(labels < 0) | (labels >= len(class_names))]
    if outside.size:
      raise errors.DataError(errors.describe(
          f'classification_metrics: {name}', f'label {int(outside[0])} is not a class index',
          f'use 0..{len(class_names) - 1} for {tuple(class_names)}'))
  precision, recall, f1, support = metrics.precision_recall_fscore_support(
      y_true, y_pred, labels=classes, zero_division=0)
  return {
      'count': int(y_true.size),
      'accuracy': float(metrics.accuracy_score(y_true, y_pred)),
      'precision_macro': float(precision.mean()),
      'recall_macro': float(recall.mean()),
      'f1_macro': float(f1.mean()),
      'per_class': {
          name: {'precision': float(precision[i]), 'recall': float(recall[i]),
                 'f1': float(f1[i]), 'support': int(support[i])}
          for i, name in enumerate(class_names)},
      'class_names': list(class_names),
      'confusion_matrix': metrics.confusion_matrix(y_true, y_pred, labels=classes).tolist(),
  }


def silhouette(latents, labels, mask=None, max_points: int = SILHOUETTE_MAX_POINTS,
               seed: int = 0) -> float | None:
  """Silhouette score of latents [items, features] grouped by labels [items] (Euclidean).

  At most ``max_points`` items, drawn with ``seed``; None when fewer than 2 or more than items-1
  distinct labels are present (the score is undefined).
  """
  latents = np.asarray(_labels(latents, mask, 'silhouette: latents'), dtype=np.float64)
  labels = _labels(labels, mask, 'silhouette: labels').ravel()
  if latents.ndim != 2 or latents.shape[0] != labels.size:
    raise errors.DataError(errors.describe(
        'silhouette', f'latents {latents.shape} and labels {labels.shape} do not fit '
        '[items, features] and [items]'))
  if labels.size > max_points:
    chosen = np.random.default_rng(seed).choice(labels.size, max_points, replace=False)
    latents, labels = latents[chosen], labels[chosen]
  distinct = np.unique(labels).size
  if distinct < 2 or distinct > labels.size - 1:
    return None
  return float(metrics.silhouette_score(latents, labels))


def regime_report(y_true, y_pred, latents=None, class_names: Sequence[str] = schema.REGIMES,
                  mask=None, seed: int = 0) -> dict:
  """:func:`classification_metrics`, plus the silhouette of latents [items, features] by y_pred."""
  report = classification_metrics(y_true, y_pred, class_names, mask)
  if latents is not None:
    report['silhouette'] = silhouette(latents, y_pred, mask, seed=seed)
  return report
