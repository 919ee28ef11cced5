"""A run's model from its config: building it, its shape-only parameters, loading its backbone.

Every driver (train, evaluate, predict, kfold, compare) and the benchmarks build models here, so a
model is always the one `config.model` and `config.data` describe.
"""

from __future__ import annotations

from typing import Any, Sequence

from absl import logging
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from feadapter_jax import checkpoint
from feadapter_jax import partition
from feadapter_jax.models import kernels
from feadapter_jax.models import vit


def resolve_backend(
    config: ml_collections.ConfigDict, backend: str | None = None
) -> ml_collections.ConfigDict:
  """A copy of `config` with `model.dtype` 'auto' resolved for `backend`.

  The trainer records this config (config.json), so a run shows the dtype it computed in, and
  evaluation and prediction rebuild the model in it. `model.kernels` stays as set: every form
  computes the same model (tests/test_kernels.py), and 'auto' gives each machine that evaluates
  or predicts its own fast form (the CPU forms are ~100x faster on CPU, the reference forms the
  ones GPUs and TPUs compile well). `build_model` resolves both the same way.

  Args:
    config: a run's config.
    backend: a `jax.default_backend()` name ('cpu', 'gpu', 'tpu'); default the running one.
  """
  config = config.copy_and_resolve_references()
  config.model.dtype = kernels.resolve_dtype(config.model.dtype, backend)
  return config


def model_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`config.model` with the input size taken from `config.data`."""
  mc = config.model.to_dict()
  mc['image_size'] = config.data.image_size
  return mc


def build_model(config: ml_collections.ConfigDict) -> vit.ViT:
  return vit.build(model_config(config))


def clip_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int, int, int]:
  """`(1, t, S, S, 3)`: one clip as the model takes it."""
  s = config.data.image_size
  return (1, config.data.num_frames, s, s, 3)


def param_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
  """The model's parameter tree as `jax.ShapeDtypeStruct`s (nothing is computed or allocated)."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape)))['params']


# Spellings of one emotion in the datasets' class lists, so that a head trained on one list
# serves another (RAF-DB's 'Happiness' is DFEW's 'Happy', FER2013's 'Angry' RAF-DB's 'Anger').
_EMOTION_SPELLINGS = {
    'happiness': 'happy',
    'sadness': 'sad',
    'anger': 'angry',
    'surprised': 'surprise',
    'fearful': 'fear',
    'disgusted': 'disgust',
}
HEAD_CHOICES = ('map', 'drop')


def emotion(class_name: str) -> str:
  """The one spelling of a class name's emotion: 'Happiness', 'happy' -> 'happy'."""
  name = class_name.strip().lower()
  return _EMOTION_SPELLINGS.get(name, name)


def head_rows(source: Sequence[str], target: Sequence[str]) -> list[int] | None:
  """For each class of `target`, the index of the same emotion in `source`; None if one lacks."""
  index = {emotion(name): i for i, name in enumerate(source)}
  rows = [index.get(emotion(name)) for name in target]
  return None if None in rows else rows


def _mapped_head(
    loaded: dict[str, np.ndarray],
    source: Sequence[str] | None,
    target: Sequence[str] | None,
    config: ml_collections.ConfigDict,
) -> dict[str, np.ndarray]:
  """`loaded` with the head's classes reordered to `target`'s (`init.head='map'`), or without
  the head ('drop', or when the classes cannot be matched), said in the log."""
  head = {n: v for n, v in loaded.items() if n.startswith('head/')}
  rest = {n: v for n, v in loaded.items() if not n.startswith('head/')}
  choice = config.init.get('head', 'map')
  if choice not in HEAD_CHOICES:
    raise ValueError(f"config.init.head={choice!r}: one of 'map' (by class name), 'drop'.")
  if not head or choice == 'drop':
    return rest
  where = config.init.checkpoint
  rows = head_rows(source, target) if source and target else None
  if rows is None:
    why = (
        f'its classes {list(source)} do not hold every class of {list(target)}'
        if source and target
        else 'its model_config.json names no classes'
    )
    logging.warning(
        'The head of %s is not loaded (%s): it starts from its random init.', where, why
    )
    return rest
  if 'head/kernel' not in head or 'head/bias' not in head:
    raise ValueError(f'{where}: the head has {sorted(head)}, not head/kernel and head/bias.')
  logging.info('Head of %s mapped by class name: %s', where, dict(zip(target, rows)))
  return {
      **rest,
      'head/kernel': np.asarray(head['head/kernel'])[:, rows],
      'head/bias': np.asarray(head['head/bias'])[rows],
  }


def load_backbone(
    config: ml_collections.ConfigDict, shapes: Any, class_names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
  """{name: array} from `config.init.checkpoint` for the parameters it should initialise.

  The head comes too when the checkpoint's model_config.json names its classes and every class
  of `class_names` (the run's dataset's) is among them: its rows are taken in the run's class
  order, by emotion (`head_rows`). Otherwise, or with `config.init.head='drop'`, the head keeps
  its random init.

  Args:
    config: the run's config (`init.checkpoint`, `init.dont_load`, `init.head`).
    shapes: the model's parameter shapes (`param_shapes`).
    class_names: the run's classes in label order; None leaves the head out.

  Raises:
    ValueError: names the checkpoint lacks or has extra, or shapes that differ, with the fix.
  """
  if not config.init.checkpoint:
    return {}
  loaded, stored = checkpoint.load_params(config.init.checkpoint)
  skip = partition.match(loaded, [(p, True) for p in config.init.dont_load] + [('.*', False)])
  loaded = {n: v for n, v in partition.flatten(loaded).items() if not partition.flatten(skip)[n]}
  loaded = _mapped_head(loaded, stored.get('class_names'), class_names, config)
  target = partition.flatten(shapes)
  extra = sorted(set(loaded) - set(target))
  if extra:
    raise ValueError(
        f'{config.init.checkpoint} has parameters the model lacks: {extra[:5]} '
        '(architecture mismatch: check config.model against its model_config.json)'
    )
  for name, value in loaded.items():
    if tuple(value.shape) != tuple(target[name].shape):
      hint = (
          ' Convert again with --image_size to resample the position embedding.'
          if name == 'pos_embed'
          else ''
      )
      raise ValueError(
          f'{config.init.checkpoint}: {name} has shape {value.shape}, the model '
          f'expects {target[name].shape}.{hint}'
      )
  backbone_missing = [
      n for n in target if n not in loaded and 'adapter' not in n and not n.startswith('head')
  ]
  if backbone_missing:
    logging.warning(
        'Not in %s, trained from their random init: %s',
        config.init.checkpoint,
        backbone_missing[:8] + (['...'] if len(backbone_missing) > 8 else []),
    )
  return loaded


def initial_params(
    model: nn.Module, config: ml_collections.ConfigDict, loaded: dict[str, Any]
) -> Any:
  """Random init from `config.seed`, overwritten by the loaded backbone (jittable)."""
  params = model.init(jax.random.PRNGKey(config.seed), jnp.zeros(clip_shape(config)))['params']
  flat = partition.flatten(params)
  flat.update({n: jnp.asarray(v, flat[n].dtype) for n, v in loaded.items()})
  return traverse_util.unflatten_dict(flat, sep='/')
