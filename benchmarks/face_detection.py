"""Face detection and alignment speed: frames per second of MTCNN and of the Haar cascade.

Writes a 10 s, 25 fps, 640x360 H.264 video of scikit-image's astronaut moving and changing size
over a photograph, decodes it once into memory, then per detector times what predict.py does per
frame after decoding: `faces.tracked_frames` (detection, smoothing) and `faces.aligned_crop`.
Detector start-up (MTCNN builds its networks) is timed apart, and one batch warms up first.

  python benchmarks/face_detection.py            # table
  python benchmarks/face_detection.py --json     # one JSON object per row

Target: 250 frames (10 s at 25 fps) in <= 30 s with mtcnn and <= 90 s with haar on 2 cores
(measured 27 s and 78 s on 2 shared AMD EPYC cores at load ~6; the cascade scans every window
of a 640 px frame, MTCNN mostly works on a 12 px-cell pyramid in batches).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import cv2
import numpy as np
from skimage import data as skimage_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402  pylint: disable=g-import-not-at-top
from feadapter_jax import faces  # noqa: E402  pylint: disable=g-import-not-at-top
from feadapter_jax.data import video_io  # noqa: E402  pylint: disable=g-import-not-at-top

# The astronaut's face centre in the 512 px photograph.
FACE_CENTRE = np.array([223.0, 117.0])


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seconds', type=float, default=10.0)
  parser.add_argument('--fps', type=float, default=25.0)
  parser.add_argument('--width', type=int, default=640)
  parser.add_argument('--height', type=int, default=360)
  parser.add_argument('--detectors', default='haar,mtcnn', help='comma-separated faces.DETECTORS')
  parser.add_argument('--batch_size', type=int, default=faces.FaceConfig.batch_size)
  parser.add_argument('--json', action='store_true', help='print rows as JSON lines')
  return parser.parse_args()


def synthetic_video(path: str, num_frames: int, width: int, height: int, fps: float) -> np.ndarray:
  """Writes the moving astronaut to `path`; returns the (num_frames, 2) true face centres.

  Her photograph shrinks and grows between 0.45 and 0.7 of the frame height and circles the
  frame once, over scikit-image's coffee photograph.
  """
  background = cv2.resize(skimage_data.coffee(), (width, height), interpolation=cv2.INTER_AREA)
  astronaut = skimage_data.astronaut()
  phases = np.linspace(0.0, 2 * np.pi, num_frames, endpoint=False)
  sides = (height * (0.575 + 0.125 * np.sin(2 * phases))).astype(int)
  centres = np.stack(
      [width / 2 + width / 4 * np.cos(phases), height / 2 + height / 8 * np.sin(phases)], 1
  )

  def frames():
    for side, (cx, cy) in zip(sides, centres):
      frame = background.copy()
      x0, y0 = int(cx - side / 2), int(cy - side / 2)
      photo = cv2.resize(astronaut, (side, side), interpolation=cv2.INTER_AREA)
      top, left = max(y0, 0), max(x0, 0)
      bottom, right = min(y0 + side, height), min(x0 + side, width)
      frame[top:bottom, left:right] = photo[top - y0 : bottom - y0, left - x0 : right - x0]
      yield frame

  video_io.write_video(path, frames(), fps=fps)
  origins = np.stack([centres[:, 0] - sides / 2, centres[:, 1] - sides / 2], 1).astype(int)
  return origins + FACE_CENTRE * sides[:, None] / 512


def measure(name: str, frames: list[np.ndarray], centres: np.ndarray, config: faces.FaceConfig):
  """One row: start-up, frames/s of detection + smoothing + alignment, tracking error."""
  start = time.perf_counter()
  detector = faces.make_detector(name, config)
  detector.detect(frames[: detector.batch_size])  # warm-up: TensorFlow traces its functions
  startup_s = time.perf_counter() - start
  start = time.perf_counter()
  track = []
  for frame, face in faces.tracked_frames(frames, config, detector):
    faces.aligned_crop(frame, face, config)
    track.append(face.box[:2])
  seconds = time.perf_counter() - start
  error = np.linalg.norm(np.stack(track) - centres, axis=1)
  return {
      'detector': name,
      'frames': len(frames),
      'seconds': round(seconds, 2),
      'frames_per_s': round(len(frames) / seconds, 1),
      'startup_s': round(startup_s, 2),
      'median_centre_error_px': round(float(np.median(error)), 1),
      'frames_within_10px': round(float(np.mean(error < 10)), 3),
  }


def main() -> None:
  args = _parse_args()
  num_frames = round(args.seconds * args.fps)
  config = faces.FaceConfig(batch_size=args.batch_size)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'astronaut.mp4')
    centres = synthetic_video(path, num_frames, args.width, args.height, args.fps)
    frames = list(video_io.iter_frames(path))
  rows = [measure(name, frames, centres, config) for name in args.detectors.split(',')]
  if len(rows) > 1:
    base = rows[0]['frames_per_s']
    for row in rows:
      row['speed_vs_first_detector'] = round(row['frames_per_s'] / base, 2)
  header = (
      f'{num_frames} frames {args.width}x{args.height}, {common.cores()} cores '
      f'({common.cpu_model()}), load {common.load_average()[0]:.1f}, mtcnn batch {args.batch_size}'
  )
  if args.json:
    for row in rows:
      print(json.dumps({**row, 'cores': common.cores()}))
    return
  print(header)
  print(common.markdown_table(list(rows[0]), [list(r.values()) for r in rows]))


if __name__ == '__main__':
  main()
