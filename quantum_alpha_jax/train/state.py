"""The train state and the optimizer chain built from a config.

``TrainState`` holds fp32 master params, the optax state, the step and the base rng. Every step's
randomness is ``fold_in(rng, step)``, so a resumed run draws the same dropout masks as an
uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from quantum_alpha_jax.errors import ConfigError, describe

OPTIMIZERS = ('adam', 'adamw')
SCHEDULES = ('cosine', 'constant')


class TrainState(flax.struct.PyTreeNode):
  """``step`` (int32 scalar), ``params`` (fp32 pytree), ``opt_state`` and base ``rng`` (a raw
  ``uint32 [2]`` key, ``jax.random.PRNGKey``-style, so checkpoints hold plain arrays)."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array

  @classmethod
  def create(cls, params: Any, optimizer: optax.GradientTransformation,
             rng: jax.Array) -> TrainState:
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32)
                          if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, params)
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=optimizer.init(params), rng=rng)


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """Linear warmup from 0 to ``learning_rate``, then cosine decay to ``final_lr_fraction`` × it
  over the remaining steps (``schedule='cosine'``), or constant after warmup."""
  peak = float(config.learning_rate)
  warmup = int(config.warmup_steps)
  if peak <= 0:
    raise ConfigError(describe('config.optimizer.learning_rate', f'{peak} is not positive'))
  if config.schedule not in SCHEDULES:
    raise ConfigError(describe('config.optimizer.schedule', f'unknown schedule {config.schedule!r}',
                               f'use one of {SCHEDULES}'))
  if config.schedule == 'constant':
    if warmup <= 0:
      return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  warmup = min(warmup, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=peak * float(config.final_lr_fraction))


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
  """``clip_by_global_norm(clip_norm)`` then Adam/AdamW on the schedule; returns (chain, schedule)."""
  schedule = learning_rate_schedule(config, total_steps)
  if config.name not in OPTIMIZERS:
    raise ConfigError(describe('config.optimizer.name', f'unknown optimizer {config.name!r}',
                               f'use one of {OPTIMIZERS}'))
  if config.name == 'adamw':
    update = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                         weight_decay=config.weight_decay)
  else:
    update = optax.adam(schedule, b1=config.b1, b2=config.b2, eps=config.eps)
  parts = []
  if config.clip_norm:
    parts.append(optax.clip_by_global_norm(float(config.clip_norm)))
  parts.append(update)
  return optax.chain(*parts), schedule


def optimizer_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The optimizer sub-config every model config embeds (Adam, warmup + cosine, clip 1.0)."""
  config = ml_collections.ConfigDict({
      'name': 'adam', 'learning_rate': 1e-3, 'schedule': 'cosine', 'warmup_steps': 100,
      'final_lr_fraction': 0.01, 'clip_norm': 1.0, 'weight_decay': 1e-4,
      'b1': 0.9, 'b2': 0.999, 'eps': 1e-8})
  config.update(overrides)
  return config
