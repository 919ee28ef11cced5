r"""K-fold driver: trains every fold of a dataset and prints the table papers report.

  python -m feadapter_jax.kfold --config=configs/dfew.py --workdir=workdirs/dfew \
      [--config_arg=method=st_adapter] [--folds=1,2,3,4,5]

Each fold runs `train.train_and_evaluate` in DIR/fold<k> (so a killed driver resumes where it
stopped: finished folds are read back from their results.json). Writes DIR/kfold.md and
DIR/kfold.json with UAR/WAR per fold and their mean +- std.
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import Any, Sequence

from absl import app
from absl import flags
import numpy as np

def load_config(path: str, arg: str):
  spec = importlib.util.spec_from_file_location('kfold_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def table(results: dict[int, dict[str, Any]]) -> str:
  """Markdown: one row per fold, then the mean +- std (in %)."""
  rows = ['| fold | UAR (%) | WAR (%) |', '|---|---|---|']
  for fold, r in sorted(results.items()):
    rows.append(f'| {fold} | {100 * r["uar"]:.2f} | {100 * r["war"]:.2f} |')
  uar = 100 * np.array([r['uar'] for r in results.values()])
  war = 100 * np.array([r['war'] for r in results.values()])
  rows.append(f'| mean | {uar.mean():.2f} +- {uar.std():.2f} | '
              f'{war.mean():.2f} +- {war.std():.2f} |')
  return '\n'.join(rows)


def run(config_path: str, config_arg: str, workdir: str, folds: Sequence[int]) -> str:
  from feadapter_jax import train  # pylint: disable=g-import-not-at-top  (after flags)
  results = {}
  for fold in folds:
    fold_dir = os.path.join(workdir, f'fold{fold}')
    done = os.path.join(fold_dir, train.RESULTS_FILE)
    if not os.path.exists(done):
      arg = ','.join(filter(None, [config_arg, f'fold={fold}']))
      train.train_and_evaluate(load_config(config_path, arg), fold_dir)
    with open(done) as f:
      results[fold] = json.load(f)
  md = table(results)
  with open(os.path.join(workdir, 'kfold.md'), 'w') as f:
    f.write(md + '\n')
  with open(os.path.join(workdir, 'kfold.json'), 'w') as f:
    json.dump({str(k): {'uar': v['uar'], 'war': v['war']} for k, v in results.items()}, f,
              indent=2)
  print(md)
  return md


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  run(f.config, f.config_arg, f.workdir, [int(k) for k in f.folds])


if __name__ == '__main__':
  # Flags only when run as a program: importing this module (tests, other drivers) defines none.
  flags.DEFINE_string('config', None, 'Config file with a `fold` arg.', required=True)
  flags.DEFINE_string('config_arg', '', "Other config args, e.g. 'method=aim'.")
  flags.DEFINE_string('workdir', None, 'Parent directory of the folds.', required=True)
  flags.DEFINE_list('folds', ['1', '2', '3', '4', '5'], 'Folds to run.')
  app.run(main)
