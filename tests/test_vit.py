"""The ViT: timm-equal parameter counts, image/clip equivalence, dtype and remat options."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic
from feadapter_jax import models, partition
from feadapter_jax.models import vit
from tests.tiny import tiny


def count(model_config, input_shape):
  model = models.build(model_config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape)))
  return sum(partition.size(x) for x in jax.tree.leaves(shapes['params']))


@pytest.mark.parametrize('variant, expected', [
    ('Ti/16', 5_717_416), ('S/16', 22_050_664), ('B/16', 86_567_656), ('L/16', 304_326_632),
    ('B/32', 88_224_232)])
def test_param_count_equals_timm(variant, expected):
  assert count(dict(variant=variant, num_classes=1000, image_size=224), (1, 224, 224, 3)) == expected


def test_image_is_a_one_frame_clip_and_clip_logits_average_frames():
  model = models.build(tiny())
  clip = jax.random.normal(jax.random.key(1), (2, 3, 32, 32, 3))
  params = model.init(jax.random.key(0), clip)['params']
  per_frame = jnp.stack([model.apply({'params': params}, clip[:, i]) for i in range(3)], 1)
  np.testing.assert_allclose(model.apply({'params': params}, clip), per_frame.mean(1),
                             atol=1e-5)
  np.testing.assert_allclose(model.apply({'params': params}, clip[:, :1]), per_frame[:, 0],
                             atol=1e-6)


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

  Without them CSE merged recomputation into the forward pass (ViT-B/16 FE-Adapter scratch
  2.07 GiB with remat vs 0.99 GiB with the options: docs/performance.md). Checked here with
  frozen weights, as in an adapter step.
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
    grad = jax.jit(jax.grad(
        lambda p, x, m=model: m.apply({'params': partition.stop_frozen(p, mask)}, x).sum()))
    for name, opts in (('config', options), ('scheduler_only', scheduler_only)):
      compiled = grad.lower(params, clip).compile(compiler_options=opts)
      temp[remat, name] = compiled.memory_analysis().temp_size_in_bytes
      barriers[remat, name] = compiled.as_text().count('opt-barrier(')
      grads[remat, name] = compiled(params, clip)
  # One barrier per rematerialised block survives compilation only under the config's options
  # (beside the adapters' own: layers.materialized_cotangent).
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


def test_cpu_attention_equals_fused_dot_product_attention():
  x = jax.random.normal(jax.random.key(0), (2, 5, 12))
  explicit, fused = vit.Attention(3, fused=False), vit.Attention(3, fused=True)
  params = explicit.init(jax.random.key(1), x)
  np.testing.assert_allclose(explicit.apply(params, 4 * x), fused.apply(params, 4 * x),
                             atol=1e-5)
  grad = lambda m: jax.grad(lambda x: jnp.sum(jnp.sin(m.apply(params, 4 * x))))(x)  # noqa: E731
  np.testing.assert_allclose(grad(explicit), grad(fused), atol=1e-5)
