"""Checkpoints: orbax train-state checkpoints and exported parameter directories.

Train state checkpoints (`Checkpoints`) hold what a resumed run cannot rebuild: the trainable
parameters, the optimizer state, the step and the RNG; the frozen backbone comes back from
`config.init`. Orbax writes each step to a temporary directory and renames it when complete, so
a killed save never leaves a step that looks whole; a step that fails to restore (truncated,
tampered) is skipped with a warning and the previous one is used.

Parameter directories (`save_params` / `load_params`): `params/` (orbax) + `model_config.json`;
the format of converted backbones and of exported adapters.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from feadapter_jax import partition

MODEL_CONFIG = 'model_config.json'
PARAMS = 'params'


def to_saved(state: Mapping[str, Any], mask: Any) -> dict[str, Any]:
  """The part of a train state that a checkpoint holds (frozen parameters dropped)."""
  return {**state, 'params': partition.subtree(state['params'], mask, keep=True)}


def from_saved(saved: Mapping[str, Any], frozen: Any) -> dict[str, Any]:
  """A full train state from a checkpoint and the frozen parameters."""
  return {**saved, 'params': partition.merge(saved['params'], frozen)}


class Checkpoints:
  """The last `keep_last` steps plus the best by `best_metric`, written atomically."""

  def __init__(self, directory: str, *, keep_last: int, best_metric: str = 'uar',
               asynchronous: bool = True):
    self.best_metric = best_metric
    score = lambda m: m[best_metric] if m else float('-inf')  # steps saved without an eval
    policy = policies.AnyPreservationPolicy([
        policies.LatestN(keep_last),
        policies.BestN(get_metric_fn=score, n=1, keep_checkpoints_without_metrics=False)])
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policy, cleanup_tmp_directories=True,
            # With best_fn set, orbax also writes each step's metrics (read back on resume).
            best_fn=score, best_mode='max',
            enable_async_checkpointing=asynchronous))

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, saved_state: Any, metrics: Mapping[str, float] | None = None
           ) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(saved_state),
                      metrics=dict(metrics) if metrics else None, force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def restore_latest(self, abstract_saved_state: Any) -> Any | None:
    """The newest step that restores, None if there is none; broken steps are reported."""
    for step in reversed(self.steps()):
      try:
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_saved_state))
      except Exception as e:  # pylint: disable=broad-except  (any damage: fall back)
        logging.warning('Checkpoint step %d in %s cannot be restored (%s: %s); trying the '
                        'previous one.', step, self.manager.directory, type(e).__name__, e)
    return None

  def best_step(self) -> int | None:
    """The kept step with the highest `best_metric`, None if no step has metrics."""
    scored = [(m[self.best_metric], step) for step in self.steps()
              if (m := self.manager.metrics(step))]
    return max(scored)[1] if scored else None

  def close(self) -> None:
    self.manager.close()


def _process_local_checkpointer() -> ocp.StandardCheckpointer:
  # Parameter directories are written and read by one process alone (the chief exports, any
  # process converts or predicts): no barrier with processes that are not taking part.
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f'params{me}'))


def save_params(directory: str, params: Any, model_config: Mapping[str, Any]) -> None:
  """Writes `params` and the model config they fit; the directory appears only when complete.

  Process-local: call it from one process (e.g. the chief) only.
  """
  directory = os.path.abspath(directory)
  tmp = directory + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with _process_local_checkpointer() as ckptr:
    ckptr.save(os.path.join(tmp, PARAMS), jax.tree.map(np.asarray, params))
    ckptr.wait_until_finished()
  with open(os.path.join(tmp, MODEL_CONFIG), 'w') as f:
    json.dump(dict(model_config), f, indent=2, sort_keys=True)
  shutil.rmtree(directory, ignore_errors=True)
  os.replace(tmp, directory)


def load_params(directory: str) -> tuple[Any, dict[str, Any]]:
  """(params as numpy arrays, model config) from a directory written by `save_params`."""
  config_path = os.path.join(directory, MODEL_CONFIG)
  if not os.path.exists(config_path):
    raise FileNotFoundError(
        f'{config_path} not found: {directory} is not a parameter directory. Make one with '
        '`python -m feadapter_jax.convert --checkpoint PYTORCH_FILE --out DIR`, or point to '
        'a training workdir\'s export/ folder.')
  with open(config_path) as f:
    model_config = json.load(f)
  with _process_local_checkpointer() as ckptr:
    params = ckptr.restore(os.path.join(os.path.abspath(directory), PARAMS))
  return jax.tree.map(np.asarray, params), model_config


def directory_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(directory) for f in files)
