"""Model selection on validation data, never on the test split: a held-out slice of the train
split (never trained on), the checkpoint kept as best, and results.json's labelled figures."""

import glob
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from configs import common
from feadapter_jax import checkpoint
from feadapter_jax import cli
from feadapter_jax import kfold
from feadapter_jax import train
from feadapter_jax.data import pipeline
from feadapter_jax.data.synth_fer import builder as synth_builder
from feadapter_jax.data.synth_fer import render as synth_render

NUM_TRAIN, PER_CLASS = 28, 4  # SynthFER's labels are balanced: 4 clips of each of 7 classes
QUICK = 'configs/synthetic.py:quick,init='


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def data_config(data_dir, **overrides):
  config = common.data_defaults()
  config.update(data_dir=data_dir, num_frames=2, image_size=16, shuffle_buffer=8)
  config.synth = ml_collections.ConfigDict(
      dict(num_train=NUM_TRAIN, num_validation=7, num_test=7, num_frames=2, resolution=16, seed=0)
  )
  config.update(overrides)
  return config


def train_ids():
  return {synth_builder.clip_name('train', i).encode() for i in range(NUM_TRAIN)}


def test_held_out_slice_is_a_seeded_part_of_every_class(data_dir):
  config = data_config(data_dir, val_fraction=0.25)
  held = pipeline.held_out_ids(config)
  assert held < train_ids() and held == pipeline.held_out_ids(config.copy_and_resolve_references())
  batches = pipeline.make_eval_dataset(
      config, pipeline.HELD_OUT, batch_size=7, process_index=0, process_count=1
  ).as_numpy_iterator()
  (batch,) = list(batches)
  assert set(batch['clip_id']) == held
  assert sorted(batch['label']) == list(range(7))  # round(0.25 * 4) = 1 of each class
  other_seed = pipeline.held_out_ids(data_config(data_dir, val_fraction=0.25, val_seed=1))
  assert len(other_seed) == 7 and other_seed != held
  assert pipeline.split_size(config, pipeline.HELD_OUT) == 7
  assert pipeline.split_size(config, 'train') == NUM_TRAIN - 7
  assert pipeline.validation_split(config) == pipeline.HELD_OUT


@pytest.mark.parametrize('process_count', [1, 2])
def test_held_out_clips_are_never_trained_on_and_are_what_validation_reads(data_dir, process_count):
  config = data_config(data_dir, val_fraction=0.25)
  held = pipeline.held_out_ids(config)
  kept = train_ids() - held
  trained, validated, batch_counts = [], [], set()
  for process in range(process_count):
    stream = pipeline.make_train_dataset(
        config, batch_size=1, seed=0, process_index=process, process_count=process_count
    )
    # Three epochs of this process's shard: its kept clips only, each epoch a permutation.
    ids = [b['clip_id'][0] for b in stream.take(3 * len(kept)).as_numpy_iterator()]
    assert not held & set(ids)
    trained.append(set(ids))
    if process_count == 1:
      assert sorted(ids[: len(kept)]) == sorted(kept)
    batches = list(
        pipeline.make_eval_dataset(
            config,
            pipeline.HELD_OUT,
            batch_size=2,
            process_index=process,
            process_count=process_count,
        ).as_numpy_iterator()
    )
    batch_counts.add(len(batches))
    validated += [i for b in batches for i, m in zip(b['clip_id'], b['mask']) if m]
  assert set.union(*trained) == kept and sum(map(len, trained)) == len(kept)  # disjoint shards
  assert sorted(validated) == sorted(held) and len(batch_counts) == 1


@pytest.mark.parametrize(
    'overrides, message',
    [
        (dict(val_fraction=1.0), r'val_fraction=1.0: allowed values are in \(0, 1\)'),
        (
            dict(val_fraction=0.1),
            r"leaves class 'Happy' \(4 examples in 'train'\) without a validation example: "
            r'raise config.data.val_fraction',
        ),
        (dict(val_fraction=0.9), r'without a training example: lower config.data.val_fraction'),
        (dict(val_split='test'), r"val_split='test' is the test split"),
        (dict(val_split='validation', val_fraction=0.1), r'both set'),
        (dict(val_split='dev'), r"config.data.val_split='dev' is no split of synth_fer"),
    ],
)
def test_a_bad_validation_setting_is_one_clear_error(data_dir, overrides, message):
  assert synth_render.CLASS_NAMES[0] == 'Happy'
  with pytest.raises(pipeline.DataConfigError, match=message) as error:
    pipeline.check_data(data_config(data_dir, **overrides))
  assert '\n' not in str(error.value)


def test_a_class_left_without_validation_stops_training_before_it_starts(tmp_path, data_dir):
  config = cli.load_config(QUICK, {'data.data_dir': data_dir, 'data.val_split': ''})
  config.data.synth.update(num_train=32, num_validation=32, num_test=32, resolution=16)
  config.data.val_fraction = 0.01
  with pytest.raises(pipeline.DataConfigError, match="leaves class 'Happy'"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_best_is_the_highest_metric_and_the_latest_of_equals(tmp_path):
  ckpts = checkpoint.Checkpoints(tmp_path, keep_last=1, asynchronous=False)
  assert ckpts.best() is None
  for step, metrics in ((1, {'uar': 0.3}), (2, {'uar': 0.5}), (3, None), (4, {'uar': 0.5})):
    ckpts.save(step, {'x': jnp.full((2,), step)}, metrics)
  assert ckpts.best() == (4, {'uar': 0.5})
  ckpts.save(5, {'x': jnp.zeros((2,))}, {'uar': 0.1})
  assert ckpts.best() == (4, {'uar': 0.5}) and ckpts.steps() == [4, 5]
  ckpts.close()


def events(workdir):
  """{tag: {step: value}} of the run's TensorBoard events (images: their encoded size)."""
  found = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        found.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
  return found


def eval_lines(out, split):
  """{step: UAR} of the printed evaluations of `split` (4 decimals)."""
  return {
      int(line.split()[2][:-1]): float(line.split()[4])
      for line in out.splitlines()
      if line.startswith('eval step ') and line.endswith(f' {split} clips)')
  }


def test_results_hold_the_final_and_the_validation_selected_test_figures(
    tmp_path, data_dir, capsys, monkeypatch
):
  """A run without validation data evaluates the test split at steps 2 and 4 and selects
  nothing; the same training with SynthFER's validation split reports the final step and the
  step validation selected, whose test figures are the first run's at that step."""
  overrides = {
      'data.data_dir': data_dir,
      'data.synth.num_train': 32,
      'data.synth.num_validation': 32,
      'data.synth.num_test': 32,
      'data.synth.resolution': 16,
      'data.image_size': 16,
      'model.image_size': 16,
      'model.width': 32,
      'model.depth': 2,
      'model.num_heads': 2,
      'model.mlp_dim': 64,
      'model.adapter.width': 8,
      'batch_size': 16,
      'eval_batch_size': 32,
      'checkpoint_async': False,
      'total_steps': 4,
      'eval_every_steps': 2,
      'log_every_steps': 2,
      # No warm-up and a large step: the predictions at steps 2 and 4 differ.
      'optim.warmup_epochs': 0.0,
      'optim.lr': 0.03,
  }
  unselected = train.train_and_evaluate(
      cli.load_config(QUICK, {**overrides, 'data.val_split': '', 'log_every_steps': 1}),
      str(tmp_path / 'test_only'),
  )
  test_uar = eval_lines(capsys.readouterr().out, 'test')
  assert sorted(test_uar) == [2, 4]
  assert unselected['validation_split'] is None and 'selected' not in unselected
  assert unselected['final'] == {'step': 4, 'uar': unselected['uar'], 'war': unselected['war']}
  assert unselected['uar'] == pytest.approx(test_uar[4], abs=5e-5)
  assert checkpoint.Checkpoints(tmp_path / 'test_only' / 'checkpoints', keep_last=2).best() is None

  # Step 2 selected whatever the scores, so that the restore of an earlier step is what is tested.
  real_best = checkpoint.Checkpoints.best
  chosen = []

  def best(self):
    chosen.append(real_best(self))
    return 2, self.manager.metrics(2)

  monkeypatch.setattr(checkpoint.Checkpoints, 'best', best)
  workdir = str(tmp_path / 'selected')
  results = train.train_and_evaluate(cli.load_config(QUICK, overrides), workdir)
  out = capsys.readouterr().out
  val_uar = eval_lines(out, 'validation')
  assert sorted(val_uar) == [2, 4] and results['validation_split'] == 'validation'
  # The real choice: the best validation UAR, the later step of equals.
  ((best_step, best_metrics),) = chosen
  assert best_step == max(val_uar, key=lambda s: (val_uar[s], s))
  assert best_metrics['uar'] == pytest.approx(val_uar[best_step], abs=5e-5)
  # The top level and `final`: the final step, as trained without validation data.
  assert results['final'] == unselected['final'] and results['step'] == 4
  assert results['confusion_matrix'] == unselected['confusion_matrix']
  selected = results['selected']
  assert selected['step'] == 2 and selected['val_uar'] == pytest.approx(val_uar[2], abs=5e-5)
  assert selected['uar'] == pytest.approx(test_uar[2], abs=5e-5)
  assert selected['num_examples'] == 32
  assert selected['confusion_matrix'] != results['confusion_matrix']  # step 2 is not step 4
  assert np.asarray(selected['confusion_matrix']).sum() == 32
  assert 'Selected by validation UAR' in out
  logs, unselected_logs = events(workdir), events(str(tmp_path / 'test_only'))
  assert {'val/uar', 'val/war', 'test/uar', 'test/war', 'test/selected_uar'} <= logs.keys()
  assert {'test/uar', 'test/war'} <= unselected_logs.keys() and 'val/uar' not in unselected_logs
  assert float(logs['test/selected_uar'][4]) == pytest.approx(selected['uar'])
  # Per-class recall and the confusion matrix at every evaluation.
  assert sorted(logs['val/recall/Happy']) == [2, 4] and sorted(logs['val/confusion_matrix']) == [
      2,
      4,
  ]
  # Logged every 2 steps: the mean of the two steps the run logging every step shows.
  loss, every_step = logs['train/loss'], unselected_logs['train/loss']
  assert sorted(loss) == [2, 4] and sorted(every_step) == [1, 2, 3, 4]
  for step in (2, 4):
    expected = (every_step[step - 1] + every_step[step]) / 2
    np.testing.assert_allclose(loss[step], expected, rtol=1e-6)
  # No warm-up: the schedule's cosine from optim.lr, at the update each logged step applied.
  np.testing.assert_allclose(
      float(logs['train/lr'][2]), 0.03 * (0.01 + 0.99 * (1 + np.cos(np.pi / 4)) / 2), rtol=1e-6
  )
  assert any(tag.startswith('_hparams_') for tag in logs)


def test_kfold_prints_the_final_and_the_selected_tables():
  folds = {
      1: {'uar': 0.5, 'war': 0.6, 'selected': {'step': 2, 'uar': 0.7, 'war': 0.8}},
      2: {'uar': 0.7, 'war': 0.8, 'selected': {'step': 4, 'uar': 0.5, 'war': 0.6}},
  }
  final, selected = kfold.tables(folds).split('\n\n')
  assert final.startswith('Test at the final step:') and '| 1 | 50.00 | 60.00 |' in final
  assert selected.startswith('Test at the step validation selected:')
  assert '| 1 | 70.00 | 80.00 |' in selected and '| mean | 60.00 +- 10.00 |' in selected
  del folds[2]['selected']
  assert 'left out, without validation data: folds [2]' in kfold.tables(folds)
  del folds[1]['selected']
  assert kfold.tables(folds).endswith('(no fold has validation data)')
