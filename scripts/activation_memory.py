r"""Estimates training memory per clip from the activations that autodiff saves for the backward.

  python scripts/activation_memory.py [--method=fe_adapter] [--backend=gpu] [--remat]

Builds the model of `configs/dfew.py` (ViT-B/16, 16 x 224 x 224; dtype and kernels resolved as
on `--backend`: bfloat16 and XLA's own kernels on gpu/tpu) and traces the loss's VJP for 1 and
2 clips, without running it. The residuals it saves (`jax.ad_checkpoint.print_saved_residuals`,
parameters left out) grow by the per-clip figure with each clip; the rest is the batch-free part
(e.g. bfloat16 copies of the weights). These are what the graph saves before XLA optimises it:
an estimate, not a measurement. Parameters, optimizer state and XLA's workspace come on top.
"""

import argparse
import contextlib
import io
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
from jax import ad_checkpoint
import jax.numpy as jnp
import numpy as np
import optax

from configs import common  # pylint: disable=g-import-not-at-top
from feadapter_jax import methods
from feadapter_jax import partition
from feadapter_jax.models import builder
from feadapter_jax.models import kernels

_RESIDUAL = re.compile(r'^([a-z]+\d*)\[([\d,]*)\] (.*)$')
_DTYPES = {'f32': 'float32', 'bf16': 'bfloat16', 'f16': 'float16', 'bool': 'bool'}


def saved_bytes(method: str, backend: str, remat: bool, clips: int) -> tuple[int, dict]:
  """Bytes of the residuals (not parameters) the loss's VJP saves for `clips` clips."""
  config = common.base_config(method)
  config.data = common.data_config('dfew', 'fold1')
  config.model.remat = remat
  config = builder.resolve_backend(config, backend)
  config.model.kernels = kernels.resolve(config.model.kernels, backend)  # that backend's forms
  model = builder.build_model(config)
  shapes = builder.param_shapes(model, builder.clip_shape(config))
  mask = partition.trainable_mask(shapes, config.trainable)
  video = jax.ShapeDtypeStruct((clips, *builder.clip_shape(config)[1:]), config.model.dtype)
  labels = jnp.zeros((clips,), jnp.int32)

  def loss(params, video):
    logits = model.apply(
        {'params': partition.stop_frozen(params, mask)},
        video,
        train=True,
        rngs={'dropout': jax.random.PRNGKey(0)},
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    ad_checkpoint.print_saved_residuals(loss, shapes, video)
  total = 0
  for line in out.getvalue().splitlines():
    match = _RESIDUAL.match(line)
    if not match or match.group(3).startswith('from the argument'):
      continue
    dtype = np.dtype(_DTYPES.get(match.group(1), 'int32'))  # i32/u32 scalars: 4 bytes
    total += int(np.prod([int(d) for d in match.group(2).split(',') if d])) * dtype.itemsize
  return total, config.model.to_dict()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--method', default='fe_adapter', choices=tuple(methods.METHODS))
  parser.add_argument('--backend', default='gpu', choices=('cpu', 'gpu', 'tpu'))
  parser.add_argument('--remat', action='store_true', help='model.remat=True')
  args = parser.parse_args()
  one, model = saved_bytes(args.method, args.backend, args.remat, 1)
  two, _ = saved_bytes(args.method, args.backend, args.remat, 2)
  gib = 2**30
  print(
      f'{args.method}, ViT-B/16, 16 x 224 x 224, {model["dtype"]}, kernels {model["kernels"]}, '
      f'remat {args.remat}: saved activations {(two - one) / gib:.2f} GiB per clip '
      f'+ {(2 * one - two) / gib:.2f} GiB per step'
  )


if __name__ == '__main__':
  main()
