"""One training run over several processes (hosts): ``jax.distributed`` set-up and the rules that
keep the processes in step.

JAX runs multi-controller: every process runs the same program on its own local devices, and a
``jit`` over a mesh that spans all processes' devices is one SPMD computation whose collectives
(the gradient all-reduce of the shared train step) cross processes (gloo over TCP on CPU, NCCL on
GPU, ICI/DCN on TPU). So:

- every process builds the same params (same seed) and calls every jitted step on the global mesh,
  in the same order: a step that one process skips hangs the others;
- each process feeds only its own rows of a global batch (Grain shards windows by
  ``jax.process_index()``), and ``jax.make_array_from_process_local_data`` assembles the global
  array; evaluation after training runs process-locally on a host copy of the params;
- files are written once, by process 0 (:func:`is_primary`); Orbax checkpoints are saved by every
  process together (Orbax writes the shared files from the primary host; each process writes its
  own Grain iterator state).

With no flags, no ``JAX_COORDINATOR_ADDRESS`` and no multi-process cluster environment, nothing is
initialised and a run is the single-process run it always was.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax

from quantum_alpha_jax.errors import ConfigError, describe

MODES = ('auto', 'on', 'off')


def detect_cluster() -> str | None:
  """The name of the JAX cluster environment (``slurm``, ``ompi``, ``gce_tpu``, ...) that
  ``jax.distributed.initialize()`` would auto-detect, when it reports more than one process."""
  from jax._src import clusters  # pylint: disable=g-import-not-at-top  (no public listing)

  for environment in clusters.ClusterEnv._cluster_types:  # pylint: disable=protected-access
    if environment.opt_in_only_method:
      continue
    try:
      if environment.is_env_present() and environment.get_process_count() > 1:
        return environment.name
    except Exception:  # pylint: disable=broad-except  (a half-set environment: not a cluster)
      continue
  return None


def initialize(mode: str = 'auto', coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               initialization_timeout: int = 300) -> bool:
  """Calls ``jax.distributed.initialize`` when this process is one of several; returns whether it
  did. Must run before any JAX computation.

  ``mode='off'``: never. ``'on'``: always, with the given arguments and JAX's own cluster
  detection (SLURM, Open MPI, Cloud TPU, Kubernetes) filling the rest. ``'auto'``: when a
  coordinator address is given (argument or ``JAX_COORDINATOR_ADDRESS``) or a cluster environment
  with more than one process is detected.
  """
  if mode not in MODES:
    raise ConfigError(describe('--distributed', f'unknown mode {mode!r}', f'use one of {MODES}'))
  explicit = (coordinator_address, num_processes, process_id)
  if mode == 'off':
    if any(value is not None for value in explicit):
      raise ConfigError(describe('--distributed=off', 'contradicts --coordinator_address / '
                                 '--num_processes / --process_id', 'drop one or the other'))
    return False
  coordinator = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if mode == 'auto' and coordinator is None and detect_cluster() is None:
    if num_processes is not None or process_id is not None:
      raise ConfigError(describe('--num_processes / --process_id', 'given without a coordinator',
                                 'add --coordinator_address=HOST:PORT (process 0\'s host)'))
    return False
  if coordinator is not None and None in (num_processes, process_id) and detect_cluster() is None:
    raise ConfigError(describe(
        '--coordinator_address', f'{coordinator} given, but not --num_processes and --process_id '
        '(and no cluster environment such as SLURM supplies them)',
        'pass both, e.g. --num_processes=2 --process_id=0 on the first process'))
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise ConfigError(describe('--process_id', f'{process_id} is not in [0, {num_processes})'))
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                             process_id=process_id,
                             initialization_timeout=initialization_timeout)
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def is_primary() -> bool:
  """True in process 0, the one that writes the run's files (always true in a single process)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (a no-op in a single process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def process_local(tree: Any) -> Any:
  """A copy of a pytree of replicated global arrays on this process's first device, so work after
  training (evaluation, plots, export) runs locally with no collective; unchanged in a single
  process."""
  if jax.process_count() == 1:
    return tree
  device = jax.local_devices()[0]

  def local(leaf: Any) -> Any:
    if not isinstance(leaf, jax.Array):
      return leaf
    if not leaf.is_fully_addressable:
      if not leaf.is_fully_replicated:
        raise ValueError(f'process_local: an array of shape {leaf.shape} is sharded, not '
                         'replicated, over the processes')
      leaf = leaf.addressable_shards[0].data
    return jax.device_put(leaf, device)

  return jax.tree.map(local, tree)
