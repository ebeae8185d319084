"""The main job's models trained side by side (``configs/main.py``: ``parallel=True``): each in its
own ``python -m experiments.<model>`` process, on its own devices, all at once.

Each child gets its model's config exactly as the main job holds it (written to
``<root>/<config name>.config.py``, data block included), its workdir ``<root>/<config name>``
(the one the sequential main job uses, so either form resumes the other's runs) and its log
``<root>/<config name>.log``. Devices:

- GPUs (``CUDA_VISIBLE_DEVICES`` of this process, else ``nvidia-smi``): child ``i`` sees GPU
  ``i mod n`` alone (``CUDA_VISIBLE_DEVICES=<id>``); children that share a GPU share its memory.
- CPU: the devices ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` asks for are split among
  the children (at least one each), each child forcing its own count.

No ``jax.distributed`` is involved: the three runs are independent jobs. The parent waits for all;
the first child to fail stops the others and the job, naming the model and its log.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

from absl import logging
import ml_collections

from quantum_alpha_jax.errors import QuantumAlphaError, describe

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
FORCE_FLAG = '--xla_force_host_platform_device_count'


class ModelRunError(QuantumAlphaError):
  """A model's child process failed; the message names the model and its log."""


def visible_gpus(environ: Mapping[str, str]) -> list[str]:
  """The GPU ids the children may use: ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi``'s list;
  none when ``JAX_PLATFORMS`` rules GPUs out."""
  platforms = environ.get('JAX_PLATFORMS', '')
  if platforms and not any(name in platforms for name in ('cuda', 'gpu', 'rocm')):
    return []
  visible = environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return [gpu for gpu in visible.split(',') if gpu.strip() and gpu.strip() != '-1']
  if shutil.which('nvidia-smi') is None:
    return []
  listed = subprocess.run(['nvidia-smi', '--query-gpu=index', '--format=csv,noheader'],
                          capture_output=True, text=True, check=False)
  return [line.strip() for line in listed.stdout.splitlines() if line.strip().isdigit()]


def device_environments(count: int, environ: Mapping[str, str] | None = None
                        ) -> list[dict[str, str]]:
  """The environment variables of each of ``count`` children (module docstring)."""
  environ = dict(os.environ if environ is None else environ)
  gpus = visible_gpus(environ)
  if gpus:
    sharing = -(-count // len(gpus))
    extra = {} if sharing == 1 else {'XLA_PYTHON_CLIENT_MEM_FRACTION': f'{0.9 / sharing:.2f}'}
    return [{'CUDA_VISIBLE_DEVICES': gpus[index % len(gpus)], **extra} for index in range(count)]
  flags = environ.get('XLA_FLAGS', '')
  forced = re.search(rf'{FORCE_FLAG}=(\d+)', flags)
  total = int(forced.group(1)) if forced else 1
  rest = re.sub(rf'\s*{FORCE_FLAG}=\d+', '', flags).strip()
  shares = [total // count + (1 if index < total % count else 0) for index in range(count)]
  return [{'JAX_PLATFORMS': 'cpu',
           'XLA_FLAGS': f'{rest} {FORCE_FLAG}={max(share, 1)}'.strip()} for share in shares]


def _tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {key: _tuples(item) for key, item in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(item) for item in value)
  return value


def config_from_json(text: str) -> ml_collections.ConfigDict:
  """The ConfigDict of a config's JSON (lists back to the configs' tuples)."""
  return ml_collections.ConfigDict(_tuples(json.loads(text)))


def write_config_file(config: ml_collections.ConfigDict, path: pathlib.Path) -> pathlib.Path:
  """A config file (``get_config()``) for ``--config=<path>`` that gives back ``config``."""
  text = json.dumps(config.to_dict(), sort_keys=True)
  path.write_text(
      f'"""{config.name}: written by quantum_alpha_jax/side_by_side.py for the main job."""\n\n'
      'from quantum_alpha_jax import side_by_side\n\n\n'
      'def get_config():\n'
      f'  return side_by_side.config_from_json({text!r})\n')
  return path


def _tail(path: pathlib.Path, lines: int = 5) -> str:
  try:
    return ' | '.join(path.read_text(errors='replace').strip().splitlines()[-lines:])
  except OSError:
    return ''


def train_models(models: Sequence[tuple[str, ml_collections.ConfigDict]],
                 root: str | pathlib.Path, *, environ: Mapping[str, str] | None = None,
                 poll_seconds: float = 0.5) -> dict[str, dict[str, Any]]:
  """Runs ``python -m experiments.<name>`` for every ``(name, config)`` at once, in
  ``root/<config.name>``; returns each run's ``results.json`` by name once all have finished.
  ``environ`` (default this process's) decides the devices; the children inherit this process's
  environment with their device variables set."""
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  base = dict(os.environ)
  children = {}
  try:
    for (name, config), devices in zip(models, device_environments(len(models), environ)):
      workdir, log = root / config.name, root / f'{config.name}.log'
      config_file = write_config_file(config, root / f'{config.name}.config.py')
      command = [sys.executable, '-m', f'experiments.{name}', f'--config={config_file}',
                 f'--workdir={workdir}', '--distributed=off']
      logging.info('%s: %s (%s), log %s', name, ' '.join(command),
                   ' '.join(f'{k}={v}' for k, v in devices.items()), log)
      with open(log, 'w') as output:
        process = subprocess.Popen(command, cwd=REPOSITORY, env={**base, **devices},
                                   stdout=output, stderr=subprocess.STDOUT)
      children[name] = (process, workdir, log)
    running = dict(children)
    while running:
      for name, (process, _, log) in list(running.items()):
        code = process.poll()
        if code is None:
          continue
        del running[name]
        if code != 0:
          raise ModelRunError(describe(
              f'{name} (run side by side)', f'exited with code {code}: {_tail(log)}',
              f'see its log {log}; fix it, then start the main job again (finished runs resume)'))
        logging.info('%s finished (%s)', name, log)
      time.sleep(poll_seconds if running else 0)
  finally:
    for process, _, _ in children.values():
      if process.poll() is None:
        process.terminate()
    for process, _, _ in children.values():
      try:
        process.wait(timeout=30)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
  results = {}
  for name, (_, workdir, _) in children.items():
    results[name] = json.loads((workdir / 'results.json').read_text())
    results[name]['results_json'] = str(workdir / 'results.json')
  return results
