"""Face boxes for prediction on user videos: detect, smooth over time, crop square.

The models are trained on face crops (DFEW's clip_224x224 frames, FERV39k's 2_ClipsforFaceCrop),
so a user's video is cropped the same way before classification: the largest face of each frame
from OpenCV's bundled frontal-face Haar cascade, its box smoothed over time (an exponential moving
average, so detector jitter does not shake the crop), widened by a margin, made square and resized.

A box is `(cx, cy, side)` in frame pixels: the centre and side of a square.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import cv2
import numpy as np

HAAR_CASCADE = 'haarcascade_frontalface_default.xml'


class NoFaceError(Exception):
  """No frame of a video has a detectable face."""


@dataclasses.dataclass(frozen=True)
class FaceConfig:
  """How faces are found and cropped.

  Attributes:
    margin: added on every side of the detected box, as a fraction of its side (Haar boxes are
      tight around eyes and mouth; dataset crops show the whole face).
    smoothing: weight of the previous box in the moving average, in [0, 1); 0: no smoothing.
    crop_size: side of the square crops, in pixels (DFEW ships 224 x 224 face frames); the
      evaluation preprocessing then resizes them to the model's input size.
    detect_max_side: frames are shrunk to at most this many pixels on their longer side for
      detection only (the cascade's cost grows with the area, faces stay findable).
    scale_factor: the cascade's image-pyramid step.
    min_neighbors: overlapping detections the cascade needs to accept a face (higher: fewer
      false faces, more missed ones).
  """

  margin: float = 0.25
  smoothing: float = 0.6
  crop_size: int = 224
  detect_max_side: int = 640
  scale_factor: float = 1.1
  min_neighbors: int = 5


class FaceDetector:
  """The largest face of a frame, by OpenCV's frontal-face Haar cascade."""

  def __init__(self, config: FaceConfig):
    self.config = config
    path = cv2.data.haarcascades + HAAR_CASCADE
    self._cascade = cv2.CascadeClassifier(path)
    if self._cascade.empty():  # OpenCV returns an empty classifier instead of raising.
      raise FileNotFoundError(f'cannot load the Haar cascade {path}')

  def largest(self, frame: np.ndarray) -> np.ndarray | None:
    """The square box `(cx, cy, side)` of the largest face in an RGB frame, None if none."""
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    scale = min(1.0, self.config.detect_max_side / max(gray.shape))
    if scale < 1.0:
      gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    # Histogram equalisation is the cascade's usual companion: it was trained on normalised
    # contrast, and dim or washed-out frames otherwise lose faces.
    faces = self._cascade.detectMultiScale(
        cv2.equalizeHist(gray),
        scaleFactor=self.config.scale_factor,
        minNeighbors=self.config.min_neighbors,
    )
    if len(faces) == 0:
      return None
    x, y, w, h = max(faces, key=lambda f: f[2] * f[3]) / scale
    return np.array([x + w / 2, y + h / 2, max(w, h)], np.float64)


def smooth_boxes(boxes: Sequence[np.ndarray | None], smoothing: float) -> np.ndarray:
  """One box per frame from per-frame detections with gaps.

  An exponential moving average over the detections; a frame without a detection keeps the last
  box, and frames before the first detection take that first box.

  Args:
    boxes: per frame, `(cx, cy, side)` or None where no face was found.
    smoothing: weight of the previous box, in [0, 1).

  Returns:
    (n, 3) float64 boxes.

  Raises:
    NoFaceError: no frame has a detection.
  """
  first = next((box for box in boxes if box is not None), None)
  if first is None:
    raise NoFaceError(f'no face found in any of the {len(boxes)} frames')
  current = np.asarray(first, np.float64)
  smoothed = np.empty((len(boxes), 3))
  for i, box in enumerate(boxes):
    if box is not None:
      current = smoothing * current + (1.0 - smoothing) * np.asarray(box, np.float64)
    smoothed[i] = current
  return smoothed


def crop_rect(box: np.ndarray, margin: float) -> tuple[int, int, int]:
  """(x0, y0, side) in whole pixels of the square crop around `box` widened by `margin`."""
  cx, cy, side = box
  side = max(int(round(side * (1.0 + 2.0 * margin))), 1)
  return int(round(cx - side / 2)), int(round(cy - side / 2)), side


def crop(frame: np.ndarray, box: np.ndarray, config: FaceConfig) -> np.ndarray:
  """The square face crop of an (h, w, 3) frame, resized to (crop_size, crop_size, 3).

  Parts of the square outside the frame are black, so the face keeps its place and scale in the
  crop when it nears an edge.
  """
  x0, y0, side = crop_rect(box, config.margin)
  height, width = frame.shape[:2]
  square = np.zeros((side, side, 3), frame.dtype)
  top, left = max(y0, 0), max(x0, 0)
  bottom, right = min(y0 + side, height), min(x0 + side, width)
  if bottom > top and right > left:
    square[top - y0 : bottom - y0, left - x0 : right - x0] = frame[top:bottom, left:right]
  size = config.crop_size
  interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
  return cv2.resize(square, (size, size), interpolation=interpolation)
