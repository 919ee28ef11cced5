"""Vision Transformer in timm's `VisionTransformer` layout, for images and for video clips.

An image batch `(b, H, W, 3)` is a clip of one frame. A clip batch `(b, t, H, W, 3)` is folded to
`((b t), H, W, 3)` for the image model; adapters (`adapters.py`) unfold time inside the blocks;
the head classifies the temporal mean of the final class tokens. With adapters off (or
zero-initialised) the logits equal the image model's logits averaged over frames.

Parameter names mirror timm, so PyTorch checkpoints map one to one (`feadapter_jax/convert/`):
  patch_embed/{kernel (p, p, 3, D), bias}   <- patch_embed.proj
  cls_token (1, 1, D), pos_embed (1, 1 + N, D)
  blocks_{i}/norm1, attn/qkv (D, 3D), attn/proj, norm2, mlp/fc1, mlp/fc2, adapter_*/...
  norm, head (D, K)

`kernels` ('auto' | 'reference' | 'cpu', config key `model.kernels`) picks how attention, the
norms, GELU and the adapters' convolutions are computed (`kernels.py`); parameters and values are
the same under every choice.
"""

from __future__ import annotations

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


class Mlp(nn.Module):
  """fc2(gelu(fc1(x))), GELU exact. `(..., d)` -> same."""

  mlp_dim: int
  dtype: Any = jnp.float32
  kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, name='fc1')(x)
    y = kernels_lib.gelu(y, self.kernels)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name='fc2')(y)


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
  dtype: Any = jnp.float32
  kernels: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.adapter
    kernels = self.kernels
    aim = cfg.kind == 'aim' and cfg.in_block(self.index)
    token_adapters = adapters_lib.placements(cfg, self.index)
    # Stochastic depth: drop a whole sample's residual branch.
    drop = nn.Dropout(self.drop_path, broadcast_dims=(1, 2), deterministic=self.deterministic)
    norm1 = LayerNorm(self.layer_norm_eps, dtype=self.dtype, kernels=kernels, name='norm1')
    norm2 = LayerNorm(self.layer_norm_eps, dtype=self.dtype, kernels=kernels, name='norm2')
    attn = Attention(self.num_heads, dtype=self.dtype, kernels=kernels, name='attn')

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
    x = x + drop(y)
    if 'mlp' in token_adapters:
      x = token_adapter('mlp')(x)
    y = norm2(x)
    out = Mlp(self.mlp_dim, dtype=self.dtype, kernels=kernels, name='mlp')(y)
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
    remat: rematerialise each block in the backward pass (memory for compute).
    dtype: compute dtype (parameters stay float32).
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
    cls_token = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, self.width))
    pos_embed = self.param(
        'pos_embed', nn.initializers.normal(0.02), (1, 1 + grid[0] * grid[1], self.width)
    )
    x = jnp.concatenate(
        [jnp.broadcast_to(cls_token, (b * t, 1, self.width)).astype(x.dtype), x], axis=1
    )
    x = x + pos_embed.astype(x.dtype)
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
          dtype=self.dtype,
          kernels=kernels,
          name=f'blocks_{i}',
      )(x)
    x = LayerNorm(self.layer_norm_eps, dtype=self.dtype, kernels=kernels, name='norm')(x)
    # Mean over frames of the class token: a linear head then averages per-frame logits.
    features = einops.reduce(x[:, 0].astype(jnp.float32), '(b t) d -> b d', 'mean', t=t)
    if not self.num_classes:
      return features
    features = nn.Dropout(self.head_dropout, deterministic=not train)(features)
    return nn.Dense(self.num_classes, name='head')(features)


def build(model_config: Mapping[str, Any]) -> ViT:
  """Builds the ViT from a model config (dict or ConfigDict).

  Keys: `variant` ('B/16'...) or the explicit architecture (width, depth, num_heads, mlp_dim,
  patch_size), which override the variant; `num_classes`, `image_size`, `adapter` (dict),
  `drop_path_rate`, `head_dropout`, `layer_norm_eps`, `remat`, `dtype` ('float32'|'bfloat16'),
  `kernels` ('auto'|'reference'|'cpu').
  """
  cfg = dict(model_config.to_dict() if hasattr(model_config, 'to_dict') else model_config)
  arch = decode_variant(cfg.pop('variant')) if cfg.get('variant') else {}
  cfg.pop('variant', None)
  arch.update(cfg)
  arch['adapter'] = adapters_lib.AdapterConfig.from_dict(arch.get('adapter'))
  arch['dtype'] = jnp.dtype(arch.get('dtype', 'float32'))
  known = set(ViT.__dataclass_fields__) - {'parent', 'name'}
  unknown = set(arch) - known
  if unknown:
    raise ValueError(f'Unknown model config keys {sorted(unknown)}; known: {sorted(known)}')
  return ViT(**arch)
