"""The store overview picture shows regimes in their colours, and none where there are none."""

import matplotlib.image
import numpy as np

from quantum_alpha_jax.data import plots, synthetic
from tests.conftest import make_klines


def _pixels_of(image: np.ndarray, colour: str) -> int:
  rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255
  return int((np.abs(image[..., :3] - rgb).max(axis=-1) < 0.02).sum())


def test_overview_colours_regimes(tmp_path):
  market = synthetic.generate_market(start='2024-01-01', end='2024-02-01')
  image = matplotlib.image.imread(plots.plot_overview(market, tmp_path / 'market.png'))
  assert image.shape[0] > 500 and image.shape[1] > 1000
  for colour in plots.REGIME_COLOURS.values():
    assert _pixels_of(image, colour) > 200
  plain = matplotlib.image.imread(plots.plot_overview({'BTCUSDT': make_klines(3000)},
                                                      tmp_path / 'plain.png'))
  assert _pixels_of(plain, plots.REGIME_COLOURS['bull']) == 0
  assert _pixels_of(plain, '#1f77b4') > 200
