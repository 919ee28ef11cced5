"""Freezing through Optax: regex labels, no update and no state for frozen parameters,
no gradient computation for them, and the same step on one device and on an 8-device mesh."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from feadapter_jax import models, optim, partition, sharding, step
from tests.tiny import tiny

TRAINABLE = ('.*adapter.*', 'head/.*')
# The steps normalise uint8 batches with these.
NORMALISATION = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
OPTIM = ml_collections.ConfigDict(
    dict(
        lr=1e-2,
        end_lr_factor=0.1,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=0.05,
        weight_decay_rules=[('.*(bias|scale|cls_token|pos_embed)', False), ('.*', True)],
        grad_clip_norm=1.0,
    )
)


def setup(patterns=TRAINABLE, adapter=dict(kind='fe', width=8), batch_size=8):
  model = models.build(tiny(adapter))
  batch = {
      'video': jax.random.randint(jax.random.key(1), (batch_size, 4, 32, 32, 3), 0, 256, jnp.uint8),
      'label': jnp.arange(batch_size) % 5,
  }
  params = model.init(jax.random.key(0), jnp.zeros(batch['video'].shape))['params']
  mask = partition.trainable_mask(params, patterns)
  tx = optim.make(OPTIM, mask, total_steps=10)
  return model, tx, mask, step.init_state(model, tx, params, seed=0), batch


def test_match_first_rule_wins_and_unmatched_leaf_fails():
  tree = {'a': {'kernel': 1, 'bias': 2}, 'b': {'kernel': 3}}
  assert partition.match(tree, [('a/.*', 'x'), ('.*kernel', 'y'), ('.*', 'z')]) == {
      'a': {'kernel': 'x', 'bias': 'x'},
      'b': {'kernel': 'y'},
  }
  with pytest.raises(ValueError, match="'b/kernel'"):
    partition.match(tree, [('a/.*', 1)])


def test_patterns_that_match_nothing_or_freeze_everything_fail_clearly():
  model, _, _, state, _ = setup()
  with pytest.raises(ValueError, match=r"'.\*adaptr.\*' matches no parameter"):
    partition.trainable_mask(state['params'], ['.*adaptr.*', 'head/.*'])
  with pytest.raises(ValueError, match='leave no parameter trainable'):
    partition.trainable_mask(state['params'], [])


def test_frozen_leaves_bit_identical_trainable_changed_and_state_only_for_trainable():
  model, tx, mask, state, batch = setup()
  params0 = partition.flatten(state['params'])
  train_step = jax.jit(step.make_train_step(model, tx, mask, **NORMALISATION))
  for _ in range(3):
    state, metrics = train_step(state, batch)
  params = partition.flatten(state['params'])
  trainable = partition.flatten(mask)
  assert sum(trainable.values()) and sum(not t for t in trainable.values())
  for name, value in params.items():
    if trainable[name]:
      assert not np.array_equal(value, params0[name]), f'{name} did not train'
    else:
      np.testing.assert_array_equal(value, params0[name], err_msg=name)
  n_trainable = sum(partition.size(v) for n, v in params.items() if trainable[n])
  opt_leaves = jax.tree.leaves(state['opt'])
  # Adam's two moments for trainable leaves; beyond that only scalar counters.
  assert sum(partition.size(x) for x in opt_leaves if x.ndim) == 2 * n_trainable
  assert all(x.size == 1 for x in opt_leaves if not x.ndim)
  assert np.isfinite(float(metrics['loss']))


def test_full_finetuning_trains_every_leaf():
  model, tx, mask, state, batch = setup(patterns=('.*',), adapter=None)
  params0 = partition.flatten(state['params'])
  state, _ = jax.jit(step.make_train_step(model, tx, mask, **NORMALISATION))(state, batch)
  assert all(
      not np.array_equal(v, params0[n]) for n, v in partition.flatten(state['params']).items()
  )


def flops(fn, *args):
  return jax.jit(fn).lower(*args).compile().cost_analysis()['flops']


def test_frozen_weights_get_no_gradient_computation():
  # Weight gradients are a third of a block's FLOPs: frozen ones must not be computed.
  adapter_model, adapter_tx, adapter_mask, adapter_state, batch = setup(
      patterns=('head/.*',), adapter=None
  )
  full_model, full_tx, full_mask, full_state, _ = setup(patterns=('.*',), adapter=None)
  probe = flops(
      step.make_train_step(adapter_model, adapter_tx, adapter_mask, **NORMALISATION),
      adapter_state,
      batch,
  )
  full = flops(
      step.make_train_step(full_model, full_tx, full_mask, **NORMALISATION), full_state, batch
  )
  forward = flops(
      lambda p, v: full_model.apply({'params': p}, v), full_state['params'], batch['video']
  )
  assert full > 2.3 * forward
  assert probe < 1.3 * forward  # the head's gradient needs no backward pass through blocks


def test_step_on_an_8_device_mesh_equals_one_device():
  assert jax.device_count() == 8
  model, tx, mask, state, batch = setup()
  train_step = step.make_train_step(model, tx, mask, **NORMALISATION)
  single, m_single = jax.jit(train_step)(state, batch)

  mesh = sharding.make_mesh([('data', -1)])
  state_sh = sharding.state_shardings(state, mesh, [('.*', 'replicate')])
  batch_sh = sharding.batch_sharding(mesh)
  sharded_batch = jax.device_put(batch, batch_sh)
  assert len(sharded_batch['video'].sharding.device_set) == 8
  sharded_step = jax.jit(
      train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None)
  )
  multi, m_multi = sharded_step(jax.device_put(state, state_sh), sharded_batch)
  np.testing.assert_allclose(m_multi['loss'], m_single['loss'], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(multi['params']), jax.tree.leaves(single['params'])):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_fsdp_rules_split_large_leaves_over_the_fsdp_axis():
  _, _, _, state, _ = setup()
  mesh = sharding.make_mesh([('data', 2), ('fsdp', 4)])
  shardings = sharding.state_shardings(state, mesh, [('.*', 'fsdp')])
  spec = shardings['params']['blocks_0']['mlp']['fc1']['kernel'].spec
  assert spec == jax.sharding.PartitionSpec(None, 'fsdp')  # (32, 64): 64 is the larger axis
  assert shardings['step'].spec == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match='needs 16 devices'):
    sharding.make_mesh([('data', 4), ('fsdp', 4)])


def test_grad_accumulation_gives_the_same_update():
  model, tx, mask, state, batch = setup()
  one, m1 = jax.jit(step.make_train_step(model, tx, mask, **NORMALISATION))(state, batch)
  two, m2 = jax.jit(step.make_train_step(model, tx, mask, grad_accum_steps=2, **NORMALISATION))(
      state, batch
  )
  np.testing.assert_allclose(m1['loss'], m2['loss'], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(one['params']), jax.tree.leaves(two['params'])):
    np.testing.assert_allclose(a, b, atol=1e-5)
