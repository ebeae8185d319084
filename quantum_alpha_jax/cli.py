"""Runs an experiment's ``main`` with absl, turning user mistakes into one clear line, not a traceback.

Every entry point also takes the multi-process flags (:mod:`quantum_alpha_jax.distributed`):
``--coordinator_address=HOST:PORT --num_processes=N --process_id=K`` on each of N processes, or
nothing under SLURM / Open MPI / a Cloud TPU pod, whose environment ``jax.distributed.initialize()``
reads itself; ``--distributed=off`` forces a single process.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging as absl_logging

from quantum_alpha_jax import distributed
from quantum_alpha_jax.errors import QuantumAlphaError
from quantum_alpha_jax.tasks import registry


_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', distributed.MODES,
    'Multi-process run through jax.distributed: "auto" when --coordinator_address (or '
    'JAX_COORDINATOR_ADDRESS) is given or a SLURM / Open MPI / Cloud TPU job of several processes '
    'is detected; "on" always (JAX detects the cluster); "off" never.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'HOST:PORT of process 0, where the JAX coordinator listens (the '
    'same on every process).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.', lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes - 1.',
                                   lower_bound=0)


class _QuietLibraries(logging.Filter):
  """Drops INFO chatter from Orbax and Grain (dozens of lines per checkpoint) and from the export
  converters (jax2onnx, TensorFlow); warnings pass."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    path = record.pathname.replace('\\', '/')
    return not any(part in path for part in ('/orbax/', '/grain/', '/etils/', '/jax2onnx/',
                                              '/onnx_ir/', '/tensorflow/'))


def quiet_libraries() -> None:
  """Installs :class:`_QuietLibraries` on absl's handler (idempotent)."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


# XLA's CPU runtime allocates its large activation buffers afresh on every step; glibc serves them
# with mmap, so each step page-faults hundreds of MB. Transparent huge pages for malloc cut the TFT
# train step by ~20% on the CI machine (benchmarks/oracle.py measures both).
MALLOC_TUNABLES = 'glibc.malloc.hugetlb=1'


def ensure_malloc_tunables() -> None:
  """Re-executes this process once with ``GLIBC_TUNABLES`` set (Linux, unless already set or
  ``QUANTUM_ALPHA_NO_REEXEC=1``); before any work is done, so nothing is lost or repeated."""
  if (not sys.platform.startswith('linux') or 'GLIBC_TUNABLES' in os.environ
      or os.environ.get('QUANTUM_ALPHA_NO_REEXEC') == '1' or not getattr(sys, 'orig_argv', None)):
    return
  environment = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, environment)


def run(main: Callable[[list[str]], None]) -> None:
  """``app.run(main)``; a bad ``--config.x`` override or a ``QuantumAlphaError`` exits with code 2."""
  ensure_malloc_tunables()
  quiet_libraries()

  def distributed_main(argv: list[str]) -> None:
    # After flag parsing, before the experiment touches JAX.
    distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value)
    main(argv)

  try:
    app.run(distributed_main)
  except QuantumAlphaError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    override = next((a for a in sys.argv[1:] if a.startswith('--config.')), None)
    if override is None or error.__traceback__ is None or not _from_config_parsing(error):
      raise
    print(f'error: config: {_clean(error)} (in {" ".join(sys.argv[1:])}) — check the key and '
          'value against the config file; the keys are listed in it', file=sys.stderr)
    sys.exit(2)


def _from_config_parsing(error: BaseException) -> bool:
  """True when the exception was raised while absl parsed a ml_collections config override."""
  traceback = error.__traceback__
  while traceback is not None:
    if 'ml_collections' in traceback.tb_frame.f_code.co_filename:
      return True
    traceback = traceback.tb_next
  return False


def _clean(error: BaseException) -> str:
  text = str(error).strip('"\'')
  text = text.encode().decode('unicode_escape') if '\\n' in text else text
  return re.sub(r'\s+', ' ', text.replace("'\\'", "'")).strip()


def default_workdir(name: str) -> str:
  """``checkpoints/<name>`` under the repository (where a run goes without ``--workdir``)."""
  from pathlib import Path  # pylint: disable=g-import-not-at-top
  return str(Path(__file__).resolve().parents[1] / 'checkpoints' / name)


def train_experiment(model: str, title: str) -> None:
  """The whole entry point of a model's training experiment (``experiments/<model>.py``):
  ``--config`` (default ``configs/<model>.py``) and ``--workdir`` (default
  ``checkpoints/<config.name>``; resumes a run of the same config), then the registered model's
  ``run(config, workdir)`` and its ``format_results`` (:mod:`quantum_alpha_jax.tasks.registry`)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flag = config_flags.DEFINE_config_file(
      'config', f'configs/{model}.py', f'{title} config (file[:variant]).', lock_config=True)
  workdir_flag = flags.DEFINE_string(
      'workdir', None, 'Run directory (default checkpoints/<config.name>); resumes if it holds a '
      'run of the same config.')

  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    entry = registry.get(model)
    config = config_flag.value
    results = entry.run(config, workdir_flag.value or default_workdir(config.name))
    print(entry.format_results(results))

  run(main)
