"""Trains and evaluates the LSTM baseline on the Oracle's windows.

python -m experiments.lstm --config=configs/lstm.py[:quick|:real] [--workdir=DIR]
"""

from quantum_alpha_jax import cli

if __name__ == '__main__':
  cli.train_experiment('lstm', 'LSTM')
