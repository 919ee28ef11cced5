"""PyTorch -> Flax conversion: parity per source, files, CLI, errors, safety, video round trip.

Every PyTorch model has random weights, perturbed so that no bias or norm parameter keeps its
zero/one init (a permuted bias would otherwise go unnoticed); comparisons are fp32 on CPU.
"""

import json
import os
import pickle
import struct
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
transformers = pytest.importorskip('transformers')
torchvision = pytest.importorskip('torchvision')
from flax import traverse_util  # noqa: E402
import safetensors.torch  # noqa: E402
from timm.layers import resample_abs_pos_embed  # noqa: E402

from feadapter_jax import convert  # noqa: E402
from feadapter_jax import models  # noqa: E402
from feadapter_jax.convert import __main__ as convert_cli  # noqa: E402
from feadapter_jax.convert import posemb  # noqa: E402
from feadapter_jax.convert import readers  # noqa: E402

TOL = 1e-4
# The family options of a plain class-token ViT, which model_config.json records explicitly.
PLAIN = dict(
    activation='gelu',
    pre_norm=False,
    layer_scale=0.0,
    num_registers=0,
    class_token=True,
    class_pos_embed=True,
    global_pool='token',
    fc_norm=False,
)


@pytest.fixture(autouse=True, scope='module')
def no_torch_grad():
  # For this module's tests only, not at import: a module-level switch would disable autograd
  # for every test collected in the same session (the PyTorch reference's gradient tests).
  previous = torch.is_grad_enabled()
  torch.set_grad_enabled(False)
  yield
  torch.set_grad_enabled(previous)


@pytest.fixture(autouse=True)
def seeded():
  torch.manual_seed(0)  # PyTorch modules draw their init from the global generator.


def randomized(model, seed=0):
  """`model` in eval mode with every parameter moved off its structured init."""
  gen = torch.Generator().manual_seed(seed)
  for p in model.parameters():
    p.add_(0.05 * torch.randn(p.shape, generator=gen))
  return model.eval()


def tiny_timm(**kwargs):
  args = dict(depth=2, num_classes=5, img_size=32, patch_size=8)
  return randomized(
      timm.create_model('vit_tiny_patch16_224', pretrained=False, **{**args, **kwargs})
  )


def images(batch, size, seed=1):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def torch_logits(forward, x_nhwc):
  return forward(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)).numpy()


def flax_logits(params, model_config, x):
  return np.asarray(models.build(model_config).apply({'params': params}, x))


def max_diff(a, b):
  assert a.shape == b.shape
  return float(np.abs(a - b).max())


@pytest.mark.parametrize(
    'name, num_classes, width, num_heads',
    [
        ('vit_tiny_patch16_224', 1000, 192, 3),
        ('vit_small_patch16_224', 7, 384, 6),
    ],
)
def test_timm_logits_match(name, num_classes, width, num_heads):
  model = randomized(timm.create_model(name, pretrained=False, num_classes=num_classes))
  params, model_config = convert.convert_state_dict(model.state_dict())
  assert model_config == dict(
      width=width,
      depth=12,
      num_heads=num_heads,
      mlp_dim=4 * width,
      patch_size=16,
      image_size=224,
      num_classes=num_classes,
      layer_norm_eps=1e-6,
      **PLAIN,
  )
  x = images(2, 224)
  diff = max_diff(flax_logits(params, model_config, x), torch_logits(model, x))
  print(f'{name}: max |logit diff| {diff:.2e}')
  assert diff <= TOL


@pytest.mark.parametrize('antialias', [True, False])
@pytest.mark.parametrize('old, new', [(24, 14), (14, 24), (7, 5), (3, 8)])
def test_pos_embed_resampling_equals_timm(old, new, antialias):
  pos = torch.randn(1, 1 + old * old, 16)
  expected = resample_abs_pos_embed(pos, (new, new), antialias=antialias).numpy()
  got = posemb.resample_pos_embed(pos.numpy(), (new, new), antialias=antialias)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  np.testing.assert_array_equal(got[:, 0], pos.numpy()[:, 0])


def test_timm_384_resized_to_224_equals_timm_at_224():
  source = randomized(timm.create_model('vit_tiny_patch16_384', pretrained=False, depth=2))
  conversion = convert.convert(source.state_dict(), image_size=224)
  assert conversion.model_config['image_size'] == 224
  assert 'resampled 24x24 (384 px) -> 14x14 (224 px)' in conversion.report()
  target = timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=2).eval()
  state = dict(source.state_dict())
  state['pos_embed'] = resample_abs_pos_embed(state['pos_embed'], (14, 14))  # timm's default.
  target.load_state_dict(state)
  np.testing.assert_allclose(conversion.params['pos_embed'], state['pos_embed'].numpy(), atol=1e-5)
  x = images(2, 224)
  diff = max_diff(
      flax_logits(conversion.params, conversion.model_config, x), torch_logits(target, x)
  )
  print(f'timm 384 -> 224: max |logit diff| {diff:.2e}')
  assert diff <= TOL


def small_hf_config(**kwargs):
  return transformers.ViTConfig(
      **{
          **dict(
              hidden_size=192,
              num_hidden_layers=2,
              num_attention_heads=3,
              intermediate_size=768,
              image_size=32,
              patch_size=8,
              num_labels=5,
          ),
          **kwargs,
      }
  )


@pytest.mark.parametrize('layout', ['hf_v5', 'hf'])
def test_hf_classifier_logits_match(tmp_path, layout):
  model = randomized(transformers.ViTForImageClassification(small_hf_config()))
  if layout == 'hf_v5':  # transformers 5 module names, as `state_dict()` gives them.
    state = model.state_dict()
  else:  # The hub file layout, which save_pretrained writes.
    model.save_pretrained(tmp_path)
    state = convert.read_checkpoint(tmp_path)
  conversion = convert.convert(state)
  assert conversion.layout == layout
  assert conversion.model_config['layer_norm_eps'] == 1e-12
  assert conversion.model_config['num_classes'] == 5
  x = images(2, 32)
  diff = max_diff(
      flax_logits(conversion.params, conversion.model_config, x),
      torch_logits(lambda t: model(pixel_values=t).logits, x),
  )
  print(f'HF ViTForImageClassification ({layout}): max |logit diff| {diff:.2e}')
  assert diff <= TOL


def test_hf_base_model_gives_features_and_ignores_pooler():
  model = randomized(transformers.ViTModel(small_hf_config(), add_pooling_layer=True))
  assert any(k.startswith('pooler.') for k in model.state_dict())
  params, model_config = convert.convert_state_dict(model.state_dict(), source='hf')
  assert model_config['num_classes'] == 0 and 'head' not in params
  x = images(2, 32)
  diff = max_diff(
      flax_logits(params, model_config, x),
      torch_logits(lambda t: model(pixel_values=t).last_hidden_state[:, 0], x),
  )
  assert diff <= TOL


def test_torchvision_vit_b_16_logits_match():
  model = randomized(torchvision.models.vit_b_16())
  conversion = convert.convert(model.state_dict())
  assert conversion.model_config == dict(
      width=768,
      depth=12,
      num_heads=12,
      mlp_dim=3072,
      patch_size=16,
      image_size=224,
      num_classes=1000,
      layer_norm_eps=1e-6,
      **PLAIN,
  )
  assert conversion.metadata['mean'] == [0.485, 0.456, 0.406]
  assert 'parameters: 86,567,656' in conversion.report()
  x = images(1, 224)
  diff = max_diff(
      flax_logits(conversion.params, conversion.model_config, x), torch_logits(model, x)
  )
  print(f'torchvision vit_b_16: max |logit diff| {diff:.2e}')
  assert diff <= TOL


def test_head_with_another_class_count_is_dropped():
  model = tiny_timm()
  conversion = convert.convert(model.state_dict(), num_classes=7)
  assert 'head' not in conversion.params and conversion.model_config['num_classes'] == 7
  assert 'head: dropped (checkpoint has 5 classes, num_classes=7)' in conversion.report()
  assert conversion.source_head['kernel'].shape == (192, 5)
  kept = convert.convert(model.state_dict(), num_classes=5)
  assert kept.params['head']['kernel'].shape == (192, 5) and 'head: kept' in kept.report()


def merged(init_params, converted):
  flat = traverse_util.flatten_dict(jax.device_get(init_params), sep='/')
  loaded = traverse_util.flatten_dict(converted, sep='/')
  assert set(loaded) <= set(flat)
  flat.update(loaded)
  return traverse_util.unflatten_dict(flat, sep='/')


def test_video_model_with_zero_init_fe_adapter_averages_image_logits():
  model = tiny_timm()
  params, model_config = convert.convert_state_dict(model.state_dict())
  video = models.build({**model_config, 'adapter': dict(kind='fe', width=8)})
  clip = np.random.default_rng(2).normal(size=(2, 3, 32, 32, 3)).astype(np.float32)
  init = video.init(jax.random.key(0), clip)['params']
  assert any('adapter' in k for k in traverse_util.flatten_dict(init, sep='/'))
  logits = np.asarray(video.apply({'params': merged(init, params)}, clip))
  per_frame = torch_logits(model, clip.reshape(6, 32, 32, 3)).reshape(2, 3, -1)
  diff = max_diff(logits, per_frame.mean(1))
  print(f'video model + zero-init FE-Adapter vs timm frame average: {diff:.2e}')
  assert diff <= TOL


def run_cli(capsys, *args):
  code = convert_cli.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return code, out, err


def test_cli_safetensors_round_trip_with_verify(tmp_path, capsys):
  model = tiny_timm()
  path = tmp_path / 'vit.safetensors'
  safetensors.torch.save_file(model.state_dict(), str(path))
  out_dir = tmp_path / 'backbone'
  code, out, err = run_cli(
      capsys, '--checkpoint', path, '--out', out_dir, '--image_size', 48, '--verify'
  )
  assert code == 0, err
  print(out)
  for line in (
      'source: timm VisionTransformer',
      'heads 3 (standard for width 192)',
      'resampled 4x4 (32 px) -> 6x6 (48 px)',
      'head: kept, 5 classes',
      'verify: max |output difference|',
      f'wrote {out_dir}',
  ):
    assert line in out
  diff = float(out.split('verify: max |output difference| ')[1].split()[0])
  assert diff <= TOL
  params, model_config = convert.load(out_dir)
  assert model_config == dict(
      width=192,
      depth=2,
      num_heads=3,
      mlp_dim=768,
      patch_size=8,
      image_size=48,
      num_classes=5,
      layer_norm_eps=1e-6,
      **PLAIN,
  )
  assert convert.read_metadata(out_dir) == dict(
      source='timm', checkpoint=str(path), mean=None, std=None, class_names=None
  )
  expected, _ = convert.convert_state_dict(model.state_dict(), image_size=48)
  jax.tree.map(np.testing.assert_array_equal, params, expected)
  assert sorted(os.listdir(tmp_path)) == ['backbone', 'vit.safetensors']
  code, _, err = run_cli(capsys, '--checkpoint', path, '--out', out_dir)
  assert code == 2 and 'already exists' in err


def test_cli_wrapped_pth_round_trip_drops_head(tmp_path, capsys):
  model = tiny_timm()
  path = tmp_path / 'ckpt.pth'
  state = {f'module.{k}': v for k, v in model.state_dict().items()}
  torch.save({'model': state, 'epoch': 3}, path)
  out_dir = tmp_path / 'backbone'
  code, out, err = run_cli(
      capsys, '--checkpoint', path, '--out', out_dir, '--num_classes', 7, '--verify'
  )
  assert code == 0, err
  assert 'head: dropped (checkpoint has 5 classes, num_classes=7)' in out
  params, model_config = convert.load(out_dir)
  assert model_config['num_classes'] == 7 and 'head' not in params
  x = images(2, 32)
  features = models.build({**model_config, 'num_classes': 0}).apply({'params': params}, x)
  expected = model.forward_head(
      model.forward_features(torch.from_numpy(x).permute(0, 3, 1, 2)), pre_logits=True
  ).numpy()
  assert max_diff(np.asarray(features), expected) <= TOL


def test_cli_reads_hub_directory_metadata(tmp_path, capsys):
  # Width 64 is not in the standard table: only the hub config.json can tell the heads.
  model = randomized(
      transformers.ViTForImageClassification(
          small_hf_config(
              hidden_size=64, num_attention_heads=4, intermediate_size=128, layer_norm_eps=1e-6
          )
      )
  )
  model.save_pretrained(tmp_path / 'hub')
  (tmp_path / 'hub' / 'preprocessor_config.json').write_text(
      json.dumps(dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]))
  )
  code, out, err = run_cli(
      capsys, '--checkpoint', tmp_path / 'hub', '--out', tmp_path / 'bb', '--verify'
  )
  assert code == 0, err
  assert 'normalisation: mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5]' in out
  assert 'heads 4 (given)' in out and 'LayerNorm eps 1e-06' in out
  assert float(out.split('verify: max |output difference| ')[1].split()[0]) <= TOL
  assert convert.read_metadata(tmp_path / 'bb')['source'] == 'hf'


def test_interrupted_save_leaves_no_complete_looking_directory(tmp_path, monkeypatch):
  params, model_config = convert.convert_state_dict(tiny_timm().state_dict())
  real_dump = json.dump

  def interrupted(obj, *args, **kwargs):
    if 'width' in obj:  # The model config, written after the params.
      raise KeyboardInterrupt
    return real_dump(obj, *args, **kwargs)

  monkeypatch.setattr(json, 'dump', interrupted)
  with pytest.raises(KeyboardInterrupt):
    convert.save(tmp_path / 'out', params, model_config)
  assert not (tmp_path / 'out').exists()
  with pytest.raises(FileNotFoundError, match='not a parameter directory'):
    convert.load(tmp_path / 'out')


def test_cli_failed_verification_writes_nothing(tmp_path, capsys, monkeypatch):
  path = tmp_path / 'vit.safetensors'
  safetensors.torch.save_file(tiny_timm().state_dict(), str(path))
  monkeypatch.setattr(convert_cli.verify, 'max_logit_difference', lambda *_: (0.5, 'simulated bug'))
  code, out, err = run_cli(capsys, '--checkpoint', path, '--out', tmp_path / 'bb', '--verify')
  assert code == 2 and 'Verification failed: difference 0.5' in err
  assert 'verify: max |output difference| 0.5' in out and not (tmp_path / 'bb').exists()


@pytest.fixture(scope='module')
def tiny_state():
  return readers.unwrap(tiny_timm().state_dict())


def edited(state, drop=(), put=None):
  return {**{k: v for k, v in state.items() if k not in drop}, **(put or {})}


TOKEN = np.zeros((1, 1, 192), np.float32)
# name, state dict edit, convert() arguments, expected message.
ERRORS = [
    (
        'unknown key',
        lambda s: edited(s, put={'blocks.0.attn.foo.weight': np.zeros((2, 2))}),
        {},
        r"Unknown keys for a timm VisionTransformer checkpoint: 'blocks.0.attn.foo.weight'",
    ),
    (
        'missing key',
        lambda s: edited(s, drop=('blocks.1.mlp.fc2.bias', 'norm.weight')),
        {},
        r"missing keys: 'norm.weight', 'blocks.1.mlp.fc2.bias'",
    ),
    (
        'shape mismatch',
        lambda s: edited(s, put={'blocks.0.mlp.fc2.weight': np.zeros((192, 769))}),
        {},
        r'Shape mismatch: blocks.0.mlp.fc2.weight gives blocks_0/mlp/fc2/kernel of shape '
        r'\(769, 192\), the model expects \(768, 192\)',
    ),
    (
        'wrong rank',
        lambda s: edited(s, put={'blocks.0.norm1.weight': np.zeros((192, 1))}),
        {},
        r'blocks.0.norm1.weight has shape \(192, 1\), expected a 1-D array',
    ),
    (
        'register tokens without their position entries',
        lambda s: edited(s, put={'reg_token': TOKEN}),
        {},
        r'pos_embed has 17 tokens, neither 2 prefix .* nor a square grid alone',
    ),
    ('distillation', lambda s: edited(s, put={'dist_token': TOKEN}), {}, 'distillation token'),
    (
        'class token entry without a class token',
        lambda s: edited(s, drop=('cls_token',)),
        {},
        'pos_embed has 17 tokens, not a square patch grid',
    ),
    (
        'two final norms',
        lambda s: edited(
            s, put={'fc_norm.weight': s['norm.weight'], 'fc_norm.bias': s['norm.bias']}
        ),
        {},
        'one final LayerNorm, before pooling .* the checkpoint has both',
    ),
    (
        'partial LayerScale',
        lambda s: edited(s, put={'blocks.0.ls1.gamma': np.ones(192, np.float32)}),
        {},
        r"missing keys: 'blocks.0.ls2.gamma', 'blocks.1.ls1.gamma'",
    ),
    (
        'token pooling without a class token',
        lambda s: edited(s, drop=('cls_token',), put={'pos_embed': s['pos_embed'][:, 1:]}),
        dict(global_pool='token'),
        "global_pool='token' needs a class token",
    ),
    ('wrong heads', lambda s: s, dict(num_heads=5), 'num_heads=5 does not divide the width 192'),
    ('bad image size', lambda s: s, dict(image_size=36), 'not a positive multiple of the patch'),
    ('unknown source', lambda s: s, dict(source='jax'), "Unknown source 'jax'"),
    (
        'wrong source',
        lambda s: s,
        dict(source='torchvision'),
        'Unrecognised checkpoint for --source torchvision',
    ),
    (
        'not a vit',
        lambda s: {'conv1.weight': np.zeros((2, 3, 3, 3))},
        {},
        r"Unrecognised checkpoint.*'conv1.weight'",
    ),
]


@pytest.mark.parametrize('name, make, kwargs, message', ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_name_the_problem(tiny_state, name, make, kwargs, message):
  del name
  with pytest.raises(ValueError, match=message):
    convert.convert(make(tiny_state), **kwargs)


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (dict(qk_norm=True), 'qk_norm'),
        (dict(global_pool='map'), 'attention pooling'),
        (dict(scale_attn_norm=True), 'LayerNorms inside attention'),
    ],
)
def test_unsupported_timm_variants_are_refused(kwargs, message):
  state = timm.create_model(
      'vit_tiny_patch16_224', pretrained=False, depth=1, img_size=32, **kwargs
  ).state_dict()
  with pytest.raises(ValueError, match=f'Unsupported architecture: .*{message}'):
    convert.convert(state)


def test_hf_deit_distilled_is_refused():
  config = transformers.DeiTConfig(
      hidden_size=64,
      num_hidden_layers=1,
      num_attention_heads=2,
      intermediate_size=128,
      image_size=32,
      patch_size=8,
  )
  state = transformers.DeiTForImageClassificationWithTeacher(config).state_dict()
  with pytest.raises(ValueError, match='Unsupported architecture: .*distillation token'):
    convert.convert(state)


def test_width_without_standard_heads_needs_num_heads():
  state = tiny_timm(embed_dim=64, num_heads=4).state_dict()
  with pytest.raises(ValueError, match='Cannot infer num_heads for width 64.*--num_heads'):
    convert.convert(state)
  assert convert.convert(state, num_heads=4).model_config['num_heads'] == 4


class Payload:
  """Unpickling this runs `touch MARKER`."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


@pytest.mark.filterwarnings('ignore:Detected pickle protocol')  # torch, on the raw pickle.
@pytest.mark.parametrize('layout', ['zip', 'raw_pickle'])
def test_pickle_that_runs_code_is_refused_unrun(tmp_path, layout):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pth'
  if layout == 'zip':
    torch.save({'w': torch.zeros(2), 'x': Payload(marker)}, path)
  else:
    path.write_bytes(pickle.dumps({'x': Payload(marker)}))
  with pytest.raises(ValueError, match='Refusing to load .*needs arbitrary code'):
    convert.read_checkpoint(path)
  assert not marker.exists()
  live = tmp_path / 'live'
  pickle.loads(pickle.dumps(Payload(live)))  # The payload is real: a plain unpickle runs it.
  assert live.exists()


def test_safetensors_with_huge_header_is_refused(tmp_path):
  path = tmp_path / 'huge.safetensors'
  path.write_bytes(struct.pack('<Q', 2**62) + b'{}')
  with pytest.raises(ValueError, match='header declares 4611686018427387904 bytes but the file'):
    convert.read_checkpoint(path)
  # A valid header whose tensor claims 40 GB of a 16-byte body.
  header = json.dumps(
      {'w': dict(dtype='F32', shape=[100000, 100000], data_offsets=[0, 40_000_000_000])}
  ).encode()
  path.write_bytes(struct.pack('<Q', len(header)) + header + bytes(16))
  with pytest.raises(ValueError, match='not a valid safetensors file'):
    convert.read_checkpoint(path)


def test_reader_errors(tmp_path, monkeypatch):
  bf16 = tmp_path / 'bf16.safetensors'
  safetensors.torch.save_file({'w': torch.ones(2, dtype=torch.bfloat16)}, str(bf16))
  assert convert.read_checkpoint(bf16)['w'].dtype == np.float32
  (tmp_path / 'x.ckpt2').touch()
  with pytest.raises(ValueError, match="unknown extension '.ckpt2'"):
    convert.read_checkpoint(tmp_path / 'x.ckpt2')
  (tmp_path / 'x.npz').touch()
  with pytest.raises(ValueError, match='not a readable .npz of plain arrays'):
    convert.read_checkpoint(tmp_path / 'x.npz')
  with pytest.raises(FileNotFoundError, match='without a weights file'):
    convert.read_checkpoint(tmp_path)
  pth = tmp_path / 'w.pth'
  torch.save({'w': torch.zeros(1)}, pth)
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now fails.
  with pytest.raises(ImportError, match='requirements-test.txt'):
    convert.read_checkpoint(pth)


def test_cli_names_a_missing_flag(tmp_path, capsys):
  code, _, err = run_cli(capsys, '--out', tmp_path / 'bb')
  assert code == 2 and '--checkpoint' in err and not (tmp_path / 'bb').exists()


def test_cli_help_prints_the_usage_and_exits_zero(capsys):
  assert convert_cli.main(['--help']) == 0
  assert '--checkpoint=PATH --out=DIR' in capsys.readouterr().out
