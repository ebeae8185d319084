"""The Strategist: causal mask, timestep embedding, cached decoding, free-running agreement with
the hindsight oracle on held-out time, conditioning, the position fed = the position the engine
holds, causal bar signals, load() round trip, devices, config errors."""

from __future__ import annotations

import json
import textwrap

import jax
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from configs import strategist as strategist_config
from quantum_alpha_jax.backtest import engine
from quantum_alpha_jax.data import features
from quantum_alpha_jax.data import synthetic
from quantum_alpha_jax.data import trajectories as tr
from quantum_alpha_jax.errors import ConfigError
from quantum_alpha_jax.models import decision_transformer as dt
from quantum_alpha_jax.tasks import strategist
from tests.devices import run_with_devices


def _model(**overrides):
  settings = dict(state_size=5, max_timestep=20, context_length=6, hidden_size=16, num_layers=2,
                  num_heads=2, dropout_rate=0.0)
  settings.update(overrides)
  return dt.DecisionTransformer(**settings)


def _inputs(batch=3, steps=6, state_size=5, seed=0):
  rng = np.random.default_rng(seed)
  return {'rtg': rng.normal(size=(batch, steps)).astype(np.float32),
          'states': rng.normal(size=(batch, steps, state_size)).astype(np.float32),
          'actions': rng.integers(0, 3, (batch, steps)).astype(np.int32),
          'sizes': rng.random((batch, steps)).astype(np.float32),
          'timesteps': np.broadcast_to(np.arange(steps), (batch, steps)).astype(np.int32)}


_ORDER = ('rtg', 'states', 'actions', 'sizes', 'timesteps')


@pytest.fixture(scope='module')
def small_model():
  model = _model()
  inputs = _inputs()
  params = model.init(jax.random.PRNGKey(0), *(inputs[k] for k in _ORDER))['params']
  apply = jax.jit(lambda p, *x: model.apply({'params': p}, *x))
  return model, params, apply


def test_causal_mask_matches_an_independent_construction():
  mask = dt.causal_mask(7)
  expected = np.array([[key <= query for key in range(7)] for query in range(7)])
  np.testing.assert_array_equal(mask, expected)


def test_a_later_token_never_changes_an_earlier_output(small_model):
  model, params, apply = small_model
  inputs = _inputs()
  base = apply(params, *(inputs[k] for k in _ORDER))
  for name, step in (('rtg', 3), ('states', 3), ('actions', 3), ('sizes', 2), ('actions', 0)):
    changed = {k: v.copy() for k, v in inputs.items()}
    if name == 'actions':
      changed[name][:, step] = (changed[name][:, step] + 1) % 3
    else:
      changed[name][:, step] += 5.0
    out = apply(params, *(changed[k] for k in _ORDER))
    # The state token of step t precedes a_t: an action changes outputs from the next step on;
    # a return or state changes them from its own step on.
    first_changed = step + 1 if name in ('actions', 'sizes') else step
    for key in ('action_logits', 'size'):
      np.testing.assert_array_equal(np.asarray(out[key])[:, :first_changed],
                                    np.asarray(base[key])[:, :first_changed])
      assert np.abs(np.asarray(out[key])[:, first_changed:]
                    - np.asarray(base[key])[:, first_changed:]).max() > 1e-6


def test_timestep_embedding(small_model):
  model, params, apply = small_model
  assert params['timestep_embedding']['embedding'].shape == (20, 16)
  inputs = _inputs()
  base = apply(params, *(inputs[k] for k in _ORDER))
  shifted = dict(inputs, timesteps=inputs['timesteps'] + 5)
  out = apply(params, *(shifted[k] for k in _ORDER))
  assert np.abs(np.asarray(out['action_logits']) - np.asarray(base['action_logits'])).min() > 0
  # Identical content and identical timesteps at every step: the token embeddings do not depend
  # on the position in the sequence (no hidden positional embedding) ...
  same = {'rtg': np.full((2, 6), 0.7, np.float32), 'states': np.ones((2, 6, 5), np.float32),
          'actions': np.ones((2, 6), np.int32), 'sizes': np.full((2, 6), 0.5, np.float32),
          'timesteps': np.full((2, 6), 4, np.int32)}
  tokens = np.asarray(model.apply({'params': params}, *(same[k] for k in _ORDER),
                                  method=model.embed))
  assert tokens.shape == (2, 18, 16)
  for kind in range(3):
    np.testing.assert_allclose(tokens[:, kind::3], np.broadcast_to(tokens[:, kind:kind + 1],
                                                                   tokens[:, kind::3].shape),
                               atol=1e-6)
  # ... and the embedding added is the table row of the timestep.
  row = np.asarray(params['timestep_embedding']['embedding'][4])
  returns, _, _ = model.apply({'params': params}, *(same[k] for k in _ORDER),
                              method=model.token_embeddings)
  bare = np.asarray(same['rtg'][..., None] * params['return_embedding']['kernel'][0]
                    + params['return_embedding']['bias'])
  np.testing.assert_allclose(np.asarray(returns) - bare, np.broadcast_to(row, bare.shape),
                             atol=1e-5)


def test_cached_decoding_equals_the_full_pass(small_model):
  model, params, apply = small_model
  inputs = _inputs(seed=5)
  full = apply(params, *(inputs[k] for k in _ORDER))
  cache = dt.initial_cache(model, 3)
  decode = jax.jit(lambda p, c, t, *x: model.apply({'params': p}, c, t, *x, method=model.decode))
  logits, sizes = [], []
  for t in range(6):
    previous = (inputs['actions'][:, t - 1], inputs['sizes'][:, t - 1]) if t else (
        np.zeros(3, np.int32), np.zeros(3, np.float32))
    heads, cache = decode(params, cache, t, inputs['rtg'][:, t], inputs['states'][:, t], *previous)
    logits.append(heads['action_logits'])
    sizes.append(heads['size'])
  np.testing.assert_allclose(np.stack(logits, 1), full['action_logits'], atol=2e-5)
  np.testing.assert_allclose(np.stack(sizes, 1), full['size'], atol=2e-5)


# ----------------------------------------------------------------------------------------------
# A tiny Strategist trained end to end (experiment pipeline) on a market where conditioning is
# learnable: strong regime drifts that persist for about a day, so the state says which way to be.


_PARAMETERS = synthetic.MarketParameters(annual_drift=(150.0, -150.0, 0.0),
                                         annual_volatility=(0.3, 0.3, 0.3),
                                         mean_dwell_hours=(24.0, 24.0, 24.0))


def _market(raw=None):
  raw = raw or synthetic.generate_market(('BTCUSDT', 'ETHUSDT'), start='2024-01-01',
                                         end='2024-01-29', seed=4, parameters=_PARAMETERS)
  return raw, {s: features.compute_features(f) for s, f in raw.items()}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  raw, frames = _market()
  directory = tmp_path_factory.mktemp('strategist')
  config = strategist_config.get_config('quick')
  config.data.store_dir = str(directory / 'store')
  config.data.splits.update(train=('2024-01-01', '2024-01-20'),
                            validation=('2024-01-20', '2024-01-24'),
                            test=('2024-01-24', '2024-01-29'))
  config.model.update(context_length=16, hidden_size=32, num_layers=2, num_heads=2)
  config.train.update(num_steps=200, eval_every_steps=100, max_eval_batches=5)
  # 0.05 is not among the stored QUANTILE_LEVELS: the run must add it, not drop its point.
  config.evaluation.update(conditioning_quantiles=(0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99))
  results = strategist.run(config, directory / 'run', frames=frames)
  return {'results': results, 'workdir': directory / 'run', 'frames': frames, 'raw': raw,
          'config': config}


@pytest.fixture(scope='module')
def loaded(trained):
  task, params, config = strategist.load(trained['workdir'])
  data, _ = strategist.make_data(config, normalizer=task.normalizer, frames=trained['frames'])
  return task, params, config, data['test']


MARGIN = 0.015  # balanced accuracy over always-hold and repeating the previous action


def test_the_free_running_strategist_agrees_with_the_oracle_better_than_naive_rules(trained):
  # Free-running (its own actions and held positions, conditioned only on the target), each action
  # scored against the exact hindsight oracle's action from the position the rollout holds. On
  # this market the drift (~1.5 sd a bar) beats the fee, so the oracle's trades are mostly regime
  # changes, which a causal policy can follow with a lag: the causal trend rule reaches ~0.39
  # here (the tiny fixture model 0.35-0.39 over seeds), where on the 'learnable' preset the oracle's
  # trades follow next-bar noise and the trend rule gets ~0.345 (so the reports also score the
  # best causal behaviour of the training data).
  results = trained['results']
  imitation = results['test']['imitation']
  assert imitation['bars'] > 2000
  ours = imitation['strategist']['balanced_accuracy']
  # Always-hold scores 1/3 by construction; repeating its own last action is the copy rule a
  # model that leans on its own history would fall back to.
  assert imitation['always_hold']['balanced_accuracy'] == pytest.approx(1 / 3)
  assert ours > imitation['always_hold']['balanced_accuracy'] + MARGIN
  assert ours > imitation['repeat_previous_action']['balanced_accuracy'] + MARGIN
  for action in ('buy', 'sell'):  # it times some of the oracle's entries and exits
    assert imitation['strategist']['per_class'][action]['recall'] > 0
  # The agreement with the best causal behaviour of the training data is reported beside it.
  behaviour = results['test']['imitation_behaviour']
  assert behaviour['behaviour'] == results['trajectories']['reference_behaviour']
  assert behaviour['always_hold']['balanced_accuracy'] == pytest.approx(1 / 3)
  forced = results['test']['imitation_teacher_forced']
  assert forced['label'] == 'diagnostic only (teacher-forced, uses hindsight)'
  assert forced['label'] in strategist.format_results(results)


def test_the_realised_return_rises_with_the_conditioning_target(trained):
  curve = trained['results']['test']['conditioning_curve']
  targets = [p['target_return'] for p in curve['points']]
  assert len(targets) == len(trained['config'].evaluation.conditioning_quantiles)
  assert targets == sorted(targets) and len(set(targets)) >= 5
  assert all(p['episodes'] > 0 for p in curve['points'])
  realised = [p['mean_realised_return'] for p in curve['points']]
  expected = scipy.stats.spearmanr(targets, realised).statistic
  assert curve['spearman_target_vs_realised'] == pytest.approx(expected)
  assert expected > 0.3


def test_the_run_writes_results_plots_and_comparable_backtests(trained):
  workdir = trained['workdir']
  saved = json.loads((workdir / 'results.json').read_text())
  test = saved['test']
  for key in ('strategist', 'buy_and_hold', 'heuristics', 'best_heuristic', 'conditioning_curve',
              'imitation', 'imitation_teacher_forced'):
    assert key in test
  for symbol in ('BTCUSDT', 'ETHUSDT'):
    stats = test['strategist'][symbol]
    assert set(strategist._STATS) <= set(stats)  # pylint: disable=protected-access
    assert (workdir / 'test' / f'backtest_{symbol}' / 'equity.png').exists()
  assert (workdir / 'test' / 'conditioning_curve.png').stat().st_size > 10_000
  assert (workdir / 'tensorboard').exists() and (workdir / 'metrics.jsonl').exists()


def _engine_held(arrays, rows, targets):
  """The position the backtest engine holds at each of ``rows`` (one symbol), run on every bar
  from the first to the last row with the targets given at ``rows`` and flat elsewhere."""
  grid = np.arange(rows[0], rows[-1] + 1)
  full = np.zeros(grid.size)
  full[rows - grid[0]] = targets
  state = engine.simulate(full, arrays.features[grid, features.FEATURES.index('open')], 10_000.0,
                          0.001, 1.0, None)
  return state['target_held'][rows - grid[0]]


def test_the_position_fed_to_the_model_is_the_position_the_engine_holds(loaded):
  task, params, _, split = loaded
  arrays, rows = split.source.arrays, split.source.rows
  # Unusable bars in the middle of the split: they get no signal, so the engine holds them flat.
  symbol = np.asarray(arrays.symbol)[rows]
  btc = rows[symbol == 0]
  rows = np.setdiff1d(rows, btc[600:610])
  result = strategist.rollout(task, params, arrays, rows, [task.target_return], progress=False)
  carried = 0
  for s in np.unique(symbol):
    where = np.flatnonzero(np.asarray(arrays.symbol)[rows] == s)
    held = _engine_held(arrays, rows[where], result.position[0, where])
    np.testing.assert_array_equal(result.held[0, where], held.astype(np.float32))
    carried += int(np.sum((result.timestep[where] == 0) & (held != 0)))
  # The check has teeth: at many episode starts the model holds a position carried over.
  assert carried >= 5
  assert result.held[0, np.searchsorted(rows, btc[610])] == 0.0  # flat after the unusable bars
  # Canonical actions: the position changes exactly where the action is not a hold.
  np.testing.assert_array_equal(result.position[0] != result.held[0], result.action[0] != tr.HOLD)


class _WithHoles:
  """``arrays`` with ``observed`` False at some rows (bars that fill a hole), the rest delegated."""

  def __init__(self, arrays, unobserved):
    self._arrays = arrays
    self.observed = np.asarray(arrays.observed, bool).copy()
    self.observed[unobserved] = False

  def __getattr__(self, name):
    return getattr(self._arrays, name)


def test_the_rollout_defers_fills_at_hole_filling_bars_as_the_engine_does(loaded):
  task, params, _, split = loaded
  arrays, rows = split.source.arrays, split.source.rows
  btc = rows[np.asarray(arrays.symbol)[rows] == 0]
  # Holes every 7 bars, and one right after the first decision that changes the position (the
  # rollout is causal, so that decision is the same with the holes: its fill must wait).
  free = strategist.rollout(task, params, arrays, btc, [task.target_return], progress=False)
  first = np.flatnonzero(free.position[0] != free.held[0])
  assert first.size and first[0] + 1 < btc.size
  grid_holes = np.arange(first[0] + 8, btc.size - 40, 7)
  holes = _WithHoles(arrays, btc[np.r_[first[0] + 1, grid_holes]])
  result = strategist.rollout(task, params, holes, btc, [task.target_return], progress=False)
  grid = np.arange(btc[0], btc[-1] + 1)
  full = np.zeros(grid.size)
  full[btc - grid[0]] = result.position[0]
  state = engine.simulate(full, arrays.features[grid, features.FEATURES.index('open')], 10_000.0,
                          0.001, 1.0, None, observed=holes.observed[grid])
  held = state['target_held'][btc - grid[0]]
  np.testing.assert_array_equal(result.held[0], held.astype(np.float32))
  # The check has teeth: some decisions were pending over a hole-filling bar.
  changed = np.flatnonzero(result.position[0][:-1] != result.held[0][:-1]) + 1
  assert np.sum(~holes.observed[btc[changed]]) >= 1


def _rewritten_after(raw, cut):
  """The raw market with every bar after ``cut`` replaced by another market's path (rescaled to
  continue from the bar at ``cut``)."""
  other = synthetic.generate_market(tuple(raw), start='2024-01-01', end='2024-01-29', seed=99,
                                    parameters=_PARAMETERS)
  out = {}
  for symbol, frame in raw.items():
    frame = frame.copy()
    later = frame['timestamp'] > cut
    scale = frame.loc[~later, 'close'].iloc[-1] / other[symbol].loc[later, 'open'].iloc[0]
    for column in frame.columns.drop(['timestamp', 'observed', 'segment']):
      factor = scale if column in ('open', 'high', 'low', 'close') else 1.0
      frame.loc[later, column] = other[symbol].loc[later, column].to_numpy() * factor
    out[symbol] = frame
  return out


def test_bar_signals_are_causal(trained, loaded):
  task, params, config, split = loaded
  signals = strategist.bar_signals(task, params, split, progress=False)
  assert len(signals) == len(split.source.rows) and list(signals.columns) == [
      'symbol', 'timestamp', *strategist.SIGNAL_COLUMNS]
  assert str(signals['timestamp'].dtype) == 'datetime64[ns, UTC]'
  assert set(signals['symbol']) == {'BTCUSDT', 'ETHUSDT'}
  assert set(np.unique(signals['action'])) <= {0, 1, 2}
  assert signals['target_position'].between(0, 1).all() and signals['size'].between(0, 1).all()
  cut = pd.Timestamp('2024-01-26 12:00', tz='UTC')
  before = signals[signals['timestamp'] <= cut].reset_index(drop=True)
  # Rewriting every bar after the cut, or removing them, leaves the earlier signals unchanged.
  for raw in (_rewritten_after(trained['raw'], cut),
              {s: f[f['timestamp'] <= cut + pd.Timedelta('1h')] for s, f in trained['raw'].items()}):
    _, frames = _market(raw)
    data, _ = strategist.make_data(config, normalizer=task.normalizer, frames=frames)
    again = strategist.bar_signals(task, params, data['test'], progress=False)
    again = again[again['timestamp'] <= cut].reset_index(drop=True)
    pd.testing.assert_frame_equal(again, before)


def test_load_round_trips(trained, loaded):
  task, params, _, split = loaded
  assert task.target_return == pytest.approx(trained['results']['conditioning_target_return'])
  arrays, rows = split.source.arrays, split.source.rows
  result = strategist.rollout(task, params, arrays, rows, [task.target_return], progress=False)
  # load() restored the params the run evaluated: the same free-running actions and scores.
  imitation = strategist.imitation(task, arrays, result)
  assert imitation['strategist'] == trained['results']['test']['imitation']['strategist']
  _, again, _ = strategist.load(trained['workdir'])
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


_DEVICES_SCRIPT = textwrap.dedent('''
    import json, jax, numpy as np
    from configs import strategist as strategist_config
    from quantum_alpha_jax.tasks import strategist
    from quantum_alpha_jax.train import state as state_lib
    from quantum_alpha_jax.train import step as step_lib
    assert jax.device_count() == 4, jax.devices()
    config = strategist_config.get_config('quick')
    config.model.update(context_length=6, hidden_size=16, num_layers=2, num_heads=2,
                        dropout_rate=0.1)
    # Adam's normalisation turns float noise in near-zero gradients into lr-sized steps; a large
    # epsilon keeps the comparison about the data-parallel maths, not that amplification.
    config.train.optimizer.update(learning_rate=1e-2, warmup_steps=0, schedule='constant',
                                  eps=1e-3)
    task = strategist.StrategistTask.from_config(config)
    rng = np.random.default_rng(0)
    batch = strategist.example_batch(task, 8)
    batch.update(states=rng.normal(size=batch['states'].shape).astype(np.float32),
                 rtg=rng.normal(size=(8, 6)).astype(np.float32),
                 actions=rng.integers(0, 3, (8, 6)).astype(np.int32),
                 sizes=rng.random((8, 6)).astype(np.float32),
                 timesteps=np.tile(np.arange(6, dtype=np.int32), (8, 1)))
    batch['size_mask'] = (batch['actions'] == 1).astype(np.float32)
    batch['step_mask'] = np.ones((8, 6), np.float32)
    batch['mask'] = np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)
    out = {}
    for count in (1, 4):
      mesh = step_lib.make_mesh(count)
      optimizer, schedule = state_lib.make_optimizer(config.train.optimizer, 10)
      params = task.init_params(jax.random.PRNGKey(0), batch)
      state = step_lib.replicate(state_lib.TrainState.create(params, optimizer,
                                                             jax.random.PRNGKey(1)), mesh)
      train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh)
      eval_step = step_lib.make_eval_step(task.loss_fn, mesh)
      for _ in range(3):
        state, metrics = train_step(state, step_lib.shard_batch(batch, mesh))
      evaluated = step_lib.mean_metrics([eval_step(state.params, step_lib.shard_batch(batch, mesh))])
      leaves = [np.asarray(x).ravel() for x in jax.tree.leaves(state.params)]
      out[count] = {'params': np.concatenate(leaves).tolist(), 'loss': float(metrics['loss']),
                    'eval': evaluated['loss'],
                    'shards': len(jax.tree.leaves(state.params)[0].sharding.device_set)}
    print(json.dumps(out))
''')


def test_one_device_and_four_devices_give_the_same_train_steps():
  out = run_with_devices(_DEVICES_SCRIPT, devices=4)
  assert out['4']['shards'] == 4 and out['1']['shards'] == 1
  np.testing.assert_allclose(out['1']['params'], out['4']['params'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['1']['loss'], out['4']['loss'], rtol=1e-5)
  np.testing.assert_allclose(out['1']['eval'], out['4']['eval'], rtol=1e-5)


def test_bad_configs_are_clear_errors(tmp_path):
  with pytest.raises(ConfigError, match='unknown variant'):
    strategist_config.get_config('fast')
  config = strategist_config.get_config('quick')
  config.model.num_heads = 3
  with pytest.raises(ConfigError, match='multiple of num_heads'):
    strategist.StrategistTask.from_config(config)
  config = strategist_config.get_config('quick')
  config.trajectories.discount = 0.0
  with pytest.raises(ConfigError, match='discount'):
    strategist.StrategistTask.from_config(config)
  config = strategist_config.get_config('quick')
  config.evaluation.target_quantile = 0.42
  with pytest.raises(ConfigError, match='target_quantile'):
    strategist.target_from_quantiles(config, {'0.5': 0.0, '0.9': 0.01})
  task = strategist.StrategistTask.from_config(strategist_config.get_config('quick'))
  with pytest.raises(ConfigError, match='normaliser'):
    strategist.rollout(task, None, None, np.arange(10), [0.0])
  with pytest.raises(Exception, match='checkpoint'):
    strategist.load(tmp_path / 'nothing')
