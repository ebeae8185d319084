"""What a finished sweep leaves: the trials table, ``sweep.json``, the history and importance PNGs,
the best trial as a rerunnable config, its registration in the model store, its test score beside
its validation score, and (for a Sharpe objective) its Deflated Sharpe Ratio."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping

import ml_collections

from quantum_alpha_jax import artifacts
from quantum_alpha_jax.sweep import deflated_sharpe
from quantum_alpha_jax.sweep import space as space_lib
from quantum_alpha_jax.sweep import study as study_lib

TABLE_HEADER = f'{"trial":>5} {"state":<9} {"value":>12} {"step":>6} {"seconds":>8}  params'


def trial_row(trial: Any) -> str:
  """One line of the live trials table."""
  value = trial.value if trial.value is not None else (
      trial.intermediate_values[trial.last_step] if trial.last_step is not None else None)
  seconds = trial.duration.total_seconds() if trial.duration else float('nan')
  params = ', '.join(f'{key}={value:.4g}' if isinstance(value, float) else f'{key}={value}'
                     for key, value in trial.params.items())
  runs = trial.user_attrs.get('runs_trial', trial.number)
  name = f'{trial.number}' + (f'→{runs}' if runs != trial.number else '')
  shown = f'{value:.6g}' if value is not None else '—'
  return (f'{name:>5} {trial.state.name:<9} {shown:>12} {trial.last_step or 0:>6} '
          f'{seconds:>8.1f}  {params}')


def print_trial(study: Any, trial: Any) -> None:
  """An Optuna callback: prints the finished trial's row (the header before the first)."""
  if not getattr(print_trial, 'header_printed', False):
    print(TABLE_HEADER, flush=True)
    print_trial.header_printed = True
  print(trial_row(trial), flush=True)


def _plots(study: Any, workdir: pathlib.Path) -> tuple[dict[str, str], dict[str, float]]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import optuna  # pylint: disable=g-import-not-at-top

  done = [t for t in study.get_trials(deepcopy=False) if t.state.name == 'COMPLETE']
  paths = {}
  figure, (axis, curves) = plt.subplots(1, 2, figsize=(11, 4))
  values = [t.value for t in done]
  best = (min if study.direction.name == 'MINIMIZE' else max)
  axis.plot([t.number for t in done], values, 'o', label='complete trial')
  axis.plot([t.number for t in done], [best(values[:i + 1]) for i in range(len(values))], '-',
            label='best so far')
  axis.set_xlabel('trial')
  axis.set_ylabel(study.user_attrs.get('objective', 'objective'))
  axis.set_title('Optimisation history (objective)')
  axis.legend()
  # The values reported to the pruner (the training loop's validation metric, in the study's
  # direction): another quantity than the objective, so on its own axes.
  for t in study.get_trials(deepcopy=False):
    if t.intermediate_values:
      steps = sorted(t.intermediate_values)
      curves.plot(steps, [t.intermediate_values[k] for k in steps],
                  '--x' if t.state.name == 'PRUNED' else '-o', markersize=4,
                  label=f'{t.number} {t.state.name.lower()}')
  curves.set_xlabel('step')
  curves.set_ylabel('value reported to the pruner')
  curves.set_title('Intermediate values (dashed: pruned)')
  curves.legend(fontsize=7)
  figure.tight_layout()
  paths['history'] = str(workdir / 'optimization_history.png')
  figure.savefig(paths['history'], dpi=100)
  plt.close(figure)
  importances = {}
  if len(done) >= 2:
    try:
      importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError):  # e.g. a parameter that never varied
      importances = {}
  figure, axis = plt.subplots(figsize=(7, 1.2 + 0.5 * max(1, len(importances))))
  names = list(importances)[::-1]
  axis.barh(names, [importances[name] for name in names])
  axis.set_xlabel('importance (fANOVA over complete trials)')
  axis.set_title('Parameter importances' + ('' if importances else ': too few complete trials'))
  figure.tight_layout()
  paths['importances'] = str(workdir / 'param_importances.png')
  figure.savefig(paths['importances'], dpi=100)
  plt.close(figure)
  return paths, {key: float(value) for key, value in importances.items()}


def _command(config: ml_collections.ConfigDict, best_file: pathlib.Path,
             workdir: pathlib.Path) -> str:
  return (f'python -m experiments.{config.model} --config={best_file} '
          f'--workdir={workdir / "best_rerun"}')


def write_best_config(config: ml_collections.ConfigDict, values: Mapping[str, Any],
                      workdir: pathlib.Path) -> pathlib.Path:
  """``best_config.py``: the model's config with the sweep's fixed overrides and the best trial's
  values, for ``experiments.<model> --config=<workdir>/best_config.py``."""
  overrides = {**dict(config.get('overrides', {}) or {}), **dict(values)}
  module = config.get('config_module') or f'configs.{config.model}'
  path = workdir / 'best_config.py'
  path.write_text(
      f'"""The best trial of study {config.study_name!r} ({module}:{config.model_config} with these '
      'overrides). Written by experiments.sweep."""\n\n'
      'import importlib\n\n'
      'from quantum_alpha_jax.sweep import space\n\n'
      f'OVERRIDES = {json.dumps(overrides, indent=1, default=list)}\n\n\n'
      "def get_config(arg: str = ''):\n"
      '  del arg\n'
      f'  base = importlib.import_module({module!r}).get_config({config.model_config!r})\n'
      '  return space.apply(base, OVERRIDES)\n')
  return path


def test_report(config: ml_collections.ConfigDict, trial_dir: pathlib.Path,
                out: pathlib.Path) -> dict[str, Any]:
  """The best trial's best checkpoint evaluated on its run's test split, once: the task module's
  ``evaluate_test(workdir, out)`` if it has one, else ``experiments.evaluate``'s library."""
  module = study_lib.task_module(config.model)
  if hasattr(module, 'evaluate_test'):
    return module.evaluate_test(trial_dir, out)
  from quantum_alpha_jax.tasks import saved  # pylint: disable=g-import-not-at-top
  evaluation = ml_collections.ConfigDict({
      'model': config.model, 'checkpoint': str(trial_dir), 'data': '', 'start': '', 'end': '',
      'allow_validation': False, 'max_windows': int(config.test_max_windows),
      'batch_size': 256})
  return saved.run(evaluation, out)['evaluation']


def _sharpe_inputs(config: ml_collections.ConfigDict, report: Mapping[str, Any]
                   ) -> dict[str, Any]:
  """Bars per year, observations, skewness and kurtosis beside the objective's Sharpe entry in a
  validation report; the config's values (and normal moments) where the report has none."""
  parent_key = config.objective.split('.', 1)[1].rpartition('.')[0]
  try:
    parent = space_lib.lookup(report, parent_key) if parent_key else report
  except KeyError:
    parent = {}
  get = lambda *names: next((parent[n] for n in names if isinstance(parent, Mapping)
                             and parent.get(n) is not None), None)
  moments_from = 'report' if get('skewness') is not None else (
      'assumed normal: the report holds no skewness or kurtosis')
  return {'periods_per_year': float(get('bars_per_year') or config.periods_per_year),
          'observations': int(get('bars', 'windows', 'count') or config.observations or 0),
          'skewness': float(get('skewness') or 0.0), 'kurtosis': float(get('kurtosis') or 3.0),
          'moments': moments_from}


def finalise(config: ml_collections.ConfigDict, study: Any, workdir: str | pathlib.Path,
             *, evaluate_test: bool = True, register: bool = True) -> dict[str, Any]:
  """Writes ``sweep.json``, the PNGs and ``best_config.py``; scores the best trial on test once
  (kept in the study, so a rerun does not score it again) and registers it in the model store."""
  workdir = pathlib.Path(workdir)
  trials = study.get_trials(deepcopy=False)
  rows = [{'number': t.number, 'state': t.state.name, 'value': t.value, 'params': t.params,
           'runs_trial': t.user_attrs.get('runs_trial', t.number),
           'workdir': t.user_attrs.get('workdir'), 'last_step': t.last_step,
           'intermediate_values': {str(k): v for k, v in t.intermediate_values.items()},
           'seconds': t.duration.total_seconds() if t.duration else None} for t in trials]
  best = study.best_trial
  best_dir = pathlib.Path(best.user_attrs['workdir'])
  best_file = write_best_config(config, best.params, workdir)
  plots, importances = _plots(study, workdir)
  validation = json.loads((best_dir / 'results.json').read_text())
  summary: dict[str, Any] = {
      'study': config.study_name, 'storage': study_lib.masked(study_lib.storage_url(config, workdir)),
      'model': config.model, 'model_config': config.model_config,
      'objective': config.objective, 'direction': config.direction,
      'space': json.loads(study.user_attrs['space']), 'counts': study_lib.counts(study),
      'trials': rows, 'importances': importances, 'plots': plots,
      'best': {'number': best.number, 'runs_trial': best.user_attrs.get('runs_trial', best.number),
               'validation': best.value, 'params': best.params, 'workdir': str(best_dir),
               'config_file': str(best_file), 'command': _command(config, best_file, workdir)}}
  key = f'test_of_trial_{best.number}'
  if evaluate_test:
    if key not in study.user_attrs:
      report = test_report(config, best_dir, workdir / 'best_test')
      metric = config.objective.split('.', 1)[1]
      try:
        value = float(space_lib.lookup(report, metric))
      except (KeyError, TypeError):
        value = None
      study.set_user_attr(key, {'test': value, 'directory': str(workdir / 'best_test')})
    summary['best']['test'] = study.user_attrs[key]['test']
    summary['best']['test_directory'] = study.user_attrs[key]['directory']
  if 'sharpe' in config.objective.lower():
    complete = [t.value for t in trials if t.state.name == 'COMPLETE' and t.value is not None]
    inputs = _sharpe_inputs(config, space_lib.lookup(validation, 'validation'))
    scale = lambda value: deflated_sharpe.per_period(value, inputs['periods_per_year'])
    dsr = deflated_sharpe.deflated_sharpe(
        scale(best.value), [scale(v) for v in complete], inputs['observations'],
        inputs['skewness'], inputs['kurtosis'],
        trials=len([t for t in trials if t.state.name in study_lib.FINISHED]))
    summary['best']['deflated_sharpe'] = {**dsr, 'raw_sharpe_annualised': best.value,
                                          'moments': inputs['moments'],
                                          'periods_per_year': inputs['periods_per_year']}
  if register:
    from quantum_alpha_jax.ship import store as model_store  # pylint: disable=g-import-not-at-top
    store = model_store.ModelStore(config.registry_dir or workdir / 'models')
    name = config.registry_name or f'{pathlib.Path(str(config.model)).name.split(".")[-1]}-sweep'
    registered = study.user_attrs.get(f'registered_trial_{best.number}')
    if registered is None:
      version = store.save(name, best_dir, extra={
          'study': config.study_name, 'trial': best.number, 'objective': config.objective,
          'validation': best.value, 'test': summary['best'].get('test')})
      registered = {'name': name, 'version': version, 'root': str(store.root)}
      study.set_user_attr(f'registered_trial_{best.number}', registered)
    summary['best']['registered'] = registered
  summary['sweep_json'] = str(workdir / 'sweep.json')
  artifacts.write_json(workdir / 'sweep.json', artifacts.json_ready(summary))
  return summary


def format_summary(summary: Mapping[str, Any]) -> str:
  """A few lines for people: counts, the best trial's validation and test scores, the DSR."""
  best = summary['best']
  lines = [f'study {summary["study"]} ({summary["storage"]}): {summary["counts"]}',
           f'best trial {best["number"]} ({best["workdir"]}): {summary["objective"]} '
           f'{best["validation"]:.6g} on validation, '
           + (f'{best["test"]:.6g} on test (scored once, after the search)'
              if best.get('test') is not None else 'test not scored'),
           f'  params {best["params"]}']
  if 'deflated_sharpe' in best:
    d = best['deflated_sharpe']
    lines.append(f'  Sharpe {d["raw_sharpe_annualised"]:.4g} (annualised); Deflated Sharpe Ratio '
                 f'{d["deflated_sharpe_ratio"]:.4f} over {d["trials"]} trials (SR0 '
                 f'{d["expected_maximum_sharpe"]:.4g} per bar; moments {d["moments"]})')
  if 'registered' in best:
    r = best['registered']
    lines.append(f'  registered as {r["name"]} v{r["version"]} in {r["root"]}')
  lines.append(f'  rerun: {best["command"]}')
  lines.append(f'  plots: {", ".join(summary["plots"].values())}; results: {summary["sweep_json"]}')
  return '\n'.join(lines)
