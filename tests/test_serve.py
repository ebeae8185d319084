"""The decision service (``quantum_alpha_jax/serve``): streaming equals batch on the real 2023-H2
test split, no look-ahead, bad input refused with the state untouched, exports that do not match
refused, and the JSONL replay/follow loop.

One module fixture trains small models (quick configs, a few steps: equality is the point, not
skill) on real BTC/ETH data from 2023-05-20, exports them to ONNX and computes the batch backtest's
per-bar signals and ensemble targets over the test split (2023-07-01 onwards, up to
``SERVE_TEST_END``, default 2023-07-04; set it to 2024-01-01 for the whole half-year). The stream
replays the raw klines from 2023-05-20 (the store's first bar, so the features are bit-identical),
deciding from the Strategist's first bar of the split.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest

from configs import backtest as backtest_config
from configs import data as data_config
from configs import export as export_config
from configs import guardian as guardian_config
from configs import oracle as oracle_config
from configs import strategist as strategist_config
from quantum_alpha_jax.backtest import ensemble
from quantum_alpha_jax.backtest import experiment
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.errors import SchemaError
from tests.conftest import SHARED_DATA
from tests.conftest import require_shared_data

DATA_START = '2023-05-20'
SPLIT_START = '2023-07-01'
END = os.environ.get('SERVE_TEST_END', '2023-07-04')
FILES = {'BTCUSDT': 'binance-spot-5m/BTC_USDT-5m.parquet',
         'ETHUSDT': 'binance-spot-5m/ETH_USDT-5m.parquet'}
MODELS = ('oracle', 'guardian', 'strategist')
SIGNALS = ('p_up', 'uncertainty', 'regime', 'risk_level', 'action', 'size', 'target_position')
TIMINGS = ('latency_ms', 'model_ms')
# ONNX (onnxruntime) against the batch path's jitted JAX, float32. Over the whole of 2023-H2
# (SERVE_TEST_END=2024-01-01, 105,982 bars) P(up) differed by more than 1e-5 on 3 bars, by at most
# 3.1e-5 (the piecewise-linear CDF over sorted quantiles amplifies a near-tie); never in a target.
P_UP_TOLERANCE = 1e-4
# One float32 rounding of a position in [0, 1]: the Strategist's size head at batch 1 (the service,
# one symbol) and at batch 2 (the batch rollout, both symbols in one scan) compile to different
# matmuls; the batch path itself moves by as much between its own batch sizes 1 and 2.
POSITION_TOLERANCE = 2.5e-7
# The Strategist's own size head and target position (before the ensemble's scaling): over the whole
# of 2023-H2, 2 of 105,982 bars differed by 2.98e-7 (5 float32 ulps at 0.64), never in a target.
SIZE_TOLERANCE = 5e-7


def _data(root: pathlib.Path):
  config = data_config.get_config('real')
  for symbol, name in FILES.items():
    config.inputs[symbol] = str(SHARED_DATA / name)
  config.update(start=DATA_START, end=END, store_dir=str(root / 'store'))
  config.splits.update(train=(DATA_START, '2023-06-20'), validation=('2023-06-20', SPLIT_START))
  return config


def _train(name: str, config, workdir: pathlib.Path, steps: int = 4) -> None:
  config.train.update(num_steps=steps, eval_every_steps=steps, max_eval_batches=1,
                      log_every_steps=steps)
  config.evaluation.splits = ()
  importlib.import_module(f'quantum_alpha_jax.tasks.{name}').run(config, workdir)


def raw_klines(symbol: str, end: str = END) -> pd.DataFrame:
  """The file's klines from DATA_START to ``end`` as the store reads them (not regularised)."""
  frame = pd.read_parquet(SHARED_DATA / FILES[symbol])
  frame = frame.rename(columns={'date': schema.TIMESTAMP})
  times = pd.to_datetime(frame[schema.TIMESTAMP], utc=True)
  keep = (times >= pd.Timestamp(DATA_START, tz='UTC')) & (times < pd.Timestamp(end, tz='UTC'))
  return frame.loc[keep, [schema.TIMESTAMP, *schema.OHLCV]].reset_index(drop=True)


@dataclasses.dataclass
class RealRun:
  root: pathlib.Path
  export: pathlib.Path
  joined: pd.DataFrame
  targets: dict[str, np.ndarray]
  start: pd.Timestamp
  ensemble_config: object


@pytest.fixture(scope='module')
def real_run(tmp_path_factory) -> RealRun:
  require_shared_data()
  pytest.importorskip('jax2onnx')
  pytest.importorskip('onnxruntime')
  from quantum_alpha_jax.ship.export import pipeline  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import data as data_lib  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('serve')
  data = _data(root)
  for name, module in (('oracle', oracle_config), ('guardian', guardian_config)):
    config = module.get_config('quick')
    config.data = data
    _train(name, config, root / name)
  config = strategist_config.get_config('quick')
  config.data = data
  # Hold is most of the behaviour data: weigh it down so the barely trained model trades.
  config.action_weights = (0.02, 1.0, 1.0)
  _train('strategist', config, root / 'strategist', steps=6)
  export = export_config.get_config('quick')
  export.models.update(oracle=str(root / 'oracle'), lstm='', guardian=str(root / 'guardian'),
                       strategist=str(root / 'strategist'),
                       strategist_step=str(root / 'strategist'))  # the cached decode, served
  export.formats = ('onnx',)
  export.parity.batch_sizes = (1,)
  pipeline.run(export, root / 'export')
  # The batch backtest's signals and targets (backtest/experiment.py run, steps 1-3).
  backtest = backtest_config.get_config('')
  signals = {name: experiment.model_signals(name, root / name, data, 'test', progress=False)
             for name in MODELS}
  frames = data_lib.load_frames(data)
  joined = experiment.join_signals(signals, frames, experiment.split_range(data, 'test'))
  targets = experiment.strategy_targets(joined, backtest, MODELS)
  # The Strategist's bars are the split's one-bar windows, purged by one bar after the validation
  # split (windows.split_anchors): its rollout, and so the ensemble, starts at 00:05.
  start = signals['strategist']['timestamp'].min()
  assert start == pd.Timestamp(SPLIT_START, tz='UTC') + pd.Timedelta('5min')
  return RealRun(root, root / 'export', joined, targets, start, backtest.ensemble)


_DEFAULT = object()


def _decider(run: RealRun, start=_DEFAULT, **overrides):
  from quantum_alpha_jax.serve import decider  # pylint: disable=g-import-not-at-top
  return decider.Decider(run.export, start=run.start if start is _DEFAULT else start,
                         ensemble_config=run.ensemble_config, **overrides)


def _replay(decider, klines: dict[str, pd.DataFrame]) -> pd.DataFrame:
  """Every kline of every symbol through ``decider.push``, merged in time order."""
  from quantum_alpha_jax.serve import replay  # pylint: disable=g-import-not-at-top
  rows = []
  for symbol, frame in klines.items():
    for kline in replay.frame_klines(frame):
      rows.append((kline[schema.TIMESTAMP].value, symbol, kline))
  records = []
  for _, symbol, kline in sorted(rows, key=lambda row: row[:2]):
    records += decider.push(symbol, kline)
  return pd.DataFrame(records)


@pytest.fixture(scope='module')
def streamed(real_run) -> pd.DataFrame:
  return _replay(_decider(real_run), {symbol: raw_klines(symbol) for symbol in FILES})


def test_streaming_equals_batch_bar_for_bar(real_run, streamed):
  """Every bar of the test split (both symbols): the service's target equals the batch backtest's
  ensemble target (bit for bit, or within one float32 rounding of the Strategist's size head; the
  same bars are long or flat), and so do the Strategist's actions and the Guardian's regime and
  risk level exactly; P(up) and the uncertainty agree to ONNX-vs-JAX float32 rounding."""
  joined, batch = real_run.joined, real_run.targets['ensemble']
  decided = streamed.assign(timestamp=pd.to_datetime(streamed['open_time_ns'], utc=True))
  merged = joined.assign(batch_target=batch).merge(
      decided, on=['symbol', 'timestamp'], how='left', suffixes=('_batch', ''), validate='1:1')
  assert len(merged) == len(joined) and merged['target'].notna().all()
  ours = merged['target'].to_numpy()
  np.testing.assert_array_equal(ours > 0, batch > 0)
  np.testing.assert_allclose(ours, batch, rtol=0, atol=POSITION_TOLERANCE)
  assert (ours == batch).mean() > 0.95
  # Not a flat coincidence: the ensemble trades on many bars, with many position sizes.
  assert (batch > 0).sum() >= 30 and len(np.unique(batch)) > 20
  after = merged['timestamp'] >= real_run.start
  for name in SIGNALS:
    ours, theirs = merged.loc[after, name].to_numpy(float), merged.loc[after, f'{name}_batch']
    theirs = theirs.to_numpy(float)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=name)
    has = ~np.isnan(theirs)
    tolerance = {'p_up': P_UP_TOLERANCE, 'uncertainty': P_UP_TOLERANCE,
                 'size': SIZE_TOLERANCE, 'target_position': SIZE_TOLERANCE}.get(name)
    if tolerance:
      np.testing.assert_allclose(ours[has], theirs[has], atol=tolerance, rtol=0, err_msg=name)
    else:
      np.testing.assert_array_equal(ours[has], theirs[has], err_msg=name)
  assert (merged.loc[~after, 'status'] == 'before_start').all()


def test_the_per_bar_rule_equals_every_ablation_row_of_the_batch(real_run):
  """The ensemble rule one bar at a time with its carried EMA (serve/ensemble_state.py), fed the
  batch signals, gives every ablation row of the batch backtest bit for bit (the EMA gate too)."""
  from quantum_alpha_jax.serve import ensemble_state  # pylint: disable=g-import-not-at-top
  joined = real_run.joined
  for name, config in ensemble.ablation_configs(real_run.ensemble_config).items():
    needed = ensemble.required_signals(config)
    ours = np.zeros(len(joined))
    for _, rows in joined.groupby('symbol', sort=False).indices.items():
      state = ensemble_state.EnsembleState(config)
      for row, values in zip(rows, joined.iloc[rows][list(needed)].to_dict('records')):
        ours[row] = state.step(values, all(np.isfinite(values[c]) for c in needed))
    np.testing.assert_array_equal(ours, real_run.targets[name], err_msg=name)
    assert name != 'ensemble' or (ours > 0).sum() > 50


def test_no_look_ahead_truncated_input_leaves_earlier_decisions(real_run, streamed):
  """Cutting the input after bar t changes no decision up to t."""
  cut = real_run.start + pd.Timedelta('1D')
  truncated = _replay(_decider(real_run),
                      {symbol: raw_klines(symbol, str(cut)) for symbol in FILES})
  full = streamed.loc[streamed['open_time_ns'] < cut.value]
  columns = [c for c in full.columns if c not in TIMINGS]
  pd.testing.assert_frame_equal(truncated[columns].reset_index(drop=True),
                                full[columns].reset_index(drop=True))
  assert (truncated['status'] == 'ready').sum() > 200


# ----------------------------------------------------------------------------------------------
# Bad input: one clear line, the state untouched, recovery after a long gap.

_SHORT = 560  # bars of BTC from DATA_START: past the warm-up (300) and the Guardian's window (120)


def _short_run(real_run):
  from quantum_alpha_jax.serve import replay  # pylint: disable=g-import-not-at-top
  decider = _decider(real_run, start=None)  # decide from the first bar
  return decider, list(replay.frame_klines(raw_klines('BTCUSDT').iloc[:_SHORT]))


def _strip(records):
  return [{k: v for k, v in record.items() if k not in TIMINGS} for record in records]


@pytest.mark.parametrize('bad', ['out_of_order', 'duplicate', 'nan', 'missing_column', 'inf'])
def test_a_bad_bar_is_refused_in_one_line_and_changes_nothing(real_run, bad):
  from quantum_alpha_jax.serve import stream  # pylint: disable=g-import-not-at-top
  reference, klines = _short_run(real_run)
  expected = [r for k in klines for r in reference.push('BTCUSDT', k)]
  decider, _ = _short_run(real_run)
  at = 500  # a bar with every model ready
  got = [r for k in klines[:at] for r in decider.push('BTCUSDT', k)]
  assert got[-1]['status'] == 'ready'
  broken = dict(klines[at])
  if bad == 'out_of_order':
    broken = dict(klines[at - 10])
  elif bad == 'duplicate':
    broken = dict(klines[at - 1])
  elif bad == 'nan':
    broken['close'] = float('nan')
  elif bad == 'inf':
    broken['volume'] = float('inf')
  else:
    del broken['volume']
  with pytest.raises(stream.BarRejected) as error:
    decider.push('BTCUSDT', broken)
  message = str(error.value)
  assert '\n' not in message and 'BTCUSDT' in message
  got += [r for k in klines[at:] for r in decider.push('BTCUSDT', k)]
  assert _strip(got) == _strip(expected)


def test_a_gap_past_the_fill_limit_starts_a_new_segment_and_says_how_long_the_warm_up_is(
    real_run):
  decider, klines = _short_run(real_run)
  more = list(__import__('quantum_alpha_jax.serve.replay', fromlist=['x']).frame_klines(
      raw_klines('BTCUSDT').iloc[_SHORT + 100:_SHORT + 100 + 520]))  # 100 bars missing > 72
  records = [r for k in klines for r in decider.push('BTCUSDT', k)]
  assert records[-1]['status'] == 'ready'
  after = [r for k in more for r in decider.push('BTCUSDT', k)]
  first = after[0]
  assert first['status'] == 'warming_up' and 'event' in first
  wait = first['warmup_remaining']
  assert '100 bars missing' in first['event'] and f'{wait} bars later' in first['event']
  statuses = [r['status'] for r in after]
  assert statuses.index('ready') == wait  # the first decision comes exactly when it said
  assert wait == 299 + 120  # the features' warm-up, then the Guardian's 120-bar window
  # A filled hole (a few bars) is no new segment: no event, decisions go on.
  decider, klines = _short_run(real_run)
  kept = klines[:520] + klines[523:]
  records = [r for k in kept for r in decider.push('BTCUSDT', k)]
  assert not any('event' in r for r in records)
  assert sum(not r['observed'] for r in records) == 3


def test_an_export_that_does_not_match_the_stream_refuses_to_load(real_run, tmp_path):
  from quantum_alpha_jax.serve import decider  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.serve import models  # pylint: disable=g-import-not-at-top

  def broken(change):
    target = tmp_path / f'export-{len(list(tmp_path.iterdir()))}'
    shutil.copytree(real_run.export, target)
    manifest = json.loads((target / 'manifest.json').read_text())
    change(manifest['models'])
    (target / 'manifest.json').write_text(json.dumps(manifest))
    return target

  def swap_features(entries):
    names = entries['oracle']['feature_names']
    names[0], names[1] = names[1], names[0]

  def shift_mean(entries):
    entries['guardian']['normalizer']['mean'][3] += 0.5

  def swap_normalizer_features(entries):
    names = entries['strategist']['normalizer']['features']
    names[5], names[6] = names[6], names[5]

  def drop_normalizer(entries):
    entries['oracle']['normalizer'] = None

  cases = ((swap_features, 'another order'), (shift_mean, 'another normaliser'),
           (swap_normalizer_features, 'normaliser fitted on another feature order'),
           (drop_normalizer, 'carries no normaliser'))
  for change, message in cases:
    with pytest.raises(SchemaError, match=message):
      decider.Decider(broken(change))
  with pytest.raises(Exception, match='no manifest.json'):
    models.load_models(tmp_path / 'nothing')


# ----------------------------------------------------------------------------------------------
# The JSONL loop and the entry point.


def _write_csv(path: pathlib.Path, frame: pd.DataFrame) -> None:
  table = frame.assign(timestamp=pd.to_datetime(frame[schema.TIMESTAMP], utc=True)
                       .astype('int64') // 1_000_000)
  table.to_csv(path, index=False)


def test_replay_follow_and_restart_write_the_same_whole_lines(real_run, tmp_path):
  from quantum_alpha_jax.serve import replay  # pylint: disable=g-import-not-at-top
  klines = raw_klines('BTCUSDT').iloc[:440]
  csv = tmp_path / 'BTCUSDT-5m-2023-05.csv'
  _write_csv(csv, klines)
  decider, _ = _short_run(real_run)
  summary = replay.serve(decider, [csv], tmp_path / 'replayed.jsonl')
  lines = (tmp_path / 'replayed.jsonl').read_text().splitlines()
  assert summary['bars'] == len(lines) == 440 and summary['ready'] > 0
  # Follow: the file grows; a half-written last line waits for its newline.
  text = csv.read_bytes()
  cut = text.index(b'\n', len(text) // 2) + 20
  grow = tmp_path / 'BTCUSDT-5m-2023-06.csv'
  grow.write_bytes(text[:cut])
  follower = replay.LineFollower(grow)
  first = follower.poll()
  assert all(line.count(b',') == 5 for line in first)
  with open(grow, 'ab') as handle:
    handle.write(text[cut:])
  second = follower.poll()
  assert len(first) + len(second) == 441  # the header and every bar, none torn
  decider, _ = _short_run(real_run)
  replay.serve(decider, [csv], tmp_path / 'followed.jsonl', follow=True, poll_seconds=0.01,
               idle_seconds=0.0)
  followed = (tmp_path / 'followed.jsonl').read_text().splitlines()
  strip = lambda rows: _strip(json.loads(row) for row in rows)
  assert strip(followed) == strip(lines)
  # A kill mid-line: the torn line is cut off on restart, the bars already written are skipped.
  out = tmp_path / 'restarted.jsonl'
  out.write_text('\n'.join(lines[:100]) + '\n' + lines[100][:37])
  decider, _ = _short_run(real_run)
  replay.serve(decider, [csv], out)
  assert strip(out.read_text().splitlines()) == strip(lines)
  # A bad row is one rejected record and one logged line; the rest goes on.
  bad = klines.copy()
  bad.loc[200, 'close'] = np.nan
  _write_csv(csv, bad)
  decider, _ = _short_run(real_run)
  summary = replay.serve(decider, [csv], tmp_path / 'bad.jsonl')
  records = [json.loads(line) for line in (tmp_path / 'bad.jsonl').read_text().splitlines()]
  # 439 bars pushed, and the refused bar's slot filled like a one-bar hole (observed=False).
  assert summary['rejected'] == 1 and summary['bars'] == 440
  rejected = [r for r in records if r['status'] == 'rejected']
  assert len(rejected) == 1 and rejected[0]['reason'] == 'non_finite'
  assert [r['observed'] for r in records if r.get('time', '').startswith('2023-05-20T16:40')] == [
      False]


def test_the_entry_point_writes_decisions(real_run, tmp_path):
  klines = raw_klines('ETHUSDT').iloc[:20]
  path = tmp_path / 'ETHUSDT-5m-2023-05.csv'
  _write_csv(path, klines)
  out = tmp_path / 'decisions.jsonl'
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.serve', f'--export={real_run.export}',
       f'--input={path}', f'--output={out}'], capture_output=True, text=True, timeout=600,
      cwd=pathlib.Path(__file__).resolve().parents[1])
  assert result.returncode == 0, result.stderr[-2000:]
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(records) == 20 and {r['symbol'] for r in records} == {'ETHUSDT'}
  assert all(r['status'] == 'warming_up' and r['target'] == 0.0 for r in records)
  assert '20 bars' in result.stdout
