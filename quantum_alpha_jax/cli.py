"""Runs an experiment's ``main`` with absl, turning user mistakes into one clear line, not a traceback."""

from __future__ import annotations

import re
import sys
from typing import Callable

from absl import app

from quantum_alpha_jax.errors import QuantumAlphaError


def run(main: Callable[[list[str]], None]) -> None:
  """``app.run(main)``; a bad ``--config.x`` override or a ``QuantumAlphaError`` exits with code 2."""
  try:
    app.run(main)
  except QuantumAlphaError as error:
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    override = next((a for a in sys.argv[1:] if a.startswith('--config.')), None)
    if override is None or error.__traceback__ is None or not _from_config_parsing(error):
      raise
    print(f'error: config: {_clean(error)} (in {" ".join(sys.argv[1:])}) — check the key and '
          'value against the config file; the keys are listed in it', file=sys.stderr)
    sys.exit(2)


def _from_config_parsing(error: BaseException) -> bool:
  """True when the exception was raised while absl parsed a ml_collections config override."""
  traceback = error.__traceback__
  while traceback is not None:
    if 'ml_collections' in traceback.tb_frame.f_code.co_filename:
      return True
    traceback = traceback.tb_next
  return False


def _clean(error: BaseException) -> str:
  text = str(error).strip('"\'')
  text = text.encode().decode('unicode_escape') if '\\n' in text else text
  return re.sub(r'\s+', ' ', text.replace("'\\'", "'")).strip()
