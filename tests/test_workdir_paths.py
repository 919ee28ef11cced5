"""Workdir paths go through etils.epath: gs:// workdirs, backbones and checkpoint directories.

No GCS is reachable here, so `bucket` keeps gs://test-bucket in memory: epath parses the gs://
paths and takes them to its fsspec backend as for a real bucket, which holds them in fsspec's
memory filesystem instead of GCS. A path that bypassed epath (open, os.path, shutil) would find
nothing there, or would write under a local 'gs:' folder, which every such test checks is absent.

What stays untested here: orbax's array writes and reads (tensorstore's own GCS driver, which
this memory filesystem does not reach) and TensorFlow's GCS client (epath's default gs://
backend when TensorFlow is installed). The local tests at the end check that local workdirs
behave as before.
"""

import json
import os
import pathlib
from typing import Iterator

from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations import memory
import ml_collections
import numpy as np
from orbax.checkpoint._src.path import gcs_utils
import pytest

from feadapter_jax import checkpoint
from feadapter_jax import cli
from feadapter_jax import kfold
from feadapter_jax import workdir as workdir_lib
from feadapter_jax.convert import store
from feadapter_jax.models import backbone
from tests import tiny

# pylint: disable=protected-access  (the checkpoint directory's own steps, without orbax)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = 'gs://test-bucket'


class _MemoryBucket(memory.MemoryFileSystem):
  """fsspec's memory filesystem answering for gs:// URIs."""

  protocol = ('gs', 'gcs')

  @classmethod
  def _strip_protocol(cls, path):
    return super()._strip_protocol(os.fspath(path).removeprefix('gs://'))


@pytest.fixture
def bucket(monkeypatch, tmp_path_factory) -> Iterator[epath.Path]:
  """gs://test-bucket, empty, in memory; fails the test if anything went to a local 'gs:'."""
  # As with EPATH_USE_TF=false (which epath reads once): else epath hands gs:// to TensorFlow,
  # whose GCS client needs the network.
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)
  fs = _MemoryBucket(global_store=False, skip_instance_cache=True)
  monkeypatch.setattr(epath_backend.fsspec_backend, 'fs', lambda path: fs)
  cwd = tmp_path_factory.mktemp('cwd')
  monkeypatch.chdir(cwd)
  yield epath.Path(BUCKET)
  assert not os.listdir(cwd), 'a gs:// path was used as a local one'


def _upload(local: pathlib.Path, remote: epath.Path) -> None:
  """Copies the local tree `local` to `remote`, byte for byte."""
  for path in local.rglob('*'):
    if path.is_file():
      target = remote / path.relative_to(local)
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(path.read_bytes())


def _tree(directory: epath.Path) -> list[str]:
  """Every file under `directory`, relative to it."""
  return sorted(relative for relative, _ in checkpoint._files(directory))


def _state(step: int) -> dict:
  rng = np.random.default_rng(step)
  return {
      'params': {'w': rng.normal(size=(100,)).astype(np.float32)},
      'step': np.asarray(step, np.int32),
  }


@pytest.fixture(scope='module')
def local_steps(tmp_path_factory) -> pathlib.Path:
  """Steps 1 and 2 of `_state` as orbax writes them locally, to copy into the bucket."""
  directory = tmp_path_factory.mktemp('steps')
  ckpts = checkpoint.Checkpoints(directory, keep_last=2, asynchronous=False)
  for step in (1, 2):
    ckpts.save(step, _state(step))
  ckpts.close()
  return directory


def _video_config(init: str) -> ml_collections.ConfigDict:
  return cli.load_config(f'{ROOT}/configs/synthetic.py:quick,init={init}')


def test_resolve_path_makes_local_paths_absolute_and_leaves_uris(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert workdir_lib.resolve_path('runs/a') == os.path.join(str(tmp_path), 'runs', 'a')
  assert workdir_lib.resolve_path(epath.Path('runs')) == os.path.join(str(tmp_path), 'runs')
  assert workdir_lib.resolve_path(f'{BUCKET}/runs/a') == f'{BUCKET}/runs/a'
  assert workdir_lib.resolve_path(epath.Path(f'{BUCKET}/runs')) == f'{BUCKET}/runs'
  assert os.fspath(workdir_lib.path(f'{BUCKET}/run', 'export', 'init.json')) == (
      f'{BUCKET}/run/export/init.json'
  )


def test_config_json_on_gs_keeps_uris_and_makes_local_paths_absolute(bucket):
  config = ml_collections.ConfigDict(
      {
          'init': {'checkpoint': f'{BUCKET}/backbones/vit'},
          'data': {'data_dir': 'tfds', 'manual_dir': ''},
          'seed': 3,
      }
  )
  run = bucket / 'runs' / 'a'
  run.mkdir(parents=True)
  workdir_lib.write_config(os.fspath(run), config)
  assert (run / workdir_lib.CONFIG_FILE).exists()
  loaded = workdir_lib.load_config(run)
  assert loaded.init.checkpoint == f'{BUCKET}/backbones/vit'
  assert loaded.data.data_dir == os.path.abspath('tfds') and loaded.data.manual_dir == ''
  assert loaded.seed == 3


def test_a_backbone_on_gs_resolves_the_config(bucket):
  stored = {**tiny.TINY, 'layer_norm_eps': 1e-12, 'mean': [0.5] * 3, 'std': [0.25] * 3}
  (bucket / 'vit').mkdir()
  (bucket / 'vit' / checkpoint.MODEL_CONFIG).write_text(json.dumps(stored))
  config = backbone.resolve(_video_config(f'{BUCKET}/vit'))
  assert (config.model.width, config.model.layer_norm_eps) == (32, 1e-12)
  assert tuple(config.data.std) == (0.25,) * 3
  assert store.read_metadata(f'{BUCKET}/vit') == {
      'source': None,
      'checkpoint': None,
      'mean': [0.5] * 3,
      'std': [0.25] * 3,
      'class_names': None,
  }
  with pytest.raises(FileNotFoundError, match=f'{BUCKET}/none/model_config.json not found'):
    backbone.resolve(_video_config(f'{BUCKET}/none'))
  with pytest.raises(FileNotFoundError, match=f'{BUCKET}/none is not a parameter directory'):
    checkpoint.load_params(f'{BUCKET}/none')
  with pytest.raises(FileExistsError, match=f'{BUCKET}/vit already exists'):
    store.save(f'{BUCKET}/vit', {}, stored)


def test_kfold_reads_finished_folds_and_writes_its_table_on_gs(bucket):
  for fold, (uar, war) in {1: (0.5, 0.6), 2: (0.7, 0.8)}.items():
    (bucket / 'dfew' / f'fold{fold}').mkdir(parents=True)
    results = bucket / 'dfew' / f'fold{fold}' / workdir_lib.RESULTS_FILE
    results.write_text(json.dumps({'uar': uar, 'war': war}))
  md = kfold.run('configs/dfew.py', f'{BUCKET}/dfew', [1, 2])  # both finished: nothing trains
  assert (bucket / 'dfew' / 'kfold.md').read_text() == md + '\n'
  assert '| mean | 60.00 +- 10.00 |' in md
  assert json.loads((bucket / 'dfew' / 'kfold.json').read_text()) == {
      '1': {'uar': 0.5, 'war': 0.6, 'selected': None},  # these results predate selection
      '2': {'uar': 0.7, 'war': 0.8, 'selected': None},
  }


def test_compare_reads_a_finished_run_and_writes_its_figure_on_gs(bucket):
  from feadapter_jax.experiments import compare  # pylint: disable=g-import-not-at-top  (TF)

  run = bucket / 'compare' / 'aim' / 'seed0'
  run.mkdir(parents=True)
  (run / workdir_lib.RESULTS_FILE).write_text(json.dumps({'uar': 0.9}))
  config = ml_collections.ConfigDict({'method': 'aim', 'seed': 0})
  assert compare.train_or_read(config, run) == {'uar': 0.9}
  assert json.loads((run / compare.REQUEST_FILE).read_text()) == config.to_dict()
  config.seed = 1
  with pytest.raises(ValueError, match='holds a run of another config'):
    compare.train_or_read(config, run)
  plan = compare.Plan(config='configs/synthetic.py', workdir=f'{BUCKET}/compare')
  assert plan.backbone == f'{BUCKET}/compare/image/export'
  rows = [
      compare.Row('aim', 1000, 0.1, (0.9, 0.01), (0.9, 0.01), (0.8, 0.01), 1.0),
      compare.Row('fe_adapter', 500, 0.05, (0.95, 0.01), (0.95, 0.01), (0.9, 0.01), 1.0),
  ]
  compare.plot(rows, bucket / 'compare' / compare.FIGURE_FILE, 'title')
  assert (bucket / 'compare' / compare.FIGURE_FILE).read_bytes().startswith(b'\x89PNG')


def test_predict_names_the_missing_file_of_a_gs_workdir(bucket):
  from feadapter_jax import predict  # pylint: disable=g-import-not-at-top  (TF, OpenCV)

  run = bucket / 'run'
  run.mkdir()
  with pytest.raises(predict.PredictError, match=f'{BUCKET}/run/config.json: not found'):
    predict.Predictor(f'{BUCKET}/run')
  (run / workdir_lib.CONFIG_FILE).write_text(json.dumps({'data': {'num_clips': 1}}))
  with pytest.raises(predict.PredictError, match=f'{BUCKET}/run/results.json: not found'):
    predict.Predictor(f'{BUCKET}/run')


def test_damaged_steps_on_gs_are_reported_and_set_aside(bucket, local_steps, caplog):
  directory = bucket / 'checkpoints'
  _upload(local_steps, directory)
  assert _tree(directory / '2') == _tree(epath.Path(local_steps / '2'))
  assert checkpoint._damage(directory / '2') is None
  assert checkpoint.directory_bytes(directory / '1') == checkpoint.directory_bytes(
      local_steps / '1'
  )
  # One changed byte in step 2's metrics, one file added: named, and the step moved aside.
  metrics = directory / '2' / 'metrics' / 'metrics'
  metrics.write_bytes(metrics.read_bytes()[:-1] + b' ')
  (directory / '2' / 'stray').write_text('stray')
  caplog.set_level('WARNING', logger='absl')
  checkpoint._set_aside_damaged_steps(directory)
  assert sorted(p.name for p in directory.iterdir()) == ['1', '2.damaged']
  assert (
      f'Checkpoint step 2 in {BUCKET}/checkpoints cannot be restored (metrics/metrics differs '
      f'from its SHA-256 in SHA256SUMS (and 1 more)); moved it to {BUCKET}/checkpoints/2.damaged.'
  ) in caplog.text
  # With every step damaged nothing moves, and the error names each step's first fault.
  (directory / '1' / checkpoint.FILE_CHECKSUMS).unlink()
  with pytest.raises(checkpoint.CheckpointError, match='step 1: SHA256SUMS: No such file'):
    checkpoint._set_aside_damaged_steps(directory)
  assert sorted(p.name for p in directory.iterdir()) == ['1', '2.damaged']


def test_opening_a_gs_checkpoint_directory_removes_partial_and_damaged_steps(
    bucket, local_steps, monkeypatch, caplog
):
  # Orbax asks GCS whether the bucket has a hierarchical namespace (google-cloud-storage, and
  # the network): here it has none.
  monkeypatch.setattr(gcs_utils, 'is_hierarchical_namespace_enabled', lambda path: False)
  directory = bucket / 'checkpoints'
  _upload(local_steps, directory)
  _upload(local_steps / '2', directory / f'3{checkpoint._TMP}')  # as a kill while saving leaves it
  (directory / '2' / checkpoint.FILE_CHECKSUMS).write_text('cut')
  caplog.set_level('WARNING', logger='absl')
  ckpts = checkpoint.Checkpoints(os.fspath(directory), keep_last=2, asynchronous=False)
  try:
    assert ckpts.steps() == [1]
  finally:
    ckpts.close()
  assert f"['3{checkpoint._TMP}'] from {BUCKET}/checkpoints: partially written" in caplog.text
  assert 'SHA256SUMS is cut short' in caplog.text
  assert sorted(p.name for p in directory.iterdir()) == ['1', '2.damaged']


def test_a_step_is_sealed_on_gs_with_the_sha256_of_each_file(bucket):
  staging = bucket / f'3{checkpoint._TMP}.sealing'
  (staging / 'state' / 'd').mkdir(parents=True)
  (staging / 'state' / 'd' / 'chunk').write_bytes(b'\x00\x01')
  (staging / 'commit_success.txt').write_text('done')
  checkpoint._seal(staging, bucket / '3')
  assert not staging.exists()
  assert _tree(bucket / '3') == [checkpoint.FILE_CHECKSUMS, 'commit_success.txt', 'state/d/chunk']
  listing = (bucket / '3' / checkpoint.FILE_CHECKSUMS).read_text().splitlines()
  assert [line.split('  ')[1] for line in listing] == ['commit_success.txt', 'state/d/chunk']
  assert checkpoint._damage(bucket / '3') is None


# ----------------------------------------------------------------------------- Local, as before.


def test_local_relative_paths_are_resolved_as_before(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  params = {'a': np.arange(4.0)}
  stored = {key: 1 for key in store.ARCHITECTURE_KEYS}
  store.save('backbone', params, stored, {'source': 'timm'})
  assert sorted(os.listdir(tmp_path)) == ['backbone']  # no backbone.tmp left
  loaded, model_config = store.load('backbone')
  np.testing.assert_array_equal(loaded['a'], params['a'])
  assert model_config == stored and store.read_metadata('backbone')['source'] == 'timm'
  assert checkpoint.directory_bytes('backbone') == sum(
      os.path.getsize(os.path.join(root, name))
      for root, _, names in os.walk(tmp_path / 'backbone')
      for name in names
  )
  ckpts = checkpoint.Checkpoints('checkpoints', keep_last=1, asynchronous=False)
  ckpts.save(1, _state(1))
  np.testing.assert_array_equal(
      ckpts.restore_latest(_state(0))['params']['w'], _state(1)['params']['w']
  )
  assert str(ckpts.manager.directory) == str(tmp_path / 'checkpoints')
  ckpts.close()
  config = ml_collections.ConfigDict(
      {'init': {'checkpoint': 'backbone'}, 'data': {'data_dir': '', 'manual_dir': 'manual'}}
  )
  workdir_lib.write_config('.', config)
  loaded_config = workdir_lib.load_config(tmp_path)
  assert loaded_config.init.checkpoint == str(tmp_path / 'backbone')
  assert loaded_config.data.manual_dir == str(tmp_path / 'manual')
