"""The files of a training run's workdir, and reading them back.

WORKDIR/
  config.json            the run's config, resolved against its backbone (`models/backbone.py`:
                         architecture, family options, input normalisation), paths made
                         absolute (`write_config`, `load_config`)
  checkpoints/<step>/    orbax checkpoints of the trainable state (`checkpoint.Checkpoints`)
  results.json           final metrics, class names and sizes; written last, so its presence
                         means the run finished
  confusion_matrix.png   the final evaluation's confusion matrix
  export/                trainable parameters + model_config.json (`checkpoint.save_params`:
                         the model config and the input normalisation), and init.json: the
                         backbone, seed and trainable patterns they go with
  results_<split>_<n>clip[_<m>crop].json   written by `python -m feadapter_jax.evaluate`
  events.out.tfevents.*  TensorBoard scalars

WORKDIR may be local or a URI such as gs://bucket/run: every file of it is read and written
through `etils.epath` (as orbax and TFDS read and write theirs), never `open` or `os.path`.
"""

from __future__ import annotations

import json
import os

from etils import epath
import ml_collections

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
RESULTS_FILE = 'results.json'
CONFUSION_FIGURE = 'confusion_matrix.png'
EXPORT_DIR = 'export'
INIT_FILE = 'init.json'  # inside EXPORT_DIR


def evaluation_file(split: str, num_clips: int, num_crops: int = 1) -> str:
  """The file `evaluate` writes for a split evaluated with `num_clips` temporal x `num_crops`
  spatial views; one crop is left out of the name, as runs have always written it."""
  crops = f'_{num_crops}crop' if num_crops > 1 else ''
  return f'results_{split}_{num_clips}clip{crops}.json'


def resolve_path(location: str | os.PathLike[str]) -> str:
  """`location` made absolute if it is a local path; a URI (gs://bucket/x) unchanged."""
  location = os.fspath(location)
  # A URI has no working directory to resolve against, and abspath would mangle its '//'.
  return location if '://' in location else os.path.abspath(location)


def path(workdir: str | os.PathLike[str], *names: str) -> epath.Path:
  """`workdir`/`names`, local or a URI, as the `epath.Path` to read or write it with."""
  return epath.Path(workdir).joinpath(*names)


def portable(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with absolute paths (URIs as given), so evaluate/predict work from anywhere."""
  config = config.copy_and_resolve_references()
  for section, key in (('init', 'checkpoint'), ('data', 'data_dir'), ('data', 'manual_dir')):
    if config[section][key]:
      config[section][key] = resolve_path(config[section][key])
  return config


def write_config(workdir: str | os.PathLike[str], config: ml_collections.ConfigDict) -> None:
  path(workdir, CONFIG_FILE).write_text(portable(config).to_json_best_effort(indent=2))


# config.data fields added after runs were written, with the value a run had before them.
_LATER_DATA_FIELDS = {'num_crops': 1, 'test_crop_fraction': 1.0}


def load_config(workdir: str | os.PathLike[str]) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was trained with (fields it predates at their old values)."""
  config = ml_collections.ConfigDict(json.loads(path(workdir, CONFIG_FILE).read_text()))
  for name, value in _LATER_DATA_FIELDS.items():
    if name not in config.data:
      config.data[name] = value
  return config
