r"""The dynamic dilation's own cost: the FE adapter's conv, dynamic against a fixed 3x3x3 one.

  python benchmarks/dilation.py --size base            # ViT-B/16's adapter: 16 x 14 x 14 x 352
  python benchmarks/dilation.py --size tiny --json
  python benchmarks/dilation.py --size tiny --kernels reference   # XLA's own convolutions

A whole train step is too noisy to resolve a few percent (on a shared machine two ViT-B/16 steps
differ by more than that from one minute to the next), so this times the one part that differs:
the adapter's conv, forward plus the backward a FE-Adapter step needs (gradients with respect to
its input and its parameters), jitted alone at the block's shape, the two variants interleaved
for `--repeats` rounds (the best counts). `train_step.py` turns the difference into a share of
the fixed-conv train step: depth x (dynamic - fixed) / step time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import train_step  # pylint: disable=g-import-not-at-top


def time_convs(size: str, repeats: int, kernels: str = 'auto') -> dict:
  """Best forward+backward seconds of each conv variant at `size`'s adapter shape.

  `kernels`: the `model.kernels` form the convs are computed with (`models/kernels.py`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from feadapter_jax.methods import AdapterConfig  # pylint: disable=g-import-not-at-top
  from feadapter_jax.models import adapters  # pylint: disable=g-import-not-at-top
  from feadapter_jax.models import kernels as kernels_lib  # pylint: disable=g-import-not-at-top

  sp = train_step.spec(size, 'fe_adapter')
  cfg = AdapterConfig.from_dict(sp['model']['adapter'])
  # The clips one train step sees, on the model's patch grid.
  b, t = sp['batch'], sp['frames']
  g = sp['model']['image_size'] // sp['model']['patch_size']
  rng = np.random.default_rng(0)
  x, cotangent = (
      jnp.asarray(rng.standard_normal((b, t, g, g, cfg.width), np.float32)) for _ in range(2)
  )
  kernels = kernels_lib.resolve(kernels)
  variants = {
      conv: adapters.make_conv(dataclasses.replace(cfg, conv=conv), kernels=kernels)
      for conv in ('dynamic', 'fixed')
  }
  steps = {}
  for name, conv in variants.items():
    params = conv.init(jax.random.PRNGKey(0), x)
    # Non-zero parameters: the zero-initialised dilation predictor would make every read integral.
    params = jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), params)

    # The output and the backward of a given cotangent, as in the step, where the cotangent
    # comes materialised from `up`'s backward matmul. A loss such as sum(y ** 2) would let XLA
    # fuse its cotangent 2 y into every backward consumer and recompute the forward in each.
    def forward_backward(p, v, g, conv=conv):
      y, vjp = jax.vjp(conv.apply, p, v)
      return y, vjp(g)

    compiled = (
        jax.jit(forward_backward)
        .lower(params, x, cotangent)
        .compile(compiler_options=kernels_lib.compiler_options(sp['cpu_compiler_options']))
    )
    steps[name] = (compiled, params)
  best = {name: float('inf') for name in steps}
  for _ in range(repeats):
    for name, (compiled, params) in steps.items():
      jax.block_until_ready(compiled(params, x, cotangent))
      start = time.perf_counter()
      jax.block_until_ready(compiled(params, x, cotangent))
      best[name] = min(best[name], time.perf_counter() - start)
  return {
      'size': size,
      'shape': [b, t, g, g, cfg.width],
      'depth': sp['model']['depth'],
      'repeats': repeats,
      'kernels': kernels,
      'dynamic_s': best['dynamic'],
      'fixed_s': best['fixed'],
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', choices=tuple(train_step.SIZES), default='tiny')
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--kernels', choices=('auto', 'reference', 'cpu'), default='auto')
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  r = time_convs(args.size, args.repeats, args.kernels)
  if args.json:
    print(json.dumps(r))
  else:
    print(
        f"Adapter conv at {r['shape']} (b t h w c), kernels={r['kernels']}, forward + input "
        f"and parameter gradients, best of {r['repeats']}: dynamic "
        f"{1e3 * r['dynamic_s']:.2f} ms, fixed 3x3x3 {1e3 * r['fixed_s']:.2f} ms; "
        f"x {r['depth']} blocks: "
        f"{1e3 * r['depth'] * (r['dynamic_s'] - r['fixed_s']):+.1f} ms per step"
    )


if __name__ == '__main__':
  main()
