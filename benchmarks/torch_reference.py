"""The PyTorch reference of the benchmarked models: timm's ViT with the same adapters in PyTorch.

The backbone is timm's `VisionTransformer` (`vit_base_patch16_224`, pretrained=False, for
ViT-B/16 at 224); every block is wrapped so that the adapters sit where `feadapter_jax/models/
vit.py` puts them, with the same computation as `feadapter_jax/models/adapters.py`:

- FE-Adapter: `x + up(conv(down(x)))` on patch tokens before MHSA, `conv` a depthwise 3-D conv
  whose temporal dilation `d = min(elu(z) + 1, max_dilation)` is predicted per location; the conv
  factorises into a spatial depthwise conv per temporal tap and the taps' reads at `t + k d`,
  written as weighted shifted reads (linear interpolation), as the Flax model does.
- ST-Adapter: the same bottleneck with a fixed depthwise (3, 1, 1) conv.
- AIM: a learned temporal position embedding, bottleneck MLPs around the frozen attention
  reused along time, after attention, and in parallel to the MLP (scale 0.5).

Module names mirror the Flax parameter names ('blocks.3.adapter_attn.conv.taps.weight' is
'blocks_3/adapter_attn/conv/taps/kernel'), so `flax_name` maps one onto the other, the
trainable set is chosen with the same regexes as `config.trainable`, and `load_flax_params`
copies a Flax parameter tree into the model (Dense kernel (in, out) = Linear weight.T; conv
kernel (t, h, w, in/groups, out) = Conv3d weight (out, in/groups, t, h, w)).

Only torch, timm and numpy are imported: a benchmark's PyTorch child process holds no JAX.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np
import timm
import torch
from torch import nn
from torch.nn import functional as F

AXES = ('t', 'h', 'w')


def _same_padding(kernel: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
  return tuple((k - 1) * d // 2 for k, d in zip(kernel, dilation))


class DynamicDilatedConv3D(nn.Module):
  """Depthwise 3-D conv with a per-location temporal dilation (the Flax factorised path).

  Input and output `(b, c, t, h, w)`. Only time may be dynamic here (the configs' setting).
  """

  def __init__(
      self,
      channels: int,
      kernel_size=(3, 3, 3),
      dilation=(1, 1, 1),
      dynamic_axes=('t',),
      max_dilation: float = 3.0,
      predictor_kernel=(3, 1, 1),
  ):
    super().__init__()
    if tuple(dynamic_axes) != ('t',):
      raise NotImplementedError('the PyTorch reference implements dynamic_axes=("t",) only')
    self.kernel_size, self.dilation = tuple(kernel_size), tuple(dilation)
    self.max_dilation = max_dilation
    self.predictor = nn.Conv3d(
        channels, 1, predictor_kernel, padding=_same_padding(predictor_kernel, (1, 1, 1))
    )
    nn.init.zeros_(self.predictor.weight)
    nn.init.zeros_(self.predictor.bias)
    kt, kh, kw = self.kernel_size
    # Output channel c * kt + j is temporal tap j of channel c (the Flax `taps` layout).
    self.taps = nn.Conv3d(
        channels,
        channels * kt,
        (1, kh, kw),
        groups=channels,
        bias=False,
        dilation=(1, *self.dilation[1:]),
        padding=(0, *_same_padding((kh, kw), self.dilation[1:])),
    )
    self.bias = nn.Parameter(torch.zeros(channels))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    kt = self.kernel_size[0]
    factor = F.elu(self.predictor(x)) + 1.0  # (b, 1, t, h, w)
    d_t = torch.clamp(factor * self.dilation[0], max=self.max_dilation)
    spatial = self.taps(x).unflatten(1, (x.shape[1], kt))  # (b, c, k, t, h, w)
    t = x.shape[2]
    frame = torch.arange(t, device=x.device, dtype=x.dtype).view(1, 1, t, 1, 1)
    y = spatial[:, :, kt // 2] + self.bias[:, None, None, None]
    # Off-centre taps read time t + k d(t) by linear interpolation: two weighted gathers along
    # time (the floor and the next frame), zero outside the clip. The fraction is taken from the
    # floor, as in Flax, so d gets a gradient at integer offsets.
    for j, k in enumerate(range(-(kt // 2), kt // 2 + 1)):
      if k == 0:
        continue
      where = frame + k * d_t
      floor = torch.floor(where).detach()
      frac = where - floor
      tap = spatial[:, :, j]
      for read, weight in ((floor, 1.0 - frac), (floor + 1, frac)):
        index = read.clamp(0, t - 1).long().expand(-1, tap.shape[1], -1, -1, -1)
        inside = (read >= 0) & (read <= t - 1)
        y = y + torch.where(inside, weight, 0.0) * torch.gather(tap, 2, index)
    return y


class TokenAdapter(nn.Module):
  """`x + up(conv(down(x)))` on the patch tokens; the class token passes through."""

  def __init__(self, dim: int, adapter: Mapping[str, Any], num_frames: int, grid: tuple[int, int]):
    super().__init__()
    width = adapter['width']
    self.num_frames, self.grid = num_frames, grid
    self.down = nn.Linear(dim, width)
    self.up = nn.Linear(width, dim)
    if adapter.get('activation', 'none') != 'none':
      raise NotImplementedError('the PyTorch reference implements activation="none" only')
    conv = adapter.get('conv', 'dynamic')
    kernel = tuple(adapter.get('kernel_size', (3, 3, 3)))
    dilation = tuple(adapter.get('dilation', (1, 1, 1)))
    if conv == 'dynamic':
      self.conv = DynamicDilatedConv3D(
          width,
          kernel,
          dilation,
          tuple(adapter.get('dynamic_axes', ('t',))),
          adapter.get('max_dilation', 3.0),
          tuple(adapter.get('predictor_kernel', (3, 1, 1))),
      )
    elif conv == 'fixed':
      self.conv = nn.Conv3d(
          width,
          width,
          kernel,
          dilation=dilation,
          groups=width,
          padding=_same_padding(kernel, dilation),
      )
    else:
      raise NotImplementedError(f'the PyTorch reference has no conv={conv!r}')
    zero = self.conv if adapter.get('zero_init', 'up') == 'conv' else self.up
    nn.init.zeros_(zero.weight)
    if zero.bias is not None:
      nn.init.zeros_(zero.bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    cls_tok, patches = x[:, :1], x[:, 1:]
    bt, _, _ = patches.shape
    t, (h, w) = self.num_frames, self.grid
    z = self.down(patches)
    # (b t) (h w) c -> b c t h w, as a strided view (channels-last 3-D memory layout).
    z = z.view(bt // t, t, h, w, -1).permute(0, 4, 1, 2, 3)
    z = self.conv(z)
    z = z.permute(0, 2, 3, 4, 1).reshape(bt, h * w, -1)
    return torch.cat([cls_tok, patches + self.up(z)], dim=1)


class Bottleneck(nn.Module):
  """AIM's adapter: `fc2(gelu(fc1(x)))`, plus x when `skip`; fc2 zero-initialised."""

  def __init__(self, dim: int, ratio: float, skip: bool):
    super().__init__()
    self.fc1 = nn.Linear(dim, int(dim * ratio))
    self.fc2 = nn.Linear(int(dim * ratio), dim)
    nn.init.zeros_(self.fc2.weight)
    nn.init.zeros_(self.fc2.bias)
    self.skip = skip

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.fc2(F.gelu(self.fc1(x)))
    return x + y if self.skip else y


class AdaptedBlock(nn.Module):
  """timm's pre-norm block (its norm1, attn, norm2, mlp, drop paths) with the Flax block's adapters."""

  def __init__(
      self,
      block: nn.Module,
      index: int,
      adapter: Mapping[str, Any],
      num_frames: int,
      grid: tuple[int, int],
      dim: int,
  ):
    super().__init__()
    self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp
    self.drop_path = block.drop_path1
    self.num_frames = num_frames
    kind = adapter.get('kind', 'none')
    blocks = adapter.get('blocks') or ()
    active = kind != 'none' and (not blocks or index in blocks)
    self.aim = active and kind == 'aim'
    self.placements = (
        tuple(adapter.get('placement', ('attn',))) if (active and kind in ('fe', 'st')) else ()
    )
    for where in self.placements:
      setattr(self, f'adapter_{where}', TokenAdapter(dim, adapter, num_frames, grid))
    if self.aim:
      ratio = adapter.get('aim_ratio', 0.25)
      self.aim_scale = adapter.get('aim_scale', 0.5)
      self.adapter_t = Bottleneck(dim, ratio, skip=False)
      self.adapter_s = Bottleneck(dim, ratio, skip=True)
      self.adapter_mlp = Bottleneck(dim, ratio, skip=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if 'attn' in self.placements:
      x = self.adapter_attn(x)
    if self.aim:
      bt, n, d = x.shape
      t = self.num_frames
      y = self.norm1(x).view(bt // t, t, n, d).transpose(1, 2).reshape(-1, t, d)
      temporal = self.attn(y).view(bt // t, n, t, d).transpose(1, 2).reshape(bt, n, d)
      x = x + self.drop_path(self.adapter_t(temporal))
    y = self.attn(self.norm1(x))
    if self.aim:
      y = self.adapter_s(y)
    x = x + self.drop_path(y)
    if 'mlp' in self.placements:
      x = self.adapter_mlp(x)
    y = self.norm2(x)
    out = self.mlp(y)
    if self.aim:
      out = out + self.drop_path(self.aim_scale * self.adapter_mlp(y))
    return x + self.drop_path(out)


class VideoViT(nn.Module):
  """`(b, t, 3, H, W)` clips -> logits: frames through the adapted ViT, mean of class tokens, head.

  The same computation as the Flax `ViT` (with `train` = `self.training`).
  """

  def __init__(self, model: Mapping[str, Any], num_frames: int):
    super().__init__()
    kwargs = dict(num_classes=model['num_classes'], drop_path_rate=model.get('drop_path_rate', 0.0))
    arch = (
        model['width'],
        model['depth'],
        model['num_heads'],
        model['mlp_dim'],
        model['patch_size'],
        model['image_size'],
    )
    if arch == (768, 12, 12, 3072, 16, 224):
      vit = timm.create_model('vit_base_patch16_224', pretrained=False, **kwargs)
    else:
      vit = timm.models.vision_transformer.VisionTransformer(
          img_size=model['image_size'],
          patch_size=model['patch_size'],
          embed_dim=model['width'],
          depth=model['depth'],
          num_heads=model['num_heads'],
          mlp_ratio=model['mlp_dim'] / model['width'],
          **kwargs,
      )
    if model.get('layer_norm_eps', 1e-6) != 1e-6:
      raise NotImplementedError('timm ViT LayerNorm eps is 1e-6')
    self.num_frames = num_frames
    grid = (model['image_size'] // model['patch_size'],) * 2
    self.patch_embed, self.cls_token, self.pos_embed = vit.patch_embed, vit.cls_token, vit.pos_embed
    adapter = dict(model.get('adapter') or {'kind': 'none'})
    # AIM's learned temporal position embedding, zero-initialised, on every token of a frame.
    self.adapter_time_embed = (
        nn.Parameter(torch.zeros(1, num_frames, 1, model['width']))
        if adapter.get('kind') == 'aim'
        else None
    )
    self.blocks = nn.ModuleList(
        [
            AdaptedBlock(b, i, adapter, num_frames, grid, model['width'])
            for i, b in enumerate(vit.blocks)
        ]
    )
    self.norm, self.head = vit.norm, vit.head
    self.head_drop = nn.Dropout(model.get('head_dropout', 0.0))

  def forward(self, video: torch.Tensor) -> torch.Tensor:
    b, t = video.shape[:2]
    x = self.patch_embed(video.flatten(0, 1))  # ((b t), n, d)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
    if self.adapter_time_embed is not None:
      x = (x.view(b, t, *x.shape[1:]) + self.adapter_time_embed).flatten(0, 1)
    for block in self.blocks:
      x = block(x)
    x = self.norm(x)
    features = x[:, 0].view(b, t, -1).mean(1)
    return self.head(self.head_drop(features))


# ------------------------------------------------------------------------- names and weights


def flax_name(torch_name: str) -> str:
  """'blocks.3.adapter_attn.conv.taps.weight' -> 'blocks_3/adapter_attn/conv/taps/kernel'."""
  name = torch_name.replace('patch_embed.proj.', 'patch_embed.')
  name = name.replace('conv.predictor.', 'conv.dilation.')
  name = re.sub(r'^blocks\.(\d+)\.', r'blocks_\1.', name)
  parts = name.split('.')
  if parts[-1] == 'weight':
    is_norm = len(parts) >= 2 and re.fullmatch(r'norm\d?', parts[-2])
    parts[-1] = 'scale' if is_norm else 'kernel'
  return '/'.join(parts)


def to_torch_layout(array: np.ndarray, name: str) -> np.ndarray:
  """The Flax parameter `name` in the layout of the PyTorch parameter of the same name."""
  if not name.endswith('kernel'):  # biases, scales, tokens, embeddings: as they are
    return array
  if array.ndim == 2:  # Dense (in, out) -> Linear (out, in)
    return array.T
  if array.ndim == 4:  # Conv2d (h, w, in, out) -> (out, in, h, w)
    return np.transpose(array, (3, 2, 0, 1))
  if array.ndim == 5:  # Conv3d (t, h, w, in/groups, out) -> (out, in/groups, t, h, w)
    return np.transpose(array, (4, 3, 0, 1, 2))
  return array


def load_flax_params(model: nn.Module, flat_params: Mapping[str, Any]) -> None:
  """Copies Flax parameters (flattened 'a/b/c' -> array) into `model`; every name must match."""
  state = dict(model.named_parameters())
  by_flax = {flax_name(n): n for n in state}
  missing = sorted(set(by_flax) - set(flat_params))
  extra = sorted(set(flat_params) - set(by_flax))
  if missing or extra:
    raise ValueError(
        f'Parameter names differ. Only in PyTorch: {missing[:8]}; only in Flax: ' f'{extra[:8]}'
    )
  with torch.no_grad():
    for fname, tname in by_flax.items():
      value = torch.from_numpy(
          np.array(
              to_torch_layout(np.asarray(flat_params[fname]), fname), dtype=np.float32, order='C'
          )
      )
      if value.shape != state[tname].shape:
        raise ValueError(
            f'{tname}: Flax {tuple(value.shape)} vs PyTorch ' f'{tuple(state[tname].shape)}'
        )
      state[tname].copy_(value)


def freeze(model: nn.Module, trainable: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
  """requires_grad=False on parameters whose Flax name matches none of `trainable`."""
  kept = []
  for name, param in model.named_parameters():
    train = any(re.fullmatch(p, flax_name(name)) for p in trainable)
    param.requires_grad_(train)
    if train:
      kept.append((name, param))
  return kept


def make_train_step(
    model: nn.Module,
    trainable: Sequence[str],
    optim: Mapping[str, Any],
    label_smoothing: float = 0.0,
):
  """AdamW on the trainable parameters (decay per the optimizer's regex rules), clip, step.

  Returns `train_step(video (b, t, 3, H, W), label (b,)) -> loss` (a float tensor).
  """
  params = freeze(model, trainable)
  rules = [tuple(r) for r in optim.get('weight_decay_rules', [('.*', True)])]

  def decays(name: str) -> bool:
    return next(bool(v) for p, v in rules if re.fullmatch(p, flax_name(name)))

  groups = [
      {
          'params': [p for n, p in params if decays(n)],
          'weight_decay': optim.get('weight_decay', 0.0),
      },
      {'params': [p for n, p in params if not decays(n)], 'weight_decay': 0.0},
  ]
  opt = torch.optim.AdamW(
      [g for g in groups if g['params']],
      lr=optim.get('lr', 1e-3),
      betas=(optim.get('b1', 0.9), optim.get('b2', 0.999)),
      eps=optim.get('eps', 1e-8),
      foreach=True,
  )
  clip = optim.get('grad_clip_norm', 0.0)
  trained = [p for _, p in params]

  def train_step(video: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    model.train()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(video), label, label_smoothing=label_smoothing)
    loss.backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(trained, clip)
    opt.step()
    return loss.detach()

  return train_step
