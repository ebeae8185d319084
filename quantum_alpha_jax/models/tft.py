"""Temporal Fusion Transformer (Lim et al., 2019) for multi-horizon quantile forecasts.

The data flow, for a window of ``encoder_length`` past bars and ``decoder_length`` future bars:

1. Static covariate encoders. The symbol id is the one static input: its embedding passes the
   static variable selection (with a single variable this is its GRN, with weight 1, as in
   pytorch-forecasting) and four GRNs (stacked: one batched matmul) give four contexts: ``c_s`` for
   variable selection, ``c_h`` and ``c_c`` for the LSTM initial state, ``c_e`` for enrichment.
2. Variable selection networks pick among the 44 past-observed inputs (encoder) and the known-future
   inputs (decoder) at every step, conditioned on ``c_s``.
3. An LSTM encoder-decoder (``lax.scan``) processes the selected inputs: every encoder layer starts
   from ``(c_h, c_c)`` and the decoder continues from the encoder's final state. A gated skip
   connection adds the selected inputs back: ``φ = GateAddNorm(LSTM, selected)``.
4. Static enrichment: ``θ = GRN(φ, c_e)``.
5. Interpretable multi-head attention: the decoder steps query all steps under a causal mask
   (each decoder step sees the whole encoder and the decoder steps up to itself), then a gated skip
   over the attention, a position-wise feed-forward GRN, a gated skip over the whole temporal
   fusion decoder (back to ``φ``) and a dense layer to the quantiles.

Precision: the module computes in the dtype of its float inputs (the train step casts params and
inputs to bf16 or fp32); softmaxes, layer norms and the quantile head run in float32, and every
returned array is float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from quantum_alpha_jax.models import layers
from quantum_alpha_jax.models import variable_selection

# Order of the four static contexts produced by the stacked static-context GRN.
_STATIC_CONTEXTS = ('variable_selection', 'lstm_hidden', 'lstm_cell', 'enrichment')


class TemporalFusionTransformer(nn.Module):
  """Temporal Fusion Transformer with quantile outputs and interpretable weights.

  Attributes:
    num_symbols: size of the static symbol embedding table.
    num_observed: past-observed continuous variables (encoder inputs).
    num_known: known-future continuous variables (decoder inputs).
    encoder_length: past steps.
    decoder_length: forecast steps.
    hidden_size: model width.
    num_heads: attention heads (must divide ``hidden_size``).
    hidden_continuous_size: per-variable prescaler width in variable selection.
    lstm_layers: LSTM layers in the encoder and in the decoder.
    dropout_rate: dropout in GRNs, GLUs, attention and between LSTM layers.
    quantiles: the forecast quantiles, one output each.
    variable_chunk_rows: rows (batch × time) whose per-variable GRNs run together in variable
      selection (``variable_selection.VariableSelectionNetwork.chunk_rows``; None: 128 on CPU, one chunk on
      accelerators): a speed knob, the outputs do not depend on it.
  """

  num_symbols: int = 8
  num_observed: int = 44
  num_known: int = 3
  encoder_length: int = 60
  decoder_length: int = 24
  hidden_size: int = 128
  num_heads: int = 4
  hidden_continuous_size: int = 64
  lstm_layers: int = 2
  dropout_rate: float = 0.1
  quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
  variable_chunk_rows: int | None = None

  @nn.compact
  def __call__(self, encoder: jax.Array, decoder_known: jax.Array, symbol: jax.Array, *,
               deterministic: bool = True) -> dict[str, jax.Array]:
    """Forecasts quantiles for one batch of windows.

    Inputs: ``encoder [batch, encoder, observed]`` (float), ``decoder_known [batch, decoder,
    known]`` (float, cast to the encoder's dtype) and ``symbol [batch]`` (int).

    Returns float32 ``quantiles [batch, decoder, Q]``, head-averaged ``attention [batch, decoder,
    encoder + decoder]`` and the selection weights ``encoder_variable_weights [batch, encoder,
    observed]``, ``decoder_variable_weights [batch, decoder, known]`` and
    ``static_variable_weights [batch, 1]``, each summing to 1 over its last axis.
    """
    layers.check_window_inputs(encoder, decoder_known, symbol, self.encoder_length,
                               self.decoder_length, self.num_observed, self.num_known)
    dtype = encoder.dtype
    hidden = self.hidden_size
    batch = encoder.shape[0]
    decoder_known = decoder_known.astype(dtype)

    # 1. Static covariate encoders.
    static = nn.Embed(self.num_symbols, hidden, name='symbol_embedding')(symbol).astype(dtype)
    static = layers.GatedResidualNetwork(hidden, dropout_rate=self.dropout_rate,
                                         name='static_variable_grn')(
                                             static, deterministic=deterministic)
    static_weights = jnp.ones((batch, 1), jnp.float32)
    contexts = layers.GatedResidualNetwork(
        hidden, dropout_rate=self.dropout_rate, stacked=True, name='static_context_grn')(
            jnp.broadcast_to(static, (len(_STATIC_CONTEXTS), batch, hidden)),
            deterministic=deterministic)
    selection_context, hidden_context, cell_context, enrichment_context = (
        contexts[index] for index in range(len(_STATIC_CONTEXTS)))

    # 2. Variable selection (the static context broadcasts over time).
    encoder_selected, encoder_weights = variable_selection.VariableSelectionNetwork(
        hidden, self.hidden_continuous_size, self.dropout_rate,
        chunk_rows=self.variable_chunk_rows, name='encoder_variable_selection')(
            encoder, selection_context[:, None, :], deterministic=deterministic)
    decoder_selected, decoder_weights = variable_selection.VariableSelectionNetwork(
        hidden, self.hidden_continuous_size, self.dropout_rate,
        chunk_rows=self.variable_chunk_rows, name='decoder_variable_selection')(
            decoder_known, selection_context[:, None, :], deterministic=deterministic)

    # 3. LSTM encoder-decoder and the gated skip over it (one GateAddNorm for both halves).
    initial_state = tuple((hidden_context, cell_context) for _ in range(self.lstm_layers))
    encoder_output, encoder_state = layers.ScanLSTM(
        hidden, self.lstm_layers, self.dropout_rate, name='lstm_encoder')(
            encoder_selected, initial_state, deterministic=deterministic)
    decoder_output, _ = layers.ScanLSTM(
        hidden, self.lstm_layers, self.dropout_rate, name='lstm_decoder')(
            decoder_selected, encoder_state, deterministic=deterministic)
    temporal = layers.GateAddNorm(hidden, self.dropout_rate, name='post_lstm_gate')(
        jnp.concatenate([encoder_output, decoder_output], axis=1),
        jnp.concatenate([encoder_selected, decoder_selected], axis=1),
        deterministic=deterministic)

    # 4. Static enrichment.
    enriched = layers.GatedResidualNetwork(hidden, dropout_rate=self.dropout_rate,
                                           name='static_enrichment')(
                                               temporal, enrichment_context[:, None, :],
                                               deterministic=deterministic)

    # 5. Temporal self-attention (decoder queries), feed-forward and output.
    future = slice(self.encoder_length, None)
    mask = layers.encoder_decoder_causal_mask(self.encoder_length, self.decoder_length)
    attended, attention = layers.InterpretableMultiHeadAttention(
        self.num_heads, self.dropout_rate, name='attention')(
            enriched[:, future], enriched, enriched, mask, deterministic=deterministic)
    attended = layers.GateAddNorm(hidden, self.dropout_rate, name='post_attention_gate')(
        attended, enriched[:, future], deterministic=deterministic)
    processed = layers.GatedResidualNetwork(hidden, dropout_rate=self.dropout_rate,
                                            name='position_wise_feed_forward')(
                                                attended, deterministic=deterministic)
    processed = layers.GateAddNorm(hidden, name='pre_output_gate')(  # No dropout this late.
        processed, temporal[:, future], deterministic=deterministic)
    quantiles = nn.Dense(len(self.quantiles), dtype=jnp.float32, name='quantile_output')(
        processed)
    return {
        'quantiles': quantiles,
        'attention': attention.astype(jnp.float32),
        'encoder_variable_weights': encoder_weights,
        'decoder_variable_weights': decoder_weights,
        'static_variable_weights': static_weights,
    }
