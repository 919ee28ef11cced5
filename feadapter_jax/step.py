"""Pure train and eval steps. The loop (`train.py`) jits them with shardings and donation.

Train state: a plain dict `{'params', 'opt', 'step', 'rng'}`. Frozen parameters pass through
`partition.stop_frozen`, so autodiff never computes their gradients (their gradient leaves are
symbolic zeros that `set_to_zero` keeps and XLA folds away).

Batches hold uint8 pixels, as the input pipeline makes them (a quarter of float32's host memory
and host-to-device transfer); the steps normalise them on the device (`normalise_video`) with the
config's `data.mean` and `data.std` into the model's compute dtype.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

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


def init_state(model: nn.Module, tx: optax.GradientTransformation, params: Any, seed: int) -> State:
  return {
      'params': params,
      'opt': tx.init(params),
      'step': jnp.zeros((), jnp.int32),
      'rng': jax.random.PRNGKey(seed),
  }


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    mask: Any,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    label_smoothing: float = 0.0,
    grad_accum_steps: int = 1,
) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]:
  """Returns `train_step(state, batch) -> (state, metrics)`.

  batch: {'video': (b, t, H, W, 3) uint8, 'label': (b,)}, the video normalised with `mean` and
  `std` (`normalise_video`) into `model.dtype`; with `grad_accum_steps` = k the batch is split
  into k micro-batches of b / k whose gradients are averaged (same update, less memory).
  """

  def loss_fn(params, video, label, rng):
    logits = model.apply(
        {'params': partition.stop_frozen(params, mask)},
        normalise_video(video, mean, std, model.dtype),
        train=True,
        rngs={'dropout': rng},
    )
    targets = optax.smooth_labels(jax.nn.one_hot(label, logits.shape[-1]), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
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
    return {**state, 'params': params, 'opt': opt, 'step': state['step'] + 1}, metrics

  return train_step


def make_eval_step(
    model: nn.Module, *, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Any, Batch], jax.Array]:
  """Returns `eval_step(params, batch) -> probabilities (b, classes)`.

  batch['video']: (b, clips, t, H, W, 3) uint8, normalised with `mean` and `std`
  (`normalise_video`) into `model.dtype`; the softmax is averaged over the temporal clips.
  """

  def eval_step(params, batch):
    clips = batch['video'].shape[1]
    video = einops.rearrange(batch['video'], 'b n ... -> (b n) ...')
    video = normalise_video(video, mean, std, model.dtype)
    probs = jax.nn.softmax(model.apply({'params': params}, video).astype(jnp.float32), -1)
    return einops.reduce(probs, '(b n) k -> b k', 'mean', n=clips)

  return eval_step
