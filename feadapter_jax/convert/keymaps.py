"""Name maps from PyTorch ViT state dicts (timm, torchvision, Hugging Face) to the Flax ViT.

Each source is data: rules `(Flax path, source name(s), kind)` for the embeddings, for one
block (with `{i}` for its index) and for the head. `kind` says how a PyTorch tensor becomes a
Flax array (the HF-Flax recipe: conv weights `(out, in, kh, kw) -> (kh, kw, in, out)`, linear
weights transposed); several source names are concatenated along the output axis, which fuses
separate q/k/v projections into the `qkv` layout `(D, 3D)`, q then k then v, heads inside each.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Rule:
  """One Flax parameter and the source tensor(s) it comes from."""

  target: str
  sources: tuple[str, ...]
  kind: str  # A key of KINDS.


def _conv(w: list[np.ndarray]) -> np.ndarray:
  return np.transpose(w[0], (2, 3, 1, 0))


def _linear(w: list[np.ndarray]) -> np.ndarray:
  return np.concatenate(w, axis=0).T


def _concat(w: list[np.ndarray]) -> np.ndarray:
  return np.concatenate(w, axis=0)


# kind -> (number of dimensions of each source tensor, transform).
KINDS: dict[str, tuple[int, Callable[[list[np.ndarray]], np.ndarray]]] = {
    'conv': (4, _conv),
    'linear': (2, _linear),
    'vector': (1, _concat),
    'token': (3, _concat),
}


def linear(target: str, source: str, parts: Iterable[str] = ('',)) -> tuple[Rule, ...]:
  """A Dense layer; `parts` are sub-modules whose outputs are concatenated (HF query/key/value)."""
  names = [f'{source}.{p}' if p else source for p in parts]
  return (
      Rule(f'{target}/kernel', tuple(f'{n}.weight' for n in names), 'linear'),
      Rule(f'{target}/bias', tuple(f'{n}.bias' for n in names), 'vector'),
  )


def layer_norm(target: str, source: str) -> tuple[Rule, ...]:
  return (
      Rule(f'{target}/scale', (f'{source}.weight',), 'vector'),
      Rule(f'{target}/bias', (f'{source}.bias',), 'vector'),
  )


def conv(target: str, source: str) -> tuple[Rule, ...]:
  return (
      Rule(f'{target}/kernel', (f'{source}.weight',), 'conv'),
      Rule(f'{target}/bias', (f'{source}.bias',), 'vector'),
  )


@dataclasses.dataclass(frozen=True)
class Source:
  """A PyTorch ViT implementation: its names, its LayerNorm eps and its preprocessing.

  Attributes:
    name: the layout, a key of SOURCES.
    library: 'timm' | 'torchvision' | 'hf' (a library may have several layouts).
    description: the PyTorch class, for reports.
    embed: rules outside the blocks (patch embedding, class token, position embedding, norm).
    block: prefix of block `{i}`'s names; `block_rules` sources are relative to it.
    block_rules: the rules of one block.
    head: rules of the classifier, optional in a checkpoint.
    strip_prefix: dropped from names that have it (HF's `vit.` of ViTForImageClassification).
    ignore: regexes of names that carry nothing the classifier uses (HF's pooler).
    layer_norm_eps: the library's default (weights cannot tell).
    mean, std: input normalisation of the library's own pretrained weights, when it has one.
  """

  name: str
  library: str
  description: str
  embed: tuple[Rule, ...]
  block: str
  block_rules: tuple[Rule, ...]
  head: tuple[Rule, ...]
  strip_prefix: str = ''
  ignore: tuple[str, ...] = ()
  layer_norm_eps: float = 1e-6
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None

  @property
  def signature(self) -> str:
    """The patch embedding's weight name, which tells the sources apart."""
    return self.embed[0].sources[0]

  def block_indices(self, names: Iterable[str]) -> list[int]:
    pattern = re.compile(re.escape(self.block).replace(re.escape('{i}'), r'(\d+)'))
    return sorted({int(m.group(1)) for n in names if (m := pattern.match(n))})

  def rules(self, depth: int) -> list[Rule]:
    """Every rule of a `depth`-block model, head last."""
    blocks = [
        Rule(f'blocks_{i}/{r.target}', tuple(self.block.format(i=i) + s for s in r.sources), r.kind)
        for i in range(depth)
        for r in self.block_rules
    ]
    return [*self.embed, *blocks, *self.head]

  def source_name(self, target: str, depth: int) -> str:
    """The source name(s) of a Flax path, for error messages."""
    for rule in self.rules(depth):
      if rule.target == target:
        return ' + '.join(rule.sources)
    return '(none)'


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Hugging Face ViT: the embeddings and the classifier are named alike in both layouts.
_HF_EMBED = (
    *conv('patch_embed', 'embeddings.patch_embeddings.projection'),
    Rule('cls_token', ('embeddings.cls_token',), 'token'),
    Rule('pos_embed', ('embeddings.position_embeddings',), 'token'),
    *layer_norm('norm', 'layernorm'),
)
_HF_IGNORE = (r'pooler\..*', r'embeddings\.mask_token')

SOURCES = {
    s.name: s
    for s in (
        Source(
            name='timm',
            library='timm',
            description='timm VisionTransformer',
            embed=(
                *conv('patch_embed', 'patch_embed.proj'),
                Rule('cls_token', ('cls_token',), 'token'),
                Rule('pos_embed', ('pos_embed',), 'token'),
                *layer_norm('norm', 'norm'),
            ),
            block='blocks.{i}.',
            block_rules=(
                *layer_norm('norm1', 'norm1'),
                *linear('attn/qkv', 'attn.qkv'),
                *linear('attn/proj', 'attn.proj'),
                *layer_norm('norm2', 'norm2'),
                *linear('mlp/fc1', 'mlp.fc1'),
                *linear('mlp/fc2', 'mlp.fc2'),
            ),
            head=linear('head', 'head'),
        ),
        Source(
            name='torchvision',
            library='torchvision',
            description='torchvision VisionTransformer',
            embed=(
                *conv('patch_embed', 'conv_proj'),
                Rule('cls_token', ('class_token',), 'token'),
                Rule('pos_embed', ('encoder.pos_embedding',), 'token'),
                *layer_norm('norm', 'encoder.ln'),
            ),
            block='encoder.layers.encoder_layer_{i}.',
            block_rules=(
                *layer_norm('norm1', 'ln_1'),
                # nn.MultiheadAttention packs q, k, v like timm's fused qkv.
                Rule('attn/qkv/kernel', ('self_attention.in_proj_weight',), 'linear'),
                Rule('attn/qkv/bias', ('self_attention.in_proj_bias',), 'vector'),
                *linear('attn/proj', 'self_attention.out_proj'),
                *layer_norm('norm2', 'ln_2'),
                *linear('mlp/fc1', 'mlp.0'),
                *linear('mlp/fc2', 'mlp.3'),
            ),
            head=linear('head', 'heads.head'),
            # torchvision's ViT weights (IMAGENET1K_V1, SWAG) all use ImageNet statistics.
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        ),
        # The layout of ViT files on the Hugging Face hub (also what transformers 5 saves).
        Source(
            name='hf',
            library='hf',
            description='Hugging Face ViT (hub file layout)',
            embed=_HF_EMBED,
            block='encoder.layer.{i}.',
            block_rules=(
                *layer_norm('norm1', 'layernorm_before'),
                *linear('attn/qkv', 'attention.attention', ('query', 'key', 'value')),
                *linear('attn/proj', 'attention.output.dense'),
                *layer_norm('norm2', 'layernorm_after'),
                *linear('mlp/fc1', 'intermediate.dense'),
                *linear('mlp/fc2', 'output.dense'),
            ),
            head=linear('head', 'classifier'),
            strip_prefix='vit.',
            ignore=_HF_IGNORE,
            layer_norm_eps=1e-12,
        ),  # ViTConfig's default.
        # transformers >= 5 in memory: `model.state_dict()` (it renames to the above when saving).
        Source(
            name='hf_v5',
            library='hf',
            description='Hugging Face ViT (transformers 5 module layout)',
            embed=_HF_EMBED,
            block='layers.{i}.',
            block_rules=(
                *layer_norm('norm1', 'layernorm_before'),
                *linear('attn/qkv', 'attention', ('q_proj', 'k_proj', 'v_proj')),
                *linear('attn/proj', 'attention.o_proj'),
                *layer_norm('norm2', 'layernorm_after'),
                *linear('mlp/fc1', 'mlp.fc1'),
                *linear('mlp/fc2', 'mlp.fc2'),
            ),
            head=linear('head', 'classifier'),
            strip_prefix='vit.',
            ignore=_HF_IGNORE,
            layer_norm_eps=1e-12,
        ),
    )
}
LIBRARIES = tuple(dict.fromkeys(s.library for s in SOURCES.values()))

# Features of other ViT families, recognised by a name, that the Flax ViT does not implement.
UNSUPPORTED = (
    (r'(^|\.)reg_token$', 'register tokens (reg_token)'),
    (
        r'(^|\.)(dist_token|distillation_token)$|(^|\.)head_dist\.',
        'a distillation token (DeiT distilled)',
    ),
    (r'^fc_norm\.', "global-pool normalisation fc_norm (timm global_pool='avg'|'max')"),
    (r'^attn_pool\.', "attention pooling (timm global_pool='map')"),
    (r'\.ls[12]\.gamma$|(^|\.)lambda_?[12]$', 'LayerScale (ls1/ls2: DeiT-III, CaiT)'),
    (r'\.(q_norm|k_norm)\.', 'query/key normalisation (qk_norm)'),
    (r'^norm_pre\.', 'a LayerNorm before the blocks (norm_pre, CLIP-style)'),
    (r'^heads\.pre_logits\.', 'a pre-logits layer (torchvision representation_size)'),
)
SUPPORTED = (
    'plain class-token ViTs: timm VisionTransformer (class_token=True, '
    "global_pool='token'), torchvision vit_*, Hugging Face ViTModel / "
    'ViTForImageClassification'
)


def check_supported(names: Iterable[str]) -> None:
  """Raises ValueError naming the first unsupported architecture feature found."""
  names = sorted(names)
  for pattern, feature in UNSUPPORTED:
    hits = [n for n in names if re.search(pattern, n)]
    if hits:
      raise ValueError(
          f'Unsupported architecture: the checkpoint has {feature} '
          f'(e.g. {hits[0]!r}). Supported: {SUPPORTED}.'
      )


def detect(names: Iterable[str], library: str | None = None) -> Source:
  """The layout (of `library`, or of any) whose patch embedding and blocks the names have."""
  names = set(names)
  candidates = [s for s in SOURCES.values() if library in (None, s.library)]
  if not candidates:
    raise ValueError(f'Unknown source {library!r}: expected auto or one of {LIBRARIES}.')
  for source in candidates:
    stripped = strip(dict.fromkeys(names), source)
    if source.signature in stripped and source.block_indices(stripped):
      return source
  expected = ', '.join(f'{s.signature} + {s.block.format(i="N")}*' for s in candidates)
  raise ValueError(
      f'Unrecognised checkpoint{f" for --source {library}" if library else ""}: '
      f'no patch embedding and blocks of a known ViT layout ({expected}). Its first '
      f'keys: {sorted(names)[:8]}. Supported: {SUPPORTED}.'
  )


def rename(state: Mapping[str, Any], source: Source, target: Source, depth: int) -> dict[str, Any]:
  """`state` (stripped names of `source`) under `target`'s names: the same rules, relabelled."""
  mapping = {}
  for a, b in zip(source.rules(depth), target.rules(depth)):
    mapping.update(zip(a.sources, b.sources))
  return {mapping.get(k, k): v for k, v in state.items()}


def strip(state_dict: Mapping[str, Any], source: Source) -> dict[str, Any]:
  """The state dict with `source.strip_prefix` removed from the names that have it."""
  p = source.strip_prefix
  return {k[len(p) :] if p and k.startswith(p) else k: v for k, v in state_dict.items()}
