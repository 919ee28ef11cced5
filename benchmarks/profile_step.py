r"""Where a train step's time goes: XLA ops by time, grouped by what they compute.

  python benchmarks/profile_step.py --size base --method fe_adapter
  python benchmarks/profile_step.py --size tiny --method full_finetune --top 20

Builds the same jitted step as `train_step.py` (one host device), traces `--steps` steps with
`jax.profiler`, and sums the executed XLA ops' durations (as the thread that runs each op records
it; an op's own worker threads are inside that time). Each
op is classified from the compiled HLO: 'matmul' (a dot or a convolution, fused or not),
'reduction' (a fusion or op that reduces), 'elementwise' (other fusions), 'copy/layout' (copy,
transpose, pad, slice, concatenate). Shares are of the summed op time; the wall time per step
is printed beside it (op time below the wall time: gaps between ops; above it: ops overlapping).
A last table sums the matmul ops by output shape (the block GEMMs against attention's batched ones).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import common, train_step  # pylint: disable=g-import-not-at-top

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+([\w\-]+)\(')
_CALLS = re.compile(r'calls=%?([\w.\-]+)')
_LAYOUT_OPS = {
    'copy',
    'transpose',
    'pad',
    'slice',
    'concatenate',
    'dynamic-slice',
    'dynamic-update-slice',
    'bitcast',
    'broadcast',
    'reshape',
}


def classify_hlo(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (category, shape)} for the compiled module's instructions."""
  computations: dict[str, list[str]] = {}  # computation -> opcodes in it
  current = None
  instructions = {}
  for line in hlo_text.splitlines():
    header = re.match(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$', line)
    if header and '=' not in line.split('{')[0]:
      current = header.group(1)
      computations[current] = []
      continue
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      name, shape, opcode = m.groups()
      computations[current].append(opcode)
      calls = _CALLS.search(line)
      instructions[name] = (opcode, shape, calls.group(1) if calls else None)

  def ops_in(comp: str | None) -> set[str]:
    return set(computations.get(comp, ())) if comp else set()

  out = {}
  for name, (opcode, shape, calls) in instructions.items():
    inner = ops_in(calls) | {opcode}
    if inner & {'dot', 'convolution'}:
      category = 'matmul'
    elif inner & {'reduce', 'reduce-window'}:
      category = 'reduction'
    elif opcode == 'fusion' and not inner - _LAYOUT_OPS - {'fusion', 'parameter', 'constant'}:
      category = 'copy/layout'
    elif opcode == 'fusion' or opcode not in _LAYOUT_OPS:
      category = 'elementwise'
    else:
      category = 'copy/layout'
    out[name] = (category, shape)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', choices=tuple(train_step.SIZES), default='tiny')
  parser.add_argument('--method', choices=train_step.METHODS, default='fe_adapter')
  parser.add_argument('--conv', default=None, help="override adapter.conv (e.g. 'fixed')")
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--top', type=int, default=15)
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  from jax import profiler  # pylint: disable=g-import-not-at-top

  sp = train_step.spec(args.size, args.method, conv=args.conv)
  run, step_fn = train_step.build_jax(sp, None, with_hlo=True)
  categories = classify_hlo(run['hlo'])
  step_fn()  # warm
  with tempfile.TemporaryDirectory() as trace_dir:
    start = time.perf_counter()
    profiler.start_trace(trace_dir)
    for _ in range(args.steps):
      step_fn()
    profiler.stop_trace()
    wall = (time.perf_counter() - start) / args.steps
    path = sorted(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True))[-1]
    data = profiler.ProfileData.from_file(path)
    per_op: collections.Counter = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        if 'XLAEigen' not in line.name and 'XLACpu' not in line.name:
          continue  # only the threads that execute XLA's kernels
        for event in line.events:
          if event.name in categories:
            per_op[event.name] += event.duration_ns / 1e9 / args.steps

  busy = sum(per_op.values())
  by_category: collections.Counter = collections.Counter()
  for name, seconds in per_op.items():
    by_category[categories[name][0]] += seconds
  print(f"## Profile: {sp['label']}, {args.size} (batch {sp['batch']} x {sp['frames']} frames)")
  print(
      f'Wall {wall:.3f} s per step (profiler on); XLA ops {busy:.3f} s per step summed, on a '
      f'{common.cores()}-core machine.\n'
  )
  print(
      common.markdown_table(
          ['category', 's / step', 'share'],
          [[c, f'{s:.3f}', f'{100 * s / busy:.1f}%'] for c, s in by_category.most_common()],
      )
  )
  print()
  print(
      common.markdown_table(
          ['op', 'category', 'shape', 's / step', 'share'],
          [
              [
                  name,
                  categories[name][0],
                  categories[name][1][:48],
                  f'{s:.3f}',
                  f'{100 * s / busy:.1f}%',
              ]
              for name, s in per_op.most_common(args.top)
          ],
      )
  )
  # Matmuls by output shape: which GEMMs (block matmuls, attention's batched ones) cost what.
  by_shape: collections.Counter = collections.Counter()
  count: collections.Counter = collections.Counter()
  for name, seconds in per_op.items():
    if categories[name][0] == 'matmul':
      by_shape[categories[name][1]] += seconds
      count[categories[name][1]] += 1
  print()
  print(
      common.markdown_table(
          ['matmul output shape', 'ops / step', 's / step', 'ms per op'],
          [
              [shape, str(count[shape]), f'{s:.3f}', f'{1e3 * s / count[shape]:.2f}']
              for shape, s in by_shape.most_common(args.top)
          ],
      )
  )


if __name__ == '__main__':
  main()
