"""DFEW (Dynamic Facial Expression in the Wild) as its authors distribute it.

Configs (five-fold cross-validation, splits 'train' and 'test'):
  fold1 .. fold5                frames of Clip/clip_224x224/<id>/ (all frames)
  fold1_16f .. fold5_16f        frames of Clip/clip_224x224_16f/<id>/ (16 per
                                clip, temporally aligned by the authors)
  fold1_original .. fold5_original  Clip/original/<id>.mp4 decoded with PyAV
  fold1_original_faces ..   the same videos, each frame's face found, smoothed and aligned by
    fold5_original_faces    feadapter_jax/faces.py (MTCNN, else Haar), as `predict` crops

Labels: the split CSVs are 1-based; stored 0-based in the authors' order
Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear. Only the single-labelled
clips (11,697; fold 1: 9,356 train / 2,341 test) are used.
"""

from feadapter_jax.data import clip_folders


class Dfew(clip_folders.ClipFolderVideoBuilder):
  """DFEW: 7-class dynamic facial expressions, 5 folds."""

  CLASS_NAMES = ('Happy', 'Sad', 'Neutral', 'Angry', 'Surprise', 'Disgust', 'Fear')
  SPLIT_FILES = {
      'train': 'EmoLabel_DataSplit/train(single-labeled)/set_{fold}.csv',
      'test': 'EmoLabel_DataSplit/test(single-labeled)/set_{fold}.csv',
  }
  SPLIT_HEADER = 'video_name,label'
  SPLIT_LINE_FORMAT = '<video_name>,<label 1-7>'  # e.g. '23,4'
  BUILDER_CONFIGS = clip_folders.fold_configs(
      range(1, 6),
      {
          '': clip_folders.ClipSource(frames_dirs=('Clip/clip_224x224',)),
          '_16f': clip_folders.ClipSource(frames_dirs=('Clip/clip_224x224_16f',)),
          '_original': clip_folders.ClipSource(videos_dir='Clip/original'),
          '_original_faces': clip_folders.ClipSource(videos_dir='Clip/original', faces='detect'),
      },
  )
  HOMEPAGE = 'https://dfew-dataset.github.io/'
  DESCRIPTION = (
      'DFEW: 16,372 movie clips of facial expressions; the 11,697 '
      'single-labelled ones in 7 classes, 5-fold cross-validation.'
  )
  CITATION = """@inproceedings{jiang2020dfew,
  title={{DFEW}: A Large-Scale Database for Recognizing Dynamic Facial
         Expressions in the Wild},
  author={Jiang, Xingxun and Zong, Yuan and Zheng, Wenming and Tang, Chuangao
          and Xia, Wanchuang and Lu, Cheng and Liu, Jiateng},
  booktitle={Proceedings of the 28th ACM International Conference on
             Multimedia},
  year={2020}
}"""
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
DFEW is licensed for non-commercial research: request it from the authors via
https://dfew-dataset.github.io/ (sign the EULA; they send a download link and
the archive password). Extract it into the manual directory (by convention
data/manual/dfew/; pass it as DownloadConfig(manual_dir=...)) so that it
contains, unchanged:

  EmoLabel_DataSplit/train(single-labeled)/set_1.csv .. set_5.csv
  EmoLabel_DataSplit/test(single-labeled)/set_1.csv .. set_5.csv
  Clip/clip_224x224/00001/00001_1.jpg ...        (configs fold<k>)
  Clip/clip_224x224_16f/00001/00001_1.jpg ...    (configs fold<k>_16f)
  Clip/original/00001.mp4 ...                    (configs fold<k>_original)

Only the folder of the config you build is needed. One extra enclosing folder
(data/manual/dfew/DFEW/...) is also accepted.
"""

  def _parse_split_line(self, line: str) -> clip_folders.SplitEntry:
    fields = [f.strip() for f in line.split(',')]
    if len(fields) != 2:
      raise self._malformed(f'expected 2 comma-separated fields, found ' f'{len(fields)}')
    video_name, label = fields
    if not (video_name.isdigit() and label.lstrip('-').isdigit()):
      raise self._malformed('video_name and label must be integers')
    if not 1 <= int(label) <= len(self.CLASS_NAMES):
      raise clip_folders.SplitLineError(
          f'label {label} is outside 1..{len(self.CLASS_NAMES)} (1-based: '
          + ', '.join(f'{i} {n}' for i, n in enumerate(self.CLASS_NAMES, 1))
          + ')',
          'use the single-labeled split files as distributed',
      )
    clip_id = f'{int(video_name):05d}'
    return clip_folders.SplitEntry(
        clip_id=clip_id, label=int(label) - 1, clip_path=clip_id, video_name=f'{clip_id}.mp4'
    )
