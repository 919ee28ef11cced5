"""tf.data input pipeline: TFDS clips -> sampled, decoded, augmented numpy batches per process.

Every dataset (SynthFER and the real ones) stores `video` as JPEG frames in temporal order. The
pipeline reads those byte strings undecoded, picks T frames per clip (`sample_indices`: one per
equal segment), decodes only those, and then
  * train: one random resized crop and one horizontal flip for the whole clip, resize to S x S;
  * eval:  resize to S x S, `num_clips` temporal views per clip (`eval_clip`, which prediction
    on user videos applies to decoded frames);
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

The `config.data` fields read here are listed, with their defaults, in `configs/common.py`
(`data_defaults`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from feadapter_jax import sharding
from feadapter_jax.data.synth_fer import builder as synth_builder

SYNTH_NAME = 'synth_fer'
# Independent stateless random streams under one (seed, process) key.
_SHUFFLE_STREAM, _EXAMPLE_STREAM = 0, 1
# tf.data shuffle seeds are drawn in [0, 2**31 - 1) to stay valid as TF op seeds.
_MAX_SHUFFLE_SEED = 2**31 - 1
_DCT_METHOD = 'INTEGER_ACCURATE'


class DatasetNotFoundError(Exception):
  """A dataset is unknown, or not prepared and its manual files are missing."""


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


def _random_crop_window(
    key: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tf.Tensor:
  """[y, x, h, w] int32 window of a random resized crop (area in `scale`, aspect in `ratio`).

  One draw, clamped to the frame (no rejection loop), so its cost and randomness are fixed.
  """
  area_key, ratio_key, y_key, x_key = tf.unstack(tf.random.experimental.stateless_split(key, 4))
  height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area = height * width * tf.random.stateless_uniform([], area_key, *scale)
  log_ratio = tf.random.stateless_uniform([], ratio_key, math.log(ratio[0]), math.log(ratio[1]))
  aspect = tf.exp(log_ratio)
  crop_h = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1.0, height)
  crop_w = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1.0, width)
  y = tf.floor(tf.random.stateless_uniform([], y_key) * (height - crop_h + 1.0))
  x = tf.floor(tf.random.stateless_uniform([], x_key) * (width - crop_w + 1.0))
  return tf.cast(tf.stack([y, x, crop_h, crop_w]), tf.int32)


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
  """(L,) JPEG frames -> (t S S 3): random segment offsets, one crop and flip for all frames."""
  num_frames = data_config.num_frames
  time_key, crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
  offsets = tf.random.stateless_uniform([num_frames], time_key, dtype=tf.float64)
  indices = sample_indices(tf.shape(encoded)[0], offsets)
  shape = tf.io.extract_jpeg_shape(encoded[0])  # Frames of a clip share one size.
  window = _random_crop_window(
      crop_key, shape[0], shape[1], tuple(data_config.crop_scale), tuple(data_config.crop_ratio)
  )
  frames = _decode_frames(encoded, indices, num_frames, window)
  if data_config.flip:
    flip = tf.random.stateless_uniform([], flip_key) < 0.5
    frames = tf.cond(flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)
  return _finish(frames, data_config)


def eval_clip_indices(
    clip_length: int | tf.Tensor, data_config: ml_collections.ConfigDict
) -> tf.Tensor:
  """Frames evaluation reads from a clip of `clip_length` frames: (num_clips * t,), view-major."""
  offsets = eval_offsets(data_config.num_frames, data_config.num_clips)
  return tf.reshape(sample_indices(clip_length, offsets), [-1])


def _eval_views(selected: tf.Tensor, data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """The (num_clips * t, h, w, 3) frames at `eval_clip_indices` -> (num_clips t S S 3)."""
  size = data_config.image_size
  return tf.reshape(
      _finish(selected, data_config), [data_config.num_clips, data_config.num_frames, size, size, 3]
  )


def eval_clip(frames: np.ndarray | tf.Tensor, data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """A decoded clip -> the evaluation views of it, exactly as `make_eval_iterator` makes them.

  Prediction on user videos calls this on each window, so it sees what evaluation sees.

  Args:
    frames: (L, h, w, 3) uint8 frames of one clip in temporal order, L >= 1.
    data_config: `config.data` (num_frames, num_clips, image_size).

  Returns:
    (num_clips, t, S, S, 3) uint8 segment-centred views, resized; the eval step normalises
    them.
  """
  frames = tf.convert_to_tensor(frames, tf.uint8)
  indices = eval_clip_indices(tf.shape(frames)[0], data_config)
  return _eval_views(tf.gather(frames, indices), data_config)


def _eval_clip(encoded: tf.Tensor, data_config: ml_collections.ConfigDict) -> tf.Tensor:
  """(L,) JPEG frames -> `eval_clip` of them, decoding only the sampled frames."""
  indices = eval_clip_indices(tf.shape(encoded)[0], data_config)
  num_views = data_config.num_clips * data_config.num_frames
  return _eval_views(_decode_frames(encoded, indices, num_views), data_config)


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

  Raises:
    ValueError: this process's shard of the train split is empty.
  """
  process_index, process_count = _resolve_process(process_index, process_count)
  builder = get_builder(data_config)
  shards, sizes = _process_shards(builder, data_config.train_split, process_count)
  shard_size = sizes[process_index]
  if shard_size == 0:
    raise ValueError(f'Process {process_index} of {process_count} has no training examples.')
  records = _read(builder, shards[process_index], data_config)
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
    split: TFDS split (e.g. 'test', 'validation', 'train[:10%]').
    batch_size: this process's share of the global batch.
    process_index: this process; default `jax.process_index()`.
    process_count: number of processes; default `jax.process_count()`.

  Returns:
    Dataset of {'video': (batch, num_clips, t, S, S, 3) uint8, 'label': (batch,) int32,
    'mask': (batch,) bool, 'clip_id': (batch,) string}; mask is False on padding (zeros,
    label 0, clip_id b''). Every process yields ceil(max shard size / batch_size) batches.
  """
  process_index, process_count = _resolve_process(process_index, process_count)
  builder = get_builder(data_config)
  shards, sizes = _process_shards(builder, split, process_count)
  num_batches = -(-max(sizes) // batch_size)

  def preprocess(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {
        'video': _eval_clip(example['video'], data_config),
        'label': tf.cast(example['label'], tf.int32),
        'mask': tf.constant(True),
        'clip_id': example['clip_id'],
    }

  ds = _read(builder, shards[process_index], data_config)
  ds = ds.map(preprocess, num_parallel_calls=data_config.num_parallel_calls, deterministic=True)
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
    Iterator of {'video': (batch, num_clips, t, S, S, 3) uint8, 'label': (batch,) int32,
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
