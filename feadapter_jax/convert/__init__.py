"""PyTorch ViT checkpoints (timm, torchvision, Hugging Face) -> Flax ViT backbone directories.

    python -m feadapter_jax.convert --checkpoint vit.safetensors --out backbones/vit_s16 \
        --image_size 224 --num_classes 7 --verify

writes `backbones/vit_s16/{params/, model_config.json}`; name it in a training config as
`config.init.checkpoint` and copy the architecture from its model_config.json. In Python:

    params, model_config = convert.convert_state_dict(torch_model.state_dict(), num_classes=7)
    convert.save(directory, params, model_config)
    params, model_config = convert.load(directory)

Modules: `readers` (files -> numpy, safely), `keymaps` (name maps per source), `posemb`
(timm-equal position-embedding resampling), `converter` (mapping, inference, validation),
`store` (the directory format), `verify` (PyTorch-vs-Flax logits).
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
