"""State dict -> Flax ViT parameters and the model config they imply, checked against the model.

The architecture is read from the converted parameters: shapes give width, depth, mlp_dim, patch
size, grid, classes and registers; which optional parameters came out gives the class token, the
pre-norm, LayerScale and where the final LayerNorm sits. What the weights cannot tell comes from
the caller, the checkpoint's hub config, or a default the report names: the number of heads (the
standard width -> heads table), the LayerNorm eps (the library's), the pooling of a model with a
class token (the class token unless an fc_norm says average), and the activation, which is
never guessed for CLIP-style (pre-norm) towers since OpenAI's and open_clip's differ. The
converted tree is validated against the shape-only parameters (`builder.param_shapes`) of the
implied config, so a wrong guess fails here, not in training.
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
from feadapter_jax.models import vit

# timm / torchvision / HF presets: Ti, S, B, L, H.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# How many names an error lists before '...'.
SHOWN = 5


@dataclasses.dataclass
class Conversion:
  """A converted checkpoint.

  Attributes:
    params: the Flax parameter tree (numpy float32), without a head when it was dropped.
    model_config: the `models.build` config the params fit (every `store.ARCHITECTURE_KEYS` entry).
    metadata: source layout and input normalisation (None when unknown), for model_config.json.
    notes: the human-readable report, one line per topic.
    layout: the name layout read, a key of `keymaps.SOURCES`.
    source_grid: the side of the checkpoint's patch grid (its position embedding's).
    rename, ignore: the `--rename` / `--ignore` edits applied to the names (for --verify).
    source_head: the checkpoint's head `{'kernel', 'bias'}` when it was dropped (for --verify).
  """

  params: dict[str, Any]
  model_config: dict[str, Any]
  metadata: dict[str, Any]
  notes: list[str]
  layout: str
  source_grid: int
  rename: tuple[tuple[str, str], ...] = ()
  ignore: tuple[str, ...] = ()
  source_head: dict[str, np.ndarray] | None = None

  def report(self) -> str:
    return '\n'.join(self.notes)


def _listing(names: Sequence[str], shown: int = SHOWN) -> str:
  more = f' ... ({len(names)} in all)' if len(names) > shown else ''
  return ', '.join(repr(n) for n in names[:shown]) + more


def _arrays(count: int) -> str:
  return f'{count} array' + 's' * (count != 1)


def _compile(pattern: str, flag: str) -> re.Pattern[str]:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ValueError(f'{flag}: {pattern!r} is not a regular expression ({e}).') from e


def prepare(
    state_dict: Mapping[str, Any],
    rename: Sequence[tuple[str, str]] = (),
    ignore: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray], list[str]]:
  """The state dict unwrapped (`readers.unwrap`), renamed, and without the ignored names.

  Args:
    state_dict: `{name: array}`, possibly wrapped.
    rename: `(regex, replacement)` pairs, `re.sub` on every name, in order.
    ignore: regexes (`re.search`) of names, after renaming, to leave out.

  Returns:
    The state and the (renamed) names ignored.

  Raises:
    ValueError: a bad regex, or a rename that gives two arrays the same name.
  """
  state = readers.unwrap(state_dict)
  for pattern, replacement in rename:
    regex = _compile(pattern, '--rename')
    renamed: dict[str, np.ndarray] = {}
    for name, value in state.items():
      new = regex.sub(replacement, name)
      if new in renamed:
        raise ValueError(f'--rename {pattern}={replacement} gives two arrays the name {new!r}.')
      renamed[new] = value
    state = renamed
  regexes = [_compile(p, '--ignore') for p in ignore]
  ignored = sorted(n for n in state if any(r.search(n) for r in regexes))
  return {n: v for n, v in state.items() if n not in set(ignored)}, ignored


def _map(
    state: Mapping[str, np.ndarray], source: keymaps.Source
) -> tuple[dict[str, np.ndarray], int, dict[str, int]]:
  """Flat `{flax path: array}` through the source's rules, the depth, and `{what: count}` of
  the names the layout drops."""
  depth = source.block_indices(state)[-1] + 1  # A gap in the indices shows as missing keys.
  rules = source.rules(depth)
  present = {r.group for r in rules if r.group and any(n in state for n in r.sources)}
  rules = [r for r in rules if not r.group or r.group in present]
  needed = [n for r in rules for n in r.sources]
  missing = [n for n in dict.fromkeys(needed) if n not in state]
  if missing:
    raise ValueError(f'{source.description} checkpoint is missing keys: {_listing(missing)}.')
  dropped: dict[str, int] = {}
  unknown = []
  for name in sorted(set(state) - set(needed)):
    what = source.dropped(name)
    if what is None:
      unknown.append(name)
    else:
      dropped[what] = dropped.get(what, 0) + 1
  if unknown:
    raise ValueError(
        f'Unknown keys for a {source.description} checkpoint: {_listing(unknown)}. '
        '--ignore REGEX leaves modules out, --rename REGEX=REPLACEMENT renames.'
    )

  flat = {}
  for rule in rules:
    kind = keymaps.KINDS[rule.kind]
    parts = [state[n] for n in rule.sources]
    for name, part in zip(rule.sources, parts):
      if part.ndim != kind.ndim:
        raise ValueError(
            f'Shape mismatch: {name} has shape {part.shape}, expected a {kind.ndim}-D '
            f'array for {rule.target}.'
        )
    if kind.parts and len({p.shape for p in parts}) > 1:
      raise ValueError(
          f'Shape mismatch: {" / ".join(rule.sources)} have shapes '
          f'{[p.shape for p in parts]}; they should be equal.'
      )
    flat[rule.target] = np.asarray(kind.transform(parts), np.float32)
  return flat, depth, dropped


def _grid(pos_embed: np.ndarray, prefix: int) -> tuple[int, bool]:
  """(patch-grid side, whether the embedding covers the `prefix` class/register tokens)."""
  tokens = pos_embed.shape[1]
  # A grid with and without the prefix can both be square only for tiny grids (e.g. 4 + 5 = 9):
  # the covered reading, timm's default, is tried first.
  for covered in dict.fromkeys((prefix, 0)):
    side = math.isqrt(tokens - covered) if tokens >= covered else 0
    if side and side * side == tokens - covered:
      return side, bool(covered) or not prefix
  expected = (
      f'neither {prefix} prefix (class / register) entries + a square patch grid nor a square '
      'grid alone'
      if prefix
      else 'not a square patch grid (the checkpoint has no class or register tokens)'
  )
  raise ValueError(f'Unsupported architecture: pos_embed has {tokens} tokens, {expected}.')


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


def _activation(activation: str | None, pre_norm: bool, src: keymaps.Source) -> tuple[str, str]:
  if activation is not None:
    if activation not in vit.ACTIVATIONS:
      raise ValueError(f'activation={activation!r}: expected one of {vit.ACTIVATIONS}.')
    return activation, 'given'
  if pre_norm:
    raise ValueError(
        f'The MLP activation of this CLIP-style checkpoint ({src.description}, pre-norm) is '
        "not in its weights: pass --activation quick_gelu for OpenAI's CLIP weights (and "
        "towers fine-tuned from them), --activation gelu for open_clip's LAION-trained ones."
    )
  return 'gelu', 'default'


def _family(
    flat: Mapping[str, np.ndarray],
    src: keymaps.Source,
    activation: str | None,
    global_pool: str | None,
    layer_scale: float | None,
    num_registers: int | None,
    layer_norm_eps: float | None,
) -> tuple[dict[str, Any], int, list[str]]:
  """The family options (`vit.ViT`'s) of the converted parameters, the side of their patch
  grid, and report lines."""
  class_token = 'cls_token' in flat
  registers = flat['reg_token'].shape[1] if 'reg_token' in flat else 0
  if num_registers is not None and num_registers != registers:
    raise ValueError(
        f'The hub config declares {num_registers} register tokens, the weights have {registers}.'
    )
  pre_norm = 'norm_pre/scale' in flat
  fc_norm = 'fc_norm/scale' in flat
  if fc_norm == ('norm/scale' in flat):
    raise ValueError(
        'Unsupported architecture: expected one final LayerNorm, before pooling (norm) or '
        f'after it (fc_norm); the checkpoint has {"both" if fc_norm else "neither"}.'
    )
  if global_pool is None:
    global_pool = 'avg' if fc_norm or not class_token else 'token'
    pool_origin = 'no class token' if not class_token else 'fc_norm' if fc_norm else 'default'
  else:
    pool_origin = 'given'
  if global_pool == 'token' and not class_token:
    raise ValueError("global_pool='token' needs a class token; the checkpoint has none.")
  if 'blocks_0/ls1/gamma' not in flat:
    layer_scale = 0.0
  elif layer_scale is None:
    layer_scale = 1.0
  activation, act_origin = _activation(activation, pre_norm, src)
  if layer_norm_eps is None:
    layer_norm_eps = src.pre_norm_eps if pre_norm and src.pre_norm_eps else src.layer_norm_eps
  side, class_pos_embed = _grid(flat['pos_embed'], int(class_token) + registers)

  tokens = ['class token' if class_token else 'no class token']
  tokens += [f'{registers} registers'] if registers else []
  covered = ['class'] * class_token + ['register'] * bool(registers) if class_pos_embed else []
  notes = [
      f'family: LayerNorm eps {layer_norm_eps:g}, activation {activation} ({act_origin}), '
      f'pre-norm {"yes" if pre_norm else "no"}, LayerScale {"yes" if layer_scale else "no"}',
      f'tokens: {", ".join(tokens)}; position embedding on the '
      f'{" and ".join([*covered, "patch"])} tokens; pooling {global_pool} ({pool_origin}), '
      f'final LayerNorm {"after pooling (fc_norm)" if fc_norm else "before pooling"}',
  ]
  options = dict(
      layer_norm_eps=layer_norm_eps,
      activation=activation,
      pre_norm=pre_norm,
      layer_scale=float(layer_scale),
      num_registers=registers,
      class_token=class_token,
      class_pos_embed=class_pos_embed,
      global_pool=global_pool,
      fc_norm=fc_norm,
  )
  return options, side, notes


def _head(
    flat: dict[str, np.ndarray], num_classes: int | None
) -> tuple[int, dict[str, np.ndarray] | None, str]:
  """(classes, the checkpoint's head when it is dropped from `flat`, a report line)."""
  source_classes = flat['head/bias'].shape[0] if 'head/bias' in flat else 0
  if num_classes is None or num_classes == source_classes:
    return (
        source_classes,
        None,
        f'head: kept, {source_classes} classes'
        if source_classes
        else 'head: none in the checkpoint; the model returns features (num_classes=0)',
    )
  if source_classes:
    source_head = {k: flat.pop(f'head/{k}') for k in ('kernel', 'bias')}
    return (
        num_classes,
        source_head,
        f'head: dropped (checkpoint has {source_classes} classes, num_classes='
        f'{num_classes}); training initialises a new head',
    )
  return (
      num_classes,
      None,
      f'head: none in the checkpoint; training initialises a {num_classes}-class head',
  )


def _normalisation(
    src: keymaps.Source, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[list[float] | None, list[float] | None, str]:
  """(mean, std, a report line): the given ones, else the source's default, else unknown."""
  if (mean is None) != (std is None):
    raise ValueError('Give both mean and std, or neither.')
  origin = 'given'
  if mean is None and src.mean is not None:
    mean, std, origin = src.mean, src.std, f'the default of the source: {src.normalisation}'
  if mean is None:
    return (
        None,
        None,
        'normalisation: unknown; pass --mean/--std as the source model was trained (timm: '
        'pretrained_cfg mean/std, HF: preprocessor_config.json), or normalise so later',
    )
  mean, std = [float(m) for m in mean], [float(s) for s in std]
  if len(mean) != 3 or len(std) != 3:
    raise ValueError(f'mean and std need 3 values each (R, G, B), got {mean} and {std}.')
  return mean, std, f'normalisation: mean {mean}, std {std} ({origin})'


def convert(
    state_dict: Mapping[str, Any],
    source: str = 'auto',
    image_size: int | None = None,
    num_classes: int | None = None,
    *,
    num_heads: int | None = None,
    layer_norm_eps: float | None = None,
    activation: str | None = None,
    global_pool: str | None = None,
    layer_scale: float | None = None,
    num_registers: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    rename: Sequence[tuple[str, str]] = (),
    ignore: Sequence[str] = (),
) -> Conversion:
  """Converts a ViT checkpoint's state dict to Flax parameters, its model config and a report.

  Args:
    state_dict: `{name: numpy array or torch tensor}`, possibly wrapped (`{'model': ...}`,
      `{'state_dict': ...}`, `module.` prefixes).
    source: 'auto' (recognised from the names) or a library of `keymaps.LIBRARIES`.
    image_size: target input size; the position embedding is resampled (bicubic, as timm)
      when it differs from the checkpoint's. None keeps the checkpoint's.
    num_classes: target classes. None keeps the checkpoint's head (0 when it has none); a
      different count drops the head, which training then initialises.
    num_heads: attention heads; None uses the standard width -> heads table.
    layer_norm_eps: None uses the source library's default (HF ViT 1e-12, CLIP 1e-5, else 1e-6).
    activation: 'gelu' | 'quick_gelu'; required for CLIP-style (pre-norm) checkpoints, else
      None means GELU.
    global_pool: 'token' | 'avg'; None: 'avg' for models without a class token or with an
      fc_norm (timm's rule), else 'token'.
    layer_scale: the LayerScale init value to record (the gammas themselves are loaded); None
      records 1.0 for checkpoints with LayerScale.
    num_registers: register tokens a hub config declares; the weights must agree.
    mean, std: input normalisation to record; None uses the source's, when known.
    rename, ignore: name edits, see `prepare`.

  Returns:
    The `Conversion`.

  Raises:
    ValueError: unsupported architecture, unknown / missing keys, shape mismatches, a CLIP-style
      checkpoint without an activation.
  """
  state, ignored = prepare(state_dict, rename, ignore)
  keymaps.check_supported(state)
  src = keymaps.detect(state, None if source == 'auto' else source)
  flat, depth, dropped = _map(src.normalise(state), src)

  patch_h, patch_w, channels, width = flat['patch_embed/kernel'].shape
  if patch_h != patch_w or channels != 3:
    raise ValueError(
        f'Unsupported architecture: patch embedding {patch_h}x{patch_w} over '
        f'{channels} channels; expected square patches over RGB.'
    )
  patch_bias = 'patch_embed/bias' in flat
  if not patch_bias:  # CLIP's: the Flax ViT's patch embedding always has one.
    flat['patch_embed/bias'] = np.zeros(width, np.float32)
  mlp_dim = flat['blocks_0/mlp/fc1/kernel'].shape[1]
  if flat['blocks_0/mlp/fc2/kernel'].shape[0] * 2 == mlp_dim:
    # timm's SwiGLUPacked keeps the names fc1 / fc2; fc1 computes the gate and the value.
    raise ValueError(
        f'Unsupported architecture: the MLP has {mlp_dim} hidden outputs and its second layer '
        'takes half as many: a gated MLP (SwiGLU, as DINOv2 giant).'
    )
  heads, heads_origin = _num_heads(width, num_heads)
  options, side, family_notes = _family(
      flat, src, activation, global_pool, layer_scale, num_registers, layer_norm_eps
  )
  notes = [
      f'source: {src.description}',
      f'architecture: width {width}, depth {depth}, heads {heads} ({heads_origin}), '
      f'mlp {mlp_dim}, patch {patch_h}',
      *family_notes,
  ]
  if not patch_bias:
    notes.append('patch embedding: no bias in the checkpoint; zeros written')

  source_size = side * patch_h
  image_size = source_size if image_size is None else image_size
  if image_size <= 0 or image_size % patch_h:
    raise ValueError(
        f'image_size={image_size} is not a positive multiple of the patch size {patch_h}.'
    )
  new_side = image_size // patch_h
  if new_side == side:
    notes.append(f'position embedding: {side}x{side} patches ({source_size} px), unchanged')
  else:
    kept = options['num_registers'] + options['class_token'] if options['class_pos_embed'] else 0
    flat['pos_embed'] = posemb.resample_pos_embed(flat['pos_embed'], (new_side, new_side), kept)
    notes.append(
        f'position embedding: resampled {side}x{side} ({source_size} px) -> '
        f'{new_side}x{new_side} ({image_size} px), bicubic as timm, {kept} prefix '
        'entr' + ('y' if kept == 1 else 'ies') + ' kept'
    )

  num_classes, source_head, head_note = _head(flat, num_classes)
  notes.append(head_note)
  for what, count in dropped.items():
    notes.append(f'dropped: {what} ({_arrays(count)}), unused by the image classifier')
  if ignored:
    notes.append(f'ignored (--ignore): {_arrays(len(ignored))}: {_listing(ignored, len(ignored))}')

  model_config = dict(
      width=width,
      depth=depth,
      num_heads=heads,
      mlp_dim=mlp_dim,
      patch_size=patch_h,
      image_size=image_size,
      num_classes=num_classes,
      **options,
  )
  _validate(flat, model_config, src, depth)
  mean, std, norm_note = _normalisation(src, mean, std)
  notes.append(norm_note)
  count = sum(v.size for v in flat.values())
  notes.insert(2, f'parameters: {count:,} in {len(flat)} arrays')
  return Conversion(
      traverse_util.unflatten_dict(flat, sep='/'),
      model_config,
      dict(source=src.name, mean=mean, std=std),
      notes,
      src.name,
      side,
      tuple((p, r) for p, r in rename),
      tuple(ignore),
      source_head,
  )


def convert_state_dict(
    state_dict: Mapping[str, Any],
    source: str = 'auto',
    image_size: int | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """(Flax params, model config) of a ViT state dict; see `convert` for the arguments."""
  conversion = convert(state_dict, source, image_size, num_classes, **kwargs)
  return conversion.params, conversion.model_config
