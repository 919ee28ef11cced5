"""Vision Transformer in timm's `VisionTransformer` layout, for images and for video clips.

An image batch `(b, H, W, 3)` is a clip of one frame. A clip batch `(b, t, H, W, 3)` is folded to
`((b t), H, W, 3)` for the image model; adapters (`adapters.py`) unfold time inside the blocks;
the head classifies the temporal mean of the per-frame pooled features (the class token, or the
mean of the patch tokens). With adapters off (or zero-initialised) the logits equal the image
model's logits averaged over frames.

Parameter names mirror timm, so PyTorch checkpoints map one to one (`feadapter_jax/convert/`):
  patch_embed/{kernel (p, p, 3, D), bias}   <- patch_embed.proj
  cls_token (1, 1, D), reg_token (1, R, D), pos_embed (1, P + N, D)
  norm_pre                                   (pre_norm: CLIP's ln_pre)
  blocks_{i}/norm1, attn/qkv (D, 3D), attn/proj, ls1/gamma, norm2, mlp/fc1, mlp/fc2, ls2/gamma,
    adapter_*/...
  norm or fc_norm, head (D, K)
where N = h w patches and P the prefix tokens the position embedding covers (class and register
tokens; none with `class_pos_embed=False`, timm's `no_embed_class`).

The options that the image-model families need are off by default:
  - CLIP (OpenAI, open_clip, FaRL): `pre_norm`, `activation='quick_gelu'` for OpenAI's weights.
  - DINOv2, DeiT-III, CaiT-style blocks: `layer_scale` (LayerScale on both residual branches),
    `num_registers` (DINOv2 with registers), `class_pos_embed=False`.
  - MAE / BEiT fine-tunes: `global_pool='avg'` with `fc_norm` (the LayerNorm after pooling
    instead of before), with or without `class_token`.

`kernels` ('auto' | 'reference' | 'cpu', config key `model.kernels`) picks how attention, the
norms, GELU and the adapters' convolutions are computed (`kernels.py`); parameters and values are
the same under every choice.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from feadapter_jax.models import adapters as adapters_lib
from feadapter_jax.models import kernels as kernels_lib
from feadapter_jax.models.kernels import LayerNorm

# width, depth, heads, mlp_dim: timm's vit_{tiny,small,base,large,huge}.
PRESETS = {
    'Ti': (192, 12, 3, 768),
    'S': (384, 12, 6, 1536),
    'B': (768, 12, 12, 3072),
    'L': (1024, 24, 16, 4096),
    'H': (1280, 32, 16, 5120),
}


def decode_variant(variant: str) -> dict[str, int]:
  """'B/16' -> dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16)."""
  name, _, patch = variant.partition('/')
  if name not in PRESETS or not patch.isdigit():
    raise ValueError(
        f'Unknown ViT variant {variant!r}: expected <size>/<patch> with size in '
        f'{sorted(PRESETS)}, e.g. "B/16".'
    )
  width, depth, num_heads, mlp_dim = PRESETS[name]
  return dict(width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim, patch_size=int(patch))


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection. `(b, n, d) -> (b, n, d)`."""

  num_heads: int
  dtype: Any = jnp.float32
  kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    qkv = nn.Dense(3 * d, dtype=self.dtype, name='qkv')(x)
    y = kernels_lib.attention(qkv, self.num_heads, self.kernels)
    return nn.Dense(d, dtype=self.dtype, name='proj')(y)


ACTIVATIONS = ('gelu', 'quick_gelu')
POOLS = ('token', 'avg')
# The `ViT` fields a backbone's weights fix: its architecture, and the options of its family.
ARCHITECTURE = ('width', 'depth', 'num_heads', 'mlp_dim', 'patch_size')
FAMILY_OPTIONS = (
    'layer_norm_eps',
    'activation',
    'pre_norm',
    'layer_scale',
    'num_registers',
    'class_token',
    'class_pos_embed',
    'global_pool',
    'fc_norm',
)
BACKBONE_FIELDS = ARCHITECTURE + FAMILY_OPTIONS


def quick_gelu(x: jax.Array) -> jax.Array:
  """`x sigmoid(1.702 x)`: the GELU approximation OpenAI's CLIP weights were trained with."""
  return x * jax.nn.sigmoid(1.702 * x)


class Mlp(nn.Module):
  """fc2(act(fc1(x))), act the exact GELU or QuickGELU. `(..., d)` -> same."""

  mlp_dim: int
  activation: str = 'gelu'
  dtype: Any = jnp.float32
  kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, name='fc1')(x)
    y = quick_gelu(y) if self.activation == 'quick_gelu' else kernels_lib.gelu(y, self.kernels)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name='fc2')(y)


class LayerScale(nn.Module):
  """Per-channel scale of a residual branch (CaiT, DeiT-III, DINOv2): `x * gamma`."""

  init_value: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gamma = self.param('gamma', nn.initializers.constant(self.init_value), (x.shape[-1],))
    return x * gamma.astype(x.dtype)


class Block(nn.Module):
  """Pre-norm transformer block with optional adapters. `((b t), 1 + n, d)` -> same."""

  num_heads: int
  mlp_dim: int
  index: int
  num_frames: int
  grid: tuple[int, int]
  adapter: adapters_lib.AdapterConfig
  drop_path: float = 0.0
  deterministic: bool = True
  layer_norm_eps: float = 1e-6
  activation: str = 'gelu'
  layer_scale: float = 0.0
  dtype: Any = jnp.float32
  kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """The adapters add to the residual stream; LayerScale scales the frozen branches only."""
    cfg = self.adapter
    kernels = self.kernels
    aim = cfg.kind == 'aim' and cfg.in_block(self.index)
    token_adapters = adapters_lib.placements(cfg, self.index)
    # Stochastic depth: drop a whole sample's residual branch.
    drop = nn.Dropout(self.drop_path, broadcast_dims=(1, 2), deterministic=self.deterministic)
    norm1 = LayerNorm(self.layer_norm_eps, dtype=self.dtype, kernels=kernels, name='norm1')
    norm2 = LayerNorm(self.layer_norm_eps, dtype=self.dtype, kernels=kernels, name='norm2')
    attn = Attention(self.num_heads, dtype=self.dtype, kernels=kernels, name='attn')

    def scaled(y: jax.Array, name: str) -> jax.Array:
      return LayerScale(self.layer_scale, name=name)(y) if self.layer_scale else y

    def token_adapter(where: str) -> nn.Module:
      return adapters_lib.TokenAdapter(
          cfg,
          self.num_frames,
          self.grid,
          dtype=self.dtype,
          kernels=kernels,
          name=f'adapter_{where}',
      )

    def bottleneck(skip: bool, name: str) -> nn.Module:
      return adapters_lib.Bottleneck(
          cfg.aim_ratio, skip=skip, dtype=self.dtype, kernels=kernels, name=name
      )

    if 'attn' in token_adapters:
      x = token_adapter('attn')(x)
    if aim:
      temporal = adapters_lib.temporal_attention(attn, norm1(x), self.num_frames)
      x = x + drop(bottleneck(False, 'adapter_t')(temporal))
    y = attn(norm1(x))
    if aim:
      y = bottleneck(True, 'adapter_s')(y)
    x = x + drop(scaled(y, 'ls1'))
    if 'mlp' in token_adapters:
      x = token_adapter('mlp')(x)
    y = norm2(x)
    out = Mlp(self.mlp_dim, self.activation, dtype=self.dtype, kernels=kernels, name='mlp')(y)
    out = scaled(out, 'ls2')
    if aim:
      out = out + drop(cfg.aim_scale * bottleneck(False, 'adapter_mlp')(y))
    return x + drop(out)


class ViT(nn.Module):
  """Image/video classifier. See the module docstring for shapes and parameter names.

  Attributes:
    num_classes: head outputs; 0 returns the pooled features instead of logits.
    patch_size, width, depth, num_heads, mlp_dim: the architecture (see PRESETS).
    image_size: input size the position embedding is made for (square).
    adapter: adapter knobs (`adapters.AdapterConfig`), kind 'none' for the plain image model.
    drop_path_rate: stochastic depth at the last block (linear in depth, as timm).
    head_dropout: dropout before the head.
    layer_norm_eps: every LayerNorm's epsilon (timm 1e-6, CLIP 1e-5, Hugging Face ViT 1e-12).
    activation: the MLP's 'gelu' (exact) or 'quick_gelu' (OpenAI CLIP).
    pre_norm: a LayerNorm `norm_pre` after the position embedding (CLIP's ln_pre).
    layer_scale: LayerScale's initial value on both residual branches; 0 for none.
    num_registers: register tokens after the class token (DINOv2 with registers).
    class_token: a class token first in the sequence.
    class_pos_embed: the position embedding covers the class and register tokens too (timm's
      default); False adds it to the patch tokens only (timm `no_embed_class`).
    global_pool: what a frame's features are: 'token' (the class token) or 'avg' (the mean of
      the patch tokens).
    fc_norm: the final LayerNorm after pooling (`fc_norm`) instead of before (`norm`).
    remat: rematerialise each block in the backward pass (memory for compute).
    dtype: compute dtype (parameters stay float32); `build` resolves the config's 'auto'.
    kernels: how the costly pieces are computed (`kernels.py`): 'reference' (plain JAX
      forms, what GPU and TPU compile well), 'cpu' (forms written for XLA's CPU backend), or
      'auto': 'cpu' on the CPU backend, 'reference' elsewhere.
  """

  num_classes: int
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  image_size: int = 224
  adapter: adapters_lib.AdapterConfig = adapters_lib.AdapterConfig()
  drop_path_rate: float = 0.0
  head_dropout: float = 0.0
  layer_norm_eps: float = 1e-6
  activation: str = 'gelu'
  pre_norm: bool = False
  layer_scale: float = 0.0
  num_registers: int = 0
  class_token: bool = True
  class_pos_embed: bool = True
  global_pool: str = 'token'
  fc_norm: bool = False
  remat: bool = False
  dtype: Any = jnp.float32
  kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """`(b, t, H, W, 3)` or `(b, H, W, 3)` normalised pixels -> logits `(b, num_classes)`."""
    kernels = kernels_lib.resolve(self.kernels)
    if x.ndim == 4:
      x = x[:, None]
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f'ViT expects (b, H, W, 3) images or (b, t, H, W, 3) clips, got {x.shape}')
    b, t, hgt, wid, _ = x.shape
    if hgt % self.patch_size or wid % self.patch_size:
      raise ValueError(f'Image size {hgt}x{wid} is not divisible by patch size {self.patch_size}.')
    grid = (hgt // self.patch_size, wid // self.patch_size)
    expected = (self.image_size // self.patch_size,) * 2
    if grid != expected:
      raise ValueError(
          f'Input {hgt}x{wid} gives a {grid} patch grid but the position embedding '
          f'is for image_size={self.image_size} {expected}: resize the input, or '
          'convert/load the weights with the new image_size (resamples pos_embed).'
      )
    x = einops.rearrange(x, 'b t h w c -> (b t) h w c').astype(self.dtype)
    x = nn.Conv(
        self.width,
        (self.patch_size,) * 2,
        strides=(self.patch_size,) * 2,
        padding='VALID',
        dtype=self.dtype,
        name='patch_embed',
    )(x)
    x = einops.rearrange(x, 'bt h w d -> bt (h w) d')
    x = self._embed_tokens(x, grid[0] * grid[1])
    if self.pre_norm:
      x = LayerNorm(self.layer_norm_eps, dtype=self.dtype, kernels=kernels, name='norm_pre')(x)
    if self.adapter.kind == 'aim':
      # AIM's learned temporal position embedding (zero-initialised): without it attention
      # along time is permutation-equivariant and cannot tell onset from offset.
      time_embed = self.param('adapter_time_embed', nn.initializers.zeros, (1, t, 1, self.width))
      x = einops.rearrange(
          einops.rearrange(x, '(b t) n d -> b t n d', t=t) + time_embed.astype(x.dtype),
          'b t n d -> (b t) n d',
      )

    block_cls = nn.remat(Block) if self.remat else Block
    for i in range(self.depth):
      x = block_cls(
          self.num_heads,
          self.mlp_dim,
          index=i,
          num_frames=t,
          grid=grid,
          adapter=self.adapter,
          drop_path=self.drop_path_rate * i / max(self.depth - 1, 1),
          deterministic=not train,
          layer_norm_eps=self.layer_norm_eps,
          activation=self.activation,
          layer_scale=self.layer_scale,
          dtype=self.dtype,
          kernels=kernels,
          name=f'blocks_{i}',
      )(x)
    norm = functools.partial(LayerNorm, self.layer_norm_eps, dtype=self.dtype, kernels=kernels)
    if not self.fc_norm:
      x = norm(name='norm')(x)
    prefix = int(self.class_token) + self.num_registers
    pooled = x[:, 0] if self.global_pool == 'token' else x[:, prefix:].mean(axis=1)
    if self.fc_norm:
      pooled = norm(name='fc_norm')(pooled)
    # Mean over frames of each frame's features: a linear head then averages per-frame logits.
    features = einops.reduce(pooled.astype(jnp.float32), '(b t) d -> b d', 'mean', t=t)
    if not self.num_classes:
      return features
    features = nn.Dropout(self.head_dropout, deterministic=not train)(features)
    return nn.Dense(self.num_classes, name='head')(features)

  def _embed_tokens(self, patches: jax.Array, n: int) -> jax.Array:
    """Patch tokens `(bt, n, d)` -> `(bt, P + n, d)`: class and register tokens first, position
    embedding added as timm does (over the prefix too unless `class_pos_embed` is False)."""
    bt, _, d = patches.shape
    prefix = []
    if self.class_token:
      prefix.append(self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, d)))
    if self.num_registers:
      prefix.append(
          self.param('reg_token', nn.initializers.normal(1e-6), (1, self.num_registers, d))
      )
    prefix = [jnp.broadcast_to(p, (bt, *p.shape[1:])).astype(patches.dtype) for p in prefix]
    covered = sum(p.shape[1] for p in prefix) if self.class_pos_embed else 0
    pos_embed = self.param('pos_embed', nn.initializers.normal(0.02), (1, covered + n, d))
    pos_embed = pos_embed.astype(patches.dtype)
    if self.class_pos_embed:
      return jnp.concatenate([*prefix, patches], axis=1) + pos_embed
    return jnp.concatenate([*prefix, patches + pos_embed], axis=1)

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'activation={self.activation!r}: expected one of {ACTIVATIONS}.')
    if self.global_pool not in POOLS:
      raise ValueError(f'global_pool={self.global_pool!r}: expected one of {POOLS}.')
    if self.global_pool == 'token' and not self.class_token:
      raise ValueError("global_pool='token' needs a class token: set class_token or use 'avg'.")
    super().__post_init__()


def build(model_config: Mapping[str, Any]) -> ViT:
  """Builds the ViT from a model config (dict or ConfigDict).

  Keys: `variant` ('B/16'...) or the explicit architecture (width, depth, num_heads, mlp_dim,
  patch_size), which override the variant; `num_classes`, `image_size`, `adapter` (dict),
  `drop_path_rate`, `head_dropout`, `remat`, `dtype` ('auto'|'float32'|'bfloat16'; 'auto' is
  resolved here for the running backend, `kernels.resolve_dtype`), `kernels`
  ('auto'|'reference'|'cpu'), and the family options of `ViT` (`layer_norm_eps`, `activation`,
  `pre_norm`, `layer_scale`, `num_registers`, `class_token`, `class_pos_embed`, `global_pool`,
  `fc_norm`). A key set to None takes the `ViT` default.
  """
  cfg = dict(model_config.to_dict() if hasattr(model_config, 'to_dict') else model_config)
  cfg = {k: v for k, v in cfg.items() if v is not None}
  arch = decode_variant(cfg.pop('variant')) if cfg.get('variant') else {}
  cfg.pop('variant', None)
  arch.update(cfg)
  arch['adapter'] = adapters_lib.AdapterConfig.from_dict(arch.get('adapter'))
  arch['dtype'] = jnp.dtype(kernels_lib.resolve_dtype(arch.get('dtype', 'float32')))
  known = set(ViT.__dataclass_fields__) - {'parent', 'name'}
  unknown = set(arch) - known
  if unknown:
    raise ValueError(f'Unknown model config keys {sorted(unknown)}; known: {sorted(known)}')
  return ViT(**arch)
