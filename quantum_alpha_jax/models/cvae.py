"""The Guardian's contrastive β-VAE over normalised windows ``[batch, time, feature]``.

The data flow, for a window ``x`` of ``T`` bars and ``F`` features (flattened to ``T·F`` values):

1. Encoder. An MLP ``h = MLP(vec(x))`` with one ``Dropout → Dense → LayerNorm → GELU`` block per
   width in ``hidden_dims`` (the seed's 256, 128, 64), then ``[μ, log σ²] = h W + b``: the
   diagonal Gaussian posterior ``q(z | x) = N(μ, diag σ²)`` over ``latent_dim`` latents (log σ²
   clipped to [-8, 8], so ``exp`` never overflows). Optionally (``bar_embedding = E > 0``) every
   bar first passes a shared ``GELU(x_t W_e + b_e)``, so ``vec`` flattens ``T·E`` values, not
   ``T·F``.
2. Latent. ``z = μ + σ ⊙ ε`` with ``ε ~ N(0, I)`` passed in by the caller (the reparameterisation
   trick; the noise is an input, so the module itself holds no random state), or ``z = μ``.
3. Decoder. The mirror MLP (widths reversed) and ``x̂ = vec⁻¹(g W_o + b_o)``: the mean of a
   unit-variance Gaussian likelihood ``p(x | z) = N(x̂, I)``.
4. Projection head (SimCLR, Chen et al. 2020). ``p = MLP(μ) W_p``; the contrastive loss compares
   projections, so the invariances it enforces shape ``μ`` without being forced onto it exactly.
5. Regime head. ``softmax(MLP(μ) W_r)``: P(bull, bear, sideways), in ``schema.REGIMES`` order.
6. Risk head. ``MLP(μ) w_v``: the log of the annualised realised volatility of the coming bars.

Dropout (``dropout_rate``, training only) acts before the dense layers of the encoder and of the
regime and risk heads. With ``detach_heads`` the regime and risk heads read ``stop_gradient(μ)``:
the latent space is then shaped by the VAE and contrastive terms alone, and the heads probe it.

Export. Only Dense, LayerNorm (``layers.LayerNorm``), GELU, reshapes and a clip: no recurrence,
no Python branching on the batch size, so :meth:`ContrastiveVAE.infer` converts with jax2onnx
with a symbolic batch (checked: onnxruntime matches JAX to 3e-6 at the seed size).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from quantum_alpha_jax.models import layers

LOG_VARIANCE_LIMIT = 8.0


class MLP(nn.Module):
  """``Dropout → Dense → LayerNorm → GELU`` per width in ``features``:
  ``[..., in]`` → ``[..., features[-1]]``."""

  features: Sequence[int]
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, inputs: jax.Array, deterministic: bool = True) -> jax.Array:
    hidden = inputs
    for index, width in enumerate(self.features):
      hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
      hidden = nn.Dense(width, name=f'dense_{index}')(hidden)
      hidden = layers.LayerNorm(name=f'norm_{index}')(hidden).astype(hidden.dtype)
      hidden = nn.gelu(hidden)
    return hidden


class ContrastiveVAE(nn.Module):
  """β-VAE with a contrastive projection head and regime / risk heads on the posterior mean.

  Attributes:
    window: bars per window ``T``.
    num_features: features per bar ``F``.
    latent_dim: latents ``L``.
    hidden_dims: encoder widths; the decoder uses them reversed.
    projection_dim: width of the contrastive projection.
    head_hidden: hidden width of the projection, regime and risk heads.
    num_regimes: regime classes (3: bull, bear, sideways).
    bar_embedding: if > 0, every bar's ``F`` features first pass one shared
      ``Dense(bar_embedding) → GELU`` (the same weights at every time step) before the window is
      flattened: ``F / bar_embedding`` times fewer weights in the first encoder layer.
    dropout_rate: dropout before every dense layer of the encoder and the heads (training only).
    detach_heads: the regime and risk heads read ``stop_gradient(μ)``.
  """

  window: int
  num_features: int
  latent_dim: int = 64
  hidden_dims: Sequence[int] = (256, 128, 64)
  projection_dim: int = 64
  head_hidden: int = 64
  num_regimes: int = 3
  bar_embedding: int = 0
  dropout_rate: float = 0.0
  detach_heads: bool = False

  def setup(self):
    if self.bar_embedding:
      self.bar_dense = nn.Dense(self.bar_embedding)
    self.encoder = MLP(tuple(self.hidden_dims), self.dropout_rate)
    self.posterior = nn.Dense(2 * self.latent_dim)
    self.decoder = MLP(tuple(reversed(tuple(self.hidden_dims))))
    self.reconstruction = nn.Dense(self.window * self.num_features)
    self.projection_hidden = MLP((self.head_hidden,))
    self.projection = nn.Dense(self.projection_dim)
    self.regime_hidden = MLP((self.head_hidden,), self.dropout_rate)
    self.regime_logits = nn.Dense(self.num_regimes)
    self.risk_hidden = MLP((self.head_hidden,), self.dropout_rate)
    self.risk_output = nn.Dense(1)

  def encode(self, windows: jax.Array, deterministic: bool = True
             ) -> tuple[jax.Array, jax.Array]:
    """``windows [batch, T, F]`` → posterior ``(μ, log σ²)``, each ``[batch, latent]`` (float32)."""
    if windows.shape[1:] != (self.window, self.num_features):
      raise ValueError(f'ContrastiveVAE expects windows [batch, {self.window}, '
                       f'{self.num_features}], got {windows.shape}')
    bars = nn.gelu(self.bar_dense(windows)) if self.bar_embedding else windows
    flat = bars.reshape(windows.shape[0], self.window * bars.shape[-1])
    statistics = self.posterior(self.encoder(flat, deterministic)).astype(jnp.float32)
    mean, log_variance = jnp.split(statistics, 2, axis=-1)
    return mean, jnp.clip(log_variance, -LOG_VARIANCE_LIMIT, LOG_VARIANCE_LIMIT)

  def decode(self, latents: jax.Array) -> jax.Array:
    """``latents [batch, latent]`` → reconstructed windows ``[batch, T, F]`` (float32)."""
    flat = self.reconstruction(self.decoder(latents)).astype(jnp.float32)
    return flat.reshape(latents.shape[0], self.window, self.num_features)

  def project(self, mean: jax.Array) -> jax.Array:
    """Posterior means ``[batch, latent]`` → contrastive projections ``[batch, projection]``."""
    return self.projection(self.projection_hidden(mean)).astype(jnp.float32)

  def heads(self, mean: jax.Array, deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """Posterior means → ``(regime logits [batch, regimes], log volatility [batch])`` (float32)."""
    if self.detach_heads:
      mean = jax.lax.stop_gradient(mean)
    logits = self.regime_logits(self.regime_hidden(mean, deterministic)).astype(jnp.float32)
    log_volatility = self.risk_output(self.risk_hidden(mean, deterministic))[..., 0]
    return logits, log_volatility.astype(jnp.float32)

  def infer(self, windows: jax.Array) -> dict[str, jax.Array]:
    """The deployed path: ``latent`` (μ), ``log_variance``, ``regime_probabilities`` and
    ``log_volatility``, deterministic."""
    mean, log_variance = self.encode(windows)
    logits, log_volatility = self.heads(mean.astype(windows.dtype))
    return {'latent': mean, 'log_variance': log_variance,
            'regime_probabilities': jax.nn.softmax(logits, axis=-1),
            'log_volatility': log_volatility}

  def __call__(self, windows: jax.Array, noise: jax.Array | None = None, *,
               deterministic: bool = True) -> dict[str, jax.Array]:
    """Every output for ``windows [batch, T, F]``; ``noise [batch, latent]`` samples ``z``
    (``z = μ`` without it); dropout (flax rng ``'dropout'``) unless ``deterministic``.

    Returns ``mean``, ``log_variance``, ``latent`` (``z``), ``reconstruction [batch, T, F]``,
    ``projection``, ``regime_logits`` and ``log_volatility``, all float32.
    """
    mean, log_variance = self.encode(windows, deterministic)
    latent = mean if noise is None else mean + jnp.exp(0.5 * log_variance) * noise
    compute = windows.dtype
    logits, log_volatility = self.heads(mean.astype(compute), deterministic)
    return {'mean': mean, 'log_variance': log_variance, 'latent': latent,
            'reconstruction': self.decode(latent.astype(compute)),
            'projection': self.project(mean.astype(compute)), 'regime_logits': logits,
            'log_volatility': log_volatility}
