"""The method comparison: pair accuracy, the generated findings, and a tiny end-to-end run that
writes the table and the figure, then resumes without retraining."""

import os
import re

import numpy as np
import pytest

from feadapter_jax import cli
from feadapter_jax.data.synth_fer import render as synth_render
from feadapter_jax.experiments import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_OVERRIDES = {
    'model.width': 32,
    'model.depth': 2,
    'model.num_heads': 2,
    'model.mlp_dim': 64,
    'model.adapter.width': 8,
    'batch_size': 16,
    'eval_batch_size': 32,
    'checkpoint_async': False,
}


def test_pair_accuracy_counts_only_the_right_class_of_all():
  names = list(synth_render.CLASS_NAMES)
  surprise, fear = names.index('Surprise'), names.index('Fear')
  cm = np.arange(49).reshape(7, 7) % 5  # the other rows must not matter
  cm[surprise] = 0
  cm[fear] = 0
  cm[surprise, [surprise, fear, 0]] = (6, 3, 1)  # 6 right, 3 as the partner, 1 as Happy
  cm[fear, [fear, surprise, 2]] = (2, 7, 1)
  assert compare.pair_accuracy(cm, names) == pytest.approx((6 + 2) / 20)
  # The class order comes from the names, not from a fixed position.
  perm = np.roll(np.arange(7), 3)
  assert compare.pair_accuracy(cm[perm][:, perm], [names[i] for i in perm]) == pytest.approx(0.4)


def test_pair_accuracy_pools_every_time_reversed_pair():
  names = list(synth_render.CLASS_NAMES)
  cm = np.zeros((7, 7), int)
  for name, right, wrong in (('Surprise', 6, 4), ('Fear', 2, 8), ('Happy', 9, 1), ('Sad', 3, 7)):
    i = names.index(name)
    cm[i, i], cm[i, (i + 1) % 7] = right, wrong
  pairs = (('Surprise', 'Fear'), ('Happy', 'Sad'))
  assert compare.pair_accuracy(cm, names, pairs) == pytest.approx((6 + 2 + 9 + 3) / 40)


def test_the_setting_follows_the_variant_its_pairs_and_its_files():
  config = cli.load_config(os.path.join(ROOT, 'configs', 'synthetic.py:variant=hard'), {})
  hard = compare.setting_of(config)
  assert hard.pairs == (('Happy', 'Sad'), ('Angry', 'Disgust'), ('Surprise', 'Fear'))
  assert hard.time_blind_ceiling == '4/7 = 57.1%'
  assert hard.file_name(compare.TABLE_FILE) == 'results_hard.md'
  assert hard.targets == compare.TARGETS['hard']
  mafw = compare.setting_of(
      cli.load_config(os.path.join(ROOT, 'configs', 'synthetic.py:variant=hard_mafw'), {})
  )
  assert len(mafw.class_names) == 11 and len(mafw.pairs) == 5
  assert ('anxiety', 'helplessness') in mafw.pairs and mafw.time_blind_ceiling == '6/11 = 54.5%'
  video = compare.setting_of(cli.load_config(os.path.join(ROOT, 'configs', 'synthetic.py'), {}))
  assert video == compare.VIDEO and video.file_name(compare.FIGURE_FILE) == compare.FIGURE_FILE
  config.data.builder_config = 'image'
  with pytest.raises(ValueError, match="builder_config='image'"):
    compare.setting_of(config)


def row(method, params, uar, pair, std=0.01):
  return compare.Row(method, params, params / 500_000, (uar, std), (uar, std), (pair, std), 1.0)


def test_findings_check_each_claim_against_its_target():
  rows = [
      row('linear_probe', 700, 0.70, 0.52),
      row('full_finetune', 500_000, 0.96, 0.95),
      row('st_adapter', 40_000, 0.90, 0.99),
      row('aim', 58_000, 0.95, 0.99),
      row('fe_adapter', 44_000, 0.955, 0.97),
  ]
  text = compare.findings(rows)
  assert 'meets the 90% target' in text and 'misses' not in text
  assert 'near chance' in text and 'within the 10% target' in text
  assert 'within seed noise of full fine-tuning' in text
  assert 'AIM does best, 95.0 +- 1.0% with 1.32x' in text and 'within seed noise of it' in text
  rows = [
      row('linear_probe', 700, 0.70, 0.75),
      row('full_finetune', 500_000, 0.99, 0.99),
      row('fe_adapter', 60_000, 0.85, 0.80),
  ]
  text = compare.findings(rows)
  assert text.count('misses the 90% target') == 2 and 'not near chance' in text
  assert 'over the 10% target' in text and 'below full fine-tuning' in text


def test_findings_on_the_hard_variant_check_its_own_targets():
  config = cli.load_config(os.path.join(ROOT, 'configs', 'synthetic.py:variant=hard'), {})
  hard = compare.setting_of(config)
  rows = [
      row('linear_probe', 700, 0.44, 0.33),
      row('st_adapter', 40_000, 0.70, 0.60, std=0.02),
      row('fe_adapter', 44_000, 0.80, 0.75, std=0.03),
  ]
  text = compare.findings(rows, hard)
  assert 'reaches 80.0 +- 3.0% UAR (meets the 75% target)' in text
  assert 'Happy vs Sad, Angry vs Disgust and Surprise vs Fear, the 3 pairs' in text
  assert '(meets the target of at most 45%), where a model blind to time tops out at 4/7' in text
  # 10 points against 2 x hypot(3, 2) = 7.2.
  assert "+10.0 points from ST-Adapter's (meets the target of more than 2 seed stds" in text
  assert '90% target' not in text
  rows[0], rows[2] = row('linear_probe', 700, 0.50, 0.5), row('fe_adapter', 44_000, 0.74, 0.7)
  text = compare.findings(rows, hard)
  assert text.count('misses') == 3


def numbers(cells):
  """The numbers in table cells ('44,075', '95.7 +- 0.4'); 'nan' is not one."""
  return [float(x) for cell in cells for x in re.findall(r'\d+\.?\d*', cell.replace(',', ''))]


def test_tiny_comparison_writes_table_and_figure_and_resumes(tmp_path):
  overrides = {**TINY_OVERRIDES, 'data.data_dir': str(tmp_path / 'tfds')}
  plan = compare.Plan(
      config=os.path.join(ROOT, 'configs', 'synthetic.py:quick'),
      workdir=str(tmp_path / 'cmp'),
      seeds=(0,),
      budget_steps=3,
      overrides=overrides,
      image_config=os.path.join(ROOT, 'configs', 'synthetic_image.py:quick'),
      image_overrides=overrides,
      docs_dir=str(tmp_path / 'docs'),
  )
  rows = compare.run(plan)
  assert [r.method for r in rows] == list(compare.METHODS)
  for where in (plan.workdir, plan.docs_dir):
    with open(os.path.join(where, compare.TABLE_FILE)) as f:
      md = f.read()
    with open(os.path.join(where, compare.FIGURE_FILE), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  lines = md.split('\n\n')[2].splitlines()  # the main table: header, rule, one row per method
  assert [line.split('|')[1].strip() for line in lines[2:]] == [
      compare.method_label(m) for m in compare.METHODS
  ]
  for line in lines[2:]:
    values = numbers(line.split('|')[2:-1])
    # params, % of full, (mean, std) of UAR, WAR and pair accuracy, clips/s
    assert len(values) == 9 and np.all(np.isfinite(values)), line
  assert '**What it shows.** FE-Adapter reaches' in md
  by = {r.method: r for r in rows}
  assert by['full_finetune'].fraction_of_full == 1.0
  assert by['linear_probe'].trainable_params < by['fe_adapter'].trainable_params

  # Rerun: every run is read back from its results.json, nothing retrains.
  done = os.path.join(plan.workdir, 'fe_adapter', 'seed0', 'results.json')
  mtime = os.path.getmtime(done)
  assert compare.run(plan) == rows
  assert os.path.getmtime(done) == mtime
  # A changed budget is refused rather than mixed with the finished runs.
  with pytest.raises(ValueError, match='another config'):
    compare.run(compare.dataclasses.replace(plan, budget_steps=4))


def test_a_given_backbone_is_adapted_and_not_pretrained(tmp_path, monkeypatch):
  given = str(tmp_path / 'converted')
  plan = compare.Plan(
      config=os.path.join(ROOT, 'configs', 'synthetic.py:quick'),
      workdir=str(tmp_path / 'cmp'),
      methods=('linear_probe', 'fe_adapter'),
      seeds=(0,),
      overrides={'init.checkpoint': given},
  )
  assert plan.backbone == given and plan.video_run('fe_adapter', 0).init.checkpoint == given
  names = list(synth_render.CLASS_NAMES)
  trained = []

  def train_or_read(config, run_dir):
    trained.append((config.init.checkpoint, os.path.relpath(run_dir, plan.workdir)))
    return {'confusion_matrix': np.eye(len(names)).tolist(), 'class_names': names}

  monkeypatch.setattr(compare, 'train_or_read', train_or_read)
  runs = compare.run_all(plan)
  assert runs.image is None  # nothing pre-trained
  assert trained == [(given, 'linear_probe/seed0'), (given, 'fe_adapter/seed0')]
