"""A run's model from its config: building it, its shape-only parameters, loading its backbone.

Every driver (train, evaluate, predict, kfold, compare) and the benchmarks build models here, so a
model is always the one `config.model` and `config.data` describe.
"""

from __future__ import annotations

from typing import Any

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


def load_backbone(config: ml_collections.ConfigDict, shapes: Any) -> dict[str, np.ndarray]:
  """{name: array} from `config.init.checkpoint` for the parameters it should initialise.

  Args:
    config: the run's config (`init.checkpoint`, `init.dont_load`).
    shapes: the model's parameter shapes (`param_shapes`).

  Raises:
    ValueError: names the checkpoint lacks or has extra, or shapes that differ, with the fix.
  """
  if not config.init.checkpoint:
    return {}
  loaded, _ = checkpoint.load_params(config.init.checkpoint)
  skip = partition.match(loaded, [(p, True) for p in config.init.dont_load] + [('.*', False)])
  loaded = {n: v for n, v in partition.flatten(loaded).items() if not partition.flatten(skip)[n]}
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
