r"""Prepares a dataset from the user's copy (what `tfds build` would do; that CLI needs Beam).

  python -m feadapter_jax.data.prepare --dataset=dfew/fold1 --manual_dir=data/manual/dfew \
      [--data_dir=data/tfds]

Prints the build report: examples per split, and every skipped frame or clip with its reason.
"""

from feadapter_jax import cli  # pylint: disable=g-bad-import-order  (first: quiets TensorFlow)

from absl import app  # pylint: disable=g-import-not-at-top,g-bad-import-order
from absl import flags
import tensorflow_datasets as tfds

import feadapter_jax.data  # pylint: disable=unused-import  (registers the builders)

_DATASET = flags.DEFINE_string(
    'dataset', None, "Builder and config, e.g. 'dfew/fold1'.", required=True
)
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, 'Your copy of the raw dataset.')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data/tfds', 'Where prepared data goes.')


def main(argv) -> None:
  del argv
  cli.start()
  builder = tfds.builder(_DATASET.value, data_dir=_DATA_DIR.value)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=_MANUAL_DIR.value)
  )
  report = getattr(builder, 'build_report', None)
  print(report.summary() if report is not None else builder.info.splits)
  print(f'Prepared {_DATASET.value} in {builder.data_path}')


if __name__ == '__main__':
  app.run(main)
