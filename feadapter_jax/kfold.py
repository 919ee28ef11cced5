r"""K-fold driver: trains every fold of a dataset and prints the table papers report.

  python -m feadapter_jax.kfold --config=configs/dfew.py[:method=st_adapter] --workdir=DIR \
      [--folds=1,2,3,4,5] [--config.init.checkpoint=BACKBONE_DIR] [--config.x=value ...]

The config file must take a `fold=K` arg: the driver reads it once per fold with the args given
after ':' plus `fold=K`, and applies the `--config.x` overrides to each. Every unfinished fold's
config is resolved against its backbone (`train.resolve_config`) before the first fold trains,
so a config that does not fit, or a missing backbone, stops the driver at once. Each fold runs
`train.train_and_evaluate` in DIR/fold<k> (so a killed driver resumes where it stopped: finished
folds are read back from their results.json). Prints and writes to DIR/kfold.md two tables of
test UAR/WAR per fold and their mean +- std: at each fold's final step, and at the step its
validation data selected (`train`'s docstring: results.json's 'selected'); folds that selected
nothing (no validation data) are left out of the second and named under it. DIR/kfold.json holds
{fold: {uar, war, selected: {step, val_uar, uar, war} or None}}. DIR may be local or a URI
(gs://bucket/dfew): it is read and written through `etils.epath`.
"""

from __future__ import annotations

from feadapter_jax import cli  # pylint: disable=g-bad-import-order  (first: quiets TensorFlow)

import json  # pylint: disable=g-import-not-at-top,g-bad-import-order
import os
import sys
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
from etils import epath
import numpy as np

from feadapter_jax import workdir as workdir_lib


def table(results: dict[int, dict[str, Any]]) -> str:
  """Markdown: one row per fold, then the mean +- std (in %)."""
  rows = ['| fold | UAR (%) | WAR (%) |', '|---|---|---|']
  for fold, r in sorted(results.items()):
    rows.append(f'| {fold} | {100 * r["uar"]:.2f} | {100 * r["war"]:.2f} |')
  uar = 100 * np.array([r['uar'] for r in results.values()])
  war = 100 * np.array([r['war'] for r in results.values()])
  rows.append(
      f'| mean | {uar.mean():.2f} +- {uar.std():.2f} | ' f'{war.mean():.2f} +- {war.std():.2f} |'
  )
  return '\n'.join(rows)


def tables(results: dict[int, dict[str, Any]]) -> str:
  """The final-step table and the validation-selected one of the folds' results.json."""
  selected = {fold: r['selected'] for fold, r in results.items() if r.get('selected')}
  parts = ['Test at the final step:', table(results), '', 'Test at the step validation selected:']
  if not selected:
    return '\n'.join(parts + ['(no fold has validation data)'])
  parts.append(table(selected))
  if unselected := sorted(results.keys() - selected.keys()):
    parts.append(f'(left out, without validation data: folds {unselected})')
  return '\n'.join(parts)


def run(
    config_spec: str,
    workdir: str | os.PathLike[str],
    folds: Sequence[int],
    overrides: Mapping[str, Any] | None = None,
) -> str:
  """Trains (or reads back) each fold of `config_spec` ('path.py[:args]'); returns `tables`."""
  if any(a.partition('=')[0] == 'fold' for a in config_spec.partition(':')[2].split(',')):
    raise ValueError(
        f'--config={config_spec} sets fold: the driver sets it per fold; '
        'choose the folds with --folds.'
    )
  from feadapter_jax import train  # pylint: disable=g-import-not-at-top  (after cli.start)

  root = epath.Path(workdir)
  fold_dirs = {fold: root / f'fold{fold}' for fold in folds}
  done = {fold: d / workdir_lib.RESULTS_FILE for fold, d in fold_dirs.items()}
  configs = {
      fold: train.resolve_config(
          cli.load_config(cli.with_args(config_spec, f'fold={fold}'), overrides)
      )
      for fold in folds
      if not done[fold].exists()
  }
  results = {}
  for fold in folds:
    if fold in configs:
      train.train_and_evaluate(configs[fold], os.fspath(fold_dirs[fold]))
    results[fold] = json.loads(done[fold].read_text())
  md = tables(results)
  (root / 'kfold.md').write_text(md + '\n')
  summary = {
      str(fold): {
          'uar': r['uar'],
          'war': r['war'],
          'selected': (
              {k: r['selected'][k] for k in ('step', 'val_uar', 'uar', 'war')}
              if r.get('selected')
              else None
          ),
      }
      for fold, r in results.items()
  }
  (root / 'kfold.json').write_text(json.dumps(summary, indent=2))
  print(md)
  return md


def main(argv) -> None:
  del argv
  cli.start(_CONFIG.value)
  try:
    run(
        cli.config_spec(_CONFIG),
        _WORKDIR.value,
        [int(k) for k in _FOLDS.value],
        cli.config_overrides(_CONFIG),
    )
  except (ValueError, KeyError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  # Flags only when run as a program: importing this module (tests, other drivers) defines none.
  _CONFIG = cli.define_config(
      'config',
      help_text='Config file taking a `fold` arg, '
      '`path.py[:args]`; override fields with `--config.field=value`.',
  )
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Parent directory of the folds.', required=True)
  _FOLDS = flags.DEFINE_list('folds', ['1', '2', '3', '4', '5'], 'Folds to run.')
  flags.mark_flags_as_required(['config'])
  app.run(main)
