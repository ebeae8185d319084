"""Trains and evaluates the Strategist (Decision Transformer).

python -m experiments.strategist --config=configs/strategist.py[:quick|:real] [--workdir=DIR]
"""

from quantum_alpha_jax import cli

if __name__ == '__main__':
  cli.train_experiment('strategist', 'Strategist')
