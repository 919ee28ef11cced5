"""The methods compared here, and the knobs of their adapters: plain data, no JAX.

Configs import this module to build `config.model.adapter` and `config.trainable`, so reading a
config imports neither JAX nor TensorFlow. The modules that implement the adapters live in
`models/adapters.py`; `AdapterConfig` is what they are built from.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

KINDS = ('none', 'fe', 'st', 'aim')
CONVS = ('dynamic', 'multibranch', 'fixed')
AXES = ('t', 'h', 'w')
ACTIVATIONS = ('none', 'gelu', 'relu')


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """Which adapter, where, and its knobs (`docs/method.md` says which come from the papers).

  Attributes:
    kind: 'none' | 'fe' | 'st' | 'aim'.
    width: bottleneck channels of the token adapters ('fe', 'st').
    placement: where token adapters go in a block: 'attn' (before MHSA), 'mlp' (before the MLP).
    blocks: indices of the blocks that get an adapter; empty means every block.
    conv: 'dynamic' (dynamic dilation), 'multibranch' (gated fixed dilations) or 'fixed'.
    kernel_size: depthwise kernel (t, h, w).
    dilation: base dilation (t, h, w); the dynamic factor multiplies it.
    dynamic_axes: axes whose dilation is predicted per location, from ('t', 'h', 'w').
    max_dilation: upper bound of a predicted dilation (bounds the shifts that are read).
    predictor_kernel: kernel (t, h, w) of the conv that predicts the dilation.
    branch_dilations: temporal dilations of the multi-branch reading.
    activation: applied after `down` ('none' in both papers' formulas).
    zero_init: 'up' (FE) or 'conv' (ST): the layer initialised at zero.
    aim_ratio: AIM bottleneck as a fraction of the width D.
    aim_scale: AIM's scale of the MLP adapter.
  """

  kind: str = 'none'
  width: int = 352
  placement: tuple[str, ...] = ('attn',)
  blocks: tuple[int, ...] = ()
  conv: str = 'dynamic'
  kernel_size: tuple[int, int, int] = (3, 3, 3)
  dilation: tuple[int, int, int] = (1, 1, 1)
  dynamic_axes: tuple[str, ...] = ('t',)
  max_dilation: float = 3.0
  predictor_kernel: tuple[int, int, int] = (3, 1, 1)
  branch_dilations: tuple[int, ...] = (1, 2, 3)
  activation: str = 'none'
  zero_init: str = 'up'
  aim_ratio: float = 0.25
  aim_scale: float = 0.5

  def __post_init__(self):
    _check(self.kind in KINDS, f'adapter.kind={self.kind!r}, expected one of {KINDS}')
    _check(self.conv in CONVS, f'adapter.conv={self.conv!r}, expected one of {CONVS}')
    _check(
        set(self.placement) <= {'attn', 'mlp'},
        f"adapter.placement={self.placement!r}, expected a subset of ('attn', 'mlp')",
    )
    _check(
        set(self.dynamic_axes) <= set(AXES),
        f'adapter.dynamic_axes={self.dynamic_axes!r}, expected a subset of {AXES}',
    )
    _check(
        all(k % 2 == 1 for k in self.kernel_size),
        f'adapter.kernel_size={self.kernel_size!r} must be odd on every axis',
    )
    _check(
        self.activation in ACTIVATIONS,
        f'adapter.activation={self.activation!r}, expected one of {ACTIVATIONS}',
    )
    _check(self.zero_init in ('up', 'conv'), f'adapter.zero_init={self.zero_init!r}')

  @classmethod
  def from_dict(cls, d: Mapping[str, Any] | None) -> AdapterConfig:
    """Builds from a (Config)dict; sequences become tuples so the config stays hashable."""
    if d is None:
      return cls()
    d = dict(d.to_dict() if hasattr(d, 'to_dict') else d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    _check(not unknown, f'unknown adapter fields {sorted(unknown)}')
    return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()})

  def in_block(self, index: int) -> bool:
    return self.kind != 'none' and (not self.blocks or index in self.blocks)


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


ADAPTERS_AND_HEAD = ('.*adapter.*', 'head/.*')


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the comparison: the adapter preset (over `AdapterConfig`'s defaults) and the
  parameters it trains (regexes over flattened names, `partition.match`)."""

  label: str
  adapter: Mapping[str, Any]
  trainable: tuple[str, ...]


# Same backbone, data and trainer; only the adapter and the trainable set differ. In the order
# the comparison's table lists them: baselines first, FE-Adapter last.
METHODS: dict[str, Method] = {
    'linear_probe': Method('linear probe', dict(kind='none'), ('head/.*',)),
    'full_finetune': Method('full fine-tuning', dict(kind='none'), ('.*',)),
    'st_adapter': Method(
        'ST-Adapter',
        dict(kind='st', width=384, conv='fixed', kernel_size=(3, 1, 1), zero_init='conv'),
        ADAPTERS_AND_HEAD,
    ),
    'aim': Method('AIM', dict(kind='aim'), ADAPTERS_AND_HEAD),
    'fe_adapter': Method('FE-Adapter', dict(kind='fe', conv='dynamic'), ADAPTERS_AND_HEAD),
    'fe_multibranch': Method(
        'FE-Adapter (multi-branch)', dict(kind='fe', conv='multibranch'), ADAPTERS_AND_HEAD
    ),
}


def get(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f'Unknown method {name!r}; one of {list(METHODS)}')
  return METHODS[name]


def adapter_dict(name: str) -> dict[str, Any]:
  """Every `AdapterConfig` field for method `name` (its preset over the defaults), as a dict."""
  return {**dataclasses.asdict(AdapterConfig()), **get(name).adapter}
