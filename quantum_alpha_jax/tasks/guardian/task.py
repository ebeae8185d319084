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

The package splits this into :mod:`.losses` (views, KL, NT-Xent), :mod:`.labels` (rule labels,
volatility, risk levels), :mod:`.baselines` (training statistics and the past-only rules to beat),
:mod:`.evaluation` and :mod:`.plots` (a split scored, and its pictures) and :mod:`.experiment`
(run, format, per-bar signals, load).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.data.windows import WindowSpec
from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.models.cvae import ContrastiveVAE
from quantum_alpha_jax.tasks.guardian.labels import realised_volatility
from quantum_alpha_jax.tasks.guardian.labels import risk_levels
from quantum_alpha_jax.tasks.guardian.labels import rule_labels
from quantum_alpha_jax.tasks.guardian.losses import Augmentation
from quantum_alpha_jax.tasks.guardian.losses import gaussian_kl
from quantum_alpha_jax.tasks.guardian.losses import nt_xent
from quantum_alpha_jax.tasks.guardian.losses import overlapping

RISK_LEVELS = ('low', 'medium', 'high')
LABEL_SOURCES = ('auto', 'true', 'rule')
MIN_WINDOW = 16
EVALUATION_KEY = 0  # the fixed augmentation key of the validation loss


def window_spec(config: ml_collections.ConfigDict) -> WindowSpec:
  """The training windows: ``model.window`` bars of input, ``labels.horizon`` bars of labels."""
  return WindowSpec(config.model.window, config.labels.horizon)


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
  come from the training split (:func:`.baselines.training_statistics`). ``normalizer`` is the
  run's fitted :class:`~quantum_alpha_jax.data.windows.Normalizer` when loaded with
  :func:`.experiment.load`.
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

  def loss_fn(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array | None,
              step: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    del step  # no schedule yet (a β warm-up would read it)
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
  """``task.predict``, compiled once per task and batch shape (shared by evaluation and the per-bar
  signals)."""
  return task.predict(params, windows_)



def example_batch(task: GuardianTask, size: int = 1) -> dict[str, np.ndarray]:
  """Zero model inputs of the right shapes (to build or check params)."""
  return {'encoder': np.zeros((size, task.model.window, task.model.num_features), np.float32)}


def loss_metrics(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The metrics :meth:`GuardianTask.loss_fn` reports besides the loss."""
  del config
  return ('vae', 'reconstruction_mse', 'kl', 'nt_xent', 'contrastive_accuracy',
          'regime_cross_entropy', 'regime_accuracy', 'risk_mse')
