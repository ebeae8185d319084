"""Peak host memory of the data pipeline and of every experiment at its seed config.

Each stage runs as its own child process (``python -m experiments.X --config=configs/X.py`` with
``--config.data.store_dir`` pointed at a scratch store and the training cut to a few steps), and
this parent samples ``/proc`` while it runs:

- **peak RSS** of the experiment process: the kernel's high-water mark ``VmHWM`` from
  ``/proc/<pid>/status`` (read until the process exits), cross-checked with ``ru_maxrss`` from
  ``os.wait4``. RSS counts every resident page the process maps, its share of the memory-mapped
  store included.
- **Grain workers** (``--config.train.num_workers > 0``): every descendant process's
  ``/proc/<pid>/smaps_rollup``: ``USS`` (Private_Clean + Private_Dirty, what that worker alone
  costs) and ``PSS`` (its pages, each shared page divided by the number of processes mapping it).
  A worker that copied the window cache would show a USS near the cache's size; one that maps it
  shares those pages with the parent and the other workers (page cache), so its USS stays small
  while its RSS can be large.

Memory reaches its plateau after the first training steps (the window cache is mapped, the jitted
step compiled, the Grain buffers full), so a few steps measure what a full run needs; the
evaluation after training (capped with ``max_eval_batches`` / ``max_windows``) is included.

  python -m benchmarks.memory [--store_dir=/tmp/qa-memory-store] [--steps=4] [--only=oracle,lstm]
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Sequence

from absl import app
from absl import flags

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
MIB = 1024 * 1024

_STORE_DIR = flags.DEFINE_string('store_dir', '/tmp/qa-memory-store',
                                 'Scratch feature store (the full 6-year synthetic market).')
_WORK_DIR = flags.DEFINE_string('work_dir', '/tmp/qa-memory-runs', 'Scratch run directories.')
_STEPS = flags.DEFINE_integer('steps', 4, 'Training steps per experiment.')
_ONLY = flags.DEFINE_list('only', [], 'Stages to run (default: all); see STAGES.')
_TIMEOUT = flags.DEFINE_integer('timeout', 1500, 'Seconds per stage before it is killed.')
_INTERVAL = flags.DEFINE_float('interval', 0.2, 'Sampling interval of /proc in seconds.')
_JSON = flags.DEFINE_string('json', '', 'Also write the rows to this JSON file.')

WINDOWS_CODE = """
import sys
from configs import data, oracle
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.train import data as train_data
config = oracle.get_config('')
config.data.store_dir = sys.argv[1]
spec = windows.WindowSpec(config.model.encoder_length, config.model.decoder_length)
splits, _ = train_data.make_split_data(config.data, spec, config.train.batch_size, 0)
print({name: split.num_windows for name, split in splits.items()})
"""


@dataclasses.dataclass
class Sample:
  """What one stage used: peak RSS of the main process and the workers' peak USS/PSS."""

  stage: str
  peak_rss_mib: float
  maxrss_mib: float
  seconds: float
  returncode: int
  workers: int = 0
  worker_uss_mib: float = 0.0  # the largest worker's peak USS
  worker_pss_mib: float = 0.0  # the largest worker's peak PSS
  worker_rss_mib: float = 0.0  # the largest worker's peak RSS (shared pages counted in full)
  store_mib: float = 0.0
  cache_mib: float = 0.0
  error: str = ''


def _status_kib(pid: int, key: str) -> int:
  try:
    for line in pathlib.Path(f'/proc/{pid}/status').read_text().splitlines():
      if line.startswith(key + ':'):
        return int(line.split()[1])
  except (OSError, ValueError):
    pass
  return 0


def smaps_rollup(pid: int) -> dict[str, int]:
  """``Rss``, ``Pss`` and ``Uss`` (Private_Clean + Private_Dirty) of ``pid`` in KiB ({} if gone)."""
  try:
    text = pathlib.Path(f'/proc/{pid}/smaps_rollup').read_text()
  except OSError:
    return {}
  values = {}
  for line in text.splitlines()[1:]:
    parts = line.split()
    if len(parts) >= 2 and parts[0].endswith(':') and parts[1].isdigit():
      values[parts[0][:-1]] = int(parts[1])
  return {'Rss': values.get('Rss', 0), 'Pss': values.get('Pss', 0),
          'Uss': values.get('Private_Clean', 0) + values.get('Private_Dirty', 0)}


def descendants(pid: int) -> list[int]:
  """Every live descendant of ``pid`` (from the ``PPid`` of each ``/proc`` entry)."""
  parents = {}
  for entry in pathlib.Path('/proc').iterdir():
    if entry.name.isdigit():
      parent = _status_kib(int(entry.name), 'PPid')
      parents.setdefault(parent, []).append(int(entry.name))
  found, stack = [], [pid]
  while stack:
    for child in parents.get(stack.pop(), []):
      found.append(child)
      stack.append(child)
  return found


def _is_worker(pid: int) -> bool:
  """A Python child doing work (not a tiny helper such as multiprocessing's resource tracker)."""
  try:
    command = pathlib.Path(f'/proc/{pid}/cmdline').read_bytes().replace(b'\0', b' ').decode()
  except OSError:
    return False
  return 'python' in command and 'resource_tracker' not in command


def directory_mib(path: pathlib.Path) -> float:
  if not path.exists():
    return 0.0
  return sum(f.stat().st_size for f in path.rglob('*') if f.is_file()) / MIB


def measure(stage: str, argv: Sequence[str], *, timeout: float, interval: float,
            log: pathlib.Path) -> Sample:
  """Runs ``argv`` (cwd: the repository) and samples its memory until it exits."""
  from quantum_alpha_jax.cli import MALLOC_TUNABLES  # pylint: disable=g-import-not-at-top
  environment = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES, JAX_PLATFORMS='cpu',
                     TF_CPP_MIN_LOG_LEVEL='3', PYTHONWARNINGS='ignore')
  started = time.perf_counter()
  with open(log, 'w') as output:
    process = subprocess.Popen(list(argv), cwd=REPOSITORY, env=environment, stdout=output,
                               stderr=subprocess.STDOUT)
    peak_kib, workers = 0, {}
    rusage, status = None, None
    while True:
      pid, status, rusage = os.wait4(process.pid, os.WNOHANG)
      if pid:
        break
      peak_kib = max(peak_kib, _status_kib(process.pid, 'VmHWM'))
      for child in descendants(process.pid):
        if not _is_worker(child):
          continue
        rollup = smaps_rollup(child)
        if rollup:
          best = workers.setdefault(child, {'Rss': 0, 'Pss': 0, 'Uss': 0})
          for key in best:
            best[key] = max(best[key], rollup[key])
      if time.perf_counter() - started > timeout:
        process.kill()
        _, status, rusage = os.wait4(process.pid, 0)
        break
      time.sleep(interval)
  process.returncode = os.waitstatus_to_exitcode(status)
  sample = Sample(stage=stage, peak_rss_mib=peak_kib / 1024, maxrss_mib=rusage.ru_maxrss / 1024,
                  seconds=time.perf_counter() - started, returncode=process.returncode,
                  workers=len(workers))
  if workers:
    sample.worker_uss_mib = max(w['Uss'] for w in workers.values()) / 1024
    sample.worker_pss_mib = max(w['Pss'] for w in workers.values()) / 1024
    sample.worker_rss_mib = max(w['Rss'] for w in workers.values()) / 1024
  if process.returncode:
    tail = log.read_text(errors='replace').strip().splitlines()[-3:]
    sample.error = ' | '.join(tail)[-300:]
  return sample


def stages(store: str, work: pathlib.Path, steps: int) -> dict[str, list[str]]:
  """Stage name → child argv. Training is cut to ``steps`` steps, evaluation to a few batches."""
  python = sys.executable
  data = f'--config.data.store_dir={store}'

  def train_steps(count):
    return [f'--config.train.num_steps={count}', f'--config.train.eval_every_steps={count}',
            '--config.train.max_eval_batches=2', f'--config.train.log_every_steps={count}']

  short = train_steps(steps)

  def experiment(module, config, name, *extra):
    return [python, '-m', f'experiments.{module}', f'--config={config}', data,
            f'--workdir={work / name}', *extra]

  rl_short = ['--config.evaluation.random_seeds=1']
  return {
      'store': [python, '-m', 'experiments.data', '--config=configs/data.py',
                f'--config.store_dir={store}'],
      'windows': [python, '-c', WINDOWS_CODE, store],
      'oracle': experiment('oracle', 'configs/oracle.py', 'oracle', *short,
                           '--config.evaluation.max_windows=2048'),
      # Long enough for the workers to fill their buffers and the parent to drain them.
      'oracle-2-workers': experiment('oracle', 'configs/oracle.py', 'oracle-workers',
                                     *train_steps(max(steps, 30)),
                                     '--config.evaluation.max_windows=2048',
                                     '--config.train.num_workers=2'),
      'lstm': experiment('lstm', 'configs/lstm.py', 'lstm', *short,
                         '--config.evaluation.max_windows=2048'),
      'guardian': experiment('guardian', 'configs/guardian.py', 'guardian', *short,
                             '--config.evaluation.max_windows=2048'),
      'strategist': experiment('strategist', 'configs/strategist.py', 'strategist', *short,
                               '--config.evaluation.curve_max_bars=2000',
                               '--config.evaluation.imitation_max_episodes=16',
                               '--config.evaluation.conditioning_quantiles=(0.5,)'),
      # PPO: one update of 256 envs x 128 steps; DDPG: learning starts inside its few iterations.
      'ppo': experiment('rl', 'configs/ppo.py', 'ppo', *rl_short,
                        f'--config.agent.total_timesteps={256 * 128 * steps}',
                        f'--config.train.eval_every_updates={steps}',
                        '--config.train.log_every_updates=1'),
      'ddpg': experiment('rl', 'configs/ddpg.py', 'ddpg', *rl_short,
                         f'--config.agent.total_timesteps={16 * 64 * steps}',
                         f'--config.agent.learning_starts={16 * 64}',
                         f'--config.train.eval_every_updates={steps}',
                         '--config.train.log_every_updates=1'),
      'backtest': [python, '-m', 'experiments.backtest', '--config=configs/backtest.py', data,
                   f'--workdir={work / "backtest"}',
                   *(f'--config.checkpoints.{name}={work / name}'
                     for name in ('oracle', 'guardian', 'strategist'))],
  }


def format_table(samples: Sequence[Sample]) -> str:
  header = ('| stage | peak RSS MiB | ru_maxrss MiB | workers | worker USS / PSS / RSS MiB | '
            'store on disk MiB (window cache) | seconds | exit |')
  lines = [header, '|' + '---|' * 8]
  for s in samples:
    workers = (f'{s.worker_uss_mib:.0f} / {s.worker_pss_mib:.0f} / {s.worker_rss_mib:.0f}'
               if s.workers else '–')
    lines.append(f'| {s.stage} | {s.peak_rss_mib:.0f} | {s.maxrss_mib:.0f} | {s.workers} | '
                 f'{workers} | {s.store_mib:.0f} ({s.cache_mib:.0f}) | {s.seconds:.0f} | '
                 f'{s.returncode}{" " + s.error if s.error else ""} |')
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  del argv
  store, work = pathlib.Path(_STORE_DIR.value), pathlib.Path(_WORK_DIR.value)
  if work.exists():
    shutil.rmtree(work)  # fresh runs: a leftover run directory would resume instead of train
  work.mkdir(parents=True)
  plan = stages(str(store), work, _STEPS.value)
  unknown = sorted(set(_ONLY.value) - set(plan))
  if unknown:
    raise app.UsageError(f'--only: unknown stages {unknown}; use some of {list(plan)}')
  if 'store' in (_ONLY.value or plan) and store.exists():
    shutil.rmtree(store)  # measure the build from scratch
  samples = []
  for name, child in plan.items():
    if _ONLY.value and name not in _ONLY.value:
      continue
    print(f'[{name}] {" ".join(child[:4])} ...', flush=True)
    sample = measure(name, child, timeout=_TIMEOUT.value, interval=_INTERVAL.value,
                     log=work / f'{name}.log')
    sample.store_mib = directory_mib(store)
    sample.cache_mib = directory_mib(store / 'windows_cache')
    samples.append(sample)
    workers = (f', {sample.workers} workers: peak USS {sample.worker_uss_mib:.0f} / PSS '
               f'{sample.worker_pss_mib:.0f} / RSS {sample.worker_rss_mib:.0f} MiB'
               if sample.workers else '')
    print(f'[{name}] peak RSS {sample.peak_rss_mib:.0f} MiB in {sample.seconds:.0f} s{workers}'
          f' (exit {sample.returncode}{", " + sample.error if sample.error else ""})', flush=True)
  print(format_table(samples))
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps([dataclasses.asdict(s) for s in samples],
                                                    indent=2))


if __name__ == '__main__':
  app.run(main)
