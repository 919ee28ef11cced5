"""A DFEW copy with broken files, trained on with configs/dfew.py (tiny ViT): the build skips and
reports each bad frame and clip with its path and the counts, never zero-fills, and training on
the rest runs; a wrong label stops the run naming the file and line. tests/test_datasets.py
covers each builder's faults one at a time (permission denied, duplicate ids, bad lines...)."""

import os

import pytest
import tensorflow_datasets as tfds

from tests import test_datasets
from tests import test_train

CONFIG = 'tests/reliability/dfew_tiny.py:fold=1'
TRAIN = [
    '--config.data.image_size=32',
    '--config.data.num_frames=4',
    '--config.batch_size=2',
    '--config.eval_batch_size=1',
    '--config.total_steps=2',
    '--config.log_every_steps=1',
]
DANGLING, FOLDER, TRUNCATED_VIDEO = '00456_3.jpg', '07890_4.jpg', '00456.mp4'
# test_datasets' fixture helpers.
build = test_datasets._build  # pylint: disable=protected-access
read_clips = test_datasets._read  # pylint: disable=protected-access
frame_indices = test_datasets._frame_indices  # pylint: disable=protected-access
# Every frame fold 1's train split must skip, and why (from test_datasets' damage and ours).
SKIPPED_FRAMES = {
    '00023_5.jpg': 'not an image format',
    '00023_7.jpg': 'empty',
    '00023_9.jpg': 'truncated',
    '00099_1.jpg': 'not an image format',
    '00099_2.jpg': 'not an image format',
    DANGLING: 'No such file',
    FOLDER: 'Is a directory',
}


def _frame(manual, name: str) -> str:
  return os.path.join(manual, 'Clip', 'clip_224x224', name.split('_')[0], name)


def make_broken_dfew(manual) -> None:
  """test_datasets' damaged DFEW (garbage, empty and truncated JPEGs in clip 00023, clip 00099
  all garbage, garbage mp4s of 12345 and 00099) plus what a bad copy or extraction leaves."""
  test_datasets.make_dfew(manual, damaged=True)
  os.remove(_frame(manual, DANGLING))
  os.symlink(os.path.join(manual, 'lost.jpg'), _frame(manual, DANGLING))
  os.remove(_frame(manual, FOLDER))
  os.mkdir(_frame(manual, FOLDER))
  video = os.path.join(manual, 'Clip', 'original', TRUNCATED_VIDEO)
  os.truncate(video, os.path.getsize(video) // 2)


@pytest.fixture(scope='module')
def broken_dfew(tmp_path_factory) -> str:
  manual = str(tmp_path_factory.mktemp('dfew_manual'))
  make_broken_dfew(manual)
  return manual


def test_bad_frames_are_skipped_reported_and_training_runs_on_the_rest(tmp_path, broken_dfew):
  data_dir = str(tmp_path / 'tfds')
  proc = test_train.run(
      str(tmp_path / 'run'), data_dir, CONFIG, f'--config.data.manual_dir={broken_dfew}', *TRAIN
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'step 2/2' in proc.stdout and 'Results (final step, test): UAR' in proc.stdout
  # The user sees each skipped file with its reason, and the counts, in the run's log...
  assert f'Skipped corrupt/unreadable frames: {len(SKIPPED_FRAMES)}' in proc.stderr
  assert 'Skipped clips (unreadable, or no face found): 1' in proc.stderr
  for name in SKIPPED_FRAMES:
    assert _frame(broken_dfew, name) in proc.stderr, name
  # ...and the same report is saved with the dataset.
  builder = tfds.builder('dfew/fold1', data_dir=data_dir)
  report = builder.build_report
  assert report.examples_per_split == {'train': 4, 'test': 1}
  skipped = {os.path.basename(s.path): s.reason for s in report.skipped_frames}
  assert skipped.keys() == SKIPPED_FRAMES.keys()
  for name, reason in SKIPPED_FRAMES.items():
    assert reason in skipped[name], (name, skipped[name])
  assert [s.clip_id for s in report.skipped_clips] == ['00099']
  # Nothing zero-filled: every other clip holds exactly its good frames, in order.
  train = read_clips(builder, 'train')
  assert sorted(train) == ['00023', '00456', '07890', '12345']
  for clip_id, example in train.items():
    lost = {int(name[6:-4]) for name in SKIPPED_FRAMES if name.startswith(clip_id)}
    good = [i for i in range(1, test_datasets.NUM_FRAMES + 1) if i not in lost]
    assert frame_indices(example['video']) == good, clip_id


def test_truncated_and_garbage_videos_are_skipped_and_reported(tmp_path, broken_dfew):
  builder = build('dfew/fold1_original', tmp_path, broken_dfew)
  report = builder.build_report
  skipped = {s.clip_id: s for s in report.skipped_clips}
  assert sorted(skipped) == ['00099', '00456', '12345']
  assert skipped['00456'].path.endswith(os.path.join('original', TRUNCATED_VIDEO))
  assert 'truncated' in skipped['00456'].reason
  assert report.examples_per_split == {'train': 2, 'test': 1}


def test_a_wrong_label_stops_the_run_naming_file_and_line(tmp_path, broken_dfew):
  manual = tmp_path / 'manual'
  test_datasets.make_dfew(manual, num_frames=2)
  split_file = manual / 'EmoLabel_DataSplit' / 'train(single-labeled)' / 'set_1.csv'
  split_file.write_text('video_name,label\n23,4\n456,9\n')
  proc = test_train.run(
      str(tmp_path / 'run'),
      str(tmp_path / 'tfds'),
      CONFIG,
      f'--config.data.manual_dir={manual}',
      *TRAIN,
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert f'error: {split_file}, line 3: label 9 is outside 1..7' in proc.stderr
  assert 'Fix:' in proc.stderr and 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')
