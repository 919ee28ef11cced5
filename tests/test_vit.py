"""The ViT: timm-equal parameter counts, image/clip equivalence, dtype and remat options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic
from feadapter_jax import methods, models, partition
from feadapter_jax.models import adapters
from feadapter_jax.models import builder
from tests.tiny import ADAPTERS, tiny


def count(model_config, input_shape):
  shapes = builder.param_shapes(models.build(model_config), input_shape)
  return sum(partition.size(x) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize(
    'variant, expected',
    [
        ('Ti/16', 5_717_416),
        ('S/16', 22_050_664),
        ('B/16', 86_567_656),
        ('L/16', 304_326_632),
        ('B/32', 88_224_232),
    ],
)
def test_param_count_equals_timm(variant, expected):
  config = dict(variant=variant, num_classes=1000, image_size=224)
  assert count(config, (1, 224, 224, 3)) == expected


def test_image_is_a_one_frame_clip_and_clip_logits_average_frames():
  model = models.build(tiny())
  clip = jax.random.normal(jax.random.key(1), (2, 3, 32, 32, 3))
  params = model.init(jax.random.key(0), clip)['params']
  per_frame = jnp.stack([model.apply({'params': params}, clip[:, i]) for i in range(3)], 1)
  np.testing.assert_allclose(model.apply({'params': params}, clip), per_frame.mean(1), atol=1e-5)
  np.testing.assert_allclose(
      model.apply({'params': params}, clip[:, :1]), per_frame[:, 0], atol=1e-6
  )


def test_bad_inputs_name_the_problem():
  model = models.build(tiny())
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  with pytest.raises(ValueError, match='position embedding'):
    model.apply({'params': params}, jnp.zeros((1, 48, 48, 3)))
  with pytest.raises(ValueError, match='not divisible'):
    model.apply({'params': params}, jnp.zeros((1, 36, 36, 3)))
  with pytest.raises(ValueError, match='Unknown ViT variant'):
    models.build(dict(variant='X/16', num_classes=2))
  with pytest.raises(ValueError, match='Unknown model config keys'):
    models.build(dict(tiny(), depht=3))


def test_bfloat16_compute_and_remat_match_float32():
  clip = jax.random.normal(jax.random.key(1), (2, 2, 32, 32, 3))
  base = models.build(tiny(dict(kind='fe', width=8)))
  params = base.init(jax.random.key(0), clip)['params']
  ref = base.apply({'params': params}, clip)
  bf16 = models.build(tiny(dict(kind='fe', width=8), dtype='bfloat16'))
  out = bf16.apply({'params': params}, clip)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=0.1)
  assert not np.allclose(out, ref, atol=1e-6)  # really computed in bfloat16
  remat = models.build(tiny(dict(kind='fe', width=8), remat=True))
  loss = lambda m: lambda p: m.apply({'params': p}, clip).sum()
  g_ref, g_remat = jax.grad(loss(base))(params), jax.grad(loss(remat))(params)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_remat_under_the_cpu_compiler_options_frees_activations_and_keeps_gradients():
  """XLA CPU drops remat's CSE barriers unless the config's options keep them (configs/common).

  Without them CSE merges recomputation into the forward pass, and remat frees little
  (docs/performance.md has the ViT-B/16 figures). Checked here with frozen weights, as in an
  adapter step.
  """
  options = dict(synthetic.get_config().cpu_compiler_options)
  scheduler_only = {k: v for k, v in options.items() if k != 'xla_disable_hlo_passes'}
  clip = jax.random.normal(jax.random.key(1), (4, 4, 32, 32, 3))
  arch = dict(depth=6, width=64, mlp_dim=256, num_heads=4)
  grads, temp, barriers = {}, {}, {}
  for remat in (False, True):
    model = models.build(tiny(dict(kind='fe', width=8), remat=remat, **arch))
    params = model.init(jax.random.key(0), clip)['params']
    mask = partition.trainable_mask(params, ('.*adapter.*', 'head/.*'))
    grad = jax.jit(
        jax.grad(lambda p, x, m=model: m.apply({'params': partition.stop_frozen(p, mask)}, x).sum())
    )
    for name, opts in (('config', options), ('scheduler_only', scheduler_only)):
      compiled = grad.lower(params, clip).compile(compiler_options=opts)
      temp[remat, name] = compiled.memory_analysis().temp_size_in_bytes
      barriers[remat, name] = compiled.as_text().count('opt-barrier(')
      grads[remat, name] = compiled(params, clip)
  # One barrier per rematerialised block survives compilation only under the config's options
  # (beside the adapters' own: kernels.materialized_cotangent).
  assert barriers[True, 'config'] >= barriers[False, 'config'] + arch['depth']
  assert barriers[True, 'scheduler_only'] == 0
  assert temp[True, 'config'] < 0.5 * temp[False, 'config']
  assert temp[True, 'config'] <= temp[True, 'scheduler_only']
  for a, b in zip(jax.tree.leaves(grads[False, 'config']), jax.tree.leaves(grads[True, 'config'])):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_stochastic_depth_is_per_sample_and_off_at_eval():
  model = models.build(tiny(drop_path_rate=0.9, depth=4))
  clip = jax.random.normal(jax.random.key(1), (8, 1, 32, 32, 3))
  params = model.init(jax.random.key(0), clip)['params']
  eval_a = model.apply({'params': params}, clip)
  np.testing.assert_array_equal(eval_a, model.apply({'params': params}, clip))
  train = model.apply({'params': params}, clip, train=True, rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(train, eval_a, atol=1e-4)


def perturbed_params(model, clip, scale=0.1):
  """Init params moved off zero, so zero-initialised layers (up, predictor, fc2) act."""
  leaves, treedef = jax.tree.flatten(model.init(jax.random.key(0), clip)['params'])
  keys = jax.random.split(jax.random.key(3), len(leaves))
  return treedef.unflatten(
      [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  )


# Each adapter kind and conv once ('fe_both_placements' has no kernel of its own).
# One model per kind of module the kernels touch: FE's convs, reads and predictor; AIM's attention
# along time and GELU bottlenecks; the plain ViT. Each kernel of the other adapters is checked
# against its reference in test_kernels.py and test_adapters.py.
@pytest.mark.parametrize('name', ['fe', 'aim', 'none'])
def test_cpu_and_reference_kernels_give_one_model(name):
  clip = jax.random.normal(jax.random.key(1), (1, 3, 32, 32, 3))
  cpu, ref = (models.build(tiny(ADAPTERS.get(name), kernels=k)) for k in ('cpu', 'reference'))
  init = lambda m: m.init(jax.random.key(0), clip)['params']  # noqa: E731
  flat_cpu, flat_ref = partition.flatten(init(cpu)), partition.flatten(init(ref))
  # One parameter tree, initialised alike: names (those checkpoints hold), shapes and values.
  assert {n: v.shape for n, v in flat_cpu.items()} == {n: v.shape for n, v in flat_ref.items()}
  for n, v in flat_cpu.items():
    np.testing.assert_array_equal(v, flat_ref[n], err_msg=n)
  if name == 'fe':
    assert {
        f'blocks_0/adapter_attn/{n}'
        for n in ('conv/taps/kernel', 'conv/dilation/kernel', 'conv/bias', 'down/kernel')
    } <= set(flat_ref)
  params = perturbed_params(cpu, clip)
  loss = lambda m: lambda p: jnp.sum(jnp.sin(m.apply({'params': p}, clip)))  # noqa: E731
  np.testing.assert_allclose(
      cpu.apply({'params': params}, clip), ref.apply({'params': params}, clip), atol=1e-5
  )
  g_cpu, g_ref = jax.jit(jax.grad(loss(cpu)))(params), jax.jit(jax.grad(loss(ref)))(params)
  assert jax.tree.structure(g_cpu) == jax.tree.structure(g_ref)
  for path, a, b in zip(partition.flatten(g_cpu), jax.tree.leaves(g_cpu), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=path)


def traced(model, clip):
  """The jaxprs, as text, of the model's forward pass and of its loss's gradient."""
  params = model.init(jax.random.key(0), clip)['params']
  apply = lambda p: model.apply({'params': p}, clip)  # noqa: E731
  return (
      str(jax.make_jaxpr(apply)(params)),
      str(jax.make_jaxpr(jax.grad(lambda p: apply(p).sum()))(params)),
  )


def test_kernels_option_reaches_every_module_and_auto_follows_the_backend(monkeypatch):
  clip = jax.random.normal(jax.random.key(1), (1, 4, 32, 32, 3))
  fe = tiny(dict(kind='fe', width=8, activation='gelu'))
  built = {
      (name, k): models.build({**adapter, 'kernels': k})
      for name, adapter in (('fe', fe), ('aim', tiny(dict(kind='aim'))))
      for k in ('cpu', 'reference')
  }
  text = {key: traced(model, clip) for key, model in built.items()}
  # The CPU forms' custom derivatives (GELU, LayerNorm, convs, reads) and the adapters' barrier;
  # none of them under 'reference', so no module falls back to its own default.
  for name in ('fe', 'aim'):
    assert not any(
        p in ''.join(text[name, 'reference'])
        for p in ('custom_jvp_call', 'custom_vjp_call', 'optimization_barrier')
    )
    assert all(p in text[name, 'cpu'][0] for p in ('custom_jvp_call', 'custom_vjp_call'))
  assert 'optimization_barrier' in text['fe', 'cpu'][1]
  # XLA's convolutions: the patch embedding alone on CPU; with 'reference' also every FE
  # block's dilation predictor and taps conv.
  convs = {k: text['fe', k][0].count('conv_general_dilated') for k in ('cpu', 'reference')}
  assert convs == {'cpu': 1, 'reference': 1 + 2 * fe['depth']}
  # 'auto' (the default) is 'cpu' on this CPU backend, bit for bit ...
  auto = models.build(fe)
  assert auto.kernels == 'auto'
  params = perturbed_params(auto, clip)
  np.testing.assert_array_equal(
      auto.apply({'params': params}, clip), built['fe', 'cpu'].apply({'params': params}, clip)
  )
  # ... and 'reference' on any other.
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert traced(auto, clip) == text['fe', 'reference']


def test_unknown_kernels_value_names_the_option_and_the_choices():
  model = models.build(tiny(kernels='fast'))
  with pytest.raises(ValueError, match=r"model\.kernels='fast'.*'auto', 'reference', 'cpu'"):
    model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


# The image-model families' options (each checked against timm through the converter's tests).
FAMILIES = {
    'clip': dict(pre_norm=True, activation='quick_gelu', layer_norm_eps=1e-5),
    'dinov2_registers': dict(layer_scale=0.5, num_registers=4, class_pos_embed=False),
    'mae_no_class_token': dict(class_token=False, global_pool='avg', fc_norm=True),
}


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_fe_adapter_on_every_family_starts_as_the_image_model_and_then_acts(family):
  clip = jax.random.normal(jax.random.key(1), (2, 2, 32, 32, 3))
  image_model = models.build(tiny(**FAMILIES[family]))
  adapted = models.build(tiny(ADAPTERS['fe'], **FAMILIES[family]))
  params = adapted.init(jax.random.key(0), clip)['params']
  backbone = {n: v for n, v in params.items() if not n.startswith('adapter')}
  backbone = {
      n: {k: v for k, v in p.items() if not k.startswith('adapter')}
      if n.startswith('blocks')
      else p
      for n, p in backbone.items()
  }
  image_names = set(partition.flatten(image_model.init(jax.random.key(0), clip)['params']))
  assert set(partition.flatten(backbone)) == image_names
  frames = image_model.apply({'params': backbone}, clip.reshape(4, 32, 32, 3))
  frame_mean = frames.reshape(2, 2, -1).mean(1)
  np.testing.assert_allclose(adapted.apply({'params': params}, clip), frame_mean, atol=1e-5)
  moved = adapted.apply({'params': perturbed_params(adapted, clip)}, clip)
  assert np.all(np.isfinite(moved)) and not np.allclose(moved, frame_mean, atol=1e-3)


def test_token_adapter_passes_class_and_register_tokens_through():
  grid, frames, prefix = (2, 2), 3, 5
  adapter = adapters.TokenAdapter(methods.AdapterConfig(kind='fe', width=4), frames, grid)
  x = jax.random.normal(jax.random.key(0), (2 * frames, prefix + 4, 16))
  params = perturbed_params(adapter, x)
  y = adapter.apply({'params': params}, x)
  np.testing.assert_array_equal(y[:, :prefix], x[:, :prefix])
  assert np.abs(y[:, prefix:] - x[:, prefix:]).min() > 0


def test_family_options_that_cannot_work_are_refused():
  with pytest.raises(ValueError, match="global_pool='token' needs a class token"):
    models.build(tiny(class_token=False))
  with pytest.raises(ValueError, match='activation'):
    models.build(tiny(activation='relu'))
  with pytest.raises(ValueError, match='global_pool'):
    models.build(tiny(global_pool='max'))
