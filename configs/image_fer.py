r"""The image stage: an image emotion classifier fine-tuned from a converted backbone.

  python -m feadapter_jax.main --config=configs/image_fer.py:dataset=rafdb,init=CONVERTED_VIT_DIR \
      --workdir=workdirs/rafdb_vit_b16

Trains a backbone that `python -m feadapter_jax.convert` made (any family it reads: an ImageNet,
CLIP or DINOv2 ViT) on single face images through the same trainer as the videos (1-frame
clips), and reports WAR and UAR on the test split. Its `export/` is a backbone directory that the
video configs take as `init` (`configs/dfew.py` with `--config.init.checkpoint=WORKDIR/export`);
its model_config.json names the classes, so a video run keeps the head when the video dataset's
classes are among them (RAF-DB's seven are DFEW's and FERV39k's), rows put in the video
dataset's order by emotion (`config.init.head`).

Args:
  dataset: rafdb (RAF-DB basic, aligned crops) | affectnet7 | affectnet8 | fer2013 | ferplus.
  method: full_finetune (every parameter) | linear_probe (the head only).
  init: the converted backbone directory (or --config.init.checkpoint=DIR); a run without one
    stops: a random ViT fine-tuned on faces is not the classifier FE-Adapter adapts.
  seed: N.

The recipe is a plain fine-tuning one at the backbone's own resolution (224), not tuned per
dataset: AdamW with layer-free lr (5e-5 full fine-tuning, 1e-3 linear probe), weight decay 0.05,
2 warm-up epochs then cosine, batch 64, label smoothing 0.1, random resized crop (area 0.8-1)
and horizontal flip; 30 epochs (AffectNet: 10, it is ~15x RAF-DB's size).
"""

import ml_collections

from configs import common

# dataset arg -> (TFDS builder, builder config, classes).
DATASETS = {
    'rafdb': ('rafdb', 'aligned', 7),
    'affectnet7': ('affectnet', '7class', 7),
    'affectnet8': ('affectnet', '8class', 8),
    'fer2013': ('fer2013', '', 7),
    'ferplus': ('ferplus', '', 8),
}
METHODS = ('full_finetune', 'linear_probe')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, dataset='rafdb', method='full_finetune', init='', seed=0)
  if arg.dataset not in DATASETS:
    raise ValueError(f'dataset={arg.dataset!r}: one of {", ".join(DATASETS)}')
  if arg.method not in METHODS:
    raise ValueError(f'method={arg.method!r}: the image stage trains {", ".join(METHODS)}')
  name, builder_config, classes = DATASETS[arg.dataset]
  c = common.base_config(arg.method)
  c.seed = arg.seed
  c.init.checkpoint = arg.init  # or --config.init.checkpoint=DIR
  c.init.required = True  # a run without a backbone stops (backbone.require_checkpoint)
  c.init.head = 'drop'  # the backbone's head classifies ImageNet (or nothing): a new one
  c.data = common.data_config(name, builder_config, num_frames=1)
  c.model.num_classes = classes
  c.model.head_dropout = 0.0
  c.batch_size = 64
  c.eval_batch_size = 128
  c.num_epochs = 10.0 if name == 'affectnet' else 30.0
  c.optim.lr = 5e-5 if arg.method == 'full_finetune' else 1e-3
  c.optim.warmup_epochs = 2.0
  return c
