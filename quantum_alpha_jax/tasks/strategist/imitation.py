"""How well the Strategist imitates: its free-running actions against the exact hindsight oracle's
and against the best causal behaviour of its training data, and (diagnostic only) teacher-forced.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from quantum_alpha_jax.data import trajectories
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.evaluate import regime as classification
from quantum_alpha_jax.tasks import prediction
from quantum_alpha_jax.tasks.strategist.rollout import Rollout
from quantum_alpha_jax.tasks.strategist.task import StrategistTask


def flat_runs(result: Rollout) -> list[np.ndarray]:
  """Index ranges into ``result.rows`` between the bars where the rollout starts flat."""
  return np.split(np.arange(result.rows.size), np.flatnonzero(result.flat_start)[1:])


def oracle_labels(task: StrategistTask, arrays: windows.WindowArrays, bars: np.ndarray,
                  held: np.ndarray) -> np.ndarray:
  """The exact hindsight oracle's canonical actions ``[bars]`` on consecutive ``bars`` from the
  positions actually ``held [bars]`` before each decision: hold when it would keep that level
  (flat, long or short), buy when it would go long, sell otherwise. It trades each bar's next
  log-return (0 after the last bar) at the spec's cost."""
  close = np.log(np.asarray(arrays.close, np.float64)[bars])
  gains = np.zeros(bars.size)
  gains[:-1] = np.diff(close)
  levels, choice = trajectories.hindsight_policy(gains[None], task.spec.cost,
                                                 task.spec.allow_short)
  level = np.sign(np.asarray(held, np.float64))
  wanted = levels[choice[0, np.arange(bars.size), np.searchsorted(levels, level)]]
  return np.where(wanted == level, trajectories.HOLD,
                  np.where(wanted > 0, trajectories.BUY, trajectories.SELL)).astype(np.int32)


def imitation(task: StrategistTask, arrays: windows.WindowArrays, result: Rollout,
              index: int = 0) -> dict[str, Any]:
  """Free-running agreement with the exact hindsight oracle (JSON-ready; balanced accuracy =
  macro recall over hold/buy/sell). The rollout at target ``index`` acts from its own past actions
  and the positions it holds, with no realised future; each of its actions is scored against the
  oracle's action from the same held position (:func:`oracle_labels`, what DAgger would label).
  Beside it: always-hold, repeating the rollout's own previous action, and the causal trend rule
  (run free from flat, scored against the oracle's actions from its own positions)."""
  true = np.zeros(result.rows.size, np.int32)
  previous = np.zeros_like(true)
  trend_true, trend = np.zeros_like(true), np.zeros_like(true)
  for where in flat_runs(result):
    bars = result.rows[where]
    true[where] = oracle_labels(task, arrays, bars, result.held[index, where])
    previous[where[1:]] = result.action[index, where[:-1]]
    levels = trajectories.heuristic_positions('trend', arrays.features[bars],
                                              task.spec.allow_short)
    trend_true[where] = oracle_labels(task, arrays, bars, np.r_[0.0, levels[:-1]])
    trend[where] = trajectories.actions_from_positions(levels)[0]
  scored = (('strategist', true, result.action[index]), ('always_hold', true, np.zeros_like(true)),
            ('repeat_previous_action', true, previous), ('trend', trend_true, trend))
  report = {name: classification.classification_metrics(labels, values, trajectories.ACTIONS)
            for name, labels, values in scored}
  for entry in report.values():
    entry['balanced_accuracy'] = entry['recall_macro']
  report['bars'] = int(true.size)
  report['target_return'] = float(result.targets[index])
  report['note'] = ('free-running rollout (its own past actions and held positions, conditioned on '
                    'the target return) scored against the exact hindsight oracle\'s action from '
                    'the position it holds; repeat_previous_action repeats the rollout\'s own last '
                    'action; trend is scored on its own free run')
  return report


def best_causal_behaviour(source: trajectories.TrajectorySource) -> str | None:
  """The causal rule behaviour (trend, momentum or mean reversion; not the hindsight oracle, not
  random) a policy conditioned on a high return should act like, from ``source``'s episodes (the
  training split): with sampled behaviours the one with the highest mean episode return; with a
  hindsight selection ('best', 'each_bar') the one kept most often, because a kept rule's mean
  return is conditioned on its having won (a ruinous rule kept only where it won scores highest).
  None if there is none."""
  summary = source.summary()['behaviours']
  key = 'mean_return' if source.spec.selection == 'sampled' else 'episodes'
  rules = {name: summary[name][key] for name, policy, _, _ in source.spec.behaviour_table
           if policy in trajectories.RULES and name in summary}
  return max(rules, key=rules.get) if rules else None


def behaviour_imitation(task: StrategistTask, arrays: windows.WindowArrays, result: Rollout,
                        index: int = 0) -> dict[str, Any] | None:
  """Free-running agreement with the causal behaviour it was conditioned towards
  (``task.reference_behaviour``, the best rule of the training data; JSON-ready, balanced
  accuracy = macro recall): each action of the rollout at target ``index`` against the action that
  rule takes at the same bar from the position the rollout holds (its label reads bars <= t only,
  so a causal policy can match it exactly). Beside always-hold and repeating the rollout's own
  previous action. None when the task has no reference behaviour."""
  if task.reference_behaviour is None:
    return None
  table = {row[0]: row for row in task.spec.behaviour_table}
  if task.reference_behaviour not in table:
    raise ConfigError(describe('strategist behaviour imitation',
                               f'{task.reference_behaviour!r} is not a behaviour of the spec',
                               f'use one of {list(table)}'))
  _, policy, parameter, _ = table[task.reference_behaviour]
  true = trajectories.rule_actions(policy, arrays.features[result.rows], result.held[index],
                                   task.spec.allow_short, parameter)
  previous = np.zeros_like(true)
  for where in flat_runs(result):
    previous[where[1:]] = result.action[index, where[:-1]]
  scored = (('strategist', result.action[index]), ('always_hold', np.zeros_like(true)),
            ('repeat_previous_action', previous))
  report = {name: classification.classification_metrics(true, values, trajectories.ACTIONS)
            for name, values in scored}
  for entry in report.values():
    entry['balanced_accuracy'] = entry['recall_macro']
  report.update(behaviour=task.reference_behaviour, bars=int(true.size),
                target_return=float(result.targets[index]),
                note=('free-running rollout scored against the action the best causal behaviour of '
                      'the training data takes at each bar from the position the rollout holds'))
  return report


def teacher_forced_imitation(task: StrategistTask, params: Any, arrays: windows.WindowArrays,
                             rows: np.ndarray, *, batch_size: int = 64, max_episodes: int = 0,
                             seed: int = 0) -> dict[str, Any]:
  """DIAGNOSTIC ONLY (uses hindsight): teacher-forced action accuracy against the exact hindsight
  oracle on non-overlapping episodes of ``rows``, fed the oracle's realised return-to-go and its
  own past actions and positions; beside always-hold. JSON-ready."""
  spec = dataclasses.replace(task.spec, policies=('oracle',), policy_weights=(1.0,),
                             oracle_noise=(0.0,), oracle_cost_multiplier=1.0, selection_horizon=0,
                             selection='sampled', contrast_fraction=0.0, contrast_policies=())
  starts = trajectories.episode_starts(arrays, rows, spec.episode_length, spec.episode_length)
  if max_episodes > 0:
    starts = starts[:max_episodes]
  if starts.size == 0:
    raise ConfigError(describe('strategist imitation', 'no oracle episode fits in the split',
                               'use a longer split'))
  episodes = trajectories.generate_episodes(arrays, starts, spec, seed=seed)
  if spec.condition_on == 'behaviour':  # tokens: the conditioning target, as in the rollout
    episodes['condition'] = np.full(len(starts), task.target_return or 0.0, np.float32)
  source = trajectories.TrajectorySource(arrays, spec, episodes, task.normalizer, rows, 'oracle')
  true, predicted = [], []
  # One batch shape (the last batch padded) through the jitted teacher-forced pass.
  for batch, outputs in prediction.predict_batches(
      lambda p, inputs: {'actions': task.predict_actions(p, inputs)}, params, source, batch_size,
      inputs=('rtg', 'states', 'actions', 'sizes', 'timesteps')):
    predicted.append(outputs['actions'].reshape(-1))
    true.append(batch['actions'].reshape(-1))
  true, predicted = np.concatenate(true), np.concatenate(predicted)
  report = {name: classification.classification_metrics(true, values, trajectories.ACTIONS)
            for name, values in (('strategist', predicted), ('always_hold', np.zeros_like(true)))}
  for entry in report.values():
    entry['balanced_accuracy'] = entry['recall_macro']
  report['episodes'] = int(len(source))
  report['label'] = TEACHER_FORCED_LABEL
  return report


TEACHER_FORCED_LABEL = 'diagnostic only (teacher-forced, uses hindsight)'
