"""The training loop: set up, resume, train, evaluate, checkpoint, export.

`train_and_evaluate(config, workdir)` is what `python -m feadapter_jax.main` runs. It first
resolves the config against its backbone (`resolve_config`), so a config that does not fit its
backbone, or a frozen backbone that would be random, stops the run before any data is prepared.
The jitted steps are pure (`step.py`); everything with a side effect (data, logging,
checkpoints, signals) lives here.

Model selection never looks at the test split (`config.data.eval_split`). The evaluations every
`eval_every_steps` run on the validation data (`pipeline.validation_split`: `data.val_split`, or
`data.val_fraction` of each class held out of the train split), and the checkpoint manager keeps
the step with the best validation UAR. At the end the test split is evaluated at the final step
and at that selected step (restored from its checkpoint). results.json holds:
  * top level: the final step's test figures (`metrics.summarize`: uar, war, per_class_recall,
    confusion_matrix, class_names, num_examples), `step` and `split`, as runs always had;
  * `final`: {step, uar, war}, the same figures labelled;
  * `selected`: {step, val_uar, val_war, uar, war, per_class_recall, confusion_matrix,
    num_examples}: the step with the best validation UAR and its test figures;
  * `validation_split`: the split that selected (`pipeline.HELD_OUT` for the held-out part of
    the train split), or None: with no validation data the evaluations watch the test split,
    nothing is selected and there is no `selected` entry.
The export holds the final step's parameters, which the top-level figures score; with
`config.ema_decay` > 0 every evaluation, the selection and the export use the EMA of the trained
parameters (`step.ema_params`) instead. `config.class_weights='balanced'` weighs the loss by the
training part's class counts (`pipeline.balanced_class_weights`). TensorBoard gets
`val/uar` and `val/war` at every evaluation (`test/...` without validation data), and at the last
step `test/uar`, `test/war`, `test/selected_uar` and `test/selected_war`; with every evaluation
its per-class recalls (`val/recall/<class>`) and its confusion matrix as an image; and every
`log_every_steps` the learning rate (`train/lr`) and the train metrics averaged over the steps
since the last log (the progress line prints those averages). The config goes in as hparams.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import signal
import time
from typing import Any, Iterator

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from feadapter_jax import checkpoint
from feadapter_jax import evaluate as evaluate_lib
from feadapter_jax import metrics as metrics_lib
from feadapter_jax import mixup as mixup_lib
from feadapter_jax import optim
from feadapter_jax import partition
from feadapter_jax import sharding
from feadapter_jax import step as step_lib
from feadapter_jax import workdir as workdir_lib
from feadapter_jax.data import pipeline
from feadapter_jax.models import backbone
from feadapter_jax.models import builder
from feadapter_jax.models import kernels

# The test figures of results.json's 'selected' entry.
_SELECTED_FIGURES = ('uar', 'war', 'per_class_recall', 'confusion_matrix', 'num_examples')


class NonFiniteLossError(FloatingPointError):
  pass


def _stack(metrics: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  """[{name: value}] of several steps -> {name: (steps,) values}."""
  return {k: np.asarray([m[k] for m in metrics]) for k in metrics[0]}


def _confusion_image(results: dict[str, Any], title: str) -> np.ndarray:
  """(1, h, w, 3) uint8: the confusion matrix figure (`metrics.plot_confusion`), for TensorBoard."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top  (plotting only when logging)

  png = io.BytesIO()
  metrics_lib.plot_confusion(
      np.asarray(results['confusion_matrix']), results['class_names'], png, title
  )
  png.seek(0)
  rgba = matplotlib.image.imread(png, format='png')  # float in [0, 1]
  return np.round(rgba[None, ..., :3] * 255).astype(np.uint8)


def _hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config flattened to 'a.b' keys, values that are not scalars as strings (TensorBoard)."""
  flat = {}

  def walk(prefix: str, value: Any) -> None:
    if isinstance(value, dict):
      for k, v in value.items():
        walk(f'{prefix}{k}.', v)
    else:
      scalar = isinstance(value, (bool, int, float, str))
      flat[prefix[:-1]] = value if scalar else str(value)

  walk('', config.to_dict())
  return flat


@dataclasses.dataclass
class Progress:
  """A concise progress line with throughput and ETA."""

  total_steps: int
  clips_per_step: int
  start_step: int
  start_time: float = dataclasses.field(default_factory=time.time)

  def line(self, step: int, scalars: dict[str, float]) -> str:
    elapsed = time.time() - self.start_time
    done = max(step - self.start_step, 1)
    steps_per_s = done / max(elapsed, 1e-9)
    eta = (self.total_steps - step) / steps_per_s
    fields = ' | '.join(f'{k} {v:.4g}' for k, v in scalars.items())
    return (
        f'step {step}/{self.total_steps} | {fields} | {steps_per_s:.2f} steps/s | '
        f'{steps_per_s * self.clips_per_step:.1f} clips/s | ETA {_duration(eta)}'
    )


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class Preemption:
  """SIGTERM sets a flag the loop checks at step boundaries (multi-host: JAX's sync point)."""

  def __init__(self):
    self.requested = False
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested


def _check_finite(
    pending: list[tuple[int, Any]], ckpts: checkpoint.Checkpoints, last_saved: int | None
) -> None:
  """Raises NonFiniteLossError at the first non-finite loss in `pending`, else clears it."""
  for step, loss in pending:
    if not np.isfinite(float(loss)):
      set_aside = ''
      if last_saved == step - 1:
        # Its parameters gave this loss (saves follow a finite check, so older ones are good):
        # resuming from it would fail again at once.
        kept = ckpts.set_aside(last_saved, 'nonfinite')
        set_aside = (
            f' The checkpoint of step {last_saved}, whose parameters gave this loss, '
            f'was moved to {kept}.'
        )
        last_saved = max(ckpts.steps(), default=None)
      where = (
          f'the last good checkpoint is step {last_saved} in {ckpts.manager.directory}'
          if last_saved is not None
          else 'no good checkpoint was written yet'
      )
      raise NonFiniteLossError(
          f'Training loss is {float(loss)} at step {step}; stopping ({where}).{set_aside} Lower '
          'config.optim.lr, enable config.optim.grad_clip_norm, or check the input data.'
      )
  pending.clear()


def compiler_options(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The config's XLA options for this backend (only CPU has some: `kernels.compiler_options`)."""
  return kernels.compiler_options(config.get('cpu_compiler_options'))


class ConfigError(ValueError):
  """A training setting of the config is out of range (the message names it and the fix)."""


CLASS_WEIGHTS = ('none', 'balanced')


def _check_training_knobs(config: ml_collections.ConfigDict) -> None:
  try:
    mixup_lib.check_config(config.mixup)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.class_weights not in CLASS_WEIGHTS:
    raise ConfigError(
        f'config.class_weights={config.class_weights!r}: allowed values are '
        f'{", ".join(CLASS_WEIGHTS)}.'
    )
  if not 0.0 <= config.ema_decay < 1.0:
    raise ConfigError(f'config.ema_decay={config.ema_decay} must be in [0, 1) (0: no EMA).')
  if not 0.0 < config.optim.layer_decay <= 1.0:
    raise ConfigError(
        f'config.optim.layer_decay={config.optim.layer_decay} must be in (0, 1] (1: off).'
    )


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config a run trains with: the backbone's settings filled in (`backbone.resolve`), the
  backend's dtype for 'auto' (`builder.resolve_backend`), and a frozen backbone
  required to come from `config.init.checkpoint`. Cheap: shapes only.

  Raises:
    backbone.BackboneError: the config contradicts its backbone, or its frozen backbone would be
      random without `config.init.random_backbone`.
    FileNotFoundError: `config.init.checkpoint` is not a backbone directory.
    sharding.ShardingConfigError: `config.mesh` or `config.sharding_rules` is malformed or does
      not fit the devices.
    ConfigError: a training knob (mixup, class_weights, ema_decay, optim.layer_decay) is out of
      range.
  """
  _check_training_knobs(config)
  config = builder.resolve_backend(backbone.resolve(config))
  sharding.make_mesh(config.mesh)  # a malformed mesh or rules stop the run before any data
  sharding.parse_rules(config.sharding_rules)
  shapes = builder.param_shapes(builder.build_model(config), builder.clip_shape(config))
  backbone.require_checkpoint(config, partition.trainable_mask(shapes, config.trainable))
  return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from workdir if it holds checkpoints), evaluates, exports. Returns results.

  The run's config.json records `config` as resolved by `resolve_config`.
  """
  config = resolve_config(config)
  # ---------------------------------------------------------------- Set up logging, mesh
  workdir_lib.path(workdir).mkdir(parents=True, exist_ok=True)
  is_chief = jax.process_index() == 0
  writer = metric_writers.create_default_writer(
      workdir, just_logging=not is_chief, asynchronous=True
  )
  if is_chief:
    workdir_lib.write_config(workdir, config)
  mesh = sharding.make_mesh(config.mesh)
  sharding_rules = sharding.parse_rules(config.sharding_rules)
  n_batch_shards = math.prod(mesh.shape[a] for a in sharding.batch_axes(mesh))
  for name, bs in (('batch_size', config.batch_size), ('eval_batch_size', config.eval_batch_size)):
    if bs % n_batch_shards or bs % (jax.process_count() * config.grad_accum_steps):
      raise sharding.ShardingConfigError(
          f'config.{name}={bs} must divide evenly over {n_batch_shards} batch '
          f'shards, {jax.process_count()} processes and grad_accum_steps.'
      )

  # ---------------------------------------------------------------- Data
  info = pipeline.dataset_info(config.data)
  if len(info.class_names) != config.model.num_classes:
    raise ValueError(
        f'config.model.num_classes={config.model.num_classes} but '
        f'{config.data.name} has {len(info.class_names)} classes'
    )
  val_split = pipeline.check_data(config.data)
  test_split = config.data.eval_split
  steps_per_epoch = max(
      pipeline.split_size(config.data, config.data.train_split) // config.batch_size, 1
  )
  total_steps = config.total_steps or math.ceil(config.num_epochs * steps_per_epoch)
  eval_every = config.eval_every_steps or steps_per_epoch

  # ---------------------------------------------------------------- Model, optimizer, state
  model = builder.build_model(config)
  params_shapes = builder.param_shapes(model, builder.clip_shape(config))
  mask = partition.trainable_mask(params_shapes, config.trainable)
  report = partition.report(params_shapes, mask)
  logging.info('Parameters (%s, %s):\n%s', config.method, config.model.get('variant', ''), report)
  if is_chief:
    print(f'Parameters ({config.method}):\n{report}', flush=True)
  warmup_steps = int(config.optim.warmup_epochs * steps_per_epoch)
  tx = optim.make(
      config.optim, mask, total_steps, warmup_steps=warmup_steps, depth=config.model.depth
  )
  lr_schedule = optim.schedule(config.optim, total_steps, warmup_steps)
  loaded = builder.load_backbone(config, params_shapes, info.class_names)

  def init_fn(loaded):
    return step_lib.init_state(
        model,
        tx,
        builder.initial_params(model, config, loaded),
        config.seed,
        ema_mask=mask if config.ema_decay else None,
    )

  state_shapes = jax.eval_shape(init_fn, loaded)
  state_sh = sharding.state_shardings(state_shapes, mesh, sharding_rules)
  batch_sh = sharding.batch_sharding(mesh)
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.jit(init_fn, out_shardings=state_sh)(loaded)

  # ---------------------------------------------------------------- Resume
  ckpts = checkpoint.Checkpoints(
      workdir_lib.path(workdir, workdir_lib.CHECKPOINT_DIR),
      keep_last=config.keep_checkpoints,
      asynchronous=config.checkpoint_async,
  )
  abstract = jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      checkpoint.to_saved(state_shapes, mask),
      checkpoint.to_saved(state_sh, mask),
  )
  restored = ckpts.restore_latest(abstract)
  if restored is not None:
    frozen = partition.subtree(state['params'], mask, keep=False)
    state = checkpoint.from_saved(restored, frozen)
    logging.info('Resumed from step %d in %s', int(state['step']), workdir)
    if is_chief:
      print(f'Resumed from step {int(state["step"])}', flush=True)
  start_step = int(state['step'])
  last_saved = start_step if restored is not None else None

  # ---------------------------------------------------------------- Steps
  class_weights = None
  if config.class_weights == 'balanced':
    counts = pipeline.train_label_counts(config.data, config.model.num_classes)
    class_weights = pipeline.balanced_class_weights(counts)
    logging.info('Class weights (balanced) for counts %s: %s', counts.tolist(), class_weights)
  # The parameters evaluation and export use: the EMA of the trained ones when it is kept (a
  # jitted merge, laid out as the parameters), else the parameters themselves, not copied.
  if config.ema_decay:
    eval_params = jax.jit(step_lib.ema_params, out_shardings=state_sh['params'])
  else:
    eval_params = step_lib.ema_params
  train_step = jax.jit(
      step_lib.make_train_step(
          model,
          tx,
          mask,
          mean=config.data.mean,
          std=config.data.std,
          label_smoothing=config.label_smoothing,
          grad_accum_steps=config.grad_accum_steps,
          mixup=config.mixup.to_dict(),
          class_weights=class_weights,
          ema_decay=config.ema_decay,
      ),
      in_shardings=(state_sh, batch_sh),
      out_shardings=(state_sh, repl),
      donate_argnums=0,
      compiler_options=compiler_options(config),
  )
  eval_step = jax.jit(
      step_lib.make_eval_step(model, mean=config.data.mean, std=config.data.std),
      in_shardings=(state_sh['params'], batch_sh),
      out_shardings=batch_sh,
  )

  def run_eval(step: int, params: Any, split: str) -> dict[str, Any]:
    results = evaluate_lib.evaluate(eval_step, params, config, mesh, info.class_names, split)
    results.update(step=step, split=split)
    if is_chief:
      print(
          f'eval step {step}: UAR {results["uar"]:.4f} WAR {results["war"]:.4f} '
          f'({results["num_examples"]} {split} clips)',
          flush=True,
      )
    return results

  def watch(step: int) -> dict[str, Any]:
    """The periodic evaluation: validation data, else (selecting nothing) the test split."""
    results = run_eval(step, eval_params(state), val_split or test_split)
    prefix = 'val' if val_split else 'test'
    recalls = {
        f'{prefix}/recall/{k}': r for k, r in results['per_class_recall'].items() if r is not None
    }
    writer.write_scalars(
        step, {f'{prefix}/uar': results['uar'], f'{prefix}/war': results['war'], **recalls}
    )
    if is_chief:
      title = f'{prefix} step {step}: UAR {results["uar"]:.3f}'
      writer.write_images(step, {f'{prefix}/confusion_matrix': _confusion_image(results, title)})
    return results

  def save(step: int, results: dict[str, Any] | None = None) -> None:
    # Only validation figures score a step: without them no step is kept as the best.
    ckpts.save(
        step,
        checkpoint.to_saved(state, mask),
        {'uar': results['uar'], 'war': results['war']} if results and val_split else None,
    )

  # ---------------------------------------------------------------- Train loop
  local_bs = config.batch_size // jax.process_count()
  train_iter: Iterator[dict[str, np.ndarray]] = pipeline.make_train_iterator(
      config.data, batch_size=local_bs, seed=config.seed, start_step=start_step
  )
  progress = Progress(total_steps, config.batch_size, start_step)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=total_steps, writer=writer, every_steps=config.log_every_steps
  )
  preemption = Preemption()
  pending: list[tuple[int, Any]] = []
  logged: list[dict[str, Any]] = []  # the step metrics since the last log line
  results = None
  if is_chief and start_step == 0:
    writer.write_hparams(_hparams(config))
  with metric_writers.ensure_flushes(writer):
    for step in range(start_step + 1, total_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = pipeline.to_global_arrays(next(train_iter), mesh)
        state, step_metrics = train_step(state, batch)
      report_progress(step)
      pending.append((step, step_metrics['loss']))
      logged.append(step_metrics)
      if step % config.log_every_steps == 0 or step == total_steps:
        _check_finite(pending, ckpts, last_saved)
        # Averaged over the steps since the last line, not the last batch's alone.
        scalars = {k: float(np.mean(v)) for k, v in _stack(jax.device_get(logged)).items()}
        logged.clear()
        lr = float(lr_schedule(step - 1))  # step s applies the update of optax count s - 1
        writer.write_scalars(
            step, {**{f'train/{k}': v for k, v in scalars.items()}, 'train/lr': lr}
        )
        if is_chief:
          print(progress.line(step, scalars), flush=True)
      results = None
      if step % eval_every == 0 or step == total_steps:
        _check_finite(pending, ckpts, last_saved)
        results = watch(step)
        save(step, results)
        last_saved = step
      elif step % config.checkpoint_every_steps == 0:
        _check_finite(pending, ckpts, last_saved)
        save(step)
        last_saved = step
      if preemption.reached(step):
        _check_finite(pending, ckpts, last_saved)
        if last_saved != step:
          save(step)
        ckpts.wait()
        logging.warning('Preempted: checkpoint at step %d written; rerun to resume.', step)
        if is_chief:
          print(
              f'Preempted (SIGTERM): checkpoint at step {step} written to {workdir}; '
              'rerun the same command to resume.',
              flush=True,
          )
        ckpts.close()
        return {'preempted': True, 'step': step}

    # -------------------------------------------------------------- Final results and export
    ckpts.wait()  # the final step's checkpoint and metrics are complete: `best` counts them
    # The loop's last evaluation is the final test one unless it was on validation data, or the
    # run resumed from its final checkpoint (no loop: `results` is None).
    final = (
        results
        if results and not val_split
        else run_eval(total_steps, eval_params(state), test_split)
    )
    selected = None
    if val_split and (best := ckpts.best()):
      best_step, val = best
      tested = final
      if best_step != total_steps:
        frozen = partition.subtree(state['params'], mask, keep=False)
        params = eval_params(checkpoint.from_saved(ckpts.restore(best_step, abstract), frozen))
        tested = run_eval(best_step, params, test_split)
      selected = {
          'step': best_step,
          'val_uar': val['uar'],
          'val_war': val['war'],
          **{k: tested[k] for k in _SELECTED_FIGURES},
      }
      writer.write_scalars(
          total_steps, {'test/selected_uar': tested['uar'], 'test/selected_war': tested['war']}
      )
    writer.write_scalars(total_steps, {'test/uar': final['uar'], 'test/war': final['war']})
    results = {
        **final,
        'final': {k: final[k] for k in ('step', 'uar', 'war')},
        'validation_split': val_split,
        **({'selected': selected} if selected else {}),
    }
    ckpts.wait()
    ckpts.close()
    export = workdir_lib.path(workdir, workdir_lib.EXPORT_DIR)
    if is_chief:
      checkpoint.save_params(
          export,
          jax.device_get(partition.subtree(eval_params(state), mask)),
          backbone.directory_config(config, info.class_names),
      )
      (export / workdir_lib.INIT_FILE).write_text(
          json.dumps(
              {
                  'backbone': workdir_lib.resolve_path(config.init.checkpoint)
                  if config.init.checkpoint
                  else '',
                  'seed': config.seed,
                  'trainable': list(config.trainable),
              },
              indent=2,
          )
      )
      results.update(
          method=config.method,
          trainable_params=report.trainable,
          total_params=report.total,
          export_bytes=checkpoint.directory_bytes(export),
          full_model_bytes=sum(
              partition.size(x) * x.dtype.itemsize for x in jax.tree.leaves(params_shapes)
          ),
      )
      workdir_lib.path(workdir, workdir_lib.RESULTS_FILE).write_text(json.dumps(results, indent=2))
      # An open file: matplotlib cannot write to a gs:// path itself.
      with workdir_lib.path(workdir, workdir_lib.CONFUSION_FIGURE).open('wb') as figure:
        metrics_lib.plot_confusion(
            np.asarray(results['confusion_matrix']),
            info.class_names,
            figure,
            f'{config.method} final step {total_steps}: test UAR '
            f'{results["uar"]:.3f} WAR {results["war"]:.3f}',
        )
      if selected:
        print(
            f'Selected by {val_split} UAR {selected["val_uar"]:.4f}: step {selected["step"]}, '
            f'test UAR {selected["uar"]:.4f} WAR {selected["war"]:.4f}',
            flush=True,
        )
      print(
          f'Results (final step, test): UAR {results["uar"]:.4f} WAR {results["war"]:.4f} | '
          f'trainable {report.trainable:,} of {report.total:,} params | exported '
          f'{results["export_bytes"] / 1e6:.2f} MB (full model '
          f'{results["full_model_bytes"] / 1e6:.2f} MB) to {export} | '
          f'{workdir_lib.path(workdir, workdir_lib.RESULTS_FILE)}',
          flush=True,
      )
  return results
