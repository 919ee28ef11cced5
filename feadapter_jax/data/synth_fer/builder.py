"""TFDS builder `synth_fer`: SynthFER clips stored like the real datasets (JPEG-frame videos).

Variants, chosen by `SynthFerConfig.variant`:
  * `video`: clips of `num_frames` frames (see `render` for how they are made and for the
    time-reversed class pair `render.TIME_REVERSED_PAIR`), classes balanced: the quick demo;
  * `image`: single frames showing a class's apex, stored as 1-frame videos so the input pipeline
    is the same. The time-reversed pair shares its apex, so those two classes are ambiguous here;
  * `hard`: the benchmark that separates methods (`HARD_RENDER`): three class pairs that differ
    only by the direction of time (Happy/Sad, Angry/Disgust, Surprise/Fear), so a model that
    averages frames tops out at 4/7 UAR; expressions at 60-100% strength that come within one or
    two frames at a random time (as late as the last frames) and stay; occluders; stronger head motion, zoom and
    lighting; DFEW-like class frequencies (`render.DFEW_LIKE_WEIGHTS`: Disgust and Fear rare),
    so UAR and WAR differ;
  * `hard_mafw`: the same renders over MAFW's eleven classes in MAFW's order, with two more
    time-reversed pairs (contempt/disappointment, anxiety/helplessness: 6/11 for a time-blind
    model), MAFW-like frequencies.

Sizes, resolution, frames per clip, seed and renderer knobs live in the builder config. The two
registered configs, `video` and `image`, use the defaults; `synth_config(...)` names a config from
any other parameters so several sizes live side by side in one data_dir:

  builder = tfds.builder('synth_fer', config=synth_config('video', resolution=64), data_dir=d)
  builder.download_and_prepare()

Features (the contract shared with the real datasets): `video` (t h w 3) uint8 stored as JPEG
frames in temporal order, `label` (ClassLabel, DFEW's order), `clip_id` (text), `num_frames` int32.
Every example is a deterministic function of (seed, split, index); splits use different streams.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from feadapter_jax.data.synth_fer import render as synth_render

VARIANTS = ('video', 'image', 'hard', 'hard_mafw')
# The hard variants' renderer knobs (the others keep `RenderParams`' defaults).
HARD_RENDER = dict(
    noise_std=0.04,
    motion=0.12,
    rotation_deg=8.0,
    zoom=0.1,
    lighting=0.2,
    expression_jitter=0.1,
    min_apex=0.6,
    onset_start=(0.0, 0.55),
    onset_duration=(0.1, 0.25),
    occlusion_prob=0.3,
    # Sad, Disgust and Fear are Happy's, Angry's and Surprise's onsets reversed in time.
    time_reversed=('Sad', 'Disgust', 'Fear'),
)
# MAFW's two more offset classes: disappointment and helplessness (contempt and anxiety reversed).
HARD_MAFW_TIME_REVERSED = HARD_RENDER['time_reversed'] + ('disappointment', 'helplessness')
# What each variant is, in a sentence (the dataset's description, and compare's pages).
DESCRIPTIONS = {
    'video': (
        'Clips of one expression building up from neutral, classes balanced; Surprise and Fear '
        'differ only by the direction of time.'
    ),
    'image': 'Single apex frames (Surprise and Fear share theirs), classes balanced.',
    'hard': (
        'Three class pairs that differ only by the direction of time (Happy/Sad, Angry/Disgust, '
        'Surprise/Fear: the second of each is the first reversed), expressions at 60-100% '
        'strength that come within one or two frames at a random time and stay, occluders on '
        '30% of the clips, stronger head motion, zoom and lighting, and DFEW-like class '
        'frequencies (Disgust 2%, Fear 5%).'
    ),
    'hard_mafw': (
        "The hard renders over MAFW's eleven classes, with five time-reversed pairs and "
        'MAFW-like class frequencies.'
    ),
}
SPLITS = ('train', 'validation', 'test')
# Independent random streams under one (seed, split): labels, then one stream per clip.
_LABEL_STREAM, _CLIP_STREAM = 0, 1


@dataclasses.dataclass(eq=False)
class SynthFerConfig(tfds.core.BuilderConfig):
  """Builder config of `synth_fer`; build instances with `synth_config`.

  Attributes:
    variant: one of `VARIANTS`.
    num_frames: frames per clip (1 for the image variant).
    resolution: frame height and width in pixels.
    num_train: examples in the train split.
    num_validation: examples in the validation split.
    num_test: examples in the test split.
    seed: root seed; each split and example gets its own stream from it.
    jpeg_quality: JPEG quality of the stored frames (0-100).
    render: renderer knobs (noise, motion, lighting, expression timing).
    classes: the class set, a key of `render.CLASS_SETS` ('dfew': 7, 'mafw': 11).
    label_weights: class frequencies of every split; () for balanced classes.
  """

  variant: str = 'video'
  num_frames: int = 8
  resolution: int = 32
  num_train: int = 1500
  num_validation: int = 300
  num_test: int = 300
  seed: int = 0
  jpeg_quality: int = 90
  render: synth_render.RenderParams = synth_render.RenderParams()
  classes: str = 'dfew'
  label_weights: tuple[float, ...] = ()

  @property
  def class_names(self) -> tuple[str, ...]:
    return synth_render.CLASS_SETS[self.classes]


# What each variant changes from the dataclass defaults (its own defaults, for naming).
_VARIANT_PRESETS: dict[str, dict[str, Any]] = {
    'video': {},
    'image': {},
    'hard': dict(HARD_RENDER, label_weights=synth_render.DFEW_LIKE_WEIGHTS),
    'hard_mafw': dict(
        HARD_RENDER,
        classes='mafw',
        label_weights=synth_render.MAFW_LIKE_WEIGHTS,
        time_reversed=HARD_MAFW_TIME_REVERSED,
    ),
}


_CONFIG_FIELDS = (
    'num_frames',
    'resolution',
    'num_train',
    'num_validation',
    'num_test',
    'seed',
    'jpeg_quality',
    'classes',
    'label_weights',
)
_RENDER_FIELDS = tuple(f.name for f in dataclasses.fields(synth_render.RenderParams))


def _name_part(key: str, value: Any) -> str:
  if isinstance(value, tuple):
    value = '-'.join(str(v) for v in value)
  return f'{key}{value}'


def synth_config(variant: str = 'video', **overrides: Any) -> SynthFerConfig:
  """A `SynthFerConfig` named after its non-default parameters.

  With the variant's own parameters this is its registered config ('video', 'image', 'hard',
  'hard_mafw') itself (TFDS refuses a second config object of a registered name); otherwise a
  new one named after what differs from the variant's, e.g.
  'video_num_frames16_resolution224_num_train64'.

  Args:
    variant: one of `VARIANTS`. The image variant always has num_frames=1 (a num_frames override
      is ignored, so one `synth` config section can serve both variants).
    **overrides: any `SynthFerConfig` field of `_CONFIG_FIELDS` or `synth_render.RenderParams` field.

  Returns:
    The builder config.

  Raises:
    ValueError: unknown variant or parameter.
  """
  if variant not in VARIANTS:
    raise ValueError(f'Unknown synth_fer variant {variant!r}; expected one of {VARIANTS}.')
  unknown = set(overrides) - set(_CONFIG_FIELDS) - set(_RENDER_FIELDS)
  if unknown:
    raise ValueError(
        f'Unknown synth_fer parameters {sorted(unknown)}; known: '
        f'{_CONFIG_FIELDS + _RENDER_FIELDS}.'
    )
  if variant == 'image':
    overrides['num_frames'] = 1
  overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
  preset = _VARIANT_PRESETS[variant]
  defaults = SynthFerConfig(
      name=variant,
      variant=variant,
      render=synth_render.RenderParams(**{k: v for k, v in preset.items() if k in _RENDER_FIELDS}),
      **{k: v for k, v in preset.items() if k in _CONFIG_FIELDS},
  )
  config_kwargs = {k: overrides.get(k, getattr(defaults, k)) for k in _CONFIG_FIELDS}
  render_kwargs = {k: v for k, v in overrides.items() if k in _RENDER_FIELDS}
  render = dataclasses.replace(defaults.render, **render_kwargs)
  parts = [_name_part(k, v) for k, v in config_kwargs.items() if v != getattr(defaults, k)]
  # The image variant's single frame is part of its definition, not of its name.
  if variant == 'image':
    parts = [p for p in parts if not p.startswith('num_frames')]
  parts += [
      _name_part(k, getattr(render, k))
      for k in _RENDER_FIELDS
      if getattr(render, k) != getattr(defaults.render, k)
  ]
  name = '_'.join([variant] + parts)
  description = f'SynthFER {variant} variant: ' + ', '.join(
      f'{k}={v}' for k, v in config_kwargs.items()
  )
  if name in _REGISTERED_CONFIGS:
    return _REGISTERED_CONFIGS[name]
  return SynthFerConfig(
      name=name, description=description, variant=variant, render=render, **config_kwargs
  )


_REGISTERED_CONFIGS: dict[str, SynthFerConfig] = {}
_REGISTERED_CONFIGS.update((v, synth_config(v)) for v in VARIANTS)


class SynthFer(tfds.core.GeneratorBasedBuilder):
  """SynthFER: procedural facial-expression videos with a time-reversed class pair."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': 'hard variants: three time-reversed class pairs (five in hard_mafw), each '
      'expression held once it has come.',
  }
  BUILDER_CONFIGS = list(_REGISTERED_CONFIGS.values())

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    pairs = ', '.join(
        '/'.join(p)
        for p in synth_render.reversed_pairs(config.class_names, config.render.time_reversed)
    )
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            f'Procedural cartoon facial-expression clips, 7 classes in DFEW order (11 in '
            f"MAFW's for hard_mafw). {DESCRIPTIONS[config.variant]} Each of the pairs {pairs} "
            'shares one apex and its two classes differ only by the direction of time.'
        ),
        features=tfds.features.FeaturesDict(
            {
                'video': tfds.features.Video(shape=(None, None, None, 3), encoding_format='jpeg'),
                'label': tfds.features.ClassLabel(names=self.builder_config.class_names),
                'clip_id': tfds.features.Text(),
                'num_frames': np.int32,
            }
        ),
        supervised_keys=('video', 'label'),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    del dl_manager  # Everything is rendered.
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    config = self.builder_config
    for index in range(getattr(config, f'num_{split}')):
      frames, label = render_example(config, split, index)
      clip_id = clip_name(split, index)
      yield clip_id, {
          'video': synth_render.encode_jpeg(frames, config.jpeg_quality),
          'label': label,
          'clip_id': clip_id,
          'num_frames': config.num_frames,
      }


def clip_name(split: str, index: int) -> str:
  """The `clip_id` of example `index` of `split`, e.g. 'test_000012'."""
  return f'{split}_{index:06d}'


def render_example(config: SynthFerConfig, split: str, index: int) -> tuple[np.ndarray, int]:
  """Renders example `index` of `split` exactly as the builder stores it (before JPEG).

  Args:
    config: the builder config.
    split: one of `SPLITS`.
    index: example index within the split (see `clip_name`).

  Returns:
    (frames (t h w 3) uint8 in temporal order, label).
  """
  split_index = SPLITS.index(split)
  label_rng = np.random.default_rng([config.seed, split_index, _LABEL_STREAM])
  num_examples = getattr(config, f'num_{split}')
  if config.label_weights:
    labels = synth_render.weighted_labels(label_rng, num_examples, config.label_weights)
  else:
    labels = synth_render.balanced_labels(label_rng, num_examples, len(config.class_names))
  label = int(labels[index])
  rng = np.random.default_rng([config.seed, split_index, _CLIP_STREAM, index])
  frames = synth_render.render_clip(
      rng,
      label,
      config.num_frames,
      config.resolution,
      config.render,
      static=config.variant == 'image',
      class_names=config.class_names,
  )
  return frames, label
