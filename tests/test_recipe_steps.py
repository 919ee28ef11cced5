"""The training recipe's device-side parts: Mixup / CutMix of clips (one box for every frame,
targets mixed by the pixels' share), the class-weighted loss, the EMA of the trainable
parameters and layer-wise lr decay, each against a value computed by hand."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from feadapter_jax import mixup, models, optim, partition, step
from tests import test_partition
from tests.test_step import MEAN, STD, host_normalised, perturbed_params, pixels
from tests.tiny import ADAPTERS, tiny

MIX = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)


def _batch(b=4, t=3, size=16, classes=5):
  video = jnp.asarray(np.random.default_rng(0).normal(size=(b, t, size, size, 3)), jnp.float32)
  targets = jax.nn.one_hot(jnp.arange(b) % classes, classes)
  return video, targets


def test_mixup_blends_each_clip_with_its_mirror_by_the_target_weight():
  video, targets = _batch()
  config = dict(MIX, cutmix_alpha=0.0)
  mixed, mixed_targets = mixup.mix(jax.random.key(3), video, targets, config)
  lam = float(mixed_targets[0, 0])  # clip 0 is class 0, its mirror class 3
  assert 0.0 < lam < 1.0 and float(mixed_targets[0, 3]) == pytest.approx(1 - lam, abs=1e-6)
  np.testing.assert_allclose(mixed, lam * video + (1 - lam) * video[::-1], atol=1e-5)
  np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, atol=1e-6)


def test_cutmix_pastes_one_box_in_every_frame_and_weighs_targets_by_its_area():
  video, targets = _batch(size=32)
  config = dict(MIX, mixup_alpha=0.0)
  areas = []
  for seed in range(8):
    mixed, mixed_targets = mixup.mix(jax.random.key(seed), video, targets, config)
    from_partner = np.asarray(mixed == video[::-1]).all(-1) & ~np.asarray(mixed == video).all(-1)
    box = from_partner[0, 0]
    assert (from_partner == box).all(), 'the box differs between frames or clips'
    lam = float(mixed_targets[0, 0])
    assert box.mean() == pytest.approx(1 - lam, abs=1e-6)
    areas.append(box.mean())
  assert len(set(areas)) > 4  # boxes of different sizes


def test_mixing_is_off_with_probability_zero_and_repeats_with_the_key():
  video, targets = _batch()
  same, same_targets = mixup.mix(jax.random.key(0), video, targets, dict(MIX, prob=0.0))
  np.testing.assert_array_equal(same, video)
  np.testing.assert_array_equal(same_targets, targets)
  first = mixup.mix(jax.random.key(5), video, targets, MIX)
  again = mixup.mix(jax.random.key(5), video, targets, MIX)
  np.testing.assert_array_equal(first[0], again[0])


@pytest.mark.parametrize(
    'field,value', [('mixup_alpha', -1.0), ('prob', 1.5), ('switch_prob', -0.1)]
)
def test_bad_mixup_settings_name_the_field(field, value):
  with pytest.raises(ValueError, match=f'config.mixup.{field}'):
    mixup.check_config(dict(MIX, **{field: value}))


def _tiny_run(**step_kwargs):
  model = models.build(tiny(ADAPTERS['fe'], num_classes=5))
  batch = {'video': pixels((4, 4, 32, 32, 3)), 'label': np.array([0, 1, 1, 3], np.int32)}
  params = perturbed_params(model, (1, 4, 32, 32, 3))
  mask = partition.trainable_mask(params, test_partition.TRAINABLE)
  tx = optim.make(test_partition.OPTIM, mask, total_steps=10)
  ema = step_kwargs.get('ema_decay', 0.0)
  state = step.init_state(model, tx, params, seed=0, ema_mask=mask if ema else None)
  train_step = jax.jit(step.make_train_step(model, tx, mask, mean=MEAN, std=STD, **step_kwargs))
  return model, batch, params, mask, state, train_step


def test_class_weighted_loss_is_the_weighted_mean():
  weights = np.array([1.0, 0.5, 2.0, 4.0, 1.0], np.float32)
  model, batch, params, _, state, train_step = _tiny_run(class_weights=weights)
  _, metrics = train_step(state, batch)
  logits = model.apply({'params': params}, host_normalised(batch['video']))
  losses = optax.softmax_cross_entropy(logits, jax.nn.one_hot(batch['label'], 5))
  w = weights[batch['label']]
  expected = float(np.sum(w * losses) / np.sum(w))
  assert float(metrics['loss']) == pytest.approx(expected, abs=1e-5)
  assert abs(expected - float(losses.mean())) > 1e-3  # the weights matter for this batch


def test_ema_follows_the_trainable_parameters_only():
  decay = 0.9
  _, batch, params, mask, state, train_step = _tiny_run(ema_decay=decay)
  assert set(partition.flatten(state['ema'])) == set(
      partition.flatten(partition.subtree(params, mask))
  )
  new, _ = train_step(state, batch)
  new = jax.device_get(new)
  before = partition.flatten(state['ema'])
  after_params = partition.flatten(new['params'])
  for name, average in partition.flatten(new['ema']).items():
    np.testing.assert_allclose(
        average, decay * before[name] + (1 - decay) * after_params[name], rtol=0, atol=1e-6
    )
  evaluated = partition.flatten(step.ema_params(new))
  head = 'head/kernel'
  np.testing.assert_array_equal(evaluated[head], partition.flatten(new['ema'])[head])
  frozen = [n for n in evaluated if n not in before]
  assert frozen and all(np.array_equal(evaluated[n], after_params[n]) for n in frozen)
  assert not np.allclose(evaluated[head], after_params[head])


def test_layer_decay_scales_each_blocks_update():
  depth, decay = 3, 0.5
  params = {
      'patch_embed': {'kernel': jnp.ones((2,))},
      **{f'blocks_{i}': {'mlp': {'kernel': jnp.ones((2,))}} for i in range(depth)},
      'head': {'kernel': jnp.ones((2,))},
  }
  mask = jax.tree.map(lambda _: True, params)
  config = ml_collections.ConfigDict(
      dict(test_partition.OPTIM, weight_decay=0.0, grad_clip_norm=0.0)
  )

  def first_update(layer_decay):
    config.layer_decay = layer_decay
    tx = optim.make(config, mask, total_steps=10, depth=depth)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    return {name: float(u[0]) for name, u in partition.flatten(updates).items()}

  plain, decayed = first_update(1.0), first_update(decay)
  expected = {'patch_embed/kernel': decay**4, 'head/kernel': 1.0}
  expected.update({f'blocks_{i}/mlp/kernel': decay ** (depth - i) for i in range(depth)})
  for name, scale in expected.items():
    assert decayed[name] == pytest.approx(plain[name] * scale, rel=1e-6), name
  with pytest.raises(ValueError, match='config.optim.layer_decay'):
    first_update(1.5)
