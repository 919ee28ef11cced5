"""tf.data input pipeline: TFDS clips -> sampled, decoded, augmented numpy batches per process.

Every dataset (SynthFER and the real ones) stores `video` as JPEG frames in temporal order. The
pipeline reads those byte strings undecoded, picks T frames per clip (`sample_indices`: one per
equal segment), decodes only those, and then
  * train: one random resized crop and one horizontal flip for the whole clip, resize to S x S;
  * eval:  `num_clips` temporal x `num_crops` spatial views per clip, each resized to S x S
    (`eval_clip`, which prediction on user videos applies to decoded frames; `crop_windows`);
and yields uint8 pixels: the jitted steps normalise them on the device with mean/std
(`step.normalise_video`), so batches take a quarter of float32's host memory and transfer.
A frame already S x S passes unchanged, its stored pixels exactly. `make_train_dataset` and
`make_eval_dataset` build the batches as a `tf.data.Dataset` that also holds each clip's
`clip_id`; `make_train_iterator` and `make_eval_iterator` yield them as numpy dicts without it,
ready for `to_global_arrays`.

Multi-process: each process reads its own contiguous, disjoint shard of a split
(`tfds.even_splits`), so across processes every example appears once per epoch. Training streams
are infinite and deterministic: all randomness (epoch shuffle, frame offsets, crop, flip) comes
from stateless ops keyed on (seed, process_index, epoch or position in the stream), so
`start_step=k` resumes exactly at batch k after skipping the undecoded records before it.
Evaluation is one pass in file order, padded (mask False) so every process yields the same number
of batches.

Model selection reads `validation_split`: a split of the dataset (`val_split`), or `HELD_OUT`,
`val_fraction` of each class of the train split (`held_out_ids`). The held-out clips are then
filtered out of `train_split` wherever it is read, training included, and `HELD_OUT` reads only
them; `split_size` counts what a split reads.

The `config.data` fields read here are listed, with their defaults, in `configs/common.py`
(`data_defaults`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Iterator

from absl import logging
import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from feadapter_jax import sharding
from feadapter_jax.data import augment
from feadapter_jax.data.synth_fer import builder as synth_builder

SYNTH_NAME = 'synth_fer'
# Independent stateless random streams under one (seed, process) key.
_SHUFFLE_STREAM, _EXAMPLE_STREAM = 0, 1
# tf.data shuffle seeds are drawn in [0, 2**31 - 1) to stay valid as TF op seeds.
_MAX_SHUFFLE_SEED = 2**31 - 1
_DCT_METHOD = 'INTEGER_ACCURATE'
# The name of the part of the train split held out for model selection (`val_fraction`).
HELD_OUT = 'held_out'
# 'uniform': each clip once per epoch; 'class_balanced': the clips of each class repeated so
# that every class is drawn as often as the largest (`balanced_repeats`).
SAMPLINGS = ('uniform', 'class_balanced')
VIEW_KINDS = {'num_clips': 'temporal clips', 'num_crops': 'spatial crops'}


class DatasetNotFoundError(Exception):
  """A dataset is unknown, or not prepared and its manual files are missing."""


class DataConfigError(ValueError):
  """`config.data` asks for views or splits the dataset cannot give."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs to know about a prepared dataset.

  Attributes:
    class_names: label names, index = label.
    num_examples: examples per split (all processes together).
  """

  class_names: list[str]
  num_examples: dict[str, int]


# ----------------------------------------------------------------------------- Builders.


def _not_found_message(
    what: str, data_config: ml_collections.ConfigDict, manual_dir: str, instructions: str | None
) -> str:
  lines = [
      what,
      f'  data_dir (prepared TFDS data): {os.path.abspath(data_config.data_dir)}',
      f'  manual_dir (your copy of the raw dataset): {os.path.abspath(manual_dir)}',
  ]
  if instructions:
    lines += ['How to get the raw dataset:', instructions.strip()]
  lines.append(
      'Then rerun: the dataset is prepared from manual_dir into data_dir on first use '
      '(set config.data.data_dir / config.data.manual_dir if yours live elsewhere).'
  )
  return '\n'.join(lines)


def get_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the prepared TFDS builder of `data_config`, preparing it when possible.

  synth_fer is rendered on demand. A real dataset that is not prepared in `data_dir` is prepared
  from `manual_dir` when that holds files. Preparation is not coordinated across processes: on
  several hosts sharing one data_dir, prepare once first (e.g. process 0, then a barrier).

  Args:
    data_config: `config.data` (see `configs/common.py`).

  Returns:
    A builder whose `as_dataset` works.

  Raises:
    DatasetNotFoundError: unknown dataset or config, or unprepared with no manual files; the
      message says where data is expected and how to get it.
  """
  name, builder_config = data_config.name, data_config.builder_config
  if name == SYNTH_NAME:
    config = synth_builder.synth_config(builder_config, **data_config.synth.to_dict())
    builder = tfds.builder(name, config=config, data_dir=data_config.data_dir)
    if not builder.is_prepared():
      builder.download_and_prepare()
    return builder

  full_name = f'{name}/{builder_config}' if builder_config else name
  manual_dir = data_config.manual_dir.format(name=name)
  try:
    builder = tfds.builder(full_name, data_dir=data_config.data_dir)
  except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
    # `from None`: the TFDS traceback adds nothing to this message.
    raise DatasetNotFoundError(
        _not_found_message(f'No dataset {full_name!r}: {e}', data_config, manual_dir, None)
    ) from None
  if builder.is_prepared():
    return builder
  if os.path.isdir(manual_dir) and os.listdir(manual_dir):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder
  raise DatasetNotFoundError(
      _not_found_message(
          f'Dataset {full_name!r} is not prepared and its manual files are missing.',
          data_config,
          manual_dir,
          builder.MANUAL_DOWNLOAD_INSTRUCTIONS,
      )
  )


def dataset_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """Class names and split sizes of the (prepared on demand) dataset of `data_config`."""
  info = get_builder(data_config).info
  return DatasetInfo(
      class_names=list(info.features['label'].names),
      num_examples={k: v.num_examples for k, v in info.splits.items()},
  )


# ----------------------------------------------------------------------------- Sampling.


def sample_indices(clip_length: int | tf.Tensor, offsets: np.ndarray | tf.Tensor) -> tf.Tensor:
  """Frame indices: the clip is cut into T equal segments and one frame is taken in each.

  Frame i is at relative position `offsets[..., i]` (in [0, 1)) of segment i, i.e. index
  floor((i + offset) * L / T), clamped to [0, L - 1]. Training draws the offsets at random, and
  evaluation uses `eval_offsets` (segment centres). A clip shorter than T (L < T) is stretched:
  consecutive samples repeat frames and the last index clamps at L - 1, so the whole clip is
  still covered in order.

  Args:
    clip_length: L, frames in the clip (>= 1).
    offsets: (..., T) relative positions within the segments.

  Returns:
    (..., T) int32 indices, non-decreasing along the last axis.
  """
  offsets = tf.convert_to_tensor(offsets, tf.float64)
  num_samples = tf.shape(offsets, out_type=tf.int64)[-1]
  segment = tf.cast(clip_length, tf.float64) / tf.cast(num_samples, tf.float64)
  position = (tf.range(num_samples, dtype=tf.float64) + offsets) * segment
  indices = tf.cast(tf.floor(position), tf.int32)
  return tf.clip_by_value(indices, 0, tf.cast(clip_length, tf.int32) - 1)


def eval_offsets(num_frames: int, num_clips: int) -> np.ndarray:
  """Offsets of `num_clips` evaluation views, (num_clips, num_frames).

  View c samples every segment at (c + 1/2) / num_clips: the centres for one view, and views
  shifted evenly through the segments for several.
  """
  positions = (np.arange(num_clips) + 0.5) / num_clips
  return np.repeat(positions[:, None], num_frames, axis=1)


# ----------------------------------------------------------------------------- Clip ops.


def decode_jpeg(jpeg: bytes | tf.Tensor) -> tf.Tensor:
  """Decodes one JPEG frame -> (h w 3) uint8, exactly as the pipeline decodes stored frames."""
  # TF's default DCT (INTEGER_FAST) is off by up to ~18 levels from PIL/OpenCV, which image
  # classifiers are trained with; INTEGER_ACCURATE matches them exactly at the same speed here.
  return tf.io.decode_jpeg(jpeg, channels=3, dct_method=_DCT_METHOD)


def _decode_frames(
    encoded: tf.Tensor, indices: tf.Tensor, num: int, crop_window: tf.Tensor | None = None
) -> tf.Tensor:
  """Decodes the `num` frames `encoded[indices]` -> (num h w 3) uint8, optionally cropped."""
  selected = tf.gather(encoded, indices)

  def decode(jpeg: tf.Tensor) -> tf.Tensor:
    if crop_window is None:
      return decode_jpeg(jpeg)
    # Decoding only the window skips the rows of the frame that the crop drops.
    return tf.io.decode_and_crop_jpeg(jpeg, crop_window, channels=3, dct_method=_DCT_METHOD)

  # `num` is static: unrolled decodes run in parallel and beat tf.map_fn's loop.
  return tf.stack([decode(selected[i]) for i in range(num)])


def _finish(frames: tf.Tensor, data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """(n h w 3) uint8 frames -> (n S S 3) uint8: resized (rounded to the nearest level) to S x S;
  frames already S x S pass unchanged."""
  size = data_config.image_size

  def resized() -> tf.Tensor:
    floats = tf.cast(frames, tf.float32)  # float input resizes ~2x faster than uint8
    resize = functools.partial(tf.image.resize, floats, (size, size), 'bilinear')
    # Antialiasing only changes downscaling, but costs ~3x on the upscaling of a train crop.
    shrinks = tf.reduce_any(tf.shape(frames)[1:3] > size)
    floats = tf.cond(shrinks, lambda: resize(antialias=True), lambda: resize(antialias=False))
    return tf.saturate_cast(tf.round(floats), tf.uint8)

  unchanged = tf.reduce_all(tf.shape(frames)[1:3] == size)
  out = tf.cond(unchanged, lambda: frames, resized)
  out.set_shape([None, size, size, 3])  # the branches' static shapes differ
  return out


def _train_clip(
    encoded: tf.Tensor, key: tf.Tensor, data_config: ml_collections.ConfigDict
) -> tf.Tensor:
  """(L,) JPEG frames -> (t S S 3): random segment offsets, then one draw of each augmentation
  for all frames (`augment`): the random resized crop, the flip, then RandAugment, colour
  jitter and erasing as `data_config` switches them on."""
  num_frames = data_config.num_frames
  time_key, crop_key, flip_key, augment_key = tf.unstack(
      tf.random.experimental.stateless_split(key, 4)
  )
  offsets = tf.random.stateless_uniform([num_frames], time_key, dtype=tf.float64)
  indices = sample_indices(tf.shape(encoded)[0], offsets)
  shape = tf.io.extract_jpeg_shape(encoded[0])  # Frames of a clip share one size.
  window = augment.crop_window(
      crop_key, shape[0], shape[1], tuple(data_config.crop_scale), tuple(data_config.crop_ratio)
  )
  frames = _decode_frames(encoded, indices, num_frames, window)
  if data_config.flip:
    flip = tf.random.stateless_uniform([], flip_key) < 0.5
    frames = tf.cond(flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)
  return augment.augment_clip(augment_key, _finish(frames, data_config), data_config)


def check_views(data_config: ml_collections.ConfigDict) -> None:
  """Checks the test views of `data_config`: `num_clips` x `num_crops` with `test_crop_fraction`.

  Raises:
    DataConfigError: a count is not a whole number >= 1, the fraction is not in (0, 1], or
      several crops would all be the whole frame (identical views).
  """
  for name in ('num_clips', 'num_crops'):
    count = data_config[name]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
      raise DataConfigError(
          f'config.data.{name}={count!r}: allowed values are the whole numbers 1, 2, 3, ... '
          f'({VIEW_KINDS[name]} per clip at evaluation).'
      )
  fraction = data_config.test_crop_fraction
  if not 0 < fraction <= 1:
    raise DataConfigError(
        f'config.data.test_crop_fraction={fraction!r}: allowed values are in (0, 1] (the side '
        'of a test crop, as a fraction of the frame side).'
    )
  if data_config.num_crops > 1 and fraction == 1:
    raise DataConfigError(
        f'config.data.num_crops={data_config.num_crops} with test_crop_fraction=1: every crop '
        'is the whole frame; set config.data.test_crop_fraction below 1 (e.g. 0.875).'
    )


def num_views(data_config: ml_collections.ConfigDict) -> int:
  """Test views per clip: `num_clips` temporal x `num_crops` spatial."""
  return data_config.num_clips * data_config.num_crops


def crop_windows(
    height: int | tf.Tensor, width: int | tf.Tensor, data_config: ml_collections.ConfigDict
) -> tf.Tensor:
  """(num_crops, 4) int32 [y, x, h, w] test crops of a height x width frame.

  Each crop keeps the frame's aspect: `test_crop_fraction` of its height and of its width. One
  crop is centred; n crops run evenly along the diagonal from the top-left corner to the
  bottom-right one, so on a square face crop they differ by as much on both axes, and on a wide
  frame they sweep its width as VideoMAE's crops along the longer side do. With fraction 1 the
  one crop is the whole frame (a plain resize to S x S).
  """
  num_crops, fraction = data_config.num_crops, data_config.test_crop_fraction
  size = tf.cast(tf.stack([height, width]), tf.float64)
  crop = tf.clip_by_value(tf.round(size * fraction), 1.0, size)
  # Corner-to-corner positions k / (n - 1), or the centre for a single crop.
  positions = (
      tf.constant([0.5], tf.float64)
      if num_crops == 1
      else tf.range(num_crops, dtype=tf.float64) / (num_crops - 1)
  )
  corners = tf.round(positions[:, None] * (size - crop)[None])
  crops = tf.broadcast_to(crop[None], [num_crops, 2])
  return tf.cast(tf.concat([corners, crops], axis=1), tf.int32)


def eval_clip_indices(
    clip_length: int | tf.Tensor, data_config: ml_collections.ConfigDict
) -> tf.Tensor:
  """Frames evaluation reads from a clip of `clip_length` frames: (num_clips * t,), view-major."""
  offsets = eval_offsets(data_config.num_frames, data_config.num_clips)
  return tf.reshape(sample_indices(clip_length, offsets), [-1])


def _eval_views(selected: tf.Tensor, data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """The (num_clips * t, h, w, 3) frames at `eval_clip_indices` -> (clips * crops, t, S, S, 3),
  clip-major (view c * num_crops + k is clip c, crop k)."""
  check_views(data_config)
  size, num_frames = data_config.image_size, data_config.num_frames
  shape = tf.shape(selected)
  windows = crop_windows(shape[1], shape[2], data_config)
  crops = [
      _finish(selected[:, w[0] : w[0] + w[2], w[1] : w[1] + w[3]], data_config)
      for w in tf.unstack(windows)
  ]
  # (crops, clips * t, S, S, 3) -> (clips, crops, t, S, S, 3) -> (views, t, S, S, 3).
  views = tf.reshape(
      tf.stack(crops), [len(crops), data_config.num_clips, num_frames, size, size, 3]
  )
  return tf.reshape(
      tf.transpose(views, [1, 0, 2, 3, 4, 5]), [num_views(data_config), num_frames, size, size, 3]
  )


def eval_clip(frames: np.ndarray | tf.Tensor, data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """A decoded clip -> the test views of it, exactly as `make_eval_iterator` makes them.

  Prediction on user videos calls this on each window, so it sees what evaluation sees.

  Args:
    frames: (L, h, w, 3) uint8 frames of one clip in temporal order, L >= 1.
    data_config: `config.data` (num_frames, num_clips, num_crops, test_crop_fraction,
      image_size).

  Returns:
    (num_clips * num_crops, t, S, S, 3) uint8 views, clip-major: temporal view c (segment
    offsets of `eval_offsets`) through spatial crop k (`crop_windows`) is view
    c * num_crops + k, resized to S x S; the eval step normalises them and averages their
    softmax.

  Raises:
    DataConfigError: the view settings are not allowed (`check_views`).
  """
  frames = tf.convert_to_tensor(frames, tf.uint8)
  indices = eval_clip_indices(tf.shape(frames)[0], data_config)
  return _eval_views(tf.gather(frames, indices), data_config)


def _eval_clip(encoded: tf.Tensor, data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """(L,) JPEG frames -> `eval_clip` of them, decoding only the sampled frames."""
  indices = eval_clip_indices(tf.shape(encoded)[0], data_config)
  num_frames = data_config.num_clips * data_config.num_frames
  return _eval_views(_decode_frames(encoded, indices, num_frames), data_config)


# ----------------------------------------------------------------------------- Splits.


def validation_split(data_config: ml_collections.ConfigDict) -> str | None:
  """The split training selects its checkpoint on, never the test split (`eval_split`).

  `val_split` names a split of the dataset; else `HELD_OUT` when `val_fraction` > 0 (that part
  of `train_split`, `held_out_ids`); else None: nothing selects.

  Raises:
    DataConfigError: both are set, or `val_split` is the test split.
  """
  val_split, fraction = data_config.val_split, data_config.val_fraction
  if val_split and fraction:
    raise DataConfigError(
        f'config.data.val_split={val_split!r} and val_fraction={fraction} both set: set '
        "val_split to a split of the dataset, or val_split to '' to hold out val_fraction of "
        'the train split.'
    )
  if val_split and val_split == data_config.eval_split:
    raise DataConfigError(
        f'config.data.val_split={val_split!r} is the test split (config.data.eval_split): '
        'select on another split, or hold out config.data.val_fraction of the train split.'
    )
  if val_split:
    return val_split
  return HELD_OUT if fraction else None


@functools.lru_cache(maxsize=8)
def _labels(config_json: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(clip ids (n,) bytes, labels (n,) int) of a TFDS split in file order (read once)."""
  data_config = ml_collections.ConfigDict(json.loads(config_json))
  records = _read(get_builder(data_config), split, data_config)
  pairs = records.map(lambda ex: (ex['clip_id'], ex['label'])).batch(4096)
  ids, labels = zip(*pairs.as_numpy_iterator())
  return np.concatenate(ids), np.concatenate(labels)


def _split_labels(
    data_config: ml_collections.ConfigDict, split: str
) -> tuple[np.ndarray, np.ndarray]:
  return _labels(data_config.to_json_best_effort(sort_keys=True), split)


def held_out_ids(data_config: ml_collections.ConfigDict) -> frozenset[bytes]:
  """The clip ids of `train_split` held out for model selection: `val_fraction` of each class.

  Per class, round(val_fraction * n) of its n examples, drawn by a permutation keyed on
  (`val_seed`, class), the same in every process and run: training seeds share one slice.

  Raises:
    DataConfigError: val_fraction is not in (0, 1), the split's clip ids are not unique, or a
      class would be left without a training or a validation example (named in the message).
  """
  fraction, split = data_config.val_fraction, data_config.train_split
  if not 0 < fraction < 1:
    raise DataConfigError(
        f'config.data.val_fraction={fraction}: allowed values are in (0, 1), the part of each '
        f'class of {split!r} held out for model selection (or 0, with config.data.val_split).'
    )
  ids, labels = _split_labels(data_config, split)
  if len(set(ids.tolist())) != len(ids):
    raise DataConfigError(
        f'config.data.val_fraction={fraction}: the clip_ids of {split!r} are not unique, so '
        'no held-out part can be told apart; set config.data.val_split to a split instead.'
    )
  class_names = get_builder(data_config).info.features['label'].names
  held = []
  for label, name in enumerate(class_names):
    members = np.flatnonzero(labels == label)
    if not len(members):  # absent from the split: nothing to hold out (nor to train on)
      logging.warning('Class %r has no example in %r: none is held out.', name, split)
      continue
    count = math.floor(fraction * len(members) + 0.5)
    if not 0 < count < len(members):
      lacks, fix = ('validation', 'raise') if count == 0 else ('training', 'lower')
      raise DataConfigError(
          f'config.data.val_fraction={fraction} leaves class {name!r} ({len(members)} examples '
          f'in {split!r}) without a {lacks} example: {fix} config.data.val_fraction, or set '
          'config.data.val_split to a split of the dataset.'
      )
    order = np.random.default_rng([data_config.val_seed, label]).permutation(members)
    held.extend(ids[order[:count]].tolist())
  return frozenset(held)


def check_data(data_config: ml_collections.ConfigDict) -> str | None:
  """Checks the views and the splits before anything trains; returns `validation_split`.

  Raises:
    DataConfigError: a view setting (`check_views`) or a split setting is not allowed.
  """
  check_views(data_config)
  try:
    augment.check_config(data_config)
  except ValueError as e:
    raise DataConfigError(str(e)) from None
  if data_config.sampling not in SAMPLINGS:
    raise DataConfigError(
        f'config.data.sampling={data_config.sampling!r}: allowed values are '
        f'{", ".join(SAMPLINGS)}.'
    )
  val_split = validation_split(data_config)
  splits = get_builder(data_config).info.splits
  for field in ('train_split', 'eval_split', 'val_split'):
    name = data_config[field]
    if name and tfds.core.ReadInstruction.from_spec(name).split_name not in splits:
      raise DataConfigError(
          f'config.data.{field}={name!r} is no split of {data_config.name}: it has '
          f'{sorted(splits)}.'
      )
  if val_split == HELD_OUT:
    held_out_ids(data_config)
  return val_split


def _membership(
    data_config: ml_collections.ConfigDict, split: str
) -> tuple[str, frozenset[bytes] | None, bool]:
  """(the TFDS split `split` reads, the clip ids it keeps (True) or drops (False); None: all).

  With `val_fraction` set, `HELD_OUT` is its part of the train split and `train_split` the rest.
  """
  if split == HELD_OUT:
    return data_config.train_split, held_out_ids(data_config), True
  if split == data_config.train_split and validation_split(data_config) == HELD_OUT:
    return split, held_out_ids(data_config), False
  return split, None, True


# ----------------------------------------------------------------------------- Datasets.


def _resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  return process_index, process_count


def _options(data_config: ml_collections.ConfigDict) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  num_threads = data_config.num_threads or len(os.sched_getaffinity(0))
  options.threading.private_threadpool_size = num_threads
  options.threading.max_intra_op_parallelism = 1
  # Implicit prefetch buffers are what grow host RAM unchecked (big_vision#36); ours are explicit.
  options.experimental_optimization.inject_prefetch = False
  return options


def _process_shards(
    builder: tfds.core.DatasetBuilder, split: str, process_count: int
) -> tuple[list[tfds.typing.SplitArg], list[int]]:
  """Each process's contiguous shard of `split` and its size; sizes differ by at most one."""
  shards = tfds.even_splits(split, process_count)
  return shards, [builder.info.splits[shard].num_examples for shard in shards]


def _read(
    builder: tfds.core.DatasetBuilder,
    shard: tfds.typing.SplitArg,
    data_config: ml_collections.ConfigDict,
) -> tf.data.Dataset:
  """Records of one shard in file order, `video` left as a (L,) string tensor of JPEGs."""
  return builder.as_dataset(
      split=shard,
      shuffle_files=False,
      decoders={'video': tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(options=_options(data_config)),
  )


def _shard(
    builder: tfds.core.DatasetBuilder,
    split: str,
    data_config: ml_collections.ConfigDict,
    process_index: int,
    process_count: int,
) -> tuple[tf.data.Dataset, list[int]]:
  """This process's records of `split` (`_membership`: held-out examples told apart) in file
  order, and the size of every process's shard."""
  source, ids, keep = _membership(data_config, split)
  shards, sizes = _process_shards(builder, source, process_count)
  records = _read(builder, shards[process_index], data_config)
  if ids is None:
    return records, sizes
  all_ids, _ = _split_labels(data_config, source)
  kept = np.array([(clip_id in ids) == keep for clip_id in all_ids.tolist()])
  bounds = np.cumsum([0, *sizes])
  sizes = [int(kept[a:b].sum()) for a, b in zip(bounds[:-1], bounds[1:])]
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
          tf.constant(sorted(ids), tf.string), tf.ones([len(ids)], tf.bool)
      ),
      default_value=False,
  )
  return records.filter(lambda ex: tf.equal(table.lookup(ex['clip_id']), keep)), sizes


def _shard_labels(
    builder: tfds.core.DatasetBuilder,
    split: str,
    data_config: ml_collections.ConfigDict,
    process_index: int,
    process_count: int,
) -> np.ndarray:
  """The labels of this process's records of `split`, in the order `_shard` reads them."""
  source, ids, keep = _membership(data_config, split)
  _, sizes = _process_shards(builder, source, process_count)
  all_ids, labels = _split_labels(data_config, source)
  start = sum(sizes[:process_index])
  end = start + sizes[process_index]
  shard_ids, shard_labels = all_ids[start:end], labels[start:end]
  if ids is None:
    return shard_labels
  kept = np.array([(clip_id in ids) == keep for clip_id in shard_ids.tolist()], bool)
  return shard_labels[kept]


def balanced_repeats(labels: np.ndarray) -> np.ndarray:
  """(n,) times each clip appears in a class-balanced epoch, for clips of `labels` (n,) in
  order: every class totals the largest class's count, spread over its clips (the first ones of
  a class take one more where it does not divide)."""
  counts = np.bincount(labels)
  target = counts.max()
  within = np.zeros(len(labels), np.int64)  # each clip's index among its class's clips
  for c in np.flatnonzero(counts):
    members = np.flatnonzero(labels == c)
    within[members] = np.arange(len(members))
  base, extra = target // counts[labels], target % counts[labels]
  return (base + (within < extra)).astype(np.int64)


def train_label_counts(data_config: ml_collections.ConfigDict, num_classes: int) -> np.ndarray:
  """(num_classes,) examples per class of the part of the train split that trains."""
  builder = get_builder(data_config)
  labels = _shard_labels(builder, data_config.train_split, data_config, 0, 1)
  return np.bincount(labels, minlength=num_classes)


def balanced_class_weights(counts: np.ndarray) -> np.ndarray:
  """Loss weights n / (classes * n_c): the mean weight per example is 1, each class weighs
  alike in total (scikit-learn's 'balanced'). A class without examples gets weight 0."""
  counts = np.asarray(counts, np.float64)
  weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
  return weights.astype(np.float32)


def split_size(data_config: ml_collections.ConfigDict, split: str) -> int:
  """Examples of `split` as the pipeline reads it (`HELD_OUT` and the rest of the train split
  told apart), all processes together."""
  builder = get_builder(data_config)
  return sum(_shard(builder, split, data_config, 0, 1)[1])


def _stream_key(seed: int, process_index: int, stream: int) -> tf.Tensor:
  base = tf.constant([seed, process_index], tf.int64)
  return tf.random.experimental.stateless_fold_in(base, stream)


def make_train_dataset(
    data_config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tf.data.Dataset:
  """Infinite, deterministic training batches of this process, with the ids of their clips.

  Args:
    data_config: `config.data`.
    batch_size: this process's share of the global batch.
    seed: data seed; with (process_index, process_count) it fixes the whole stream.
    start_step: first batch to yield; the stream is the uninterrupted one from its batch
      `start_step` on (skipped records are read but not decoded).
    process_index: this process; default `jax.process_index()`.
    process_count: number of processes; default `jax.process_count()`.

  Returns:
    Dataset of {'video': (batch, t, S, S, 3) uint8, 'label': (batch,) int32,
    'clip_id': (batch,) string}.

  With `data_config.sampling='class_balanced'` an epoch holds every class as often as the
  largest one (`balanced_repeats`, over the whole training part; each process streams its
  shard's share), each repeat of a clip its own random draw (the copies of a clip lie within one
  shuffle buffer of each other).

  Raises:
    ValueError: this process's shard of the train split is empty.
  """
  process_index, process_count = _resolve_process(process_index, process_count)
  builder = get_builder(data_config)
  records, sizes = _shard(
      builder, data_config.train_split, data_config, process_index, process_count
  )
  shard_size = sizes[process_index]
  if shard_size == 0:
    raise ValueError(f'Process {process_index} of {process_count} has no training examples.')
  if data_config.sampling == 'class_balanced':
    repeats = balanced_repeats(_shard_labels(builder, data_config.train_split, data_config, 0, 1))
    start = sum(sizes[:process_index])
    repeats = repeats[start : start + shard_size]
    shard_size = int(repeats.sum())
    records = tf.data.Dataset.zip((records, tf.data.Dataset.from_tensor_slices(repeats))).flat_map(
        lambda ex, n: tf.data.Dataset.from_tensors(ex).repeat(n)
    )
  shuffle_key = _stream_key(seed, process_index, _SHUFFLE_STREAM)
  example_key = _stream_key(seed, process_index, _EXAMPLE_STREAM)

  def epoch(epoch_index: tf.Tensor) -> tf.data.Dataset:
    shuffle_seed = tf.random.stateless_uniform(
        [],
        tf.random.experimental.stateless_fold_in(shuffle_key, epoch_index),
        0,
        _MAX_SHUFFLE_SEED,
        tf.int64,
    )
    examples = records.shuffle(data_config.shuffle_buffer, seed=shuffle_seed)
    positions = tf.data.Dataset.range(epoch_index * shard_size, (epoch_index + 1) * shard_size)
    return tf.data.Dataset.zip((positions, examples))

  def preprocess(position: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    key = tf.random.experimental.stateless_fold_in(example_key, position)
    return {
        'video': _train_clip(example['video'], key, data_config),
        'label': tf.cast(example['label'], tf.int32),
        'clip_id': example['clip_id'],
    }

  first_epoch, skip = divmod(start_step * batch_size, shard_size)
  ds = tf.data.Dataset.counter(first_epoch).flat_map(epoch).skip(skip)
  ds = ds.map(preprocess, num_parallel_calls=data_config.num_parallel_calls, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(data_config.prefetch)
  return ds.with_options(_options(data_config))


def make_eval_dataset(
    data_config: ml_collections.ConfigDict,
    split: str,
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tf.data.Dataset:
  """One pass over this process's shard of `split`, padded to a count shared by all processes.

  Args:
    data_config: `config.data`.
    split: TFDS split (e.g. 'test', 'validation', 'train[:10%]'), or `HELD_OUT`.
    batch_size: this process's share of the global batch.
    process_index: this process; default `jax.process_index()`.
    process_count: number of processes; default `jax.process_count()`.

  Returns:
    Dataset of {'video': (batch, views, t, S, S, 3) uint8 (`eval_clip`'s views), 'label':
    (batch,) int32, 'mask': (batch,) bool, 'clip_id': (batch,) string}; mask is False on
    padding (zeros, label 0, clip_id b''). Every process yields ceil(max shard size /
    batch_size) batches.
  """
  process_index, process_count = _resolve_process(process_index, process_count)
  records, sizes = _shard(
      get_builder(data_config), split, data_config, process_index, process_count
  )
  num_batches = -(-max(sizes) // batch_size)

  def preprocess(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {
        'video': _eval_clip(example['video'], data_config),
        'label': tf.cast(example['label'], tf.int32),
        'mask': tf.constant(True),
        'clip_id': example['clip_id'],
    }

  ds = records.map(
      preprocess, num_parallel_calls=data_config.num_parallel_calls, deterministic=True
  )
  padding = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  ds = ds.take(num_batches * batch_size).batch(batch_size).prefetch(data_config.prefetch)
  return ds.with_options(_options(data_config))


def _step_batches(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
  """The batches of `ds` as numpy arrays, without 'clip_id' (strings no step takes)."""
  without_ids = ds.map(lambda batch: {k: v for k, v in batch.items() if k != 'clip_id'})
  return without_ids.as_numpy_iterator()


def make_train_iterator(
    data_config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """The batches of `make_train_dataset` (same arguments) as numpy arrays, for the train step.

  Returns:
    Iterator of {'video': (batch, t, S, S, 3) uint8, 'label': (batch,) int32}.

  Raises:
    ValueError: this process's shard of the train split is empty.
  """
  return _step_batches(
      make_train_dataset(
          data_config,
          batch_size=batch_size,
          seed=seed,
          start_step=start_step,
          process_index=process_index,
          process_count=process_count,
      )
  )


def make_eval_iterator(
    data_config: ml_collections.ConfigDict,
    split: str,
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """The batches of `make_eval_dataset` (same arguments) as numpy arrays, for the eval step.

  Returns:
    Iterator of {'video': (batch, views, t, S, S, 3) uint8, 'label': (batch,) int32,
    'mask': (batch,) bool}.
  """
  return _step_batches(
      make_eval_dataset(
          data_config,
          split,
          batch_size=batch_size,
          process_index=process_index,
          process_count=process_count,
      )
  )


def to_global_arrays(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Assembles each process's batch into global arrays placed with `sharding.batch_sharding`.

  That is the sharding the jitted train and eval steps take batches with, on any mesh.

  Args:
    batch: this process's numpy arrays, leading dimension = its share of the global batch.
    mesh: device mesh spanning all processes.

  Returns:
    The same keys, as jax.Arrays of global batch size.
  """
  placement = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(placement, v) for k, v in batch.items()}
