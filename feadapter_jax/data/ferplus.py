"""FERPlus: FER2013's faces relabelled by ten annotators each (Microsoft's FERPlus repository).

fer2013new.csv has the header `Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,
fear,contempt,unknown,NF`: one row per row of fer2013.csv, whose pixels it labels, with the vote
count of each column. Both files go in the manual directory; a row count that differs between
them is an error. Usage Training / PublicTest / PrivateTest -> 'train' / 'validation' / 'test'.

Labels follow the 'majority' mode of FERPlus's reference code: votes of 1 are removed as outliers,
then the top class must hold more than half of the remaining votes. Rows without such a majority,
or whose majority is unknown or NF (not a face), are dropped, as are rows with an empty
`Image name` (FERPlus gives them no image); each drop is counted by reason in the build report.
Classes (the header's order): neutral, happiness, surprise, sadness, anger, disgust, fear,
contempt. `clip_id` is the image name without '.png' ('fer0000000'); faces are stored as
`fer2013` stores them.
"""

from collections.abc import Sequence
import dataclasses
import os

import tensorflow_datasets as tfds

from feadapter_jax.data import clip_folders
from feadapter_jax.data import face_images
from feadapter_jax.data import fer2013

CLASS_NAMES = (
    'neutral',
    'happiness',
    'surprise',
    'sadness',
    'anger',
    'disgust',
    'fear',
    'contempt',
)
VOTE_COLUMNS = CLASS_NAMES + ('unknown', 'NF')
FILE = 'fer2013new.csv'
COLUMNS = ('Usage', 'Image name') + VOTE_COLUMNS
# Drop reasons, as the build report counts them.
NO_IMAGE = 'empty Image name'
NO_MAJORITY = 'no majority after removing single votes'
UNKNOWN = 'majority unknown'
NOT_A_FACE = 'majority NF (not a face)'


@dataclasses.dataclass(frozen=True)
class _Votes:
  line: int
  usage: str
  name: str
  votes: tuple[int, ...]


def majority(votes: Sequence[int]) -> int | None:
  """The column holding the majority of `votes`, or None if none does.

  Single votes are outliers and count as 0; the top column must then hold more than half of the
  remaining votes (so a tie never wins).

  Args:
    votes: one count per column of `VOTE_COLUMNS`.

  Returns:
    Index into `VOTE_COLUMNS` (possibly unknown or NF), or None.
  """
  kept = [v if v > 1 else 0 for v in votes]
  top = max(range(len(kept)), key=kept.__getitem__)
  return top if kept[top] > sum(kept) / 2 else None


def _read_votes(path: str) -> list[_Votes]:
  rows = []
  for line, fields in face_images.iter_rows(path, COLUMNS):
    usage, name, *counts = fields
    try:
      if usage not in fer2013.SPLITS:
        raise clip_folders.SplitLineError(
            f'Usage {usage!r} is not one of {list(fer2013.SPLITS)}',
            f'restore {FILE} from the FERPlus repository',
        )
      votes = tuple(face_images.parse_int(v, c, 0) for v, c in zip(counts, VOTE_COLUMNS))
    except clip_folders.SplitLineError as e:
      raise face_images.line_error(path, line, fields, e) from e
    rows.append(_Votes(line=line, usage=usage, name=name, votes=votes))
  return rows


class Ferplus(face_images.SingleImageBuilder):
  """FERPlus: FER2013's faces with 8-class majority-vote labels."""

  CLASS_NAMES = CLASS_NAMES
  ROOT_MARKER = FILE
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name='default', description="FER2013's faces with FERPlus's majority-vote labels."
      )
  ]
  HOMEPAGE = 'https://github.com/microsoft/FERPlus'
  DESCRIPTION = (
      "FERPlus: FER2013's 48x48 faces relabelled by 10 annotators; 8 classes by majority vote."
  )
  CITATION = """@inproceedings{barsoum2016training,
  title={Training Deep Networks for Facial Expression Recognition with Crowd-Sourced Label
         Distribution},
  author={Barsoum, Emad and Zhang, Cha and Canton Ferrer, Cristian and Zhang, Zhengyou},
  booktitle={Proceedings of the 18th ACM International Conference on Multimodal Interaction},
  year={2016}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
FERPlus labels FER2013's faces: take fer2013new.csv from https://github.com/microsoft/FERPlus and
fer2013.csv from the Kaggle challenge "Challenges in Representation Learning: Facial Expression
Recognition Challenge" (accept its rules). Put both, unchanged, in the manual directory (by
convention data/manual/ferplus/):

  fer2013new.csv   header "Usage,Image name,neutral,...,unknown,NF", 35,887 rows
  fer2013.csv      header "emotion,pixels,Usage", 35,887 rows

Each may also sit in one folder directly inside the manual directory.
"""

  def _split_generators(self, dl_manager):
    # fer2013.csv is found on its own: it may sit in another folder than fer2013new.csv.
    self._fer2013_root = self._find_root(self._manual_dir(dl_manager), fer2013.FILE)
    return super()._split_generators(dl_manager)

  def _read_splits(self, root: str) -> dict[str, list[face_images.ImageEntry]]:
    path = os.path.join(root, FILE)
    pixels_path = os.path.join(self._fer2013_root, fer2013.FILE)
    labels = _read_votes(path)
    splits = {split: [] for split in fer2013.SPLITS.values()}
    num_rows = 0
    for row in fer2013.iter_fer2013(pixels_path):
      num_rows += 1
      if row.index >= len(labels):
        continue  # Counted, then reported below.
      votes = labels[row.index]
      split = fer2013.SPLITS[votes.usage]
      if votes.usage != row.usage:
        raise clip_folders.DataLayoutError(
            path,
            f'Usage {votes.usage!r}, but the row it labels ({pixels_path}, line {row.line}) '
            f'says {row.usage!r}',
            f'the rows of {FILE} and {fer2013.FILE} must align one to one: use both files '
            'unchanged',
            line=votes.line,
        )
      if not votes.name:
        self._report.drop(split, NO_IMAGE)
        continue
      top = majority(votes.votes)
      if top is None or top >= len(CLASS_NAMES):
        reason = {None: NO_MAJORITY, len(CLASS_NAMES): UNKNOWN}.get(top, NOT_A_FACE)
        self._report.drop(split, reason)
        continue
      splits[split].append(
          face_images.ImageEntry(
              image_id=os.path.splitext(votes.name)[0],
              label=top,
              label_file=path,
              line=votes.line,
              pixels=row.pixels,
          )
      )
    if num_rows != len(labels):
      raise clip_folders.DataLayoutError(
          path,
          f'{len(labels)} data rows, but {pixels_path} has {num_rows}',
          f'the rows of {FILE} and {fer2013.FILE} must align one to one: use both files '
          'unchanged',
      )
    return splits

  def _encode(self, entry: face_images.ImageEntry) -> bytes:
    return fer2013.encode_face(entry.pixels)
