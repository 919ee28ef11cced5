"""Converted-backbone directories: `params/` (orbax) + `model_config.json`.

The format is the project's parameter directory (`feadapter_jax.checkpoint.save_params`), which
training reads through `config.init.checkpoint`. `model_config.json` holds the `models.build`
config with every architecture key explicit (`ARCHITECTURE_KEYS`, so no default of the Flax ViT
decides what a checkpoint means), plus where the weights came from and the input normalisation
they expect (`METADATA_KEYS`, None when unknown). The directory may be local or a URI
(gs://bucket/backbones/vit_b16): it is read and written through `etils.epath`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

from etils import epath

from feadapter_jax import checkpoint
from feadapter_jax.models import vit

# What a backbone directory's model_config.json always holds: every field the weights fix, the
# input size its position embedding is for, and its head's classes.
ARCHITECTURE_KEYS = (*vit.BACKBONE_FIELDS, 'image_size', 'num_classes')
METADATA_KEYS = ('source', 'checkpoint', 'mean', 'std', 'class_names')


def save(
    directory: str | os.PathLike[str],
    params: Any,
    model_config: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> None:
  """Writes a converted backbone through a temp + rename (`checkpoint.save_params`).

  Args:
    directory: where to write; must not exist unless `overwrite`.
    params: the Flax parameter tree.
    model_config: its `models.build` config, with every `ARCHITECTURE_KEYS` entry.
    metadata: provenance and normalisation (`METADATA_KEYS`), stored in model_config.json.
    overwrite: replace an existing directory.
  """
  if epath.Path(directory).exists() and not overwrite:
    raise FileExistsError(f'{directory} already exists: remove it or choose another --out.')
  absent = [k for k in ARCHITECTURE_KEYS if k not in model_config]
  if absent:
    raise ValueError(f'model_config lacks the architecture keys {absent}.')
  metadata = dict(metadata or {})
  unknown = set(metadata) - set(METADATA_KEYS)
  if unknown:
    raise ValueError(f'Unknown metadata keys {sorted(unknown)}; expected {METADATA_KEYS}.')
  checkpoint.save_params(directory, params, {**model_config, **metadata})


def read_metadata(directory: str | os.PathLike[str]) -> dict[str, Any]:
  """Source, original checkpoint and normalisation recorded by `save` (None when unknown)."""
  stored = json.loads((epath.Path(directory) / checkpoint.MODEL_CONFIG).read_text())
  return {k: stored.get(k) for k in METADATA_KEYS}


def load(directory: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
  """(params as numpy arrays, the `models.build` config) of a converted backbone."""
  params, stored = checkpoint.load_params(directory)
  return params, {k: v for k, v in stored.items() if k not in METADATA_KEYS}
