"""`python -m feadapter_jax.predict` on generated videos and frame folders, with a tiny trained run:
agreement with evaluation, windows and timeline, outputs, rendering, faces, and every bad input.
The run adapts a tiny backbone directory whose settings differ from the defaults, so these tests
also check that training, evaluation and prediction use the backbone's."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest
from skimage import data as skimage_data
import tensorflow_datasets as tfds

from feadapter_jax import evaluate
from feadapter_jax import faces
from feadapter_jax import predict
from feadapter_jax import step as step_lib
from feadapter_jax.data import pipeline
from feadapter_jax.data.synth_fer import render as synth_render
from feadapter_jax.data import video_io
from tests import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The architecture comes from the backbone.
TINY_ARGS = [
    '--config.model.adapter.width=8',
    '--config.total_steps=4',
    '--config.checkpoint_async=False',
]
FPS = 8
NONE = predict.Options(faces='none', fps=FPS)
# The backbone's settings where they differ from the ViT defaults and from SynthFER's configs.
BACKBONE = dict(layer_norm_eps=1e-12, activation='quick_gelu')
MEAN, STD = (0.5,) * 3, (0.5,) * 3


def _env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # one CPU device: the command as users run it
  return env


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A finished quick run of a tiny FE-Adapter on SynthFER (32 px, 8 frames, 7 classes), adapting
  a tiny backbone directory (`BACKBONE`, normalised with `MEAN`, `STD`)."""
  return train_tiny_run(tmp_path_factory.mktemp('run'), BACKBONE)


def train_tiny_run(root, backbone: dict) -> str:
  """Trains the quick run of `workdir` in root/wd on a tiny backbone with `backbone`'s settings."""
  tiny.write_backbone(str(root / 'backbone'), MEAN, STD, num_classes=7, **backbone)
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'feadapter_jax.main',
          f'--config=configs/synthetic.py:quick,init={root / "backbone"}',
          f'--workdir={root / "wd"}',
          f'--config.data.data_dir={root / "tfds"}',
          *TINY_ARGS,
      ],
      cwd=ROOT,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return str(root / 'wd')


@pytest.fixture(scope='module')
def predictor(workdir):
  return predict.Predictor(workdir, batch_size=4)


@pytest.fixture(scope='module')
def reference(workdir, predictor):
  """The evaluation step on the run's model, loaded and jitted apart from the predictor."""
  model, params = evaluate.load_trained(workdir, predictor.config)
  data = predictor.config.data
  eval_step = jax.jit(step_lib.make_eval_step(model, mean=data.mean, std=data.std))
  return lambda video: np.asarray(eval_step(params, {'video': video}))


def _clip(seed, num_frames, size, label=0):
  return synth_render.render_clip(
      np.random.default_rng(seed), label, num_frames, size, synth_render.RenderParams()
  )


def _write(path, frames, fps=FPS, codec='libx264'):
  video_io.write_video(path, frames, fps=fps, codec=codec)
  return str(path)


def _run(predictor, inputs, options=NONE, **kwargs):
  out, err = io.StringIO(), io.StringIO()
  code = predict.run(predictor, [str(i) for i in inputs], options, out=out, err=err, **kwargs)
  return code, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------- Backbone.


def test_the_run_records_and_exports_its_backbones_settings(workdir):
  with open(os.path.join(workdir, 'config.json')) as f:
    config = json.load(f)
  assert {k: config['model'][k] for k in BACKBONE} == BACKBONE
  assert [config['model'][k] for k in ('width', 'depth', 'num_heads', 'mlp_dim')] == [32, 2, 2, 64]
  assert config['data']['mean'] == list(MEAN) and config['data']['std'] == list(STD)
  # The export hands the normalisation on to a run that adapts it in turn.
  with open(os.path.join(workdir, 'export', 'model_config.json')) as f:
    exported = json.load(f)
  assert exported['mean'] == list(MEAN) and exported['std'] == list(STD)
  assert exported['layer_norm_eps'] == 1e-12 and exported['activation'] == 'quick_gelu'


def test_prediction_uses_the_backbones_model_and_normalisation(predictor, workdir):
  model, params = evaluate.load_trained(workdir, predictor.config)
  assert (model.layer_norm_eps, model.activation) == (1e-12, 'quick_gelu')
  frames = _clip(6, 8, 32)  # one window of the model's frame count and size: no resampling
  normalised = (frames / 255.0 - np.asarray(MEAN)) / np.asarray(STD)

  views = predictor.views(frames)

  np.testing.assert_array_equal(views, frames[None])  # uint8, the step normalises
  expected = jax.nn.softmax(model.apply({'params': params}, normalised[None].astype(np.float32)))
  np.testing.assert_allclose(predictor.probabilities([views])[0], expected[0], atol=1e-5)


def test_evaluation_normalises_with_the_backbones_statistics(workdir, monkeypatch):
  given = []
  make_eval_step = step_lib.make_eval_step

  def recording(model, *, mean, std):
    given.append((tuple(mean), tuple(std)))
    return make_eval_step(model, mean=mean, std=std)

  monkeypatch.setattr(evaluate.step_lib, 'make_eval_step', recording)
  results = evaluate.evaluate_workdir(workdir, 'test')
  assert given == [(MEAN, STD)] and results['num_examples'] == 64


# ----------------------------------------------------------------------------- Agreement.


def test_frame_folders_get_exactly_the_evaluation_probabilities(tmp_path, predictor, reference):
  """Test clips of the run's dataset, written as DFEW-style folders of their stored JPEGs, get the
  probabilities `make_eval_iterator` + the eval step give them (one window = the whole clip)."""
  data = predictor.config.data
  split = 'test[:6]'
  stored = tfds.as_numpy(
      pipeline.get_builder(data).as_dataset(
          split=split, decoders={'video': tfds.decode.SkipDecoding()}
      )
  )
  folders = {}
  for example in stored:
    clip_id = example['clip_id'].decode()
    folder = tmp_path / clip_id
    folder.mkdir()
    for n, jpeg in enumerate(example['video'], 1):
      (folder / f'{clip_id}_{n}.jpg').write_bytes(jpeg)
    folders[clip_id] = str(folder)
  batch = next(
      pipeline.make_eval_dataset(
          data, split, batch_size=6, process_index=0, process_count=1
      ).as_numpy_iterator()
  )
  expected = dict(zip((c.decode() for c in batch['clip_id']), reference(batch['video'])))

  output = tmp_path / 'out.json'
  options = predict.Options(faces='none', window_seconds=0, fps=FPS)
  code, _, err = _run(predictor, folders.values(), options, output=str(output))

  assert code == 0, err
  videos = json.loads(output.read_text())['videos']
  assert len(videos) == len(expected) == 6
  for video in videos:
    clip_id = os.path.basename(video['input'])
    assert len(video['windows']) == 1 and video['num_frames'] == 8
    np.testing.assert_allclose(video['probs'], expected[clip_id], atol=1e-5)


def test_test_views_asked_of_predict_are_averaged_as_evaluation_averages_them(workdir, reference):
  """--num_clips=2 --num_crops=2: a window's probabilities are the mean of its four views'."""
  four = predict.Predictor(
      workdir, batch_size=2, num_clips=2, num_crops=2, test_crop_fraction=0.875
  )
  frames = _clip(3, 12, 40)
  views = four.views(frames)
  assert views.shape == (4, 8, 32, 32, 3)
  singles = np.stack([reference(view[None, None])[0] for view in views])
  assert np.abs(singles - singles.mean(0)).max() > 1e-4  # the views differ
  np.testing.assert_allclose(four.probabilities([views])[0], singles.mean(0), atol=1e-6)
  with pytest.raises(predict.PredictError, match='test_crop_fraction below 1'):
    predict.Predictor(workdir, num_crops=2)


def test_video_windows_timeline_and_one_compilation(tmp_path, predictor, reference):
  """10 s at 8 fps, 2 s windows every 1 s: 9 windows, each classified as evaluation classifies
  that stretch of decoded frames; the video's prediction is their mean."""
  path = _write(tmp_path / 'ten_seconds.mp4', _clip(0, 10 * FPS, 48))
  decoded = np.stack(list(video_io.iter_frames(path)))

  prediction = predict.predict_source(predictor, predict.open_source(path, 25.0), NONE)

  assert prediction.fps == FPS and prediction.num_frames == 80
  assert [(w.start_frame, w.end_frame) for w in prediction.windows] == [
      (8 * k, 8 * k + 16) for k in range(9)
  ]
  views = np.stack(
      [
          pipeline.eval_clip(decoded[w.start_frame : w.end_frame], predictor.config.data)
          for w in prediction.windows
      ]
  )
  np.testing.assert_allclose([w.probs for w in prediction.windows], reference(views), atol=1e-5)
  np.testing.assert_allclose(prediction.probs, reference(views).mean(0), atol=1e-5)
  table = predict.format_table(prediction, predictor.class_names)
  assert '0.00-2.00' in table and '8.00-10.00' in table and 'whole video' in table

  # A video shorter than a window is one window; no window count compiles the step again.
  short = _write(tmp_path / 'short.mp4', _clip(1, 10, 48))
  one = predict.predict_source(predictor, predict.open_source(short, 25.0), NONE)
  assert [(w.start_frame, w.end_frame) for w in one.windows] == [(0, 10)]
  assert predictor._step._cache_size() == 1  # pylint: disable=protected-access


@pytest.mark.parametrize(
    'num_frames,window,stride,expected',
    [
        (80, 16, 8, [(8 * k, 8 * k + 16) for k in range(9)]),
        (10, 16, 8, [(0, 10)]),  # shorter than a window
        (20, 8, 5, [(0, 8), (5, 13), (10, 18), (12, 20)]),  # a last window ends at the last frame
        (20, 4, 10, [(0, 4), (10, 14), (16, 20)]),  # stride longer than the window
        (5, None, 1, [(0, 5)]),  # the whole input
    ],
)
def test_sliding_windows(num_frames, window, stride, expected):
  frames = [np.full((2, 2, 3), i, np.uint8) for i in range(num_frames)]
  windows = list(predict.sliding_windows(iter(frames), window, stride))
  assert [(start, end) for start, end, _ in windows] == expected
  for start, end, clip in windows:
    assert [int(f[0, 0, 0]) for f in clip] == list(range(start, end))


def test_frame_folder_reads_natural_order_and_skips_hidden_files(tmp_path):
  for i in range(12):  # lexicographic order would put clip_10, clip_11 before clip_2
    cv2.imwrite(str(tmp_path / f'clip_{i + 1}.png'), np.full((8, 8, 3), 20 * i, np.uint8))
  (tmp_path / '._clip_1.jpg').write_bytes(b'macOS resource fork')

  frames = list(predict.open_source(str(tmp_path), FPS).frames())

  np.testing.assert_allclose([f.mean() for f in frames], 20 * np.arange(12), atol=2)


# ----------------------------------------------------------------------------- Outputs.


def test_json_and_csv_outputs_parse(tmp_path, predictor):
  path = _write(tmp_path / 'clip.mp4', _clip(2, 4 * FPS, 32))
  code, out, _ = _run(predictor, [path], output=str(tmp_path / 'p.json'))
  assert code == 0 and 'clip.mp4: 32 frames, 4.00 s at 8 fps, 3 window(s)' in out
  assert _run(predictor, [path], output=str(tmp_path / 'p.csv'))[0] == 0

  result = json.loads((tmp_path / 'p.json').read_text())
  assert result['class_names'] == list(synth_render.CLASS_NAMES) and result['errors'] == []
  (video,) = result['videos']
  assert video['duration_s'] == 4.0 and len(video['windows']) == 3
  assert [(w['start_s'], w['end_s']) for w in video['windows']] == [(0, 2), (1, 3), (2, 4)]
  assert video['top_class'] == synth_render.CLASS_NAMES[int(np.argmax(video['probs']))]
  with open(tmp_path / 'p.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['window'] for r in rows] == ['0', '1', '2', 'video']
  for row, probs in zip(rows, [w['probs'] for w in video['windows']] + [video['probs']]):
    np.testing.assert_allclose([float(row[c]) for c in synth_render.CLASS_NAMES], probs, atol=1e-6)
    assert row['top_class'] == synth_render.CLASS_NAMES[int(np.argmax(probs))]


def test_render_writes_every_frame_with_the_prediction_drawn(tmp_path, predictor):
  folder = tmp_path / 'odd_size'
  folder.mkdir()
  clip = _clip(3, 20, 64)[:, :63, :61]  # odd size: the render is cut to even
  for n, frame in enumerate(clip, 1):
    cv2.imwrite(str(folder / f'odd_size_{n}.png'), frame[..., ::-1])
  render = tmp_path / 'render.mp4'

  code, _, err = _run(predictor, [folder], render=str(render))

  assert code == 0, err
  frames, fps = np.stack(list(video_io.iter_frames(render))), video_io.video_fps(render)
  assert frames.shape == (20, 62, 60, 3) and fps == FPS
  difference = np.abs(frames.astype(float) - clip[:, :62, :60])
  assert difference[:, :8].mean() > 40  # the emotion is written on a band at the top
  assert difference[:, 16:].mean() < 8  # the rest is the input (after lossy coding)


# ----------------------------------------------------------------------------- Faces.


def _face_video(path, num_frames, size=96):
  """A SynthFER face on grey: its square spans x in [size, 2 size), y in [size / 2, 1.5 size)."""
  canvas = np.full((num_frames, 2 * size, 3 * size, 3), 128, np.uint8)
  canvas[:, size // 2 : size // 2 + size, size : 2 * size] = _clip(4, num_frames, size)
  return _write(path, canvas)


def test_detected_face_is_found_and_tracked(tmp_path, predictor):
  path = _face_video(tmp_path / 'face.mp4', 3 * FPS)
  options = predict.Options(faces='haar', fps=FPS)

  prediction = predict.predict_source(
      predictor, predict.open_source(path, 25.0), options, faces.HaarDetector(options.face)
  )

  assert prediction.boxes.shape == (24, 3) and len(prediction.windows) == 2
  assert prediction.landmarks is None
  centre, side = prediction.boxes[:, :2], prediction.boxes[:, 2]
  assert np.abs(centre - [144, 96]).max() < 10 and ((side > 48) & (side < 96)).all()
  # Smoothing: the box moves less from frame to frame than the head does.
  assert np.abs(np.diff(centre, axis=0)).max() < 3


# The astronaut photograph (scikit-image), shrunk to ASTRONAUT_SIZE, moves right over grey 400 x 300
# frames by ASTRONAUT_STEP px a frame; its face is at FACE_CENTRE of the 512 px photograph.
ASTRONAUT_SIZE, ASTRONAUT_STEP, FACE_CENTRE = 280, 3, np.array([223.0, 117.0])


def _astronaut_video(path, num_frames):
  """(path, (num_frames, 2) face centres) of the moving astronaut."""
  photo = cv2.resize(skimage_data.astronaut(), (ASTRONAUT_SIZE,) * 2, interpolation=cv2.INTER_AREA)
  frames = np.full((num_frames, 300, 400, 3), 100, np.uint8)
  origins = np.array([(40 + ASTRONAUT_STEP * i, 20) for i in range(num_frames)])
  for frame, (x, y) in zip(frames, origins):
    frame[y : y + ASTRONAUT_SIZE, x : x + ASTRONAUT_SIZE] = photo
  return _write(path, frames), origins + FACE_CENTRE * ASTRONAUT_SIZE / 512


@pytest.fixture(scope='module')
def detectors():
  """One of each face detector (MTCNN takes seconds to build)."""
  return {name: faces.make_detector(name, faces.FaceConfig()) for name in faces.DETECTORS}


def _is_green(frames):
  """Per pixel: the colour --render outlines face crops with."""
  return (frames[..., 1] > 180) & (frames[..., 0] < 90) & (frames[..., 2] < 90)


@pytest.mark.parametrize('detector', ['mtcnn', 'haar'])
def test_each_input_is_decoded_once_for_faces_windows_and_render(
    tmp_path, predictor, detectors, monkeypatch, detector
):
  """One pass serves detection, cropping, windows and --render, and gives what two passes (the
  faces API's track, then crops of the decoded frames) give."""
  path, centres = _astronaut_video(tmp_path / 'astronaut.mp4', 3 * FPS)
  decoded = list(video_io.iter_frames(path))
  options = predict.Options(faces=detector, fps=FPS)
  finder = detectors[detector]
  track = faces.face_track(decoded, options.face, finder)
  crops = np.stack([faces.aligned_crop(f, face, options.face) for f, face in zip(decoded, track)])
  calls = []
  iter_frames = video_io.iter_frames

  def counting(*args):
    calls.append(args)
    return iter_frames(*args)

  monkeypatch.setattr(video_io, 'iter_frames', counting)
  render = tmp_path / 'render.mp4'

  code, out, err = _run(predictor, [path], options, render=str(render))
  source = predict.open_source(path, 25.0)
  kept = predict.RenderFrames(options.render_side)
  prediction = predict.predict_source(predictor, source, options, finder, kept)

  assert code == 0 and err == '' and 'astronaut.mp4: 24 frames, 3.00 s at 8 fps' in out
  assert len(calls) == 2  # once per prediction: the command's, and this test's
  assert len(kept) == 24 and prediction.boxes.shape == (24, 3)
  # The box follows the face (smoothing lags it by a few px at 3 px a frame). MTCNN finds it in
  # every frame; Haar takes a larger false "face" on the suit in 4 of the 24, and the moving
  # average needs a few frames to come back.
  error = np.abs(prediction.boxes[:, :2] - centres).max(1)
  assert np.median(error) < 5 and np.mean(error < 10) >= (1.0 if detector == 'mtcnn' else 0.6)
  np.testing.assert_allclose(prediction.boxes, [face.box for face in track], atol=1e-6)
  if detector == 'mtcnn':
    assert prediction.landmarks.shape == (24, 5, 2)
  else:
    assert prediction.landmarks is None
  expected = predictor.probabilities(
      [predictor.views(crops[w.start_frame : w.end_frame]) for w in prediction.windows]
  )
  np.testing.assert_allclose([w.probs for w in prediction.windows], expected, atol=1e-5)
  rendered = np.stack(list(iter_frames(render)))
  assert rendered.shape == (24, 300, 400, 3)
  # The crop's outline is drawn around the face: green pixels there, not in the input.
  assert _is_green(rendered).sum((1, 2)).min() > 100 and _is_green(np.stack(decoded)).sum() < 50


# mtcnn only through the command (a subprocess costs ~40 s here); haar's path in-process above.
@pytest.mark.parametrize('detector', ['mtcnn'])
def test_command_crops_faces_with_the_detector_asked(
    tmp_path, workdir, predictor, detectors, detector
):
  path, _ = _astronaut_video(tmp_path / 'astronaut.mp4', 2 * FPS)
  output = tmp_path / 'out.json'

  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'feadapter_jax.predict',
          f'--workdir={workdir}',
          f'--faces={detector}',
          '--face_smoothing=0.3',
          f'--output={output}',
          path,
      ],
      cwd=ROOT,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
  )

  assert proc.returncode == 0, proc.stderr[-3000:]
  (video,) = json.loads(output.read_text())['videos']
  options = predict.Options(faces=detector, fps=FPS, face=faces.FaceConfig(smoothing=0.3))
  source = predict.open_source(path, 25.0)
  expected = predict.predict_source(predictor, source, options, detectors[detector])
  assert video['num_frames'] == 16 and len(video['windows']) == 1
  np.testing.assert_allclose(video['probs'], expected.probs, atol=1e-5)


def test_no_face_anywhere_is_one_clear_error(tmp_path, predictor):
  grey = _write(tmp_path / 'grey.mp4', np.full((10, 64, 64, 3), 90, np.uint8))
  code, out, err = _run(predictor, [grey], predict.Options(faces='detect', fps=FPS))
  assert code == 1 and out == ''
  assert err == (
      'faces: detect uses mtcnn (crops aligned by 5 landmarks)\n'
      f'error: {grey}: no face found in any of the 10 frames; if the frames are '
      'face crops already, use --faces=none\n'
  )


def test_mtcnn_asked_but_not_installed_is_one_clear_error(tmp_path, predictor, monkeypatch):
  monkeypatch.setitem(sys.modules, 'mtcnn', None)  # `import mtcnn` raises ImportError
  code, out, err = _run(predictor, [tmp_path / 'any.mp4'], predict.Options(faces='mtcnn'))
  assert code == 2 and out == ''
  assert err.startswith('error: --faces=mtcnn: mtcnn face detection needs the mtcnn package (')
  assert err.endswith('): pip install mtcnn==1.0.0\n') and err.count('\n') == 1
  code, _, err = _run(predictor, [tmp_path / 'any.mp4'], predict.Options(faces='detect'))
  assert code == 1 and err.startswith('faces: detect uses haar (upright box crops; for aligned')


# ----------------------------------------------------------------------------- Bad inputs.


def test_bad_inputs_each_get_one_error_line_and_the_others_are_predicted(tmp_path, workdir):
  good = _write(tmp_path / 'good.mp4', _clip(5, 2 * FPS, 32))
  noise = np.random.default_rng(0).integers(0, 256, (40, 64, 64, 3), np.uint8)
  full = _write(tmp_path / 'full.mp4', noise, codec='mpeg4')
  truncated = tmp_path / 'truncated.mp4'
  truncated.write_bytes(open(full, 'rb').read()[: int(0.6 * os.path.getsize(full))])
  empty = tmp_path / 'empty.mp4'
  empty.write_bytes(b'')
  text = tmp_path / 'text.mp4'
  text.write_bytes(b'this is not a video' * 50)
  # An AVI whose codec tag no decoder knows.
  avi = _write(tmp_path / 'mpeg4.avi', noise[:10], codec='mpeg4')
  unknown_codec = tmp_path / 'unknown_codec.avi'
  unknown_codec.write_bytes(open(avi, 'rb').read().replace(b'FMP4', b'ZZZZ'))
  no_frames = tmp_path / 'no_frames'
  no_frames.mkdir()
  broken_frame = tmp_path / 'broken_frame'
  broken_frame.mkdir()
  (broken_frame / 'broken_frame_1.jpg').write_bytes(b'\xff\xd8\xff not a jpeg')
  missing = tmp_path / 'missing.mp4'
  expected_problems = {
      str(truncated): 'truncated',
      str(empty): 'zero-length file',
      str(text): 'cannot open',
      str(unknown_codec): 'Decoder not found',
      str(no_frames): 'folder holds no frame images',
      str(broken_frame): 'frame broken_frame_1.jpg: ',
      str(missing): 'no such file',
  }
  output = tmp_path / 'out.json'

  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'feadapter_jax.predict',
          f'--workdir={workdir}',
          '--faces=none',
          f'--output={output}',
          str(truncated),
          str(empty),
          good,
          str(text),
          str(unknown_codec),
          str(no_frames),
          str(broken_frame),
          str(missing),
      ],
      cwd=ROOT,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
  )

  assert proc.returncode == 1, proc.stderr[-3000:]
  assert f'{good}: 16 frames, 2.00 s at 8 fps, 1 window(s)' in proc.stdout
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == len(expected_problems), proc.stderr
  for line, (path, problem) in zip(errors, expected_problems.items()):
    assert line.startswith(f'error: {path}: ') and problem in line, line
  result = json.loads(output.read_text())
  assert [v['input'] for v in result['videos']] == [good]
  assert [e['input'] for e in result['errors']] == list(expected_problems)


def test_checkpoint_mismatches_are_one_line_errors(tmp_path, workdir):
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'feadapter_jax.predict',
          f'--workdir={workdir}',
          '--expect_image_size=64',
          'any.mp4',
      ],
      cwd=ROOT,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 2 and proc.stdout == ''
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert errors == [f'error: {workdir}/export: the model takes 32x32 frames, 64x64 asked']

  with pytest.raises(predict.PredictError, match=r'predicts \[.Happy.*\], \[.a., .b.\] asked'):
    predict.Predictor(workdir, expect_classes=['a', 'b'])
  with pytest.raises(predict.PredictError, match='config.json: not found'):
    predict.Predictor(str(tmp_path / 'nowhere'))

  def edited_copy(name, edit):
    copy = tmp_path / name
    shutil.copytree(workdir, copy)
    edit(copy)
    return str(copy)

  def config_edit(section, key, value):
    def edit(copy):
      config = json.loads((copy / 'config.json').read_text())
      config[section][key] = value
      (copy / 'config.json').write_text(json.dumps(config))

    return edit

  other_size = edited_copy('other_size', config_edit('data', 'image_size', 64))
  with pytest.raises(predict.PredictError, match='exported for image size 32, but .* says 64'):
    predict.Predictor(other_size)
  fewer_classes = edited_copy('fewer_classes', config_edit('model', 'num_classes', 6))
  with pytest.raises(predict.PredictError, match='names 7 classes, the model has 6 outputs'):
    predict.Predictor(fewer_classes)
  adapter = json.loads(open(os.path.join(workdir, 'config.json')).read())['model']['adapter']
  other_width = edited_copy('other_width', config_edit('model', 'adapter', {**adapter, 'width': 4}))
  with pytest.raises(predict.PredictError, match='does not fit the model of .*adapter'):
    predict.Predictor(other_width)
