r"""The exports' file sizes, and the exported models' speed next to the JAX model's.

  python benchmarks/export_speed.py --arch=tiny          # the tests' tiny ViT: a minute
  python benchmarks/export_speed.py --arch=B16           # ViT-B/16, 16 frames x 224: 8 minutes
  python benchmarks/export_speed.py --arch=B16 --activation=quick_gelu   # TensorFlow serves it
  python benchmarks/export_speed.py --arch=tiny --json   # one JSON line of the figures

Builds a finished FE-Adapter run on a RANDOM backbone (tests/tiny.py's writer at the arch's
sizes; `--arch=B16` is the paper's ViT-B/16 under `configs/dfew.py`'s adapters), its adapters and
head randomly perturbed so they act: its probabilities mean nothing, but its sizes and its speed
are those of a trained run of that architecture, which the values do not change. It writes the
run's three exports (`python -m feadapter_jax.export`: safetensors, SavedModel for `--platforms`,
ONNX), then times, on the same random uint8 clips, the run's jitted JAX eval step (as
evaluate/predict compute it), the SavedModel in TensorFlow and the ONNX file in ONNX Runtime:
the best of `--repeats` calls at batch 1 (ms per clip) and at `--batch` (clips/s), after one
warm-up call of each batch, and each one's max |probability difference| from JAX's. TensorFlow
and ONNX Runtime each serve in a child process of their own that imports no JAX, as a server
would (its peak resident memory is reported too); JAX times in this one. A runtime that fails
is reported with its last error line: TensorFlow 2.21 cannot read the `chlo.erf` composite that
JAX 0.10.2 writes for the exact GELU of timm's ViTs (B16's default), hence `--activation`.
B16 on 2 CPU cores takes about 16 s a clip: its defaults are 1 timed repeat and batch 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import common  # pylint: disable=g-import-not-at-top

# Each arch: the config its run takes (`{backbone}`: the random backbone's directory, which is
# also set as `init.checkpoint`), its overrides, the default --batch and --repeats, and the
# backbone's settings for tests/tiny.py's writer: tiny's are the tests' (tests/test_predict.py's
# BACKBONE), B16's timm's ViT-B/16's.
ARCHS = {
    'tiny': dict(
        config='configs/synthetic.py:quick,init={backbone}',
        overrides={'model.adapter.width': 8},
        batch=4,
        repeats=5,
        backbone=dict(
            width=32,
            depth=2,
            num_heads=2,
            mlp_dim=64,
            patch_size=8,
            image_size=32,
            layer_norm_eps=1e-12,
            activation='quick_gelu',
        ),
    ),
    'B16': dict(
        config='configs/dfew.py',
        overrides={},
        batch=2,
        repeats=1,
        backbone=dict(
            width=768,
            depth=12,
            num_heads=12,
            mlp_dim=3072,
            patch_size=16,
            image_size=224,
            activation='gelu',
        ),
    ),
}
# Marks the line a child process reports its JSON on.
MARK = 'EXPORT_SPEED_JSON '
# The scale of the noise added to the trainable parameters: the zero-initialised adapter layers
# become non-zero, so the adapters change the probabilities that are compared.
PERTURBATION = 0.02


def write_run(arch: str, directory: str, activation: str = '') -> str:
  """Writes a random backbone (with `activation`, '': the arch's) and a finished run on it
  (config.json, export/, results.json) as training writes them, under `directory`; returns the
  run's workdir."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from feadapter_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from feadapter_jax import cli  # pylint: disable=g-import-not-at-top
  from feadapter_jax import partition  # pylint: disable=g-import-not-at-top
  from feadapter_jax import train  # pylint: disable=g-import-not-at-top
  from feadapter_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from feadapter_jax.data.synth_fer import render  # pylint: disable=g-import-not-at-top
  from feadapter_jax.models import backbone  # pylint: disable=g-import-not-at-top
  from feadapter_jax.models import builder  # pylint: disable=g-import-not-at-top
  from tests import tiny  # pylint: disable=g-import-not-at-top

  spec = ARCHS[arch]
  backbone_dir = os.path.join(directory, 'backbone')
  settings = {**spec['backbone'], **({'activation': activation} if activation else {})}
  tiny.write_backbone(backbone_dir, num_classes=len(render.CLASS_NAMES), **settings)
  config = cli.load_config(
      os.path.join(ROOT, spec['config'].format(backbone=backbone_dir)),
      {'init.checkpoint': backbone_dir, **spec['overrides']},
  )
  config = train.resolve_config(config)
  model = builder.build_model(config)
  shapes = builder.param_shapes(model, builder.clip_shape(config))
  mask = partition.trainable_mask(shapes, config.trainable)
  initial = builder.initial_params(model, config, builder.load_backbone(config, shapes))
  rng = np.random.default_rng(config.seed)
  trained = jax.tree.map(
      lambda x: np.asarray(x) + PERTURBATION * rng.standard_normal(x.shape, np.float32),
      jax.device_get(partition.subtree(initial, mask)),
  )
  workdir = os.path.join(directory, 'wd')
  export = workdir_lib.path(workdir, workdir_lib.EXPORT_DIR)
  class_names = list(render.CLASS_NAMES)
  checkpoint.save_params(export, trained, backbone.directory_config(config, class_names))
  init = {'backbone': backbone_dir, 'seed': config.seed, 'trainable': list(config.trainable)}
  (export / workdir_lib.INIT_FILE).write_text(json.dumps(init))
  workdir_lib.write_config(workdir, config)
  results = {'class_names': class_names}
  workdir_lib.path(workdir, workdir_lib.RESULTS_FILE).write_text(json.dumps(results))
  return workdir


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def measure(
    predict: Callable[[Any], Any], clips: Any, batch: int, repeats: int
) -> tuple[dict[str, float], Any]:
  """({ms_per_clip at batch 1, clips_per_s at `batch`}, probabilities of `clips[:batch]`)."""
  probs = None
  for n in (1, batch):
    probs = predict(clips[:n])  # warm-up: compilation, allocation
  one = common.best_time(lambda: predict(clips[:1]), repeats)
  many = common.best_time(lambda: predict(clips[:batch]), repeats)
  return {'ms_per_clip': 1e3 * one, 'clips_per_s': batch / many}, probs


def serve_child(runtime: str, model: str, clips_file: str, batch: int, repeats: int) -> dict:
  """`measure` of the export `model` in `runtime` alone (this process imports no JAX: in one
  process with jaxlib, TensorFlow fails to read the SavedModel's StableHLO), with the peak
  resident memory of serving it."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  clips = np.load(clips_file)
  common.reset_peak_rss()
  if runtime == 'tensorflow':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    serving = tf.saved_model.load(model).signatures['serving_default']
    predict = lambda x: serving(frames=tf.constant(x))['probabilities'].numpy()  # noqa: E731
  else:
    import onnxruntime as ort  # pylint: disable=g-import-not-at-top

    session = ort.InferenceSession(model, providers=['CPUExecutionProvider'])
    predict = lambda x: session.run(['probabilities'], {'frames': x})[0]  # noqa: E731
  figures, probs = measure(predict, clips, batch, repeats)
  return {**figures, 'peak_rss_bytes': common.peak_rss_bytes(), 'probs': probs.tolist()}


def _run_child(*args: str) -> dict:
  """This script as a child with `args`: the JSON it reports, or {'error': its last error line}."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), *args],
      env=env,
      capture_output=True,
      text=True,
      check=False,
  )
  results = [line[len(MARK) :] for line in proc.stdout.splitlines() if line.startswith(MARK)]
  if proc.returncode or not results:
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if 'error' in line.lower()] or lines or ['no output']
    return {'error': f'exit code {proc.returncode}: {errors[-1]}'}
  return json.loads(results[-1])


def run(
    arch: str,
    batch: int,
    repeats: int,
    platforms: list[str],
    directory: str,
    activation: str = '',
) -> dict:
  """The figures of `arch` (see the module docstring), with the runs written under `directory`."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from feadapter_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from feadapter_jax import evaluate  # pylint: disable=g-import-not-at-top
  from feadapter_jax import export  # pylint: disable=g-import-not-at-top
  from feadapter_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  from feadapter_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  workdir, seconds = _timed(lambda: write_run(arch, directory, activation))
  out = {
      'arch': arch,
      'weights': 'random backbone, randomly perturbed adapters and head',
      'batch': batch,
      'repeats': repeats,
      'cores': common.cores(),
      'cpu': common.cpu_model(),
      'backend': jax.default_backend(),
      'write_run_s': seconds,
      'savedmodel_platforms': platforms,
  }
  out['activation'] = workdir_lib.load_config(workdir).model.activation
  paths = {
      'safetensors': os.path.join(directory, 'adapters.safetensors'),
      'savedmodel': os.path.join(directory, 'savedmodel'),
      'onnx': os.path.join(directory, 'model.onnx'),
  }
  writers = {
      'safetensors': lambda: export.export_safetensors(workdir, paths['safetensors']),
      'savedmodel': lambda: export.export_savedmodel(workdir, paths['savedmodel'], platforms),
      'onnx': lambda: export.export_onnx(workdir, paths['onnx']),
  }
  out['sizes'], out['export_s'] = {}, {}
  for name, write in writers.items():
    _, out['export_s'][name] = _timed(write)
  for name, path in [*paths.items(), ('backbone', os.path.join(directory, 'backbone'))]:
    out['sizes'][name] = (
        checkpoint.directory_bytes(path) if os.path.isdir(path) else os.path.getsize(path)
    )

  config = workdir_lib.load_config(workdir)
  t, s = config.data.num_frames, config.data.image_size
  clips = np.random.default_rng(0).integers(0, 256, (batch, t, s, s, 3), dtype=np.uint8)
  clips_file = os.path.join(directory, 'clips.npy')
  np.save(clips_file, clips)
  model, params = evaluate.load_trained(workdir, config)
  eval_step = jax.jit(step_lib.make_eval_step(model, mean=config.data.mean, std=config.data.std))
  predict = lambda x: np.asarray(eval_step(params, {'video': x[:, None]}))  # noqa: E731
  figures, reference = measure(predict, clips, batch, repeats)
  out['speed'] = {'jax': {**figures, 'max_prob_diff_vs_jax': 0.0}}
  for runtime, path in (('tensorflow', paths['savedmodel']), ('onnxruntime', paths['onnx'])):
    figures = _run_child(
        f'--child={runtime}',
        f'--model={path}',
        f'--clips={clips_file}',
        f'--batch={batch}',
        f'--repeats={repeats}',
    )
    if 'probs' in figures:
      probs = np.asarray(figures.pop('probs'))
      figures['max_prob_diff_vs_jax'] = float(np.max(np.abs(probs - reference)))
    out['speed'][runtime] = figures
  return out


def report(out: dict) -> str:
  """The figures as two markdown tables, with ratios to the JAX model and to the safetensors."""
  sizes = out['sizes']
  size_rows = [
      (
          name,
          f'{sizes[name] / 1e6:.2f} MB',
          f'{sizes[name] / sizes["safetensors"]:.1f}x',
          f'{out["export_s"][name]:.1f} s' if name in out['export_s'] else '',
      )
      for name in ('safetensors', 'savedmodel', 'onnx', 'backbone')
  ]
  jax_speed = out['speed']['jax']
  speed_rows = []
  for name, figures in out['speed'].items():
    if 'error' in figures:
      speed_rows.append((name, f'failed ({figures["error"]})', '', '', '', '', ''))
      continue
    speed_rows.append(
        (
            name,
            f'{figures["ms_per_clip"]:.1f}',
            f'{figures["ms_per_clip"] / jax_speed["ms_per_clip"]:.2f}x',
            f'{figures["clips_per_s"]:.2f}',
            f'{figures["clips_per_s"] / jax_speed["clips_per_s"]:.2f}x',
            f'{figures["max_prob_diff_vs_jax"]:.2g}',
            common.gib(figures['peak_rss_bytes']) if 'peak_rss_bytes' in figures else '',
        )
    )
  return '\n'.join(
      [
          f'arch {out["arch"]}, {out["activation"]} ({out["weights"]}: the probabilities mean '
          'nothing), '
          f'{out["cores"]} cores ({out["cpu"]}), {out["backend"]}, best of {out["repeats"]}',
          '',
          common.markdown_table(['export', 'size', 'vs safetensors', 'export time'], size_rows),
          f'(SavedModel lowered for {", ".join(out["savedmodel_platforms"])}; backbone: '
          'the backbone directory the safetensors file needs besides)',
          '',
          common.markdown_table(
              [
                  'runtime',
                  'ms/clip (batch 1)',
                  'vs JAX',
                  f'clips/s (batch {out["batch"]})',
                  'vs JAX',
                  'max abs prob diff vs JAX',
                  'serving peak RSS',
              ],
              speed_rows,
          ),
      ]
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--arch', choices=sorted(ARCHS), default='tiny')
  parser.add_argument('--batch', type=int, help="The clips/s figure's batch (default: the arch's).")
  parser.add_argument('--repeats', type=int, help="Timed calls per figure (default: the arch's).")
  parser.add_argument(
      '--platforms', default='cpu,cuda,tpu', help="The SavedModel export's --platforms."
  )
  parser.add_argument(
      '--activation',
      choices=('gelu', 'quick_gelu'),
      default='',
      help="The backbone's activation (default: the arch's, tiny quick_gelu, B16 gelu).",
  )
  parser.add_argument('--dir', default='', help='Where to write the runs (default: a temp dir).')
  parser.add_argument('--json', action='store_true', help='Print one JSON line instead.')
  parser.add_argument('--child', choices=('tensorflow', 'onnxruntime'), help=argparse.SUPPRESS)
  parser.add_argument('--model', help=argparse.SUPPRESS)
  parser.add_argument('--clips', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    result = serve_child(args.child, args.model, args.clips, args.batch, args.repeats)
    print(MARK + json.dumps(result), flush=True)
    return
  batch = args.batch or ARCHS[args.arch]['batch']
  repeats = args.repeats or ARCHS[args.arch]['repeats']
  from feadapter_jax import cli  # pylint: disable=g-import-not-at-top  (quiets TensorFlow)

  cli.start()
  with tempfile.TemporaryDirectory() as scratch:
    out = run(
        args.arch,
        batch,
        repeats,
        args.platforms.split(','),
        args.dir or scratch,
        args.activation,
    )
  print(json.dumps(out) if args.json else report(out))


if __name__ == '__main__':
  main()
