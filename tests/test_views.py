"""Test views: T temporal clips x S spatial crops per clip, their softmax averaged."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import common
from configs import synthetic
from feadapter_jax import evaluate
from feadapter_jax import models
from feadapter_jax import step
from feadapter_jax import workdir as workdir_lib
from feadapter_jax.data import pipeline
from tests import test_step
from tests.tiny import ADAPTERS, tiny

SIZE = 32
# 7 frames in 4 segments: the segment centres (1 clip), and the quarter points (2 clips).
ONE_CLIP = [0, 2, 4, 6]
TWO_CLIPS = [[0, 2, 3, 5], [1, 3, 4, 6]]


def views_config(**views):
  config = common.data_defaults()
  config.update(num_frames=4, image_size=SIZE, **views)
  return config


def frames(height, width, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (7, height, width, 3), np.uint8)


def test_crops_run_from_corner_to_corner_and_one_is_centred():
  square = pipeline.crop_windows(40, 40, views_config(num_crops=2, test_crop_fraction=0.8))
  np.testing.assert_array_equal(square, [[0, 0, 32, 32], [8, 8, 32, 32]])
  wide = pipeline.crop_windows(30, 60, views_config(num_crops=3, test_crop_fraction=0.5))
  np.testing.assert_array_equal(wide, [[0, 0, 15, 30], [8, 15, 15, 30], [15, 30, 15, 30]])
  centre = pipeline.crop_windows(40, 40, views_config(test_crop_fraction=0.5))
  np.testing.assert_array_equal(centre, [[10, 10, 20, 20]])
  np.testing.assert_array_equal(pipeline.crop_windows(24, 40, views_config()), [[0, 0, 24, 40]])


def test_one_view_is_the_whole_frame_resized_as_before():
  """1 x 1: the segment-centred frames, the whole (non-square) frame resized to S x S."""
  clip = frames(24, 40)
  views = pipeline.eval_clip(clip, views_config()).numpy()
  assert views.shape == (1, 4, SIZE, SIZE, 3) and views.dtype == np.uint8
  # 40 -> 32 shrinks the width: antialiased, as the pipeline resizes any shrinking frame.
  resized = tf.image.resize(clip[ONE_CLIP].astype(np.float32), (SIZE, SIZE), antialias=True)
  np.testing.assert_array_equal(views[0], np.clip(np.round(resized.numpy()), 0, 255))


def test_two_by_two_views_are_the_crops_of_each_clip_clip_major():
  """Crops of S x S pixels from a 40 x 40 frame (fraction 0.8): no resize, exact pixels."""
  clip = frames(40, 40)
  views = pipeline.eval_clip(clip, views_config(num_clips=2, num_crops=2, test_crop_fraction=0.8))
  assert views.shape == (4, 4, SIZE, SIZE, 3)
  for c, indices in enumerate(TWO_CLIPS):
    for k, corner in enumerate((0, 8)):
      np.testing.assert_array_equal(
          views[2 * c + k], clip[indices, corner : corner + SIZE, corner : corner + SIZE]
      )


def test_two_by_two_probabilities_are_the_mean_of_the_four_single_view_softmaxes():
  model = models.build(tiny(ADAPTERS['fe'], num_classes=5))
  params = test_step.perturbed_params(model, (1, 4, SIZE, SIZE, 3))
  config = views_config(num_clips=2, num_crops=2, test_crop_fraction=0.75)
  views = pipeline.eval_clip(frames(48, 40, seed=1), config).numpy()  # resized crops
  assert views.shape == (4, 4, SIZE, SIZE, 3)

  eval_step = jax.jit(step.make_eval_step(model, mean=config.mean, std=config.std))
  probs = np.asarray(eval_step(params, {'video': views[None]}))[0]

  single = []
  for view in views:  # each view alone through the model, its softmax on the host
    video = step.normalise_video(jnp.asarray(view[None]), config.mean, config.std, jnp.float32)
    logits = np.asarray(model.apply({'params': params}, video), np.float64)[0]
    single.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
  single = np.stack(single)
  assert np.abs(single - single.mean(0)).max() > 1e-3  # the views differ: the mean is a test
  np.testing.assert_allclose(probs, single.mean(0), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    'views, message',
    [
        (dict(num_clips=0), r'config.data.num_clips=0: allowed values are the whole numbers 1, 2'),
        (dict(num_crops=-2), r'config.data.num_crops=-2: allowed values are the whole numbers 1'),
        (dict(num_crops=2), r'every crop is the whole frame; set config.data.test_crop_fraction'),
        (dict(test_crop_fraction=1.5), r'test_crop_fraction=1.5: allowed values are in \(0, 1\]'),
    ],
)
def test_a_bad_view_setting_is_one_clear_error(views, message):
  with pytest.raises(pipeline.DataConfigError, match=message) as error:
    pipeline.eval_clip(frames(16, 16), views_config(**views))
  assert '\n' not in str(error.value)


def test_evaluate_refuses_bad_views_before_loading_the_model(tmp_path):
  config = synthetic.get_config('quick,init=')
  workdir_lib.write_config(str(tmp_path), config)
  assert json.loads((tmp_path / 'config.json').read_text())['data']['num_crops'] == 1
  with pytest.raises(pipeline.DataConfigError, match='num_crops=-1: allowed values'):
    evaluate.evaluate_workdir(str(tmp_path), 'test', num_crops=-1)
  assert workdir_lib.evaluation_file('test', 1) == 'results_test_1clip.json'
  assert workdir_lib.evaluation_file('test', 2, 2) == 'results_test_2clip_2crop.json'
