r"""FE-Adapter on SynthFER, the built-in synthetic video set: minutes on a 2-core CPU.

Adapts the tiny image classifier made by `configs/synthetic_image.py` (run it first, or use
`make demo`, which runs both):

  python -m feadapter_jax.main --config=configs/synthetic_image.py --workdir=workdirs/synth_image
  python -m feadapter_jax.main --config=configs/synthetic.py --workdir=workdirs/synth_video

The architecture and the input normalisation come from the image classifier's export
(`init.checkpoint`), as they come from a converted backbone in the real-data configs.

Args (after ':'): method=fe_adapter|fe_multibranch|st_adapter|aim|linear_probe|full_finetune,
seed=N, quick (a smoke run of under a minute that trains, evaluates, checkpoints and writes
results; without init it adapts a random tiny ViT, `init.random_backbone=True`), init=DIR (the
image classifier, default workdirs/synth_image/export), fold=K (SynthFER drawn with data seed K,
so the k-fold driver `python -m feadapter_jax.kfold` can be tried without a real dataset),
variant=video|hard|hard_mafw (the quick demo's clips, or the benchmark that separates methods:
subtle expressions that come quickly at random times, occluders, stronger motion and lighting,
DFEW-like class imbalance, and three class pairs that differ only by the direction of time, so a
model that averages frames tops out at 4/7 UAR; hard_mafw: MAFW's 11 classes, five such pairs).
The hard variants weigh the loss by class (`class_weights='balanced'`): their rare classes count
as much as the others in UAR.
"""

import ml_collections

from configs import common

TINY_VIT = dict(width=96, depth=4, num_heads=3, mlp_dim=384, patch_size=8, image_size=32)
# SynthFER's pixels spread over about [0.25, 0.75] of the range.
NORMALISATION = dict(mean=(0.5,) * 3, std=(0.25,) * 3)
# Adapter widths for the tiny ViT: about a tenth of the backbone's parameters each.
TINY_ADAPTERS = {'fe_adapter': 48, 'fe_multibranch': 48, 'st_adapter': 48}
# SynthFER's clip variants (feadapter_jax/data/synth_fer/builder.py): the quick demo, and the
# benchmark that separates methods (subtle short expressions, occluders, imbalanced classes;
# hard_mafw: MAFW's 11 classes).
VIDEO_VARIANTS = ('video', 'hard', 'hard_mafw')
SYNTH = dict(num_train=1400, num_validation=280, num_test=280, num_frames=8, resolution=32)


def synth_data(variant: str, quick: bool, **overrides) -> ml_collections.ConfigDict:
  synth = dict(SYNTH, seed=0)
  if quick:
    synth.update(num_train=160, num_validation=64, num_test=64)
  data = common.data_config(
      'synth_fer',
      variant,
      **{
          'eval_split': 'test',
          'val_split': 'validation',  # SynthFER renders one: it selects the checkpoint.
          'image_size': TINY_VIT['image_size'],
          'num_frames': synth['num_frames'],
          'crop_scale': (0.85, 1.0),
          'shuffle_buffer': 2048,
          **overrides,
      },
  )
  data.synth.update(synth)
  return data


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(
      arg, method='fe_adapter', seed=0, quick=False, init='default', fold=0, variant='video'
  )
  if arg.variant not in VIDEO_VARIANTS:
    raise ValueError(f'variant={arg.variant!r}; known: {", ".join(VIDEO_VARIANTS)}')
  if arg.init == 'default':
    arg.init = '' if arg.quick else 'workdirs/synth_image/export'
  c = common.base_config(arg.method)
  c.seed = arg.seed
  c.model.drop_path_rate = 0.0
  c.model.head_dropout = 0.0
  if arg.method in TINY_ADAPTERS:
    c.model.adapter.width = TINY_ADAPTERS[arg.method]
  c.init.checkpoint = arg.init
  c.data = synth_data(arg.variant, arg.quick)
  c.data.synth.seed = arg.fold
  c.model.num_classes = 11 if arg.variant == 'hard_mafw' else 7
  if not arg.init:
    # No image classifier to take them from: the one configs/synthetic_image.py would make.
    c.model.update(TINY_VIT)
    c.data.update(NORMALISATION)
    c.init.random_backbone = arg.quick
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_epochs = 2.0 if arg.quick else 9.0
  c.label_smoothing = 0.0
  if arg.variant != 'video':
    c.class_weights = 'balanced'
  c.optim.lr = 3e-3 if arg.method != 'full_finetune' else 5e-4
  c.optim.warmup_epochs = 0.5
  c.log_every_steps = 5 if arg.quick else 20
  c.checkpoint_every_steps = 50
  return c
