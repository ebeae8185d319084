"""Exportable inference functions: what each model computes at serving time, by model name.

An :class:`InferenceFunction` is ``apply(params, *inputs) -> {output: array}`` with named
:class:`TensorSpec` inputs and outputs whose leading dimension is the (symbolic) batch, plus the
params and the JSON metadata that travels with the exported file. Models are found in the task
registry (``tasks/registry.find_export``): each task declares its builders
``(task, params, config, record) -> InferenceFunction`` in ``export_fns``, and its ``load(workdir)
-> (task, params, config)`` restores a run.

The models:

- ``oracle`` (the TFT) and ``lstm`` (the LSTM baseline): the Oracle's normalised windows
  (``encoder``, ``decoder_known``, ``symbol``) → the sorted quantiles of the cumulative log-return
  per horizon, ``p_up`` and ``uncertainty``.
- ``guardian`` (the contrastive β-VAE): a normalised window ``encoder`` → ``latent`` (the posterior
  mean), ``regime_probabilities`` (bull, bear, sideways) and ``risk_score`` (annualised volatility).
- ``strategist`` (the Decision Transformer): a context of K steps (``rtg``, ``states``,
  ``actions``, ``sizes``, ``timesteps``) → ``action_logits`` (hold, buy, sell) and ``size`` per step
  (teacher-forced; the decision is the last step's).
- ``strategist_step`` (the same run, for serving): one step of the cached decode, the key/value
  cache an explicit input and output (``timestep``, ``rtg``, ``state``, ``previous_action``,
  ``previous_size``, ``cache``) → ``action_logits``, ``size`` and ``next_cache``; ~1/K of the full
  context's work per decision (:func:`strategist_step`).

Adding a model is one builder, named by the model's task (``export_fns='module:_my_model'``): a
function of ``(task, params, config, record)`` that closes over the task's deterministic forward
pass, e.g.::

  def _my_model(task, params, config, record):
    def apply(params, encoder):
      return {'score': task.predict(params, encoder)['score']}
    return InferenceFunction(
        'my_model', apply, params,
        inputs=(TensorSpec('encoder', (None, 60, len(FEATURES)), 'float32'),),
        outputs=(TensorSpec('score', (None,), 'float32'),),
        metadata=_metadata('my_model', config, record, 'encoder: ...'),
        real_inputs=_window_inputs(config, record, spec, ('encoder',)))
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from quantum_alpha_jax.data.features import FEATURES
from quantum_alpha_jax.data.features import KNOWN_FUTURE_FEATURES
from quantum_alpha_jax.errors import SchemaError, describe
from quantum_alpha_jax.tasks import oracle as oracle_task
from quantum_alpha_jax.tasks import registry
from quantum_alpha_jax.train import checkpoint

METADATA_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """A named input or output: ``shape`` with ``None`` for the batch dimension, a numpy dtype name,
  and for integer inputs the exclusive upper bound ``high`` of valid values (ids, indices)."""

  name: str
  shape: tuple[int | None, ...]
  dtype: str
  high: int | None = None

  def to_dict(self) -> dict[str, Any]:
    entry = {'name': self.name, 'shape': ['batch' if d is None else int(d) for d in self.shape],
             'dtype': self.dtype}
    if self.high is not None:
      entry['high'] = int(self.high)
    return entry


@dataclasses.dataclass(frozen=True)
class InferenceFunction:
  """A model ready to export: ``apply(params, *inputs) -> {output name: array}``.

  ``real_inputs(batch)``, when given, returns ``batch`` real input examples (e.g. store windows)
  as a tuple ordered like ``inputs``; the parity checks use them beside random inputs.
  """

  name: str
  apply: Callable[..., Mapping[str, jax.Array]]
  params: Any
  inputs: tuple[TensorSpec, ...]
  outputs: tuple[TensorSpec, ...]
  metadata: Mapping[str, Any]
  real_inputs: Callable[[int], tuple[np.ndarray, ...]] | None = None

  def __call__(self, *inputs: Any) -> dict[str, jax.Array]:
    return dict(self.jitted(self.params, *inputs))

  @functools.cached_property
  def jitted(self) -> Callable[..., Mapping[str, jax.Array]]:
    """``jax.jit(apply)``, compiled once per input shape for this function."""
    return jax.jit(self.apply)

  @property
  def input_names(self) -> list[str]:
    return [spec.name for spec in self.inputs]

  @property
  def output_names(self) -> list[str]:
    return [spec.name for spec in self.outputs]

  def random_inputs(self, batch: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Standard-normal floats and uniform integers in ``[0, high)``, one array per input."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in self.inputs:
      shape = (batch,) + tuple(spec.shape[1:])
      if np.issubdtype(np.dtype(spec.dtype), np.integer):
        arrays.append(rng.integers(0, spec.high or 1, size=shape).astype(spec.dtype))
      else:
        arrays.append(rng.standard_normal(shape).astype(spec.dtype))
    return tuple(arrays)


def _metadata(name: str, config: ml_collections.ConfigDict, record: Mapping[str, Any],
              input_layout: str) -> dict[str, Any]:
  """What a deployment must know to feed the model: feature order, normaliser, layout, config."""
  normalizer = record.get('normalizer')
  return {
      'format': METADATA_FORMAT,
      'model': name,
      'feature_names': list(normalizer['features'] if normalizer else FEATURES),
      'known_future_features': list(KNOWN_FUTURE_FEATURES),
      'normalizer': normalizer,
      'input_layout': input_layout,
      'best_step': record.get('best_step'),
      'config': config.to_dict(),
  }


def _evenly_spaced(count: int, batch: int) -> np.ndarray:
  return np.linspace(0, count - 1, batch).astype(np.int64)


def _held_out(data: Mapping[str, Any]) -> Any:
  return data['test'] if 'test' in data else data['validation']


def _window_inputs(config: ml_collections.ConfigDict, record: Mapping[str, Any], spec: Any,
                   names: Sequence[str]) -> Callable[[int], tuple[np.ndarray, ...]]:
  """``batch -> inputs``: windows (``spec``, a WindowSpec) of the run's test split (validation if
  it has none), evenly spaced, read from the store of ``config.data`` with the run's normaliser."""

  def read(batch: int) -> tuple[np.ndarray, ...]:
    from quantum_alpha_jax.data import windows  # pylint: disable=g-import-not-at-top
    from quantum_alpha_jax.train import data as data_lib  # pylint: disable=g-import-not-at-top
    normalizer = windows.Normalizer.from_dict(record['normalizer'])
    data, _ = data_lib.make_split_data(config.data, spec, 1, config.train.seed,
                                       normalizer=normalizer)
    source = _held_out(data).source
    gathered = source.gather(source.anchors[_evenly_spaced(len(source.anchors), batch)])
    return tuple(gathered[name] for name in names)

  return read


_FORECASTER_LAYOUT = (
    'encoder [batch, encoder_length, 44]: the window of the last encoder_length bars, anchor bar '
    'last, features in feature_names order, made stationary relative to the anchor bar and '
    'z-scored with the normalizer (data/windows.py Normalizer.apply); decoder_known [batch, '
    'decoder_length, 3]: the known_future_features of the next decoder_length bars, normalised '
    'the same way; symbol [batch] int32: index of the symbol in the sorted symbols of the run\'s '
    'store. Outputs are in log-return units: quantiles of log(close[t+h]/close[t]) sorted per '
    'horizon, p_up = P(that > 0), uncertainty = q_max - q_min.')


def quantile_forecaster(name: str) -> Callable[..., InferenceFunction]:
  """The builder for the Oracle's window forecasters (the TFT and the LSTM baseline)."""

  def build(task: Any, params: Any, config: ml_collections.ConfigDict,
            record: Mapping[str, Any]) -> InferenceFunction:
    model = task.model
    horizon, levels = model.decoder_length, len(model.quantiles)

    def apply(params: Any, encoder: jax.Array, decoder_known: jax.Array, symbol: jax.Array
              ) -> dict[str, jax.Array]:
      outputs = task.predict(params, {'encoder': encoder, 'decoder_known': decoder_known,
                                      'symbol': symbol})
      return {key: outputs[key] for key in ('quantiles', 'p_up', 'uncertainty')}

    metadata = _metadata(name, config, record, _FORECASTER_LAYOUT)
    metadata['quantiles'] = [float(q) for q in model.quantiles]
    return InferenceFunction(
        name, apply, params,
        inputs=(TensorSpec('encoder', (None, model.encoder_length, model.num_observed), 'float32'),
                TensorSpec('decoder_known', (None, horizon, model.num_known), 'float32'),
                TensorSpec('symbol', (None,), 'int32', high=model.num_symbols)),
        outputs=(TensorSpec('quantiles', (None, horizon, levels), 'float32'),
                 TensorSpec('p_up', (None, horizon), 'float32'),
                 TensorSpec('uncertainty', (None, horizon), 'float32')),
        metadata=metadata,
        real_inputs=(_window_inputs(config, record, oracle_task.window_spec(config),
                                    ('encoder', 'decoder_known', 'symbol'))
                     if record.get('normalizer') else None))

  return build


def guardian(task: Any, params: Any, config: ml_collections.ConfigDict,
             record: Mapping[str, Any]) -> InferenceFunction:
  """The Guardian's deployed path (``task.predict``): window → latent, regimes, risk."""
  from quantum_alpha_jax.data.schema import REGIMES  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import guardian as guardian_task  # pylint: disable=g-import-not-at-top
  model = task.model

  def apply(params: Any, encoder: jax.Array) -> dict[str, jax.Array]:
    outputs = task.predict(params, encoder)
    return {key: outputs[key] for key in ('latent', 'regime_probabilities', 'risk_score')}

  metadata = _metadata('guardian', config, record, (
      f'encoder [batch, {model.window}, {model.num_features}]: the last {model.window} bars, '
      'anchor last, features in feature_names order, normalised with the normalizer like the '
      "Oracle's encoder. Outputs: latent (posterior mean), regime_probabilities over "
      f'{list(REGIMES)}, risk_score (predicted annualised volatility; risk level thresholds in '
      'risk_thresholds).'))
  metadata['regimes'] = list(REGIMES)
  metadata['risk_thresholds'] = [float(value) for value in task.risk_thresholds]
  return InferenceFunction(
      'guardian', apply, params,
      inputs=(TensorSpec('encoder', (None, model.window, model.num_features), 'float32'),),
      outputs=(TensorSpec('latent', (None, model.latent_dim), 'float32'),
               TensorSpec('regime_probabilities', (None, len(REGIMES)), 'float32'),
               TensorSpec('risk_score', (None,), 'float32')),
      metadata=metadata,
      real_inputs=(_window_inputs(config, record, guardian_task.window_spec(config), ('encoder',))
                   if record.get('normalizer') else None))


STRATEGIST_INPUTS = ('rtg', 'states', 'actions', 'sizes', 'timesteps')


def strategist(task: Any, params: Any, config: ml_collections.ConfigDict,
               record: Mapping[str, Any]) -> InferenceFunction:
  """The Decision Transformer over a full context (teacher-forced): per-step action logits, size."""
  model = task.model
  steps = model.context_length

  def apply(params: Any, *inputs: jax.Array) -> dict[str, jax.Array]:
    outputs = task.apply(params, dict(zip(STRATEGIST_INPUTS, inputs)))
    return {'action_logits': outputs['action_logits'], 'size': outputs['size']}

  def real_inputs(batch: int) -> tuple[np.ndarray, ...]:
    from quantum_alpha_jax.tasks import strategist as strategist_task  # pylint: disable=g-import-not-at-top
    data, _ = strategist_task.make_data(config, normalizer=task.normalizer)
    source = _held_out(data).source
    gathered = source.gather(_evenly_spaced(len(source), batch))
    return tuple(gathered[name] for name in STRATEGIST_INPUTS)

  metadata = _metadata('strategist', config, record, (
      f'A context of K = {steps} steps, oldest first: rtg [batch, K] the scaled return-to-go '
      f'tokens; states [batch, K, {model.state_size}] the bar features in feature_names order '
      'normalised one bar at a time with the normalizer, plus the position held into the '
      'decision; actions [batch, K] int32 (hold, buy, sell) and sizes [batch, K] of the previous '
      'decisions; timesteps [batch, K] int32 0..K-1. The decision is read off the last step: '
      'argmax action_logits and size.'))
  metadata.update(_strategist_metadata(task))
  return InferenceFunction(
      'strategist', apply, params,
      inputs=(TensorSpec('rtg', (None, steps), 'float32'),
              TensorSpec('states', (None, steps, model.state_size), 'float32'),
              TensorSpec('actions', (None, steps), 'int32', high=model.num_actions),
              TensorSpec('sizes', (None, steps), 'float32'),
              TensorSpec('timesteps', (None, steps), 'int32', high=model.max_timestep)),
      outputs=(TensorSpec('action_logits', (None, steps, model.num_actions), 'float32'),
               TensorSpec('size', (None, steps), 'float32')),
      metadata=metadata,
      real_inputs=real_inputs if task.normalizer is not None else None)


def _strategist_metadata(task: Any) -> dict[str, Any]:
  """What a server needs beside the layout to run the Strategist's episodes: the actions, the
  conditioning target and its token, and how the return token and the position evolve."""
  from quantum_alpha_jax.data import trajectories  # pylint: disable=g-import-not-at-top
  spec = task.spec
  return {
      'actions': list(trajectories.ACTIONS),
      'target_return': task.target_return,
      'conditioning_token': (None if task.target_return is None
                             else task.conditioning_token(task.target_return)),
      'condition_on': spec.condition_on, 'rtg_scale': spec.rtg_scale, 'discount': spec.discount,
      'reward_scale': spec.reward_scale, 'allow_short': spec.allow_short,
      'context_length': task.model.context_length,
  }


STRATEGIST_STEP_INPUTS = ('timestep', 'rtg', 'state', 'previous_action', 'previous_size', 'cache')
CACHE_LAYOUT = ('[batch, layers, 2, heads, slots, head_size]: per block its keys (index 0 of '
                'axis 2) and values (index 1) of the episode\'s earlier tokens, the most recent '
                'token in the last slot; slots = 3K + 1')


def strategist_step(task: Any, params: Any, config: ml_collections.ConfigDict,
                    record: Mapping[str, Any]) -> InferenceFunction:
  """One decision of the Strategist through its cached decode, the cache explicit.

  ``apply(params, timestep, rtg, state, previous_action, previous_size, cache)`` with
  ``timestep [batch]`` int32 (t in [0, K), each row its own), ``rtg, previous_size [batch]``,
  ``state [batch, S]`` (the 44 normalised features then the held position), ``previous_action
  [batch]`` int32 and ``cache [batch, layers, 2, heads, 3K + 1, head_size]`` float32
  (:meth:`DecisionTransformer.decode_rolling`: keys then values per block, most recent token
  last) → ``action_logits [batch, 3]``, ``size [batch]`` and ``next_cache`` (the same shape: the
  cache to pass with step t + 1). Stepping t = 0 .. K-1 equals the full context's outputs.
  """
  from quantum_alpha_jax.models import decision_transformer as dt  # pylint: disable=g-import-not-at-top
  model = task.model
  steps = model.context_length
  cache_shape = dt.rolling_cache_shape(model, 1)[1:]

  def apply(params: Any, timestep: jax.Array, rtg: jax.Array, state: jax.Array,
            previous_action: jax.Array, previous_size: jax.Array, cache: jax.Array
            ) -> dict[str, jax.Array]:
    heads, next_cache = model.apply({'params': params}, cache, timestep, rtg, state,
                                    previous_action, previous_size, method=model.decode_rolling)
    return {'action_logits': heads['action_logits'], 'size': heads['size'],
            'next_cache': next_cache}

  def real_inputs(batch: int) -> tuple[np.ndarray, ...]:
    """Real test episodes, row b stopped at step ``t_b`` (spread over 0..K-1) with the cache
    its teacher-forced steps 0..t_b-1 leave (built by the jitted step itself)."""
    from quantum_alpha_jax.tasks import strategist as strategist_task  # pylint: disable=g-import-not-at-top
    data, _ = strategist_task.make_data(config, normalizer=task.normalizer)
    source = _held_out(data).source
    episodes = source.gather(_evenly_spaced(len(source), batch))
    stop = _evenly_spaced(steps, batch)
    step = jax.jit(apply)
    cache = np.zeros((batch,) + cache_shape, np.float32)
    inputs = None
    for t in range(int(stop.max()) + 1):
      tokens = step_tokens(episodes, t)
      if inputs is None:
        inputs = [np.array(x) for x in tokens] + [cache.copy()]
      chosen = stop == t
      for target, value in zip(inputs, tokens + (cache,)):
        target[chosen] = value[chosen]
      cache = np.asarray(step(params, *tokens, cache)['next_cache'])
    return tuple(inputs)

  metadata = _metadata('strategist_step', config, record, (
      f'One decision per call, step t of an episode of K = {steps} bars. timestep [batch] int32 '
      't in 0..K-1 (0 at the first bar of each episode; a new episode every K bars and after bars '
      'with no decision); rtg [batch] the return token (conditioning_token at every step with '
      "condition_on 'behaviour'; else conditioning_token at t = 0, then (token - rtg_scale * "
      'reward) / discount, reward = reward_scale * log(equity ratio over the bar)); state [batch, '
      f'{model.state_size}]: the bar\'s features in feature_names order normalised one bar at a '
      'time with the normalizer, then the position held since the bar\'s open; previous_action '
      '[batch] int32 (hold, buy, sell) and previous_size [batch]: the previous step\'s canonical '
      'action (hold when the position did not change) and |position| after it if it bought '
      '(or sold short), else 0 (both ignored at t = 0); cache: ' + CACHE_LAYOUT + ', the '
      'next_cache of the previous step (any values at t = 0, e.g. zeros). Decision: argmax '
      'action_logits and size; the position after it is trajectories.next_position.'))
  metadata.update(_strategist_metadata(task))
  metadata.update({'cache_layout': CACHE_LAYOUT, 'cache_shape': ['batch', *cache_shape],
                   'cache_slots': cache_shape[3], 'num_layers': model.num_layers,
                   'num_heads': model.num_heads, 'head_size': cache_shape[4]})
  return InferenceFunction(
      'strategist_step', apply, params,
      inputs=(TensorSpec('timestep', (None,), 'int32', high=steps),
              TensorSpec('rtg', (None,), 'float32'),
              TensorSpec('state', (None, model.state_size), 'float32'),
              TensorSpec('previous_action', (None,), 'int32', high=model.num_actions),
              TensorSpec('previous_size', (None,), 'float32'),
              TensorSpec('cache', (None, *cache_shape), 'float32')),
      outputs=(TensorSpec('action_logits', (None, model.num_actions), 'float32'),
               TensorSpec('size', (None,), 'float32'),
               TensorSpec('next_cache', (None, *cache_shape), 'float32')),
      metadata=metadata,
      real_inputs=real_inputs if task.normalizer is not None else None)


def step_tokens(episodes: Mapping[str, np.ndarray], t: int) -> tuple[np.ndarray, ...]:
  """Teacher-forced inputs of step ``t`` of full-context ``episodes`` (``rtg``, ``states``,
  ``actions``, ``sizes`` ``[batch, K, ...]``), ordered like ``strategist_step``'s inputs but the
  cache: ``(timestep, rtg, state, previous_action, previous_size)``."""
  rows = len(episodes['rtg'])
  previous = ((np.asarray(episodes['actions'][:, t - 1], np.int32),
               np.asarray(episodes['sizes'][:, t - 1], np.float32)) if t else
              (np.zeros(rows, np.int32), np.zeros(rows, np.float32)))
  return (np.full(rows, t, np.int32), np.asarray(episodes['rtg'][:, t], np.float32),
          np.asarray(episodes['states'][:, t], np.float32), *previous)


def read_record(workdir: str | pathlib.Path) -> dict[str, Any]:
  """The latest JSON record of the run in ``workdir`` (config, best step, normaliser)."""
  return checkpoint.read_run_record(workdir)


def load_inference(name: str, workdir: str | pathlib.Path) -> InferenceFunction:
  """The inference function ``name`` (a model's export, ``tasks/registry.find_export``) from the
  training run in ``workdir``."""
  entry, build = registry.find_export(name)
  task, params, config = entry.load(workdir)
  inference = build(task, params, config, read_record(workdir))
  return dataclasses.replace(inference, metadata={
      **inference.metadata, 'source_workdir': str(pathlib.Path(workdir).resolve())})


def check_feature_names(found: Sequence[str] | None, expected: Sequence[str], where: str) -> None:
  """Raises :class:`SchemaError` unless the model's feature order ``found`` is ``expected``."""
  if found is None:
    raise SchemaError(describe(where, 'carries no feature_names metadata',
                               'export it with experiments.export, which writes them'))
  found, expected = list(found), list(expected)
  if found == expected:
    return
  if sorted(found) == sorted(expected):
    position = next(i for i, (a, b) in enumerate(zip(found, expected)) if a != b)
    problem = (f'features are in another order: position {position} is {found[position]!r} in '
               f'the model, {expected[position]!r} in the caller')
  else:
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    problem = (f'the model was trained on other features (model lacks {missing[:5]}, has extra '
               f'{extra[:5]}; {len(found)} vs {len(expected)} features)')
  raise SchemaError(describe(where, problem, 'build the inputs in the feature_names order stored '
                             'in the model metadata, or re-export a model trained on your features'))
