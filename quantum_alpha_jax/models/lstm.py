"""An LSTM encoder-decoder baseline for multi-horizon quantile forecasts (the Oracle's targets).

The same windows and outputs as the Temporal Fusion Transformer, without its gating, variable
selection or attention, so that the report can say how much those buy. For a window of
``encoder_length`` past bars and ``decoder_length`` future bars, with ``H = hidden_size``:

1. Inputs. The symbol embedding ``s = E[symbol]`` (``[H]``) is added to a linear projection of
   every step: ``x_t = W_o o_t + b_o + s`` for the 44 past-observed features ``o_t`` and
   ``x_t = W_k k_t + b_k + s`` for the known-future calendar features ``k_t`` of the decoder steps.
2. Encoder. A stack of ``num_layers`` LSTM layers (:class:`~quantum_alpha_jax.models.layers.
   ScanLSTM`, a ``lax.scan`` per layer, dropout between layers) reads the encoder steps from a zero
   state and ends in ``(h, c)`` per layer.
3. Decoder. A second LSTM stack starts from the encoder's final ``(h, c)`` and reads the decoder
   steps; it sees the past only through that state, and the future only through the calendar.
4. Output. A dense layer maps each decoder step's hidden state to the ``Q`` quantiles:
   ``ŷ_{h, q} = W_q z_h + b_q`` (``[batch, decoder, Q]``), computed in float32.

Precision: like the TFT, the module computes in the dtype of its float inputs and returns float32.
Export: every recurrence is a ``lax.scan`` with an explicit carry, so the module converts with
jax2onnx and jax2tf.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from quantum_alpha_jax.models import layers


class LSTMForecaster(nn.Module):
  """LSTM encoder-decoder with quantile outputs.

  Attributes:
    num_symbols: size of the symbol embedding table.
    num_observed: past-observed continuous variables (encoder inputs).
    num_known: known-future continuous variables (decoder inputs).
    encoder_length: past steps.
    decoder_length: forecast steps.
    hidden_size: width of the projections and of ``h`` and ``c``.
    num_layers: LSTM layers in the encoder and in the decoder.
    dropout_rate: dropout on the projected inputs, between LSTM layers and before the output.
    quantiles: the forecast quantiles, one output each.
  """

  num_symbols: int = 8
  num_observed: int = 44
  num_known: int = 3
  encoder_length: int = 60
  decoder_length: int = 24
  hidden_size: int = 128
  num_layers: int = 2
  dropout_rate: float = 0.1
  quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)

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
    dtype = encoder.dtype
    dropout = lambda x: nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    static = nn.Embed(self.num_symbols, self.hidden_size, name='symbol_embedding')(symbol)
    static = static.astype(dtype)[:, None, :]
    encoder_inputs = nn.Dense(self.hidden_size, name='encoder_projection')(encoder) + static
    decoder_inputs = nn.Dense(self.hidden_size, name='decoder_projection')(
        decoder_known.astype(dtype)) + static
    _, state = layers.ScanLSTM(self.hidden_size, self.num_layers, self.dropout_rate,
                               name='lstm_encoder')(dropout(encoder_inputs),
                                                    deterministic=deterministic)
    outputs, _ = layers.ScanLSTM(self.hidden_size, self.num_layers, self.dropout_rate,
                                 name='lstm_decoder')(dropout(decoder_inputs), state,
                                                      deterministic=deterministic)
    quantiles = nn.Dense(len(self.quantiles), dtype=jnp.float32, name='quantile_output')(
        dropout(outputs))
    return {'quantiles': quantiles}
