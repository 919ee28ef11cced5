r"""Export a finished run's model to a portable file, and import such a file as a new workdir.

    python -m feadapter_jax.export --workdir=DIR --out=OUT --format=safetensors|savedmodel|onnx
    python -m feadapter_jax.export --import=FILE.safetensors --workdir=NEWDIR [--backbone=DIR]

`--format=safetensors` writes the trainable parameters alone (adapters + head, named as
`partition.flatten` names them, e.g. `blocks_0/adapter/down/kernel`) to one .safetensors file.
Its string metadata holds what rebuilds the whole model from them and a public backbone: the
run's config.json (`config`), the export's model_config.json (`model_config`), `class_names`,
`mean`, `std`, `trainable`, `seed`, and the backbone's identity (`backbone`: its model_config's
`source` and `checkpoint`, its architecture, and the SHA-256 of its arrays, `backbone_sha256`).

`--import` is the reverse: with the backbone directory the file was trained on (`--backbone`,
checked against the file's SHA-256; a run on a random backbone takes none) it writes NEWDIR's
config.json, export/ (parameters, model_config.json, init.json) and a results.json naming the
classes, so `python -m feadapter_jax.evaluate --workdir=NEWDIR` and `predict` take it as they
take the original run, with the same probabilities.

`--format=savedmodel` writes a TensorFlow SavedModel of the whole video model (backbone +
adapters + head). Its `serving_default` signature takes `frames`: uint8 `(b, t, S, S, 3)`, one
temporal view per row as `pipeline.eval_clip` makes them (b dynamic), normalises them as
evaluation does and returns `probabilities` `(b, classes)` (evaluation's prediction for a clip
of several temporal views is the mean of its views' rows); the `class_names` signature (no
inputs) and the module's `class_names` variable give the classes in output order, and
`assets.extra/class_names.txt` lists them one per line. The model is converted with
`jax2tf.convert`'s native serialization, the only form current JAX writes: the SavedModel holds
one `XlaCallModule` op whose StableHLO is lowered here for each of `--platforms` (default cpu,
cuda and tpu; TensorFlow runs the one of the device it is on), so serving runs the program JAX
compiles, not a re-implementation of it in TensorFlow ops. The parameters are TF variables
(the SavedModel's variables/), not constants in the program. The model is built with
`model.kernels='reference'` and `model.dtype='float32'`: the CPU kernels' custom VJPs and
barrier serve training only, and a 16-bit model would take cuDNN's attention on a GPU, which no
other platform runs. Only the eval step is lowered: no gradients are kept. The exact GELU's erf
is written with exp and arithmetic (`kernels.portable_erf`, within 1.2e-7 of `lax.erf`):
`lax.erf` lowers to StableHLO's `chlo.erf`, which TensorFlow 2.21 cannot read back.

`--format=onnx` writes the same whole model, as `--format=savedmodel` serves it, to OUT as one
ONNX file (opset 18, ONNX Runtime 1.14 or later), converted by jax2onnx from the JAX program
itself: input `frames` uint8 `(b, t, S, S, 3)` (b dynamic), output `probabilities`
`(b, classes)`, the parameters as initializers. Its `metadata_props` hold the keys of the
safetensors file's metadata but `format` and `format_version` (`class_names`, `mean`, `std`,
`config`, `model_config`, `trainable`, `seed`, `backbone`, `backbone_sha256`); ONNX Runtime reads
them as `InferenceSession(OUT).get_modelmeta().custom_metadata_map`. jax2onnx is installed apart
(`pip install -c requirements.txt .[onnx]`, then `pip install --no-deps jax2onnx==0.17.1`: its
metadata caps orbax-checkpoint), and its and onnx_ir's warnings are dropped during the
conversion: they name jax2onnx plugins for libraries not installed (Equinox, dm_pix), which this
model does not use, and intermediate values whose type onnx_ir leaves out of the file's
value_info, which ONNX Runtime infers. A JAX primitive that jax2onnx cannot convert is named in
the error. ONNX files are protocol buffers of at most 2 GiB: ViT-L/14 fits, larger models do not.

Exit status 2 on any error, with one line `error: ...` on stderr.
"""

from __future__ import annotations

from feadapter_jax import cli  # pylint: disable=g-bad-import-order  (first: quiets TensorFlow)

import contextlib  # pylint: disable=g-import-not-at-top,g-bad-import-order
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import struct
import sys
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import flags
from etils import epath
from flax import traverse_util
import jax
from jax.experimental import jax2tf
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors
from safetensors import numpy as safetensors_np
import tensorflow as tf

from feadapter_jax import checkpoint
from feadapter_jax import evaluate
from feadapter_jax import partition
from feadapter_jax import step as step_lib
from feadapter_jax import workdir as workdir_lib
from feadapter_jax.models import backbone as backbone_lib
from feadapter_jax.models import builder
from feadapter_jax.models import kernels
from feadapter_jax.models import vit

FORMATS = ('safetensors', 'savedmodel', 'onnx')
# `format` in a file's metadata, and the layout version of the metadata this module writes.
FILE_FORMAT = 'feadapter_jax.trainable_params'
FILE_VERSION = '1'
PLATFORMS = ('cpu', 'cuda', 'tpu')
CLASS_NAMES_FILE = 'class_names.txt'
# A safetensors file opens with its header's length, a little-endian uint64.
_HEADER_LENGTH = struct.Struct('<Q')
# The lowest opset jax2onnx converts this model to (17 lacks ReduceMean's axes input), so that
# older runtimes load the file too.
ONNX_OPSET = 18
ONNX_INSTALL = (
    '`pip install -c requirements.txt .[onnx]`, then `pip install --no-deps jax2onnx==0.17.1`'
)
# Protocol buffers (an ONNX file) hold at most 2 GiB.
_ONNX_MAX_BYTES = 2**31 - 1


class ExportError(Exception):
  """A workdir, file or backbone that cannot be exported or imported; one line with the fix."""


# ----------------------------------------------------------------------------- Backbone identity.


def arrays_sha256(params: Any) -> str:
  """SHA-256 of a parameter tree: each array's name, dtype, shape and little-endian bytes, in
  name order. It depends on the values alone, not on how a checkpoint stores them."""
  digest = hashlib.sha256()
  for name, value in sorted(partition.flatten(params).items()):
    value = np.asarray(value)
    value = np.ascontiguousarray(value, value.dtype.newbyteorder('<'))
    digest.update(f'{name}\0{value.dtype.str}\0{value.shape}\0'.encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def backbone_identity(directory: str) -> dict[str, Any]:
  """Where the backbone in `directory` came from, its architecture and its arrays' SHA-256;
  `directory` '' (a run on a random backbone): `backbone_sha256` None.

  Raises:
    FileNotFoundError: `directory` is not a parameter directory.
  """
  if not directory:
    return {'directory': '', 'source': None, 'checkpoint': None, 'backbone_sha256': None}
  params, stored = checkpoint.load_params(directory)
  found = backbone_lib.settings(directory)
  return {
      'directory': directory,
      'source': stored.get('source'),
      'checkpoint': stored.get('checkpoint'),
      'architecture': {k: found[k] for k in vit.ARCHITECTURE},
      'backbone_sha256': arrays_sha256(params),
  }


def _describe(identity: Mapping[str, Any]) -> str:
  if not identity.get('backbone_sha256'):
    return 'no backbone (random from the seed)'
  where = ', '.join(
      f'{k} {identity[k]}' for k in ('directory', 'source', 'checkpoint') if identity.get(k)
  )
  return f'SHA-256 {identity["backbone_sha256"]} ({where})'


# ----------------------------------------------------------------------------- The trained run.


def _read_json(path: epath.Path, what: str) -> Any:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise ExportError(f'{path} not found: {what}') from None
  except json.JSONDecodeError as e:
    raise ExportError(f'{path} is not valid JSON ({e})') from None


def _run_files(workdir: str) -> tuple[ml_collections.ConfigDict, dict[str, Any], list[str]]:
  """(config, export model_config, class names) of a finished run."""
  config = ml_collections.ConfigDict(
      _read_json(
          workdir_lib.path(workdir, workdir_lib.CONFIG_FILE),
          'not a training workdir (it has the config.json of its run)',
      )
  )
  model_config = _read_json(
      workdir_lib.path(workdir, workdir_lib.EXPORT_DIR, checkpoint.MODEL_CONFIG),
      'the run has not finished (export/ holds its trained parameters)',
  )
  # Older runs' exports name no classes; their results.json does.
  class_names = model_config.get('class_names')
  if not class_names:
    results = _read_json(
        workdir_lib.path(workdir, workdir_lib.RESULTS_FILE),
        'the run has not finished (results.json names its classes)',
    )
    class_names = results.get('class_names')
  if not class_names or len(class_names) != config.model.num_classes:
    raise ExportError(
        f'{workdir}: the run names {len(class_names or [])} classes for a model of '
        f'{config.model.num_classes} outputs'
    )
  return config, model_config, list(class_names)


# ----------------------------------------------------------------------------- safetensors.


def run_metadata(workdir: str) -> dict[str, str]:
  """What the files of a finished run record of it, as strings: its config.json (`config`), its
  export's model_config.json (`model_config`), `class_names`, `mean`, `std`, `trainable`, `seed`
  and the backbone's identity (`backbone`, `backbone_sha256`)."""
  config, model_config, class_names = _run_files(workdir)
  export = workdir_lib.path(workdir, workdir_lib.EXPORT_DIR)
  init = _read_json(export / workdir_lib.INIT_FILE, 'the run has not finished')
  try:
    identity = backbone_identity(config.init.checkpoint)
  except FileNotFoundError as e:
    raise ExportError(f'the backbone of {workdir} is needed for its identity: {e}') from None
  return {
      'config': workdir_lib.portable(config).to_json_best_effort(),
      'model_config': json.dumps(model_config, sort_keys=True),
      'class_names': json.dumps(class_names),
      'mean': json.dumps(list(config.data.mean)),
      'std': json.dumps(list(config.data.std)),
      'trainable': json.dumps(list(init['trainable'])),
      'seed': str(init['seed']),
      'backbone': json.dumps(identity, sort_keys=True),
      'backbone_sha256': identity['backbone_sha256'] or '',
  }


def _refuse_existing(out: str) -> None:
  if epath.Path(out).exists():
    raise ExportError(f'--out {out} already exists: remove it or choose another')


def export_safetensors(workdir: str, out: str) -> int:
  """Writes the run's trainable parameters and the metadata that rebuilds its model to `out`.

  Returns:
    The bytes written.
  """
  _refuse_existing(out)
  metadata = {'format': FILE_FORMAT, 'format_version': FILE_VERSION, **run_metadata(workdir)}
  trained, _ = checkpoint.load_params(workdir_lib.path(workdir, workdir_lib.EXPORT_DIR))
  tensors = {n: np.ascontiguousarray(v) for n, v in partition.flatten(trained).items()}
  data = safetensors_np.save(tensors, metadata=metadata)
  epath.Path(out).write_bytes(data)
  return len(data)


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors, metadata) of a file written by `export_safetensors`.

  Raises:
    ExportError: not a safetensors file, or not one of this format.
  """
  try:
    data = epath.Path(path).read_bytes()
  except FileNotFoundError:
    raise ExportError(f'--import {path}: no such file') from None
  try:
    (length,) = _HEADER_LENGTH.unpack_from(data)
    header = json.loads(data[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length])
    tensors = safetensors_np.load(data)
  except (struct.error, ValueError, safetensors.SafetensorError) as e:
    raise ExportError(f'--import {path} is not a safetensors file ({e})') from None
  metadata = header.get('__metadata__') or {}
  if metadata.get('format') != FILE_FORMAT:
    raise ExportError(
        f'--import {path} holds no {FILE_FORMAT} metadata: it was not written by '
        '`python -m feadapter_jax.export --format=safetensors`'
    )
  if metadata.get('format_version') != FILE_VERSION:
    raise ExportError(
        f'--import {path} is format version {metadata.get("format_version")}; this version '
        f'reads {FILE_VERSION}'
    )
  return tensors, metadata


def import_safetensors(path: str, workdir: str, backbone_dir: str = '') -> None:
  """Writes `workdir` (config.json, export/, results.json) from a file of `export_safetensors`
  and the backbone it was trained on.

  Raises:
    ExportError: `workdir` holds a run already, `backbone_dir` is not the file's backbone (or is
      missing or given for a run on a random backbone), or the file does not fit its model.
  """
  tensors, metadata = read_safetensors(path)
  if workdir_lib.path(workdir, workdir_lib.CONFIG_FILE).exists():
    raise ExportError(f'--workdir {workdir} holds a run already: choose a new directory')
  expected = json.loads(metadata['backbone'])
  if not expected['backbone_sha256']:
    if backbone_dir:
      raise ExportError(f'{path} was trained on a random backbone (from its seed): drop --backbone')
  elif not backbone_dir:
    raise ExportError(
        f'{path} holds adapters for the backbone {_describe(expected)}: pass its directory '
        'as --backbone'
    )
  else:
    backbone_dir = workdir_lib.resolve_path(backbone_dir)
    try:
      actual = backbone_identity(backbone_dir)
    except FileNotFoundError as e:
      raise ExportError(f'--backbone: {e}') from None
    if actual['backbone_sha256'] != expected['backbone_sha256']:
      raise ExportError(
          f'--backbone {backbone_dir} is not the backbone {path} was trained on: it has '
          f'{_describe(actual)}, the file needs {_describe(expected)}'
      )
  config = ml_collections.ConfigDict(json.loads(metadata['config']))
  config.init.checkpoint = backbone_dir
  model = builder.build_model(config)
  shapes = builder.param_shapes(model, builder.clip_shape(config))
  want = partition.flatten(
      partition.subtree(shapes, partition.trainable_mask(shapes, config.trainable))
  )
  mismatch = partition.first_mismatch(tensors, want)
  if mismatch:
    raise ExportError(f'{path} does not fit the model of its own config: {mismatch}')

  workdir_lib.path(workdir).mkdir(parents=True, exist_ok=True)
  export = workdir_lib.path(workdir, workdir_lib.EXPORT_DIR)
  checkpoint.save_params(
      export,
      traverse_util.unflatten_dict(tensors, sep='/'),
      json.loads(metadata['model_config']),
  )
  init = {'backbone': backbone_dir, 'seed': int(metadata['seed'])}
  init['trainable'] = json.loads(metadata['trainable'])
  (export / workdir_lib.INIT_FILE).write_text(json.dumps(init, indent=2))
  workdir_lib.write_config(workdir, config)
  # What `predict` reads of a finished run; the metrics are evaluate's to write here.
  results = {'class_names': json.loads(metadata['class_names']), 'imported_from': path}
  workdir_lib.path(workdir, workdir_lib.RESULTS_FILE).write_text(json.dumps(results, indent=2))


# ----------------------------------------------------------------------------- SavedModel.


def serving_function(workdir: str) -> tuple[Any, Any, ml_collections.ConfigDict, list[str]]:
  """(serve, params, config, class names): `serve(params, frames)` maps uint8 frames
  `(b, t, S, S, 3)` to probabilities `(b, classes)`, the run's eval step on one view per row,
  with the model in its exported form (reference kernels, float32)."""
  config, _, class_names = _run_files(workdir)
  config.model.kernels = 'reference'
  config.model.dtype = 'float32'
  model, params = evaluate.load_trained(workdir, config)
  eval_step = step_lib.make_eval_step(model, mean=config.data.mean, std=config.data.std)

  def serve(params: Any, frames: Any) -> Any:
    return eval_step(params, {'video': frames[:, None]})

  return serve, params, config, class_names


def export_savedmodel(workdir: str, out: str, platforms: Sequence[str] = PLATFORMS) -> None:
  """Writes the run's whole model as a SavedModel to `out` (see the module docstring)."""
  _refuse_existing(out)
  serve, params, config, class_names = serving_function(workdir)
  num_frames, size = config.data.num_frames, config.data.image_size
  serve_tf = jax2tf.convert(
      serve,
      polymorphic_shapes=[None, f'(b, {num_frames}, {size}, {size}, 3)'],
      with_gradient=False,
      native_serialization_platforms=tuple(platforms),
  )
  module = tf.Module()
  # A plain dict for jax2tf (it does not flatten tf.Module's tracking wrappers); the list makes
  # the module track the variables, so they are saved.
  variables = tf.nest.map_structure(lambda x: tf.Variable(x, trainable=False), params)
  module.params = tf.nest.flatten(variables)
  module.class_names = tf.Variable(class_names, trainable=False, dtype=tf.string)

  @tf.function(
      autograph=False,
      input_signature=[tf.TensorSpec((None, num_frames, size, size, 3), tf.uint8, name='frames')],
  )
  def serving_default(frames):
    return {'probabilities': serve_tf(variables, frames)}

  @tf.function(autograph=False, input_signature=[])
  def names():
    return {'class_names': tf.identity(module.class_names)}

  module.serve = serving_default
  # Traced (and serialised) here: erf as elementary ops, which TensorFlow's StableHLO reads.
  with kernels.portable_erf():
    tf.saved_model.save(
        module,
        os.fspath(out),
        signatures={'serving_default': serving_default, 'class_names': names},
    )
  # assets.extra/ is the SavedModel's folder for files of its users, which TensorFlow leaves be.
  extra = epath.Path(out) / 'assets.extra'
  extra.mkdir()
  (extra / CLASS_NAMES_FILE).write_text(''.join(f'{name}\n' for name in class_names))


# ----------------------------------------------------------------------------- ONNX.


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
  """jax2onnx's and onnx_ir's loggers at ERROR (the module docstring says what they warn of)."""
  loggers = [logging.getLogger(name) for name in ('jax2onnx', 'onnx_ir')]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def _jax2onnx() -> Any:
  """The jax2onnx module (an optional dependency).

  Raises:
    ExportError: it or its dependencies are not installed; says how to install them.
  """
  try:
    with _quiet_converter():
      import jax2onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ExportError(f'--format=onnx needs jax2onnx and onnx ({e}): {ONNX_INSTALL}') from None
  return jax2onnx


def to_onnx_model(fn: Callable[[Any], Any], frame_shape: Sequence[int], name: str) -> Any:
  """`fn`, uint8 frames `(b, *frame_shape)` -> probabilities `(b, classes)`, as an ONNX
  ModelProto named `name`: input `frames` (b dynamic), output `probabilities`.

  Raises:
    ExportError: jax2onnx is not installed, or cannot convert a primitive `fn` uses (named).
  """
  jax2onnx = _jax2onnx()
  version = importlib.metadata.version('jax2onnx')
  spec = jax.ShapeDtypeStruct(('b', *frame_shape), jnp.uint8)
  try:
    with _quiet_converter():
      return jax2onnx.to_onnx(
          fn,
          [spec],
          model_name=name,
          opset=ONNX_OPSET,
          input_names=['frames'],
          output_names=['probabilities'],
          return_mode='proto',
      )
  except NotImplementedError as e:
    # jax2onnx's converter raises "[converter] No plugins registered for primitive 'NAME'".
    missing = re.search(r"No plugins registered for primitive '([^']+)'", str(e))
    what = f"the JAX primitive '{missing.group(1)}'" if missing else f'the model ({e})'
    raise ExportError(
        f'--format=onnx: jax2onnx {version} cannot convert {what}: export --format=savedmodel '
        'instead (it lowers every JAX op), or use a jax2onnx that converts it'
    ) from None


def export_onnx(workdir: str, out: str) -> int:
  """Writes the run's whole model as one ONNX file `out` (see the module docstring).

  Returns:
    The bytes written.
  """
  _refuse_existing(out)
  _jax2onnx()  # before the model is built: that takes a while
  serve, params, config, _ = serving_function(workdir)
  metadata = run_metadata(workdir)
  num_frames, size = config.data.num_frames, config.data.image_size
  model = to_onnx_model(
      functools.partial(serve, params), (num_frames, size, size, 3), 'feadapter_jax'
  )
  import onnx  # pylint: disable=g-import-not-at-top  (jax2onnx's dependency: installed now)

  onnx.helper.set_model_props(model, metadata)
  model.doc_string = (
      f'frames: uint8 (b, {num_frames}, {size}, {size}, 3), one temporal view per row -> '
      'probabilities (b, classes), classes as metadata_props class_names lists them'
  )
  if model.ByteSize() > _ONNX_MAX_BYTES:
    raise ExportError(
        f'{workdir}: its ONNX model is {model.ByteSize() / 2**30:.1f} GiB, over the 2 GiB an '
        'ONNX file holds: export --format=savedmodel instead'
    )
  data = model.SerializeToString()
  epath.Path(out).write_bytes(data)
  return len(data)


# ----------------------------------------------------------------------------- Command line.


def parse(argv: Sequence[str]) -> flags.FlagValues:
  """The command's flags parsed from `argv` (without the program name), in a fresh FlagValues.

  Raises:
    flags.Error: an unknown flag, a bad value, a missing required flag or a bad combination.
  """
  fv = flags.FlagValues()
  flags.DEFINE_string(
      'workdir',
      None,
      'The finished run to export; with --import, the new workdir to write.',
      required=True,
      flag_values=fv,
  )
  flags.DEFINE_string(
      'out',
      None,
      'The file (safetensors, onnx) or directory (savedmodel) to write.',
      flag_values=fv,
  )
  flags.DEFINE_enum('format', 'safetensors', FORMATS, 'What to write.', flag_values=fv)
  flags.DEFINE_string(
      'import', None, 'A .safetensors file of this command to turn into --workdir.', flag_values=fv
  )
  flags.DEFINE_string(
      'backbone',
      '',
      'With --import: the backbone directory the file was trained on.',
      flag_values=fv,
  )
  flags.DEFINE_list(
      'platforms',
      list(PLATFORMS),
      f'SavedModel: the platforms to lower for, of {PLATFORMS}.',
      flag_values=fv,
  )
  flags.register_validator(
      'platforms',
      lambda v: bool(v) and set(v) <= set(PLATFORMS),
      f'--platforms takes some of {",".join(PLATFORMS)}.',
      flag_values=fv,
  )
  flags.register_multi_flags_validator(
      ['import', 'out'],
      lambda v: (v['import'] is None) != (v['out'] is None),
      'Pass --out to export --workdir, or --import to write it from a file (not both).',
      flag_values=fv,
  )
  fv(['export', *argv])
  fv.validate_all_flags()
  return fv


def run(args: flags.FlagValues) -> None:
  if args['import'].value is not None:
    import_safetensors(args['import'].value, args.workdir, args.backbone)
    print(f'wrote {args.workdir} from {args["import"].value}')
  elif args.format == 'onnx':
    size = export_onnx(args.workdir, args.out)
    print(f'wrote {args.out}: {size / 1e6:.2f} MB, ONNX (opset {ONNX_OPSET}) of the whole model')
  elif args.format == 'savedmodel':
    export_savedmodel(args.workdir, args.out, args.platforms)
    print(f'wrote {args.out}: SavedModel ({", ".join(args.platforms)})')
  else:
    size = export_safetensors(args.workdir, args.out)
    print(f'wrote {args.out}: {size / 1e6:.2f} MB, the trainable parameters')


def main(argv: Sequence[str]) -> int:
  """Runs the command on `argv` (without the program name); returns the exit status."""
  if {'--help', '-h', '--helpfull'} & set(argv):
    print(__doc__)
    return 0
  cli.start()
  try:
    args = parse(argv)
  except flags.Error as e:
    print(f'error: {_one_line(e)}', file=sys.stderr)
    return 2
  try:
    run(args)
  except (ExportError, checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
    print(f'error: {_one_line(e)}', file=sys.stderr)
    return 2
  return 0


def _one_line(error: Exception) -> str:
  return ' '.join(str(error).split())


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
