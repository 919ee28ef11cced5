"""Shared machinery for TFDS builders of image emotion datasets: one face image per example.

RAF-DB, AffectNet, FER2013 and FERPlus feed the image stage, which trains through the video
pipeline with `num_frames=1`. Their examples therefore follow the clip contract of `clip_folders`
exactly: 'video' holds ONE encoded JPEG frame, 'label' the 0-based class in the builder's
documented order, 'clip_id' the image id, 'num_frames' 1.

A dataset module reads its label files in `_read_splits` and turns one `ImageEntry` into JPEG
bytes in `_encode`. Everything is checked before the first example is written: a malformed line,
an unknown label, an id listed twice in a split or an image file the labels name but the copy
lacks stops the build with a `DataLayoutError` naming the file, the line and the fix. Damaged data
does not: an image that does not decode (or cannot give the example, e.g. a face box outside it)
is skipped, never zero-filled, and listed in the report's `skipped_clips`. Rows the dataset's own
rules leave out (AffectNet's non-emotion codes, FERPlus rows without a majority) are counted by
reason in the report's `dropped`.
"""

from collections.abc import Iterator, Mapping, Sequence
import csv
import dataclasses
import os
from typing import Any, ClassVar

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from feadapter_jax.data import clip_folders

# Label lines are quoted in error messages up to this many characters (a FER2013 row is ~9 kB).
_MAX_QUOTED = 100


class UnusableImage(Exception):
  """An image that decodes but cannot give its example; the message says why."""


@dataclasses.dataclass(frozen=True, eq=False)
class ImageEntry:
  """One labelled image as a label file lists it.

  Attributes:
    image_id: unique within its split; the example key and 'clip_id'.
    label: 0-based class index.
    label_file: the file listing the image, for error messages.
    line: 1-based line in `label_file`.
    path: the image file, for datasets that ship image files.
    pixels: (H, W) or (H, W, 3) uint8 image, for datasets that ship pixels in the label file.
    box: (x, y, width, height) face box in the image's pixels, for datasets that crop.
  """

  image_id: str
  label: int
  label_file: str
  line: int
  path: str | None = None
  pixels: np.ndarray | None = None
  box: tuple[int, int, int, int] | None = None


def quote(line: str) -> str:
  """`line` as error messages show it: repr, cut after `_MAX_QUOTED` characters."""
  return repr(line if len(line) <= _MAX_QUOTED else line[:_MAX_QUOTED] + '...')


def iter_rows(
    path: str,
    columns: Sequence[str],
    *,
    header: bool | None = True,
    delimiter: str | None = ',',
) -> Iterator[tuple[int, list[str]]]:
  """Yields (line number, fields) of a label file's non-blank data rows.

  Args:
    path: the label file.
    columns: the column names; every row must have this many fields.
    header: True if the file starts with a header line of `columns`, False if it has none, None
      if either is accepted (a first row starting with columns[0] is then the header; some copies
      of AffectNet's validation.csv lack it).
    delimiter: ',' for CSV (quoted fields allowed), None for whitespace-separated lines.

  Yields:
    1-based line number and the stripped fields of each data row.

  Raises:
    DataLayoutError: the file is missing, its header or a row's field count is wrong, or it lists
      nothing.
  """
  restore = 'restore the file from the original archive'
  if not os.path.isfile(path):
    raise clip_folders.DataLayoutError(path, 'label file not found', restore + ', unchanged')
  # utf-8-sig: files edited on Windows may start with a BOM.
  with open(path, encoding='utf-8-sig', newline='') as f:
    if delimiter is None:
      rows = ((i, line.split()) for i, line in enumerate(f, 1))
    else:
      reader = csv.reader(f, delimiter=delimiter)
      # line_num after a row is its last line; quoted fields may span several.
      rows = ((reader.line_num, fields) for fields in reader)
    first, num_rows = True, 0
    for line_no, fields in rows:
      fields = [field.strip() for field in fields]
      if not any(fields):
        continue
      if first and (header or (header is None and fields[0] == columns[0])):
        first = False
        if [field.replace(' ', '') for field in fields] != [c.replace(' ', '') for c in columns]:
          raise clip_folders.DataLayoutError(
              path,
              f'expected the header {",".join(columns)!r}, found {quote(",".join(fields))}',
              restore,
              line=line_no,
          )
        continue
      first = False
      if len(fields) != len(columns):
        raise clip_folders.DataLayoutError(
            path,
            f'expected {len(columns)} fields, found {len(fields)} in '
            f'{quote((delimiter or " ").join(fields))}',
            f'each row must hold {",".join(columns)}; {restore}',
            line=line_no,
        )
      num_rows += 1
      yield line_no, fields
  if not num_rows:
    raise clip_folders.DataLayoutError(path, 'label file lists no images', restore)


def parse_int(value: str, column: str, low: int) -> int:
  """`value` as an integer of at least `low`.

  Raises:
    SplitLineError: it is not one; the problem names `column`.
  """
  try:
    number = int(value)
  except ValueError:
    number = None
  if number is None or number < low:
    raise clip_folders.SplitLineError(
        f'{column} {value!r} is not an integer >= {low}',
        'restore the file from the original archive',
    )
  return number


def label_index(value: str, names: Sequence[str], first: int) -> int:
  """0-based class of a label file's code `value`, the codes numbering `names` from `first`.

  Raises:
    SplitLineError: `value` is not one of the codes; the problem lists them.
  """
  try:
    code = int(value)
  except ValueError:
    code = None
  if code is None or not first <= code < first + len(names):
    raise clip_folders.SplitLineError(
        f'label {value!r} is not one of the codes '
        + ', '.join(f'{i} {n}' for i, n in enumerate(names, first)),
        'restore the file from the original archive',
    )
  return code - first


def line_error(
    path: str, line: int, fields: Sequence[str], error: clip_folders.SplitLineError, sep: str = ','
) -> clip_folders.DataLayoutError:
  """The DataLayoutError for a row whose parsing raised `error`."""
  return clip_folders.DataLayoutError(
      path, f'{error.problem} in {quote(sep.join(fields))}', error.fix, line=line
  )


class SingleImageBuilder(clip_folders.ManualDatasetBuilder, skip_registration=True):
  """Base builder: label files naming one image (or holding its pixels) per example.

  Subclasses declare, besides `ManualDatasetBuilder`'s attributes:
    ROOT_MARKER: a path the dataset root holds, relative to it ('/'-terminated for a folder); the
      root is the manual directory or one folder directly inside it.
  and implement `_read_splits`; `_encode` by default stores the image file at `ImageEntry.path`
  (JPEGs byte for byte).
  """

  ROOT_MARKER: ClassVar[str] = ''

  def _read_splits(self, root: str) -> Mapping[str, Sequence[ImageEntry]]:
    """Reads and checks the label files; counts dropped rows with `self._report.drop`.

    Args:
      root: the dataset root.

    Returns:
      Split name -> its entries, in file order.

    Raises:
      DataLayoutError: a label file or line is wrong.
    """
    raise NotImplementedError

  def _encode(self, entry: ImageEntry) -> bytes:
    """The JPEG to store for `entry`.

    Raises:
      OSError: the image file does not read or decode.
      UnusableImage: it decodes, but cannot give the example.
    """
    return clip_folders.load_frame_jpeg(entry.path)

  def _images_dir(self, root: str, relative: str, other_config: str | None = None) -> str:
    """`root`/`relative`, checked to be a folder; the fix names `other_config` if given."""
    path = os.path.join(root, relative)
    if not os.path.isdir(path):
      other = f', or build the config {other_config!r}' if other_config else ''
      raise clip_folders.DataLayoutError(
          path,
          f'image folder not found (config {self.builder_config.name!r} reads {relative}/)',
          f'extract that part of the archive there{other}',
      )
    return path

  def _check(self, split: str, entries: Sequence[ImageEntry]) -> None:
    """Fails if an id is listed twice in `split` or an image file is missing."""
    first_line_of, missing = {}, []
    for entry in entries:
      if entry.image_id in first_line_of:
        raise clip_folders.DataLayoutError(
            entry.label_file,
            f'image {entry.image_id!r} is listed twice in split {split!r} (first on line '
            f'{first_line_of[entry.image_id]})',
            'remove the duplicate line, or restore the file from the original archive',
            line=entry.line,
        )
      first_line_of[entry.image_id] = entry.line
      if entry.path is not None and not os.path.isfile(entry.path):
        missing.append(entry)
    if missing:
      entry = missing[0]
      raise clip_folders.DataLayoutError(
          entry.label_file,
          f'image {entry.image_id!r} has no file at {entry.path} ({len(missing)} of '
          f'{len(entries)} images of split {split!r} are missing)',
          'complete the extraction of the archive: every image the labels list must be present',
          line=entry.line,
      )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._find_root(self._manual_dir(dl_manager), self.ROOT_MARKER)
    # One report for the whole build: drops are counted while reading, the rest per split.
    self._report = clip_folders.BuildReport()
    split_entries = self._read_splits(root)
    for split, entries in split_entries.items():
      self._check(split, entries)
    logging.info('%s/%s: reading under %s', self.name, self.builder_config.name, root)
    return {split: self._generate_examples(split, e) for split, e in split_entries.items()}

  def _generate_examples(
      self, split: str, entries: Sequence[ImageEntry]
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    report = self._report
    report.examples_per_split[split] = 0
    try:
      for entry in entries:
        try:
          jpeg = self._encode(entry)
        except (OSError, UnusableImage) as e:
          where = entry.path or f'{entry.label_file}, line {entry.line}'
          report.skipped_clips.append(clip_folders.Skipped(split, entry.image_id, where, str(e)))
          continue
        report.examples_per_split[split] += 1
        yield entry.image_id, {
            'video': [jpeg],
            'label': entry.label,
            'clip_id': entry.image_id,
            'num_frames': 1,
        }
    finally:
      # Also on early stop (max_examples_per_split) or error: report what happened so far.
      self._save_report(split, report)
