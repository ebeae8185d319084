"""The Strategist task: a Decision Transformer imitates return-conditioned trading trajectories.

Training (offline, on :mod:`quantum_alpha_jax.data.trajectories` episodes of the training split).
For each episode of K steps the model reads ``(R_t, s_t, a_t)`` and predicts ``a_t`` from the state
token. The loss per episode is the mean over its steps of the action cross-entropy plus
``size_loss_weight`` times the squared error of the size head on the steps whose action takes a
position (buy; sell too with shorts), ``Σ_t m_t (σ̂_t - σ_t)² / K``; the batch loss is the mean over
real episodes (``batch['mask']``), so the shared eval step's means are exact.

Rollout (evaluation and :func:`bar_signals`): free-running, conditioned only on a target return.
Each symbol's usable bars of a split are one sequential pass (symbols and conditioning targets run
in parallel: one ``jax.jit`` of a ``lax.scan`` over episodes around a ``lax.scan`` over the K steps
of an episode). The account (cash, units, the held position) carries over from one episode to the
next, as the backtest engine holds it: the model was trained on episodes that start from a held
position. Each episode restarts the return token at the target and the timestep at 0, with a fresh
key/value cache; each run of consecutive usable bars starts a new episode. At step t (the close of
bar t):

1. the environment fills the previous target ``p_{t-1}`` at bar t's open with the backtest engine's
   fee and fill rule (:func:`backtest.engine.fill_at_open`), marks equity ``E_t`` at the close and
   pays ``ρ_{t-1} = reward_scale · log(E_t / E_{t-1})``;
2. the return token becomes ``(R̂_{t-1} - rtg_scale · ρ_{t-1}) / γ`` (``rtg_scale`` times the target
   return at the episode's first step), the return still to be earned;
3. the model decodes ``(a_{t-1}, R̂_t, s_t)`` with its cache, ``s_t`` holding ``p_{t-1}``, the
   position the engine holds since bar t's open, and acts greedily: ``a_t = argmax``, size ``σ_t``
   from the size head, ``p_t = next_position(p_{t-1}, a_t, σ_t)``; the action is made canonical
   (hold when the position does not change) as in the training data.

Step t reads bars <= t only. Bars that are not usable get no signal, and the backtest holds them
flat (``backtest_positions`` puts the targets on the symbol's full bar grid, flat where there is
no signal); so after such bars the rollout starts flat again, and a run that directly follows the
previous one (a time jump with no bar between) carries the position on. The position fed to the
model at every bar therefore equals the position the engine holds there (tests/test_strategist.py).

Imitation is scored on this free-running rollout. The yardstick (:func:`behaviour_imitation`) is
the best causal behaviour of the training data (``reference_behaviour``: the rule with the highest
mean training return, the one the conditioning target asks for): each action against the action
that rule takes at the same bar from the position the rollout holds (balanced accuracy), beside
always-hold and repeating its own previous action. Agreement with the exact hindsight oracle
(:func:`imitation`) is still reported, but it is no yardstick for a causal policy: the oracle's
actions depend on the next bars, and the causal trend rule scores about chance (1/3) against them.
The teacher-forced score (:func:`teacher_forced_imitation`: fed the realised return-to-go and the
oracle's own past actions and positions) uses hindsight and is reported as a diagnostic only.
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
from quantum_alpha_jax.evaluate import intervals
from quantum_alpha_jax.evaluate import regime as classification
from quantum_alpha_jax.models import decision_transformer as dt
from quantum_alpha_jax.progress import Progress

SIGNAL_COLUMNS = ('action', 'size', 'held_position', 'target_position')
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
  action_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
  normalizer: windows.Normalizer | None = None
  target_return: float | None = None
  reference_behaviour: str | None = None

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *,
                  normalizer: windows.Normalizer | None = None,
                  target_return: float | None = None,
                  reference_behaviour: str | None = None) -> StrategistTask:
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
    action_weights = tuple(float(w) for w in config.get('action_weights', (1.0, 1.0, 1.0)))
    if len(action_weights) != len(trajectories.ACTIONS) or min(action_weights) <= 0:
      raise ConfigError(describe('config.action_weights', f'{action_weights}',
                                 'give one positive weight per action (hold, buy, sell)'))
    spec = trajectories.TrajectorySpec.from_config(config.trajectories, context)
    model = dt.DecisionTransformer(
        state_size=trajectories.STATE_SIZE, max_timestep=context, context_length=context,
        hidden_size=model_config.hidden_size, num_layers=model_config.num_layers,
        num_heads=model_config.num_heads, dropout_rate=model_config.dropout_rate,
        attention_dropout_rate=model_config.attention_dropout_rate,
        num_actions=len(trajectories.ACTIONS))
    return cls(model=model, spec=spec, size_loss_weight=float(config.size_loss_weight),
               action_weights=action_weights, normalizer=normalizer, target_return=target_return,
               reference_behaviour=reference_behaviour)

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
    if self.action_weights != (1.0, 1.0, 1.0):  # rare trades weigh more (config.action_weights)
      cross_entropy = cross_entropy * jnp.asarray(self.action_weights, jnp.float32)[actions]
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
                  close: jax.Array, valid: jax.Array, observed: jax.Array, flat_start: jax.Array,
                  first_token: jax.Array) -> dict[str, jax.Array]:
  """``features [B, N, K, 44]`` (normalised), ``open_price, close, valid, observed [B, N, K]`` of N
  consecutive episodes per item (``valid`` False on padding, which changes nothing; ``observed``
  False at hole-filling bars, where the engine defers every fill to the next observed open),
  ``flat_start [B, N]`` (the episode starts flat instead of carrying the account on) and ``first_token [B]``.
  Returns per bar ``action`` (canonical), ``size``, ``held`` (the position fed to the model, held
  since this bar's open), ``position`` (after the decision), ``return_token`` and ``reward``."""
  model, spec = task.model, task.spec
  batch = features.shape[0]
  dtype = jnp.float32
  fee_rate, slippage = spec.fee_rate, spec.slippage_bps / 10_000
  zeros, ones = jnp.zeros((batch,), dtype), jnp.ones((batch,), dtype)
  # (cash, units, engine's held target, equity at the last close, position, the target before it)
  flat = (ones, zeros, zeros, ones, zeros, zeros)

  def step(carry, inputs):
    cache, account, token, action, size = carry
    timestep, bar_features, bar_open, bar_close, bar_valid, bar_observed = inputs
    cash, units, held, equity, position, before = account
    # 1. Fill p_{t-1} at this bar's open (the engine's rule: trade when the target changed since
    #    the last observed open; nothing trades at a hole-filling bar), mark the close.
    (cash, units, held), _ = engine.fill_at_open(
        (cash, units, held), position, bar_open, position != before, fee_rate=fee_rate,
        slippage=slippage, observed=bar_observed)
    position_before = jnp.where(bar_observed, position, before)
    marked = cash + units * bar_close
    reward = spec.reward_scale * jnp.log(jnp.maximum(marked, 1e-12) / jnp.maximum(equity, 1e-12))
    # 2. The return still to be earned (restarted at each episode's first step).
    # (With spec.condition_on == 'behaviour' the token is the target at every step.)
    new_token = jnp.where((timestep == 0) | (spec.condition_on == 'behaviour'), first_token,
                          (token - spec.rtg_scale * reward) / spec.discount)
    # 3. Decide from (a_{t-1}, R_t, s_t), s_t holding the position the engine holds since this
    #    bar's open (the standing target ``position`` unless its fill waits past a filled bar).
    state = jnp.concatenate([bar_features, held[:, None]], axis=-1)
    heads, cache = model.apply({'params': params}, cache, timestep, new_token, state, action, size,
                               method=model.decode)
    chosen = jnp.argmax(heads['action_logits'], -1).astype(jnp.int32)
    new_size = heads['size']
    new_position = trajectories.next_position(position, chosen, new_size, spec.allow_short, xp=jnp)
    chosen = jnp.where(new_position == position, trajectories.HOLD, chosen)
    sized = (chosen == trajectories.BUY) | ((chosen == trajectories.SELL) & spec.allow_short)
    token_size = jnp.where(sized, jnp.abs(new_position), 0.0)
    new = ((cash, units, held, marked, new_position, position_before), new_token, chosen,
           token_size)
    # Padding leaves the account, the return token and the previous action unchanged.
    account, token, action, size = jax.tree.map(lambda n, o: jnp.where(bar_valid, n, o), new,
                                                (account, token, action, size))
    return (cache, account, token, action, size), {
        'action': chosen, 'size': new_size, 'held': held, 'position': new_position,
        'return_token': new_token, 'reward': reward}

  def episode(account, inputs):
    *bars, restart = inputs
    account = jax.tree.map(lambda f, a: jnp.where(restart, f, a), flat, account)
    inner = (dt.initial_cache(model, batch, dtype), account, zeros,
             jnp.zeros((batch,), jnp.int32), zeros)
    steps = jnp.arange(model.context_length)
    inner, outputs = jax.lax.scan(step, inner, (steps, *(jnp.swapaxes(x, 0, 1) for x in bars)))
    return inner[1], outputs

  inputs = tuple(jnp.swapaxes(x, 0, 1)
                 for x in (features, open_price, close, valid, observed, flat_start))
  _, outputs = jax.lax.scan(episode, flat, inputs)
  # outputs: [N, K, B] → [B, N, K]
  return jax.tree.map(lambda x: jnp.moveaxis(x, -1, 0), outputs)


@dataclasses.dataclass
class Rollout:
  """Per-bar results of :func:`rollout` for bars ``rows [bars]`` and targets ``[targets]``:
  ``action``, ``size``, ``held`` (the position fed to the model: what the engine holds since the
  bar's open), ``position`` (after the decision), ``return_token``, ``reward`` ``[targets,
  bars]``; the ``episode`` id of each bar, its ``timestep`` within the episode, and ``flat_start``
  (True where the rollout starts flat: a symbol's first bar and the first bar after bars with no
  signal, which the backtest holds flat)."""

  rows: np.ndarray
  targets: np.ndarray
  action: np.ndarray
  size: np.ndarray
  held: np.ndarray
  position: np.ndarray
  return_token: np.ndarray
  reward: np.ndarray
  episode: np.ndarray
  timestep: np.ndarray
  flat_start: np.ndarray
  seconds: float


def _sequences(arrays: windows.WindowArrays, rows: np.ndarray, length: int
               ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """One sequence per symbol: ``(bars [N * K], valid [N * K], flat_start [N])``. Each run of
  consecutive usable bars starts a new episode and is padded to whole episodes; it starts flat
  unless it directly follows the previous run's last bar (a segment break with no bar between)."""
  sequences = {}
  for run in trajectories.rows_to_runs(arrays, rows):
    parts = sequences.setdefault(int(arrays.symbol[run[0]]), [])
    episodes = math.ceil(len(run) / length)
    bars = np.full(episodes * length, run[-1], np.int64)
    bars[:len(run)] = run
    restart = np.zeros(episodes, bool)
    restart[0] = not parts or run[0] != parts[-1][3] + 1
    parts.append((bars, np.arange(episodes * length) < len(run), restart, run[-1]))
  return [tuple(np.concatenate([part[i] for part in parts]) for i in range(3))
          for _, parts in sorted(sequences.items())]


def rollout(task: StrategistTask, params: Any, arrays: windows.WindowArrays, rows: np.ndarray,
            target_returns: Sequence[float], *, batch_size: int = 64, max_bars_per_symbol: int = 0,
            progress: bool = True) -> Rollout:
  """Rolls the policy out over the bars ``rows`` (sorted rows of ``arrays``) once per target
  return (unscaled): one sequential pass per symbol, symbols and targets in parallel batches of
  ``batch_size`` (module doc). ``max_bars_per_symbol > 0`` keeps only each symbol's first bars."""
  if task.normalizer is None:
    raise ConfigError(describe('strategist rollout', 'the task has no state normaliser',
                               'build the task with strategist.load(workdir) or run()'))
  rows = np.unique(np.asarray(rows, np.int64))
  if max_bars_per_symbol > 0:
    symbol = np.asarray(arrays.symbol)[rows]
    rows = np.concatenate([rows[symbol == s][:max_bars_per_symbol] for s in np.unique(symbol)])
  if rows.size == 0:
    raise ConfigError(describe('strategist rollout', 'no bars to roll out over',
                               'pass a split with usable bars'))
  length = task.model.context_length
  sequences = _sequences(arrays, rows, length)
  episodes = max(len(restart) for _, _, restart in sequences)
  targets = np.asarray(target_returns, np.float64).reshape(-1)
  items = [(s, t) for t in range(len(targets)) for s in range(len(sequences))]
  size = max(1, min(int(batch_size), len(items)))
  open_column, close_column = arrays.features[:, _OPEN], np.asarray(arrays.close)
  observed_column = np.asarray(arrays.observed, bool)
  names = ('action', 'size', 'held', 'position', 'return_token', 'reward')
  collected = {name: np.zeros((len(targets), rows.size), np.float32) for name in names}
  bar = Progress(math.ceil(len(items) / size), 'strategist rollout', unit='batches') \
      if progress else None
  started = time.perf_counter()
  pending = []
  for begin in range(0, len(items), size):
    part = items[begin:begin + size]
    # Item padding repeats the first row and is marked invalid (no decision, no trade).
    filled = np.full((size, episodes * length), rows[0], np.int64)
    valid = np.zeros((size, episodes * length), bool)
    restart = np.zeros((size, episodes), bool)
    tokens = np.zeros(size, np.float32)
    for slot, (sequence, target) in enumerate(part):
      bars, bar_valid, flat_start = sequences[sequence]
      filled[slot, :len(bars)], valid[slot, :len(bars)] = bars, bar_valid
      restart[slot, :len(flat_start)] = flat_start
      tokens[slot] = task.conditioning_token(targets[target])
    features = trajectories.normalized_features(arrays, task.normalizer, filled)
    shape = (size, episodes, length)
    outputs = task.rollout_function(
        params, jnp.asarray(features.reshape(shape + (len(FEATURES),))),
        jnp.asarray(open_column[filled].reshape(shape), jnp.float32),
        jnp.asarray(close_column[filled].reshape(shape), jnp.float32),
        jnp.asarray(valid.reshape(shape)), jnp.asarray(observed_column[filled].reshape(shape)),
        jnp.asarray(restart), jnp.asarray(tokens))
    pending.append((part, outputs))
    if bar:
      bar.update(1)
  for part, outputs in pending:
    outputs = jax.device_get(outputs)
    for slot, (sequence, target) in enumerate(part):
      bars, bar_valid, _ = sequences[sequence]
      where = np.searchsorted(rows, bars[bar_valid])
      for name in names:
        collected[name][target, where] = outputs[name][slot].reshape(-1)[:len(bars)][bar_valid]
  seconds = time.perf_counter() - started
  if bar:
    bar.close()
  episode = np.zeros(rows.size, np.int64)
  timestep = np.zeros(rows.size, np.int64)
  flat_start = np.zeros(rows.size, bool)
  for number, (bars, bar_valid, restart) in enumerate(sequences):
    where = np.searchsorted(rows, bars[bar_valid])
    slots = np.flatnonzero(bar_valid)
    episode[where] = number * episodes + slots // length
    timestep[where] = slots % length
    flat_start[where[slots % length == 0]] = restart[slots[slots % length == 0] // length]
  return Rollout(rows=rows, targets=targets, action=collected['action'].astype(np.int32),
                 size=collected['size'], held=collected['held'], position=collected['position'],
                 return_token=collected['return_token'], reward=collected['reward'],
                 episode=episode, timestep=timestep, flat_start=flat_start, seconds=seconds)


def _split_rows(split: Any) -> tuple[windows.WindowArrays, np.ndarray, str]:
  """(arrays, sorted usable bars, name) of a SplitData or source: a trajectory source's ``rows``,
  else the anchors of a one-bar window source (each bar usable on its own, whatever follows)."""
  source = getattr(split, 'source', split)
  rows = getattr(source, 'rows', None)
  if rows is None:
    spec = source.spec
    if (spec.encoder_length, spec.decoder_length) != (1, 0):
      raise ConfigError(describe(
          f'strategist signals on {getattr(source, "name", "")!r}',
          f'a window source of {spec.encoder_length} past and {spec.decoder_length} future bars '
          '(its anchors depend on bars the Strategist does not read)',
          'pass the Strategist\'s SplitData, or a source of windows.WindowSpec(1, 0) anchors'))
    rows = source.anchors
  return source.arrays, np.unique(np.asarray(rows, np.int64)), getattr(source, 'name', '')


def bar_signals(task: StrategistTask, params: Any, split: Any, *, batch_size: int = 64,
                progress: bool = True, target_return: float | None = None) -> pd.DataFrame:
  """One row per usable bar of ``split`` (a SplitData or a one-bar source): ``symbol``,
  ``timestamp`` (the bar, UTC) and the conditioned rollout's decision at that bar's close:
  ``action`` (0 hold, 1 buy, 2 sell; canonical: hold when the position is unchanged), ``size``
  (the size head, in [0, 1]), ``held_position`` (the position the model was fed: the one held since
  the bar's open) and ``target_position`` (after the decision, filled at the next bar's open).
  Rows are ordered by symbol, then time.

  Causal: a row depends on its own and earlier bars and on which earlier bars were usable; bars
  with no row are to be held flat (module docstring). ``target_return`` defaults to
  ``task.target_return``.
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
      'held_position': result.held[0],
      'target_position': result.position[0],
  })


# ----------------------------------------------------------------------------------------------
# Evaluation: imitation of the hindsight oracle, backtests, conditioning curve.


def _flat_runs(result: Rollout) -> list[np.ndarray]:
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
  for where in _flat_runs(result):
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
  random) with the highest mean episode return among ``source``'s episodes (the training split):
  the behaviour a policy conditioned on a high return should act like. None if there is none."""
  summary = source.summary()['behaviours']
  rules = {name: summary[name]['mean_return'] for name, policy, _, _ in source.spec.behaviour_table
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
  for where in _flat_runs(result):
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
                             oracle_noise=(0.0,))
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
  report = {name: classification.classification_metrics(true, values, trajectories.ACTIONS)
            for name, values in (('strategist', predicted), ('always_hold', np.zeros_like(true)))}
  for entry in report.values():
    entry['balanced_accuracy'] = entry['recall_macro']
  report['episodes'] = int(len(source))
  report['label'] = TEACHER_FORCED_LABEL
  return report


TEACHER_FORCED_LABEL = 'diagnostic only (teacher-forced, uses hindsight)'


def _symbol_grids(arrays: windows.WindowArrays, rows: np.ndarray
                  ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Per symbol, in time order: ``(positions into rows, every bar from the symbol's first to its
  last row (the backtest's grid), where each of those rows lies in the grid)``."""
  symbol = np.asarray(arrays.symbol)[rows]
  out = {}
  for s in np.unique(symbol):
    where = np.flatnonzero(symbol == s)
    grid = np.arange(rows[where[0]], rows[where[-1]] + 1)
    out[arrays.symbols[s]] = (where, grid, rows[where] - grid[0])
  return out


def _run_on_grid(task: StrategistTask, arrays: windows.WindowArrays, grid: np.ndarray,
                 targets: np.ndarray) -> engine.BacktestResult:
  return engine.run_backtest(
      targets, np.asarray(arrays.features[grid, _OPEN], np.float64),
      np.asarray(arrays.close)[grid], np.asarray(arrays.timestamp)[grid],
      observed=np.asarray(arrays.observed, bool)[grid], fee_rate=task.spec.fee_rate,
      slippage_bps=task.spec.slippage_bps, allow_short=task.spec.allow_short)


def backtest_positions(task: StrategistTask, arrays: windows.WindowArrays, rows: np.ndarray,
                       positions: np.ndarray) -> dict[str, engine.BacktestResult]:
  """Per symbol, ``run_backtest`` of target ``positions [bars]`` aligned with ``rows``, on every
  bar from the symbol's first to its last row: a bar with no position (not usable) is flat."""
  results = {}
  lowest = -1.0 if task.spec.allow_short else 0.0
  for name, (where, grid, slots) in _symbol_grids(arrays, rows).items():
    targets = np.zeros(grid.size)
    targets[slots] = np.clip(positions[where], lowest, 1.0)
    results[name] = _run_on_grid(task, arrays, grid, targets)
  return results


_STATS = ('total_return', 'sharpe', 'max_drawdown', 'win_rate', 'profit_factor', 'trades',
          'exposure', 'annual_return', 'fees_paid',
          # What a sweep's Deflated Sharpe Ratio reads beside the Sharpe (sweep/report.py).
          'bars', 'bars_per_year', 'skewness', 'kurtosis')


def _stats(result_stats: Mapping[str, Any]) -> dict[str, Any]:
  return {key: result_stats.get(key) for key in _STATS}


def heuristic_results(task: StrategistTask, arrays: windows.WindowArrays, rows: np.ndarray,
                      seed: int = 0) -> dict[str, dict[str, engine.BacktestResult]]:
  """The causal heuristics (size 1, from flat) over the whole split, per symbol, on the same grid
  as :func:`backtest_positions` (flat on bars that are not usable): trend, mean reversion, random,
  and every momentum rule among the task's behaviours (the model must beat its own teachers too)."""
  rules = [(name, None) for name in trajectories.HEURISTICS]
  rules += [(name, parameter) for name, policy, parameter, _ in task.spec.behaviour_table
            if policy == 'momentum']
  out = {}
  for name, parameter in rules:
    per_symbol = {}
    for symbol, (where, grid, slots) in _symbol_grids(arrays, rows).items():
      targets = np.zeros(grid.size)
      features = arrays.features[rows[where]]
      if parameter is None:
        targets[slots] = trajectories.heuristic_positions(name, features, task.spec.allow_short,
                                                          seed=seed)
      else:
        targets[slots] = trajectories.momentum_levels(
            np.asarray(features, np.float64)[None], np.zeros(1), task.spec.allow_short,
            *parameter)[0]
      per_symbol[symbol] = _run_on_grid(task, arrays, grid, targets)
    out[name] = per_symbol
  return out


def _daily_log_returns(result: engine.BacktestResult, equity: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
  """``(day, log return)`` per calendar day (UTC) of an equity curve marked at each close (the
  engine trades from bar 1, so bar 0's equity is the initial capital)."""
  equity = np.asarray(result.equity if equity is None else equity, np.float64)
  step = np.diff(np.log(equity), prepend=np.log(equity[0]))
  days = intervals.day_blocks(result.timestamps.asi8)
  unique, inverse = np.unique(days, return_inverse=True)
  return unique, np.bincount(inverse, weights=step)


def versus_best_policy(strategist_results: Mapping[str, engine.BacktestResult],
                       heuristics: Mapping[str, Mapping[str, engine.BacktestResult]]
                       ) -> dict[str, Any]:
  """The Strategist's mean daily log return (per symbol-day, after fees) minus that of the
  strongest naive policy on this split (buy-and-hold or a heuristic, by mean total return over
  symbols: the harshest choice for the model), with a paired block-bootstrap interval over days."""
  candidates = {'buy_and_hold': {symbol: (result, result.buy_and_hold_equity)
                                 for symbol, result in strategist_results.items()}}
  candidates.update({name: {symbol: (result, result.equity) for symbol, result in per.items()}
                     for name, per in heuristics.items()})
  total = lambda per: float(np.mean([equity[-1] / equity[0] for _, equity in per.values()]))
  best = max(candidates, key=lambda name: total(candidates[name]))
  ours, theirs, days = [], [], []
  for symbol, result in strategist_results.items():
    day, model = _daily_log_returns(result)
    other_result, other_equity = candidates[best][symbol]
    _, baseline = _daily_log_returns(other_result, other_equity)
    ours.append(model), theirs.append(baseline), days.append(day)
  return {'baseline': best, 'metric': 'daily log return after fees (mean over symbol-days)',
          **intervals.paired_difference(np.concatenate(ours), np.concatenate(theirs),
                                        np.concatenate(days))}


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
  # the position carries on); the last decision before a flat start is never paid.
  for index, target in enumerate(result.targets):
    reward = np.full(result.reward[index].shape, np.nan)
    reward[:-1] = result.reward[index, 1:]
    reward[:-1][result.flat_start[1:]] = np.nan
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
  """The Strategist on one split: the free-running rollout's agreement with the hindsight oracle
  (and, labelled diagnostic only, the teacher-forced score), its backtest beside buy-and-hold and
  the heuristics, and the conditioning curve (JSON-ready); writes the curve PNG and a backtest
  report per symbol under ``directory``."""
  from quantum_alpha_jax.backtest import report as report_lib  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  arrays, rows, name = _split_rows(split)
  report: dict[str, Any] = {'bars': int(rows.size)}
  # The conditioned rollout over the whole split.
  main = rollout(task, params, arrays, rows, [task.target_return], batch_size=batch_size,
                 progress=progress)
  report['rollout'] = {'target_return': task.target_return, 'seconds': main.seconds,
                       'bars_per_second': rows.size / max(main.seconds, 1e-9),
                       'note': 'seconds include the jit compile of the rollout'}
  report['imitation'] = imitation(task, arrays, main)
  report['imitation_behaviour'] = behaviour_imitation(task, arrays, main)
  report['imitation_teacher_forced'] = teacher_forced_imitation(
      task, params, arrays, rows, max_episodes=imitation_max_episodes, seed=seed)
  backtests = backtest_positions(task, arrays, rows, main.position[0])
  report['strategist'] = {symbol: _stats(result.stats) for symbol, result in backtests.items()}
  report['buy_and_hold'] = {symbol: _stats(result.buy_and_hold_stats)
                            for symbol, result in backtests.items()}
  heuristics = heuristic_results(task, arrays, rows, seed=seed)
  report['heuristics'] = {name: {symbol: _stats(result.stats) for symbol, result in per.items()}
                          for name, per in heuristics.items()}
  report['versus_best_baseline'] = versus_best_policy(backtests, heuristics)
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
        frames: Mapping[str, pd.DataFrame] | None = None,
        on_evaluate: Any = None) -> dict[str, Any]:
  """Trains the Strategist described by ``config`` in ``workdir`` (resuming if it holds a run),
  evaluates the best checkpoint on ``config.evaluation.splits`` and writes ``results.json``.
  ``on_evaluate(step, metrics)`` follows every validation (``loop.train_and_evaluate``)."""
  from quantum_alpha_jax.train import loop  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import writers  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  StrategistTask.from_config(config)  # config errors before any data work
  data, normalizer = make_data(config, frames=frames)
  quantiles = trajectories.initial_return_quantiles(data['train'].source, QUANTILE_LEVELS)
  reference = best_causal_behaviour(data['train'].source)
  task = StrategistTask.from_config(config, normalizer=normalizer,
                                    target_return=target_from_quantiles(config, quantiles),
                                    reference_behaviour=reference)
  trajectory_summary = {name: split.source.summary() for name, split in data.items()}
  writers.write_json(workdir / 'normalizer.json', normalizer.to_dict())
  result = loop.train_and_evaluate(
      config.train, task, data, workdir, run_config=config.to_dict(),
      extra_record={'normalizer': normalizer.to_dict(),
                    'trajectories': {'initial_return_quantiles': quantiles,
                                     'reference_behaviour': reference}},
      on_evaluate=on_evaluate)
  results = {'model': 'strategist', 'workdir': str(workdir), 'train': result.summary,
             'validation': result.best_metrics,
             'trajectories': {'summary': trajectory_summary,
                              'initial_return_quantiles': quantiles,
                              'reference_behaviour': reference,
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
      target_return=target_from_quantiles(config, quantiles),
      reference_behaviour=record['trajectories'].get('reference_behaviour'))
  expected = jax.eval_shape(task.init_params, jax.random.PRNGKey(0), example_batch(task))
  checkpoint_lib.check_structure(params, expected, str(workdir))
  return task, params, config
