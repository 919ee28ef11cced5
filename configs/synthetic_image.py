r"""Pre-trains the tiny image emotion classifier on SynthFER's image variant.

The video configs (`configs/synthetic.py`) adapt it, as FE-Adapter adapts an AffectNet ViT:

  python -m feadapter_jax.main --config=configs/synthetic_image.py --workdir=workdirs/synth_image

Trains every parameter from a random init, so it needs no backbone. Writes
workdirs/synth_image/export (params + model_config.json with the architecture and the input
normalisation, which the video configs take from it). Args: seed=N, quick.
"""

import ml_collections

from configs import common
from configs import synthetic


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, seed=0, quick=False)
  c = common.base_config('full_finetune')
  c.seed = arg.seed
  c.model.update(synthetic.TINY_VIT)
  c.model.drop_path_rate = 0.0
  c.model.head_dropout = 0.0
  c.data = synthetic.synth_data('image', arg.quick, num_frames=1, **synthetic.NORMALISATION)
  c.batch_size = 64
  c.eval_batch_size = 128
  c.num_epochs = 2.0 if arg.quick else 15.0
  c.label_smoothing = 0.0
  c.optim.lr = 1e-3
  c.optim.warmup_epochs = 1.0
  c.log_every_steps = 5 if arg.quick else 25
  c.checkpoint_every_steps = 100
  return c
