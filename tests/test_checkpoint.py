"""Checkpoint retention (last N + best UAR), file checksums, restore, and parameter
directories."""

import hashlib
import os

import numpy as np
import pytest

from feadapter_jax import checkpoint


def state(value: float) -> dict:
  return {'params': {'w': np.full((3,), value, np.float32)}, 'step': np.array(value, np.int32)}


def test_keeps_the_last_n_and_the_best_by_uar(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep_last=2, asynchronous=False)
  uars = {1: 0.3, 2: 0.9, 3: 0.5, 4: None, 5: 0.4}
  for step, uar in uars.items():
    ckpts.save(step, state(step), {'uar': uar, 'war': 0.0} if uar is not None else None)
  ckpts.wait()
  assert ckpts.steps() == [2, 4, 5]  # best (step 2, UAR 0.9) + the last two
  assert ckpts.manager.best_step() == 2
  restored = ckpts.restore_latest(state(0))
  np.testing.assert_array_equal(restored['params']['w'], np.full((3,), 5.0))
  ckpts.close()


@pytest.mark.parametrize('asynchronous', [False, True])
def test_sha256sums_of_a_step_cover_every_other_file(tmp_path, asynchronous):
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep_last=1, asynchronous=asynchronous)
  ckpts.save(1, state(1), {'uar': 0.5, 'war': 0.5})
  ckpts.wait()
  ckpts.close()
  assert os.listdir(tmp_path) == ['1']  # no temporary directory left
  step_dir = tmp_path / '1'
  listed = dict(
      reversed(line.split('  ', 1))
      for line in (step_dir / checkpoint.FILE_CHECKSUMS).read_text().splitlines()
  )
  files = {str(p.relative_to(step_dir)) for p in step_dir.rglob('*') if p.is_file()}
  assert set(listed) == files - {checkpoint.FILE_CHECKSUMS}
  assert {'_CHECKPOINT_METADATA', 'commit_success.txt', 'metrics/metrics'} <= set(listed)
  for name, digest in listed.items():
    assert hashlib.sha256((step_dir / name).read_bytes()).hexdigest() == digest, name


def test_restore_latest_with_no_checkpoint_is_none(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path / 'none'), keep_last=1)
  assert ckpts.restore_latest(state(0)) is None


def test_parameter_directory_round_trip_and_clear_error(tmp_path):
  params = {'a': {'kernel': np.arange(6.0).reshape(2, 3)}, 'b': np.ones(2)}
  checkpoint.save_params(str(tmp_path / 'p'), params, {'width': 3})
  loaded, model_config = checkpoint.load_params(str(tmp_path / 'p'))
  np.testing.assert_array_equal(loaded['a']['kernel'], params['a']['kernel'])
  assert model_config == {'width': 3}
  assert not os.path.exists(str(tmp_path / 'p.tmp'))
  with pytest.raises(FileNotFoundError, match='convert'):
    checkpoint.load_params(str(tmp_path / 'missing'))


def test_best_step_survives_a_restart(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep_last=1, asynchronous=False)
  for step, uar in ((1, 0.2), (2, 0.8), (3, 0.1)):
    ckpts.save(step, state(step), {'uar': uar, 'war': 0.0})
  ckpts.close()
  again = checkpoint.Checkpoints(str(tmp_path), keep_last=1, asynchronous=False)
  assert again.steps() == [2, 3] and again.manager.best_step() == 2
  again.save(4, state(4), None)
  again.wait()
  assert again.steps() == [2, 4]
