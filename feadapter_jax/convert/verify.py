"""`--verify`: rebuild the PyTorch model from the state dict and compare logits with the Flax one.

The PyTorch side is built by its own library (timm, torchvision, transformers) from the
architecture the conversion inferred, loads the checkpoint strictly, and runs at the target image
size; a resampled position embedding is resampled on that side with torch's own
`F.interpolate` (as timm does), independently of `posemb.py`. A dropped head is put back for the
comparison, so the logits are the checkpoint's.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping

import numpy as np

from feadapter_jax import models
from feadapter_jax.convert import converter
from feadapter_jax.convert import keymaps
from feadapter_jax.convert import readers


def _layer_norm(eps: float) -> Callable[..., Any]:
  import torch  # pylint: disable=g-import-not-at-top  (optional dependency)

  return functools.partial(torch.nn.LayerNorm, eps=eps)


def _timm(cfg: Mapping[str, Any]) -> tuple[Any, Callable[..., Any]]:
  from timm.models import vision_transformer  # pylint: disable=g-import-not-at-top

  model = vision_transformer.VisionTransformer(
      img_size=cfg['image_size'],
      patch_size=cfg['patch_size'],
      embed_dim=cfg['width'],
      depth=cfg['depth'],
      num_heads=cfg['num_heads'],
      mlp_ratio=cfg['mlp_dim'] / cfg['width'],
      num_classes=cfg['num_classes'],
      norm_layer=_layer_norm(cfg['layer_norm_eps']),
  )
  return model, model


def _torchvision(cfg: Mapping[str, Any]) -> tuple[Any, Callable[..., Any]]:
  import torch  # pylint: disable=g-import-not-at-top
  from torchvision.models import vision_transformer  # pylint: disable=g-import-not-at-top

  model = vision_transformer.VisionTransformer(
      image_size=cfg['image_size'],
      patch_size=cfg['patch_size'],
      num_layers=cfg['depth'],
      num_heads=cfg['num_heads'],
      hidden_dim=cfg['width'],
      mlp_dim=cfg['mlp_dim'],
      num_classes=max(cfg['num_classes'], 1),
      norm_layer=_layer_norm(cfg['layer_norm_eps']),
  )
  if not cfg['num_classes']:  # Its forward then returns the normalised class token.
    model.heads = torch.nn.Identity()
  return model, model


def _hf(cfg: Mapping[str, Any]) -> tuple[Any, Callable[..., Any]]:
  import transformers  # pylint: disable=g-import-not-at-top

  config = transformers.ViTConfig(
      hidden_size=cfg['width'],
      num_hidden_layers=cfg['depth'],
      num_attention_heads=cfg['num_heads'],
      intermediate_size=cfg['mlp_dim'],
      image_size=cfg['image_size'],
      patch_size=cfg['patch_size'],
      layer_norm_eps=cfg['layer_norm_eps'],
      num_labels=max(cfg['num_classes'], 1),
  )
  if cfg['num_classes']:
    model = transformers.ViTForImageClassification(config)
    return model, lambda x: model(pixel_values=x).logits
  model = transformers.ViTModel(config, add_pooling_layer=False)
  return model, lambda x: model(pixel_values=x).last_hidden_state[:, 0]


BUILDERS = {'timm': _timm, 'torchvision': _torchvision, 'hf': _hf}  # By library.


def _resample_torch(pos_embed: Any, side: int) -> Any:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  old = int(round((pos_embed.shape[1] - 1) ** 0.5))
  if old == side:
    return pos_embed
  grid = pos_embed[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
  grid = F.interpolate(grid, size=(side, side), mode='bicubic', align_corners=False, antialias=True)
  return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, side * side, -1)], 1)


def max_logit_difference(
    state_dict: Mapping[str, Any], conversion: converter.Conversion, batch: int = 2, seed: int = 0
) -> tuple[float, str]:
  """Max |PyTorch - Flax| over the outputs for `batch` random images, and what was compared.

  Raises:
    ImportError: torch or the source library is not installed.
  """
  import torch  # pylint: disable=g-import-not-at-top

  source = keymaps.SOURCES[conversion.layout]
  params = dict(conversion.params)
  cfg = dict(conversion.model_config)
  if conversion.source_head is not None:
    params['head'] = conversion.source_head
    cfg['num_classes'] = conversion.source_head['bias'].shape[0]
  elif 'head' not in params:
    cfg['num_classes'] = 0
  model, forward = BUILDERS[source.library](cfg)

  state = keymaps.strip(readers.unwrap(state_dict), source)
  state = {
      n: torch.from_numpy(v)
      for n, v in state.items()
      if not any(re.fullmatch(p, n) for p in source.ignore)
  }
  pos_name = next(r.sources[0] for r in source.embed if r.target == 'pos_embed')
  state[pos_name] = _resample_torch(state[pos_name], cfg['image_size'] // cfg['patch_size'])
  # The installed library may name modules unlike the file (transformers 5 renames on load).
  names = model.state_dict().keys()
  layout = keymaps.detect(names, source.library)
  full_name = {keymaps.strip({n: None}, layout).popitem()[0]: n for n in names}
  state = keymaps.rename(state, source, layout, cfg['depth'])
  model.load_state_dict({full_name.get(n, n): v for n, v in state.items()}, strict=True)
  model.eval()

  size = cfg['image_size']
  images = np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    expected = forward(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(models.build(cfg).apply({'params': params}, images))
  what = (
      f'{source.description} vs Flax, {batch} random {size}x{size} images, '
      f'{"logits" if cfg["num_classes"] else "class-token features"}'
  )
  return float(np.abs(got - expected).max()), what
