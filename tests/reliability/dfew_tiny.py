"""configs/dfew.py with the tests' tiny ViT, random: these tests are about the data."""

import ml_collections

from configs import dfew
from tests import tiny


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = dfew.get_config(arg)
  config.model.update({k: v for k, v in tiny.TINY.items() if k != 'num_classes'})
  config.init.random_backbone = True
  # The miniature DFEW has a clip or two per class: too few to hold 10% of each out.
  config.data.val_fraction = 0.0
  return config
