"""configs/dfew.py with the tests' tiny ViT, random: these tests are about the data."""

import ml_collections

from configs import dfew
from tests import tiny


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = dfew.get_config(arg)
  config.model.update({k: v for k, v in tiny.TINY.items() if k != 'num_classes'})
  config.init.random_backbone = True
  return config
