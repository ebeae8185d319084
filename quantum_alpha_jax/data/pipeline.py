"""klines -> features -> store, driven by a ``configs/data.py`` config (``experiments.data``)."""

from __future__ import annotations

import glob
import time
from pathlib import Path
from typing import Any

from absl import logging
import ml_collections
import numpy as np
import pandas as pd

from quantum_alpha_jax import artifacts
from quantum_alpha_jax.data import klines as klines_lib
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import store as store_lib
from quantum_alpha_jax.data import synthetic
from quantum_alpha_jax.data.features import FEATURES, compute_features
from quantum_alpha_jax.errors import ConfigError, DataError, describe
from quantum_alpha_jax.progress import Progress


def expand_inputs(pattern: str, symbol: str) -> list[Path]:
  """A comma-separated list of paths or globs -> the sorted files it names."""
  if not pattern:
    raise ConfigError(describe(f'config.inputs.{symbol}', 'no input files for this symbol',
                               f'set --config.inputs.{symbol}=PATH_OR_GLOB'))
  paths = []
  for part in str(pattern).split(','):
    part = part.strip()
    matches = sorted(glob.glob(part)) if any(ch in part for ch in '*?[') else [part]
    if not matches:
      raise DataError(describe(f'config.inputs.{symbol}', f'{part!r} matches no file',
                               'check the path or glob'))
    paths += [Path(m) for m in matches]
  return paths


def load_klines(config: ml_collections.ConfigDict
                ) -> dict[str, tuple[pd.DataFrame, klines_lib.IngestReport]]:
  """Kline frames on the 5-minute grid per symbol, from the synthetic market or from files."""
  symbols = list(config.symbols)
  if not symbols:
    raise ConfigError(describe('config.symbols', 'empty', 'list at least one symbol'))
  for symbol in symbols:
    klines_lib.check_symbol(symbol, where='config.symbols')
  klines_lib.check_fill_limit(config.fill_limit_bars)
  if config.source == 'synthetic':
    frames = synthetic.generate_market(symbols=tuple(symbols), start=config.start, end=config.end,
                                       seed=config.seed, parameters=synthetic_parameters(config))
    return {s: (f, klines_lib.IngestReport(symbol=s, sources=['synthetic'], rows_read=len(f)))
            for s, f in frames.items()}
  if config.source != 'files':
    raise ConfigError(describe('config.source', f'{config.source!r} is not a data source',
                               'use "synthetic" or "files"'))
  result = {}
  for symbol in symbols:
    if symbol not in config.inputs:
      raise DataError(describe('config.inputs', f'unknown symbol {symbol!r}: no inputs listed '
                               f'(listed: {", ".join(config.inputs.keys())})',
                               'add the files under config.inputs or fix config.symbols'))
    paths = expand_inputs(config.inputs[symbol], symbol)
    frame, report = klines_lib.load_symbol(
        paths, symbol, sort=config.sort, dedupe=config.dedupe,
        fill_limit_bars=config.fill_limit_bars, drop_last_bar=config.drop_last_bar)
    if config.start is not None or config.end is not None:
      frame = _trim(frame, config.start, config.end)
    result[symbol] = (frame, report)
  return result


def synthetic_preset(config: ml_collections.ConfigDict) -> str:
  """``config.synthetic.preset`` ('realistic' for a config saved before the key existed)."""
  return str(config.get('synthetic', {}).get('preset', 'realistic'))


def synthetic_parameters(config: ml_collections.ConfigDict) -> synthetic.MarketParameters:
  """The ``MarketParameters`` of the config's synthetic preset."""
  return synthetic.preset(synthetic_preset(config))


def generator_record(config: ml_collections.ConfigDict) -> dict | None:
  """What built a synthetic store (preset, seed, span, every parameter), for its sidecars, so that
  ``evaluate/ceiling.py`` can recompute the market's ceiling from the store; None for files."""
  if config.source != 'synthetic':
    return None
  return {'source': 'synthetic', 'preset': synthetic_preset(config), 'seed': int(config.seed),
          'start': str(config.start), 'end': str(config.end),
          'parameters': synthetic.parameters_to_dict(synthetic_parameters(config))}


def _trim(frame: pd.DataFrame, start: Any, end: Any) -> pd.DataFrame:
  keep = np.ones(len(frame), dtype=bool)
  if start is not None:
    keep &= (frame[schema.TIMESTAMP] >= schema.to_utc(start, 'config.start')).to_numpy()
  if end is not None:
    keep &= (frame[schema.TIMESTAMP] < schema.to_utc(end, 'config.end')).to_numpy()
  if not keep.any():
    raise DataError(describe('config.start/end', f'no bars between {start} and {end}',
                             'widen the date range'))
  return frame.loc[keep].reset_index(drop=True)


def build_store(config: ml_collections.ConfigDict) -> dict:
  """Ingests, computes the 44 features and writes the store; returns (and saves) a summary."""
  started = time.perf_counter()
  progress = Progress(total=3 * len(config.symbols), description='data', unit='stages')
  loaded = load_klines(config)
  progress.update(len(loaded), stage='ingest')
  frames, sources, gaps = {}, {}, {}
  for symbol, (frame, report) in loaded.items():
    frames[symbol] = compute_features(frame)
    sources[symbol] = [s for s in report.sources if s != 'synthetic']
    gaps[symbol] = report.gaps
    progress.update(1, stage=f'features {symbol}')
  written = store_lib.write_store(config.store_dir, frames, sources=sources, gaps=gaps,
                                  generator=generator_record(config))
  progress.update(len(loaded), stage='store')
  progress.close()
  summary = summarize(frames, {s: r for s, (_, r) in loaded.items()}, written)
  summary['seconds'] = round(time.perf_counter() - started, 2)
  summary['store_dir'] = str(config.store_dir)
  summary['config'] = config.to_dict()
  from quantum_alpha_jax.data import plots  # matplotlib only when a store is built
  summary['overview_png'] = str(plots.plot_overview(
      frames, Path(config.store_dir) / 'overview.png', title=f'Feature store {config.store_dir}'))
  artifacts.atomic_write_json(Path(config.store_dir) / 'summary.json', summary)
  return summary


def summarize(frames: dict[str, pd.DataFrame], reports: dict[str, klines_lib.IngestReport],
              written: list[dict]) -> dict:
  """Rows, gaps and feature ranges per symbol and year (JSON-ready)."""
  files = [{k: m[k] for k in ('symbol', 'year', 'rows', 'valid_rows', 'observed_rows', 'first', 'last')}
           | {'gaps': len(m['gaps']), 'missing_bars': sum(g['missing_bars'] for g in m['gaps'])}
           for m in written]
  features, features_by_year = {}, {}
  for symbol, frame in frames.items():
    valid = frame.loc[frame[schema.VALID], list(FEATURES)]
    features[symbol] = _ranges(valid)
    years = pd.DatetimeIndex(frame.loc[frame[schema.VALID], schema.TIMESTAMP]).year
    features_by_year[symbol] = {int(y): _ranges(part) for y, part in valid.groupby(years)}
  ingest = {s: {'rows_read': r.rows_read, 'duplicates_removed': r.duplicates_removed,
                'sorted': r.rows_sorted, 'filled_bars': r.filled_bars,
                'segment_breaks': r.segment_breaks, 'sources': r.sources}
            for s, r in reports.items()}
  return {'files': files, 'ingest': ingest, 'features': features,
          'features_by_year': features_by_year}


def _ranges(values: pd.DataFrame) -> dict[str, dict[str, float]]:
  """min / mean / max of every feature column (valid rows only)."""
  low, mean, high = values.min(), values.mean(), values.max()
  return {f: {'min': float(low[f]), 'mean': float(mean[f]), 'max': float(high[f])} for f in FEATURES}


def format_summary(summary: dict) -> str:
  """The summary as text tables, for people."""
  lines = ['Store files (rows per symbol and year):',
           pd.DataFrame(summary['files']).to_string(index=False), '', 'Ingest:',
           pd.DataFrame(summary['ingest']).T.drop(columns=['sources']).to_string(), '']
  for symbol, ranges in summary['features'].items():
    table = pd.DataFrame(ranges).T
    lines += [f'Feature ranges on valid rows, {symbol}:', table.to_string(float_format='%.5g'), '']
  lines.append('Per-year feature ranges: features_by_year in summary.json')
  lines.append(f'Wrote {summary["store_dir"]} in {summary["seconds"]} s; '
               f'picture: {summary["overview_png"]}')
  return '\n'.join(lines)


def window_summary(config: ml_collections.ConfigDict, spec: 'windows.WindowSpec',
                   batch_size: int = 256) -> dict:
  """Reads the store back and counts the windows per split for ``spec`` (one batch's shapes too)."""
  from quantum_alpha_jax.data import windows  # Grain is only needed from here on.
  frames = store_lib.read_store(config.store_dir, config.symbols)
  splits = windows.splits_from_config(config.splits)
  data, normalizer = windows.make_datasets(
      frames, spec, splits, batch_size, Path(config.store_dir) / 'windows_cache', seed=config.seed,
      num_devices=1, shard_index=0, shard_count=1)
  batch = next(data['train'].iterator())
  return {'spec': spec.to_dict(),
          'windows': {name: split.num_windows for name, split in data.items()},
          'batch_shapes': {k: list(v.shape) for k, v in batch.items()},
          'normalizer_fitted_on': normalizer.to_dict().get('train_split')}
