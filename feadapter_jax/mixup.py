"""Mixup and CutMix of a batch of clips on the device, as timm's `Mixup` in 'batch' mode.

One mixing coefficient per batch: each clip is mixed with the clip at the mirrored position of
the batch (`x[::-1]`), and the targets (label-smoothed one-hots) alike. CutMix pastes one box of
the partner clip, the same box in every frame (a box that moved between frames would be motion
the clips do not hold); the coefficient is then the area kept (timm's `correct_lam`). With both
alphas set, CutMix is chosen with probability `switch_prob`; with probability `1 - prob` the
batch passes unmixed.

`config.mixup` (configs/common.py): mixup_alpha, cutmix_alpha (0: off), prob, switch_prob. The
random draws come from the step's key, so a resumed run mixes exactly as the uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp


def enabled(config: Mapping[str, Any]) -> bool:
  return bool(config['mixup_alpha'] or config['cutmix_alpha']) and config['prob'] > 0


def check_config(config: Mapping[str, Any]) -> None:
  """Raises ValueError naming the `config.mixup` field out of range."""
  for name in ('mixup_alpha', 'cutmix_alpha'):
    if config[name] < 0:
      raise ValueError(f'config.mixup.{name}={config[name]} must be >= 0 (0: off).')
  for name in ('prob', 'switch_prob'):
    if not 0.0 <= config[name] <= 1.0:
      raise ValueError(f'config.mixup.{name}={config[name]} must be in [0, 1].')


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, ...]:
  """(y0, y1, x0, x1) of a box of about (1 - lam) of the frame, centred at a uniform point and
  clipped to the frame (timm's `rand_bbox`)."""
  cut = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (height * cut).astype(jnp.int32), (width * cut).astype(jnp.int32)
  y_key, x_key = jax.random.split(rng)
  cy = jax.random.randint(y_key, (), 0, height)
  cx = jax.random.randint(x_key, (), 0, width)
  y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  return y0, y1, x0, x1


def mix(
    rng: jax.Array, video: jax.Array, targets: jax.Array, config: Mapping[str, Any]
) -> tuple[jax.Array, jax.Array]:
  """Mixes a batch: video `(b, t, H, W, C)` (normalised floats), targets `(b, classes)`.

  Returns the mixed video (its dtype) and targets (float32, rows still summing to 1).
  """
  apply_key, switch_key, mix_key, cut_key, box_key = jax.random.split(rng, 5)
  use_cutmix = config['cutmix_alpha'] > 0 and (
      config['mixup_alpha'] == 0 or jax.random.uniform(switch_key) < config['switch_prob']
  )
  alpha_mix = config['mixup_alpha'] or 1.0  # an unused draw still needs a valid parameter
  alpha_cut = config['cutmix_alpha'] or 1.0
  lam_mix = jax.random.beta(mix_key, alpha_mix, alpha_mix)
  lam_cut = jax.random.beta(cut_key, alpha_cut, alpha_cut)

  height, width = video.shape[2], video.shape[3]
  y0, y1, x0, x1 = cutmix_box(box_key, lam_cut, height, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  lam_box = 1.0 - ((y1 - y0) * (x1 - x0)) / (height * width)

  applied = jax.random.uniform(apply_key) < config['prob']
  lam = jnp.where(applied, jnp.where(use_cutmix, lam_box, lam_mix), 1.0)
  partner = video[::-1]
  mixed = lam.astype(video.dtype) * video + (1.0 - lam).astype(video.dtype) * partner
  pasted = jnp.where(inside[None, None, :, :, None], partner, video)
  video = jnp.where(applied & use_cutmix, pasted, jnp.where(applied, mixed, video))
  targets = targets.astype(jnp.float32)
  return video, lam * targets + (1.0 - lam) * targets[::-1]
