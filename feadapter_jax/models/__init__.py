"""Models: the ViT image/video classifier (`vit.py`), its adapters (`adapters.py`) and the two
forms, reference and CPU, of their costly pieces (`kernels.py`)."""

from feadapter_jax.methods import AdapterConfig
from feadapter_jax.models.vit import ViT, build, decode_variant

__all__ = ['AdapterConfig', 'ViT', 'build', 'decode_variant']
