r"""The training recipe's parts on a SynthFER benchmark, each switched off in turn: one table.

  python -m feadapter_jax.experiments.ablate --config=configs/synthetic.py:variant=hard \
      --workdir=workdirs/ablate_hard [--methods=fe_adapter] [--seeds=0,1,2] [--budget=STEPS] \
      [--image_config=configs/synthetic_image.py[:args]] [--docs_dir=docs] \
      [--config.field=value ...] [--image_config.field=value ...]

The full recipe is the config with every part of `PARTS` on, at the values the peers' recipes use
(configs/recipes.py); each other row switches one part off and leaves the rest on. Every row
adapts the same frozen backbone, pre-trained once as `compare` does (or `--config.init.checkpoint`),
for the same steps and seeds, in WORKDIR/<row>/<method>/seed<S>. Writes WORKDIR/ablation.md
(ablation_<variant>.md on the hard variants) and copies it to `--docs_dir` when given.
Resumable as `compare` is: finished runs are read back from their results.json.
"""

from __future__ import annotations

from feadapter_jax import cli  # pylint: disable=g-bad-import-order  (first: quiets TensorFlow)

import dataclasses  # pylint: disable=g-import-not-at-top,g-bad-import-order
from typing import Any, Mapping, Sequence

from absl import app
from etils import epath
import numpy as np

from feadapter_jax.experiments import compare

TABLE_FILE = 'ablation.md'
FULL = 'full'


@dataclasses.dataclass(frozen=True)
class Part:
  """One part of the recipe: the config fields that switch it on, and their values off."""

  label: str
  on: Mapping[str, Any]
  off: Mapping[str, Any]


# S2D's and FRU-Adapter's RandAugment, as configs/recipes.py sets it (configs stay out of the
# package).
PEER_RANDAUGMENT = 'rand-m7-n4-mstd0.5-inc1'
# The peers' regularisation and test views (configs/recipes.py), plus our EMA; the keys name the
# run directories.
PARTS: dict[str, Part] = {
    'randaugment': Part(
        'RandAugment', {'data.randaugment': PEER_RANDAUGMENT}, {'data.randaugment': ''}
    ),
    'erasing': Part('random erasing', {'data.erase_prob': 0.25}, {'data.erase_prob': 0.0}),
    'mixup': Part(
        'mixup / cutmix',
        {'mixup.mixup_alpha': 0.8, 'mixup.cutmix_alpha': 1.0},
        {'mixup.mixup_alpha': 0.0, 'mixup.cutmix_alpha': 0.0},
    ),
    'smoothing': Part('label smoothing', {'label_smoothing': 0.1}, {'label_smoothing': 0.0}),
    'class_weights': Part(
        'class-weighted loss', {'class_weights': 'balanced'}, {'class_weights': 'none'}
    ),
    'ema': Part('EMA of the weights', {'ema_decay': 0.99}, {'ema_decay': 0.0}),
    'views': Part(
        '2 test crops',
        {'data.num_crops': 2, 'data.test_crop_fraction': 0.875},
        {'data.num_crops': 1, 'data.test_crop_fraction': 1.0},
    ),
}


def rows_of(parts: Mapping[str, Part]) -> list[tuple[str, str, dict[str, Any]]]:
  """(directory, label, overrides) of the full recipe, then of each part switched off."""
  on = {k: v for part in parts.values() for k, v in part.on.items()}
  rows = [(FULL, 'full recipe', on)]
  rows += [(key, f'without {part.label}', {**on, **part.off}) for key, part in parts.items()]
  return rows


@dataclasses.dataclass
class Result:
  """One row and method over its seeds: accuracies as (mean, std) fractions."""

  row: str
  label: str
  method: str
  uar: tuple[float, float]
  war: tuple[float, float]
  pair: tuple[float, float]
  per_seed: list[dict[str, Any]]


def run(plan: compare.Plan, parts: Mapping[str, Part] = PARTS) -> list[Result] | None:
  """Trains (or reads) every row x method x seed and writes the table; None when preempted."""
  if unknown := sorted(set(plan.methods) - set(compare.METHODS)):
    raise ValueError(f'Unknown methods {unknown}; known: {list(compare.METHODS)}')
  workdir = epath.Path(plan.workdir)
  if plan.pretrains:
    if compare.train_or_read(plan.image_run(), workdir / compare.IMAGE_DIR) is None:
      return None
  setting = compare.setting_of(plan.video_run(plan.methods[0], plan.seeds[0]))
  results = []
  for key, label, overrides in rows_of(parts):
    row_plan = dataclasses.replace(plan, overrides={**overrides, **plan.overrides})
    for method in plan.methods:
      per_seed = []
      for seed in plan.seeds:
        config = row_plan.video_run(method, seed)
        done = compare.train_or_read(config, workdir / key / method / f'seed{seed}')
        if done is None:
          print('Ablation preempted: rerun the same command to resume.', flush=True)
          return None
        done['pair_accuracy'] = compare.pair_accuracy(
            done['confusion_matrix'], done['class_names'], setting.pairs
        )
        per_seed.append(done)
      results.append(
          Result(
              key,
              label,
              method,
              compare.mean_std([r['uar'] for r in per_seed]),
              compare.mean_std([r['war'] for r in per_seed]),
              compare.mean_std([r['pair_accuracy'] for r in per_seed]),
              per_seed,
          )
      )
  text = report(plan, setting, results, parts)
  name = setting.file_name(TABLE_FILE)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / name).write_text(text + '\n')
  print(text, flush=True)
  if plan.docs_dir:
    docs_dir = epath.Path(plan.docs_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)
    (workdir / name).copy(docs_dir / name, overwrite=True)
  return results


def verdict(full: Result, without: Result) -> tuple[float, float, str]:
  """(full's UAR - the row's, the seed std of that difference, what the part does)."""
  diff = full.uar[0] - without.uar[0]
  noise = float(np.hypot(full.uar[1], without.uar[1]))
  says = 'helps' if diff > noise else 'hurts' if diff < -noise else 'within seed noise'
  return diff, noise, says


def table(setting: compare.Setting, results: Sequence[Result]) -> str:
  """One line per row and method; the part's effect is full recipe minus the row, in points."""
  pct = compare.pct
  lines = [
      f'| recipe | method | UAR (%) | WAR (%) | {setting.pair_names} accuracy (%) | '
      'UAR of the full recipe minus this row (points) | the part |',
      '|---|---|---:|---:|---:|---:|---|',
  ]
  full = {r.method: r for r in results if r.row == FULL}
  for r in results:
    if r.row == FULL:
      effect, says = '', ''
    else:
      diff, noise, says = verdict(full[r.method], r)
      effect = f'{100 * diff:+.1f} +- {100 * noise:.1f}'
    lines.append(
        f'| {r.label} | {compare.method_label(r.method)} | {pct(r.uar)} | {pct(r.war)} | '
        f'{pct(r.pair)} | {effect} | {says} |'
    )
  return '\n'.join(lines)


def per_seed_table(plan: compare.Plan, results: Sequence[Result]) -> str:
  lines = ['| recipe | method | seed | UAR (%) | WAR (%) |', '|---|---|---:|---:|---:|']
  for r in results:
    for seed, s in zip(plan.seeds, r.per_seed):
      lines.append(
          f'| {r.label} | {compare.method_label(r.method)} | {seed} | {100 * s["uar"]:.1f} | '
          f'{100 * s["war"]:.1f} |'
      )
  return '\n'.join(lines)


def report(
    plan: compare.Plan,
    setting: compare.Setting,
    results: Sequence[Result],
    parts: Mapping[str, Part],
) -> str:
  """The markdown page: setup, table, per-seed rows, the command."""
  video = plan.video_run(plan.methods[0], plan.seeds[0])
  parts = ', '.join(
      f'{part.label} ({", ".join(f"{k}={v}" for k, v in part.on.items())})'
      for part in parts.values()
  )
  setup = (
      f'SynthFER `{setting.variant}` ({video.data.synth.num_train} train / '
      f'{video.data.synth.num_test} test clips, {len(setting.class_names)} classes), the '
      f'backbone {plan.backbone}, {plan.budget_steps} steps of batch {video.batch_size}, seeds '
      f'{", ".join(map(str, plan.seeds))}; accuracies on the test split after the last step, '
      'mean +- std over seeds. The full recipe switches on every part: '
      f'{parts}. Each other row switches one part off. A part "helps" when the full recipe '
      'beats the row by more than the seed std of the difference, "hurts" when the row beats '
      'the full recipe by as much.'
  )
  return '\n\n'.join(
      [
          f"# The recipe's parts on SynthFER `{setting.variant}`, each switched off in turn",
          setup,
          table(setting, results),
          '## Per seed',
          per_seed_table(plan, results),
          f'Generated by `{plan.command("python -m feadapter_jax.experiments.ablate")}`.',
      ]
  )


def main(argv) -> None:
  del argv
  cli.start()
  run(_PLAN())


if __name__ == '__main__':
  # `--config.field=value` overrides win over the rows' own.
  _PLAN = compare.define_plan_flags(
      'configs/synthetic.py:variant=hard', ['fe_adapter'], 'the table'
  )
  app.run(main)
