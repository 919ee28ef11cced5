"""AffectNet (manually annotated part) as its authors distribute it.

Labels come from Manually_Annotated_file_lists/training.csv (split 'train', ~414k rows) and
validation.csv (split 'test': AffectNet's test set, ~5.5k rows), CSVs with the header
`subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,
arousal`; the images are Manually_Annotated_Images/<subDirectory_filePath>.

Expression codes: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt,
8 None, 9 Uncertain, 10 No-Face. Configs:
  7class   Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger (default; Contempt rows dropped)
  8class   the same plus Contempt
Codes 8-10 are not emotions (the dataset's own rule) and are dropped; every dropped row is counted
by code in the build report. Stored labels are the codes (0-based, in the order above).

Each image is cropped to its face box (face_x, face_y, face_width, face_height), widened by
`margin` times the box's width (height) on each side and clamped to the image, then stored as
JPEG at `clip_folders.JPEG_QUALITY`. `clip_id` is subDirectory_filePath.
"""

import dataclasses
import math
import os

import numpy as np
import tensorflow_datasets as tfds

from feadapter_jax.data import clip_folders
from feadapter_jax.data import face_images

CODE_NAMES = (
    'Neutral',
    'Happy',
    'Sad',
    'Surprise',
    'Fear',
    'Disgust',
    'Anger',
    'Contempt',
    'None',
    'Uncertain',
    'No-Face',
)
COLUMNS = (
    'subDirectory_filePath',
    'face_x',
    'face_y',
    'face_width',
    'face_height',
    'facial_landmarks',
    'expression',
    'valence',
    'arousal',
)
LISTS_DIR = 'Manually_Annotated_file_lists'
IMAGES_DIR = 'Manually_Annotated_Images'
SPLIT_FILES = {'train': f'{LISTS_DIR}/training.csv', 'test': f'{LISTS_DIR}/validation.csv'}


@dataclasses.dataclass(eq=False, kw_only=True)
class AffectnetConfig(tfds.core.BuilderConfig):
  """A class set and a crop.

  Attributes:
    num_classes: the first `num_classes` codes are the classes; rows with the others are dropped.
    margin: the crop extends the face box by this fraction of its width (height) on each side.
  """

  num_classes: int
  margin: float = 0.0


def crop_window(
    image_size: tuple[int, int], box: tuple[int, int, int, int], margin: float
) -> tuple[int, int, int, int]:
  """The (left, top, right, bottom) pixel window of a face box, widened and clamped.

  Args:
    image_size: (width, height) of the image.
    box: (x, y, width, height) of the face box.
    margin: fraction of the box's width (height) added left and right (above and below).

  Returns:
    The window, clamped to the image.

  Raises:
    UnusableImage: nothing of the box lies inside the image.
  """
  (image_w, image_h), (x, y, w, h) = image_size, box
  # Outward rounding: a margin never cuts into the box.
  left = max(0, math.floor(x - margin * w))
  top = max(0, math.floor(y - margin * h))
  right = min(image_w, math.ceil(x + w + margin * w))
  bottom = min(image_h, math.ceil(y + h + margin * h))
  if right <= left or bottom <= top:
    raise face_images.UnusableImage(
        f'face box (x, y, w, h) = {box} lies outside the {image_w}x{image_h} image'
    )
  return left, top, right, bottom


def _coordinate(value: str, column: str) -> int:
  """A face-box field as an integer pixel (copies written through pandas may hold '12.0')."""
  try:
    number = float(value)
  except ValueError:
    number = math.nan
  if not math.isfinite(number):
    raise clip_folders.SplitLineError(
        f'{column} {value!r} is not a number', 'restore the file from the original archive'
    )
  return round(number)


class Affectnet(face_images.SingleImageBuilder):
  """AffectNet: facial expressions in the wild, 7 or 8 classes, cropped to the face box."""

  ROOT_MARKER = f'{LISTS_DIR}/'
  BUILDER_CONFIGS = [
      AffectnetConfig(
          name='7class',
          num_classes=7,
          description='7 classes (no Contempt); codes 7-10 dropped. Crops the face box.',
      ),
      AffectnetConfig(
          name='8class',
          num_classes=8,
          description='8 classes (with Contempt); codes 8-10 dropped. Crops the face box.',
      ),
  ]
  HOMEPAGE = 'http://mohammadmahoor.com/affectnet/'
  DESCRIPTION = (
      'AffectNet, manually annotated images: facial expressions in the wild, cropped to the '
      'annotated face box; validation.csv is the test split.'
  )
  CITATION = """@article{mollahosseini2017affectnet,
  title={{AffectNet}: A Database for Facial Expression, Valence, and Arousal Computing in the
         Wild},
  author={Mollahosseini, Ali and Hasani, Behzad and Mahoor, Mohammad H.},
  journal={IEEE Transactions on Affective Computing},
  year={2017}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
AffectNet is licensed for research: request it from the authors via
http://mohammadmahoor.com/affectnet/ (sign the licence agreement; they send a download link).
Extract the manually annotated part into the manual directory (by convention
data/manual/affectnet/) so that it contains, unchanged:

  Manually_Annotated_file_lists/training.csv
  Manually_Annotated_file_lists/validation.csv
  Manually_Annotated_Images/<subDirectory>/<file>.jpg ...

One extra enclosing folder is also accepted.
"""

  @property
  def class_names(self) -> tuple[str, ...]:
    return CODE_NAMES[: self.builder_config.num_classes]

  def _read_splits(self, root: str) -> dict[str, list[face_images.ImageEntry]]:
    images_dir = self._images_dir(root, IMAGES_DIR)
    num_classes = self.builder_config.num_classes
    splits = {}
    for split, relative in SPLIT_FILES.items():
      label_file = os.path.join(root, relative)
      entries = splits[split] = []
      # header=None: some copies of validation.csv come without the header line.
      for line, fields in face_images.iter_rows(label_file, COLUMNS, header=None):
        try:
          if not fields[0]:
            raise clip_folders.SplitLineError(
                'subDirectory_filePath is empty', 'restore the file from the original archive'
            )
          box = tuple(_coordinate(v, c) for v, c in zip(fields[1:5], COLUMNS[1:5]))
          code = face_images.label_index(fields[6], CODE_NAMES, first=0)
        except clip_folders.SplitLineError as e:
          raise face_images.line_error(label_file, line, fields, e) from e
        if code >= num_classes:
          not_here = '' if code >= 8 else f', not in {self.builder_config.name}'
          self._report.drop(split, f'{CODE_NAMES[code]} (code {code}{not_here})')
          continue
        entries.append(
            face_images.ImageEntry(
                image_id=fields[0],
                label=code,
                label_file=label_file,
                line=line,
                path=os.path.join(images_dir, fields[0]),
                box=box,
            )
        )
    return splits

  def _encode(self, entry: face_images.ImageEntry) -> bytes:
    _, image = clip_folders.read_image(entry.path)
    window = crop_window(image.size, entry.box, self.builder_config.margin)
    return clip_folders.encode_jpeg(np.asarray(image.convert('RGB').crop(window)))
