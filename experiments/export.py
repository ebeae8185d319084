"""Exports trained models to ONNX and TF SavedModel, checks them against JAX, writes a manifest.

python -m experiments.export --config=configs/export.py[:quick|:real] [--workdir=DIR]
    [--config.models.oracle=WORKDIR] [--config.models.lstm=''] [--config.formats="('onnx',)"]

Writes DIR/onnx/<model>.onnx, DIR/saved_model/<model>/ and DIR/manifest.json.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax.ship.export import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/export.py', 'Export config (file[:variant]).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Output directory (default checkpoints/<config.name>).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  manifest = pipeline.run(config, _WORKDIR.value or cli.default_workdir(config.name))
  print(pipeline.format_summary(manifest))


if __name__ == '__main__':
  cli.run(main)
