r"""Entry point: `python -m feadapter_jax.main --config=configs/<name>.py[:args] --workdir=DIR`.

Any config field can be overridden (`--config.batch_size=8`). Rerunning the same command resumes
from the last checkpoint in DIR. Multi-host: `--config.distributed.initialize=auto` on TPU pods
and SLURM, or the explicit coordinator fields (see configs/common.py).
"""
import logging as logging_std
import os
import sys

# TensorFlow only feeds data: keep it off accelerators and quiet before anything imports it.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training configuration.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(logging_std.Filter):
  """Drops TFDS/TF notices below ERROR (custom-config and deprecation chatter)."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    noisy = any(p in record.pathname for p in ('tensorflow_datasets', 'tensorflow/python'))
    return record.levelno >= logging_std.ERROR or not noisy


def initialize_distributed(dist) -> None:
  """Starts jax.distributed when the config asks for it (before any other JAX call)."""
  if not dist.initialize:
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if dist.coordinator_address:
    kwargs = dict(coordinator_address=dist.coordinator_address,
                  num_processes=dist.num_processes, process_id=dist.process_id)
  jax.distributed.initialize(heartbeat_timeout_seconds=dist.heartbeat_timeout_seconds, **kwargs)


def main(argv) -> None:
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax and clu are chatty at INFO
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  initialize_distributed(config.distributed)
  # Imported after jax.distributed.initialize: they query devices at import or first use.
  from feadapter_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from feadapter_jax import train  # pylint: disable=g-import-not-at-top
  from feadapter_jax.data import clip_folders  # pylint: disable=g-import-not-at-top
  from feadapter_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    train.train_and_evaluate(config, _WORKDIR.value)
  except (pipeline.DatasetNotFoundError, clip_folders.DataLayoutError, train.NonFiniteLossError,
          checkpoint.CheckpointError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
