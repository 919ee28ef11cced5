r"""Train-step speed per method against this machine's float32 matmul peak and against PyTorch.

  python benchmarks/train_step.py --size tiny            # the synthetic config's tiny ViT
  python benchmarks/train_step.py --size base            # ViT-B/16, 16 x 224 x 224, 1 clip
  python benchmarks/train_step.py --size tiny --json     # rows as JSON lines
  python benchmarks/train_step.py --size base --batch 32 # on a GPU host: bfloat16, device memory

Per method (`feadapter_jax/methods.py`; the trainer's model, `optim.make` and
`step.make_train_step`, jitted with the state donated): clips/s, model FLOPs per clip, achieved
FLOP/s and their share of the float32 matmul peak, peak host memory, compile time; the same
methods in PyTorch (`benchmarks/torch_reference.py`: timm's ViT + the same adapters, frozen
backbone by requires_grad=False, AdamW on the trainable parameters, eager, on as many threads
as JAX uses); `remat` variants of fe_adapter and full_finetune; fe_adapter with conv='fixed'
(same width, 3x3x3) for the dynamic dilation's share, which `benchmarks/dilation.py` also
measures on the adapter conv alone (a step is too noisy to resolve a few percent).

Each spec (a method in one framework) runs alone in its own child process: build and compile,
warm-up steps, timed steps, then the float32 matmul peak of its framework (square `jnp.dot` or
`torch.mm`, n = 2048 and 4096). A round runs every spec's process in turn (the order alternates
between rounds); a step time is its best over rounds and the machine's peak the best of all
peaks, so on a shared machine the ratios compare samples taken minutes apart in one run. One
process per spec because a process holding every model ran JAX steps up to 1.7x slower (memory
and the frameworks' thread pools interfere). Peak memory: the process's RSS high-water mark over
its first timed step (reset just before it), so model, optimizer state and one step's buffers.

On a GPU (or TPU) the JAX steps compute in bfloat16 with float32 master weights
(`model.dtype`; `--dtype` overrides), attention is `jax.nn.dot_product_attention` (cuDNN's fused
kernel), the peak is a square bfloat16 `jnp.dot` on the device (n = 4096 and 8192), peak memory is
the device's peak bytes in use, and `--batch` should fill the device. The PyTorch reference runs
on CPU only (the pinned CPU build of torch), so it is skipped there.

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
from feadapter_jax import methods as methods_lib  # pylint: disable=g-import-not-at-top  (no JAX)

# The multi-branch reading trains like FE-Adapter; its cost is measured by `dilation.py`.
METHODS = tuple(m for m in methods_lib.METHODS if m != 'fe_multibranch')
REMAT_METHODS = ('fe_adapter', 'full_finetune')
SIZES = {
    # clips per step, frames per clip; processes per spec; steps per process (and a cap).
    'base': dict(batch=1, frames=16, rounds=2, warmup=1, steps=1, max_seconds=900.0),
    'tiny': dict(batch=32, frames=8, rounds=2, warmup=2, steps=4, max_seconds=120.0),
}
MARK = 'RESULT_JSON '


# ------------------------------------------------------------------------------ specs (parent)


def spec(
    size: str,
    method: str,
    *,
    remat: bool = False,
    conv: str | None = None,
    dtype: str = 'float32',
    batch: int | None = None,
) -> dict:
  """Everything a child needs to build one method's model, optimizer and batch (plain JSON).

  `dtype`: the model's compute dtype; `batch`: clips per step (default: the size's).
  """
  from configs import common as configs_common  # pylint: disable=g-import-not-at-top
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from feadapter_jax import models  # pylint: disable=g-import-not-at-top
  from feadapter_jax.models import backbone  # pylint: disable=g-import-not-at-top

  if size == 'base':
    config = configs_common.base_config(method)
    config.data = configs_common.data_config('dfew', 'fold1')
  else:
    config = synthetic.get_config(f'method={method},quick')
  # No backbone: the settings a run without one gets (base: ViT-B/16 with timm's options).
  config = backbone.resolve(config)
  model = config.model.to_dict()
  variant = model.pop('variant', None)
  model = {**(models.decode_variant(variant) if variant else {}), **model}
  model['remat'] = remat
  model['dtype'] = dtype
  label = method + (' remat' if remat else '')
  if conv:
    model['adapter']['conv'] = conv
    label += f' conv={conv}'
  model['adapter'] = {
      k: list(v) if isinstance(v, tuple) else v for k, v in model['adapter'].items()
  }
  return dict(
      framework='jax',
      method=method,
      label=label,
      size=size,
      model=model,
      trainable=list(config.trainable),
      optim=config.optim.to_dict(),
      label_smoothing=config.label_smoothing,
      batch=batch or SIZES[size]['batch'],
      mean=list(config.data.mean),
      std=list(config.data.std),
      cpu_compiler_options=dict(config.cpu_compiler_options),
      frames=SIZES[size]['frames'],
  )


def _child_env() -> dict[str, str]:
  env = dict(os.environ)
  # One host device: the step runs on every core, as in training on one CPU host.
  env['XLA_FLAGS'] = ' '.join(
      f for f in env.get('XLA_FLAGS', '').split() if 'xla_force_host_platform_device_count' not in f
  )
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


def run_child(args: list[str]) -> dict:
  """Runs this script as a child with `args`; returns the JSON it reports."""
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), *args],
      env=_child_env(),
      stdout=subprocess.PIPE,
      text=True,
      check=False,
  )
  results = [line[len(MARK) :] for line in proc.stdout.splitlines() if line.startswith(MARK)]
  if proc.returncode or not results:
    raise RuntimeError(f'child {args[:2]} failed with exit code {proc.returncode}')
  return json.loads(results[-1])


def run_benchmark(script: str, *args: str) -> list[dict]:
  """Runs `benchmarks/<script> --json *args`; returns its JSON lines."""
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', script), '--json', *args],
      env=_child_env(),
      stdout=subprocess.PIPE,
      text=True,
      check=True,
  ).stdout
  return [json.loads(line) for line in out.splitlines() if line.startswith('{')]


# ------------------------------------------------------------------------------ children


def _report(result: dict) -> None:
  print(MARK + json.dumps(result), flush=True)


def clip_batch(sp: dict, seed: int = 0) -> dict:
  """A fixed batch for `sp`, as the input pipeline makes it: {'video': (b, t, S, S, 3) uint8,
  'label': (b,) int32}, on the default device."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  b, t, s = sp['batch'], sp['frames'], sp['model']['image_size']
  rng = np.random.default_rng(seed)
  return {
      'video': jnp.asarray(rng.integers(0, 256, (b, t, s, s, 3), np.uint8)),
      'label': jnp.asarray(rng.integers(0, sp['model']['num_classes'], b), jnp.int32),
  }


def program_bytes(memory: Any) -> int | None:
  """Device bytes a compiled program needs while it runs, from its `memory_analysis()`:
  arguments + outputs + scratch, less the outputs that reuse donated arguments; None if unknown."""
  if memory is None:
    return None
  fields = ('argument', 'output', 'temp', 'alias')
  sizes = {f: int(getattr(memory, f'{f}_size_in_bytes', 0) or 0) for f in fields}
  return sizes['argument'] + sizes['output'] + sizes['temp'] - sizes['alias']


def init_params(sp: dict) -> Any:
  """The random initial (float32) parameters of `sp`'s model, the same for every batch size and
  compute dtype."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from feadapter_jax import models  # pylint: disable=g-import-not-at-top

  model = models.build(sp['model'])
  t, s = sp['frames'], sp['model']['image_size']
  # AIM's time embedding depends on the frame count.
  return jax.jit(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, t, s, s, 3))))()['params']


def build_jax(
    sp: dict, compiler_options: dict | None, with_hlo: bool = False, params: Any = None
) -> tuple[dict, Any]:
  """The trainer's model, optimizer and jitted (donating) train step for `sp`, compiled.

  The batch is `clip_batch(sp)`; the config's CPU compiler options apply on CPU only; `params`:
  the initial parameters (default `init_params(sp)`, whose compilation takes a while). Returns
  (facts: compile time, XLA FLOPs, temp, program and donated bytes, the HLO text if `with_hlo`;
  a function that runs one step, blocks and returns its metrics).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from feadapter_jax import models, optim, partition, step  # pylint: disable=g-import-not-at-top
  from feadapter_jax.models import kernels  # pylint: disable=g-import-not-at-top

  model = models.build(sp['model'])
  batch = clip_batch(sp)
  params = init_params(sp) if params is None else params
  mask = partition.trainable_mask(params, sp['trainable'])
  tx = optim.make(
      ml_collections.ConfigDict(sp['optim']), mask, total_steps=10_000, warmup_steps=100
  )
  state = jax.jit(lambda p: step.init_state(model, tx, p, 0))(params)
  forward_flops = None
  if sp.get('forward_flops'):
    forward = jax.jit(lambda p, v: model.apply({'params': p}, v))
    video = jnp.zeros(batch['video'].shape, model.dtype)  # normalised pixels
    forward_flops = forward.lower(params, video).compile().cost_analysis()['flops']
  del params
  train_step = jax.jit(
      step.make_train_step(
          model, tx, mask, mean=sp['mean'], std=sp['std'], label_smoothing=sp['label_smoothing']
      ),
      donate_argnums=0,
  )
  start = time.perf_counter()
  # The config's CPU options on CPU only (as the trainer uses them), then the command line's.
  options = {
      **(kernels.compiler_options(sp.get('cpu_compiler_options')) or {}),
      **(compiler_options or {}),
  }
  compiled = train_step.lower(state, batch).compile(compiler_options=options or None)
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  run = dict(
      compile_s=compile_s,
      xla_flops=float(cost['flops']),
      forward_flops=forward_flops,
      temp_bytes=int(getattr(memory, 'temp_size_in_bytes', 0) or 0),
      program_bytes=program_bytes(memory),
      donated_bytes=int(getattr(memory, 'alias_size_in_bytes', 0) or 0),
  )
  if with_hlo:
    run['hlo'] = compiled.as_text()
  box = {'state': state}

  def step_fn():
    box['state'], metrics = compiled(box['state'], batch)
    return jax.block_until_ready((box['state'], metrics))[1]

  return run, step_fn


def _build_torch(sp: dict) -> tuple[dict, Any]:
  """The PyTorch reference model and its train step for `sp`."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(common.cores())
  torch.manual_seed(0)
  start = time.perf_counter()
  model = torch_reference.VideoViT(sp['model'], sp['frames'])
  train_step = torch_reference.make_train_step(
      model, sp['trainable'], sp['optim'], sp['label_smoothing']
  )
  run = dict(
      compile_s=None,
      build_s=time.perf_counter() - start,
      xla_flops=None,
      forward_flops=None,
      temp_bytes=None,
  )
  b, t, s = sp['batch'], sp['frames'], sp['model']['image_size']
  video = torch.randn(b, t, 3, s, s)
  label = torch.randint(0, sp['model']['num_classes'], (b,))
  return run, lambda: train_step(video, label)


def _build(sp: dict, compiler_options: dict | None):
  return build_jax(sp, compiler_options) if sp['framework'] == 'jax' else _build_torch(sp)


def spec_child(
    sp: dict,
    warmup: int,
    steps: int,
    max_seconds: float,
    peak_sizes: list[int],
    compiler_options: dict | None,
) -> dict:
  """One spec alone in this process: build, warm up, time steps, then its framework's peak.

  Peak memory is the RSS high-water mark of the first timed step (reset just before it), so it
  holds the model, optimizer state and that step's buffers, not the build's transients.
  """
  baseline = common.rss_bytes()
  run, step_fn = _build(sp, compiler_options)
  for _ in range(warmup):
    step_fn()
  run['times'] = []
  common.reset_peak_rss()
  started = time.perf_counter()
  for i in range(steps):
    start = time.perf_counter()
    step_fn()
    run['times'].append(time.perf_counter() - start)
    if i == 0:
      device = common.device_peak_bytes() if sp['framework'] == 'jax' else None
      run['peak_memory_bytes'] = common.peak_rss_bytes() if device is None else device
    if time.perf_counter() - started > max_seconds:
      break
  run['baseline_rss_bytes'] = baseline
  if sp['framework'] == 'jax':
    run['peak_gflops'] = common.jax_matmul_peak(peak_sizes, repeats=3, dtype=sp['model']['dtype'])[
        'gflops'
    ]
  else:
    run['peak_gflops'] = common.torch_matmul_peak(peak_sizes, repeats=3)['gflops']
  return run


def probe_child() -> dict:
  """The backend and device the JAX children will run on, and its default compute dtype."""
  import jax  # pylint: disable=g-import-not-at-top
  from feadapter_jax.models import kernels  # pylint: disable=g-import-not-at-top

  device = jax.local_devices()[0]
  return {
      'backend': jax.default_backend(),
      'device': device.device_kind,
      'devices': jax.local_device_count(),
      'default_dtype': kernels.resolve_dtype('auto'),
  }


# ------------------------------------------------------------------------------ parent


def row(sp: dict, run: dict, peak_gflops: float) -> dict:
  flops = common.analytic_flops(sp['model'], sp['frames'], sp['trainable'])
  best = min(run['times'])
  model_flops = flops['train']  # per clip
  achieved = model_flops * sp['batch'] / best
  return {
      'framework': sp['framework'],
      'method': sp['method'],
      'variant': run['label'],
      'size': sp['size'],
      'batch': sp['batch'],
      'frames': sp['frames'],
      'dtype': sp['model']['dtype'],
      'image_size': sp['model']['image_size'],
      'remat': sp['model'].get('remat', False),
      'conv': sp['model']['adapter'].get('conv')
      if sp['model']['adapter']['kind'] == 'fe'
      else None,
      'step_s': best,
      'step_s_median': statistics.median(run['times']),
      'steps_timed': len(run['times']),
      'clips_per_s': sp['batch'] / best,
      'model_flops_per_clip': model_flops,
      'model_forward_flops_per_clip': flops['forward'],
      'xla_flops_per_clip': run['xla_flops'] / sp['batch'] if run['xla_flops'] else None,
      'xla_forward_flops_per_clip': (
          run['forward_flops'] / sp['batch'] if run.get('forward_flops') else None
      ),
      'achieved_flops_per_s': achieved,
      'utilisation': achieved / (peak_gflops * 1e9),
      'peak_memory_bytes': run['peak_memory_bytes'],
      'baseline_rss_bytes': run['baseline_rss_bytes'],
      'xla_temp_bytes': run['temp_bytes'],
      'compile_s': run['compile_s'],
  }


def _fmt(x: Any, spec_: str) -> str:
  return 'n/a' if x is None else format(x, spec_)


def print_report(size: str, machine: dict, rows: list[dict], dilation: dict | None) -> None:
  batch, frames = rows[0]['batch'], rows[0]['frames']
  print(
      f'## Train step, {size}: '
      + ('ViT-B/16' if size == 'base' else 'tiny ViT (configs/synthetic.py TINY_VIT)')
      + f", {batch} clip{'s' if batch > 1 else ''} of {frames} x {rows[0]['image_size']} x "
      f"{rows[0]['image_size']}" + (', 7 classes' if size == 'base' else '')
  )
  on_cpu = machine['backend'] == 'cpu'
  memory = 'peak RSS' if on_cpu else 'peak device mem'
  if not on_cpu:
    print(
        f"Device: {machine['devices']} x {machine['device']} ({machine['backend']}), JAX steps "
        f"in {machine['dtype']}; the PyTorch reference is CPU-only and was skipped."
    )
  print(
      f"Machine: {machine['cpu']}, {machine['cores']} cores; {machine['dtype']} matmul peak "
      f"{machine['peak_gflops']:.0f} GFLOP/s (best: jnp.dot {machine['jax_peak']:.0f}, "
      f"torch.mm {_fmt(machine['torch_peak'], '.0f')}; square n x n for n in "
      f"{', '.join(str(n) for n in machine['peak_sizes'])}, measured after every spec's steps); "
      f"load average at start {machine['load_start'][0]:.2f}, at end "
      f"{machine['load_end'][0]:.2f} (1 min)"
      + (f"; XLA options {machine['xla_options']}" if machine['xla_options'] else '')
      + '\n'
  )
  headers = [
      'framework',
      'method',
      'clips/s',
      'step s (best/med)',
      'model GFLOP/clip',
      'XLA GFLOP/clip',
      'GFLOP/s',
      'util.',
      memory,
      'XLA temp',
      'compile s',
  ]
  table = []
  for r in rows:
    table.append(
        [
            r['framework'],
            r['variant'],
            f"{r['clips_per_s']:.3g}",
            f"{r['step_s']:.3f}/{r['step_s_median']:.3f} (n={r['steps_timed']})",
            f"{r['model_flops_per_clip'] / 1e9:.2f}",
            _fmt(r['xla_flops_per_clip'] and r['xla_flops_per_clip'] / 1e9, '.2f'),
            f"{r['achieved_flops_per_s'] / 1e9:.1f}",
            f"{100 * r['utilisation']:.1f}%",
            common.gib(r['peak_memory_bytes']) if r['peak_memory_bytes'] else 'n/a',
            common.gib(r['xla_temp_bytes']) if r['xla_temp_bytes'] else 'n/a',
            _fmt(r['compile_s'], '.1f'),
        ]
    )
  print(common.markdown_table(headers, table))
  print(
      '\nEvery spec ran alone in its own process, in turn, for every round (best step counts). '
      'model GFLOP/clip: analytic matmul/conv FLOPs of the step (forward + the backward it '
      'needs); util. = achieved / matmul peak; '
      + (
          "peak RSS: the process's high-water mark over one step (reset before it: model, "
          "optimizer state, the step's buffers)"
          if on_cpu
          else "peak device mem: the device's peak bytes in use (model, optimizer state, the step)"
      )
      + "; XLA temp: the compiled step's scratch buffers."
  )

  by = {(r['framework'], r['variant']): r for r in rows}
  lines = []
  jax_fe, jax_full = by.get(('jax', 'fe_adapter')), by.get(('jax', 'full_finetune'))
  if jax_full and jax_full.get('xla_forward_flops_per_clip'):
    fwd = jax_full['xla_forward_flops_per_clip']
    parts = [
        f"{v}: {by[('jax', v)]['xla_flops_per_clip'] / fwd:.2f}x"
        for v in METHODS
        if ('jax', v) in by and by[('jax', v)]['xla_flops_per_clip']
    ]
    lines.append('XLA step FLOPs / XLA forward FLOPs (ViT forward): ' + ', '.join(parts))
  if jax_fe and jax_full:
    xla = (
        jax_fe['xla_flops_per_clip'] / jax_full['xla_flops_per_clip']
        if jax_fe['xla_flops_per_clip']
        else None
    )
    lines.append(
        'Frozen weights get no gradient computation: fe_adapter step FLOPs / full fine-tuning = '
        f"{jax_fe['model_flops_per_clip'] / jax_full['model_flops_per_clip']:.3f} analytic, "
        f"{_fmt(xla, '.3f')} XLA (backbone alone: 2/3; adapters trained in full add the rest)"
    )
  for name in ('linear_probe', 'full_finetune'):
    r = by.get(('jax', name))
    if r and r['xla_flops_per_clip']:
      lines.append(
          f'XLA / analytic FLOPs, {name}: '
          f"{r['xla_flops_per_clip'] / r['model_flops_per_clip']:.3f}"
      )
  if jax_fe and jax_full:
    lines.append(
        f'fe_adapter / full_finetune step time: '
        f"{jax_fe['step_s'] / jax_full['step_s']:.3f} (target <= 0.77)"
    )
    if jax_fe['peak_memory_bytes'] and jax_full['peak_memory_bytes']:
      lines.append(
          f'fe_adapter / full_finetune {memory}: '
          f"{jax_fe['peak_memory_bytes'] / jax_full['peak_memory_bytes']:.3f} "
          '(target <= 0.6)'
          + (
              '; above the process baseline: '
              f"{(jax_fe['peak_memory_bytes'] - jax_fe['baseline_rss_bytes']) / (jax_full['peak_memory_bytes'] - jax_full['baseline_rss_bytes']):.3f}"
              if on_cpu
              else ''
          )
      )
  if jax_fe:
    lines.append(
        f"fe_adapter utilisation: {100 * jax_fe['utilisation']:.1f}% of the matmul "
        'peak (target >= 80%)'
    )
  for v in METHODS:
    j, p = by.get(('jax', v)), by.get(('pytorch', v))
    if j and p:
      lines.append(
          f"JAX / PyTorch speed, {v}: {p['step_s'] / j['step_s']:.3f}x"
          + (' (target >= 1.05x)' if v == 'fe_adapter' else '')
      )
  fe_remat = by.get(('jax', 'fe_adapter remat'))
  if fe_remat and jax_full and fe_remat['peak_memory_bytes'] and jax_full['peak_memory_bytes']:
    lines.append(
        f'fe_adapter remat / full_finetune {memory}: '
        f"{fe_remat['peak_memory_bytes'] / jax_full['peak_memory_bytes']:.3f} "
        '(target <= 0.6, remat being the config option for memory)'
    )
  for v in REMAT_METHODS:
    a = by.get(('jax', v))
    b = next(
        (r for (f, name), r in by.items() if f == 'jax' and name.startswith(v + ' remat')), None
    )
    if a and b and a['peak_memory_bytes'] and b['peak_memory_bytes']:
      lines.append(
          f"{b['variant']}: {memory} {common.gib(b['peak_memory_bytes'])} vs "
          f"{common.gib(a['peak_memory_bytes'])} without, step time "
          f"{b['step_s'] / a['step_s']:.2f}x"
      )
  pipe = machine.get('input_pipeline')
  if pipe:
    one = next(r for r in pipe['rows'] if r['cores'] == 1)
    every = max(pipe['rows'], key=lambda r: r['cores'])
    lines.append(
        f"Input pipeline ({one['frames']} JPEG frames at {one['size']}x{one['size']}, "
        f"training augmentation): {one['clips_per_s_per_core']:.1f} clips/s on 1 core "
        f"(target >= 25), {every['clips_per_s']:.1f} on {every['cores']}; the fastest JAX "
        f"step consumes {pipe['fastest_jax_step_clips_per_s']:.3g} clips/s: "
        f"{every['clips_per_s'] / pipe['fastest_jax_step_clips_per_s']:.0f}x headroom"
    )
  if dilation:
    lines.append(
        f'Dynamic dilation: fe_adapter conv=dynamic / conv=fixed step time = '
        f"{dilation['ratio']:.3f} (best of {dilation['steps']} steps each: "
        f"{dilation['dynamic_s']:.3f} s vs {dilation['fixed_s']:.3f} s; target <= 1.03)"
    )
    conv = dilation.get('conv')
    if conv:
      extra = conv['depth'] * (conv['dynamic_s'] - conv['fixed_s'])
      lines.append(
          f'Dynamic dilation alone (benchmarks/dilation.py: the adapter conv, forward + backward, '
          f"best of {conv['repeats']}): {1e3 * conv['dynamic_s']:.2f} ms dynamic vs "
          f"{1e3 * conv['fixed_s']:.2f} ms fixed 3x3x3 per block; x {conv['depth']} blocks = "
          f"{1e3 * extra:+.0f} ms = {1 + extra / dilation['fixed_s']:.3f}x the conv=fixed step "
          '(target <= 1.03)'
      )
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
  parser.add_argument(
      '--methods', default=','.join(METHODS), help='comma-separated subset of ' + ','.join(METHODS)
  )
  parser.add_argument(
      '--rounds',
      type=int,
      default=None,
      help='processes per spec, run in turn over all specs (default per size)',
  )
  parser.add_argument(
      '--warmup', type=int, default=None, help='untimed steps per process (default per size)'
  )
  parser.add_argument(
      '--steps', type=int, default=None, help='timed steps per process (default per size)'
  )
  parser.add_argument(
      '--max_seconds',
      type=float,
      default=None,
      help='start no further timed step after this many seconds of them',
  )
  parser.add_argument('--no_torch', action='store_true', help='skip the PyTorch reference')
  parser.add_argument('--no_remat', action='store_true', help='skip the remat rows')
  parser.add_argument('--no_dilation', action='store_true', help='skip dynamic vs fixed conv')
  parser.add_argument('--json', action='store_true', help='rows as JSON lines')
  parser.add_argument(
      '--input_pipeline',
      action='store_true',
      help='also run benchmarks/input_pipeline.py at this size and compare its '
      "clips/s with the fastest train step's consumption",
  )
  parser.add_argument(
      '--peak_sizes',
      default=None,
      help='square matmul sizes for the peak, the best counts (default: '
      '2048,4096 on CPU, 4096,8192 on an accelerator)',
  )
  parser.add_argument(
      '--dtype',
      choices=('auto', 'float32', 'bfloat16'),
      default='auto',
      help='JAX compute dtype (auto: float32 on CPU, bfloat16 on an accelerator)',
  )
  parser.add_argument(
      '--batch',
      type=int,
      default=None,
      help='clips per step (default per size; on a GPU, one that fills it)',
  )
  parser.add_argument(
      '--xla_option',
      action='append',
      default=[],
      metavar='KEY=VALUE',
      help='XLA compiler option for the JAX train steps, e.g. '
      'xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',
  )
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--specs', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  size = SIZES[args.size]
  rounds = size['rounds'] if args.rounds is None else args.rounds
  warmup = size['warmup'] if args.warmup is None else args.warmup
  steps = size['steps'] if args.steps is None else args.steps
  max_seconds = size['max_seconds'] if args.max_seconds is None else args.max_seconds

  compiler_options = _xla_options(args.xla_option)
  if args.child == 'probe':
    _report(probe_child())
    return
  if args.child:  # worker mode
    _report(
        spec_child(
            json.loads(args.specs),
            warmup,
            steps,
            max_seconds,
            [int(n) for n in args.peak_sizes.split(',')],
            compiler_options,
        )
    )
    return

  methods = [m for m in args.methods.split(',') if m]
  unknown = set(methods) - set(METHODS)
  if unknown:
    parser.error(f'unknown methods {sorted(unknown)}')
  load_start = common.load_average()
  log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
  # The parent never touches a device: a probe child says where the steps will run.
  target = run_child(['--child', 'probe'])
  on_cpu = target['backend'] == 'cpu'
  dtype = args.dtype if args.dtype != 'auto' else target['default_dtype']
  peak_sizes = args.peak_sizes or ('2048,4096' if on_cpu else '4096,8192')
  options = [*(f'--xla_option={o}' for o in args.xla_option), '--size', args.size]

  def spec_(method: str, **kwargs) -> dict:
    return spec(args.size, method, dtype=dtype, batch=args.batch, **kwargs)

  specs = []
  for m in methods:
    sp = spec_(m)
    sp['forward_flops'] = m == 'full_finetune'
    specs.append(sp)
  if not args.no_remat:
    specs += [spec_(m, remat=True) for m in REMAT_METHODS if m in methods]
  if not args.no_dilation and 'fe_adapter' in methods:
    specs.append(spec_('fe_adapter', conv='fixed'))
  if not args.no_torch and (not on_cpu or dtype != 'float32'):
    log(
        f"{target['backend']}, {dtype}: the PyTorch reference runs in float32 on CPU only (the "
        'pinned CPU build of torch); skipped'
    )
  elif not args.no_torch:
    specs += [{**spec_(m), 'framework': 'pytorch'} for m in methods]

  log(
      f'load average {load_start}; {rounds} round(s) over {len(specs)} train steps, each in '
      f'its own process: {warmup} warm-up + {steps} timed steps, then the matmul peak'
  )
  runs: list[list[dict]] = [[] for _ in specs]
  for r in range(rounds):
    order = list(range(len(specs)))[:: (-1) ** r]  # alternate, so no spec always runs first
    for i in order:
      log(f"round {r + 1}/{rounds}: {specs[i]['framework']} {specs[i]['label']}")
      runs[i].append(
          run_child(
              [
                  '--child',
                  'spec',
                  '--specs',
                  json.dumps(specs[i]),
                  '--warmup',
                  str(warmup),
                  '--steps',
                  str(steps),
                  '--max_seconds',
                  str(max_seconds),
                  '--peak_sizes',
                  peak_sizes,
                  *options,
              ]
          )
      )
  merged = [
      dict(
          rs[0],
          times=[t for x in rs for t in x['times']],
          peak_memory_bytes=min(x['peak_memory_bytes'] for x in rs),
          label=sp['label'],
      )
      for sp, rs in zip(specs, runs)
  ]
  peaks = {
      f: [x['peak_gflops'] for sp, rs in zip(specs, runs) if sp['framework'] == f for x in rs]
      for f in ('jax', 'pytorch')
  }
  jax_peak = max(peaks['jax'])
  torch_peak = max(peaks['pytorch']) if peaks['pytorch'] else None
  peak = max(jax_peak, torch_peak or 0.0)
  rows = [row(sp, run, peak) for sp, run in zip(specs, merged)]
  dilation = None
  by = {(r['framework'], r['variant']): r for r in rows}
  dyn, fixed = by.get(('jax', 'fe_adapter')), by.get(('jax', 'fe_adapter conv=fixed'))
  if dyn and fixed:
    dilation = {
        'dynamic_s': dyn['step_s'],
        'fixed_s': fixed['step_s'],
        'steps': fixed['steps_timed'],
        'ratio': dyn['step_s'] / fixed['step_s'],
    }
    fixed['dynamic_over_fixed_step_time'] = dilation['ratio']
    log('dynamic vs fixed adapter conv')
    dilation['conv'] = run_benchmark('dilation.py', f'--size={args.size}')[-1]
    fixed['dynamic_over_fixed_step_time_from_conv'] = 1 + (
        dilation['conv']['depth']
        * (dilation['conv']['dynamic_s'] - dilation['conv']['fixed_s'])
        / dilation['fixed_s']
    )

  machine = {
      'cpu': common.cpu_model(),
      'cores': common.cores(),
      'peak_gflops': peak,
      'jax_peak': jax_peak,
      'torch_peak': torch_peak,
      'peak_sizes': [int(n) for n in peak_sizes.split(',')],
      'dtype': dtype,
      **target,
      'load_start': load_start,
      'load_end': common.load_average(),
      # As `kernels.compiler_options` applies them: the config's CPU options on CPU only.
      'xla_options': {
          **(specs[0].get('cpu_compiler_options', {}) if on_cpu else {}),
          **_xla_options(args.xla_option),
      },
  }
  if args.input_pipeline:
    log('input pipeline')
    frames, size_px = SIZES[args.size]['frames'], specs[0]['model']['image_size']
    pipe = run_benchmark('input_pipeline.py', f'--frames={frames}', f'--size={size_px}')
    fastest = max(r['clips_per_s'] for r in rows if r['framework'] == 'jax')
    machine['input_pipeline'] = {'rows': pipe, 'fastest_jax_step_clips_per_s': fastest}
  if args.json:
    for r in rows:
      print(
          json.dumps(
              {
                  **r,
                  'cpu': machine['cpu'],
                  'cores': machine['cores'],
                  'backend': target['backend'],
                  'device': target['device'],
                  'peak_dtype': dtype,
                  'peak_gflops': peak,
                  'load_average_start': load_start[0],
                  'load_average_end': machine['load_end'][0],
                  'xla_options': machine['xla_options'],
              }
          )
      )
  else:
    print_report(args.size, machine, rows, dilation)


if __name__ == '__main__':
  main()
