"""Populations: K copies of one model trained together in ONE compiled step, on ONE data stream.

``config.train.population = K`` (default 1: the ordinary single run, untouched). Member ``k``
starts from ``config.seed + k`` (its params init and its dropout rng are those of a single run
with that seed), so member 0 is the run the config describes and a population is K single runs
side by side. The shared train step (:func:`step.make_train_step` with ``population=K``) is the
single-run step under ``jax.vmap`` over the K-stacked train state (params, optimizer state, step
and rng carry a leading ``[K]`` axis); the batch is not vmapped, so every member sees the same
batches. The batch stays sharded over the ``data`` mesh and the stacked state replicated.

Per-member learning rates (``config.population_learning_rates``, one per member, or
``population_learning_rate_spread``: K rates log-spaced over that many decades, centred on the
optimizer's rate) scale each member's update by ``rate / optimizer.learning_rate`` through
``optax.inject_hyperparams(optax.scale)``: the multiplier is optimizer state, so it is vmapped and
checkpointed with the rest. Adam/AdamW updates are linear in the learning rate (AdamW's decay too),
so a member equals a single run at its own rate, with the same warmup and decay shape.

Every evaluated metric is then reported as the population mean with a 95% Student-t interval over
the K members (``<name>``, ``<name>_low``, ``<name>_high``), and the best checkpoint is chosen by
the mean.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from scipy import stats

from quantum_alpha_jax.errors import ConfigError, describe
from quantum_alpha_jax.train import state as state_lib
from quantum_alpha_jax.train import step as step_lib

CONFIDENCE = 0.95
INTERVAL_METHOD = 'Student t over the population members (mean ± t(0.975, K-1) · sd / √K)'


def size(config: ml_collections.ConfigDict) -> int:
  """``config.population`` (the ``train`` config), checked; 1 when the key is absent."""
  count = int(config.get('population', 1))
  if count < 1:
    raise ConfigError(describe('config.train.population', f'{count} < 1',
                               'use 1 (a single run) or the number of members'))
  return count


def seeds(config: ml_collections.ConfigDict) -> list[int]:
  """Member ``k``'s seed: ``config.seed + k``."""
  return [int(config.seed) + member for member in range(size(config))]


def learning_rates(config: ml_collections.ConfigDict) -> list[float] | None:
  """Each member's peak learning rate, or ``None`` when all share ``optimizer.learning_rate``."""
  count, peak = size(config), float(config.optimizer.learning_rate)
  rates = tuple(config.get('population_learning_rates', ()) or ())
  spread = float(config.get('population_learning_rate_spread', 0.0) or 0.0)
  if rates and spread:
    raise ConfigError(describe('config.train.population_learning_rates', 'given together with '
                               'population_learning_rate_spread', 'set one of the two'))
  if rates:
    if len(rates) != count or min(float(r) for r in rates) <= 0:
      raise ConfigError(describe('config.train.population_learning_rates', f'{list(rates)}',
                                 f'give {count} positive rates, one per member'))
    return [float(rate) for rate in rates]
  if spread < 0:
    raise ConfigError(describe('config.train.population_learning_rate_spread', f'{spread} < 0',
                               'give the decades the rates span (e.g. 1.0), or 0 for one rate'))
  if spread:
    return [peak * 10.0 ** exponent for exponent in np.linspace(-spread / 2, spread / 2, count)]
  return None


def with_learning_rate_multiplier(optimizer: optax.GradientTransformation
                                  ) -> optax.GradientTransformation:
  """``optimizer`` followed by a per-member update scale held in the optimizer state
  (``inject_hyperparams``, so ``jax.vmap`` gives each member its own)."""
  return optax.chain(optimizer, optax.inject_hyperparams(optax.scale)(step_size=1.0))


def create_state(config: ml_collections.ConfigDict, init_params: Callable[[jax.Array], Any],
                 optimizer: optax.GradientTransformation) -> state_lib.TrainState:
  """The K-stacked train state: member ``k`` is ``TrainState.create`` of a single run with seed
  ``config.seed + k`` (``init_params(init_rng)``), with its learning-rate multiplier when the
  members' rates differ (``optimizer`` must then come from :func:`with_learning_rate_multiplier`).
  The K inits run as one jitted ``vmap`` (an eager flax init costs seconds per member)."""
  keys = np.stack([np.asarray(jax.random.split(jax.random.PRNGKey(seed))) for seed in seeds(config)])
  init_rngs, train_rngs = jnp.asarray(keys[:, 0]), jnp.asarray(keys[:, 1])
  create = lambda rng, train_rng: state_lib.TrainState.create(init_params(rng), optimizer,
                                                              train_rng)
  state = jax.jit(jax.vmap(create))(init_rngs, train_rngs)
  rates = learning_rates(config)
  if rates is not None:
    *inner, injected = state.opt_state
    multipliers = np.asarray(rates, np.float32) / np.float32(config.optimizer.learning_rate)
    state = state.replace(opt_state=(*inner, injected._replace(hyperparams={
        **injected.hyperparams, 'step_size': jnp.asarray(multipliers)})))
  return jax.device_get(state)


def stack(members: Sequence[Any]) -> Any:
  """Pytrees of identical structure → one pytree with a leading ``[K]`` axis."""
  return jax.tree.map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *members)


def member(tree: Any, index: int) -> Any:
  """Member ``index`` of a K-stacked pytree."""
  return jax.tree.map(lambda leaf: leaf[index], tree)


def interval(values: Sequence[float]) -> tuple[float, float, float]:
  """``(mean, low, high)``: the 95% Student-t interval of the mean over the members (``low =
  high = mean`` for one member or identical values)."""
  values = np.asarray(values, np.float64)
  mean = float(np.mean(values))
  if len(values) < 2:
    return mean, mean, mean
  half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1)
               * np.std(values, ddof=1) / np.sqrt(len(values)))
  return mean, mean - half, mean + half


def summarize(members: Sequence[Mapping[str, float | None]]) -> dict[str, Any]:
  """The ``population`` block of a report: per-member metrics, their mean and 95% interval
  (metrics missing or ``None`` for some member are left out of the mean)."""
  names = [name for name in members[0] if all(m.get(name) is not None for m in members)]
  block = {'size': len(members), 'members': [dict(m) for m in members], 'mean': {}, 'interval': {},
           'confidence': CONFIDENCE, 'interval_method': INTERVAL_METHOD}
  for name in names:
    mean, low, high = interval([float(m[name]) for m in members])
    block['mean'][name], block['interval'][name] = mean, [low, high]
  return block


def flat_metrics(block: Mapping[str, Any]) -> dict[str, float]:
  """``{name: mean, name_low: low, name_high: high}`` of a :func:`summarize` block (scalars for
  logs, TensorBoard and the checkpoint's best-by-metric choice, which thus uses the mean)."""
  flat = {}
  for name, mean in block['mean'].items():
    flat[name] = mean
    if name != 'count':
      flat[f'{name}_low'], flat[f'{name}_high'] = block['interval'][name]
  return flat


def mean_metrics(sums: list[Mapping[str, Any]]) -> dict[str, Any]:
  """:func:`step.mean_metrics` of an evaluated split; for a population's per-member sums (each a
  ``[K]`` array) the :func:`flat_metrics` over the members plus ``'members'``: the block."""
  if not sums or np.ndim(sums[0]['count']) == 0:
    return step_lib.mean_metrics(sums)
  count = int(np.shape(sums[0]['count'])[0])
  members = [step_lib.mean_metrics([member(batch, index) for batch in sums])
             for index in range(count)]
  block = summarize(members)
  return {**flat_metrics(block), 'members': block}


def numbers(report: Mapping[str, Any], paths: Sequence[str]) -> dict[str, float]:
  """The numbers at the dotted ``paths`` of a nested report (paths missing or ``None`` skipped)."""
  found = {}
  for path in paths:
    value: Any = report
    for key in path.split('.'):
      value = value.get(key) if isinstance(value, Mapping) else None
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
      found[path] = float(value)
  return found


def format_metrics(flat: Mapping[str, float]) -> str:
  """``name=mean [low, high]`` for the logs."""
  parts = []
  for name, value in flat.items():
    if name.endswith(('_low', '_high')) and name.rsplit('_', 1)[0] in flat:
      continue
    if f'{name}_low' in flat:
      parts.append(f'{name}={value:.6g} [{flat[f"{name}_low"]:.6g}, {flat[f"{name}_high"]:.6g}]')
    else:
      parts.append(f'{name}={value:.6g}')
  return ', '.join(parts)
