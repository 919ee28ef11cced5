"""Adapters: zero-init equivalence to the image model, and the dynamic dilation's semantics."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from feadapter_jax import models, partition
from feadapter_jax.models import adapters
from tests.tiny import ADAPTERS, tiny


def strip_adapters(params):
  """The backbone + head subtree, as the plain image model names it."""
  return {block: {k: v for k, v in sub.items() if not k.startswith('adapter')}
          if isinstance(sub, dict) else sub for block, sub in params.items()}


@pytest.mark.parametrize('name', sorted(ADAPTERS))
def test_zero_init_gives_the_image_model_averaged_over_frames(name):
  clip = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
  adapted = models.build(tiny(ADAPTERS[name]))
  params = adapted.init(jax.random.key(0), clip)['params']
  assert any('adapter' in n for n in partition.flatten(params))
  image_model = models.build(tiny())
  image_params = strip_adapters(params)
  per_frame = jnp.stack([image_model.apply({'params': image_params}, clip[:, i])
                         for i in range(4)], 1)
  out = adapted.apply({'params': params}, clip)
  np.testing.assert_allclose(out, per_frame.mean(1), atol=2e-5)
  # ... and the adapter really acts once its zero-initialised layer is trained.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  perturbed = treedef.unflatten([p + 0.1 * jax.random.normal(k, p.shape)
                                 for p, k in zip(leaves, keys)])
  perturbed_image = strip_adapters(perturbed)
  per_frame = jnp.stack([image_model.apply({'params': perturbed_image}, clip[:, i])
                         for i in range(4)], 1)
  assert not np.allclose(adapted.apply({'params': perturbed}, clip), per_frame.mean(1),
                         atol=1e-3)


def conv_at(dilation_bias, x, kernel_size=(3, 1, 1), **kw):
  """Applies a DynamicDilatedConv3D whose dilation is forced through the predictor's bias."""
  conv = adapters.DynamicDilatedConv3D(kernel_size=kernel_size, max_dilation=4.0, **kw)
  params = conv.init(jax.random.key(0), x)['params']
  params['dilation']['bias'] = jnp.full_like(params['dilation']['bias'], dilation_bias)
  return conv, params


def test_dilation_one_equals_a_plain_depthwise_conv3d():
  x = jax.random.normal(jax.random.key(1), (2, 6, 5, 5, 4))
  conv, params = conv_at(0.0, x, kernel_size=(3, 3, 3))
  plain = nn.Conv(4, (3, 3, 3), padding='SAME', feature_group_count=4)
  kernel = params['taps']['kernel'].reshape(1, 3, 3, 1, 4, 3)  # (1, h, w, 1, c, k)
  kernel = jnp.transpose(kernel[0], (4, 0, 1, 2, 3))  # (k, h, w, 1, c)
  plain_params = {'kernel': kernel, 'bias': params['bias'] + 0.3}
  params['bias'] = params['bias'] + 0.3
  np.testing.assert_allclose(conv.apply({'params': params}, x),
                             plain.apply({'params': plain_params}, x), atol=1e-5)


@pytest.mark.parametrize('dilation, reached, not_reached', [(1, 1, 2), (2, 2, 1), (3, 3, 2)])
def test_dilation_changes_the_temporal_receptive_field(dilation, reached, not_reached):
  # elu(z) + 1 = dilation for z = dilation - 1 >= 0.
  x = jax.random.normal(jax.random.key(1), (1, 9, 3, 3, 2))
  conv, params = conv_at(float(dilation - 1), x)
  jac = jax.jacobian(lambda v: conv.apply({'params': params}, v)[0, 4])(x)  # output at t = 4
  influence = jnp.abs(jac).sum(axis=(0, 1, 2, 3, 5, 6, 7))  # per input frame
  assert influence[4 + reached] > 0 and influence[4 - reached] > 0
  assert influence[4 + not_reached] == 0 and influence[4 - not_reached] == 0


def test_fractional_dilation_interpolates_linearly():
  # 1x1 spatial kernel, one channel: y(t) = w0 x(t-d) + w1 x(t) + w2 x(t+d).
  x = jnp.arange(10.0).reshape(1, 10, 1, 1, 1) ** 2
  conv, params = conv_at(0.5, x)  # d = 1.5
  w = np.asarray(params['taps']['kernel']).reshape(3)
  y = conv.apply({'params': params}, x)[0, :, 0, 0, 0]
  f = lambda t: np.interp(t, np.arange(10), np.arange(10.0) ** 2, left=0, right=0)
  t = 4
  expected = w[0] * f(t - 1.5) + w[1] * f(t) + w[2] * f(t + 1.5)
  np.testing.assert_allclose(y[t], expected, rtol=1e-5)


def test_dilation_predictor_gets_gradient_at_initialisation():
  x = jax.random.normal(jax.random.key(1), (1, 6, 3, 3, 2))
  conv = adapters.DynamicDilatedConv3D()
  params = conv.init(jax.random.key(0), x)['params']
  grads = jax.grad(lambda p: (conv.apply({'params': p}, x) ** 2).sum())(params)
  assert np.abs(grads['dilation']['kernel']).sum() > 0
  assert np.abs(grads['dilation']['bias']).sum() > 0


def fast_and_general(max_dilation, predictor_scale, x):
  """The factorised and general paths of one conv, their params, with spread dilations."""
  fast = adapters.DynamicDilatedConv3D(max_dilation=max_dilation)
  general = adapters.DynamicDilatedConv3D(max_dilation=max_dilation, force_general=True)
  params = fast.init(jax.random.key(0), x)['params']
  params['dilation']['kernel'] = predictor_scale * jax.random.normal(
      jax.random.key(2), params['dilation']['kernel'].shape)
  to_general = lambda p: {**p, 'taps': p['taps']['kernel']}  # noqa: E731
  return fast, general, params, to_general


def test_general_path_equals_factorised_path_when_only_time_is_dynamic():
  x = jax.random.normal(jax.random.key(1), (1, 5, 4, 4, 3))
  fast, general, params, to_general = fast_and_general(2.0, 0.3, x)
  params['bias'] = params['bias'] + 0.1
  np.testing.assert_allclose(fast.apply({'params': params}, x),
                             general.apply({'params': to_general(params)}, x), atol=1e-5)


def test_multibranch_starts_as_the_mean_of_its_branches():
  x = jax.random.normal(jax.random.key(1), (2, 6, 3, 3, 2))
  mb = adapters.MultiBranchConv3D(branch_dilations=(1, 2))
  params = mb.init(jax.random.key(0), x)['params']
  branches = [nn.Conv(2, (3, 3, 3), kernel_dilation=(d, 1, 1), padding='SAME',
                      feature_group_count=2).apply({'params': params[f'branch_{i}']}, x)
              for i, d in enumerate((1, 2))]
  np.testing.assert_allclose(mb.apply({'params': params}, x), (branches[0] + branches[1]) / 2,
                             atol=1e-5)


def test_fe_adapter_budget_for_vit_b16_with_7_classes():
  model = models.build(dict(variant='B/16', num_classes=7, image_size=224,
                            adapter=dict(kind='fe')))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2, 224, 224, 3))))
  params = shapes['params']
  mask = partition.trainable_mask(params, ['.*adapter.*', 'head/.*'])
  report = partition.report(params, mask)
  assert abs(report.trainable - 6_600_000) <= 300_000, report
  assert report.groups['backbone'][1] == 0
  assert report.groups['backbone'][0] == 86_567_656 - 769_000


def perturb(params, scale=0.1):
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  return treedef.unflatten([p + scale * jax.random.normal(k, p.shape)
                            for p, k in zip(leaves, keys)])


@pytest.mark.parametrize('name', sorted(ADAPTERS) + ['none'])
def test_temporal_adapters_see_frame_order_and_the_image_model_does_not(name):
  # Onset vs offset of one expression differ only in frame order: an adapter must tell them apart.
  clip = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
  model = models.build(tiny(ADAPTERS.get(name)))
  params = perturb(model.init(jax.random.key(0), clip)['params'])
  forward = model.apply({'params': params}, clip)
  backward = model.apply({'params': params}, clip[:, ::-1])
  if name == 'none':
    np.testing.assert_allclose(forward, backward, atol=1e-5)
  else:
    assert not np.allclose(forward, backward, atol=1e-4)


@pytest.mark.parametrize('features,kernel,dilation,depthwise,narrow', [
    (6, (3, 3, 3), (1, 1, 1), True, False),     # the fixed conv
    (6, (3, 1, 1), (2, 1, 1), True, False),     # ST-Adapter's, dilated
    (18, (1, 3, 3), (1, 2, 1), True, False),    # the dynamic conv's taps: 3 copies per channel
    (1, (3, 1, 1), (1, 1, 1), False, True),     # the dilation predictor
    (2, (3, 1, 1), (2, 1, 1), False, True),
    (4, (3, 3, 1), (1, 1, 1), False, False)])
def test_shift_conv_equals_nn_conv_values_and_gradients(features, kernel, dilation, depthwise,
                                                        narrow):
  x = jax.random.normal(jax.random.key(1), (2, 5, 4, 3, 6))
  ours = adapters.ShiftConv3D(features, kernel, dilation, depthwise=depthwise, narrow=narrow)
  ref = nn.Conv(features, kernel, kernel_dilation=dilation, padding='SAME',
                feature_group_count=6 if depthwise else 1)
  params = ref.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
      jnp.shape, params)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), atol=1e-5)
  grad = lambda m: jax.grad(lambda p, x: jnp.sum(jnp.sin(m.apply(p, x))), (0, 1))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), grad(ours), grad(ref))


def test_dynamic_reads_hand_written_gradient_equals_autodiff_of_the_general_path():
  x = jax.random.normal(jax.random.key(1), (2, 6, 4, 4, 3))
  # Dilations spread over (0, 2.5], fractional, some capped.
  fast, general, params, to_general = fast_and_general(2.5, 0.8, x)
  loss = lambda m, p, x: jnp.sum(jnp.sin(3 * m.apply({'params': p}, x)))  # noqa: E731
  g_fast = jax.grad(lambda p, x: loss(fast, p, x), (0, 1))(params, x)
  g_general = jax.grad(lambda p, x: loss(general, to_general(p), x), (0, 1))(params, x)
  assert float(jnp.abs(g_fast[0]['dilation']['kernel']).sum()) > 1e-2
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               g_fast, g_general)
