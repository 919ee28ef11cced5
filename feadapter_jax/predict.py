r"""Predict facial emotions in your own videos with a trained run.

  python -m feadapter_jax.predict --workdir=DIR [--faces=detect|mtcnn|haar|none] \
      [--output=FILE.json|.csv] [--render=OUT.mp4] VIDEO_OR_FRAME_FOLDER [...]

An input is a video file (mp4, avi, mov, webm: whatever ffmpeg decodes) or a folder of frames
(DFEW-style `<id>_<n>.jpg`, read in natural order at `--fps`). It is cut into sliding windows of
`--window_seconds` every `--stride_seconds` (a shorter input is one window; a last window ends at
the last frame, so the whole input is covered). Each window goes through the evaluation
preprocessing (`pipeline.eval_clip`: T segment-centred frames per temporal view, resized) and
the evaluation step (`step.make_eval_step`, which normalises them with config.json's
`data.mean/std`, the backbone's), so a window holding a whole dataset clip gets exactly the
probabilities evaluation gives that clip. The input's prediction is the mean of its windows'
probabilities.

`--faces=detect` first crops every frame to its largest face as the datasets' frames are cropped
(`faces.py`: found by MTCNN, smoothed over time, aligned by its five landmarks; by OpenCV's Haar
cascade, an upright box crop, when the mtcnn package is not installed: one line on stderr says
which); `--faces=mtcnn` or `--faces=haar` asks for one; `--faces=none` takes frames as they are.

Each input is decoded once: detection, cropping and windowing run in one pass over its frames,
holding one window of face crops (and, until the first face is found, the frames before it).
`--render` keeps every frame for the rendered video shrunk to at most `--render_side` pixels and
JPEG-encoded in memory (about 20-40 kB a frame at 640 px: ~50 MB a minute at 25 fps), and writes
the video once the windows' emotions are known.

Prints per input a table of windows (start-end seconds, top emotion, probability) and the whole
input's prediction. Exit code 0; 1 when some input failed (each has a line
`error: <input>: <reason>` on stderr; the others are still predicted); 2 when the workdir or the
face detector cannot be used (same line format, naming the file or flag at fault).
"""

from __future__ import annotations

from feadapter_jax import cli  # pylint: disable=g-bad-import-order  (first: quiets TensorFlow)

import collections  # pylint: disable=g-import-not-at-top,g-bad-import-order
from collections.abc import Iterable, Iterator, Sequence
import csv
import dataclasses
import json
import os
import sys
from typing import Any, TextIO

from absl import app
from absl import flags
import av
import cv2
import jax
import ml_collections
import numpy as np
import tqdm

from feadapter_jax import checkpoint
from feadapter_jax import evaluate
from feadapter_jax import faces as faces_lib
from feadapter_jax import partition
from feadapter_jax import step as step_lib
from feadapter_jax import workdir as workdir_lib
from feadapter_jax.data import clip_folders
from feadapter_jax.data import pipeline
from feadapter_jax.data import video_io
from feadapter_jax.models import builder

OUTPUT_FORMATS = ('.json', '.csv')
FACE_MODES = ('detect', *faces_lib.DETECTORS, 'none')
# Drawn on --render videos (RGB).
_BOX_COLOUR = (0, 255, 0)
_TEXT_COLOUR = (255, 255, 255)
# --render text scale per pixel of frame width, and its floor: readable from 64 px to 4K frames.
_TEXT_SCALE_PER_PIXEL = 1.0 / 640
_MIN_TEXT_SCALE = 0.3
# --render keeps its frames JPEG-encoded at this quality: near-lossless next to the video codec.
_RENDER_JPEG_QUALITY = 95


class PredictError(Exception):
  """An input (or the workdir) cannot be used; the message is one line naming the file."""

  def __init__(self, path: str, problem: str):
    self.path = path
    self.problem = problem
    super().__init__(f'{path}: {problem}')


@dataclasses.dataclass(frozen=True)
class Options:
  """How inputs are read and windowed.

  Attributes:
    faces: 'detect' (crop each frame to its largest face, found by the best detector
      installed), 'mtcnn' or 'haar' (that detector), or 'none' (frames are face crops).
    window_seconds: window length; 0: the whole input is one window, as evaluation takes a clip.
    stride_seconds: start-to-start distance of consecutive windows.
    fps: frame rate of frame folders, and of videos that declare none.
    face: detection and cropping knobs (all faces but 'none').
    render_side: frames kept for `--render` are shrunk to at most this longer side.
  """

  faces: str = 'detect'
  window_seconds: float = 2.0
  stride_seconds: float = 1.0
  fps: float = 25.0
  face: faces_lib.FaceConfig = faces_lib.FaceConfig()
  render_side: int = 640


@dataclasses.dataclass
class Window:
  """One window of an input: frames [start_frame, end_frame) and its class probabilities."""

  start_frame: int
  end_frame: int
  probs: np.ndarray


@dataclasses.dataclass
class VideoPrediction:
  """The windows of one input and what the model makes of them.

  Attributes:
    path: the input.
    fps: frames per second the timeline is in.
    num_frames: frames in the input.
    windows: in temporal order.
    boxes: (num_frames, 3) smoothed face boxes `(cx, cy, side)`; None with faces='none'.
    landmarks: (num_frames, 5, 2) smoothed landmarks (`faces.LANDMARKS`); None with
      faces='none' or a detector without landmarks.
  """

  path: str
  fps: float
  num_frames: int
  windows: list[Window]
  boxes: np.ndarray | None = None
  landmarks: np.ndarray | None = None

  @property
  def probs(self) -> np.ndarray:
    """The whole input's class probabilities: the mean over its windows."""
    return np.mean([w.probs for w in self.windows], axis=0)


# ----------------------------------------------------------------------------- Model.


def _read_json(path: str, what: str) -> Any:
  try:
    return json.loads(workdir_lib.path(path).read_text())
  except FileNotFoundError:
    raise PredictError(path, f'not found: {what}') from None
  except json.JSONDecodeError as e:
    raise PredictError(path, f'not valid JSON ({e})') from None


class Predictor:
  """A trained run's model with its evaluation preprocessing and class names.

  The evaluation step is jitted once: windows are classified in batches of a fixed size (the last
  one padded), so no input length or window count compiles anew.
  """

  def __init__(
      self,
      workdir: str,
      *,
      batch_size: int = 8,
      num_clips: int = 0,
      num_crops: int = 0,
      test_crop_fraction: float = 0.0,
      expect_image_size: int = 0,
      expect_classes: Sequence[str] = (),
  ):
    """Loads the run in `workdir`.

    Args:
      workdir: a finished training run (config.json, results.json, export/).
      batch_size: windows per model call.
      num_clips: temporal views averaged per window; 0: as the run evaluated.
      num_crops: spatial views averaged per window; 0: as the run evaluated.
      test_crop_fraction: a spatial view's side over the frame's; 0: as the run evaluated.
      expect_image_size: fail unless the model takes this input size; 0: any.
      expect_classes: fail unless the model predicts these classes, in this order; empty: any.

    Raises:
      PredictError: a file of the run is missing or broken, or the model does not match itself
        (export vs config) or the expectations.
    """
    config_path = os.fspath(workdir_lib.path(workdir, workdir_lib.CONFIG_FILE))
    _read_json(config_path, 'a training workdir has the config.json of its run')
    self.config = workdir_lib.load_config(workdir)
    for name, value in (
        ('num_clips', num_clips),
        ('num_crops', num_crops),
        ('test_crop_fraction', test_crop_fraction),
    ):
      if value:
        self.config.data[name] = value
    try:
      pipeline.check_views(self.config.data)
    except pipeline.DataConfigError as e:
      raise PredictError(config_path, str(e)) from None
    results_path = os.fspath(workdir_lib.path(workdir, workdir_lib.RESULTS_FILE))
    results = _read_json(results_path, 'the run has not finished (results.json names its classes)')
    if not isinstance(results, dict) or 'class_names' not in results:
      raise PredictError(
          results_path, 'has no class_names: rerun the training command to finish ' 'the run'
      )
    self.class_names = list(results['class_names'])
    self.batch_size = batch_size
    export = os.fspath(workdir_lib.path(workdir, workdir_lib.EXPORT_DIR))
    image_size = self.config.data.image_size
    export_config = _read_json(
        os.fspath(workdir_lib.path(export, checkpoint.MODEL_CONFIG)),
        'the run has no exported parameters',
    )
    if export_config.get('image_size', image_size) != image_size:
      raise PredictError(
          export,
          f'exported for image size {export_config["image_size"]}, but '
          f'{config_path} says {image_size}: the export is from another run',
      )
    if expect_image_size and expect_image_size != image_size:
      raise PredictError(
          export,
          f'the model takes {image_size}x{image_size} frames, '
          f'{expect_image_size}x{expect_image_size} asked',
      )
    if len(self.class_names) != self.config.model.num_classes:
      raise PredictError(
          results_path,
          f'names {len(self.class_names)} classes, the model has '
          f'{self.config.model.num_classes} outputs',
      )
    if expect_classes and list(expect_classes) != self.class_names:
      raise PredictError(
          results_path, f'the model predicts {self.class_names}, ' f'{list(expect_classes)} asked'
      )
    try:
      model, params = evaluate.load_trained(workdir, self.config)
    except (FileNotFoundError, ValueError) as e:
      raise PredictError(export, f'cannot load the model ({_one_line(e)})') from None
    expected = builder.param_shapes(model, builder.clip_shape(self.config))
    mismatch = partition.first_mismatch(params, expected)
    if mismatch:
      raise PredictError(export, f'does not fit the model of {config_path}: {mismatch}')
    self._params = jax.device_put(params)
    data = self.config.data
    self._step = jax.jit(step_lib.make_eval_step(model, mean=data.mean, std=data.std))

  def views(self, frames: np.ndarray) -> np.ndarray:
    """(L, h, w, 3) uint8 frames of a window -> its (num_clips * num_crops, t, S, S, 3) uint8
    evaluation views."""
    return pipeline.eval_clip(frames, self.config.data).numpy()

  def probabilities(self, views: Sequence[np.ndarray]) -> np.ndarray:
    """(n, classes) probabilities of n windows' views, in fixed-size (padded) batches."""
    probs = []
    for first in range(0, len(views), self.batch_size):
      chunk = views[first : first + self.batch_size]
      batch = np.zeros((self.batch_size, *chunk[0].shape), chunk[0].dtype)
      batch[: len(chunk)] = chunk
      probs.append(np.asarray(self._step(self._params, {'video': batch}))[: len(chunk)])
    return np.concatenate(probs)


# ----------------------------------------------------------------------------- Inputs.


@dataclasses.dataclass(frozen=True)
class Source:
  """One input; `frames` decodes it (each call anew: predict_source calls it once).

  Attributes:
    path: a video file or a frame folder.
    fps: frame rate of its timeline.
    frame_files: a folder's frames in natural order; empty for a video file.
  """

  path: str
  fps: float
  frame_files: tuple[str, ...] = ()

  @property
  def num_frames(self) -> int | None:
    """Frames in a folder; None for a video file, whose count is only known once decoded."""
    return len(self.frame_files) if self.frame_files else None

  def frames(self) -> Iterator[np.ndarray]:
    """The (h, w, 3) uint8 RGB frames in temporal order, all of one size.

    Raises:
      PredictError: a frame does not decode, or differs in size from the first; a video file is
        unreadable, truncated or empty.
    """
    first_shape = None
    for index, frame in enumerate(self._decoded()):
      if first_shape is None:
        first_shape = frame.shape
      elif frame.shape != first_shape:
        raise PredictError(
            self.path,
            f'frame {index} is {frame.shape[1]}x{frame.shape[0]}, the '
            f'first is {first_shape[1]}x{first_shape[0]}; frames must share a size',
        )
      yield frame

  def _decoded(self) -> Iterator[np.ndarray]:
    if not self.frame_files:
      try:
        yield from video_io.iter_frames(self.path)
      except video_io.VideoReadError as e:
        raise PredictError(self.path, e.problem) from None
      return
    for path in self.frame_files:
      try:
        # The builders' loader then the pipeline's decoder: the pixels evaluation would see.
        jpeg = clip_folders.load_frame_jpeg(path)
      except OSError as e:
        raise PredictError(self.path, f'frame {os.path.basename(path)}: {e}') from None
      yield pipeline.decode_jpeg(jpeg).numpy()


def open_source(path: str, default_fps: float) -> Source:
  """The `Source` of a video file or frame folder.

  Raises:
    PredictError: a missing path, a folder without frames, or a file that is not a video.
  """
  if os.path.isdir(path):
    files = clip_folders.list_frame_files(path)
    if not files:
      raise PredictError(
          path, 'folder holds no frame images ' f'({", ".join(clip_folders.FRAME_EXTENSIONS)})'
      )
    return Source(path, default_fps, tuple(files))
  try:
    return Source(path, video_io.video_fps(path) or default_fps)
  except video_io.VideoReadError as e:
    raise PredictError(path, e.problem) from None


def sliding_windows(
    frames: Iterable[np.ndarray], window: int | None, stride: int
) -> Iterator[tuple[int, int, list[np.ndarray]]]:
  """Windows over a frame stream, holding at most one window of frames in memory.

  Windows start every `stride` frames while they fit; if those leave frames at the end, one more
  window ends at the last frame. An input shorter than a window is one window.

  Args:
    frames: the frames in temporal order.
    window: frames per window; None: the whole stream is one window.
    stride: frames from one window's start to the next's.

  Yields:
    (start, end, frames[start:end]).
  """
  buffer = collections.deque(maxlen=window)
  next_start = last_end = count = 0
  for count, frame in enumerate(frames, 1):
    buffer.append(frame)
    if count - next_start == window:
      yield next_start, count, list(buffer)
      last_end, next_start = count, next_start + stride
  if last_end < count:
    yield count - len(buffer), count, list(buffer)


def _num_frames(seconds: float, fps: float) -> int:
  return max(1, round(seconds * fps))


def _progress(frames: Iterable[np.ndarray], source: Source, what: str) -> Iterable[np.ndarray]:
  # disable=None: a bar on terminals only, none in logs and pipes.
  return tqdm.tqdm(
      frames,
      desc=f'{os.path.basename(source.path)}: {what}',
      unit='frame',
      total=source.num_frames,
      disable=None,
      leave=False,
      file=sys.stderr,
  )


class RenderFrames:
  """The frames of one input kept for `--render`, with where its face crop is.

  Frames are shrunk to at most `max_side` on their longer side and JPEG-encoded, so a long input
  costs tens of kB a frame, not its full-resolution pixels.
  """

  def __init__(self, max_side: int):
    self.max_side = max_side
    self._jpegs: list[bytes] = []
    self._corners: list[np.ndarray | None] = []

  def add(self, frame: np.ndarray, corners: np.ndarray | None) -> None:
    """Keeps an (h, w, 3) RGB frame and its crop's (4, 2) corners in its pixels (or None)."""
    scale = min(1.0, self.max_side / max(frame.shape[:2]))
    if scale < 1.0:
      frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
      corners = None if corners is None else corners * scale
    ok, jpeg = cv2.imencode(
        '.jpg', frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, _RENDER_JPEG_QUALITY]
    )
    assert ok, 'OpenCV encodes any uint8 RGB frame'
    self._jpegs.append(jpeg.tobytes())
    self._corners.append(corners)

  def __len__(self) -> int:
    return len(self._jpegs)

  def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(h, w, 3) RGB frames with their crop corners, in order."""
    for jpeg, corners in zip(self._jpegs, self._corners):
      frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
      yield frame[..., ::-1], corners


def predict_source(
    predictor: Predictor,
    source: Source,
    options: Options,
    detector: faces_lib.Detector | None = None,
    render: RenderFrames | None = None,
) -> VideoPrediction:
  """Classifies every window of one input, decoding it once.

  Args:
    predictor: the model.
    source: the input.
    options: windowing and faces.
    detector: finds faces unless faces='none' (one can serve many inputs); None: one is made
      from `options`.
    render: keeps the frames for `render_video`; None: none kept.

  Raises:
    PredictError: the input cannot be read, or has no face (unless faces='none').
  """
  frames = _progress(source.frames(), source, 'frames')
  found = []
  if options.faces == 'none':
    tracked = ((frame, None) for frame in frames)
  else:
    detector = detector or faces_lib.make_detector(options.faces, options.face)
    tracked = faces_lib.tracked_frames(frames, options.face, detector)

  def crops() -> Iterator[np.ndarray]:
    for frame, face in tracked:
      corners = None if face is None else faces_lib.crop_corners(face, options.face)
      if render is not None:
        render.add(frame, corners)
      if face is None:
        yield frame
        continue
      found.append(face)
      yield faces_lib.aligned_crop(frame, face, options.face)

  window = _num_frames(options.window_seconds, source.fps) if options.window_seconds > 0 else None
  stride = _num_frames(options.stride_seconds, source.fps)
  bounds, views, probs = [], [], []
  try:
    for start, end, clip in sliding_windows(crops(), window, stride):
      bounds.append((start, end))
      views.append(predictor.views(np.stack(clip)))
      if len(views) == predictor.batch_size:
        probs.extend(predictor.probabilities(views))
        views = []
  except faces_lib.NoFaceError as e:
    raise PredictError(
        source.path, f'{e}; if the frames are face crops already, use --faces=none'
    ) from None
  if views:
    probs.extend(predictor.probabilities(views))
  windows = [Window(start, end, p) for (start, end), p in zip(bounds, probs)]
  boxes = landmarks = None
  if found:
    boxes = np.stack([face.box for face in found])
    if found[0].landmarks is not None:
      landmarks = np.stack([face.landmarks for face in found])
  # The last window always ends at the last frame.
  return VideoPrediction(source.path, source.fps, bounds[-1][1], windows, boxes, landmarks)


# ----------------------------------------------------------------------------- Outputs.


def _one_line(error: Exception) -> str:
  return ' '.join(str(error).split())


def _top(probs: np.ndarray, class_names: Sequence[str]) -> tuple[str, float]:
  index = int(np.argmax(probs))
  return class_names[index], float(probs[index])


def format_table(prediction: VideoPrediction, class_names: Sequence[str]) -> str:
  """A readable timeline: one line per window, then the whole input's prediction."""
  fps, windows = prediction.fps, prediction.windows
  width = max(len(name) for name in class_names)
  lines = [
      f'{prediction.path}: {prediction.num_frames} frames, '
      f'{prediction.num_frames / fps:.2f} s at {fps:g} fps, {len(windows)} window(s)',
      f'  {"seconds":>15}  {"emotion":<{width}}  prob',
  ]
  for w in windows:
    name, prob = _top(w.probs, class_names)
    span = f'{w.start_frame / fps:.2f}-{w.end_frame / fps:.2f}'
    lines.append(f'  {span:>15}  {name:<{width}}  {prob:.3f}')
  ranked = np.argsort(-prediction.probs)
  runners_up = ', '.join(f'{class_names[k]} {prediction.probs[k]:.3f}' for k in ranked[1:3])
  lines.append(
      f'  {"whole video":>15}  {class_names[ranked[0]]:<{width}}  '
      f'{prediction.probs[ranked[0]]:.3f}  (mean of {len(windows)} windows; next: '
      f'{runners_up})'
  )
  return '\n'.join(lines)


def _window_record(w: Window, fps: float, class_names: Sequence[str]) -> dict[str, Any]:
  name, prob = _top(w.probs, class_names)
  return {
      'start_s': w.start_frame / fps,
      'end_s': w.end_frame / fps,
      'start_frame': w.start_frame,
      'end_frame': w.end_frame,
      'top_class': name,
      'top_prob': prob,
      'probs': [float(p) for p in w.probs],
  }


def to_json(
    predictions: Sequence[VideoPrediction],
    class_names: Sequence[str],
    errors: Sequence[PredictError],
) -> dict[str, Any]:
  """Everything a run of the command found, as a JSON-serialisable dict."""
  videos = []
  for p in predictions:
    name, prob = _top(p.probs, class_names)
    videos.append(
        {
            'input': p.path,
            'fps': p.fps,
            'num_frames': p.num_frames,
            'duration_s': p.num_frames / p.fps,
            'top_class': name,
            'top_prob': prob,
            'probs': [float(x) for x in p.probs],
            'windows': [_window_record(w, p.fps, class_names) for w in p.windows],
        }
    )
  return {
      'class_names': list(class_names),
      'videos': videos,
      'errors': [{'input': e.path, 'error': e.problem} for e in errors],
  }


def write_output(
    path: str,
    predictions: Sequence[VideoPrediction],
    class_names: Sequence[str],
    errors: Sequence[PredictError],
) -> None:
  """Writes `to_json` (.json), or one CSV row per window and per whole input (.csv)."""
  if path.lower().endswith('.json'):
    with open(path, 'w') as f:
      json.dump(to_json(predictions, class_names, errors), f, indent=2)
    return
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['input', 'window', 'start_s', 'end_s', 'top_class', 'top_prob', *class_names])
    for p in predictions:
      for index, w in enumerate(p.windows):
        record = _window_record(w, p.fps, class_names)
        writer.writerow(
            [
                p.path,
                index,
                f'{record["start_s"]:.3f}',
                f'{record["end_s"]:.3f}',
                record['top_class'],
                f'{record["top_prob"]:.6f}',
                *(f'{x:.6f}' for x in w.probs),
            ]
        )
      name, prob = _top(p.probs, class_names)
      writer.writerow(
          [
              p.path,
              'video',
              '0.000',
              f'{p.num_frames / p.fps:.3f}',
              name,
              f'{prob:.6f}',
              *(f'{x:.6f}' for x in p.probs),
          ]
      )


def render_path(render: str, input_path: str, num_inputs: int) -> str:
  """`render` itself for one input; `<render stem>_<input name><ext>` for each of several."""
  if num_inputs == 1:
    return render
  stem, ext = os.path.splitext(render)
  name = os.path.splitext(os.path.basename(os.path.normpath(input_path)))[0]
  return f'{stem}_{name}{ext}'


def render_video(
    frames: RenderFrames,
    prediction: VideoPrediction,
    class_names: Sequence[str],
    path: str,
) -> None:
  """Writes the kept frames with their face crop's outline and the nearest window's emotion.

  Frames are cut to even height and width, as yuv420p video needs.

  Raises:
    PredictError: the video cannot be written.
  """
  centres = np.array([(w.start_frame + w.end_frame) / 2 for w in prediction.windows])
  # Frame i shows the window whose centre is nearest (centres are increasing).
  boundaries = (centres[1:] + centres[:-1]) / 2
  labels = [
      f'{name} {prob:.2f}'
      for name, prob in (_top(w.probs, class_names) for w in prediction.windows)
  ]

  def drawn() -> Iterator[np.ndarray]:
    for index, (frame, corners) in enumerate(frames):
      height, width = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2
      frame = np.ascontiguousarray(frame[:height, :width])
      scale = max(width * _TEXT_SCALE_PER_PIXEL, _MIN_TEXT_SCALE)
      thickness = max(1, round(2 * scale))
      if corners is not None:  # the crop, rotated as the face is
        outline = np.round(corners).astype(np.int32)[:, None]
        cv2.polylines(frame, [outline], True, _BOX_COLOUR, thickness, cv2.LINE_AA)
      label = labels[int(np.searchsorted(boundaries, index + 0.5))]
      (text_w, text_h), baseline = cv2.getTextSize(
          label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness
      )
      # A dark band under the text keeps it readable on any background.
      cv2.rectangle(frame, (0, 0), (text_w + 4, text_h + baseline + 4), (0, 0, 0), cv2.FILLED)
      cv2.putText(
          frame,
          label,
          (2, text_h + 2),
          cv2.FONT_HERSHEY_SIMPLEX,
          scale,
          _TEXT_COLOUR,
          thickness,
          cv2.LINE_AA,
      )
      yield frame

  try:
    video_io.write_video(path, drawn(), fps=prediction.fps)
  except (av.FFmpegError, OSError, ValueError) as e:
    raise PredictError(path, f'cannot write the rendered video ({_one_line(e)})') from None


def run(
    predictor: Predictor,
    inputs: Sequence[str],
    options: Options,
    *,
    output: str = '',
    render: str = '',
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
  """Predicts every input, printing its table or its error; returns the exit code.

  Args:
    predictor: the model.
    inputs: video files and frame folders.
    options: windowing and faces.
    output: a .json or .csv file for all predictions; '' for none.
    render: a video file to draw the predictions on (see `render_path`); '' for none.
    out: where tables go (default stdout).
    err: where `error: <input>: <reason>` lines go (default stderr).

  Returns:
    0 if every input was predicted (and rendered), 1 otherwise, 2 if the face detector asked for
    cannot be made.
  """
  out, err = out or sys.stdout, err or sys.stderr
  detector = None
  if options.faces != 'none':
    try:
      detector = faces_lib.make_detector(options.faces, options.face)
    except ImportError as e:
      print(f'error: --faces={options.faces}: {_one_line(e)}', file=err, flush=True)
      return 2
    if options.faces == 'detect':
      how = 'crops aligned by 5 landmarks'
      if detector.name != 'mtcnn':
        how = f'upright box crops; for aligned ones: {faces_lib.MTCNN_INSTALL}'
      print(f'faces: detect uses {detector.name} ({how})', file=err, flush=True)
  predictions, errors = [], []
  for path in inputs:
    try:
      source = open_source(path, options.fps)
      frames = RenderFrames(options.render_side) if render else None
      prediction = predict_source(predictor, source, options, detector, frames)
      if render:
        render_video(
            frames, prediction, predictor.class_names, render_path(render, path, len(inputs))
        )
    except PredictError as e:
      print(f'error: {_one_line(e)}', file=err, flush=True)
      errors.append(e)
      continue
    print(format_table(prediction, predictor.class_names), file=out, flush=True)
    predictions.append(prediction)
  if output:
    write_output(output, predictions, predictor.class_names, errors)
  return 1 if errors else 0


# ----------------------------------------------------------------------------- Command line.


def _define_flags() -> None:
  """The command's flags; defined only when run as a program, as evaluate.py does."""
  default_face = faces_lib.FaceConfig()
  flags.DEFINE_string('workdir', None, 'A finished training run.', required=True)
  flags.DEFINE_enum(
      'faces',
      Options.faces,
      FACE_MODES,
      'detect: crop each frame to its largest face, found by mtcnn (aligned by its landmarks) '
      'if installed, else by haar (an upright box); mtcnn, haar: that detector; none: frames '
      "are face crops already (as DFEW's).",
  )
  flags.DEFINE_float(
      'window_seconds',
      Options.window_seconds,
      'Window length; 0: each input is one window.',
      lower_bound=0,
  )
  flags.DEFINE_float(
      'stride_seconds', Options.stride_seconds, 'Seconds between window starts.', lower_bound=1e-3
  )
  flags.DEFINE_float(
      'fps',
      Options.fps,
      'Frame rate of frame folders and of videos that declare none.',
      lower_bound=1e-3,
  )
  flags.DEFINE_integer('batch_size', 8, 'Windows per model call.', lower_bound=1)
  flags.DEFINE_integer(
      'num_clips', 0, 'Temporal views averaged per window (0: as the run evaluated).', lower_bound=0
  )
  flags.DEFINE_integer(
      'num_crops', 0, 'Spatial views averaged per window (0: as the run evaluated).', lower_bound=0
  )
  flags.DEFINE_float(
      'test_crop_fraction',
      0.0,
      'Side of a spatial view over the frame side; below 1 for several (0: as the run evaluated).',
      lower_bound=0.0,
  )
  flags.DEFINE_integer(
      'expect_image_size',
      0,
      'Fail unless the model takes frames of this size (0: any).',
      lower_bound=0,
  )
  flags.DEFINE_list(
      'expect_classes', [], 'Fail unless the model predicts these classes, in this order.'
  )
  flags.DEFINE_string('output', '', 'Also write all predictions to this .json or .csv file.')
  flags.DEFINE_string(
      'render',
      '',
      'Write the input with face box and emotion drawn on it '
      '(several inputs: <stem>_<input name><ext> each).',
  )
  flags.DEFINE_integer(
      'render_side',
      Options.render_side,
      'Rendered videos are shrunk to at most this longer side (their frames are kept in memory).',
      lower_bound=16,
  )
  flags.DEFINE_float(
      'face_margin',
      default_face.margin,
      'Added on each side of a face box, as a fraction of its side.',
      lower_bound=0,
  )
  flags.DEFINE_float(
      'face_smoothing',
      default_face.smoothing,
      'Weight of the previous face box in the moving average.',
      lower_bound=0,
      upper_bound=0.999,
  )
  flags.DEFINE_integer(
      'face_size', default_face.crop_size, 'Side of the face crops, in pixels.', lower_bound=8
  )
  flags.DEFINE_integer(
      'face_detect_side',
      default_face.detect_max_side,
      'Frames are shrunk to this longer side for face detection.',
      lower_bound=32,
  )
  flags.DEFINE_float(
      'face_min_confidence',
      default_face.min_confidence,
      'mtcnn faces below this confidence are ignored.',
      lower_bound=0,
      upper_bound=1,
  )
  flags.DEFINE_integer(
      'face_batch_size', default_face.batch_size, 'Frames per mtcnn call.', lower_bound=1
  )
  flags.DEFINE_float(
      'face_scale_factor', default_face.scale_factor, 'Haar cascade pyramid step.', lower_bound=1.01
  )
  flags.DEFINE_integer(
      'face_min_neighbors',
      default_face.min_neighbors,
      'Overlapping detections needed to accept a face.',
      lower_bound=0,
  )
  flags.register_validator(
      'output',
      lambda v: not v or v.lower().endswith(OUTPUT_FORMATS),
      f'--output must end with one of {OUTPUT_FORMATS}',
  )


def main(argv: Sequence[str]) -> None:
  inputs = argv[1:]
  if not inputs:
    raise app.UsageError('Name at least one video file or frame folder.')
  cli.start()
  f = flags.FLAGS
  try:
    predictor = Predictor(
        f.workdir,
        batch_size=f.batch_size,
        num_clips=f.num_clips,
        num_crops=f.num_crops,
        test_crop_fraction=f.test_crop_fraction,
        expect_image_size=f.expect_image_size,
        expect_classes=f.expect_classes,
    )
  except PredictError as e:
    print(f'error: {_one_line(e)}', file=sys.stderr)
    sys.exit(2)
  face = faces_lib.FaceConfig(
      margin=f.face_margin,
      smoothing=f.face_smoothing,
      crop_size=f.face_size,
      detect_max_side=f.face_detect_side,
      min_confidence=f.face_min_confidence,
      batch_size=f.face_batch_size,
      scale_factor=f.face_scale_factor,
      min_neighbors=f.face_min_neighbors,
  )
  options = Options(
      faces=f.faces,
      window_seconds=f.window_seconds,
      stride_seconds=f.stride_seconds,
      fps=f.fps,
      face=face,
      render_side=f.render_side,
  )
  sys.exit(run(predictor, inputs, options, output=f.output, render=f.render))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
