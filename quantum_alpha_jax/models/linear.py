"""A linear quantile forecaster on the Oracle's windows: the smallest model a TFT must beat.

For a window of ``T = encoder_length`` past bars of ``F`` observed features and
``D = decoder_length`` future bars of ``K`` known calendar features, with ``Q`` quantile levels:

1. Inputs. The flattened window ``x = [o_1 .. o_T, k_1 .. k_D]`` (``[T·F + D·K]``).
2. Block (optional, N-BEATS style: Oreshkin et al., 2020). With ``hidden_size = H > 0``, one fully
   connected ReLU layer ``h = relu(W_1 x + b_1)`` (``[H]``) with dropout; with ``H = 0`` the model
   is purely linear, ``h = x``.
3. Output. ``ŷ = W_2 h + b_2 + E[symbol]`` reshaped to ``[D, Q]``: one affine map to every
   horizon's quantiles plus a per-symbol offset (the embedding ``E`` is ``[symbols, D·Q]``),
   computed in float32.

The task sorts the quantiles before use (monotone rearrangement), so no ordering is imposed here.
Export: dense layers, a reshape and an embedding lookup convert with jax2onnx and jax2tf.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from quantum_alpha_jax.models import layers


class LinearForecaster(nn.Module):
  """Linear (or one-block) map from a window to multi-horizon quantiles.

  Attributes:
    num_symbols: size of the symbol offset table.
    num_observed: past-observed continuous variables (encoder inputs).
    num_known: known-future continuous variables (decoder inputs).
    encoder_length: past steps.
    decoder_length: forecast steps.
    quantiles: the quantile levels (only their count shapes the output).
    hidden_size: width of the ReLU block; 0 for a purely linear model.
    dropout_rate: dropout after the block (training only).
  """

  num_symbols: int
  num_observed: int
  num_known: int
  encoder_length: int
  decoder_length: int
  quantiles: Sequence[float] = (0.1, 0.5, 0.9)
  hidden_size: int = 0
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, encoder: jax.Array, decoder_known: jax.Array, symbol: jax.Array, *,
               deterministic: bool = True) -> dict[str, jax.Array]:
    """Forecasts quantiles for one batch of windows.

    Inputs: ``encoder [batch, encoder, observed]`` (float), ``decoder_known [batch, decoder,
    known]`` (float, cast to the encoder's dtype) and ``symbol [batch]`` (int).
    Returns ``{'quantiles': [batch, decoder, Q]}`` in float32.
    """
    layers.check_window_inputs(encoder, decoder_known, symbol, self.encoder_length,
                               self.decoder_length, self.num_observed, self.num_known)
    batch = encoder.shape[0]
    dtype = encoder.dtype
    inputs = jnp.concatenate([encoder.reshape(batch, -1),
                              decoder_known.astype(dtype).reshape(batch, -1)], axis=-1)
    if self.hidden_size > 0:
      inputs = nn.relu(nn.Dense(self.hidden_size, dtype=dtype, name='block')(inputs))
      inputs = nn.Dropout(self.dropout_rate)(inputs, deterministic=deterministic)
    outputs = self.decoder_length * len(self.quantiles)
    values = nn.Dense(outputs, dtype=jnp.float32, name='output')(inputs.astype(jnp.float32))
    values = values + nn.Embed(self.num_symbols, outputs, name='symbol_offset',
                               embedding_init=nn.initializers.zeros)(symbol)
    return {'quantiles': values.reshape(batch, self.decoder_length, len(self.quantiles))}
