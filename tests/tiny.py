"""Tiny model configs shared by the tests (a few layers, small images, few frames), and tiny
backbone directories as the converter writes them."""

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from feadapter_jax import checkpoint
from feadapter_jax import models

TINY = dict(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, image_size=32, num_classes=5)

ADAPTERS = {
    'fe': dict(kind='fe', width=8),
    'fe_multibranch': dict(kind='fe', width=8, conv='multibranch'),
    'fe_per_axis': dict(kind='fe', width=4, dynamic_axes=('t', 'h', 'w'), max_dilation=2.0),
    'fe_both_placements': dict(kind='fe', width=8, placement=('attn', 'mlp')),
    'st': dict(kind='st', width=8, conv='fixed', kernel_size=(3, 1, 1), zero_init='conv'),
    'aim': dict(kind='aim'),
}


def tiny(adapter: dict | None = None, **overrides: Any) -> dict:
  return {**TINY, 'adapter': adapter or dict(kind='none'), **overrides}


def write_backbone(
    directory: str,
    mean: Sequence[float] | None = (0.5, 0.5, 0.5),
    std: Sequence[float] | None = (0.5, 0.5, 0.5),
    seed: int = 0,
    **overrides: Any,
) -> dict[str, Any]:
  """Writes a tiny image ViT (`TINY` with `overrides`) as a backbone directory: its random
  parameters, and a model_config.json with its architecture and normalisation (None: unknown).
  Returns that model_config."""
  config = {**TINY, **overrides}
  model = models.build(config)
  image = jnp.zeros((1, config['image_size'], config['image_size'], 3))
  params = model.init(jax.random.key(seed), image)['params']
  stored = {
      **config,
      'source': 'timm',
      'checkpoint': 'tests/tiny.py',
      'mean': None if mean is None else list(mean),
      'std': None if std is None else list(std),
  }
  checkpoint.save_params(directory, jax.device_get(params), stored)
  return stored
