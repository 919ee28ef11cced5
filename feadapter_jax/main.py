r"""Entry point: `python -m feadapter_jax.main --config=configs/<name>.py[:args] --workdir=DIR`.

Any config field can be overridden (`--config.batch_size=8`). Rerunning the same command resumes
from the last checkpoint in DIR. Multi-host: `--config.distributed.initialize=true`, with the
explicit coordinator fields (configs/common.py) or, on TPU pods and SLURM, without them.
"""

from feadapter_jax import cli  # pylint: disable=g-bad-import-order  (first: quiets TensorFlow)

import sys  # pylint: disable=g-import-not-at-top,g-bad-import-order

from absl import app
from absl import flags
from absl import logging

_CONFIG = cli.define_config('config', help_text='Training configuration.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  cli.start(config)
  # Imported after jax.distributed.initialize: they query devices at import or first use.
  import jax  # pylint: disable=g-import-not-at-top
  from feadapter_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from feadapter_jax import sharding  # pylint: disable=g-import-not-at-top
  from feadapter_jax import train  # pylint: disable=g-import-not-at-top
  from feadapter_jax.data import clip_folders  # pylint: disable=g-import-not-at-top
  from feadapter_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from feadapter_jax.models import backbone  # pylint: disable=g-import-not-at-top

  logging.info(
      'JAX process %d/%d, devices: %s', jax.process_index(), jax.process_count(), jax.devices()
  )
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except (
      pipeline.DatasetNotFoundError,
      clip_folders.DataLayoutError,
      train.NonFiniteLossError,
      checkpoint.CheckpointError,
      backbone.BackboneError,
      sharding.ShardingConfigError,
      pipeline.DataConfigError,
      train.ConfigError,
      FileNotFoundError,
  ) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
