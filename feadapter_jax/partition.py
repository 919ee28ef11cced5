"""Per-parameter choices by regex over flattened names: freezing, weight decay, sharding.

Names are the Flax parameter paths joined by '/', e.g. 'blocks_3/adapter_attn/down/kernel'.
`match` turns `[(pattern, value), ...]` into a tree of values, the first fully matching pattern
winning (as big_vision does). Every per-parameter decision in this project goes through it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence, TypeVar

import jax
from flax import traverse_util

T = TypeVar('T')
TRAINABLE, FROZEN = 'trainable', 'frozen'
# Groups of the parameter report, first match wins.
REPORT_GROUPS = (('adapters', r'.*adapter.*'), ('head', r'head/.*'), ('backbone', r'.*'))


def _key_name(key: Any) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def names(tree: Any) -> Any:
  """A tree like `tree` whose leaves are their '/'-joined paths."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: '/'.join(_key_name(k) for k in path), tree
  )


def flatten(tree: Any) -> dict[str, Any]:
  """{'a/b/c': leaf} for every leaf of `tree`."""
  return dict(zip(jax.tree.leaves(names(tree)), jax.tree.leaves(tree)))


def match(tree: Any, rules: Sequence[tuple[str, T]]) -> Any:
  """A tree of values: each leaf gets the value of the first rule whose regex fullmatches its name.

  Raises:
    ValueError: a leaf that no rule matches (add a catch-all '.*' rule).
  """
  compiled = [(re.compile(pattern), value) for pattern, value in rules]

  def pick(name: str) -> T:
    for pattern, value in compiled:
      if pattern.fullmatch(name):
        return value
    raise ValueError(f'No rule matches parameter {name!r}; rules: {[p for p, _ in rules]}')

  return jax.tree.map(pick, names(tree))


def trainable_mask(params: Any, patterns: Sequence[str]) -> Any:
  """Tree of bools: True where a parameter name fullmatches one of `patterns`.

  Raises:
    ValueError: a pattern that matches no parameter (a typo would silently freeze what it meant
      to train), or patterns that leave nothing trainable.
  """
  all_names = list(flatten(params))
  for pattern in patterns:
    if not any(re.fullmatch(pattern, n) for n in all_names):
      raise ValueError(
          f'Trainable pattern {pattern!r} matches no parameter. Patterns: {list(patterns)}. '
          f'Parameter names look like: {all_names[:3] + all_names[-2:]}'
      )
  mask = match(params, [(p, True) for p in patterns] + [('.*', False)])
  if not any(jax.tree.leaves(mask)):
    raise ValueError(f'Trainable patterns {list(patterns)} leave no parameter trainable.')
  return mask


def labels(mask: Any) -> Any:
  """'trainable'/'frozen' labels for `optax.multi_transform` from a trainable mask."""
  return jax.tree.map(lambda t: TRAINABLE if t else FROZEN, mask)


def stop_frozen(params: Any, mask: Any) -> Any:
  """Frozen leaves behind `stop_gradient`: autodiff then never computes their gradients."""
  return jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, mask)


def size(leaf: Any) -> int:
  return int(math.prod(leaf.shape))


@dataclasses.dataclass(frozen=True)
class ParamReport:
  """Parameter counts: total, trainable, and per group (backbone, adapters, head)."""

  total: int
  trainable: int
  groups: Mapping[str, tuple[int, int]]  # group -> (total, trainable)

  @property
  def percent_trainable(self) -> float:
    return 100.0 * self.trainable / max(self.total, 1)

  def __str__(self) -> str:
    rows = [f'{"group":<10} {"params":>14} {"trainable":>14}']
    for group, (tot, tr) in self.groups.items():
      rows.append(f'{group:<10} {tot:>14,} {tr:>14,}')
    rows.append(
        f'{"total":<10} {self.total:>14,} {self.trainable:>14,}  '
        f'({self.percent_trainable:.2f}% trainable)'
    )
    return '\n'.join(rows)


def report(params: Any, mask: Any) -> ParamReport:
  """Counts parameters (arrays or ShapeDtypeStructs) by group and trainability."""
  groups = match(params, [(pattern, group) for group, pattern in REPORT_GROUPS])
  counts = {group: [0, 0] for group, _ in REPORT_GROUPS}
  for leaf, group, trainable in zip(
      jax.tree.leaves(params), jax.tree.leaves(groups), jax.tree.leaves(mask)
  ):
    counts[group][0] += size(leaf)
    counts[group][1] += size(leaf) * bool(trainable)
  return ParamReport(
      total=sum(c[0] for c in counts.values()),
      trainable=sum(c[1] for c in counts.values()),
      groups={g: tuple(c) for g, c in counts.items() if c[0]},
  )


def subtree(params: Any, mask: Any, keep: bool = True) -> dict[str, Any]:
  """The nested dict of the leaves whose mask equals `keep` (others pruned)."""
  flat, flat_mask = flatten(params), flatten(mask)
  return traverse_util.unflatten_dict(
      {name: leaf for name, leaf in flat.items() if bool(flat_mask[name]) == keep}, sep='/'
  )


def merge(*trees: Any) -> dict[str, Any]:
  """Union of nested dicts with disjoint leaves (e.g. a trainable and a frozen subtree)."""
  merged: dict[str, Any] = {}
  for tree in trees:
    flat = flatten(tree)
    clash = set(flat) & set(merged)
    if clash:
      raise ValueError(f'Parameters given twice: {sorted(clash)[:5]}')
    merged.update(flat)
  return traverse_util.unflatten_dict(merged, sep='/')


def first_mismatch(params: Any, expected: Any) -> str | None:
  """The first parameter (nested or flat names) whose name or shape differs from `expected`'s,
  described in words; None when they fit."""
  have, want = flatten(params), flatten(expected)
  for name in sorted(set(have) | set(want)):
    if name not in have:
      return f'it lacks the parameter {name}'
    if name not in want:
      return f'it has a parameter the model lacks: {name}'
    if tuple(have[name].shape) != tuple(want[name].shape):
      return f'{name} has shape {tuple(have[name].shape)}, the model expects {want[name].shape}'
  return None
