"""Name maps from ViT checkpoints (timm, torchvision, Hugging Face, CLIP, big_vision) to Flax.

Each source layout is data: rules `(Flax path, source name(s), kind, group)` for the embeddings
and final norms, for one block (with `{i}` for its index) and for the head. `kind` says how the
source arrays become one Flax array (`KINDS`: PyTorch conv weights `(out, in, kh, kw) -> (kh, kw,
in, out)`, linear weights transposed, big_vision's per-head attention kernels flattened, CLIP's
unbatched tables given their batch axis); several source names are concatenated along the output
axis, which fuses separate q/k/v projections into the `qkv` layout `(D, 3D)`, q then k then v,
heads inside each. A rule with a `group` is optional: the group's names are all present (the
feature is on: LayerScale, registers, a pre-norm, ...) or all absent; the converter reads the
architecture from which Flax parameters came out.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Rule:
  """One Flax parameter and the source array(s) it comes from.

  Attributes:
    target: the Flax path, e.g. 'blocks_0/attn/qkv/kernel'.
    sources: the source names, e.g. the q, k, v weights fused into it.
    kind: a key of KINDS.
    group: '' when the parameter is always there; else the optional feature it belongs to.
  """

  target: str
  sources: tuple[str, ...]
  kind: str
  group: str = ''


@dataclasses.dataclass(frozen=True)
class Kind:
  """How a rule's source arrays become the Flax array.

  Attributes:
    ndim: the number of dimensions of every source array.
    transform: source arrays -> the Flax array.
    parts: the sources are parts of one array (q, k, v), so their shapes must be equal.
  """

  ndim: int
  transform: Callable[[list[np.ndarray]], np.ndarray]
  parts: bool = True


def _torch_linear(w: list[np.ndarray]) -> np.ndarray:
  return np.concatenate(w, axis=0).T


def _heads_in(w: list[np.ndarray]) -> np.ndarray:
  return np.concatenate([x.reshape(x.shape[0], -1) for x in w], axis=1)


KINDS = {
    # PyTorch.
    'conv': Kind(4, lambda w: np.transpose(w[0], (2, 3, 1, 0))),
    'linear': Kind(2, _torch_linear),
    # Flax / big_vision: already (kh, kw, in, out) and (in, out).
    'hwio': Kind(4, lambda w: w[0]),
    'dense': Kind(2, lambda w: w[0]),
    # big_vision attention: query/key/value kernels (D, H, hd), biases (H, hd), out (H, hd, D).
    'heads_in': Kind(3, _heads_in),
    'heads_bias': Kind(2, lambda w: np.concatenate([x.reshape(-1) for x in w])),
    'heads_out': Kind(3, lambda w: w[0].reshape(-1, w[0].shape[-1])),
    'vector': Kind(1, lambda w: np.concatenate(w)),
    'token': Kind(3, lambda w: np.concatenate(w, axis=1)),
    # CLIP keeps the class embedding as (D,) and the position table as (N, D).
    'class_vector': Kind(1, lambda w: w[0][None, None]),
    'table': Kind(2, lambda w: w[0][None]),
    # DINOv2 with registers adds the position embedding to the class token before inserting the
    # registers: fold the class entry into the token and keep the patch entries.
    'cls_plus_pos': Kind(3, lambda w: w[0] + w[1][:, :1], parts=False),
    'pos_after_first': Kind(3, lambda w: w[0][:, 1:]),
}


def linear(
    target: str, source: str, parts: Iterable[str] = ('',), group: str = ''
) -> tuple[Rule, ...]:
  """A PyTorch Linear; `parts` are sub-modules whose outputs are concatenated (q, k, v)."""
  names = [f'{source}.{p}' if p else source for p in parts]
  return (
      Rule(f'{target}/kernel', tuple(f'{n}.weight' for n in names), 'linear', group),
      Rule(f'{target}/bias', tuple(f'{n}.bias' for n in names), 'vector', group),
  )


def layer_norm(target: str, source: str, group: str = '') -> tuple[Rule, ...]:
  return (
      Rule(f'{target}/scale', (f'{source}.weight',), 'vector', group),
      Rule(f'{target}/bias', (f'{source}.bias',), 'vector', group),
  )


def conv(target: str, source: str) -> tuple[Rule, ...]:
  return (
      Rule(f'{target}/kernel', (f'{source}.weight',), 'conv'),
      Rule(f'{target}/bias', (f'{source}.bias',), 'vector'),
  )


def flax_dense(target: str, source: str, group: str = '') -> tuple[Rule, ...]:
  return (
      Rule(f'{target}/kernel', (f'{source}/kernel',), 'dense', group),
      Rule(f'{target}/bias', (f'{source}/bias',), 'vector', group),
  )


def flax_norm(target: str, source: str, group: str = '') -> tuple[Rule, ...]:
  return (
      Rule(f'{target}/scale', (f'{source}/scale',), 'vector', group),
      Rule(f'{target}/bias', (f'{source}/bias',), 'vector', group),
  )


@dataclasses.dataclass(frozen=True)
class Source:
  """A ViT implementation's checkpoint layout: its names, defaults and preprocessing.

  Attributes:
    name: the layout, a key of SOURCES, recorded as `source` in model_config.json.
    library: the `--source` value that selects it; a library may have several layouts.
    reference: how `--verify` rebuilds it in PyTorch (a key of `verify.REFERENCES`); layouts
      with the same reference differ only in names, and `rename` maps between them.
    description: for reports.
    embed: rules outside the blocks; the first is the patch embedding's kernel, whose name
      identifies the layout.
    block: prefix of block `{i}`'s names; `block_rules` sources are relative to it.
    block_rules: the rules of one block.
    head: the classifier's rules (group 'head': optional in a checkpoint).
    prefixes: wrappers around the names (HF's `vit.` of ViTForImageClassification); the one
      the patch embedding carries is removed from every name that has it.
    stacked: prefix of blocks stored as one array per parameter with a leading depth axis
      (big_vision's scanned encoder); they are split into `block` names.
    drop: `(regex, what)` of names that carry nothing the image classifier uses (a text
      tower, a pooler); dropped with a line in the report.
    layer_norm_eps: the library's default (weights cannot tell).
    pre_norm_eps: the LayerNorm eps of the library's pre-norm (CLIP) models, if different.
    mean, std: input normalisation of the layout's own pretrained weights, when it has one.
    normalisation: where `mean`/`std` come from, for the report.
  """

  name: str
  library: str
  reference: str
  description: str
  embed: tuple[Rule, ...]
  block: str
  block_rules: tuple[Rule, ...]
  head: tuple[Rule, ...] = ()
  prefixes: tuple[str, ...] = ()
  stacked: str = ''
  drop: tuple[tuple[str, str], ...] = ()
  layer_norm_eps: float = 1e-6
  pre_norm_eps: float | None = None
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  normalisation: str = ''

  @property
  def signature(self) -> str:
    """The patch embedding's kernel name, which every checkpoint of the layout has."""
    return self.embed[0].sources[0]

  def block_indices(self, names: Iterable[str]) -> list[int]:
    pattern = re.compile(re.escape(self.block).replace(re.escape('{i}'), r'(\d+)'))
    return sorted({int(m.group(1)) for n in names if (m := pattern.match(n))})

  def rules(self, depth: int) -> list[Rule]:
    """Every rule of a `depth`-block model, head last."""
    blocks = [
        dataclasses.replace(
            r,
            target=f'blocks_{i}/{r.target}',
            sources=tuple(self.block.format(i=i) + s for s in r.sources),
        )
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

  def prefix(self, names: Iterable[str]) -> str:
    """The wrapper prefix of `names` (one of `prefixes`), or ''."""
    names = set(names)
    return next((p for p in self.prefixes if p + self.signature in names), '')

  def plain_names(self, names: Iterable[str]) -> dict[str, str]:
    """`{name: the name without the wrapper prefix}` for every one of `names`."""
    names = list(names)
    p = self.prefix(names)
    return {n: n[len(p) :] if p and n.startswith(p) else n for n in names}

  def normalise(self, state: Mapping[str, Any]) -> dict[str, Any]:
    """`state` under the layout's plain names: wrapper prefix removed, stacked blocks split."""
    out = {}
    for name, plain in self.plain_names(state).items():
      value = state[name]
      if self.stacked and plain.startswith(self.stacked):
        rest = plain[len(self.stacked) :]
        out.update({self.block.format(i=i) + rest: value[i] for i in range(value.shape[0])})
      else:
        out[plain] = value
    return out

  def dropped(self, name: str) -> str | None:
    """What a name that the layout drops belongs to, or None."""
    return next((what for pattern, what in self.drop if re.search(pattern, name)), None)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_NORMALISATION = "OpenAI CLIP's constants, which open_clip's towers also use by default"
HALF = (0.5, 0.5, 0.5)

# Hugging Face ViT: the embeddings and the classifier are named alike in both layouts.
_HF_EMBED = (
    *conv('patch_embed', 'embeddings.patch_embeddings.projection'),
    Rule('cls_token', ('embeddings.cls_token',), 'token'),
    Rule('pos_embed', ('embeddings.position_embeddings',), 'token'),
    *layer_norm('norm', 'layernorm'),
)
_HF_DROP = (
    (r'^pooler\.', 'the pooler (a dense layer on the class token, not the classifier)'),
    (r'^embeddings\.mask_token$', 'the mask token (masked-image pre-training only)'),
)
_QKV = ('query', 'key', 'value')


def _hf_dinov2(name: str, description: str, attention: tuple[Rule, ...], registers: bool) -> Source:
  """A DINOv2 layout: hub files or transformers 5 modules, with or without registers."""
  cls_pos = ('embeddings.cls_token', 'embeddings.position_embeddings')
  tokens = (
      (
          Rule('cls_token', cls_pos, 'cls_plus_pos'),
          Rule('reg_token', ('embeddings.register_tokens',), 'token'),
          Rule('pos_embed', cls_pos[1:], 'pos_after_first'),
      )
      if registers
      else (Rule('cls_token', cls_pos[:1], 'token'), Rule('pos_embed', cls_pos[1:], 'token'))
  )
  return Source(
      name=name,
      library='hf',
      reference='hf_dinov2',
      description=description,
      embed=(
          *conv('patch_embed', 'embeddings.patch_embeddings.projection'),
          *tokens,
          *layer_norm('norm', 'layernorm'),
      ),
      block='encoder.layer.{i}.',
      block_rules=(
          *layer_norm('norm1', 'norm1'),
          *attention,
          Rule('ls1/gamma', ('layer_scale1.lambda1',), 'vector'),
          *layer_norm('norm2', 'norm2'),
          *linear('mlp/fc1', 'mlp.fc1'),
          *linear('mlp/fc2', 'mlp.fc2'),
          Rule('ls2/gamma', ('layer_scale2.lambda1',), 'vector'),
      ),
      prefixes=('dinov2.',),
      drop=_HF_DROP[1:],
      mean=IMAGENET_MEAN,
      std=IMAGENET_STD,
      normalisation="ImageNet statistics, DINOv2's",
  )


_DINOV2_HUB_ATTENTION = (
    *linear('attn/qkv', 'attention.attention', _QKV),
    *linear('attn/proj', 'attention.output.dense'),
)
_DINOV2_V5_ATTENTION = (
    *linear('attn/qkv', 'attention', ('q_proj', 'k_proj', 'v_proj')),
    *linear('attn/proj', 'attention.o_proj'),
)


def _flax_vit(
    name: str, description: str, pos_embed: str, sub: tuple[int, int, int], stacked: bool
) -> Source:
  """A Flax ViT `.npz`: `sub` numbers the block's MultiHeadDotProductAttention, second
  LayerNorm and MlpBlock modules (the vision_transformer repository counts its dropouts too)."""
  mha, ln2, mlp = (
      f'MultiHeadDotProductAttention_{sub[0]}',
      f'LayerNorm_{sub[1]}',
      f'MlpBlock_{sub[2]}',
  )
  return Source(
      name=name,
      library='big_vision',
      reference='flax_npz',
      description=description,
      embed=(
          Rule('patch_embed/kernel', ('embedding/kernel',), 'hwio'),
          Rule('patch_embed/bias', ('embedding/bias',), 'vector'),
          # Global-average-pooled ('gap') models have no class token.
          Rule('cls_token', ('cls',), 'token', 'cls'),
          Rule('pos_embed', (pos_embed,), 'token'),
          *flax_norm('norm', 'Transformer/encoder_norm'),
      ),
      block='Transformer/encoderblock_{i}/',
      block_rules=(
          *flax_norm('norm1', 'LayerNorm_0'),
          Rule('attn/qkv/kernel', tuple(f'{mha}/{n}/kernel' for n in _QKV), 'heads_in'),
          Rule('attn/qkv/bias', tuple(f'{mha}/{n}/bias' for n in _QKV), 'heads_bias'),
          Rule('attn/proj/kernel', (f'{mha}/out/kernel',), 'heads_out'),
          Rule('attn/proj/bias', (f'{mha}/out/bias',), 'vector'),
          *flax_norm('norm2', ln2),
          *flax_dense('mlp/fc1', f'{mlp}/Dense_0'),
          *flax_dense('mlp/fc2', f'{mlp}/Dense_1'),
      ),
      head=flax_dense('head', 'head', 'head'),
      prefixes=('opt/target/', 'params/'),
      stacked='Transformer/encoderblock/' if stacked else '',
      mean=HALF,
      std=HALF,
      normalisation='0.5 / 0.5 (inputs in [-1, 1]), as AugReg and big_vision train',
  )


SOURCES = {
    s.name: s
    for s in (
        Source(
            name='timm',
            library='timm',
            reference='timm',
            description='timm VisionTransformer',
            embed=(
                Rule('patch_embed/kernel', ('patch_embed.proj.weight',), 'conv'),
                # timm's pre-norm (CLIP) models have no patch-embedding bias.
                Rule('patch_embed/bias', ('patch_embed.proj.bias',), 'vector', 'patch_bias'),
                Rule('cls_token', ('cls_token',), 'token', 'cls'),
                Rule('reg_token', ('reg_token',), 'token', 'reg'),
                Rule('pos_embed', ('pos_embed',), 'token'),
                *layer_norm('norm_pre', 'norm_pre', 'norm_pre'),
                *layer_norm('norm', 'norm', 'norm'),
                *layer_norm('fc_norm', 'fc_norm', 'fc_norm'),
            ),
            block='blocks.{i}.',
            block_rules=(
                *layer_norm('norm1', 'norm1'),
                *linear('attn/qkv', 'attn.qkv'),
                *linear('attn/proj', 'attn.proj'),
                Rule('ls1/gamma', ('ls1.gamma',), 'vector', 'layer_scale'),
                *layer_norm('norm2', 'norm2'),
                *linear('mlp/fc1', 'mlp.fc1'),
                *linear('mlp/fc2', 'mlp.fc2'),
                Rule('ls2/gamma', ('ls2.gamma',), 'vector', 'layer_scale'),
            ),
            head=linear('head', 'head', group='head'),
            # timm's CLIP towers (vit_*_clip_*) use torch's LayerNorm default.
            pre_norm_eps=1e-5,
        ),
        Source(
            name='torchvision',
            library='torchvision',
            reference='torchvision',
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
            head=linear('head', 'heads.head', group='head'),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            normalisation="ImageNet statistics, as all torchvision's ViT weights",
        ),
        # The layout of ViT files on the Hugging Face hub (also what transformers 5 saves).
        Source(
            name='hf',
            library='hf',
            reference='hf_vit',
            description='Hugging Face ViT (hub file layout)',
            embed=_HF_EMBED,
            block='encoder.layer.{i}.',
            block_rules=(
                *layer_norm('norm1', 'layernorm_before'),
                *linear('attn/qkv', 'attention.attention', _QKV),
                *linear('attn/proj', 'attention.output.dense'),
                *layer_norm('norm2', 'layernorm_after'),
                *linear('mlp/fc1', 'intermediate.dense'),
                *linear('mlp/fc2', 'output.dense'),
            ),
            head=linear('head', 'classifier', group='head'),
            prefixes=('vit.',),
            drop=_HF_DROP,
            layer_norm_eps=1e-12,  # ViTConfig's default.
        ),
        # transformers >= 5 in memory: `model.state_dict()` (it renames to the above when saving).
        Source(
            name='hf_v5',
            library='hf',
            reference='hf_vit',
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
            head=linear('head', 'classifier', group='head'),
            prefixes=('vit.',),
            drop=_HF_DROP,
            layer_norm_eps=1e-12,
        ),
        # CLIPVisionModel, CLIPVisionModelWithProjection and CLIPModel (hub files and modules;
        # transformers 5 names CLIPVisionModel's without the vision_model. of older files).
        Source(
            name='hf_clip',
            library='hf',
            reference='hf_clip',
            description='Hugging Face CLIP vision tower',
            embed=(
                Rule(
                    'patch_embed/kernel',
                    ('embeddings.patch_embedding.weight',),
                    'conv',
                ),
                Rule('cls_token', ('embeddings.class_embedding',), 'class_vector'),
                Rule('pos_embed', ('embeddings.position_embedding.weight',), 'table'),
                *layer_norm('norm_pre', 'pre_layrnorm'),
                # HF normalises the pooled class token; per token, before pooling is the same.
                *layer_norm('norm', 'post_layernorm'),
            ),
            block='encoder.layers.{i}.',
            block_rules=(
                *layer_norm('norm1', 'layer_norm1'),
                *linear('attn/qkv', 'self_attn', ('q_proj', 'k_proj', 'v_proj')),
                *linear('attn/proj', 'self_attn.out_proj'),
                *layer_norm('norm2', 'layer_norm2'),
                *linear('mlp/fc1', 'mlp.fc1'),
                *linear('mlp/fc2', 'mlp.fc2'),
            ),
            drop=(
                (r'^text_model\.|^text_projection\.|^logit_scale$', 'the text tower'),
                (r'^visual_projection\.', 'the image projection visual_projection'),
                (r'(^|\.)position_ids$', 'position_ids buffers (older files)'),
            ),
            prefixes=('vision_model.',),
            layer_norm_eps=1e-5,
            mean=OPENAI_CLIP_MEAN,
            std=OPENAI_CLIP_STD,
            normalisation=CLIP_NORMALISATION,
        ),
        _hf_dinov2(
            'hf_dinov2', 'Hugging Face Dinov2 (hub file layout)', _DINOV2_HUB_ATTENTION, False
        ),
        _hf_dinov2(
            'hf_dinov2_v5',
            'Hugging Face Dinov2 (transformers 5 module layout)',
            _DINOV2_V5_ATTENTION,
            False,
        ),
        _hf_dinov2(
            'hf_dinov2_reg',
            'Hugging Face Dinov2WithRegisters (hub file layout)',
            _DINOV2_HUB_ATTENTION,
            True,
        ),
        _hf_dinov2(
            'hf_dinov2_reg_v5',
            'Hugging Face Dinov2WithRegisters (transformers 5 module layout)',
            _DINOV2_V5_ATTENTION,
            True,
        ),
        # OpenAI's CLIP and open_clip (and FaRL, which is OpenAI's code): the whole CLIP model.
        Source(
            name='openai_clip',
            library='clip',
            reference='openai_clip',
            description='OpenAI / open_clip CLIP image tower',
            embed=(
                Rule('patch_embed/kernel', ('visual.conv1.weight',), 'conv'),
                Rule('cls_token', ('visual.class_embedding',), 'class_vector'),
                Rule('pos_embed', ('visual.positional_embedding',), 'table'),
                *layer_norm('norm_pre', 'visual.ln_pre'),
                *layer_norm('norm', 'visual.ln_post'),
            ),
            block='visual.transformer.resblocks.{i}.',
            block_rules=(
                *layer_norm('norm1', 'ln_1'),
                Rule('attn/qkv/kernel', ('attn.in_proj_weight',), 'linear'),
                Rule('attn/qkv/bias', ('attn.in_proj_bias',), 'vector'),
                *linear('attn/proj', 'attn.out_proj'),
                *layer_norm('norm2', 'ln_2'),
                *linear('mlp/fc1', 'mlp.c_fc'),
                *linear('mlp/fc2', 'mlp.c_proj'),
            ),
            drop=(
                (
                    r'^(transformer|token_embedding|ln_final)\.|'
                    r'^(positional_embedding|text_projection|logit_scale)$',
                    'the text tower',
                ),
                (r'^visual\.proj$', 'the image projection visual.proj'),
                (r'^(input_resolution|context_length|vocab_size)$', "OpenAI's size scalars"),
            ),
            layer_norm_eps=1e-5,
            mean=OPENAI_CLIP_MEAN,
            std=OPENAI_CLIP_STD,
            normalisation=CLIP_NORMALISATION,
        ),
        # google-research/vision_transformer (AugReg) .npz files.
        _flax_vit(
            'augreg',
            'Flax ViT .npz (vision_transformer / AugReg)',
            'Transformer/posembed_input/pos_embedding',
            (1, 2, 3),
            stacked=False,
        ),
        # big_vision .npz files: the position embedding covers the patches only; the encoder
        # may be scanned (one stacked array per parameter).
        _flax_vit(
            'big_vision', 'Flax ViT .npz (big_vision)', 'pos_embedding', (0, 1, 0), stacked=True
        ),
    )
}
LIBRARIES = tuple(dict.fromkeys(s.library for s in SOURCES.values()))

# Features of other ViT families, recognised by a name, that the Flax ViT does not implement.
UNSUPPORTED = (
    (
        r'relative_position_bias_table|relative_position_index|(^|\.)rel_pos',
        'relative position bias (BEiT, Swin)',
    ),
    (r'^visual\.layer\d\.', 'a ResNet image tower (CLIP RN50 / RN101)'),
    (
        r'(^|\.)(dist_token|distillation_token)$|(^|\.)head_dist\.',
        'a distillation token (DeiT distilled)',
    ),
    (
        r'(^|\.)attn_?pool\.|(^|/)MAPHead_0/',
        "attention pooling (timm global_pool='map', big_vision MAP head)",
    ),
    (r'\.(q_norm|k_norm)\.', 'query/key normalisation (qk_norm)'),
    (
        r'\.mlp\.(fc1_g|fc1_x|w12|w3|weights_in|weights_out|gate_proj|up_proj)\.',
        'a SwiGLU MLP (DINOv2 giant)',
    ),
    (
        r'\.(attn|mlp)\.norm\.|\.ln_(attn|inner)\.',
        'LayerNorms inside attention / the MLP (NormFormer-style scale_attn / scale_mlp norms)',
    ),
    (
        r'^heads\.pre_logits\.|(^|/)pre_logits/',
        'a pre-logits layer (representation_size); --ignore it and convert with --num_classes '
        'to use the backbone without it',
    ),
)
SUPPORTED = (
    'ViTs of timm (class token or average pooling, fc_norm, pre-norm, LayerScale, registers, '
    'no_embed_class), torchvision, Hugging Face (ViT, CLIP vision tower, Dinov2, '
    'Dinov2WithRegisters), OpenAI / open_clip CLIP image towers, Flax .npz (AugReg, big_vision)'
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


def _fit(state: Mapping[str, Any], source: Source) -> int | None:
  """How well `state` fits `source`: names it explains minus required names it lacks, or None
  when it lacks the layout's patch embedding or blocks."""
  names = source.normalise(state)
  indices = source.block_indices(names)
  if source.signature not in names or not indices:
    return None
  rules = source.rules(indices[-1] + 1)
  known = {n for r in rules for n in r.sources}
  required = {n for r in rules if not r.group for n in r.sources}
  explained = sum(1 for n in names if n in known or source.dropped(n))
  return explained - len(required - set(names))


def detect(
    state: Mapping[str, Any], library: str | None = None, reference: str | None = None
) -> Source:
  """The layout (of `library` / `reference`, or of any) that fits the names of `state` best.

  Layouts can share a patch-embedding name and block prefix (Hugging Face ViT and Dinov2, with
  and without registers), so each candidate is scored on all its names.

  Raises:
    ValueError: an unknown library, or no layout with the checkpoint's patch embedding and
      blocks.
  """
  candidates = [
      s
      for s in SOURCES.values()
      if library in (None, s.library) and reference in (None, s.reference)
  ]
  if not candidates:
    raise ValueError(f'Unknown source {library!r}: expected auto or one of {LIBRARIES}.')
  fits = [(fit, i) for i, s in enumerate(candidates) if (fit := _fit(state, s)) is not None]
  if fits:
    return candidates[max(fits, key=lambda f: (f[0], -f[1]))[1]]
  expected = ', '.join(
      dict.fromkeys(f'{s.signature} + {s.block.format(i="N")}*' for s in candidates)
  )
  raise ValueError(
      f'Unrecognised checkpoint{f" for --source {library}" if library else ""}: '
      f'no patch embedding and blocks of a known ViT layout ({expected}). Its first '
      f'keys: {sorted(state)[:8]}. Supported: {SUPPORTED}.'
  )


def rename(state: Mapping[str, Any], source: Source, target: Source, depth: int) -> dict[str, Any]:
  """`state` (normalised names of `source`) under `target`'s names: the same rules, relabelled."""
  mapping = {}
  for a, b in zip(source.rules(depth), target.rules(depth)):
    mapping.update(zip(a.sources, b.sources))
  return {mapping.get(k, k): v for k, v in state.items()}
