"""The published recipes as configs (`configs/recipes.py`, docs/recipes.md), and bad recipe
settings stopping a run through the CLI with one line naming the field."""

import os
import subprocess
import sys

import pytest

from configs import dfew
from configs import ferv39k
from configs import mafw
from configs import recipes
from configs import synthetic
from tests.test_train import ROOT
from tests.test_train import env

CONFIGS = {'dfew': dfew, 'ferv39k': ferv39k, 'mafw': mafw}


@pytest.mark.parametrize('dataset', sorted(CONFIGS))
def test_each_recipe_sets_its_published_values(dataset):
  paper = CONFIGS[dataset].get_config('')
  assert paper.recipe == 'paper'
  assert (paper.data.num_frames, paper.data.image_size) == (16, 224)
  assert (paper.data.num_clips, paper.data.num_crops, paper.data.randaugment) == (1, 1, '')
  assert (paper.optim.lr, paper.batch_size, paper.num_epochs) == (1e-3, 32, 100.0)
  assert paper.mixup.mixup_alpha == 0.0 and paper.data.erase_prob == 0.0

  s2d = CONFIGS[dataset].get_config('recipe=s2d')
  assert (s2d.optim.lr, s2d.batch_size, s2d.optim.warmup_epochs) == (2e-5, 16, 2.0)
  assert s2d.data.randaugment == recipes.RANDAUGMENT and s2d.data.erase_prob == 0.25
  assert tuple(s2d.data.crop_scale) == (0.08, 1.0) and s2d.data.num_clips == 2
  # FERV39k: S2D's script bans mixup and turns off smoothing and head dropout.
  mixes = dataset != 'ferv39k'
  assert (s2d.mixup.mixup_alpha, s2d.mixup.cutmix_alpha) == ((0.8, 1.0) if mixes else (0.0, 0.0))
  assert s2d.label_smoothing == (0.1 if mixes else 0.0)

  fru = CONFIGS[dataset].get_config('recipe=fru')
  if dataset == 'mafw':
    assert (fru.optim.lr, fru.batch_size, fru.optim.warmup_epochs) == (1e-4, 16, 0.0)
    assert fru.mixup.mixup_alpha == 0.8 and fru.label_smoothing == 0.1
  else:
    assert (fru.optim.lr, fru.batch_size, fru.optim.warmup_epochs) == (1e-3, 20, 5.0)
    assert fru.mixup.mixup_alpha == 0.0 and fru.label_smoothing == 0.0
  assert fru.optim.end_lr_factor == pytest.approx(0.1)


def test_unknown_recipe_and_variant_name_the_allowed_values():
  with pytest.raises(ValueError, match='known: paper, s2d, fru'):
    dfew.get_config('recipe=videomae')
  with pytest.raises(ValueError, match='known: video, hard, hard_mafw'):
    synthetic.get_config('variant=easy')
  assert synthetic.get_config('variant=hard_mafw').model.num_classes == 11
  # The imbalanced benchmarks weigh the loss by class; the balanced demo does not.
  assert synthetic.get_config('variant=hard').class_weights == 'balanced'
  assert synthetic.get_config('variant=video').class_weights == 'none'


@pytest.mark.parametrize(
    'override,message',
    [
        ('--config.data.randaugment=rand-m7', 'error: config.data.randaugment='),
        ('--config.class_weights=inverse', 'error: config.class_weights='),
    ],
)
def test_a_bad_recipe_setting_stops_the_run_with_one_line(tmp_path, override, message):
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'feadapter_jax.main',
          '--config=configs/synthetic.py:quick,init=',
          f'--workdir={tmp_path / "wd"}',
          f'--config.data.data_dir={tmp_path / "tfds"}',
          override,
      ],
      cwd=ROOT,
      env=env(),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(message), proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / 'wd' / 'checkpoints')
