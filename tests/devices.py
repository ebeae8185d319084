"""Runs a Python snippet in a fresh process that sees several (forced host) CPU devices.

The device count is fixed when jax starts, so 1-vs-N device checks run the N-device side in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def run_with_devices(script: str, devices: int = 4, timeout: float = 300) -> Any:
  """Runs ``script`` (python source, run from the repository root) on ``devices`` CPU devices and
  returns the JSON its last stdout line prints; fails the test with its stderr otherwise."""
  environment = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
                     JAX_PLATFORMS='cpu')
  completed = subprocess.run([sys.executable, '-c', script], cwd=REPOSITORY, env=environment,
                             capture_output=True, text=True, timeout=timeout)
  assert completed.returncode == 0, completed.stderr[-3000:]
  return json.loads(completed.stdout.strip().splitlines()[-1])
