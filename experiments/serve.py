"""Serves ensemble decisions from an export: replays a kline file, or follows one as it grows.

python -m experiments.serve --export=DIR --input=FILE[,FILE...] [--output=decisions.jsonl]
    [--follow] [--symbols=BTCUSDT,...] [--config=configs/serve.py] [--config.start=2023-07-01]
    [--config.backend=jax] [--config.ensemble.use_guardian=False] ...

One JSONL record per closed bar and symbol (target, action, size, p_up, uncertainty, regime, risk,
latency, warm-up status); a refused bar is one logged line and one ``rejected`` record.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from quantum_alpha_jax import cli
from quantum_alpha_jax.serve import decider as decider_lib
from quantum_alpha_jax.serve import replay

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/serve.py', 'Serve config (file[:variant]).', lock_config=True)
_EXPORT = flags.DEFINE_string('export', None, 'Export directory (experiments.export output).',
                              required=True)
_INPUT = flags.DEFINE_list('input', None, 'Kline file(s), one per symbol.', required=True)
_SYMBOLS = flags.DEFINE_list('symbols', None, 'Symbol of each input (default: from its name).')
_OUTPUT = flags.DEFINE_string('output', 'decisions.jsonl', 'Decision JSONL (appended to).')
_FOLLOW = flags.DEFINE_bool('follow', False, 'After the replay, keep reading the lines each CSV '
                            'input gains (until config.idle_seconds without one).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  decider = decider_lib.Decider(_EXPORT.value, backend=config.backend,
                                ensemble_config=config.ensemble, start=config.start,
                                fill_limit_bars=config.fill_limit_bars)
  summary = replay.serve(decider, _INPUT.value, _OUTPUT.value, symbols=_SYMBOLS.value,
                         follow=_FOLLOW.value, poll_seconds=config.poll_seconds,
                         idle_seconds=config.idle_seconds)
  logging.info('Decisions in %s', _OUTPUT.value)
  print(replay.format_summary(summary, _OUTPUT.value))


if __name__ == '__main__':
  cli.run(main)
