"""Adapters that teach a frozen image ViT to model time in video clips.

Every adapter reads the tokens of all frames of a clip, `((b t), P + n, d)`, where the backbone
folded the `t` frames into the batch, P prefix tokens (class, registers; none for a pooled ViT)
come first, and the n patch tokens form an `(h, w)` grid.

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

`docs/method.md` documents which parts come from the papers and which are our reading. How the
convolutions, GELU and the temporal reads are computed is `kernels.py`'s concern: every module
here takes `kernels` (`model.kernels`) and passes it on.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from feadapter_jax.methods import AXES, AdapterConfig
from feadapter_jax.models import kernels as kernels_lib


def activate(name: str, x: jax.Array, kernels: str = 'auto') -> jax.Array:
  """The activation after `down`: 'none', 'gelu' (exact) or 'relu'."""
  if name == 'gelu':
    return kernels_lib.gelu(x, kernels)
  return nn.relu(x) if name == 'relu' else x


class DynamicDilatedConv3D(nn.Module):
  """Depthwise 3-D conv whose dilation is predicted at every location (D2Conv3D reading).

  The dilation `d = min(base * (elu(z) + 1), max_dilation)` is positive; `z` comes from a
  zero-initialised conv of the input (the predictor, one output per dynamic axis), so `d` starts
  at `base`. It scales the kernel's tap offsets: tap k reads the input at `k d`, and taps at
  fractional positions are read by linear interpolation. The cap keeps every read inside a
  static set of integer shifts.

  When only time is dynamic, the 3-D depthwise conv factorises exactly: a spatial depthwise conv
  gives one map s_k per temporal tap k, and y(t) = sum_k s_k(t + k d(t)) + bias. Other dynamic
  axes take the general form: every tap reads the input at its scaled offset, interpolated along
  each dynamic axis (trilinear for three), which costs a read per tap and corner.

  Input and output: `(b, t, h, w, c)`.
  """

  kernel_size: tuple[int, int, int] = (3, 3, 3)
  dilation: tuple[int, int, int] = (1, 1, 1)
  dynamic_axes: tuple[str, ...] = ('t',)
  max_dilation: float = 3.0
  predictor_kernel: tuple[int, int, int] = (3, 1, 1)
  dtype: Any = jnp.float32
  kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    axes = [a for a in AXES if a in self.dynamic_axes]
    z = kernels_lib.Conv3D(
        len(axes),
        self.predictor_kernel,
        dtype=self.dtype,
        kernel_init=nn.initializers.zeros,
        kernels=self.kernels,
        name='dilation',
    )(x)
    factor = nn.elu(z.astype(jnp.float32)) + 1.0
    dyn = {
        a: jnp.minimum(factor[..., i : i + 1] * self.dilation[AXES.index(a)], self.max_dilation)
        for i, a in enumerate(axes)
    }
    bias = self.param('bias', nn.initializers.zeros, (c,))
    y = self._temporal(x, dyn['t']) if axes == ['t'] else self._general(x, dyn)
    return (y + bias).astype(self.dtype)

  def _temporal(self, x: jax.Array, d_t: jax.Array) -> jax.Array:
    """Factorised form: a spatial depthwise conv per temporal tap, then the dynamic reads."""
    kt, kh, kw = self.kernel_size
    c = x.shape[-1]
    spatial = kernels_lib.Conv3D(
        c * kt,
        (1, kh, kw),
        (1, *self.dilation[1:]),
        depthwise=True,
        split_multiplier=True,
        use_bias=False,
        dtype=self.dtype,
        kernels=self.kernels,
        name='taps',
    )(
        x
    )  # (k b t h w c)
    return kernels_lib.dynamic_temporal_reads(spatial, d_t, self.max_dilation, self.kernels)

  def _general(self, x: jax.Array, dyn: dict[str, jax.Array]) -> jax.Array:
    """Any dynamic axes: every tap reads x at its scaled offset, interpolated per axis."""
    kt, kh, kw = self.kernel_size
    c = x.shape[-1]
    # The factorised form's parameter layout, so both read one checkpoint.
    kernel = self.param('taps', nn.initializers.lecun_normal(), (1, kh, kw, 1, c * kt))
    kernel = einops.rearrange(kernel, '1 h w 1 (c k) -> k h w c', k=kt)
    dilations = [dyn.get(a, self.dilation[i]) for i, a in enumerate(AXES)]
    y = jnp.zeros(x.shape, jnp.float32)
    for (i, kt_), (j, kh_), (l, kw_) in itertools.product(
        *(enumerate(self._taps(axis)) for axis in range(3))
    ):
      per_axis = [self._reads(k, d) for k, d in zip((kt_, kh_, kw_), dilations)]
      for (mt, wt), (mh, wh), (mw, ww) in itertools.product(*per_axis):
        moved = x
        for axis, m in zip((1, 2, 3), (mt, mh, mw)):
          moved = kernels_lib.shifted(moved, [m], axis)[m]
        y += (wt * wh * ww) * moved * kernel[i, j, l]
    return y

  def _taps(self, axis: int) -> range:
    r = self.kernel_size[axis] // 2
    return range(-r, r + 1)

  def _reads(self, k: int, dilation: jax.Array | int) -> Sequence[tuple[int, Any]]:
    """Reads of tap k at offset k * dilation: [(integer shift, weight)]."""
    if isinstance(dilation, int):
      return [(k * dilation, 1.0)]
    return kernels_lib.interpolation_weights(
        k * dilation, kernels_lib.tap_shifts(k, self.max_dilation)
    )


class MultiBranchConv3D(nn.Module):
  """Fixed temporal dilations mixed by input-conditioned softmax gates (the cheaper reading).

  Gates come from the clip's mean feature through a zero-initialised dense layer, so every
  branch starts with equal weight. Input and output: `(b, t, h, w, c)`.
  """

  kernel_size: tuple[int, int, int] = (3, 3, 3)
  dilation: tuple[int, int, int] = (1, 1, 1)
  branch_dilations: tuple[int, ...] = (1, 2, 3)
  dtype: Any = jnp.float32
  kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    gates = nn.Dense(
        len(self.branch_dilations),
        kernel_init=nn.initializers.zeros,
        dtype=self.dtype,
        name='gates',
    )(x.mean(axis=(1, 2, 3)))
    gates = jax.nn.softmax(gates.astype(jnp.float32), axis=-1)  # (b, branches)
    y = 0.0
    for i, d in enumerate(self.branch_dilations):
      branch = kernels_lib.Conv3D(
          c,
          self.kernel_size,
          (d, *self.dilation[1:]),
          depthwise=True,
          dtype=self.dtype,
          kernels=self.kernels,
          name=f'branch_{i}',
      )(x)
      y += gates[:, i, None, None, None, None] * branch
    return y.astype(self.dtype)


def make_conv(
    cfg: AdapterConfig, dtype: Any = jnp.float32, name: str | None = None, kernels: str = 'auto'
) -> nn.Module:
  """The token adapter's depthwise conv for `cfg.conv`: `(b, t, h, w, width)` -> same."""
  if cfg.conv == 'dynamic':
    return DynamicDilatedConv3D(
        cfg.kernel_size,
        cfg.dilation,
        cfg.dynamic_axes,
        cfg.max_dilation,
        cfg.predictor_kernel,
        dtype=dtype,
        kernels=kernels,
        name=name,
    )
  if cfg.conv == 'multibranch':
    return MultiBranchConv3D(
        cfg.kernel_size, cfg.dilation, cfg.branch_dilations, dtype=dtype, kernels=kernels, name=name
    )
  init = nn.initializers.zeros if cfg.zero_init == 'conv' else nn.initializers.lecun_normal()
  return kernels_lib.Conv3D(
      cfg.width,
      cfg.kernel_size,
      cfg.dilation,
      depthwise=True,
      kernel_init=init,
      dtype=dtype,
      kernels=kernels,
      name=name,
  )


class TokenAdapter(nn.Module):
  """`x + up(conv(down(x)))` on the patch tokens of a clip; prefix tokens pass through.

  Attributes:
    config: the adapter's knobs ('fe' or 'st').
    num_frames: t, to unfold `(b t)` from the batch.
    grid: (h, w) patch grid.
  """

  config: AdapterConfig
  num_frames: int
  grid: tuple[int, int]
  dtype: Any = jnp.float32
  kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: `((b t), P + h w, d)` -> same, P class and register tokens."""
    cfg = self.config
    prefix = x.shape[1] - self.grid[0] * self.grid[1]
    prefix_tokens, patches = x[:, :prefix], x[:, prefix:]
    z = nn.Dense(cfg.width, dtype=self.dtype, name='down')(patches)
    z = activate(cfg.activation, z, self.kernels)
    z = einops.rearrange(z, '(b t) (h w) c -> b t h w c', t=self.num_frames, h=self.grid[0])
    z = make_conv(cfg, self.dtype, name='conv', kernels=self.kernels)(z)
    z = einops.rearrange(z, 'b t h w c -> (b t) (h w) c')
    up_init = nn.initializers.zeros if cfg.zero_init == 'up' else nn.initializers.lecun_normal()
    z = nn.Dense(x.shape[-1], kernel_init=up_init, dtype=self.dtype, name='up')(z)
    z = kernels_lib.materialized_cotangent(z, self.kernels)
    return jnp.concatenate([prefix_tokens, patches + z.astype(patches.dtype)], axis=1)


class Bottleneck(nn.Module):
  """AIM's adapter: `fc2(gelu(fc1(x)))`, plus x when `skip`; fc2 zero-initialised."""

  ratio: float
  skip: bool
  dtype: Any = jnp.float32
  kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    y = nn.Dense(int(d * self.ratio), dtype=self.dtype, name='fc1')(x)
    y = kernels_lib.gelu(y, self.kernels)
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
