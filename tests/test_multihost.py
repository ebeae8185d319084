"""Multi-host training through ``jax.distributed``: the quick Oracle as 2 processes × 2 CPU devices
on localhost, against one process with 4 devices.

Why the two runs must agree. The global batch is the same multiset of windows in both: each epoch
is one Grain permutation of every training window (same seed), and with P processes process k takes
positions k, k + P, k + 2P, ... of it, so global batch s holds permutation positions
[s·B, (s + 1)·B) split between the processes (the evens in process 0, the odds in process 1)
instead of all in one. The train step's loss is a masked mean over the global batch and its
gradient an all-reduce, so the update is the same up to float summation order. Dropout is off
because a dropout mask depends on a row's position in the global array, which differs. The
validation split is sharded the same way (every P-th window per process) and its metrics are
exact means, so they agree too.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_SECONDS = 600  # generous: the CI machine is shared; a quiet one needs about a tenth
OVERRIDES = (
    '--config=configs/oracle.py:quick', '--config.model.dropout_rate=0',
    '--config.train.batch_size=16', '--config.train.num_steps=20',
    '--config.train.eval_every_steps=10', '--config.train.log_every_steps=5',
    '--config.train.max_eval_batches=4', '--config.train.optimizer.warmup_steps=2',
    '--config.evaluation.max_windows=32', '--config.evaluation.fan_windows=2')


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    return probe.getsockname()[1]


def launch(name: str, workdir: pathlib.Path, devices: int, *flags: str) -> subprocess.Popen:
  """``experiments.oracle`` on ``devices`` CPU devices, logging to ``<name>.log`` beside workdir."""
  # XLA compiles dominate the runtime; LLVM at -O0 halves them (both sides use the same flags).
  environment = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1',
                     XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} '
                     '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true')
  log = open(workdir.parent / f'{name}.log', 'w')  # pylint: disable=consider-using-with
  return subprocess.Popen(
      [sys.executable, '-m', 'experiments.oracle', *OVERRIDES, f'--workdir={workdir}', *flags],
      cwd=REPOSITORY, env=environment, stdout=log, stderr=subprocess.STDOUT, text=True)


def wait_all(processes: dict[str, subprocess.Popen], logs: pathlib.Path) -> None:
  """Waits for every process; on a failure or timeout kills the rest and fails with the logs."""
  failed = []
  for name, process in processes.items():
    try:
      if process.wait(timeout=TIMEOUT_SECONDS) != 0:
        failed.append(f'{name} exited with {process.returncode}')
    except subprocess.TimeoutExpired:
      failed.append(f'{name} timed out after {TIMEOUT_SECONDS} s')
    if failed:
      for other in processes.values():
        if other.poll() is None:
          other.kill()
          other.wait()
  if failed:
    tails = '\n'.join(f'--- {path.name}:\n{path.read_text()[-2500:]}'
                      for path in sorted(logs.glob('*.log')))
    pytest.fail('; '.join(failed) + '\n' + tails)


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> dict[str, pathlib.Path]:
  """The 2-process run and the 1-process 4-device reference, launched together."""
  root = tmp_path_factory.mktemp('multihost')
  address = f'127.0.0.1:{free_port()}'
  distributed = ('--coordinator_address=' + address, '--num_processes=2')
  processes = {
      'process 0': launch('process0', root / 'two', 2, *distributed, '--process_id=0'),
      'process 1': launch('process1', root / 'two', 2, *distributed, '--process_id=1'),
      'reference': launch('reference', root / 'one', 4, '--distributed=off'),
  }
  wait_all(processes, root)
  return {'two': root / 'two', 'one': root / 'one'}


def read_metrics(workdir: pathlib.Path, split: str) -> dict[int, dict[str, float]]:
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  return {r['step']: r for r in records if r['split'] == split}


def final_params(workdir: pathlib.Path):
  from quantum_alpha_jax.train import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  checkpoints = checkpoint_lib.Checkpoints(workdir / 'checkpoints', read_only=True)
  try:
    return checkpoints.restore_params(checkpoints.latest_step())
  finally:
    checkpoints.close()


def test_two_processes_train(runs):
  train = read_metrics(runs['two'], 'train')
  validation = read_metrics(runs['two'], 'validation')
  assert sorted(train) == [5, 10, 15, 20] and sorted(validation) == [10, 20]
  assert train[20]['loss'] < 0.8 * train[5]['loss'], train
  assert all(np.isfinite(v['loss']) for v in validation.values())
  results = json.loads((runs['two'] / 'results.json').read_text())
  assert results['train']['num_processes'] == 2 and results['train']['num_devices'] == 4
  # Evaluation after training covers the whole split (not one process's half).
  reference = json.loads((runs['one'] / 'results.json').read_text())
  assert results['test']['windows'] == reference['test']['windows'] == 32


def test_files_written_once(runs):
  workdir = runs['two']
  # One metrics log, every record once.
  steps = [(r['split'], r['step']) for r in map(json.loads,
                                                 (workdir / 'metrics.jsonl').read_text().splitlines())]
  assert len(steps) == len(set(steps)) == 6
  assert len(list((workdir / 'tensorboard').iterdir())) == 1
  assert sorted(p.name for p in (workdir / 'test').iterdir()) == sorted(
      p.name for p in (runs['one'] / 'test').iterdir())
  # One checkpoint directory per saved step; shared files once, Grain state once per process.
  checkpoint_steps = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  assert checkpoint_steps == ['10', '20']
  for step in checkpoint_steps:
    directory = workdir / 'checkpoints' / step
    assert sorted(p.name for p in (directory / 'iterator').iterdir()) == [
        'process_0-of-2.json', 'process_1-of-2.json']
    assert [p.name for p in (directory / 'record').iterdir()] == ['metadata']
    record = json.loads((directory / 'record' / 'metadata').read_text())
    assert record['step'] == int(step) and record['best_step'] == int(step)
  assert not list(workdir.rglob('*.orbax-checkpoint-tmp*'))


def test_matches_one_process(runs):
  import jax  # pylint: disable=g-import-not-at-top
  two, one = final_params(runs['two']), final_params(runs['one'])
  assert jax.tree.structure(two) == jax.tree.structure(one)
  difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one)))
  scale = max(float(np.max(np.abs(np.asarray(b)))) for b in jax.tree.leaves(one))
  print(f'max |params(2 processes) - params(1 process)| = {difference:.3g} (max |param| {scale:.3g})')
  assert difference < 1e-5
  for split in ('validation', 'train'):
    a, b = read_metrics(runs['two'], split), read_metrics(runs['one'], split)
    assert sorted(a) == sorted(b)
    for step in a:
      for name in ('loss', 'mse', 'pinball_q50'):
        np.testing.assert_allclose(a[step][name], b[step][name], rtol=1e-5, atol=1e-7,
                                   err_msg=f'{split} {name} at step {step}')
  results = [json.loads((runs[name] / 'results.json').read_text()) for name in ('two', 'one')]
  for split in ('validation', 'test'):
    np.testing.assert_allclose(results[0][split]['pinball_loss'], results[1][split]['pinball_loss'],
                               rtol=1e-5)


@pytest.mark.parametrize('arguments, problem', [
    (dict(mode='off', coordinator_address='127.0.0.1:1'), 'contradicts'),
    (dict(coordinator_address='127.0.0.1:1'), 'not --num_processes'),
    (dict(num_processes=2, process_id=0), 'without a coordinator'),
    (dict(coordinator_address='127.0.0.1:1', num_processes=2, process_id=2), 'not in [0, 2)'),
    (dict(mode='sometimes'), 'unknown mode'),
])
def test_bad_distributed_flags(arguments, problem, monkeypatch):
  from quantum_alpha_jax import distributed  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv('JAX_COORDINATOR_ADDRESS', raising=False)
  with pytest.raises(ConfigError, match=problem.replace('[', r'\[').replace(')', r'\)')):
    distributed.initialize(**arguments)


def test_single_process_without_flags(monkeypatch):
  from quantum_alpha_jax import distributed  # pylint: disable=g-import-not-at-top
  for name in ('JAX_COORDINATOR_ADDRESS', 'SLURM_JOB_ID', 'OMPI_MCA_orte_hnp_uri'):
    monkeypatch.delenv(name, raising=False)
  assert distributed.detect_cluster() is None
  assert distributed.initialize() is False and distributed.initialize('off') is False


def test_detects_a_slurm_job_of_several_tasks(monkeypatch):
  from quantum_alpha_jax import distributed  # pylint: disable=g-import-not-at-top
  for name, value in (('SLURM_JOB_ID', '4242'), ('SLURM_STEP_NODELIST', 'gpu[001-002]'),
                      ('SLURM_PROCID', '0'), ('SLURM_LOCALID', '0'), ('SLURM_NTASKS', '1')):
    monkeypatch.setenv(name, value)
  assert distributed.detect_cluster() is None  # a one-task job stays a plain single process
  monkeypatch.setenv('SLURM_NTASKS', '16')
  assert distributed.detect_cluster() == 'slurm'
