"""From a model config's ``data`` block to Grain datasets: build the store if it is missing, read
it, cut the time splits and window them (the one road from the store to every trainer)."""

from __future__ import annotations

import pathlib
from typing import Mapping

from absl import logging
import ml_collections
import pandas as pd

from quantum_alpha_jax import distributed
from quantum_alpha_jax.data import pipeline
from quantum_alpha_jax.data import store as store_lib
from quantum_alpha_jax.data import windows


def load_frames(data_config: ml_collections.ConfigDict) -> dict[str, pd.DataFrame]:
  """The store's feature frames for ``data_config.symbols``; builds the store first if absent
  (process 0 alone, when there are several)."""
  root = pathlib.Path(data_config.store_dir)
  # With several processes, process 0 builds a missing store while the others wait for it.
  if not (root / 'store.json').exists() and distributed.is_primary():
    logging.info('No feature store at %s yet: building it from config.data', root)
    print(pipeline.format_summary(pipeline.build_store(data_config)))
  distributed.barrier('feature-store')
  return store_lib.read_store(root, data_config.symbols)


def make_split_data(data_config: ml_collections.ConfigDict, spec: windows.WindowSpec,
                    batch_size: int, seed: int, *,
                    normalizer: windows.Normalizer | None = None,
                    frames: Mapping[str, pd.DataFrame] | None = None
                    ) -> tuple[dict[str, windows.SplitData], windows.Normalizer]:
  """Windows of every split in ``data_config.splits``; the normaliser is fitted on ``train``."""
  frames = load_frames(data_config) if frames is None else frames
  splits = windows.splits_from_config(data_config.splits)
  return windows.make_datasets(
      frames, spec, splits, batch_size, pathlib.Path(data_config.store_dir) / 'windows_cache',
      seed=seed, normalizer=normalizer)
