"""RAF-DB (Real-world Affective Faces, basic emotions) as its authors distribute it.

Labels come from basic/EmoLabel/list_patition_label.txt (sic: the archive's spelling), lines
`train_00001.jpg 5` / `test_0001.jpg 1` without header; the split is the file-name prefix
(12,271 train / 3,068 test images).

Configs:
  aligned    basic/Image/aligned/<stem>_aligned.jpg, the authors' aligned 100x100 faces (default)
  original   basic/Image/original/<name>, the full downloaded images

Labels: 1-based in the file; stored 0-based in the authors' order Surprise, Fear, Disgust,
Happiness, Sadness, Anger, Neutral. `clip_id` is the file name without '.jpg' ('train_00001').
"""

import dataclasses
import os
import re

import tensorflow_datasets as tfds

from feadapter_jax.data import clip_folders
from feadapter_jax.data import face_images

LABEL_FILE = 'basic/EmoLabel/list_patition_label.txt'
_NAME = re.compile(r'(train|test)_\d+\.jpg')


@dataclasses.dataclass(eq=False, kw_only=True)
class RafdbConfig(tfds.core.BuilderConfig):
  """Which image folder a config reads.

  Attributes:
    images_dir: the folder, relative to the dataset root.
    suffix: what the folder's file names add to the label file's stem ('_aligned').
  """

  images_dir: str
  suffix: str


class Rafdb(face_images.SingleImageBuilder):
  """RAF-DB basic: 7-class facial expressions in still images, official train/test split."""

  CLASS_NAMES = ('Surprise', 'Fear', 'Disgust', 'Happiness', 'Sadness', 'Anger', 'Neutral')
  ROOT_MARKER = 'basic/'
  BUILDER_CONFIGS = [
      RafdbConfig(
          name='aligned',
          images_dir='basic/Image/aligned',
          suffix='_aligned',
          description='The aligned 100x100 faces of basic/Image/aligned/.',
      ),
      RafdbConfig(
          name='original',
          images_dir='basic/Image/original',
          suffix='',
          description='The original images of basic/Image/original/.',
      ),
  ]
  HOMEPAGE = 'http://www.whdeng.cn/RAF/model1.html'
  DESCRIPTION = (
      'RAF-DB basic: 15,339 real-world face images in 7 basic expressions (12,271 train / '
      '3,068 test).'
  )
  CITATION = """@inproceedings{li2017reliable,
  title={Reliable Crowdsourcing and Deep Locality-Preserving Learning for Expression Recognition
         in the Wild},
  author={Li, Shan and Deng, Weihong and Du, JunPing},
  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition},
  year={2017}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
RAF-DB is licensed for non-commercial research: request it from the authors via
http://www.whdeng.cn/RAF/model1.html (they send a download link and the archive password).
Extract the basic part into the manual directory (by convention data/manual/rafdb/) so that it
contains, unchanged:

  basic/EmoLabel/list_patition_label.txt
  basic/Image/aligned/train_00001_aligned.jpg ...   (config aligned; from aligned.zip)
  basic/Image/original/train_00001.jpg ...          (config original; from original.zip)

Only the folder of the config you build is needed. One extra enclosing folder is also accepted.
"""

  def _read_splits(self, root: str) -> dict[str, list[face_images.ImageEntry]]:
    config = self.builder_config
    other = 'original' if config.name == 'aligned' else 'aligned'
    images_dir = self._images_dir(root, config.images_dir, other)
    label_file = os.path.join(root, LABEL_FILE)
    splits = {'train': [], 'test': []}
    for line, fields in face_images.iter_rows(
        label_file, ('image', 'label'), header=False, delimiter=None
    ):
      name, label = fields
      try:
        match = _NAME.fullmatch(name)
        if not match:
          raise clip_folders.SplitLineError(
              f'{name!r} is not a file name train_<N>.jpg or test_<N>.jpg',
              'each line must read `<train|test>_<N>.jpg <label 1-7>`; restore the file from '
              'the original archive',
          )
        index = face_images.label_index(label, self.CLASS_NAMES, first=1)
      except clip_folders.SplitLineError as e:
        raise face_images.line_error(label_file, line, fields, e, sep=' ') from e
      stem = name[: -len('.jpg')]
      splits[match.group(1)].append(
          face_images.ImageEntry(
              image_id=stem,
              label=index,
              label_file=label_file,
              line=line,
              path=os.path.join(images_dir, f'{stem}{config.suffix}.jpg'),
          )
      )
    return splits
