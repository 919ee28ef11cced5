"""The optimizer: AdamW with warm-up + cosine on trainable parameters, nothing on frozen ones.

`optax.multi_transform` routes trainable leaves to AdamW and frozen leaves to `set_to_zero`,
which keeps no state: the optimizer holds moments only for the trainable parameters.

Layer-wise lr decay (`optim.layer_decay` < 1, for fine-tuning a whole backbone, as BEiT and
timm's `param_groups_layer_decay`): the update of block i of a depth-L ViT is scaled by
decay^(L - i), the embeddings' by decay^(L + 1), everything after the blocks (final norm, head)
by 1. Scaling AdamW's whole update scales its weight decay with its lr, as a per-group lr does.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from feadapter_jax import partition


def schedule(
    optim: ml_collections.ConfigDict, total_steps: int, warmup_steps: int
) -> optax.Schedule:
  """Linear warm-up to `optim.lr`, then cosine decay to `optim.lr * optim.end_lr_factor`."""
  warmup = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=optim.lr,
      warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=optim.lr * optim.end_lr_factor,
  )


EMBEDDING_PATTERN = r'(patch_embed|cls_token|reg_token|pos_embed)(/.*)?'


def layer_decay_rules(depth: int, decay: float) -> list[tuple[str, float]]:
  """[(regex, lr scale)] of layer-wise lr decay over a depth-`depth` ViT's parameter names."""
  rules = [(EMBEDDING_PATTERN, decay ** (depth + 1))]
  rules += [(rf'blocks_{i}/.*', decay ** (depth - i)) for i in range(depth)]
  return rules + [('.*', 1.0)]


def _scale_by_rules(rules: list[tuple[str, float]]) -> optax.GradientTransformation:
  """Multiplies each update by the value of the first rule matching its name."""

  def update(updates, state, params=None):
    del params
    scales = partition.match(updates, rules)
    return jax.tree.map(lambda u, s: u * s, updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make(
    optim: ml_collections.ConfigDict,
    mask: Any,
    total_steps: int,
    warmup_steps: int = 0,
    depth: int = 0,
) -> optax.GradientTransformation:
  """AdamW for leaves where `mask` is True, `set_to_zero` (stateless) elsewhere.

  Args:
    optim: `config.optim`: lr, end_lr_factor, b1, b2, eps, weight_decay,
      weight_decay_rules [(regex, bool)], grad_clip_norm (0 = off), layer_decay (1 = off).
    mask: trainable mask (`partition.trainable_mask`).
    total_steps: training length, for the schedule.
    warmup_steps: linear warm-up length.
    depth: the ViT's number of blocks (for layer_decay).

  Raises:
    ValueError: layer_decay outside (0, 1], or < 1 without a depth.
  """
  layer_decay = optim.get('layer_decay', 1.0)
  if not 0.0 < layer_decay <= 1.0:
    raise ValueError(f'config.optim.layer_decay={layer_decay} must be in (0, 1] (1: off).')
  if layer_decay < 1.0 and depth < 1:
    raise ValueError('config.optim.layer_decay < 1 needs the backbone depth (config.model.depth).')
  rules = [tuple(rule) for rule in optim.weight_decay_rules]
  trainable_tx = optax.chain(
      optax.clip_by_global_norm(optim.grad_clip_norm) if optim.grad_clip_norm else optax.identity(),
      optax.adamw(
          schedule(optim, total_steps, warmup_steps),
          b1=optim.b1,
          b2=optim.b2,
          eps=optim.eps,
          weight_decay=optim.weight_decay,
          # A callable: it sees the trainable subtree (frozen leaves masked out).
          mask=lambda params: partition.match(params, rules),
      ),
      (
          _scale_by_rules(layer_decay_rules(depth, layer_decay))
          if layer_decay < 1.0
          else optax.identity()
      ),
  )
  return optax.multi_transform(
      {partition.TRAINABLE: trainable_tx, partition.FROZEN: optax.set_to_zero()},
      partition.labels(mask),
  )
