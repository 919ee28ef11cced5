"""ViT checkpoints -> Flax ViT backbone directories.

Sources, recognised from the names: timm VisionTransformer (CLIP-style pre-norm, DINOv2
LayerScale and registers, MAE/BEiT average pooling with fc_norm, DeiT-III no_embed_class),
torchvision, Hugging Face (ViT, CLIP vision tower, Dinov2, Dinov2WithRegisters), OpenAI /
open_clip / FaRL CLIP state dicts, and Flax .npz files (AugReg, big_vision).

    python -m feadapter_jax.convert --checkpoint vit.safetensors --out backbones/vit_s16 \
        --image_size 224 --num_classes 7 --verify

writes `backbones/vit_s16/{params/, model_config.json}`; name it in a training config as
`config.init.checkpoint`; model_config.json records the whole architecture. In Python:

    params, model_config = convert.convert_state_dict(torch_model.state_dict(), num_classes=7)
    convert.save(directory, params, model_config)
    params, model_config = convert.load(directory)

Modules: `readers` (files -> numpy, safely), `keymaps` (name maps per source layout), `posemb`
(timm-equal position-embedding resampling), `converter` (mapping, inference, validation),
`store` (the directory format), `verify` (outputs against an independent PyTorch model).
"""

from feadapter_jax.convert.converter import Conversion, convert, convert_state_dict
from feadapter_jax.convert.posemb import resample_pos_embed
from feadapter_jax.convert.readers import read_checkpoint
from feadapter_jax.convert.store import load, read_metadata, save

__all__ = [
    'Conversion',
    'convert',
    'convert_state_dict',
    'load',
    'read_checkpoint',
    'read_metadata',
    'resample_pos_embed',
    'save',
]
