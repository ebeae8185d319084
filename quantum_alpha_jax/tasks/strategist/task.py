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
   fee and fill rule (:func:`quantum_alpha_jax.fills.fill_at_open`), marks equity ``E_t`` at the close and
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

The package: :mod:`.task` (this: the task class, its loss), :mod:`.rollout` (the free-running
rollout and the per-bar signals), :mod:`.imitation` (agreement with the oracle and the best
behaviour), :mod:`.baselines` (backtests of the model, buy-and-hold and the heuristics),
:mod:`.evaluation` and :mod:`.plots` (a split scored, and its pictures), :mod:`.experiment` (run,
format, load).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from quantum_alpha_jax.data import trajectories
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.models import decision_transformer as dt
from quantum_alpha_jax.tasks.strategist.rollout_core import rollout_core

SIGNAL_COLUMNS = ('action', 'size', 'held_position', 'target_position')
# What the ensemble reads of them (``held_position`` is the rollout's own bookkeeping).
TRADED_COLUMNS = ('action', 'size', 'target_position')


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

  def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None,
              step: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    del step  # no schedule: the imitation loss is the same at every step
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
    """The jitted rollout (:func:`rollout_core`), kept with the task so that repeated rollouts of
    the same shapes compile once."""
    return jax.jit(functools.partial(rollout_core, self))

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



def loss_metrics(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The metrics :meth:`StrategistTask.loss_fn` reports besides the loss."""
  del config
  return ('action_cross_entropy', 'action_accuracy', 'size_loss')
