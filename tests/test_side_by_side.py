"""The main job's models side by side (``configs/main.py``: parallel=True), a process each."""

from __future__ import annotations

import json
import re
import runpy

import numpy as np
import pytest

from configs import main as main_config
from quantum_alpha_jax import side_by_side
from quantum_alpha_jax.data import pipeline
from quantum_alpha_jax.main_job import MODELS


def test_devices_are_split_among_the_children():
  cpu = side_by_side.device_environments(3, {
      'XLA_FLAGS': '--xla_cpu_use_onednn=false --xla_force_host_platform_device_count=4'})
  assert [e['XLA_FLAGS'] for e in cpu] == [
      f'--xla_cpu_use_onednn=false --xla_force_host_platform_device_count={n}' for n in (2, 1, 1)]
  assert all(e['JAX_PLATFORMS'] == 'cpu' for e in cpu)
  assert [e['XLA_FLAGS'] for e in side_by_side.device_environments(3, {'JAX_PLATFORMS': 'cpu'})
          ] == ['--xla_force_host_platform_device_count=1'] * 3
  gpus = side_by_side.device_environments(3, {'CUDA_VISIBLE_DEVICES': '4,5,6,7'})
  assert gpus == [{'CUDA_VISIBLE_DEVICES': gpu} for gpu in ('4', '5', '6')]
  shared = side_by_side.device_environments(3, {'CUDA_VISIBLE_DEVICES': '0'})
  assert {e['CUDA_VISIBLE_DEVICES'] for e in shared} == {'0'}
  assert shared[0]['XLA_PYTHON_CLIENT_MEM_FRACTION'] == '0.30'


def _tiny_main_config(tmp_path):
  config = main_config.get_config('quick')
  assert config.parallel is False
  config.data.store_dir = str(tmp_path / 'store')
  for name, _ in MODELS:
    config[name].train.update(num_steps=2, eval_every_steps=2, log_every_steps=1,
                              max_eval_batches=1)
    config[name].data = config.data
  config.oracle.model.update(encoder_length=24, decoder_length=6, hidden_size=8,
                             hidden_continuous_size=4)
  config.oracle.evaluation.update(max_windows=64, fan_windows=1)
  config.guardian.evaluation.max_windows = 64
  config.strategist.evaluation.update(curve_max_bars=64, imitation_max_episodes=4)
  return config


def test_the_three_models_train_at_once_each_on_its_own_devices(tmp_path):
  config = _tiny_main_config(tmp_path)
  pipeline.build_store(config.data)
  # The child's config file gives back the main job's model config, data block included.
  written = side_by_side.write_config_file(config.oracle, tmp_path / 'oracle.config.py')
  again = runpy.run_path(str(written))['get_config']()
  assert json.dumps(again.to_dict()) == json.dumps(config.oracle.to_dict())
  assert isinstance(again.model.quantiles, tuple)

  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4', 'JAX_PLATFORMS': 'cpu'}
  results = side_by_side.train_models([(name, config[name]) for name, _ in MODELS],
                                      tmp_path / 'main', environ=environ)
  assert {name: results[name]['train']['num_devices'] for name, _ in MODELS} == {
      'oracle': 2, 'guardian': 1, 'strategist': 1}
  for name, module in MODELS:
    assert results[name]['train']['steps'] == 2
    assert results[name]['workdir'] == str(tmp_path / 'main' / config[name].name)
    assert module.format_results(results[name])  # what the main job prints next
  assert np.isfinite(results['oracle']['test']['pinball_loss'])
  # The three ran at once: each started before any finished (absl's first and last log times).
  spans = []
  for name, _ in MODELS:
    log = (tmp_path / 'main' / f'{config[name].name}.log').read_text()
    times = re.findall(r'^[IWE]\d{4} (\d\d):(\d\d):(\d\d\.\d+)', log, re.MULTILINE)
    seconds = [3600 * int(h) + 60 * int(m) + float(s) for h, m, s in times]
    spans.append((seconds[0], seconds[-1]))
  assert max(first for first, _ in spans) < min(last for _, last in spans), spans

  # A failing child stops the job, naming the model and its log; the others are stopped.
  config.guardian.train.optimizer.name = 'sgdx'
  config.guardian.name = 'guardian-broken'
  with pytest.raises(side_by_side.ModelRunError, match=r'guardian .*sgdx.*guardian-broken\.log'):
    side_by_side.train_models([(name, config[name]) for name, _ in MODELS], tmp_path / 'main',
                              environ=environ)
