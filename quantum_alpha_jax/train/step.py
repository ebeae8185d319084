"""ONE train step and ONE eval step for every model, data-parallel over a device mesh.

A task supplies ``loss_fn(params, batch, rng) -> (loss, metrics)``: ``loss`` a scalar, ``metrics`` a
dict of scalars that are means over the batch's real items (``batch['mask'] == 1``). ``rng`` is a
PRNG key in training and ``None`` in evaluation (the model then runs deterministically). A
``loss_fn`` with a ``step`` parameter also receives the optimizer step (an int32 scalar, the
state's step before the update) in training and ``None`` in evaluation, so that a loss can follow a
schedule (KL annealing, a curriculum); evaluation then scores the loss at the schedule's end.

The step casts the params and the floating batch arrays to ``compute_dtype``; gradients flow back
through the cast, so master params, optimizer state and the loss reduction stay fp32.
``compute_dtype='auto'`` (the configs' default) resolves from ``jax.default_backend()``: bfloat16 on
GPU and TPU, whose matrix units run bf16 at many times their fp32 rate, and float32 on CPU, where
XLA's CPU kernels gain nothing from bf16. The batch is
sharded on its leading axis over the mesh's ``data`` axis and the state is replicated, so XLA
inserts the gradient all-reduce; 1 device and N devices compute the same update.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np
import optax

from quantum_alpha_jax.errors import ConfigError, QuantumAlphaError, describe
from quantum_alpha_jax.train.state import TrainState

LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array | None],
                  tuple[jax.Array, Mapping[str, jax.Array]]]
DATA_AXIS = 'data'
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
AUTO_DTYPE = 'auto'
ACCELERATOR_BACKENDS = ('gpu', 'cuda', 'rocm', 'tpu')


class NonFiniteLossError(QuantumAlphaError):
  """The loss or gradient norm turned NaN/inf; the state keeps the last finite params."""


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D ``('data',)`` mesh over the first ``num_devices`` devices (all of them by default)."""
  devices = jax.devices()
  count = len(devices) if num_devices is None else int(num_devices)
  if not 1 <= count <= len(devices):
    raise ConfigError(describe('num_devices', f'{count} requested, {len(devices)} available'))
  # Auto axes: XLA propagates shardings through the model (no sharding-in-types annotations).
  return jax.make_mesh((count,), (DATA_AXIS,), devices=devices[:count],
                       axis_types=(jax.sharding.AxisType.Auto,))


def resolve_compute_dtype(name: str, backend: str | None = None) -> str:
  """The dtype name ``name`` stands for: ``'auto'`` → ``'bfloat16'`` on a GPU/TPU ``backend``
  (default ``jax.default_backend()``), ``'float32'`` otherwise; an explicit name is returned as is."""
  if name == AUTO_DTYPE:
    backend = jax.default_backend() if backend is None else backend
    return 'bfloat16' if backend.lower() in ACCELERATOR_BACKENDS else 'float32'
  if name not in COMPUTE_DTYPES:
    raise ConfigError(describe('config.compute_dtype', f'unknown dtype {name!r}',
                               f'use {AUTO_DTYPE!r} or one of {sorted(COMPUTE_DTYPES)}'))
  return name


def compute_dtype(name: str, backend: str | None = None) -> jnp.dtype:
  """The jnp dtype of ``name`` (``'auto'`` resolved by :func:`resolve_compute_dtype`)."""
  return COMPUTE_DTYPES[resolve_compute_dtype(name, backend)]


def cast_floating(tree: Any, dtype: jnp.dtype) -> Any:
  """Casts every floating leaf of ``tree`` to ``dtype``; integer and bool leaves are untouched."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """This process's batch ``[local_batch, ...]`` → global arrays sharded on the leading axis."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for name, value in batch.items()}


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def _batch_weight(batch: Mapping[str, jax.Array]) -> jax.Array:
  if 'mask' in batch:
    return jnp.sum(batch['mask'].astype(jnp.float32))
  return jnp.asarray(jax.tree.leaves(batch)[0].shape[0], jnp.float32)


def accepts_step(loss_fn: Callable[..., Any]) -> bool:
  """True when ``loss_fn`` takes a ``step`` argument (see the module doc)."""
  try:
    return 'step' in inspect.signature(loss_fn).parameters
  except (TypeError, ValueError):  # a builtin or C callable: no inspectable signature
    return False


def _call_loss(loss_fn: Callable[..., Any], params: Any, batch: Any, rng: jax.Array | None,
               step: jax.Array | None) -> tuple[jax.Array, Mapping[str, jax.Array]]:
  """``loss_fn(params, batch, rng[, step=step])``: the step only to a loss that takes one."""
  if accepts_step(loss_fn):
    return loss_fn(params, batch, rng, step=step)
  return loss_fn(params, batch, rng)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    schedule: Callable[[jax.Array], jax.Array], mesh: jax.sharding.Mesh, *,
                    dtype: jnp.dtype = jnp.float32, accumulation_steps: int = 1,
                    population: int = 1
                    ) -> Callable[[TrainState, Mapping[str, jax.Array]],
                                  tuple[TrainState, dict[str, jax.Array]]]:
  """``step(state, batch) -> (state, metrics)``, jitted with the state donated.

  With ``population = K > 1`` the state is K-stacked (:mod:`quantum_alpha_jax.train.population`):
  the step is ``jax.vmap`` of the single-run step over the state, with the batch shared by every
  member, and each metric is a ``[K]`` array.

  With ``accumulation_steps = k`` the batch is split into k micro-batches whose gradients are
  averaged before one optimizer update (same result as one big batch, a k-th of the activations).
  A non-finite loss or gradient leaves params and optimizer state unchanged and reports
  ``finite = 0``; :func:`check_finite` turns that into an error naming the step.
  """
  if accumulation_steps < 1:
    raise ConfigError(describe('config.accumulation_steps', f'{accumulation_steps} < 1'))

  def compute(params, batch, rng, step):
    loss, metrics = _call_loss(loss_fn, cast_floating(params, dtype), cast_floating(batch, dtype),
                               rng, step)
    return loss.astype(jnp.float32), jax.tree.map(lambda m: m.astype(jnp.float32), metrics)

  gradient_fn = jax.value_and_grad(compute, has_aux=True)

  def step(state: TrainState, batch: Mapping[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    if accumulation_steps == 1:
      (loss, metrics), grads = gradient_fn(state.params, batch, rng, state.step)
    else:
      def split(x):
        if x.shape[0] % accumulation_steps:
          raise ConfigError(describe('config.accumulation_steps', f'batch of {x.shape[0]} does '
                                     f'not split into {accumulation_steps} micro-batches'))
        # Micro-batch j holds rows j, k + j, 2k + j, ...: every device keeps its own rows.
        x = x.reshape(x.shape[0] // accumulation_steps, accumulation_steps, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

      micro_batches = jax.tree.map(split, batch)

      def accumulate(carry, inputs):
        index, micro = inputs
        (loss, metrics), grads = gradient_fn(state.params, micro, jax.random.fold_in(rng, index),
                                             state.step)
        total = jax.tree.map(jnp.add, carry, (loss, metrics, grads))
        return total, None

      zeros = jax.eval_shape(gradient_fn, state.params, jax.tree.map(lambda x: x[0], micro_batches),
                             rng, state.step)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (zeros[0][0], zeros[0][1],
                                                                   zeros[1]))
      (loss, metrics, grads), _ = jax.lax.scan(
          accumulate, zeros, (jnp.arange(accumulation_steps), micro_batches))
      loss, metrics, grads = jax.tree.map(lambda x: x / accumulation_steps, (loss, metrics, grads))
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                              opt_state=keep(opt_state, state.opt_state))
    learning_rate = jnp.asarray(schedule(state.step), jnp.float32)
    multiplier = _learning_rate_multiplier(state.opt_state)
    if multiplier is not None:
      learning_rate = learning_rate * multiplier
    metrics = {**metrics, 'loss': loss, 'grad_norm': grad_norm, 'learning_rate': learning_rate,
               'finite': finite.astype(jnp.float32)}
    return new_state, metrics

  if population > 1:
    step = jax.vmap(step, in_axes=(0, None))
  state_sharding, data_sharding = replicated(mesh), batch_sharding(mesh)
  return jax.jit(step, in_shardings=(state_sharding, data_sharding),
                 out_shardings=(state_sharding, state_sharding), donate_argnums=(0,))


def make_eval_step(loss_fn: LossFn, mesh: jax.sharding.Mesh, *, dtype: jnp.dtype = jnp.float32,
                   population: int = 1
                   ) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, jax.Array]]:
  """``eval_step(params, batch) -> sums``: each metric times the batch's real-item count, and
  ``count``. Summing over batches and dividing by the total count gives exact split means.
  With ``population = K > 1`` the params are K-stacked and every sum is a ``[K]`` array."""

  def step(params, batch):
    loss, metrics = _call_loss(loss_fn, cast_floating(params, dtype), cast_floating(batch, dtype),
                               None, None)
    weight = _batch_weight(batch)
    sums = {name: value.astype(jnp.float32) * weight for name, value in metrics.items()}
    sums['loss'] = loss.astype(jnp.float32) * weight
    sums['count'] = weight
    return sums

  if population > 1:
    step = jax.vmap(step, in_axes=(0, None))
  return jax.jit(step, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                 out_shardings=replicated(mesh))


def _learning_rate_multiplier(opt_state: Any) -> jax.Array | None:
  """A population member's learning-rate multiplier (``population.with_learning_rate_multiplier``:
  the last link of the chain is an injected ``optax.scale``), or ``None``."""
  if isinstance(opt_state, tuple) and opt_state and hasattr(opt_state[-1], 'hyperparams'):
    return opt_state[-1].hyperparams.get('step_size')
  return None


def _number(value: Any) -> Any:
  return float(value) if np.ndim(value) == 0 else np.asarray(value).tolist()


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
  """Raises :class:`NonFiniteLossError` naming ``step`` if the step's loss or gradient was not
  finite (for a population: of any member; the values are then listed per member)."""
  if float(np.min(metrics['finite'])) < 1:
    raise NonFiniteLossError(describe(
        f'train step {step}', f'loss {_number(metrics["loss"])} / gradient norm '
        f'{_number(metrics["grad_norm"])} is not finite; the update was skipped and the last '
        'checkpoint is intact',
        'lower optimizer.learning_rate or clip_norm, try compute_dtype=float32, or check the batch '
        'for NaN features'))


def mean_metrics(sums: list[Mapping[str, Any]]) -> dict[str, float]:
  """Exact means over an evaluated split from :func:`make_eval_step`'s per-batch sums."""
  if not sums:
    return {}
  totals = jax.tree.map(lambda *xs: float(np.sum([float(x) for x in xs])), *sums)
  count = totals.pop('count')
  if count <= 0:
    raise QuantumAlphaError('evaluation: no real items in the split (every row was padding)')
  return {name: value / count for name, value in totals.items()} | {'count': count}
