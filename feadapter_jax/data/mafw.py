"""MAFW (single-expression set) as its authors distribute it: 11 classes, 5 folds.

Configs (splits 'train' and 'test'):
  fold1 .. fold5                frames of data/frames/<id>/, or of
                                data/faces/<id>/ in copies that ship that folder
                                instead (the first that exists is used for the
                                whole build)
  fold1_original .. fold5_original  data/clips/<id>.mp4 decoded with PyAV
  fold1_original_faces ..   the same videos, each frame's face found, smoothed and aligned by
    fold5_original_faces    feadapter_jax/faces.py (MTCNN, else Haar), as `predict` crops

Splits: `Train & Test Set/single/no_caption/set_<k>/{train,test}.txt`, lines
`03747.mp4 anger` (fold 1: 7,333 train / 1,839 test). Labels are stored 0-based
in the authors' order: anger, disgust, fear, happiness, neutral, sadness,
surprise, contempt, anxiety, helplessness, disappointment (any letter case and
the spellings in `LABEL_ALIASES` are accepted).
"""

import os

from feadapter_jax.data import clip_folders


class Mafw(clip_folders.ClipFolderVideoBuilder):
  """MAFW: 11-class single-expression clips, 5 folds."""

  CLASS_NAMES = (
      'anger',
      'disgust',
      'fear',
      'happiness',
      'neutral',
      'sadness',
      'surprise',
      'contempt',
      'anxiety',
      'helplessness',
      'disappointment',
  )
  LABEL_ALIASES = {
      'angry': 'anger',
      'happy': 'happiness',
      'sad': 'sadness',
      'surprised': 'surprise',
      'disappointed': 'disappointment',
      'helpless': 'helplessness',
  }
  SPLIT_FILES = {
      'train': 'Train & Test Set/single/no_caption/set_{fold}/train.txt',
      'test': 'Train & Test Set/single/no_caption/set_{fold}/test.txt',
  }
  SPLIT_LINE_FORMAT = '<NNNNN>.mp4 <label>'
  BUILDER_CONFIGS = clip_folders.fold_configs(
      range(1, 6),
      {
          '': clip_folders.ClipSource(frames_dirs=('data/frames', 'data/faces')),
          '_original': clip_folders.ClipSource(videos_dir='data/clips'),
          '_original_faces': clip_folders.ClipSource(videos_dir='data/clips', faces='detect'),
      },
  )
  HOMEPAGE = 'https://mafw-database.github.io/MAFW/'
  DESCRIPTION = (
      'MAFW: 10,045 clips from movies, TV dramas and short videos; '
      'the single-expression set in 11 classes, 5 folds.'
  )
  CITATION = """@inproceedings{liu2022mafw,
  title={{MAFW}: A Large-scale, Multi-modal, Compound Affective Database for
         Dynamic Facial Expression Recognition in the Wild},
  author={Liu, Yuanyuan and Dai, Wei and Feng, Chuanxu and Wang, Wenbin and
          Yin, Guanghao and Zeng, Jiabei and Shan, Shiguang},
  booktitle={Proceedings of the 30th ACM International Conference on
             Multimedia},
  year={2022}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
MAFW is licensed for non-commercial research: request it from the authors via
https://mafw-database.github.io/MAFW/ (signed EULA by e-mail). Extract it into
the manual directory (by convention data/manual/mafw/; pass it as
DownloadConfig(manual_dir=...)) so that it contains, unchanged:

  Train & Test Set/single/no_caption/set_1/train.txt, test.txt .. set_5/...
  data/frames/03747/<frame>.jpg ...  (or data/faces/03747/...; configs fold<k>)
  data/clips/03747.mp4 ...           (configs fold<k>_original)

Only the folder of the config you build is needed. One extra enclosing folder
(data/manual/mafw/MAFW/...) is also accepted.
"""

  def _parse_split_line(self, line: str) -> clip_folders.SplitEntry:
    fields = line.split()
    if len(fields) != 2:
      raise self._malformed(f'expected 2 space-separated fields, found ' f'{len(fields)}')
    video_name, label = fields
    clip_id, extension = os.path.splitext(video_name)
    if not clip_id or not extension:
      raise self._malformed(f'{video_name!r} is not a video file name')
    return clip_folders.SplitEntry(
        clip_id=clip_id, label=self._label_index(label), clip_path=clip_id, video_name=video_name
    )
