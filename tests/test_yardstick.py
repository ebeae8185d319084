"""The yardstick's rows: the best naive value, the verdict from the paired interval, and the share of
the attainable edge, on hand-made reports."""

import pytest

from quantum_alpha_jax.evaluate import yardstick


def _guardian_report(low):
  return {'guardian': {'accuracy': 0.90},
          'baselines': {'majority_class': {'accuracy': 0.45},
                        'trailing_trend_volatility_rule': {'accuracy': 0.80}},
          'versus_best_baseline': {'baseline': 'trailing_trend_volatility_rule',
                                   'difference': 0.10, 'low': low, 'high': 0.15, 'level': 0.95,
                                   'blocks': 17, 'items': 9000}}


CEILING = {'regime': {'filter': {'accuracy': 0.95}},
           'direction': {'filter': {'accuracy': 0.75}}, 'pinball': {'filter': 0.0014},
           'policy': {'long_only': {'test': {'total_return': 1.0}},
                      'long_short': {'test': {'total_return': 1.9}}},
           'settings': {'start': 'a', 'end': 'b', 'preset': 'learnable'}, 'filter_exact': True}


def test_guardian_row_share_and_verdict():
  row = yardstick.guardian_row(_guardian_report(0.05), CEILING)
  assert row['best_naive'] == 'trailing_trend_volatility_rule'
  assert row['best_naive_value'] == 0.80 and row['ceiling'] == 0.95
  assert row['share_of_attainable_edge'] == pytest.approx((0.90 - 0.80) / (0.95 - 0.80))
  assert row['beats_best_naive']
  # An interval that reaches below zero is no win, whatever the point estimate.
  assert not yardstick.guardian_row(_guardian_report(-0.01), CEILING)['beats_best_naive']


def test_no_share_without_a_ceiling_above_the_naive_baseline():
  assert yardstick.guardian_row(_guardian_report(0.05), None)['share_of_attainable_edge'] is None
  low_ceiling = {**CEILING, 'regime': {'filter': {'accuracy': 0.79}}}
  assert yardstick.guardian_row(_guardian_report(0.05), low_ceiling)[
      'share_of_attainable_edge'] is None


def test_strategist_row_uses_the_variant_it_trades():
  report = {'strategist': {'A': {'total_return': 0.6}, 'B': {'total_return': 0.4}},
            'buy_and_hold': {'A': {'total_return': 0.3}, 'B': {'total_return': 0.1}},
            'heuristics': {},
            'versus_best_baseline': {'baseline': 'buy_and_hold', 'difference': 0.01, 'low': 0.001,
                                     'high': 0.02, 'level': 0.95, 'blocks': 17, 'items': 34},
            'conditioning_curve': {'spearman_target_vs_realised': 0.5}}
  row = yardstick.strategist_row(report, CEILING, allow_short=False)
  assert row['value'] == pytest.approx(0.5) and row['best_naive_value'] == pytest.approx(0.2)
  assert row['ceiling'] == 1.0
  assert row['share_of_attainable_edge'] == pytest.approx(0.3 / 0.8)
  assert yardstick.strategist_row(report, CEILING, allow_short=True)['ceiling'] == 1.9
  text = yardstick.format_yardstick([row], CEILING)
  assert 'beats' in text and 'Spearman' in text
  assert f"{row['share_of_attainable_edge']:.0%}" in text
