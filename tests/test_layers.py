"""The lean GELU and LayerNorm: flax's values and gradients, one saved array each; the
materialised cotangent: an identity whose gradient XLA must compute in its own buffer; the
narrow matmul: a matmul whose input gradient is no matmul."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax._src.ad_checkpoint import saved_residuals

from configs import synthetic
from feadapter_jax.models import layers


def test_gelu_equals_exact_gelu_in_value_and_gradient():
  x = jnp.linspace(-6.0, 6.0, 1001)
  np.testing.assert_allclose(layers.gelu(x), nn.gelu(x, approximate=False), atol=1e-6)
  ours = jax.grad(lambda x: jnp.sum(jnp.sin(layers.gelu(x))))(x)
  ref = jax.grad(lambda x: jnp.sum(jnp.sin(nn.gelu(x, approximate=False))))(x)
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_layer_norm_equals_flax_in_value_and_every_gradient():
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (4, 5, 16))
  ref = nn.LayerNorm(1e-6)
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(1), p.shape),
                        ref.init(jax.random.key(2), x))
  ours = layers.LayerNorm(1e-6)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), atol=1e-5)
  grad = lambda m: jax.grad(lambda p, x: jnp.sum(jnp.sin(3 * m.apply(p, x))), (0, 1))(params, x)  # noqa: E731
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grad(ours),
               grad(ref))


def test_backward_keeps_one_activation_each():
  x = jax.random.normal(jax.random.key(0), (8, 32))
  scale, bias = jnp.ones(32), jnp.zeros(32)
  big = lambda f, *a: [r for r, _ in saved_residuals(f, *a) if r.shape == x.shape]  # noqa: E731
  assert len(big(lambda x: layers.gelu(x).sum(), x)) == 1
  assert len(big(lambda x: layers.layer_norm(x, scale, bias, 1e-6).sum(), x)) == 1
  # What the textbook forms keep, for contrast.
  assert len(big(lambda x: nn.gelu(x, approximate=False).sum(), x)) >= 2
  assert len(big(lambda x: nn.LayerNorm().apply({'params': {'scale': scale, 'bias': bias}},
                                                x).sum(), x)) >= 2


def test_materialized_cotangent_is_the_identity_with_a_barrier_in_the_backward():
  x = jax.random.normal(jax.random.key(0), (8, 16))
  loss = lambda f: lambda x: jnp.sum(jnp.sin(3 * f(x)) * x)  # noqa: E731
  np.testing.assert_array_equal(layers.materialized_cotangent(x), x)
  np.testing.assert_allclose(jax.grad(loss(layers.materialized_cotangent))(x),
                             jax.grad(loss(lambda v: v))(x), rtol=1e-6)
  options = dict(synthetic.get_config().cpu_compiler_options)
  compiled = jax.jit(jax.grad(loss(layers.materialized_cotangent))).lower(x).compile(
      compiler_options=options)
  assert compiled.as_text().count('opt-barrier(') == 1


def test_narrow_matmul_is_a_matmul_whose_input_gradient_needs_no_dot():
  x = jax.random.normal(jax.random.key(0), (2, 7, 16))
  w = jax.random.normal(jax.random.key(1), (16, 3))
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
  np.testing.assert_allclose(layers.narrow_matmul(x, w), x @ w, rtol=1e-6)
  for ours, ref in zip(jax.grad(loss(layers.narrow_matmul), (0, 1))(x, w),
                       jax.grad(loss(jnp.matmul), (0, 1))(x, w)):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
  dots = lambda f: jax.jit(jax.grad(loss(f))).lower(x, w).as_text().count('dot_general')  # noqa: E731
  assert dots(jnp.matmul) == 2 and dots(layers.narrow_matmul) == 1  # the forward's only
