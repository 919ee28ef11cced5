r"""FERV39k (official train/test), 7 classes: FE-Adapter on a frozen image emotion classifier.

  python -m feadapter_jax.main --config=configs/ferv39k.py --workdir=workdirs/ferv39k \
      --config.init.checkpoint=CONVERTED_VIT_DIR

The backbone comes first: convert a PyTorch ViT with
`python -m feadapter_jax.convert --checkpoint=PYTORCH_FILE --out=CONVERTED_VIT_DIR`; its
model_config.json sets the architecture, the LayerNorm epsilon and the input normalisation.

Paper (FE-Adapter, as quoted by FRU-Adapter Table 1): UAR 41.44 / WAR 52.11. Args: method, seed.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, method='fe_adapter', seed=0)
  c = common.base_config(arg.method)
  c.seed = arg.seed
  c.data = common.data_config('ferv39k')
  c.model.num_classes = 7
  return c
