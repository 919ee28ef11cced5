"""Input pipeline throughput: training clips per second, per CPU core.

Renders a SynthFER dataset of 224x224 JPEG frames (16 per clip) into a temporary data_dir, then
runs the training pipeline (decode of the sampled frames, random resized crop, flip, resize to
uint8 batches, which the train step normalises on the device) with 1 core and with every core
this process may use. Each setting runs in its own process pinned to that many cores (before
TensorFlow starts its threads), with a tf.data threadpool of the same size.

  python benchmarks/input_pipeline.py            # table
  python benchmarks/input_pipeline.py --json     # one JSON object per row

Target: >= 25 clips/s per core (16 frames at 224x224).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--clips', type=int, default=64, help='clips in the train split')
  parser.add_argument('--frames', type=int, default=16, help='frames per clip (stored, sampled)')
  parser.add_argument('--size', type=int, default=224, help='stored and model resolution')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--warmup_batches', type=int, default=4)
  parser.add_argument('--batches', type=int, default=24, help='timed batches per setting')
  parser.add_argument('--data_dir', default=None, help='reuse a data_dir (default: temporary)')
  parser.add_argument('--json', action='store_true', help='print rows as JSON lines')
  parser.add_argument('--cores', type=int, default=None, help=argparse.SUPPRESS)  # worker mode
  return parser.parse_args()


def _data_config(args: argparse.Namespace, data_dir: str, cores: int):
  # Imported here: a worker must pin its cores before TensorFlow starts.
  from configs import common  # pylint: disable=g-import-not-at-top

  config = common.data_defaults()
  config.data_dir = data_dir
  config.num_frames = args.frames
  config.image_size = args.size
  config.num_threads = cores
  config.num_parallel_calls = cores
  config.synth.update(
      {
          'num_train': args.clips,
          'num_validation': args.batch_size,
          'num_test': args.batch_size,
          'num_frames': args.frames,
          'resolution': args.size,
      }
  )
  return config


def _worker(args: argparse.Namespace) -> dict[str, float | int]:
  """Times the train iterator on `args.cores` cores; returns one result row."""
  allowed = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, allowed[: args.cores])
  from feadapter_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  config = _data_config(args, args.data_dir, args.cores)
  iterator = pipeline.make_train_iterator(
      config, batch_size=args.batch_size, seed=0, process_index=0, process_count=1
  )
  for _ in range(args.warmup_batches):
    next(iterator)
  start = time.perf_counter()
  for _ in range(args.batches):
    next(iterator)
  seconds = time.perf_counter() - start
  clips_per_s = args.batches * args.batch_size / seconds
  return {
      'cores': args.cores,
      'frames': args.frames,
      'size': args.size,
      'batch_size': args.batch_size,
      'clips': args.batches * args.batch_size,
      'seconds': round(seconds, 3),
      'clips_per_s': round(clips_per_s, 2),
      'clips_per_s_per_core': round(clips_per_s / args.cores, 2),
  }


def _run(args: argparse.Namespace, data_dir: str) -> list[dict[str, float | int]]:
  from feadapter_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its progress on stdout.
    pipeline.get_builder(_data_config(args, data_dir, 0))
  print(f'dataset ready in {time.perf_counter() - start:.1f} s: {data_dir}', file=sys.stderr)
  rows = []
  for cores in sorted({1, len(os.sched_getaffinity(0))}):
    command = [
        sys.executable,
        os.path.abspath(__file__),
        '--cores',
        str(cores),
        '--data_dir',
        data_dir,
    ] + [f'--{k}={v}' for k, v in vars(args).items() if k not in ('cores', 'data_dir', 'json')]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rows.append(json.loads(output.strip().splitlines()[-1]))
  return rows


def main() -> None:
  args = _parse_args()
  if args.cores is not None:
    print(json.dumps(_worker(args)))
    return
  if args.data_dir:
    rows = _run(args, args.data_dir)
  else:
    with tempfile.TemporaryDirectory() as data_dir:
      rows = _run(args, data_dir)
  for row in rows:
    if args.json:
      print(json.dumps(row))
    else:
      print(
          f"{row['cores']:>2} core(s): {row['clips_per_s']:7.1f} clips/s  "
          f"{row['clips_per_s_per_core']:6.1f} clips/s/core  "
          f"({row['frames']} frames at {row['size']}x{row['size']}, "
          f"batch {row['batch_size']})"
      )


if __name__ == '__main__':
  main()
