"""The steps take uint8 batches and normalise them on the device: the same values as the float32
batches normalised on the host that they replace, and a float batch is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from feadapter_jax import models, optim, partition, step
from tests import test_partition
from tests.tiny import ADAPTERS, tiny

MEAN, STD = common.IMAGENET_MEAN, common.IMAGENET_STD
LABEL_SMOOTHING = 0.1


def host_normalised(video):
  """The float32 normalisation the input pipeline applied before it shipped uint8."""
  std = np.asarray(STD, np.float32)
  scale, shift = 1.0 / (255.0 * std), -np.asarray(MEAN, np.float32) / std
  return np.asarray(video).astype(np.float32) * scale + shift


def pixels(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, np.uint8)


def perturbed_params(model, shape):
  """Random params with the zero-initialised adapter layers made non-zero, so they act."""
  params = model.init(jax.random.key(0), jnp.zeros(shape))['params']
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return treedef.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def test_normalise_video_is_the_host_normalisation_to_an_ulp():
  video = pixels((2, 4, 32, 32, 3))
  device = jax.jit(lambda v: step.normalise_video(v, MEAN, STD, jnp.float32))(video)
  assert device.dtype == jnp.float32
  # Measured: at most 2.4e-7 apart (one float32 ulp at |x| ~ 2; XLA fuses the multiply-add).
  np.testing.assert_allclose(device, host_normalised(video), rtol=0, atol=5e-7)
  every_level = np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, -1)
  np.testing.assert_allclose(
      step.normalise_video(every_level, MEAN, STD, jnp.float32),
      (every_level / 255.0 - np.asarray(MEAN)) / np.asarray(STD),
      rtol=0,
      atol=1e-6,
  )
  assert step.normalise_video(video, MEAN, STD, jnp.bfloat16).dtype == jnp.bfloat16


def test_eval_step_probabilities_equal_the_host_normalised_path():
  model = models.build(tiny(ADAPTERS['fe'], num_classes=5))
  video = pixels((3, 2, 4, 32, 32, 3))  # (b, clips, t, S, S, 3)
  params = perturbed_params(model, (1, 4, 32, 32, 3))

  probs = jax.jit(step.make_eval_step(model, mean=MEAN, std=STD))(params, {'video': video})

  flat = host_normalised(video).reshape(6, 4, 32, 32, 3)
  host = jax.nn.softmax(model.apply({'params': params}, flat), -1).reshape(3, 2, 5).mean(1)
  # Measured: 6e-8 apart at most (the normalisation's ulp, through the model), not bitwise.
  np.testing.assert_allclose(probs, host, rtol=0, atol=1e-6)


def test_train_step_loss_equals_the_host_normalised_path():
  model = models.build(tiny(ADAPTERS['fe'], num_classes=5))
  batch = {'video': pixels((4, 4, 32, 32, 3)), 'label': np.array([0, 1, 2, 3], np.int32)}
  params = perturbed_params(model, (1, 4, 32, 32, 3))
  mask = partition.trainable_mask(params, test_partition.TRAINABLE)
  tx = optim.make(test_partition.OPTIM, mask, total_steps=10)
  state = step.init_state(model, tx, params, seed=0)
  train_step = step.make_train_step(
      model, tx, mask, mean=MEAN, std=STD, label_smoothing=LABEL_SMOOTHING
  )

  _, metrics = jax.jit(train_step)(state, batch)

  logits = model.apply(
      {'params': params},
      host_normalised(batch['video']),
      train=True,
      rngs={'dropout': jax.random.fold_in(state['rng'], 0)},
  )
  targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], 5), LABEL_SMOOTHING)
  host_loss = optax.softmax_cross_entropy(logits, targets).mean()
  # Measured: 2.4e-7 apart at most (a loss of ~1.77), 0 for some batches.
  np.testing.assert_allclose(metrics['loss'], host_loss, rtol=0, atol=1e-6)


@pytest.mark.parametrize('dtype', [np.float32, np.int32])
def test_steps_refuse_video_that_is_not_uint8(dtype):
  model = models.build(tiny(num_classes=5))
  params = model.init(jax.random.key(0), jnp.zeros((1, 2, 32, 32, 3)))['params']
  mask = partition.trainable_mask(params, ('head/.*',))
  tx = optim.make(test_partition.OPTIM, mask, total_steps=10)
  state = step.init_state(model, tx, params, seed=0)
  video = np.zeros((2, 2, 32, 32, 3), dtype)
  name = np.dtype(dtype).name
  with pytest.raises(TypeError, match=f'uint8 video .* got {name}'):
    jax.jit(step.make_train_step(model, tx, mask, mean=MEAN, std=STD))(
        state, {'video': video, 'label': np.zeros(2, np.int32)}
    )
  with pytest.raises(TypeError, match=f'uint8 video .* got {name}'):
    jax.jit(step.make_eval_step(model, mean=MEAN, std=STD))(params, {'video': video[:, None]})
