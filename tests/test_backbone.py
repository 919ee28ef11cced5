"""The backbone a run adapts: a config resolved to the settings its directory records, and the
refusal of a random frozen backbone, in process and through the main and kfold commands.

tests/test_predict.py trains on such a backbone and checks what the run, evaluation and
prediction then use."""

import json
import os
import subprocess
import sys

import pytest

from configs import common
from feadapter_jax import cli
from feadapter_jax import train
from feadapter_jax import workdir as workdir_lib
from feadapter_jax.models import backbone
from feadapter_jax.models import builder
from feadapter_jax.models import vit
from tests import test_train
from tests import tiny

ROOT = test_train.ROOT
SYNTHETIC = os.path.join(ROOT, 'configs', 'synthetic.py')
DFEW = os.path.join(ROOT, 'configs', 'dfew.py')
IMAGE_FER = os.path.join(ROOT, 'configs', 'image_fer.py')
# What the tiny backbone is, where it differs from the ViT defaults and ImageNet.
EPS, ACTIVATION, MEAN, STD = 1e-12, 'quick_gelu', (0.5,) * 3, (0.5,) * 3


@pytest.fixture(scope='module')
def backbone_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('backbone') / 'vit')
  tiny.write_backbone(
      directory, MEAN, STD, num_classes=7, layer_norm_eps=EPS, activation=ACTIVATION
  )
  return directory


def video_config(init, overrides=None, args='quick'):
  """configs/synthetic.py adapting `init` ('' for none), with `--config.x` overrides."""
  return cli.load_config(f'{SYNTHETIC}:{args},init={init}', overrides)


def test_the_backbones_settings_fill_the_config(tmp_path, backbone_dir):
  config = backbone.resolve(video_config(backbone_dir))

  model = config.model
  assert [model[k] for k in vit.ARCHITECTURE] == [32, 2, 2, 64, 8]
  assert model.layer_norm_eps == EPS and model.activation == ACTIVATION
  assert (model.pre_norm, model.layer_scale, model.global_pool) == (False, 0.0, 'token')
  assert tuple(config.data.mean) == MEAN and tuple(config.data.std) == STD
  built = builder.build_model(config)
  assert (built.layer_norm_eps, built.activation, built.width, built.depth) == (
      EPS,
      ACTIVATION,
      32,
      2,
  )
  # The run's config.json holds the resolved values; resolving them again changes nothing.
  workdir_lib.write_config(str(tmp_path), config)
  written = workdir_lib.load_config(str(tmp_path))
  assert written.model.layer_norm_eps == EPS and written.data.mean == list(MEAN)
  assert backbone.resolve(written).to_dict() == written.to_dict()
  # A value that agrees with the backbone is accepted.
  agreeing = {'model.width': 32, 'model.layer_norm_eps': 1e-12, 'data.std': (0.5,) * 3}
  assert backbone.resolve(video_config(backbone_dir, agreeing)).model.width == 32


@pytest.mark.parametrize(
    'overrides,message',
    [
        (
            {'model.layer_norm_eps': 1e-6},
            r'config.model.layer_norm_eps=1e-06 but the backbone .*/model_config.json has 1e-12: '
            r'leave it unset \(the backbone sets it\)',
        ),
        ({'model.activation': 'gelu'}, "config.model.activation='gelu' but .* has 'quick_gelu'"),
        ({'model.depth': 12}, 'config.model.depth=12 but .* has 2'),
        (
            {'data.mean': (0.485, 0.456, 0.406)},
            r'config.data.mean=\(0.485, 0.456, 0.406\) but .* has \(0.5, 0.5, 0.5\)',
        ),
        (
            {'model.variant': 'B/16'},
            "config.model.variant='B/16' has width 768, depth 12, num_heads 12, mlp_dim 3072, "
            'patch_size 16 but .* has width 32, depth 2, num_heads 2, mlp_dim 64, patch_size 8: '
            'drop the variant',
        ),
    ],
)
def test_a_setting_that_contradicts_the_backbone_is_an_error(backbone_dir, overrides, message):
  with pytest.raises(backbone.BackboneError, match=message):
    backbone.resolve(video_config(backbone_dir, overrides))


def test_unknown_normalisation_must_be_given(tmp_path):
  unknown = str(tmp_path / 'unknown')
  tiny.write_backbone(unknown, mean=None, std=None, num_classes=7)
  with pytest.raises(backbone.BackboneError, match=r'config.data.mean and config.data.std') as e:
    backbone.resolve(video_config(unknown))
  assert 'does not record the input normalisation' in str(e.value) and '--mean' in str(e.value)
  given = {'data.mean': (0.4,) * 3, 'data.std': (0.2,) * 3}
  config = backbone.resolve(video_config(unknown, given))
  assert tuple(config.data.mean) == (0.4,) * 3 and tuple(config.data.std) == (0.2,) * 3


def test_an_older_directory_takes_the_vit_defaults_for_what_it_lacks(tmp_path):
  # An export written before the family options were recorded: a preset and explicit fields.
  os.makedirs(tmp_path / 'old')
  with open(tmp_path / 'old' / 'model_config.json', 'w') as f:
    json.dump({'variant': 'S/8', 'depth': 2, 'image_size': 32, 'mean': [0.1] * 3}, f)
  found = backbone.settings(str(tmp_path / 'old'))
  assert (found['width'], found['depth'], found['num_heads'], found['patch_size']) == (384, 2, 6, 8)
  assert (found['layer_norm_eps'], found['activation'], found['class_token']) == (
      1e-6,
      'gelu',
      True,
  )
  assert found['mean'] == (0.1,) * 3 and found['std'] is None
  with pytest.raises(FileNotFoundError, match='feadapter_jax.convert --checkpoint'):
    backbone.resolve(video_config(str(tmp_path / 'nowhere')))


def test_without_a_backbone_the_vit_defaults_and_imagenet_fill_the_config():
  config = backbone.resolve(cli.load_config(DFEW))
  assert (config.model.width, config.model.depth, config.model.patch_size) == (768, 12, 16)
  assert config.model.layer_norm_eps == 1e-6 and config.model.activation == 'gelu'
  assert tuple(config.data.mean) == backbone.IMAGENET_MEAN
  assert tuple(config.data.std) == backbone.IMAGENET_STD
  small = backbone.resolve(cli.load_config(DFEW, {'model.variant': 'S/16'}))
  assert (small.model.width, small.model.num_heads) == (384, 6)
  # The random smoke config sets its own architecture and normalisation.
  quick = backbone.resolve(video_config(''))
  assert quick.model.width == 96 and tuple(quick.data.std) == (0.25,) * 3


def test_a_random_frozen_backbone_must_be_asked_for():
  with pytest.raises(backbone.BackboneError, match='config.init.checkpoint is empty') as e:
    train.resolve_config(video_config('', args='method=st_adapter'))
  message = str(e.value)
  assert 'python -m feadapter_jax.convert --checkpoint=PYTORCH_FILE --out=DIR' in message
  assert 'export/' in message and '--config.init.random_backbone=True' in message
  # Asked for (the quick config asks), or nothing frozen: no error.
  assert train.resolve_config(video_config('', args='quick,method=linear_probe'))
  assert train.resolve_config(video_config('', args='method=full_finetune'))
  assert train.resolve_config(video_config('', {'init.random_backbone': True}, args='method=aim'))


def _command(*args):
  return subprocess.run(
      [sys.executable, '-m', *args],
      cwd=ROOT,
      env=test_train.env(),
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_main_stops_before_the_data_without_a_backbone(tmp_path):
  workdir, data_dir = tmp_path / 'run', tmp_path / 'tfds'
  proc = _command(
      'feadapter_jax.main',
      f'--config={DFEW}',
      f'--workdir={workdir}',
      f'--config.data.data_dir={data_dir}',
  )
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert 'config.init.checkpoint is empty, so fe_adapter would adapt a random' in proc.stderr
  assert '--config.init.random_backbone=True' in proc.stderr
  # Stopped before anything: no workdir, no dataset lookup (DFEW's would say 'manual_dir').
  assert not workdir.exists() and not data_dir.exists() and 'manual_dir' not in proc.stderr


@pytest.mark.parametrize('method', ['full_finetune', 'linear_probe'])
def test_the_image_stage_stops_without_a_backbone_even_when_it_trains_every_weight(method):
  config = cli.load_config(f'{IMAGE_FER}:dataset=rafdb,method={method}')
  with pytest.raises(backbone.BackboneError, match='config.init.checkpoint is empty') as error:
    train.resolve_config(config)
  assert '--config.init.checkpoint=DIR' in str(error.value)
  if method == 'full_finetune':  # nothing is frozen: the image stage's own requirement
    assert 'would fine-tune a random ViT' in str(error.value)
  config.init.random_backbone = True  # on purpose
  assert train.resolve_config(config).init.required


def test_kfold_stops_before_the_first_fold_without_a_backbone(tmp_path):
  proc = _command(
      'feadapter_jax.kfold',
      f'--config={SYNTHETIC}:init=',
      f'--workdir={tmp_path / "k"}',
      '--folds=1,2',
      f'--config.data.data_dir={tmp_path / "tfds"}',
  )
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert proc.stderr.startswith('error: config.init.checkpoint is empty'), proc.stderr[-2000:]
  assert 'feadapter_jax.convert --checkpoint=PYTORCH_FILE' in proc.stderr
  assert not (tmp_path / 'k' / 'fold1').exists() and not (tmp_path / 'tfds').exists()


def test_configs_leave_every_backbone_field_to_the_backbone():
  # configs/common.py lists the fields with their types (configs import no JAX): the same set.
  fields = common.base_config('fe_adapter').model
  assert set(common.backbone_fields()) - {'variant'} == set(vit.BACKBONE_FIELDS)
  assert all(fields[name] is None for name in common.backbone_fields())
