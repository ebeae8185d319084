"""Trains and evaluates the linear forecaster on the Oracle's windows.

python -m experiments.linear --config=configs/linear.py[:quick|:real] [--workdir=DIR]
"""

from quantum_alpha_jax import cli

if __name__ == '__main__':
  cli.train_experiment('linear', 'Linear forecaster')
