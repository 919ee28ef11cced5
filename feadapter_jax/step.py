"""Pure train and eval steps. The loop (`train.py`) jits them with shardings and donation.

Train state: a plain dict `{'params', 'opt', 'step', 'rng'}`, plus `'ema'` (an exponential
moving average of the trainable parameters, `ema_params` merges it with the frozen ones) when
`ema_decay` > 0. Frozen parameters pass through `partition.stop_frozen`, so autodiff never
computes their gradients (their gradient leaves are symbolic zeros that `set_to_zero` keeps and
XLA folds away).

The loss is cross-entropy against label-smoothed one-hot targets, mixed by `mixup.mix` when
`config.mixup` is on, and weighted per class when `class_weights` are given: a clip's weight is
its target's weight (`targets @ class_weights`), and the batch loss is the weighted mean (as
PyTorch's `CrossEntropyLoss(weight=...)`).

Batches hold uint8 pixels, as the input pipeline makes them (a quarter of float32's host memory
and host-to-device transfer); the steps normalise them on the device (`normalise_video`) with the
config's `data.mean` and `data.std` into the model's compute dtype.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from feadapter_jax import mixup as mixup_lib
from feadapter_jax import partition

State = dict[str, Any]
Batch = dict[str, jax.Array]


def normalise_video(
    video: jax.Array, mean: Sequence[float], std: Sequence[float], dtype: Any
) -> jax.Array:
  """uint8 pixels `(..., 3)` -> `(pixels / 255 - mean) / std` in `dtype`, computed in float32.

  The one normalisation of model inputs. mean and std are per channel in [0, 1] pixel units.

  Raises:
    TypeError: `video` is not uint8 (a float batch is normalised already, or not pixels).
  """
  if video.dtype != jnp.uint8:
    raise TypeError(
        f'The steps take uint8 video (pixels in [0, 255]) and normalise it themselves; got '
        f'{video.dtype}. Pass the frames as the input pipeline makes them, not normalised floats.'
    )
  std = np.asarray(std, np.float32)
  scale, shift = 1.0 / (255.0 * std), -np.asarray(mean, np.float32) / std
  return (jnp.asarray(video, jnp.float32) * scale + shift).astype(dtype)


def init_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    params: Any,
    seed: int,
    *,
    ema_mask: Any = None,
) -> State:
  """The state at step 0; with `ema_mask` (the trainable mask) it holds an EMA of those leaves."""
  del model  # the signature of every state builder; the parameters are given
  state = {
      'params': params,
      'opt': tx.init(params),
      'step': jnp.zeros((), jnp.int32),
      'rng': jax.random.PRNGKey(seed),
  }
  if ema_mask is not None:
    state['ema'] = partition.subtree(params, ema_mask)
  return state


def ema_params(state: State) -> Any:
  """The parameters evaluation and export use: the EMA of the trainable ones where the state has
  one, merged with the frozen ones; the parameters themselves otherwise."""
  if 'ema' not in state:
    return state['params']
  averaged = partition.flatten(state['ema'])
  return jax.tree.map(
      lambda name, leaf: averaged.get(name, leaf), partition.names(state['params']), state['params']
  )


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    mask: Any,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    label_smoothing: float = 0.0,
    grad_accum_steps: int = 1,
    mixup: Mapping[str, Any] | None = None,
    class_weights: Sequence[float] | None = None,
    ema_decay: float = 0.0,
) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]:
  """Returns `train_step(state, batch) -> (state, metrics)`.

  batch: {'video': (b, t, H, W, 3) uint8, 'label': (b,)}, the video normalised with `mean` and
  `std` (`normalise_video`) into `model.dtype`; with `grad_accum_steps` = k the batch is split
  into k micro-batches of b / k whose gradients are averaged (same update, less memory), each
  micro-batch mixed on its own by `mixup` (`config.mixup`; None or alphas 0: off).
  `class_weights`: (classes,) loss weights, None: all 1. `ema_decay` > 0 updates `state['ema']`
  (made by `init_state(..., ema_mask=mask)`) after every step. Metrics: loss, accuracy (argmax
  against the clip's own label, mixed or not), grad_norm.
  """
  mixes = mixup is not None and mixup_lib.enabled(mixup)
  weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

  def loss_fn(params, video, label, rng):
    dropout_key, mix_key = jax.random.split(rng)
    video = normalise_video(video, mean, std, model.dtype)
    num_classes = model.num_classes
    targets = optax.smooth_labels(jax.nn.one_hot(label, num_classes), label_smoothing)
    if mixes:
      video, targets = mixup_lib.mix(mix_key, video, targets, mixup)
    logits = model.apply(
        {'params': partition.stop_frozen(params, mask)},
        video,
        train=True,
        rngs={'dropout': dropout_key},
    )
    losses = optax.softmax_cross_entropy(logits, targets)
    if weights is None:
      loss = losses.mean()
    else:
      clip_weights = targets @ weights
      loss = jnp.sum(clip_weights * losses) / jnp.sum(clip_weights)
    return loss, jnp.mean(jnp.argmax(logits, -1) == label)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: State, batch: Batch):
    # Dropout/stochastic-depth randomness from (seed, step): a resumed run repeats it exactly.
    rng = jax.random.fold_in(state['rng'], state['step'])
    micro = jax.tree.map(
        lambda x: einops.rearrange(x, '(k b) ... -> k b ...', k=grad_accum_steps), batch
    )

    def accumulate(carry, inputs):
      i, mb = inputs
      (loss, acc), grads = grad_fn(
          state['params'], mb['video'], mb['label'], jax.random.fold_in(rng, i)
      )
      return jax.tree.map(jnp.add, carry, (loss, acc, grads)), None

    zeros = (0.0, 0.0, jax.tree.map(jnp.zeros_like, state['params']))
    if grad_accum_steps == 1:
      (loss, acc), grads = grad_fn(state['params'], batch['video'], batch['label'], rng)
    else:
      (loss, acc, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro))
      loss, acc, grads = jax.tree.map(lambda x: x / grad_accum_steps, (loss, acc, grads))
    updates, opt = tx.update(grads, state['opt'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = {'loss': loss, 'accuracy': acc, 'grad_norm': optax.tree.norm(grads)}
    new_state = {**state, 'params': params, 'opt': opt, 'step': state['step'] + 1}
    if ema_decay:
      new_state['ema'] = jax.tree.map(
          lambda average, p: ema_decay * average + (1.0 - ema_decay) * p,
          state['ema'],
          partition.subtree(params, mask),
      )
    return new_state, metrics

  return train_step


def make_eval_step(
    model: nn.Module, *, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Any, Batch], jax.Array]:
  """Returns `eval_step(params, batch) -> probabilities (b, classes)`.

  batch['video']: (b, views, t, H, W, 3) uint8 (views: the test clips x crops of each video,
  `pipeline.eval_clip`), normalised with `mean` and `std` (`normalise_video`) into
  `model.dtype`; the softmax is averaged over the views.
  """

  def eval_step(params, batch):
    clips = batch['video'].shape[1]
    video = einops.rearrange(batch['video'], 'b n ... -> (b n) ...')
    video = normalise_video(video, mean, std, model.dtype)
    probs = jax.nn.softmax(model.apply({'params': params}, video).astype(jnp.float32), -1)
    return einops.reduce(probs, '(b n) k -> b k', 'mean', n=clips)

  return eval_step
