"""Device mesh and shardings: batch over the data axes, state by regex rules.

Rules `[(regex, strategy)]` go through `partition.match` over the train state's names:
'replicate' copies a leaf to every device; 'fsdp' splits its largest axis that the 'fsdp' mesh
axis divides (ZeRO-3 style, for ViT-L and up), replicating leaves no axis of which divides.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from feadapter_jax import partition

DATA_AXES = ('data', 'fsdp')  # the batch is split over both


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[Any] | None = None) -> Mesh:
  """Mesh from `[(name, size)]`; one size may be -1 (the remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  names = [name for name, _ in axes]
  sizes = [size for _, size in axes]
  known = math.prod(s for s in sizes if s != -1)
  sizes = [len(devices) // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != len(devices):
    raise ValueError(
        f'Mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, '
        f'there are {len(devices)}: fix config.mesh.'
    )
  return Mesh(np.asarray(devices).reshape(sizes), tuple(names))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(a for a in DATA_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axes."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def _spec(leaf: Any, strategy: str, mesh: Mesh) -> P:
  if strategy == 'replicate' or 'fsdp' not in mesh.axis_names:
    return P()
  if strategy != 'fsdp':
    raise ValueError(f"Unknown sharding strategy {strategy!r}: 'replicate' or 'fsdp'.")
  n = mesh.shape['fsdp']
  shape = getattr(leaf, 'shape', ())
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % n == 0:
      return P(*([None] * axis + ['fsdp']))
  return P()


def state_shardings(state: Any, mesh: Mesh, rules: Sequence[tuple[str, str]]) -> Any:
  """NamedShardings for a (shape-only or real) train state from `[(regex, strategy)]`."""
  strategies = partition.match(state, [tuple(r) for r in rules])
  return jax.tree.map(lambda leaf, s: NamedSharding(mesh, _spec(leaf, s, mesh)), state, strategies)
