"""Shared config pieces: the recipe, the data section, the method presets and the arg parser.

A config file's `get_config(arg)` takes a string like 'fold=3,method=st_adapter,quick' (the part
after ':' in `--config=configs/dfew.py:fold=3`); bare words are flags set to True. Configs import
`ml_collections` and plain data only (`feadapter_jax.methods`), never JAX or TensorFlow.

The backbone's settings (`config.model`'s architecture and family options, `config.data.mean` and
`config.data.std`) are None here: training takes them from the backbone directory
`config.init.checkpoint` names (`feadapter_jax/models/backbone.py`), and a value set on the
command line or in a config must agree with it. Without a backbone they are ViT-B/16's, timm's
and ImageNet's, unless the config sets them.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from feadapter_jax import methods

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def backbone_fields() -> dict[str, config_dict.FieldReference]:
  """`config.model`'s backbone settings, each None (from the backbone) until set."""
  types = dict(
      variant=str,  # a preset such as 'B/16': width, depth, num_heads, mlp_dim, patch_size.
      width=int,
      depth=int,
      num_heads=int,
      mlp_dim=int,
      patch_size=int,
      layer_norm_eps=float,
      activation=str,  # 'gelu' | 'quick_gelu'
      pre_norm=bool,
      layer_scale=float,  # 0: none
      num_registers=int,
      class_token=bool,
      class_pos_embed=bool,
      global_pool=str,  # 'token' | 'avg'
      fc_norm=bool,
  )
  return {name: config_dict.placeholder(kind) for name, kind in types.items()}


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


def data_defaults() -> ml_collections.ConfigDict:
  """The input pipeline's fields at CPU-demo sizes, ImageNet's normalisation (no backbone)."""
  return ml_collections.ConfigDict(
      {
          'name': 'synth_fer',  # TFDS builder: 'synth_fer' | 'dfew' | 'ferv39k' | 'mafw'.
          'builder_config': 'video',  # e.g. 'fold1' (dfew, mafw); 'video' | 'image' (synth_fer).
          'data_dir': 'data/tfds',  # TFDS data_dir.
          # The user's copy of a real dataset (TFDS manual_dir); '{name}' becomes the dataset name.
          'manual_dir': 'data/manual/{name}',
          'train_split': 'train',
          'eval_split': 'test',  # the test split: reported, never selects a checkpoint.
          # Model selection (the checkpoint kept as best, results.json's 'selected'): a split of
          # the dataset, or '' to hold out `val_fraction` of each class of `train_split` (drawn
          # with `val_seed`, never trained on); neither: nothing is selected.
          'val_split': '',
          'val_fraction': 0.0,
          'val_seed': 0,
          'num_frames': 8,  # T frames sampled per clip (1 for images).
          'image_size': 32,  # S: model input height and width.
          # Test views per clip, their softmax averaged: `num_clips` temporal x `num_crops`
          # spatial (1 x 1: the FE-Adapter paper's protocol; 2 x 2: S2D's / FRU-Adapter's).
          'num_clips': 1,
          'num_crops': 1,
          # A test crop's side as a fraction of the frame's (`pipeline.crop_windows`); 1: the
          # whole frame, so several crops need less.
          'test_crop_fraction': 1.0,
          'crop_scale': (0.7, 1.0),  # random resized crop: area fraction range (train).
          'crop_ratio': (3 / 4, 4 / 3),  # random resized crop: aspect-ratio range (train).
          'flip': True,  # random horizontal flip (train).
          # Train augmentation after the crop, each drawn once per clip (data/augment.py):
          # RandAugment as timm spells it ('' off; e.g. 'rand-m7-n4-mstd0.5-inc1'), colour
          # jitter strength (0 off), random erasing probability (0 off) and its area range.
          'randaugment': '',
          'color_jitter': 0.0,
          'erase_prob': 0.0,
          'erase_area': (0.02, 1 / 3),
          # 'uniform' | 'class_balanced' (rare classes repeated within an epoch).
          'sampling': 'uniform',
          # The steps normalise the uint8 batches with these, on the device; [0, 1] pixel units.
          'mean': IMAGENET_MEAN,
          'std': IMAGENET_STD,
          'shuffle_buffer': 1024,  # clips (their JPEG bytes) held for the epoch shuffle.
          'num_threads': 0,  # tf.data private threadpool; 0: the CPUs this process may use.
          'num_parallel_calls': -1,  # parallel decode/augment calls; -1: AUTOTUNE.
          'prefetch': 2,  # batches prepared ahead.
          'synth': {  # synth_fer only: any `synth_fer.builder.synth_config` field.
              'num_train': 1500,
              'num_validation': 300,
              'num_test': 300,
              'num_frames': 8,
              'resolution': 32,
              'seed': 0,
          },
      }
  )


def data_config(name: str, builder_config: str = '', **overrides) -> ml_collections.ConfigDict:
  """`config.data` of a training config: the defaults, the real-data recipe (16 x 224), the
  normalisation from the backbone (None), then overrides."""
  data = data_defaults()
  data.update(
      name=name,
      builder_config=builder_config,
      manual_dir=f'data/manual/{name}',
      num_frames=16,
      image_size=224,
      crop_scale=(0.8, 1.0),
  )
  data.mean = config_dict.placeholder(tuple)
  data.std = config_dict.placeholder(tuple)
  data.update(overrides)
  return data


def base_config(method: str) -> ml_collections.ConfigDict:
  """The training recipe (peers' published one: S2D / FRU-Adapter), the backbone's settings left
  to the backbone (`backbone_fields`), 16 x 224."""
  # Every adapter knob in the config (so any can be overridden), the method's preset on top.
  adapter = methods.adapter_dict(method)
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = 0
  c.model = ml_collections.ConfigDict(
      dict(
          **backbone_fields(),
          image_size=224,
          num_classes=7,
          adapter=dict(adapter),
          drop_path_rate=0.1,
          head_dropout=0.5,
          # Compute dtype, parameters float32: 'auto' is float32 on CPU, bfloat16 on GPU/TPU.
          dtype='auto',
          remat=False,
          # 'auto': the CPU kernels on CPU, XLA's own convolutions and attention elsewhere.
          kernels='auto',
      )
  )
  c.trainable = methods.get(method).trainable
  # The backbone: a directory from `python -m feadapter_jax.convert` (or an export/ of a
  # training run), whose model_config.json also sets the backbone's settings. '' starts from a
  # random init, which a method with a frozen backbone refuses unless `random_backbone` is
  # True. `dont_load` skips matching names. `head`: 'map' loads the backbone's head when its
  # model_config.json names classes that hold every class of the dataset, in the dataset's
  # order (by emotion: 'Happiness' is 'Happy'), else leaves it random (said in the log); 'drop'
  # always leaves it random.
  c.init = ml_collections.ConfigDict(
      dict(checkpoint='', dont_load=(), random_backbone=False, head='map')
  )
  c.batch_size = 32  # global, over all processes and devices
  c.grad_accum_steps = 1
  c.num_epochs = 100.0
  c.total_steps = 0  # > 0 overrides num_epochs
  c.label_smoothing = 0.1
  # Mixup / CutMix of each batch on the device (feadapter_jax/mixup.py); alphas 0: off.
  c.mixup = ml_collections.ConfigDict(
      dict(mixup_alpha=0.0, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5)
  )
  # 'none' | 'balanced': the loss weighs class c by n / (classes * n_c) of the training part.
  c.class_weights = 'none'
  # > 0: an EMA of the trained parameters (this decay per step), evaluated and exported.
  c.ema_decay = 0.0
  c.optim = ml_collections.ConfigDict(
      dict(
          lr=1e-3 if method != 'full_finetune' else 1e-4,
          warmup_epochs=5.0,
          end_lr_factor=0.01,
          b1=0.9,
          b2=0.999,
          eps=1e-8,
          weight_decay=0.05,
          weight_decay_rules=[('.*(bias|scale|cls_token|pos_embed)', False), ('.*', True)],
          grad_clip_norm=1.0,
          # < 1: layer-wise lr decay (block i of L scaled by decay^(L - i)), for full_finetune.
          layer_decay=1.0,
      )
  )
  # Strings, so that `--config.mesh=...` and `--config.sharding_rules=...` set them
  # (feadapter_jax/sharding.py). The mesh: 'axis=size,...' over 'data' and 'fsdp', one size may
  # be -1 (the devices left); the batch is split over both axes.
  c.mesh = 'data=-1'
  # XLA options for the train step on the CPU backend, and only there (`kernels.compiler_options`;
  # figures in docs/performance.md): the memory-optimised scheduler lowers a step's scratch
  # memory and time. Disabling
  # `cse_barrier_expander` keeps optimisation barriers, which XLA CPU otherwise drops: remat's
  # (without them CSE merges the recomputation into the forward pass, and `model.remat` saves
  # little) and the CPU kernels' (`model.kernels`).
  c.cpu_compiler_options = dict(
      xla_cpu_scheduler_type='CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',
      xla_disable_hlo_passes='cse_barrier_expander',
  )
  # 'regex=strategy,...' over the train state's names, first full match wins: 'replicate', or
  # 'fsdp' to split leaves over the 'fsdp' mesh axis ('.*=fsdp' with 'data=-1,fsdp=8' for ViT-L).
  c.sharding_rules = '.*=replicate'
  c.eval_batch_size = 32
  c.log_every_steps = 50
  c.eval_every_steps = 0  # 0: once per epoch
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2
  c.checkpoint_async = True
  # Multi-host: initialize=True starts jax.distributed. With coordinator_address empty, JAX finds
  # the processes itself (TPU pods, SLURM); set the coordinator fields for anything else.
  c.distributed = ml_collections.ConfigDict(
      dict(
          initialize=False,
          coordinator_address='',
          num_processes=0,
          process_id=-1,
          heartbeat_timeout_seconds=100,
      )
  )
  return c
