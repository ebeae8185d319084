"""The fill model: target weights decided at a bar's close, filled at the next observed open with a
fee and slippage on the traded notional, simulated in float64.

The rules are written out in :mod:`quantum_alpha_jax.backtest.engine`'s docstring, which builds the
backtest's accounting (equity, trades, statistics) on top of this simulation. The model lives here,
below every layer that needs it, because three layers share one fee and fill rule: the Strategist's
trajectory rewards (:mod:`quantum_alpha_jax.data.trajectories`), the backtest engine and the RL
environment (:mod:`quantum_alpha_jax.rl.env`, through :func:`fill_at_open` inside ``lax.scan``).
It imports nothing of the package but :mod:`errors`, so data can use it without importing the
backtest (tests/test_imports.py keeps it so).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from quantum_alpha_jax import errors

DEFAULT_FEE_RATE = 0.001
DEFAULT_SLIPPAGE_BPS = 1.0
DEFAULT_INITIAL_CAPITAL = 10_000.0


def fill_at_open(carry, target, price, target_changed, *, fee_rate, slippage, threshold=0.0,
                 use_threshold: bool = False, observed=True):
  """One bar's open: trade from the held position towards ``target`` (the rules in
  :mod:`quantum_alpha_jax.backtest.engine`).

  ``carry = (cash, units, held)`` before the open; ``target`` was decided at the previous close,
  ``price`` is this bar's open and ``target_changed`` whether ``target`` differs from the target
  of the last observed open. ``slippage`` is a fraction (bps / 10,000); where ``observed`` is False
  (a filled bar) nothing trades. Returns ``((cash, units, held), (trade, fill, fee))``. Pure jnp on
  scalars or arrays of one shape (dtype-generic), so the jitted simulation below and a policy
  rollout inside ``lax.scan`` share one fee and fill model.
  """
  cash, units, held = carry
  zero = jnp.zeros_like(price)
  equity_open = cash + units * price
  solvent = equity_open > 0
  target = jnp.where(solvent, target, zero)
  direction = jnp.sign(target * equity_open / price - units)
  fill = price * (1.0 + slippage * direction)
  desired = jnp.where(target == 0, zero, target * equity_open / fill)
  trade = desired - units
  trade = jnp.where(jnp.sign(trade) == direction, trade, zero)
  if use_threshold:
    weight = units * price / equity_open
    flips = jnp.sign(target) * jnp.sign(units) < 0
    rebalance = ((jnp.abs(target - weight) > threshold) | ((target == 0) & (units != 0))
                 | flips | ~solvent)
  else:
    rebalance = target_changed | (~solvent & (units != 0))
  rebalance = rebalance & observed
  trade = jnp.where(rebalance, trade, zero)
  fee = fee_rate * jnp.abs(trade) * fill
  cash = cash - trade * fill - fee
  units = jnp.where(rebalance & (target == 0), zero, units + trade)
  held = jnp.where(rebalance, target, held)
  return (cash, units, held), (trade, fill, fee)


def _simulate_core(signal, open_price, changed, observed, initial_capital, fee_rate, slippage,
                   threshold, use_threshold: bool):
  """Scans bars 1..T-1: signal[i] = target[i] filled at open_price[i] = open[i + 1] where
  observed[i] = observed[i + 1]."""
  dtype = open_price.dtype
  zero = jnp.zeros((), dtype)

  def step(carry, inputs):
    target, price, target_changed, bar_observed = inputs
    carry, (trade, fill, fee) = fill_at_open(
        carry, target, price, target_changed, fee_rate=fee_rate, slippage=slippage,
        threshold=threshold, use_threshold=use_threshold, observed=bar_observed)
    cash, units, held = carry
    return carry, (cash, units, held, trade, fill, fee)

  initial = (jnp.asarray(initial_capital, dtype), zero, zero)
  _, outputs = jax.lax.scan(step, initial, (signal, open_price, changed, observed))
  return outputs


_simulate = jax.jit(_simulate_core, static_argnames=('use_threshold',))
# The same simulation over a leading axis of independent series [series, time].
@functools.partial(jax.jit, static_argnames=('use_threshold',))
def _simulate_batch(signal, open_price, changed, observed, initial_capital, fee_rate, slippage,
                    threshold, use_threshold: bool):
  core = functools.partial(_simulate_core, use_threshold=use_threshold)
  return jax.vmap(core, in_axes=(0, 0, 0, 0, None, None, None, None))(
      signal, open_price, changed, observed, initial_capital, fee_rate, slippage, threshold)


def _simulation_state(target, outputs, initial_capital) -> dict[str, np.ndarray]:
  """Prepends the flat, untraded bar 0 to the scan's outputs (on the last axis)."""
  cash, units, held, trade, fill, fee = outputs
  leading = np.shape(target)[:-1]
  first = lambda value, array: np.concatenate([np.full(leading + (1,), value), array], axis=-1)
  traded = first(0.0, trade)
  return {
      'cash': first(float(initial_capital), cash),
      'units': first(0.0, units),
      'target_held': first(0.0, held),
      'traded_units': traded,
      'fill_price': np.where(traded != 0, first(np.nan, fill), np.nan),
      'fees': first(0.0, fee),
  }


def _changed(target: np.ndarray, observed: np.ndarray) -> np.ndarray:
  """For the targets that get filled (at bars 1..T-1): whether the target changed (flat start)
  at this open or at a filled open skipped since the last observed one; [..., T - 1]."""
  previous = np.concatenate([np.zeros(target.shape[:-1] + (1,)), target[..., :-2]], axis=-1)
  changed = target[..., :-1] != previous
  steps = np.arange(changed.shape[-1])
  last_change = np.maximum.accumulate(np.where(changed, steps, -1), axis=-1)
  fills = observed[..., 1:]
  last_fill = np.maximum.accumulate(np.where(fills, steps, -1), axis=-1)
  last_fill_before = np.concatenate([np.full(fills.shape[:-1] + (1,), -1), last_fill[..., :-1]],
                                    axis=-1)
  return last_change > last_fill_before


def observed_flags(observed, shape: tuple[int, ...], where: str) -> np.ndarray:
  """The ``observed`` flags as bool of ``shape`` (all True when None)."""
  if observed is None:
    return np.ones(shape, bool)
  flags = np.asarray(observed)
  if flags.shape != shape or flags.dtype.kind not in 'bi':
    raise errors.DataError(errors.describe(
        f'{where}: observed', f'shape {flags.shape} dtype {flags.dtype}, expected bool {shape}',
        "pass the store's observed column for the same bars"))
  return flags.astype(bool)


def simulate(target, open_price, initial_capital: float, fee_rate: float, slippage_bps: float,
             rebalance_threshold: float | None, observed=None) -> dict[str, np.ndarray]:
  """The raw float64 simulation of validated inputs [time]; arrays [time] of cash, units, fills.

  ``observed`` [time] bool (default all True): no fill at a filled bar's open (the rules in
  :mod:`quantum_alpha_jax.backtest.engine`).
  """
  target = np.asarray(target, dtype=np.float64)
  open_price = np.asarray(open_price, dtype=np.float64)
  observed = observed_flags(observed, target.shape, 'simulate')
  with jax.enable_x64(True):
    outputs = _simulate(
        target[:-1], open_price[1:], _changed(target, observed), observed[1:],
        np.float64(initial_capital),
        np.float64(fee_rate), np.float64(slippage_bps / 10_000),
        np.float64(0.0 if rebalance_threshold is None else rebalance_threshold),
        use_threshold=rebalance_threshold is not None)
    outputs = jax.device_get(outputs)
  return _simulation_state(target, outputs, initial_capital)


def simulate_batch(target, open_price, initial_capital: float = DEFAULT_INITIAL_CAPITAL,
                   fee_rate: float = DEFAULT_FEE_RATE, slippage_bps: float = DEFAULT_SLIPPAGE_BPS,
                   observed=None) -> dict[str, np.ndarray]:
  """:func:`simulate` of many independent series at once (default rebalancing), float64.

  ``target``, ``open_price`` [series, time] (validated by the caller: finite, positive prices),
  ``observed`` [series, time] bool or None; returns the same arrays as :func:`simulate`, each
  [series, time]. Equity at each close is ``cash + units * close``.
  """
  target = np.asarray(target, dtype=np.float64)
  open_price = np.asarray(open_price, dtype=np.float64)
  if target.ndim != 2 or target.shape != open_price.shape or target.shape[1] < 2:
    raise errors.DataError(errors.describe(
        'simulate_batch', f'target {target.shape} and open {open_price.shape} must be the same '
        '[series, time] shape with time >= 2'))
  observed = observed_flags(observed, target.shape, 'simulate_batch')
  with jax.enable_x64(True):
    outputs = _simulate_batch(
        target[:, :-1], open_price[:, 1:], _changed(target, observed), observed[:, 1:],
        np.float64(initial_capital),
        np.float64(fee_rate), np.float64(slippage_bps / 10_000), np.float64(0.0),
        use_threshold=False)
    outputs = jax.device_get(outputs)
  return _simulation_state(target, outputs, initial_capital)
