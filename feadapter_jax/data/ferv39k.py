"""FERV39k as its authors distribute it: official train/test split, 7 classes.

Frames come from 2_ClipsforFaceCrop/<Scene>/<Emotion>/<NNNN>/ (the face crops);
splits from 4_setups/All_scenes/{train,test}_All.csv, space-separated lines
`<Scene>/<Emotion>/<NNNN> <Emotion>` without header (31,088 train / 7,847 test).

Class order (ours, fixed): alphabetical, as the dataset's own emotion folders
sort: Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise. Public repos differ
(MAE-DFER, for one, uses DFEW's order), so compare per-class numbers by name.
The split files spell labels as these folder names; the spellings in
`LABEL_ALIASES` (and any letter case) are accepted too. The clip id is the
`<Scene>/<Emotion>/<NNNN>` path, and the scene is kept as a feature.
"""

import tensorflow_datasets as tfds

from feadapter_jax.data import clip_folders


class Ferv39k(clip_folders.ClipFolderVideoBuilder):
  """FERV39k: 7-class facial expressions in 22 scenes, official split."""

  CLASS_NAMES = ('Angry', 'Disgust', 'Fear', 'Happy', 'Neutral', 'Sad', 'Surprise')
  LABEL_ALIASES = {
      'anger': 'Angry',
      'disgusted': 'Disgust',
      'fearful': 'Fear',
      'happiness': 'Happy',
      'sadness': 'Sad',
      'surprised': 'Surprise',
  }
  SPLIT_FILES = {
      'train': '4_setups/All_scenes/train_All.csv',
      'test': '4_setups/All_scenes/test_All.csv',
  }
  SPLIT_LINE_FORMAT = '<Scene>/<Emotion>/<NNNN> <Emotion>'
  EXTRA_FEATURES = {'scene': tfds.features.Text()}
  BUILDER_CONFIGS = [
      clip_folders.ClipFolderConfig(
          name='default',
          source=clip_folders.ClipSource(frames_dirs=('2_ClipsforFaceCrop',)),
          description='Official split; face-crop frames.',
      ),
  ]
  HOMEPAGE = 'https://wangyanckxx.github.io/Proj_CVPR2022_FERV39k.html'
  DESCRIPTION = (
      'FERV39k: 38,935 video clips of facial expressions in 22 '
      'scenes, 7 classes, official train/test split.'
  )
  CITATION = """@inproceedings{wang2022ferv39k,
  title={{FERV39k}: A Large-Scale Multi-Scene Dataset for Facial Expression
         Recognition in Videos},
  author={Wang, Yan and Sun, Yixuan and Huang, Yiwen and Liu, Zhongying and
          Gao, Shuyong and Zhang, Wei and Ge, Weifeng and Zhang, Wenqiang},
  booktitle={CVPR},
  year={2022}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
FERV39k is licensed for non-commercial research: request it from the authors
via https://wangyanckxx.github.io/Proj_CVPR2022_FERV39k.html (signed license
agreement by e-mail). Extract it into the manual directory (by convention
data/manual/ferv39k/; pass it as DownloadConfig(manual_dir=...)) so that it
contains, unchanged:

  4_setups/All_scenes/train_All.csv
  4_setups/All_scenes/test_All.csv
  2_ClipsforFaceCrop/<Scene>/<Emotion>/<NNNN>/<frame>.jpg ...

One extra enclosing folder (data/manual/ferv39k/FERV39k/...) is also accepted.
"""

  def _parse_split_line(self, line: str) -> clip_folders.SplitEntry:
    # rsplit: the label is the last field, the path keeps anything before it.
    fields = line.rsplit(None, 1)
    if len(fields) != 2:
      raise self._malformed('expected a clip path and a label separated by a ' 'space')
    clip_path, label = fields
    parts = clip_path.replace('\\', '/').strip('/').split('/')
    if len(parts) != 3 or not all(parts):
      raise self._malformed(f'clip path {clip_path!r} is not ' '<Scene>/<Emotion>/<NNNN>')
    clip_id = '/'.join(parts)
    return clip_folders.SplitEntry(
        clip_id=clip_id,
        label=self._label_index(label),
        clip_path=clip_id,
        extras={'scene': parts[0]},
    )
