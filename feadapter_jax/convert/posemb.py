"""Position-embedding resampling that reproduces timm's `resample_abs_pos_embed` in numpy.

timm resizes the patch-grid part of a ViT position embedding with
`torch.nn.functional.interpolate(mode='bicubic', align_corners=False, antialias=True)` and keeps
the entries of the prefix tokens it covers (class and register tokens; none for timm's
`no_embed_class`, DINOv2 with registers and big_vision). PyTorch has two different bicubic
filters, so both are written here as separable weight matrices:
- `antialias=False`: Keys' cubic convolution with a=-0.75, 4 taps at `(i + 0.5) * scale - 0.5`,
  edge pixels replicated (`upsample_bicubic2d`). `jax.image.resize` uses a=-0.5 and differs.
- `antialias=True` (timm's default): the a=-0.5 cubic stretched by the scale when shrinking,
  taps centred at `(i + 0.5) * scale`, truncated at the edges and renormalised to sum to one
  (`_upsample_bicubic2d_aa`, PIL's filter). It differs from the above even when enlarging.
"""

from __future__ import annotations

import math

import numpy as np


def _keys_cubic(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel of |x| (zero beyond 2)."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of torch's bicubic, align_corners=False, antialias=False."""
  scale = in_size / out_size
  src = (np.arange(out_size) + 0.5) * scale - 0.5
  left = np.floor(src).astype(int)
  taps = left[:, None] + np.arange(-1, 3)
  weights = _keys_cubic(src[:, None] - taps, a=-0.75)
  matrix = np.zeros((out_size, in_size))
  # Taps outside the input read the edge pixel (torch clamps the index).
  np.add.at(
      matrix,
      (np.repeat(np.arange(out_size), 4), np.clip(taps, 0, in_size - 1).ravel()),
      weights.ravel(),
  )
  return matrix


def _antialiased_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of torch's bicubic with antialias=True (align_corners=False)."""
  scale = in_size / out_size
  stretch = max(scale, 1.0)  # The filter widens only when shrinking.
  support = 2.0 * stretch
  matrix = np.zeros((out_size, in_size))
  for i in range(out_size):
    center = scale * (i + 0.5)
    # int() truncates toward zero as the C++ does; the max() makes the sign irrelevant.
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    taps = np.arange(lo, hi)
    weights = _keys_cubic((taps - center + 0.5) / stretch, a=-0.5)
    total = weights.sum()
    matrix[i, lo:hi] = weights / total if total else weights
  return matrix


def resize_grid(grid: np.ndarray, new_hw: tuple[int, int], antialias: bool = True) -> np.ndarray:
  """Bicubic resize of `(h, w, d)` to `(*new_hw, d)` exactly as torch's `F.interpolate`."""
  matrix = _antialiased_bicubic_matrix if antialias else _bicubic_matrix
  rows = matrix(grid.shape[0], new_hw[0])
  cols = matrix(grid.shape[1], new_hw[1])
  out = np.einsum('Hh,hwd,Ww->HWd', rows, grid.astype(np.float64), cols)
  return out.astype(grid.dtype)


def resample_pos_embed(
    pos_embed: np.ndarray,
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    antialias: bool = True,
) -> np.ndarray:
  """`(1, prefix + h*w, d)` -> `(1, prefix + H*W, d)` for a square source grid, as timm does.

  Args:
    pos_embed: the source position embedding, prefix (class) tokens first.
    new_grid: the target patch grid (H, W).
    num_prefix_tokens: leading entries copied unchanged (class / register tokens), 0 when the
      embedding covers the patches only.
    antialias: torch's antialiased bicubic (timm's default) or the plain one.

  Returns:
    The resampled embedding, same dtype.
  """
  prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
  side = math.isqrt(patches.shape[1])
  if side * side != patches.shape[1]:
    raise ValueError(
        f'pos_embed has {patches.shape[1]} patch tokens after {num_prefix_tokens} '
        'prefix token(s): not a square grid.'
    )
  if (side, side) == tuple(new_grid):
    return pos_embed
  grid = resize_grid(patches.reshape(side, side, -1), new_grid, antialias)
  return np.concatenate([prefix, grid.reshape(1, new_grid[0] * new_grid[1], -1)], axis=1)
