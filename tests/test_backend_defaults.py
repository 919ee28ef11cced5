"""The backend's defaults, picked by backend name in one place (`kernels.py`): kernels, compute
dtype, attention implementation and compiler options for 'cpu', 'gpu' and 'tpu'; what a run
records; and that the accelerator path (bfloat16, reference kernels) computes what the CPU path
(float32, CPU kernels) does, to bfloat16's precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic
from feadapter_jax import models, optim, partition, step, train
from feadapter_jax.models import builder, kernels
from tests import test_partition
from tests.tiny import ADAPTERS, tiny

MEAN, STD = (0.5,) * 3, (0.25,) * 3
# Backend name -> (kernels, dtype, bfloat16 attention, CPU compiler options applied).
EXPECTED = {
    'cpu': ('cpu', 'float32', 'xla', True),
    'gpu': ('reference', 'bfloat16', 'cudnn', False),
    'tpu': ('reference', 'bfloat16', 'xla', False),
}
# bfloat16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2% per op). Measured on the tiny FE
# ViT below: logits 0.010 apart at most (of magnitudes up to 1.7), probabilities 1.5e-3, the
# train-step loss 0.36% (1.849 vs 1.843). The bounds leave about 3x of that.
LOGITS_ATOL, PROBS_ATOL, LOSS_RTOL = 0.04, 5e-3, 1e-2


@pytest.mark.parametrize('backend', sorted(EXPECTED))
def test_each_backend_name_gets_its_defaults(backend):
  kernel_form, dtype, attention, cpu_options = EXPECTED[backend]
  assert kernels.resolve('auto', backend) == kernel_form
  assert kernels.resolve_dtype('auto', backend) == dtype
  assert kernels.attention_implementation(jnp.bfloat16, backend) == attention
  assert kernels.attention_implementation(jnp.float32, backend) == 'xla'  # cuDNN: 16-bit only
  options = synthetic.get_config('quick').cpu_compiler_options
  assert (kernels.compiler_options(options, backend) == dict(options)) == cpu_options
  assert cpu_options or kernels.compiler_options(options, backend) is None
  # Explicit choices hold on every backend.
  assert kernels.resolve('cpu', backend) == 'cpu' and kernels.resolve('reference', backend)
  assert kernels.resolve_dtype('float32', backend) == 'float32'
  assert kernels.resolve_dtype('bfloat16', backend) == 'bfloat16'
  resolved = builder.resolve_backend(synthetic.get_config('quick'), backend)
  assert (resolved.model.kernels, resolved.model.dtype) == ('auto', dtype)


def test_without_a_name_the_running_backend_decides(monkeypatch):
  assert jax.default_backend() == 'cpu'
  config = synthetic.get_config('quick')
  assert kernels.resolve_dtype('auto') == 'float32'
  assert train.compiler_options(config) == dict(config.cpu_compiler_options)
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert kernels.resolve('auto') == 'reference' and kernels.resolve_dtype('auto') == 'bfloat16'
  assert train.compiler_options(config) is None


def test_bad_dtype_names_the_option():
  with pytest.raises(ValueError, match=r"model\.dtype='bf16'.*'auto'"):
    kernels.resolve_dtype('bf16')
  with pytest.raises(ValueError, match=r"model\.dtype='int8'"):
    kernels.resolve_dtype('int8')


@pytest.mark.parametrize('backend', ['cpu', 'gpu'])
def test_the_model_is_built_in_the_backends_dtype_with_float32_parameters(backend, monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  config = synthetic.get_config('quick')
  assert config.model.dtype == 'auto'
  model = builder.build_model(builder.resolve_backend(config))
  assert model.dtype == jnp.dtype(EXPECTED[backend][1])
  assert builder.build_model(config).dtype == model.dtype  # 'auto' resolves in the build too
  shapes = builder.param_shapes(model, builder.clip_shape(config))
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype('float32')}


@pytest.mark.parametrize('backend', ['cpu', 'gpu'])
def test_the_run_records_the_resolved_dtype_and_leaves_the_kernels_to_each_machine(
    backend, monkeypatch
):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  config = train.resolve_config(synthetic.get_config('quick'))
  assert (config.model.kernels, config.model.dtype) == ('auto', EXPECTED[backend][1])


def test_compiled_attention_is_read_from_the_hlo():
  qkv = jax.random.normal(jax.random.key(0), (2, 17, 3 * 2 * 8), jnp.bfloat16)
  for form in ('reference', 'cpu'):
    compiled = jax.jit(lambda x, form=form: kernels.attention(x, 2, form)).lower(qkv).compile()
    assert kernels.compiled_attention(compiled.as_text()) == 'xla'
  cudnn = (
      '%custom-call.3 = (bf16[32,197,12,64]{3,2,1,0}, u8[0]{0}) custom-call(%q, %k, %v), '
      'custom_call_target="__cudnn$fmhaSoftmax", backend_config={"cudnn_fmha_backend_config":{}}'
  )
  assert kernels.compiled_attention(cudnn) == 'cudnn'
  backward = cudnn.replace('fmhaSoftmax', 'fmhaSoftmaxBackward')
  assert kernels.compiled_attention(backward) == 'cudnn'
  conv = cudnn.replace('__cudnn$fmhaSoftmax', '__cudnn$convForward')
  assert kernels.compiled_attention(conv) == 'xla'  # cuDNN, but no fused attention


def _accelerator_and_cpu_paths():
  """The tiny FE ViT in bfloat16 with the reference kernels, and in float32 with the CPU kernels,
  on one set of perturbed (so every adapter acts) float32 parameters."""
  fast = models.build(tiny(ADAPTERS['fe'], dtype='bfloat16', kernels='reference'))
  exact = models.build(tiny(ADAPTERS['fe'], dtype='float32', kernels='cpu'))
  params = exact.init(jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)))['params']
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = treedef.unflatten(
      [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  )
  video = np.random.default_rng(0).integers(0, 256, (4, 4, 32, 32, 3), np.uint8)
  return fast, exact, params, video


def test_bfloat16_reference_logits_agree_with_float32_cpu_logits():
  fast, exact, params, video = _accelerator_and_cpu_paths()
  probs = {
      name: jax.jit(step.make_eval_step(model, mean=MEAN, std=STD))(
          params, {'video': video[:, None]}
      )
      for name, model in (('fast', fast), ('exact', exact))
  }
  logits = {
      name: model.apply({'params': params}, step.normalise_video(video, MEAN, STD, model.dtype))
      for name, model in (('fast', fast), ('exact', exact))
  }
  assert logits['fast'].dtype == jnp.float32  # the head computes in float32
  np.testing.assert_allclose(logits['fast'], logits['exact'], rtol=0, atol=LOGITS_ATOL)
  assert not np.array_equal(logits['fast'], logits['exact'])  # bfloat16 did compute
  np.testing.assert_allclose(probs['fast'], probs['exact'], rtol=0, atol=PROBS_ATOL)


def test_bfloat16_reference_train_step_loss_agrees_with_float32_cpu():
  fast, exact, params, video = _accelerator_and_cpu_paths()
  batch = {'video': video, 'label': np.array([0, 1, 2, 3], np.int32)}
  mask = partition.trainable_mask(params, test_partition.TRAINABLE)
  tx = optim.make(test_partition.OPTIM, mask, total_steps=10)
  losses = {}
  for name, model in (('fast', fast), ('exact', exact)):
    state = step.init_state(model, tx, params, seed=0)
    train_step = jax.jit(step.make_train_step(model, tx, mask, mean=MEAN, std=STD))
    new_state, metrics = train_step(state, batch)
    losses[name] = float(metrics['loss'])
    # Master weights stay float32 under bfloat16 compute.
    assert {x.dtype for x in jax.tree.leaves(new_state['params'])} == {jnp.dtype('float32')}
  np.testing.assert_allclose(losses['fast'], losses['exact'], rtol=LOSS_RTOL)
