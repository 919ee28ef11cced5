"""How the model's costly pieces are computed: a plain reference form and a CPU form of each.

`ViT.kernels` (config key `model.kernels`) picks the form for the whole model:

- 'reference': the textbook form, written with `nn.Conv`, `jax.nn.dot_product_attention` and
  `jnp`, differentiated by JAX. GPU and TPU compile it to their own convolution and attention
  kernels.
- 'cpu': forms written for XLA's CPU backend. Its convolution kernels are slow at the adapters'
  depthwise and small 3-D convolutions, and autodiff of the textbook forms keeps every
  intermediate for the backward pass, which behind a frozen backbone is most of a train step's
  memory. The CPU forms read convolutions as shifted views, write some backward passes by hand
  (saving one array where autodiff saves several) and put one barrier on a cotangent.
- 'auto' (the default): 'cpu' when `jax.default_backend()` is 'cpu', else 'reference'.

The backend's other defaults are chosen here too, each by a function of the backend name
(default `jax.default_backend()`): the compute dtype (`resolve_dtype`: float32 on CPU, bfloat16
on GPU and TPU, parameters float32 everywhere), the attention implementation of the reference
form (`attention_implementation`: cuDNN's fused flash attention on GPU for 16-bit inputs, XLA's
elsewhere) and the XLA options of the train step (`compiler_options`: the config's CPU options
on CPU only). `compiled_attention` reads back from a compiled program which attention it runs.

Both forms of a piece take the same parameters (names, shapes, initialisers), so one checkpoint
serves both, and compute the same values and gradients up to float rounding
(`tests/test_kernels.py`). `docs/performance.md` has what each CPU form gains.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

KERNELS = ('auto', 'reference', 'cpu')
# What cuDNN's fused attention is called in compiled HLO: custom calls `__cudnn$fmha...`.
_CUSTOM_CALL_TARGET = re.compile(r'custom_call_target="([^"]*)"')

# ------------------------------------------------------------------------ backend defaults


def _on_cpu(backend: str | None) -> bool:
  return (backend or jax.default_backend()) == 'cpu'


def resolve(kernels: str, backend: str | None = None) -> str:
  """'reference' or 'cpu' for a `model.kernels` value; 'auto' is 'cpu' on the CPU backend.

  Args:
    kernels: 'auto' | 'reference' | 'cpu'.
    backend: a `jax.default_backend()` name ('cpu', 'gpu', 'tpu'); default the running one.
  """
  if kernels not in KERNELS:
    raise ValueError(f'model.kernels={kernels!r}, expected one of {KERNELS}')
  if kernels == 'auto':
    return 'cpu' if _on_cpu(backend) else 'reference'
  return kernels


def resolve_dtype(dtype: str, backend: str | None = None) -> str:
  """The compute dtype's name for a `model.dtype` value; 'auto' is float32 on CPU, else bfloat16.

  XLA CPU has no fast bfloat16 matmuls; GPUs' and TPUs' matrix units run bfloat16 at several
  times their float32 rate. Parameters (the master weights) stay float32 under every choice.

  Args:
    dtype: 'auto' or a float dtype name ('float32', 'bfloat16', ...).
    backend: a `jax.default_backend()` name; default the running one.
  """
  if dtype == 'auto':
    return 'float32' if _on_cpu(backend) else 'bfloat16'
  try:
    resolved = jnp.dtype(dtype)
  except TypeError:
    resolved = None
  if resolved is None or not jnp.issubdtype(resolved, jnp.floating):
    raise ValueError(
        f"model.dtype={dtype!r}, expected 'auto' or a float dtype such as 'float32', 'bfloat16'"
    )
  return resolved.name


def attention_implementation(dtype: Any, backend: str | None = None) -> str:
  """What the reference form asks `jax.nn.dot_product_attention` for: 'cudnn' or 'xla'.

  cuDNN's fused flash attention on GPU when the inputs are 16-bit (all it takes); XLA's
  otherwise. The choice is explicit: `implementation=None` selects XLA's (JAX 0.10).
  """
  on_gpu = (backend or jax.default_backend()) == 'gpu'
  return 'cudnn' if on_gpu and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else 'xla'


def compiler_options(
    cpu_options: Mapping[str, Any] | None, backend: str | None = None
) -> dict[str, Any] | None:
  """The XLA options a train step compiles with: `cpu_options` on the CPU backend, else none.

  The CPU options (`config.cpu_compiler_options`) name CPU passes and schedulers that other
  backends do not have.
  """
  if not _on_cpu(backend):
    return None
  return dict(cpu_options or {}) or None


def compiled_attention(hlo_text: str) -> str:
  """Which attention a compiled program runs: 'cudnn' (fused) or 'xla'.

  Args:
    hlo_text: the compiled HLO, `jax.jit(f).lower(...).compile().as_text()`.

  Returns:
    'cudnn' when a custom call's target names cuDNN's fused attention (`__cudnn$fmha...`, forward
    or backward), else 'xla' (attention as XLA's own dots and softmax).
  """
  targets = [t.lower() for t in _CUSTOM_CALL_TARGET.findall(hlo_text)]
  return 'cudnn' if any('cudnn' in t and 'fmha' in t for t in targets) else 'xla'


def _pick(kernels: str, cpu: Callable, reference: Callable) -> Callable:
  return cpu if resolve(kernels) == 'cpu' else reference


# ------------------------------------------------------------------------------------ GELU

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# Inside `portable_erf()`, erf is traced as exp and arithmetic instead of `lax.erf`.
_PORTABLE_ERF = contextvars.ContextVar('portable_erf', default=False)
# erfc(z) ~ t exp(-z^2 + poly(t)), t = 1 / (1 + z / 2), z >= 0: the Chebyshev fit of Numerical
# Recipes' erfcc, fractional error below 1.2e-7 for every z.
_ERFC_COEFFICIENTS = (
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)


@contextlib.contextmanager
def portable_erf() -> Iterator[None]:
  """Functions traced within write erf (GELU's) with exp and arithmetic alone.

  For exported programs read by a consumer that lacks an op for erf: JAX 0.10 lowers `lax.erf`
  to StableHLO's `chlo.erf`, which TensorFlow 2.21's StableHLO cannot read back, so a SavedModel
  of an exact-GELU ViT would not serve. The values differ from `lax.erf` by at most ~1.2e-7.
  """
  token = _PORTABLE_ERF.set(True)
  try:
    yield
  finally:
    _PORTABLE_ERF.reset(token)


def elementary_erf(x: jax.Array) -> jax.Array:
  """erf(x) from exp, division and a polynomial (`_ERFC_COEFFICIENTS`), any sign of x."""
  z = jnp.abs(x)
  t = 1.0 / (1.0 + 0.5 * z)
  poly = jnp.zeros_like(t)
  for c in reversed(_ERFC_COEFFICIENTS):
    poly = poly * t + c
  erfc = t * jnp.exp(-z * z + poly)
  return jnp.sign(x) * (1.0 - erfc)


def _erf(x: jax.Array) -> jax.Array:
  return elementary_erf(x) if _PORTABLE_ERF.get() else jax.lax.erf(x)


def _erf_gelu(x: jax.Array) -> jax.Array:
  return 0.5 * x * (1.0 + _erf(x * _SQRT_HALF))


# CPU form: the same values; the backward keeps one array, the derivative, where autodiff of
# the erf form keeps three (of the MLP's 4D width).
_lean_gelu = jax.custom_jvp(_erf_gelu)


@_lean_gelu.defjvp
def _lean_gelu_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  cdf = 0.5 * (1.0 + _erf(x * _SQRT_HALF))
  slope = cdf + x * jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI  # the one saved array
  return x * cdf, t * slope


def gelu(x: jax.Array, kernels: str = 'auto') -> jax.Array:
  """Exact (erf) GELU, as timm and torchvision; flax's default tanh form breaks weight parity."""
  return _pick(kernels, _lean_gelu, _erf_gelu)(x)


# ------------------------------------------------------------------------------- LayerNorm


def _layer_norm_fwd(x, scale, bias, eps):
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  centred = x32 - mean
  rstd = jax.lax.rsqrt(jnp.mean(centred * centred, -1, keepdims=True) + eps)
  normed = centred * rstd
  y = (normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)
  return y, (normed.astype(x.dtype), rstd, scale)


def _plain_layer_norm(x, scale, bias, eps):
  return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_bwd(eps, residuals, g):
  del eps
  normed, rstd, scale = residuals
  normed, g = normed.astype(jnp.float32), g.astype(jnp.float32)
  axes = tuple(range(g.ndim - 1))
  g_scale = jnp.sum(g * normed, axes).astype(scale.dtype)
  g_bias = jnp.sum(g, axes).astype(scale.dtype)
  gn = g * scale.astype(jnp.float32)
  g_x = rstd * (gn - gn.mean(-1, keepdims=True) - normed * jnp.mean(gn * normed, -1, keepdims=True))
  return g_x.astype(residuals[0].dtype), g_scale, g_bias


# CPU form: the backward keeps the normalised input (and the per-row rstd) only; autodiff of
# the plain form keeps the centred input too when the scale is trained.
_lean_layer_norm = jax.custom_vjp(_plain_layer_norm, nondiff_argnums=(3,))
_lean_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def layer_norm(
    x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, kernels: str = 'auto'
) -> jax.Array:
  """LayerNorm over the last axis, statistics in float32. x: `(..., d)`; scale, bias: `(d,)`."""
  return _pick(kernels, _lean_layer_norm, _plain_layer_norm)(x, scale, bias, eps)


class LayerNorm(nn.Module):
  """`nn.LayerNorm`'s parameters (scale, bias) and values; `(..., d)` -> same."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (d,))
    bias = self.param('bias', nn.initializers.zeros, (d,))
    return layer_norm(x.astype(self.dtype), scale, bias, self.epsilon, self.kernels)


# --------------------------------------------------------------------- cotangent placement


@jax.custom_vjp
def _materialized(x):
  return x


def _materialized_fwd(x):
  return x, None


def _materialized_bwd(_, g):
  return (jax.lax.optimization_barrier(g),)


_materialized.defvjp(_materialized_fwd, _materialized_bwd)


def materialized_cotangent(x: jax.Array, kernels: str = 'auto') -> jax.Array:
  """The identity; its CPU form computes the cotangent once, in its own buffer, behind a barrier.

  Without the barrier XLA CPU fuses the block's LayerNorm backward into the transposing copy
  that feeds the token adapter's `up` weight gradient, and that fused copy writes its output
  column by column. The barrier survives compilation on CPU only with the config's
  `cpu_compiler_options`; the reference form is the plain identity.
  """
  return _pick(kernels, _materialized, lambda v: v)(x)


def _matmul(x, w):
  return x @ w


def _narrow_fwd(x, w):
  return x @ w, (x, w)


def _narrow_bwd(residuals, g):
  x, w = residuals
  g_x = sum(g[..., i : i + 1] * w[:, i] for i in range(w.shape[1]))
  g_w = jnp.einsum('...c,...n->cn', x, g)
  return g_x.astype(x.dtype), g_w.astype(w.dtype)


# CPU form: the input gradient `g @ w.T` as n broadcast multiply-adds, which XLA fuses into
# whatever sums it with the input's other gradients; as a matmul it is an outer-product GEMM
# with its own pass over a full input-sized output.
_narrow_matmul = jax.custom_vjp(_matmul)
_narrow_matmul.defvjp(_narrow_fwd, _narrow_bwd)


def narrow_matmul(x: jax.Array, w: jax.Array, kernels: str = 'auto') -> jax.Array:
  """`x @ w` for a `w` of a few columns: `(..., c) @ (c, n) -> (..., n)`, n small."""
  return _pick(kernels, _narrow_matmul, _matmul)(x, w)


# ------------------------------------------------------------------------------- attention


def _explicit_attention(qkv: jax.Array, num_heads: int) -> jax.Array:
  """Heads-major layout for XLA CPU's batched matmuls; the softmax is normalised after the value
  product (one division of the `(n, e)` output instead of the `(n, n)` probabilities)."""
  q, k, v = einops.rearrange(qkv, 'b n (three h e) -> three b h n e', three=3, h=num_heads)
  logits = jnp.einsum('bhqe,bhke->bhqk', q * q.shape[-1] ** -0.5, k)
  logits = logits.astype(jnp.float32)
  p = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
  y = jnp.einsum('bhqk,bhke->bhqe', p.astype(v.dtype), v) / p.sum(-1, keepdims=True)
  return einops.rearrange(y.astype(qkv.dtype), 'b h n e -> b n (h e)')


def _fused_attention(qkv: jax.Array, num_heads: int) -> jax.Array:
  """`jax.nn.dot_product_attention`: cuDNN's flash attention on GPU (`attention_implementation`)."""
  q, k, v = einops.rearrange(qkv, 'b n (three h e) -> three b n h e', three=3, h=num_heads)
  implementation = attention_implementation(qkv.dtype)
  if implementation == 'cudnn':
    try:
      y = jax.nn.dot_product_attention(q, k, v, implementation='cudnn')
      return einops.rearrange(y, 'b n h e -> b n (h e)')
    except (NotImplementedError, RuntimeError) as e:
      # cuDNN missing, too old, or not for these shapes: JAX says so while tracing.
      logging.warning('cuDNN attention unavailable (%s); using XLA attention.', e)
  y = jax.nn.dot_product_attention(q, k, v, implementation='xla')
  return einops.rearrange(y, 'b n h e -> b n (h e)')


def attention(qkv: jax.Array, num_heads: int, kernels: str = 'auto') -> jax.Array:
  """Softmax attention of packed queries, keys and values: `(b, n, (3 h e))` -> `(b, n, (h e))`.

  The packing is timm's fused qkv projection: q, k, v in thirds, heads within each.
  """
  return _pick(kernels, _explicit_attention, _fused_attention)(qkv, num_heads)


# ------------------------------------------------------------------- shifts and fractional reads


def shifted(x: jax.Array, shifts: Sequence[int], axis: int = 1) -> dict[int, jax.Array]:
  """{m: y} with y[..., i, ...] = x[..., i + m, ...] along `axis`, zero outside: one pad."""
  lo, hi = min(0, *shifts), max(0, *shifts)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (-lo, hi)
  padded = jnp.pad(x, pad)
  return {
      m: jax.lax.slice_in_dim(padded, m - lo, m - lo + x.shape[axis], axis=axis) for m in shifts
  }


def interpolation_weights(
    offset: jax.Array, shifts: Sequence[int], slope: bool = False
) -> list[tuple[int, jax.Array]]:
  """Linear interpolation at a fractional per-location offset, as weighted integer shifts.

  Reading f at i + offset equals the sum over integers m of w_m * f[i + m], with
  w_m = 1 - a at m = floor(offset), a at m = floor(offset) + 1, else 0 (a the fraction).
  Written with floor and fraction, not a symmetric hat, so the gradient with respect to the
  offset exists at integer offsets, where the zero-initialised predictor starts.

  Args:
    offset: per-location offsets, any shape, within [min(shifts), max(shifts)].
    shifts: the integer shifts that may be read (a static range covering the offsets).
    slope: return d w_m / d offset instead (-1 at floor(offset), +1 at floor(offset) + 1).

  Returns:
    (m, weight) pairs, weights shaped like `offset`.
  """
  base = jax.lax.stop_gradient(jnp.floor(offset))
  lower, upper = (-1.0, 1.0) if slope else (1.0 - (offset - base), offset - base)
  return [
      (m, jnp.where(base == m, lower, 0.0) + jnp.where(base + 1 == m, upper, 0.0)) for m in shifts
  ]


def tap_shifts(k: int, max_dilation: float) -> list[int]:
  """The integer shifts that tap k's reads at k * d, d in (0, max_dilation], may touch."""
  lo, hi = sorted((0.0, k * max_dilation))
  return list(range(math.floor(lo), math.ceil(hi) + 1))


# --------------------------------------------------------------------- dynamic temporal reads


def _reads_per_tap(kt: int, max_dilation: float) -> list[tuple[int, list[int]]]:
  """(k, the integer shifts its reads may touch) for every temporal tap k, k = -(kt//2)..kt//2."""
  return [(k, tap_shifts(k, max_dilation)) for k in range(-(kt // 2), kt // 2 + 1)]


def _temporal_reads(taps, d, max_dilation):
  y = 0.0
  for j, (k, shifts) in enumerate(_reads_per_tap(taps.shape[0], max_dilation)):
    moved = shifted(taps[j], shifts)
    y += taps[j] if not k else sum(w * moved[m] for m, w in interpolation_weights(k * d, shifts))
  return y


def _reads_fwd(taps, d, max_dilation):
  return _temporal_reads(taps, d, max_dilation), (taps, d)


def _reads_bwd(max_dilation, residuals, g):
  taps, d = residuals
  g_taps, slopes = [], 0.0
  for j, (k, shifts) in enumerate(_reads_per_tap(taps.shape[0], max_dilation)):
    if not k:
      g_taps.append(g)
      continue
    # Adjoint of "w_m * shift(x, m)": shift(w_m * g, -m).
    weights = dict(interpolation_weights(k * d, shifts))
    back = shifted(g, [-m for m in shifts])
    back_w = {m: shifted(weights[m], [-m])[-m] for m in shifts}
    g_taps.append(sum(back_w[m] * back[-m] for m in shifts))
    # d(read)/d(offset) = next sample minus this one; d(offset)/d(d) = k.
    moved = shifted(taps[j], shifts)
    slopes += k * sum(a * moved[m] for m, a in interpolation_weights(k * d, shifts, slope=True))
  # One dot over channels. The barrier keeps the slopes an XLA loop that reads the shifted taps
  # in place: fused into the dot's reduction (a YNNPACK call), every shifted tap became a copy.
  g_d = jnp.einsum('bthwc,bthwc->bthw', jax.lax.optimization_barrier(slopes), g)[..., None]
  return jnp.stack(g_taps).astype(taps.dtype), g_d.astype(d.dtype)


# CPU form: the backward written out as shifted weighted sums and one reduction over channels
# for d; XLA's transpose of the forward's pads and slices is several times slower on CPU.
_lean_temporal_reads = jax.custom_vjp(_temporal_reads, nondiff_argnums=(2,))
_lean_temporal_reads.defvjp(_reads_fwd, _reads_bwd)


def dynamic_temporal_reads(
    taps: jax.Array, d: jax.Array, max_dilation: float, kernels: str = 'auto'
) -> jax.Array:
  """y(t) = sum_k taps_k(t + k d(t)), each read interpolated linearly along time, zero outside.

  Args:
    taps: `(kt, b, t, h, w, c)`, one map per temporal tap k = -(kt//2)..kt//2.
    d: `(b, t, h, w, 1)` dilation per location, in (0, max_dilation].
    max_dilation: bounds the static set of shifts read.
    kernels: `model.kernels`.

  Returns:
    `(b, t, h, w, c)`.
  """
  return _pick(kernels, _lean_temporal_reads, _temporal_reads)(taps, d, max_dilation)


# ---------------------------------------------------------------------------- convolutions


def _tap_views(x: jax.Array, kernel_size: Sequence[int], dilation: Sequence[int]):
  """(tap index, view) for every tap of a 'SAME' 3-D kernel: x shifted by the tap's offset.

  x: `(b, t, h, w, ...)`; views have x's shape, zero where the tap reads outside.
  """
  pads = [(k // 2) * d for k, d in zip(kernel_size, dilation)]
  padded = jnp.pad(x, [(0, 0), *((p, p) for p in pads), *((0, 0),) * (x.ndim - 4)])
  for tap in itertools.product(*(range(k) for k in kernel_size)):
    start = (0, *(j * d for j, d in zip(tap, dilation)), *(0,) * (x.ndim - 4))
    yield tap, jax.lax.slice(padded, start, tuple(s + n for s, n in zip(start, x.shape)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_conv3d(x: jax.Array, kernel: jax.Array, dilation: tuple[int, int, int]) -> jax.Array:
  """'SAME' depthwise 3-D conv, one shifted read per tap.

  x: `(b, t, h, w, c)`; kernel: `(kt, kh, kw, c, m)`, m output copies per channel; returns
  `(m, b, t, h, w, c)`. The backward saves x, where autodiff saves every tap's view of it.
  """
  views = list(_tap_views(x, kernel.shape[:3], dilation))
  return jnp.stack(
      [sum(view * kernel[tap][:, j] for tap, view in views) for j in range(kernel.shape[-1])]
  )


def _depthwise_fwd(x, kernel, dilation):
  return _depthwise_conv3d(x, kernel, dilation), (x, kernel)


def _depthwise_bwd(dilation, residuals, g):
  x, kernel = residuals
  size = kernel.shape[:3]
  views = list(_tap_views(x, size, dilation))
  reduce = tuple(range(x.ndim - 1))
  g_kernel = jnp.stack(
      [
          jnp.stack([jnp.sum(view * g[j], reduce) for j in range(g.shape[0])], -1)
          for _, view in views
      ]
  ).reshape(kernel.shape)
  # The adjoint of a 'SAME' correlation: the same reads of g, with the kernel flipped.
  g_x = sum(
      view * kernel[tuple(k - 1 - i for k, i in zip(size, tap))][:, j]
      for j in range(g.shape[0])
      for tap, view in _tap_views(g[j], size, dilation)
  )
  return g_x.astype(x.dtype), g_kernel.astype(kernel.dtype)


_depthwise_conv3d.defvjp(_depthwise_fwd, _depthwise_bwd)

# Dense convs with at most this many outputs (a dilation predictor: one per dynamic axis) take
# `narrow_matmul` for their channel map.
_NARROW = 3


class Conv3D(nn.Module):
  """A 3-D conv ('SAME', zero padding) with `nn.Conv`'s parameters, dense or depthwise.

  Depthwise (`depthwise=True`, `features` = m x the input channels c): output channel `i m + j`
  is copy j of channel i, as `nn.Conv(feature_group_count=c)`; with `split_multiplier` the
  output is `(m, b, t, h, w, c)` instead, copy j of every channel in slice j.

  The reference form is `nn.Conv`, sharing this module's scope, so both forms have parameters
  `kernel` `(kt, kh, kw, c or 1, features)` and `bias` `(features,)` here. The CPU form reads
  one shifted view per tap, which XLA fuses into a few loops, where its CPU conv kernels are
  slow at these shapes (depthwise and grouped 3-D convs). Depthwise: each tap scales a shifted
  view of x, the copies in separate slices (XLA differentiates an interleaved `(c m)` channel
  axis slowly), the backward written to save x only. Dense: one matmul maps the channels to
  every tap's outputs, which are shifted and summed.

  Input `(b, t, h, w, c)`; output `(b, t, h, w, features)` or, with `split_multiplier`,
  `(m, b, t, h, w, c)`.
  """

  features: int
  kernel_size: tuple[int, int, int]
  kernel_dilation: tuple[int, int, int] = (1, 1, 1)
  depthwise: bool = False
  split_multiplier: bool = False
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    if self.depthwise and self.features % c:
      raise ValueError(
          f'a depthwise conv needs features ({self.features}) a multiple of ' f'channels ({c})'
      )
    if self.split_multiplier and not self.depthwise:
      raise ValueError('split_multiplier needs depthwise')
    m = self.features // c
    if resolve(self.kernels) == 'reference':
      conv = nn.Conv(
          self.features,
          self.kernel_size,
          kernel_dilation=self.kernel_dilation,
          padding='SAME',
          feature_group_count=c if self.depthwise else 1,
          use_bias=self.use_bias,
          kernel_init=self.kernel_init,
          dtype=self.dtype,
      )
      nn.share_scope(self, conv)
      y = conv(x)
      if self.split_multiplier:
        y = einops.rearrange(y, 'b t h w (c m) -> m b t h w c', m=m)
      return y
    kernel = self.param(
        'kernel', self.kernel_init, (*self.kernel_size, 1 if self.depthwise else c, self.features)
    )
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    bias = (
        self.param('bias', nn.initializers.zeros, (self.features,)).astype(self.dtype)
        if self.use_bias
        else jnp.zeros((self.features,), self.dtype)
    )
    if not self.depthwise:
      taps = math.prod(self.kernel_size)
      per_tap = einops.rearrange(kernel, 't h w c f -> c (t h w f)')
      maps = _narrow_matmul(x, per_tap) if self.features <= _NARROW else x @ per_tap
      maps = maps.reshape(*x.shape[:-1], taps, self.features)
      views = _tap_views(maps, self.kernel_size, self.kernel_dilation)
      return sum(view[..., i, :] for i, (_, view) in enumerate(views)) + bias
    y = _depthwise_conv3d(x, kernel.reshape(*self.kernel_size, c, m), self.kernel_dilation)
    y += einops.rearrange(bias, '(c m) -> m 1 1 1 1 c', m=m)
    return y if self.split_multiplier else einops.rearrange(y, 'm b t h w c -> b t h w (c m)')
