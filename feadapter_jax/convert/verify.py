"""`--verify`: rebuild the PyTorch model from the checkpoint and compare outputs with the Flax one.

The PyTorch side is an independent implementation of each layout (`REFERENCES`), built from the
architecture the conversion inferred at the target image size:
- timm, torchvision and Hugging Face checkpoints load strictly into their own library's model;
- OpenAI / open_clip CLIP state dicts go through timm's own OpenAI-CLIP filter
  (`checkpoint_filter_fn`) into a timm CLIP-style VisionTransformer;
- Flax `.npz` files go through timm's npz loader (`_load_weights`).
A resampled position embedding is resampled in the checkpoint first, with torch's own
`F.interpolate` (as timm does), independently of `posemb.py`. A dropped head is put back for the
comparison, so the logits are the checkpoint's; without a head the pooled features are compared.
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any, Callable, Mapping

import numpy as np

from feadapter_jax import models
from feadapter_jax.convert import converter
from feadapter_jax.convert import keymaps

# (loaded PyTorch model, its forward on NCHW images returning logits or pooled features).
Reference = tuple[Any, Callable[[Any], Any]]


def _layer_norm(eps: float) -> Callable[..., Any]:
  import torch  # pylint: disable=g-import-not-at-top  (optional dependency)

  return functools.partial(torch.nn.LayerNorm, eps=eps)


def _tensors(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top

  return {n: torch.from_numpy(np.ascontiguousarray(v)) for n, v in state.items()}


def _rule_state(
    state: Mapping[str, np.ndarray], source: keymaps.Source, depth: int
) -> dict[str, np.ndarray]:
  """The arrays the conversion read, under the layout's plain names."""
  names = {n for r in source.rules(depth) for n in r.sources}
  return {n: v for n, v in source.normalise(state).items() if n in names}


def _load(model: Any, state: Mapping[str, np.ndarray], source: keymaps.Source, depth: int) -> None:
  """Loads the converted arrays into a library model, under the names the installed library
  gives its modules (transformers 5 renames on load); the model may have more parameters only
  where the layout drops them (a mask token)."""
  model_names = model.state_dict()
  layout = keymaps.detect(model_names, reference=source.reference)
  plain = layout.plain_names(model_names)
  full_name = {v: k for k, v in plain.items()}
  renamed = keymaps.rename(_rule_state(state, source, depth), source, layout, depth)
  missing, unexpected = model.load_state_dict(
      _tensors({full_name.get(n, n): v for n, v in renamed.items()}), strict=False
  )
  extra = [n for n in missing if not layout.dropped(plain[n])]
  if extra or unexpected:
    raise ValueError(f'{source.description} reference: missing {extra}, unexpected {unexpected}.')


def _timm_model(cfg: Mapping[str, Any]) -> Any:
  from timm.models import vision_transformer  # pylint: disable=g-import-not-at-top

  return vision_transformer.VisionTransformer(
      img_size=cfg['image_size'],
      patch_size=cfg['patch_size'],
      embed_dim=cfg['width'],
      depth=cfg['depth'],
      num_heads=cfg['num_heads'],
      mlp_ratio=cfg['mlp_dim'] / cfg['width'],
      num_classes=cfg['num_classes'],
      norm_layer=_layer_norm(cfg['layer_norm_eps']),
      act_layer='quick_gelu' if cfg['activation'] == 'quick_gelu' else None,
      pre_norm=cfg['pre_norm'],
      init_values=cfg['layer_scale'] or None,
      reg_tokens=cfg['num_registers'],
      class_token=cfg['class_token'],
      no_embed_class=not cfg['class_pos_embed'],
      global_pool=cfg['global_pool'],
      fc_norm=cfg['fc_norm'],
  )


def _timm(
    state: Mapping[str, np.ndarray], source: keymaps.Source, cfg: Mapping[str, Any]
) -> Reference:
  model = _timm_model(cfg)
  _load(model, state, source, cfg['depth'])
  return model, model


def _openai_clip(
    state: Mapping[str, np.ndarray], source: keymaps.Source, cfg: Mapping[str, Any]
) -> Reference:
  from timm.models import vision_transformer  # pylint: disable=g-import-not-at-top

  model = _timm_model(cfg)
  filtered = vision_transformer.checkpoint_filter_fn(_tensors(state), model)
  # timm turns the projection into a bias-free head; the conversion drops it.
  for name in ('head.weight', 'head.bias'):
    filtered.pop(name, None)
  model.load_state_dict(filtered, strict=True)
  return model, model


def _flax_npz(
    state: Mapping[str, np.ndarray], source: keymaps.Source, cfg: Mapping[str, Any]
) -> Reference:
  from timm.models import vision_transformer  # pylint: disable=g-import-not-at-top

  del source  # timm's loader reads every Flax layout itself.
  model = _timm_model(cfg)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'checkpoint.npz')
    np.savez(path, **state)
    vision_transformer._load_weights(model, path)  # pylint: disable=protected-access
  return model, model


def _torchvision(
    state: Mapping[str, np.ndarray], source: keymaps.Source, cfg: Mapping[str, Any]
) -> Reference:
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
  _load(model, state, source, cfg['depth'])
  return model, model


def _hf_vit(
    state: Mapping[str, np.ndarray], source: keymaps.Source, cfg: Mapping[str, Any]
) -> Reference:
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
    forward = lambda x: model(pixel_values=x).logits
  else:
    model = transformers.ViTModel(config, add_pooling_layer=False)
    forward = lambda x: model(pixel_values=x).last_hidden_state[:, 0]
  _load(model, state, source, cfg['depth'])
  return model, forward


def _hf_clip(
    state: Mapping[str, np.ndarray], source: keymaps.Source, cfg: Mapping[str, Any]
) -> Reference:
  import transformers  # pylint: disable=g-import-not-at-top

  model = transformers.CLIPVisionModel(
      transformers.CLIPVisionConfig(
          hidden_size=cfg['width'],
          intermediate_size=cfg['mlp_dim'],
          num_hidden_layers=cfg['depth'],
          num_attention_heads=cfg['num_heads'],
          image_size=cfg['image_size'],
          patch_size=cfg['patch_size'],
          hidden_act=cfg['activation'],
          layer_norm_eps=cfg['layer_norm_eps'],
      )
  )
  _load(model, state, source, cfg['depth'])
  return model, lambda x: model(pixel_values=x).pooler_output


def _hf_dinov2(
    state: Mapping[str, np.ndarray], source: keymaps.Source, cfg: Mapping[str, Any]
) -> Reference:
  import transformers  # pylint: disable=g-import-not-at-top

  ratio, rest = divmod(cfg['mlp_dim'], cfg['width'])
  if rest:  # transformers 5 takes an integer mlp_ratio.
    raise ValueError(
        f"Dinov2Config cannot express mlp_dim {cfg['mlp_dim']} for width {cfg['width']}."
    )
  args = dict(
      hidden_size=cfg['width'],
      num_hidden_layers=cfg['depth'],
      num_attention_heads=cfg['num_heads'],
      mlp_ratio=ratio,
      hidden_act=cfg['activation'],
      layer_norm_eps=cfg['layer_norm_eps'],
      image_size=cfg['image_size'],
      patch_size=cfg['patch_size'],
      layerscale_value=cfg['layer_scale'],
  )
  if cfg['num_registers']:
    config = transformers.Dinov2WithRegistersConfig(
        **args, num_register_tokens=cfg['num_registers']
    )
    model = transformers.Dinov2WithRegistersModel(config)
  else:
    model = transformers.Dinov2Model(transformers.Dinov2Config(**args))
  _load(model, state, source, cfg['depth'])
  return model, lambda x: model(pixel_values=x).pooler_output


REFERENCES = {
    'timm': _timm,
    'torchvision': _torchvision,
    'hf_vit': _hf_vit,
    'hf_clip': _hf_clip,
    'hf_dinov2': _hf_dinov2,
    'openai_clip': _openai_clip,
    'flax_npz': _flax_npz,
}


def _resampled(
    state: Mapping[str, np.ndarray], source: keymaps.Source, old: int, new: int
) -> dict[str, np.ndarray]:
  """`state` with its position embedding (any prefix entries, 2-D or 3-D) on a `new` grid."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  if old == new:
    return dict(state)
  pos_rule = next(r for r in source.embed if r.target == 'pos_embed')
  name = source.prefix(state) + pos_rule.sources[0]
  pos = torch.from_numpy(state[name]).reshape(1, -1, state[name].shape[-1])
  prefix = pos.shape[1] - old * old
  grid = pos[:, prefix:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
  grid = F.interpolate(grid, size=(new, new), mode='bicubic', align_corners=False, antialias=True)
  pos = torch.cat([pos[:, :prefix], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)], 1)
  return {**state, name: (pos[0] if state[name].ndim == 2 else pos).numpy()}


def max_logit_difference(
    state_dict: Mapping[str, Any], conversion: converter.Conversion, batch: int = 2, seed: int = 0
) -> tuple[float, str]:
  """Max |PyTorch - Flax| over the outputs for `batch` random images, and what was compared.

  Args:
    state_dict: the checkpoint as read, before the conversion's renames.
    conversion: its conversion.
    batch, seed: the random images.

  Raises:
    ImportError: torch or the reference library is not installed.
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
  state, _ = converter.prepare(state_dict, conversion.rename, conversion.ignore)
  state = _resampled(state, source, conversion.source_grid, cfg['image_size'] // cfg['patch_size'])
  model, forward = REFERENCES[source.reference](state, source, cfg)
  model.eval()

  size = cfg['image_size']
  images = np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    expected = forward(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  got = np.asarray(models.build(cfg).apply({'params': params}, images))
  what = (
      f'{source.description} vs Flax, {batch} random {size}x{size} images, '
      f'{"logits" if cfg["num_classes"] else "pooled features"}'
  )
  return float(np.abs(got - expected).max()), what
