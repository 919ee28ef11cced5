"""configs/dfew.py with the tests' tiny ViT (its B/16 preset has no fields to shrink it by)."""

import ml_collections

from configs import dfew
from tests import tiny


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = dfew.get_config(arg)
  config.model.update({k: v for k, v in tiny.TINY.items() if k != 'num_classes'}, variant='')
  return config
