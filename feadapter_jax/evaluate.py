r"""Evaluation: metrics over a whole split, and evaluating a trained run's export.

  python -m feadapter_jax.evaluate --workdir=DIR [--split=test] [--num_clips=2] [--num_crops=2] \
      [--test_crop_fraction=0.875]

rebuilds the model from DIR/config.json, puts the exported trainable parameters (DIR/export) on
top of the frozen backbone named there, and writes DIR/results_<split>_<clips>clip.json
(results_<split>_<clips>clip_<crops>crop.json with several crops). The config.json holds the
backbone's settings and input normalisation as training resolved them, so the model and the
preprocessing are the ones the run trained with.

Test views: `num_clips` temporal clips x `num_crops` spatial crops per video
(`pipeline.eval_clip`), their softmax probabilities averaged by the eval step. 1 x 1 is the
FE-Adapter paper's protocol, 2 x 2 S2D's and FRU-Adapter's. Several crops need
`test_crop_fraction` < 1 (`pipeline.crop_windows`: crops from corner to corner of the frame).
"""

from __future__ import annotations

from feadapter_jax import cli  # pylint: disable=g-bad-import-order  (first: quiets TensorFlow)

import json  # pylint: disable=g-import-not-at-top,g-bad-import-order
import sys
from typing import Any

from absl import app
from absl import flags
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from feadapter_jax import checkpoint
from feadapter_jax import metrics as metrics_lib
from feadapter_jax import partition
from feadapter_jax import sharding
from feadapter_jax import step as step_lib
from feadapter_jax import workdir as workdir_lib
from feadapter_jax.data import pipeline
from feadapter_jax.models import builder


def evaluate(
    eval_step,
    params: Any,
    config: ml_collections.ConfigDict,
    mesh: Any,
    class_names: list[str],
    split: str,
) -> dict[str, Any]:
  """WAR, UAR, per-class recall and the confusion matrix over a whole split (all processes)."""
  local_bs = config.eval_batch_size // jax.process_count()
  labels, preds = [], []
  for batch in pipeline.make_eval_iterator(config.data, split, batch_size=local_bs):
    batch = pipeline.to_global_arrays({k: batch[k] for k in ('video', 'label', 'mask')}, mesh)
    probs = eval_step(params, batch)
    probs, label, mask = multihost_utils.process_allgather(
        (probs, batch['label'], batch['mask']), tiled=True
    )
    mask = np.asarray(mask)
    labels.append(np.asarray(label)[mask])
    preds.append(np.argmax(np.asarray(probs), -1)[mask])
  cm = metrics_lib.confusion_matrix(np.concatenate(labels), np.concatenate(preds), len(class_names))
  return metrics_lib.summarize(cm, class_names)


def load_trained(workdir: str, config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """(model, params): the run's initial parameters with its exported trainable ones on top."""
  trained, _ = checkpoint.load_params(workdir_lib.path(workdir, workdir_lib.EXPORT_DIR))
  model = builder.build_model(config)
  shapes = builder.param_shapes(model, builder.clip_shape(config))
  initial = builder.initial_params(model, config, builder.load_backbone(config, shapes))
  mask = partition.trainable_mask(shapes, config.trainable)
  frozen = partition.subtree(initial, mask, keep=False)
  return model, partition.merge(frozen, trained)


def evaluate_workdir(
    workdir: str,
    split: str,
    num_clips: int = 0,
    num_crops: int = 0,
    test_crop_fraction: float = 0.0,
) -> dict[str, Any]:
  """Evaluates a finished run's export on `split` with the given test views (0: as trained).

  Raises:
    pipeline.DataConfigError: the views are not allowed (`pipeline.check_views`).
  """
  config = workdir_lib.load_config(workdir)
  for name, value in (
      ('num_clips', num_clips),
      ('num_crops', num_crops),
      ('test_crop_fraction', test_crop_fraction),
  ):
    if value:
      config.data[name] = value
  pipeline.check_views(config.data)  # before the model loads
  model, params = load_trained(workdir, config)
  mesh = sharding.make_mesh(config.mesh)
  # The parameters are laid out as in training (`config.sharding_rules`), so a model trained
  # with FSDP fits the same devices here.
  params_sh = sharding.params_shardings(params, mesh, config.sharding_rules)
  params = jax.device_put(params, params_sh)
  batch_sh = sharding.batch_sharding(mesh)
  eval_step = jax.jit(
      step_lib.make_eval_step(model, mean=config.data.mean, std=config.data.std),
      in_shardings=(params_sh, batch_sh),
      out_shardings=batch_sh,
  )
  info = pipeline.dataset_info(config.data)
  results = evaluate(eval_step, params, config, mesh, info.class_names, split)
  data = config.data
  results.update(
      split=split,
      num_clips=data.num_clips,
      num_crops=data.num_crops,
      test_crop_fraction=data.test_crop_fraction,
  )
  path = workdir_lib.path(
      workdir, workdir_lib.evaluation_file(split, data.num_clips, data.num_crops)
  )
  path.write_text(json.dumps(results, indent=2))
  print(
      f'{workdir} {split} ({data.num_clips} clip x {data.num_crops} crop): UAR '
      f'{results["uar"]:.4f} WAR {results["war"]:.4f} ({results["num_examples"]} clips) -> {path}'
  )
  return results


def main(argv) -> None:
  del argv
  cli.start()
  try:
    evaluate_workdir(
        flags.FLAGS.workdir,
        flags.FLAGS.split,
        flags.FLAGS.num_clips,
        flags.FLAGS.num_crops,
        flags.FLAGS.test_crop_fraction,
    )
  except (
      pipeline.DatasetNotFoundError,
      pipeline.DataConfigError,
      checkpoint.CheckpointError,
      sharding.ShardingConfigError,
      FileNotFoundError,
  ) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A finished training run.', required=True)
  flags.DEFINE_string('split', 'test', 'Split to evaluate.')
  flags.DEFINE_integer('num_clips', 0, 'Temporal clips per video (0: as trained).')
  flags.DEFINE_integer('num_crops', 0, 'Spatial crops per clip (0: as trained).')
  flags.DEFINE_float(
      'test_crop_fraction', 0.0, 'Side of a spatial crop / side of the frame (0: as trained).'
  )
  app.run(main)
