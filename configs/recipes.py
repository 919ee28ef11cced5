"""Training recipes of the DFER papers: `configs/{dfew,ferv39k,mafw}.py:recipe=paper|s2d|fru`.

Each recipe sets the frames, resolution, epochs, batch, optimizer, schedule, regularisation,
augmentation and test views that a paper published, so a run can be compared with that paper's
table. Only the training recipe is taken; the model stays the one `method` names (FE-Adapter by
default). docs/recipes.md tabulates what each sets.

Sources (read 2026-12-01):
  * paper: FE-Adapter (Gowda, Gao, Clifton, arXiv 2408.02421) as quoted by FRU-Adapter's
    Table 1: 16 frames, uniform sampling, one clip at test. The rest of its training recipe is not
    published; ours follows the peers' common core: AdamW (0.9, 0.999), weight decay 0.05, lr
    1e-3 with 5 warm-up epochs and cosine decay to 1e-5, 100 epochs, batch 32, flip and random
    resized crop (area 0.8-1), label smoothing 0.1, no RandAugment, mixup or erasing.
  * s2d: S2D (Chen et al., IEEE TAFFC 2024), github.com/MSA-LMC/S2D: scripts/ft_{dfew,ferv39k,
    mafw}.sh and the argument defaults of run_class_finetuning.py. 16 frames at sampling rate 1
    (DFEW from clip_224x224_16f), batch 8 x 2 GPUs = 16, lr 1e-5 scaled by batch / 8 = 2e-5,
    minimum lr 1e-8 x 16 / 256, 2 warm-up epochs, 100 epochs, AdamW (0.9, 0.999), wd 0.05,
    RandAugment rand-m7-n4-mstd0.5-inc1, random erasing 0.25, mixup 0.8 / cutmix 1.0 (switch
    0.5), label smoothing 0.1, head dropout 0.5, test 2 clips x 2 crops. FERV39k: no mixup, no
    smoothing, no head dropout (`--ban_mixup --smoothing 0 --dropout_ratio 0`).
  * fru: FRU-Adapter (Her, Nabi, Han, Electronics 2025), github.com/SeoulTech-HCIRLab/FRU-Adapter:
    scripts/{dfew,FERV39k,mafw}/main*.sh and main_org.py's defaults. DFEW and FERV39k: lr 1e-3
    to 1e-4 (unscaled: the script's scaling is commented out), 5 warm-up epochs, batch 5 x 4
    GPUs = 20, no mixup, no label smoothing. MAFW: lr 1e-4 to 1e-5, no warm-up, batch 4 x 4 =
    16, mixup 0.8 / cutmix 1.0, smoothing 0.1. All: 100 epochs, AdamW (0.9, 0.999), wd 0.05,
    drop path 0.1, RandAugment rand-m7-n4-mstd0.5-inc1, random erasing 0.25, test 2 x 2.

What differs from the published runs, and why:
  * frames are sampled one per equal segment (TSN), in every recipe; S2D and FRU-Adapter take 16
    consecutive frames at a stride (1, or 4 on DFEW/MAFW for FRU-Adapter), from the 16-frame
    DFEW/MAFW extractions where they exist, where the two coincide;
  * the test takes 2 clips x 1 crop: the published second crop lies along the longer side of
    frames resized to a short side of 224, which on square face frames is the first crop again;
  * the warm-up starts at 0, not at the papers' warm-up lr (1e-7 x batch / 256 for S2D, 1e-4 for
    FRU-Adapter);
  * S2D's SDL loss and landmark prompts, and FRU-Adapter's own adapter, belong to their models,
    not to the recipe.
  * The batch sizes are the published ones; on a mesh they must divide over the devices (the run
    stops with a message otherwise: set `--config.batch_size`).
"""

import ml_collections

RECIPES = ('paper', 's2d', 'fru')
DATASETS = ('dfew', 'ferv39k', 'mafw')
RANDAUGMENT = 'rand-m7-n4-mstd0.5-inc1'
# VideoMAE's random resized crop, which both peers' loaders use.
VIDEO_CROP_SCALE = (0.08, 1.0)


def _peer_augmentation(c: ml_collections.ConfigDict) -> None:
  c.data.update(
      randaugment=RANDAUGMENT,
      erase_prob=0.25,
      crop_scale=VIDEO_CROP_SCALE,
      crop_ratio=(3 / 4, 4 / 3),
      # Published: 2 clips x 2 crops, the crops along the longer side of frames resized to a
      # short side of 224 (VideoMAE's test loader). On square face frames the two crops are the
      # same, so 2 x 1 computes the published protocol's views.
      num_clips=2,
      num_crops=1,
  )


def _mixup(c: ml_collections.ConfigDict, on: bool) -> None:
  c.mixup.update(mixup_alpha=0.8 if on else 0.0, cutmix_alpha=1.0 if on else 0.0)


def apply(c: ml_collections.ConfigDict, recipe: str, dataset: str) -> None:
  """Sets `recipe`'s published values for `dataset` on the training config `c` (in place).

  Raises:
    ValueError: an unknown recipe or dataset, naming the allowed values.
  """
  if recipe not in RECIPES:
    raise ValueError(f'recipe={recipe!r} is not a recipe; known: {", ".join(RECIPES)}')
  if dataset not in DATASETS:
    raise ValueError(f'dataset={dataset!r} has no recipes; known: {", ".join(DATASETS)}')
  c.recipe = recipe
  c.data.update(num_frames=16, image_size=224, num_clips=1, num_crops=1)
  c.num_epochs = 100.0
  c.optim.update(b1=0.9, b2=0.999, weight_decay=0.05)
  if recipe == 'paper':
    c.batch_size = 32
    c.optim.update(lr=1e-3, end_lr_factor=0.01, warmup_epochs=5.0)
    c.label_smoothing = 0.1
    return
  _peer_augmentation(c)
  if recipe == 's2d':
    c.batch_size = 16
    c.optim.update(lr=2e-5, end_lr_factor=(1e-8 * 16 / 256) / 2e-5, warmup_epochs=2.0)
    on = dataset != 'ferv39k'
    _mixup(c, on)
    c.label_smoothing = 0.1 if on else 0.0
    c.model.head_dropout = 0.5 if on else 0.0
    return
  # fru
  c.model.drop_path_rate = 0.1
  if dataset == 'mafw':
    c.batch_size = 16
    c.optim.update(lr=1e-4, end_lr_factor=0.1, warmup_epochs=0.0)
    _mixup(c, True)
    c.label_smoothing = 0.1
  else:
    c.batch_size = 20
    c.optim.update(lr=1e-3, end_lr_factor=0.1, warmup_epochs=5.0)
    _mixup(c, False)
    c.label_smoothing = 0.0
