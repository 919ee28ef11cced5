"""Start-up shared by every command: platform, logging, distributed init and the config flags.

Each entry point imports this module first: it keeps TensorFlow, which only feeds data, quiet and
off accelerators before anything imports it. Commands that take a config define it with
`define_config` (ml_collections `config_flags`: `--config=path.py[:args]`, `--config.x=value`),
call `start(config)` at the top of `main`, and re-read the config with other args through
`reload_config` (k-fold and the comparison build one config per run).
"""

from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import importlib.util  # pylint: disable=g-import-not-at-top,g-bad-import-order
import logging as logging_std
from typing import Any, Mapping

from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags


def define_config(
    name: str = 'config',
    default: str | None = None,
    help_text: str = 'Config file, `path.py[:args]`; override fields with '
    '`--config.field=value`.',
) -> flags.FlagHolder:
  """The config-file flag `--name=path.py[:args]` with `--name.field=value` overrides."""
  return config_flags.DEFINE_config_file(name, default, help_text, lock_config=True)


class _QuietLibraries(logging_std.Filter):
  """Drops TFDS/TF notices below ERROR (custom-config and deprecation chatter)."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    noisy = any(p in record.pathname for p in ('tensorflow_datasets', 'tensorflow/python'))
    return record.levelno >= logging_std.ERROR or not noisy


def start(config: ml_collections.ConfigDict | None = None) -> None:
  """Per-process start-up, first thing in `main`: logging, then `jax.distributed` if asked.

  Logging is at WARNING unless `--verbosity` is given (orbax and clu are chatty at INFO).
  """
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if config is not None and 'distributed' in config:
    initialize_distributed(config.distributed)


def initialize_distributed(dist: ml_collections.ConfigDict) -> None:
  """Starts `jax.distributed` when `dist.initialize` is true (before any other JAX call).

  With `coordinator_address` empty, JAX finds the processes itself (TPU pods, SLURM, Open MPI);
  else the explicit coordinator, process count and id are used.
  """
  if not dist.initialize:
    return
  import jax  # pylint: disable=g-import-not-at-top  (reading configs must not import JAX)

  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if dist.coordinator_address:
    kwargs = dict(
        coordinator_address=dist.coordinator_address,
        num_processes=dist.num_processes,
        process_id=dist.process_id,
    )
  jax.distributed.initialize(heartbeat_timeout_seconds=dist.heartbeat_timeout_seconds, **kwargs)


def load_config(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """`get_config(args)` of the config file `spec` = 'path.py[:args]', then flat overrides.

  Raises:
    FileNotFoundError: no such config file.
    KeyError: an override names a field the config lacks.
  """
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Config file {path} not found.')
  module_spec = importlib.util.spec_from_file_location('feadapter_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for key, value in (overrides or {}).items():
    parent, _, leaf = key.rpartition('.')
    node = config
    for part in filter(None, parent.split('.')):
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise KeyError(f'{spec}: the config has no field {key!r}')
    node[leaf] = value
  return config


def with_args(spec: str, *args: str) -> str:
  """'path.py:a=1' with args 'b=2' -> 'path.py:a=1,b=2' (a later arg wins over an earlier)."""
  path, _, arg = spec.partition(':')
  joined = ','.join(filter(None, [arg, *args]))
  return f'{path}:{joined}' if joined else path


def config_spec(holder: flags.FlagHolder) -> str:
  """The 'path.py[:args]' a config flag was given."""
  return config_flags.get_config_filename(flags.FLAGS[holder.name])


def config_overrides(holder: flags.FlagHolder) -> dict[str, Any]:
  """The `--name.field=value` overrides a config flag was given, as {'field': value}."""
  return dict(config_flags.get_override_values(flags.FLAGS[holder.name]))


def reload_config(holder: flags.FlagHolder, *args: str) -> ml_collections.ConfigDict:
  """The config flag's file read again with `args` added, and its command-line overrides."""
  return load_config(with_args(config_spec(holder), *args), config_overrides(holder))
