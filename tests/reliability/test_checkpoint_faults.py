"""Damaged, partial and unwritable checkpoints, and a NaN loss: restore falls back to the newest
intact step and says in one line which step it skipped and why; a failed write stops the run with
its cause and leaves the previous checkpoint usable; a rerun (with room, or a sane learning rate)
resumes and, where the run is the reference's, ends with its parameters bitwise."""

import glob
import hashlib
import logging
import os
import re
import shutil

import jax
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


@pytest.fixture(scope='module')
def two_steps(tmp_path_factory) -> str:
  """Steps 1 and 2 of `_state`, written once: tests damage copies."""
  directory = tmp_path_factory.mktemp('two_steps')
  _saved_steps(directory)
  return str(directory)


def _files(step_dir) -> list[str]:
  """Every file of a step, relative to it: whatever orbax writes, and SHA256SUMS."""
  return sorted(
      os.path.relpath(os.path.join(root, name), step_dir)
      for root, _, names in os.walk(step_dir)
      for name in names
  )


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


def _garble(path: str) -> None:
  size = os.path.getsize(path)
  with open(path, 'wb') as f:
    f.write(np.random.default_rng(0).bytes(size))


FILE_DAMAGE = {
    'truncated to zero': lambda path: os.truncate(path, 0),
    'truncated to half': lambda path: os.truncate(path, os.path.getsize(path) // 2),
    'garbage': _garble,
}


def _assert_one_report(records, step: int, *words: str) -> None:
  """One warning, naming the step and `words`, says the step was skipped; orbax adds no error."""
  reports = [r.getMessage() for r in records if f'Checkpoint step {step} ' in r.getMessage()]
  assert len(reports) == 1, reports
  assert 'cannot be restored' in reports[0] and all(w in reports[0] for w in words), reports[0]
  assert not [r for r in records if r.levelno >= logging.ERROR], [r.getMessage() for r in records]


def _assert_restored(restored, step: int) -> None:
  jax.tree.map(np.testing.assert_array_equal, restored, _state(step))


@pytest.mark.parametrize('damage', FILE_DAMAGE)
def test_damage_to_any_file_of_the_latest_step_falls_back_to_the_previous_one(
    two_steps, tmp_path, caplog, subtests, damage
):
  caplog.set_level(logging.WARNING, logger='absl')
  files = _files(os.path.join(two_steps, '2'))
  # Found by walking the step: files a newer orbax adds are damaged too.
  assert {checkpoint.FILE_CHECKSUMS, 'metrics/metrics', '_CHECKPOINT_METADATA'} <= set(files)
  empty = [name for name in files if not os.path.getsize(os.path.join(two_steps, '2', name))]
  assert not empty, f'truncation cannot damage empty files: {empty}'
  for i, name in enumerate(files):
    with subtests.test(file=name):
      directory = str(tmp_path / str(i))
      shutil.copytree(two_steps, directory)
      FILE_DAMAGE[damage](os.path.join(directory, '2', name))
      caplog.clear()
      ckpts = checkpoint.Checkpoints(directory, keep_last=2, asynchronous=False)
      try:
        _assert_restored(ckpts.restore_latest(_state(0)), 1)
        assert ckpts.steps() == [1]
      finally:
        ckpts.close()
      _assert_one_report(caplog.records, 2, name, os.path.join(directory, '2.damaged'))
      assert os.path.isdir(os.path.join(directory, '2.damaged'))


def _rehash(step_dir: str) -> None:
  """Rewrites SHA256SUMS from the files as they are now."""
  sums = os.path.join(step_dir, checkpoint.FILE_CHECKSUMS)
  os.remove(sums)
  lines = []
  for name in _files(step_dir):
    with open(os.path.join(step_dir, name), 'rb') as f:
      lines.append(f'{hashlib.sha256(f.read()).hexdigest()}  {name}\n')
  with open(sums, 'w') as f:
    f.writelines(lines)


def _add_file(step_dir: str) -> None:
  with open(os.path.join(step_dir, checkpoint.STATE, 'd', 'stray'), 'wb') as f:
    f.write(b'stray')


DAMAGE = {
    # Silent without checksums: orbax's compressed chunks carry no checksum of their own.
    'flipped byte': (
        lambda d: _flip_one_byte(_data_files(d)[-1]),
        r'state/\S+ differs from its SHA-256 in SHA256SUMS',
    ),
    'deleted chunk': (lambda d: os.remove(_data_files(d)[-1]), r'state/\S+ is missing'),
    'deleted checksums item': (
        lambda d: shutil.rmtree(os.path.join(d, checkpoint.CHECKSUMS)),
        r'checksums/commit_success.txt is missing \(and 1 more\)',
    ),
    'added file': (_add_file, r'state/d/stray is not listed in SHA256SUMS'),
    # Bytes changed before SHA256SUMS was written (e.g. while being written): the checksums of
    # the arrays, taken in memory before the save, catch them when restored.
    'changed before it was hashed': (
        lambda d: (_flip_one_byte(_data_files(d)[-1]), _rehash(d)),
        r'CheckpointError: 1 arrays differ from the checksums saved with them \(first: params/w\)',
    ),
}


# Orbax's reader thread may touch its closed event loop after a failed read: harmless.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('damage', DAMAGE)
def test_damaged_latest_step_falls_back_to_the_previous_one(two_steps, tmp_path, caplog, damage):
  caplog.set_level(logging.WARNING, logger='absl')
  shutil.copytree(two_steps, tmp_path, dirs_exist_ok=True)
  mutate, reason = DAMAGE[damage]
  mutate(str(tmp_path / '2'))
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep_last=2, asynchronous=False)
  _assert_restored(ckpts.restore_latest(_state(0)), 1)
  _assert_one_report(caplog.records, 2, str(tmp_path / '2.damaged'))
  assert re.search(reason, caplog.text), caplog.text
  # The run goes on from step 1 and writes step 2 again; the damaged one stays for inspection.
  ckpts.save(2, _state(2))
  ckpts.wait()
  _assert_restored(ckpts.restore(2, _state(0)), 2)
  ckpts.close()
  assert sorted(os.listdir(tmp_path)) == ['1', '2', '2.damaged']


def test_no_intact_step_is_an_error_not_a_silent_restart(two_steps, tmp_path):
  shutil.copytree(two_steps, tmp_path, dirs_exist_ok=True)
  for step in (1, 2):
    _flip_one_byte(_data_files(str(tmp_path / str(step)))[-1])
  for _ in range(2):  # a rerun too: nothing was moved, nothing starts over
    with pytest.raises(checkpoint.CheckpointError, match='No checkpoint in .* restores') as e:
      checkpoint.Checkpoints(str(tmp_path), keep_last=2, asynchronous=False)
    assert sorted(os.listdir(tmp_path)) == ['1', '2']
  assert re.search(
      r'\n  step 2: state/\S+ differs from its SHA-256 in SHA256SUMS\n  step 1: state/',
      str(e.value),
  ), str(e.value)
  assert 'delete that directory' in str(e.value)


def test_intact_steps_that_do_not_fit_the_target_stay_and_are_an_error(two_steps, tmp_path):
  shutil.copytree(two_steps, tmp_path, dirs_exist_ok=True)
  other_model = _state(0)
  other_model['params']['extra'] = np.zeros((3,), np.float32)  # as after a config change
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep_last=2, asynchronous=False)
  with pytest.raises(checkpoint.CheckpointError, match='No checkpoint in .* restores') as e:
    ckpts.restore_latest(other_model)
  assert '\n  step 2: ' in str(e.value) and '\n  step 1: ' in str(e.value)
  assert 'restore it or use a new workdir' in str(e.value)
  assert ckpts.steps() == [1, 2]  # restoring the config resumes from step 2
  ckpts.close()


@pytest.mark.parametrize(
    'partial',
    [
        '3.orbax-checkpoint-tmp',  # killed while orbax writes the step
        '3.orbax-checkpoint-tmp.sealing',  # killed while its SHA256SUMS is written
    ],
)
def test_partially_written_step_is_reported_removed_and_ignored(
    two_steps, tmp_path, caplog, partial
):
  caplog.set_level(logging.WARNING, logger='absl')
  shutil.copytree(two_steps, tmp_path, dirs_exist_ok=True)
  shutil.copytree(tmp_path / '2', tmp_path / partial)  # as a kill leaves it
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep_last=2, asynchronous=False)
  assert int(ckpts.restore_latest(_state(0))['step']) == 2
  assert f"['{partial}']" in caplog.text and 'partially written' in caplog.text
  ckpts.save(3, _state(3))  # the resumed run writes step 3 again (orbax's removal is done by then)
  ckpts.wait()
  assert sorted(os.listdir(tmp_path)) == ['2', '3']
  _assert_restored(ckpts.restore(3, _state(0)), 3)
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


def test_truncated_metrics_of_the_latest_checkpoint_of_a_run_resume_from_the_previous_one(
    tmp_path, data_dir, reference
):
  # Orbax reads every step's metrics as it opens the directory, before any restore.
  workdir = tmp_path / 'run'
  ckpt_dir = harness.copy_checkpoints(reference, workdir)
  os.truncate(os.path.join(ckpt_dir, '12', 'metrics', 'metrics'), 0)
  proc = test_train.run(str(workdir), data_dir, harness.CONFIG, *harness.STEPS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  reports = [line for line in proc.stderr.splitlines() if 'Checkpoint step 12 ' in line]
  assert len(reports) == 1, proc.stderr[-3000:]
  assert 'metrics/metrics differs from its SHA-256' in reports[0], reports[0]
  assert 'Traceback' not in proc.stderr and 'JSONDecodeError' not in proc.stderr
  assert 'Resumed from step 8' in proc.stdout
  harness.assert_same_params(workdir, reference)
  assert os.path.isdir(os.path.join(ckpt_dir, '12.damaged'))
  assert harness.assert_checkpoints_intact(ckpt_dir) == [8, 12]  # step 12 written again


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
