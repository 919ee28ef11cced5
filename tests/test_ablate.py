"""The recipe ablation: its rows switch one part off each, its table reports the differences the
runs give, and a rerun reads the finished runs back."""

import json
import os
import re

import pytest

from feadapter_jax.experiments import ablate
from feadapter_jax.experiments import compare
from tests.test_compare import ROOT, TINY_OVERRIDES

PARTS = {k: ablate.PARTS[k] for k in ('smoothing', 'class_weights')}


def test_rows_switch_one_part_off_and_keep_the_others_on():
  rows = ablate.rows_of(ablate.PARTS)
  assert [r[0] for r in rows] == [ablate.FULL, *ablate.PARTS]
  full = rows[0][2]
  assert full['data.randaugment'] == 'rand-m7-n4-mstd0.5-inc1' and full['ema_decay'] == 0.99
  for key, label, overrides in rows[1:]:
    changed = {k for k in overrides if overrides[k] != full[k]}
    assert changed == set(ablate.PARTS[key].on), key
    assert label == f'without {ablate.PARTS[key].label}'


def test_tiny_ablation_reports_what_its_runs_give_and_resumes(tmp_path):
  overrides = {**TINY_OVERRIDES, 'data.data_dir': str(tmp_path / 'tfds')}
  plan = compare.Plan(
      config=os.path.join(ROOT, 'configs', 'synthetic.py:quick'),
      workdir=str(tmp_path / 'ablate'),
      methods=('fe_adapter',),
      seeds=(0,),
      budget_steps=3,
      overrides=overrides,
      image_config=os.path.join(ROOT, 'configs', 'synthetic_image.py:quick'),
      image_overrides=overrides,
      docs_dir=str(tmp_path / 'docs'),
  )
  # One part keeps it short: two rows of one seed (the table's arithmetic is tested below).
  results = ablate.run(plan, {'smoothing': ablate.PARTS['smoothing']})
  assert [r.row for r in results] == [ablate.FULL, 'smoothing']
  asked = {
      r.row: json.loads(
          (tmp_path / 'ablate' / r.row / 'fe_adapter' / 'seed0' / compare.REQUEST_FILE).read_text()
      )
      for r in results
  }
  assert asked['full']['label_smoothing'] == 0.1 and asked['smoothing']['label_smoothing'] == 0.0
  assert asked['full']['data'] == asked['smoothing']['data']
  # The table's effect column is the full recipe's UAR minus the row's, from results.json.
  uar = {
      row: json.loads(
          (tmp_path / 'ablate' / row / 'fe_adapter' / 'seed0' / 'results.json').read_text()
      )['uar']
      for row in asked
  }
  md = (tmp_path / 'docs' / ablate.TABLE_FILE).read_text()
  assert md == (tmp_path / 'ablate' / ablate.TABLE_FILE).read_text()
  line = next(l for l in md.splitlines() if l.startswith('| without label smoothing |'))
  effect = float(re.search(r'\| ([+-]\d+\.\d) \+- 0\.0 \|', line).group(1))
  assert effect == pytest.approx(round(100 * (uar['full'] - uar['smoothing']), 1), abs=0.051)
  assert 'python -m feadapter_jax.experiments.ablate --config=' in md

  # Rerun: read back, nothing retrains.
  done = tmp_path / 'ablate' / 'full' / 'fe_adapter' / 'seed0' / 'results.json'
  mtime = os.path.getmtime(done)
  again = ablate.run(plan, {'smoothing': ablate.PARTS['smoothing']})
  assert [(r.row, r.uar) for r in again] == [(r.row, r.uar) for r in results]
  assert os.path.getmtime(done) == mtime


def test_the_table_gives_each_part_its_effect_and_verdict(tmp_path, monkeypatch):
  names = list(compare.synth_render.CLASS_NAMES)
  uars = {  # row: the UAR of seeds 0 and 1
      'full': (0.80, 0.82),
      'smoothing': (0.70, 0.72),  # the full recipe beats it by 10 points: the part helps
      'class_weights': (0.81, 0.80),  # within noise
  }

  def train_or_read(config, run_dir):
    row, _, seed = os.path.relpath(run_dir, tmp_path / 'ablate').split(os.sep)
    return {
        'uar': uars[row][int(seed[-1])],
        'war': 0.5,
        'confusion_matrix': [[1] * len(names)] * len(names),
        'class_names': names,
    }

  monkeypatch.setattr(compare, 'train_or_read', train_or_read)
  plan = compare.Plan(
      config=os.path.join(ROOT, 'configs', 'synthetic.py:quick'),
      workdir=str(tmp_path / 'ablate'),
      methods=('fe_adapter',),
      seeds=(0, 1),
      overrides={'init.checkpoint': str(tmp_path / 'backbone')},
  )
  results = ablate.run(plan, PARTS)
  md = (tmp_path / 'ablate' / ablate.TABLE_FILE).read_text()
  assert '| without label smoothing | FE-Adapter | 71.0 +- 1.4 | 50.0 +- 0.0 |' in md
  assert '| +10.0 +- 2.0 | helps |' in md
  assert '| +0.5 +- 1.6 | within seed noise |' in md
  assert [r.uar for r in results][0] == pytest.approx((0.81, 0.01414), abs=1e-4)
