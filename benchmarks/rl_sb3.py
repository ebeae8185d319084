"""stable-baselines3 PPO on a gymnasium version of the trading environment (for benchmarks/rl.py).

A child of ``python -m benchmarks.rl`` (``python -m benchmarks.rl_sb3 --arrays market.npz ...``):
needs numpy, torch, gymnasium and stable-baselines3, and of this project only
``benchmarks.side_by_side`` (no JAX). The environment has the semantics of quantum_alpha_jax/rl/env.py with
``lookback=1``, discrete actions (hold, buy, sell), long-only, and a trade only when the target
changes: the decision at bar t fills at bar t+1's open with slippage and a fee, the reward is the
log-return of the equity marked at the closes, episodes start at a random row of ``starts`` and are
truncated after ``episode_length`` steps. Prints one ``RESULT {json}`` line: environment steps/s
with policy inference (``model.predict`` + ``DummyVecEnv.step``) at each ``--envs`` count, PPO
``learn`` steps/s with ``--ppo-envs`` environments, and a recorded episode for the parity check.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import gymnasium as gym
import numpy as np

from benchmarks import side_by_side


class TradingEnv(gym.Env):
  """The numpy twin of ``rl.env``: observation = features of the bar, weight, unrealised PnL %."""

  def __init__(self, features, open_price, close, starts, episode_length, fee_rate, slippage_bps,
               seed=0):
    self.features = features.astype(np.float32)
    self.open, self.close = open_price.astype(np.float64), close.astype(np.float64)
    self.starts, self.episode_length = starts, episode_length
    self.fee_rate, self.slippage = fee_rate, slippage_bps / 10_000
    self.observation_space = gym.spaces.Box(-np.inf, np.inf, (features.shape[1] + 2,), np.float32)
    self.action_space = gym.spaces.Discrete(3)
    self.rng = np.random.default_rng(seed)

  def _observation(self):
    close = self.close[self.row]
    weight = self.units * close / self.equity
    unrealised = 100.0 * self.units * (close - self.entry) / self.equity
    return np.concatenate([self.features[self.row], [weight, unrealised]]).astype(np.float32)

  def start_at(self, row):
    self.row, self.time = int(row), 0
    self.cash, self.units, self.target, self.entry, self.equity = 1.0, 0.0, 0.0, 0.0, 1.0
    return self._observation()

  def reset(self, *, seed=None, options=None):
    super().reset(seed=seed)
    return self.start_at(self.starts[self.rng.integers(len(self.starts))]), {}

  def step(self, action):
    target = {0: self.target, 1: 1.0, 2: 0.0}[int(action)]
    price = self.open[self.row + 1]
    if target != self.target:
      equity_open = self.cash + self.units * price
      direction = math.copysign(1.0, target * equity_open / price - self.units) if (
          target * equity_open / price != self.units) else 0.0
      fill = price * (1.0 + self.slippage * direction)
      desired = 0.0 if target == 0 else target * equity_open / fill
      trade = desired - self.units
      if trade != 0 and math.copysign(1.0, trade) == direction:
        self.cash -= trade * fill + self.fee_rate * abs(trade) * fill
        if desired != 0 and (self.units == 0 or abs(desired) > abs(self.units)):
          self.entry = fill if self.units == 0 else (
              (self.entry * abs(self.units) + fill * abs(trade)) / abs(desired))
        self.units = desired
        if desired == 0:
          self.entry = 0.0
    self.target = target
    self.row += 1
    self.time += 1
    equity = self.cash + self.units * self.close[self.row]
    reward = math.log(max(equity, 1e-6)) - math.log(max(self.equity, 1e-6))
    self.equity = equity
    return self._observation(), reward, False, self.time >= self.episode_length, {}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--arrays', required=True)
  parser.add_argument('--envs', default='1,64', help='counts for the stepping measurement')
  parser.add_argument('--ppo-envs', type=int, default=64)
  parser.add_argument('--updates', type=int, default=2, help='timed PPO updates (n_steps 128)')
  parser.add_argument('--seconds', type=float, default=1.5, help='per stepping measurement')
  parser.add_argument('--episode-length', type=int, default=512)
  parser.add_argument('--fee-rate', type=float, default=0.001)
  parser.add_argument('--slippage-bps', type=float, default=1.0)
  parser.add_argument('--torch-threads', type=int, default=1,
                      help='torch intra-op threads; 1 is its fastest for a 64x64 MLP here')
  args = parser.parse_args()
  side_by_side.apply_threads()

  import stable_baselines3  # pylint: disable=g-import-not-at-top
  from stable_baselines3.common.vec_env import DummyVecEnv  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.torch_threads)

  data = np.load(args.arrays)
  make = lambda seed: TradingEnv(data['features'], data['open'], data['close'], data['starts'],
                                 args.episode_length, args.fee_rate, args.slippage_bps, seed)
  # Parity record: a fixed action sequence from a fixed start, replayed by benchmarks/rl.py.
  single = make(0)
  rng = np.random.default_rng(1)
  start = int(data['starts'][0])
  single.start_at(start)
  actions = rng.integers(0, 3, 300)
  equity = []
  for action in actions:
    single.step(action)
    equity.append(single.equity)

  def build(num_envs):
    vector = DummyVecEnv([lambda seed=seed: make(seed) for seed in range(num_envs)])
    batch_size = 128 * num_envs // 8  # 8 minibatches per epoch, as the JAX config
    return stable_baselines3.PPO(
        'MlpPolicy', vector, n_steps=128, batch_size=batch_size, n_epochs=4, learning_rate=3e-4,
        gamma=0.99, gae_lambda=0.95, clip_range=0.2, ent_coef=0.01, vf_coef=0.5,
        max_grad_norm=0.5, policy_kwargs={'net_arch': [64, 64], 'activation_fn': torch.nn.Tanh},
        device='cpu', seed=0, verbose=0), vector

  result = {}
  for num_envs in (int(n) for n in args.envs.split(',')):
    # Environment steps with policy inference (sampled actions), as the rollout collects them.
    model, vector = build(num_envs)
    observation = vector.reset()
    model.predict(observation, deterministic=False)
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < args.seconds:
      for _ in range(20):
        chosen, _ = model.predict(observation, deterministic=False)
        observation, _, _, _ = vector.step(chosen)
      count += 20 * num_envs
    result[f'env_steps_{num_envs}'] = count / (time.perf_counter() - began)

  model, _ = build(args.ppo_envs)
  model.learn(total_timesteps=128 * args.ppo_envs)  # warm-up: one update
  timesteps = 128 * args.ppo_envs * args.updates
  began, cpu = time.perf_counter(), time.process_time()
  model.learn(total_timesteps=timesteps, reset_num_timesteps=False)
  seconds, cpu_seconds = time.perf_counter() - began, time.process_time() - cpu
  result.update({
      'version': stable_baselines3.__version__, 'torch': torch.__version__,
      'torch_threads': torch.get_num_threads(), 'ppo_timesteps': timesteps,
      'ppo_steps': timesteps / seconds, 'ppo_steps_per_cpu_second': timesteps / cpu_seconds,
      'parity_start': start, 'parity_actions': actions.tolist(), 'parity_equity': equity})
  side_by_side.emit(result)


if __name__ == '__main__':
  main()
