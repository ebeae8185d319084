"""The Strategist task: a Decision Transformer imitates return-conditioned trading trajectories.

Training (offline, on :mod:`quantum_alpha_jax.data.trajectories` episodes of the training split).
For each episode of K steps the model reads ``(R_t, s_t, a_t)`` and predicts ``a_t`` from the state
token. The loss per episode is the mean over its steps of the action cross-entropy plus
``size_loss_weight`` times the squared error of the size head on the steps whose action takes a
position (buy; sell too with shorts), ``Σ_t m_t (σ̂_t - σ_t)² / K``; the batch loss is the mean over
real episodes (``batch['mask']``), so the shared eval step's means are exact.

Rollout (evaluation and :func:`bar_signals`). The bars of a split are cut into runs of
consecutive bars, each run into chunks of ``evaluation.chunk_episodes`` episodes of K bars. All
chunks (times all conditioning targets) run in parallel: one ``jax.jit`` of a ``lax.scan`` over the
episodes of a chunk around a ``lax.scan`` over the K steps of an episode, batched over chunks. In a
chunk the position carries over from one episode to the next (the model was trained on episodes
that start from a held position); each episode restarts the return token at the target and the
timestep at 0, with a fresh key/value cache. At step t (the close of bar t):

1. the environment fills the previous target ``p_{t-1}`` at bar t's open with the backtest engine's
   fee and fill rule (:func:`backtest.engine.fill_at_open`), marks equity ``E_t`` at the close and
   pays ``ρ_{t-1} = reward_scale · log(E_t / E_{t-1})``;
2. the return token becomes ``(R̂_{t-1} - rtg_scale · ρ_{t-1}) / γ`` (``rtg_scale`` times the target
   return at the episode's first step), the return still to be earned;
3. the model decodes ``(a_{t-1}, R̂_t, s_t)`` with its cache and acts greedily: ``a_t = argmax``,
   size ``σ_t`` from the size head, ``p_t = next_position(p_{t-1}, a_t, σ_t)``; the action is made
   canonical (hold when the position does not change) as in the training data.

Step t reads bars <= t only; a chunk's first bar starts flat. The resulting ``p_t`` series is
backtested per symbol with ``backtest.engine.run_backtest`` (fee 0.1%, next-open fills).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from quantum_alpha_jax.backtest import engine
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import trajectories
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.evaluate import regime as classification
from quantum_alpha_jax.models import decision_transformer as dt
from quantum_alpha_jax.progress import Progress

SIGNAL_COLUMNS = ('action', 'size', 'target_position')
_OPEN = FEATURES.index('open')


@dataclasses.dataclass(frozen=True)
class StrategistTask:
  """The Decision Transformer on trajectory batches: ``loss_fn`` for the shared trainer,
  :func:`rollout` / :func:`bar_signals` for trading.

  ``normalizer`` (the one-bar state normaliser of the training split) and ``target_return`` (the
  conditioning return, unscaled) are needed only to trade on raw bars; :func:`run` and
  :func:`load` set them.
  """

  model: dt.DecisionTransformer
  spec: trajectories.TrajectorySpec
  size_loss_weight: float = 1.0
  chunk_episodes: int = 64
  normalizer: windows.Normalizer | None = None
  target_return: float | None = None

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *,
                  normalizer: windows.Normalizer | None = None,
                  target_return: float | None = None) -> StrategistTask:
    model_config = config.model
    context = model_config.context_length
    for name, value, minimum in (('context_length', context, 2),
                                 ('hidden_size', model_config.hidden_size, 1),
                                 ('num_layers', model_config.num_layers, 1),
                                 ('num_heads', model_config.num_heads, 1)):
      if not isinstance(value, int) or value < minimum:
        raise ConfigError(describe(f'config.model.{name}', f'{value!r} is not an integer >= '
                                   f'{minimum}'))
    if model_config.hidden_size % model_config.num_heads:
      raise ConfigError(describe(
          'config.model', f'hidden_size {model_config.hidden_size} is not a multiple of num_heads '
          f'{model_config.num_heads}', 'e.g. --config.model.num_heads=8 with hidden_size 256'))
    for name in ('dropout_rate', 'attention_dropout_rate'):
      if not 0 <= model_config[name] < 1:
        raise ConfigError(describe(f'config.model.{name}', f'{model_config[name]}',
                                   'use a rate in [0, 1)'))
    if config.size_loss_weight < 0:
      raise ConfigError(describe('config.size_loss_weight', f'{config.size_loss_weight} < 0'))
    if config.evaluation.chunk_episodes < 1:
      raise ConfigError(describe('config.evaluation.chunk_episodes',
                                 f'{config.evaluation.chunk_episodes} < 1', 'use e.g. 64'))
    spec = trajectories.TrajectorySpec.from_config(config.trajectories, context)
    model = dt.DecisionTransformer(
        state_size=trajectories.STATE_SIZE, max_timestep=context, context_length=context,
        hidden_size=model_config.hidden_size, num_layers=model_config.num_layers,
        num_heads=model_config.num_heads, dropout_rate=model_config.dropout_rate,
        attention_dropout_rate=model_config.attention_dropout_rate,
        num_actions=len(trajectories.ACTIONS))
    return cls(model=model, spec=spec, size_loss_weight=float(config.size_loss_weight),
               chunk_episodes=int(config.evaluation.chunk_episodes), normalizer=normalizer,
               target_return=target_return)

  def init_params(self, rng: jax.Array, batch: Mapping[str, np.ndarray]) -> Any:
    init = jax.jit(lambda key, *inputs: self.model.init(key, *inputs)['params'])
    return init(rng, *(jnp.asarray(batch[name]) for name in
                       ('rtg', 'states', 'actions', 'sizes', 'timesteps')))

  def apply(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None = None
            ) -> dict[str, jax.Array]:
    """Teacher-forced outputs ``action_logits [batch, K, 3]`` and ``size [batch, K]``; dropout
    on when ``rng`` is given."""
    return self.model.apply(
        {'params': params}, batch['rtg'], batch['states'], batch['actions'], batch['sizes'],
        batch['timesteps'], deterministic=rng is None,
        rngs=None if rng is None else {'dropout': rng})

  def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    outputs = self.apply(params, batch, rng)
    logits = outputs['action_logits'].astype(jnp.float32)
    actions = batch['actions']
    step_mask = batch['step_mask'].astype(jnp.float32)
    steps = jnp.maximum(jnp.sum(step_mask, -1), 1.0)
    per_step = lambda values: jnp.sum(values * step_mask, -1) / steps  # [batch]
    log_probabilities = jax.nn.log_softmax(logits, -1)
    cross_entropy = -jnp.take_along_axis(log_probabilities, actions[..., None], -1)[..., 0]
    correct = (jnp.argmax(logits, -1) == actions).astype(jnp.float32)
    size_error = jnp.square(outputs['size'] - batch['sizes'].astype(jnp.float32))
    size_loss = per_step(size_error * batch['size_mask'].astype(jnp.float32))
    mask = batch['mask'].astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    mean = lambda per_item: jnp.sum(per_item * mask) / count
    loss = mean(per_step(cross_entropy) + self.size_loss_weight * size_loss)
    return loss, {'action_cross_entropy': mean(per_step(cross_entropy)),
                  'action_accuracy': mean(per_step(correct)), 'size_loss': mean(size_loss)}

  @functools.cached_property
  def rollout_function(self):
    """The jitted rollout (:func:`_rollout_core`), kept with the task so that repeated rollouts of
    the same shapes compile once."""
    return jax.jit(functools.partial(_rollout_core, self))

  @functools.cached_property
  def predict_actions(self):
    """Jitted teacher-forced greedy actions ``[batch, K]`` of a batch."""
    return jax.jit(lambda params, batch: jnp.argmax(self.apply(params, batch)['action_logits'], -1))

  def conditioning_token(self, target_return: float) -> float:
    """The first return token for a target (unscaled, discounted) return."""
    return float(target_return) * self.spec.rtg_scale


def example_batch(task: StrategistTask, size: int = 1) -> dict[str, np.ndarray]:
  """Zero model inputs of the right shapes (to build or check params)."""
  steps = task.model.context_length
  return {'rtg': np.zeros((size, steps), np.float32),
          'states': np.zeros((size, steps, task.model.state_size), np.float32),
          'actions': np.zeros((size, steps), np.int32),
          'sizes': np.zeros((size, steps), np.float32),
          'timesteps': np.zeros((size, steps), np.int32)}


# ----------------------------------------------------------------------------------------------
# The conditioned rollout (module docstring).


def _rollout_core(task: StrategistTask, params: Any, features: jax.Array, open_price: jax.Array,
                  close: jax.Array, first_token: jax.Array) -> dict[str, jax.Array]:
  """``features [B, N, K, 44]`` (normalised), ``open_price, close [B, N, K]`` of N consecutive
  episodes per item, ``first_token [B]``; returns per bar ``action`` (canonical), ``size``,
  ``position`` (after the decision), ``return_token`` and ``reward`` (of the previous decision)."""
  model, spec = task.model, task.spec
  batch = features.shape[0]
  dtype = jnp.float32
  fee_rate, slippage = spec.fee_rate, spec.slippage_bps / 10_000
  zeros = jnp.zeros((batch,), dtype)

  def step(carry, inputs):
    (cache, cash, units, held, equity, position, before, token, action, size) = carry
    timestep, bar_features, bar_open, bar_close = inputs
    # 1. Fill p_{t-1} at this bar's open (a chunk's first bar has p = 0: no trade), mark the close.
    (cash, units, held), _ = engine.fill_at_open(
        (cash, units, held), position, bar_open, position != before, fee_rate=fee_rate,
        slippage=slippage)
    marked = cash + units * bar_close
    reward = spec.reward_scale * jnp.log(jnp.maximum(marked, 1e-12) / jnp.maximum(equity, 1e-12))
    # 2. The return still to be earned (restarted at each episode's first step).
    token = jnp.where(timestep == 0, first_token,
                      (token - spec.rtg_scale * reward) / spec.discount)
    # 3. Decide from (a_{t-1}, R_t, s_t).
    state = jnp.concatenate([bar_features, position[:, None]], axis=-1)
    heads, cache = model.apply({'params': params}, cache, timestep, token, state, action, size,
                               method=model.decode)
    chosen = jnp.argmax(heads['action_logits'], -1).astype(jnp.int32)
    new_size = heads['size']
    new_position = trajectories.next_position(position, chosen, new_size, spec.allow_short, xp=jnp)
    chosen = jnp.where(new_position == position, trajectories.HOLD, chosen)
    sized = (chosen == trajectories.BUY) | ((chosen == trajectories.SELL) & spec.allow_short)
    token_size = jnp.where(sized, jnp.abs(new_position), 0.0)
    carry = (cache, cash, units, held, marked, new_position, position, token, chosen, token_size)
    return carry, {'action': chosen, 'size': new_size, 'position': new_position,
                   'return_token': token, 'reward': reward}

  def episode(carry, inputs):
    cash, units, held, equity, position, before = carry
    cache = dt.initial_cache(model, batch, dtype)
    inner = (cache, cash, units, held, equity, position, before, zeros,
             jnp.zeros((batch,), jnp.int32), zeros)
    steps = jnp.arange(model.context_length)
    inner, outputs = jax.lax.scan(
        step, inner, (steps, *(jnp.swapaxes(x, 0, 1) for x in inputs)))
    _, cash, units, held, equity, position, before, *_ = inner
    return (cash, units, held, equity, position, before), outputs

  carry = (jnp.ones((batch,), dtype), zeros, zeros, jnp.ones((batch,), dtype), zeros, zeros)
  _, outputs = jax.lax.scan(episode, carry,
                            tuple(jnp.swapaxes(x, 0, 1) for x in (features, open_price, close)))
  # outputs: [N, K, B] → [B, N, K]
  return jax.tree.map(lambda x: jnp.moveaxis(x, -1, 0), outputs)


@dataclasses.dataclass
class Rollout:
  """Per-bar results of :func:`rollout` for bars ``rows [bars]`` and targets ``[targets]``:
  ``action``, ``size``, ``position``, ``return_token``, ``reward`` ``[targets, bars]``, the
  ``episode`` id of each bar (unique over chunks), its ``timestep`` within the episode and
  ``chunk_start`` (True on a chunk's first bar, where the rollout starts flat)."""

  rows: np.ndarray
  targets: np.ndarray
  action: np.ndarray
  size: np.ndarray
  position: np.ndarray
  return_token: np.ndarray
  reward: np.ndarray
  episode: np.ndarray
  timestep: np.ndarray
  chunk_start: np.ndarray
  seconds: float


def _chunks(arrays: windows.WindowArrays, rows: np.ndarray, chunk_bars: int
            ) -> list[np.ndarray]:
  """Rows cut into runs of consecutive bars, each run into chunks of at most ``chunk_bars``."""
  chunks = []
  for run in trajectories.rows_to_runs(arrays, rows):
    chunks += [run[i:i + chunk_bars] for i in range(0, len(run), chunk_bars)]
  return chunks


def rollout(task: StrategistTask, params: Any, arrays: windows.WindowArrays, rows: np.ndarray,
            target_returns: Sequence[float], *, batch_size: int = 64, max_bars_per_symbol: int = 0,
            progress: bool = True) -> Rollout:
  """Rolls the policy out over the bars ``rows`` (sorted rows of ``arrays``) once per target
  return (unscaled), all chunks and targets in parallel batches of ``batch_size`` (module doc).
  ``max_bars_per_symbol > 0`` keeps only each symbol's first bars."""
  if task.normalizer is None:
    raise ConfigError(describe('strategist rollout', 'the task has no state normaliser',
                               'build the task with strategist.load(workdir) or run()'))
  rows = np.asarray(rows, np.int64)
  if max_bars_per_symbol > 0:
    symbol = np.asarray(arrays.symbol)[rows]
    rows = np.concatenate([rows[symbol == s][:max_bars_per_symbol] for s in np.unique(symbol)])
  if rows.size == 0:
    raise ConfigError(describe('strategist rollout', 'no bars to roll out over',
                               'pass a split with usable bars'))
  length = task.model.context_length
  chunk_bars = task.chunk_episodes * length
  chunks = _chunks(arrays, rows, chunk_bars)
  episodes = max(math.ceil(len(chunk) / length) for chunk in chunks)
  padded_bars = episodes * length
  targets = np.asarray(target_returns, np.float64).reshape(-1)
  items = [(c, t) for t in range(len(targets)) for c in range(len(chunks))]
  size = max(1, min(int(batch_size), len(items)))
  open_column = arrays.features[:, _OPEN]
  names = ('action', 'size', 'position', 'return_token', 'reward')
  collected = {name: np.zeros((len(targets), rows.size), np.float32) for name in names}
  order = np.argsort(rows)
  chunk_offsets = np.cumsum([0] + [len(c) for c in chunks])
  index_in_rows = order[np.searchsorted(rows[order], np.concatenate(chunks))]
  bar = Progress(math.ceil(len(items) / size), 'strategist rollout', unit='batches') \
      if progress else None
  started = time.perf_counter()
  pending = []
  for begin in range(0, len(items), size):
    part = items[begin:begin + size]
    # Padding repeats an item's last bar (no price move, so no trade or reward after it).
    filled = np.full((size, padded_bars), rows[0], np.int64)
    tokens = np.zeros(size, np.float32)
    for slot, (chunk, target) in enumerate(part):
      filled[slot, :len(chunks[chunk])] = chunks[chunk]
      filled[slot, len(chunks[chunk]):] = chunks[chunk][-1]
      tokens[slot] = task.conditioning_token(targets[target])
    features = trajectories.normalized_features(arrays, task.normalizer, filled)
    shape = (size, episodes, length)
    outputs = task.rollout_function(params, jnp.asarray(features.reshape(shape + (len(FEATURES),))),
                       jnp.asarray(open_column[filled].reshape(shape), jnp.float32),
                       jnp.asarray(np.asarray(arrays.close)[filled].reshape(shape), jnp.float32),
                       jnp.asarray(tokens))
    pending.append((part, outputs))
    if bar:
      bar.update(1)
  for part, outputs in pending:
    outputs = jax.device_get(outputs)
    for slot, (chunk, target) in enumerate(part):
      count = len(chunks[chunk])
      where = index_in_rows[chunk_offsets[chunk]:chunk_offsets[chunk] + count]
      for name in names:
        collected[name][target, where] = outputs[name][slot].reshape(-1)[:count]
  seconds = time.perf_counter() - started
  if bar:
    bar.close()
  episode = np.zeros(rows.size, np.int64)
  timestep = np.zeros(rows.size, np.int64)
  chunk_start = np.zeros(rows.size, bool)
  for number, chunk in enumerate(chunks):
    where = index_in_rows[chunk_offsets[number]:chunk_offsets[number] + len(chunk)]
    local = np.arange(len(chunk))
    episode[where] = number * episodes + local // length
    timestep[where] = local % length
    chunk_start[where[0]] = True
  return Rollout(rows=rows, targets=targets, action=collected['action'].astype(np.int32),
                 size=collected['size'], position=collected['position'],
                 return_token=collected['return_token'], reward=collected['reward'],
                 episode=episode, timestep=timestep, chunk_start=chunk_start, seconds=seconds)


def _split_rows(split: Any) -> tuple[windows.WindowArrays, np.ndarray, str]:
  """(arrays, sorted bars, name) of a SplitData or source: a trajectory source's ``rows``, else
  the window anchors (the bar each window was cut at)."""
  source = getattr(split, 'source', split)
  rows = getattr(source, 'rows', None)
  rows = np.unique(np.asarray(source.anchors if rows is None else rows, np.int64))
  return source.arrays, rows, getattr(source, 'name', '')


def bar_signals(task: StrategistTask, params: Any, split: Any, *, batch_size: int = 64,
                progress: bool = True, target_return: float | None = None) -> pd.DataFrame:
  """One row per bar of ``split`` (a SplitData or source; its usable bars, or its window anchors):
  ``symbol``, ``timestamp`` (the bar, UTC) and the conditioned rollout's decision at that bar's
  close: ``action`` (0 hold, 1 buy, 2 sell; canonical: hold when the position is unchanged),
  ``size`` (the size head, in [0, 1]) and ``target_position`` (the position held after the
  decision, filled at the next bar's open). Rows are ordered by symbol, then time.

  Each row uses bars up to and including its own (module docstring). The rollout is jitted and
  batched over chunks of the split; ``target_return`` defaults to ``task.target_return``.
  """
  target = task.target_return if target_return is None else target_return
  if target is None:
    raise ConfigError(describe('strategist.bar_signals', 'no conditioning target return',
                               'load the task with strategist.load(workdir), or pass '
                               'target_return=...'))
  arrays, rows, _ = _split_rows(split)
  result = rollout(task, params, arrays, rows, [target], batch_size=batch_size,
                   progress=progress)
  return pd.DataFrame({
      'symbol': np.asarray(arrays.symbols, dtype=object)[np.take(arrays.symbol, rows)],
      'timestamp': schema.to_timestamps(np.take(arrays.timestamp, rows)),
      'action': result.action[0].astype(np.int8),
      'size': result.size[0],
      'target_position': result.position[0],
  })


# ----------------------------------------------------------------------------------------------
# Evaluation: imitation of the hindsight oracle, backtests, conditioning curve.


def imitation(task: StrategistTask, params: Any, arrays: windows.WindowArrays, rows: np.ndarray,
              *, batch_size: int = 64, max_episodes: int = 0, seed: int = 0) -> dict[str, Any]:
  """Teacher-forced action accuracy against the exact hindsight oracle on non-overlapping
  episodes of ``rows`` (its own return tokens, states and past actions), beside a uniformly random
  policy and always-hold. Returns JSON-ready classification metrics."""
  spec = dataclasses.replace(task.spec, policies=('oracle',), policy_weights=(1.0,),
                             oracle_noise=(0.0,))
  starts = trajectories.episode_starts(arrays, rows, spec.episode_length, spec.episode_length)
  if max_episodes > 0:
    starts = starts[:max_episodes]
  if starts.size == 0:
    raise ConfigError(describe('strategist imitation', 'no oracle episode fits in the split',
                               'use a longer split'))
  episodes = trajectories.generate_episodes(arrays, starts, spec, seed=seed)
  source = trajectories.TrajectorySource(arrays, spec, episodes, task.normalizer, rows, 'oracle')
  true, predicted = [], []
  size = min(batch_size, len(source))
  for begin in range(0, len(source), size):
    indices = np.full(size, -1, np.int64)  # one batch shape: the last batch is padded
    chunk = source.anchors[begin:begin + size]
    indices[:len(chunk)] = chunk
    batch = source.gather(indices)
    inputs = {k: jnp.asarray(batch[k]) for k in ('rtg', 'states', 'actions', 'sizes', 'timesteps')}
    predicted.append(np.asarray(task.predict_actions(params, inputs))[:len(chunk)].reshape(-1))
    true.append(batch['actions'][:len(chunk)].reshape(-1))
  true, predicted = np.concatenate(true), np.concatenate(predicted)
  random = np.random.default_rng(seed).integers(0, len(trajectories.ACTIONS), true.size)
  report = {name: classification.classification_metrics(true, values, trajectories.ACTIONS)
            for name, values in (('strategist', predicted), ('random', random),
                                 ('always_hold', np.zeros_like(true)))}
  for entry in report.values():
    entry['balanced_accuracy'] = entry['recall_macro']
  report['episodes'] = int(len(source))
  report['note'] = ('teacher-forced: the exact hindsight oracle\'s episodes (its return-to-go, '
                    'states and past actions) on held-out bars; balanced accuracy = macro recall')
  return report


def _symbol_series(arrays: windows.WindowArrays, rows: np.ndarray
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{symbol: (positions into rows, the symbol's rows)}`` in time order."""
  symbol = np.asarray(arrays.symbol)[rows]
  return {arrays.symbols[s]: (np.flatnonzero(symbol == s), rows[symbol == s])
          for s in np.unique(symbol)}


def backtest_positions(task: StrategistTask, arrays: windows.WindowArrays, rows: np.ndarray,
                       positions: np.ndarray) -> dict[str, engine.BacktestResult]:
  """Per symbol, ``run_backtest`` of target ``positions [bars]`` aligned with ``rows``."""
  results = {}
  for name, (where, symbol_rows) in _symbol_series(arrays, rows).items():
    results[name] = engine.run_backtest(
        np.clip(positions[where], -1.0 if task.spec.allow_short else 0.0, 1.0),
        np.asarray(arrays.features[symbol_rows, _OPEN], np.float64),
        np.asarray(arrays.close)[symbol_rows], np.asarray(arrays.timestamp)[symbol_rows],
        fee_rate=task.spec.fee_rate, slippage_bps=task.spec.slippage_bps,
        allow_short=task.spec.allow_short)
  return results


_STATS = ('total_return', 'sharpe', 'max_drawdown', 'win_rate', 'profit_factor', 'trades',
          'exposure', 'annual_return', 'fees_paid')


def _stats(result_stats: Mapping[str, Any]) -> dict[str, Any]:
  return {key: result_stats.get(key) for key in _STATS}


def heuristic_backtests(task: StrategistTask, arrays: windows.WindowArrays, rows: np.ndarray,
                        seed: int = 0) -> dict[str, dict[str, Any]]:
  """The causal behaviour heuristics (size 1, from flat) over the whole split, per symbol."""
  out = {}
  for name in trajectories.HEURISTICS:
    per_symbol = {}
    for symbol, (_, symbol_rows) in _symbol_series(arrays, rows).items():
      positions = trajectories.heuristic_positions(
          name, arrays.features[symbol_rows], task.spec.allow_short, seed=seed)
      result = engine.run_backtest(
          positions, np.asarray(arrays.features[symbol_rows, _OPEN], np.float64),
          np.asarray(arrays.close)[symbol_rows], np.asarray(arrays.timestamp)[symbol_rows],
          fee_rate=task.spec.fee_rate, slippage_bps=task.spec.slippage_bps,
          allow_short=task.spec.allow_short)
      per_symbol[symbol] = _stats(result.stats)
    out[name] = per_symbol
  return out


def _mean_over_symbols(per_symbol: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
  values = [entry.get(key) for entry in per_symbol.values() if entry.get(key) is not None]
  return float(np.mean(values)) if values else None


def conditioning_curve(task: StrategistTask, result: Rollout, arrays: windows.WindowArrays
                       ) -> list[dict[str, Any]]:
  """Per target return: the realised discounted return of each episode (from the rollout's own
  fills), its mean and the mean undiscounted episode return, and the per-symbol backtest."""
  spec = task.spec
  curve = []
  # The reward of a bar's decision is paid at the next bar (also across an episode boundary, where
  # the position carries on); the last decision of a chunk is never paid.
  for index, target in enumerate(result.targets):
    reward = np.full(result.reward[index].shape, np.nan)
    reward[:-1] = result.reward[index, 1:]
    reward[:-1][result.chunk_start[1:]] = np.nan
    realised, totals = [], []
    for episode in np.unique(result.episode):
      where = np.flatnonzero(result.episode == episode)
      if where.size < task.model.context_length:
        continue  # a cut-short episode at the end of a run
      values = reward[where] / spec.reward_scale
      values = np.where(np.isnan(values), 0.0, values)
      discounts = spec.discount ** np.arange(values.size)
      realised.append(float(np.sum(discounts * values)))
      totals.append(float(np.sum(values)))
    backtests = backtest_positions(task, arrays, result.rows, result.position[index])
    per_symbol = {name: _stats(r.stats) for name, r in backtests.items()}
    curve.append({
        'target_return': float(target), 'episodes': len(realised),
        'mean_realised_return': float(np.mean(realised)) if realised else None,
        'median_realised_return': float(np.median(realised)) if realised else None,
        'mean_episode_log_return': float(np.mean(totals)) if totals else None,
        'backtest': per_symbol,
        'mean_total_return': _mean_over_symbols(per_symbol, 'total_return'),
        'mean_sharpe': _mean_over_symbols(per_symbol, 'sharpe'),
        'exposure': _mean_over_symbols(per_symbol, 'exposure'),
    })
  return curve


def plot_conditioning_curve(curve: Sequence[Mapping[str, Any]], train_quantiles: Mapping[str, float],
                            path: str | pathlib.Path) -> pathlib.Path:
  """Realised vs conditioning return (per episode, %), with the identity line."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  targets = np.array([entry['target_return'] for entry in curve]) * 100
  realised = np.array([np.nan if entry['mean_realised_return'] is None
                       else entry['mean_realised_return'] for entry in curve]) * 100
  totals = np.array([np.nan if entry['mean_total_return'] is None else entry['mean_total_return']
                     for entry in curve]) * 100
  figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  axes[0].plot(targets, realised, 'o-', color='tab:blue', label='realised (mean per episode)')
  low, high = min(targets.min(), np.nanmin(realised)), max(targets.max(), np.nanmax(realised))
  axes[0].plot([low, high], [low, high], '--', color='grey', linewidth=0.8, label='realised = target')
  for name, value in train_quantiles.items():
    if name in ('0.5', '0.9'):
      axes[0].axvline(value * 100, color='tab:green', alpha=0.3, linewidth=0.8)
  axes[0].set_xlabel('conditioning return-to-go R̂₀ (discounted, % per episode)')
  axes[0].set_ylabel('realised discounted return (% per episode)')
  axes[0].set_title('Does the conditioning work?')
  axes[0].legend(fontsize=8)
  axes[1].plot(targets, totals, 'o-', color='tab:orange')
  axes[1].axhline(0, color='grey', linewidth=0.6)
  axes[1].set_xlabel('conditioning return-to-go R̂₀ (% per episode)')
  axes[1].set_ylabel('backtest total return (%, mean over symbols)')
  axes[1].set_title('Whole-period backtest (fees 0.1%, next-open fills)')
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path


def evaluate(task: StrategistTask, params: Any, split: windows.SplitData,
             train_quantiles: Mapping[str, float], directory: str | pathlib.Path, *,
             conditioning_quantiles: Sequence[float] = (0.25, 0.5, 0.75, 0.9, 0.99),
             curve_max_bars: int = 0, batch_size: int = 64, imitation_max_episodes: int = 0,
             progress: bool = True, seed: int = 0) -> dict[str, Any]:
  """The Strategist on one split: imitation of the hindsight oracle, the conditioned rollout's
  backtest beside buy-and-hold and the heuristics, and the conditioning curve (JSON-ready); writes
  the curve PNG and a backtest report per symbol under ``directory``."""
  from quantum_alpha_jax.backtest import report as report_lib  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  arrays, rows, name = _split_rows(split)
  report: dict[str, Any] = {'bars': int(rows.size)}
  report['imitation'] = imitation(task, params, arrays, rows, max_episodes=imitation_max_episodes,
                                  seed=seed)
  # The conditioned rollout over the whole split.
  main = rollout(task, params, arrays, rows, [task.target_return], batch_size=batch_size,
                 progress=progress)
  report['rollout'] = {'target_return': task.target_return, 'seconds': main.seconds,
                       'bars_per_second': rows.size / max(main.seconds, 1e-9),
                       'chunk_episodes': task.chunk_episodes,
                       'note': 'seconds include the jit compile of the rollout'}
  backtests = backtest_positions(task, arrays, rows, main.position[0])
  report['strategist'] = {symbol: _stats(result.stats) for symbol, result in backtests.items()}
  report['buy_and_hold'] = {symbol: _stats(result.buy_and_hold_stats)
                            for symbol, result in backtests.items()}
  report['heuristics'] = heuristic_backtests(task, arrays, rows, seed=seed)
  best = max(report['heuristics'], key=lambda h: _mean_over_symbols(
      report['heuristics'][h], 'sharpe') or -math.inf)
  report['best_heuristic'] = {'name': best, 'chosen_by': 'mean Sharpe over symbols on this split',
                              'stats': report['heuristics'][best]}
  report['actions'] = {name: float(np.mean(main.action[0] == index))
                       for index, name in enumerate(trajectories.ACTIONS)}
  plots = {}
  for symbol, result in backtests.items():
    report_lib.write_report(result, directory / f'backtest_{symbol}',
                            title=f'Strategist on {name} {symbol}')
    plots[f'backtest_{symbol}'] = str(directory / f'backtest_{symbol}')
  # Realised return against the conditioning return.
  targets = [train_quantiles[f'{level:g}'] for level in conditioning_quantiles
             if f'{level:g}' in train_quantiles]
  curve_rollout = rollout(task, params, arrays, rows, targets, batch_size=batch_size,
                          max_bars_per_symbol=curve_max_bars, progress=progress)
  report['conditioning_curve'] = {
      'quantiles_of_training_returns': list(conditioning_quantiles),
      'max_bars_per_symbol': curve_max_bars or None, 'seconds': curve_rollout.seconds,
      'points': conditioning_curve(task, curve_rollout, arrays)}
  realised = [p['mean_realised_return'] for p in report['conditioning_curve']['points']]
  if len(realised) > 1 and None not in realised and np.ptp(realised) > 0:
    report['conditioning_curve']['spearman_target_vs_realised'] = float(
        pd.Series(targets).corr(pd.Series(realised), method='spearman'))
  plots['conditioning_curve'] = str(plot_conditioning_curve(
      report['conditioning_curve']['points'], train_quantiles,
      directory / 'conditioning_curve.png'))
  report['plots'] = plots
  return report


# ----------------------------------------------------------------------------------------------
# The experiment and loading a finished run.


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
  from quantum_alpha_jax.train import data as data_lib  # pylint: disable=g-import-not-at-top

  frames = data_lib.load_frames(config.data) if frames is None else frames
  spec = trajectories.TrajectorySpec.from_config(config.trajectories,
                                                 config.model.context_length)
  return trajectories.make_datasets(
      frames, spec, windows.splits_from_config(config.data.splits), config.train.batch_size,
      pathlib.Path(config.data.store_dir) / 'windows_cache', seed=config.train.seed,
      normalizer=normalizer)


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
        frames: Mapping[str, pd.DataFrame] | None = None) -> dict[str, Any]:
  """Trains the Strategist described by ``config`` in ``workdir`` (resuming if it holds a run),
  evaluates the best checkpoint on ``config.evaluation.splits`` and writes ``results.json``."""
  from quantum_alpha_jax.train import loop  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import writers  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  StrategistTask.from_config(config)  # config errors before any data work
  data, normalizer = make_data(config, frames=frames)
  quantiles = trajectories.initial_return_quantiles(data['train'].source, QUANTILE_LEVELS)
  task = StrategistTask.from_config(config, normalizer=normalizer,
                                    target_return=target_from_quantiles(config, quantiles))
  trajectory_summary = {name: split.source.summary() for name, split in data.items()}
  writers.write_json(workdir / 'normalizer.json', normalizer.to_dict())
  result = loop.train_and_evaluate(
      config.train, task, data, workdir, run_config=config.to_dict(),
      extra_record={'normalizer': normalizer.to_dict(),
                    'trajectories': {'initial_return_quantiles': quantiles}})
  results = {'model': 'strategist', 'workdir': str(workdir), 'train': result.summary,
             'validation': result.best_metrics,
             'trajectories': {'summary': trajectory_summary,
                              'initial_return_quantiles': quantiles,
                              'spec': task.spec.to_dict()},
             'conditioning_target_return': task.target_return}
  for name in config.evaluation.splits:
    if name not in data:
      raise ConfigError(describe('config.evaluation.splits', f'no split {name!r}',
                                 f'use some of {sorted(data)}'))
    results[name] = evaluate(
        task, result.params, data[name], quantiles, workdir / name,
        conditioning_quantiles=config.evaluation.conditioning_quantiles,
        curve_max_bars=config.evaluation.curve_max_bars,
        batch_size=config.evaluation.batch_size,
        imitation_max_episodes=config.evaluation.imitation_max_episodes, seed=config.train.seed)
  results['config'] = config.to_dict()
  results['results_json'] = str(writers.write_results(workdir, results))
  return results


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
    imitation_report = report['imitation']
    lines.append(f'\n{split}: imitation of the hindsight oracle (teacher-forced, '
                 f'{imitation_report["episodes"]} episodes): balanced accuracy '
                 f'{imitation_report["strategist"]["balanced_accuracy"]:.3f} vs random '
                 f'{imitation_report["random"]["balanced_accuracy"]:.3f}, always-hold '
                 f'{imitation_report["always_hold"]["balanced_accuracy"]:.3f}')
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
    curve = report['conditioning_curve']
    lines.append('  conditioning target → realised (per episode): ' + ', '.join(
        f'{p["target_return"]:.3%} → {percent(p["mean_realised_return"])}' for p in curve['points'])
        + (f' (Spearman {curve["spearman_target_vs_realised"]:.2f})'
           if 'spearman_target_vs_realised' in curve else ''))
    lines.append(f'  rollout: {report["rollout"]["bars_per_second"]:.0f} bars/s; plots: '
                 f'{", ".join(report["plots"].values())}')
  lines.append(f'results: {results["results_json"]}')
  return '\n'.join(lines)


def load(workdir: str | pathlib.Path
         ) -> tuple[StrategistTask, Any, ml_collections.ConfigDict]:
  """The Strategist of a finished (or running) ``experiments.strategist`` run:
  ``(task, params, config)``, the task holding the run's normaliser and conditioning target."""
  from quantum_alpha_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top

  params, record = checkpoint_lib.load_best(workdir)
  config = ml_collections.ConfigDict(record['config'])
  if 'normalizer' not in record or 'trajectories' not in record:
    raise checkpoint_lib.CheckpointError(describe(
        str(workdir), 'the checkpoint record has no normaliser or trajectory statistics',
        'pass the workdir of an experiments.strategist run'))
  quantiles = record['trajectories']['initial_return_quantiles']
  task = StrategistTask.from_config(
      config, normalizer=windows.Normalizer.from_dict(record['normalizer']),
      target_return=target_from_quantiles(config, quantiles))
  expected = jax.eval_shape(task.init_params, jax.random.PRNGKey(0), example_batch(task))
  checkpoint_lib.check_structure(params, expected, str(workdir))
  return task, params, config
