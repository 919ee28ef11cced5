"""Conversion of the ViT families beyond plain timm/torchvision/HF ViT: parity and errors.

timm CLIP / DINOv2 / registers / MAE / DeiT-III variants, OpenAI / open_clip / FaRL CLIP state
dicts, Hugging Face CLIP and Dinov2 (with registers), Flax .npz (AugReg, big_vision); the CLI's
--activation, --rename / --ignore, --mean / --std; refusals. References are independent
implementations: the PyTorch model itself, timm's OpenAI-CLIP filter, timm's npz loader.

Weights are re-drawn where a wrong mapping shows: the libraries' inits (LayerScale 1e-5, zero
biases, unit LayerNorms, 0.02 tokens) would hide q/k swaps, LayerScale and norm mistakes. Every
matrix is N(0, 1/fan_in), biases N(0, 0.5), LayerNorms 1 + N(0, 0.3) / N(0, 0.3), LayerScale
gammas U(0.5, 1.5), tokens and position embeddings N(0, 1).
"""

import functools
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
transformers = pytest.importorskip('transformers')
import safetensors.torch  # noqa: E402
from timm.layers import resample_abs_pos_embed  # noqa: E402
from timm.models import vision_transformer as timm_vit  # noqa: E402

from feadapter_jax import convert  # noqa: E402
from feadapter_jax import models  # noqa: E402
from feadapter_jax.convert import __main__ as convert_cli  # noqa: E402
from feadapter_jax.convert import posemb  # noqa: E402
from feadapter_jax.convert import readers  # noqa: E402
from feadapter_jax.convert import store  # noqa: E402
from feadapter_jax.convert import verify  # noqa: E402

TOL = 1e-4
# A difference a wrong mapping must exceed, far above fp32 noise.
WRONG = 1e-2
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH, HEADS = 64, 4  # 64 is not a standard width: heads always come from the caller or a config.


@pytest.fixture(autouse=True, scope='module')
def no_torch_grad():
  previous = torch.is_grad_enabled()
  torch.set_grad_enabled(False)
  yield
  torch.set_grad_enabled(previous)


@pytest.fixture(autouse=True)
def seeded():
  torch.manual_seed(0)


def redraw(model, seed=0):
  """`model` in eval mode with every parameter re-drawn at the module docstring's scales."""
  gen = torch.Generator().manual_seed(seed)

  def normal(p, std, mean=0.0):
    p.copy_(mean + std * torch.randn(p.shape, generator=gen))

  for module in model.modules():
    for name, p in module.named_parameters(recurse=False):
      if isinstance(module, torch.nn.LayerNorm):
        normal(p, 0.3, 1.0 if name == 'weight' else 0.0)
      elif name in ('gamma', 'lambda1'):
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
      elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
        normal(p, p[0].numel() ** -0.5 if p.ndim > 1 else 0.5)
      else:  # Class / register / mask tokens, position embeddings.
        normal(p, 1.0)
  return model.eval()


class Draw:
  """Arrays at the module docstring's scales, for state dicts written by name."""

  def __init__(self, seed=0):
    self.rng = np.random.default_rng(seed)

  def normal(self, shape, std=1.0, mean=0.0):
    return np.asarray(mean + std * self.rng.normal(size=shape), np.float32)

  def matrix(self, shape, fan_in):
    return self.normal(shape, fan_in**-0.5)

  def norm(self, shape):
    return self.normal(shape, 0.3, 1.0), self.normal(shape, 0.3)


def images(batch, size, seed=1):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def nchw(x):
  return torch.from_numpy(x).permute(0, 3, 1, 2)


def flax_out(conversion, x):
  return np.asarray(models.build(conversion.model_config).apply({'params': conversion.params}, x))


def max_diff(a, b):
  assert a.shape == b.shape
  return float(np.abs(a - b).max())


def run_cli(capsys, *args):
  code = convert_cli.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return code, out, err


def verified(out):
  return float(out.split('verify: max |output difference| ')[1].split()[0])


# ------------------------------------------------------------------------------ timm families

EPS5 = functools.partial(torch.nn.LayerNorm, eps=1e-5)
# name: (VisionTransformer kwargs, convert kwargs, expected family options).
TIMM_CASES = {
    # vit_base_patch16_clip_224: pre-norm, no patch bias, eps 1e-5.
    'clip': (
        dict(pre_norm=True, norm_layer=EPS5),
        dict(activation='gelu'),
        dict(pre_norm=True, layer_norm_eps=1e-5, activation='gelu'),
    ),
    'clip_quickgelu': (
        dict(pre_norm=True, norm_layer=EPS5, act_layer='quick_gelu'),
        dict(activation='quick_gelu'),
        dict(pre_norm=True, layer_norm_eps=1e-5, activation='quick_gelu'),
    ),
    # vit_small_patch14_dinov2: LayerScale, patch 14.
    'dinov2': (
        dict(patch_size=14, img_size=56, init_values=1.0),
        {},
        dict(layer_scale=1.0, patch_size=14),
    ),
    # vit_small_patch14_reg4_dinov2: + 4 registers, position embedding on patches only.
    'dinov2_reg4': (
        dict(patch_size=14, img_size=56, init_values=1.0, reg_tokens=4, no_embed_class=True),
        {},
        dict(layer_scale=1.0, num_registers=4, class_pos_embed=False, patch_size=14),
    ),
    # MAE / BEiT fine-tunes: mean of the patch tokens, LayerNorm after pooling.
    'avg_fc_norm': (
        dict(global_pool='avg', fc_norm=True),
        {},
        dict(global_pool='avg', fc_norm=True),
    ),
    'avg_fc_norm_no_class_token': (
        dict(global_pool='avg', fc_norm=True, class_token=False),
        {},
        dict(global_pool='avg', fc_norm=True, class_token=False),
    ),
    # DeiT-III: LayerScale + no_embed_class.
    'deit3': (
        dict(init_values=1e-5, no_embed_class=True),
        {},
        dict(layer_scale=1.0, class_pos_embed=False),
    ),
}
PLAIN = dict(
    activation='gelu',
    pre_norm=False,
    layer_scale=0.0,
    num_registers=0,
    class_token=True,
    class_pos_embed=True,
    global_pool='token',
    fc_norm=False,
    layer_norm_eps=1e-6,
    patch_size=8,
)


def tiny_vit(**kwargs):
  args = dict(img_size=32, patch_size=8, embed_dim=WIDTH, depth=2, num_heads=HEADS, num_classes=5)
  return redraw(timm_vit.VisionTransformer(**{**args, **kwargs}))


@pytest.mark.parametrize('case', TIMM_CASES)
def test_timm_family_logits_match(case):
  kwargs, convert_kwargs, options = TIMM_CASES[case]
  model = tiny_vit(**kwargs)
  conversion = convert.convert(model.state_dict(), num_heads=HEADS, **convert_kwargs)
  config = conversion.model_config
  assert {k: config[k] for k in PLAIN} == {**PLAIN, **options}
  assert set(config) == set(store.ARCHITECTURE_KEYS)
  x = images(2, config['image_size'])
  diff = max_diff(flax_out(conversion, x), model(nchw(x)).numpy())
  print(f'timm {case}: max |logit diff| {diff:.2e}')
  assert diff <= TOL
  assert verify.max_logit_difference(model.state_dict(), conversion)[0] <= TOL


def test_redrawn_weights_expose_wrong_mappings():
  """The parity tests can fail: q/k swapped, LayerScale lost or the wrong activation each move
  the logits by far more than the tolerance at these weight scales."""
  model = tiny_vit(pre_norm=True, norm_layer=EPS5, act_layer='quick_gelu', init_values=1.0)
  conversion = convert.convert(model.state_dict(), num_heads=HEADS, activation='quick_gelu')
  x = images(2, 32)
  expected = model(nchw(x)).numpy()
  assert max_diff(flax_out(conversion, x), expected) <= TOL

  def logits_with(edit=None, **config):
    params = {k: dict(v) if isinstance(v, dict) else v for k, v in conversion.params.items()}
    if edit:
      edit(params['blocks_0'])
    model_config = {**conversion.model_config, **config}
    return np.asarray(models.build(model_config).apply({'params': params}, x))

  def swap_qk(block):
    qkv = dict(block['attn']['qkv'])
    q, k, v = np.split(qkv['kernel'], 3, axis=1)
    qkv['kernel'] = np.concatenate([k, q, v], axis=1)
    block['attn'] = {**block['attn'], 'qkv': qkv}

  def unit_layer_scale(block):
    block['ls1'] = {'gamma': np.ones_like(block['ls1']['gamma'])}

  assert max_diff(logits_with(swap_qk), expected) > WRONG
  assert max_diff(logits_with(unit_layer_scale), expected) > WRONG
  assert max_diff(logits_with(activation='gelu'), expected) > WRONG


@pytest.mark.parametrize('registers', [0, 4])
def test_dinov2_518_resampled_to_224_equals_timm(registers):
  """DINOv2's 37x37 grid (518 px, patch 14) -> 16x16 (224 px), with and without registers."""
  kwargs = dict(
      patch_size=14, init_values=1.0, reg_tokens=registers, no_embed_class=bool(registers)
  )
  source = tiny_vit(img_size=518, **kwargs)
  conversion = convert.convert(source.state_dict(), image_size=224, num_heads=HEADS)
  kept = 0 if registers else 1
  assert f'resampled 37x37 (518 px) -> 16x16 (224 px), bicubic as timm, {kept} prefix' in (
      conversion.report()
  )
  target = timm_vit.VisionTransformer(
      img_size=224, embed_dim=WIDTH, depth=2, num_heads=HEADS, num_classes=5, **kwargs
  ).eval()
  state = dict(source.state_dict())
  state['pos_embed'] = resample_abs_pos_embed(state['pos_embed'], (16, 16), num_prefix_tokens=kept)
  target.load_state_dict(state)
  x = images(2, 224)
  diff = max_diff(flax_out(conversion, x), target(nchw(x)).numpy())
  print(f'DINOv2 (registers={registers}) 518 -> 224: max |logit diff| {diff:.2e}')
  assert diff <= TOL


@pytest.mark.parametrize('prefix', [0, 1, 5])
def test_pos_embed_resampling_with_any_prefix_equals_timm(prefix):
  pos = torch.randn(1, prefix + 37 * 37, 8)
  expected = resample_abs_pos_embed(pos, (16, 16), num_prefix_tokens=prefix).numpy()
  got = posemb.resample_pos_embed(pos.numpy(), (16, 16), num_prefix_tokens=prefix)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  np.testing.assert_array_equal(got[:, :prefix], pos.numpy()[:, :prefix])


# ------------------------------------------------------------------ OpenAI / open_clip / FaRL


def openai_clip_state(grid=4, patch=8, depth=2, embed=16, seed=0):
  """A CLIP state dict as OpenAI's `model.state_dict()` names it: image and text towers."""
  draw, d = Draw(seed), WIDTH
  state = {
      'visual.conv1.weight': draw.matrix((d, 3, patch, patch), 3 * patch * patch),
      'visual.class_embedding': draw.normal((d,)),
      'visual.positional_embedding': draw.normal((grid * grid + 1, d)),
      'visual.proj': draw.matrix((d, embed), d),
      # The text tower, abridged, and the contrastive scale.
      'token_embedding.weight': draw.normal((10, 32)),
      'positional_embedding': draw.normal((8, 32)),
      'transformer.resblocks.0.attn.in_proj_weight': draw.matrix((96, 32), 32),
      'ln_final.weight': draw.normal((32,)),
      'text_projection': draw.matrix((32, embed), 32),
      'logit_scale': draw.normal(()),
  }
  for name in ('ln_pre', 'ln_post'):
    state[f'visual.{name}.weight'], state[f'visual.{name}.bias'] = draw.norm((d,))
  for i in range(depth):
    b = f'visual.transformer.resblocks.{i}.'
    for name in ('ln_1', 'ln_2'):
      state[f'{b}{name}.weight'], state[f'{b}{name}.bias'] = draw.norm((d,))
    for name, (out, fan_in) in (
        ('attn.in_proj_', (3 * d, d)),
        ('attn.out_proj.', (d, d)),
        ('mlp.c_fc.', (4 * d, d)),
        ('mlp.c_proj.', (d, 4 * d)),
    ):
      state[f'{b}{name}weight'] = draw.matrix((out, fan_in), fan_in)
      state[f'{b}{name}bias'] = draw.normal((out,), 0.5)
  return state


def timm_clip_reference(state, image_size, activation='quick_gelu'):
  """timm's own OpenAI-CLIP filter into a timm CLIP-style VisionTransformer (features)."""
  model = timm_vit.VisionTransformer(
      img_size=image_size,
      patch_size=8,
      embed_dim=WIDTH,
      depth=2,
      num_heads=HEADS,
      num_classes=0,
      pre_norm=True,
      norm_layer=EPS5,
      act_layer=activation,
  )
  tensors = {k: torch.from_numpy(v) for k, v in state.items()}
  filtered = timm_vit.checkpoint_filter_fn(tensors, model)
  del filtered['head.weight'], filtered['head.bias']  # visual.proj, which we drop.
  model.load_state_dict(filtered)
  return model.eval()


@pytest.mark.parametrize('image_size', [32, 48])
def test_openai_clip_state_dict_equals_timm_filter(image_size):
  state = openai_clip_state()
  conversion = convert.convert(
      state, image_size=image_size, num_heads=HEADS, activation='quick_gelu'
  )
  assert conversion.layout == 'openai_clip'
  report = conversion.report()
  for line in (
      'dropped: the text tower (6 arrays)',
      'dropped: the image projection visual.proj (1 array)',
      'patch embedding: no bias in the checkpoint; zeros written',
      "OpenAI CLIP's constants",
  ):
    assert line in report
  assert conversion.metadata['mean'] == [0.48145466, 0.4578275, 0.40821073]
  config = conversion.model_config
  assert config['pre_norm'] and config['activation'] == 'quick_gelu'
  assert config['layer_norm_eps'] == 1e-5 and config['num_classes'] == 0
  x = images(2, image_size)
  # timm's filter resamples the position embedding itself (bicubic, antialiased).
  expected = timm_clip_reference(state, image_size)(nchw(x)).numpy()
  diff = max_diff(flax_out(conversion, x), expected)
  print(f'OpenAI CLIP at {image_size} px: max |feature diff| {diff:.2e}')
  assert diff <= TOL


def test_clip_without_activation_is_refused(tmp_path, capsys):
  with pytest.raises(ValueError, match='pass --activation quick_gelu for OpenAI'):
    convert.convert(openai_clip_state(), num_heads=HEADS)
  path = tmp_path / 'clip.safetensors'
  safetensors.torch.save_file(
      {k: torch.from_numpy(v) for k, v in openai_clip_state().items()}, str(path)
  )
  code, _, err = run_cli(capsys, '--checkpoint', path, '--out', tmp_path / 'bb', '--num_heads', 4)
  assert code == 2 and '--activation' in err and not (tmp_path / 'bb').exists()


def test_cli_farl_wrapper_with_verify(tmp_path, capsys):
  """FaRL ships `{'state_dict': CLIP state dict}`; --verify runs timm's filter on it."""
  path = tmp_path / 'FaRL-Base-Patch16.pth'
  tensors = {k: torch.from_numpy(v) for k, v in openai_clip_state().items()}
  torch.save({'state_dict': tensors}, path)
  out_dir = tmp_path / 'farl'
  code, out, err = run_cli(
      capsys,
      '--checkpoint', path, '--out', out_dir, '--num_heads', 4, '--activation', 'quick_gelu',
      '--image_size', 48, '--num_classes', 7, '--verify',
  )  # fmt: skip
  assert code == 0, err
  assert 'source: OpenAI / open_clip CLIP image tower' in out
  assert verified(out) <= TOL
  params, model_config = convert.load(out_dir)
  assert model_config['num_classes'] == 7 and 'head' not in params
  assert convert.read_metadata(out_dir)['source'] == 'openai_clip'


def test_torchscript_archive_is_refused_with_the_export_recipe(tmp_path):
  path = tmp_path / 'ViT-B-16.pt'
  with warnings.catch_warnings():  # torch.jit.script is deprecated; OpenAI's files are it.
    warnings.simplefilter('ignore')
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
  with pytest.raises(ValueError, match='TorchScript archive') as e:
    convert.read_checkpoint(path)
  assert 'torch.jit.load' in str(e.value) and 'safetensors.torch.save_file' in str(e.value)


# --------------------------------------------------------------------- Hugging Face CLIP, Dinov2

CLIP_VISION = dict(
    hidden_size=WIDTH,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=HEADS,
    image_size=32,
    patch_size=8,
)


def hf_clip_model(with_text):
  if not with_text:
    return redraw(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**CLIP_VISION)))
  text = dict(
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=1,
      num_attention_heads=2,
      vocab_size=100,
      max_position_embeddings=16,
      bos_token_id=0,
      eos_token_id=1,
  )
  config = transformers.CLIPConfig(vision_config=CLIP_VISION, text_config=text, projection_dim=16)
  return redraw(transformers.CLIPModel(config))


@pytest.mark.parametrize('with_text', [False, True], ids=['CLIPVisionModel', 'CLIPModel'])
def test_hf_clip_features_match(with_text):
  model = hf_clip_model(with_text)
  conversion = convert.convert(model.state_dict(), num_heads=HEADS, activation='quick_gelu')
  assert conversion.layout == 'hf_clip'
  assert conversion.model_config['pre_norm'] and conversion.model_config['layer_norm_eps'] == 1e-5
  if with_text:
    assert 'dropped: the text tower' in conversion.report()
    assert 'dropped: the image projection visual_projection (1 array)' in conversion.report()
  vision = model.vision_model if with_text else model
  x = images(2, 32)
  diff = max_diff(flax_out(conversion, x), vision(pixel_values=nchw(x)).pooler_output.numpy())
  print(f'HF CLIP (text tower: {with_text}): max |feature diff| {diff:.2e}')
  assert diff <= TOL


def test_cli_hf_clip_hub_directory_needs_no_flags(tmp_path, capsys):
  """config.json's nested vision_config gives the heads, eps and activation (hidden_act)."""
  model = hf_clip_model(with_text=True)
  model.save_pretrained(tmp_path / 'hub')
  code, out, err = run_cli(
      capsys, '--checkpoint', tmp_path / 'hub', '--out', tmp_path / 'bb', '--verify'
  )
  assert code == 0, err
  assert 'heads 4 (given)' in out and 'activation quick_gelu (given)' in out
  assert verified(out) <= TOL


def dinov2_model(registers, **kwargs):
  args = dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=HEADS, image_size=56)
  args.update(patch_size=14, **kwargs)
  if registers:
    config = transformers.Dinov2WithRegistersConfig(**args, num_register_tokens=registers)
    return redraw(transformers.Dinov2WithRegistersModel(config))
  return redraw(transformers.Dinov2Model(transformers.Dinov2Config(**args)))


@pytest.mark.parametrize('layout', ['modules', 'hub_file'])
@pytest.mark.parametrize('registers', [0, 4])
def test_hf_dinov2_features_match(tmp_path, registers, layout):
  model = dinov2_model(registers)
  if layout == 'hub_file':  # query/key/value names, as save_pretrained writes them.
    model.save_pretrained(tmp_path)
    state = convert.read_checkpoint(tmp_path)
  else:
    state = model.state_dict()
  conversion = convert.convert(state, num_heads=HEADS)
  expected_layout = 'hf_dinov2' + '_reg' * bool(registers) + '_v5' * (layout == 'modules')
  assert conversion.layout == expected_layout
  config = conversion.model_config
  assert config['layer_scale'] and config['num_registers'] == registers
  assert config['class_pos_embed'] == (not registers)
  assert 'dropped: the mask token' in conversion.report()
  x = images(2, 56)
  diff = max_diff(flax_out(conversion, x), model(pixel_values=nchw(x)).pooler_output.numpy())
  print(f'HF Dinov2 (registers {registers}, {layout}): max |feature diff| {diff:.2e}')
  assert diff <= TOL


def test_cli_dinov2_with_registers_resampled_with_verify(tmp_path, capsys):
  model = dinov2_model(4)
  model.save_pretrained(tmp_path / 'hub')
  out_dir = tmp_path / 'bb'
  code, out, err = run_cli(
      capsys, '--checkpoint', tmp_path / 'hub', '--out', out_dir, '--image_size', 84, '--verify'
  )
  assert code == 0, err
  assert 'resampled 4x4 (56 px) -> 6x6 (84 px), bicubic as timm, 0 prefix entries kept' in out
  assert verified(out) <= TOL
  params, model_config = convert.load(out_dir)
  assert set(model_config) == set(store.ARCHITECTURE_KEYS)
  assert model_config['num_registers'] == 4 and model_config['image_size'] == 84
  assert params['reg_token'].shape == (1, 4, WIDTH) and params['pos_embed'].shape == (1, 36, WIDTH)
  assert convert.read_metadata(out_dir)['mean'] == [0.485, 0.456, 0.406]


def test_hub_configs_are_read(tmp_path):
  transformers.Dinov2WithRegistersConfig(
      num_attention_heads=4, layer_norm_eps=1e-5, layerscale_value=0.1, num_register_tokens=4
  ).save_pretrained(tmp_path)
  assert readers.read_sidecar(tmp_path) == dict(
      num_heads=4, layer_norm_eps=1e-5, layer_scale=0.1, num_registers=4, activation='gelu'
  )
  transformers.Dinov2Config(use_swiglu_ffn=True).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match='use_swiglu_ffn'):
    readers.read_sidecar(tmp_path)
  transformers.CLIPVisionConfig(hidden_act='gelu_new').save_pretrained(tmp_path)
  with pytest.raises(ValueError, match="hidden_act='gelu_new'"):
    readers.read_sidecar(tmp_path)
  (tmp_path / 'config.json').write_text(
      json.dumps(
          dict(
              architecture='vit_base_patch16_clip_quickgelu_224',
              global_pool='token',
              pretrained_cfg=dict(mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6]),
          )
      )
  )
  assert readers.read_sidecar(tmp_path) == dict(
      activation='quick_gelu', global_pool='token', mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6]
  )


def test_num_registers_of_a_config_must_match_the_weights():
  with pytest.raises(ValueError, match='declares 2 register tokens, the weights have 4'):
    convert.convert(dinov2_model(4).state_dict(), num_heads=HEADS, num_registers=2)


# ------------------------------------------------------------------------ Flax .npz (timm loader)


def flax_npz_state(kind, grid=4, patch=8, depth=2, classes=5, seed=0):
  """Random arrays under AugReg ('augreg', 'gap') or scanned big_vision ('big_vision') names."""
  draw, d, h = Draw(seed), WIDTH, HEADS
  hd = d // h
  state = {
      'embedding/kernel': draw.matrix((patch, patch, 3, d), 3 * patch * patch),
      'embedding/bias': draw.normal((d,), 0.5),
      'head/kernel': draw.matrix((d, classes), d),
      'head/bias': draw.normal((classes,), 0.5),
  }
  state['Transformer/encoder_norm/scale'], state['Transformer/encoder_norm/bias'] = draw.norm((d,))
  if kind != 'gap':
    state['cls'] = draw.normal((1, 1, d))
  if kind == 'big_vision':  # Position embedding on the patches; blocks stacked on axis 0.
    state['pos_embedding'] = draw.normal((1, grid * grid, d))
    blocks, lead, (mha, ln2, mlp) = ['Transformer/encoderblock/'], (depth,), (0, 1, 0)
  else:
    tokens = grid * grid + (kind != 'gap')
    state['Transformer/posembed_input/pos_embedding'] = draw.normal((1, tokens, d))
    blocks = [f'Transformer/encoderblock_{i}/' for i in range(depth)]
    lead, (mha, ln2, mlp) = (), (1, 2, 3)
  for b in blocks:
    a = f'{b}MultiHeadDotProductAttention_{mha}/'
    for n in ('query', 'key', 'value'):
      state[f'{a}{n}/kernel'] = draw.matrix((*lead, d, h, hd), d)
      state[f'{a}{n}/bias'] = draw.normal((*lead, h, hd), 0.5)
    state[f'{a}out/kernel'] = draw.matrix((*lead, h, hd, d), d)
    state[f'{a}out/bias'] = draw.normal((*lead, d), 0.5)
    for ln in ('LayerNorm_0', f'LayerNorm_{ln2}'):
      state[f'{b}{ln}/scale'], state[f'{b}{ln}/bias'] = draw.norm((*lead, d))
    for r, (fan_in, out) in enumerate(((d, 4 * d), (4 * d, d))):
      state[f'{b}MlpBlock_{mlp}/Dense_{r}/kernel'] = draw.matrix((*lead, fan_in, out), fan_in)
      state[f'{b}MlpBlock_{mlp}/Dense_{r}/bias'] = draw.normal((*lead, out), 0.5)
  return state


NPZ_CASES = {
    'augreg': ('augreg', dict(class_token=True, class_pos_embed=True, global_pool='token')),
    'gap': ('augreg', dict(class_token=False, global_pool='avg', fc_norm=False)),
    'big_vision': ('big_vision', dict(class_token=True, class_pos_embed=False)),
}


@pytest.mark.parametrize('kind', NPZ_CASES)
def test_flax_npz_equals_timm_npz_loader(tmp_path, kind):
  layout, options = NPZ_CASES[kind]
  path = tmp_path / f'{kind}.npz'
  np.savez(path, **flax_npz_state(kind))
  conversion = convert.convert(convert.read_checkpoint(path), num_heads=HEADS)
  assert conversion.layout == layout
  config = conversion.model_config
  assert {k: config[k] for k in options} == options
  assert conversion.metadata['mean'] == [0.5, 0.5, 0.5]
  model = timm_vit.VisionTransformer(
      img_size=32,
      patch_size=8,
      embed_dim=WIDTH,
      depth=2,
      num_heads=HEADS,
      num_classes=5,
      class_token=config['class_token'],
      no_embed_class=not config['class_pos_embed'],
      global_pool=config['global_pool'],
      fc_norm=False,
  ).eval()
  timm_vit._load_weights(model, str(path))  # pylint: disable=protected-access
  x = images(2, 32)
  diff = max_diff(flax_out(conversion, x), model(nchw(x)).numpy())
  print(f'npz {kind}: max |logit diff| {diff:.2e}')
  assert diff <= TOL


def test_cli_big_vision_npz_resampled_with_verify(tmp_path, capsys):
  path = tmp_path / 'big_vision.npz'
  np.savez(path, **{f'params/{k}': v for k, v in flax_npz_state('big_vision').items()})
  code, out, err = run_cli(
      capsys,
      '--checkpoint', path, '--out', tmp_path / 'bb', '--num_heads', 4, '--image_size', 48,
      '--verify',
  )  # fmt: skip
  assert code == 0, err
  assert 'source: Flax ViT .npz (big_vision)' in out and verified(out) <= TOL


def test_npz_conversion_does_not_import_torch(tmp_path):
  path = tmp_path / 'augreg.npz'
  np.savez(path, **flax_npz_state('augreg'))
  script = (
      'import sys\n'
      'from feadapter_jax.convert import __main__ as cli\n'
      f'code = cli.main(["--checkpoint", {str(path)!r}, "--out", {str(tmp_path / "bb")!r}, '
      '"--num_heads", "4"])\n'
      'print("exit", code, "torch imported:", "torch" in sys.modules)\n'
  )
  done = subprocess.run(
      [sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert 'exit 0 torch imported: False' in done.stdout, done.stderr[-2000:]
  assert store.read_metadata(tmp_path / 'bb')['source'] == 'augreg'


# ----------------------------------------------------------------------- names, flags, refusals


def test_cli_rename_and_ignore(tmp_path, capsys):
  """A research checkpoint: the ViT under `backbone.`, plus prompts and a landmark head."""
  model = tiny_vit()
  state = {f'backbone.{k}': v for k, v in model.state_dict().items()}
  state['prompt.tokens'] = torch.zeros(1, 3, WIDTH)
  state['landmark_head.weight'] = torch.zeros(10, WIDTH)
  state['landmark_head.bias'] = torch.zeros(10)
  path = tmp_path / 'research.safetensors'
  safetensors.torch.save_file(state, str(path))
  base = ['--checkpoint', path, '--num_heads', 4]

  code, _, err = run_cli(capsys, *base, '--out', tmp_path / 'a')
  assert code == 2 and 'Unrecognised checkpoint' in err
  code, _, err = run_cli(capsys, *base, '--out', tmp_path / 'b', '--rename', r'^backbone\.=')
  assert code == 2 and "Unknown keys for a timm VisionTransformer checkpoint: 'landmark_head" in err
  code, out, err = run_cli(
      capsys,
      *base, '--out', tmp_path / 'c', '--rename', r'^backbone\.=', '--ignore', '^landmark_head',
      '--ignore', r'^prompt\.', '--verify',
  )  # fmt: skip
  assert code == 0, err
  assert (
      "ignored (--ignore): 3 arrays: 'landmark_head.bias', 'landmark_head.weight', "
      "'prompt.tokens'" in out
  )
  assert verified(out) <= TOL
  params, model_config = convert.load(tmp_path / 'c')
  x = images(2, 32)
  got = np.asarray(models.build(model_config).apply({'params': params}, x))
  assert max_diff(got, model(nchw(x)).numpy()) <= TOL


def test_cli_normalisation_unknown_or_given(tmp_path, capsys):
  path = tmp_path / 'vit.safetensors'
  safetensors.torch.save_file(tiny_vit().state_dict(), str(path))
  code, out, err = run_cli(capsys, '--checkpoint', path, '--out', tmp_path / 'a', '--num_heads', 4)
  assert code == 0, err
  assert 'normalisation: unknown; pass --mean/--std' in out
  assert convert.read_metadata(tmp_path / 'a')['mean'] is None
  code, out, err = run_cli(
      capsys,
      '--checkpoint', path, '--out', tmp_path / 'b', '--num_heads', 4,
      '--mean', '0.5,0.4,0.3', '--std', '0.2,0.2,0.2',
  )  # fmt: skip
  assert code == 0, err
  assert 'normalisation: mean [0.5, 0.4, 0.3], std [0.2, 0.2, 0.2] (given)' in out
  metadata = convert.read_metadata(tmp_path / 'b')
  assert metadata['mean'] == [0.5, 0.4, 0.3] and metadata['std'] == [0.2, 0.2, 0.2]
  code, _, err = run_cli(capsys, '--checkpoint', path, '--out', tmp_path / 'c', '--mean', '0.5,0.5')
  assert code == 2 and '--mean takes 3 comma-separated numbers' in err


def test_store_refuses_a_config_without_every_architecture_key(tmp_path):
  conversion = convert.convert(tiny_vit().state_dict(), num_heads=HEADS)
  config = dict(conversion.model_config)
  del config['fc_norm']
  with pytest.raises(ValueError, match=r"lacks the architecture keys \['fc_norm'\]"):
    convert.save(tmp_path / 'x', conversion.params, config)


def with_names(state, **arrays):
  return {**readers.unwrap(state), **arrays}


ZERO = np.zeros((4, 4), np.float32)
REFUSED = {
    'BEiT relative position bias': (
        lambda: with_names(
            tiny_vit().state_dict(), **{'blocks.0.attn.relative_position_bias_table': ZERO}
        ),
        'relative position bias',
    ),
    'Swin': (
        lambda: {
            'layers.0.blocks.0.attn.relative_position_bias_table': ZERO,
            'patch_embed.proj.weight': ZERO,
        },
        'relative position bias',
    ),
    'qk_norm': (lambda: tiny_vit(qk_norm=True).state_dict(), 'qk_norm'),
    'attention pooling': (lambda: tiny_vit(global_pool='map').state_dict(), 'attention pooling'),
    'distillation token': (
        lambda: with_names(tiny_vit().state_dict(), dist_token=np.zeros((1, 1, WIDTH))),
        'distillation token',
    ),
    'timm SwiGLU': (
        lambda: tiny_vit(mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU).state_dict(),
        'gated MLP',
    ),
    'HF Dinov2 SwiGLU': (lambda: dinov2_model(0, use_swiglu_ffn=True).state_dict(), 'SwiGLU'),
    'npz pre-logits': (
        lambda: {**flax_npz_state('augreg'), 'pre_logits/kernel': ZERO},
        'pre-logits layer',
    ),
    'npz MAP head': (
        lambda: {**flax_npz_state('big_vision'), 'MAPHead_0/probe': ZERO},
        'attention pooling',
    ),
    'CLIP ResNet': (
        lambda: {'visual.conv1.weight': ZERO, 'visual.layer1.0.conv1.weight': ZERO},
        'ResNet image tower',
    ),
}


@pytest.mark.parametrize('name', REFUSED)
def test_unsupported_architectures_are_refused(name):
  make, feature = REFUSED[name]
  with pytest.raises(ValueError, match=f'Unsupported architecture: .*{feature}'):
    convert.convert(make(), num_heads=HEADS)


def test_cli_unsupported_architecture_exits_2_with_one_line(tmp_path):
  path = tmp_path / 'beit.safetensors'
  state = dict(tiny_vit().state_dict())
  state['blocks.0.attn.relative_position_bias_table'] = torch.zeros(4, HEADS)
  safetensors.torch.save_file(state, str(path))
  done = subprocess.run(
      [sys.executable, '-m', 'feadapter_jax.convert', '--checkpoint', str(path), '--out',
       str(tmp_path / 'bb')],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: Unsupported architecture'), done.stderr
  assert 'relative position bias' in lines[0] and not (tmp_path / 'bb').exists()


@pytest.mark.parametrize(
    'reference',
    ['torchvision', 'hf_vit'],
)
def test_verify_rebuilds_the_other_references(reference):
  """timm, CLIP, Dinov2 and npz references run in the tests above; these are the rest."""
  if reference == 'torchvision':
    torchvision = pytest.importorskip('torchvision')
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=HEADS, hidden_dim=WIDTH,
        mlp_dim=128, num_classes=5,
    )  # fmt: skip
  else:
    config = transformers.ViTConfig(
        hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=128,
        image_size=32, patch_size=8, num_labels=5,
    )  # fmt: skip
    model = transformers.ViTForImageClassification(config)
  state = redraw(model).state_dict()
  for size in (32, 48):
    conversion = convert.convert(state, image_size=size, num_heads=HEADS)
    assert verify.max_logit_difference(state, conversion)[0] <= TOL
