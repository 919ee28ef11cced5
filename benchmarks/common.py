"""Helpers shared by the benchmarks: the machine, its float32 matmul peak, memory, model FLOPs.

Nothing here imports jax or torch at module level: a benchmark's child process imports only the
framework it measures, so its resident memory is that framework's alone.
"""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import time
from typing import Any, Callable, Mapping, Sequence

# ---------------------------------------------------------------------------------- machine


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  import platform  # pylint: disable=g-import-not-at-top

  return platform.processor() or platform.machine()


def cores() -> int:
  """Cores this process may run on (its affinity), which is what the frameworks' pools use."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def load_average() -> tuple[float, float, float]:
  try:
    return os.getloadavg()
  except OSError:
    return (float('nan'),) * 3


# ---------------------------------------------------------------------------------- memory


def rss_bytes() -> int:
  """Resident memory of this process now."""
  try:
    with open('/proc/self/statm') as f:
      return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
  except OSError:
    import psutil  # pylint: disable=g-import-not-at-top

    return psutil.Process().memory_info().rss


def device_peak_bytes() -> int | None:
  """Peak bytes in use on the first accelerator since the process started; None on CPU."""
  import jax  # pylint: disable=g-import-not-at-top

  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def reset_peak_rss() -> bool:
  """Resets the kernel's high-water mark of this process's RSS (Linux: clear_refs 5).

  Returns False where that is not possible; `peak_rss_bytes` is then the peak since start.
  """
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def peak_rss_bytes() -> int:
  """Peak resident memory of this process since start or the last `reset_peak_rss`."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------- timing


def best_time(fn: Callable[[], Any], repeats: int) -> float:
  """Best wall time of `repeats` calls of `fn` (which must block until its work is done)."""
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def jax_matmul_peak(
    sizes: Sequence[int] = (2048, 4096), repeats: int = 5, dtype: str = 'float32'
) -> dict[str, Any]:
  """GFLOP/s of square `jnp.dot`s in `dtype` (2 n^3 FLOP each): the best over sizes and repeats.

  On the default device: the CPU's float32 peak, or a GPU's bfloat16 (tensor core) peak.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  per_size = {}
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    seconds = best_time(lambda: dot(a, b).block_until_ready(), repeats)
    per_size[n] = 2 * n**3 / seconds / 1e9
  return {'gflops': max(per_size.values()), 'per_size': per_size}


def torch_matmul_peak(
    sizes: Sequence[int] = (2048, 4096), repeats: int = 5, threads: int | None = None
) -> dict[str, Any]:
  """As `jax_matmul_peak`, with `torch.mm` on `threads` threads (default: every core)."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads or cores())
  per_size = {}
  for n in sizes:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)
    seconds = best_time(lambda: torch.mm(a, b), repeats)
    per_size[n] = 2 * n**3 / seconds / 1e9
  return {'gflops': max(per_size.values()), 'per_size': per_size}


# ---------------------------------------------------------------------------------- FLOPs


@dataclasses.dataclass(frozen=True)
class Op:
  """One multiply-add-heavy op of the forward pass, in forward order.

  kind: 'weight' (activation x parameter: dense layers, convs) or 'activation' (activation x
    activation: attention scores and values, the dynamic dilation's weighted reads).
  trainable: the op has parameters that are trained (its weight gradient is computed).
  """

  name: str
  macs: float
  kind: str
  trainable: bool


def _trainable(patterns: Sequence[str], name: str) -> bool:
  return any(re.fullmatch(p, name) for p in patterns)


def vit_ops(model: Mapping[str, Any], num_frames: int, trainable: Sequence[str]) -> list[Op]:
  """The matmul/conv ops of the ViT (+ adapters) forward pass for ONE clip, in forward order.

  Args:
    model: explicit architecture (width, depth, num_heads, mlp_dim, patch_size, image_size,
      num_classes) and `adapter` (a dict with AdapterConfig's fields).
    num_frames: frames per clip.
    trainable: the regexes over Flax parameter names that `config.trainable` holds.
  """
  d, depth, mlp = model['width'], model['depth'], model['mlp_dim']
  p, size = model['patch_size'], model['image_size']
  a = model.get('adapter') or {'kind': 'none'}
  kind = a.get('kind', 'none')
  t = num_frames
  n_patch = (size // p) ** 2
  n = n_patch + 1
  tr = lambda name: _trainable(trainable, name)  # noqa: E731
  ops = [Op('patch_embed', t * n_patch * p * p * 3 * d, 'weight', tr('patch_embed/kernel'))]
  blocks = a.get('blocks') or range(depth)
  for i in range(depth):
    has = kind != 'none' and i in blocks
    pre = f'blocks_{i}/'
    backbone = tr(pre + 'attn/qkv/kernel')

    def token_adapter(where: str) -> list[Op]:
      w = a['width']
      name = f'{pre}adapter_{where}/'
      ad = tr(name + 'down/kernel')
      kt, kh, kw = a.get('kernel_size', (3, 3, 3))
      conv = a.get('conv', 'dynamic')
      out = [Op(name + 'down', t * n_patch * d * w, 'weight', ad)]
      if conv == 'dynamic':
        reads = (kt - 1) * (int(-(-a.get('max_dilation', 3.0) // 1)) + 1)
        pk = a.get('predictor_kernel', (3, 1, 1))
        out += [
            Op(name + 'conv/dilation', t * n_patch * w * pk[0] * pk[1] * pk[2], 'weight', ad),
            Op(name + 'conv/taps', t * n_patch * w * kt * kh * kw, 'weight', ad),
            Op(name + 'conv/reads', t * n_patch * w * reads, 'activation', ad),
        ]
      elif conv == 'multibranch':
        out += [
            Op(
                name + 'conv/branches',
                len(a.get('branch_dilations', (1, 2, 3))) * t * n_patch * w * kt * kh * kw,
                'weight',
                ad,
            )
        ]
      else:
        out += [Op(name + 'conv', t * n_patch * w * kt * kh * kw, 'weight', ad)]
      return out + [Op(name + 'up', t * n_patch * w * d, 'weight', ad)]

    def bottleneck(name: str) -> list[Op]:
      r = int(d * a.get('aim_ratio', 0.25))
      ad = tr(pre + name + '/fc1/kernel')
      return [
          Op(pre + name + '/fc1', t * n * d * r, 'weight', ad),
          Op(pre + name + '/fc2', t * n * r * d, 'weight', ad),
      ]

    placement = a.get('placement', ('attn',)) if has and kind in ('fe', 'st') else ()
    if 'attn' in placement:
      ops += token_adapter('attn')
    if has and kind == 'aim':  # the frozen attention reused along time, for every token
      ops += [
          Op(pre + 'attn_t/qkv', t * n * d * 3 * d, 'weight', backbone),
          Op(pre + 'attn_t/scores+values', 2 * n * t * t * d, 'activation', False),
          Op(pre + 'attn_t/proj', t * n * d * d, 'weight', backbone),
      ]
      ops += bottleneck('adapter_t')
    ops += [
        Op(pre + 'attn/qkv', t * n * d * 3 * d, 'weight', backbone),
        Op(pre + 'attn/scores+values', 2 * t * n * n * d, 'activation', False),
        Op(pre + 'attn/proj', t * n * d * d, 'weight', backbone),
    ]
    if has and kind == 'aim':
      ops += bottleneck('adapter_s')
    if 'mlp' in placement:
      ops += token_adapter('mlp')
    ops += [
        Op(pre + 'mlp/fc1', t * n * d * mlp, 'weight', backbone),
        Op(pre + 'mlp/fc2', t * n * mlp * d, 'weight', backbone),
    ]
    if has and kind == 'aim':
      ops += bottleneck('adapter_mlp')
  ops.append(Op('head', d * max(model.get('num_classes', 0), 1), 'weight', tr('head/kernel')))
  return ops


def analytic_flops(
    model: Mapping[str, Any], num_frames: int, trainable: Sequence[str]
) -> dict[str, float]:
  """Model FLOPs (2 per multiply-add) per clip: forward, and a train step's forward + backward.

  The backward pass of an op computes the gradient of its input only when something trainable
  lies upstream of it (else nothing needs it), and its weight gradient only when it is trainable:
  each costs one more forward's multiply-adds. Activation x activation ops (attention) need both
  operands' gradients, 2 forwards, when anything upstream is trained. A frozen backbone under
  trainable adapters thus costs 2x its forward instead of 3x. Elementwise work (norms, GELU,
  softmax, the optimizer) is not counted: it is not matmul work.
  """
  forward = backward = 0.0
  upstream = False
  for op in vit_ops(model, num_frames, trainable):
    forward += op.macs
    if op.kind == 'activation':
      backward += 2 * op.macs if (upstream or op.trainable) else 0.0
    else:
      backward += op.macs * (int(upstream) + int(op.trainable))
    upstream = upstream or op.trainable
  return {'forward': 2 * forward, 'train': 2 * (forward + backward)}


# ---------------------------------------------------------------------------------- reporting


def gib(nbytes: float) -> str:
  return f'{nbytes / 2 ** 30:.2f} GiB' if nbytes >= 2**30 else f'{nbytes / 2 ** 20:.0f} MiB'


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  cells = [[str(c) for c in row] for row in rows]
  widths = [
      max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
  ]
  line = lambda r: '| ' + ' | '.join(c.ljust(w) for c, w in zip(r, widths)) + ' |'  # noqa: E731
  return '\n'.join(
      [
          line(headers),
          '|' + '|'.join('-' * (w + 2) for w in widths) + '|',
          *(line(r) for r in cells),
      ]
  )
