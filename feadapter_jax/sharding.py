"""Device mesh and shardings: every batch over the data axes, the train state by regex rules.

The config gives both as strings, so `--config.mesh=...` and `--config.sharding_rules=...` set
them on the command line:

- `config.mesh`: 'axis=size,...' over the axes 'data' and 'fsdp', e.g. 'data=-1' or
  'data=2,fsdp=4'. One size may be -1: the devices the other axes leave.
- `config.sharding_rules`: 'regex=strategy,...', matched by `partition.match` against the train
  state's names (the first full match wins). 'replicate' copies a leaf to every device; 'fsdp'
  splits its largest axis that the 'fsdp' mesh axis divides (ZeRO-3 style, for ViT-L and up). A
  leaf none of whose axes it divides, or any leaf on a mesh without an 'fsdp' axis, is replicated.

`batch_sharding` is the one sharding of batches: the pipeline places them with it
(`pipeline.to_global_arrays`), and the jitted train and eval steps take them with it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from feadapter_jax import partition

MESH_AXES = ('data', 'fsdp')  # the batch is split over both
STRATEGIES = ('replicate', 'fsdp')
# A field's string, or its (key, value) pairs: the form code passes, and the config.json of runs
# from before the strings holds.
Spec = str | Sequence[Sequence[Any]]


class ShardingConfigError(ValueError):
  """`config.mesh` or `config.sharding_rules` is malformed or does not fit the devices."""


def _items(spec: Spec, field: str, form: str) -> list[tuple[Any, Any]]:
  """The (key, value) pairs of `spec`: 'key=value,...' or a sequence of pairs.

  A comma inside braces stays in its item: a regex's comma is that of a `{m,n}` quantifier, as
  parameter names hold none. A value is what follows an item's last '=', so a regex keeps its
  own ('(?=...)').

  Raises:
    ShardingConfigError: naming config.<field>: `spec` is empty or has an item that is not `form`.
  """
  if isinstance(spec, str):
    parts = re.split(r',(?![^{}]*})', spec)
    items = [tuple(s.strip() for s in part.rpartition('=')[::2]) for part in parts]
    bad = [part for part, (key, _) in zip(parts, items) if not key]
  else:
    items = [tuple(pair) for pair in spec]
    bad = [pair for pair in items if len(pair) != 2]
  if bad or not items:
    raise ShardingConfigError(
        f'config.{field}={spec!r}: {(bad[0] if bad else spec)!r} is not {form}.'
    )
  return items


def parse_mesh(spec: Spec) -> list[tuple[str, int]]:
  """`config.mesh` as [(axis, size)], e.g. 'data=2,fsdp=4' -> [('data', 2), ('fsdp', 4)].

  Raises:
    ShardingConfigError: naming config.mesh: an item not 'axis=size', an axis other than
      'data' and 'fsdp' or one given twice, a size not a positive integer or -1, more than one
      -1.
  """
  axes = []
  for name, size in _items(spec, 'mesh', "axis=size (as in 'data=2,fsdp=4')"):
    if name not in MESH_AXES:
      raise ShardingConfigError(
          f"config.mesh={spec!r}: unknown axis {name!r}; the axes are 'data', 'fsdp'."
      )
    if name in dict(axes):
      raise ShardingConfigError(f'config.mesh={spec!r}: axis {name!r} is given twice.')
    try:
      size = int(size)
    except (TypeError, ValueError):
      size = 0
    if size < 1 and size != -1:
      raise ShardingConfigError(
          f'config.mesh={spec!r}: the size of {name!r} is not a positive int or -1.'
      )
    axes.append((name, size))
  if [size for _, size in axes].count(-1) > 1:
    raise ShardingConfigError(f'config.mesh={spec!r}: only one axis may have size -1.')
  return axes


def parse_rules(spec: Spec) -> list[tuple[str, str]]:
  """`config.sharding_rules` as [(regex, strategy)], e.g. '.*=fsdp' -> [('.*', 'fsdp')].

  Raises:
    ShardingConfigError: naming config.sharding_rules: an item not 'regex=strategy', a
      strategy other than 'replicate' and 'fsdp', a regex that does not compile.
  """
  rules = _items(spec, 'sharding_rules', "regex=strategy (as in '.*=fsdp')")
  for pattern, strategy in rules:
    if strategy not in STRATEGIES:
      raise ShardingConfigError(
          f'config.sharding_rules={spec!r}: unknown strategy {strategy!r} for {pattern!r}; '
          "the strategies are 'replicate', 'fsdp'."
      )
    try:
      re.compile(pattern)
    except re.error as e:
      raise ShardingConfigError(
          f'config.sharding_rules={spec!r}: bad regex {pattern!r} ({e}).'
      ) from None
  return rules


def make_mesh(spec: Spec, devices: Sequence[Any] | None = None) -> Mesh:
  """The mesh of `config.mesh` over `devices` (default: all), laid out by `jax.make_mesh`.

  Raises:
    ShardingConfigError: naming config.mesh: `parse_mesh`'s errors, sizes whose product is not the
      device count.
  """
  axes = parse_mesh(spec)
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(name for name, _ in axes)
  known = math.prod(size for _, size in axes if size != -1)
  if any(size == -1 for _, size in axes) and len(devices) % known:
    raise ShardingConfigError(
        f'config.mesh={spec!r}: the sizes of the other axes multiply to {known}, which does '
        f'not divide the {len(devices)} devices.'
    )
  sizes = tuple(len(devices) // known if size == -1 else size for _, size in axes)
  if math.prod(sizes) != len(devices):
    raise ShardingConfigError(
        f'config.mesh={spec!r} needs {math.prod(sizes)} devices, there are {len(devices)}.'
    )
  if len({getattr(d, 'slice_index', 0) for d in devices}) > 1:
    # jax.make_mesh refuses devices of several slices: these keep jax.devices()' order.
    return Mesh(np.asarray(devices).reshape(sizes), names)
  # Auto axes, as in a plain Mesh: the steps' jit in/out shardings place arrays and XLA's
  # partitioner the rest (make_mesh's default, Explicit, would type arrays by their sharding).
  return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(a for a in MESH_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axes."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def _spec(leaf: Any, strategy: str, mesh: Mesh) -> P:
  if strategy == 'replicate' or 'fsdp' not in mesh.axis_names:
    return P()
  n = mesh.shape['fsdp']
  shape = getattr(leaf, 'shape', ())
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % n == 0:
      return P(*([None] * axis + ['fsdp']))
  return P()


def state_shardings(state: Any, mesh: Mesh, rules: Spec) -> Any:
  """NamedShardings for a (shape-only or real) train state from `config.sharding_rules`."""
  strategies = partition.match(state, parse_rules(rules))
  return jax.tree.map(lambda leaf, s: NamedSharding(mesh, _spec(leaf, s, mesh)), state, strategies)


def params_shardings(params: Any, mesh: Mesh, rules: Spec) -> Any:
  """The shardings `state_shardings` gives a train state's `params`, for parameters alone."""
  return state_shardings({'params': params}, mesh, rules)['params']
