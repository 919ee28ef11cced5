"""Adapters that teach a frozen image ViT to model time in video clips.

Every adapter reads the tokens of all frames of a clip, `((b t), 1 + n, d)`, where the backbone
folded the `t` frames into the batch, and the patch tokens form an `(h, w)` grid.

- FE-Adapter (`kind='fe'`, the default): `x + up(conv(down(x)))` on patch tokens before MHSA, where
  `conv` is a Dynamic Dilated Conv3D (`DynamicDilatedConv3D`): a depthwise 3-D kernel whose
  temporal dilation is predicted per location (continuous, positive, linear interpolation), or,
  as the cheaper reading, fixed-dilation branches mixed by input-conditioned gates
  (`MultiBranchConv3D`). `up` is zero-initialised so the adapted model starts as the image model.
- ST-Adapter (`kind='st'`, Pan et al. 2022): the same bottleneck with a fixed depthwise (3, 1, 1)
  conv, zero-initialised conv, no activation.
- AIM (`kind='aim'`, Yang et al. 2023): bottleneck MLPs around the frozen attention reused along
  time (temporal), after attention (spatial) and in parallel to the MLP (scale 0.5); the second
  projection of each is zero-initialised. The block in `vit.py` wires it.

`method.md` documents which parts come from the papers and which are our reading.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from feadapter_jax.methods import AXES, AdapterConfig
from feadapter_jax.models import layers

ACTIVATIONS = {'none': lambda x: x, 'gelu': layers.gelu, 'relu': nn.relu}


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def _shifts(x: jax.Array, shifts: Sequence[int], axis: int = 1) -> dict[int, jax.Array]:
  """{m: y} with y[..., i, ...] = x[..., i + m, ...] along `axis`, zero outside: one pad."""
  lo, hi = min(0, *shifts), max(0, *shifts)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (-lo, hi)
  padded = jnp.pad(x, pad)
  return {m: jax.lax.slice_in_dim(padded, m - lo, m - lo + x.shape[axis], axis=axis)
          for m in shifts}


def _interp_reads(offset: jax.Array, shifts: Sequence[int], slope: bool = False
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
  return [(m, jnp.where(base == m, lower, 0.0) + jnp.where(base + 1 == m, upper, 0.0))
          for m in shifts]


def _tap_shifts(k: int, max_dilation: float) -> list[int]:
  """The integer shifts that tap k's reads at k * d, d in (0, max_dilation], may touch."""
  lo, hi = sorted((0.0, k * max_dilation))
  return list(range(math.floor(lo), math.ceil(hi) + 1))


def _tap_reads(k: int, dilation: jax.Array | int, max_dilation: float):
  """Reads of kernel tap k at offset k * dilation: [(shift, weight)]."""
  if isinstance(dilation, int):
    return [(k * dilation, 1.0)]
  return _interp_reads(k * dilation, _tap_shifts(k, max_dilation))


def _reads_per_tap(kt: int, max_dilation: float) -> list[tuple[int, list[int]]]:
  """(k, the integer shifts its reads may touch) for every temporal tap k, k = -(kt//2)..kt//2."""
  return [(k, _tap_shifts(k, max_dilation)) for k in range(-(kt // 2), kt // 2 + 1)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dynamic_temporal_reads(taps: jax.Array, d: jax.Array, max_dilation: float) -> jax.Array:
  """y(t) = sum_k taps_k(t + k d(t)), each read interpolated linearly along time.

  Args:
    taps: `(kt, b, t, h, w, c)`, one map per temporal tap k = -(kt//2)..kt//2.
    d: `(b, t, h, w, 1)` dilation per location, in (0, max_dilation].
    max_dilation: bounds the static set of shifts read.

  Returns:
    `(b, t, h, w, c)`. The backward pass is written out (shifted weighted sums, one reduction
    over channels for d): XLA's transpose of the forward's pads and slices ran ~10x slower.
  """
  y = 0.0
  for j, (k, shifts) in enumerate(_reads_per_tap(taps.shape[0], max_dilation)):
    moved = _shifts(taps[j], shifts)
    y += taps[j] if not k else sum(w * moved[m] for m, w in _interp_reads(k * d, shifts))
  return y


def _reads_fwd(taps, d, max_dilation):
  return dynamic_temporal_reads(taps, d, max_dilation), (taps, d)


def _reads_bwd(max_dilation, residuals, g):
  taps, d = residuals
  g_taps, slopes = [], 0.0
  for j, (k, shifts) in enumerate(_reads_per_tap(taps.shape[0], max_dilation)):
    if not k:
      g_taps.append(g)
      continue
    # Adjoint of "w_m * shift(x, m)": shift(w_m * g, -m).
    weights = dict(_interp_reads(k * d, shifts))
    back = _shifts(g, [-m for m in shifts])
    back_w = {m: _shifts(weights[m], [-m])[-m] for m in shifts}
    g_taps.append(sum(back_w[m] * back[-m] for m in shifts))
    # d(read)/d(offset) = next sample minus this one; d(offset)/d(d) = k.
    moved = _shifts(taps[j], shifts)
    slopes += k * sum(a * moved[m] for m, a in _interp_reads(k * d, shifts, slope=True))
  # One dot over channels. The barrier keeps the slopes an XLA loop that reads the shifted taps
  # in place: fused into the dot's reduction (a YNNPACK call), every shifted tap became a copy.
  g_d = jnp.einsum('bthwc,bthwc->bthw', jax.lax.optimization_barrier(slopes), g)[..., None]
  return jnp.stack(g_taps).astype(taps.dtype), g_d.astype(d.dtype)


dynamic_temporal_reads.defvjp(_reads_fwd, _reads_bwd)


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
def depthwise_conv3d(x: jax.Array, kernel: jax.Array, dilation: tuple[int, int, int]
                     ) -> jax.Array:
  """'SAME' depthwise 3-D conv, one shifted read per tap.

  Args:
    x: `(b, t, h, w, c)`.
    kernel: `(kt, kh, kw, c, m)`: m output copies per channel.
    dilation: per axis.

  Returns:
    `(m, b, t, h, w, c)`. The backward pass saves x, not the taps' views (autodiff kept all of
    them: 27 copies of x for a 3x3x3 kernel).
  """
  views = list(_tap_views(x, kernel.shape[:3], dilation))
  return jnp.stack([sum(view * kernel[tap][:, j] for tap, view in views)
                    for j in range(kernel.shape[-1])])


def _depthwise_fwd(x, kernel, dilation):
  return depthwise_conv3d(x, kernel, dilation), (x, kernel)


def _depthwise_bwd(dilation, residuals, g):
  x, kernel = residuals
  size = kernel.shape[:3]
  views = list(_tap_views(x, size, dilation))
  reduce = tuple(range(x.ndim - 1))
  g_kernel = jnp.stack([jnp.stack([jnp.sum(view * g[j], reduce) for j in range(g.shape[0])], -1)
                        for _, view in views]).reshape(kernel.shape)
  # The adjoint of a 'SAME' correlation: the same reads of g, with the kernel flipped.
  g_x = sum(view * kernel[tuple(k - 1 - i for k, i in zip(size, tap))][:, j]
            for j in range(g.shape[0]) for tap, view in _tap_views(g[j], size, dilation))
  return g_x.astype(x.dtype), g_kernel.astype(kernel.dtype)


depthwise_conv3d.defvjp(_depthwise_fwd, _depthwise_bwd)


class ShiftConv3D(nn.Module):
  """A 3-D conv ('SAME', zero padding) computed as one shifted read per tap.

  Parameters are `nn.Conv`'s (names, shapes, init), so checkpoints and converters are shared.
  Depthwise (`depthwise=True`, `features` = m x the input channels c; output channel `i m + j`
  is copy j of channel i, as `feature_group_count=c`): each tap scales a shifted view. Dense:
  one matmul maps the channels to every tap's outputs, which are shifted and summed. XLA fuses
  either into a few loops; its CPU conv kernels ran 10-100x slower at the adapters' shapes
  (depthwise and grouped 3-D convs; `benchmarks/train_step.py`, docs/performance.md).

  Input `(b, t, h, w, c)`; output `(b, t, h, w, features)`, or `(m, b, t, h, w, c)` with
  `split_multiplier` (depthwise only: copy j of every channel in slice j). `narrow` (dense only)
  is for a few outputs, such as a dilation predictor: `layers.narrow_matmul`.
  """
  features: int
  kernel_size: tuple[int, int, int]
  kernel_dilation: tuple[int, int, int] = (1, 1, 1)
  depthwise: bool = False
  split_multiplier: bool = False
  narrow: bool = False
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    _check(not self.depthwise or self.features % c == 0,
           f'a depthwise conv needs features ({self.features}) a multiple of channels ({c})')
    _check(self.depthwise or not self.split_multiplier, 'split_multiplier needs depthwise')
    kernel = self.param('kernel', self.kernel_init,
                        (*self.kernel_size, 1 if self.depthwise else c, self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    bias = (self.param('bias', nn.initializers.zeros, (self.features,)).astype(self.dtype)
            if self.use_bias else jnp.zeros((self.features,), self.dtype))
    if not self.depthwise:
      taps = math.prod(self.kernel_size)
      per_tap = einops.rearrange(kernel, 't h w c f -> c (t h w f)')
      maps = layers.narrow_matmul(x, per_tap) if self.narrow else x @ per_tap
      maps = maps.reshape(*x.shape[:-1], taps, self.features)
      views = _tap_views(maps, self.kernel_size, self.kernel_dilation)
      return sum(view[..., i, :] for i, (_, view) in enumerate(views)) + bias
    m = self.features // c
    # Copies in separate slices (m first): XLA differentiated an interleaved (c m) channel
    # axis ~10x slower.
    y = depthwise_conv3d(x, kernel.reshape(*self.kernel_size, c, m), self.kernel_dilation)
    y += einops.rearrange(bias, '(c m) -> m 1 1 1 1 c', m=m)
    return y if self.split_multiplier else einops.rearrange(y, 'm b t h w c -> b t h w (c m)')


class DynamicDilatedConv3D(nn.Module):
  """Depthwise 3-D conv whose dilation is predicted at every location (D2Conv3D reading).

  The dilation `d = base * (elu(z) + 1)` (positive; `z` from a zero-initialised conv, so it starts
  at `base`) scales the kernel's tap offsets; taps at fractional positions are read by linear
  interpolation. When only time is dynamic, the 3-D depthwise conv factorises exactly: a spatial
  conv gives one map per temporal tap k, and y(t) = sum_k s_k(t + k d(t)) + bias. Other dynamic
  axes take the general path (a per-location trilinear read for every tap: much slower).

  Input and output: `(b, t, h, w, c)`.
  """
  kernel_size: tuple[int, int, int] = (3, 3, 3)
  dilation: tuple[int, int, int] = (1, 1, 1)
  dynamic_axes: tuple[str, ...] = ('t',)
  max_dilation: float = 3.0
  predictor_kernel: tuple[int, int, int] = (3, 1, 1)
  force_general: bool = False  # tests compare the two paths
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    axes = [a for a in AXES if a in self.dynamic_axes]
    z = ShiftConv3D(len(axes), self.predictor_kernel, narrow=True, dtype=self.dtype,
                    kernel_init=nn.initializers.zeros, name='dilation')(x)
    # Capped so every tap stays inside the static set of shifts read.
    factor = nn.elu(z.astype(jnp.float32)) + 1.0
    dyn = {a: jnp.minimum(factor[..., i:i + 1] * self.dilation[AXES.index(a)], self.max_dilation)
           for i, a in enumerate(axes)}
    bias = self.param('bias', nn.initializers.zeros, (c,))
    if axes == ['t'] and not self.force_general:
      y = self._temporal(x, dyn['t'])
    else:
      y = self._general(x, dyn)
    return (y + bias).astype(self.dtype)

  def _taps(self, axis: int) -> range:
    r = self.kernel_size[axis] // 2
    return range(-r, r + 1)

  def _temporal(self, x: jax.Array, d_t: jax.Array) -> jax.Array:
    """Factorised path: spatial depthwise conv per temporal tap, then dynamic temporal reads."""
    kt, kh, kw = self.kernel_size
    c = x.shape[-1]
    spatial = ShiftConv3D(c * kt, (1, kh, kw), (1, *self.dilation[1:]), depthwise=True,
                          split_multiplier=True, use_bias=False, dtype=self.dtype,
                          name='taps')(x)  # (k b t h w c)
    return dynamic_temporal_reads(spatial, d_t, self.max_dilation)

  def _general(self, x: jax.Array, dyn: dict[str, jax.Array]) -> jax.Array:
    """Any dynamic axes: every tap reads x at its scaled offset, interpolated per axis."""
    kt, kh, kw = self.kernel_size
    c = x.shape[-1]
    # Same parameter layout as the factorised path, so both read one checkpoint.
    kernel = self.param('taps', nn.initializers.lecun_normal(), (1, kh, kw, 1, c * kt))
    kernel = einops.rearrange(kernel, '1 h w 1 (c k) -> k h w c', k=kt)
    dilations = [dyn.get(a, self.dilation[i]) for i, a in enumerate(AXES)]
    y = jnp.zeros(x.shape, jnp.float32)
    for (i, kt_), (j, kh_), (l, kw_) in itertools.product(
        *(enumerate(self._taps(axis)) for axis in range(3))):
      per_axis = [_tap_reads(k, d, self.max_dilation)
                  for k, d in zip((kt_, kh_, kw_), dilations)]
      for (mt, wt), (mh, wh), (mw, ww) in itertools.product(*per_axis):
        moved = _shifts(_shifts(_shifts(x, [mt], 1)[mt], [mh], 2)[mh], [mw], 3)[mw]
        y += (wt * wh * ww) * moved * kernel[i, j, l]
    return y


class MultiBranchConv3D(nn.Module):
  """Fixed temporal dilations mixed by input-conditioned softmax gates (the cheaper reading).

  Gates come from the clip's mean feature through a zero-initialised dense layer, so every
  branch starts with equal weight. Input and output: `(b, t, h, w, c)`.
  """
  kernel_size: tuple[int, int, int] = (3, 3, 3)
  dilation: tuple[int, int, int] = (1, 1, 1)
  branch_dilations: tuple[int, ...] = (1, 2, 3)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    gates = nn.Dense(len(self.branch_dilations), kernel_init=nn.initializers.zeros,
                     dtype=self.dtype, name='gates')(x.mean(axis=(1, 2, 3)))
    gates = jax.nn.softmax(gates.astype(jnp.float32), axis=-1)  # (b, branches)
    y = 0.0
    for i, d in enumerate(self.branch_dilations):
      branch = ShiftConv3D(c, self.kernel_size, (d, *self.dilation[1:]), depthwise=True,
                           dtype=self.dtype, name=f'branch_{i}')(x)
      y += gates[:, i, None, None, None, None] * branch
    return y.astype(self.dtype)


class TokenAdapter(nn.Module):
  """`x + up(conv(down(x)))` on the patch tokens of a clip; the class token passes through.

  Attributes:
    config: the adapter's knobs ('fe' or 'st').
    num_frames: t, to unfold `(b t)` from the batch.
    grid: (h, w) patch grid.
  """
  config: AdapterConfig
  num_frames: int
  grid: tuple[int, int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: `((b t), 1 + h w, d)` -> same."""
    cfg = self.config
    cls_tok, patches = x[:, :1], x[:, 1:]
    zeros = nn.initializers.zeros
    z = nn.Dense(cfg.width, dtype=self.dtype, name='down')(patches)
    z = ACTIVATIONS[cfg.activation](z)
    z = einops.rearrange(z, '(b t) (h w) c -> b t h w c', t=self.num_frames, h=self.grid[0])
    z = make_conv(cfg, self.dtype, name='conv')(z)
    z = einops.rearrange(z, 'b t h w c -> (b t) (h w) c')
    up_init = zeros if cfg.zero_init == 'up' else nn.initializers.lecun_normal()
    z = nn.Dense(x.shape[-1], kernel_init=up_init, dtype=self.dtype, name='up')(z)
    z = layers.materialized_cotangent(z)
    return jnp.concatenate([cls_tok, patches + z.astype(patches.dtype)], axis=1)


def make_conv(cfg: AdapterConfig, dtype: Any = jnp.float32, name: str | None = None
              ) -> nn.Module:
  """The token adapter's depthwise conv for `cfg.conv`: `(b, t, h, w, width)` -> same."""
  if cfg.conv == 'dynamic':
    return DynamicDilatedConv3D(cfg.kernel_size, cfg.dilation, cfg.dynamic_axes,
                                cfg.max_dilation, cfg.predictor_kernel, dtype=dtype, name=name)
  if cfg.conv == 'multibranch':
    return MultiBranchConv3D(cfg.kernel_size, cfg.dilation, cfg.branch_dilations, dtype=dtype,
                             name=name)
  init = nn.initializers.zeros if cfg.zero_init == 'conv' else nn.initializers.lecun_normal()
  return ShiftConv3D(cfg.width, cfg.kernel_size, cfg.dilation, depthwise=True, kernel_init=init,
                     dtype=dtype, name=name)


class Bottleneck(nn.Module):
  """AIM's adapter: `fc2(gelu(fc1(x)))`, plus x when `skip`; fc2 zero-initialised."""
  ratio: float
  skip: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    y = nn.Dense(int(d * self.ratio), dtype=self.dtype, name='fc1')(x)
    y = layers.gelu(y)
    y = nn.Dense(d, kernel_init=nn.initializers.zeros, dtype=self.dtype, name='fc2')(y)
    return x + y if self.skip else y


def temporal_attention(attn: nn.Module, y: jax.Array, num_frames: int) -> jax.Array:
  """AIM's temporal branch input: attention along time for every token position.

  Args:
    attn: the block's (frozen) attention module, reused.
    y: normalised tokens `((b t), n, d)`.
    num_frames: t.

  Returns:
    `((b t), n, d)`.
  """
  n = y.shape[1]
  yt = einops.rearrange(y, '(b t) n d -> (b n) t d', t=num_frames)
  return einops.rearrange(attn(yt), '(b n) t d -> (b t) n d', n=n)


def placements(config: AdapterConfig, index: int) -> Sequence[str]:
  """Where block `index` has a token adapter ('attn', 'mlp'), empty if none."""
  if config.kind in ('fe', 'st') and config.in_block(index):
    return config.placement
  return ()
