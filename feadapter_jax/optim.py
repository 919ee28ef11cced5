"""The optimizer: AdamW with warm-up + cosine on trainable parameters, nothing on frozen ones.

`optax.multi_transform` routes trainable leaves to AdamW and frozen leaves to `set_to_zero`,
which keeps no state: the optimizer holds moments only for the trainable parameters.
"""

from __future__ import annotations

from typing import Any

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


def make(
    optim: ml_collections.ConfigDict, mask: Any, total_steps: int, warmup_steps: int = 0
) -> optax.GradientTransformation:
  """AdamW for leaves where `mask` is True, `set_to_zero` (stateless) elsewhere.

  Args:
    optim: `config.optim`: lr, end_lr_factor, b1, b2, eps, weight_decay,
      weight_decay_rules [(regex, bool)], grad_clip_norm (0 = off).
    mask: trainable mask (`partition.trainable_mask`).
    total_steps: training length, for the schedule.
    warmup_steps: linear warm-up length.
  """
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
  )
  return optax.multi_transform(
      {partition.TRAINABLE: trainable_tx, partition.FROZEN: optax.set_to_zero()},
      partition.labels(mask),
  )
