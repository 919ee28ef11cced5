"""Tests for feadapter_jax.data.video_io: decoding, and every failure naming its file."""

import numpy as np
import pytest

from feadapter_jax.data import video_io

NUM_FRAMES = 10
# Frame i is flat grey at this step times i: the temporal order survives lossy
# coding (errors of a few levels) and shows in the decoded means.
BRIGHTNESS_STEP = 20


def _ramp_frames(size: int = 32) -> list[np.ndarray]:
  return [np.full((size, size, 3), BRIGHTNESS_STEP * i, np.uint8) for i in range(NUM_FRAMES)]


@pytest.mark.parametrize(
    'name,codec', [('clip.mp4', 'libx264'), ('clip.avi', 'mpeg4'), ('clip.webm', 'libvpx-vp9')]
)
def test_write_and_read_round_trip(tmp_path, name, codec):
  path = tmp_path / name
  video_io.write_video(path, _ramp_frames(), fps=25.0, codec=codec)

  frames, fps = np.stack(list(video_io.iter_frames(path))), video_io.video_fps(path)

  assert frames.shape == (NUM_FRAMES, 32, 32, 3)
  assert frames.dtype == np.uint8
  assert fps == pytest.approx(25.0)
  means = frames.reshape(NUM_FRAMES, -1).mean(axis=1)
  np.testing.assert_allclose(means, BRIGHTNESS_STEP * np.arange(NUM_FRAMES), atol=4)


def test_iter_frames_streams_the_same_frames(tmp_path):
  path = tmp_path / 'clip.mp4'
  video_io.write_video(path, _ramp_frames())

  stream = video_io.iter_frames(path)
  first = next(stream)
  streamed = np.stack([first, *stream])

  assert first.shape == (32, 32, 3) and first.dtype == np.uint8
  np.testing.assert_array_equal(streamed, np.stack(list(video_io.iter_frames(path))))


def _noise_video(path, num_frames: int = 40) -> bytes:
  # Noise keeps every frame large, so cutting the file cuts frames off.
  rng = np.random.default_rng(0)
  video_io.write_video(
      path, (rng.integers(0, 256, (64, 64, 3), np.uint8) for _ in range(num_frames)), codec='mpeg4'
  )
  return path.read_bytes()


@pytest.mark.parametrize('kept_fraction', [0.6, 0.02])
def test_truncated_video_raises_naming_file(tmp_path, kept_fraction):
  data = _noise_video(tmp_path / 'full.mp4')
  path = tmp_path / 'cut.mp4'
  path.write_bytes(data[: int(len(data) * kept_fraction)])

  with pytest.raises(video_io.VideoReadError, match='cut.mp4') as e:
    list(video_io.iter_frames(path))
  assert e.value.path == str(path)


@pytest.mark.parametrize(
    'content,problem',
    [
        (b'', 'zero-length'),
        (b'this is not a video' * 50, 'cannot open'),
        (None, 'no such file'),
    ],
)
def test_unreadable_inputs_raise_naming_file(tmp_path, content, problem):
  path = tmp_path / 'bad.mp4'
  if content is not None:
    path.write_bytes(content)

  with pytest.raises(video_io.VideoReadError, match=problem) as e:
    list(video_io.iter_frames(path))
  assert 'bad.mp4' in str(e.value)


def test_write_video_rejects_no_frames(tmp_path):
  with pytest.raises(ValueError, match='no frames'):
    video_io.write_video(tmp_path / 'empty.mp4', [])
