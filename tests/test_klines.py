"""Ingest: every real sample file, Binance dump fixtures, resampling, gaps and bad inputs."""

from __future__ import annotations

import gzip
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from quantum_alpha_jax.data import kline_files, klines, schema
from quantum_alpha_jax.errors import ConfigError, DataError
from tests.conftest import make_klines

RAW = 'freqtrade-raw'


def binance_rows(frame: pd.DataFrame, unit: str = 'ms') -> list[list]:
  """Kline frame -> the 12-column rows of a Binance public dump."""
  factor = {'ms': 1_000_000, 'us': 1_000}[unit]
  open_time = schema.timestamps_ns(frame) // factor
  close_time = open_time + (5 * 60 * 1_000_000_000) // factor - 1
  rows = []
  for i in range(len(frame)):
    rows.append([int(open_time[i]), f'{frame.open[i]:.2f}', f'{frame.high[i]:.2f}',
                 f'{frame.low[i]:.2f}', f'{frame.close[i]:.2f}', f'{frame.volume[i]:.6f}',
                 int(close_time[i]), f'{frame.volume[i] * frame.close[i]:.4f}', 10 + i,
                 f'{frame.volume[i] / 2:.6f}', f'{frame.volume[i] * frame.close[i] / 2:.4f}', 0])
  return rows


def write_csv(path, rows, header: bool = False) -> None:
  lines = [','.join(kline_files.BINANCE_COLUMNS)] if header else []
  lines += [','.join(str(v) for v in row) for row in rows]
  path.write_text('\n'.join(lines) + '\n')


# --------------------------------------------------------------------------------- real samples


@pytest.mark.parametrize('name,rows,interval', [
    ('binance-spot-5m/BTC_USDT-5m.parquet', 375_224, '5m'),
    ('binance-spot-5m/ETH_USDT-5m.parquet', 332_047, '5m'),
    (f'{RAW}/daisybum-cryptoTradingBot_BTC_USDT-5m.feather', 104_816, '5m'),
    (f'{RAW}/daisybum-cryptoTradingBot_ETH_USDT-5m.feather', 104_816, '5m'),
    (f'{RAW}/Pr4v33n23-freqtrade_ETH_USDT-5m.json.gz', 61_999, '5m'),
    (f'{RAW}/davidzhaodz-freqtrade_BTC_USDT-1m.json', None, '1m'),
    (f'{RAW}/davidzhaodz-freqtrade_BTC_USDT-5m.json', None, '5m'),
])
def test_real_files_ingest(shared_data, name, rows, interval):
  frame, report = klines.read_klines(shared_data / name)
  assert frame.attrs['interval'] == interval
  if rows is not None:
    assert len(frame) == rows
  assert report.symbol in ('BTCUSDT', 'ETHUSDT')
  times = schema.timestamps_ns(frame)
  assert (np.diff(times) > 0).all()
  assert list(frame.columns[:6]) == [schema.TIMESTAMP, *schema.OHLCV]


def test_messy_file_duplicates_reported_then_removed_on_request(shared_data):
  path = shared_data / RAW / 'cryofrost-freqtrade_BTC_USDT-5m_with-duplicates.json'
  with pytest.raises(DataError, match=r'28 duplicate timestamps .*dedupe=True'):
    klines.read_klines(path)
  frame, report = klines.read_klines(path, dedupe=True)
  assert report.duplicates_removed == 28
  assert len(frame) == report.rows_read - 28
  regular, gaps = klines.regularize(frame)
  assert sum(g.missing_bars for g in gaps) == 28  # the README's 28 missing candles
  assert (~regular[schema.OBSERVED]).sum() == 28
  assert (regular.loc[~regular[schema.OBSERVED], 'volume'] == 0).all()


def test_resampled_1m_file_equals_its_5m_twin(shared_data):
  one, _ = klines.read_klines(shared_data / RAW / 'davidzhaodz-freqtrade_BTC_USDT-1m.json')
  five, _ = klines.read_klines(shared_data / RAW / 'davidzhaodz-freqtrade_BTC_USDT-5m.json')
  merged = klines.resample(one, '5m', require_complete=True).merge(
      five, on=schema.TIMESTAMP, suffixes=('_resampled', '_file'))
  assert len(merged) == 8639
  for column in ('open', 'high', 'low', 'close'):
    np.testing.assert_array_equal(merged[f'{column}_resampled'], merged[f'{column}_file'])
  difference = (merged.volume_resampled - merged.volume_file).abs()
  off = merged.loc[difference > 1e-6]
  assert list(off[schema.TIMESTAMP]) == [pd.Timestamp('2020-06-14 01:15', tz='UTC')]
  assert off.volume_file.iloc[0] - off.volume_resampled.iloc[0] == pytest.approx(0.057, abs=1e-3)


def test_merged_real_series_gaps_and_segments(shared_data):
  frame, report = klines.load_symbol(
      [shared_data / 'binance-spot-5m/BTC_USDT-5m.parquet'], 'BTCUSDT')
  long_gaps = [g for g in report.gaps if not g.filled]
  # The months missing in 2020 split the series; short outages are filled and flagged.
  assert any(g.start.year == 2020 and g.start.month == 3 for g in long_gaps)
  assert any(g.start == pd.Timestamp('2020-06-20 00:25', tz='UTC') for g in long_gaps)
  assert frame[schema.SEGMENT].max() == len(long_gaps)
  outage = frame[(frame.timestamp >= '2023-03-24 12:40') & (frame.timestamp <= '2023-03-24 13:55')]
  assert len(outage) == 16 and not outage[schema.OBSERVED].any()
  assert (outage.volume == 0).all() and outage.close.nunique() == 1


# --------------------------------------------------------------------------------- Binance dumps


@pytest.mark.parametrize('unit', ['ms', 'us'])
@pytest.mark.parametrize('header', [False, True])
def test_binance_csv_and_zip(tmp_path, unit, header):
  frame = make_klines(50, extras=True)
  rows = binance_rows(frame, unit)
  csv = tmp_path / 'BTCUSDT-5m-2023-01.csv'
  write_csv(csv, rows, header=header)
  archive = tmp_path / 'BTCUSDT-5m-2023-01.zip'
  with zipfile.ZipFile(archive, 'w') as handle:
    handle.write(csv, csv.name)
  for path in (csv, archive):
    read, report = klines.read_klines(path)
    assert report.symbol == 'BTCUSDT' and read.attrs['interval'] == '5m'
    np.testing.assert_array_equal(schema.timestamps_ns(read), schema.timestamps_ns(frame))
    np.testing.assert_allclose(read.close, frame.close.round(2))
    assert read['count'].iloc[3] == 13
    for column in schema.EXTRA_KLINE_COLUMNS:
      assert column in read


def test_resample_matches_pandas(tmp_path):
  rng = np.random.default_rng(3)
  minutes = make_klines(600)
  minutes[schema.TIMESTAMP] = pd.date_range('2023-01-01', periods=600, freq='1min', tz='UTC')
  minutes = minutes.drop(index=rng.choice(600, 40, replace=False)).reset_index(drop=True)
  minutes.attrs['interval'] = '1m'
  ours = klines.resample(minutes, '5m')
  theirs = minutes.set_index(schema.TIMESTAMP).resample('5min').agg(
      {'open': 'first', 'high': 'max', 'low': 'min', 'close': 'last', 'volume': 'sum'}).dropna()
  np.testing.assert_array_equal(schema.timestamps_ns(ours),
                                pd.DatetimeIndex(theirs.index).as_unit('ns').asi8)
  for column in schema.OHLCV:
    np.testing.assert_allclose(ours[column], theirs[column], rtol=1e-12)
  complete = klines.resample(minutes, '5m', require_complete=True)
  counts = minutes.set_index(schema.TIMESTAMP).resample('5min').size()
  assert len(complete) == int((counts == 5).sum())


def test_regularize_fills_short_holes_and_splits_long_ones():
  frame = make_klines(100)
  frame = frame.drop(index=[10, 11, 50] + list(range(60, 80))).reset_index(drop=True)
  regular, gaps = klines.regularize(frame, fill_limit_bars=3)
  assert [(g.missing_bars, g.filled) for g in gaps] == [(2, True), (1, True), (20, False)]
  assert len(regular) == 100 - 20
  filled = regular.loc[~regular[schema.OBSERVED]]
  assert len(filled) == 3
  assert (filled.volume == 0).all()
  assert (filled.open == filled.close).all() and (filled.high == filled.low).all()
  # A filler bar sits at the previous bar's close (the last real close before the hole).
  np.testing.assert_array_equal(filled.close.to_numpy(),
                                regular.close.to_numpy()[filled.index.to_numpy() - 1])
  assert regular.close[10] == regular.close[11] == frame.close[9]
  assert regular[schema.SEGMENT].tolist() == [0] * 60 + [1] * 20
  steps = np.diff(schema.timestamps_ns(regular))
  assert (steps == schema.BAR_NANOSECONDS).sum() == len(regular) - 2


# --------------------------------------------------------------------------------- bad inputs


def _binance_file(tmp_path, rows, name='BTCUSDT-5m-2023-01.csv'):
  path = tmp_path / name
  write_csv(path, rows)
  return path


def test_bad_truncated_zip(tmp_path):
  csv = _binance_file(tmp_path, binance_rows(make_klines(200)))
  archive = tmp_path / 'BTCUSDT-5m-2023-02.zip'
  with zipfile.ZipFile(archive, 'w', zipfile.ZIP_DEFLATED) as handle:
    handle.write(csv, csv.name)
  data = archive.read_bytes()
  archive.write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError, match=r'BTCUSDT-5m-2023-02.zip: .*truncated or corrupt'):
    klines.read_klines(archive)


def test_bad_wrong_column_count(tmp_path):
  rows = [row[:9] for row in binance_rows(make_klines(20))]
  with pytest.raises(DataError, match=r'9 columns without a header; a Binance kline file has 12'):
    klines.read_klines(_binance_file(tmp_path, rows))


def test_bad_string_prices(tmp_path):
  rows = binance_rows(make_klines(20))
  rows[7][4] = 'abc'
  with pytest.raises(DataError, match=r"column 'close' holds 'abc' at row 7, not a number"):
    klines.read_klines(_binance_file(tmp_path, rows))


def test_bad_duplicate_timestamps_then_dedupe(tmp_path):
  rows = binance_rows(make_klines(20))
  rows.insert(5, list(rows[4]))
  path = _binance_file(tmp_path, rows)
  with pytest.raises(DataError, match=r'1 duplicate timestamps \(first at row 5, 2023-01-01 00:20\)'):
    klines.read_klines(path)
  frame, report = klines.read_klines(path, dedupe=True)
  assert len(frame) == 20 and report.duplicates_removed == 1


def test_bad_unsorted_timestamps_then_sort(tmp_path):
  rows = binance_rows(make_klines(20))
  rows[3], rows[4] = rows[4], rows[3]
  path = _binance_file(tmp_path, rows)
  with pytest.raises(DataError, match=r'not sorted \(row 4, 2023-01-01 00:15 comes after '
                     r'2023-01-01 00:20\).*sort=True'):
    klines.read_klines(path)
  frame, report = klines.read_klines(path, sort=True)
  assert report.rows_sorted and (np.diff(schema.timestamps_ns(frame)) > 0).all()


def test_bad_mixed_milliseconds_and_microseconds(tmp_path):
  rows = binance_rows(make_klines(20))
  rows[6][0] = rows[6][0] * 1000
  with pytest.raises(DataError, match=r'mix milliseconds and microseconds \(row 6'):
    klines.read_klines(_binance_file(tmp_path, rows))


def test_bad_high_below_low(tmp_path):
  rows = binance_rows(make_klines(20))
  rows[9][2], rows[9][3] = rows[9][3], rows[9][2]
  with pytest.raises(DataError, match=r'high < low in 1 rows \(first at row 9, 2023-01-01 00:45\)'):
    klines.read_klines(_binance_file(tmp_path, rows))


def test_bad_negative_volume(tmp_path):
  rows = binance_rows(make_klines(20))
  rows[2][5] = '-1.5'
  with pytest.raises(DataError, match=r'negative volume in 1 rows \(first at row 2'):
    klines.read_klines(_binance_file(tmp_path, rows))


@pytest.mark.parametrize('value', ['nan', 'inf'])
def test_bad_nan_or_inf(tmp_path, value):
  rows = binance_rows(make_klines(20))
  rows[11][1] = value
  with pytest.raises(DataError, match=r"NaN/inf values in 'open' \(first at row 11"):
    klines.read_klines(_binance_file(tmp_path, rows))


def test_bad_empty_files(tmp_path):
  for name in ('BTCUSDT-5m-2023-01.csv', 'BTC_USDT-5m.json', 'BTC_USDT-5m.feather'):
    path = tmp_path / name
    path.write_bytes(b'')
    with pytest.raises(DataError, match=r'the file is empty'):
      klines.read_klines(path)
  empty_array = tmp_path / 'ETH_USDT-5m.json'
  empty_array.write_text('[]')
  with pytest.raises(DataError, match=r'no candles'):
    klines.read_klines(empty_array)


def test_bad_truncated_json_and_gzip(tmp_path):
  rows = [[int(t) // 1_000_000, 1.0, 2.0, 0.5, 1.5, 3.0]
          for t in schema.timestamps_ns(make_klines(30))]
  text = json.dumps(rows)
  path = tmp_path / 'BTC_USDT-5m.json'
  path.write_text(text[: len(text) // 2])
  with pytest.raises(DataError, match=r'BTC_USDT-5m.json: invalid JSON.*truncated or corrupt'):
    klines.read_klines(path)
  compressed = gzip.compress(text.encode())
  zipped = tmp_path / 'BTC_USDT-5m.json.gz'
  zipped.write_bytes(compressed[: len(compressed) // 2])
  with pytest.raises(DataError, match=r'truncated or corrupt'):
    klines.read_klines(zipped)


def test_bad_symbols():
  with pytest.raises(DataError, match=r"unknown symbol 'XRPUSDT' — choose one of BTCUSDT, ETHUSDT"):
    klines.check_symbol('XRPUSDT', known=schema.KNOWN_SYMBOLS)
  with pytest.raises(DataError, match=r"'btc-usdt' is not a symbol name"):
    klines.check_symbol('btc-usdt')


def test_bad_file_listed_under_the_wrong_symbol(tmp_path):
  path = _binance_file(tmp_path, binance_rows(make_klines(20)), name='ETHUSDT-5m-2023-01.csv')
  with pytest.raises(DataError, match=r'file name says ETHUSDT, but it is listed for BTCUSDT'):
    klines.load_symbol([path], 'BTCUSDT')


def test_bad_generic_csv_missing_column(tmp_path):
  path = tmp_path / 'prices.csv'
  make_klines(10).drop(columns=['volume', 'observed', 'segment']).to_csv(path, index=False)
  with pytest.raises(DataError, match=r'prices.csv: missing column\(s\) volume'):
    klines.read_klines(path)


def test_bad_off_grid_timestamps(tmp_path):
  rows = binance_rows(make_klines(20))
  rows[4][0] += 60_000
  with pytest.raises(DataError, match=r'off the 5m grid \(first at row 4'):
    klines.read_klines(_binance_file(tmp_path, rows))


def test_generic_csv_and_parquet_round_trip(tmp_path):
  frame = make_klines(30).drop(columns=['observed', 'segment'])
  csv = tmp_path / 'generic.csv'
  frame.to_csv(csv, index=False)
  parquet = tmp_path / 'generic.parquet'
  frame.rename(columns={'timestamp': 'date'}).to_parquet(parquet)
  for path in (csv, parquet):
    read, _ = klines.read_klines(path)
    np.testing.assert_array_equal(schema.timestamps_ns(read), schema.timestamps_ns(frame))
    np.testing.assert_allclose(read.close, frame.close, rtol=1e-12)


# --------------------------------------------------------------------------------- merging files


def _month_files(tmp_path, frame, interval='5m', units=('ms', 'us')):
  """Writes ``frame`` as two Binance files split in the middle, one per timestamp unit."""
  half = len(frame) // 2
  paths = []
  for index, (part, unit) in enumerate(zip((frame.iloc[:half], frame.iloc[half:]), units)):
    path = tmp_path / f'BTCUSDT-{interval}-{2024 + index}-{(12, 1)[index]:02d}.csv'
    write_csv(path, binance_rows(part.reset_index(drop=True), unit))
    paths.append(path)
  return paths


def test_load_symbol_merges_milliseconds_then_microseconds_files(tmp_path):
  frame = make_klines(400, start='2024-12-31 08:00')
  paths = _month_files(tmp_path, frame)
  merged, report = klines.load_symbol(paths, 'BTCUSDT')
  np.testing.assert_array_equal(schema.timestamps_ns(merged), schema.timestamps_ns(frame))
  assert merged[schema.OBSERVED].all() and report.gaps == [] and report.rows_read == 400


def test_load_symbol_resamples_one_minute_dumps(tmp_path):
  minutes = make_klines(1000, start='2024-12-31 20:00')
  minutes[schema.TIMESTAMP] = pd.date_range('2024-12-31 20:00', periods=1000, freq='1min',
                                            tz='UTC').as_unit('ns')
  paths = _month_files(tmp_path, minutes, interval='1m')
  five, _ = klines.load_symbol(paths, 'BTCUSDT')
  minutes_read = pd.concat([klines.read_klines(p)[0] for p in paths], ignore_index=True)
  minutes_read.attrs['interval'] = '1m'
  expected = klines.resample(minutes_read, '5m')
  assert len(five) == 200
  for column in schema.OHLCV + ('quote_volume', 'count'):
    np.testing.assert_allclose(five[column], expected[column], rtol=1e-12)


def test_overlapping_files_must_agree_or_be_deduped(tmp_path):
  frame = make_klines(40)
  first, second = tmp_path / 'a' / 'BTCUSDT-5m-2023-01.csv', tmp_path / 'b' / 'BTCUSDT-5m-2023-01.csv'
  first.parent.mkdir(), second.parent.mkdir()
  write_csv(first, binance_rows(frame.iloc[:30].reset_index(drop=True)))
  write_csv(second, binance_rows(frame.iloc[20:].reset_index(drop=True)))
  merged, report = klines.load_symbol([first, second], 'BTCUSDT')
  assert len(merged) == 40 and report.duplicates_removed == 10  # identical candles merge
  rows = binance_rows(frame.iloc[20:].reset_index(drop=True))
  rows[0][4] = f'{float(rows[0][4]) * 1.01:.2f}'  # the later file disagrees on one close
  rows[0][2] = f'{max(float(rows[0][2]), float(rows[0][4])):.2f}'
  write_csv(second, rows)
  with pytest.raises(DataError, match=r'1 candles differ between overlapping files \(first '
                     r'2023-01-01 01:40\).*dedupe=True'):
    klines.load_symbol([first, second], 'BTCUSDT')
  merged, _ = klines.load_symbol([first, second], 'BTCUSDT', dedupe=True)
  assert merged.close[20] == pytest.approx(float(rows[0][4]))  # the later file wins


def test_drop_last_bar_discards_each_files_final_candle(shared_data):
  path = shared_data / RAW / 'davidzhaodz-freqtrade_BTC_USDT-5m.json'
  full, _ = klines.load_symbol([path], 'BTCUSDT')
  trimmed, _ = klines.load_symbol([path], 'BTCUSDT', drop_last_bar=True)
  assert len(trimmed) == len(full) - 1
  pd.testing.assert_frame_equal(trimmed, full.iloc[:-1])


# --------------------------------------------------------------------------------- review findings


def test_three_minute_bars_cannot_make_five_minute_bars(tmp_path):
  frame = make_klines(40)
  frame[schema.TIMESTAMP] = pd.date_range('2023-01-01', periods=40, freq='3min', tz='UTC')
  path = tmp_path / 'BTCUSDT-3m-2023-01.csv'
  write_csv(path, binance_rows(frame))
  with pytest.raises(DataError, match=r'3m bars cannot make 5m bars'):
    klines.load_symbol([path], 'BTCUSDT')


def test_incomplete_buckets_become_holes_not_candles(shared_data):
  path = shared_data / RAW / 'davidzhaodz-freqtrade_BTC_USDT-1m.json'
  five, report = klines.load_symbol([path], 'BTCUSDT')
  twin, _ = klines.load_symbol([shared_data / RAW / 'davidzhaodz-freqtrade_BTC_USDT-5m.json'],
                               'BTCUSDT')
  # The 1m file starts at 00:34 and ends at 00:32: the partial first and last buckets are dropped,
  # so the resampled series spans exactly the 5m twin.
  assert five.timestamp.iloc[0] == twin.timestamp.iloc[0] == pd.Timestamp('2020-05-21 00:35', tz='UTC')
  assert five.timestamp.iloc[-1] == twin.timestamp.iloc[-1]
  observed = five.loc[five[schema.OBSERVED]]
  merged = observed.merge(twin, on=schema.TIMESTAMP, suffixes=('', '_twin'))
  assert len(merged) == len(observed)  # every observed resampled candle has a real twin
  np.testing.assert_array_equal(merged.close, merged.close_twin)


def test_binance_header_in_another_order_is_mapped_by_name(tmp_path):
  frame = make_klines(20)
  rows = binance_rows(frame)
  order = [0, 4, 2, 3, 1] + list(range(5, 12))  # close and open swapped in the header and data
  path = tmp_path / 'BTCUSDT-5m-2023-01.csv'
  lines = [','.join(kline_files.BINANCE_COLUMNS[i] for i in order)]
  lines += [','.join(str(row[i]) for i in order) for row in rows]
  path.write_text('\n'.join(lines) + '\n')
  read, _ = klines.read_klines(path)
  np.testing.assert_allclose(read.open, frame.open.round(2))
  np.testing.assert_allclose(read.close, frame.close.round(2))


def test_empty_timestamps_are_refused(tmp_path):
  frame = make_klines(10).drop(columns=['observed', 'segment'])
  frame['timestamp'] = frame.timestamp.astype(str)
  frame.loc[4, 'timestamp'] = ''
  path = tmp_path / 'prices.csv'
  frame.to_csv(path, index=False)
  with pytest.raises(DataError, match=r'prices.csv: 1 empty or unparsable timestamps \(first at row 4\)'):
    klines.read_klines(path)
  table = make_klines(10).drop(columns=['observed', 'segment'])
  table.loc[3, 'timestamp'] = pd.NaT
  table.to_parquet(tmp_path / 'prices.parquet')
  with pytest.raises(DataError, match=r'empty or unparsable timestamps \(first at row 3\)'):
    klines.read_klines(tmp_path / 'prices.parquet')


def test_bad_interval_and_fill_limit_are_config_errors(tmp_path):
  path = _binance_file(tmp_path, binance_rows(make_klines(20)))
  with pytest.raises(ConfigError, match=r"interval '7m' is not supported"):
    klines.load_symbol([path], 'BTCUSDT', interval='7m')
  with pytest.raises(ConfigError, match=r'fill_limit_bars: -1 is not a whole number'):
    klines.load_symbol([path], 'BTCUSDT', fill_limit_bars=-1)
