"""The Strategist's rollout one bar at a time: the cached one-step decode and the account.

This is ``tasks/strategist`` ``_rollout_core`` unrolled for a stream: the same fill, reward, return
token, state and decision per bar (``step`` there), the same episodes (K bars from the first bar
of each run of usable bars, a fresh key/value cache, timestep 0 and the return token restarted at
each episode's first bar, the account carried over), and the same restarts (a run that follows
bars without a signal starts flat, as the backtest holds those bars flat). One symbol per
:class:`StrategistState`.

Two decodes, one account: ``decode='jax'`` jits the whole bar (account, ``DecisionTransformer.
decode`` with its slot cache, decision) as one function, as the batch rollout's scan body;
``decode=<runner>`` calls an exported ``strategist_step`` (ONNX: ``decode_rolling``, the cache an
explicit input and output) between two jitted halves that keep the account arithmetic the batch
path's (``fills.fill_at_open`` and ``trajectories.next_position`` in XLA float32).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from quantum_alpha_jax.models import decision_transformer as dt
from quantum_alpha_jax.tasks.strategist import rollout_core


def _before_decode(task: Any, account: tuple, token: jax.Array, timestep: jax.Array,
                   features: jax.Array, bar_open: jax.Array, bar_close: jax.Array,
                   bar_observed: jax.Array, first_token: jax.Array) -> tuple:
  """The rollout's steps 1-2 (``rollout_core.before_decode``). Returns ``(account before the
  decision, new token, state)``."""
  account, new_token, state, _ = rollout_core.before_decode(
      task.spec, account, token, timestep, features, bar_open, bar_close, bar_observed,
      first_token)
  return account, new_token, state


def _after_decode(task: Any, account: tuple, action_logits: jax.Array, size: jax.Array) -> tuple:
  """The rollout's step 3 (``rollout_core.after_decode``). Returns ``(account, action, size
  token, outputs [4]: action, size, held, position)``."""
  account, chosen, token_size = rollout_core.after_decode(task.spec, account, action_logits, size)
  # One [4] array out (action, size, held, position): a single device-to-host copy per bar.
  outputs = jnp.stack([chosen.astype(jnp.float32)[0], size[0], account[2][0], account[4][0]])
  return account, chosen, token_size, outputs


def _jax_step(task: Any, params: Any, cache: Any, account: tuple, token: jax.Array,
              action: jax.Array, size: jax.Array, timestep: jax.Array, features: jax.Array,
              bar_open: jax.Array, bar_close: jax.Array, bar_observed: jax.Array,
              first_token: jax.Array) -> tuple:
  """One bar of ``_rollout_core``'s ``step`` at batch 1 (a real bar) with the JAX decode."""
  model = task.model
  account, new_token, state = _before_decode(task, account, token, timestep, features, bar_open,
                                             bar_close, bar_observed, first_token)
  heads, cache = model.apply({'params': params}, cache, timestep, new_token, state, action, size,
                             method=model.decode)
  account, chosen, token_size, outputs = _after_decode(task, account, heads['action_logits'],
                                                       heads['size'])
  return cache, account, new_token, chosen, token_size, outputs


@functools.lru_cache(maxsize=8)
def _compiled(task: Any) -> tuple[Callable, Callable, Callable]:
  """The jitted whole step (JAX decode) and the two halves around an exported decode, per task."""
  return (jax.jit(functools.partial(_jax_step, task)),
          jax.jit(functools.partial(_before_decode, task)),
          jax.jit(functools.partial(_after_decode, task)))


def _flat_account() -> tuple:
  ones, zeros = jnp.ones((1,), jnp.float32), jnp.zeros((1,), jnp.float32)
  return (ones, zeros, zeros, ones, zeros, zeros)


@dataclasses.dataclass
class StrategistState:
  """The rollout of one symbol: call :meth:`decide` at each usable bar, :meth:`skip` at a bar
  without a signal (the next usable bar starts a new, flat run). ``decode`` is ``'jax'`` or an
  exported ``strategist_step`` runner ``run(timestep, rtg, state, previous_action, previous_size,
  cache) -> {'action_logits', 'size', 'next_cache'}``."""

  task: Any
  params: Any
  decode: str | Callable[..., Mapping[str, np.ndarray]] = 'jax'
  timestep: int = 0
  in_run: bool = False

  def __post_init__(self):
    self.first_token = np.full((1,), self.task.conditioning_token(self.task.target_return),
                               np.float32)
    self._step, self._before, self._after = _compiled(self.task)
    model = self.task.model
    # Immutable zeros shared by every episode: the slot cache (JAX) or the rolling one (export).
    self._empty_cache = (dt.initial_cache(model, 1, jnp.float32) if self.decode == 'jax'
                         else np.zeros(dt.rolling_cache_shape(model, 1), np.float32))
    self._empty = (jnp.zeros((1,), jnp.float32), jnp.zeros((1,), jnp.int32),
                   jnp.zeros((1,), jnp.float32))
    self.account = _flat_account()
    self._reset_episode()

  def _reset_episode(self) -> None:
    self.cache = self._empty_cache
    self.token, self.action, self.size = self._empty
    self.timestep = 0

  def skip(self) -> None:
    """A bar with no Strategist signal: the run ends; the engine holds the bar flat."""
    self.in_run = False

  def decide(self, features: np.ndarray, bar_open: float, bar_close: float, observed: bool
             ) -> dict[str, float]:
    """The decision at a usable bar's close from its normalised state features ``[44]`` (float32),
    its open (the float32 ``open`` feature, as the batch rollout reads it) and close."""
    if not self.in_run:  # A new run: flat account, new episode.
      self.account = _flat_account()
      self._reset_episode()
      self.in_run = True
    elif self.timestep == self.task.model.context_length:  # Next episode: the account carries on.
      self._reset_episode()
    # numpy inputs: jit converts them on the way in, without one dispatched op per array.
    bar = (np.int32(self.timestep), np.asarray(features, np.float32).reshape(1, -1),
           np.full((1,), bar_open, np.float32), np.full((1,), bar_close, np.float32),
           np.full((1,), observed, bool), self.first_token)
    if self.decode == 'jax':
      self.cache, self.account, self.token, self.action, self.size, outputs = self._step(
          self.params, self.cache, self.account, self.token, self.action, self.size, *bar)
    else:
      account, self.token, state = self._before(self.account, self.token, *bar)
      heads = self.decode(np.full((1,), self.timestep, np.int32), np.asarray(self.token),
                          np.asarray(state), np.asarray(self.action), np.asarray(self.size),
                          self.cache)
      self.cache = heads['next_cache']
      self.account, self.action, self.size, outputs = self._after(
          account, heads['action_logits'], heads['size'])
    self.timestep += 1
    action, size, held, position = (float(value) for value in np.asarray(outputs))
    return {'action': int(action), 'size': size, 'held_position': held,
            'target_position': position}
