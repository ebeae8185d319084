"""The pieces of the Guardian's loss: the random views of a window, the Gaussian KL, NT-Xent over
paired projections, and which windows of a batch share bars (see :mod:`.task` for the maths).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_NEGATIVE = -1e9  # logit of excluded pairs in NT-Xent (finite, so bf16 and gradients stay clean)

@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Random views of windows ``[batch, T, F]``: time shift, scaling, jitter, masking (:mod:`.task` doc)."""

  jitter: float = 0.05
  scale: float = 0.1
  max_shift: int = 4
  mask_probability: float = 0.1

  def __call__(self, rng: jax.Array, windows_: jax.Array) -> jax.Array:
    """One view of ``windows_ [batch, T, F]``, deterministic given ``rng``; same shape and dtype.
    Every window draws its own shift, scales, jitter and mask (two random calls in all)."""
    batch, length, features = windows_.shape
    uniform_key, normal_key = jax.random.split(rng)
    uniforms = jax.random.uniform(uniform_key, (batch, length + 1))
    normals = jax.random.normal(normal_key, (batch, length + 1, features))
    span = 2 * self.max_shift + 1
    shifts = jnp.minimum(jnp.floor(uniforms[:, :1] * span), span - 1).astype(jnp.int32)
    source = jnp.clip(jnp.arange(length)[None, :] - (shifts - self.max_shift), 0, length - 1)
    view = jnp.take_along_axis(windows_, source[:, :, None], axis=1).astype(jnp.float32)
    view = view * (1.0 + self.scale * normals[:, :1, :]) + self.jitter * normals[:, 1:, :]
    keep = uniforms[:, 1:, None] >= self.mask_probability
    return jnp.where(keep, view, 0.0).astype(windows_.dtype)


def gaussian_kl(mean: jax.Array, log_variance: jax.Array) -> jax.Array:
  """``KL(N(μ, σ²) ‖ N(0, 1))`` per latent: ``½ (μ² + σ² - log σ² - 1)``; ``[..., L]`` → same."""
  mean, log_variance = mean.astype(jnp.float32), log_variance.astype(jnp.float32)
  return 0.5 * (jnp.square(mean) + jnp.exp(log_variance) - log_variance - 1.0)


def nt_xent(first: jax.Array, second: jax.Array, temperature: float, mask: jax.Array,
            related: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """NT-Xent of paired projections ``first, second [batch, P]`` (row i of each: two views of one
  window) over the rows with ``mask [batch]`` = 1. ``related [batch, batch]`` (optional, True =
  not a negative) takes pairs of distinct windows out of the denominators, e.g. windows that share
  bars. Returns per window ``(loss [batch], top-1 [batch])``: the mean of its two views' losses,
  and the share of its views whose most similar candidate is its partner."""
  batch = first.shape[0]
  projections = jnp.concatenate([first, second], axis=0).astype(jnp.float32)
  projections = projections * jax.lax.rsqrt(
      jnp.maximum(jnp.sum(jnp.square(projections), -1, keepdims=True), 1e-12))
  logits = projections @ projections.T / temperature  # [2B, 2B]
  valid = jnp.concatenate([mask, mask]).astype(bool)
  index = jnp.arange(2 * batch)
  partner = (index + batch) % (2 * batch)
  allowed = valid[None, :] & (index[:, None] != index[None, :])
  if related is not None:
    window = jnp.arange(2 * batch) % batch
    negative_ok = ~related[window[:, None], window[None, :]] | (index[None, :] == partner[:, None])
    allowed = allowed & negative_ok
  logits = jnp.where(allowed, logits, _NEGATIVE)
  positive = logits[index, partner]
  losses = jax.nn.logsumexp(logits, axis=-1) - positive
  top1 = (jnp.argmax(logits, axis=-1) == partner).astype(jnp.float32)
  return 0.5 * (losses[:batch] + losses[batch:]), 0.5 * (top1[:batch] + top1[batch:])


def overlapping(anchors: jax.Array, window: int) -> jax.Array:
  """``[batch, batch]`` True where two windows of ``window`` bars ending at rows ``anchors`` share
  a bar (rows are unique across symbols, so windows of different symbols never do)."""
  return jnp.abs(anchors[:, None] - anchors[None, :]) < window

