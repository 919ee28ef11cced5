"""Damaged, partial and unwritable checkpoints, and a NaN loss: restore falls back to the newest
intact step and says which step it skipped and why; a failed write stops the run with its cause
and leaves the previous checkpoint usable; a rerun (with room, or a sane learning rate) resumes
and, where the run is the reference's, ends with its parameters bitwise."""

import glob
import logging
import os
import shutil

import numpy as np
import pytest

from feadapter_jax import checkpoint
from tests import test_train
from tests.reliability import harness


def _state(step: int) -> dict:
  # Random values do not compress: a changed byte in the file is a changed value.
  rng = np.random.default_rng(step)
  return {
      'params': {
          'w': rng.normal(size=(1000,)).astype(np.float32),
          'b': rng.normal(size=(7,)).astype(np.float32),
      },
      'step': np.asarray(step, np.int32),
  }


def _saved_steps(directory, steps=(1, 2)) -> None:
  ckpts = checkpoint.Checkpoints(str(directory), keep_last=len(steps), asynchronous=False)
  for step in steps:
    ckpts.save(step, _state(step))
  ckpts.close()


def _data_files(step_dir) -> list[str]:
  """The array chunk files of a step, largest last."""
  return sorted(
      glob.glob(os.path.join(step_dir, checkpoint.STATE, '**', 'd', '*'), recursive=True),
      key=os.path.getsize,
  )


def _flip_one_byte(path: str) -> None:
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x10]))


def _truncate(step_dir):
  path = _data_files(step_dir)[-1]
  os.truncate(path, os.path.getsize(path) // 2)


def _garble_metadata(step_dir):
  with open(os.path.join(step_dir, checkpoint.STATE, '_METADATA'), 'w') as f:
    f.write('{"tree_metadata": ')


DAMAGE = {
    # Silent without the checksums: orbax's compressed chunks carry no checksum of their own.
    'flipped byte': (lambda d: _flip_one_byte(_data_files(d)[-1]), 'differ from the checksums'),
    'truncated chunk': (_truncate, 'not valid for value of size'),
    'deleted chunk': (lambda d: os.remove(_data_files(d)[-1]), 'Truncated'),
    'garbled metadata': (_garble_metadata, 'JSONDecodeError'),
    'deleted checksums': (
        lambda d: shutil.rmtree(os.path.join(d, checkpoint.CHECKSUMS)),
        'Item "checksums" was not found',
    ),
}


# Orbax's reader thread may touch its closed event loop after a failed read: harmless.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('damage', DAMAGE)
def test_damaged_latest_step_falls_back_to_the_previous_one(tmp_path, caplog, damage):
  caplog.set_level(logging.WARNING, logger='absl')
  _saved_steps(tmp_path)
  mutate, reason = DAMAGE[damage]
  mutate(str(tmp_path / '2'))
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep_last=2, asynchronous=False)
  restored = ckpts.restore_latest(_state(0))
  np.testing.assert_array_equal(restored['params']['w'], _state(1)['params']['w'])
  assert int(restored['step']) == 1
  assert 'Checkpoint step 2' in caplog.text and 'cannot be restored' in caplog.text
  assert reason in caplog.text
  # The run goes on from step 1 and writes step 2 again over the damaged one.
  ckpts.save(2, _state(2))
  ckpts.wait()
  assert int(ckpts.restore(2, _state(0))['step']) == 2
  ckpts.close()


def test_no_intact_step_is_an_error_not_a_silent_restart(tmp_path):
  _saved_steps(tmp_path)
  for step in (1, 2):
    _flip_one_byte(_data_files(str(tmp_path / str(step)))[-1])
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep_last=2, asynchronous=False)
  with pytest.raises(checkpoint.CheckpointError, match='No checkpoint in .* restores') as e:
    ckpts.restore_latest(_state(0))
  assert 'step 2: CheckpointError' in str(e.value) and 'step 1: CheckpointError' in str(e.value)
  assert 'delete that directory' in str(e.value)


def test_partially_written_step_is_reported_removed_and_ignored(tmp_path, caplog):
  caplog.set_level(logging.WARNING, logger='absl')
  _saved_steps(tmp_path)
  shutil.copytree(tmp_path / '2', tmp_path / '3.orbax-checkpoint-tmp')  # as a kill leaves it
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep_last=2, asynchronous=False)
  assert int(ckpts.restore_latest(_state(0))['step']) == 2
  assert "['3.orbax-checkpoint-tmp']" in caplog.text and 'partially written' in caplog.text
  ckpts.save(3, _state(3))  # the resumed run writes step 3 again (orbax's removal is done by then)
  ckpts.wait()
  assert sorted(os.listdir(tmp_path)) == ['2', '3']
  assert int(ckpts.restore(3, _state(0))['step']) == 3
  ckpts.close()


def test_tampered_latest_checkpoint_of_a_run_resumes_from_the_previous_one(
    tmp_path, data_dir, reference
):
  workdir = tmp_path / 'run'
  ckpt_dir = harness.copy_checkpoints(reference, workdir)
  assert harness.complete_steps(ckpt_dir) == [8, 12]
  for path in _data_files(os.path.join(ckpt_dir, '12')):
    _flip_one_byte(path)
  proc = test_train.run(str(workdir), data_dir, harness.CONFIG, *harness.STEPS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Checkpoint step 12' in proc.stderr and 'cannot be restored' in proc.stderr
  assert 'Resumed from step 8' in proc.stdout
  harness.assert_same_params(workdir, reference)


def test_disk_full_during_a_save_stops_the_run_and_a_rerun_with_room_resumes(
    tmp_path, data_dir, reference
):
  workdir = tmp_path / 'run'
  with harness.small_filesystem(workdir / 'checkpoints', 4 << 20) as ckpt_dir:
    harness.copy_checkpoints(reference, workdir, steps=[8])
    # Leave room for a few files, not for the checkpoint of step 12.
    free = os.statvfs(ckpt_dir).f_bavail * os.statvfs(ckpt_dir).f_frsize
    filler = os.path.join(ckpt_dir, 'filler')
    with open(filler, 'wb') as f:
      f.write(bytes(free - 16 * 1024))
    full = test_train.run(
        str(workdir), data_dir, harness.CONFIG, *harness.STEPS, '--config.checkpoint_async=True'
    )
    assert full.returncode == 2, full.stderr[-3000:]
    assert 'Resumed from step 8' in full.stdout
    # The line is searched for, not matched at a line start: a warning from orbax's writer
    # thread may share stderr's line with it.
    errors = [
        line[line.index('error: ') :] for line in full.stderr.splitlines() if 'error: ' in line
    ]
    assert errors, full.stderr[-3000:]
    error = errors[0]
    assert error.startswith('error: Writing checkpoint step 12') and 'No space left' in error
    assert 'The last complete checkpoint is step 8' in error
    assert not os.path.exists(workdir / 'results.json')
    assert harness.assert_checkpoints_intact(ckpt_dir) == [8]

    os.remove(filler)
    again = test_train.run(
        str(workdir), data_dir, harness.CONFIG, *harness.STEPS, '--config.checkpoint_async=True'
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'Resumed from step 8' in again.stdout and 'partially written' in again.stderr
    harness.assert_same_params(workdir, reference)


def test_nan_sets_aside_the_checkpoint_that_caused_it_and_a_sane_lr_resumes(
    tmp_path, data_dir, reference
):
  # Extends test_train's NaN test: the checkpoint named as good is good.
  workdir = str(tmp_path / 'nan')
  every_step = '--config.checkpoint_every_steps=1'
  blown = test_train.run(
      workdir, data_dir, harness.CONFIG, *harness.STEPS, every_step, '--config.optim.lr=1e12'
  )
  assert blown.returncode == 2, blown.stderr[-2000:]
  # Warm-up starts at lr 0, so step 1 is good and step 2's update is what blows up step 3.
  assert 'Training loss is nan at step 3' in blown.stderr
  assert 'the last good checkpoint is step 1' in blown.stderr
  assert 'The checkpoint of step 2, whose parameters gave this loss, was moved' in blown.stderr
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  assert harness.assert_checkpoints_intact(ckpt_dir) == [1]
  assert os.path.isdir(os.path.join(ckpt_dir, '2.nonfinite'))

  # The reference's lr: step 1 (at lr 0) is the same in both runs, so this ends where it does.
  sane = test_train.run(workdir, data_dir, harness.CONFIG, *harness.STEPS, every_step)
  assert sane.returncode == 0, sane.stderr[-2000:]
  assert 'Resumed from step 1' in sane.stdout
  harness.assert_same_params(workdir, reference)
