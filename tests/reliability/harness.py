"""Shared machinery of the fault-injection tests: trainer subprocesses watched while they run,
checkpoint inspection, bitwise parameter comparison and a size-limited filesystem."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Callable, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from feadapter_jax import checkpoint
from tests import test_train

ROOT = test_train.ROOT
CONFIG = 'configs/synthetic.py:quick,init='
# The uninterrupted reference of test_train: 12 steps, a checkpoint every 4, one eval at the end.
STEPS = test_train.STEPS
TOTAL_STEPS = 12
_PROGRESS = re.compile(r'step (\d+)/')


class Trainer:
  """A trainer subprocess; a thread collects its output so a test can watch files meanwhile."""

  def __init__(self, args: list[str]):
    self.proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env=test_train.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    self.lines: list[str] = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self) -> None:
    for line in self.proc.stdout:
      self.lines.append(line)

  @property
  def output(self) -> str:
    return ''.join(self.lines)

  def reached(self, step: int) -> bool:
    """Whether it printed the progress line of `step` or of a later one."""
    return any(m and int(m.group(1)) >= step for m in map(_PROGRESS.match, list(self.lines)))

  def wait_until(self, condition: Callable[[], bool], timeout: float = 300) -> bool:
    """Polls `condition` (every millisecond: a save lasts tens of them); False if it exited."""
    deadline = time.monotonic() + timeout
    while not condition():
      if self.proc.poll() is not None:
        return condition()
      if time.monotonic() > deadline:
        self.proc.kill()
        raise TimeoutError(f'condition not met in {timeout} s; output:\n{self.output[-3000:]}')
      time.sleep(0.001)
    return True

  def finish(self, timeout: float = 300) -> int:
    returncode = self.proc.wait(timeout=timeout)
    self._reader.join()
    return returncode


def trainer(workdir, data_dir, *overrides: str, config: str = CONFIG) -> Trainer:
  return Trainer(test_train.command(str(workdir), data_dir, config, *overrides))


def partial_steps(ckpt_dir) -> list[str]:
  """Orbax's temporary directories: steps whose writing has not completed."""
  if not os.path.isdir(ckpt_dir):
    return []
  return [n for n in os.listdir(ckpt_dir) if ocp.path.step.TMP_DIR_SUFFIX in n]


def complete_steps(ckpt_dir) -> list[int]:
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def assert_checkpoints_intact(ckpt_dir) -> list[int]:
  """Every complete step restores and matches its checksums; returns the steps.

  Inspects a copy: opening the directory itself would clean up its partial steps.
  """
  steps = complete_steps(ckpt_dir)
  with tempfile.TemporaryDirectory() as scratch:
    for step in steps:
      shutil.copytree(os.path.join(ckpt_dir, str(step)), os.path.join(scratch, str(step)))
    ckpts = checkpoint.Checkpoints(scratch, keep_last=len(steps) + 1, asynchronous=False)
    for step in steps:
      with ocp.StandardCheckpointer() as reader:  # numpy, whatever process count wrote it
        saved = reader.metadata(os.path.join(scratch, str(step), checkpoint.STATE)).item_metadata
      target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), saved)
      assert int(ckpts.restore(step, target)['step']) == step, f'step {step} of {ckpt_dir}'
    ckpts.close()
  return steps


def assert_same_params(workdir, reference_workdir) -> None:
  """The exported trainable parameters of two runs are bitwise equal."""
  ref, res = test_train.final_params(reference_workdir), test_train.final_params(workdir)
  assert jax.tree.structure(ref) == jax.tree.structure(res)
  assert jax.tree.leaves(ref)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(res)):
    np.testing.assert_array_equal(a, b)


def copy_checkpoints(reference_workdir, workdir, steps: list[int] | None = None) -> str:
  """Copies the reference's checkpoints (`steps`, default all) into a fresh workdir."""
  source = os.path.join(reference_workdir, 'checkpoints')
  target = os.path.join(workdir, 'checkpoints')
  os.makedirs(target, exist_ok=True)
  for step in steps or complete_steps(source):
    shutil.copytree(os.path.join(source, str(step)), os.path.join(target, str(step)))
  return target


@contextlib.contextmanager
def small_filesystem(path, size_bytes: int) -> Iterator[str]:
  """A tmpfs of `size_bytes` mounted at `path` (skips the test where mounting is not allowed)."""
  os.makedirs(path, exist_ok=True)
  mounted = shutil.which('mount') and subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', f'size={size_bytes}', 'tmpfs', str(path)],
      capture_output=True,
      text=True,
  )
  if not mounted or mounted.returncode:
    pytest.skip('cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)')
  try:
    yield str(path)
  finally:
    subprocess.run(['umount', '-l', str(path)], check=True)
