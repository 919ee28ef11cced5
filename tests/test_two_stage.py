"""The whole pipeline on miniature copies of the real datasets, through the command line: a
converted backbone -> an image emotion classifier on RAF-DB (configs/image_fer.py) -> FE-Adapter
on DFEW (configs/dfew.py) initialised from its export, whose head keeps RAF-DB's weights with
each class's row moved to DFEW's order."""

import json
import os

import numpy as np

from feadapter_jax import checkpoint
from feadapter_jax import workdir as workdir_lib
from feadapter_jax.data import dfew as dfew_data
from feadapter_jax.data import rafdb as rafdb_data
from feadapter_jax.models import builder
from tests import test_datasets
from tests import test_image_datasets
from tests import test_train
from tests import tiny

SMALL = ['--config.data.image_size=32', '--config.batch_size=2', '--config.eval_batch_size=2']


def test_rafdb_classifier_then_fe_adapter_on_dfew_keeps_the_head_by_emotion(tmp_path):
  backbone = str(tmp_path / 'vit')
  tiny.write_backbone(backbone)  # what `convert` writes, of a tiny ImageNet-style classifier
  rafdb_manual, dfew_manual = tmp_path / 'rafdb', tmp_path / 'dfew'
  test_image_datasets.make_rafdb(rafdb_manual)
  test_datasets.make_dfew(dfew_manual)
  data_dir = str(tmp_path / 'tfds')

  image_run = str(tmp_path / 'image')
  proc = test_train.run(
      image_run,
      data_dir,
      f'configs/image_fer.py:dataset=rafdb,init={backbone}',
      f'--config.data.manual_dir={rafdb_manual}',
      '--config.total_steps=3',
      *SMALL,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Results (final step, test): UAR' in proc.stdout
  # The ImageNet-style head (5 classes, none named) is not carried into the emotion classifier.
  assert 'names no classes' not in proc.stderr  # init.head='drop': no attempt, no warning
  export = os.path.join(image_run, 'export')
  with open(os.path.join(export, checkpoint.MODEL_CONFIG)) as f:
    stored = json.load(f)
  assert stored['class_names'] == list(rafdb_data.Rafdb.CLASS_NAMES)
  assert stored['num_classes'] == 7 and stored['width'] == tiny.TINY['width']
  image_params, _ = checkpoint.load_params(export)

  video_run = str(tmp_path / 'video')
  proc = test_train.run(
      video_run,
      data_dir,
      'configs/dfew.py:fold=1',
      f'--config.init.checkpoint={export}',
      f'--config.data.manual_dir={dfew_manual}',
      '--config.data.num_frames=4',
      '--config.total_steps=2',
      '--config.data.val_fraction=0',  # one clip per class: nothing to hold out
      '--verbosity=0',  # the head mapping is logged at INFO
      *SMALL,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Results (final step, test): UAR' in proc.stdout
  # Happy is RAF-DB's Happiness (row 3), Sad its Sadness (4), Neutral (6), Angry its Anger (5).
  assert "mapped by class name: {'Happy': 3, 'Sad': 4, 'Neutral': 6, 'Angry': 5" in proc.stderr
  # The head the video run starts from: RAF-DB's columns in DFEW's class order.
  config = workdir_lib.load_config(video_run)
  shapes = builder.param_shapes(builder.build_model(config), builder.clip_shape(config))
  loaded = builder.load_backbone(config, shapes, dfew_data.Dfew.CLASS_NAMES)
  rafdb_of = {builder.emotion(n): i for i, n in enumerate(rafdb_data.Rafdb.CLASS_NAMES)}
  for row, name in enumerate(dfew_data.Dfew.CLASS_NAMES):
    source = rafdb_of[builder.emotion(name)]
    np.testing.assert_array_equal(
        loaded['head/kernel'][:, row], image_params['head']['kernel'][:, source], err_msg=name
    )
    assert loaded['head/bias'][row] == image_params['head']['bias'][source], name
  # The backbone is the image classifier's, fine-tuned.
  np.testing.assert_array_equal(
      loaded['blocks_0/attn/qkv/kernel'], image_params['blocks_0']['attn']['qkv']['kernel']
  )
