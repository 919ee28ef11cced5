r"""One prepared check of an accelerator: the bfloat16 train steps at a batch that fills the device.

  python benchmarks/device_check.py               # ViT-B/16, 16 x 224 x 224: < 8 min on an H200
  python benchmarks/device_check.py --size tiny   # the synthetic config's tiny ViT: CPU smoke test
  python benchmarks/device_check.py --input       # also the host's input pipeline, same clips
  python benchmarks/device_check.py --out FILE    # JSON there (default $OUT/device_check.json)

Sections, each in its own child process (an abort, e.g. out of memory, loses that section only)
and each under its share of one time cap (`--max_seconds`; the child is killed at its share):

- device: backend, device, memory limit, the backend's defaults (`kernels.resolve`,
  `kernels.resolve_dtype`, `kernels.attention_implementation`, whether the CPU compiler options
  apply) and the matmul peak: square bfloat16 `jnp.dot`, n = 8192, best of 5.
- fe_adapter, full_finetune: the trainer's train step (`train_step.build_jax`: model, optimizer,
  `step.make_train_step`, donated state, uint8 batch) in bfloat16. Batch search: compile a small
  batch and double it, jumping to the largest power-of-two multiple that the compiled memory
  (`train_step.program_bytes`, linear in the batch) predicts to fit the device's limit, until
  nothing larger is predicted to fit, a compiled step would not fit, a step runs out of memory
  (then halve) or the section's time is spent; the largest batch that ran counts. Reported:
  clips/s (best timed step), compile time, the device's peak bytes in use in that child, the
  attention the compiled step runs (`kernels.compiled_attention` on its HLO), model FLOPs and
  utilisation.
- precision: FE-Adapter's train-step loss in bfloat16 and in float32 on one fixed batch (same
  parameters, same dropout keys).
- input (`--input`): `benchmarks/input_pipeline.py` (SynthFER JPEGs, training augmentation,
  tf.data on the host's cores) at the same clip shape, against the steps' consumption.

Model FLOPs per clip (matmuls and convs, 2 per multiply-add, `common.vit_ops`): FE-Adapter 2x the
frozen backbone's forward (input gradients only: frozen weights need no weight gradients) + 3x
the trained ops' forward (adapters, head); full fine-tuning 3x the whole forward. Utilisation is
the achieved model FLOP/s over the matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks import train_step  # pylint: disable=g-import-not-at-top  (no JAX at import)

METHODS = ('fe_adapter', 'full_finetune')
SIZES = {
    # First batch of the search, largest batch; timed steps (and their seconds); peak matmul n.
    'base': dict(start=8, max_batch=1024, steps=5, step_seconds=20.0, peak_n=8192, cap=390.0),
    'tiny': dict(start=4, max_batch=8, steps=3, step_seconds=5.0, peak_n=512, cap=100.0),
}
# Time shares, in running order; a section that ends early leaves its rest to the next. The cap
# (per size) is for the sections without 'input', which adds its share to it.
SHARES = {'device': 1.0, 'fe_adapter': 3.5, 'full_finetune': 3.5, 'precision': 2.5, 'input': 2.0}
# Share of the device's memory limit a compiled step may plan for.
FILL = 0.9
PRECISION_BATCH = 2
MARK = 'DEVICE_CHECK_JSON '


# ------------------------------------------------------------------------------ children


def _out_of_memory(error: Exception) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text


def model_flops_per_clip(model: dict, frames: int, trainable: list[str]) -> float:
  """A train step's model FLOPs per clip: 3x the forward of trained ops (weight and input
  gradients), 2x the forward of frozen ones (input gradients only); 3x all when the backbone
  trains."""
  ops = common.vit_ops(model, frames, trainable)
  backbone_trained = all(op.trainable for op in ops if op.kind == 'weight')
  return sum(2 * op.macs * (3 if backbone_trained or op.trainable else 2) for op in ops)


def device_child(size: str) -> dict:
  """The device, its memory limit, the backend's defaults and its bfloat16 matmul peak."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import common as configs_common  # pylint: disable=g-import-not-at-top
  from feadapter_jax.models import kernels  # pylint: disable=g-import-not-at-top

  device = jax.local_devices()[0]
  stats = device.memory_stats() or {}
  dtype = kernels.resolve_dtype('auto')
  cpu_options = configs_common.base_config('fe_adapter').cpu_compiler_options
  n = SIZES[size]['peak_n']
  peak = common.jax_matmul_peak((n,), repeats=5, dtype='bfloat16')
  return {
      'backend': jax.default_backend(),
      'device': device.device_kind,
      'devices': jax.local_device_count(),
      'memory_limit_bytes': stats.get('bytes_limit'),
      'defaults': {
          'kernels': kernels.resolve('auto'),
          'dtype': dtype,
          'attention': kernels.attention_implementation(dtype),
          'cpu_compiler_options': kernels.compiler_options(cpu_options) is not None,
      },
      'peak_n': n,
      'peak_flops': peak['gflops'] * 1e9,
  }


def _fits(run: dict, limit: int | None) -> bool:
  return not (limit and run['program_bytes'] and run['program_bytes'] > FILL * limit)


def next_batch(batch: int, run: dict, limit: int | None, max_batch: int) -> int:
  """The batch to try after `batch` ran: the largest power-of-two multiple of it that its compiled
  memory (the donated state fixed, the rest per clip) predicts to fit, or `batch` itself when not
  even double is predicted to (the search ends); double without a limit to predict from."""
  if not (limit and run['program_bytes']):
    return min(2 * batch, max_batch)
  fixed = run['donated_bytes']  # the train state: donated in, aliased out
  per_clip = max(run['program_bytes'] - fixed, 1) / batch
  predicted = (FILL * limit - fixed) / per_clip
  nxt = batch
  while 2 * nxt <= min(predicted, max_batch):
    nxt *= 2
  return nxt


def method_child(size: str, method: str, deadline: float) -> dict:
  """The largest batch of `method`'s bfloat16 step that fits, its speed, memory and attention."""
  import jax  # pylint: disable=g-import-not-at-top
  from feadapter_jax.models import kernels  # pylint: disable=g-import-not-at-top

  cfg = SIZES[size]
  limit = (jax.local_devices()[0].memory_stats() or {}).get('bytes_limit')
  log = lambda msg: print(f'[{method}] {msg}', file=sys.stderr, flush=True)  # noqa: E731
  params = train_step.init_params(train_step.spec(size, method, dtype='bfloat16'))
  tried: list[dict] = []
  best: tuple[int, dict, Callable[[], Any]] | None = None
  batch, ceiling = cfg['start'], cfg['max_batch'] + 1  # ceiling: the smallest batch that failed
  while 0 < batch < ceiling and batch > (best[0] if best else 0):
    if best and time.time() > deadline:
      break
    sp = train_step.spec(size, method, dtype='bfloat16', batch=batch)
    try:
      run, step_fn = train_step.build_jax(sp, None, with_hlo=True, params=params)
      if not _fits(run, limit):
        raise MemoryError(f"the compiled step needs {run['program_bytes']} of {limit} bytes")
      step_fn()  # the first run allocates everything: an out-of-memory shows here
    except Exception as e:  # pylint: disable=broad-except
      if not (isinstance(e, MemoryError) or _out_of_memory(e)):
        raise
      tried.append({'batch': batch, 'fits': False, 'why': str(e).splitlines()[0][:200]})
      log(f'batch {batch}: does not fit')
      run = step_fn = None
      gc.collect()
      ceiling, batch = batch, batch // 2
      continue
    tried.append({'batch': batch, 'fits': True, 'program_bytes': run['program_bytes']})
    log(f"batch {batch}: compiled in {run['compile_s']:.1f} s, runs")
    best = (batch, run, step_fn)
    batch = next_batch(batch, run, limit, cfg['max_batch'])
  if best is None:
    raise RuntimeError(f'no batch fits: {tried}')
  batch, run, step_fn = best
  step_fn()  # warm
  times: list[float] = []
  started = time.perf_counter()
  while len(times) < cfg['steps'] and (
      not times or time.perf_counter() - started < cfg['step_seconds']
  ):
    start = time.perf_counter()
    step_fn()
    times.append(time.perf_counter() - start)
  sp = train_step.spec(size, method, dtype='bfloat16', batch=batch)
  return {
      'method': method,
      'batch': batch,
      'frames': sp['frames'],
      'image_size': sp['model']['image_size'],
      'dtype': sp['model']['dtype'],
      'kernels': kernels.resolve(sp['model']['kernels']),
      'step_s': min(times),
      'step_s_all': times,
      'clips_per_s': batch / min(times),
      'compile_s': run['compile_s'],
      'device_peak_bytes': common.device_peak_bytes(),
      'program_bytes': run['program_bytes'],
      'memory_limit_bytes': limit,
      'attention_requested': kernels.attention_implementation(sp['model']['dtype']),
      'attention_compiled': kernels.compiled_attention(run['hlo']),
      'model_flops_per_clip': model_flops_per_clip(sp['model'], sp['frames'], sp['trainable']),
      'analytic_train_flops_per_clip': common.analytic_flops(
          sp['model'], sp['frames'], sp['trainable']
      )['train'],
      'xla_flops_per_clip': run['xla_flops'] / batch,
      'search': tried,
  }


def precision_child(size: str) -> dict:
  """FE-Adapter's train-step loss in bfloat16 and in float32 on one fixed batch."""
  losses, params = {}, None
  for dtype in ('float32', 'bfloat16'):
    sp = train_step.spec(size, 'fe_adapter', dtype=dtype, batch=PRECISION_BATCH)
    params = train_step.init_params(sp) if params is None else params
    _, step_fn = train_step.build_jax(sp, None, params=params)
    losses[dtype] = float(step_fn()['loss'])
  diff = abs(losses['bfloat16'] - losses['float32'])
  return {
      'batch': PRECISION_BATCH,
      'loss_bfloat16': losses['bfloat16'],
      'loss_float32': losses['float32'],
      'abs_diff': diff,
      'rel_diff': diff / abs(losses['float32']),
  }


def input_child(size: str) -> dict:
  """`input_pipeline.py` at this size's clip shape, on the host's CPUs."""
  sp = train_step.spec(size, 'fe_adapter')
  rows = train_step.run_benchmark(
      'input_pipeline.py',
      f"--frames={sp['frames']}",
      f"--size={sp['model']['image_size']}",
      '--clips=32',
      '--batches=12',
  )
  return {'rows': rows, 'clips_per_s': max(r['clips_per_s'] for r in rows)}


# ------------------------------------------------------------------------------ parent


def _child_env(section: str) -> dict[str, str]:
  env = train_step._child_env()  # pylint: disable=protected-access
  # JAX's default pool is 75% of the device: a batch that fills the device needs more.
  env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.92')
  if section == 'input':
    env['CUDA_VISIBLE_DEVICES'] = ''  # the host pipeline leaves the device alone
  return env


def _echo(stderr: str | bytes | None) -> None:
  """The child's own progress lines (its '[section]' log), without the frameworks' chatter."""
  text = stderr.decode(errors='replace') if isinstance(stderr, bytes) else stderr or ''
  for line in text.splitlines():
    if line.startswith('['):
      print(line, file=sys.stderr, flush=True)


def run_section(section: str, size: str, timeout: float) -> dict:
  """Runs `section` in a child with a hard `timeout`; its result, or {'error': ...}."""
  start = time.perf_counter()
  # The child stops searching and timing at 80% of its time, so it reports before the kill.
  deadline = time.time() + 0.8 * timeout
  command = [sys.executable, os.path.abspath(__file__), '--child', section, '--size', size]
  try:
    proc = subprocess.run(
        [*command, '--deadline', str(deadline)],
        env=_child_env(section),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=max(timeout, 1.0),
        check=False,
    )
  except subprocess.TimeoutExpired as e:
    _echo(e.stderr)
    return {'error': f'timed out after {timeout:.0f} s', 'seconds': time.perf_counter() - start}
  _echo(proc.stderr)
  results = [line[len(MARK) :] for line in proc.stdout.splitlines() if line.startswith(MARK)]
  if not results:
    tail = (proc.stderr.strip().splitlines() or ['no output'])[-1]
    return {'error': f'exit code {proc.returncode}: {tail}', 'seconds': time.perf_counter() - start}
  result = json.loads(results[-1])
  result['seconds'] = time.perf_counter() - start
  return result


def _child_main(section: str, size: str, deadline: float) -> None:
  try:
    if section == 'device':
      result = device_child(size)
    elif section in METHODS:
      result = method_child(size, section, deadline)
    elif section == 'precision':
      result = precision_child(size)
    else:
      result = input_child(size)
  except Exception as e:  # pylint: disable=broad-except
    result = {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'}
  print(MARK + json.dumps(result), flush=True)


def summarise(sections: dict[str, dict]) -> dict:
  """Utilisation from the methods' FLOP/s and the device's peak; the input's headroom."""
  peak = sections.get('device', {}).get('peak_flops')
  for method in METHODS:
    r = sections.get(method, {})
    if 'clips_per_s' in r:
      r['achieved_flops'] = r['clips_per_s'] * r['model_flops_per_clip']
      r['utilisation'] = r['achieved_flops'] / peak if peak else None
  pipe = sections.get('input', {})
  fastest = max(
      (sections[m]['clips_per_s'] for m in METHODS if 'clips_per_s' in sections.get(m, {})),
      default=None,
  )
  if 'clips_per_s' in pipe and fastest:
    pipe['fastest_step_clips_per_s'] = fastest
    pipe['headroom'] = pipe['clips_per_s'] / fastest
  return sections


def _fmt(x: Any, spec: str) -> str:
  return 'n/a' if x is None else format(x, spec)


def report(size: str, sections: dict[str, dict], total_s: float) -> str:
  device = sections.get('device', {})
  lines = [f'## Device check, {size}: {total_s:.0f} s']
  if 'error' in device:
    lines.append(f"device: ERROR {device['error']}")
  else:
    d = device['defaults']
    lines.append(
        f"{device['devices']} x {device['device']} ({device['backend']}), memory limit "
        f"{common.gib(device['memory_limit_bytes']) if device['memory_limit_bytes'] else 'n/a'}; "
        f'defaults: kernels '
        f"{d['kernels']}, dtype {d['dtype']}, attention {d['attention']}, CPU compiler options "
        f"{'on' if d['cpu_compiler_options'] else 'off'}; bf16 matmul peak "
        f"{device['peak_flops'] / 1e12:.2f} TFLOP/s (n={device['peak_n']})"
    )
  headers = [
      'method',
      'batch',
      'clips/s',
      'step s',
      'compile s',
      'device peak',
      'program',
      'attention',
      'GFLOP/clip',
      'MFU',
  ]
  rows = []
  for method in METHODS:
    r = sections.get(method, {})
    if 'error' in r or not r:
      rows.append([method, 'ERROR', r.get('error', 'not run'), *[''] * 7])
      continue
    rows.append(
        [
            method,
            r['batch'],
            f"{r['clips_per_s']:.3g}",
            f"{r['step_s']:.3f}",
            f"{r['compile_s']:.1f}",
            common.gib(r['device_peak_bytes']) if r['device_peak_bytes'] else 'n/a',
            common.gib(r['program_bytes']) if r['program_bytes'] else 'n/a',
            f"{r['attention_compiled']} (asked {r['attention_requested']})",
            f"{r['model_flops_per_clip'] / 1e9:.1f}",
            _fmt(r.get('utilisation'), '.1%'),
        ]
    )
  lines.append(common.markdown_table(headers, rows))
  p = sections.get('precision', {})
  if 'error' in p:
    lines.append(f"precision: ERROR {p['error']}")
  elif p:
    lines.append(
        f"FE-Adapter train-step loss, batch {p['batch']}: bf16 {p['loss_bfloat16']:.6f} vs fp32 "
        f"{p['loss_float32']:.6f} (|diff| {p['abs_diff']:.2e}, relative {p['rel_diff']:.2e})"
    )
  pipe = sections.get('input')
  if pipe and 'error' in pipe:
    lines.append(f"input pipeline: ERROR {pipe['error']}")
  elif pipe:
    per_cores = ', '.join(f"{r['clips_per_s']:.1f} on {r['cores']} core(s)" for r in pipe['rows'])
    lines.append(
        f'input pipeline (host, tf.data): {per_cores} clips/s'
        + (
            f"; the fastest step consumes {pipe['fastest_step_clips_per_s']:.3g} clips/s "
            f"({pipe['headroom']:.2f}x headroom)"
            if 'headroom' in pipe
            else ''
        )
    )
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', choices=tuple(SIZES), default='base')
  parser.add_argument('--input', action='store_true', help='also time the host input pipeline')
  parser.add_argument(
      '--max_seconds',
      type=float,
      default=None,
      help='time cap of the whole check (default per size: base 390 s, 464 s with --input)',
  )
  parser.add_argument(
      '--out',
      default=os.path.join(os.environ['OUT'], 'device_check.json') if os.environ.get('OUT') else '',
      help='JSON output path (default $OUT/device_check.json when OUT is set)',
  )
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--deadline', type=float, default=0.0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _child_main(args.child, args.size, args.deadline)
    return

  started = time.perf_counter()
  order = [s for s in SHARES if s != 'input' or args.input]
  base_shares = sum(SHARES[s] for s in SHARES if s != 'input')
  cap = args.max_seconds or SIZES[args.size]['cap'] * sum(SHARES[s] for s in order) / base_shares
  sections: dict[str, dict] = {}
  for i, section in enumerate(order):
    left = cap - (time.perf_counter() - started)
    share = SHARES[section] / sum(SHARES[s] for s in order[i:])
    print(f'{section}: up to {left * share:.0f} s', file=sys.stderr, flush=True)
    sections[section] = run_section(section, args.size, left * share)
  total_s = time.perf_counter() - started
  summarise(sections)
  print(report(args.size, sections, total_s))
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump({'size': args.size, 'total_s': total_s, 'sections': sections}, f, indent=2)
    print(f'-> {args.out}')


if __name__ == '__main__':
  main()
