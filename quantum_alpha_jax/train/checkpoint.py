"""Orbax checkpoints of a run: the latest N plus the best by validation metric, with the Grain
iterator state and a JSON record (loop counters, normaliser, best so far), so resume is exact.

With several processes (``jax.distributed``) every process calls ``save`` and ``restore``
together: Orbax writes the shared files (arrays, the JSON record, metadata) from process 0 and each
process's Grain iterator state as ``iterator/process_<k>-of-<n>.json``; this module writes no file
of its own.

Orbax writes each step to a temporary directory and renames it when complete; a directory left
half-written by a kill is never listed as a step and is removed when the manager next opens.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from quantum_alpha_jax import distributed
from quantum_alpha_jax.errors import QuantumAlphaError, describe


class CheckpointError(QuantumAlphaError):
  """A checkpoint is missing, unreadable or does not fit the model being restored."""


def _metric_key(metric: str, mode: str):
  sign = -1.0 if mode == 'min' else 1.0

  def key(metrics: Any) -> float:
    value = float(metrics.get(metric, math.nan)) if metrics else math.nan
    return sign * value if math.isfinite(value) else -math.inf

  return key


class Checkpoints:
  """``save(step, state, iterator, record, metrics)`` / ``restore(step, like, iterator)`` under
  ``directory``; keeps the ``keep`` latest steps and the ``keep_best`` best by ``metric``."""

  def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, keep_best: int = 1,
               metric: str = 'loss', mode: str = 'min', read_only: bool = False):
    if mode not in ('min', 'max'):
      raise CheckpointError(describe('checkpoint metric mode', f'{mode!r}', 'use "min" or "max"'))
    self.directory = pathlib.Path(directory).resolve()
    self.metric, self.mode = metric, mode
    policy = preservation_policy.AnyPreservationPolicy([
        preservation_policy.LatestN(keep),
        preservation_policy.BestN(get_metric_fn=_metric_key(metric, mode), n=keep_best,
                                  keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=False)
    if read_only and not self.directory.exists():
      raise CheckpointError(describe(str(self.directory), 'no such checkpoint directory',
                                     'pass the workdir of a finished or running training run'))
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, iterator: grain.DatasetIterator | None,
           record: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
    """Writes ``state`` (any pytree), the iterator position and the JSON ``record`` at ``step``."""
    items = {'state': ocp.args.StandardSave(state), 'record': ocp.args.JsonSave(record)}
    if iterator is not None:
      items['iterator'] = grain.checkpoint.CheckpointSave(iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    self.manager.wait_until_finished()

  def restore(self, step: int, like: Any, iterator: grain.DatasetIterator | None = None
              ) -> tuple[Any, dict[str, Any]]:
    """Restores the state shaped (and sharded) like the pytree ``like``; repositions ``iterator``."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    items = {'state': ocp.args.StandardRestore(abstract), 'record': ocp.args.JsonRestore()}
    if iterator is not None:
      items['iterator'] = grain.checkpoint.CheckpointRestore(iterator)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, FileNotFoundError) as error:
      raise CheckpointError(describe(
          f'{self.directory}/{step}', f'cannot restore: {error}',
          'the checkpoint was written by a different model/config; use a new --workdir')) from error
    return restored['state'], dict(restored['record'])

  def restore_params(self, step: int) -> Any:
    """The ``params`` of the train state saved at ``step``, as saved (nested dicts of arrays);
    needs no model or optimizer to describe the target. A checkpoint written on other devices
    (another device count, several hosts) is read onto this process's first device."""
    if step not in self.all_steps():
      raise CheckpointError(describe(
          f'{self.directory}', f'has no step {step} (steps: {self.all_steps()})',
          'the run was cleaned up or is still writing; pass the workdir of a finished run'))
    # Saved on more devices (or hosts) than this process sees: restore onto its first device.
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(fallback_sharding=local)))
    state = distributed.process_local(restored['state'])
    if not isinstance(state, dict) or 'params' not in state:
      raise CheckpointError(describe(f'{self.directory}/{step}', 'holds no train state params',
                                     'pass the workdir of a run of the shared trainer'))
    return state['params']

  def read_record(self, step: int | None = None) -> dict[str, Any]:
    """The JSON record saved with ``step`` (the latest by default)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(describe(str(self.directory), 'holds no checkpoint',
                                     'train first, or pass the workdir of a finished run'))
    restored = self.manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
    return dict(restored['record'])

  def close(self) -> None:
    self.manager.close()


def read_run_record(workdir: str | pathlib.Path) -> dict[str, Any]:
  """The latest JSON record (config, best step, normaliser, ...) of the run in ``workdir``; read-only."""
  if not (pathlib.Path(workdir) / 'checkpoints').is_dir():
    raise CheckpointError(describe(str(workdir), 'holds no checkpoints/ directory',
                                   'pass the workdir of a training run (e.g. checkpoints/oracle-quick)'))
  checkpoints = Checkpoints(pathlib.Path(workdir) / 'checkpoints', read_only=True)
  try:
    return checkpoints.read_record()
  finally:
    checkpoints.close()


def load_best(workdir: str | pathlib.Path) -> tuple[Any, dict[str, Any]]:
  """Params of the best checkpoint (by the validation metric; the latest when the run never
  validated) of the run in ``workdir`` and the latest JSON record (``config``, ``best_step``,
  ``normalizer``, ...). Read-only: safe beside a run that is still training."""
  checkpoints = Checkpoints(pathlib.Path(workdir) / 'checkpoints', read_only=True)
  try:
    record = checkpoints.read_record()
    step = record.get('best_step')
    params = checkpoints.restore_params(checkpoints.latest_step() if step is None else int(step))
  finally:
    checkpoints.close()
  if 'config' not in record:
    raise CheckpointError(describe(str(workdir), 'the checkpoint record holds no config',
                                   'pass the workdir of a run of the shared trainer'))
  train = record['config'].get('train', record['config'])  # an experiment's or a bare train config
  if int(train.get('population', 1) or 1) > 1:
    # A population (train/population.py) saves K stacked members: member 0 has the config's seed.
    params = jax.tree.map(lambda leaf: leaf[0], params)
  return params, record


def check_structure(params: Any, expected: Any, where: str) -> None:
  """Raises :class:`CheckpointError` unless ``params`` has the tree structure, shapes and dtypes of
  ``expected`` (arrays or ``jax.ShapeDtypeStruct``, e.g. from ``jax.eval_shape`` of an init)."""
  have = {jax.tree_util.keystr(path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
  want = {jax.tree_util.keystr(path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in jax.tree_util.tree_leaves_with_path(expected)}
  problems = [f'missing {name}' for name in sorted(set(want) - set(have))]
  problems += [f'unexpected {name}' for name in sorted(set(have) - set(want))]
  problems += [f'{name} is {have[name]}, expected {want[name]}'
               for name in sorted(set(have) & set(want)) if have[name] != want[name]]
  if problems:
    raise CheckpointError(describe(
        where, f'the checkpoint params do not fit the model of the saved config '
        f'({len(problems)} differences: {"; ".join(problems[:4])})',
        'the checkpoint was written by another version of the model code; retrain, or check out '
        'the code revision that wrote it'))
