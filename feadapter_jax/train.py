"""The training loop: set up, resume, train, evaluate, checkpoint, export.

`train_and_evaluate(config, workdir)` is what `python -m feadapter_jax.main` runs. It first
resolves the config against its backbone (`resolve_config`), so a config that does not fit its
backbone, or a frozen backbone that would be random, stops the run before any data is prepared.
The jitted steps are pure (`step.py`); everything with a side effect (data, logging,
checkpoints, signals) lives here.
"""

from __future__ import annotations

import dataclasses
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
from feadapter_jax import optim
from feadapter_jax import partition
from feadapter_jax import sharding
from feadapter_jax import step as step_lib
from feadapter_jax import workdir as workdir_lib
from feadapter_jax.data import pipeline
from feadapter_jax.models import backbone
from feadapter_jax.models import builder
from feadapter_jax.models import kernels


class NonFiniteLossError(FloatingPointError):
  pass


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
  """
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
  steps_per_epoch = max(info.num_examples[config.data.train_split] // config.batch_size, 1)
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
  tx = optim.make(
      config.optim,
      mask,
      total_steps,
      warmup_steps=int(config.optim.warmup_epochs * steps_per_epoch),
  )
  loaded = builder.load_backbone(config, params_shapes, info.class_names)

  def init_fn(loaded):
    return step_lib.init_state(
        model, tx, builder.initial_params(model, config, loaded), config.seed
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
  train_step = jax.jit(
      step_lib.make_train_step(
          model,
          tx,
          mask,
          mean=config.data.mean,
          std=config.data.std,
          label_smoothing=config.label_smoothing,
          grad_accum_steps=config.grad_accum_steps,
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

  def run_eval(step: int) -> dict[str, Any]:
    results = evaluate_lib.evaluate(
        eval_step, state['params'], config, mesh, info.class_names, config.data.eval_split
    )
    results['step'] = step
    writer.write_scalars(step, {f'eval/{k}': results[k] for k in ('uar', 'war')})
    if is_chief:
      print(
          f'eval step {step}: UAR {results["uar"]:.4f} WAR {results["war"]:.4f} '
          f'({results["num_examples"]} clips)',
          flush=True,
      )
    return results

  def save(step: int, results: dict[str, Any] | None = None) -> None:
    ckpts.save(
        step,
        checkpoint.to_saved(state, mask),
        {'uar': results['uar'], 'war': results['war']} if results else None,
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
  results = None
  with metric_writers.ensure_flushes(writer):
    for step in range(start_step + 1, total_steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = pipeline.to_global_arrays(next(train_iter), mesh)
        state, step_metrics = train_step(state, batch)
      report_progress(step)
      pending.append((step, step_metrics['loss']))
      if step % config.log_every_steps == 0 or step == total_steps:
        _check_finite(pending, ckpts, last_saved)
        scalars = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        writer.write_scalars(step, {f'train/{k}': v for k, v in scalars.items()})
        if is_chief:
          print(progress.line(step, scalars), flush=True)
      results = None
      if step % eval_every == 0 or step == total_steps:
        _check_finite(pending, ckpts, last_saved)
        results = run_eval(step)
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
    if results is None:
      results = run_eval(total_steps)
      if last_saved != total_steps:  # not when resumed from the final checkpoint: it exists
        save(total_steps, results)
    ckpts.wait()
    ckpts.close()
    export = workdir_lib.path(workdir, workdir_lib.EXPORT_DIR)
    if is_chief:
      checkpoint.save_params(
          export,
          jax.device_get(partition.subtree(state['params'], mask)),
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
            f'{config.method} step {total_steps}: UAR '
            f'{results["uar"]:.3f} WAR {results["war"]:.3f}',
        )
      print(
          f'Results: UAR {results["uar"]:.4f} WAR {results["war"]:.4f} | trainable '
          f'{report.trainable:,} of {report.total:,} params | exported '
          f'{results["export_bytes"] / 1e6:.2f} MB (full model '
          f'{results["full_model_bytes"] / 1e6:.2f} MB) to {export} | '
          f'{workdir_lib.path(workdir, workdir_lib.RESULTS_FILE)}',
          flush=True,
      )
  return results
