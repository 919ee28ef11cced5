"""Tiny model configs shared by the tests (a few layers, small images, few frames)."""

from typing import Any

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
