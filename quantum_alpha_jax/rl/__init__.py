"""Reinforcement learning on a jittable trading environment: ``env`` (the environment),
``market`` (its data from the feature store), ``ppo`` and ``ddpg`` (the agents, sharing ``agent``
and ``networks``), ``evaluate`` (tape rollouts and backtests), ``experiment`` (the training run)
and ``plots``."""
