"""Command line: convert a ViT checkpoint into a backbone directory for training.

    python -m feadapter_jax.convert --checkpoint=PATH --out=DIR
        [--source=auto|timm|torchvision|hf|clip|big_vision] [--image_size=N] [--num_classes=K]
        [--num_heads=H] [--activation=gelu|quick_gelu] [--global_pool=token|avg]
        [--mean=R,G,B --std=R,G,B] [--class_names=A,B,...] [--rename=REGEX=REPLACEMENT ...]
        [--ignore=REGEX ...] [--verify]

PATH is a .safetensors / .npz / .pth / .pt / .bin file or a hub snapshot directory (its
config.json and preprocessor_config.json supply heads, LayerNorm eps, activation and
normalisation when present; flags win). CLIP-style checkpoints need --activation unless a config
says it. Research checkpoints with their own names: --rename (re.sub on every name, in order)
then --ignore (names, after renaming, to leave out; listed in the report). Prints a report, and
with --verify the max |output difference| against the PyTorch model; a difference above
VERIFY_TOLERANCE writes nothing. Exit status 2 on any error, with the reason.

DIR may be local or a URI (gs://bucket/backbones/vit_b16, through `etils.epath`); PATH is read
from the local filesystem.
"""

from __future__ import annotations

from feadapter_jax import cli  # pylint: disable=g-bad-import-order  (first: quiets TensorFlow)

import json  # pylint: disable=g-import-not-at-top,g-bad-import-order
import os
import sys
from typing import Sequence

from absl import flags
from etils import epath

from feadapter_jax.convert import converter
from feadapter_jax.convert import keymaps
from feadapter_jax.convert import readers
from feadapter_jax.convert import store
from feadapter_jax.convert import verify
from feadapter_jax.models import vit

# fp32 on CPU gives ~1e-5 for ViT-B; a wrong map gives differences of order one.
VERIFY_TOLERANCE = 1e-4


def parse(argv: Sequence[str]) -> flags.FlagValues:
  """The command's flags parsed from `argv` (without the program name), in a fresh FlagValues
  so repeated calls (tests) never see each other's values.

  Raises:
    flags.Error: an unknown flag, a bad value or a missing required flag.
  """
  fv = flags.FlagValues()
  flags.DEFINE_string(
      'checkpoint', None, 'Weights file or hub snapshot directory.', required=True, flag_values=fv
  )
  flags.DEFINE_string('out', None, 'Backbone directory to create.', required=True, flag_values=fv)
  flags.DEFINE_enum(
      'source',
      'auto',
      ('auto', *keymaps.LIBRARIES),
      'Library the checkpoint comes from.',
      flag_values=fv,
  )
  flags.DEFINE_integer(
      'image_size', None, 'Target input size (resamples pos_embed).', flag_values=fv
  )
  flags.DEFINE_integer(
      'num_classes',
      None,
      'Target classes; a different count drops the checkpoint head.',
      flag_values=fv,
  )
  flags.DEFINE_integer(
      'num_heads',
      None,
      'Attention heads (default: hub config, else the '
      f'standard width table {converter.HEADS_BY_WIDTH}).',
      flag_values=fv,
  )
  flags.DEFINE_enum(
      'activation',
      None,
      vit.ACTIVATIONS,
      'MLP activation; required for CLIP-style checkpoints without a config saying it '
      "(OpenAI's weights: quick_gelu, open_clip's LAION towers: gelu).",
      flag_values=fv,
  )
  flags.DEFINE_enum(
      'global_pool',
      None,
      vit.POOLS,
      "Features of a model with a class token: 'token' or 'avg' of the patch tokens (default: "
      "'avg' with an fc_norm, else 'token').",
      flag_values=fv,
  )
  flags.DEFINE_list('mean', None, 'Input normalisation mean, R,G,B.', flag_values=fv)
  flags.DEFINE_list('std', None, 'Input normalisation std, R,G,B.', flag_values=fv)
  flags.DEFINE_list(
      'class_names',
      None,
      "The head's classes in its output order, e.g. Neutral,Happy,Sad,Surprise,Fear,Disgust,"
      "Anger (AffectNet): a video run then keeps the head, its rows taken in the dataset's "
      'class order by emotion.',
      flag_values=fv,
  )
  flags.DEFINE_multi_string(
      'rename',
      [],
      'REGEX=REPLACEMENT: re.sub on every name, before detection; repeatable, in order.',
      flag_values=fv,
  )
  flags.DEFINE_multi_string(
      'ignore',
      [],
      'REGEX: names (after --rename) to leave out, e.g. prompts or extra heads; repeatable.',
      flag_values=fv,
  )
  flags.DEFINE_bool(
      'verify',
      False,
      'Compare outputs with the PyTorch model (needs torch and its library).',
      flag_values=fv,
  )
  for name in ('mean', 'std'):
    flags.register_validator(
        name,
        lambda v: v is None or (len(v) == 3 and all(_is_float(x) for x in v)),
        f'--{name} takes 3 comma-separated numbers, R,G,B.',
        flag_values=fv,
    )
  flags.register_validator(
      'rename',
      lambda v: all('=' in r for r in v),
      '--rename takes REGEX=REPLACEMENT.',
      flag_values=fv,
  )
  fv(['convert', *argv])
  fv.validate_all_flags()
  return fv


def _is_float(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def run(args: flags.FlagValues) -> None:
  if epath.Path(args.out).exists():
    raise FileExistsError(f'--out {args.out} already exists: remove it or choose another.')
  state = readers.read_checkpoint(args.checkpoint)
  hub = readers.read_sidecar(args.checkpoint)
  given = dict(
      num_heads=args.num_heads,
      activation=args.activation,
      global_pool=args.global_pool,
      mean=args.mean and [float(m) for m in args.mean],
      std=args.std and [float(s) for s in args.std],
  )
  conversion = converter.convert(
      state,
      args.source,
      args.image_size,
      args.num_classes,
      # Split at the last '=': names never hold one, a regex may (a lookahead).
      rename=[tuple(r.rsplit('=', 1)) for r in args.rename],
      ignore=args.ignore,
      **{**hub, **{k: v for k, v in given.items() if v is not None}},
  )
  print(f'checkpoint: {os.path.abspath(args.checkpoint)}')
  if hub:
    print(f'hub metadata next to it: {hub}')
  print(conversion.report())
  if args.verify:
    try:
      diff, what = verify.max_logit_difference(state, conversion)
    except ImportError as e:
      print(f'verify: skipped, {e.name or e} is not installed (requirements-test.txt)')
    else:
      print(f'verify: max |output difference| {diff:.3g} ({what})')
      if not diff <= VERIFY_TOLERANCE:
        raise ValueError(
            f'Verification failed: difference {diff:.3g} > {VERIFY_TOLERANCE}; '
            'nothing written. The Flax model does not reproduce this checkpoint '
            '(an unsupported variant or a converter bug).'
        )
  metadata = dict(conversion.metadata, checkpoint=os.path.abspath(args.checkpoint))
  if args.class_names:
    classes = conversion.model_config['num_classes']
    if len(args.class_names) != classes:
      raise ValueError(
          f'--class_names names {len(args.class_names)} classes, the head has {classes}.'
      )
    metadata['class_names'] = list(args.class_names)
  store.save(args.out, conversion.params, conversion.model_config, metadata)
  print(f'wrote {args.out}: params/ + model_config.json')
  print(f'model config: {json.dumps(conversion.model_config)}')


def main(argv: Sequence[str]) -> int:
  """Runs the command on `argv` (without the program name); returns the exit status."""
  if {'--help', '-h', '--helpfull'} & set(argv):
    print(__doc__)
    return 0
  cli.start()
  try:
    args = parse(argv)
  except flags.Error as e:
    print(f'error: {e}\n\n{__doc__}', file=sys.stderr)
    return 2
  try:
    run(args)
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
