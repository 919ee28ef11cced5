"""Shared config pieces: the recipe, data defaults, method presets and the arg parser.

A config file's `get_config(arg)` takes a string like 'fold=3,method=st_adapter,quick' (the part
after ':' in `--config=configs/dfew.py:fold=3`); bare words are flags set to True.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from feadapter_jax import models
from feadapter_jax.data import pipeline

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ADAPTERS_AND_HEAD = ('.*adapter.*', 'head/.*')

# Same backbone, data and trainer; only the adapter and the trainable set differ.
METHODS = {
    'fe_adapter': (dict(kind='fe', conv='dynamic'), ADAPTERS_AND_HEAD),
    'fe_multibranch': (dict(kind='fe', conv='multibranch'), ADAPTERS_AND_HEAD),
    'st_adapter': (dict(kind='st', width=384, conv='fixed', kernel_size=(3, 1, 1),
                        zero_init='conv'), ADAPTERS_AND_HEAD),
    'aim': (dict(kind='aim'), ADAPTERS_AND_HEAD),
    'linear_probe': (dict(kind='none'), ('head/.*',)),
    'full_finetune': (dict(kind='none'), ('.*',)),
}


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """'a=1,b=x,flag' -> ConfigDict(a=1, b='x', flag=True) over `defaults` (types follow them)."""
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, eq, value = item.partition('=')
    if key not in defaults:
      raise ValueError(f'Unknown config arg {key!r}; known: {sorted(defaults)}')
    if not eq:
      parsed[key] = True
    elif isinstance(defaults[key], bool):
      parsed[key] = value.lower() in ('1', 'true', 'yes')
    else:
      parsed[key] = type(defaults[key])(value)
  return parsed


def data_config(name: str, builder_config: str = '', **overrides) -> ml_collections.ConfigDict:
  """`config.data`: the pipeline's defaults, the real-data recipe (16 x 224), then overrides."""
  data = pipeline.default_config()
  data.update(name=name, builder_config=builder_config, manual_dir=f'data/manual/{name}',
              num_frames=16, image_size=224, crop_scale=(0.8, 1.0),
              mean=IMAGENET_MEAN, std=IMAGENET_STD)
  data.update(overrides)
  return data


def base_config(method: str) -> ml_collections.ConfigDict:
  """The training recipe (peers' published one: S2D / FRU-Adapter), ViT-B/16, 16x224."""
  if method not in METHODS:
    raise ValueError(f'Unknown method {method!r}; one of {sorted(METHODS)}')
  preset, trainable = METHODS[method]
  # Every adapter knob in the config (so any can be overridden), the method's preset on top.
  adapter = {**dataclasses.asdict(models.AdapterConfig()), **preset}
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(
      variant='B/16', image_size=224, num_classes=7, adapter=dict(adapter),
      drop_path_rate=0.1, head_dropout=0.5, dtype='float32', remat=False))
  c.trainable = trainable
  # Backbone initialisation: a directory from `python -m feadapter_jax.convert` (or an
  # export/ of a training run); '' trains from scratch. `dont_load` skips matching names.
  c.init = ml_collections.ConfigDict(dict(checkpoint='', dont_load=()))
  c.batch_size = 32  # global, over all processes and devices
  c.grad_accum_steps = 1
  c.num_epochs = 100.0
  c.total_steps = 0  # > 0 overrides num_epochs
  c.label_smoothing = 0.1
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-3 if method != 'full_finetune' else 1e-4, warmup_epochs=5.0, end_lr_factor=0.01,
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
      weight_decay_rules=[('.*(bias|scale|cls_token|pos_embed)', False), ('.*', True)],
      grad_clip_norm=1.0))
  c.mesh = [('data', -1)]
  # XLA options for the train step when it runs on CPU (docs/performance.md): the memory-optimised
  # scheduler cut a ViT-B/16 FE-Adapter step's scratch memory 3.2 -> 2.5 GiB and its time 6%.
  # Disabling `cse_barrier_expander` keeps optimisation barriers, which XLA CPU otherwise drops:
  # remat's (without them CSE merges the recomputation into the forward pass and `model.remat`
  # saved little: FE-Adapter scratch 2.07 GiB with the pass, 1.0 GiB without) and the token
  # adapters' `layers.materialized_cotangent` (a 30 ms fusion per block without it).
  c.cpu_compiler_options = dict(xla_cpu_scheduler_type='CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',
                                xla_disable_hlo_passes='cse_barrier_expander')
  c.sharding_rules = [('.*', 'replicate')]  # ('.*', 'fsdp') with an 'fsdp' mesh axis for ViT-L
  c.eval_batch_size = 32
  c.log_every_steps = 50
  c.eval_every_steps = 0  # 0: once per epoch
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2
  c.checkpoint_async = True
  # Multi-host: 'auto' initialises jax.distributed when the environment says it is one of
  # several processes (TPU pods, SLURM); explicit coordinator fields for anything else.
  c.distributed = ml_collections.ConfigDict(dict(
      initialize=False, coordinator_address='', num_processes=0, process_id=-1,
      heartbeat_timeout_seconds=100))
  return c
