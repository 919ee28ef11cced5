r"""Prepares the dataset that a training command reads, as one process, before a multi-process run.

  python scripts/prepare_data.py --config=configs/dfew.py:fold=1 [--config.x=value ...] \
      [--workdir=DIR]

Takes the flags of `python -m feadapter_jax.main` (`--workdir` is accepted and not used) and
prepares `config.data` as a run's first use would (`pipeline.get_builder`); a prepared dataset is
left as it is. The trainer does not coordinate preparation across processes, so a launch of
several processes that share one `data_dir` (scripts/slurm/train.sbatch) runs this first. Run it
from the repository root, where the config files import `configs`.
"""

import os
import sys

sys.path.insert(0, os.getcwd())  # as `python -m` does: the config files import `configs`

from feadapter_jax import cli  # pylint: disable=g-import-not-at-top,g-bad-import-order

from absl import app  # pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import flags

_CONFIG = cli.define_config('config', help_text='The training configuration.')
flags.DEFINE_string('workdir', None, 'Accepted for the training command line; not used.')
flags.mark_flags_as_required(['config'])


def main(argv) -> None:
  del argv
  cli.start()  # no jax.distributed here, whatever the config says
  from feadapter_jax.data import clip_folders  # pylint: disable=g-import-not-at-top
  from feadapter_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  data = _CONFIG.value.data
  try:
    builder = pipeline.get_builder(data)
  except (pipeline.DatasetNotFoundError, clip_folders.DataLayoutError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'Dataset {data.name}/{data.builder_config} is prepared in {builder.data_dir}', flush=True)


if __name__ == '__main__':
  app.run(main)
