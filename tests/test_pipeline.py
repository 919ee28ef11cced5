"""Tests of the tf.data input pipeline on tiny SynthFER datasets (16 px, 8 stored frames)."""

import os

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import common
from feadapter_jax import step
from feadapter_jax.data import pipeline
from feadapter_jax.data.synth_fer import builder as synth_builder
from feadapter_jax.data.synth_fer import render as synth_render

NUM_TRAIN, NUM_TEST, STORED_FRAMES, RESOLUTION = 24, 13, 8, 16
NEUTRAL = synth_render.CLASS_NAMES.index('Neutral')
# Renderer settings under which a Neutral clip is one frame repeated (no motion, light, noise).
STILL = {'noise_std': 0.0, 'motion': 0.0, 'rotation_deg': 0.0, 'zoom': 0.0, 'lighting': 0.0}


class FakeManualFer(tfds.core.GeneratorBasedBuilder):
  """A stand-in for a real dataset: it can only be prepared from files in manual_dir."""

  VERSION = tfds.core.Version('1.0.0')
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Put labels.txt (one class name per clip) in the manual dir.'

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
            {
                'video': tfds.features.Video(shape=(None, None, None, 3), encoding_format='jpeg'),
                'label': tfds.features.ClassLabel(names=synth_render.CLASS_NAMES),
                'clip_id': tfds.features.Text(),
                'num_frames': np.int32,
            }
        ),
    )

  def _split_generators(self, dl_manager):
    return {'test': self._generate_examples(dl_manager.manual_dir / 'labels.txt')}

  def _generate_examples(self, path):
    for index, name in enumerate(path.read_text().split()):
      yield index, {
          'video': np.zeros((2, 8, 8, 3), np.uint8),
          'label': name,
          'clip_id': str(index),
          'num_frames': 2,
      }


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _config(data_dir, **overrides):
  config = common.data_defaults()
  config.data_dir = data_dir
  config.num_frames = 4
  config.image_size = RESOLUTION
  config.shuffle_buffer = 8
  config.synth = ml_collections.ConfigDict(
      {
          'num_train': NUM_TRAIN,
          'num_validation': 3,
          'num_test': NUM_TEST,
          'num_frames': STORED_FRAMES,
          'resolution': RESOLUTION,
          'seed': 0,
          'jpeg_quality': 95,
      }
  )
  for key, value in overrides.items():
    if key == 'synth':
      config.synth.update(value)
    else:
      config[key] = value
  return config


def _take(iterator, num_batches):
  return [next(iterator) for _ in range(num_batches)]


# ----------------------------------------------------------------------------- Sampling.


@pytest.mark.parametrize('clip_length,num_samples', [(8, 4), (37, 8), (100, 16), (16, 16)])
def test_train_indices_fall_in_their_segments(clip_length, num_samples):
  offsets = np.random.default_rng(0).uniform(size=(200, num_samples))
  indices = pipeline.sample_indices(clip_length, offsets).numpy()
  edges = np.arange(num_samples + 1) * clip_length / num_samples
  low, high = np.floor(edges[:-1]), np.ceil(edges[1:]) - 1
  assert ((indices >= low) & (indices <= high)).all()
  assert (np.diff(indices, axis=-1) >= 0).all()
  if clip_length >= 2 * num_samples:  # the offsets do move the frames within segments
    assert (indices.max(0) > indices.min(0)).all()


def test_eval_indices_are_segment_centres():
  centres = pipeline.eval_offsets(4, 1)
  np.testing.assert_array_equal(pipeline.sample_indices(16, centres), [[2, 6, 10, 14]])
  np.testing.assert_array_equal(
      pipeline.sample_indices(80, pipeline.eval_offsets(16, 1)), [2 + 5 * np.arange(16)]
  )


def test_several_eval_clips_are_shifted_views():
  offsets = pipeline.eval_offsets(4, 2)
  np.testing.assert_allclose(offsets, [[0.25] * 4, [0.75] * 4])
  np.testing.assert_array_equal(
      pipeline.sample_indices(16, offsets), [[1, 5, 9, 13], [3, 7, 11, 15]]
  )


def test_short_clips_repeat_frames_in_order():
  np.testing.assert_array_equal(
      pipeline.sample_indices(3, pipeline.eval_offsets(8, 1)), [[0, 0, 0, 1, 1, 2, 2, 2]]
  )
  np.testing.assert_array_equal(
      pipeline.sample_indices(1, pipeline.eval_offsets(4, 2)), np.zeros((2, 4))
  )
  # Offsets just below 1 still clamp inside the clip.
  assert pipeline.sample_indices(5, np.full(8, 0.9999)).numpy().max() == 4


# ----------------------------------------------------------------------------- Builders.


def test_dataset_info_prepares_synth_fer(data_dir):
  info = pipeline.dataset_info(_config(data_dir))
  assert info.class_names == list(synth_render.CLASS_NAMES)
  assert info.num_examples == {'train': NUM_TRAIN, 'validation': 3, 'test': NUM_TEST}


def test_unknown_dataset_gives_a_clear_error(tmp_path):
  config = _config(
      str(tmp_path / 'tfds'),
      name='no_such_dataset',
      builder_config='fold1',
      manual_dir=str(tmp_path / 'manual'),
  )
  with pytest.raises(pipeline.DatasetNotFoundError) as error:
    pipeline.get_builder(config)
  message = str(error.value)
  assert "'no_such_dataset/fold1'" in message
  assert os.path.abspath(config.data_dir) in message and str(tmp_path / 'manual') in message
  assert error.value.__cause__ is None and error.value.__suppress_context__


def test_unprepared_real_dataset_needs_its_manual_files(tmp_path):
  manual_dir = tmp_path / 'manual'
  config = _config(
      str(tmp_path / 'tfds'), name='fake_manual_fer', builder_config='', manual_dir=str(manual_dir)
  )
  with pytest.raises(pipeline.DatasetNotFoundError) as error:
    pipeline.get_builder(config)
  message = str(error.value)
  assert FakeManualFer.MANUAL_DOWNLOAD_INSTRUCTIONS in message
  assert os.path.abspath(config.data_dir) in message and str(manual_dir) in message

  with pytest.raises(pipeline.DatasetNotFoundError, match='fold9'):
    pipeline.get_builder(
        _config(
            config.data_dir,
            name='fake_manual_fer',
            builder_config='fold9',
            manual_dir=str(manual_dir),
        )
    )

  manual_dir.mkdir()
  (manual_dir / 'labels.txt').write_text('Happy\nFear\nSad\n')
  info = pipeline.dataset_info(config)
  assert info.num_examples == {'test': 3}


# ----------------------------------------------------------------------------- Evaluation.


def test_eval_frames_are_the_sampled_frames_in_temporal_order(data_dir):
  """Output frames are the stored frames at the segment centres of views 0 and 1, pixel for pixel
  (uint8, no resize: stored at the model's size), and the stored frames are the rendered ones in
  temporal order."""
  config = _config(data_dir, num_clips=2)
  batch = next(
      pipeline.make_eval_dataset(
          config, 'test', batch_size=NUM_TEST, process_index=0, process_count=1
      ).as_numpy_iterator()
  )
  assert batch['video'].shape == (NUM_TEST, 2, 4, RESOLUTION, RESOLUTION, 3)
  assert batch['video'].dtype == np.uint8
  stored = tfds.as_numpy(
      pipeline.get_builder(config).as_dataset(
          split='test', decoders={'video': tfds.decode.SkipDecoding()}
      )
  )
  stored = {
      ex['clip_id']: np.stack(
          [
              cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
              for jpeg in ex['video']
          ]
      )
      for ex in stored
  }
  synth = synth_builder.synth_config('video', **config.synth.to_dict())
  expected = np.array([[0, 2, 4, 6], [1, 3, 5, 7]])  # 8 frames, 4 segments, views at 1/4, 3/4
  for video, label, clip_id in zip(batch['video'], batch['label'], batch['clip_id']):
    np.testing.assert_array_equal(video, stored[clip_id][expected])  # (views t h w 3)
    output = video.astype(float)
    split, index = clip_id.decode().rsplit('_', 1)
    rendered, rendered_label = synth_builder.render_example(synth, split, int(index))
    assert label == rendered_label
    # Each output frame is nearest (RMS) to the rendered frame of its index.
    rms = np.sqrt(
        ((output[:, :, None] - rendered[None, None].astype(float)) ** 2).mean(axis=(-3, -2, -1))
    )  # (views, t, rendered frames)
    np.testing.assert_array_equal(rms.argmin(-1), expected)


def test_eval_pads_with_masked_examples_and_equal_batch_counts(data_dir):
  config = _config(data_dir)
  batches = list(
      pipeline.make_eval_dataset(
          config, 'test', batch_size=4, process_index=0, process_count=1
      ).as_numpy_iterator()
  )
  masks = np.stack([b['mask'] for b in batches])
  assert masks.sum(1).tolist() == [4, 4, 4, 1]
  last = batches[-1]
  assert (last['video'][1:] == 0).all() and (last['label'][1:] == 0).all()
  assert list(last['clip_id'][1:]) == [b''] * 3
  assert np.abs(last['video'][0]).sum() > 0 and last['label'].dtype == np.int32


@pytest.mark.parametrize('process_count', [2, 4])
def test_eval_shards_are_disjoint_complete_and_equally_long(data_dir, process_count):
  config = _config(data_dir)
  seen, counts = [], []
  for process_index in range(process_count):
    batches = list(
        pipeline.make_eval_dataset(
            config, 'test', batch_size=3, process_index=process_index, process_count=process_count
        ).as_numpy_iterator()
    )
    counts.append(len(batches))
    seen += [i for b in batches for i, m in zip(b['clip_id'], b['mask']) if m]
  assert len(set(counts)) == 1
  assert sorted(seen) == [synth_builder.clip_name('test', i).encode() for i in range(NUM_TEST)]


@pytest.mark.parametrize('stored_size', [40, 9])  # downscaled (antialiased), upscaled
def test_resized_uint8_normalised_on_device_is_the_float_path_within_half_a_level(stored_size):
  """Resizing rounds to uint8; normalised on the device (`step.normalise_video`) that is the
  float resize normalised on the host to within half a pixel level, 0.5 / 255 / std."""
  config = common.data_defaults()
  config.update(num_frames=4, image_size=RESOLUTION, num_clips=2)
  frames = np.random.default_rng(0).integers(0, 256, (7, stored_size, stored_size, 3), np.uint8)

  views = pipeline.eval_clip(frames, config).numpy()

  assert views.dtype == np.uint8 and views.shape == (2, 4, RESOLUTION, RESOLUTION, 3)
  selected = tf.cast(tf.gather(frames, pipeline.eval_clip_indices(7, config)), tf.float32)
  floats = tf.image.resize(
      selected, (RESOLUTION, RESOLUTION), 'bilinear', antialias=stored_size > RESOLUTION
  ).numpy()
  std = np.asarray(config.std, np.float32)
  host = floats.reshape(views.shape) / (255.0 * std) - np.asarray(config.mean, np.float32) / std
  device = np.asarray(step.normalise_video(jnp.asarray(views), config.mean, config.std, 'float32'))
  error = np.abs(device - host) * std * 255.0  # in pixel levels
  assert 0.1 < error.max() <= 0.5 + 1e-4  # rounded, by at most half a level
  np.testing.assert_array_equal(views, np.clip(np.round(floats), 0, 255).reshape(views.shape))


def test_batches_take_one_byte_per_pixel(data_dir):
  """A quarter of the float32 batches' host memory and host-to-device transfer."""
  batch = next(
      pipeline.make_train_iterator(
          _config(data_dir), batch_size=5, seed=0, process_index=0, process_count=1
      )
  )
  assert batch['video'].dtype == np.uint8
  assert batch['video'].nbytes == 5 * 4 * RESOLUTION * RESOLUTION * 3


def test_data_dtype_is_no_config_field():
  """The compute dtype is `model.dtype`: a locked config refuses `data.dtype` by name."""
  config = common.data_defaults()
  config.lock()
  with pytest.raises(AttributeError, match='Key "dtype" does not exist'):
    config.dtype = 'bfloat16'


def test_image_variant_is_one_frame_clips(data_dir):
  config = _config(data_dir, builder_config='image', num_frames=1)
  train = next(
      pipeline.make_train_iterator(config, batch_size=2, seed=0, process_index=0, process_count=1)
  )
  test = next(
      pipeline.make_eval_iterator(config, 'test', batch_size=2, process_index=0, process_count=1)
  )
  assert train['video'].shape == (2, 1, RESOLUTION, RESOLUTION, 3)
  assert test['video'].shape == (2, 1, 1, RESOLUTION, RESOLUTION, 3)


# ----------------------------------------------------------------------------- Training.


def test_train_stream_is_deterministic_and_resumable(data_dir):
  config = _config(data_dir)
  make = lambda **kw: pipeline.make_train_iterator(
      config, batch_size=5, process_index=0, process_count=1, **{'seed': 3, **kw}
  )
  full = _take(make(), 10)  # 50 examples: crosses two epoch boundaries (24 examples each)
  again = _take(make(), 10)
  for step, batch in enumerate(full):
    assert batch['video'].shape == (5, 4, RESOLUTION, RESOLUTION, 3)
    assert batch['video'].dtype == np.uint8 and batch['label'].dtype == np.int32
    np.testing.assert_array_equal(batch['video'], again[step]['video'])
    np.testing.assert_array_equal(batch['label'], again[step]['label'])
  for start_step in (3, 7):  # within the first epoch; in the second epoch
    resumed = _take(make(start_step=start_step), 10 - start_step)
    for batch, expected in zip(resumed, full[start_step:]):
      np.testing.assert_array_equal(batch['video'], expected['video'])
      np.testing.assert_array_equal(batch['label'], expected['label'])
  other_seed = next(make(seed=4))
  assert not np.array_equal(other_seed['video'], full[0]['video'])


# Every train augmentation on, with class-balanced sampling, on SynthFER's imbalanced variant.
AUGMENTED = dict(
    builder_config='hard',
    randaugment='rand-m9-n3-mstd0.5-inc1',
    color_jitter=0.3,
    erase_prob=0.5,
    sampling='class_balanced',
    crop_scale=(0.08, 1.0),
)


def test_augmented_balanced_stream_is_deterministic_and_resumable(data_dir):
  config = _config(data_dir, synth={'num_train': 60}, **AUGMENTED)
  make = lambda **kw: pipeline.make_train_iterator(
      config, batch_size=6, seed=5, process_index=0, process_count=1, **kw
  )
  full = _take(make(), 8)
  plain = _take(
      pipeline.make_train_iterator(
          _config(data_dir, synth={'num_train': 60}, builder_config='hard'),
          batch_size=6,
          seed=5,
          process_index=0,
          process_count=1,
      ),
      1,
  )
  assert plain[0]['video'].shape == full[0]['video'].shape
  assert not np.array_equal(plain[0]['video'], full[0]['video'])  # the augmentations act
  for start_step in (3, 6):
    resumed = _take(make(start_step=start_step), 8 - start_step)
    for batch, expected in zip(resumed, full[start_step:], strict=True):
      np.testing.assert_array_equal(batch['video'], expected['video'])
      np.testing.assert_array_equal(batch['label'], expected['label'])


def test_class_balanced_sampling_draws_rare_classes_as_often_as_common_ones(data_dir):
  config = _config(data_dir, synth={'num_train': 60}, builder_config='hard')
  counts = pipeline.train_label_counts(config, 7)
  assert counts.sum() == 60 and counts.max() >= 5 * counts.min()  # DFEW-like, Disgust rare
  epoch = 7 * counts.max()
  balanced = dict(sampling='class_balanced')
  ds = pipeline.make_train_dataset(
      _config(data_dir, synth={'num_train': 60}, builder_config='hard', **balanced),
      batch_size=1,
      seed=0,
      process_index=0,
      process_count=1,
  )
  drawn = np.array([int(b['label'][0]) for b in ds.take(epoch).as_numpy_iterator()])
  # Every class exactly as often as the largest, within one epoch.
  np.testing.assert_array_equal(np.bincount(drawn, minlength=7), np.full(7, counts.max()))
  labels = np.array([0, 0, 0, 0, 0, 1, 1, 2])
  np.testing.assert_array_equal(pipeline.balanced_repeats(labels), [1, 1, 1, 1, 1, 3, 2, 5])
  weights = pipeline.balanced_class_weights(counts)
  np.testing.assert_allclose(weights * counts, np.full(7, 60 / 7), rtol=1e-6)
  with pytest.raises(pipeline.DataConfigError, match='config.data.sampling'):
    pipeline.check_data(_config(data_dir, sampling='by_class'))
  with pytest.raises(pipeline.DataConfigError, match='config.data.randaugment'):
    pipeline.check_data(_config(data_dir, randaugment='rand-x'))


def test_train_epochs_reshuffle_and_reaugment(data_dir):
  config = _config(data_dir, synth=STILL)
  batches = _take(
      pipeline.make_train_dataset(
          config, batch_size=NUM_TRAIN, seed=0, process_index=0, process_count=1
      ).as_numpy_iterator(),
      2,
  )
  first, second = batches
  assert sorted(first['clip_id']) == sorted(second['clip_id'])  # one epoch each
  assert list(first['clip_id']) != list(second['clip_id'])  # in another order
  by_id = {i: v for i, v in zip(second['clip_id'], second['video'])}
  changed = [not np.array_equal(v, by_id[i]) for i, v in zip(first['clip_id'], first['video'])]
  assert np.mean(changed) > 0.8  # new frames, crop and flip for (nearly) every clip


def test_augmentation_is_shared_by_all_frames_of_a_clip(data_dir):
  """A Neutral clip rendered without motion, light or noise is one frame repeated; after the
  random crop and flip it must still be, which fails if frames got different crops."""
  config = _config(data_dir, synth=STILL, crop_scale=(0.3, 0.6))
  batch = next(
      pipeline.make_train_iterator(
          config, batch_size=NUM_TRAIN, seed=0, process_index=0, process_count=1
      )
  )
  still = batch['video'][batch['label'] == NEUTRAL]
  assert len(still) >= 3
  np.testing.assert_array_equal(still, np.broadcast_to(still[:, :1], still.shape))
  moving = batch['video'][batch['label'] != NEUTRAL]
  assert all(not np.array_equal(v[0], v[-1]) for v in moving)  # the check can fail


@pytest.mark.parametrize('process_count', [2, 4])
def test_train_shards_cover_each_example_once_per_epoch(data_dir, process_count):
  config = _config(data_dir)
  shard_size = NUM_TRAIN // process_count
  epoch_ids = []
  for process_index in range(process_count):
    batches = _take(
        pipeline.make_train_dataset(
            config, batch_size=3, seed=0, process_index=process_index, process_count=process_count
        ).as_numpy_iterator(),
        shard_size // 3,
    )
    ids = [i for b in batches for i in b['clip_id']]
    assert len(set(ids)) == shard_size
    epoch_ids += ids
  assert sorted(epoch_ids) == [
      synth_builder.clip_name('train', i).encode() for i in range(NUM_TRAIN)
  ]


def test_iterators_yield_the_dataset_batches_without_clip_ids(data_dir):
  """What the steps get is what the tests above read from the datasets, less the clip ids."""
  config = _config(data_dir)
  shard = {'batch_size': 5, 'process_index': 0, 'process_count': 1}
  pairs = [
      (
          pipeline.make_eval_dataset(config, 'test', **shard),
          pipeline.make_eval_iterator(config, 'test', **shard),
      ),
      (
          pipeline.make_train_dataset(config, seed=0, start_step=2, **shard),
          pipeline.make_train_iterator(config, seed=0, start_step=2, **shard),
      ),
  ]
  for dataset, iterator in pairs:
    for with_ids, batch in zip(_take(dataset.as_numpy_iterator(), 3), _take(iterator, 3)):
      assert set(with_ids) - set(batch) == {'clip_id'}
      for key, value in batch.items():
        assert value.dtype == with_ids[key].dtype
        np.testing.assert_array_equal(value, with_ids[key])


def test_to_global_arrays_places_the_batch_on_the_mesh(data_dir):
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  batch = next(
      pipeline.make_train_iterator(
          _config(data_dir), batch_size=jax.device_count(), seed=0, process_index=0, process_count=1
      )
  )
  arrays = pipeline.to_global_arrays(batch, mesh)
  assert set(arrays) == {'video', 'label'}
  for key, array in arrays.items():
    assert array.sharding.spec == jax.sharding.PartitionSpec('data')
    assert len(array.addressable_shards) == jax.device_count()
    np.testing.assert_array_equal(np.asarray(array), batch[key])
