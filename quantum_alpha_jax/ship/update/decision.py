"""Step 5, decide: promote the candidate or keep the promoted version, and complete a promotion
that a kill interrupted.

For ``metric_mode='min'`` the candidate is promoted when ``c < i - margin · |i|`` (``'max'``:
``c > i + margin · |i|``), ``c`` and ``i`` its and the incumbent's ``config.metric`` on the
holdout. The cycle writes its decision record to the model store before the promotion, so a
re-run of the same cycle completes a promotion that a kill cut short, and never trains twice.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.ship import store as model_store


def decide(candidate: Mapping[str, float], incumbent: Mapping[str, float] | None, metric: str,
           mode: str, margin: float) -> tuple[bool, str]:
  """Whether to promote the candidate, and why, by ``metric`` (the rule in the module doc)."""
  if mode not in ('min', 'max'):
    raise ConfigError(describe('config.metric_mode', f'{mode!r}', 'use "min" or "max"'))
  if not margin >= 0:
    raise ConfigError(describe('config.margin', f'{margin} is negative', 'use a fraction >= 0'))
  if metric not in candidate:
    raise ConfigError(describe('config.metric', f'the task reports no {metric!r}',
                               f'use one of {", ".join(sorted(candidate))}'))
  value = candidate[metric]
  if value is None or not math.isfinite(value):
    return False, f'kept: the candidate\'s {metric} is {value}'
  if incumbent is None:
    return True, 'promoted: no version was promoted yet'
  reference = incumbent[metric]
  if reference is None or not math.isfinite(reference):
    return True, f'promoted: the promoted version\'s {metric} is {reference}'
  if mode == 'min':
    threshold = reference - margin * abs(reference)
    better, sign, relation = value < threshold, '-', '<'
  else:
    threshold = reference + margin * abs(reference)
    better, sign, relation = value > threshold, '+', '>'
  rule = (f'candidate {metric} {value:.6g} {relation} {reference:.6g} {sign} {margin:g}·'
          f'|{reference:.6g}| = {threshold:.6g}')
  return bool(better), ('promoted: ' if better else 'kept the promoted version: not ') + rule


def finish_promotion(store: model_store.ModelStore, name: str, record: Mapping[str, Any]) -> None:
  """Completes the promotion of a decided cycle that a kill cut short."""
  if not record.get('promote'):
    return
  history = (store.promoted(name) or {}).get('history', [])
  if not any(entry.get('details', {}).get('cycle') == record['cycle'] for entry in history):
    store.promote(name, record['candidate']['version'], record['reason'],
                  details={'cycle': record['cycle']})
