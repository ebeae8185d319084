"""The Strategist's experiment: trajectories → training statistics → train → best checkpoint →
evaluation → ``results.json``; the table for people; a saved run loaded back, scored on any store,
and its per-bar signals on any split.
"""

from __future__ import annotations

import math

import pathlib
from typing import Any, Mapping

import ml_collections
import pandas as pd

from quantum_alpha_jax.data import trajectories
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.evaluate import intervals
from quantum_alpha_jax.tasks import runner
from quantum_alpha_jax.tasks.strategist.evaluation import evaluate
from quantum_alpha_jax.tasks.strategist.imitation import best_causal_behaviour
from quantum_alpha_jax.tasks.strategist.rollout import bar_signals
from quantum_alpha_jax.tasks.strategist.task import example_batch
from quantum_alpha_jax.tasks.strategist.task import StrategistTask
from quantum_alpha_jax.train import data as data_lib

MODEL = 'strategist'


def target_from_quantiles(config: ml_collections.ConfigDict,
                          quantiles: Mapping[str, float]) -> float:
  """The conditioning return: ``config.evaluation.target_quantile`` of the training returns."""
  key = f'{config.evaluation.target_quantile:g}'
  if key not in quantiles:
    raise ConfigError(describe('config.evaluation.target_quantile',
                               f'{config.evaluation.target_quantile} is not among the stored '
                               f'quantiles {sorted(quantiles)}', 'use one of those'))
  return float(quantiles[key])


QUANTILE_LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def make_data(config: ml_collections.ConfigDict, *, normalizer: windows.Normalizer | None = None,
              frames: Mapping[str, pd.DataFrame] | None = None
              ) -> tuple[dict[str, windows.SplitData], windows.Normalizer]:
  """Trajectory datasets of every split of ``config.data`` (the store is built if absent)."""
  frames = data_lib.load_frames(config.data) if frames is None else frames
  spec = trajectories.TrajectorySpec.from_config(config.trajectories,
                                                 config.model.context_length)
  return trajectories.make_datasets(
      frames, spec, windows.splits_from_config(config.data.splits), config.train.batch_size,
      pathlib.Path(config.data.store_dir) / 'windows_cache', seed=config.train.seed,
      normalizer=normalizer)


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
        frames: Mapping[str, pd.DataFrame] | None = None,
        on_evaluate: Any = None) -> dict[str, Any]:
  """Trains the Strategist described by ``config`` in ``workdir`` (resuming if it holds a run),
  evaluates the best checkpoint on ``config.evaluation.splits`` and writes ``results.json``
  (:func:`runner.train_and_report`). ``on_evaluate(step, metrics)`` follows every validation."""
  StrategistTask.from_config(config)  # config errors before any data work
  runner.check_evaluation_splits(config)
  data, normalizer = make_data(config, frames=frames)
  # Every level the evaluation asks for (a conditioning quantile not stored would drop its point).
  levels = sorted(set(QUANTILE_LEVELS) | set(config.evaluation.conditioning_quantiles)
                  | {float(config.evaluation.target_quantile)})
  quantiles = trajectories.initial_return_quantiles(data['train'].source, levels)
  reference = best_causal_behaviour(data['train'].source)
  task = StrategistTask.from_config(config, normalizer=normalizer,
                                    target_return=target_from_quantiles(config, quantiles),
                                    reference_behaviour=reference)
  trajectory_summary = {name: split.source.summary() for name, split in data.items()}
  evaluation = config.evaluation

  def evaluate_split(params, name, split, directory):
    del name
    return evaluate(task, params, split, quantiles, directory,
                    conditioning_quantiles=evaluation.conditioning_quantiles,
                    curve_max_bars=evaluation.curve_max_bars,
                    batch_size=evaluation.batch_size,
                    imitation_max_episodes=evaluation.imitation_max_episodes,
                    seed=config.train.seed)

  return runner.train_and_report(
      config, workdir, model=MODEL, task=task, data=data, normalizer=normalizer,
      evaluate_split=evaluate_split,
      statistics={'initial_return_quantiles': quantiles, 'reference_behaviour': reference},
      results={'trajectories': {'summary': trajectory_summary,
                                'initial_return_quantiles': quantiles,
                                'reference_behaviour': reference,
                                'spec': task.spec.to_dict()},
               'conditioning_target_return': task.target_return},
      on_evaluate=on_evaluate)


def _spearman_text(curve: Mapping[str, Any]) -> str:
  """`` (Spearman x)`` of the conditioning curve; a note when its targets do not vary (one return
  token, as with ``selection='best'``: NaN in memory, null in results.json)."""
  if 'spearman_target_vs_realised' not in curve:
    return ''
  spearman = curve['spearman_target_vs_realised']
  if isinstance(spearman, (int, float)) and math.isfinite(spearman):
    return f' (Spearman {spearman:.2f})'
  return ' (no Spearman: one target)'


def format_results(results: Mapping[str, Any]) -> str:
  """A short table for people: the Strategist beside buy-and-hold and the heuristics."""
  train = results['train']
  lines = [f'Strategist run in {results["workdir"]}: {train["steps"]} steps, best at '
           f'{train["best_step"]}, {train["samples_per_second"] or 0:.1f} sequences/s; '
           f'conditioning return {results["conditioning_target_return"]:.4%} per episode']
  percent = lambda v: '—' if v is None else f'{v:.2%}'
  number = lambda v: '—' if v is None else f'{v:.3f}'
  for split in ('validation', 'test'):
    report = results.get(split)
    if not isinstance(report, Mapping) or 'strategist' not in report:
      continue
    agreement = {name: entry['balanced_accuracy'] for name, entry in report['imitation'].items()
                 if isinstance(entry, Mapping)}
    lines.append(f'\n{split}: agreement with the hindsight oracle\'s actions, free-running '
                 f'({report["imitation"]["bars"]} bars), balanced accuracy '
                 f'{agreement.pop("strategist"):.3f} vs ' + ', '.join(
                     f'{name.replace("_", " ")} {value:.3f}' for name, value in agreement.items()))
    behaviour = report.get('imitation_behaviour')
    if behaviour:
      lines.append(f'  agreement with the best causal behaviour ({behaviour["behaviour"]}), '
                   f'free-running: balanced accuracy {behaviour["strategist"]["balanced_accuracy"]:.3f}'
                   f' vs always hold {behaviour["always_hold"]["balanced_accuracy"]:.3f}, repeat '
                   f'previous action {behaviour["repeat_previous_action"]["balanced_accuracy"]:.3f}')
    forced = report.get('imitation_teacher_forced')
    if forced:
      lines.append(f'  teacher-forced balanced accuracy {forced["strategist"]["balanced_accuracy"]:.3f}'
                   f' ({forced["label"]})')
    lines.append(f'  {"policy":<28} {"symbol":<9} {"return":>9} {"Sharpe":>8} {"max DD":>8} '
                 f'{"win rate":>9} {"PF":>7} {"trades":>7}')
    rows = [('strategist', report['strategist']), ('buy and hold', report['buy_and_hold'])]
    rows += [(f'{name}{" (best)" if name == report["best_heuristic"]["name"] else ""}', stats)
             for name, stats in report['heuristics'].items()]
    for name, per_symbol in rows:
      for symbol, stats in per_symbol.items():
        lines.append(f'  {name:<28} {symbol:<9} {percent(stats["total_return"]):>9} '
                     f'{number(stats["sharpe"]):>8} {percent(stats["max_drawdown"]):>8} '
                     f'{percent(stats["win_rate"]):>9} {number(stats["profit_factor"]):>7} '
                     f'{stats["trades"]:>7}')
    if 'versus_best_baseline' in report:
      lines.append('  ' + intervals.format_difference('Strategist', report['versus_best_baseline']))
    curve = report['conditioning_curve']
    lines.append('  conditioning target → realised (per episode): ' + ', '.join(
        f'{p["target_return"]:.3%} → {percent(p["mean_realised_return"])}' for p in curve['points'])
        + _spearman_text(curve))
    lines.append(f'  rollout: {report["rollout"]["bars_per_second"]:.0f} bars/s; plots: '
                 f'{", ".join(report["plots"].values())}')
  lines.append(f'results: {results["results_json"]}')
  return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------
# A saved run: loaded back, scored on any store, its signals on any split.


def load(workdir: str | pathlib.Path
         ) -> tuple[StrategistTask, Any, ml_collections.ConfigDict]:
  """The Strategist of a finished (or running) ``experiments.strategist`` run:
  ``(task, params, config)``, the task holding the run's normaliser and conditioning target."""

  def build(config: ml_collections.ConfigDict, record: Mapping[str, Any]) -> StrategistTask:
    statistics = runner.require_statistics(
        record, MODEL, workdir, 'the checkpoint record has no normaliser or trajectory statistics',
        'pass the workdir of an experiments.strategist run')
    return StrategistTask.from_config(
        config, normalizer=windows.Normalizer.from_dict(record['normalizer']),
        target_return=target_from_quantiles(config, statistics['initial_return_quantiles']),
        reference_behaviour=statistics.get('reference_behaviour'))

  return runner.load_run(workdir, build, example_batch)


def evaluate_saved(task: StrategistTask, params: Any, config: ml_collections.ConfigDict,
                   record: Mapping[str, Any], data_config: ml_collections.ConfigDict,
                   workdir: str | pathlib.Path, *, batch_size: int = 1024,
                   max_windows: int = 0) -> dict[str, Any]:
  """The saved run's :func:`evaluate` on the ``evaluation`` split of ``data_config`` (trajectories
  built with the run's normaliser; the conditioning targets from its training returns)."""
  del batch_size, max_windows  # the rollout reads every bar of the split
  data, _ = make_data(ml_collections.ConfigDict(dict(config.to_dict(),
                                                     data=data_config.to_dict())),
                      normalizer=task.normalizer)
  return evaluate(task, params, data['evaluation'],
                  runner.training_statistics(record, MODEL)['initial_return_quantiles'], workdir)


def saved_signals(task: StrategistTask, params: Any, config: ml_collections.ConfigDict,
                  record: Mapping[str, Any], data_config: ml_collections.ConfigDict, split: str,
                  *, batch_size: int = 1024, progress: bool = True) -> pd.DataFrame:
  """The saved run's :func:`bar_signals` over ``split`` of ``data_config``: every bar whose own
  features are usable (one-bar windows), whatever follows it."""
  del config, record, batch_size  # the rollout runs its own batches of symbols
  frames = data_lib.load_frames(data_config)
  arrays = windows.WindowArrays.from_frames(frames, pathlib.Path(data_config.store_dir) /
                                            'windows_cache')
  splits = windows.splits_from_config(data_config.splits)
  bars = windows.split_anchors(arrays, windows.WindowSpec(1, 0), splits)
  source = windows.WindowSource(arrays, task.normalizer.spec, runner.split_of(bars, split),
                                task.normalizer, split)
  return bar_signals(task, params, source, progress=progress)
