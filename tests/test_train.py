"""The trainer end to end on SynthFER with a tiny ViT: learning, resume after a real kill,
SIGTERM checkpoint, NaN stop, results and exports."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from feadapter_jax import checkpoint
from feadapter_jax import kfold
from feadapter_jax import partition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ARGS = [
    '--config.model.width=32',
    '--config.model.depth=2',
    '--config.model.num_heads=2',
    '--config.model.mlp_dim=64',
    '--config.model.adapter.width=8',
    '--config.batch_size=16',
    '--config.eval_batch_size=32',
    '--config.checkpoint_async=False',
]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def command(workdir, data_dir, config='configs/synthetic.py:quick,init=', *overrides):
  return [
      sys.executable,
      '-m',
      'feadapter_jax.main',
      f'--config={config}',
      f'--workdir={workdir}',
      f'--config.data.data_dir={data_dir}',
      *TINY_ARGS,
      *overrides,
  ]


def env():
  # One CPU device per process: identical XLA programs in every run of a comparison.
  e = dict(os.environ, PYTHONUNBUFFERED='1')
  e.pop('XLA_FLAGS', None)
  return e


def run(*args, **kw):
  proc = subprocess.run(
      command(*args, **kw), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600
  )
  return proc


def read_results(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def test_training_learns_and_writes_results(tmp_path, data_dir):
  # The image pre-training recipe with the demo's tiny ViT: learns within seconds.
  wd = str(tmp_path / 'run')
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'feadapter_jax.main',
          '--config=configs/synthetic_image.py',
          f'--workdir={wd}',
          f'--config.data.data_dir={data_dir}',
          '--config.total_steps=60',
          '--config.log_every_steps=10',
          '--config.eval_every_steps=60',
      ],
      cwd=ROOT,
      env=env(),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  losses = [
      float(line.split('loss ')[1].split(' ')[0])
      for line in proc.stdout.splitlines()
      if line.startswith('step ')
  ]
  assert len(losses) == 6 and losses[-1] < losses[0] - 0.2, proc.stdout
  assert 'ETA' in proc.stdout and 'clips/s' in proc.stdout
  results = read_results(wd)
  assert results['war'] > 0.3 and results['uar'] > 0.3  # chance: 1/7 (sd 0.02 at 280)
  assert 0 <= results['uar'] <= 1 and results['num_examples'] == 280
  assert np.asarray(results['confusion_matrix']).sum() == 280
  assert results['step'] == 60
  for name in ('confusion_matrix.png', 'config.json', 'export/model_config.json'):
    assert os.path.exists(os.path.join(wd, name)), name
  # The export is the video configs' backbone: it records the normalisation they take from it.
  with open(os.path.join(wd, 'export', 'model_config.json')) as f:
    exported = json.load(f)
  assert exported['mean'] == [0.5] * 3 and exported['std'] == [0.25] * 3
  assert exported['width'] == 96 and exported['layer_norm_eps'] == 1e-6
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(wd))


def final_params(workdir):
  params, _ = checkpoint.load_params(os.path.join(workdir, 'export'))
  return params


STEPS = [
    '--config.total_steps=12',
    '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=4',
    '--config.eval_every_steps=100',
    # Every part of the training recipe on: the resumed run must still repeat the reference.
    '--config.data.randaugment=rand-m9-n2-mstd0.5-inc1',
    '--config.data.color_jitter=0.3',
    '--config.data.erase_prob=0.5',
    '--config.data.sampling=class_balanced',
    '--config.mixup.mixup_alpha=0.8',
    '--config.mixup.cutmix_alpha=1.0',
    '--config.class_weights=balanced',
    '--config.ema_decay=0.9',
]


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir):
  """An uninterrupted 12-step FE-Adapter run."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  proc = run(workdir, data_dir, 'configs/synthetic.py:quick,init=', *STEPS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_exported_adapters_on_the_backbone_reproduce_the_results(reference):
  proc = subprocess.run(
      [sys.executable, '-m', 'feadapter_jax.evaluate', f'--workdir={reference}'],
      cwd=ROOT,
      env=env(),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(reference, 'results_test_1clip.json')) as f:
    again = json.load(f)
  results = read_results(reference)
  assert again['confusion_matrix'] == results['confusion_matrix']
  assert again['uar'] == results['uar']
  # The export holds the trainable parameters only: a small fraction of the model.
  params = final_params(reference)
  assert all('adapter' in n or n.startswith('head') for n in partition.flatten(params))
  assert results['export_bytes'] < 0.5 * 4 * results['total_params']


def test_killed_run_resumes_to_identical_parameters(tmp_path, data_dir, reference):
  steps = STEPS
  killed = str(tmp_path / 'killed')
  proc = subprocess.Popen(
      command(killed, data_dir, 'configs/synthetic.py:quick,init=', *steps),
      cwd=ROOT,
      env=env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
  )
  for line in proc.stdout:
    if line.startswith('step 7/'):
      proc.send_signal(signal.SIGKILL)  # for real: no handler, no cleanup
      break
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(killed, 'results.json'))
  resumed = run(killed, data_dir, 'configs/synthetic.py:quick,init=', *steps)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from step 4' in resumed.stdout
  ref, res = final_params(reference), final_params(killed)
  assert len(jax.tree.leaves(ref)) == len(jax.tree.leaves(res)) > 0
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(res)):
    np.testing.assert_array_equal(a, b)


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path, data_dir):
  wd = str(tmp_path / 'preempted')
  proc = subprocess.Popen(
      command(
          wd,
          data_dir,
          'configs/synthetic.py:quick,init=',
          '--config.total_steps=200',
          '--config.log_every_steps=1',
          '--config.checkpoint_every_steps=1000',
          '--config.eval_every_steps=1000',
      ),
      cwd=ROOT,
      env=env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
  )
  for line in proc.stdout:
    if line.startswith('step 3/'):
      proc.send_signal(signal.SIGTERM)
      break
  out = proc.stdout.read()
  assert proc.wait(timeout=120) == 0
  assert 'Preempted (SIGTERM)' in out
  steps = checkpoint.Checkpoints(os.path.join(wd, 'checkpoints'), keep_last=2).steps()
  assert len(steps) == 1 and 3 <= steps[0] < 200


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
  wd = str(tmp_path / 'nan')
  proc = run(
      wd,
      data_dir,
      'configs/synthetic.py:quick,init=,method=full_finetune',
      '--config.total_steps=30',
      '--config.log_every_steps=1',
      '--config.checkpoint_every_steps=1',
      '--config.eval_every_steps=1000',
      '--config.optim.lr=1e12',
      '--config.optim.grad_clip_norm=0',
      '--config.optim.warmup_epochs=1',
  )  # warm-up starts at lr 0: step 1 is good
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Training loss is nan' in proc.stderr or 'Training loss is inf' in proc.stderr
  assert 'last good checkpoint is step' in proc.stderr
  steps = checkpoint.Checkpoints(os.path.join(wd, 'checkpoints'), keep_last=2).steps()
  assert steps and max(steps) < 30


def test_real_dataset_without_data_stops_with_the_manual_download_message(tmp_path):
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'feadapter_jax.main',
          '--config=configs/dfew.py:fold=2',
          f'--workdir={tmp_path / "dfew"}',
          f'--config.data.data_dir={tmp_path / "tfds"}',
          f'--config.data.manual_dir={tmp_path / "missing"}',
          '--config.init.random_backbone=True',  # past the backbone check, to the data
      ],
      cwd=ROOT,
      env=env(),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 2
  assert 'manual_dir' in proc.stderr and 'Traceback' not in proc.stderr


def test_kfold_table_reports_each_fold_and_the_mean():
  md = kfold.table({1: {'uar': 0.5, 'war': 0.6}, 2: {'uar': 0.7, 'war': 0.8}})
  assert '| 1 | 50.00 | 60.00 |' in md and '| mean | 60.00 +- 10.00 | 70.00 +- 10.00 |' in md


def test_kfold_driver_trains_each_fold_and_resumes_finished_ones(tmp_path, data_dir):
  def kfold_command(config='configs/synthetic.py:quick'):
    return subprocess.run(
        [
            sys.executable,
            '-m',
            'feadapter_jax.kfold',
            f'--config={config}',
            f'--workdir={tmp_path / "k"}',
            '--folds=1,2',
            f'--config.data.data_dir={data_dir}',
            '--config.total_steps=4',
            *TINY_ARGS,
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )

  proc = kfold_command()
  assert proc.returncode == 0, proc.stderr[-3000:]
  for fold in (1, 2):
    results = read_results(str(tmp_path / 'k' / f'fold{fold}'))
    assert results['step'] == 4  # the command line's overrides reach every fold
    config = json.load(open(tmp_path / 'k' / f'fold{fold}' / 'config.json'))
    assert config['model']['width'] == 32 and config['data']['synth']['seed'] == fold
    # Resolved before training: the ViT defaults where the config leaves the backbone's.
    assert config['model']['layer_norm_eps'] == 1e-6 and config['model']['activation'] == 'gelu'
  with open(tmp_path / 'k' / 'kfold.json') as f:
    first = json.load(f)
  assert set(first) == {'1', '2'} and first['1'] != first['2']  # different data per fold
  assert '| mean |' in proc.stdout and 'Test at the step validation selected:' in proc.stdout
  assert first['1']['selected']['step'] == 4  # SynthFER's validation split selects
  mtime = os.path.getmtime(tmp_path / 'k' / 'fold1' / 'results.json')
  # Finished folds are read back, not retrained (in-process: nothing here trains).
  spec = os.path.join(ROOT, 'configs', 'synthetic.py:quick')
  assert kfold.run(spec, str(tmp_path / 'k'), [1, 2]) == kfold.tables(
      {int(k): v for k, v in first.items()}
  )
  assert os.path.getmtime(tmp_path / 'k' / 'fold1' / 'results.json') == mtime
  with pytest.raises(ValueError, match='sets fold'):
    kfold.run(spec + ',fold=3', str(tmp_path / 'k'), [1])
