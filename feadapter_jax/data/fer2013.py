"""FER2013 (the ICML 2013 challenge's fer2013.csv) as Kaggle distributes it.

fer2013.csv has the header `emotion,pixels,Usage`; each row holds one 48x48 greyscale face as
2304 space-separated pixel values (row-major) and its split: Usage Training / PublicTest /
PrivateTest -> 'train' (28,709) / 'validation' (3,589) / 'test' (3,589).

Classes (the challenge's codes, 0-based): Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral.
`clip_id` is 'fer<row>' with the 0-based data row zero-padded to 7 digits ('fer0000000'): the
name FERPlus gives the same face. Faces are stored as RGB JPEGs of three equal channels at
quality `JPEG_QUALITY` (100: every quantisation step is 1, so a decoded pixel is within 1 grey
level of the CSV's, measured even on uniform noise; the grey chroma is exact).
"""

from collections.abc import Iterator
import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from feadapter_jax.data import clip_folders
from feadapter_jax.data import face_images

CLASS_NAMES = ('Angry', 'Disgust', 'Fear', 'Happy', 'Sad', 'Surprise', 'Neutral')
FILE = 'fer2013.csv'
COLUMNS = ('emotion', 'pixels', 'Usage')
SPLITS = {'Training': 'train', 'PublicTest': 'validation', 'PrivateTest': 'test'}
SIZE = 48
JPEG_QUALITY = 100


@dataclasses.dataclass(frozen=True, eq=False)
class Row:
  """One data row of fer2013.csv.

  Attributes:
    index: 0-based data row.
    line: 1-based line in the file.
    label: 0-based class.
    pixels: (48, 48) uint8 face.
    usage: the Usage column as written.
  """

  index: int
  line: int
  label: int
  pixels: np.ndarray
  usage: str


def image_id(index: int) -> str:
  """The id of data row `index`, as FERPlus names its image."""
  return f'fer{index:07d}'


def _pixels(value: str) -> np.ndarray:
  values = value.split()
  fix = 'restore fer2013.csv from the original archive'
  if len(values) != SIZE * SIZE:
    raise clip_folders.SplitLineError(
        f'pixels holds {len(values)} values, not {SIZE}x{SIZE} = {SIZE * SIZE}', fix
    )
  try:
    numbers = np.array(values, dtype=np.int64)
  except ValueError:
    raise clip_folders.SplitLineError('pixels holds a value that is not an integer', fix) from None
  if numbers.min() < 0 or numbers.max() > 255:
    raise clip_folders.SplitLineError('pixels holds a value outside 0..255', fix)
  return numbers.astype(np.uint8).reshape(SIZE, SIZE)


def iter_fer2013(path: str) -> Iterator[Row]:
  """The checked data rows of fer2013.csv at `path`, in file order.

  Raises:
    DataLayoutError: the file is missing or a row does not parse (named by line).
  """
  for index, (line, fields) in enumerate(face_images.iter_rows(path, COLUMNS)):
    emotion, pixels, usage = fields
    try:
      label = face_images.label_index(emotion, CLASS_NAMES, first=0)
      if usage not in SPLITS:
        raise clip_folders.SplitLineError(
            f'Usage {usage!r} is not one of {list(SPLITS)}', f'restore {FILE} from the archive'
        )
      face = _pixels(pixels)
    except clip_folders.SplitLineError as e:
      raise face_images.line_error(path, line, fields, e) from e
    yield Row(index=index, line=line, label=label, pixels=face, usage=usage)


def encode_face(pixels: np.ndarray) -> bytes:
  """A (48, 48) uint8 face as the stored RGB JPEG of three equal channels."""
  return clip_folders.encode_jpeg(np.repeat(pixels[..., None], 3, axis=-1), JPEG_QUALITY)


class Fer2013(face_images.SingleImageBuilder):
  """FER2013: 7-class 48x48 greyscale faces, the challenge's train / public / private split."""

  CLASS_NAMES = CLASS_NAMES
  ROOT_MARKER = FILE
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name='default', description='The 48x48 faces of fer2013.csv, its three splits.'
      )
  ]
  HOMEPAGE = (
      'https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-'
      'recognition-challenge'
  )
  DESCRIPTION = (
      'FER2013: 35,887 48x48 greyscale faces in 7 expressions (28,709 train / 3,589 public test '
      '= validation / 3,589 private test = test).'
  )
  CITATION = """@inproceedings{goodfellow2013challenges,
  title={Challenges in Representation Learning: A Report on Three Machine Learning Contests},
  author={Goodfellow, Ian J. and Erhan, Dumitru and Carrier, Pierre Luc and Courville, Aaron and
          Mirza, Mehdi and Hamner, Ben and others},
  booktitle={International Conference on Neural Information Processing},
  year={2013}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download fer2013.tar.gz from the Kaggle challenge "Challenges in Representation Learning: Facial
Expression Recognition Challenge" (accept its rules) and extract it into the manual directory
(by convention data/manual/fer2013/) so that it contains, unchanged:

  fer2013.csv      header "emotion,pixels,Usage", 35,887 rows

One extra enclosing folder (data/manual/fer2013/fer2013/fer2013.csv) is also accepted.
"""

  def _read_splits(self, root: str) -> dict[str, list[face_images.ImageEntry]]:
    path = os.path.join(root, FILE)
    splits = {split: [] for split in SPLITS.values()}
    for row in iter_fer2013(path):
      splits[SPLITS[row.usage]].append(
          face_images.ImageEntry(
              image_id=image_id(row.index),
              label=row.label,
              label_file=path,
              line=row.line,
              pixels=row.pixels,
          )
      )
    return splits

  def _encode(self, entry: face_images.ImageEntry) -> bytes:
    return encode_face(entry.pixels)
