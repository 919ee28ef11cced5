"""The trainer on 8 CPU devices with data, data x fsdp and fsdp meshes set on the command line:
the pipeline places batches as the jitted steps take them, and the losses agree across meshes."""

import ast
import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from feadapter_jax import cli
from feadapter_jax import evaluate
from feadapter_jax import sharding
from feadapter_jax import train
from feadapter_jax.data import pipeline
from tests.test_train import TINY_ARGS  # both batch sizes divide over the 8 devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(ROOT, 'configs', 'synthetic.py') + ':quick'
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


def _cli(*args):
  env = dict(os.environ, PYTHONUNBUFFERED='1', XLA_FLAGS='--xla_force_host_platform_device_count=8')
  command = [
      sys.executable,
      '-m',
      'feadapter_jax.main',
      '--config=configs/synthetic.py:quick',
      *args,
  ]
  return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _overrides(data_dir, mesh):
  return {
      'data.data_dir': data_dir,
      'mesh': mesh,
      'sharding_rules': '.*=fsdp',
      'total_steps': STEPS,
      'log_every_steps': 1,
      **{
          k.removeprefix('--config.'): ast.literal_eval(v)
          for k, v in (a.split('=', 1) for a in TINY_ARGS)
      },
  }


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
def test_training_on_data_fsdp_and_mixed_meshes_gives_the_same_losses(tmp_path, capsys):
  """The fsdp-only mesh through the command line, the others in this process (8 CPU devices)."""
  data_dir = str(tmp_path / 'tfds')
  losses, workdirs = {}, {}
  for mesh in MESHES:
    workdir = workdirs[mesh] = str(tmp_path / mesh.replace('=', '').replace(',', '_'))
    if mesh == 'fsdp=8':
      proc = _cli(
          f'--workdir={workdir}',
          *(f'--config.{k}={v}' for k, v in _overrides(data_dir, mesh).items()),
      )
      assert proc.returncode == 0, f'{mesh}:\n{proc.stderr[-3000:]}'
      out = proc.stdout
    else:
      train.train_and_evaluate(cli.load_config(QUICK, _overrides(data_dir, mesh)), workdir)
      out = capsys.readouterr().out
    steps = [line for line in out.splitlines() if line.startswith('step ')]
    assert len(steps) == STEPS, out
    assert f'eval step {STEPS}: UAR' in out, out
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
  # Evaluating the FSDP run lays its parameters out by its rules and scores as training did.
  workdir = workdirs['data=2,fsdp=4']
  with open(os.path.join(workdir, 'results.json')) as f:
    trained = json.load(f)
  again = evaluate.evaluate_workdir(workdir, 'test')
  assert (again['uar'], again['war'], again['num_examples']) == (
      trained['uar'],
      trained['war'],
      trained['num_examples'],
  )


def test_params_are_laid_out_by_the_rules_outside_the_train_state():
  mesh = sharding.make_mesh('data=2,fsdp=4')
  params = {
      'blocks_0': {'kernel': jax.ShapeDtypeStruct((8, 12), np.float32)},
      'head': {'bias': jax.ShapeDtypeStruct((3,), np.float32)},
  }
  shardings = sharding.params_shardings(params, mesh, 'params/blocks_.*=fsdp,.*=replicate')
  assert shardings['blocks_0']['kernel'].spec == jax.sharding.PartitionSpec(None, 'fsdp')
  assert shardings['head']['bias'].spec == jax.sharding.PartitionSpec()
  # The same as in the train state.
  state = sharding.state_shardings(
      {'params': params, 'step': 0}, mesh, 'params/blocks_.*=fsdp,.*=replicate'
  )
  assert state['params'] == shardings


@pytest.mark.parametrize(
    'override, message',
    [
        ('--config.mesh=data=3', "error: config.mesh='data=3' needs 3 devices, there are 8."),
        (
            '--config.sharding_rules=.*=shard',
            "error: config.sharding_rules='.*=shard': unknown strategy 'shard' for '.*'",
        ),
    ],
)
def test_a_bad_mesh_on_the_command_line_stops_with_one_line(tmp_path, override, message):
  proc = _cli(f'--workdir={tmp_path}', override)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(os.path.join(tmp_path, 'config.json'))  # stopped before writing
