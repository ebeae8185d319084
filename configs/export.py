"""Exports trained models to ONNX and TF SavedModel. ``get_config('')``, ``'quick'`` or ``'real'``.

``models.<name>`` is the workdir of a training run (its ``checkpoints/`` hold the best params and
the config); an empty string skips the model. The variants point at the default workdirs of the
matching training configs (``checkpoints/oracle``, ``checkpoints/oracle-quick``, ...) of the
Oracle, the LSTM, the Guardian and the Strategist (twice: ``strategist``, the full context, and
``strategist_step``, its cached one-step decode for serving); with ``skip_missing`` the ones not
trained yet are skipped:

  python -m experiments.oracle --config=configs/oracle.py:quick
  python -m experiments.lstm --config=configs/lstm.py:quick
  python -m experiments.export --config=configs/export.py:quick

Needs the export extra: pip install -e '.[export]' (jax2onnx, onnxruntime, tensorflow-cpu).
"""

import ml_collections

from configs import common
from quantum_alpha_jax.errors import ConfigError


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in ('', 'quick', 'real'):
    raise ConfigError(f'configs/export.py: unknown variant {arg!r} — use "", "quick" or "real"')
  suffix = f'-{arg}' if arg else ''
  config = ml_collections.ConfigDict()
  config.name = 'export' + suffix
  # Workdirs of the training runs; '' skips a model.
  config.models = ml_collections.ConfigDict({
      name: common.default_workdir(name + suffix)
      for name in ('oracle', 'lstm', 'linear', 'guardian', 'strategist')})
  # The Strategist's cached one-step decode (ship/export/inference.py strategist_step), from the same
  # run: what a server calls once per bar.
  config.models.strategist_step = config.models.strategist
  # True: a workdir that holds no training run is skipped (and listed in the summary); False: an
  # error. The defaults point at every model's default run, trained or not.
  config.skip_missing = True
  config.formats = ('onnx', 'saved_model')
  config.onnx_opset = 23
  config.saved_model_platforms = ('cpu',)  # add 'cuda' to serve the SavedModel on a GPU
  config.parity = ml_collections.ConfigDict({
      'batch_sizes': (1, 7),
      'tolerance': 1e-4,  # max abs difference to JAX, fp32
      'seed': 0,
  })
  return config
