"""Checkpoints: orbax train-state checkpoints and exported parameter directories.

Train state checkpoints (`Checkpoints`) hold what a resumed run cannot rebuild: the trainable
parameters, the optimizer state, the step and the RNG; the frozen backbone comes back from
`config.init`. Orbax writes each step to a temporary directory and renames it when complete, so
a killed save never leaves a step that looks whole (the partial one is reported and removed).
Each step holds two kinds of checksums: `SHA256SUMS`, the SHA-256 of every file of the step as
written, added before the step directory appears; and the item `checksums`, one per array as it
was in memory, compared with the arrays restored. Orbax keeps no checksums: a damaged metrics
file crashes its CheckpointManager, a changed byte of a compressed chunk restores as a different
value, and nothing compares what it wrote with what it was given. A step whose files differ from
`SHA256SUMS` is reported in one line and moved aside to `<step>.damaged` before orbax reads any
of it (unless every step is damaged: then nothing moves and opening fails); a newer step that
fails to restore is moved aside the same way once an older one restores. docs/reliability.md
lists the faults this handles.

Parameter directories (`save_params` / `load_params`): `params/` (orbax) + `model_config.json`;
the format of converted backbones and of exported adapters.

Directories may be local or URIs (gs://bucket/run/checkpoints): every file operation goes through
`etils.epath`, as orbax's own do. A local rename is atomic; a gs:// rename copies and then deletes
each object, so there a step can appear before it is whole: its SHA256SUMS then tells it apart.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import re
from typing import Any, Iterator, Mapping

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from feadapter_jax import partition
from feadapter_jax import workdir as workdir_lib

MODEL_CONFIG = 'model_config.json'
PARAMS = 'params'
# The items of a train state checkpoint step.
STATE, CHECKSUMS = 'state', 'checksums'
# The SHA-256 of every other file of a step, in `sha256sum` format (`sha256sum -c` checks it).
FILE_CHECKSUMS = 'SHA256SUMS'
# The tag of a step moved aside because it is damaged.
DAMAGED = 'damaged'
_TMP = ocp.path.atomicity.TMP_DIR_SUFFIX
_CHECKSUM_LINE = re.compile(r'([0-9a-f]{64})  (.+)')
_UINT_OF_SIZE = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


class CheckpointError(Exception):
  """A checkpoint could not be written, or checkpoints exist and none of them restores."""


def to_saved(state: Mapping[str, Any], mask: Any) -> dict[str, Any]:
  """The part of a train state that a checkpoint holds (frozen parameters dropped)."""
  return {**state, 'params': partition.subtree(state['params'], mask, keep=True)}


def from_saved(saved: Mapping[str, Any], frozen: Any) -> dict[str, Any]:
  """A full train state from a checkpoint and the frozen parameters."""
  return {**saved, 'params': partition.merge(saved['params'], frozen)}


@jax.jit
def _leaf_checksums(tree: Any) -> Any:
  def checksum(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x
    bits = jax.lax.bitcast_convert_type(x, _UINT_OF_SIZE[x.dtype.itemsize]).astype(jnp.uint32)
    # Odd weights: a change to any one element changes the sum mod 2**32. Integer sums are exact
    # in any order, so every sharding and process count computes the same value.
    weights = (2 * jnp.arange(bits.size, dtype=jnp.uint32) + 1).reshape(bits.shape)
    return jnp.sum(bits * weights, dtype=jnp.uint32)

  return jax.tree.map(checksum, tree)


def checksums(tree: Any) -> dict[str, int]:
  """{leaf path: 32-bit position-weighted sum of its bits} (detects corruption, not forgery)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(_leaf_checksums(tree)))
  # Plain 'a/0/b' names: a target built from the saved metadata has dicts for optax's tuples.
  return {
      jax.tree_util.keystr(path, simple=True, separator='/'): int(value) for path, value in flat
  }


def _brief(error: Exception) -> str:
  # Tensorstore appends its whole JSON spec to every message: the cause comes before it.
  return f'{type(error).__name__}: {str(error).split(" [tensorstore_spec")[0]}'


def _reason(error: OSError) -> str:
  # The os backend's errors have a strerror; fsspec's and TensorFlow's a message or a path only.
  if error.strerror:
    return error.strerror
  return os.strerror(errno.ENOENT) if isinstance(error, FileNotFoundError) else str(error)


def _naming(error: OSError, name: str) -> OSError:
  """`error` with `name` (relative to the step) as its filename, whatever the backend set."""
  return OSError(error.errno, _reason(error), name)


def _files(directory: epath.Path, prefix: str = '') -> Iterator[tuple[str, epath.Path]]:
  """(path relative to `directory`, path) of every file under it.

  Raises:
    OSError: a directory cannot be listed, named relative to `directory`.
  """
  # Listed directory by directory: epath's walk() on its fsspec backend yields gs:// directories
  # without their scheme.
  try:
    children = list(directory.iterdir())
  except OSError as e:
    raise _naming(e, prefix.rstrip('/') or '.') from e
  for child in children:
    relative = prefix + child.name
    if child.is_dir():
      yield from _files(child, f'{relative}/')
    else:
      yield relative, child


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open('rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _file_digests(step_dir: epath.Path) -> dict[str, str]:
  """{path relative to `step_dir`: SHA-256} of every file under it.

  Raises:
    OSError: a file or directory cannot be read, named relative to `step_dir`.
  """
  digests = {}
  for relative, path in _files(step_dir):
    try:
      digests[relative] = _sha256(path)
    except OSError as e:
      raise _naming(e, relative) from e
  return digests


def _seal(staging: epath.Path, step_dir: epath.Path) -> None:
  """Writes the SHA256SUMS of `staging`, then renames it to `step_dir`."""
  digests = sorted(_file_digests(staging).items())
  (staging / FILE_CHECKSUMS).write_text(''.join(f'{digest}  {path}\n' for path, digest in digests))
  # On gs:// a copy then delete of each object: a kill during it leaves a `step_dir` without
  # some of its files or its SHA256SUMS, which `_damage` reports.
  staging.rename(step_dir)


def _damage(step_dir: epath.Path) -> str | None:
  """What is wrong with the files of a step, None if each is as its SHA256SUMS says.

  Names the first wrong file and how it is wrong, and how many more are.
  """
  try:
    listing = (step_dir / FILE_CHECKSUMS).read_bytes().decode('utf-8', 'replace')
  except OSError as e:
    return f'{FILE_CHECKSUMS}: {_reason(e)}'
  try:
    actual = _file_digests(step_dir)
  except OSError as e:
    return f'{e.filename}: {e.strerror}'
  if not listing.endswith('\n'):  # an empty or cut listing would hide the files it lost
    return f'{FILE_CHECKSUMS} is {"cut short" if listing else "empty"}'
  expected = {}
  for number, line in enumerate(listing[:-1].split('\n'), 1):
    if not (match := _CHECKSUM_LINE.fullmatch(line)):
      return f'{FILE_CHECKSUMS} line {number} is malformed'
    expected[match[2]] = match[1]
  del actual[FILE_CHECKSUMS]
  problems = sorted(
      [(path, 'is missing') for path in expected.keys() - actual.keys()]
      + [(path, f'is not listed in {FILE_CHECKSUMS}') for path in actual.keys() - expected.keys()]
      + [
          (path, f'differs from its SHA-256 in {FILE_CHECKSUMS}')
          for path in expected.keys() & actual.keys()
          if expected[path] != actual[path]
      ]
  )
  if not problems:
    return None
  (path, how), more = problems[0], len(problems) - 1
  return f'{path} {how}' + (f' (and {more} more)' if more else '')


class _ChecksummedStep(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Orbax's atomic rename of a step directory, with its SHA256SUMS written before it appears.

  Orbax's own finalization writes the step's last files (the commit time in
  `_CHECKPOINT_METADATA`, `commit_success.txt`, which names the directory it renames to) and
  renames; here it renames to a staging directory, still temporary by its name (a kill there
  leaves a partial step, removed at the next start), where SHA256SUMS covers those files too
  before the rename to the step.
  """

  def __init__(self, temporary_path: epath.Path | None, final_path: epath.Path, **kwargs: Any):
    super().__init__(
        temporary_path, final_path.parent / f'{final_path.name}{_TMP}.sealing', **kwargs
    )
    self._step_dir = final_path

  @classmethod
  def from_final(
      cls, final_path: epath.Path, **kwargs: Any
  ) -> ocp.path.atomicity.AtomicRenameTemporaryPath:
    if _TMP in final_path.parent.name:
      # An item, renamed inside its step's temporary directory: the step's SHA256SUMS covers it.
      return ocp.path.atomicity.AtomicRenameTemporaryPath.from_final(final_path, **kwargs)
    return super().from_final(final_path, **kwargs)

  def get_final(self) -> epath.Path:
    return self._step_dir

  async def finalize(self) -> None:
    await super().finalize()  # to the staging directory, orbax's final path
    await asyncio.to_thread(_seal, super().get_final(), self._step_dir)


def _move_aside(directory: epath.Path, step: int, tag: str) -> str:
  """Renames step `step` of `directory` to '<step>.<tag>' (kept for inspection)."""
  source, kept = directory / str(step), directory / f'{step}.{tag}'
  if jax.process_index() == 0:  # one shared directory: one process renames
    kept.rmtree(missing_ok=True)  # the same step set aside by an earlier attempt
    source.rename(kept)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'checkpoint step {step} set aside')
  return os.fspath(kept)


def _none_restores(directory: epath.Path, failures: list[str]) -> CheckpointError:
  return CheckpointError(
      f'No checkpoint in {directory} restores:\n  '
      + '\n  '.join(failures)
      + '\nIf the config changed since they were written, restore it or use a new workdir; '
      'to start this run over, delete that directory.'
  )


def _report_damaged(directory: epath.Path, step: int, reason: str, kept: str) -> None:
  logging.warning(
      'Checkpoint step %d in %s cannot be restored (%s); moved it to %s.',
      step,
      directory,
      reason,
      kept,
  )


def _set_aside_damaged_steps(directory: epath.Path) -> None:
  """Moves aside the steps whose files differ from their SHA256SUMS, unless all do.

  Runs before the CheckpointManager exists: it reads every step's metrics when created.

  Raises:
    CheckpointError: every step is damaged (they stay where they are: never a silent restart).
  """
  steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())
  damaged = {s: reason for s in steps if (reason := _damage(directory / str(s)))}
  if damaged and len(damaged) == len(steps):
    raise _none_restores(directory, [f'step {s}: {damaged[s]}' for s in reversed(steps)])
  for step, reason in damaged.items():
    _report_damaged(directory, step, reason, _move_aside(directory, step, DAMAGED))


class Checkpoints:
  """The last `keep_last` steps plus the best by `best_metric`, written atomically."""

  def __init__(
      self,
      directory: str | os.PathLike[str],
      *,
      keep_last: int,
      best_metric: str = 'uar',
      asynchronous: bool = True,
  ):
    # Absolute: tensorstore's file driver takes no relative path.
    directory = epath.Path(workdir_lib.resolve_path(directory))
    if directory.is_dir():
      # Orbax's default on gs:// tells partial steps by a missing commit file; these are renamed.
      partial = ocp.path.step.tmp_checkpoints(directory, temporary_path_cls=_ChecksummedStep)
      if partial:
        logging.warning(
            'Removing %s from %s: partially written checkpoints (a run stopped '
            'while saving them).',
            sorted(partial),
            directory,
        )
        # Here, not only by orbax's cleanup_tmp_directories, which may run in the background
        # and finish after the steps are listed.
        for name in partial:
          (directory / name).rmtree(missing_ok=True)
      _set_aside_damaged_steps(directory)
    score = lambda m: m[best_metric] if m else float('-inf')  # steps saved without an eval
    policy = policies.AnyPreservationPolicy(
        [
            policies.LatestN(keep_last),
            policies.BestN(get_metric_fn=score, n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    self.manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            cleanup_tmp_directories=True,
            # With best_fn set, orbax also writes each step's metrics (read back on resume).
            best_fn=score,
            best_mode='max',
            enable_async_checkpointing=asynchronous,
            # Deprecated in favour of atomicity_options, which only picks one of orbax's own.
            temporary_path_class=_ChecksummedStep,
        ),
    )
    self._directory = directory
    self._writing: int | None = None  # the step of a write that may still be in progress

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def best(self) -> tuple[int, dict[str, float]] | None:
    """(step, metrics) of the kept step with the highest `best_metric` (the latest of equals);
    None when no step was saved with metrics."""
    step = self.manager.best_step()
    metrics = self.manager.metrics(step) if step is not None else None
    return (step, dict(metrics)) if metrics else None

  def save(self, step: int, saved_state: Any, metrics: Mapping[str, float] | None = None) -> None:
    """Writes `step` (in the background if asynchronous).

    Raises:
      CheckpointError: this write or the previous asynchronous one failed (e.g. disk full).
    """
    self.wait()
    args = ocp.args.Composite(
        **{
            STATE: ocp.args.StandardSave(saved_state),
            CHECKSUMS: ocp.args.JsonSave(checksums(saved_state)),
        }
    )
    self._writing = step
    try:
      # {} for a step without an eval: it scores -inf, and orbax warns only about None.
      self.manager.save(step, args=args, metrics=dict(metrics or {}), force=True)
    except Exception as e:  # pylint: disable=broad-except  (reported with its cause)
      raise self._write_failed(e) from e

  def wait(self) -> None:
    """Blocks until the last write is complete; raises CheckpointError if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  (reported with its cause)
      raise self._write_failed(e) from e
    self._writing = None

  def _write_failed(self, error: Exception) -> CheckpointError:
    self.manager.reload()  # forget the step that failed
    complete = self.steps()
    return CheckpointError(
        f'Writing checkpoint step {self._writing} to {self.manager.directory} failed '
        f'({_brief(error)}). The last complete checkpoint is '
        f'{f"step {complete[-1]}" if complete else "none"}: make room (or fix the directory) '
        'and rerun the same command to resume from it.'
    )

  def restore(self, step: int, abstract_saved_state: Any) -> Any:
    """The saved state of `step` in the form of the target, checked against its checksums.

    Raises:
      CheckpointError: an array differs from its checksum; other errors: unreadable files.
    """
    restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
            **{
                STATE: ocp.args.StandardRestore(abstract_saved_state),
                CHECKSUMS: ocp.args.JsonRestore(),
            }
        ),
    )
    expected, actual = restored[CHECKSUMS], checksums(restored[STATE])
    differ = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
    if differ:
      raise CheckpointError(
          f'{len(differ)} arrays differ from the checksums saved with them ' f'(first: {differ[0]})'
      )
    return restored[STATE]

  def restore_latest(self, abstract_saved_state: Any) -> Any | None:
    """The newest step that restores intact, None if there is no step.

    Newer steps that fail to restore are reported and moved aside once an older one restores.

    Raises:
      CheckpointError: steps exist but none restores (never silently starts over); they stay.
    """
    failures: list[tuple[int, str]] = []
    for step in reversed(self.steps()):
      try:
        restored = self.restore(step, abstract_saved_state)
      except Exception as e:  # pylint: disable=broad-except  (any damage: fall back)
        failures.append((step, _brief(e)))
        continue
      for failed, reason in failures:
        _report_damaged(self._directory, failed, reason, self.set_aside(failed, DAMAGED))
      return restored
    if failures:
      raise _none_restores(self._directory, [f'step {s}: {reason}' for s, reason in failures])
    return None

  def set_aside(self, step: int, tag: str) -> str:
    """Moves `step` out of the resumable steps, kept for inspection as '<step>.<tag>'."""
    self.wait()
    kept = _move_aside(self._directory, step, tag)
    self.manager.reload()
    return kept

  def close(self) -> None:
    self.manager.close()


def _process_local_checkpointer() -> ocp.StandardCheckpointer:
  # Parameter directories are written and read by one process alone (the chief exports, any
  # process converts or predicts): no barrier with processes that are not taking part.
  me = jax.process_index()
  return ocp.StandardCheckpointer(
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          primary_host=me, active_processes={me}, barrier_sync_key_prefix=f'params{me}'
      )
  )


def save_params(
    directory: str | os.PathLike[str], params: Any, model_config: Mapping[str, Any]
) -> None:
  """Writes `params` and the model config they fit, to `<directory>.tmp` renamed when complete.

  Locally the directory appears only when complete; on gs:// the rename copies each object, so a
  reader at that moment may see part of it.

  Process-local: call it from one process (e.g. the chief) only.
  """
  directory = epath.Path(workdir_lib.resolve_path(directory))
  tmp = directory.parent / f'{directory.name}.tmp'
  tmp.rmtree(missing_ok=True)
  tmp.mkdir(parents=True)
  with _process_local_checkpointer() as ckptr:
    ckptr.save(tmp / PARAMS, jax.tree.map(np.asarray, params))
    ckptr.wait_until_finished()
  with (tmp / MODEL_CONFIG).open('w') as f:
    json.dump(dict(model_config), f, indent=2, sort_keys=True)
  directory.rmtree(missing_ok=True)
  tmp.rename(directory)


def load_params(directory: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
  """(params as numpy arrays, model config) from a directory written by `save_params`."""
  config_path = epath.Path(directory) / MODEL_CONFIG
  if not config_path.exists():
    raise FileNotFoundError(
        f'{config_path} not found: {os.fspath(directory)} is not a parameter directory. Make '
        'one with `python -m feadapter_jax.convert --checkpoint PYTORCH_FILE --out DIR`, or '
        "point to a training workdir's export/ folder."
    )
  model_config = json.loads(config_path.read_text())
  with _process_local_checkpointer() as ckptr:
    params = ckptr.restore(epath.Path(workdir_lib.resolve_path(directory)) / PARAMS)
  return jax.tree.map(np.asarray, params), model_config


def _size(path: epath.Path) -> int:
  # The end offset rather than stat(): epath's local stat() fails for a uid with no user name.
  with path.open('rb') as f:
    f.seek(0, os.SEEK_END)
    return f.tell()


def directory_bytes(directory: str | os.PathLike[str]) -> int:
  """The bytes of every file under `directory` (local or a URI)."""
  return sum(_size(path) for _, path in _files(epath.Path(directory)))
