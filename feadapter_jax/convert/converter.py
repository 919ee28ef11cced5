"""State dict -> Flax ViT parameters and the model config they imply, checked against the model.

The architecture is read from shapes (width, depth, mlp_dim, patch size, grid, classes); only the
number of heads is not in the weights, so it comes from the caller, the checkpoint's hub config,
or the standard width -> heads table. The converted tree is validated against the shape-only
parameters (`builder.param_shapes`) of the implied config, so a wrong guess fails here, not in
training.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

from flax import traverse_util
import numpy as np

from feadapter_jax import models
from feadapter_jax.convert import keymaps
from feadapter_jax.convert import posemb
from feadapter_jax.convert import readers
from feadapter_jax.models import builder

# timm / torchvision / HF presets: Ti, S, B, L, H.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# How many names an error lists before '...'.
SHOWN = 5


@dataclasses.dataclass
class Conversion:
  """A converted checkpoint.

  Attributes:
    params: the Flax parameter tree (numpy float32), without a head when it was dropped.
    model_config: the `models.build` config the params fit.
    metadata: source library and input normalisation (None when unknown), for model_config.json.
    layout: the name layout read, a key of `keymaps.SOURCES`.
    notes: the human-readable report, one line per topic.
    source_head: the checkpoint's head `{'kernel', 'bias'}` when it was dropped (for --verify).
  """

  params: dict[str, Any]
  model_config: dict[str, Any]
  metadata: dict[str, Any]
  notes: list[str]
  layout: str
  source_head: dict[str, np.ndarray] | None = None

  def report(self) -> str:
    return '\n'.join(self.notes)


def _listing(names: Sequence[str]) -> str:
  more = f' ... ({len(names)} in all)' if len(names) > SHOWN else ''
  return ', '.join(repr(n) for n in names[:SHOWN]) + more


def _map(state: Mapping[str, np.ndarray], source: keymaps.Source) -> tuple[dict[str, Any], int]:
  """Flat `{flax path: array}` through the source's rules, and the depth."""
  depth = source.block_indices(state)[-1] + 1  # A gap in the indices shows as missing keys.
  rules = source.rules(depth)
  head_names = {n for r in source.head for n in r.sources}
  if not head_names & set(state):
    rules = rules[: -len(source.head)]
  needed = [n for r in rules for n in r.sources]
  missing = [n for n in needed if n not in state]
  cls_name = next(r.sources[0] for r in source.embed if r.target == 'cls_token')
  if cls_name in missing:
    raise ValueError(
        f'Unsupported architecture: no class token ({cls_name!r} is missing); the '
        'Flax ViT classifies the class token (timm class_token=False models and '
        'global-pool-only ViTs are not supported).'
    )
  if missing:
    raise ValueError(f'{source.description} checkpoint is missing keys: {_listing(missing)}.')
  unknown = sorted(set(state) - set(needed))
  unknown = [n for n in unknown if not any(re.fullmatch(p, n) for p in source.ignore)]
  if unknown:
    raise ValueError(f'Unknown keys for a {source.description} checkpoint: {_listing(unknown)}.')

  flat = {}
  for rule in rules:
    ndim, transform = keymaps.KINDS[rule.kind]
    parts = [state[n] for n in rule.sources]
    for name, part in zip(rule.sources, parts):
      if part.ndim != ndim:
        raise ValueError(
            f'Shape mismatch: {name} has shape {part.shape}, expected a {ndim}-D '
            f'array for {rule.target}.'
        )
    if len({p.shape for p in parts}) > 1:
      raise ValueError(
          f'Shape mismatch: {" / ".join(rule.sources)} have shapes '
          f'{[p.shape for p in parts]}; they should be equal.'
      )
    flat[rule.target] = np.asarray(transform(parts), np.float32)
  return flat, depth


def _grid_side(pos_embed: np.ndarray) -> int:
  tokens = pos_embed.shape[1]
  side = math.isqrt(tokens - 1)
  if side * side == tokens - 1:
    return side
  if math.isqrt(tokens) ** 2 == tokens:
    raise ValueError(
        f'Unsupported architecture: pos_embed has {tokens} tokens, a square grid '
        'without a class-token entry (timm no_embed_class=True).'
    )
  raise ValueError(
      f'Unsupported architecture: pos_embed has {tokens} tokens, not 1 class token '
      '+ a square patch grid (extra prefix tokens or a non-square grid).'
  )


def _num_heads(width: int, num_heads: int | None) -> tuple[int, str]:
  if num_heads is None:
    if width not in HEADS_BY_WIDTH:
      raise ValueError(
          f'Cannot infer num_heads for width {width} (not a standard ViT width '
          f'{sorted(HEADS_BY_WIDTH)}): pass --num_heads / num_heads=.'
      )
    num_heads, origin = HEADS_BY_WIDTH[width], f'standard for width {width}'
  else:
    origin = 'given'
  if width % num_heads:
    raise ValueError(f'num_heads={num_heads} does not divide the width {width}.')
  return num_heads, origin


def _validate(
    flat: Mapping[str, np.ndarray],
    model_config: Mapping[str, Any],
    source: keymaps.Source,
    depth: int,
) -> None:
  """Converted names and shapes must equal the implied model's, except a head left out."""
  model = models.build(model_config)
  size = model_config['image_size']
  expected = traverse_util.flatten_dict(builder.param_shapes(model, (1, size, size, 3)), sep='/')
  extra = sorted(set(flat) - set(expected))
  missing = sorted(n for n in set(expected) - set(flat) if not n.startswith('head/'))
  if extra or missing:
    raise ValueError(
        f'Converted parameters do not fit the model {dict(model_config)}: extra '
        f'{extra[:SHOWN]}, missing {missing[:SHOWN]}.'
    )
  for name, value in flat.items():
    if value.shape != expected[name].shape:
      raise ValueError(
          f'Shape mismatch: {source.source_name(name, depth)} gives {name} of shape '
          f'{value.shape}, the model expects {expected[name].shape} '
          f'(num_heads or the architecture read from the weights is wrong).'
      )


def convert(
    state_dict: Mapping[str, Any],
    source: str = 'auto',
    image_size: int | None = None,
    num_classes: int | None = None,
    num_heads: int | None = None,
    layer_norm_eps: float | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Conversion:
  """Converts a PyTorch ViT state dict to Flax parameters, its model config and a report.

  Args:
    state_dict: `{name: numpy array or torch tensor}`, possibly wrapped (`{'model': ...}`,
      `module.` prefixes).
    source: 'auto' (recognised from the names) or a library of `keymaps.LIBRARIES`: 'timm',
      'torchvision', 'hf' (hub files and transformers 5 `state_dict()` alike).
    image_size: target input size; the position embedding is resampled (bicubic, as timm)
      when it differs from the checkpoint's. None keeps the checkpoint's.
    num_classes: target classes. None keeps the checkpoint's head (0 when it has none); a
      different count drops the head, which training then initialises.
    num_heads: attention heads; None uses the standard width -> heads table.
    layer_norm_eps: None uses the source library's default (HF 1e-12, others 1e-6).
    mean, std: input normalisation to record; None uses the source library's, when known.

  Returns:
    The `Conversion`.

  Raises:
    ValueError: unsupported architecture, unknown / missing keys, shape mismatches.
  """
  state = readers.unwrap(state_dict)
  keymaps.check_supported(state)
  src = keymaps.detect(state, None if source == 'auto' else source)
  flat, depth = _map(keymaps.strip(state, src), src)

  patch_h, patch_w, channels, width = flat['patch_embed/kernel'].shape
  if patch_h != patch_w or channels != 3:
    raise ValueError(
        f'Unsupported architecture: patch embedding {patch_h}x{patch_w} over '
        f'{channels} channels; expected square patches over RGB.'
    )
  heads, heads_origin = _num_heads(width, num_heads)
  side = _grid_side(flat['pos_embed'])
  source_size = side * patch_h
  image_size = source_size if image_size is None else image_size
  if image_size <= 0 or image_size % patch_h:
    raise ValueError(
        f'image_size={image_size} is not a positive multiple of the patch size ' f'{patch_h}.'
    )
  new_side = image_size // patch_h
  notes = [f'source: {src.description}']
  eps = src.layer_norm_eps if layer_norm_eps is None else layer_norm_eps
  mlp_dim = flat['blocks_0/mlp/fc1/kernel'].shape[1]
  notes.append(
      f'architecture: width {width}, depth {depth}, heads {heads} ({heads_origin}), '
      f'mlp {mlp_dim}, patch {patch_h}, LayerNorm eps {eps:g}'
  )

  if new_side == side:
    notes.append(f'position embedding: {side}x{side} patches ({source_size} px), unchanged')
  else:
    flat['pos_embed'] = posemb.resample_pos_embed(flat['pos_embed'], (new_side, new_side))
    notes.append(
        f'position embedding: resampled {side}x{side} ({source_size} px) -> '
        f'{new_side}x{new_side} ({image_size} px), bicubic as timm, class token kept'
    )

  source_classes = flat['head/bias'].shape[0] if 'head/bias' in flat else 0
  source_head = None
  if num_classes is None or num_classes == source_classes:
    num_classes = source_classes
    notes.append(
        f'head: kept, {num_classes} classes'
        if num_classes
        else 'head: none in the checkpoint; the model returns features (num_classes=0)'
    )
  elif source_classes:
    source_head = {k: flat.pop(f'head/{k}') for k in ('kernel', 'bias')}
    notes.append(
        f'head: dropped (checkpoint has {source_classes} classes, num_classes='
        f'{num_classes}); training initialises a new head'
    )
  else:
    notes.append(f'head: none in the checkpoint; training initialises a {num_classes}-class head')

  model_config = dict(
      width=width,
      depth=depth,
      num_heads=heads,
      mlp_dim=mlp_dim,
      patch_size=patch_h,
      image_size=image_size,
      num_classes=num_classes,
      layer_norm_eps=eps,
  )
  _validate(flat, model_config, src, depth)

  mean = src.mean if mean is None else mean
  std = src.std if std is None else std
  metadata = dict(
      source=src.library,
      mean=None if mean is None else [float(m) for m in mean],
      std=None if std is None else [float(s) for s in std],
  )
  notes.append(
      f'normalisation: mean {metadata["mean"]}, std {metadata["std"]}'
      if mean is not None and std is not None
      else 'normalisation: unknown; normalise inputs as the source model was trained '
      '(timm: pretrained_cfg mean/std, HF: preprocessor_config.json)'
  )
  count = sum(v.size for v in flat.values())
  notes.insert(2, f'parameters: {count:,} in {len(flat)} arrays')
  return Conversion(
      traverse_util.unflatten_dict(flat, sep='/'),
      model_config,
      metadata,
      notes,
      src.name,
      source_head,
  )


def convert_state_dict(
    state_dict: Mapping[str, Any],
    source: str = 'auto',
    image_size: int | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """(Flax params, model config) of a PyTorch ViT state dict; see `convert` for the arguments."""
  conversion = convert(state_dict, source, image_size, num_classes, **kwargs)
  return conversion.params, conversion.model_config
