"""Decoding video files (mp4, avi, mov, webm, ...) into RGB frames with PyAV.

Used by the dataset builders for their "original videos" source and by
prediction on user videos; `write_video` makes test and demo videos. Every
failure to read surfaces as `VideoReadError` naming the file, so a caller can
skip one broken clip and report it instead of crashing a long build, or tell a
user which input to fix.
"""

from collections.abc import Iterable, Iterator
import fractions
import itertools
import os

import av
import numpy as np

# Containers often declare a few more frames than ffmpeg decodes (mp4 edit
# lists, leading B-frames dropped at a cut), so only a larger shortfall is
# treated as truncation.
_TRUNCATION_TOLERANCE_FRAMES = 2
_TRUNCATION_TOLERANCE_FRACTION = 0.05


class VideoReadError(Exception):
  """A video file is missing, unreadable, truncated, empty or unsupported."""

  def __init__(self, path: str | os.PathLike[str], problem: str):
    self.path = os.fspath(path)
    self.problem = problem
    super().__init__(f'{self.path}: {problem}')


def _is_truncated(num_decoded: int, num_declared: int) -> bool:
  """Whether fewer frames decoded than the container declares, beyond noise."""
  if num_declared <= 0:  # Unknown (webm, some streams): nothing to compare.
    return False
  tolerance = max(_TRUNCATION_TOLERANCE_FRAMES, int(_TRUNCATION_TOLERANCE_FRACTION * num_declared))
  return num_declared - num_decoded > tolerance


def _open_video(path: str) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
  """Opens `path` and returns its container and first video stream."""
  if not os.path.isfile(path):
    raise VideoReadError(path, 'no such file')
  if os.path.getsize(path) == 0:
    raise VideoReadError(path, 'zero-length file')
  try:
    container = av.open(path)
  except (av.FFmpegError, OSError) as e:
    raise VideoReadError(path, f'cannot open as a video ({e})') from e
  if not container.streams.video:
    container.close()
    raise VideoReadError(
        path, 'contains no video stream (unsupported or ' 'truncated before its header ends)'
    )
  stream = container.streams.video[0]
  # Frame-level threading: decoding is the bottleneck of the video source.
  stream.thread_type = 'AUTO'
  return container, stream


def iter_frames(path: str | os.PathLike[str]) -> Iterator[np.ndarray]:
  """Yields the frames of a video one at a time, in presentation order.

  The file is opened on the first `next()`. A file that turns out truncated is
  only detectable at its end: frames already yielded stay valid and then
  `VideoReadError` is raised, so stream consumers must be ready for it.

  Args:
    path: a video file in any container and codec that ffmpeg decodes.

  Yields:
    uint8 arrays of shape (H, W, 3), RGB.

  Raises:
    VideoReadError: the file is missing, empty, not a video, fails to decode,
      yields no frames, or decodes to noticeably fewer frames than declared.
  """
  path = os.fspath(path)
  container, stream = _open_video(path)
  num_decoded = 0
  with container:
    try:
      for frame in container.decode(stream):
        yield frame.to_ndarray(format='rgb24')
        num_decoded += 1
    except (av.FFmpegError, OSError) as e:
      raise VideoReadError(
          path,
          f'decoding failed after {num_decoded} frames ({e}); the file '
          'is probably truncated or corrupt',
      ) from e
    num_declared = stream.frames
  if num_decoded == 0:
    raise VideoReadError(path, 'no frame could be decoded (truncated or empty ' 'video stream)')
  if _is_truncated(num_decoded, num_declared):
    raise VideoReadError(
        path, f'truncated: decoded {num_decoded} of {num_declared} frames the ' 'container declares'
    )


def video_fps(path: str | os.PathLike[str]) -> float:
  """Returns the frame rate a video declares, 0.0 when it declares none.

  Args:
    path: a video file.

  Raises:
    VideoReadError: the file cannot be opened as a video.
  """
  container, stream = _open_video(os.fspath(path))
  with container:
    rate = stream.average_rate or stream.guessed_rate
  return float(rate) if rate else 0.0


def write_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    codec: str = 'libx264',
) -> None:
  """Encodes RGB uint8 frames (H, W, 3), H and W even, into a video file.

  The container follows the extension (.mp4, .avi, .webm, ...). MP4/MOV files
  get their index at the front (faststart), as web-ready videos do.

  Args:
    path: output file.
    frames: the frames in order, all of one size.
    fps: frame rate to declare.
    codec: an ffmpeg encoder the container accepts ('libx264', 'mpeg4',
      'libvpx-vp9', ...).

  Raises:
    ValueError: `frames` is empty.
  """
  path = os.fspath(path)
  frames = iter(frames)
  first = next(frames, None)
  if first is None:
    raise ValueError(f'{path}: no frames to write')
  is_mp4_family = os.path.splitext(path)[1].lower() in ('.mp4', '.mov')
  options = {'movflags': 'faststart'} if is_mp4_family else {}
  with av.open(path, 'w', options=options) as container:
    stream = container.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1001))
    stream.height, stream.width = first.shape[:2]
    stream.pix_fmt = 'yuv420p'
    for frame in itertools.chain([first], frames):
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(stream.encode())  # Flush the encoder's buffered frames.
