"""Sweeps: the space and its bad input, resume refusing another space, the Deflated Sharpe Ratio,
a real study with pruning end to end, resume after kill -9, and two workers on one PostgreSQL
study with one of them killed mid-trial."""

from __future__ import annotations

import glob
import json
import math
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import ml_collections
import numpy as np
import pytest
from scipy import stats

from configs import oracle as oracle_config
from quantum_alpha_jax.errors import ConfigError
from quantum_alpha_jax.sweep import deflated_sharpe
from quantum_alpha_jax.sweep import report
from quantum_alpha_jax.sweep import space
from quantum_alpha_jax.sweep import study as study_lib
from tests import sweep_config

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
optuna = pytest.importorskip('optuna')


def _space(entries):
  return ml_collections.ConfigDict(entries, allow_dotted_keys=True)


def _config(tmp_path=None, **changes):
  config = sweep_config.get_config()
  config.update(changes)
  return config


# ----------------------------------------------------------------------------------------------
# The space and bad input.


def test_space_parses_every_kind_and_applies_overrides_with_the_config_types():
  base = oracle_config.get_config('quick')
  parsed = space.parse({'train.optimizer.learning_rate': ('log', 1e-4, 1e-2),
                        'model.hidden_size': ('choice', (8, 16)),
                        'model.dropout_rate': ('float', 0.0, 0.3, 0.1),
                        'model.lstm_layers': ('int', 1, 3)}, base)
  assert parsed['model.hidden_size'] == ('choice', (8, 16))
  trial = optuna.trial.FixedTrial({'train.optimizer.learning_rate': 2e-3, 'model.hidden_size': 8,
                                   'model.dropout_rate': 0.2, 'model.lstm_layers': 2})
  values = space.suggest(trial, parsed)
  config = space.apply(base, values)
  assert config.train.optimizer.learning_rate == 2e-3 and config.model.hidden_size == 8
  assert config.model.lstm_layers == 2 and base.model.hidden_size == 16  # the base is untouched
  assert json.loads(space.canonical(parsed))['model.lstm_layers'] == ['int', 1, 3]


@pytest.mark.parametrize('entries, words', [
    ({'model.hiden_size': ('int', 8, 32)}, ["'model.hiden_size'", 'did you mean model.hidden_size']),
    ({'model.hidden_size': ('int', 32, 8)}, ["'model.hidden_size'", 'empty range']),
    ({'train.optimizer.learning_rate': ('log', 0.0, 1e-2)}, ['low > 0']),
    ({'model.hidden_size': ('choice', ())}, ['no values to choose from']),
    ({'model.hidden_size': ('uniform', 1, 2)}, ['unknown kind']),
])
def test_bad_space_is_one_line_naming_the_key_and_the_fix(entries, words):
  with pytest.raises(ConfigError) as error:
    space.parse(entries, oracle_config.get_config('quick'))
  message = str(error.value)
  assert '\n' not in message and ' — ' in message
  for word in words:
    assert word in message


def test_test_split_objective_and_unreachable_storage_are_refused_in_one_line(tmp_path):
  with pytest.raises(ConfigError, match=r"scores the test split.*validation\.pinball_loss"):
    study_lib.check_objective(_config(objective='test.loss'))
  url = 'postgresql+psycopg2://sweeper:secret@127.0.0.1:1/nowhere'
  storage_config = _config(storage=url)
  with pytest.raises(ConfigError) as error:
    storage = study_lib.make_storage(storage_config, url)
    study_lib.open_study(storage_config, storage, {'x': ('int', 0, 1)}, 0)
  message = str(error.value)
  assert '127.0.0.1:1/nowhere' in message and 'cannot be reached' in message
  assert 'secret' not in message and '\n' not in message


def test_a_study_created_with_another_space_refuses_to_resume(tmp_path):
  config = _config()
  url = study_lib.storage_url(config, tmp_path)
  storage = study_lib.make_storage(config, url)
  study_lib.open_study(config, storage, {'train.optimizer.learning_rate': ('log', 1e-5, 1e-1)}, 0)
  study_lib.open_study(config, storage, {'train.optimizer.learning_rate': ('log', 1e-5, 1e-1)}, 0)
  with pytest.raises(ConfigError) as error:
    study_lib.open_study(config, storage, {'train.optimizer.learning_rate': ('log', 1e-4, 1e-1)},
                         0)
  assert 'another definition' in str(error.value) and '--config.study_name=NEW' in str(error.value)


# ----------------------------------------------------------------------------------------------
# The Deflated Sharpe Ratio.


def test_deflated_sharpe_matches_the_papers_example_by_hand():
  # Bailey & López de Prado (2014), section 4: N = 100 trials, annualised variance of the trials'
  # Sharpe ratios 1/2, best annualised SR 2.5 over 5 years of daily returns (T = 1250), skewness
  # -3, kurtosis 10. The paper finds SR₀ ≈ 0.1132 (per day) and DSR ≈ 0.9004.
  gamma = 0.5772156649015329
  variance = 0.5 / 250
  by_hand_benchmark = math.sqrt(variance) * ((1 - gamma) * stats.norm.ppf(1 - 1 / 100)
                                             + gamma * stats.norm.ppf(1 - 1 / (100 * math.e)))
  sharpe = 2.5 / math.sqrt(250)
  by_hand = stats.norm.cdf((sharpe - by_hand_benchmark) * math.sqrt(1249)
                           / math.sqrt(1 + 3 * sharpe + 9 / 4 * sharpe ** 2))
  result = deflated_sharpe.deflated_sharpe(sharpe, [], 1250, -3.0, 10.0, trials=100,
                                           variance=variance)
  assert result['expected_maximum_sharpe'] == pytest.approx(0.1132, abs=5e-5)
  assert result['expected_maximum_sharpe'] == pytest.approx(by_hand_benchmark, rel=1e-12)
  assert result['deflated_sharpe_ratio'] == pytest.approx(0.9004, abs=5e-4)
  assert result['deflated_sharpe_ratio'] == pytest.approx(by_hand, rel=1e-12)
  # More trials, same best Sharpe: a higher bar, a lower DSR.
  more = deflated_sharpe.deflated_sharpe(sharpe, [], 1250, -3.0, 10.0, trials=1000,
                                         variance=variance)
  assert more['deflated_sharpe_ratio'] < result['deflated_sharpe_ratio'] - 0.1


def test_expected_maximum_sharpe_against_simulated_skill_less_trials():
  # SR₀ is the expected maximum of N skill-less Sharpe estimates: check it by simulation, and the
  # variance used is the sample variance of the trials' Sharpe ratios.
  rng = np.random.default_rng(0)
  trials, observations = 100, 250
  returns = rng.normal(size=(1000, trials, observations))
  sharpes = returns.mean(-1) / returns.std(-1, ddof=1)
  simulated = sharpes.max(-1).mean()
  predicted = deflated_sharpe.expected_maximum_sharpe(sharpes.var(ddof=1), trials)
  assert predicted == pytest.approx(simulated, rel=0.03)
  result = deflated_sharpe.deflated_sharpe(sharpes[0].max(), list(sharpes[0]), observations, 0, 3)
  assert result['sharpe_variance'] == pytest.approx(np.var(sharpes[0], ddof=1))
  assert result['trials'] == trials


# ----------------------------------------------------------------------------------------------
# Real studies.


def test_a_real_study_prunes_finishes_and_scores_the_best_trial_on_test_once(tmp_path):
  config = _config(num_trials=4, pruner='median', pruner_startup_trials=1)
  lines = []
  result = study_lib.run_worker(config, tmp_path,
                                on_trial=lambda s, t: lines.append(report.trial_row(t)))
  trials = result.get_trials()
  states = [t.state.name for t in trials]
  assert states.count('COMPLETE') + states.count('PRUNED') == 4 and 'PRUNED' in states, states
  for trial in trials:
    if trial.state.name == 'PRUNED':  # stopped at an evaluation before the last step
      assert trial.last_step < 30 and not (pathlib.Path(trial.user_attrs['workdir'])
                                           / 'results.json').exists()
    else:
      written = json.loads((pathlib.Path(trial.user_attrs['workdir']) / 'results.json').read_text())
      assert trial.value == written['validation']['loss'] and 'test' not in written
  assert len(lines) == 4
  summary = report.finalise(config, result, tmp_path)
  best = summary['best']
  assert best['validation'] == min(t.value for t in trials if t.state.name == 'COMPLETE')
  assert best['test'] is not None and best['test'] != best['validation']
  saved = json.loads((tmp_path / 'sweep.json').read_text())
  assert saved['best']['test'] == best['test'] and len(saved['trials']) == 4
  for name in ('optimization_history.png', 'param_importances.png', 'best_config.py'):
    assert (tmp_path / name).stat().st_size > 0
  # The best config file reruns the best trial's values.
  rerun = {}
  exec((tmp_path / 'best_config.py').read_text(), rerun)  # pylint: disable=exec-used
  assert rerun['get_config']().train.optimizer.learning_rate == best['params'][
      'train.optimizer.learning_rate']
  registered = best['registered']
  from quantum_alpha_jax.ship import store as model_store  # pylint: disable=g-import-not-at-top
  metadata = model_store.ModelStore(registered['root']).metadata(registered['name'],
                                                              registered['version'])
  assert metadata['extra']['study'] == 'sweep-task' and metadata['extra']['trial'] == best['number']
  # Finalising again neither scores test again nor registers a second version.
  scored = (tmp_path / 'best_test' / 'results.json').stat().st_mtime_ns
  again = report.finalise(config, result, tmp_path)
  assert again['best']['registered'] == registered and again['best']['test'] == best['test']
  assert (tmp_path / 'best_test' / 'results.json').stat().st_mtime_ns == scored
  assert 'Deflated' not in report.format_summary(summary)


def _sweep(workdir, *extra, environment=None, timeout=240):
  return subprocess.Popen(
      [sys.executable, '-m', 'experiments.sweep', '--config=tests/sweep_config.py',
       f'--workdir={workdir}', *extra], cwd=REPOSITORY, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, JAX_PLATFORMS='cpu', QUANTUM_ALPHA_NO_REEXEC='1', **(environment or {})))


def _check_no_trial_lost_or_run_twice(trials, num_trials, killed_dir):
  finished = [t for t in trials if t.state.name in ('COMPLETE', 'PRUNED')]
  failed = [t for t in trials if t.state.name == 'FAIL']
  runs = [t.user_attrs['runs_trial'] for t in finished]
  assert len(runs) == len(set(runs)), runs  # no trial ran twice
  assert len(finished) >= num_trials and len(failed) == 1, [t.state.name for t in trials]
  assert failed[0].user_attrs['workdir'] == str(killed_dir)
  retried = [t for t in finished if t.user_attrs['runs_trial'] == failed[0].number]
  assert len(retried) == 1 and retried[0].params == failed[0].params  # not lost: resumed
  # The killed run resumed from its step-10 checkpoint: each evaluation is logged once.
  lines = [json.loads(line) for line in (killed_dir / 'metrics.jsonl').read_text().splitlines()]
  evaluations = [line['step'] for line in lines if line['split'] == 'validation']
  assert evaluations == [10, 20, 30], evaluations


def test_a_sweep_killed_mid_trial_resumes_without_losing_or_repeating_a_trial(tmp_path):
  killed = _sweep(tmp_path, '--config.finalise=False',
                  environment={'SWEEP_TASK_KILL': 'trial_1:15'})
  killed.communicate(timeout=240)
  assert killed.returncode == -9
  resumed = _sweep(tmp_path)
  out, err = resumed.communicate(timeout=240)
  assert resumed.returncode == 0, err[-3000:]
  assert 'Resumed from' in err and 'at step 10' in err
  assert 'best trial' in out and 'on test (scored once' in out
  storage = study_lib.make_storage(_config(), study_lib.storage_url(_config(), tmp_path))
  trials = optuna.load_study(study_name='sweep-task', storage=storage).get_trials()
  _check_no_trial_lost_or_run_twice(trials, 3, tmp_path / 'trial_1')


# ----------------------------------------------------------------------------------------------
# Two workers on one PostgreSQL study.


def _postgres_bin():
  found = sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb'))
  return pathlib.Path(found[-1]).parent if found else None


@pytest.fixture
def postgres_url():
  """A throwaway PostgreSQL cluster on a Unix socket; its SQLAlchemy URL."""
  binaries = _postgres_bin()
  if binaries is None:
    if os.environ.get('CI'):
      pytest.fail('PostgreSQL is not installed (apt-get install postgresql): .ci/run installs it')
    pytest.skip('PostgreSQL is not installed (apt-get install -y postgresql); CI runs this test')
  pytest.importorskip('psycopg2')
  root = pathlib.Path(tempfile.mkdtemp(prefix='sweep-pg-', dir='/tmp'))
  root.chmod(0o777)
  run_as = ['runuser', '-u', 'nobody', '--'] if os.geteuid() == 0 else []
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
  data = root / 'data'
  subprocess.run(run_as + [str(binaries / 'initdb'), '-D', str(data), '-A', 'trust', '-U',
                           'postgres', '--no-sync'], check=True, capture_output=True)
  options = f"-k {root} -c listen_addresses='' -p {port} -c fsync=off"
  subprocess.run(run_as + [str(binaries / 'pg_ctl'), '-D', str(data), '-o', options, '-l',
                           str(root / 'log'), '-w', 'start'], check=True, capture_output=True)
  try:
    yield f'postgresql+psycopg2://postgres@/postgres?host={root}&port={port}'
  finally:
    subprocess.run(run_as + [str(binaries / 'pg_ctl'), '-D', str(data), '-m', 'immediate',
                             'stop'], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgres_study_and_one_is_killed_mid_trial(tmp_path, postgres_url):
  num_trials = 4
  arguments = [f'--config.storage={postgres_url}', f'--config.num_trials={num_trials}',
               '--config.finalise=False']
  environment = {'SWEEP_TASK_KILL': 'trial_1:15', 'SWEEP_TASK_STEP_SECONDS': '0.05'}
  workers = [_sweep(tmp_path, *arguments, environment=environment) for _ in range(2)]
  outputs = [worker.communicate(timeout=240) for worker in workers]
  codes = sorted(worker.returncode for worker in workers)
  assert codes == [-9, 0], (codes, [err[-2000:] for _, err in outputs])
  storage = study_lib.make_storage(_config(), postgres_url)
  trials = optuna.load_study(study_name='sweep-task', storage=storage).get_trials()
  _check_no_trial_lost_or_run_twice(trials, num_trials, tmp_path / 'trial_1')
  survivor = outputs[[w.returncode for w in workers].index(0)]
  assert 'Resumed from' in survivor[1]


def test_a_sharpe_objective_reports_the_deflated_sharpe_beside_the_raw_figure(tmp_path):
  config = _config(objective='validation.strategist.BTCUSDT.sharpe', direction='maximize')
  study = optuna.create_study(direction='maximize', study_name=config.study_name)
  study.set_user_attr('space', '{}')
  sharpes = [0.5, 1.5, -0.2, 2.4, 0.9]
  for number, sharpe in enumerate(sharpes):
    workdir = tmp_path / f'trial_{number}'
    workdir.mkdir()
    stats = {'sharpe': sharpe, 'bars': 5001, 'bars_per_year': 105120.0, 'skewness': -0.5,
             'kurtosis': 6.0}
    (workdir / 'results.json').write_text(json.dumps({'validation': {
        'strategist': {'BTCUSDT': stats}}}))
    study.add_trial(optuna.create_trial(
        value=sharpe, params={'x': float(number)},
        distributions={'x': optuna.distributions.FloatDistribution(0, 10)},
        user_attrs={'workdir': str(workdir), 'runs_trial': number}))
  summary = report.finalise(config, study, tmp_path, evaluate_test=False, register=False)
  dsr = summary['best']['deflated_sharpe']
  per_bar = np.asarray(sharpes) / math.sqrt(105120.0)
  expected = deflated_sharpe.deflated_sharpe(per_bar.max(), list(per_bar), 5001, -0.5, 6.0)
  assert dsr['raw_sharpe_annualised'] == 2.4 and dsr['moments'] == 'report'
  assert dsr['deflated_sharpe_ratio'] == pytest.approx(expected['deflated_sharpe_ratio'])
  assert dsr['trials'] == 5 and 0 < dsr['deflated_sharpe_ratio'] < 1
  assert 'Deflated Sharpe Ratio' in report.format_summary(summary)


def test_trading_stats_carry_the_return_moments_the_deflated_sharpe_reads():
  from quantum_alpha_jax.evaluate import trading  # pylint: disable=g-import-not-at-top
  returns = np.random.default_rng(1).standard_t(4, size=400) * 0.01
  equity = 100 * np.cumprod(np.concatenate([[1.0], 1 + returns]))
  result = trading.trading_stats(equity, np.ones_like(equity), bars_per_year=105120)
  assert result['skewness'] == pytest.approx(stats.skew(returns), rel=1e-9)
  assert result['kurtosis'] == pytest.approx(stats.kurtosis(returns, fisher=False), rel=1e-9)
  flat = trading.trading_stats(np.full(10, 100.0), np.zeros(10))
  assert flat['skewness'] is None and flat['kurtosis'] is None
