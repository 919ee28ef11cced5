"""Fixtures shared by the fault-injection tests: a compilation cache, prepared SynthFER data and
an uninterrupted run."""

import pytest

pytest.register_assert_rewrite('tests.reliability.harness')  # its checks explain failures too

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import synthetic
from feadapter_jax.data import pipeline
from tests import test_train
from tests.reliability import harness


@pytest.fixture(scope='package', autouse=True)
def compilation_cache(tmp_path_factory):
  """A JAX compilation cache shared by the trainer subprocesses (they inherit os.environ):
  a relaunch reuses the compiled steps, about half of its CPU time. The same executables run,
  so bitwise comparisons still hold."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path_factory.mktemp('jax_cache')))
    patch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
    patch.setenv('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
    yield


@pytest.fixture(scope='package')
def data_dir(tmp_path_factory) -> str:
  """SynthFER prepared once, before any trainer (several processes must not build it at once)."""
  path = str(tmp_path_factory.mktemp('tfds'))
  config = synthetic.get_config('quick,init=')
  config.data.data_dir = path
  pipeline.get_builder(config.data)
  return path


@pytest.fixture(scope='package')
def reference(tmp_path_factory, data_dir) -> str:
  """The workdir of an uninterrupted run of `harness.STEPS` (checkpoints at steps 8 and 12)."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  proc = test_train.run(workdir, data_dir, harness.CONFIG, *harness.STEPS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir
