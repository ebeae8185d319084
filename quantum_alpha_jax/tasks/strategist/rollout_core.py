"""The jitted core of the Strategist's free-running rollout: one ``lax.scan`` over episodes around
a ``lax.scan`` over the steps of an episode (the maths in :mod:`.task`'s doc, step 1 to 3).
"""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import jax
import jax.numpy as jnp

from quantum_alpha_jax import fills
from quantum_alpha_jax.data import trajectories
from quantum_alpha_jax.models import decision_transformer as dt

if TYPE_CHECKING:
  from quantum_alpha_jax.tasks.strategist.task import StrategistTask


def before_decode(spec: Any, account: tuple, token: jax.Array, timestep: jax.Array,
                  features: jax.Array, bar_open: jax.Array, bar_close: jax.Array,
                  bar_observed: jax.Array, first_token: jax.Array) -> tuple:
  """Steps 1-2 of a bar, before the model decides: fill the standing target ``p_{t-1}`` at this
  bar's open (the engine's rule: trade when the target changed since the last observed open;
  nothing trades at a hole-filling bar), mark the close, the reward, and the return still to be
  earned (restarted at each episode's first step; with ``condition_on == 'behaviour'`` the
  target at every step). The state ``[B, 45]`` holds the position the engine holds since this
  bar's open (the standing target unless its fill waits past a filled bar). Returns ``(account,
  return token, state, reward)``; the account is ``(cash, units, held, equity at this close,
  position, the target before it)``. Shared by the rollout and the decision service
  (``serve/strategist_state.py``), so the two cannot drift apart."""
  fee_rate, slippage = spec.fee_rate, spec.slippage_bps / 10_000
  cash, units, held, equity, position, before = account
  (cash, units, held), _ = fills.fill_at_open(
      (cash, units, held), position, bar_open, position != before, fee_rate=fee_rate,
      slippage=slippage, observed=bar_observed)
  position_before = jnp.where(bar_observed, position, before)
  marked = cash + units * bar_close
  reward = spec.reward_scale * jnp.log(jnp.maximum(marked, 1e-12) / jnp.maximum(equity, 1e-12))
  new_token = jnp.where((timestep == 0) | (spec.condition_on == 'behaviour'), first_token,
                        (token - spec.rtg_scale * reward) / spec.discount)
  state = jnp.concatenate([features, held[:, None]], axis=-1)
  return (cash, units, held, marked, position, position_before), new_token, state, reward


def after_decode(spec: Any, account: tuple, action_logits: jax.Array, size: jax.Array) -> tuple:
  """Step 3, the decision from the model's heads: the greedy action, the new position, the
  canonical action (a step whose position does not change is a hold) and its size token.
  Returns ``(account with the new position, action, size token)``."""
  cash, units, held, marked, position, position_before = account
  chosen = jnp.argmax(action_logits, -1).astype(jnp.int32)
  new_position = trajectories.next_position(position, chosen, size, spec.allow_short, xp=jnp)
  chosen = jnp.where(new_position == position, trajectories.HOLD, chosen)
  sized = (chosen == trajectories.BUY) | ((chosen == trajectories.SELL) & spec.allow_short)
  token_size = jnp.where(sized, jnp.abs(new_position), 0.0)
  return (cash, units, held, marked, new_position, position_before), chosen, token_size


def rollout_core(task: StrategistTask, params: Any, features: jax.Array, open_price: jax.Array,
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
  zeros, ones = jnp.zeros((batch,), dtype), jnp.ones((batch,), dtype)
  # (cash, units, engine's held target, equity at the last close, position, the target before it)
  flat = (ones, zeros, zeros, ones, zeros, zeros)

  def step(carry, inputs):
    cache, account, token, action, size = carry
    timestep, bar_features, bar_open, bar_close, bar_valid, bar_observed = inputs
    decided, new_token, state, reward = before_decode(spec, account, token, timestep, bar_features,
                                                      bar_open, bar_close, bar_observed,
                                                      first_token)
    heads, cache = model.apply({'params': params}, cache, timestep, new_token, state, action, size,
                               method=model.decode)
    new_size = heads['size']
    decided, chosen, token_size = after_decode(spec, decided, heads['action_logits'], new_size)
    held, new_position = decided[2], decided[4]
    new = (decided, new_token, chosen, token_size)
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
