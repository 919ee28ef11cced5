"""`python -m feadapter_jax.export` on a tiny trained run: the safetensors file and its import
(the same probabilities, bit for bit; a wrong backbone refused), the SavedModel served by
TensorFlow alone and the ONNX file served by ONNX Runtime alone (the eval step's probabilities),
and the command's errors."""

import json
import os
import subprocess
import sys

import jax
from jax.extend import core as jax_core
import numpy as np
import pytest
from safetensors import numpy as safetensors_np

from feadapter_jax import checkpoint
from feadapter_jax import evaluate
from feadapter_jax import export
from feadapter_jax import partition
from feadapter_jax import predict
from feadapter_jax import step as step_lib
from feadapter_jax import workdir as workdir_lib
from feadapter_jax.data import pipeline
from tests import tiny
from tests.test_predict import BACKBONE
from tests.test_predict import MEAN
from tests.test_predict import STD
from tests.test_predict import _clip
from tests.test_predict import train_tiny_run
from tests.test_predict import workdir  # pylint: disable=unused-import  (a fixture)

# Loads the SavedModel with TensorFlow alone, as a server would, and classifies the rows of
# frames.npy; the classes and probabilities go to out.json. JAX cannot be imported there:
# TensorFlow's tf.lite imports it when it is installed, as it is in this environment.
SERVE = r"""
import importlib.abc, json, sys

class NoJax(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in ('jax', 'jaxlib'):
      raise ImportError(f'{name} is blocked: the SavedModel must serve without JAX')

sys.meta_path.insert(0, NoJax())
import numpy as np
import tensorflow as tf
frames_file, model_dir, out = sys.argv[1:]
frames = np.load(frames_file)
model = tf.saved_model.load(model_dir)
serve = model.signatures['serving_default']
probs = [serve(frames=tf.constant(frames[:n]))['probabilities'].numpy() for n in (1, len(frames))]
names = model.signatures['class_names']()['class_names'].numpy()
json.dump({
    'probs_1': probs[0].tolist(),
    'probs': probs[1].tolist(),
    'class_names': [n.decode() for n in names],
    'variable_class_names': [n.decode() for n in model.class_names.numpy()],
    'jax_imported': 'jax' in sys.modules,
}, open(out, 'w'))
"""


# Runs the ONNX file with ONNX Runtime alone on the rows of frames.npy, batch 1 and all rows from
# the one file; the inputs, outputs, metadata and probabilities go to out.json.
SERVE_ONNX = r"""
import importlib.abc, json, sys

class NoJax(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in ('jax', 'jaxlib', 'jax2onnx'):
      raise ImportError(f'{name} is blocked: the ONNX file must serve without JAX')

sys.meta_path.insert(0, NoJax())
import numpy as np
import onnxruntime as ort
frames_file, model_file, out = sys.argv[1:]
frames = np.load(frames_file)
session = ort.InferenceSession(model_file, providers=['CPUExecutionProvider'])
probs = [session.run(['probabilities'], {'frames': frames[:n]})[0] for n in (1, len(frames))]
json.dump({
    'probs_1': probs[0].tolist(),
    'probs': probs[1].tolist(),
    'inputs': [(i.name, i.shape, i.type) for i in session.get_inputs()],
    'outputs': [(o.name, o.shape) for o in session.get_outputs()],
    'metadata': session.get_modelmeta().custom_metadata_map,
    'jax_imported': 'jax' in sys.modules,
}, open(out, 'w'))
"""


def _main(*argv):
  return export.main([str(a) for a in argv])


def _views(config, count=3, num_clips=2):
  """(count, num_clips, t, S, S, 3) uint8 evaluation views of synthetic clips of other sizes
  and lengths than the model's (eval_clip resamples and resizes them)."""
  data = config.data.copy_and_resolve_references()
  data.num_clips = num_clips
  return np.stack(
      [pipeline.eval_clip(_clip(k, 12 + 3 * k, 40), data).numpy() for k in range(count)]
  )


def _serve_alone(script, rows, model, tmp_path):
  """What `script` (SERVE or SERVE_ONNX) writes after serving `rows` from `model` in a fresh
  process where JAX cannot be imported."""
  np.save(tmp_path / 'frames.npy', rows)
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(
      [sys.executable, '-c', script, tmp_path / 'frames.npy', model, tmp_path / 'out.json'],
      env=env,
      cwd=tmp_path,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  served = json.loads((tmp_path / 'out.json').read_text())
  assert not served['jax_imported']
  return served


def _eval_step(workdir):
  config = workdir_lib.load_config(workdir)
  model, params = evaluate.load_trained(workdir, config)
  step = jax.jit(step_lib.make_eval_step(model, mean=config.data.mean, std=config.data.std))
  return config, params, lambda video: np.asarray(step(params, {'video': video}))


@pytest.fixture(scope='module')
def reference(workdir):
  return _eval_step(workdir)


@pytest.fixture(scope='module')
def exported(workdir, tmp_path_factory):
  path = tmp_path_factory.mktemp('exported') / 'adapters.safetensors'
  assert _main(f'--workdir={workdir}', f'--out={path}') == 0
  return str(path)


def test_the_file_holds_the_trainable_parameters_and_what_rebuilds_the_model(workdir, exported):
  tensors, metadata = export.read_safetensors(exported)
  trained, model_config = checkpoint.load_params(os.path.join(workdir, 'export'))

  flat = partition.flatten(trained)
  assert sorted(tensors) == sorted(flat) and any('adapter' in n for n in tensors)
  for name, value in flat.items():
    np.testing.assert_array_equal(tensors[name], value)
  assert json.loads(metadata['model_config']) == model_config
  assert json.loads(metadata['class_names']) == model_config['class_names']
  assert json.loads(metadata['mean']) == list(MEAN) and json.loads(metadata['std']) == list(STD)
  with open(os.path.join(workdir, 'export', 'init.json')) as f:
    init = json.load(f)
  assert json.loads(metadata['trainable']) == init['trainable']
  assert int(metadata['seed']) == init['seed']
  identity = json.loads(metadata['backbone'])
  assert (identity['source'], identity['checkpoint']) == ('timm', 'tests/tiny.py')
  assert identity['architecture'] == dict(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8)
  backbone, _ = checkpoint.load_params(init['backbone'])
  assert metadata['backbone_sha256'] == export.arrays_sha256(backbone)
  # The safetensors loader reads it as any safetensors file.
  assert sorted(safetensors_np.load_file(exported)) == sorted(tensors)
  with open(os.path.join(workdir, 'results.json')) as f:
    full_model_bytes = json.load(f)['full_model_bytes']
  size = os.path.getsize(exported)
  print(f'\nsafetensors {size} bytes, full model {full_model_bytes} bytes')
  assert size < 0.5 * full_model_bytes


def test_an_imported_file_evaluates_and_predicts_as_the_original_run(
    workdir, exported, reference, tmp_path
):
  new = tmp_path / 'imported'
  backbone = os.path.join(os.path.dirname(workdir), 'backbone')

  assert _main(f'--import={exported}', f'--workdir={new}', f'--backbone={backbone}') == 0

  config, params, step = reference
  new_config, new_params, new_step = _eval_step(str(new))
  assert new_config.to_dict() == config.to_dict()  # the same backbone directory, here
  for name, value in partition.flatten(params).items():
    np.testing.assert_array_equal(partition.flatten(new_params)[name], value, err_msg=name)
  views = _views(config)
  np.testing.assert_array_equal(new_step(views), step(views))
  predictor = predict.Predictor(str(new), batch_size=len(views))
  assert predictor.class_names == json.loads(export.read_safetensors(exported)[1]['class_names'])
  np.testing.assert_array_equal(predictor.probabilities(list(views)), step(views))


def test_a_backbone_other_than_the_files_is_refused_naming_both(
    workdir, exported, tmp_path, capsys
):
  other = str(tmp_path / 'other_backbone')
  tiny.write_backbone(other, MEAN, STD, seed=1, num_classes=7, **BACKBONE)
  new = tmp_path / 'imported'

  code = _main(f'--import={exported}', f'--workdir={new}', f'--backbone={other}')

  err = capsys.readouterr().err
  assert code == 2 and err.startswith('error: ') and err.count('\n') == 1, err
  expected = export.read_safetensors(exported)[1]['backbone_sha256']
  assert expected in err and export.backbone_identity(other)['backbone_sha256'] in err
  assert not new.exists()
  assert _main(f'--import={exported}', f'--workdir={new}') == 2
  assert '--backbone' in capsys.readouterr().err


@pytest.fixture(scope='module')
def gelu_workdir(tmp_path_factory):
  """The `workdir` run on a backbone with timm's exact (erf) GELU, as timm's ViTs have."""
  return train_tiny_run(tmp_path_factory.mktemp('gelu_run'), dict(BACKBONE, activation='gelu'))


@pytest.mark.parametrize('activation', ['quick_gelu', 'gelu'])
def test_the_savedmodel_serves_the_eval_steps_probabilities_with_tensorflow_alone(
    activation, request, tmp_path
):
  # The exact GELU's erf is exported as elementary ops: TensorFlow 2.21 cannot read chlo.erf.
  workdir = request.getfixturevalue('workdir' if activation == 'quick_gelu' else 'gelu_workdir')
  reference = _eval_step(workdir)
  out = tmp_path / 'savedmodel'
  assert _main(f'--workdir={workdir}', f'--out={out}', '--format=savedmodel') == 0
  config, _, step = reference
  views = _views(config)  # (3 windows, 2 views, t, S, S, 3)
  rows = views.reshape(-1, *views.shape[2:])

  served = _serve_alone(SERVE, rows, out, tmp_path)

  with open(os.path.join(workdir, 'export', 'model_config.json')) as f:
    class_names = json.load(f)['class_names']
  assert served['class_names'] == served['variable_class_names'] == class_names
  assert (out / 'assets.extra' / 'class_names.txt').read_text().split('\n')[:-1] == class_names
  probs = np.asarray(served['probs'])
  expected = step(rows[:, None])
  difference = np.max(np.abs(probs - expected))
  print(
      f'\nSavedModel ({checkpoint.directory_bytes(out)} bytes) vs JAX eval step: '
      f'max |difference| {difference:.3g}'
  )
  np.testing.assert_allclose(probs, expected, atol=1e-5)
  np.testing.assert_allclose(served['probs_1'], expected[:1], atol=1e-5)
  # A window's views averaged: what evaluation gives the window.
  np.testing.assert_allclose(probs.reshape(3, 2, -1).mean(1), step(views), atol=1e-5)


def test_the_onnx_file_serves_the_eval_steps_probabilities_with_onnx_runtime_alone(
    workdir, exported, reference, tmp_path
):
  out = tmp_path / 'model.onnx'
  assert _main(f'--workdir={workdir}', f'--out={out}', '--format=onnx') == 0
  config, _, step = reference
  views = _views(config)  # (3 windows, 2 views, t, S, S, 3)
  rows = views.reshape(-1, *views.shape[2:])

  served = _serve_alone(SERVE_ONNX, rows, out, tmp_path)

  t, size = config.data.num_frames, config.data.image_size
  assert served['inputs'] == [['frames', ['b', t, size, size, 3], 'tensor(uint8)']]
  assert served['outputs'] == [['probabilities', ['b', config.model.num_classes]]]
  metadata = served['metadata']
  _, safetensors_metadata = export.read_safetensors(exported)
  for key in ('class_names', 'mean', 'std', 'config', 'model_config', 'backbone_sha256'):
    assert metadata[key] == safetensors_metadata[key], key
  with open(os.path.join(workdir, 'export', 'model_config.json')) as f:
    assert json.loads(metadata['class_names']) == json.load(f)['class_names']
  probs = np.asarray(served['probs'])
  expected = step(rows[:, None])
  difference = np.max(np.abs(probs - expected))
  print(
      f'\nONNX ({os.path.getsize(out)} bytes) vs JAX eval step: max |difference| {difference:.3g}'
  )
  assert probs.shape == expected.shape == (6, config.model.num_classes)
  np.testing.assert_allclose(probs, expected, atol=1e-5)
  np.testing.assert_allclose(served['probs_1'], expected[:1], atol=1e-5)


def test_a_primitive_jax2onnx_cannot_convert_is_named_in_one_line(workdir, tmp_path, capsys):
  unknown = jax_core.Primitive('feadapter_test_unconvertible')
  unknown.def_impl(lambda x: x)
  unknown.def_abstract_eval(lambda x: x)
  with pytest.raises(export.ExportError, match="primitive 'feadapter_test_unconvertible'"):
    export.to_onnx_model(lambda frames: unknown.bind(frames * 2), (2, 4, 4, 3), 'unconvertible')

  serving_function = export.serving_function

  def with_unknown_op(directory):
    serve, *rest = serving_function(directory)
    return (lambda params, frames: unknown.bind(serve(params, frames)), *rest)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(export, 'serving_function', with_unknown_op)
    code = _main(f'--workdir={workdir}', f'--out={tmp_path / "model.onnx"}', '--format=onnx')
  err = capsys.readouterr().err
  assert code == 2 and err.startswith('error: ') and err.count('\n') == 1, err
  assert "jax2onnx 0.17.1 cannot convert the JAX primitive 'feadapter_test_unconvertible'" in err
  assert '--format=savedmodel' in err and not (tmp_path / 'model.onnx').exists()


def test_onnx_without_jax2onnx_says_how_to_install_it(workdir, tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, 'jax2onnx', None)  # `import jax2onnx` raises ImportError

  code = _main(f'--workdir={workdir}', f'--out={tmp_path / "model.onnx"}', '--format=onnx')

  err = capsys.readouterr().err
  assert code == 2 and err.startswith('error: ') and err.count('\n') == 1, err
  assert 'pip install --no-deps jax2onnx==0.17.1' in err
  assert 'pip install -c requirements.txt .[onnx]' in err
  assert not (tmp_path / 'model.onnx').exists()


def test_usage_errors_are_one_line_with_exit_status_2(workdir, exported, tmp_path, capsys):
  for argv, says in [
      ([f'--workdir={workdir}', f'--out={exported}', '--format=onnx'], 'already exists'),
      ([f'--workdir={workdir}', f'--out={exported}'], 'already exists'),
      ([f'--workdir={workdir}', f'--out={tmp_path / "x"}', f'--import={exported}'], '--import'),
      ([f'--workdir={tmp_path / "none"}', f'--out={tmp_path / "x"}'], 'config.json'),
      ([f'--workdir={tmp_path / "new"}', f'--import={workdir}/config.json'], 'safetensors'),
  ]:
    code = _main(*argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith('error: ') and err.count('\n') == 1 and says in err, err
