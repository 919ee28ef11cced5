"""The path a user with a CLIP or DINOv2 image emotion classifier takes: convert it, adapt it to
video with FE-Adapter, evaluate, predict, all with the backbone's own settings.

The classifiers are tiny ViTs of each family pre-trained here on SynthFER's images (the image
stage, `configs/synthetic_image.py`, with the family's options) and written out as their
library saves them: a Hugging Face CLIP vision tower directory (config.json with QuickGELU,
preprocessor_config.json with the normalisation, safetensors weights without a patch bias), and
a timm DINOv2-with-registers state dict (patch 14, LayerScale; normalisation given to convert).
Each is converted with `python -m feadapter_jax.convert` and adapted with `feadapter_jax.main`.
"""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from feadapter_jax import checkpoint
from feadapter_jax import evaluate
from feadapter_jax import predict
from feadapter_jax import step
from feadapter_jax.convert import __main__ as convert_main
from feadapter_jax.data.synth_fer import render as synth_render

transformers = pytest.importorskip('transformers')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = (0.5,) * 3, (0.25,) * 3  # the image stage's normalisation
CHANCE = 1 / 7  # SynthFER's 7 emotions, balanced test split
ARCH = dict(width=96, depth=2, num_heads=4, mlp_dim=384)
FAMILIES = {
    'clip': dict(ARCH, patch_size=8, pre_norm=True, activation='quick_gelu', layer_norm_eps=1e-5),
    'dinov2': dict(ARCH, patch_size=14, layer_scale=1.0, num_registers=4, class_pos_embed=False),
}
IMAGE_SIZE = {'clip': 32, 'dinov2': 56}


def _env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # one CPU device: the command as users run it
  return env


def _main(config, workdir, data_dir, *overrides):
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'feadapter_jax.main',
          f'--config={config}',
          f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}',
          '--config.checkpoint_async=False',
          *overrides,
      ],
      cwd=ROOT,
      env=_env(),
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return str(workdir)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')  # SynthFER, rendered once for both families


def _pretrain(family, root, data_dir):
  """The family's image emotion classifier: params `{name: array}` of a trained tiny ViT."""
  overrides = [f'--config.model.{k}={v}' for k, v in FAMILIES[family].items()]
  run = _main(
      'configs/synthetic_image.py',
      root / 'image',
      data_dir,
      f'--config.data.image_size={IMAGE_SIZE[family]}',
      '--config.total_steps=60',
      '--config.eval_every_steps=60',
      *overrides,
  )
  params, _ = checkpoint.load_params(os.path.join(run, 'export'))
  flat = {}

  def walk(tree, prefix=''):
    for k, v in tree.items():
      (walk(v, f'{prefix}{k}/') if isinstance(v, dict) else flat.__setitem__(prefix + k, v))

  walk(params)
  return flat


def _qkv(p, i):
  kernel, bias = p[f'blocks_{i}/attn/qkv/kernel'], p[f'blocks_{i}/attn/qkv/bias']
  return np.split(kernel.T, 3), np.split(bias, 3)


def _write_hf_clip(p, directory):
  """A CLIPVisionModel hub directory holding `p`. CLIP's patch embedding has no bias: the
  trained one is folded into the patch entries of the position embedding (exactly equal)."""
  t = 'vision_model.'
  pos = p['pos_embed'][0].copy()
  pos[1:] += p['patch_embed/bias']
  state = {
      t + 'embeddings.class_embedding': p['cls_token'][0, 0],
      t + 'embeddings.patch_embedding.weight': p['patch_embed/kernel'].transpose(3, 2, 0, 1),
      t + 'embeddings.position_embedding.weight': pos,
      t + 'pre_layrnorm.weight': p['norm_pre/scale'],
      t + 'pre_layrnorm.bias': p['norm_pre/bias'],
      t + 'post_layernorm.weight': p['norm/scale'],
      t + 'post_layernorm.bias': p['norm/bias'],
  }
  for i in range(ARCH['depth']):
    b = f'{t}encoder.layers.{i}.'
    (q, k, v), (qb, kb, vb) = _qkv(p, i)
    for name, w, bias in (('q', q, qb), ('k', k, kb), ('v', v, vb)):
      state[f'{b}self_attn.{name}_proj.weight'], state[f'{b}self_attn.{name}_proj.bias'] = w, bias
    for ours, theirs in (('attn/proj', 'self_attn.out_proj'), ('mlp/fc1', 'mlp.fc1')):
      state[f'{b}{theirs}.weight'] = p[f'blocks_{i}/{ours}/kernel'].T
      state[f'{b}{theirs}.bias'] = p[f'blocks_{i}/{ours}/bias']
    state[f'{b}mlp.fc2.weight'] = p[f'blocks_{i}/mlp/fc2/kernel'].T
    state[f'{b}mlp.fc2.bias'] = p[f'blocks_{i}/mlp/fc2/bias']
    for ours, theirs in (('norm1', 'layer_norm1'), ('norm2', 'layer_norm2')):
      state[f'{b}{theirs}.weight'] = p[f'blocks_{i}/{ours}/scale']
      state[f'{b}{theirs}.bias'] = p[f'blocks_{i}/{ours}/bias']
  os.makedirs(directory)
  safetensors.numpy.save_file(
      {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()},
      os.path.join(directory, 'model.safetensors'),
  )
  transformers.CLIPVisionConfig(
      hidden_size=ARCH['width'],
      intermediate_size=ARCH['mlp_dim'],
      num_hidden_layers=ARCH['depth'],
      num_attention_heads=ARCH['num_heads'],
      image_size=IMAGE_SIZE['clip'],
      patch_size=FAMILIES['clip']['patch_size'],
      hidden_act='quick_gelu',
      layer_norm_eps=1e-5,
  ).save_pretrained(directory)
  with open(os.path.join(directory, 'preprocessor_config.json'), 'w') as f:
    json.dump({'image_mean': list(MEAN), 'image_std': list(STD)}, f)


def _write_timm_dinov2(p, path):
  """A timm `VisionTransformer(reg_tokens=4, no_embed_class=True, init_values=...)` state dict."""
  state = {
      'cls_token': p['cls_token'],
      'reg_token': p['reg_token'],
      'pos_embed': p['pos_embed'],
      'patch_embed.proj.weight': p['patch_embed/kernel'].transpose(3, 2, 0, 1),
      'patch_embed.proj.bias': p['patch_embed/bias'],
      'norm.weight': p['norm/scale'],
      'norm.bias': p['norm/bias'],
  }
  for i in range(ARCH['depth']):
    for name, value in p.items():
      prefix = f'blocks_{i}/'
      if not name.startswith(prefix):
        continue
      module, leaf = name[len(prefix) :].rsplit('/', 1)
      torch_leaf = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'gamma': 'gamma'}[leaf]
      key = f'blocks.{i}.{module.replace("/", ".")}.{torch_leaf}'
      state[key] = value.T if leaf == 'kernel' else value
  safetensors.numpy.save_file(
      {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, str(path)
  )


@pytest.fixture(scope='module')
def clip_run(tmp_path_factory, data_dir):
  root = tmp_path_factory.mktemp('clip')
  _write_hf_clip(_pretrain('clip', root, data_dir), str(root / 'hub'))
  assert convert_main.main([f'--checkpoint={root / "hub"}', f'--out={root / "backbone"}']) == 0
  return _main(
      f'configs/synthetic.py:quick,init={root / "backbone"}',
      root / 'video',
      data_dir,
      '--config.total_steps=40',
  )


@pytest.fixture(scope='module')
def dinov2_run(tmp_path_factory, data_dir):
  root = tmp_path_factory.mktemp('dinov2')
  _write_timm_dinov2(_pretrain('dinov2', root, data_dir), root / 'dinov2.safetensors')
  code = convert_main.main(
      [
          f'--checkpoint={root / "dinov2.safetensors"}',
          f'--out={root / "backbone"}',
          f'--num_heads={ARCH["num_heads"]}',
          '--mean=' + ','.join(map(str, MEAN)),
          '--std=' + ','.join(map(str, STD)),
      ]
  )
  assert code == 0
  return _main(
      f'configs/synthetic.py:quick,init={root / "backbone"}',
      root / 'video',
      data_dir,
      f'--config.data.image_size={IMAGE_SIZE["dinov2"]}',
      '--config.total_steps=40',
  )


def _read(*path):
  with open(os.path.join(*path)) as f:
    return json.load(f)


def test_clip_classifier_adapts_with_its_own_settings_and_evaluates_alike(clip_run):
  config = _read(clip_run, 'config.json')
  model = config['model']
  assert (model['activation'], model['layer_norm_eps'], model['pre_norm']) == (
      'quick_gelu',
      1e-5,
      True,
  )
  assert (config['data']['mean'], config['data']['std']) == (list(MEAN), list(STD))
  results = _read(clip_run, 'results.json')
  assert results['uar'] > CHANCE + 0.15, results  # chance: sd 0.044 at 64 clips
  # `evaluate` rebuilds the run from config.json (its command line is tested in test_train.py):
  # the same model and preprocessing give the same predictions as the run's final evaluation.
  again = evaluate.evaluate_workdir(clip_run, 'test')
  assert again['confusion_matrix'] == results['confusion_matrix']


def test_dinov2_classifier_adapts_with_registers_layer_scale_and_given_normalisation(dinov2_run):
  config = _read(dinov2_run, 'config.json')
  model = config['model']
  assert (model['patch_size'], model['num_registers'], model['class_pos_embed']) == (14, 4, False)
  assert model['layer_scale'] > 0
  assert (config['data']['mean'], config['data']['std']) == (list(MEAN), list(STD))
  assert _read(dinov2_run, 'results.json')['uar'] > CHANCE + 0.15
  # Prediction preprocesses frames with the backbone's normalisation and builds its model.
  predictor = predict.Predictor(dinov2_run, batch_size=2)
  size = IMAGE_SIZE['dinov2']
  frames = synth_render.render_clip(
      np.random.default_rng(0), 3, 8, size, synth_render.RenderParams()
  )
  views = predictor.views(frames)
  np.testing.assert_array_equal(views, frames[None])  # S x S frames pass as they are, uint8
  data = predictor.config.data
  normalised = step.normalise_video(jnp.asarray(views), data.mean, data.std, jnp.float32)
  expected = (frames / 255.0 - np.asarray(MEAN)) / np.asarray(STD)
  np.testing.assert_allclose(normalised, expected[None], atol=1e-5)
  trained, _ = evaluate.load_trained(dinov2_run, predictor.config)
  assert (trained.num_registers, trained.patch_size, trained.layer_scale > 0) == (4, 14, True)
