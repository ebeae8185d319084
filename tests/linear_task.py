"""A linear forecaster of the window's future returns: the smallest real task for trainer tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp


class LinearTask:
  """Predicts ``future_returns [batch, decoder]`` from the last encoder row ``[batch, 44]``."""

  def init_params(self, rng, batch):
    features, horizons = batch['encoder'].shape[-1], batch['future_returns'].shape[-1]
    return {'w': 0.01 * jax.random.normal(rng, (features, horizons)), 'b': jnp.zeros(horizons)}

  def loss_fn(self, params, batch, rng):
    del rng
    prediction = batch['encoder'][:, -1] @ params['w'] + params['b']
    error = jnp.mean(jnp.square(prediction - batch['future_returns']).astype(jnp.float32), -1)
    mask = batch['mask'].astype(jnp.float32)
    loss = jnp.sum(error * 1e4 * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, {'mse': loss, 'mean_prediction': jnp.sum(
        jnp.mean(prediction, -1).astype(jnp.float32) * mask) / jnp.maximum(jnp.sum(mask), 1.0)}


class RegressionTask:
  """``y = x @ w`` on plain arrays ``x [batch, features]``, ``y [batch]``; dropout-free MLP-less."""

  def init_params(self, rng, batch):
    return {'w': jnp.zeros(batch['x'].shape[-1]), 'b': jnp.zeros(())}

  def loss_fn(self, params, batch, rng):
    del rng
    prediction = batch['x'] @ params['w'] + params['b']
    error = jnp.square(prediction - batch['y']).astype(jnp.float32)
    mask = batch['mask'].astype(jnp.float32)
    loss = jnp.sum(error * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, {'mae': jnp.sum(jnp.abs(prediction - batch['y']).astype(jnp.float32) * mask)
                         / jnp.maximum(jnp.sum(mask), 1.0)}


class ScheduledRegressionTask(RegressionTask):
  """:class:`RegressionTask` whose loss weight follows the optimizer step (a warm-up, as KL
  annealing would): ``min(1, (step + 1) / warmup)`` times the squared error; the weight and the
  step it was given are reported as metrics (the step is -1 in evaluation, where it is None)."""

  warmup = 4

  def loss_fn(self, params, batch, rng, step=None):
    loss, metrics = super().loss_fn(params, batch, rng)
    if step is None:
      return loss, {**metrics, 'weight': jnp.ones(()), 'step': -jnp.ones(())}
    weight = jnp.minimum(1.0, (step + 1.0) / self.warmup)
    return weight * loss, {**metrics, 'weight': weight, 'step': jnp.asarray(step, jnp.float32)}
