r"""Train-step speed per method against this machine's float32 matmul peak and against PyTorch.

  python benchmarks/train_step.py --size tiny            # the synthetic config's tiny ViT
  python benchmarks/train_step.py --size base            # ViT-B/16, 16 x 224 x 224, 1 clip
  python benchmarks/train_step.py --size tiny --json     # rows as JSON lines

Per method (configs/common.py METHODS; the trainer's model, `optim.make` and
`step.make_train_step`, jitted with the state donated): clips/s, model FLOPs per clip, achieved
FLOP/s and their share of the float32 matmul peak, peak host memory, compile time; the same
methods in PyTorch (`benchmarks/torch_reference.py`: timm's ViT + the same adapters, frozen
backbone by requires_grad=False, AdamW on the trainable parameters, eager, on as many threads
as JAX uses); `remat` variants of fe_adapter and full_finetune; fe_adapter with conv='fixed'
(same width, 3x3x3) for the dynamic dilation's share.

Speed: ONE child process builds every step (JAX and PyTorch), then runs rounds; a round measures
the matmul peak (square `jnp.dot` and `torch.mm`, n = 2048 and 4096) and steps every method once.
A figure is its best round, so on a shared machine the ratios (vs the peak, vs PyTorch, between
methods) compare samples taken under the same load. Memory: one child process per row builds,
compiles, resets the RSS high-water mark and runs one step; its peak RSS is that row's.

Model FLOPs are counted analytically (`common.analytic_flops`: matmuls and convs, 2 FLOP per
multiply-add, the unit of the matmul peak, forward + the backward a step really needs); XLA's
`cost_analysis()` of the compiled step is shown next to it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import common  # pylint: disable=g-import-not-at-top

METHODS = ('fe_adapter', 'st_adapter', 'aim', 'linear_probe', 'full_finetune')
REMAT_METHODS = ('fe_adapter', 'full_finetune')
SIZES = {
    # clips per step, frames per clip; default rounds: warm-up, timed (and a time cap).
    'base': dict(batch=1, frames=16, warmup=1, steps=2, max_seconds=900.0),
    'tiny': dict(batch=32, frames=8, warmup=2, steps=5, max_seconds=120.0),
}
MARK = 'RESULT_JSON '


# ------------------------------------------------------------------------------ specs (parent)

def spec(size: str, method: str, *, remat: bool = False, conv: str | None = None,
         remat_policy: str = '') -> dict:
  """Everything a child needs to build one method's model, optimizer and batch (plain JSON)."""
  from configs import common as configs_common  # pylint: disable=g-import-not-at-top
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from feadapter_jax import models  # pylint: disable=g-import-not-at-top
  config = (configs_common.base_config(method) if size == 'base'
            else synthetic.get_config(f'method={method},quick'))
  model = config.model.to_dict()
  variant = model.pop('variant', None)
  model = {**(models.decode_variant(variant) if variant else {}), **model}
  model['remat'] = remat
  label = method + (' remat' if remat else '')
  if remat and remat_policy:  # a library with `ViT.remat_policy` (jax.checkpoint_policies name)
    model['remat_policy'] = remat_policy
    label += f'({remat_policy})'
  if conv:
    model['adapter']['conv'] = conv
    label += f' conv={conv}'
  model['adapter'] = {k: list(v) if isinstance(v, tuple) else v
                      for k, v in model['adapter'].items()}
  return dict(framework='jax', method=method, label=label, size=size, model=model,
              trainable=list(config.trainable), optim=config.optim.to_dict(),
              label_smoothing=config.label_smoothing, batch=SIZES[size]['batch'],
              frames=SIZES[size]['frames'])


def run_child(args: list[str]) -> dict:
  """Runs this script as a child with `args`; returns the JSON it reports."""
  env = dict(os.environ)
  # One host device: the step runs on every core, as in training on one CPU host.
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if 'xla_force_host_platform_device_count' not in f)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=env,
                        stdout=subprocess.PIPE, text=True, check=False)
  results = [line[len(MARK):] for line in proc.stdout.splitlines() if line.startswith(MARK)]
  if proc.returncode or not results:
    raise RuntimeError(f'child {args[:2]} failed with exit code {proc.returncode}')
  return json.loads(results[-1])


# ------------------------------------------------------------------------------ children

def _report(result: dict) -> None:
  print(MARK + json.dumps(result), flush=True)


def _build_jax(sp: dict, compiler_options: dict | None) -> dict:
  """The trainer's model, optimizer and jitted (donating) train step for `sp`, compiled."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from feadapter_jax import models, optim, partition, step  # pylint: disable=g-import-not-at-top

  model = models.build(sp['model'])
  b, t, s = sp['batch'], sp['frames'], sp['model']['image_size']
  rng = np.random.default_rng(0)
  batch = {'video': jnp.asarray(rng.standard_normal((b, t, s, s, 3), np.float32)),
           'label': jnp.asarray(rng.integers(0, sp['model']['num_classes'], b), jnp.int32)}
  params = jax.jit(lambda v: model.init(jax.random.PRNGKey(0), v))(
      batch['video'][:1])['params']  # AIM's time embedding depends on the frames
  mask = partition.trainable_mask(params, sp['trainable'])
  tx = optim.make(ml_collections.ConfigDict(sp['optim']), mask, total_steps=10_000,
                  warmup_steps=100)
  state = jax.jit(lambda p: step.init_state(model, tx, p, 0))(params)
  forward_flops = None
  if sp.get('forward_flops'):
    forward = jax.jit(lambda p, v: model.apply({'params': p}, v))
    forward_flops = forward.lower(params, batch['video']).compile().cost_analysis()['flops']
  del params
  train_step = jax.jit(step.make_train_step(model, tx, mask,
                                            label_smoothing=sp['label_smoothing']),
                       donate_argnums=0)
  start = time.perf_counter()
  compiled = train_step.lower(state, batch).compile(compiler_options=compiler_options or None)
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  run = dict(compile_s=compile_s, xla_flops=float(cost['flops']), forward_flops=forward_flops,
             temp_bytes=int(getattr(memory, 'temp_size_in_bytes', 0) or 0))
  box = {'state': state}

  def step_fn():
    box['state'], metrics = compiled(box['state'], batch)
    jax.block_until_ready((box['state'], metrics))

  return run, step_fn


def _build_torch(sp: dict) -> tuple[dict, Any]:
  """The PyTorch reference model and its train step for `sp`."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(common.cores())
  torch.manual_seed(0)
  start = time.perf_counter()
  model = torch_reference.VideoViT(sp['model'], sp['frames'])
  train_step = torch_reference.make_train_step(model, sp['trainable'], sp['optim'],
                                               sp['label_smoothing'])
  run = dict(compile_s=None, build_s=time.perf_counter() - start, xla_flops=None,
             forward_flops=None, temp_bytes=None)
  b, t, s = sp['batch'], sp['frames'], sp['model']['image_size']
  video = torch.randn(b, t, 3, s, s)
  label = torch.randint(0, sp['model']['num_classes'], (b,))
  return run, lambda: train_step(video, label)


def _build(sp: dict, compiler_options: dict | None):
  return _build_jax(sp, compiler_options) if sp['framework'] == 'jax' else _build_torch(sp)


def time_child(specs: list[dict], warmup: int, steps: int, max_seconds: float,
               peak_sizes: list[int], compiler_options: dict | None) -> dict:
  """Builds every spec in this one process, then times them in rounds.

  A round measures the matmul peak (jnp.dot and torch.mm) and steps every spec once, so all
  figures of a round share the machine's state: on a shared machine the ratios hold even when
  the absolute numbers move. A step's time is its best round.
  """
  frameworks = {sp['framework'] for sp in specs}
  if 'pytorch' in frameworks:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  built = [_build(sp, compiler_options) for sp in specs]
  runs = [dict(run, label=sp['label'], times=[]) for sp, (run, _) in zip(specs, built)]
  peaks: dict[str, list[float]] = {'jax': [], 'pytorch': []}

  def one_round(timed: bool) -> None:
    if timed:
      peaks['jax'].append(common.jax_matmul_peak(peak_sizes, repeats=2)['gflops'])
      if 'pytorch' in frameworks:
        peaks['pytorch'].append(common.torch_matmul_peak(peak_sizes, repeats=2,
                                                         threads=common.cores())['gflops'])
    for run, (_, step_fn) in zip(runs, built):
      start = time.perf_counter()
      step_fn()
      if timed:
        run['times'].append(time.perf_counter() - start)

  for _ in range(warmup):
    one_round(timed=False)
  started = time.perf_counter()
  for _ in range(steps):
    one_round(timed=True)
    if time.perf_counter() - started > max_seconds:
      break
  return {'runs': runs, 'peaks': peaks}


def memory_child(sp: dict, compiler_options: dict | None) -> dict:
  """Peak RSS of one step of one spec, alone in this process, after building (and compiling)."""
  baseline = common.rss_bytes()
  _, step_fn = _build(sp, compiler_options)
  common.reset_peak_rss()
  step_fn()
  return {'baseline_rss_bytes': baseline, 'peak_memory_bytes': common.peak_rss_bytes()}


# ------------------------------------------------------------------------------ parent

def row(sp: dict, run: dict, memory: dict | None, peak_gflops: float) -> dict:
  flops = common.analytic_flops(sp['model'], sp['frames'], sp['trainable'])
  best = min(run['times'])
  model_flops = flops['train']  # per clip
  achieved = model_flops * sp['batch'] / best
  return {
      'framework': sp['framework'], 'method': sp['method'], 'variant': run['label'],
      'size': sp['size'], 'batch': sp['batch'], 'frames': sp['frames'],
      'remat': sp['model'].get('remat', False),
      'conv': sp['model']['adapter'].get('conv') if sp['model']['adapter']['kind'] == 'fe'
              else None,
      'step_s': best, 'step_s_median': statistics.median(run['times']),
      'steps_timed': len(run['times']),
      'clips_per_s': sp['batch'] / best,
      'model_flops_per_clip': model_flops,
      'model_forward_flops_per_clip': flops['forward'],
      'xla_flops_per_clip': run['xla_flops'] / sp['batch'] if run['xla_flops'] else None,
      'xla_forward_flops_per_clip': (run['forward_flops'] / sp['batch']
                                     if run.get('forward_flops') else None),
      'achieved_flops_per_s': achieved,
      'utilisation': achieved / (peak_gflops * 1e9),
      'peak_memory_bytes': memory['peak_memory_bytes'] if memory else None,
      'baseline_rss_bytes': memory['baseline_rss_bytes'] if memory else None,
      'xla_temp_bytes': run['temp_bytes'],
      'compile_s': run['compile_s'],
  }


def _fmt(x: Any, spec_: str) -> str:
  return 'n/a' if x is None else format(x, spec_)


def print_report(size: str, machine: dict, rows: list[dict], dilation: dict | None) -> None:
  print(f'## Train step, {size}: '
        + ('ViT-B/16, 1 clip of 16 x 224 x 224, 7 classes' if size == 'base' else
           'tiny ViT (configs/synthetic.py TINY_VIT), 32 clips of 8 x 32 x 32'))
  print(f"Machine: {machine['cpu']}, {machine['cores']} cores; float32 matmul peak "
        f"{machine['peak_gflops']:.0f} GFLOP/s (best round: jnp.dot {machine['jax_peak']:.0f}, "
        f"torch.mm {_fmt(machine['torch_peak'], '.0f')}; square n x n for n in "
        f"{', '.join(str(n) for n in machine['peak_sizes'])}, measured in every timed round); "
        f"load average at start {machine['load_start'][0]:.2f}, at end "
        f"{machine['load_end'][0]:.2f} (1 min)"
        + (f"; XLA options {machine['xla_options']}" if machine['xla_options'] else '') + '\n')
  headers = ['framework', 'method', 'clips/s', 'step s (best/med)', 'model GFLOP/clip',
             'XLA GFLOP/clip', 'GFLOP/s', 'util.', 'peak RSS', 'XLA temp', 'compile s']
  table = []
  for r in rows:
    table.append([
        r['framework'], r['variant'], f"{r['clips_per_s']:.3g}",
        f"{r['step_s']:.3f}/{r['step_s_median']:.3f} (n={r['steps_timed']})",
        f"{r['model_flops_per_clip'] / 1e9:.2f}",
        _fmt(r['xla_flops_per_clip'] and r['xla_flops_per_clip'] / 1e9, '.2f'),
        f"{r['achieved_flops_per_s'] / 1e9:.1f}", f"{100 * r['utilisation']:.1f}%",
        common.gib(r['peak_memory_bytes']) if r['peak_memory_bytes'] else 'n/a',
        common.gib(r['xla_temp_bytes']) if r['xla_temp_bytes'] else 'n/a',
        _fmt(r['compile_s'], '.1f')])
  print(common.markdown_table(headers, table))
  print('\nAll steps and the peak were timed in one process, round-robin (best round counts), '
        'so ratios share the machine state. model GFLOP/clip: analytic matmul/conv FLOPs of the '
        'step (forward + the backward it needs); util. = achieved / matmul peak; peak RSS: a '
        'separate process per row, one step after building and compiling (high-water mark reset '
        'before the step); XLA temp: the compiled step\'s scratch buffers.')

  by = {(r['framework'], r['variant']): r for r in rows}
  lines = []
  jax_fe, jax_full = by.get(('jax', 'fe_adapter')), by.get(('jax', 'full_finetune'))
  if jax_full and jax_full.get('xla_forward_flops_per_clip'):
    fwd = jax_full['xla_forward_flops_per_clip']
    parts = [f"{v}: {by[('jax', v)]['xla_flops_per_clip'] / fwd:.2f}x"
             for v in METHODS if ('jax', v) in by and by[('jax', v)]['xla_flops_per_clip']]
    lines.append('XLA step FLOPs / XLA forward FLOPs (ViT forward): ' + ', '.join(parts))
  if jax_fe and jax_full:
    xla = (jax_fe['xla_flops_per_clip'] / jax_full['xla_flops_per_clip']
           if jax_fe['xla_flops_per_clip'] else None)
    lines.append(
        'Frozen weights get no gradient computation: fe_adapter step FLOPs / full fine-tuning = '
        f"{jax_fe['model_flops_per_clip'] / jax_full['model_flops_per_clip']:.3f} analytic, "
        f"{_fmt(xla, '.3f')} XLA (backbone alone: 2/3; adapters trained in full add the rest)")
  for name in ('linear_probe', 'full_finetune'):
    r = by.get(('jax', name))
    if r and r['xla_flops_per_clip']:
      lines.append(f'XLA / analytic FLOPs, {name}: '
                   f"{r['xla_flops_per_clip'] / r['model_flops_per_clip']:.3f}")
  if jax_fe and jax_full:
    lines.append(f"fe_adapter / full_finetune step time: "
                 f"{jax_fe['step_s'] / jax_full['step_s']:.3f} (target <= 0.77)")
    if jax_fe['peak_memory_bytes'] and jax_full['peak_memory_bytes']:
      lines.append(f"fe_adapter / full_finetune peak RSS: "
                   f"{jax_fe['peak_memory_bytes'] / jax_full['peak_memory_bytes']:.3f} "
                   f"(target <= 0.6); above the process baseline: "
                   f"{(jax_fe['peak_memory_bytes'] - jax_fe['baseline_rss_bytes']) / (jax_full['peak_memory_bytes'] - jax_full['baseline_rss_bytes']):.3f}")
  if jax_fe:
    lines.append(f"fe_adapter utilisation: {100 * jax_fe['utilisation']:.1f}% of the matmul "
                 'peak (target >= 80%)')
  for v in METHODS:
    j, p = by.get(('jax', v)), by.get(('pytorch', v))
    if j and p:
      lines.append(f"JAX / PyTorch speed, {v}: {p['step_s'] / j['step_s']:.3f}x"
                   + (' (target >= 1.05x)' if v == 'fe_adapter' else ''))
  for v in REMAT_METHODS:
    a = by.get(('jax', v))
    b = next((r for (f, name), r in by.items() if f == 'jax' and name.startswith(v + ' remat')),
             None)
    if a and b and a['peak_memory_bytes'] and b['peak_memory_bytes']:
      lines.append(f"{b['variant']}: peak RSS {common.gib(b['peak_memory_bytes'])} vs "
                   f"{common.gib(a['peak_memory_bytes'])} without, step time "
                   f"{b['step_s'] / a['step_s']:.2f}x")
  if dilation:
    lines.append(f"Dynamic dilation: fe_adapter conv=dynamic / conv=fixed step time = "
                 f"{dilation['ratio']:.3f} (best of {dilation['steps']} alternating steps each: "
                 f"{dilation['dynamic_s']:.3f} s vs {dilation['fixed_s']:.3f} s; target <= 1.03)")
  print('\n' + '\n'.join(f'- {line}' for line in lines))


def _xla_options(items: list[str]) -> dict[str, Any]:
  options: dict[str, Any] = {}
  for item in items:
    key, _, value = item.partition('=')
    if value.lower() in ('true', 'false'):
      options[key] = value.lower() == 'true'
    else:
      options[key] = int(value) if value.lstrip('-').isdigit() else value
  return options


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', choices=tuple(SIZES), default='tiny')
  parser.add_argument('--methods', default=','.join(METHODS),
                      help='comma-separated subset of ' + ','.join(METHODS))
  parser.add_argument('--warmup', type=int, default=None,
                      help='untimed rounds (every step once; default per size)')
  parser.add_argument('--steps', type=int, default=None,
                      help='timed rounds (every step and the matmul peak once; default per size)')
  parser.add_argument('--max_seconds', type=float, default=None,
                      help='start no further timed round after this many seconds of them')
  parser.add_argument('--no_torch', action='store_true', help='skip the PyTorch reference')
  parser.add_argument('--no_remat', action='store_true', help='skip the remat rows')
  parser.add_argument('--no_dilation', action='store_true', help='skip dynamic vs fixed conv')
  parser.add_argument('--no_memory', action='store_true',
                      help='skip the per-method peak-memory processes')
  parser.add_argument('--json', action='store_true', help='rows as JSON lines')
  parser.add_argument('--peak_sizes', default='2048,4096',
                      help='square matmul sizes for the peak (the best counts)')
  parser.add_argument('--remat_policy', default='',
                      help='jax.checkpoint_policies name for the remat rows (needs a library '
                           'whose ViT has remat_policy)')
  parser.add_argument('--xla_option', action='append', default=[], metavar='KEY=VALUE',
                      help='XLA compiler option for the JAX train steps, e.g. '
                           'xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED')
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--specs', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  size = SIZES[args.size]
  warmup = size['warmup'] if args.warmup is None else args.warmup
  steps = size['steps'] if args.steps is None else args.steps
  max_seconds = size['max_seconds'] if args.max_seconds is None else args.max_seconds

  compiler_options = _xla_options(args.xla_option)
  peak_sizes = [int(n) for n in args.peak_sizes.split(',')]
  if args.child:  # worker mode
    specs = json.loads(args.specs)
    if args.child == 'time':
      _report(time_child(specs, warmup, steps, max_seconds, peak_sizes, compiler_options))
    elif args.child == 'memory':
      _report(memory_child(specs[0], compiler_options))
    return

  methods = [m for m in args.methods.split(',') if m]
  unknown = set(methods) - set(METHODS)
  if unknown:
    parser.error(f'unknown methods {sorted(unknown)}')
  load_start = common.load_average()
  log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
  options = [*(f'--xla_option={o}' for o in args.xla_option), '--size', args.size]

  specs = []
  for m in methods:
    sp = spec(args.size, m)
    sp['forward_flops'] = m == 'full_finetune'
    specs.append(sp)
  if not args.no_remat:
    specs += [spec(args.size, m, remat=True, remat_policy=args.remat_policy)
              for m in REMAT_METHODS if m in methods]
  if not args.no_dilation and 'fe_adapter' in methods:
    specs.append(spec(args.size, 'fe_adapter', conv='fixed'))
  if not args.no_torch:
    specs += [{**spec(args.size, m), 'framework': 'pytorch'} for m in methods]

  log(f'load average {load_start}; timing {len(specs)} train steps in one process, '
      f'{warmup} warm-up + {steps} timed rounds')
  timed = run_child(['--child', 'time', '--specs', json.dumps(specs), '--warmup', str(warmup),
                     '--steps', str(steps), '--max_seconds', str(max_seconds),
                     '--peak_sizes', args.peak_sizes, *options])
  memory: dict[int, dict] = {}
  if not args.no_memory:
    for i, sp in enumerate(specs):
      if sp['model'].get('adapter', {}).get('conv') == 'fixed' and sp['method'] == 'fe_adapter':
        continue  # only a speed comparison
      log(f"peak memory: {sp['framework']} {sp['label']}")
      memory[i] = run_child(['--child', 'memory', '--specs', json.dumps([sp]), *options])
  jax_peak = max(timed['peaks']['jax'])
  torch_peak = max(timed['peaks']['pytorch']) if timed['peaks']['pytorch'] else None
  peak = max(jax_peak, torch_peak or 0.0)
  rows = [row(sp, run, memory.get(i), peak)
          for i, (sp, run) in enumerate(zip(specs, timed['runs']))]
  dilation = None
  by = {(r['framework'], r['variant']): r for r in rows}
  dyn, fixed = by.get(('jax', 'fe_adapter')), by.get(('jax', 'fe_adapter conv=fixed'))
  if dyn and fixed:
    dilation = {'dynamic_s': dyn['step_s'], 'fixed_s': fixed['step_s'],
                'steps': fixed['steps_timed'], 'ratio': dyn['step_s'] / fixed['step_s']}
    fixed['dynamic_over_fixed_step_time'] = dilation['ratio']

  machine = {'cpu': common.cpu_model(), 'cores': common.cores(), 'peak_gflops': peak,
             'jax_peak': jax_peak, 'torch_peak': torch_peak, 'peak_sizes': peak_sizes,
             'load_start': load_start, 'load_end': common.load_average(),
             'xla_options': _xla_options(args.xla_option)}
  if args.json:
    for r in rows:
      print(json.dumps({**r, 'cpu': machine['cpu'], 'cores': machine['cores'],
                        'peak_gflops': peak, 'load_average_start': load_start[0],
                        'load_average_end': machine['load_end'][0],
                        'xla_options': machine['xla_options']}))
  else:
    print_report(args.size, machine, rows, dilation)


if __name__ == '__main__':
  main()
