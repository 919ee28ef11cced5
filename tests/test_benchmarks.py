"""Benchmarks: the PyTorch reference computes what the Flax model computes; FLOP counts; the
train-step benchmark runs end to end. Correctness only, no timings."""

import pytest

# torch and timm before anything that imports TensorFlow (configs -> data pipeline): importing
# timm (torchvision -> torch._dynamo -> triton) after TensorFlow crashes the process here.
torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks import common, device_check, profile_step, torch_reference, train_step  # noqa: E402
from feadapter_jax import models, partition  # noqa: E402
from feadapter_jax.models import builder  # noqa: E402

METHODS = train_step.METHODS


def tiny_setup(method, seed=0, frames=8, batch=2):
  """The synthetic config's tiny model for `method`, random (perturbed) Flax params, a clip."""
  sp = train_step.spec('tiny', method)
  model = models.build(sp['model'])
  clip = jax.random.normal(jax.random.key(seed + 1), (batch, frames, 32, 32, 3))
  params = model.init(jax.random.key(seed), clip)['params']
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 3), len(leaves))
  # Zero-initialised layers (up, dilation predictor, AIM fc2...) become non-zero: adapters act.
  params = treedef.unflatten(
      [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  )
  torch_model = torch_reference.VideoViT(sp['model'], frames)
  flat = {n: np.asarray(v) for n, v in partition.flatten(params).items()}
  torch_reference.load_flax_params(torch_model, flat)
  video = torch.from_numpy(np.array(clip)).permute(0, 1, 4, 2, 3).contiguous()
  return sp, model, params, clip, torch_model, video


@pytest.mark.parametrize('method', METHODS)
def test_pytorch_reference_gives_the_flax_logits(method):
  sp, model, params, clip, torch_model, video = tiny_setup(method)
  expected = np.asarray(model.apply({'params': params}, clip))
  torch_model.eval()
  with torch.no_grad():
    got = torch_model(video).numpy()
  assert got.shape == expected.shape == (2, sp['model']['num_classes'])
  np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize('method', ['fe_adapter', 'st_adapter', 'aim'])
def test_adapter_gradients_match(method):
  sp, model, params, clip, torch_model, video = tiny_setup(method)
  if method == 'fe_adapter':
    # The perturbed dilation predictor gives varying, fractional dilations, and they matter.
    flat = partition.flatten(params)
    still = {n: jnp.zeros_like(v) if '/conv/dilation/' in n else v for n, v in flat.items()}
    still = jax.tree.unflatten(jax.tree.structure(params), [still[n] for n in flat])
    assert not np.allclose(
        model.apply({'params': still}, clip), model.apply({'params': params}, clip), atol=1e-3
    )
  labels = np.array([1, 4])

  def loss(p):
    logits = model.apply({'params': p}, clip)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grads = partition.flatten(jax.grad(loss)(params))
  torch_model.eval()
  trainable = dict(torch_reference.freeze(torch_model, sp['trainable']))
  torch.nn.functional.cross_entropy(torch_model(video), torch.from_numpy(labels)).backward()
  assert trainable and all(
      p.grad is None for n, p in torch_model.named_parameters() if n not in trainable
  )
  for name, param in trainable.items():
    fname = torch_reference.flax_name(name)
    expected = torch_reference.to_torch_layout(np.asarray(grads[fname]), fname)
    np.testing.assert_allclose(param.grad.numpy(), expected, atol=3e-4, rtol=1e-3, err_msg=name)


def test_pytorch_train_step_trains_only_the_trainable_set():
  sp = train_step.spec('tiny', 'fe_adapter')
  torch.manual_seed(0)
  model = torch_reference.VideoViT(sp['model'], 8)
  before = {n: p.detach().clone() for n, p in model.named_parameters()}
  step = torch_reference.make_train_step(model, sp['trainable'], sp['optim'])
  loss = step(torch.randn(2, 8, 3, 32, 32), torch.tensor([0, 3]))
  assert np.isfinite(float(loss))
  for name, param in model.named_parameters():
    if not ('adapter' in name or name.startswith('head')):  # frozen
      assert torch.equal(param, before[name]), name
  assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if 'adapter' in n)


def test_torch_names_map_onto_flax_names_one_to_one():
  for method in METHODS:
    sp = train_step.spec('tiny', method)
    model = models.build(sp['model'])
    shapes = builder.param_shapes(model, (1, 2, 32, 32, 3))
    flax_names = set(partition.flatten(shapes))
    torch_names = {
        torch_reference.flax_name(n)
        for n, _ in torch_reference.VideoViT(sp['model'], 2).named_parameters()
    }
    assert torch_names == flax_names, method


def test_analytic_flops_of_vit_b16():
  sp = train_step.spec('base', 'full_finetune')
  per_frame = common.analytic_flops(sp['model'], 1, sp['trainable'])['forward']
  assert per_frame == pytest.approx(35.1e9, rel=2e-3)  # 17.56 G multiply-adds per 224 frame
  fe = common.analytic_flops(
      train_step.spec('base', 'fe_adapter')['model'],
      16,
      train_step.spec('base', 'fe_adapter')['trainable'],
  )
  full = common.analytic_flops(sp['model'], 16, sp['trainable'])
  assert full['train'] == pytest.approx(3 * full['forward'], rel=0.01)
  # The frozen backbone costs 2x its forward (no weight gradients), the adapters 3x theirs.
  assert 0.70 < fe['train'] / full['train'] < 0.78


def test_device_check_counts_step_flops_and_extrapolates_the_batch():
  full = train_step.spec('base', 'full_finetune')
  fe = train_step.spec('base', 'fe_adapter')
  flops = {
      name: device_check.model_flops_per_clip(sp['model'], 16, sp['trainable'])
      for name, sp in (('full', full), ('fe', fe))
  }
  forward = {
      name: common.analytic_flops(sp['model'], 16, sp['trainable'])['forward']
      for name, sp in (('full', full), ('fe', fe))
  }
  assert flops['full'] == pytest.approx(3 * forward['full'])  # weight and input gradients
  # The frozen backbone 2x (input gradients only), the adapters 3x: a little over 2x in all.
  assert 2.0 < flops['fe'] / forward['fe'] < 2.2
  # 100 bytes per clip over a 10-byte state: 8 clips predict 89 fit in 0.9 x 10 kB, so 64 next;
  # at 64 not even 128 is predicted to fit, and the search ends; without a limit it doubles.
  at = lambda b: {'program_bytes': 10 + 100 * b, 'donated_bytes': 10}  # noqa: E731
  assert device_check.next_batch(8, at(8), 10_000, 1024) == 64
  assert device_check.next_batch(64, at(64), 10_000, 1024) == 64
  assert device_check.next_batch(8, at(8), 10_000, 32) == 32
  assert device_check.next_batch(4, at(4), None, 8) == 8


@pytest.mark.parametrize('method', ['fe_adapter', 'linear_probe', 'full_finetune', 'aim'])
def test_analytic_flops_agree_with_xla_at_tiny_size(method):
  from feadapter_jax import optim, step  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  sp = train_step.spec('tiny', method)
  model = models.build(sp['model'])
  batch = {'video': jnp.zeros((4, 8, 32, 32, 3), jnp.uint8), 'label': jnp.zeros((4,), jnp.int32)}
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 32, 32, 3)))['params']
  mask = partition.trainable_mask(params, sp['trainable'])
  tx = optim.make(ml_collections.ConfigDict(sp['optim']), mask, 100)
  state = step.init_state(model, tx, params, 0)
  xla = (
      jax.jit(step.make_train_step(model, tx, mask, mean=sp['mean'], std=sp['std']))
      .lower(state, batch)
      .compile()
      .cost_analysis()['flops']
      / 4
  )
  analytic = common.analytic_flops(sp['model'], 8, sp['trainable'])['train']
  # XLA also counts elementwise work (norms, softmax, GELU, the optimizer): a little more.
  assert 1.0 <= xla / analytic < 1.2, (xla, analytic)


@pytest.mark.slow
def run_train_step(*args: str) -> tuple[list[dict], str]:
  """`benchmarks/train_step.py --size tiny --json *args` as a user runs it: (rows, stderr)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run(
      [
          sys.executable,
          os.path.join(root, 'benchmarks', 'train_step.py'),
          '--size',
          'tiny',
          '--rounds',
          '1',
          '--warmup',
          '0',
          '--steps',
          '1',
          '--json',
          *args,
      ],
      capture_output=True,
      text=True,
      check=True,
      env=env,
      timeout=900,
  )
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')], out.stderr


def test_benchmark_runs_end_to_end_at_tiny_size_with_json():
  rows, _ = run_train_step(
      '--methods', 'fe_adapter,linear_probe', '--no_remat', '--peak_sizes', '512'
  )
  seen = {(r['framework'], r['variant']) for r in rows}
  assert seen == {
      ('jax', 'fe_adapter'),
      ('jax', 'linear_probe'),
      ('pytorch', 'fe_adapter'),
      ('pytorch', 'linear_probe'),
      ('jax', 'fe_adapter conv=fixed'),
  }
  for r in rows:
    assert {'method', 'clips_per_s', 'utilisation', 'peak_memory_bytes', 'framework'} <= set(r)
    assert r['framework'] in ('jax', 'pytorch')
    assert (r['backend'], r['dtype'], r['peak_dtype'], r['batch']) == (
        'cpu',
        'float32',
        'float32',
        32,
    )
    assert r['clips_per_s'] > 0 and r['utilisation'] > 0
    assert r['peak_gflops'] > 0 and r['cores'] >= 1
  assert all(r['peak_memory_bytes'] > 0 for r in rows if r['variant'] != 'fe_adapter conv=fixed')
  fixed = next(r for r in rows if r['variant'] == 'fe_adapter conv=fixed')
  assert fixed['dynamic_over_fixed_step_time'] > 0
  # The same share from benchmarks/dilation.py's timing of the adapter conv alone.
  assert 0 < fixed['dynamic_over_fixed_step_time_from_conv'] < 10


def test_benchmark_takes_the_accelerator_settings_dtype_and_batch():
  # What a GPU run uses (bfloat16 compute and peak, a batch to fill the device), here on CPU;
  # PyTorch is skipped: its reference computes in float32 only.
  rows, log = run_train_step(
      '--methods',
      'linear_probe',
      '--no_remat',
      '--dtype',
      'bfloat16',
      '--batch',
      '4',
      '--peak_sizes',
      '256',
  )
  assert [(r['framework'], r['dtype'], r['peak_dtype'], r['batch']) for r in rows] == [
      ('jax', 'bfloat16', 'bfloat16', 4)
  ]
  assert rows[0]['clips_per_s'] > 0 and rows[0]['peak_memory_bytes'] > 0
  assert 'PyTorch reference runs in float32 on CPU only' in log


@pytest.mark.slow
def test_export_speed_serves_the_three_exports_at_tiny_size():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = os.path.join(root, 'benchmarks', 'export_speed.py')
  args = ['--arch=tiny', '--batch=2', '--repeats=1', '--platforms=cpu', '--json']
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(
      [sys.executable, script, *args], capture_output=True, text=True, env=env, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.splitlines()[-1])
  assert set(out['speed']) == {'jax', 'tensorflow', 'onnxruntime'}
  for runtime, figures in out['speed'].items():
    assert 'error' not in figures, (runtime, figures)
    assert figures['ms_per_clip'] > 0 and figures['clips_per_s'] > 0, runtime
    assert figures['max_prob_diff_vs_jax'] < 1e-5, runtime
  sizes = out['sizes']
  assert 0 < sizes['safetensors'] < sizes['onnx'] and sizes['savedmodel'] > sizes['safetensors']


def test_profile_classifies_compiled_ops_by_what_they_compute():
  def f(a, b):
    return jnp.sum(jnp.tanh(a @ b), axis=1), jnp.exp(a) * 2.0

  a, b = jnp.ones((64, 32)), jnp.ones((32, 48))
  hlo = jax.jit(f).lower(a, b).compile().as_text()
  categories = profile_step.classify_hlo(hlo)
  kinds = {}
  for category, shape in categories.values():
    kinds.setdefault(category, set()).add(shape.split('{')[0])
  assert 'f32[64,48]' in kinds['matmul']  # the dot (fused with its tanh or not)
  assert 'f32[64]' in kinds['reduction']
  assert 'f32[64,32]' in kinds['elementwise']


def test_face_detection_benchmark_times_both_detectors():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [
          sys.executable,
          os.path.join(root, 'benchmarks', 'face_detection.py'),
          '--seconds=0.4',
          '--json',
      ],
      capture_output=True,
      text=True,
      check=True,
      timeout=300,
  )
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
  assert [(r['detector'], r['frames']) for r in rows] == [('haar', 10), ('mtcnn', 10)]
  assert all(r['frames_per_s'] > 0 and r['startup_s'] > 0 for r in rows)
  ratio = rows[1]['frames_per_s'] / rows[0]['frames_per_s']
  assert rows[1]['speed_vs_first_detector'] == pytest.approx(ratio, rel=0.05)
