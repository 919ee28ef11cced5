"""Every CPU kernel against its reference form: values and gradients (inputs and parameters),
the same parameters; what each CPU form exists for (one saved array, a surviving barrier, no
dot); and how `model.kernels` resolves."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from configs import synthetic
from feadapter_jax.models import kernels

BOTH = ('cpu', 'reference')


def assert_trees_close(a, b, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


def grads(f, *args):
  """Gradients of a non-trivial loss of f with respect to every argument."""
  return jax.grad(lambda *a: jnp.sum(jnp.sin(3 * f(*a))), tuple(range(len(args))))(*args)


def test_auto_is_cpu_on_the_cpu_backend_and_reference_elsewhere(monkeypatch):
  assert jax.default_backend() == 'cpu'
  assert kernels.resolve('auto') == 'cpu'
  assert kernels.resolve('cpu') == 'cpu' and kernels.resolve('reference') == 'reference'
  for backend in ('gpu', 'tpu'):
    monkeypatch.setattr(jax, 'default_backend', lambda b=backend: b)
    assert kernels.resolve('auto') == 'reference'
    assert kernels.resolve('cpu') == 'cpu'
  with pytest.raises(ValueError, match=r"model\.kernels='fast'.*'auto', 'reference', 'cpu'"):
    kernels.resolve('fast')


def test_gelu_is_the_exact_gelu_in_value_and_gradient():
  x = jnp.linspace(-6.0, 6.0, 1001)
  exact = lambda v: nn.gelu(v, approximate=False)  # noqa: E731
  for form in BOTH:
    gelu = lambda v, form=form: kernels.gelu(v, form)  # noqa: E731
    np.testing.assert_allclose(gelu(x), exact(x), atol=1e-6)
    np.testing.assert_allclose(grads(gelu, x)[0], grads(exact, x)[0], atol=1e-5)


def test_layer_norm_forms_equal_flax_in_value_and_every_gradient():
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (4, 5, 16))
  flax_norm = nn.LayerNorm(1e-6)
  params = flax_norm.init(jax.random.key(2), x)
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(1), p.shape), params)
  expected = flax_norm.apply(params, x)
  expected_grads = grads(flax_norm.apply, params, x)
  for form in BOTH:
    ours = kernels.LayerNorm(1e-6, kernels=form)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(2), x)) == jax.tree.map(
        jnp.shape, params
    )
    np.testing.assert_allclose(ours.apply(params, x), expected, atol=1e-5)
    assert_trees_close(grads(ours.apply, params, x), expected_grads, rtol=1e-4, atol=1e-4)


def test_cpu_gelu_and_layer_norm_keep_one_activation_for_the_backward():
  x = jax.random.normal(jax.random.key(0), (8, 32))
  scale, bias = jnp.ones(32), jnp.zeros(32)

  def big(f, *args):  # saved residuals of the input's size
    return len([r for r, _ in saved_residuals(f, *args) if r.shape == x.shape])

  saved = {
      form: (
          big(lambda v: kernels.gelu(v, form).sum(), x),
          big(lambda v, s, b: kernels.layer_norm(v, s, b, 1e-6, form).sum(), x, scale, bias),
      )
      for form in BOTH
  }
  assert saved == {'cpu': (1, 1), 'reference': (3, 2)}  # autodiff of the plain forms: more


def test_materialized_cotangent_is_the_identity_and_only_the_cpu_form_has_a_barrier():
  x = jax.random.normal(jax.random.key(0), (8, 16))
  options = dict(synthetic.get_config().cpu_compiler_options)
  barriers = {}
  for form in BOTH:
    f = lambda v, form=form: kernels.materialized_cotangent(v, form)  # noqa: E731
    np.testing.assert_array_equal(f(x), x)
    loss = lambda v, f=f: jnp.sum(jnp.sin(3 * f(v)) * v)  # noqa: E731
    identity_loss = lambda v: jnp.sum(jnp.sin(3 * v) * v)  # noqa: E731
    np.testing.assert_allclose(jax.grad(loss)(x), jax.grad(identity_loss)(x), rtol=1e-6)
    compiled = jax.jit(jax.grad(loss)).lower(x).compile(compiler_options=options)
    barriers[form] = compiled.as_text().count('opt-barrier(')
  assert barriers == {'cpu': 1, 'reference': 0}


def test_narrow_matmul_forms_agree_and_the_cpu_input_gradient_needs_no_dot():
  x = jax.random.normal(jax.random.key(0), (2, 7, 16))
  w = jax.random.normal(jax.random.key(1), (16, 3))
  forms = {form: lambda a, b, form=form: kernels.narrow_matmul(a, b, form) for form in BOTH}
  np.testing.assert_allclose(forms['cpu'](x, w), x @ w, rtol=1e-6)
  np.testing.assert_allclose(forms['reference'](x, w), x @ w, rtol=1e-6)
  assert_trees_close(
      grads(forms['cpu'], x, w), grads(forms['reference'], x, w), rtol=1e-5, atol=1e-6
  )
  # The gradient with respect to x alone: the forward's dot only, against forward + g @ w.T.
  dots = {
      form: jax.jit(jax.grad(lambda a, b, f=f: jnp.sum(jnp.sin(f(a, b)))))
      .lower(x, w)
      .as_text()
      .count('dot_general')
      for form, f in forms.items()
  }
  assert dots == {'cpu': 1, 'reference': 2}


def test_cpu_attention_equals_dot_product_attention_in_value_and_gradient():
  qkv = 2 * jax.random.normal(jax.random.key(0), (2, 5, 3 * 12))  # 3 heads of 4
  forms = {form: lambda v, form=form: kernels.attention(v, 3, form) for form in BOTH}
  q, k, v = (qkv[..., i * 12 : (i + 1) * 12].reshape(2, 5, 3, 4) for i in range(3))
  logits = jnp.einsum('bqhe,bkhe->bhqk', q, k) / 2.0  # 1 / sqrt(e)
  expected = jnp.einsum('bhqk,bkhe->bqhe', jax.nn.softmax(logits, -1), v).reshape(2, 5, 12)
  for f in forms.values():
    assert f(qkv).shape == (2, 5, 12)
    np.testing.assert_allclose(f(qkv), expected, atol=1e-5)
  np.testing.assert_allclose(
      grads(forms['cpu'], qkv)[0], grads(forms['reference'], qkv)[0], atol=1e-5
  )


CONVS = {  # features, kernel, dilation, depthwise, split_multiplier
    'fixed 3x3x3': (6, (3, 3, 3), (1, 1, 1), True, False),
    "ST-Adapter's, dilated": (6, (3, 1, 1), (2, 1, 1), True, False),
    "the dynamic conv's taps": (18, (1, 3, 3), (1, 2, 1), True, True),
    'the dilation predictor': (1, (3, 1, 1), (1, 1, 1), False, False),
    'a two-axis predictor, dilated': (2, (3, 1, 1), (2, 1, 1), False, False),
    'dense, more outputs': (4, (3, 3, 1), (1, 1, 1), False, False),
}


@pytest.mark.parametrize('case', CONVS)
def test_conv3d_cpu_equals_reference_nn_conv_in_values_gradients_and_parameters(case):
  features, size, dilation, depthwise, split = CONVS[case]
  x = jax.random.normal(jax.random.key(1), (2, 5, 4, 3, 6))
  plain = nn.Conv(
      features,
      size,
      kernel_dilation=dilation,
      padding='SAME',
      feature_group_count=6 if depthwise else 1,
  )
  params = plain.init(jax.random.key(0), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
  conv = {
      form: kernels.Conv3D(
          features, size, dilation, depthwise=depthwise, split_multiplier=split, kernels=form
      )
      for form in BOTH
  }
  for module in conv.values():
    assert jax.tree.map(jnp.shape, module.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, params
    )
  expected = plain.apply(params, x)
  if split:  # copy j of every channel in slice j
    expected = jnp.moveaxis(expected.reshape(*expected.shape[:-1], 6, 3), -1, 0)
  np.testing.assert_allclose(conv['reference'].apply(params, x), expected, atol=1e-6)
  np.testing.assert_allclose(conv['cpu'].apply(params, x), expected, atol=1e-5)
  assert_trees_close(
      grads(conv['cpu'].apply, params, x), grads(conv['reference'].apply, params, x), atol=1e-4
  )


def spread_dilations(key, shape, max_dilation):
  """Dilations over (0, max_dilation]: fractional, some integral, some at the cap."""
  d = jax.random.uniform(key, shape, minval=0.05, maxval=max_dilation + 0.5)
  d = d.at[0, 0].set(1.0).at[0, 1].set(2.0)
  return jnp.minimum(d, max_dilation)


def test_dynamic_temporal_reads_cpu_equals_reference_in_values_and_gradients():
  max_dilation = 2.5
  taps = jax.random.normal(jax.random.key(0), (3, 2, 6, 2, 3, 4))
  d = spread_dilations(jax.random.key(1), (2, 6, 2, 3, 1), max_dilation)
  forms = {
      form: lambda a, b, form=form: kernels.dynamic_temporal_reads(a, b, max_dilation, form)
      for form in BOTH
  }
  np.testing.assert_allclose(forms['cpu'](taps, d), forms['reference'](taps, d), atol=1e-6)
  g_cpu, g_ref = grads(forms['cpu'], taps, d), grads(forms['reference'], taps, d)
  assert float(jnp.abs(g_ref[1]).sum()) > 1e-2
  assert_trees_close(g_cpu, g_ref, rtol=1e-4, atol=1e-5)


def test_dynamic_temporal_reads_interpolate_linearly_with_zeros_outside():
  # One tap map per k = -1, 0, 1, each a different function of time; one location, one channel.
  t = np.arange(8.0)
  maps = np.stack([t**2, 10 + t, np.sin(t)])  # (k, t)
  taps = jnp.asarray(maps).reshape(3, 1, 8, 1, 1, 1)
  d = jnp.asarray(np.linspace(0.3, 3.0, 8)).reshape(1, 8, 1, 1, 1)
  # Zero outside [0, 8): the map padded with zeros, then read by linear interpolation.
  read = lambda f, at: np.interp(at, np.arange(-4.0, 12.0), np.pad(f, 4))  # noqa: E731
  expected = [
      read(maps[0], i - di) + maps[1][i] + read(maps[2], i + di)
      for i, di in enumerate(np.linspace(0.3, 3.0, 8))
  ]
  for form in BOTH:
    y = kernels.dynamic_temporal_reads(taps, d, 3.0, form)
    np.testing.assert_allclose(y[0, :, 0, 0, 0], expected, rtol=1e-5, atol=1e-5)


def test_portable_erf_is_lax_erf_without_the_erf_op():
  """The SavedModel export's erf (exp and arithmetic) against `lax.erf`, and its lowering."""
  x = jnp.linspace(-9.0, 9.0, 100_001, dtype=jnp.float32)
  assert float(jnp.max(jnp.abs(kernels.elementary_erf(x) - jax.lax.erf(x)))) < 5e-7
  gelu = lambda v: kernels.gelu(v, 'reference')
  assert 'erf' in jax.jit(gelu).lower(x).as_text()
  with kernels.portable_erf():
    lowered = jax.jit(lambda v: kernels.gelu(v, 'reference')).lower(x)
    portable = jax.jit(lambda v: kernels.gelu(v, 'reference'))(x)
  assert 'erf' not in lowered.as_text()
  np.testing.assert_allclose(portable, gelu(x), rtol=0, atol=2e-6)
  assert 'erf' in jax.jit(lambda v: kernels.gelu(v, 'reference')).lower(x).as_text()  # reset
