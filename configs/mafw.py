r"""MAFW, 5-fold, 11 classes (single-label, no caption): FE-Adapter on a frozen image classifier.

  python -m feadapter_jax.main --config=configs/mafw.py:fold=1 --workdir=workdirs/mafw_fold1 \
      --config.init.checkpoint=CONVERTED_VIT_DIR

The backbone comes first: convert a PyTorch ViT with
`python -m feadapter_jax.convert --checkpoint=PYTORCH_FILE --out=CONVERTED_VIT_DIR`; its
model_config.json sets the architecture, the LayerNorm epsilon and the input normalisation.

Paper (FE-Adapter, as quoted by FRU-Adapter Table 1): UAR 39.41 / WAR 55.02, mean of 5 folds.
Args: fold=1..5, method, seed, recipe=paper|s2d|fru (configs/recipes.py, docs/recipes.md).
"""

import ml_collections

from configs import common
from configs import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, fold=1, method='fe_adapter', seed=0, recipe='paper')
  if not 1 <= arg.fold <= 5:
    raise ValueError(f'fold={arg.fold}: MAFW has folds 1..5')
  c = common.base_config(arg.method)
  c.seed = arg.seed
  c.data = common.data_config('mafw', f'fold{arg.fold}')
  # Model selection on 10% of each class of the train split, held out (never trained on).
  c.data.val_fraction = 0.1
  c.model.num_classes = 11
  recipes.apply(c, arg.recipe, 'mafw')
  return c
