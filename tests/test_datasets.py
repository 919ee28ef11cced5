"""Tests for the DFEW, FERV39k and MAFW builders on miniature copies of the official layouts.

Every fixture writes the folders and split files exactly as the authors ship them (1-based DFEW
labels, '(single-labeled)' and 'Train & Test Set' folder names, frame numbers without zero padding
so lexicographic order would be wrong). Frame i of a clip is flat grey at BRIGHTNESS_STEP * i,
so decoding a stored clip tells its frame order.
"""

import builtins
import io
import logging
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from feadapter_jax import data  # noqa: F401  (registers the builders)
from feadapter_jax import faces
from feadapter_jax.data import dfew
from feadapter_jax.data import ferv39k
from feadapter_jax.data import clip_folders
from feadapter_jax.data import video_io
from tests import test_predict

BRIGHTNESS_STEP = 20
NUM_FRAMES = 12  # > 9, so '_10' sorts before '_2' lexicographically.
FRAME_SIZE = 16

# DFEW: clip id -> 1-based label; clip k-th in this list is the test clip of set_k.
DFEW_CLIPS = {1: 1, 23: 4, 456: 7, 7890: 2, 12345: 5}
DFEW_ALL_CORRUPT = 99  # Listed in every train split; every frame is garbage.
DFEW_DAMAGED = 23  # Frames 5, 7, 9 and 11 are bad in four different ways.
DFEW_DAMAGED_FRAMES = {5: 'garbage', 7: 'empty', 9: 'truncated', 11: 'denied'}


def _jpeg(index: int) -> bytes:
  buffer = io.BytesIO()
  Image.new('RGB', (FRAME_SIZE, FRAME_SIZE), (BRIGHTNESS_STEP * index,) * 3).save(
      buffer, format='JPEG', quality=95
  )
  return buffer.getvalue()


def _write_clip(clip_dir, prefix: str, num_frames: int = NUM_FRAMES) -> None:
  os.makedirs(clip_dir, exist_ok=True)
  for i in range(1, num_frames + 1):
    with open(os.path.join(clip_dir, f'{prefix}{i}.jpg'), 'wb') as f:
      f.write(_jpeg(i))


def _write(path, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)


def _frame_indices(encoded_frames) -> list[int]:
  """Frame indices recovered from stored JPEG bytes (brightness / step)."""
  return [
      int(
          round(
              float(tf.reduce_mean(tf.cast(tf.io.decode_jpeg(f, channels=3), tf.float32)))
              / BRIGHTNESS_STEP
          )
      )
      for f in encoded_frames
  ]


def _build(name: str, data_dir, manual_dir) -> tfds.core.DatasetBuilder:
  builder = tfds.builder(name, data_dir=os.fspath(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
  )
  return builder


def _read(builder, split: str) -> dict[str, dict]:
  """clip_id -> example with 'video' left as encoded JPEG strings."""
  ds = builder.as_dataset(split=split, decoders={'video': tfds.decode.SkipDecoding()})
  return {ex['clip_id'].decode(): ex for ex in tfds.as_numpy(ds)}


# ---------------------------------------------------------------------------------------------
# DFEW


def make_dfew(root, num_frames: int = NUM_FRAMES, damaged: bool = False) -> None:
  """Writes a miniature DFEW: 5 labelled clips, one per test fold, originals as mp4."""
  ids = list(DFEW_CLIPS)
  for k in range(1, 6):
    test_ids = [ids[k - 1]]
    train_ids = [i for i in ids if i not in test_ids] + ([DFEW_ALL_CORRUPT] if damaged else [])
    for split, split_ids in (('train', train_ids), ('test', test_ids)):
      rows = ''.join(f'{i},{DFEW_CLIPS.get(i, 3)}\n' for i in split_ids)
      _write(
          os.path.join(root, 'EmoLabel_DataSplit', f'{split}(single-labeled)', f'set_{k}.csv'),
          'video_name,label\n' + rows,
      )
  originals = os.path.join(root, 'Clip', 'original')
  os.makedirs(originals, exist_ok=True)
  for i in ids:
    _write_clip(os.path.join(root, 'Clip', 'clip_224x224', f'{i:05d}'), f'{i:05d}_', num_frames)
    _write_clip(os.path.join(root, 'Clip', 'clip_224x224_16f', f'{i:05d}'), f'{i:05d}_', 4)
    video_io.write_video(
        os.path.join(originals, f'{i:05d}.mp4'),
        (
            np.full((FRAME_SIZE, FRAME_SIZE, 3), BRIGHTNESS_STEP * n, np.uint8)
            for n in range(1, num_frames + 1)
        ),
    )
  if damaged:
    damaged_frame = os.path.join(
        root, 'Clip', 'clip_224x224', f'{DFEW_DAMAGED:05d}', f'{DFEW_DAMAGED:05d}_{{}}.jpg'
    )
    _write(damaged_frame.format(5), 'not a jpeg')
    _write(damaged_frame.format(7), '')
    with open(damaged_frame.format(9), 'wb') as f:
      f.write(_jpeg(9)[:-8])  # Truncated: end of the scan and EOI marker lost.
    for frames_dir in ('clip_224x224', 'clip_224x224_16f'):
      bad = os.path.join(root, 'Clip', frames_dir, f'{DFEW_ALL_CORRUPT:05d}')
      for n in (1, 2):
        _write(os.path.join(bad, f'{DFEW_ALL_CORRUPT:05d}_{n}.jpg'), 'garbage')
    # The original of one clip is garbage: that clip is skipped from fold<k>_original.
    _write(os.path.join(originals, f'{ids[-1]:05d}.mp4'), 'garbage')
    _write(os.path.join(originals, f'{DFEW_ALL_CORRUPT:05d}.mp4'), 'garbage')


@pytest.fixture(scope='module')
def dfew_dirs(tmp_path_factory):
  manual = tmp_path_factory.mktemp('dfew_manual')
  make_dfew(manual, damaged=True)
  return manual, tmp_path_factory.mktemp('dfew_tfds')


@pytest.fixture(scope='module')
def dfew_fold1(dfew_dirs):
  manual, data_dir = dfew_dirs
  denied = os.path.join(
      manual, 'Clip', 'clip_224x224', f'{DFEW_DAMAGED:05d}', f'{DFEW_DAMAGED:05d}_11.jpg'
  )
  real_open = builtins.open

  def open_denying_one_frame(file, *args, **kwargs):
    # chmod 000 does not stop root (as tests may run), so the OS's PermissionError is simulated.
    if isinstance(file, (str, os.PathLike)) and os.fspath(file) == denied:
      raise PermissionError(13, 'Permission denied', denied)
    return real_open(file, *args, **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(builtins, 'open', open_denying_one_frame)
    return _build('dfew/fold1', data_dir, manual)


def test_dfew_counts_labels_and_ids(dfew_fold1):
  train, test = _read(dfew_fold1, 'train'), _read(dfew_fold1, 'test')
  label = dfew_fold1.info.features['label']

  assert label.names == ['Happy', 'Sad', 'Neutral', 'Angry', 'Surprise', 'Disgust', 'Fear']
  assert sorted(test) == ['00001']
  assert sorted(train) == ['00023', '00456', '07890', '12345']  # 00099 skipped: all corrupt.
  for clip_id, ex in {**train, **test}.items():
    assert label.int2str(ex['label']) == label.names[DFEW_CLIPS[int(clip_id)] - 1]
  assert label.int2str(train['00456']['label']) == 'Fear'  # CSV label 7, 1-based.


def test_dfew_frames_in_temporal_order_and_kept_byte_for_byte(dfew_fold1, dfew_dirs):
  manual, _ = dfew_dirs
  ex = _read(dfew_fold1, 'test')['00001']

  assert ex['video'].dtype == object and ex['num_frames'] == NUM_FRAMES == len(ex['video'])
  assert _frame_indices(ex['video']) == list(range(1, NUM_FRAMES + 1))
  with open(os.path.join(manual, 'Clip', 'clip_224x224', '00001', '00001_10.jpg'), 'rb') as f:
    assert ex['video'][9] == f.read()


def test_dfew_decoded_video_feature(dfew_fold1):
  ex = next(iter(tfds.as_numpy(dfew_fold1.as_dataset(split='test'))))
  assert ex['video'].shape == (NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3)
  assert ex['video'].dtype == np.uint8


def test_dfew_corrupt_frames_skipped_and_reported(dfew_fold1):
  ex = _read(dfew_fold1, 'train')[f'{DFEW_DAMAGED:05d}']
  good = [n for n in range(1, NUM_FRAMES + 1) if n not in DFEW_DAMAGED_FRAMES]
  assert _frame_indices(ex['video']) == good
  assert ex['num_frames'] == len(good)

  # The report is read back from the prepared dataset, not only from the live builder.
  report = tfds.builder('dfew/fold1', data_dir=dfew_fold1.data_dir_root).build_report
  assert report.examples_per_split == {'train': 4, 'test': 1}
  skipped = {os.path.basename(s.path): s for s in report.skipped_frames}
  # Every bad frame is listed, those of the clip skipped as a whole too.
  assert sorted(skipped) == sorted(
      [f'{DFEW_DAMAGED:05d}_{n}.jpg' for n in DFEW_DAMAGED_FRAMES] + ['00099_1.jpg', '00099_2.jpg']
  )
  assert 'empty' in skipped['00023_7.jpg'].reason
  assert 'Permission denied' in skipped['00023_11.jpg'].reason
  assert skipped['00023_9.jpg'].clip_id == '00023' and skipped['00099_1.jpg'].clip_id == '00099'
  assert all(s.split == 'train' for s in skipped.values())
  assert [(s.clip_id, s.split) for s in report.skipped_clips] == [('00099', 'train')]
  assert (
      '00099' in report.summary()
      and 'Skipped clips (unreadable, or no face found): 1' in report.summary()
  )


def test_dfew_fold_membership(dfew_dirs, dfew_fold1):
  manual, data_dir = dfew_dirs
  fold2 = _build('dfew/fold2', data_dir, manual)
  assert sorted(_read(fold2, 'test')) == ['00023']
  assert '00023' in _read(dfew_fold1, 'train') and '00023' not in _read(dfew_fold1, 'test')
  assert '00001' in _read(fold2, 'train')


def test_dfew_16f_and_original_video_sources(dfew_dirs):
  manual, data_dir = dfew_dirs
  f16 = _read(_build('dfew/fold1_16f', data_dir, manual), 'train')
  assert {ex['num_frames'] for ex in f16.values()} == {4}

  original = _build('dfew/fold1_original', data_dir, manual)
  test = _read(original, 'test')['00001']
  assert test['num_frames'] == NUM_FRAMES
  assert _frame_indices(test['video']) == list(range(1, NUM_FRAMES + 1))
  # Garbage videos of 12345 and 00099 are skipped clips, not errors.
  assert sorted(_read(original, 'train')) == ['00023', '00456', '07890']
  skipped = original.build_report.skipped_clips
  assert sorted(s.clip_id for s in skipped) == ['00099', '12345']
  assert all('cannot open' in s.reason for s in skipped)


def test_dfew_original_faces_stores_the_aligned_crops_predict_makes(tmp_path):
  """fold<k>_original_faces: every frame of a video cropped by feadapter_jax.faces, the code
  predict crops users' videos with; a video without a face is a skipped clip."""
  manual = tmp_path / 'manual'
  make_dfew(manual)
  originals = manual / 'Clip' / 'original'
  astronaut, _ = test_predict._astronaut_video(originals / '00001.mp4', 6)
  test_predict._astronaut_video(originals / '00023.mp4', 4)  # TFDS refuses an empty split
  builder = _build('dfew/fold1_original_faces', tmp_path / 'tfds', manual)

  (stored,) = _read(builder, 'test').values()  # 00001, fold 1's test clip
  crops = np.stack([tf.io.decode_jpeg(f).numpy() for f in stored['video']])
  config = faces.FaceConfig()
  frames = list(video_io.iter_frames(astronaut))
  track = faces.face_track(frames, config, faces.make_detector('detect', config))
  expected = np.stack([faces.aligned_crop(f, face, config) for f, face in zip(frames, track)])
  assert crops.shape == (6, 224, 224, 3)
  assert np.abs(crops.astype(int) - expected.astype(int)).mean() < 3.0  # JPEG's loss only
  # The flat grey videos of the train split hold no face: skipped, counted, nothing zero-filled.
  assert list(_read(builder, 'train')) == ['00023']
  skipped = builder.build_report.skipped_clips
  assert sorted(s.clip_id for s in skipped) == ['00456', '07890', '12345']
  assert all('no face found' in s.reason for s in skipped)


def test_dfew_loads_through_tfds_load(dfew_dirs, dfew_fold1):
  _, data_dir = dfew_dirs
  ds = tfds.load('dfew/fold1', split='test', data_dir=os.fspath(data_dir), download=False)
  assert [ex['clip_id'].numpy() for ex in ds] == [b'00001']


# ---------------------------------------------------------------------------------------------
# Bad layouts: each fails before writing, naming the file, the line and the fix.


def _dfew_error(tmp_path, mutate, config='dfew/fold1') -> clip_folders.DataLayoutError:
  manual = tmp_path / 'manual'
  make_dfew(manual, num_frames=2)
  mutate(manual)
  with pytest.raises(clip_folders.DataLayoutError) as e:
    _build(config, tmp_path / 'tfds', manual)
  assert 'Fix:' in str(e.value)
  return e.value


def _set_csv(manual, split='test', k=1):
  return os.path.join(manual, 'EmoLabel_DataSplit', f'{split}(single-labeled)', f'set_{k}.csv')


def test_missing_manual_dir(tmp_path):
  with pytest.raises(clip_folders.DataLayoutError, match='manual directory missing') as e:
    _build('dfew/fold1', tmp_path / 'tfds', tmp_path / 'nowhere')
  assert 'nowhere' in str(e.value) and 'dfew-dataset.github.io' in str(e.value)


def test_manual_dir_without_dataset(tmp_path):
  (tmp_path / 'manual' / 'something_else').mkdir(parents=True)
  with pytest.raises(clip_folders.DataLayoutError, match='EmoLabel_DataSplit/ not found'):
    _build('dfew/fold1', tmp_path / 'tfds', tmp_path / 'manual')


def test_dataset_inside_one_extra_folder_is_found(tmp_path):
  make_dfew(tmp_path / 'manual' / 'DFEW', num_frames=2)
  builder = _build('dfew/fold1', tmp_path / 'tfds', tmp_path / 'manual')
  assert builder.info.splits['test'].num_examples == 1


def test_missing_split_file(tmp_path):
  error = _dfew_error(tmp_path, lambda m: os.remove(_set_csv(m, k=3)), config='dfew/fold3')
  assert error.path.endswith(os.path.join('test(single-labeled)', 'set_3.csv'))
  assert 'split file not found' in str(error)


def test_missing_frames_folder(tmp_path):
  error = _dfew_error(tmp_path, lambda m: _write(_set_csv(m), 'video_name,label\n1,1\n77,2\n'))
  assert error.line == 3
  assert "'00077'" in str(error) and os.path.join('clip_224x224', '00077') in str(error)
  assert 'set_1.csv, line 3' in str(error)


def test_empty_frames_folder(tmp_path):
  def mutate(manual):
    _write(_set_csv(manual), 'video_name,label\n77,2\n')
    os.makedirs(os.path.join(manual, 'Clip', 'clip_224x224', '00077'))

  assert "'00077'" in str(_dfew_error(tmp_path, mutate))


def test_missing_original_video(tmp_path):
  error = _dfew_error(
      tmp_path,
      lambda m: os.remove(os.path.join(m, 'Clip', 'original', '00001.mp4')),
      config='dfew/fold1_original',
  )
  assert 'no video file' in str(error) and '00001.mp4' in str(error)


@pytest.mark.parametrize(
    'rows,line,problem',
    [
        ('1,8\n', 2, 'outside 1..7'),
        ('1,0\n', 2, 'outside 1..7'),
        ('1,1\nabc\n', 3, 'expected 2 comma-separated fields'),
        ('1;1\n', 2, 'expected 2'),
        ('one,1\n', 2, 'must be integers'),
        ('1,1\n\n1,2\n', 4, 'listed twice (first on line 2)'),
    ],
)
def test_bad_dfew_split_lines(tmp_path, rows, line, problem):
  error = _dfew_error(tmp_path, lambda m: _write(_set_csv(m), 'video_name,label\n' + rows))
  assert error.line == line and problem in str(error) and 'set_1.csv' in str(error)


def test_bad_dfew_header(tmp_path):
  error = _dfew_error(tmp_path, lambda m: _write(_set_csv(m), '1,1\n'))
  assert error.line == 1 and "'video_name,label'" in str(error)


# ---------------------------------------------------------------------------------------------
# FERV39k

FERV_CLIPS = {  # path -> split
    'Action/Angry/0001': 'train',
    'Action/Happy/0002': 'train',
    'Crime/Happy/0010': 'train',
    'Crime/Surprise/0001': 'test',
    'Action/Fear/0003': 'test',
}


def make_ferv39k(root) -> None:
  for split in ('train', 'test'):
    _write(
        os.path.join(root, '4_setups', 'All_scenes', f'{split}_All.csv'),
        ''.join(f'{p} {p.split("/")[1]}\n' for p, s in FERV_CLIPS.items() if s == split),
    )
  for path in FERV_CLIPS:
    _write_clip(os.path.join(root, '2_ClipsforFaceCrop', *path.split('/')), '')


def test_ferv39k(tmp_path):
  make_ferv39k(tmp_path / 'manual')
  builder = _build('ferv39k', tmp_path / 'tfds', tmp_path / 'manual')
  train, test = _read(builder, 'train'), _read(builder, 'test')
  label = builder.info.features['label']

  assert label.names == ['Angry', 'Disgust', 'Fear', 'Happy', 'Neutral', 'Sad', 'Surprise']
  assert sorted(train) == ['Action/Angry/0001', 'Action/Happy/0002', 'Crime/Happy/0010']
  assert sorted(test) == ['Action/Fear/0003', 'Crime/Surprise/0001']
  for clip_id, ex in {**train, **test}.items():
    scene, emotion, _ = clip_id.split('/')
    assert label.int2str(ex['label']) == emotion
    assert ex['scene'].decode() == scene
    assert _frame_indices(ex['video']) == list(range(1, NUM_FRAMES + 1))


@pytest.mark.parametrize(
    'line,problem',
    [
        ('Action/Angry/0001 Joy', "label 'Joy' is not one of the 7 classes"),
        ('Action/Angry/0001', 'a clip path and a label'),
        ('Action/0001 Angry', 'is not <Scene>/<Emotion>/<NNNN>'),
    ],
)
def test_bad_ferv39k_split_lines(tmp_path, line, problem):
  make_ferv39k(tmp_path / 'manual')
  split_file = tmp_path / 'manual' / '4_setups' / 'All_scenes' / 'test_All.csv'
  split_file.write_text(f'Crime/Surprise/0001 Surprise\n{line}\n')
  with pytest.raises(clip_folders.DataLayoutError) as e:
    _build('ferv39k', tmp_path / 'tfds', tmp_path / 'manual')
  assert e.value.line == 2 and problem in str(e.value) and 'test_All.csv' in str(e.value)
  assert 'Fix:' in str(e.value)


def test_label_spelling_variants(tmp_path):
  builder = ferv39k.Ferv39k(data_dir=os.fspath(tmp_path))
  assert [builder._label_index(s) for s in ('Surprise', 'surprise', 'Surprised', 'happiness')] == [
      6,
      6,
      6,
      3,
  ]
  dfew_builder = dfew.Dfew(config='fold1', data_dir=os.fspath(tmp_path))
  assert dfew_builder._parse_split_line('7, 3').clip_id == '00007'


# ---------------------------------------------------------------------------------------------
# MAFW

MAFW_SPLITS = (('03747', 'anger'), ('00012', 'helplessness'), ('10045', 'disappointment'))


def make_mafw(root, frames_dir: str) -> None:
  """Clip k-th of MAFW_SPLITS is the test clip of set_k (k = 1..3)."""
  for k in range(1, 6):
    split_dir = os.path.join(root, 'Train & Test Set', 'single', 'no_caption', f'set_{k}')
    for split in ('train', 'test'):
      lines = [
          f'{clip_id}.mp4 {label}\n'
          for i, (clip_id, label) in enumerate(MAFW_SPLITS, 1)
          if (i == k) == (split == 'test')
      ]
      _write(os.path.join(split_dir, f'{split}.txt'), ''.join(lines))
  for clip_id, _ in MAFW_SPLITS:
    _write_clip(os.path.join(root, frames_dir, clip_id), 'img_')


@pytest.mark.parametrize('frames_dir', ['data/frames', 'data/faces'])
def test_mafw(tmp_path, frames_dir, caplog):
  caplog.set_level(logging.INFO, logger='absl')
  make_mafw(tmp_path / 'manual', frames_dir)
  fold2 = _build('mafw/fold2', tmp_path / 'tfds', tmp_path / 'manual')
  train, test = _read(fold2, 'train'), _read(fold2, 'test')
  label = fold2.info.features['label']

  assert label.names == [
      'anger',
      'disgust',
      'fear',
      'happiness',
      'neutral',
      'sadness',
      'surprise',
      'contempt',
      'anxiety',
      'helplessness',
      'disappointment',
  ]
  assert sorted(test) == ['00012'] and sorted(train) == ['03747', '10045']
  for clip_id, label_name in MAFW_SPLITS:
    ex = {**train, **test}[clip_id]
    assert label.int2str(ex['label']) == label_name
    assert _frame_indices(ex['video']) == list(range(1, NUM_FRAMES + 1))
  assert 'Examples written: train=2' in caplog.text  # The build report is logged.


@pytest.mark.parametrize(
    'line,problem',
    [
        ('03747.mp4 joy', "label 'joy' is not one of the 11 classes"),
        ('03747.mp4', 'expected 2 space-separated fields, found 1'),
        ('03747 anger', 'is not a video file name'),
    ],
)
def test_bad_mafw_split_lines(tmp_path, line, problem):
  make_mafw(tmp_path / 'manual', 'data/frames')
  split_path = os.path.join('Train & Test Set', 'single', 'no_caption', 'set_1', 'train.txt')
  split_file = tmp_path / 'manual' / split_path
  split_file.write_text(f'00012.mp4 helplessness\n{line}\n')
  with pytest.raises(clip_folders.DataLayoutError) as e:
    _build('mafw/fold1', tmp_path / 'tfds', tmp_path / 'manual')
  assert e.value.line == 2 and problem in str(e.value)
  assert split_path in str(e.value)


def test_mafw_missing_frames_root(tmp_path):
  make_mafw(tmp_path / 'manual', 'data/elsewhere')
  with pytest.raises(clip_folders.DataLayoutError, match='data/frames/ or data/faces/') as e:
    _build('mafw/fold1', tmp_path / 'tfds', tmp_path / 'manual')
  assert "'_original'" in str(e.value)  # The fix names the other source.


# ---------------------------------------------------------------------------------------------
# Shared helpers


def test_natural_sort_and_frame_listing(tmp_path):
  for name in ('x_10.jpg', 'x_2.png', 'x_1.JPG', '._x_3.jpg', 'notes.txt', 'x_01.jpg'):
    (tmp_path / name).write_bytes(b'')
  assert [os.path.basename(p) for p in clip_folders.list_frame_files(tmp_path)] == [
      'x_01.jpg',
      'x_1.JPG',
      'x_2.png',
      'x_10.jpg',
  ]


def test_non_jpeg_frame_is_converted(tmp_path):
  path = tmp_path / 'f.png'
  Image.new('RGB', (8, 8), (200, 10, 10)).save(path)
  decoded = tf.io.decode_jpeg(clip_folders.load_frame_jpeg(path)).numpy()
  np.testing.assert_allclose(decoded.reshape(-1, 3).mean(0), (200, 10, 10), atol=6)


def test_prepare_cli_builds_a_fold_and_prints_the_report(tmp_path):
  manual = tmp_path / 'manual'
  make_dfew(manual, damaged=True)
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'feadapter_jax.data.prepare',
          '--dataset=dfew/fold2',
          f'--manual_dir={manual}',
          f'--data_dir={tmp_path / "tfds"}',
      ],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'Prepared dfew/fold2' in proc.stdout
  assert f'{DFEW_ALL_CORRUPT:05d}' in proc.stdout  # the skipped clip is reported by id
