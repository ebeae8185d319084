"""The Guardian task: a contrastive β-VAE that reads the market regime and the coming risk.

Input. The normalised window ``x = batch['encoder']`` ``[batch, T, 44]`` of the ``T`` bars up to
and including the anchor bar. Nothing later reaches the model. The batch also carries the next
``H = labels.horizon`` bar returns (``future_returns``), used only as *training labels*.

Views. Two augmentations ``x^a`` and ``x^b`` of every window (:class:`Augmentation`, applied to
the batch stacked twice, so each copy draws its own randomness): a time shift by ``s ~ U{-S..S}`` bars
(``x'[t] = x[clip(t - s, 0, T - 1)]``, the edge bar repeated), a scaling of every feature by
``1 + σ_s n_f``, additive jitter ``σ_j n_{t,f}``, and masking of whole bars (set to 0, the
training mean) with probability ``p``. In evaluation (``rng=None``) the views use a fixed key, so
the validation loss is the training objective, deterministically.

Loss. For window i, view v, posterior ``q(z | x^v) = N(μ^v, diag σ^v²)`` and decoder mean ``x̂^v``
(the clean window ``x`` is the target, a denoising VAE):

- reconstruction ``R^v = ½ ‖x - x̂^v‖²``: a unit-variance Gaussian likelihood up to a constant;
- ``KL_l = ½ (μ_l² + σ_l² - log σ_l² - 1)``, the closed form of ``KL(q ‖ N(0, I))`` per latent;
  with free bits λ the per-latent batch mean is floored, ``Σ_l max(λ, mean_i KL_il)``;
- β-VAE: ``(R + β KL) / (T · F)``, i.e. the negative ELBO per input value with the KL weighted
  by β (Higgins et al., 2017), averaged over both views;
- NT-Xent (Chen et al., 2020) over the ``2N`` projections ``p`` of the batch's real windows:
  ``ℓ_i = -log( exp(cos(p_i, p_j(i)) / τ) / Σ_{k ≠ i} exp(cos(p_i, p_k) / τ) )``, with ``j(i)``
  the other view of the same window; padding rows, and the views of other windows that share bars
  with window i (false negatives: overlapping windows of one symbol), are left out of every sum;
- regime cross-entropy ``-log P(y_i | μ^v)`` and the risk error ``(v̂^v - log RV_i)²``, both views.

Total: ``β-VAE + w_c NT-Xent + w_r CE + w_v risk``, each a mean over the batch's real windows.

Regime labels ``y``. ``labels.source='auto'``: the synthetic market's true regime at the anchor
where the store has one, else the rule label; ``'true'`` or ``'rule'`` force one of them.
The rule (:func:`rule_labels`): over the last ``lookback`` bars up to the anchor AND the next
``horizon`` bars, with log-returns ``r`` (``n`` of them), the trend statistic is
``τ = Σ r / (sqrt(mean r²) · sqrt(n))``, the net move in units of the move a driftless walk of the
same realised volatility would make. ``τ > k``: bull; ``τ < -k``: bear; else sideways
(``k = labels.trend_threshold``; a flat window, zero volatility, is sideways). It sees the future,
so it is a label to train and score against, never an input.

Regime mapping. The regime head (a small MLP + softmax on μ) is trained on those labels; the
regime is its argmax, with P(bull), P(bear), P(sideways) as the signal.

Risk. The risk head predicts ``log RV`` with ``RV = sqrt(mean(r²_{t+1..t+H}) · BARS_PER_YEAR)``,
the annualised realised volatility of the next ``H`` bars (floored at ``VOLATILITY_FLOOR``). The
risk score is ``exp`` of it (annualised volatility). Risk levels: low, medium, high below, between
and above the terciles of the realised forward volatility ``RV`` of the training split, fitted once
from the data before training (so the thresholds are in volatility units, the same for any model
trained on that split, and stored with the run).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.data.windows import SplitData
from quantum_alpha_jax.data.windows import WindowSpec
from quantum_alpha_jax.errors import ConfigError, DataError, describe
from quantum_alpha_jax.evaluate import intervals
from quantum_alpha_jax.models.cvae import ContrastiveVAE
from quantum_alpha_jax.progress import Progress

BULL, BEAR, SIDEWAYS = (schema.REGIMES.index(name) for name in ('bull', 'bear', 'sideways'))
RISK_LEVELS = ('low', 'medium', 'high')
SIGNAL_COLUMNS = ('regime', 'p_bull', 'p_bear', 'p_sideways', 'risk_level', 'risk_score')
LABEL_SOURCES = ('auto', 'true', 'rule')
MIN_WINDOW = 16
VOLATILITY_FLOOR = 1e-3  # annualised; keeps log RV finite on flat (all filled) stretches
EVALUATION_KEY = 0  # the fixed augmentation key of the validation loss
_NEGATIVE = -1e9  # logit of excluded pairs in NT-Xent (finite, so bf16 and gradients stay clean)


def window_spec(config: ml_collections.ConfigDict) -> WindowSpec:
  """The training windows: ``model.window`` bars of input, ``labels.horizon`` bars of labels."""
  return WindowSpec(config.model.window, config.labels.horizon)


# ----------------------------------------------------------------------------------------------
# The pieces of the loss.


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Random views of windows ``[batch, T, F]``: time shift, scaling, jitter, masking (module doc)."""

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


def realised_volatility(returns: Any) -> Any:
  """Annualised realised volatility ``sqrt(mean(r²) · BARS_PER_YEAR)`` of ``returns [..., n]``,
  floored at ``VOLATILITY_FLOOR``. numpy in, numpy out; jax in, jax out."""
  xp = jnp if isinstance(returns, jax.Array) else np
  returns = xp.asarray(returns, dtype=xp.float32)
  return xp.maximum(xp.sqrt(xp.mean(xp.square(returns), axis=-1) * schema.BARS_PER_YEAR),
                    VOLATILITY_FLOOR)


def trend_statistic(returns: Any) -> Any:
  """``τ = Σ r / (sqrt(mean r²) · sqrt(n)) = Σ r / sqrt(Σ r²)`` over ``returns [..., n]``; 0 where
  every return is 0. numpy in, numpy out; jax in, jax out."""
  xp = jnp if isinstance(returns, jax.Array) else np
  returns = xp.asarray(returns, dtype=xp.float32)
  scale = xp.sqrt(xp.sum(xp.square(returns), axis=-1))
  return xp.where(scale > 0, xp.sum(returns, axis=-1) / xp.maximum(scale, 1e-30), 0.0)


def _classify_trend(statistic: Any, threshold: float) -> Any:
  xp = jnp if isinstance(statistic, jax.Array) else np
  return xp.where(statistic > threshold, BULL,
                  xp.where(statistic < -threshold, BEAR, SIDEWAYS)).astype(xp.int32)


def rule_labels(encoder_returns: Any, future_returns: Any, *, lookback: int,
                threshold: float) -> Any:
  """The rule regime label (module doc) from the last ``lookback`` bar returns up to the anchor,
  ``encoder_returns [batch, T]``, and the next ones, ``future_returns [batch, H]`` → ``[batch]``
  int32 indices into ``schema.REGIMES``. Uses the future: a training/scoring label only."""
  xp = jnp if isinstance(encoder_returns, jax.Array) else np
  returns = xp.concatenate([xp.asarray(encoder_returns)[..., -lookback:],
                            xp.asarray(future_returns)], axis=-1)
  return _classify_trend(trend_statistic(returns), threshold)


def risk_levels(score: Any, thresholds: tuple[float, float]) -> Any:
  """0 (low), 1 (medium), 2 (high): ``score`` above none, one or both ``thresholds``."""
  xp = jnp if isinstance(score, jax.Array) else np
  return ((score > thresholds[0]).astype(xp.int32) + (score > thresholds[1]).astype(xp.int32))


# ----------------------------------------------------------------------------------------------
# The task.


def _check_config(config: ml_collections.ConfigDict) -> None:
  model, labels, augment = config.model, config.labels, config.augment
  problems = []
  if not isinstance(model.window, int) or model.window < MIN_WINDOW:
    problems.append(('config.model.window', f'{model.window!r} bars is too short: the Guardian '
                     f'needs at least {MIN_WINDOW}', f'use --config.model.window={MIN_WINDOW} or '
                     'more (the seed uses 120)'))
  if not model.hidden_dims or any(int(width) < 1 for width in model.hidden_dims):
    problems.append(('config.model.hidden_dims', f'{tuple(model.hidden_dims)!r} must be a '
                     'non-empty list of positive widths', 'e.g. "(256, 128, 64)"'))
  for name in ('latent_dim', 'projection_dim', 'head_hidden'):
    if int(model[name]) < 1:
      problems.append((f'config.model.{name}', f'{model[name]!r} must be >= 1', None))
  if labels.source not in LABEL_SOURCES:
    problems.append(('config.labels.source', f'unknown label source {labels.source!r}',
                     f'use one of {LABEL_SOURCES}'))
  if int(labels.horizon) < 2:
    problems.append(('config.labels.horizon', f'{labels.horizon!r} bars cannot measure a '
                     'forward volatility', 'use 2 or more (e.g. 60)'))
  if isinstance(model.window, int) and not 1 <= int(labels.lookback) <= model.window:
    problems.append(('config.labels.lookback', f'{labels.lookback!r} must lie in [1, window = '
                     f'{model.window}]', 'the rule looks back inside the window'))
  if isinstance(model.window, int) and not 0 <= int(augment.max_shift) < model.window // 4:
    problems.append(('config.augment.max_shift', f'{augment.max_shift!r} must lie in [0, '
                     f'window / 4 = {model.window // 4})', 'a view must keep most of its window'))
  if not 0.0 <= float(augment.mask_probability) < 1.0:
    problems.append(('config.augment.mask_probability', f'{augment.mask_probability!r} must lie '
                     'in [0, 1)', None))
  if float(config.loss.temperature) <= 0 or float(config.loss.beta) < 0:
    problems.append(('config.loss', f'temperature {config.loss.temperature!r} must be > 0 and '
                     f'beta {config.loss.beta!r} >= 0', None))
  if problems:
    raise ConfigError('; '.join(describe(*problem) for problem in problems))


@dataclasses.dataclass(frozen=True)
class GuardianTask:
  """The contrastive β-VAE on windows: ``loss_fn`` for the shared trainer, ``predict`` for use.

  ``risk_thresholds`` (annualised volatility) split the risk score into low / medium / high; they
  come from the training split (:func:`training_statistics`). ``normalizer`` is the run's fitted
  :class:`~quantum_alpha_jax.data.windows.Normalizer` when loaded with :func:`load`.
  """

  model: ContrastiveVAE
  augmentation: Augmentation
  beta: float = 4.0
  temperature: float = 0.5
  free_bits: float = 0.0
  contrastive_weight: float = 1.0
  regime_weight: float = 1.0
  risk_weight: float = 1.0
  label_source: str = 'auto'
  label_lookback: int = 60
  trend_threshold: float = 0.5
  risk_thresholds: tuple[float, float] = (math.nan, math.nan)
  normalizer: Any = dataclasses.field(default=None, compare=False)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *,
                  risk_thresholds: tuple[float, float] | None = None,
                  normalizer: Any = None) -> GuardianTask:
    """Checks ``config`` (a clear ConfigError naming the key) and builds the task."""
    _check_config(config)
    model = ContrastiveVAE(
        window=int(config.model.window), num_features=len(FEATURES),
        latent_dim=int(config.model.latent_dim),
        hidden_dims=tuple(int(width) for width in config.model.hidden_dims),
        projection_dim=int(config.model.projection_dim), head_hidden=int(config.model.head_hidden),
        num_regimes=len(schema.REGIMES), bar_embedding=int(config.model.bar_embedding),
        dropout_rate=float(config.model.dropout_rate),
        detach_heads=bool(config.model.detach_heads))
    augmentation = Augmentation(
        jitter=float(config.augment.jitter), scale=float(config.augment.scale),
        max_shift=int(config.augment.max_shift),
        mask_probability=float(config.augment.mask_probability))
    thresholds = (math.nan, math.nan) if risk_thresholds is None else tuple(
        float(value) for value in risk_thresholds)
    return cls(model=model, augmentation=augmentation, beta=float(config.loss.beta),
               temperature=float(config.loss.temperature), free_bits=float(config.loss.free_bits),
               contrastive_weight=float(config.loss.contrastive_weight),
               regime_weight=float(config.loss.regime_weight),
               risk_weight=float(config.loss.risk_weight), label_source=config.labels.source,
               label_lookback=int(config.labels.lookback),
               trend_threshold=float(config.labels.trend_threshold),
               risk_thresholds=thresholds, normalizer=normalizer)

  def init_params(self, rng: jax.Array, batch: Mapping[str, Any]) -> Any:
    encoder = jnp.zeros((1,) + tuple(np.shape(batch['encoder'])[1:]), jnp.float32)
    init = jax.jit(lambda key, windows_: self.model.init(
        key, windows_, jnp.zeros((windows_.shape[0], self.model.latent_dim)))['params'])
    return init(rng, encoder)

  def labels(self, batch: Mapping[str, Any]) -> Any:
    """Regime labels ``[batch]`` by ``label_source`` (module doc); -1 where there is none."""
    true = batch['regime']
    xp = jnp if isinstance(true, jax.Array) else np
    true = xp.asarray(true).astype(xp.int32)
    if self.label_source == 'true':
      return true
    rule = rule_labels(batch['encoder_returns'], batch['future_returns'],
                       lookback=self.label_lookback, threshold=self.trend_threshold)
    return rule if self.label_source == 'rule' else xp.where(true >= 0, true, rule)

  def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    encoder = batch['encoder']
    size = encoder.shape[0]
    training = rng is not None
    key = rng if training else jax.random.PRNGKey(EVALUATION_KEY)
    view_key, noise_key, dropout_key = jax.random.split(key, 3)
    # Rows i and size + i are the two views of window i.
    views = self.augmentation(view_key, jnp.concatenate([encoder, encoder], axis=0))
    noise = (jax.random.normal(noise_key, (2 * size, self.model.latent_dim), views.dtype)
             if training else None)
    outputs = self.model.apply({'params': params}, views, noise, deterministic=not training,
                               rngs={'dropout': dropout_key} if training else None)
    mask = batch['mask'].astype(jnp.float32)
    count = jnp.maximum(jnp.sum(mask), 1.0)
    masked_mean = lambda per_item: jnp.sum(per_item * mask) / count
    both = lambda per_view: 0.5 * (per_view[:size] + per_view[size:])  # [2B] → [B]

    target = jnp.concatenate([encoder, encoder], axis=0).astype(jnp.float32)
    squared = jnp.sum(jnp.square(outputs['reconstruction'] - target), axis=(1, 2))
    values = encoder.shape[1] * encoder.shape[2]
    kl = gaussian_kl(outputs['mean'], outputs['log_variance'])  # [2B, L]
    view_mask = jnp.concatenate([mask, mask])
    kl_per_latent = jnp.sum(kl * view_mask[:, None], 0) / (2.0 * count)
    kl_term = jnp.sum(jnp.maximum(kl_per_latent, self.free_bits))
    vae = masked_mean(both(0.5 * squared)) / values + self.beta * kl_term / values

    # Windows that share bars are not negatives of each other (in an ordered evaluation batch
    # nearly all are; in a shuffled training batch of a short split, a few).
    contrastive, top1 = nt_xent(outputs['projection'][:size], outputs['projection'][size:],
                                self.temperature, mask,
                                overlapping(batch['anchor'], self.model.window))

    labels = self.labels(batch)
    labelled = mask * (labels >= 0)
    labelled_count = jnp.maximum(jnp.sum(labelled), 1.0)
    log_probabilities = jax.nn.log_softmax(outputs['regime_logits'], axis=-1)
    safe = jnp.clip(labels, 0, len(schema.REGIMES) - 1)
    picked = jnp.concatenate([safe, safe])[:, None]
    cross_entropy = both(-jnp.take_along_axis(log_probabilities, picked, axis=-1)[:, 0])
    correct = both((jnp.argmax(log_probabilities, -1) == picked[:, 0]).astype(jnp.float32))
    regime_loss = jnp.sum(cross_entropy * labelled) / labelled_count

    log_volatility = jnp.log(realised_volatility(batch['future_returns'].astype(jnp.float32)))
    risk_error = both(jnp.square(outputs['log_volatility']
                                 - jnp.concatenate([log_volatility, log_volatility])))
    risk_loss = masked_mean(risk_error)

    loss = (vae + self.contrastive_weight * masked_mean(contrastive)
            + self.regime_weight * regime_loss + self.risk_weight * risk_loss)
    metrics = {
        'vae': vae,
        'reconstruction_mse': masked_mean(both(squared)) / values,
        'kl': jnp.sum(kl_per_latent),
        'nt_xent': masked_mean(contrastive),
        'contrastive_accuracy': masked_mean(top1),
        'regime_cross_entropy': regime_loss,
        'regime_accuracy': jnp.sum(correct * labelled) / labelled_count,
        'risk_mse': risk_loss,
    }
    return loss, metrics

  def predict(self, params: Any, windows_: jax.Array) -> dict[str, jax.Array]:
    """Deterministic outputs for ``windows_ [batch, T, F]``: ``latent`` (μ) and ``log_variance``
    ``[batch, L]``, ``regime_probabilities [batch, 3]``, ``regime``, ``risk_score`` (annualised
    volatility) and ``risk_level`` ``[batch]``."""
    outputs = self.model.apply({'params': params}, windows_, method=ContrastiveVAE.infer)
    probabilities = outputs['regime_probabilities']
    score = jnp.exp(outputs['log_volatility'])
    return {'latent': outputs['latent'], 'log_variance': outputs['log_variance'],
            'regime_probabilities': probabilities,
            'regime': jnp.argmax(probabilities, axis=-1).astype(jnp.int32), 'risk_score': score,
            'risk_level': risk_levels(score, self.risk_thresholds)}


@functools.partial(jax.jit, static_argnums=0)
def predict_batch(task: GuardianTask, params: Any, windows_: jax.Array) -> dict[str, jax.Array]:
  """``task.predict``, compiled once per task and batch shape (shared by :func:`evaluate` and
  :func:`bar_signals`)."""
  return task.predict(params, windows_)


# ----------------------------------------------------------------------------------------------
# Statistics of the training split (before training), batches over a split, bar signals.


def _window_returns(source: windows.WindowSource, anchors: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
  """``(encoder_returns [n, T], future_returns [n, H])`` at ``anchors``, read from the arrays."""
  returns = np.take(source.arrays.log_return, anchors[:, None] + source.spec.offsets)
  return returns[:, :source.spec.encoder_length], returns[:, source.spec.encoder_length:]


def trailing_features(encoder_returns: np.ndarray, lookback: int) -> tuple[np.ndarray, np.ndarray]:
  """Past-only ``(trend statistic τ, realised volatility)`` of the last ``lookback`` returns."""
  past = np.asarray(encoder_returns)[..., -lookback:]
  return trend_statistic(past), realised_volatility(past)


def training_statistics(task: GuardianTask, train: SplitData, max_windows: int = 100_000,
                        seed: int = 0) -> dict[str, Any]:
  """From the training split alone (at most ``max_windows`` windows, drawn with ``seed``): the
  risk thresholds (terciles of the realised forward volatility), the label counts (the majority
  class) and the trailing-volatility threshold of the trend/volatility baseline. JSON-ready."""
  source = train.source
  if source.spec.decoder_length < 2:
    raise ConfigError(describe('training_statistics', 'the windows carry no forward returns',
                               'build the splits with guardian.window_spec(config)'))
  anchors = source.anchors
  if len(anchors) > max_windows:
    anchors = np.sort(np.random.default_rng(seed).choice(anchors, max_windows, replace=False))
  encoder_returns, future_returns = _window_returns(source, anchors)
  regime = source.arrays.regime[anchors].astype(np.int32)
  if task.label_source == 'true' and not (regime >= 0).any():
    raise DataError(describe(
        'config.labels.source', "'true' asks for the synthetic market's regimes, but this store "
        'has none (real data)', "use labels.source='auto' or 'rule'"))
  labels = np.asarray(task.labels({'regime': regime, 'encoder_returns': encoder_returns,
                                   'future_returns': future_returns}))
  counts = np.bincount(labels[labels >= 0], minlength=len(schema.REGIMES))
  thresholds = np.quantile(realised_volatility(future_returns), [1 / 3, 2 / 3])
  _, trailing_volatility = trailing_features(encoder_returns, task.label_lookback)
  sideways_share = counts[SIDEWAYS] / max(counts.sum(), 1)
  return {
      'windows': int(len(anchors)),
      'has_true_regimes': bool((regime >= 0).any()),
      'label_counts': {name: int(counts[i]) for i, name in enumerate(schema.REGIMES)},
      'majority_class': int(np.argmax(counts)),
      'risk_thresholds': [float(value) for value in thresholds],
      'trailing_volatility_threshold': float(np.quantile(trailing_volatility, sideways_share)),
  }


def padded_batches(source: windows.WindowSource, batch_size: int,
                   anchors: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
  """``source.gather`` over ``anchors`` (default: all of the source's) in order, in batches of
  exactly ``batch_size`` (the last padded with ``mask`` 0), so one compiled function serves all."""
  anchors = source.anchors if anchors is None else np.asarray(anchors, np.int64)
  for start in range(0, len(anchors), batch_size):
    chunk = np.full(batch_size, -1, np.int64)
    part = anchors[start:start + batch_size]
    chunk[:len(part)] = part
    yield source.gather(chunk)


def bar_signals(task: GuardianTask, params: Any, split: SplitData, *, batch_size: int = 1024,
                progress: bool = True) -> pd.DataFrame:
  """One row per bar (window anchor) of ``split``: ``symbol``, ``timestamp`` (UTC open time of the
  anchor bar, the last bar the row uses), ``regime`` (index into ``schema.REGIMES``), ``p_bull``,
  ``p_bear``, ``p_sideways``, ``risk_level`` (0 low, 1 medium, 2 high) and ``risk_score``
  (predicted annualised volatility of the coming bars). Jitted batches, no look-ahead. ``split``
  must be windowed with the run's normaliser (``task.normalizer`` of :func:`load`)."""
  if task.normalizer is not None and not (
      np.array_equal(task.normalizer.mean, split.source.normalizer.mean)
      and np.array_equal(task.normalizer.std, split.source.normalizer.std)):
    raise ConfigError(describe(
        f'bar_signals on split {split.split.name!r}', 'the windows were normalised with other '
        'statistics than the run was trained with',
        'build the splits with make_split_data(..., normalizer=task.normalizer)'))
  source = windows.signal_source(split)  # whether a bar gets a row depends on its past alone
  batches = -(-len(source) // batch_size)
  bar = Progress(batches, f'signals {split.split.name}', unit='batches') if progress else None
  collected = []
  for batch in padded_batches(source, batch_size):
    outputs = jax.device_get(predict_batch(task, params, batch['encoder']))
    collected.append(outputs)
    if bar:
      bar.update(1)
  if bar:
    bar.close()
  count = len(source)
  joined = {name: np.concatenate([c[name] for c in collected])[:count] for name in collected[0]}
  anchors = source.anchors
  probabilities = joined['regime_probabilities'].astype(np.float64)
  return pd.DataFrame({
      'symbol': np.asarray(source.arrays.symbols, dtype=object)[source.arrays.symbol[anchors]],
      'timestamp': schema.to_timestamps(source.arrays.timestamp[anchors]),
      'regime': joined['regime'].astype(np.int64),
      'p_bull': probabilities[:, BULL], 'p_bear': probabilities[:, BEAR],
      'p_sideways': probabilities[:, SIDEWAYS],
      'risk_level': joined['risk_level'].astype(np.int64),
      'risk_score': joined['risk_score'].astype(np.float64),
  })


# ----------------------------------------------------------------------------------------------
# Evaluation on a split, beside the baselines, and the pictures.


def _collect(task: GuardianTask, params: Any, source: windows.WindowSource, anchors: np.ndarray,
             batch_size: int, description: str | None) -> dict[str, np.ndarray]:
  """Predictions and labels-to-be over ``anchors`` of ``source`` (windows with the label horizon)."""
  batches = -(-len(anchors) // batch_size)
  bar = Progress(batches, description, unit='batches') if description else None
  collected: dict[str, list[np.ndarray]] = {}
  lookback = task.label_lookback
  for batch in padded_batches(source, batch_size, anchors):
    outputs = jax.device_get(predict_batch(task, params, batch['encoder']))
    trend, volatility = trailing_features(batch['encoder_returns'], lookback)
    labels = task.labels(batch)
    rule = rule_labels(batch['encoder_returns'], batch['future_returns'], lookback=lookback,
                       threshold=task.trend_threshold)
    items = {**outputs, 'true': batch['regime'], 'label': labels, 'rule': rule,
             'trailing_trend': trend, 'trailing_volatility': volatility,
             'forward_volatility': realised_volatility(batch['future_returns'])}
    for name, value in items.items():
      collected.setdefault(name, []).append(np.asarray(value))
    if bar:
      bar.update(1)
  if bar:
    bar.close()
  return {name: np.concatenate(values)[:len(anchors)] for name, values in collected.items()}


def _agreement(labels: np.ndarray, predictions: np.ndarray) -> dict[str, Any]:
  from quantum_alpha_jax.evaluate import regime  # pylint: disable=g-import-not-at-top
  report = regime.classification_metrics(labels, predictions)
  return {key: report[key] for key in ('count', 'accuracy', 'f1_macro', 'confusion_matrix')}


def risk_calibration(levels: np.ndarray, realised: np.ndarray, score: np.ndarray
                     ) -> dict[str, Any]:
  """Realised forward volatility per predicted risk level, whether it rises with the level, and
  the Spearman rank correlation of the risk score with it."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  table = []
  for index, name in enumerate(RISK_LEVELS):
    chosen = realised[levels == index]
    table.append({'level': name, 'count': int(chosen.size), 'share': float(chosen.size / max(
        realised.size, 1)),
                  'realised_volatility_mean': float(chosen.mean()) if chosen.size else None,
                  'realised_volatility_median': float(np.median(chosen)) if chosen.size else None})
  means = [row['realised_volatility_mean'] for row in table if row['realised_volatility_mean']
           is not None]
  correlation = stats.spearmanr(score, realised).statistic if realised.size > 2 else math.nan
  return {'table': table, 'monotone_increasing': bool(np.all(np.diff(means) > 0))
          and len(means) == len(RISK_LEVELS),
          'spearman_score_vs_realised': float(correlation),
          'log_volatility_rmse': float(np.sqrt(np.mean(np.square(np.log(score)
                                                                  - np.log(realised)))))}


def evaluate(task: GuardianTask, params: Any, split: SplitData, statistics: Mapping[str, Any],
             directory: Any, *, max_windows: int = 0, batch_size: int = 1024,
             progress: bool = True) -> dict[str, Any]:
  """Classifies every window of ``split`` (or every k-th, at most ``max_windows``); returns the
  regime metrics beside the baselines, the latent-space diagnostics and the risk calibration
  (JSON-ready), and writes the timeline, latent-projection, confusion and risk PNGs."""
  from quantum_alpha_jax.evaluate import regime  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.evaluate import regime_plots  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  source = split.source
  stride = max(1, -(-len(source) // max_windows)) if max_windows > 0 else 1
  anchors = source.anchors[::stride]
  data = _collect(task, params, source, anchors, batch_size,
                  f'evaluate {split.split.name}' if progress else None)
  labels, predicted = data['label'], data['regime']
  has_true = bool((data['true'] >= 0).all())
  label_name = ('the synthetic market\'s true regimes' if task.label_source != 'rule' and has_true
                else 'the rule labels (past and future trend / volatility)')

  # Baselines: the train majority class, and two rules that use the past only.
  majority = np.full_like(labels, statistics['majority_class'])
  trend_rule = _classify_trend(data['trailing_trend'], task.trend_threshold)
  volatility_rule = np.where(
      data['trailing_volatility'] < statistics['trailing_volatility_threshold'], SIDEWAYS,
      np.where(data['trailing_trend'] >= 0, BULL, BEAR)).astype(np.int32)
  baseline_predictions = {'majority_class': majority, 'trailing_trend_rule': trend_rule,
                          'trailing_trend_volatility_rule': volatility_rule}
  descriptions = {
      'majority_class': f'always {schema.REGIMES[statistics["majority_class"]]}, the most '
                        'frequent label of the training split',
      'trailing_trend_rule': f'the rule on the last {task.label_lookback} bars only: trend '
                             f'statistic above {task.trend_threshold} bull, below minus it bear',
      'trailing_trend_volatility_rule': 'sideways when the trailing realised volatility is below '
                                        'its training quantile at the sideways share, else the '
                                        'sign of the trailing return',
  }
  keep = labels >= 0
  report: dict[str, Any] = {'windows': int(len(labels)), 'stride': stride, 'labels': label_name}
  report['guardian'] = regime.classification_metrics(labels, predicted, mask=keep)
  report['baselines'] = {}
  for name, values in baseline_predictions.items():
    entry = regime.classification_metrics(labels, values, mask=keep)
    entry['description'] = descriptions[name]
    report['baselines'][name] = entry
  report['chance_accuracy'] = 1.0 / len(schema.REGIMES)
  # The strongest baseline on this very split (the harshest choice for the model), and the
  # Guardian's accuracy gain over it with a paired block-bootstrap interval over calendar days
  # (per-bar scores within a regime are far from independent).
  best = max(baseline_predictions, key=lambda name: report['baselines'][name]['accuracy'])
  days = intervals.day_blocks(np.asarray(source.arrays.timestamp)[anchors][keep])
  report['versus_best_baseline'] = {
      'baseline': best, 'metric': 'accuracy',
      **intervals.paired_difference(predicted[keep] == labels[keep],
                                    baseline_predictions[best][keep] == labels[keep], days)}
  report['agreement_with_rule_labels'] = {
      'guardian': _agreement(data['rule'], predicted),
      **{name: _agreement(data['rule'], values) for name, values in baseline_predictions.items()}}
  if has_true:
    report['rule_labels_vs_true_regimes'] = _agreement(data['true'], data['rule'])
  report['predicted_share'] = {name: float(np.mean(predicted == i))
                               for i, name in enumerate(schema.REGIMES)}
  report['label_share'] = {name: float(np.mean(labels[keep] == i))
                           for i, name in enumerate(schema.REGIMES)}

  latents = data['latent'].astype(np.float64)
  kl = 0.5 * (np.square(latents) + np.exp(data['log_variance']) - data['log_variance'] - 1.0)
  report['latent'] = {
      'silhouette_by_label': regime.silhouette(latents, labels, mask=keep),
      'silhouette_by_prediction': regime.silhouette(latents, predicted),
      # Burda et al. (2016): latent u is active when Var_x(E_q[z_u]) > 0.01.
      'active_units': int(np.sum(latents.var(axis=0) > 0.01)),
      'latent_dim': int(latents.shape[1]),
      'kl_per_window': float(kl.sum(axis=1).mean()),
      'kl_per_latent': [float(value) for value in kl.mean(axis=0)],
  }
  report['risk'] = {'thresholds': list(task.risk_thresholds),
                    **risk_calibration(data['risk_level'], data['forward_volatility'],
                                       data['risk_score'])}

  # Pictures.
  arrays = source.arrays
  symbols = np.asarray(arrays.symbols)[arrays.symbol[anchors]]
  segment = arrays.segment[anchors]
  joined = np.concatenate([[False], (np.diff(anchors) == stride) & (segment[1:] == segment[:-1])])
  pngs = {
      'regime_timeline': regime_plots.plot_regime_timeline(
          arrays.timestamp[anchors], arrays.close[anchors], predicted, symbols,
          directory / 'regime_timeline.png', true=data['true'] if has_true else None,
          joined=joined, title=regime_plots.window_title(split.split.name, split.split.start_ns,
                                                         split.split.end_ns)),
      'latent_projection': regime_plots.plot_latent_projection(
          latents, {'coloured by label': np.where(keep, labels, -1),
                    'coloured by the Guardian\'s regime': predicted},
          directory / 'latent_projection.png'),
      'confusion_matrix': regime_plots.plot_confusion_matrix(
          report['guardian']['confusion_matrix'], schema.REGIMES, directory / 'confusion.png',
          f'Guardian vs {"true regimes" if "true" in label_name else "rule labels"} '
          f'({split.split.name})'),
      'risk_calibration': regime_plots.plot_risk_calibration(
          report['risk']['table'], directory / 'risk_calibration.png', task.risk_thresholds),
  }
  report['plots'] = {name: str(path) for name, path in pngs.items()}
  return report


# ----------------------------------------------------------------------------------------------
# The experiment: data → statistics → train → best checkpoint → evaluation → results.json.


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
          frames: Mapping[str, pd.DataFrame] | None = None,
          on_evaluate: Any = None) -> tuple[GuardianTask, Any,
                                                                   dict[str, SplitData],
                                                                   dict[str, Any]]:
  """Trains the Guardian described by ``config`` in ``workdir`` (resuming if it holds a run).
  ``frames`` (feature frames) replace the store named by ``config.data``. Returns ``(task with
  the run's risk thresholds and normaliser, loop.TrainResult, split data, training statistics)``."""
  from quantum_alpha_jax.train import data as data_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import loop  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import writers  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  task = GuardianTask.from_config(config)  # a bad config fails before any data is read
  for name in config.evaluation.splits:
    if name not in config.data.splits:
      raise ConfigError(describe('config.evaluation.splits', f'no split {name!r}',
                                 f'use some of {sorted(config.data.splits)}'))
  data, normalizer = data_lib.make_split_data(config.data, window_spec(config),
                                              config.train.batch_size, config.train.seed,
                                              frames=frames)
  statistics = training_statistics(task, data['train'], seed=config.train.seed)
  task = dataclasses.replace(task, risk_thresholds=tuple(statistics['risk_thresholds']),
                             normalizer=normalizer)
  writers.write_json(workdir / 'normalizer.json', normalizer.to_dict())
  result = loop.train_and_evaluate(
      config.train, task, data, workdir, run_config=config.to_dict(),
      extra_record={'normalizer': normalizer.to_dict(), 'guardian_statistics': statistics},
      on_evaluate=on_evaluate)
  return task, result, data, statistics


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
        frames: Mapping[str, pd.DataFrame] | None = None,
        on_evaluate: Any = None) -> dict[str, Any]:
  """:func:`train` (``on_evaluate``: see ``loop.train_and_evaluate``), then evaluates the best checkpoint on ``config.evaluation.splits`` (metrics
  and PNGs under ``workdir/<split>``) and writes ``results.json``."""
  from quantum_alpha_jax.train import writers  # pylint: disable=g-import-not-at-top

  task, result, data, statistics = train(config, workdir, frames=frames,
                                         on_evaluate=on_evaluate)
  results = {'model': 'guardian', 'workdir': str(workdir), 'train': result.summary,
             'validation': result.best_metrics, 'training_statistics': statistics}
  for name in config.evaluation.splits:
    results[name] = evaluate(task, result.params, data[name], statistics,
                             pathlib.Path(workdir) / name,
                             max_windows=config.evaluation.max_windows,
                             batch_size=config.evaluation.batch_size)
  results['config'] = config.to_dict()
  results['results_json'] = str(writers.write_results(workdir, results))
  return results


def load(workdir: str | pathlib.Path) -> tuple[GuardianTask, Any, ml_collections.ConfigDict]:
  """``(task, params, config)`` of the run in ``workdir``: the task rebuilt from the saved config
  (with the run's risk thresholds and normaliser) and the params of the best checkpoint."""
  from quantum_alpha_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top

  params, record = checkpoint_lib.load_best(workdir)
  if 'guardian_statistics' not in record:
    raise checkpoint_lib.CheckpointError(describe(
        str(workdir), f'is not a Guardian run (config name {record["config"].get("name")!r})',
        'pass the workdir of experiments.guardian'))
  config = ml_collections.ConfigDict(record['config'])
  task = GuardianTask.from_config(
      config, risk_thresholds=record['guardian_statistics']['risk_thresholds'],
      normalizer=windows.Normalizer.from_dict(record['normalizer']))
  example = {'encoder': np.zeros((1, task.model.window, task.model.num_features), np.float32)}
  expected = jax.eval_shape(task.init_params, jax.random.PRNGKey(0), example)
  checkpoint_lib.check_structure(params, expected, str(workdir))
  return task, params, config


def format_results(results: Mapping[str, Any]) -> str:
  """A short table for people: the Guardian beside the baselines on each evaluated split."""
  train = results['train']
  lines = [f'Guardian run in {results["workdir"]}: {train["steps"]} steps, best at '
           f'{train["best_step"]}, {train["samples_per_second"] or 0:.0f} samples/s, '
           f'{train["train_seconds"]:.1f} s of training']
  for split in ('validation', 'test'):
    report = results.get(split)
    if not isinstance(report, Mapping) or 'baselines' not in report:
      continue
    lines.append(f'\n{split}: {report["windows"]} windows, scored against {report["labels"]}')
    lines.append(f'  {"":<32} accuracy  macro-F1  agreement with rule labels')
    rows = [('Guardian', report['guardian'], report['agreement_with_rule_labels']['guardian'])]
    rows += [(name, entry, report['agreement_with_rule_labels'][name])
             for name, entry in report['baselines'].items()]
    for name, entry, rule in rows:
      lines.append(f'  {name:<32} {entry["accuracy"]:.4f}    {entry["f1_macro"]:.4f}    '
                   f'{rule["accuracy"]:.4f}')
    if 'versus_best_baseline' in report:
      lines.append('  ' + intervals.format_difference('Guardian', report['versus_best_baseline']))
    latent = report['latent']
    silhouette = latent['silhouette_by_label']
    lines.append(f'  latents: silhouette by label {silhouette if silhouette is None else round(silhouette, 4)}, '
                 f'{latent["active_units"]}/{latent["latent_dim"]} active units, '
                 f'KL {latent["kl_per_window"]:.2f} nats per window')
    risk = report['risk']
    levels = ', '.join(f'{row["level"]} {row["realised_volatility_mean"] or 0:.3f} '
                       f'({row["share"]:.0%})' for row in risk['table'])
    lines.append(f'  risk: realised forward volatility by level: {levels}; monotone '
                 f'{risk["monotone_increasing"]}, Spearman {risk["spearman_score_vs_realised"]:.3f}')
    lines.append(f'  plots: {", ".join(report["plots"].values())}')
  lines.append(f'results: {results["results_json"]}')
  return '\n'.join(lines)
