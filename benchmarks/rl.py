"""Trading-environment and PPO throughput on this CPU, and stable-baselines3 PPO beside it.

  python -m benchmarks.rl [--envs 1,16,256,1024,4096] [--updates 3] [--sb3-python PATH]

1. Environment steps per second with policy inference: a jitted ``lax.scan`` of PPO's actor-critic
   (64x64, tanh) sampling an action for each of N environments, then ``vmap(env.step)`` (fill, fee,
   reward, automatic reset), on the quick store's training split (44 features).
2. PPO update throughput: environment steps per second of the whole jitted training loop
   (rollout, GAE, 4 epochs x 8 minibatches of Adam steps) at the default config (256 environments
   x 128 steps) and at 1024 environments.
3. stable-baselines3 PPO (same network, rollout length, epochs and minibatches per epoch;
   ``DummyVecEnv`` of a gymnasium environment with the same semantics in numpy, checked against
   this one on a recorded episode: benchmarks/rl_sb3.py) run by ``--sb3-python``, an interpreter
   with torch, gymnasium and stable-baselines3 (not project dependencies: ``python3 -m venv
   /tmp/sb3env && /tmp/sb3env/bin/pip install torch stable-baselines3 gymnasium``). It prints
   SB3's environment steps/s with policy inference and its PPO learn steps/s, and the ratios
   (target >= 100x). torch runs on 1 thread by default, its fastest here.

Timings are medians of repeats after a compile run; on a shared machine they are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import data as data_config_lib
from quantum_alpha_jax.rl import env as env_lib
from quantum_alpha_jax.rl import market as market_lib
from quantum_alpha_jax.rl import networks
from quantum_alpha_jax.rl import ppo

TARGET_RATIO = 100.0
SB3_SCRIPT = pathlib.Path(__file__).with_name('rl_sb3.py')


def quick_market(episode_length: int = 512) -> market_lib.SplitMarket:
  """The training split of the quick synthetic store (built if missing)."""
  markets, _ = market_lib.build_markets(data_config_lib.get_config('quick'),
                                        market_lib.env_config(episode_length=episode_length))
  return markets['train']


def environment_steps(params: env_lib.EnvParams, num_envs: int, steps: int,
                      repeats: int = 3) -> tuple[float, float]:
  """Environment steps per wall-clock second and per CPU second (all threads) of ``num_envs``
  environments driven by a 64x64 policy."""
  network = networks.ActorCritic(params.num_actions, (64, 64))
  key = jax.random.PRNGKey(0)
  observation, state = jax.vmap(env_lib.reset, in_axes=(0, None))(
      jax.random.split(key, num_envs), params)
  network_params = network.init(key, observation[:1])
  step = jax.vmap(env_lib.step, in_axes=(0, 0, 0, None))

  @jax.jit
  def run(network_params, state, observation, key, params):
    def body(carry, _):
      state, observation, key = carry
      key, action_key, step_key = jax.random.split(key, 3)
      logits, _ = network.apply(network_params, observation)
      action = jax.random.categorical(action_key, logits)
      observation, state, reward, _, _ = step(jax.random.split(step_key, num_envs), state, action,
                                             params)
      return (state, observation, key), reward.sum()
    (state, observation, _), rewards = jax.lax.scan(body, (state, observation, key), None,
                                                    length=steps)
    return state, observation, rewards.sum()

  jax.block_until_ready(run(network_params, state, observation, key, params))
  walls, cpus = [], []
  for repeat in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(run(network_params, state, observation, jax.random.PRNGKey(repeat),
                              params))
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  return num_envs * steps / statistics.median(walls), num_envs * steps / statistics.median(cpus)


def ppo_throughput(params: env_lib.EnvParams, num_envs: int, updates: int,
                   repeats: int = 2) -> tuple[float, float, float]:
  """(env steps per wall second, per CPU second, compile seconds) of ``updates`` PPO updates under
  one jit at the default PPO config with ``num_envs`` environments."""
  agent_config = ppo.config(num_envs=num_envs)
  agent_config.total_timesteps = agent_config.num_steps * num_envs * updates * (repeats + 1)
  agent = ppo.PPO.from_config(agent_config, params)
  state = agent.init(jax.random.PRNGKey(0), params)
  start = time.perf_counter()
  state, metrics = agent.train(state, params, updates)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  walls, cpus = [], []
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    state, metrics = agent.train(state, params, updates)
    jax.block_until_ready(metrics)
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  steps = updates * agent.steps_per_update
  return (steps / statistics.median(walls), steps / statistics.median(cpus),
          first - statistics.median(walls))


def run_sb3(python: str, split_market: market_lib.SplitMarket, timesteps: int,
            num_envs: int, threads: int) -> dict | None:
  """Runs benchmarks/rl_sb3.py under ``python`` on the same arrays; its JSON line, or None."""
  params = split_market.params
  with tempfile.TemporaryDirectory() as directory:
    arrays = pathlib.Path(directory) / 'market.npz'
    np.savez(arrays, features=np.asarray(params.features), open=np.asarray(params.open),
             close=np.asarray(params.close), starts=np.asarray(params.starts))
    command = [python, str(SB3_SCRIPT), '--arrays', str(arrays), '--timesteps', str(timesteps),
               '--envs', str(num_envs), '--episode-length', str(params.episode_length),
               '--fee-rate', str(params.fee_rate), '--slippage-bps', str(params.slippage_bps),
               '--threads', str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False,
                               env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
  if completed.returncode != 0:
    print(f'stable-baselines3 run failed:\n{completed.stderr[-2000:]}')
    return None
  return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--envs', default='1,16,256,1024,4096')
  parser.add_argument('--updates', type=int, default=3)
  parser.add_argument('--sb3-python', default='/tmp/sb3env/bin/python')
  parser.add_argument('--sb3-timesteps', type=int, default=16_384)
  parser.add_argument('--sb3-envs', type=int, default=8)
  parser.add_argument('--sb3-threads', type=int, default=1,
                      help='torch threads; 1 is its fastest here (2 threads spin on 2 busy cores)')
  args = parser.parse_args()
  split_market = quick_market()
  params = split_market.params
  print(f'jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs; quick '
        f'store training split: {params.close.shape[0]:,} bars, {params.num_features} features, '
        f'observation {params.observation_size}, episodes of {params.episode_length}')
  print('\nenvironment steps/s with policy inference (64x64 actor-critic, sampled actions):')
  print('   envs    per wall second    per CPU second')
  rollouts = {}
  for count in (int(n) for n in args.envs.split(',')):
    steps = max(64, min(4096, 2_000_000 // (count * 64)))
    wall, cpu = environment_steps(params, count, steps)
    rollouts[count] = wall
    print(f'  {count:>5} {wall:>16,.0f} {cpu:>17,.0f}')
  print('\nPPO, the whole jitted training loop (rollout, GAE, 4 epochs x 8 minibatches), '
        'env steps/s:')
  ours = {}
  for count in (256, 1024):
    wall, cpu, compile_seconds = ppo_throughput(params, count, args.updates)
    ours[count] = (wall, cpu)
    print(f'  {count:>5} envs x 128 steps: {wall:>10,.0f} per wall second, {cpu:>10,.0f} per CPU '
          f'second (jit compile {compile_seconds:.1f} s)')
  if not pathlib.Path(args.sb3_python).exists():
    print(f'\nstable-baselines3: no interpreter at {args.sb3_python} (see the module docstring); '
          'no comparison')
    return
  result = run_sb3(args.sb3_python, split_market, args.sb3_timesteps, args.sb3_envs,
                   args.sb3_threads)
  if result is None:
    return
  print(f'\nstable-baselines3 {result["version"]} (torch {result["torch"]}, '
        f'{result["threads"]} threads), {args.sb3_envs} envs:')
  print(f'  environment alone (random actions, one env): {result["env_steps_per_second"]:,.0f} '
        'steps/s')
  print(f'  environment steps with policy inference (model.predict + DummyVecEnv.step): '
        f'{result["rollout_steps_per_second"]:,.0f} steps/s')
  print(f'  PPO learn ({result["timesteps"]:,} steps, n_steps 128, 4 epochs, batch '
        f'{result["batch_size"]}): {result["ppo_steps_per_second"]:,.0f} per wall second, '
        f'{result["ppo_steps_per_cpu_second"]:,.0f} per CPU second')
  print(f'  parity: equity of a fixed action sequence, gymnasium vs this environment: '
        f'{_parity(params, result)}')
  best_rollout = max(rollouts.values())
  print(f'speed-up of environment steps with policy inference: '
        f'{best_rollout / result["rollout_steps_per_second"]:.0f}x (best of ours, wall clock)')
  wall, cpu = ours[256]
  print(f'speed-up of the jitted PPO loop (256 envs) over SB3: '
        f'{wall / result["ppo_steps_per_second"]:.0f}x per wall second, '
        f'{cpu / result["ppo_steps_per_cpu_second"]:.0f}x per CPU second '
        f'(target >= {TARGET_RATIO:g}x)')


def _parity(params: env_lib.EnvParams, result: dict) -> str:
  """Replays the gymnasium environment's recorded episode here and compares the equity."""
  row, actions = result['parity_start'], np.asarray(result['parity_actions'])

  def body(state, action):
    state, _, _ = env_lib.transition(state, env_lib.action_to_target(action, state, params),
                                     params)
    return state, state.equity

  _, equity = jax.lax.scan(body, env_lib.initial_state(row), jnp.asarray(actions))
  difference = np.max(np.abs(np.asarray(equity) / np.asarray(result['parity_equity']) - 1))
  return f'max relative difference {difference:.1e} over {len(actions)} steps'


if __name__ == '__main__':
  sys.exit(main())
