"""Several processes on one machine (a pod in miniature, gloo collectives on CPU)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def env():
  e = dict(os.environ, PYTHONUNBUFFERED='1')
  e.pop('XLA_FLAGS', None)
  return e


def launch(args_per_process, timeout=600):
  procs = [
      subprocess.Popen(
          args, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
      )
      for args in args_per_process
  ]
  outs = [p.communicate(timeout=timeout) for p in procs]
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def test_two_processes_of_four_devices_step_like_one_process_of_eight():
  worker = os.path.join('tests', 'multihost_worker.py')
  port = free_port()
  ((rc, out, err),) = launch([[sys.executable, worker, '0', '1', str(port), '8']])
  assert rc == 0, err[-2000:]
  single = json.loads(out.strip().splitlines()[-1])
  results = launch([[sys.executable, worker, str(i), '2', str(port), '4'] for i in range(2)])
  for rc, _, err in results:
    assert rc == 0, err[-2000:]
  multi = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
  assert single['devices'] == multi[0]['devices'] == multi[1]['devices'] == 8
  np.testing.assert_allclose(multi[0]['losses'], single['losses'], rtol=1e-5)
  assert multi[0]['losses'] == multi[1]['losses']
  assert single['losses'][-1] < single['losses'][0]


def test_trainer_runs_collectively_on_two_processes(tmp_path):
  port = free_port()
  data_dir = str(tmp_path / 'tfds')
  # Prepare the data once first: several processes must not build one dataset concurrently.
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from feadapter_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  config = synthetic.get_config('quick,init=')
  config.data.data_dir = data_dir
  pipeline.get_builder(config.data)
  workdir = str(tmp_path / 'run')
  common = [
      '-m',
      'feadapter_jax.main',
      '--config=configs/synthetic.py:quick,init=',
      f'--workdir={workdir}',
      f'--config.data.data_dir={data_dir}',
      '--config.model.width=32',
      '--config.model.depth=2',
      '--config.model.num_heads=2',
      '--config.model.mlp_dim=64',
      '--config.model.adapter.width=8',
      '--config.total_steps=4',
      '--config.log_every_steps=2',
      '--config.eval_every_steps=4',
      '--config.distributed.initialize=True',
      f'--config.distributed.coordinator_address=localhost:{port}',
      '--config.distributed.num_processes=2',
  ]
  results = launch(
      [[sys.executable, *common, f'--config.distributed.process_id={i}'] for i in range(2)]
  )
  for rc, _, err in results:
    assert rc == 0, err[-3000:]
  chief_out, other_out = results[0][1], results[1][1]
  assert 'Results (final step, test): UAR' in chief_out and 'step 4/4' in chief_out
  assert 'Results' not in other_out and 'step 4/4' not in other_out  # only process 0 reports
  with open(os.path.join(workdir, 'results.json')) as f:
    results_json = json.load(f)
  assert results_json['num_examples'] == 64 and results_json['step'] == 4
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '4'))
