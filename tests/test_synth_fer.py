"""Tests of the SynthFER renderer and its TFDS builder `synth_fer`."""

import itertools

import numpy as np
import pytest
import tensorflow_datasets as tfds

from feadapter_jax.data.synth_fer import builder as synth_builder
from feadapter_jax.data.synth_fer import render as synth_render

PARAMS = synth_render.RenderParams()
ONSET, OFFSET = (synth_render.CLASS_NAMES.index(n) for n in synth_render.TIME_REVERSED_PAIR)


def _render(label, seeds, num_frames=6, resolution=16, static=False):
  """(n t h w 3) float clips in [0, 1], one per seed."""
  return (
      np.stack(
          [
              synth_render.render_clip(
                  np.random.default_rng(s), label, num_frames, resolution, PARAMS, static=static
              )
              for s in seeds
          ]
      )
      / 255.0
  )


def _ridge_accuracy(train_x, train_y, test_x, test_y, reg=1e-2):
  """Test accuracy of a one-vs-rest ridge regression classifier on standardised features."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  a, b = (train_x - mean) / std, (test_x - mean) / std
  targets = 2.0 * np.eye(train_y.max() + 1)[train_y] - 1.0
  weights = np.linalg.solve(a.T @ a + reg * len(a) * np.eye(a.shape[1]), a.T @ targets)
  return np.mean((b @ weights).argmax(1) == test_y)


def _pool(clips, factor=2):
  """Average-pools (n t h w c) by `factor` in space, to keep the classifiers small."""
  n, t, h, w, c = clips.shape
  return clips.reshape(n, t, h // factor, factor, w // factor, factor, c).mean((3, 5))


def test_render_is_deterministic_given_seed():
  a = synth_render.render_clip(np.random.default_rng(7), 0, 4, 16, PARAMS)
  b = synth_render.render_clip(np.random.default_rng(7), 0, 4, 16, PARAMS)
  c = synth_render.render_clip(np.random.default_rng(8), 0, 4, 16, PARAMS)
  assert a.dtype == np.uint8 and a.shape == (4, 16, 16, 3)
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c).mean() > 10  # another face, not a few flipped pixels


def test_pair_shares_apex_and_other_classes_differ():
  apex = {n: np.asarray(v) for n, v in synth_render.APEX.items()}
  np.testing.assert_array_equal(*(apex[n] for n in synth_render.TIME_REVERSED_PAIR))
  distinct = [n for n in synth_render.CLASS_NAMES if n != synth_render.TIME_REVERSED_PAIR[1]]
  for a, b in itertools.combinations(distinct, 2):
    assert np.abs(apex[a] - apex[b]).max() >= 0.5, (a, b)


def test_pair_expression_curves_are_time_reversed():
  """Per-frame expression values: same distribution as a set, opposite order in time."""
  num_frames, draws = 8, 400
  tracks = {
      label: np.stack(
          [
              synth_render.expression_track(np.random.default_rng(s), label, num_frames, PARAMS)
              for s in range(draws)
          ]
      )
      for label in (ONSET, OFFSET)
  }
  opening = synth_render.EXPRESSION_COMPONENTS.index('mouth_open')
  onset, offset = tracks[ONSET][..., opening], tracks[OFFSET][..., opening]
  # In time order: the onset opens its mouth, the offset closes it.
  assert onset[:, 0].mean() < 0.1 and onset[:, -1].mean() > 0.7
  assert offset[:, 0].mean() > 0.7 and offset[:, -1].mean() < 0.1
  np.testing.assert_allclose(onset.mean(0), offset.mean(0)[::-1], atol=0.05)
  # As unordered sets of frames: matching quantiles.
  quantiles = np.linspace(0.05, 0.95, 10)
  np.testing.assert_allclose(
      np.quantile(onset, quantiles), np.quantile(offset, quantiles), atol=0.06
  )


def test_nuisance_tracks_are_stationary():
  """Motion and lighting have the same law at every frame (needed for the pair's equality)."""
  tracks = np.stack(
      [synth_render.stationary_track(np.random.default_rng(s), 12, PARAMS) for s in range(3000)]
  )
  assert np.abs(tracks.mean(0)).max() < 0.03
  variance = tracks.var(0)
  assert variance.min() > 0.05 and variance.max() / variance.min() < 1.25


def test_pair_needs_time_other_classes_need_only_appearance():
  """A linear classifier on the mean frame is at chance on the pair but not on other classes;
  on the first and second half of the clip, in order, it separates the pair."""
  num_train, num_test = 240, 120
  seeds = {
      split: [(split_id, i) for i in range(n)]
      for split_id, (split, n) in enumerate((('train', num_train), ('test', num_test)))
  }
  features = {}
  for split, split_seeds in seeds.items():
    for label in (ONSET, OFFSET, synth_render.CLASS_NAMES.index('Happy')):
      clips = _pool(_render(label, [(label, *s) for s in split_seeds]))
      half = clips.shape[1] // 2
      features[split, label] = {
          'mean': clips.mean(1).reshape(len(clips), -1),
          'ordered': np.concatenate([clips[:, :half].mean(1), clips[:, half:].mean(1)], -1).reshape(
              len(clips), -1
          ),
      }

  def accuracy(labels, kind):
    xs = {s: np.concatenate([features[s, l][kind] for l in labels]) for s in seeds}
    ys = {s: np.repeat(np.arange(len(labels)), len(seeds[s])) for s in seeds}
    return _ridge_accuracy(xs['train'], ys['train'], xs['test'], ys['test'])

  happy = synth_render.CLASS_NAMES.index('Happy')
  assert accuracy((ONSET, OFFSET), 'mean') < 0.62  # chance is 0.5 (240 test clips)
  assert accuracy((ONSET, OFFSET), 'ordered') > 0.9
  assert accuracy((ONSET, happy), 'mean') > 0.9


def test_apex_images_differ_between_classes_except_the_pair():
  """Same face, pose and noise (same seed), different class: only the pair renders identically."""
  images = {
      label: _render(label, [(3, i) for i in range(20)], num_frames=1, resolution=32, static=True)
      for label in range(len(synth_render.CLASS_NAMES))
  }
  np.testing.assert_array_equal(images[ONSET], images[OFFSET])
  for a, b in itertools.combinations(range(len(synth_render.CLASS_NAMES)), 2):
    if {a, b} != {ONSET, OFFSET}:
      # Summed |difference| per face; 4 is e.g. 4 pixels turning from skin to mouth interior.
      assert np.abs(images[a] - images[b]).sum(axis=(1, 2, 3, 4)).min() > 4.0, (a, b)


def test_apex_images_are_linearly_separable_up_to_the_pair():
  num_train, num_test = 120, 60
  labels = np.arange(len(synth_render.CLASS_NAMES))
  data, targets = {}, {}
  for split_id, (split, n) in enumerate((('train', num_train), ('test', num_test))):
    data[split] = np.concatenate(
        [
            _pool(
                _render(
                    label,
                    [(split_id, label, i) for i in range(n)],
                    num_frames=1,
                    resolution=32,
                    static=True,
                )
            ).reshape(n, -1)
            for label in labels
        ]
    )
    # The pair is one class in images, by construction.
    targets[split] = np.repeat(np.where(labels == OFFSET, ONSET, labels), n)
  assert _ridge_accuracy(data['train'], targets['train'], data['test'], targets['test']) > 0.8


def test_synth_config_names_and_validation():
  assert synth_builder.synth_config('video').name == 'video'
  assert synth_builder.synth_config('image', num_frames=16).name == 'image'
  assert synth_builder.synth_config('image').num_frames == 1
  config = synth_builder.synth_config('video', resolution=64, noise_std=0.0)
  assert config.name == 'video_resolution64_noise_std0.0'
  assert config.resolution == 64 and config.render.noise_std == 0.0
  with pytest.raises(ValueError, match='Unknown synth_fer parameters'):
    synth_builder.synth_config('video', resolutoin=64)
  with pytest.raises(ValueError, match='variant'):
    synth_builder.synth_config('audio')


def _stored_videos(config, data_dir):
  builder = tfds.builder('synth_fer', config=config, data_dir=str(data_dir))
  builder.download_and_prepare()
  ds = builder.as_dataset(split='test', decoders={'video': tfds.decode.SkipDecoding()})
  return {
      ex['clip_id']: (tuple(ex['video']), ex['label'], ex['num_frames']) for ex in tfds.as_numpy(ds)
  }, builder


def test_builder_is_deterministic_and_stores_jpeg_frames(tmp_path):
  kwargs = dict(num_frames=4, resolution=16, num_train=2, num_validation=2, num_test=9)
  config = synth_builder.synth_config('video', **kwargs)
  first, builder = _stored_videos(config, tmp_path / 'a')
  second, _ = _stored_videos(config, tmp_path / 'b')
  other, _ = _stored_videos(synth_builder.synth_config('video', seed=1, **kwargs), tmp_path / 'c')

  assert first == second  # same JPEG bytes
  assert builder.info.splits['test'].num_examples == 9
  assert builder.info.features['label'].names == list(synth_render.CLASS_NAMES)
  clip_id = synth_builder.clip_name('test', 3).encode()
  frames, label, num_frames = first[clip_id]
  assert num_frames == 4 and len(frames) == 4
  assert all(f[:2] == b'\xff\xd8' for f in frames)  # JPEG start-of-image marker
  assert first[clip_id][0] != other[clip_id][0]
  # Labels are balanced: 9 examples over 7 classes -> counts 1 or 2.
  counts = np.bincount([v[1] for v in first.values()], minlength=7)
  assert counts.min() == 1 and counts.max() == 2
  rendered, rendered_label = synth_builder.render_example(config, 'test', 3)
  assert rendered_label == label and rendered.shape == (4, 16, 16, 3)


def test_image_variant_stores_one_apex_frame(tmp_path):
  config = synth_builder.synth_config(
      'image', resolution=16, num_train=2, num_validation=2, num_test=7
  )
  stored, _ = _stored_videos(config, tmp_path)
  assert {v[2] for v in stored.values()} == {1}
  assert {len(v[0]) for v in stored.values()} == {1}
  assert sorted(v[1] for v in stored.values()) == list(range(7))


# ----------------------------------------------------------------------------- Hard variants.


def test_weighted_labels_follow_the_weights_and_keep_every_class():
  for weights in (synth_render.DFEW_LIKE_WEIGHTS, synth_render.MAFW_LIKE_WEIGHTS):
    for n in (50, 280, 1400):
      labels = synth_render.weighted_labels(np.random.default_rng(n), n, weights)
      counts = np.bincount(labels, minlength=len(weights))
      assert len(labels) == n and counts.min() >= 1
      expected = np.asarray(weights) / np.sum(weights) * n
      assert np.abs(counts - expected).max() <= max(1.0, 0.02 * n)
  counts = np.bincount(synth_render.weighted_labels(np.random.default_rng(0), 300, (3, 1)))
  assert tuple(counts) == (225, 75)


def test_hard_variants_are_imbalanced_and_the_mafw_one_has_mafw_classes(tmp_path):
  hard = synth_builder.synth_config('hard', num_train=140, num_validation=7, num_test=70)
  assert hard.name == 'hard_num_train140_num_validation7_num_test70'
  labels = [synth_builder.render_example(hard, 'train', i)[1] for i in range(140)]
  counts = np.bincount(labels, minlength=7)
  disgust, happy = (synth_render.CLASS_NAMES.index(c) for c in ('Disgust', 'Happy'))
  assert counts[disgust] <= 4 < 30 <= counts[happy]  # 2% and 25%
  mafw = synth_builder.synth_config('hard_mafw', num_train=22, num_validation=11, num_test=11)
  builder = tfds.builder('synth_fer', config=mafw, data_dir=str(tmp_path))
  assert builder.info.features['label'].names == list(synth_render.MAFW_CLASS_NAMES)
  frames, label = synth_builder.render_example(mafw, 'train', 3)
  assert frames.shape == (8, 32, 32, 3) and 0 <= label < 11
  # The registered configs are the variants' own parameters.
  assert synth_builder.synth_config('hard') is synth_builder.synth_config('hard', noise_std=0.04)


def test_short_expressions_return_to_neutral_and_the_pair_stays_time_reversed():
  params = synth_render.RenderParams(
      onset_start=(0.1, 0.1),
      onset_duration=(0.15, 0.15),
      hold=(0.1, 0.1),
      offset_duration=(0.4, 0.4),
  )
  onset = synth_render.intensity_curve(np.random.default_rng(0), 21, params, reverse=False)
  offset = synth_render.intensity_curve(np.random.default_rng(0), 21, params, reverse=True)
  np.testing.assert_allclose(offset, onset[::-1])
  peak = int(np.argmax(onset))
  assert onset[0] == 0.0 and onset[-1] < 0.05 and onset.max() == 1.0
  rise = np.argmax(onset >= 0.5) - np.argmax(onset > 0)
  fall = np.argmax(onset[peak:] <= 0.05) - np.argmax(onset[peak:] < 1.0)
  assert fall > rise  # slower back than up: reversed, the curve is a different shape


def test_occluders_cover_part_of_the_face_for_at_least_half_the_clip():
  params = synth_render.RenderParams(occlusion_prob=1.0, noise_std=0.0)
  plain = synth_render.RenderParams(noise_std=0.0)
  covered_frames = []
  for seed in range(6):
    occluded = synth_render.render_clip(np.random.default_rng(seed), 0, 8, 32, params)
    clean = synth_render.render_clip(np.random.default_rng(seed), 0, 8, 32, plain)
    changed = np.abs(occluded.astype(int) - clean.astype(int)).max(-1) > 8
    fraction = changed.mean((1, 2))
    covered = fraction > 0.02
    covered_frames.append(covered.sum())
    assert covered.sum() >= 4 and fraction.max() < 0.5
    first, last = np.flatnonzero(covered)[[0, -1]]
    assert covered[first : last + 1].all()  # one contiguous span
  assert len(set(covered_frames)) > 1


def test_hard_variants_reverse_every_pair_in_time():
  """Each offset class is its onset partner's clip reversed: same draws, frames in reverse."""
  for variant, num_pairs in (('hard', 3), ('hard_mafw', 5)):
    config = synth_builder.synth_config(variant)
    names = config.class_names
    pairs = synth_render.reversed_pairs(names, config.render.time_reversed)
    assert len(pairs) == num_pairs
    changes = []
    for onset, offset in pairs:
      for seed in range(5):
        tracks = [
            synth_render.expression_track(
                np.random.default_rng(seed), names.index(c), 8, config.render, class_names=names
            )
            for c in (onset, offset)
        ]
        np.testing.assert_array_equal(tracks[0], tracks[1][::-1])
        changes.append(np.abs(tracks[0][-1] - tracks[0][0]).max())
    assert np.mean(changes) > 0.3  # the expression changes within the clip
  # The quick demo keeps its single pair.
  video = synth_builder.synth_config('video').render
  assert synth_render.reversed_pairs(synth_render.CLASS_NAMES, video.time_reversed) == (
      synth_render.TIME_REVERSED_PAIR,
  )
  with pytest.raises(ValueError, match=r"time_reversed=\['Angry'\]: known offset classes"):
    synth_render.RenderParams(time_reversed=('Angry',))
