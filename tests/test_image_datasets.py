"""Tests for the RAF-DB, AffectNet, FER2013 and FERPlus builders on miniature official layouts.

Each fixture writes the files exactly as the authors ship them (RAF-DB's misspelt
list_patition_label.txt with 1-based labels, AffectNet's CSVs with semicolon-joined landmarks,
FER2013's pixel strings, FERPlus's vote counts). Images carry a distinct grey level or colour, so
a stored example tells which file it came from.
"""

import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from configs import common
from feadapter_jax import data  # noqa: F401  (registers the builders)
from feadapter_jax.data import affectnet
from feadapter_jax.data import clip_folders
from feadapter_jax.data import face_images
from feadapter_jax.data import fer2013
from feadapter_jax.data import ferplus
from feadapter_jax.data import pipeline

# Largest |stored - CSV| grey level of a FER2013 face stored at quality 100 and decoded as the
# pipeline decodes (INTEGER_ACCURATE DCT): 1, measured on these faces and on uniform noise.
FER_MAX_ERROR = 1


def _write(path, content: str | bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb' if isinstance(content, bytes) else 'w') as f:
    f.write(content)


def _image(size: tuple[int, int], colour, fmt: str = 'JPEG') -> bytes:
  buffer = io.BytesIO()
  Image.new('RGB', size, colour).save(buffer, format=fmt, quality=95)
  return buffer.getvalue()


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


def _pixels(ex) -> np.ndarray:
  """The one stored frame of an example, decoded as the pipeline decodes it."""
  assert ex['num_frames'] == 1 and len(ex['video']) == 1
  return pipeline.decode_jpeg(ex['video'][0]).numpy()


def _error(name: str, tmp_path, manual) -> clip_folders.DataLayoutError:
  with pytest.raises(clip_folders.DataLayoutError) as e:
    _build(name, tmp_path / 'tfds', manual)
  assert 'Fix:' in str(e.value)
  return e.value


# ---------------------------------------------------------------------------------------------
# RAF-DB

# name -> (1-based label, grey level of its images)
RAF_IMAGES = {
    'train_00001.jpg': (5, 40),
    'train_00002.jpg': (1, 80),
    'train_00003.jpg': (7, 120),
    'train_00004.jpg': (2, 160),  # Its aligned file is corrupt.
    'test_0001.jpg': (4, 200),
    'test_0002.jpg': (6, 240),
}
RAF_CORRUPT = 'train_00004'
RAF_LABELS = os.path.join('basic', 'EmoLabel', 'list_patition_label.txt')


def make_rafdb(root) -> None:
  _write(
      os.path.join(root, RAF_LABELS),
      ''.join(f'{name} {label}\n' for name, (label, _) in RAF_IMAGES.items()),
  )
  for name, (_, grey) in RAF_IMAGES.items():
    stem = name[: -len('.jpg')]
    aligned = b'garbage' if stem == RAF_CORRUPT else _image((24, 24), (grey,) * 3)
    _write(os.path.join(root, 'basic', 'Image', 'aligned', f'{stem}_aligned.jpg'), aligned)
    _write(os.path.join(root, 'basic', 'Image', 'original', name), _image((40, 30), (grey,) * 3))


@pytest.fixture(scope='module')
def rafdb_dirs(tmp_path_factory):
  manual = tmp_path_factory.mktemp('rafdb_manual')
  make_rafdb(manual)
  return manual, tmp_path_factory.mktemp('rafdb_tfds')


@pytest.fixture(scope='module')
def rafdb_aligned(rafdb_dirs):
  return _build('rafdb/aligned', rafdb_dirs[1], rafdb_dirs[0])


def test_rafdb_counts_labels_and_bytes(rafdb_aligned, rafdb_dirs):
  train, test = _read(rafdb_aligned, 'train'), _read(rafdb_aligned, 'test')
  label = rafdb_aligned.info.features['label']

  assert label.names == ['Surprise', 'Fear', 'Disgust', 'Happiness', 'Sadness', 'Anger', 'Neutral']
  assert sorted(train) == ['train_00001', 'train_00002', 'train_00003']
  assert sorted(test) == ['test_0001', 'test_0002']
  assert label.int2str(train['train_00001']['label']) == 'Sadness'  # 1-based 5
  assert label.int2str(test['test_0002']['label']) == 'Anger'
  for image_id, ex in {**train, **test}.items():
    expected_label, grey = RAF_IMAGES[f'{image_id}.jpg']
    assert ex['label'] == expected_label - 1
    assert abs(_pixels(ex).mean() - grey) < 2
  # Aligned JPEGs are stored byte for byte.
  path = os.path.join(rafdb_dirs[0], 'basic', 'Image', 'aligned', 'test_0001_aligned.jpg')
  with open(path, 'rb') as f:
    assert test['test_0001']['video'][0] == f.read()


def test_rafdb_corrupt_image_skipped_and_reported(rafdb_aligned):
  report = tfds.builder('rafdb/aligned', data_dir=rafdb_aligned.data_dir_root).build_report
  assert report.examples_per_split == {'train': 3, 'test': 2}
  [skipped] = report.skipped_clips
  assert (skipped.split, skipped.clip_id) == ('train', RAF_CORRUPT)
  assert skipped.path.endswith(f'{RAF_CORRUPT}_aligned.jpg') and 'not an image' in skipped.reason


def test_rafdb_original_config(rafdb_dirs):
  original = _build('rafdb/original', rafdb_dirs[1], rafdb_dirs[0])
  train = _read(original, 'train')
  assert len(train) == 4  # The original of the corrupt aligned image is fine.
  assert _pixels(train[RAF_CORRUPT]).shape == (30, 40, 3)


def test_pipeline_reads_rafdb_as_one_frame_clips(rafdb_aligned):
  config = common.data_defaults()
  config.update(
      name='rafdb',
      builder_config='aligned',
      data_dir=os.fspath(rafdb_aligned.data_dir_root),
      manual_dir='/nonexistent',  # Prepared already: the manual files are not needed.
      num_frames=1,
      image_size=16,
      shuffle_buffer=8,
  )
  assert pipeline.dataset_info(config).num_examples == {'train': 3, 'test': 2}
  shard = {'process_index': 0, 'process_count': 1}
  train = next(pipeline.make_train_iterator(config, batch_size=2, seed=0, **shard))
  test = next(pipeline.make_eval_iterator(config, 'test', batch_size=2, **shard))
  assert train['video'].shape == (2, 1, 16, 16, 3) and train['video'].dtype == np.uint8
  assert test['video'].shape == (2, 1, 1, 16, 16, 3) and test['video'].dtype == np.uint8
  assert sorted(test['label']) == [3, 5]  # Happiness, Anger


@pytest.mark.parametrize(
    'line,problem',
    [
        ('train_00001.jpg', 'expected 2 fields, found 1'),
        ('train_00001.jpg 8', "label '8' is not one of the codes 1 Surprise"),
        ('val_0001.jpg 3', 'is not a file name train_<N>.jpg or test_<N>.jpg'),
        ('train_00002.jpg 3', "'train_00002' is listed twice in split 'train' (first on line 1)"),
    ],
)
def test_bad_rafdb_lines(tmp_path, line, problem):
  make_rafdb(tmp_path / 'manual')
  path = tmp_path / 'manual' / RAF_LABELS
  path.write_text(f'train_00002.jpg 1\n{line}\n')
  error = _error('rafdb/aligned', tmp_path, tmp_path / 'manual')
  assert error.line == 2 and problem in str(error)
  assert f'{RAF_LABELS}, line 2' in str(error)


def test_rafdb_missing_image_and_folder(tmp_path):
  manual = tmp_path / 'manual'
  make_rafdb(manual)
  os.remove(manual / 'basic' / 'Image' / 'original' / 'test_0002.jpg')
  error = _error('rafdb/original', tmp_path, manual)
  assert error.line == 6 and "'test_0002' has no file at" in str(error)
  assert 'test_0002.jpg' in str(error) and '1 of 2 images' in str(error)

  os.rename(manual / 'basic' / 'Image' / 'aligned', manual / 'basic' / 'Image' / 'elsewhere')
  error = _error('rafdb/aligned', tmp_path, manual)
  assert 'image folder not found' in str(error) and "'original'" in str(error)


def test_missing_manual_dir_names_the_dataset(tmp_path):
  with pytest.raises(clip_folders.DataLayoutError, match='manual directory missing') as e:
    _build('rafdb/aligned', tmp_path / 'tfds', tmp_path / 'nowhere')
  assert 'whdeng.cn/RAF' in str(e.value)


# ---------------------------------------------------------------------------------------------
# AffectNet

AFFECTNET_HEADER = (
    'subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,'
    'valence,arousal\n'
)
LANDMARKS = ';'.join(f'{v:.2f}' for v in range(136))
IMAGE_W, IMAGE_H = 64, 48
BOX = (10, 5, 20, 30)  # x, y, w, h: red inside, grey outside.
RED = (230, 20, 20)


def _affectnet_row(path: str, box, expression: int) -> str:
  return f'{path},{",".join(map(str, box))},"{LANDMARKS}",{expression},0.5,-0.25\n'


def make_affectnet(root, validation_header: bool = True) -> None:
  lists = os.path.join(root, 'Manually_Annotated_file_lists')
  images = os.path.join(root, 'Manually_Annotated_Images')
  _write(
      os.path.join(lists, 'training.csv'),
      AFFECTNET_HEADER
      + _affectnet_row('1/a.png', BOX, 1)  # Happy
      + _affectnet_row('1/b.jpg', (40, 30, 40, 40), 7)  # Contempt, box beyond the image
      + _affectnet_row('2/c.jpg', (0, 0, 8, 8), 8)  # None: dropped (its file need not exist)
      + _affectnet_row('2/d.jpg', (0, 0, 8, 8), 10)  # No-Face: dropped
      + _affectnet_row('2/e.jpg', (0, 0, 8, 8), 0),  # Neutral, corrupt file
  )
  _write(
      os.path.join(lists, 'validation.csv'),
      (AFFECTNET_HEADER if validation_header else '')
      + _affectnet_row('3/f.jpg', (0, 0, IMAGE_W, IMAGE_H), 6),  # Anger
  )
  face = np.full((IMAGE_H, IMAGE_W, 3), 128, np.uint8)
  x, y, w, h = BOX
  face[y : y + h, x : x + w] = RED
  buffer = io.BytesIO()
  Image.fromarray(face).save(buffer, format='PNG')
  _write(os.path.join(images, '1', 'a.png'), buffer.getvalue())
  _write(os.path.join(images, '1', 'b.jpg'), _image((IMAGE_W, IMAGE_H), (90, 90, 90)))
  _write(os.path.join(images, '2', 'e.jpg'), _image((IMAGE_W, IMAGE_H), (0, 0, 0))[:50])
  _write(os.path.join(images, '3', 'f.jpg'), _image((IMAGE_W, IMAGE_H), (20, 200, 20)))


@pytest.fixture(scope='module')
def affectnet_dirs(tmp_path_factory):
  manual = tmp_path_factory.mktemp('affectnet_manual')
  make_affectnet(manual)
  return manual, tmp_path_factory.mktemp('affectnet_tfds')


def test_affectnet_7class_crops_drops_and_skips(affectnet_dirs):
  builder = _build('affectnet/7class', affectnet_dirs[1], affectnet_dirs[0])
  train, test = _read(builder, 'train'), _read(builder, 'test')
  label = builder.info.features['label']

  assert label.names == ['Neutral', 'Happy', 'Sad', 'Surprise', 'Fear', 'Disgust', 'Anger']
  assert sorted(train) == ['1/a.png'] and sorted(test) == ['3/f.jpg']
  assert label.int2str(train['1/a.png']['label']) == 'Happy'
  assert label.int2str(test['3/f.jpg']['label']) == 'Anger'
  crop = _pixels(train['1/a.png']).astype(int)
  assert crop.shape == (BOX[3], BOX[2], 3)  # exactly the box, all of it red
  assert np.abs(crop - RED).max() <= 8
  assert _pixels(test['3/f.jpg']).shape == (IMAGE_H, IMAGE_W, 3)

  report = builder.build_report
  assert report.dropped == {
      'train': {'Contempt (code 7, not in 7class)': 1, 'None (code 8)': 1, 'No-Face (code 10)': 1}
  }
  assert [(s.split, s.clip_id) for s in report.skipped_clips] == [('train', '2/e.jpg')]
  assert 'does not decode' in report.skipped_clips[0].reason
  assert 'No-Face (code 10)=1' in report.summary()


def test_affectnet_8class_keeps_contempt_with_a_clamped_box(affectnet_dirs):
  builder = _build('affectnet/8class', affectnet_dirs[1], affectnet_dirs[0])
  train = _read(builder, 'train')
  assert builder.info.features['label'].int2str(train['1/b.jpg']['label']) == 'Contempt'
  assert _pixels(train['1/b.jpg']).shape == (IMAGE_H - 30, IMAGE_W - 40, 3)
  assert builder.build_report.dropped == {'train': {'None (code 8)': 1, 'No-Face (code 10)': 1}}


def test_affectnet_crop_window_margin_and_outside_box():
  assert affectnet.crop_window((64, 48), (10, 5, 20, 30), 0.0) == (10, 5, 30, 35)
  # 0.25 of the box each side, rounded outwards, clamped at the top.
  assert affectnet.crop_window((64, 48), (10, 5, 20, 30), 0.25) == (5, 0, 35, 43)
  with pytest.raises(face_images.UnusableImage, match='outside the 64x48 image'):
    affectnet.crop_window((64, 48), (70, 5, 20, 30), 0.0)


def test_affectnet_validation_without_header_and_bad_code(tmp_path):
  manual = tmp_path / 'manual'
  make_affectnet(manual, validation_header=False)
  builder = _build('affectnet/7class', tmp_path / 'tfds', manual)
  assert builder.info.splits['test'].num_examples == 1

  training = manual / 'Manually_Annotated_file_lists' / 'training.csv'
  training.write_text(AFFECTNET_HEADER + _affectnet_row('1/a.png', BOX, 11))
  error = _error('affectnet/8class', tmp_path, manual)
  assert error.line == 2 and "label '11' is not one of the codes 0 Neutral" in str(error)
  assert 'training.csv, line 2' in str(error)

  training.write_text(AFFECTNET_HEADER + _affectnet_row('1/zzz.jpg', BOX, 1))
  error = _error('affectnet/8class', tmp_path, manual)
  assert error.line == 2 and "'1/zzz.jpg' has no file" in str(error)


# ---------------------------------------------------------------------------------------------
# FER2013 and FERPlus

FER_USAGES = ['Training'] * 3 + ['PublicTest'] * 3 + ['PrivateTest'] * 2
FER_EMOTIONS = [3, 0, 6, 5, 1, 2, 4, 3]


def _faces(num: int) -> list[np.ndarray]:
  """Face-like 48x48 images: a shaded disc on a gradient, plus sensor noise."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:48, :48]
  faces = []
  for i in range(num):
    disc = ((yy - 24) ** 2 + (xx - 20 - i) ** 2 < 15**2) * (60 + 10 * i)
    face = 40 + 2 * yy + disc + rng.normal(0, 6, (48, 48))
    faces.append(np.clip(face, 0, 255).astype(np.uint8))
  return faces


FACES = _faces(len(FER_USAGES))


def make_fer2013(path) -> None:
  rows = [
      f'{emotion},{" ".join(map(str, face.ravel()))},{usage}\n'
      for emotion, face, usage in zip(FER_EMOTIONS, FACES, FER_USAGES)
  ]
  _write(path, 'emotion,pixels,Usage\n' + ''.join(rows))


# Votes in fer2013new.csv's column order: neutral, happiness, surprise, sadness, anger, disgust,
# fear, contempt, unknown, NF. -> (stored class or drop reason).
FERPLUS_ROWS = [
    # Happiness holds 5 of 10 (no majority) until the three single votes go: 5 of 7.
    ('fer0000000.png', (2, 5, 1, 1, 1, 0, 0, 0, 0, 0), 'happiness'),
    ('fer0000001.png', (5, 0, 0, 5, 0, 0, 0, 0, 0, 0), ferplus.NO_MAJORITY),  # a tie
    ('fer0000002.png', (4, 0, 0, 0, 0, 0, 0, 0, 6, 0), ferplus.UNKNOWN),
    ('fer0000003.png', (0, 0, 0, 0, 0, 0, 0, 0, 0, 10), ferplus.NOT_A_FACE),
    ('', (10, 0, 0, 0, 0, 0, 0, 0, 0, 0), ferplus.NO_IMAGE),
    ('fer0000005.png', (0, 0, 0, 0, 2, 0, 0, 3, 0, 0), 'contempt'),
    ('fer0000006.png', (0, 0, 10, 0, 0, 0, 0, 0, 0, 0), 'surprise'),
    ('fer0000007.png', (0, 0, 0, 8, 1, 0, 1, 0, 0, 0), 'sadness'),
]


def make_ferplus(root, num_rows: int = len(FERPLUS_ROWS)) -> None:
  make_fer2013(os.path.join(root, 'fer2013', 'fer2013.csv'))  # as Kaggle's tarball extracts
  rows = [
      f'{usage},{name},{",".join(map(str, votes))}\n'
      for usage, (name, votes, _) in zip(FER_USAGES, FERPLUS_ROWS[:num_rows])
  ]
  header = 'Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,'
  _write(os.path.join(root, 'fer2013new.csv'), header + 'unknown,NF\n' + ''.join(rows))


def test_fer2013_splits_labels_and_pixels(tmp_path):
  make_fer2013(tmp_path / 'manual' / 'fer2013.csv')
  builder = _build('fer2013', tmp_path / 'tfds', tmp_path / 'manual')
  label = builder.info.features['label']
  splits = {split: _read(builder, split) for split in ('train', 'validation', 'test')}

  assert label.names == ['Angry', 'Disgust', 'Fear', 'Happy', 'Sad', 'Surprise', 'Neutral']
  assert {split: sorted(exs) for split, exs in splits.items()} == {
      'train': ['fer0000000', 'fer0000001', 'fer0000002'],
      'validation': ['fer0000003', 'fer0000004', 'fer0000005'],
      'test': ['fer0000006', 'fer0000007'],
  }
  examples = {k: v for exs in splits.values() for k, v in exs.items()}
  assert label.int2str(examples['fer0000000']['label']) == 'Happy'
  assert label.int2str(examples['fer0000004']['label']) == 'Disgust'
  for index, face in enumerate(FACES):
    ex = examples[fer2013.image_id(index)]
    assert ex['label'] == FER_EMOTIONS[index]
    stored = _pixels(ex).astype(int)
    assert stored.shape == (48, 48, 3)
    assert (stored == stored[..., :1]).all()  # three equal channels
    assert np.abs(stored[..., 0] - face).max() <= FER_MAX_ERROR


@pytest.mark.parametrize(
    'mutate,line,problem',
    [
        (lambda rows: rows.insert(2, '3,1 2 3,Training'), 3, 'pixels holds 3 values, not 48x48'),
        (lambda rows: rows.insert(1, '7,' + '0 ' * 2304 + ',Training'), 2, "label '7' is not"),
        (lambda rows: rows.insert(1, '1,' + '0 ' * 2304 + ',Other'), 2, "Usage 'Other' is not"),
        (lambda rows: rows.__setitem__(0, 'emotion,Usage,pixels'), 1, 'expected the header'),
    ],
)
def test_bad_fer2013_rows(tmp_path, mutate, line, problem):
  path = tmp_path / 'manual' / 'fer2013.csv'
  make_fer2013(path)
  rows = path.read_text().splitlines()
  mutate(rows)
  path.write_text('\n'.join(rows) + '\n')
  error = _error('fer2013', tmp_path, tmp_path / 'manual')
  assert error.line == line and problem in str(error) and 'fer2013.csv, line' in str(error)
  assert len(str(error)) < 600  # A 9 kB pixel row is quoted cut short.


def test_ferplus_majority_rule():
  assert ferplus.majority((2, 5, 1, 1, 1, 0, 0, 0, 0, 0)) == 1
  assert ferplus.majority((5, 0, 0, 5, 0, 0, 0, 0, 0, 0)) is None
  assert ferplus.majority((1,) * 10) is None  # only outliers
  assert ferplus.majority((0, 0, 0, 0, 0, 0, 0, 0, 6, 4)) == 8


def test_ferplus_labels_drops_and_pixels(tmp_path):
  make_ferplus(tmp_path / 'manual')
  builder = _build('ferplus', tmp_path / 'tfds', tmp_path / 'manual')
  label = builder.info.features['label']
  examples = {
      k: v for split in ('train', 'validation', 'test') for k, v in _read(builder, split).items()
  }

  assert label.names == list(ferplus.CLASS_NAMES) and len(label.names) == 8
  kept = {name[:-4]: c for name, _, c in FERPLUS_ROWS if c in ferplus.CLASS_NAMES}
  assert {k: label.int2str(v['label']) for k, v in examples.items()} == kept
  assert builder.info.splits['train'].num_examples == 1  # fer0000000 of three Training rows
  assert builder.build_report.dropped == {
      'train': {ferplus.NO_MAJORITY: 1, ferplus.UNKNOWN: 1},
      'validation': {ferplus.NOT_A_FACE: 1, ferplus.NO_IMAGE: 1},
  }
  stored = _pixels(examples['fer0000005']).astype(int)[..., 0]
  assert np.abs(stored - FACES[5]).max() <= FER_MAX_ERROR


def test_ferplus_row_count_and_usage_mismatch(tmp_path):
  manual = tmp_path / 'manual'
  make_ferplus(manual, num_rows=len(FERPLUS_ROWS) - 1)
  error = _error('ferplus', tmp_path, manual)
  assert '7 data rows' in str(error) and 'has 8' in str(error)
  assert 'fer2013new.csv' in str(error) and os.path.join('fer2013', 'fer2013.csv') in str(error)

  path = manual / 'fer2013new.csv'
  make_ferplus(manual)
  path.write_text(path.read_text().replace('PublicTest,fer0000003', 'Training,fer0000003'))
  error = _error('ferplus', tmp_path, manual)
  assert error.line == 5 and "says 'PublicTest'" in str(error)


def test_bad_ferplus_votes(tmp_path):
  make_ferplus(tmp_path / 'manual')
  path = tmp_path / 'manual' / 'fer2013new.csv'
  path.write_text(path.read_text().replace('fer0000006.png,0,0,10', 'fer0000006.png,0,0,-1'))
  error = _error('ferplus', tmp_path, tmp_path / 'manual')
  assert error.line == 8 and "surprise '-1' is not an integer >= 0" in str(error)


# ---------------------------------------------------------------------------------------------
# The shared base, as the video builders use it


def test_build_report_without_drops_reads_back():
  saved = {'examples_per_split': {'train': 2}, 'skipped_frames': [], 'skipped_clips': []}
  report = clip_folders.BuildReport.from_json(saved)
  assert report.dropped == {} and 'Dropped' not in report.summary()
  report.drop('train', 'x')
  report.drop('train', 'x')
  assert clip_folders.BuildReport.from_json(report.to_json()).dropped == {'train': {'x': 2}}


def test_clip_builders_keep_their_messages(tmp_path):
  (tmp_path / 'manual' / 'something_else').mkdir(parents=True)
  with pytest.raises(clip_folders.DataLayoutError, match='EmoLabel_DataSplit/ not found') as e:
    _build('dfew/fold1', tmp_path / 'tfds', tmp_path / 'manual')
  assert e.value.path == os.path.join(tmp_path / 'manual', 'EmoLabel_DataSplit')
  with pytest.raises(clip_folders.DataLayoutError, match='fer2013.csv not found'):
    _build('fer2013', tmp_path / 'tfds', tmp_path / 'manual')


def test_prepare_cli_builds_rafdb(tmp_path):
  make_rafdb(tmp_path / 'manual')
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'feadapter_jax.data.prepare',
          '--dataset=rafdb/aligned',
          f'--manual_dir={tmp_path / "manual"}',
          f'--data_dir={tmp_path / "tfds"}',
      ],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'Prepared rafdb/aligned' in proc.stdout
  assert 'train=3, test=2' in proc.stdout and RAF_CORRUPT in proc.stdout
