"""Faces in videos: found per frame, smoothed over time, cropped (aligned by landmarks) as datasets.

The models are trained on face crops (DFEW's clip_224x224 frames, FERV39k's 2_ClipsforFaceCrop,
both cut around detected faces), so a video is cropped the same way before classification:

1. Found: each frame's largest face, by one of two detectors.
   - 'mtcnn' (the `mtcnn` package: TensorFlow, on CPU): a box and five landmarks (`LANDMARKS`:
     the eyes, the nose tip, the mouth corners; "left" is the image's left). Frames go through
     it in batches of `FaceConfig.batch_size`, 2-3x faster than one at a time.
   - 'haar' (OpenCV's bundled frontal-face cascade): a box only; the fallback when `mtcnn` is
     not installed.
   `make_detector('detect', config)` takes mtcnn when it imports, else haar.
2. Smoothed: box and landmarks follow an exponential moving average over the frames, so detector
   jitter does not shake the crop; a frame without a face keeps the last one, frames before the
   first face take that first one.
3. Cropped: a similarity transform (rotation, uniform scale, translation) fitted by least squares
   maps the five landmarks onto `TEMPLATE` (eye line horizontal, eyes 0.4 of the face's side
   apart, widened by `FaceConfig.margin`), and `cv2.warpAffine` cuts the crop_size x crop_size
   crop. A face without landmarks (haar) gets the upright square around its box, widened alike.
   Parts of the crop outside the frame are black.

Coordinates are frame pixels, continuous: pixel (i, j) covers [j, j + 1) x [i, i + 1). A `Face`
holds a box `(cx, cy, side)` (centre and side of a square) and, from mtcnn, (5, 2) landmarks.

The API is pure functions of frames and a `FaceConfig`, for predict.py and the dataset builders:

  detector = faces.make_detector('detect', config)        # once: MTCNN loads its networks
  track = faces.face_track(frames, config, detector)      # list[Face], one per frame
  crops = [faces.aligned_crop(f, face, config) for f, face in zip(frames, track)]

`face_track` reads `frames` (any iterable, e.g. a decoder's generator) once and keeps no frame;
cropping then needs the frames a second time. To crop in the same pass, `tracked_frames(frames,
config, detector)` yields each frame with its smoothed face, holding back only the frames of one
detection batch and those before the first face (their face is not known until then).
`crop_corners(face, config)` is where a crop lies in its frame (to draw it); `smooth` is the
moving average alone, over detections from elsewhere.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Sequence
import dataclasses
import itertools
from typing import Protocol

import cv2
import numpy as np

HAAR_CASCADE = 'haarcascade_frontalface_default.xml'
DETECTORS = ('mtcnn', 'haar')
LANDMARKS = ('left_eye', 'right_eye', 'nose', 'mouth_left', 'mouth_right')
# Where the landmarks go, in units of the face's side, from its centre (x right, y down): a
# frontal face's MTCNN landmarks within its square box (MTCNN boxes span brow to chin).
TEMPLATE = np.array([(-0.2, -0.14), (0.2, -0.14), (0.0, 0.06), (-0.17, 0.2), (0.17, 0.2)])
MTCNN_INSTALL = 'pip install mtcnn==1.0.0'


class NoFaceError(Exception):
  """No frame of a video has a detectable face."""


@dataclasses.dataclass(frozen=True)
class FaceConfig:
  """How faces are found and cropped.

  Attributes:
    margin: added on every side of the face, as a fraction of its side (detector boxes are tight
      around brows, eyes and mouth; dataset crops show the whole face).
    smoothing: weight of the previous face in the moving average, in [0, 1); 0: no smoothing.
    crop_size: side of the square crops, in pixels (DFEW ships 224 x 224 face frames); the
      evaluation preprocessing then resizes them to the model's input size.
    detect_max_side: frames are shrunk to at most this many pixels on their longer side for
      detection only (detection cost grows with the area, faces stay findable).
    min_confidence: mtcnn's faces below this confidence (its final network's score) are ignored.
    batch_size: frames per mtcnn call.
    scale_factor: the Haar cascade's image-pyramid step.
    min_neighbors: overlapping detections the Haar cascade needs to accept a face (higher: fewer
      false faces, more missed ones).
  """

  margin: float = 0.25
  smoothing: float = 0.6
  crop_size: int = 224
  detect_max_side: int = 640
  min_confidence: float = 0.9
  batch_size: int = 16
  scale_factor: float = 1.1
  min_neighbors: int = 5


@dataclasses.dataclass(frozen=True)
class Face:
  """One face in one frame.

  Attributes:
    box: (3,) float64 `(cx, cy, side)` of a square around the face.
    landmarks: (5, 2) float64 (x, y) of `LANDMARKS`; None from a detector without landmarks.
  """

  box: np.ndarray
  landmarks: np.ndarray | None = None


class Detector(Protocol):
  """Finds the largest face of each frame."""

  name: str
  batch_size: int

  def detect(self, frames: Sequence[np.ndarray]) -> list[Face | None]:
    """Per (h, w, 3) uint8 RGB frame (all of one size), its largest face or None."""


def _detection_scale(frame: np.ndarray, config: FaceConfig) -> float:
  return min(1.0, config.detect_max_side / max(frame.shape[:2]))


def _shrink(frame: np.ndarray, scale: float) -> np.ndarray:
  if scale == 1.0:
    return frame
  return cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


class HaarDetector:
  """The largest face of a frame, by OpenCV's frontal-face Haar cascade (no landmarks)."""

  name = 'haar'
  batch_size = 1

  def __init__(self, config: FaceConfig):
    self.config = config
    path = cv2.data.haarcascades + HAAR_CASCADE
    self._cascade = cv2.CascadeClassifier(path)
    if self._cascade.empty():  # OpenCV returns an empty classifier instead of raising.
      raise FileNotFoundError(f'cannot load the Haar cascade {path}')

  def detect(self, frames: Sequence[np.ndarray]) -> list[Face | None]:
    return [self._largest(frame) for frame in frames]

  def _largest(self, frame: np.ndarray) -> Face | None:
    scale = _detection_scale(frame, self.config)
    gray = _shrink(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), scale)
    # Histogram equalisation is the cascade's usual companion: it was trained on normalised
    # contrast, and dim or washed-out frames otherwise lose faces.
    found = self._cascade.detectMultiScale(
        cv2.equalizeHist(gray),
        scaleFactor=self.config.scale_factor,
        minNeighbors=self.config.min_neighbors,
    )
    if len(found) == 0:
      return None
    x, y, w, h = max(found, key=lambda f: f[2] * f[3]) / scale
    return Face(np.array([x + w / 2, y + h / 2, max(w, h)], np.float64))


class MtcnnDetector:
  """The largest confident face of a frame and its landmarks, by MTCNN on the CPU.

  The largest, not the most confident: MTCNN's confidences saturate near 1 for every clear face,
  so the most confident one would hop between people, while the subject of a clip is the biggest.

  Raises:
    ImportError: `mtcnn` is not installed (the message names the install command).
  """

  name = 'mtcnn'

  def __init__(self, config: FaceConfig):
    try:
      import mtcnn  # pylint: disable=g-import-not-at-top  (optional, and slow: TensorFlow)
    except ImportError as e:
      raise ImportError(
          f'mtcnn face detection needs the mtcnn package ({e}): {MTCNN_INSTALL}'
      ) from None
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    try:
      # As feadapter_jax.data does: TensorFlow must not reserve the GPU memory JAX needs.
      tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:  # TensorFlow already started; MTCNN's ops are pinned to the CPU anyway.
      pass
    self.config = config
    self.batch_size = config.batch_size
    self._mtcnn = mtcnn.MTCNN(device='CPU:0')

  def detect(self, frames: Sequence[np.ndarray]) -> list[Face | None]:
    scale = _detection_scale(frames[0], self.config)
    # Rows: image index, x1, y1, x2, y2, confidence, 5 landmark x, 5 landmark y (LANDMARKS order);
    # boxes are kept where MTCNN puts them (fit_to_image=False): clipping would shift the centre.
    rows = self._mtcnn.detect_faces(
        [_shrink(frame, scale) for frame in frames],
        box_format='xyxy',
        output_type='numpy',
        fit_to_image=False,
        threshold_onet=self.config.min_confidence,
    )
    found: list[Face | None] = [None] * len(frames)
    for row in sorted(rows, key=lambda r: (r[3] - r[1]) * (r[4] - r[2])):  # largest last
      x1, y1, x2, y2 = row[1:5] / scale
      landmarks = np.stack([row[6:11], row[11:16]], axis=1) / scale
      box = np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)], np.float64)
      found[int(row[0])] = Face(box, landmarks.astype(np.float64))
    return found


def make_detector(kind: str, config: FaceConfig) -> Detector:
  """A detector: 'mtcnn', 'haar', or 'detect' (mtcnn when it imports, else haar).

  Raises:
    ImportError: 'mtcnn' asked and not installed.
    ValueError: an unknown kind.
  """
  if kind == 'detect':
    try:
      return MtcnnDetector(config)
    except ImportError:
      return HaarDetector(config)
  if kind == 'mtcnn':
    return MtcnnDetector(config)
  if kind == 'haar':
    return HaarDetector(config)
  raise ValueError(f'unknown face detector {kind!r}: use detect or one of {DETECTORS}')


def _blend(previous: Face, current: Face, smoothing: float) -> Face:
  mix = lambda a, b: smoothing * a + (1.0 - smoothing) * b  # noqa: E731
  landmarks = None
  if previous.landmarks is not None and current.landmarks is not None:
    landmarks = mix(previous.landmarks, current.landmarks)
  return Face(mix(previous.box, current.box), landmarks)


def smooth(detections: Iterable[Face | None], smoothing: float) -> Iterator[Face]:
  """One face per frame from per-frame detections with gaps, as a stream.

  An exponential moving average over the detections (box and landmarks); a frame without a
  detection keeps the last face, and frames before the first detection take that first face
  (they are yielded once it arrives).

  Args:
    detections: per frame, its face or None where none was found.
    smoothing: weight of the previous face, in [0, 1).

  Yields:
    the smoothed face of each frame, in order.

  Raises:
    NoFaceError: no frame has a detection (raised once `detections` is exhausted).
  """
  current, waiting, count = None, 0, 0
  for count, detection in enumerate(detections, 1):
    if current is None:
      if detection is None:
        waiting += 1
        continue
      current = detection
      yield from itertools.repeat(current, waiting)
    elif detection is not None:
      current = _blend(current, detection, smoothing)
    yield current
  if current is None:
    raise NoFaceError(f'no face found in any of the {count} frames')


def tracked_frames(
    frames: Iterable[np.ndarray], config: FaceConfig, detector: Detector
) -> Iterator[tuple[np.ndarray, Face]]:
  """Each frame with its smoothed face, reading `frames` once.

  Holds back the frames of one detection batch, and all frames before the first face.

  Raises:
    NoFaceError: no frame has a face.
  """
  waiting = collections.deque()

  def detections() -> Iterator[Face | None]:
    iterator = iter(frames)
    while batch := list(itertools.islice(iterator, detector.batch_size)):
      waiting.extend(batch)
      yield from detector.detect(batch)

  for face in smooth(detections(), config.smoothing):
    yield waiting.popleft(), face


def face_track(
    frames: Iterable[np.ndarray], config: FaceConfig, detector: Detector | None = None
) -> list[Face]:
  """The smoothed face of every frame; frames are read once and not kept.

  Args:
    frames: (h, w, 3) uint8 RGB frames of one video, in order, all of one size.
    config: detection and smoothing knobs.
    detector: from `make_detector` (one can serve many videos); None: `make_detector('detect')`.

  Raises:
    NoFaceError: no frame has a face.
  """
  detector = detector or make_detector('detect', config)
  return [face for _, face in tracked_frames(frames, config, detector)]


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
  """The (2, 3) rotation + uniform scale + translation mapping (n, 2) `source` points closest
  to `target` in least squares (Umeyama's solution, which in 2-D has a closed form)."""
  source_mean, target_mean = source.mean(0), target.mean(0)
  s, t = source - source_mean, target - target_mean
  norm = (s**2).sum()
  # scale * (cos, sin) of the rotation angle.
  a = (s * t).sum() / norm
  b = (s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0]).sum() / norm
  rotation = np.array([[a, -b], [b, a]])
  return np.concatenate([rotation, (target_mean - rotation @ source_mean)[:, None]], axis=1)


def crop_transform(face: Face, config: FaceConfig) -> np.ndarray:
  """The (2, 3) map from frame coordinates to crop coordinates (continuous, see the module)."""
  size = config.crop_size
  # The template's face spans 1 / (1 + 2 margin) of the crop, centred.
  span = size / (1.0 + 2.0 * config.margin)
  if face.landmarks is not None:
    return similarity_transform(face.landmarks, TEMPLATE * span + size / 2)
  cx, cy, side = face.box
  scale = span / side
  return np.array([[scale, 0.0, size / 2 - scale * cx], [0.0, scale, size / 2 - scale * cy]])


def crop_corners(face: Face, config: FaceConfig) -> np.ndarray:
  """(4, 2) frame coordinates of the crop's corners (top-left, top-right, bottom-right,
  bottom-left), e.g. to draw where the crop is."""
  inverse = cv2.invertAffineTransform(crop_transform(face, config))
  size = config.crop_size
  corners = np.array([(0, 0), (size, 0), (size, size), (0, size)], np.float64)
  return corners @ inverse[:, :2].T + inverse[:, 2]


def aligned_crop(frame: np.ndarray, face: Face, config: FaceConfig) -> np.ndarray:
  """The (crop_size, crop_size, 3) crop of an (h, w, 3) frame around `face` (see the module)."""
  matrix = crop_transform(face, config)
  scale = float(np.hypot(*matrix[:, 0]))
  if scale < 1.0:
    # Shrinking with a bilinear warp aliases: the crop's region is first resized with area
    # averaging to about the crop's scale, which leaves the warp only a rotation.
    corners = crop_corners(face, config)
    height, width = frame.shape[:2]
    x0, y0 = np.clip(np.floor(corners.min(0)).astype(int), 0, [width, height])
    x1, y1 = np.clip(np.ceil(corners.max(0)).astype(int), 0, [width, height])
    if x1 > x0 and y1 > y0:
      region = frame[y0:y1, x0:x1]
      shrunk = cv2.resize(
          region,
          (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))),
          interpolation=cv2.INTER_AREA,
      )
      # Frame coordinates -> shrunk-region coordinates, per axis (rounding makes them differ).
      fx, fy = shrunk.shape[1] / (x1 - x0), shrunk.shape[0] / (y1 - y0)
      to_region = np.array([[fx, 0.0, -fx * x0], [0.0, fy, -fy * y0], [0.0, 0.0, 1.0]])
      matrix = matrix @ np.linalg.inv(to_region)
      frame = shrunk
  # OpenCV samples at pixel centres: continuous x maps to pixel x - 0.5 on both sides.
  pixel = matrix.copy()
  pixel[:, 2] += matrix[:, :2].sum(1) * 0.5 - 0.5
  size = config.crop_size
  return cv2.warpAffine(
      frame, pixel, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
  )
