"""Shared machinery for TFDS builders of video datasets distributed as frames.

DFEW, FERV39k and MAFW all ship one folder of frame images per clip plus split
files naming the clips and their labels. `ClipFolderVideoBuilder` reads that
shape once; each dataset module only declares its class list, split-file
paths, how one split line parses and where its frames (or videos) live. Its
base, `ManualDatasetBuilder` (features, build report, manual directory), is
shared with the single-image datasets of `face_images`.

Every example follows the contract shared with the input pipeline:
  'video':      tfds.features.Video, one encoded JPEG per frame, temporal
                order. Source JPEGs are stored byte for byte (no re-encode), so
                the pipeline can decode only the frames it samples
                (`decoders={'video': tfds.decode.SkipDecoding()}`).
  'label':      ClassLabel, 0-based, in the builder's documented class order.
  'clip_id':    the clip's id as the split files write it.
  'num_frames': int32, the number of stored frames.

Bad layouts fail before anything is written, with a `DataLayoutError` that
names the file, the line and the fix. Bad *data* does not stop a build: a
frame that does not decode is skipped, never zero-filled; a clip left with no
decodable frame (or whose video does not decode) is skipped as a whole. Both
are counted in a `BuildReport`, logged after each split and saved with the
dataset (`builder.build_report`), as are rows a dataset's own rules leave out
(`BuildReport.dropped`).
"""

from collections.abc import Iterator, Mapping, Sequence
import dataclasses
import io
import os
import re
from typing import Any, ClassVar

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from feadapter_jax import faces as faces_lib
from feadapter_jax.data import video_io

FRAME_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
# Frames decoded from videos, or sources that are not RGB/grey JPEGs, are
# encoded at this quality: high enough that the backbone sees no artefacts.
JPEG_QUALITY = 95
_BUILD_REPORT_KEY = 'build_report'


class DataLayoutError(Exception):
  """The manual directory does not match the layout the authors distribute."""

  def __init__(self, path: str | os.PathLike[str], problem: str, fix: str, line: int | None = None):
    self.path = os.fspath(path)
    self.line = line
    where = self.path if line is None else f'{self.path}, line {line}'
    super().__init__(f'{where}: {problem}\nFix: {fix}')


class SplitLineError(ValueError):
  """One split-file line that does not parse; the builder adds file and line."""

  def __init__(self, problem: str, fix: str):
    self.problem = problem
    self.fix = fix
    super().__init__(problem)


def natural_sort_key(name: str) -> tuple[tuple[str | int, ...], str]:
  """Sort key ordering digit runs numerically: 'x_2.jpg' before 'x_10.jpg'.

  Args:
    name: a file name.

  Returns:
    A key whose first part alternates text and integer chunks (re.split with a
    capture group always starts and ends with text, so chunk types line up
    between keys); the name itself breaks ties such as 'x_01' vs 'x_1'.
  """
  chunks = re.split(r'(\d+)', name.lower())
  return tuple(int(c) if i % 2 else c for i, c in enumerate(chunks)), name


def list_frame_files(clip_dir: str | os.PathLike[str]) -> list[str]:
  """Lists a clip folder's frame images in temporal (natural) order.

  Hidden files are ignored: macOS copies leave '._00001_1.jpg' resource forks
  next to the frames, which are not images.

  Args:
    clip_dir: a folder holding one clip's frames.

  Returns:
    Paths of the files with an image extension (case-insensitive).
  """
  names = [
      name
      for name in os.listdir(clip_dir)
      if not name.startswith('.') and os.path.splitext(name)[1].lower() in FRAME_EXTENSIONS
  ]
  return [os.path.join(clip_dir, n) for n in sorted(names, key=natural_sort_key)]


def encode_jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  """Encodes an RGB uint8 frame (H, W, 3) as JPEG, by default at `JPEG_QUALITY`."""
  buffer = io.BytesIO()
  Image.fromarray(frame).save(buffer, format='JPEG', quality=quality)
  return buffer.getvalue()


def read_image(path: str | os.PathLike[str]) -> tuple[bytes, Image.Image]:
  """Reads one image file and decodes it fully.

  Args:
    path: an image file.

  Returns:
    The file's bytes and the decoded image (pixels loaded, no file left open).

  Raises:
    OSError: the file cannot be read (permissions, ...), is empty, or does not
      decode completely; the message says which.
  """
  with open(path, 'rb') as f:
    data = f.read()
  if not data:
    raise OSError('empty file')
  try:
    image = Image.open(io.BytesIO(data))
    image.load()  # Full decode: truncated JPEGs only fail here.
    return data, image
  except Image.UnidentifiedImageError as e:
    raise OSError('not an image format PIL recognises') from e
  # PIL signals broken data as OSError ('image file is truncated'), and in some
  # decoders as SyntaxError or ValueError.
  except (OSError, SyntaxError, ValueError) as e:
    raise OSError(f'does not decode ({e})') from e


def load_frame_jpeg(path: str | os.PathLike[str]) -> bytes:
  """Reads one frame file, checks it decodes fully and returns JPEG bytes.

  RGB and greyscale JPEGs come back unchanged; anything else (PNG, CMYK JPEG,
  ...) is converted to RGB and encoded, so every stored frame decodes with
  `tf.io.decode_jpeg(channels=3)`.

  Args:
    path: a frame image.

  Returns:
    The JPEG bytes to store.

  Raises:
    OSError: as `read_image`.
  """
  data, image = read_image(path)
  if image.format == 'JPEG' and image.mode in ('RGB', 'L'):
    return data
  return encode_jpeg(np.asarray(image.convert('RGB')))


@dataclasses.dataclass(frozen=True)
class Skipped:
  """One frame or clip left out of a build, and why."""

  split: str
  clip_id: str
  path: str
  reason: str


@dataclasses.dataclass
class BuildReport:
  """What a build wrote and what it had to skip."""

  examples_per_split: dict[str, int] = dataclasses.field(default_factory=dict)
  skipped_frames: list[Skipped] = dataclasses.field(default_factory=list)
  skipped_clips: list[Skipped] = dataclasses.field(default_factory=list)
  # split -> reason -> count: rows the dataset's own rules leave out (e.g. AffectNet's non-emotion
  # codes), as opposed to damaged data.
  dropped: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

  def drop(self, split: str, reason: str) -> None:
    """Counts one row of `split` left out by the dataset's rules for `reason`."""
    counts = self.dropped.setdefault(split, {})
    counts[reason] = counts.get(reason, 0) + 1

  def summary(self, max_listed: int = 20) -> str:
    """A human-readable account, listing at most `max_listed` paths per kind."""
    lines = [
        'Examples written: '
        + (', '.join(f'{split}={n}' for split, n in self.examples_per_split.items()) or 'none'),
        f'Skipped corrupt/unreadable frames: {len(self.skipped_frames)}',
        f'Skipped clips (unreadable, or no face found): {len(self.skipped_clips)}',
    ]
    for split, counts in self.dropped.items():
      lines.append(
          f"Dropped by the dataset's rules [{split}]: "
          + ', '.join(f'{reason}={n}' for reason, n in counts.items())
      )
    for title, items in (
        ('Skipped frames', self.skipped_frames),
        ('Skipped clips', self.skipped_clips),
    ):
      if items:
        lines.append(f'{title}:')
        lines += [f'  [{s.split}] {s.path}: {s.reason}' for s in items[:max_listed]]
        if len(items) > max_listed:
          lines.append(f'  ... and {len(items) - max_listed} more (see ' 'builder.build_report)')
    return '\n'.join(lines)

  def to_json(self) -> dict[str, Any]:
    """A JSON-serialisable dict; the inverse of `from_json`."""
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, value: Mapping[str, Any]) -> 'BuildReport':
    """Rebuilds a report saved with `to_json`."""
    return cls(
        examples_per_split=dict(value['examples_per_split']),
        skipped_frames=[Skipped(**s) for s in value['skipped_frames']],
        skipped_clips=[Skipped(**s) for s in value['skipped_clips']],
        # Reports saved before this field existed have no drops.
        dropped={split: dict(c) for split, c in value.get('dropped', {}).items()},
    )


@dataclasses.dataclass(frozen=True)
class ClipSource:
  """Where a config reads clips from: frame folders or video files.

  Attributes:
    frames_dirs: candidate folders (relative to the dataset root) holding one
      sub-folder of frames per clip. The first that exists is used for the
      whole build, never mixed per clip.
    videos_dir: folder (relative to the dataset root) of one video per clip;
      set instead of `frames_dirs` to decode the original videos.
    faces: with `videos_dir`, '' stores the decoded frames whole; 'detect', 'mtcnn' or 'haar'
      stores each frame's face, found, smoothed over the clip and aligned by `feadapter_jax.faces`
      (its default `FaceConfig`: 224 x 224 crops), the code `predict` crops users' videos with.
  """

  frames_dirs: tuple[str, ...] = ()
  videos_dir: str | None = None
  faces: str = ''

  def __post_init__(self):
    if bool(self.frames_dirs) == bool(self.videos_dir):
      raise ValueError('Set exactly one of frames_dirs and videos_dir.')
    if self.faces and (not self.videos_dir or self.faces not in ('detect', *faces_lib.DETECTORS)):
      raise ValueError(f'faces={self.faces!r}: detect, mtcnn or haar, and only with videos_dir')

  def describe(self) -> str:
    """One line for config descriptions and error messages."""
    if self.videos_dir:
      cropped = f', faces cropped and aligned ({self.faces})' if self.faces else ''
      return f'original videos decoded from {self.videos_dir}/{cropped}'
    return 'frames from ' + ' or '.join(f'{d}/' for d in self.frames_dirs)


@dataclasses.dataclass(eq=False, kw_only=True)
class ClipFolderConfig(tfds.core.BuilderConfig):
  """A fold (or the single official split) read from one clip source."""

  source: ClipSource
  fold: int | None = None


def fold_configs(folds: Sequence[int], sources: Mapping[str, ClipSource]) -> list[ClipFolderConfig]:
  """One config per (fold, source), named 'fold<k><source suffix>'.

  Args:
    folds: fold numbers, e.g. range(1, 6).
    sources: config-name suffix ('' for the default) -> clip source.

  Returns:
    Configs ordered source-major, so 'fold1' (first source) is the default.
  """
  return [
      ClipFolderConfig(
          name=f'fold{k}{suffix}',
          fold=k,
          source=source,
          description=f'Fold {k}: {source.describe()}.',
      )
      for suffix, source in sources.items()
      for k in folds
  ]


@dataclasses.dataclass(frozen=True)
class SplitEntry:
  """One clip as a split file lists it.

  Attributes:
    clip_id: unique id within the split; also the example key.
    label: 0-based class index.
    clip_path: the clip's frame folder, relative to the frames folder.
    video_name: the clip's video file name in the videos folder, if the
      dataset distributes videos.
    extras: additional string features (e.g. FERV39k's scene).
    line: 1-based line in the split file, for error messages.
  """

  clip_id: str
  label: int
  clip_path: str
  video_name: str | None = None
  extras: Mapping[str, str] = dataclasses.field(default_factory=dict)
  line: int = 0


class ManualDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders reading a licensed copy from the manual directory.

  It holds what every such dataset shares: the example features of the
  contract above, the build report kept in the metadata, the manual-directory
  check and the search for the dataset root. Subclasses declare CLASS_NAMES
  (label names in ClassLabel order, or override `class_names` where configs
  differ), EXTRA_FEATURES, HOMEPAGE, CITATION, DESCRIPTION and
  MANUAL_DOWNLOAD_INSTRUCTIONS, and implement `_split_generators` with
  `_manual_dir`, `_find_root` and `_save_report`.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES: ClassVar[dict[str, str]] = {'1.0.0': 'Initial release.'}
  CLASS_NAMES: ClassVar[tuple[str, ...]] = ()
  EXTRA_FEATURES: ClassVar[Mapping[str, tfds.features.FeatureConnector]] = {}
  HOMEPAGE: ClassVar[str] = ''
  CITATION: ClassVar[str] = ''
  DESCRIPTION: ClassVar[str] = ''

  @property
  def class_names(self) -> tuple[str, ...]:
    """Label names in ClassLabel order."""
    return self.CLASS_NAMES

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict(
            {
                'video': tfds.features.Video(shape=(None, None, None, 3), encoding_format='jpeg'),
                'label': tfds.features.ClassLabel(names=self.class_names),
                'clip_id': tfds.features.Text(),
                'num_frames': np.int32,
                **self.EXTRA_FEATURES,
            }
        ),
        supervised_keys=('video', 'label'),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        # Holds the BuildReport; saved as metadata.json next to the data.
        metadata=tfds.core.MetadataDict(),
    )

  @property
  def build_report(self) -> BuildReport:
    """What the build of this config wrote and skipped.

    Live during and right after `download_and_prepare`; read back from the
    prepared dataset's metadata.json otherwise.

    Raises:
      ValueError: this config has not been prepared (in this data_dir).
    """
    saved = self.info.metadata.get(_BUILD_REPORT_KEY)
    if saved is None:
      raise ValueError(
          f'{self.info.full_name} has not been prepared in '
          f'{self.data_dir_root}: no build report yet.'
      )
    return BuildReport.from_json(saved)

  def _manual_dir(self, dl_manager: tfds.download.DownloadManager) -> str:
    """The manual directory, or a DataLayoutError saying how to provide it."""
    try:
      return os.fspath(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS signals a missing/empty manual dir so.
      raise DataLayoutError(
          dl_manager._manual_dir,  # pylint: disable=protected-access
          'manual directory missing or empty',
          'pass DownloadConfig(manual_dir=...) (or `tfds build --manual_dir`) '
          f'pointing at your copy of {self.name}:\n'
          f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}',
      ) from e

  def _find_root(self, manual_dir: str, marker: str) -> str:
    """The dataset root: the manual dir or one folder directly inside it.

    Args:
      manual_dir: the manual directory.
      marker: a path the root holds, relative to it; a trailing '/' means a
        folder, otherwise a file.

    Returns:
      The first of the manual dir and its sub-folders (sorted) holding `marker`.

    Raises:
      DataLayoutError: none holds it.
    """
    exists = os.path.isdir if marker.endswith('/') else os.path.isfile
    candidates = [manual_dir] + sorted(
        os.path.join(manual_dir, d)
        for d in os.listdir(manual_dir)
        if os.path.isdir(os.path.join(manual_dir, d))
    )
    # A copy extracted into one extra folder (manual/dfew/DFEW/...) is common.
    for candidate in candidates:
      if exists(os.path.join(candidate, marker)):
        return candidate
    raise DataLayoutError(
        os.path.join(manual_dir, marker.rstrip('/')),
        f'{marker} not found in the manual ' 'directory or any folder directly inside it',
        f'extract the {self.name} archive into {manual_dir} so that '
        f'{manual_dir}/{marker} exists (layout: see '
        f'{type(self).__name__}.MANUAL_DOWNLOAD_INSTRUCTIONS or data/README.md)',
    )

  def _save_report(self, split: str, report: BuildReport) -> None:
    """Saves `report` into the metadata and logs it, after (or while stopping) a split."""
    self.info.metadata[_BUILD_REPORT_KEY] = report.to_json()
    damaged = report.skipped_frames or report.skipped_clips
    log = logging.warning if damaged else logging.info
    log(
        '%s/%s build report after split %r:\n%s',
        self.name,
        self.builder_config.name,
        split,
        report.summary(),
    )


class ClipFolderVideoBuilder(ManualDatasetBuilder, skip_registration=True):
  """Base builder: split files + one frame folder (or video) per clip.

  Subclasses declare:
    CLASS_NAMES: label names in ClassLabel order.
    LABEL_ALIASES: lower-case spelling variant -> canonical name, accepted in
      split files besides the class names themselves (case-insensitively).
    SPLIT_FILES: split name -> split file relative to the dataset root, with
      '{fold}' where the fold number goes. Its first path component identifies
      the dataset root inside the manual directory.
    SPLIT_HEADER: the header line split files start with, or None.
    SPLIT_LINE_FORMAT: how one line looks, for error messages.
    EXTRA_FEATURES: features beyond the shared contract (values come from
      `SplitEntry.extras`).
    BUILDER_CONFIGS: `ClipFolderConfig`s, usually from `fold_configs`.
  and implement `_parse_split_line`.
  """

  LABEL_ALIASES: ClassVar[Mapping[str, str]] = {}
  SPLIT_FILES: ClassVar[Mapping[str, str]] = {}
  SPLIT_HEADER: ClassVar[str | None] = None
  SPLIT_LINE_FORMAT: ClassVar[str] = ''

  # ---- Split-file parsing: subclasses parse one line, the rest is shared.

  def _parse_split_line(self, line: str) -> SplitEntry:
    """Parses one non-blank, non-header line (without its `line` number).

    Raises:
      SplitLineError: the line is malformed or names an unknown label.
    """
    raise NotImplementedError

  def _label_index(self, name: str) -> int:
    """0-based index of a label written by name, accepting documented aliases."""
    by_lower = {n.lower(): i for i, n in enumerate(self.CLASS_NAMES)}
    by_lower.update(
        {
            alias: self.CLASS_NAMES.index(canonical)
            for alias, canonical in self.LABEL_ALIASES.items()
        }
    )
    index = by_lower.get(name.strip().lower())
    if index is None:
      raise SplitLineError(
          f'label {name!r} is not one of the {len(self.CLASS_NAMES)} classes '
          f'{list(self.CLASS_NAMES)}',
          'use the split files of the single-label benchmark as distributed; '
          'if your copy spells a class differently, add the spelling to '
          f'{type(self).__name__}.LABEL_ALIASES',
      )
    return index

  def _malformed(self, problem: str) -> SplitLineError:
    return SplitLineError(
        problem,
        f'each line must read `{self.SPLIT_LINE_FORMAT}`; restore '
        'the split file from the original archive',
    )

  def _read_split_file(self, path: str) -> list[SplitEntry]:
    """Parses a whole split file, rejecting bad lines and duplicate clips."""
    if not os.path.isfile(path):
      raise DataLayoutError(
          path,
          'split file not found',
          'copy the split folder from the original archive unchanged (keep '
          'folder names with spaces, "&" and parentheses as they are)',
      )
    # utf-8-sig: split files edited on Windows may start with a BOM.
    with open(path, encoding='utf-8-sig') as f:
      numbered_lines = [(i, line.strip()) for i, line in enumerate(f, 1) if line.strip()]
    if self.SPLIT_HEADER is not None:
      header_line, header = numbered_lines[0] if numbered_lines else (1, '')
      if header.replace(' ', '') != self.SPLIT_HEADER:
        raise DataLayoutError(
            path,
            f'expected the header {self.SPLIT_HEADER!r}, found ' f'{header!r}',
            'restore the split file from the original archive',
            line=header_line,
        )
      numbered_lines = numbered_lines[1:]
    if not numbered_lines:
      raise DataLayoutError(
          path, 'split file lists no clips', 'restore the split file from the original archive'
      )
    entries, first_line_of = [], {}
    for line_no, line in numbered_lines:
      try:
        entry = self._parse_split_line(line)
      except SplitLineError as e:
        raise DataLayoutError(path, f'{e.problem} in {line!r}', e.fix, line=line_no) from e
      if entry.clip_id in first_line_of:
        raise DataLayoutError(
            path,
            f'clip {entry.clip_id!r} is listed twice (first on line '
            f'{first_line_of[entry.clip_id]})',
            'remove the duplicate line, or restore the split file from the ' 'original archive',
            line=line_no,
        )
      first_line_of[entry.clip_id] = line_no
      entries.append(dataclasses.replace(entry, line=line_no))
    return entries

  # ---- Locating the data.

  def _dataset_root(self, manual_dir: str) -> str:
    """The folder holding the split folder: the manual dir or one child."""
    return self._find_root(
        manual_dir, self.SPLIT_FILES[next(iter(self.SPLIT_FILES))].split('/')[0] + '/'
    )

  def _clips_dir(self, root: str) -> str:
    """The frames (or videos) folder this config reads, checked to exist."""
    source = self.builder_config.source
    candidates = (source.videos_dir,) if source.videos_dir else source.frames_dirs
    for candidate in candidates:
      if os.path.isdir(os.path.join(root, candidate)):
        return os.path.join(root, candidate)
    other = (
        'the frames'
        if source.videos_dir
        else 'the original videos (a ' "config ending in '_original', where the dataset has one)"
    )
    raise DataLayoutError(
        os.path.join(root, candidates[0]),
        f'folder not found; config ' f'{self.builder_config.name!r} reads {source.describe()}',
        f'extract that part of the archive there, or build from {other}',
    )

  def _clip_location(self, clips_dir: str, entry: SplitEntry) -> str:
    if self.builder_config.source.videos_dir:
      return os.path.join(clips_dir, entry.video_name)
    return os.path.join(clips_dir, entry.clip_path)

  def _check_clips_exist(
      self, split_file: str, clips_dir: str, entries: Sequence[SplitEntry]
  ) -> None:
    """Fails before writing anything if a listed clip has nothing on disk."""
    from_videos = bool(self.builder_config.source.videos_dir)
    missing = []
    for entry in entries:
      location = self._clip_location(clips_dir, entry)
      if from_videos:
        present = os.path.isfile(location)
      else:
        present = os.path.isdir(location) and bool(list_frame_files(location))
      if not present:
        missing.append((entry, location))
    if missing:
      entry, location = missing[0]
      kind = 'video file' if from_videos else 'frames folder (with images)'
      raise DataLayoutError(
          split_file,
          f'clip {entry.clip_id!r} has no {kind} at {location} '
          f'({len(missing)} of {len(entries)} clips in this split are missing '
          f'one)',
          'complete the extraction of the archive (every clip the '
          'split files list must be present), or build from the other source',
          line=entry.line,
      )

  # ---- Generation.

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._dataset_root(self._manual_dir(dl_manager))
    clips_dir = self._clips_dir(root)
    fold = self.builder_config.fold
    split_entries = {}
    for split, template in self.SPLIT_FILES.items():
      split_file = os.path.join(root, template.format(fold=fold))
      entries = self._read_split_file(split_file)
      self._check_clips_exist(split_file, clips_dir, entries)
      split_entries[split] = entries
    logging.info(
        '%s/%s: reading %s under %s',
        self.name,
        self.builder_config.name,
        self.builder_config.source.describe(),
        root,
    )
    # One report for the whole build, shared by the split generators (TFDS
    # runs them one after the other) and saved into the metadata after each.
    self._report = BuildReport()
    return {
        split: self._generate_examples(split, entries, clips_dir)
        for split, entries in split_entries.items()
    }

  def _load_clip(self, location: str, split: str, clip_id: str, report: BuildReport) -> list[bytes]:
    """Encoded frames of one clip; skipped frames are recorded in `report`."""
    source = self.builder_config.source
    if source.videos_dir:
      try:
        frames = list(video_io.iter_frames(location))
        if source.faces:
          frames = self._face_crops(frames)
      except video_io.VideoReadError as e:
        report.skipped_clips.append(Skipped(split, clip_id, location, e.problem))
        return []
      except faces_lib.NoFaceError as e:
        report.skipped_clips.append(Skipped(split, clip_id, location, str(e)))
        return []
      return [encode_jpeg(f) for f in frames]
    frames = []
    for path in list_frame_files(location):
      try:
        frames.append(load_frame_jpeg(path))
      except OSError as e:
        report.skipped_frames.append(Skipped(split, clip_id, path, str(e)))
    if not frames:
      report.skipped_clips.append(Skipped(split, clip_id, location, 'no frame decodes'))
    return frames

  def _face_crops(self, frames: list[np.ndarray]) -> list[np.ndarray]:
    """The clip's aligned face crops (raises faces.NoFaceError when no frame has a face)."""
    if getattr(self, '_detector', None) is None:  # once per build: MTCNN loads its networks
      self._face_config = faces_lib.FaceConfig()
      self._detector = faces_lib.make_detector(self.builder_config.source.faces, self._face_config)
    track = faces_lib.face_track(frames, self._face_config, self._detector)
    return [faces_lib.aligned_crop(f, face, self._face_config) for f, face in zip(frames, track)]

  def _generate_examples(
      self, split: str, entries: Sequence[SplitEntry], clips_dir: str
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    report = self._report
    report.examples_per_split[split] = 0
    try:
      for entry in entries:
        frames = self._load_clip(
            self._clip_location(clips_dir, entry), split, entry.clip_id, report
        )
        if not frames:
          continue
        report.examples_per_split[split] += 1
        yield entry.clip_id, {
            'video': frames,
            'label': entry.label,
            'clip_id': entry.clip_id,
            'num_frames': len(frames),
            **entry.extras,
        }
    finally:
      # Also on early stop (max_examples_per_split) or error: report what
      # happened so far.
      self._save_report(split, report)
