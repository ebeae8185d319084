"""Exception types with actionable messages.

Every error a user can cause (bad input files, a wrong config, a broken store) is raised as one of
these, with a message of the form ``<where>: <what is wrong> — <how to fix it>``. Deep library
tracebacks (pandas, pyarrow, zipfile) are caught at the boundary and re-raised from here.
"""

from __future__ import annotations


class QuantumAlphaError(Exception):
  """Base class of every error this package raises on purpose."""


class DataError(QuantumAlphaError):
  """Input market data is malformed: bad file, bad values, bad timestamps."""


class SchemaError(DataError):
  """A stored table's columns or dtypes do not match what the code expects."""


class ConfigError(QuantumAlphaError):
  """A configuration value is missing, mistyped or inconsistent."""


def describe(where: str, problem: str, fix: str | None = None) -> str:
  """Formats ``where: problem — fix`` (the house style for error messages)."""
  message = f'{where}: {problem}'
  if fix:
    message += f' — {fix}'
  return message
