"""Trains and evaluates the Oracle (TFT).

python -m experiments.oracle --config=configs/oracle.py[:quick|:real] [--workdir=DIR]
"""

from quantum_alpha_jax import cli

if __name__ == '__main__':
  cli.train_experiment('oracle', 'Oracle')
