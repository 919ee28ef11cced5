r"""Trainable-parameter budget per method for ViT-B/16 (224, 7 classes), from the real configs.

  python benchmarks/param_budget.py [--json]

Counts come from `jax.eval_shape` of the Flax model each method's config builds, and the same
regex freezing the trainer uses (`partition.trainable_mask`).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import common  # pylint: disable=g-import-not-at-top
from feadapter_jax import methods
from feadapter_jax import partition
from feadapter_jax.models import builder

METHODS = tuple(methods.METHODS)


def count(method: str) -> dict:
  config = common.base_config(method)
  config.data = common.data_config('dfew', 'fold1')
  # The clip's frames matter: AIM's time embedding has one row per frame.
  shapes = builder.param_shapes(builder.build_model(config), builder.clip_shape(config))
  report = partition.report(shapes, partition.trainable_mask(shapes, config.trainable))
  return {'method': method, 'total': report.total, 'trainable': report.trainable}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--json', action='store_true', help='rows as a JSON list')
  args = parser.parse_args()
  rows = [count(m) for m in METHODS]
  full = next(r['trainable'] for r in rows if r['method'] == 'full_finetune')
  if args.json:
    print(json.dumps(rows, indent=2))
    return
  print('ViT-B/16, 224x224, 7 classes')
  print(
      f'| {"method":<14} | {"total":>12} | {"trainable":>12} | {"% trainable":>11} | '
      f'{"vs full FT":>10} |'
  )
  print(f'|{"-" * 16}|{"-" * 14}|{"-" * 14}|{"-" * 13}|{"-" * 12}|')
  for r in rows:
    print(
        f'| {r["method"]:<14} | {r["total"]:>12,} | {r["trainable"]:>12,} | '
        f'{100 * r["trainable"] / r["total"]:>10.2f}% | {r["trainable"] / full:>9.4f}x |'
    )


if __name__ == '__main__':
  main()
