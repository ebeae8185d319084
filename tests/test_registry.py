"""The model store: provenance, selectors, promotion, atomic saves under kills and concurrent
readers, and refusing versions that do not fit the current features or store schema."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from quantum_alpha_jax.data import features
from quantum_alpha_jax.data import schema
from quantum_alpha_jax.data import store as store_lib
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.errors import SchemaError
from quantum_alpha_jax.ship import store as model_store
from quantum_alpha_jax.train import checkpoint as checkpoint_lib
from quantum_alpha_jax.train import loop
from tests.conftest import make_klines
from tests.linear_task import LinearTask

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def _params(value: float) -> dict:
  return {'dense': {'kernel': np.full((16, 8), value, np.float32),
                    'bias': np.arange(8, dtype=np.float32) + value}}


@pytest.fixture(scope='module')
def feature_store(tmp_path_factory):
  """A small two-symbol feature store (2,000 bars each)."""
  root = tmp_path_factory.mktemp('features')
  frames = {'BTCUSDT': features.compute_features(make_klines(2000, seed=1, extras=True)),
            'ETHUSDT': features.compute_features(make_klines(2000, seed=2))}
  store_lib.write_store(root, frames)
  return root, frames


def test_save_records_provenance_and_load_returns_the_same_params(tmp_path, feature_store):
  root, _ = feature_store
  models = model_store.ModelStore(tmp_path / 'models')
  config = {'data': {'store_dir': str(root), 'symbols': ['BTCUSDT'],
                     'splits': {'train': ['2023-01-01', '2023-01-05'],
                                'validation': ['2023-01-05', '2023-01-07']}},
            'model': {'hidden_size': 8}}
  spec = windows.WindowSpec(12, 3)
  normalizer = windows.Normalizer(spec, np.arange(len(features.FEATURES)),
                                  np.ones(len(features.FEATURES)))
  before = datetime.datetime.now(datetime.timezone.utc)
  version = models.save('oracle', _params(1.5), config=config, normalizer=normalizer,
                        metrics={'validation': {'loss': 0.3}, 'test': {'loss': 0.4}})
  assert version == 1
  loaded = models.load('oracle', 'latest', store_dir=root)
  np.testing.assert_array_equal(loaded.params['dense']['kernel'], _params(1.5)['dense']['kernel'])
  np.testing.assert_array_equal(loaded.params['dense']['bias'], _params(1.5)['dense']['bias'])
  meta = loaded.metadata
  assert meta['features'] == list(features.FEATURES)
  assert meta['store_schema_version'] == schema.SCHEMA_VERSION
  assert meta['config'] == config and meta['metrics']['test'] == {'loss': 0.4}
  created = datetime.datetime.fromisoformat(meta['created'])
  assert created.utcoffset() == datetime.timedelta(0) and before <= created
  np.testing.assert_array_equal(loaded.normalizer.mean, normalizer.mean)
  assert loaded.config.model.hidden_size == 8
  # The data: only the BTC file of the split years, with the SHA-256 of its bytes.
  files = meta['data']['files']
  assert [f['file'] for f in files] == ['BTCUSDT_2023_5m.parquet']
  digest = hashlib.sha256((root / 'BTCUSDT_2023_5m.parquet').read_bytes()).hexdigest()
  assert files[0]['sha256'] == digest and files[0]['rows'] == 2000
  assert meta['data']['splits'] == config['data']['splits']
  head = subprocess.run(['git', '-C', str(REPOSITORY), 'rev-parse', 'HEAD'], capture_output=True,
                        text=True, check=False).stdout.strip()
  assert meta['code']['revision'] == (head or 'unknown')
  assert meta['params']['count'] == 16 * 8 + 8


def test_selectors_promotion_history_and_list(tmp_path):
  models = model_store.ModelStore(tmp_path)
  with pytest.raises(model_store.ModelStoreError, match='no saved versions'):
    models.load('oracle')
  for value, loss in ((1.0, 0.5), (2.0, 0.2), (3.0, 0.9)):
    models.save('oracle', _params(value), metrics={'validation': {'loss': loss, 'accuracy': value}})
  assert models.resolve('oracle', 'latest') == 3
  assert models.resolve('oracle', 'best') == 2  # lowest validation loss
  assert models.resolve('oracle', 'best', metric='validation.accuracy', mode='max') == 3
  with pytest.raises(model_store.ModelStoreError, match="no version has the metric 'test.loss'"):
    models.resolve('oracle', 'best', metric='test.loss')
  with pytest.raises(model_store.ModelStoreError, match='no version has been promoted'):
    models.load('oracle', 'promoted')
  with pytest.raises(model_store.ModelStoreError,
                     match=r'does not exist — choose one of \[1, 2, 3\]'):
    models.load('oracle', 7)
  with pytest.raises(model_store.ModelStoreError, match='is not a name'):
    models.save('../escape', _params(0.0))
  models.promote('oracle', 2, 'beat the baseline')
  pointer = models.promote('oracle', 'latest', 'fine-tuned', details={'cycle': 'c1'})
  assert pointer['version'] == 3 and pointer['previous'] == 2
  assert [(h['version'], h['reason']) for h in pointer['history']] == [
      (2, 'beat the baseline'), (3, 'fine-tuned')]
  assert models.load('oracle', 'promoted').params['dense']['kernel'][0, 0] == 3.0
  rows = models.list()
  assert [(r['name'], r['version'], r['promoted']) for r in rows] == [
      ('oracle', 1, False), ('oracle', 2, False), ('oracle', 3, True)]
  models.save('guardian', _params(0.0))
  assert models.names() == ['guardian', 'oracle'] and len(models.list('guardian')) == 1


def test_save_from_a_training_run_takes_its_best_checkpoint(tmp_path, feature_store):
  _, frames = feature_store
  splits = [windows.Split('train', '2023-01-02', '2023-01-06'),
            windows.Split('validation', '2023-01-06', '2023-01-07')]
  data, normalizer = windows.make_datasets(frames, windows.WindowSpec(12, 3), splits, 32,
                                           tmp_path / 'cache', num_devices=1, shard_index=0,
                                           shard_count=1)
  config = loop.train_config(batch_size=32, num_steps=30, eval_every_steps=10, patience=0,
                             max_eval_batches=5)
  workdir = tmp_path / 'run'
  result = loop.train_and_evaluate(config, LinearTask(), data, workdir,
                                   extra_record={'normalizer': normalizer.to_dict()})
  models = model_store.ModelStore(tmp_path / 'models')
  version = models.save('linear', workdir)
  loaded = models.load('linear', version)
  best, record = checkpoint_lib.load_best(workdir)
  np.testing.assert_array_equal(loaded.params['w'], np.asarray(best['w']))
  np.testing.assert_array_equal(loaded.params['w'], np.asarray(result.params['w']))
  assert loaded.metrics['validation'] == pytest.approx(result.best_metrics)
  assert loaded.metrics['best_step'] == result.best_step == record['best_step']
  np.testing.assert_allclose(loaded.normalizer.std, normalizer.std)
  assert loaded.metadata['extra']['run'] == str(workdir)


def test_a_version_of_another_feature_list_or_schema_is_refused(tmp_path, feature_store,
                                                                monkeypatch):
  root, _ = feature_store
  models = model_store.ModelStore(tmp_path / 'models')
  version = models.save('oracle', _params(1.0))
  path = models.version_path('oracle', version) / 'metadata.json'
  original = json.loads(path.read_text())

  def rewrite(**changes):
    path.write_text(json.dumps({**original, **changes}))

  names = list(features.FEATURES)
  rewrite(features=names[:-1])  # a version from code that had no volume_zscore
  with pytest.raises(SchemaError, match=r'oracle version 1: trained on another feature list: 43 '
                     r'features then, 44 now: the current list has 1 it never saw \(volume_zscore\)'
                     r' — retrain it'):
    models.load('oracle')
  rewrite(features=[names[1], names[0]] + names[2:])
  with pytest.raises(SchemaError, match=r"another order \(position 0: 'SMA_20' then, 'SMA_10' now"):
    models.load('oracle')
  rewrite(store_schema_version=schema.SCHEMA_VERSION - 1)
  with pytest.raises(SchemaError, match=rf'store schema version {schema.SCHEMA_VERSION - 1}, the '
                     rf'code reads version {schema.SCHEMA_VERSION}'):
    models.load('oracle')
  rewrite()
  assert models.load('oracle', store_dir=root).version == 1
  # The code's features changed after the save (a renamed feature): refused, naming both sides.
  monkeypatch.setattr(model_store, 'FEATURES', tuple(names[:-1]) + ('volume_z',))
  with pytest.raises(SchemaError, match=r'gone from the current list \(volume_zscore\); the '
                     r'current list has 1 it never saw \(volume_z\)'):
    models.load('oracle')
  monkeypatch.undo()
  # A feature store built with another feature list, or of another schema version.
  other = tmp_path / 'store'
  shutil.copytree(root, other)
  sidecar = other / 'ETHUSDT_2023_5m.json'
  sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), 'features': names[:40]}))
  with pytest.raises(SchemaError, match=r'does not fit the feature store .*ETHUSDT_2023_5m: 44 '
                     r'features then, 40 now'):
    models.load('oracle', store_dir=other)
  manifest = other / 'store.json'
  manifest.write_text(json.dumps({**json.loads(manifest.read_text()), 'schema_version': 1}))
  with pytest.raises(SchemaError, match=r'store schema version 1, code expects 2 — rebuild'):
    models.load('oracle', store_dir=other)
  # Params altered on disk no longer match their digest.
  second = models.save('oracle', _params(2.0))
  shutil.rmtree(models.version_path('oracle', second) / 'params')
  shutil.copytree(models.version_path('oracle', 1) / 'params',
                  models.version_path('oracle', second) / 'params')
  with pytest.raises(model_store.ModelStoreError, match='do not match the digest'):
    models.load('oracle', second)


_SAVER = textwrap.dedent('''
    import os, signal, sys
    import numpy as np
    from quantum_alpha_jax.ship import store as model_store
    root, writer, count, die = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    kill = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    if die == 'before-fsync':  # params and metadata written, nothing flushed or published
      model_store._fsync_tree = kill
    elif die == 'at-publish':  # everything flushed, killed just before the rename
      model_store._publish = kill
    store = model_store.ModelStore(root)
    for index in range(count):
      value = writer * 1000 + index
      params = {'dense': {'kernel': np.full((256, 64), value, np.float32),
                          'bias': np.full(64, value, np.float32)}}
      version = store.save('model', params, metrics={'validation': {'loss': float(value)}},
                           extra={'value': value})
      print(version, flush=True)
''')


def _saver(root, writer, count, die=''):
  return subprocess.Popen([sys.executable, '-c', _SAVER, str(root), str(writer), str(count), die],
                          cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))


def _check_version(models, version):
  """Loads a listed version; its params must be whole and agree with its metadata."""
  loaded = models.load('model', version)  # verifies the params digest
  value = loaded.metadata['extra']['value']
  assert np.all(loaded.params['dense']['kernel'] == value)
  assert np.all(loaded.params['dense']['bias'] == value)
  return value


def test_concurrent_savers_get_distinct_versions_and_readers_never_see_half_a_version(tmp_path):
  models = model_store.ModelStore(tmp_path)
  seen, errors, stop = set(), [], threading.Event()

  def read():
    while not stop.is_set():
      try:
        for row in models.list('model'):
          seen.add((row['version'], _check_version(models, row['version'])))
      except Exception as error:  # pylint: disable=broad-except
        errors.append(repr(error))

  reader = threading.Thread(target=read)
  reader.start()
  writers = [_saver(tmp_path, writer, 4) for writer in (1, 2)]
  outputs = [w.communicate(timeout=240) for w in writers]
  stop.set()
  reader.join()
  for writer, (out, err) in zip(writers, outputs):
    assert writer.returncode == 0, err[-2000:]
  printed = sorted(int(v) for out, _ in outputs for v in out.split())
  assert printed == list(range(1, 9))  # no two savers got the same number
  values = {_check_version(models, v) for v in models.versions('model')}
  assert values == {w * 1000 + i for w in (1, 2) for i in range(4)}
  assert not errors, errors[:3]
  assert seen  # the reader did read versions while they were being written


def test_a_killed_save_leaves_no_visible_version_and_the_promoted_one_intact(tmp_path):
  models = model_store.ModelStore(tmp_path)
  models.save('model', {'dense': {'kernel': np.full((256, 64), 7.0, np.float32),
                                  'bias': np.full(64, 7.0, np.float32)}}, extra={'value': 7})
  models.promote('model', 1, 'first')
  for die in ('before-fsync', 'at-publish'):
    killed = _saver(tmp_path, 3, 1, die)
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert models.versions('model') == [1] and len(models.list('model')) == 1
    assert list((tmp_path / 'model' / '.pending').iterdir())  # the unpublished attempt
    assert models.load('model', 'promoted').version == 1 and _check_version(models, 1) == 7
  # Killed at a random moment of a stream of saves: whatever is listed is whole.
  stream = _saver(tmp_path, 4, 50)
  time.sleep(4.0)
  stream.kill()
  stream.communicate(timeout=60)
  for version in models.versions('model'):
    _check_version(models, version)
  assert models.promoted('model')['version'] == 1
  # The next save clears the dead savers' folders and takes the next number.
  version = models.save('model', {'dense': {'kernel': np.zeros((2, 2), np.float32),
                                            'bias': np.zeros(2, np.float32)}}, extra={'value': 0})
  assert version == max(models.versions('model')[:-1]) + 1
  leftovers = [p for p in (tmp_path / 'model' / '.pending').iterdir()]
  assert not leftovers, leftovers
