r"""DFEW, 5-fold, 7 classes: FE-Adapter on a frozen image emotion classifier (e.g. a ViT-B/16).

  python -m feadapter_jax.main --config=configs/dfew.py:fold=1 --workdir=workdirs/dfew_fold1 \
      --config.init.checkpoint=CONVERTED_VIT_DIR

The backbone comes first: convert a PyTorch ViT with
`python -m feadapter_jax.convert --checkpoint=PYTORCH_FILE --out=CONVERTED_VIT_DIR`; its
model_config.json sets the architecture, the LayerNorm epsilon and the input normalisation.

Data: the user's licensed copy in data/manual/dfew (layout: data/README.md); prepared into
data/tfds on first use. Recipe after S2D / FRU-Adapter (AdamW, wd 0.05, lr 1e-3, warm-up +
cosine, 16 frames x 224, flip + random resized crop, 100 epochs). Paper (FE-Adapter, as quoted
by FRU-Adapter Table 1): UAR 60.89 / WAR 73.67, mean of 5 folds.
Args: fold=1..5, method=..., frames16 (read Clip/clip_224x224_16f), seed=N.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, fold=1, method='fe_adapter', seed=0, frames16=False)
  if not 1 <= arg.fold <= 5:
    raise ValueError(f'fold={arg.fold}: DFEW has folds 1..5')
  c = common.base_config(arg.method)
  c.seed = arg.seed
  c.data = common.data_config('dfew', f'fold{arg.fold}' + ('_16f' if arg.frames16 else ''))
  c.model.num_classes = 7
  return c
