"""Trains and evaluates the Guardian (contrastive β-VAE market-regime detector).

python -m experiments.guardian --config=configs/guardian.py[:quick|:real] [--workdir=DIR]
"""

from quantum_alpha_jax import cli

if __name__ == '__main__':
  cli.train_experiment('guardian', 'Guardian')
