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

import dataclasses
import itertools
import math
from typing import Any, Mapping, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

KINDS = ('none', 'fe', 'st', 'aim')
CONVS = ('dynamic', 'multibranch', 'fixed')
AXES = ('t', 'h', 'w')
ACTIVATIONS = {'none': lambda x: x, 'gelu': lambda x: nn.gelu(x, approximate=False),
               'relu': nn.relu}


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """Which adapter, where, and its knobs (see `configs/` and `method.md`).

  Attributes:
    kind: 'none' | 'fe' | 'st' | 'aim'.
    width: bottleneck channels of the token adapters ('fe', 'st').
    placement: where token adapters go in a block: 'attn' (before MHSA), 'mlp' (before the MLP).
    blocks: indices of the blocks that get an adapter; empty means every block.
    conv: 'dynamic' (dynamic dilation), 'multibranch' (gated fixed dilations) or 'fixed'.
    kernel_size: depthwise kernel (t, h, w).
    dilation: base dilation (t, h, w); the dynamic factor multiplies it.
    dynamic_axes: axes whose dilation is predicted per location, from ('t', 'h', 'w').
    max_dilation: upper bound of a predicted dilation (bounds the shifts that are read).
    predictor_kernel: kernel (t, h, w) of the conv that predicts the dilation.
    branch_dilations: temporal dilations of the multi-branch reading.
    activation: applied after `down` ('none' in both papers' formulas).
    zero_init: 'up' (FE) or 'conv' (ST): the layer initialised at zero.
    aim_ratio: AIM bottleneck as a fraction of the width D.
    aim_scale: AIM's scale of the MLP adapter.
  """
  kind: str = 'none'
  width: int = 352
  placement: tuple[str, ...] = ('attn',)
  blocks: tuple[int, ...] = ()
  conv: str = 'dynamic'
  kernel_size: tuple[int, int, int] = (3, 3, 3)
  dilation: tuple[int, int, int] = (1, 1, 1)
  dynamic_axes: tuple[str, ...] = ('t',)
  max_dilation: float = 3.0
  predictor_kernel: tuple[int, int, int] = (3, 1, 1)
  branch_dilations: tuple[int, ...] = (1, 2, 3)
  activation: str = 'none'
  zero_init: str = 'up'
  aim_ratio: float = 0.25
  aim_scale: float = 0.5

  def __post_init__(self):
    _check(self.kind in KINDS, f'adapter.kind={self.kind!r}, expected one of {KINDS}')
    _check(self.conv in CONVS, f'adapter.conv={self.conv!r}, expected one of {CONVS}')
    _check(set(self.placement) <= {'attn', 'mlp'},
           f"adapter.placement={self.placement!r}, expected a subset of ('attn', 'mlp')")
    _check(set(self.dynamic_axes) <= set(AXES),
           f'adapter.dynamic_axes={self.dynamic_axes!r}, expected a subset of {AXES}')
    _check(all(k % 2 == 1 for k in self.kernel_size),
           f'adapter.kernel_size={self.kernel_size!r} must be odd on every axis')
    _check(self.activation in ACTIVATIONS,
           f'adapter.activation={self.activation!r}, expected one of {tuple(ACTIVATIONS)}')
    _check(self.zero_init in ('up', 'conv'), f"adapter.zero_init={self.zero_init!r}")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any] | None) -> 'AdapterConfig':
    """Builds from a (Config)dict; sequences become tuples so the config stays hashable."""
    if d is None:
      return cls()
    d = dict(d.to_dict() if hasattr(d, 'to_dict') else d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    _check(not unknown, f'unknown adapter fields {sorted(unknown)}')
    return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()})

  def in_block(self, index: int) -> bool:
    return self.kind != 'none' and (not self.blocks or index in self.blocks)


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def _shift(x: jax.Array, offset: int, axis: int) -> jax.Array:
  """y[..., i, ...] = x[..., i + offset, ...] along `axis`, zero outside."""
  n = x.shape[axis]
  if offset == 0:
    return x
  if abs(offset) >= n:
    return jnp.zeros_like(x)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, offset) if offset > 0 else (-offset, 0)
  start = max(offset, 0)
  return jax.lax.slice_in_dim(jnp.pad(x, pad), start, start + n, axis=axis)


def _interp_reads(offset: jax.Array, lo: float, hi: float) -> list[tuple[int, jax.Array]]:
  """Linear interpolation at a fractional per-location offset, as weighted integer shifts.

  Reading f at i + offset equals the sum over integers m of w_m * f[i + m], with
  w_m = 1 - a at m = floor(offset), a at m = floor(offset) + 1, else 0 (a the fraction).
  Written with floor and fraction, not a symmetric hat, so the gradient with respect to the
  offset exists at integer offsets, where the zero-initialised predictor starts.

  Args:
    offset: per-location offsets, any shape, within [lo, hi].
    lo: lower bound of the offsets.
    hi: upper bound of the offsets. The bounds fix the static set of shifts read.

  Returns:
    (m, weight) pairs, weights shaped like `offset`.
  """
  base = jax.lax.stop_gradient(jnp.floor(offset))
  frac = offset - base
  return [(m, jnp.where(base == m, 1.0 - frac, 0.0) + jnp.where(base + 1 == m, frac, 0.0))
          for m in range(math.floor(lo), math.ceil(hi) + 1)]


def _tap_reads(k: int, dilation: jax.Array | int, max_dilation: float):
  """Reads of kernel tap k at offset k * dilation: [(shift, weight)]."""
  if isinstance(dilation, int):
    return [(k * dilation, 1.0)]
  lo, hi = sorted((0.0, k * max_dilation))
  return _interp_reads(k * dilation, lo, hi)


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
    z = nn.Conv(len(axes), self.predictor_kernel, padding='SAME', dtype=self.dtype,
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
    spatial = nn.Conv(c * kt, (1, kh, kw), kernel_dilation=(1, *self.dilation[1:]),
                      padding='SAME', feature_group_count=c, use_bias=False, dtype=self.dtype,
                      name='taps')(x)
    spatial = einops.rearrange(spatial, 'b t h w (c k) -> k b t h w c', k=kt)
    y = jnp.zeros(x.shape, jnp.float32)
    for j, k in enumerate(self._taps(0)):
      if k == 0:
        y += spatial[j]
        continue
      for m, w in _tap_reads(k, d_t, self.max_dilation):
        y += w * _shift(spatial[j], m, axis=1)
    return y

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
        moved = _shift(_shift(_shift(x, mt, 1), mh, 2), mw, 3)
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
      branch = nn.Conv(c, self.kernel_size, kernel_dilation=(d, *self.dilation[1:]),
                       padding='SAME', feature_group_count=c, dtype=self.dtype,
                       name=f'branch_{i}')(x)
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
    z = self._conv()(z)
    z = einops.rearrange(z, 'b t h w c -> (b t) (h w) c')
    up_init = zeros if cfg.zero_init == 'up' else nn.initializers.lecun_normal()
    z = nn.Dense(x.shape[-1], kernel_init=up_init, dtype=self.dtype, name='up')(z)
    return jnp.concatenate([cls_tok, patches + z.astype(patches.dtype)], axis=1)

  def _conv(self) -> nn.Module:
    cfg = self.config
    if cfg.conv == 'dynamic':
      return DynamicDilatedConv3D(cfg.kernel_size, cfg.dilation, cfg.dynamic_axes,
                                  cfg.max_dilation, cfg.predictor_kernel, dtype=self.dtype,
                                  name='conv')
    if cfg.conv == 'multibranch':
      return MultiBranchConv3D(cfg.kernel_size, cfg.dilation, cfg.branch_dilations,
                               dtype=self.dtype, name='conv')
    init = nn.initializers.zeros if cfg.zero_init == 'conv' else nn.initializers.lecun_normal()
    return nn.Conv(cfg.width, cfg.kernel_size, kernel_dilation=cfg.dilation, padding='SAME',
                   feature_group_count=cfg.width, kernel_init=init, dtype=self.dtype,
                   name='conv')


class Bottleneck(nn.Module):
  """AIM's adapter: `fc2(gelu(fc1(x)))`, plus x when `skip`; fc2 zero-initialised."""
  ratio: float
  skip: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    y = nn.Dense(int(d * self.ratio), dtype=self.dtype, name='fc1')(x)
    y = nn.gelu(y, approximate=False)
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
