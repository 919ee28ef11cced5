"""Layers whose backward passes are written for CPU memory and speed.

GELU and LayerNorm keep one activation each; `materialized_cotangent` is an identity that makes
XLA compute its cotangent once, in its own buffer; `narrow_matmul` maps channels to a few outputs
with an input gradient that fuses into its consumer.

Autodiff of the textbook forms saves every intermediate for the backward pass: three arrays per
exact GELU (of the MLP's 4D width) and six or more per LayerNorm. Behind a frozen backbone those
residuals are most of a train step's memory (`benchmarks/train_step.py`). The forms below compute
the same values (timm parity is tested to 1e-5) and save one array: GELU its derivative,
LayerNorm the normalised input.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jax.custom_jvp
def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as timm and torchvision; flax's default tanh form breaks weight parity."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


@gelu.defjvp
def _gelu_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  cdf = 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))
  slope = cdf + x * jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI  # the one saved array
  return x * cdf, t * slope


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """LayerNorm over the last axis, statistics in float32. x: `(..., d)`; scale, bias: `(d,)`."""
  return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  centred = x32 - mean
  rstd = jax.lax.rsqrt(jnp.mean(centred * centred, -1, keepdims=True) + eps)
  normed = centred * rstd
  y = (normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)
  return y, (normed.astype(x.dtype), rstd, scale)


def _layer_norm_bwd(eps, residuals, g):
  del eps
  normed, rstd, scale = residuals
  normed, g = normed.astype(jnp.float32), g.astype(jnp.float32)
  axes = tuple(range(g.ndim - 1))
  g_scale = jnp.sum(g * normed, axes).astype(scale.dtype)
  g_bias = jnp.sum(g, axes).astype(scale.dtype)
  gn = g * scale.astype(jnp.float32)
  g_x = rstd * (gn - gn.mean(-1, keepdims=True)
                - normed * jnp.mean(gn * normed, -1, keepdims=True))
  return g_x.astype(residuals[0].dtype), g_scale, g_bias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
  """`nn.LayerNorm`'s parameters (scale, bias) and values, with the lean backward above."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (d,))
    bias = self.param('bias', nn.initializers.zeros, (d,))
    return layer_norm(x.astype(self.dtype), scale, bias, self.epsilon)


@jax.custom_vjp
def materialized_cotangent(x: jax.Array) -> jax.Array:
  """Identity whose cotangent is computed once, in its own buffer, before anything reads it.

  XLA CPU otherwise fused the block's LayerNorm backward into the transposing copy that feeds
  the adapter's `up` weight gradient, writing 768 x 3136 floats column-wise: 30 ms per block of
  a 5.8 s ViT-B/16 step. The barrier survives compilation on CPU only with the config's
  `cpu_compiler_options` (other backends keep barriers anyway).
  """
  return x


def _materialized_fwd(x):
  return x, None


def _materialized_bwd(_, g):
  return (jax.lax.optimization_barrier(g),)


materialized_cotangent.defvjp(_materialized_fwd, _materialized_bwd)


@jax.custom_vjp
def narrow_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """`x @ w` for a `w` of a few columns, `(..., c) @ (c, n) -> (..., n)`, n small.

  The input gradient `g @ w.T` is written as n broadcast multiply-adds, which XLA fuses into
  whatever sums it with the input's other gradients; as a matmul it was an outer-product GEMM
  with its own output pass (~1 ms per FE block for the dilation predictor, n = 3, at ViT-B/16).
  """
  return x @ w


def _narrow_fwd(x, w):
  return x @ w, (x, w)


def _narrow_bwd(residuals, g):
  x, w = residuals
  g_x = sum(g[..., i:i + 1] * w[:, i] for i in range(w.shape[1]))
  g_w = jnp.einsum('...c,...n->cn', x, g)
  return g_x.astype(x.dtype), g_w.astype(w.dtype)


narrow_matmul.defvjp(_narrow_fwd, _narrow_bwd)
