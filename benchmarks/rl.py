"""Trading-environment and PPO throughput, this project against stable-baselines3, side by side.

  /tmp/benchenv/bin/python -m benchmarks.rl [--envs 1,64] [--ppo-envs 64] [--updates 2]
                                            [--rounds 3] [--threads 2]

One parent alternates two children (``benchmarks.side_by_side.alternate``: same pinned CPUs, same
thread count) for ``--rounds`` rounds on the training split of the quick synthetic store (44
features, episodes of 512 bars), and prints the medians and the median per-round ratios:

1. Environment steps per second with policy inference at each ``--envs`` count. Ours: a jitted
   ``lax.scan`` of PPO's actor-critic (64x64, tanh) sampling an action for each of N environments,
   then ``vmap(env.step)`` (fill, fee, reward, automatic reset); compiled once before timing. SB3
   (benchmarks/rl_sb3.py): ``model.predict`` + ``DummyVecEnv.step`` of a gymnasium environment with
   the same semantics in numpy, checked against ours on a recorded episode (the parity line).
2. PPO training loop, environment steps per second: ``--ppo-envs`` environments x 128 steps, 4
   epochs x 8 minibatches, Adam. Ours: ``--updates`` updates under one jit, after a compile run;
   SB3: ``model.learn`` of ``--updates`` updates after a one-update warm-up.

torch runs with 1 intra-op thread by default (``--sb3-torch-threads``; its fastest for a 64x64 MLP
on this machine), in a process pinned to the same CPUs as ours. The older wide sweep of our side
alone (up to 4096 environments) is ``--ours-only --envs 1,16,256,1024,4096``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

from benchmarks import side_by_side

TARGET_RATIO = 100.0


def quick_market(episode_length: int = 512):
  """The training split of the quick synthetic store (built if missing)."""
  from configs import data as data_config_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.rl import market as market_lib  # pylint: disable=g-import-not-at-top
  markets, _ = market_lib.build_markets(data_config_lib.get_config('quick'),
                                        market_lib.env_config(episode_length=episode_length))
  return markets['train']


def environment_steps(params, num_envs: int, steps: int, repeats: int = 3) -> tuple[float, float]:
  """Environment steps per wall-clock second and per CPU second (all threads) of ``num_envs``
  environments driven by a 64x64 policy."""
  import jax  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.rl import env as env_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.rl import networks  # pylint: disable=g-import-not-at-top
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


def ppo_throughput(params, num_envs: int, updates: int,
                   repeats: int = 2) -> tuple[float, float, float]:
  """(env steps per wall second, per CPU second, compile seconds) of ``updates`` PPO updates under
  one jit at the default PPO config with ``num_envs`` environments."""
  import jax  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.rl import ppo  # pylint: disable=g-import-not-at-top
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


def stepping_length(num_envs: int) -> int:
  return max(64, min(4096, 2_000_000 // (num_envs * 64)))


def ours_child(args) -> None:
  side_by_side.apply_threads()
  params = quick_market().params
  result = {}
  for count in (int(n) for n in args.envs.split(',')):
    result[f'env_steps_{count}'], _ = environment_steps(params, count, stepping_length(count))
  wall, cpu, compile_seconds = ppo_throughput(params, args.ppo_envs, args.updates)
  result.update(ppo_steps=wall, ppo_steps_per_cpu_second=cpu, ppo_compile_seconds=compile_seconds)
  side_by_side.emit(result)


def parity(params, result: dict) -> float:
  """Replays the gymnasium environment's recorded episode here; max relative equity difference."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.rl import env as env_lib  # pylint: disable=g-import-not-at-top
  row, actions = result['parity_start'], np.asarray(result['parity_actions'])

  def body(state, action):
    state, _, _ = env_lib.transition(state, env_lib.action_to_target(action, state, params),
                                     params)
    return state, state.equity

  _, equity = jax.lax.scan(body, env_lib.initial_state(row), jnp.asarray(actions))
  return float(np.max(np.abs(np.asarray(equity) / np.asarray(result['parity_equity']) - 1)))


def ours_only(args) -> None:
  """Our side alone, in this process: the wide sweep of environment counts."""
  import jax  # pylint: disable=g-import-not-at-top
  params = quick_market().params
  print(f'jax {jax.__version__}, {os.cpu_count()} CPUs; observation {params.observation_size}')
  print('   envs    per wall second    per CPU second')
  for count in (int(n) for n in args.envs.split(',')):
    wall, cpu = environment_steps(params, count, stepping_length(count))
    print(f'  {count:>5} {wall:>16,.0f} {cpu:>17,.0f}')
  wall, cpu, compile_seconds = ppo_throughput(params, args.ppo_envs, args.updates)
  print(f'PPO, {args.ppo_envs} envs x 128 steps: {wall:,.0f} env steps per wall second, '
        f'{cpu:,.0f} per CPU second (jit compile {compile_seconds:.1f} s)')


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--envs', default='1,64')
  parser.add_argument('--ppo-envs', type=int, default=64)
  parser.add_argument('--updates', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--sb3-torch-threads', type=int, default=1)
  parser.add_argument('--sb3-seconds', type=float, default=1.5,
                      help='wall seconds per SB3 stepping measurement')
  parser.add_argument('--ours-only', action='store_true')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    ours_child(args)
    return
  if args.ours_only:
    ours_only(args)
    return
  if importlib.util.find_spec('stable_baselines3') is None:
    print('stable-baselines3 is not installed (pip install -e .[bench]): our side only')
    ours_only(args)
    return

  split_market = quick_market()
  params = split_market.params
  counts = [int(n) for n in args.envs.split(',')]
  threads = len(side_by_side.cpu_list(args.threads))
  with tempfile.TemporaryDirectory() as directory:
    arrays = pathlib.Path(directory) / 'market.npz'
    np.savez(arrays, features=np.asarray(params.features), open=np.asarray(params.open),
             close=np.asarray(params.close), starts=np.asarray(params.starts))
    shared = ['--envs', args.envs, '--ppo-envs', str(args.ppo_envs), '--updates',
              str(args.updates)]
    sides = {
        'ours': ['-m', 'benchmarks.rl', '--child', *shared],
        'sb3': ['-m', 'benchmarks.rl_sb3', '--arrays', str(arrays), *shared,
                '--seconds', str(args.sb3_seconds), '--episode-length',
                str(params.episode_length), '--fee-rate', str(params.fee_rate),
                '--slippage-bps', str(params.slippage_bps),
                '--torch-threads', str(args.sb3_torch_threads)],
    }
    results = side_by_side.alternate(sides, args.rounds, threads)
  ours, sb3 = results['ours'], results['sb3']
  first = sb3[0]
  print(f'\nquick store training split: {params.close.shape[0]:,} bars, observation '
        f'{params.observation_size}; {threads} pinned CPUs, {args.rounds} alternating rounds; '
        f'stable-baselines3 {first["version"]} (torch {first["torch"]}, '
        f'{first["torch_threads"]} intra-op thread(s))')
  print(f'parity: equity of a fixed 300-action episode, gymnasium vs ours: max relative '
        f'difference {parity(params, first):.1e}')
  print(f'{"env steps/s (median)":44s} {"ours":>12s} {"SB3":>10s} {"ours ahead":>10s}')
  rows = [(f'with policy inference, {count} env{"s" if count > 1 else ""}', f'env_steps_{count}')
          for count in counts]
  rows.append((f'PPO training loop, {args.ppo_envs} envs x 128 steps', 'ppo_steps'))
  for label, key in rows:
    print(f'{label:44s} {side_by_side.median(ours, key):12,.0f} '
          f'{side_by_side.median(sb3, key):10,.0f} '
          f'{side_by_side.median_ratio(ours, sb3, key):9.1f}x')
  print(f'ours: PPO jit compile {side_by_side.median(ours, "ppo_compile_seconds"):.1f} s (not '
        f'timed); PPO per CPU second: ours {side_by_side.median(ours, "ppo_steps_per_cpu_second"):,.0f}'
        f', SB3 {side_by_side.median(sb3, "ppo_steps_per_cpu_second"):,.0f}')


if __name__ == '__main__':
  sys.exit(main())
