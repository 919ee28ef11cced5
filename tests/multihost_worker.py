"""One process of a multi-process test: the trainer's real sharded step on fixed global batches.

  python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS

Prints the losses of 4 steps as JSON. With NUM_PROCESSES=1 it is the single-process reference.
"""

import json
import os
import sys

process_id, num_processes, port, local_devices = map(int, sys.argv[1:5])
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={local_devices}'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top

if num_processes > 1:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=f'localhost:{port}', num_processes=num_processes, process_id=process_id
  )

import numpy as np  # pylint: disable=g-import-not-at-top

from feadapter_jax import models, optim, partition, sharding, step  # pylint: disable=g-import-not-at-top
from feadapter_jax.data import pipeline  # pylint: disable=g-import-not-at-top
from tests import test_partition  # pylint: disable=g-import-not-at-top
from tests.tiny import tiny  # pylint: disable=g-import-not-at-top

GLOBAL_BATCH = 8
model = models.build(tiny(dict(kind='fe', width=8)))
rng = np.random.default_rng(0)
batches = [
    {
        'video': rng.integers(0, 256, (GLOBAL_BATCH, 4, 32, 32, 3), np.uint8),
        'label': rng.integers(0, 5, GLOBAL_BATCH).astype(np.int32),
    }
    for _ in range(4)
]
params = model.init(jax.random.PRNGKey(0), np.zeros((1, 4, 32, 32, 3), np.float32))['params']
mask = partition.trainable_mask(params, test_partition.TRAINABLE)
tx = optim.make(test_partition.OPTIM, mask, total_steps=10)
mesh = sharding.make_mesh([('data', -1)])
state_sh = sharding.state_shardings(
    jax.eval_shape(lambda: step.init_state(model, tx, params, 0)), mesh, [('.*', 'replicate')]
)
state = jax.jit(lambda: step.init_state(model, tx, params, 0), out_shardings=state_sh)()
train_step = jax.jit(
    step.make_train_step(model, tx, mask, **test_partition.NORMALISATION),
    in_shardings=(state_sh, sharding.batch_sharding(mesh)),
    out_shardings=(state_sh, None),
    donate_argnums=0,
)
local = GLOBAL_BATCH // num_processes
losses = []
for batch in batches:
  mine = {k: v[process_id * local : (process_id + 1) * local] for k, v in batch.items()}
  state, metrics = train_step(state, pipeline.to_global_arrays(mine, mesh))
  losses.append(float(metrics['loss']))
print(json.dumps({'devices': jax.device_count(), 'losses': losses}))
