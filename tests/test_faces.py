"""faces.py on a real photograph (scikit-image's astronaut): both detectors find the face, MTCNN's
landmarks align a rotated face back upright, gaps and faceless videos, smoothing, crop geometry.
predict.py's use of it (one decoding pass, the command line) is in test_predict.py."""

import sys

import cv2
import numpy as np
import pytest
from skimage import data as skimage_data

from feadapter_jax import faces

CONFIG = faces.FaceConfig()
# The astronaut's face (512 x 512 photograph): around (223, 117), ~100 px high.
FACE_CENTRE, FACE_SIDE = np.array([223.0, 117.0]), 100.0


@pytest.fixture(scope='module')
def mtcnn():
  return faces.make_detector('mtcnn', CONFIG)


@pytest.fixture(scope='module')
def astronaut():
  return skimage_data.astronaut()


def _eye_angle(face):
  """Degrees of the eye line from horizontal (positive: the right eye lower, y is down)."""
  dx, dy = face.landmarks[1] - face.landmarks[0]
  return np.degrees(np.arctan2(dy, dx))


def _rotated(image, degrees):
  """`image` in the middle of a grey canvas, rotated about the canvas centre (counter-clockwise
  as seen for positive degrees)."""
  size = 2 * max(image.shape[:2])
  canvas = np.full((size, size, 3), 128, np.uint8)
  top, left = (size - image.shape[0]) // 2, (size - image.shape[1]) // 2
  canvas[top : top + image.shape[0], left : left + image.shape[1]] = image
  matrix = cv2.getRotationMatrix2D((size / 2, size / 2), degrees, 1.0)
  return cv2.warpAffine(canvas, matrix, (size, size), borderValue=(128, 128, 128))


def test_mtcnn_finds_the_face_and_plausible_landmarks(mtcnn, astronaut):
  (face,) = mtcnn.detect([astronaut])
  assert mtcnn.name == 'mtcnn' and face.landmarks.shape == (5, 2)
  assert np.abs(face.box[:2] - FACE_CENTRE).max() < 15 and 80 < face.box[2] < 130
  left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
  half = face.box[2] / 2
  assert (np.abs(face.landmarks - face.box[:2]) < half).all()  # all inside the box
  assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
  assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
  assert 30 < right_eye[0] - left_eye[0] < 60 and abs(_eye_angle(face)) < 6  # nearly upright


def test_haar_finds_the_face_without_landmarks(astronaut):
  (face,) = faces.make_detector('haar', CONFIG).detect([astronaut])
  assert face.landmarks is None
  assert np.abs(face.box[:2] - FACE_CENTRE).max() < 15 and 80 < face.box[2] < 130


@pytest.mark.parametrize('degrees', [15, -15, 0])
def test_a_rotated_face_is_aligned_upright(mtcnn, astronaut, degrees):
  frame = _rotated(astronaut, degrees)
  (face,) = mtcnn.detect([frame])
  # The photo's own tilt (~3 degrees) plus the rotation (counter-clockwise: the right eye rises).
  assert abs(_eye_angle(face) + degrees) < 6

  crop = faces.aligned_crop(frame, face, CONFIG)

  assert crop.shape == (224, 224, 3)
  (again,) = mtcnn.detect([crop])
  assert abs(_eye_angle(again)) < 3
  # The eyes land on the template: 0.4 of the face's side apart, which spans 1 / 1.5 of the crop.
  eyes = again.landmarks[:2]
  template = faces.TEMPLATE[:2] * 224 / 1.5 + 112
  assert np.abs(eyes - template).max() < 8


def test_haar_crops_are_upright_squares_around_the_box(astronaut):
  face = faces.Face(np.array([223.0, 117.0, 90.0]))
  crop = faces.aligned_crop(astronaut, face, CONFIG)
  # 90 px + 25 % margin each side = a 135 px square from (155.5, 49.5), shrunk to 224 px.
  expected = cv2.resize(astronaut[50:185, 156:291], (224, 224), interpolation=cv2.INTER_AREA)
  assert crop.shape == (224, 224, 3)
  assert np.abs(crop.astype(float) - expected).mean() < 6
  corners = faces.crop_corners(face, CONFIG)
  np.testing.assert_allclose(
      corners, [(155.5, 49.5), (290.5, 49.5), (290.5, 184.5), (155.5, 184.5)]
  )


def test_crop_is_square_with_margin_and_black_outside_the_frame():
  frame = np.zeros((100, 200, 3), np.uint8)
  frame[40:60, 90:110] = 255  # a 20 px "face" centred at (100, 50)
  config = faces.FaceConfig(margin=0.5, crop_size=40)
  inside = faces.aligned_crop(frame, faces.Face(np.array([100.0, 50.0, 20.0])), config)
  # 20 px box + 10 px margin each side = 40 px square: the face fills the middle half.
  assert (inside[10:30, 10:30] == 255).all() and inside[:10].max() == 0 and inside[30:].max() == 0
  corner = faces.aligned_crop(frame, faces.Face(np.array([0.0, 0.0, 20.0])), config)
  assert corner.shape == (40, 40, 3) and corner.max() == 0


def test_similarity_transform_recovers_rotation_scale_and_translation():
  angle, scale, shift = np.radians(30), 2.0, np.array([5.0, -3.0])
  rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  source = np.random.default_rng(0).normal(size=(5, 2))
  matrix = faces.similarity_transform(source, source @ rotation.T + shift)
  np.testing.assert_allclose(matrix, np.concatenate([rotation, shift[:, None]], 1), atol=1e-12)


def test_frames_without_a_face_keep_the_last_one_and_none_at_all_is_an_error(mtcnn, astronaut):
  flat = np.full_like(astronaut, 90)
  noise = np.random.default_rng(0).integers(0, 256, astronaut.shape, np.uint8)
  assert mtcnn.detect([flat, noise]) == [None, None]
  (found,) = mtcnn.detect([astronaut])

  track = faces.face_track([flat, astronaut, noise, flat], CONFIG, mtcnn)

  assert len(track) == 4
  for face in track:  # before the face: the first one; after it: the last one
    np.testing.assert_array_equal(face.box, found.box)
    np.testing.assert_array_equal(face.landmarks, found.landmarks)
  with pytest.raises(faces.NoFaceError, match='^no face found in any of the 3 frames$'):
    faces.face_track([flat, noise, flat], CONFIG, mtcnn)


def test_smoothing_averages_boxes_and_landmarks_and_carries_over_gaps():
  a = faces.Face(np.array([10.0, 20.0, 30.0]), np.arange(10.0).reshape(5, 2))
  b = faces.Face(np.array([20.0, 40.0, 50.0]), np.arange(10.0, 20.0).reshape(5, 2))
  c = faces.Face(np.array([0.0, 0.0, 10.0]), np.zeros((5, 2)))

  smoothed = list(faces.smooth([None, a, None, b, c], smoothing=0.75))

  boxes = [f.box for f in smoothed]
  landmarks = [f.landmarks for f in smoothed]
  ab = 0.75 * a.box + 0.25 * b.box  # (12.5, 25, 35)
  np.testing.assert_allclose(boxes, [a.box, a.box, a.box, ab, 0.75 * ab + 0.25 * c.box])
  np.testing.assert_allclose(landmarks[3], np.arange(2.5, 12.5).reshape(5, 2))
  np.testing.assert_allclose(landmarks[4], 0.75 * np.arange(2.5, 12.5).reshape(5, 2))
  np.testing.assert_array_equal(landmarks[0], a.landmarks)
  with pytest.raises(faces.NoFaceError, match='no face found in any of the 2 frames'):
    list(faces.smooth([None, None], smoothing=0.5))


def test_tracked_frames_hold_back_only_until_the_first_face(astronaut):
  """Frames come out with their face as soon as it is known: a consumer sees frame 0 once the
  detector has seen the first face (frame 2), not the end of the stream."""
  flat = np.full_like(astronaut, 90)
  read = []

  def stream():
    for index, frame in enumerate([flat, flat, astronaut, flat, flat, flat]):
      read.append(index)
      yield frame

  tracked = faces.tracked_frames(stream(), CONFIG, faces.make_detector('haar', CONFIG))
  frame, face = next(tracked)
  assert read == [0, 1, 2] and frame is flat and face.landmarks is None
  assert len(list(tracked)) == 5 and read == list(range(6))


def test_detect_prefers_mtcnn_and_unknown_detectors_are_refused():
  assert faces.make_detector('detect', CONFIG).name == 'mtcnn'
  with pytest.raises(ValueError, match="unknown face detector 'dlib'"):
    faces.make_detector('dlib', CONFIG)


def test_without_mtcnn_detect_falls_back_to_haar_and_mtcnn_names_the_fix(monkeypatch):
  monkeypatch.setitem(sys.modules, 'mtcnn', None)  # `import mtcnn` raises ImportError
  assert faces.make_detector('detect', CONFIG).name == 'haar'
  with pytest.raises(
      ImportError,
      match=r'^mtcnn face detection needs the mtcnn package .*: pip install mtcnn==1.0.0$',
  ):
    faces.make_detector('mtcnn', CONFIG)


@pytest.mark.parametrize('degrees', [0, 10])
def test_shrinking_crops_average_instead_of_aliasing(degrees):
  """Stripes 1 px wide, shrunk 2x, are an even grey (a bilinear warp alone would sample them)."""
  frame = np.zeros((800, 800, 3), np.uint8)
  frame[:, ::2] = 255
  angle = np.radians(degrees)
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  # A 300 px face (450 px with the margin) at the centre, as its landmarks say; 224 px crop.
  face = faces.Face(np.array([400.0, 400.0, 300.0]), faces.TEMPLATE @ rotation.T * 300 + 400)

  crop = faces.aligned_crop(frame, face, CONFIG)

  assert abs(crop.mean() - 127.5) < 3 and crop.std() < 12
  corners = faces.crop_corners(face, CONFIG)
  np.testing.assert_allclose(np.linalg.norm(corners[1] - corners[0]), 450, rtol=1e-6)
