"""Adapters: zero-init equivalence to the image model, and the dynamic dilation's semantics
(its factorised temporal path against the naive definition and against the general path)."""

import itertools

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
  return {
      block: {k: v for k, v in sub.items() if not k.startswith('adapter')}
      if isinstance(sub, dict)
      else sub
      for block, sub in params.items()
  }


@pytest.mark.parametrize('name', sorted(ADAPTERS))
def test_zero_init_gives_the_image_model_averaged_over_frames(name):
  clip = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
  adapted = models.build(tiny(ADAPTERS[name]))
  params = adapted.init(jax.random.key(0), clip)['params']
  assert any('adapter' in n for n in partition.flatten(params))
  image_model = models.build(tiny())
  image_params = strip_adapters(params)
  per_frame = jnp.stack(
      [image_model.apply({'params': image_params}, clip[:, i]) for i in range(4)], 1
  )
  out = adapted.apply({'params': params}, clip)
  np.testing.assert_allclose(out, per_frame.mean(1), atol=2e-5)
  # ... and the adapter really acts once its zero-initialised layer is trained.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  perturbed = treedef.unflatten(
      [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  )
  perturbed_image = strip_adapters(perturbed)
  per_frame = jnp.stack(
      [image_model.apply({'params': perturbed_image}, clip[:, i]) for i in range(4)], 1
  )
  assert not np.allclose(adapted.apply({'params': perturbed}, clip), per_frame.mean(1), atol=1e-3)


def conv_at(dilation_bias, x, kernel_size=(3, 1, 1), **kw):
  """Applies a DynamicDilatedConv3D whose dilation is forced through the predictor's bias."""
  conv = adapters.DynamicDilatedConv3D(kernel_size=kernel_size, max_dilation=4.0, **kw)
  params = conv.init(jax.random.key(0), x)['params']
  params['dilation']['bias'] = jnp.full_like(params['dilation']['bias'], dilation_bias)
  return conv, params


@pytest.mark.parametrize('kernels', ['cpu', 'reference'])
def test_dilation_one_equals_a_plain_depthwise_conv3d(kernels):
  x = jax.random.normal(jax.random.key(1), (2, 6, 5, 5, 4))
  conv, params = conv_at(0.0, x, kernel_size=(3, 3, 3), kernels=kernels)
  plain = nn.Conv(4, (3, 3, 3), padding='SAME', feature_group_count=4)
  kernel = params['taps']['kernel'].reshape(1, 3, 3, 1, 4, 3)  # (1, h, w, 1, c, k)
  kernel = jnp.transpose(kernel[0], (4, 0, 1, 2, 3))  # (k, h, w, 1, c)
  plain_params = {'kernel': kernel, 'bias': params['bias'] + 0.3}
  params['bias'] = params['bias'] + 0.3
  np.testing.assert_allclose(
      conv.apply({'params': params}, x), plain.apply({'params': plain_params}, x), atol=1e-5
  )


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


def spread_predictor(conv, x, scale=0.8):
  """The conv's params with a random predictor: dilations spread, fractional, some capped."""
  params = conv.init(jax.random.key(0), x)['params']
  params['dilation']['kernel'] = scale * jax.random.normal(
      jax.random.key(2), params['dilation']['kernel'].shape
  )
  params['bias'] = params['bias'] + 0.1
  return params


def naive_dynamic_conv(params, x, max_dilation):
  """The definition, one output location at a time: every tap (i, j, l) reads x at
  (t + i d(t, h, w), h + j, w + l), linearly interpolated along time, zero outside."""
  x = np.asarray(x, np.float64)
  b, t, hgt, wid, c = x.shape
  z = nn.Conv(1, (3, 1, 1), padding='SAME').apply({'params': params['dilation']}, x)
  d = np.minimum(np.asarray(nn.elu(z) + 1.0, np.float64), max_dilation)[..., 0]
  kernel = np.asarray(params['taps']['kernel']).reshape(3, 3, c, 3)  # (h, w, c, k)
  padded = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)])
  y = np.zeros_like(x)
  frames = np.arange(-4.0, t + 4.0)
  for bi, ti, hi, wi in np.ndindex(b, t, hgt, wid):
    for (i, k), j, l in itertools.product(enumerate((-1, 0, 1)), range(3), range(3)):
      at = ti + k * d[bi, ti, hi, wi]
      series = np.pad(padded[bi, :, hi + j, wi + l], [(4, 4), (0, 0)])  # (t + 8, c)
      read = [np.interp(at, frames, series[:, ch]) for ch in range(c)]
      y[bi, ti, hi, wi] += kernel[j, l, :, i] * np.asarray(read)
  return y + np.asarray(params['bias'])


@pytest.mark.parametrize('kernels', ['cpu', 'reference'])
def test_factorised_temporal_path_equals_the_naive_per_location_definition(kernels):
  x = jax.random.normal(jax.random.key(1), (1, 5, 3, 3, 2))
  conv = adapters.DynamicDilatedConv3D(max_dilation=2.5, kernels=kernels)
  params = spread_predictor(conv, x)
  np.testing.assert_allclose(
      conv.apply({'params': params}, x), naive_dynamic_conv(params, x, 2.5), atol=1e-5
  )


@pytest.mark.parametrize('kernels', ['cpu', 'reference'])
def test_factorised_path_gradients_equal_autodiff_of_the_general_path(kernels):
  # With a second dynamic axis whose predictor is zero (dilation exactly 1), only the general
  # path runs, and it must compute what the factorised path computes for time alone.
  x = jax.random.normal(jax.random.key(1), (2, 6, 4, 4, 3))
  fast = adapters.DynamicDilatedConv3D(max_dilation=2.5, kernels=kernels)
  general = adapters.DynamicDilatedConv3D(
      max_dilation=2.5, dynamic_axes=('t', 'h'), kernels=kernels
  )
  params = spread_predictor(fast, x)
  as_general = lambda p: {  # noqa: E731
      'taps': p['taps']['kernel'],
      'bias': p['bias'],
      'dilation': {
          'kernel': jnp.concatenate(
              [p['dilation']['kernel'], jnp.zeros_like(p['dilation']['kernel'])], -1
          ),
          'bias': jnp.concatenate([p['dilation']['bias'], jnp.zeros_like(p['dilation']['bias'])]),
      },
  }
  assert jax.tree.map(jnp.shape, as_general(params)) == jax.tree.map(
      jnp.shape, general.init(jax.random.key(0), x)['params']
  )
  loss = lambda m, p, v: jnp.sum(jnp.sin(3 * m.apply({'params': p}, v)))  # noqa: E731
  np.testing.assert_allclose(
      fast.apply({'params': params}, x), general.apply({'params': as_general(params)}, x), atol=1e-5
  )
  g_fast = jax.grad(lambda p, v: loss(fast, p, v), (0, 1))(params, x)
  g_general = jax.grad(lambda p, v: loss(general, as_general(p), v), (0, 1))(params, x)
  assert float(jnp.abs(g_fast[0]['dilation']['kernel']).sum()) > 1e-2
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_fast, g_general
  )


def test_multibranch_starts_as_the_mean_of_its_branches():
  x = jax.random.normal(jax.random.key(1), (2, 6, 3, 3, 2))
  mb = adapters.MultiBranchConv3D(branch_dilations=(1, 2))
  params = mb.init(jax.random.key(0), x)['params']
  branches = [
      nn.Conv(2, (3, 3, 3), kernel_dilation=(d, 1, 1), padding='SAME', feature_group_count=2).apply(
          {'params': params[f'branch_{i}']}, x
      )
      for i, d in enumerate((1, 2))
  ]
  np.testing.assert_allclose(
      mb.apply({'params': params}, x), (branches[0] + branches[1]) / 2, atol=1e-5
  )


def test_fe_adapter_budget_for_vit_b16_with_7_classes():
  model = models.build(dict(variant='B/16', num_classes=7, image_size=224, adapter=dict(kind='fe')))
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
  return treedef.unflatten(
      [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  )


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
