"""The trainer on 8 CPU devices with data, data x fsdp and fsdp meshes set on the command line:
the pipeline places batches as the jitted steps take them, and the losses agree across meshes."""

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from feadapter_jax import sharding
from feadapter_jax.data import pipeline
from tests.test_train import TINY_ARGS  # both batch sizes divide over the 8 devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = ('data=8', 'data=2,fsdp=4', 'fsdp=8')
STEPS = 4


@pytest.mark.parametrize('spec', MESHES)
def test_the_pipeline_places_batches_as_the_steps_take_them(spec):
  mesh = sharding.make_mesh(spec)
  batch = {'video': np.zeros((16, 2, 4, 4, 3), np.float32), 'label': np.arange(16, dtype=np.int32)}
  arrays = pipeline.to_global_arrays(batch, mesh)
  expected = sharding.batch_sharding(mesh)
  for array in arrays.values():
    assert array.sharding == expected
    assert len(array.addressable_shards) == 8
  # The trainer's steps take batches with `in_shardings=batch_sharding`; a committed batch with
  # any other sharding is refused there.
  step = jax.jit(lambda b: b['video'].sum() + b['label'].sum(), in_shardings=(expected,))
  assert float(step(arrays)) == float(np.arange(16).sum())


def _train(workdir, data_dir, mesh):
  env = dict(os.environ, PYTHONUNBUFFERED='1', XLA_FLAGS='--xla_force_host_platform_device_count=8')
  command = [
      sys.executable,
      '-m',
      'feadapter_jax.main',
      '--config=configs/synthetic.py:quick',
      f'--workdir={workdir}',
      f'--config.data.data_dir={data_dir}',
      f'--config.mesh={mesh}',
      '--config.sharding_rules=.*=fsdp',
      f'--config.total_steps={STEPS}',
      '--config.log_every_steps=1',
      *TINY_ARGS,
  ]
  return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _train_losses(workdir):
  """{step: loss} from the run's TensorBoard events: float32, where stdout rounds to 4 digits."""
  losses = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == 'train/loss':
          losses[event.step] = float(tf.make_ndarray(value.tensor))
  return losses


@pytest.mark.slow
def test_training_on_data_fsdp_and_mixed_meshes_gives_the_same_losses(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  losses = {}
  for mesh in MESHES:
    workdir = str(tmp_path / mesh.replace('=', '').replace(',', '_'))
    proc = _train(workdir, data_dir, mesh)
    assert proc.returncode == 0, f'{mesh}:\n{proc.stderr[-3000:]}'
    steps = [line for line in proc.stdout.splitlines() if line.startswith('step ')]
    assert len(steps) == STEPS, proc.stdout
    assert f'eval step {STEPS}: UAR' in proc.stdout, proc.stdout
    with open(os.path.join(workdir, 'results.json')) as f:
      results = json.load(f)
    assert results['step'] == STEPS and results['num_examples'] == 64
    losses[mesh] = _train_losses(workdir)
    assert sorted(losses[mesh]) == list(range(1, STEPS + 1)), losses[mesh]
  reference = losses[MESHES[0]]
  for mesh in MESHES[1:]:
    np.testing.assert_allclose(
        [losses[mesh][s] for s in sorted(reference)],
        [reference[s] for s in sorted(reference)],
        rtol=1e-5,
        err_msg=mesh,
    )
