"""The synthetic market's ceiling at the quick size, for one preset: builds the quick store (in a
temporary directory unless --store_dir) and prints evaluate/ceiling.store_ceiling on its test split.

  python -m benchmarks.ceiling --preset=learnable [--arg=quick] [--json=PATH]
"""

import json
import tempfile

from absl import app
from absl import flags

from configs import data
from quantum_alpha_jax.data import pipeline
from quantum_alpha_jax.evaluate import ceiling

_PRESET = flags.DEFINE_string('preset', 'learnable', 'synthetic preset: realistic or learnable')
_ARG = flags.DEFINE_string('arg', 'quick', 'configs/data.py variant')
_STORE = flags.DEFINE_string('store_dir', None, 'build the store here (default: a temporary one)')
_JSON = flags.DEFINE_string('json', None, 'also write the report here')


def main(argv):
  del argv
  config = data.get_config(_ARG.value)
  config.synthetic.preset = _PRESET.value
  config.store_dir = _STORE.value or tempfile.mkdtemp(prefix=f'ceiling-{_PRESET.value}-')
  pipeline.build_store(config)
  report = ceiling.store_ceiling(config.store_dir, config.splits, config.symbols)
  print(ceiling.format_ceiling(report))
  if _JSON.value:
    with open(_JSON.value, 'w') as handle:
      json.dump(report, handle, indent=1)


if __name__ == '__main__':
  app.run(main)
