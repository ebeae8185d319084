"""A single-asset trading environment as pure functions (gymnax style), vectorised with ``vmap``.

The API is ``reset(key, params) -> (obs, state)`` and ``step(key, state, action, params) ->
(obs, state, reward, done, info)``, with every array of the market preloaded in :class:`EnvParams`
and the whole episode position in :class:`EnvState`, so ``jax.vmap(step, (0, 0, 0, None))`` runs
thousands of environments in one call and an agent's rollout sits inside ``lax.scan`` under ``jit``.

Time. The state points at a bar ``t`` (``row``). The agent sees the bar's features at its close
and chooses a target weight; that target is filled at the OPEN of bar ``t + 1`` and the book is
marked at the CLOSE of bar ``t + 1`` (the convention of :mod:`quantum_alpha_jax.backtest.engine`:
a decision never trades at the close of the bar whose features produced it). Then the state moves
to ``t + 1``.

Fill, fees and slippage. The book is ``(cash, units)`` with equity starting at 1. The fill is
:func:`quantum_alpha_jax.fills.fill_at_open`, the backtest engine's own model: the
desired holding is ``target * equity_open / fill`` units, the fill price is
``open * (1 + slippage * sign(trade))``, and the fee ``fee_rate * |trade| * fill`` is paid from
cash. With ``rebalance_threshold=None`` the book trades only when the target changes (a constant
target never churns fees); a number ``h`` trades whenever ``|target - weight| > h``. Nothing fills
at the open of a bar that fills a hole (``observed`` False; its open copies the previous close): the
trade waits for the next observed open, and a target change seen at a skipped open stays
``pending`` until then, as in the engine. So a target sequence produces the same equity here
(float32) as in ``run_backtest`` (float64) given the same ``observed`` flags.

Reward. The portfolio log-return over the step, after fees and slippage:
``r_t = log(equity[t + 1] / equity[t])``, ``equity = cash + units * close``; an episode's summed
reward is the log of its equity growth.

Observation. ``[lookback * F + 2]``: the normalised features of the last ``lookback`` bars (oldest
first; ``F`` = 44 for the store), then the position weight ``units * close / equity`` and the
unrealised PnL of the open position, ``100 * units * (close - entry) / equity`` (percent of
equity; ``entry`` is the unit-weighted average fill of the position, reset when it is closed or
flips side).

Actions. ``action_mode='discrete'``: 0 hold (keep the last target), 1 buy (target 1, all in), 2 sell
(target 0, or -1 with ``allow_short``). ``'continuous'``: the action is the target weight itself,
clipped to ``[0, 1]`` (``[-1, 1]`` with ``allow_short``).

Episodes start at a uniformly drawn row of ``starts`` and last ``episode_length`` steps. ``starts``
holds only rows whose whole episode (the look-back rows, every decision bar and every fill bar) lies
in one split, one segment of consecutive bars and valid data, so no episode crosses a gap, a symbol
boundary or a split boundary (``tradable`` marks the single decision rows with that property).
:func:`step` resets automatically at the end of an episode, as gymnax does; ``info`` then carries
the finished episode's return and the terminal observation (for bootstrapping a time limit).
"""

from __future__ import annotations

from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from quantum_alpha_jax import errors
from quantum_alpha_jax import fills

ACTION_MODES = ('discrete', 'continuous')
HOLD, BUY, SELL = 0, 1, 2
ACTION_NAMES = ('hold', 'buy', 'sell')
POSITION_FEATURES = ('position_weight', 'unrealised_pnl_percent')
_EQUITY_FLOOR = 1e-6  # the reward's log never sees a non-positive equity


@struct.dataclass
class EnvParams:
  """The market of one split, on the device, and the rules. Arrays are indexed by row; ``row + 1``
  is the next bar wherever ``tradable[row]``."""

  features: jax.Array  # [rows, F] float32, normalised
  open: jax.Array  # [rows] float32
  close: jax.Array  # [rows] float32
  tradable: jax.Array  # [rows] bool: a decision can be made at the row and filled at row + 1
  observed: jax.Array  # [rows] bool: False where the bar fills a hole (nothing fills at its open)
  starts: jax.Array  # [num_starts] int32: first decision row of a whole valid episode
  episode_length: int = struct.field(pytree_node=False, default=256)
  lookback: int = struct.field(pytree_node=False, default=1)
  action_mode: str = struct.field(pytree_node=False, default='discrete')
  allow_short: bool = struct.field(pytree_node=False, default=False)
  fee_rate: float = struct.field(pytree_node=False, default=fills.DEFAULT_FEE_RATE)
  slippage_bps: float = struct.field(pytree_node=False, default=fills.DEFAULT_SLIPPAGE_BPS)
  rebalance_threshold: float | None = struct.field(pytree_node=False, default=None)

  @property
  def num_features(self) -> int:
    return int(self.features.shape[-1])

  @property
  def observation_size(self) -> int:
    return self.lookback * self.num_features + len(POSITION_FEATURES)

  @property
  def low(self) -> float:
    """The smallest target weight: 0 long-only, -1 with shorts."""
    return -1.0 if self.allow_short else 0.0

  @property
  def num_actions(self) -> int:
    """Discrete actions (hold, buy, sell); 1 for the continuous target."""
    return len(ACTION_NAMES) if self.action_mode == 'discrete' else 1

  def rules(self) -> dict[str, Any]:
    """The static settings, JSON-ready."""
    return {'episode_length': self.episode_length, 'lookback': self.lookback,
            'action_mode': self.action_mode, 'allow_short': self.allow_short,
            'fee_rate': self.fee_rate, 'slippage_bps': self.slippage_bps,
            'rebalance_threshold': self.rebalance_threshold}


@struct.dataclass
class EnvState:
  """One environment: the current bar, the book and the running episode figures (scalars)."""

  row: jax.Array  # int32, the bar whose close the agent is at
  time: jax.Array  # int32, steps taken in this episode
  cash: jax.Array  # float32; equity starts at 1
  units: jax.Array
  held: jax.Array  # the last filled target
  target: jax.Array  # the last decided target (a change triggers a trade)
  pending: jax.Array  # bool: the target changed at a filled bar's open and has not traded yet
  entry_price: jax.Array  # unit-weighted average fill of the open position, 0 when flat
  equity: jax.Array  # marked at the close of ``row``
  episode_return: jax.Array  # summed log-return of this episode so far


def check_action_mode(action_mode: str, allow_short: bool = False, where: str = 'env') -> None:
  """Raises a ConfigError for an unknown action mode or a non-boolean ``allow_short``."""
  if action_mode not in ACTION_MODES:
    raise errors.ConfigError(errors.describe(
        f'{where}.action_mode', f'unknown action mode {action_mode!r}',
        f'use one of {ACTION_MODES}: "discrete" (hold/buy/sell) or "continuous" (target weight)'))
  if not isinstance(allow_short, (bool, np.bool_)):
    raise errors.ConfigError(errors.describe(f'{where}.allow_short', f'{allow_short!r}',
                                             'use True or False'))


def episode_starts(tradable: np.ndarray, episode_length: int) -> np.ndarray:
  """Rows ``r`` with ``tradable[r : r + episode_length]`` all True, ``[num_starts]`` int32."""
  tradable = np.asarray(tradable, bool)
  count = len(tradable) - episode_length + 1
  if count <= 0:
    return np.zeros(0, np.int32)
  before = np.concatenate([[0], np.cumsum(~tradable, dtype=np.int64)])
  starts = np.arange(count)
  return starts[before[starts + episode_length] == before[starts]].astype(np.int32)


def make_params(features, open_price, close, *, tradable=None, episode_length: int = 256,
                lookback: int = 1, action_mode: str = 'discrete', allow_short: bool = False,
                fee_rate: float = fills.DEFAULT_FEE_RATE,
                slippage_bps: float = fills.DEFAULT_SLIPPAGE_BPS,
                rebalance_threshold: float | None = None, where: str = 'env',
                observed=None) -> EnvParams:
  """Validates host arrays ``features [rows, F]``, ``open``/``close [rows]`` and the rules; returns
  :class:`EnvParams` on the device.

  ``tradable [rows]`` (default: every row with ``lookback - 1`` rows before it and one after) marks
  the rows where a decision may be taken; episode starts are derived from it. ``observed [rows]``
  (the store's column; default all True) marks the bars whose open can be traded.
  """
  check_action_mode(action_mode, allow_short, where)
  for name, value, minimum in (('episode_length', episode_length, 1), ('lookback', lookback, 1)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
      raise errors.ConfigError(errors.describe(f'{where}.{name}',
                                               f'{value!r} must be an integer >= {minimum}'))
  if not 0 <= fee_rate < 1:
    raise errors.ConfigError(errors.describe(f'{where}.fee_rate', f'{fee_rate!r}',
                                             'use a rate per side such as 0.001 (0.1%)'))
  if not 0 <= slippage_bps < 10_000:
    raise errors.ConfigError(errors.describe(f'{where}.slippage_bps', f'{slippage_bps!r}',
                                             'use basis points, e.g. 1'))
  if rebalance_threshold is not None and not rebalance_threshold >= 0:
    raise errors.ConfigError(errors.describe(
        f'{where}.rebalance_threshold', f'{rebalance_threshold!r}', 'use None or a weight >= 0'))
  features = np.asarray(features, np.float32)
  open_price = np.asarray(open_price, np.float32)
  close = np.asarray(close, np.float32)
  if (features.ndim != 2 or open_price.shape != features.shape[:1]
      or close.shape != open_price.shape):
    raise errors.DataError(errors.describe(
        where, f'features {features.shape}, open {open_price.shape}, close {close.shape}',
        'pass features [rows, F] and open, close [rows] for the same rows'))
  rows = len(close)
  if tradable is None:
    tradable = np.zeros(rows, bool)
    tradable[lookback - 1:rows - 1] = True
  tradable = np.asarray(tradable, bool).copy()
  if tradable.shape != (rows,):
    raise errors.DataError(errors.describe(where, f'tradable has shape {tradable.shape}',
                                           f'pass one flag per row ({rows})'))
  tradable[rows - 1:] = False  # the last row has no next bar to fill at
  tradable[:lookback - 1] = False
  prices_bad = ~(np.isfinite(open_price) & np.isfinite(close) & (open_price > 0) & (close > 0))
  bad = np.flatnonzero(tradable & (prices_bad | np.roll(prices_bad, -1)))
  if bad.size:
    raise errors.DataError(errors.describe(
        where, f'{bad.size} tradable rows with a non-positive or non-finite open/close at the '
        f'row or the next one (first at row {bad[0]})',
        'mark those rows untradable or fix the prices'))
  observed = np.ones(rows, bool) if observed is None else np.asarray(observed)
  if observed.shape != (rows,) or observed.dtype.kind not in 'bi':
    raise errors.DataError(errors.describe(where, f'observed has shape {observed.shape}, dtype '
                                           f'{observed.dtype}', f'pass one bool per row ({rows})'))
  starts = episode_starts(tradable, episode_length)
  if starts.size == 0:
    raise errors.DataError(errors.describe(
        where, f'no run of {episode_length} consecutive tradable bars ({int(tradable.sum())} '
        f'tradable rows of {rows})', 'use a shorter env.episode_length or a longer split'))
  # Warm-up and filled rows may hold NaN features; they are never observed inside an episode.
  features = np.where(np.isfinite(features), features, np.float32(0.0))
  return EnvParams(
      features=jnp.asarray(features), open=jnp.asarray(open_price), close=jnp.asarray(close),
      tradable=jnp.asarray(tradable), observed=jnp.asarray(observed, bool),
      starts=jnp.asarray(starts),
      episode_length=int(episode_length), lookback=int(lookback), action_mode=action_mode,
      allow_short=bool(allow_short), fee_rate=float(fee_rate), slippage_bps=float(slippage_bps),
      rebalance_threshold=None if rebalance_threshold is None else float(rebalance_threshold))


def initial_state(row: jax.Array) -> EnvState:
  """A flat book with equity 1 at bar ``row``."""
  zero = jnp.zeros((), jnp.float32)
  return EnvState(row=jnp.asarray(row, jnp.int32), time=jnp.zeros((), jnp.int32),
                  cash=jnp.ones((), jnp.float32), units=zero, held=zero, target=zero,
                  pending=jnp.zeros((), bool),
                  entry_price=zero, equity=jnp.ones((), jnp.float32), episode_return=zero)


def observe(state: EnvState, params: EnvParams) -> jax.Array:
  """The observation ``[lookback * F + 2]`` at the state's bar (see the module docstring)."""
  window = jax.lax.dynamic_slice_in_dim(params.features, state.row - params.lookback + 1,
                                        params.lookback, axis=0)
  close = params.close[state.row]
  equity = jnp.maximum(state.equity, _EQUITY_FLOOR)
  weight = state.units * close / equity
  unrealised = 100.0 * state.units * (close - state.entry_price) / equity
  return jnp.concatenate([window.reshape(-1), jnp.stack([weight, unrealised])])


def reset(key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
  """A new episode at a uniformly drawn start row."""
  index = jax.random.randint(key, (), 0, params.starts.shape[0])
  state = initial_state(params.starts[index])
  return observe(state, params), state


def action_to_target(action: jax.Array, state: EnvState, params: EnvParams) -> jax.Array:
  """The target weight an action asks for (float32 scalar)."""
  if params.action_mode == 'discrete':
    action = jnp.asarray(action, jnp.int32)
    return jnp.where(action == BUY, 1.0,
                     jnp.where(action == SELL, params.low, state.target)).astype(jnp.float32)
  return jnp.clip(jnp.asarray(action, jnp.float32).reshape(()), params.low, 1.0)


def _entry_price(units_before, units_after, entry, fill):
  """Average fill of the position after a trade: new on opening or flipping, unit-weighted on
  adding, unchanged on reducing, 0 when flat."""
  opened = (units_after != 0) & (jnp.sign(units_after) != jnp.sign(units_before))
  added = ((units_after != 0) & (jnp.sign(units_after) == jnp.sign(units_before))
           & (jnp.abs(units_after) > jnp.abs(units_before)))
  before, after = jnp.abs(units_before), jnp.abs(units_after)
  averaged = (entry * before + fill * (after - before)) / jnp.where(added, after, 1.0)
  entry = jnp.where(opened, fill, jnp.where(added, averaged, entry))
  return jnp.where(units_after == 0, 0.0, entry)


def transition(state: EnvState, target: jax.Array, params: EnvParams
               ) -> tuple[EnvState, jax.Array, dict[str, jax.Array]]:
  """Fills ``target`` at the next bar's open and marks the book at its close; no reset.

  Returns ``(state at row + 1, reward, info)`` with ``info``: trade (units), fill, fee, equity.
  """
  next_row = state.row + 1
  threshold = params.rebalance_threshold
  observed = params.observed[next_row]
  changed = (target != state.target) | state.pending
  (cash, units, held), (trade, fill, fee) = fills.fill_at_open(
      (state.cash, state.units, state.held), target, params.open[next_row], changed,
      fee_rate=params.fee_rate, slippage=params.slippage_bps / 10_000,
      threshold=0.0 if threshold is None else threshold, use_threshold=threshold is not None,
      observed=observed)
  equity = cash + units * params.close[next_row]
  reward = (jnp.log(jnp.maximum(equity, _EQUITY_FLOOR))
            - jnp.log(jnp.maximum(state.equity, _EQUITY_FLOOR)))
  new_state = EnvState(
      row=next_row, time=state.time + 1, cash=cash, units=units, held=held,
      target=jnp.asarray(target, jnp.float32), pending=changed & ~observed,
      entry_price=_entry_price(state.units, units, state.entry_price, fill),
      equity=equity, episode_return=state.episode_return + reward)
  return new_state, reward, {'trade': trade, 'fill': fill, 'fee': fee, 'equity': equity}


def step_env(key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams
             ) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict[str, jax.Array]]:
  """One step without the automatic reset: ``(obs, state, reward, done, info)``."""
  del key  # the market is a recorded path: stepping is deterministic
  state, reward, info = transition(state, action_to_target(action, state, params), params)
  done = state.time >= params.episode_length
  return observe(state, params), state, reward, done, info


def step(key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams
         ) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict[str, jax.Array]]:
  """One step; a finished episode is replaced by a fresh one drawn with ``key``.

  ``info`` adds ``terminal_observation`` (the observation before any reset),
  ``episode_return`` (the finished episode's summed reward where ``done``, else 0) and
  ``final_equity`` (likewise).
  """
  obs, next_state, reward, done, info = step_env(key, state, action, params)
  reset_obs, reset_state = reset(key, params)
  info = dict(info, terminal_observation=obs,
              episode_return=jnp.where(done, next_state.episode_return, 0.0),
              final_equity=jnp.where(done, next_state.equity, 0.0))
  choose = lambda fresh, kept: jnp.where(done, fresh, kept)
  return (choose(reset_obs, obs), jax.tree.map(choose, reset_state, next_state), reward, done,
          info)


def sample_action(key: jax.Array, action_mode: str, low: float = 0.0) -> jax.Array:
  """A uniformly random action: one of the discrete actions, or a target in ``[low, 1]``."""
  if action_mode == 'discrete':
    return jax.random.randint(key, (), 0, len(ACTION_NAMES))
  return jax.random.uniform(key, (), minval=low, maxval=1.0)
