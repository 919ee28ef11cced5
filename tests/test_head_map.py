"""An image classifier's head carried into a video run by class name: RAF-DB's, AffectNet's or
FERPlus's classes put in DFEW's order, or the head left random when the classes do not match."""

import json

from absl import logging
import numpy as np
import pytest

from configs import dfew
from feadapter_jax import checkpoint
from feadapter_jax.convert import __main__ as convert_main
from feadapter_jax.data import dfew as dfew_data
from feadapter_jax.data import mafw as mafw_data
from feadapter_jax.models import builder
from tests import test_convert_families
from tests import tiny

RAFDB = ('Surprise', 'Fear', 'Disgust', 'Happiness', 'Sadness', 'Anger', 'Neutral')
FERPLUS = ('neutral', 'happiness', 'surprise', 'sadness', 'anger', 'disgust', 'fear', 'contempt')
DFEW = dfew_data.Dfew.CLASS_NAMES  # Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear


def test_rows_follow_the_emotions_across_spellings():
  # DFEW's Happy is RAF-DB's 4th class (Happiness), Sad its 5th (Sadness), Neutral its 7th...
  assert builder.head_rows(RAFDB, DFEW) == [3, 4, 6, 5, 0, 2, 1]
  assert builder.head_rows(FERPLUS, DFEW) == [1, 3, 0, 4, 2, 5, 6]  # contempt is left out
  assert builder.head_rows(DFEW, DFEW) == list(range(7))
  assert builder.head_rows(RAFDB, mafw_data.Mafw.CLASS_NAMES) is None  # MAFW has Anxiety...


def _backbone(directory, class_names, classes=7):
  """A tiny image classifier whose head's column j and bias j hold j, naming `class_names`."""
  stored = tiny.write_backbone(str(directory), num_classes=classes)
  params, _ = checkpoint.load_params(str(directory))
  width = params['head']['kernel'].shape[0]
  params['head'] = {
      'kernel': np.tile(np.arange(classes, dtype=np.float32), (width, 1)),
      'bias': np.arange(classes, dtype=np.float32),
  }
  if class_names is not None:
    stored['class_names'] = list(class_names)
  checkpoint.save_params(str(directory), params, stored)
  return str(directory)


def _load(directory, class_names=DFEW, **init):
  config = dfew.get_config()
  config.init.checkpoint = directory
  config.init.update(init)
  for key, value in tiny.TINY.items():
    if key in config.model and key != 'num_classes':  # DFEW's 7 stay
      config.model[key] = value
  config.data.image_size, config.data.num_frames = tiny.TINY['image_size'], 2
  shapes = builder.param_shapes(builder.build_model(config), builder.clip_shape(config))
  return builder.load_backbone(config, shapes, class_names)


@pytest.mark.parametrize('source', [RAFDB, FERPLUS])
def test_the_head_is_loaded_in_the_runs_class_order(tmp_path, source):
  loaded = _load(_backbone(tmp_path / 'vit', source, classes=len(source)))
  rows = np.asarray(builder.head_rows(source, DFEW), np.float32)
  np.testing.assert_array_equal(loaded['head/bias'], rows)
  np.testing.assert_array_equal(loaded['head/kernel'], np.tile(rows, (tiny.TINY['width'], 1)))
  assert 'blocks_0/attn/qkv/kernel' in loaded  # the backbone comes as always


@pytest.mark.parametrize(
    'class_names, init, why',
    [
        (None, {}, 'names no classes'),
        (RAFDB[:6] + ('Contempt',), {}, 'do not hold every class'),
        (RAFDB, {'head': 'drop'}, None),
    ],
)
def test_otherwise_the_head_stays_random_and_the_log_says_why(
    tmp_path, class_names, init, why, monkeypatch
):
  warnings = []
  monkeypatch.setattr(logging, 'warning', lambda msg, *args: warnings.append(msg % args))
  loaded = _load(_backbone(tmp_path / 'vit', class_names), **init)
  assert not [n for n in loaded if n.startswith('head/')]
  assert 'blocks_0/attn/qkv/kernel' in loaded
  heads = [w for w in warnings if 'head' in w]
  assert (why is None and not heads) or (len(heads) == 1 and why in heads[0]), warnings


def test_a_bad_head_choice_names_the_field(tmp_path):
  with pytest.raises(ValueError, match=r"config\.init\.head='keep'"):
    _load(_backbone(tmp_path / 'vit', RAFDB), head='keep')


def test_convert_records_the_class_names_it_is_given(tmp_path):
  path = tmp_path / 'augreg.npz'  # an AugReg-layout classifier with 7 classes (numpy only)
  np.savez(path, **test_convert_families.flax_npz_state('augreg', classes=7))
  args = [f'--checkpoint={path}', f'--num_heads={test_convert_families.HEADS}']
  out = tmp_path / 'out'
  assert convert_main.main([*args, f'--out={out}', '--class_names=' + ','.join(RAFDB)]) == 0
  with open(out / checkpoint.MODEL_CONFIG) as f:
    assert json.load(f)['class_names'] == list(RAFDB)
  assert convert_main.main([*args, f'--out={tmp_path / "bad"}', '--class_names=a,b']) == 2
  assert not (tmp_path / 'bad').exists()
