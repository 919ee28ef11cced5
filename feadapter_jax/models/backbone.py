"""The backbone a run adapts: the settings its directory records, and a config resolved to them.

A backbone directory (`python -m feadapter_jax.convert`, or a training run's export/) holds
`params/` and `model_config.json`. Besides the weights, a ViT is defined by its architecture,
its family options (LayerNorm epsilon, activation, pooling...) and the input normalisation it
was trained with; a run that guesses any of them computes something else than the backbone was
trained to compute, without an error. So the configs leave these fields None (`vit.BACKBONE_FIELDS` of
`config.model`, `config.model.variant`, and `config.data.mean/std`), and `resolve` fills them
from the backbone's model_config.json: a value set in the config must agree with it.

Without a backbone (`config.init.checkpoint` empty) the `ViT` defaults (ViT-B/16, timm's family
options) and ImageNet's normalisation fill them, or the preset `config.model.variant` names. A
frozen backbone is then random, which `require_checkpoint` refuses unless
`config.init.random_backbone` asks for it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

from etils import epath
import ml_collections

from feadapter_jax import checkpoint
from feadapter_jax import partition
from feadapter_jax.models import builder
from feadapter_jax.models import vit

NORMALISATION = ('mean', 'std')
# The normalisation of a run without a backbone (in [0, 1] pixel units).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class BackboneError(ValueError):
  """A config that contradicts its backbone, or a run whose frozen backbone would be random."""


def vit_defaults() -> dict[str, Any]:
  """`vit.BACKBONE_FIELDS` as a `ViT` without them is built."""
  return {k: vit.ViT.__dataclass_fields__[k].default for k in vit.BACKBONE_FIELDS}


def _numbers(values: Sequence[float] | None) -> tuple[float, ...] | None:
  return None if values is None else tuple(float(v) for v in values)


def settings(directory: str | os.PathLike[str]) -> dict[str, Any]:
  """`vit.BACKBONE_FIELDS`, mean and std of the backbone in `directory` (local or a URI such as
  gs://bucket/backbone), from its model_config.json.

  A model field it lacks (older directories) is the `ViT` default; mean and std are None when
  it does not record them.

  Raises:
    FileNotFoundError: `directory` has no model_config.json.
  """
  path = epath.Path(directory) / checkpoint.MODEL_CONFIG
  if not path.exists():
    raise FileNotFoundError(
        f'{path} not found: config.init.checkpoint={os.fspath(directory)} is not a backbone '
        'directory. Make one with `python -m feadapter_jax.convert '
        "--checkpoint=PYTORCH_FILE --out=DIR`, or use a training run's export/ folder."
    )
  stored = json.loads(path.read_text())
  found = vit_defaults()
  # Exports of runs that named a preset record it; explicit fields override it, as in `vit.build`.
  if stored.get('variant'):
    found.update(vit.decode_variant(stored['variant']))
  found.update({k: stored[k] for k in vit.BACKBONE_FIELDS if stored.get(k) is not None})
  found.update({k: _numbers(stored.get(k)) for k in NORMALISATION})
  return found


def _agree(a: Any, b: Any) -> bool:
  if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
    return len(a) == len(b) and all(_agree(x, y) for x, y in zip(a, b))
  if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
    return a == b
  # JSON and the command line may spell one float differently (1e-06, 0.000001).
  return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def _show(value: Any) -> str:
  return repr(tuple(value)) if isinstance(value, (tuple, list)) else repr(value)


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with every backbone field that is None filled in (see the module doc).

  From `config.init.checkpoint`'s model_config.json when set, else from `config.model.variant`
  and the `ViT` defaults, with ImageNet's mean and std. Resolving a resolved config changes
  nothing. The backbone's image size is checked when its weights are loaded
  (`builder.load_backbone`).

  Raises:
    BackboneError: a field set in the config contradicts the backbone, or the backbone does not
      record its normalisation and `config.data.mean/std` are unset.
    FileNotFoundError: `config.init.checkpoint` is not a backbone directory.
  """
  config = config.copy_and_resolve_references()
  # Unlocked: a config written before a field existed (an older config.json) gains it.
  with config.unlocked():
    _fill(config)
  return config


def _fill(config: ml_collections.ConfigDict) -> None:
  model, data, directory = config.model, config.data, config.init.checkpoint
  variant = vit.decode_variant(model.variant) if model.get('variant') else {}
  if not directory:
    source = {**vit_defaults(), **variant, 'mean': IMAGENET_MEAN, 'std': IMAGENET_STD}
    for key in vit.BACKBONE_FIELDS:
      if model.get(key) is None:
        model[key] = source[key]
    for key in NORMALISATION:
      if data.get(key) is None:
        data[key] = source[key]
    return

  found = settings(directory)
  where = f'the backbone {epath.Path(directory) / checkpoint.MODEL_CONFIG}'
  problems = []
  differ = [k for k in vit.ARCHITECTURE if k in variant and variant[k] != found[k]]
  if differ:
    problems.append(
        f'config.model.variant={model.variant!r} has '
        + ', '.join(f'{k} {variant[k]}' for k in differ)
        + f' but {where} has '
        + ', '.join(f'{k} {found[k]}' for k in differ)
        + ': drop the variant (the architecture comes from the backbone)'
    )
  for key in vit.BACKBONE_FIELDS:
    if model.get(key) is None:
      model[key] = found[key]
    elif not _agree(model[key], found[key]):
      problems.append(
          f'config.model.{key}={_show(model[key])} but {where} has {_show(found[key])}: leave '
          'it unset (the backbone sets it), in the config file and on the command line'
      )
  for key in NORMALISATION:
    if data.get(key) is None:
      data[key] = found[key]
    elif found[key] is not None and not _agree(data[key], found[key]):
      problems.append(
          f'config.data.{key}={_show(data[key])} but {where} has {_show(found[key])}: leave '
          'it unset (the backbone sets it), in the config file and on the command line'
      )
  if data.mean is None or data.std is None:
    problems.append(
        f'{where} does not record the input normalisation its weights were trained with: set '
        'config.data.mean and config.data.std (e.g. --config.data.mean="(0.5,0.5,0.5)" '
        '--config.data.std="(0.5,0.5,0.5)"), or convert it again with '
        '`python -m feadapter_jax.convert ... --mean=... --std=...`'
    )
  if problems:
    raise BackboneError('The config does not fit its backbone:\n  ' + '\n  '.join(problems))


def directory_config(
    config: ml_collections.ConfigDict, class_names: Sequence[str]
) -> dict[str, Any]:
  """The model_config.json of a run's parameter directory (its export/): the model config, the
  input normalisation and the head's classes, so a later run that adapts the export resolves
  to the first two and maps the head by class name (`builder.load_backbone`)."""
  return {
      **builder.model_config(config),
      'mean': list(config.data.mean),
      'std': list(config.data.std),
      'class_names': list(class_names),
  }


def require_checkpoint(config: ml_collections.ConfigDict, mask: Any) -> None:
  """Refuses a run whose frozen backbone would be random, or any run without a backbone when
  the config says it fine-tunes one (`init.required`: the image stage), unless the config asks
  for a random one.

  Args:
    config: the run's config (`init.checkpoint`, `init.random_backbone`, `init.required`,
      `method`).
    mask: its trainable mask (`partition.trainable_mask`); the backbone is frozen when a
      parameter other than the adapters' and the head's is.

  Raises:
    BackboneError: naming `config.init.checkpoint`, how to make a backbone directory, and
      `config.init.random_backbone`.
  """
  if config.init.checkpoint or config.init.get('random_backbone', False):
    return
  frozen = [
      name
      for name, trainable in partition.flatten(mask).items()
      if not trainable and 'adapter' not in name and not name.startswith('head')
  ]
  if config.init.get('required', False) and not frozen:
    raise BackboneError(
        f'config.init.checkpoint is empty, so {config.method} would fine-tune a random ViT, '
        'which is not an image emotion classifier to build on. Convert a pre-trained ViT '
        'first: `python -m feadapter_jax.convert --checkpoint=PYTORCH_FILE --out=DIR`, then '
        'pass init=DIR in the config args or --config.init.checkpoint=DIR. To train from a '
        'random init on purpose, pass --config.init.random_backbone=True.'
    )
  if frozen:
    raise BackboneError(
        f'config.init.checkpoint is empty, so {config.method} would adapt a random frozen '
        f'backbone ({len(frozen)} frozen arrays such as {frozen[0]}), whose features hold '
        'nothing for the adapters to build on. Convert a pre-trained ViT first: `python -m '
        'feadapter_jax.convert --checkpoint=PYTORCH_FILE --out=DIR` (or use a training '
        "run's export/ folder), then pass --config.init.checkpoint=DIR. To train from a "
        'random backbone on purpose, pass --config.init.random_backbone=True.'
    )
