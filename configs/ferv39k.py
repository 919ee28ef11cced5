r"""FERV39k (official train/test), 7 classes: FE-Adapter on a frozen image emotion classifier.

  python -m feadapter_jax.main --config=configs/ferv39k.py --workdir=workdirs/ferv39k \
      --config.init.checkpoint=CONVERTED_VIT_DIR

The backbone comes first: convert a PyTorch ViT with
`python -m feadapter_jax.convert --checkpoint=PYTORCH_FILE --out=CONVERTED_VIT_DIR`; its
model_config.json sets the architecture, the LayerNorm epsilon and the input normalisation.

Paper (FE-Adapter, as quoted by FRU-Adapter Table 1): UAR 41.44 / WAR 52.11.
Args: method, seed, recipe=paper|s2d|fru (configs/recipes.py, docs/recipes.md).
"""

import ml_collections

from configs import common
from configs import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, method='fe_adapter', seed=0, recipe='paper')
  c = common.base_config(arg.method)
  c.seed = arg.seed
  c.data = common.data_config('ferv39k')
  # Model selection on 10% of each class of the train split, held out (never trained on).
  c.data.val_fraction = 0.1
  c.model.num_classes = 7
  recipes.apply(c, arg.recipe, 'ferv39k')
  return c
