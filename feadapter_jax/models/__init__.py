"""Models: the ViT image/video classifier and its adapters."""
from feadapter_jax.models.adapters import AdapterConfig
from feadapter_jax.models.vit import ViT, build, decode_variant

__all__ = ['AdapterConfig', 'ViT', 'build', 'decode_variant']
