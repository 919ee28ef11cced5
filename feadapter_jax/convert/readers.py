"""Reading checkpoints into `{name: np.ndarray}` without running untrusted code.

- `.safetensors` through `safetensors.numpy` (no torch needed); the header length is checked
  against the file size first, so a crafted header cannot make us allocate or read gigabytes.
- `.npz` (Flax: AugReg, big_vision) through numpy with `allow_pickle=False` (no torch needed).
- `.pth/.pt/.bin/.ckpt` through `torch.load(weights_only=True)` only: a pickle that needs
  anything beyond tensors and containers is refused, never executed; so is a TorchScript
  archive (OpenAI's CLIP `.pt` files), whose loading runs its code.
- A directory (a Hugging Face, timm or open_clip hub snapshot) is read through the weights file
  it holds.

`read_sidecar` picks up what the weights cannot tell (heads, LayerNorm eps, activation, pooling,
normalisation) from the `config.json` / `preprocessor_config.json` that hub snapshots keep next
to the weights.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Mapping
import zipfile

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors.numpy needs)
import numpy as np

SAFETENSORS = ('.safetensors',)
NUMPY = ('.npz',)
PICKLES = ('.pth', '.pt', '.bin', '.ckpt')
# Weights files of a hub snapshot directory, in order of preference (open_clip repositories may
# hold an HF-format model.safetensors too, with its config.json).
DIRECTORY_FILES = (
    'model.safetensors',
    'open_clip_model.safetensors',
    'pytorch_model.bin',
    'open_clip_pytorch_model.bin',
)
# Containers that training scripts wrap a state dict in, and prefixes wrappers add to names.
WRAPPER_KEYS = ('state_dict', 'model', 'module', 'model_ema')
NAME_PREFIXES = ('module.', '_orig_mod.')
# safetensors' own limit; anything larger is not a real header.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def weights_file(path: str | os.PathLike[str]) -> str:
  """The weights file `path` names, or the one inside the snapshot directory `path`."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    if not os.path.exists(path):
      raise FileNotFoundError(f'Checkpoint {path} does not exist.')
    return path
  for name in DIRECTORY_FILES:
    if os.path.exists(os.path.join(path, name)):
      return os.path.join(path, name)
  raise FileNotFoundError(
      f'{path} is a directory without a weights file: looked for ' f'{", ".join(DIRECTORY_FILES)}.'
  )


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """`{name: float32 or integer array}` of a `.safetensors`, `.npz` or PyTorch checkpoint.

  Args:
    path: a weights file, or a directory holding one of `DIRECTORY_FILES`.

  Returns:
    The state dict, unwrapped from `{'model': ...}`-style containers and `module.` prefixes,
    floating-point arrays upcast to float32.

  Raises:
    ValueError: an unsupported extension, a damaged file, a pickle that needs code to load, or a
      TorchScript archive.
    ImportError: a PyTorch pickle without torch installed.
  """
  path = weights_file(path)
  ext = os.path.splitext(path)[1].lower()
  if ext in SAFETENSORS:
    raw = _read_safetensors(path)
  elif ext in NUMPY:
    raw = _read_npz(path)
  elif ext in PICKLES:
    raw = _read_torch_pickle(path)
  else:
    raise ValueError(
        f'Cannot read {path}: unknown extension {ext!r}; expected one of '
        f'{SAFETENSORS + NUMPY + PICKLES}.'
    )
  return unwrap(raw, path)


def _read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    archive = np.load(path, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):  # A bare .npy array under .npz.
      raise ValueError('it holds one array, not named ones')
    with archive:
      return {name: archive[name] for name in archive.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    # numpy says "Object arrays cannot be loaded when allow_pickle=False" for pickled entries.
    raise ValueError(f'{path} is not a readable .npz of plain arrays: {e}') from e


def _read_safetensors(path: str) -> dict[str, Any]:
  import safetensors  # pylint: disable=g-import-not-at-top  (a runtime requirement, kept local)
  import safetensors.numpy  # pylint: disable=g-import-not-at-top

  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
  if len(head) < 8:
    raise ValueError(f'{path} is not a safetensors file: {size} bytes, shorter than a header.')
  (header_len,) = struct.unpack('<Q', head)
  if header_len > min(size - 8, MAX_SAFETENSORS_HEADER):
    raise ValueError(
        f'{path} is not a valid safetensors file: its header declares '
        f'{header_len} bytes but the file has {size}. Refusing to read it.'
    )
  try:
    return safetensors.numpy.load_file(path)
  except safetensors.SafetensorError as e:
    raise ValueError(f'{path} is not a valid safetensors file: {e}') from e


def _read_torch_pickle(path: str) -> dict[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional: conversion-only dependency)
  except ImportError as e:
    raise ImportError(
        f'Reading {path} needs PyTorch: `pip install -r requirements-test.txt`, '
        'or convert the checkpoint to .safetensors elsewhere.'
    ) from e
  import pickle  # pylint: disable=g-import-not-at-top

  if _is_torchscript(path):
    raise ValueError(
        f"Refusing to load {path}: it is a TorchScript archive (as OpenAI's CLIP .pt files "
        'are), and loading one runs the code it contains. Where you trust the file, export its '
        "state dict: `sd = torch.jit.load(path, map_location='cpu').state_dict()`, then "
        '`safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, '
        "'clip.safetensors')`, and convert that."
    )
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    # torch's message opens with advice to set weights_only=False; the GLOBAL line says what
    # the pickle wanted to import.
    lines = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    detail = next((line for line in lines if 'GLOBAL' in line), lines[0])
    raise ValueError(
        f'Refusing to load {path}: it is a pickle that needs arbitrary code to load (not a '
        'plain state dict of tensors), and unpickling it could run that code. Load it only if '
        'you trust it, in PyTorch, and save `model.state_dict()` with '
        f'safetensors.torch.save_file. (torch: {detail.strip()})'
    ) from e


def _is_torchscript(path: str) -> bool:
  """A zip whose records include constants.pkl: how torch itself tells TorchScript archives."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any(os.path.basename(n) == 'constants.pkl' for n in archive.namelist())


def _is_array(value: Any) -> bool:
  return hasattr(value, 'shape') and hasattr(value, 'dtype')


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # A torch tensor; numpy has no bfloat16, so upcast floats first.
    value = value.detach().cpu()
    value = (value.float() if value.is_floating_point() else value).numpy()
  value = np.asarray(value)
  if value.dtype == ml_dtypes.bfloat16 or np.issubdtype(value.dtype, np.floating):
    return value.astype(np.float32, copy=False)
  return value


def unwrap(obj: Any, path: str = 'checkpoint') -> dict[str, np.ndarray]:
  """The state dict inside training-script containers, as numpy arrays with clean names."""
  while isinstance(obj, Mapping) and not any(_is_array(v) for v in obj.values()):
    inner = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
    if not inner:
      raise ValueError(
          f'{path} holds no arrays at its top level and none of the containers '
          f'{WRAPPER_KEYS}; its keys: {sorted(map(str, obj))[:10]}.'
      )
    obj = obj[inner[0]]
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path} holds a {type(obj).__name__}, not a state dict.')
  not_arrays = sorted(str(k) for k, v in obj.items() if not _is_array(v))
  if not_arrays:
    raise ValueError(
        f'{path}: entries that are not arrays: {not_arrays[:5]}; expected a plain '
        'state dict {name: tensor}.'
    )
  state = {str(k): _to_numpy(v) for k, v in obj.items()}
  for prefix in NAME_PREFIXES:
    if state and all(k.startswith(prefix) for k in state):
      state = {k[len(prefix) :]: v for k, v in state.items()}
  return state


# Hugging Face `hidden_act` values -> ours; 'gelu' is the exact GELU there too.
HF_ACTIVATIONS = {'gelu': 'gelu', 'quick_gelu': 'quick_gelu'}


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
  """What hub metadata next to a checkpoint says, as `converter.convert` keyword arguments.

  Reads `config.json` and `preprocessor_config.json` from the checkpoint's directory:
  - Hugging Face configs (`ViTConfig`, `CLIPVisionConfig`, `CLIPConfig` whose `vision_config`
    holds the image tower's fields, `Dinov2Config`, `Dinov2WithRegistersConfig`): num_heads,
    layer_norm_eps, activation (`hidden_act`), layer_scale (`layerscale_value`), num_registers
    (`num_register_tokens`);
  - timm's config.json: mean / std (`pretrained_cfg`), global_pool, and the activation when the
    architecture says it (`model_args.act_layer`, or a `quickgelu` model name);
  - the Hugging Face image processor: mean / std (`image_mean`, `image_std`), which win.

  Returns:
    Only the fields found.

  Raises:
    ValueError: the config declares an architecture the Flax ViT does not implement (an
      activation other than GELU / QuickGELU, a SwiGLU MLP).
  """
  path = os.fspath(path)
  folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  found: dict[str, Any] = {}
  config = _json(os.path.join(folder, 'config.json'))
  hf = config.get('vision_config') or config
  for ours, theirs in (
      ('num_heads', 'num_attention_heads'),
      ('layer_norm_eps', 'layer_norm_eps'),
      ('layer_scale', 'layerscale_value'),
      ('num_registers', 'num_register_tokens'),
  ):
    if hf.get(theirs) is not None:
      found[ours] = hf[theirs]
  if hf.get('use_swiglu_ffn'):
    raise ValueError(
        'Unsupported architecture: config.json declares use_swiglu_ffn (a SwiGLU MLP, as '
        'DINOv2 giant).'
    )
  if 'hidden_act' in hf:
    if hf['hidden_act'] not in HF_ACTIVATIONS:
      raise ValueError(
          f'Unsupported architecture: config.json declares hidden_act={hf["hidden_act"]!r}; '
          f'the Flax ViT has {sorted(HF_ACTIVATIONS)}.'
      )
    found['activation'] = HF_ACTIVATIONS[hf['hidden_act']]
  timm_act = (config.get('model_args') or {}).get('act_layer')
  if timm_act in ('gelu', 'quick_gelu'):
    found['activation'] = timm_act
  elif 'quickgelu' in str(config.get('architecture', '')):
    found['activation'] = 'quick_gelu'
  if config.get('global_pool') in ('token', 'avg'):
    found['global_pool'] = config['global_pool']
  pretrained = config.get('pretrained_cfg', {})
  processor = _json(os.path.join(folder, 'preprocessor_config.json'))
  for ours, timm_key, hf_key in (('mean', 'mean', 'image_mean'), ('std', 'std', 'image_std')):
    value = processor.get(hf_key, pretrained.get(timm_key))
    if value is not None:
      found[ours] = [float(v) for v in value]
  return found


def _json(path: str) -> dict[str, Any]:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)
