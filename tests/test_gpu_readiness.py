"""GPU readiness on the CPU: the 'auto' compute dtype, no implicit host transfer inside a train
step, and the Oracle/Guardian/Strategist losses staying finite in bf16."""

from __future__ import annotations

import datetime
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import gpu
from configs import guardian as guardian_config
from configs import lstm as lstm_config
from configs import oracle as oracle_config
from configs import strategist as strategist_config
from quantum_alpha_jax.errors import ConfigError
from quantum_alpha_jax.train import state as state_lib
from quantum_alpha_jax.train import step as step_lib
from tests.linear_task import LinearTask


def test_auto_dtype_is_float32_on_cpu_bf16_on_accelerators_and_explicit_names_pass():
  assert jax.default_backend() == 'cpu'
  assert step_lib.resolve_compute_dtype('auto') == 'float32'
  assert step_lib.compute_dtype('auto') == jnp.float32
  for backend in ('gpu', 'cuda', 'tpu'):
    assert step_lib.compute_dtype('auto', backend) == jnp.bfloat16
  assert step_lib.compute_dtype('bfloat16') == jnp.bfloat16
  assert step_lib.resolve_compute_dtype('float16', 'gpu') == 'float16'
  with pytest.raises(ConfigError, match="'auto'"):
    step_lib.compute_dtype('bf16')
  for module in (oracle_config, lstm_config, guardian_config, strategist_config):
    for variant in ('', 'quick', 'real'):
      assert module.get_config(variant).train.compute_dtype == 'auto'


def test_train_step_on_sharded_batches_does_no_implicit_host_transfer():
  rng = np.random.default_rng(0)
  batches = [{'encoder': rng.normal(size=(8, 5, 44)).astype(np.float32),
              'future_returns': rng.normal(size=(8, 3)).astype(np.float32),
              'mask': np.ones(8, np.float32)} for _ in range(3)]
  task, mesh = LinearTask(), step_lib.make_mesh(1)
  optimizer, schedule = state_lib.make_optimizer(state_lib.optimizer_config(), 100)
  state = step_lib.replicate(state_lib.TrainState.create(
      task.init_params(jax.random.PRNGKey(0), batches[0]), optimizer, jax.random.PRNGKey(1)), mesh)
  train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh)
  sharded = [step_lib.shard_batch(batch, mesh) for batch in batches]  # explicit transfers
  losses = []
  with jax.transfer_guard('disallow'):
    for batch in sharded:
      state, metrics = train_step(state, batch)
      losses.append(metrics['loss'])
    # The guard is live: a numpy batch (an implicit host-to-device copy) is refused.
    with pytest.raises(Exception, match='[Dd]isallowed'):
      train_step(state, batches[0])
  losses = jax.device_get(losses)  # explicit: the scheduled logging fetch
  assert int(jax.device_get(state.step)) == 3
  assert np.all(np.isfinite(losses))


def _small(model: str):
  module = {'oracle': oracle_config, 'guardian': guardian_config,
            'strategist': strategist_config}[model]
  config = module.get_config('quick')
  config.train.batch_size = 16
  if model == 'oracle':
    config.model.update(encoder_length=24, decoder_length=6, hidden_size=8, num_heads=2,
                        hidden_continuous_size=4)
  elif model == 'guardian':
    config.model.update(latent_dim=4, hidden_dims=(16,), projection_dim=8, head_hidden=8,
                        bar_embedding=8)
  else:
    config.model.update(context_length=8, hidden_size=16, num_layers=1, num_heads=2)
  return config


@pytest.fixture(scope='module')
def frames():
  return gpu.synthetic_frames('2024-01-01', '2024-01-29')


@pytest.mark.parametrize('model', ['oracle', 'guardian', 'strategist'])
def test_loss_fns_train_in_bfloat16_without_nan(model, frames, tmp_path):
  config = _small(model)
  config.data.store_dir = str(tmp_path)
  task, batch = gpu.task_and_batch(model, config, frames)
  mesh = step_lib.make_mesh(1)
  optimizer, schedule = state_lib.make_optimizer(config.train.optimizer, 100)
  state = step_lib.replicate(state_lib.TrainState.create(
      task.init_params(jax.random.PRNGKey(0), batch), optimizer, jax.random.PRNGKey(1)), mesh)
  train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh,
                                        dtype=step_lib.compute_dtype('auto', 'gpu'))
  sharded = step_lib.shard_batch(batch, mesh)
  losses = []
  for _ in range(4):
    state, metrics = train_step(state, sharded)
    losses.append(jax.device_get(metrics))
  assert all(m['finite'] == 1 for m in losses), losses
  assert all(np.isfinite(m['loss']) and np.isfinite(m['grad_norm']) for m in losses)
  # fp32 master params, and the step did update them.
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params)
             if jnp.issubdtype(x.dtype, jnp.floating))
  assert losses[-1]['loss'] != losses[0]['loss']


def _bars(split) -> float:
  start, end = (datetime.datetime.fromisoformat(day) for day in split)
  return (end - start).total_seconds() / 300  # 5-minute bars per symbol


def test_gpu_script_runs_end_to_end_on_cpu_and_projects_the_seed_run(tmp_path):
  """``python -m benchmarks.gpu --allow-cpu`` for the Guardian: the row, the elapsed time, and the
  projected hours equal to the seed run's steps (epochs x windows / batch, from the calendar) x
  step time plus one validation pass per epoch x eval step time (edge windows: within 1%)."""
  output = tmp_path / 'gpu.json'
  completed = subprocess.run(
      [sys.executable, '-m', 'benchmarks.gpu', '--allow-cpu', '--models=guardian', '--steps=1',
       '--warmup=0', '--max_timed_seconds=1', '--budget_seconds=3000',
       f'--json={output}'],
      capture_output=True, text=True, timeout=900, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert 'projected hours' in completed.stdout and 'elapsed' in completed.stdout
  result = json.loads(output.read_text())
  assert result['skipped'] == [] and result['elapsed_seconds'] > 0
  (row,) = result['rows']
  assert row['model'] == 'guardian' and row['step_seconds'] > 0 and row['eval_step_seconds'] > 0
  config = guardian_config.get_config('')
  symbols, batch = len(config.data.symbols), config.train.batch_size
  assert config.train.num_steps == 0 and config.train.eval_every_steps == 0  # once per epoch
  assert config.train.max_eval_batches == 0  # the whole validation split
  steps = config.train.num_epochs * (symbols * _bars(config.data.splits.train) // batch)
  eval_batches = math.ceil(symbols * _bars(config.data.splits.validation) / batch)
  expected = (steps * row['step_seconds']
              + config.train.num_epochs * eval_batches * row['eval_step_seconds']) / 3600
  assert row['projected_hours'] == pytest.approx(expected, rel=0.01)
  assert row['total_steps'] == pytest.approx(steps, rel=0.01)
