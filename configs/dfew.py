r"""DFEW, 5-fold, 7 classes: FE-Adapter on a frozen image emotion classifier (e.g. a ViT-B/16).

  python -m feadapter_jax.main --config=configs/dfew.py:fold=1 --workdir=workdirs/dfew_fold1 \
      --config.init.checkpoint=CONVERTED_VIT_DIR

The backbone comes first: convert a PyTorch ViT with
`python -m feadapter_jax.convert --checkpoint=PYTORCH_FILE --out=CONVERTED_VIT_DIR`; its
model_config.json sets the architecture, the LayerNorm epsilon and the input normalisation.

Data: the user's licensed copy in data/manual/dfew (layout: data/README.md); prepared into
data/tfds on first use. Recipe (configs/recipes.py, docs/recipes.md): `paper` (FE-Adapter's
16 frames x 224, one clip, with the peers' AdamW core), `s2d` or `fru` (S2D's, FRU-Adapter's
published protocols). Paper (FE-Adapter, as quoted by FRU-Adapter Table 1): UAR 60.89 / WAR
73.67, mean of 5 folds.
Args: fold=1..5, method=..., recipe=paper|s2d|fru, frames16 (read Clip/clip_224x224_16f),
seed=N.
"""

import ml_collections

from configs import common
from configs import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, fold=1, method='fe_adapter', seed=0, frames16=False, recipe='paper')
  if not 1 <= arg.fold <= 5:
    raise ValueError(f'fold={arg.fold}: DFEW has folds 1..5')
  c = common.base_config(arg.method)
  c.seed = arg.seed
  c.data = common.data_config('dfew', f'fold{arg.fold}' + ('_16f' if arg.frames16 else ''))
  # Model selection on 10% of each class of the train split, held out (never trained on).
  c.data.val_fraction = 0.1
  c.model.num_classes = 7
  recipes.apply(c, arg.recipe, 'dfew')
  return c
