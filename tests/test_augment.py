"""Clip-consistent augmentation (feadapter_jax/data/augment.py): each RandAugment op against PIL's
own on a photograph-like frame, the crop and erasing windows against timm's rules, one draw for
every frame of a clip, determinism from the key, and the config errors."""

import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps
import pytest
import tensorflow as tf

from feadapter_jax.data import augment

FILL = (124, 116, 104)


def _frame(seed=0, size=48):
  """A smooth colour image with edges and noise: a gradient, a disc and speckle, uint8."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:size, :size] / size
  disc = ((x - 0.55) ** 2 + (y - 0.45) ** 2 < 0.08).astype(float)
  image = np.stack([40 + 150 * x + 50 * disc, 60 + 120 * y, 200 - 120 * x * y - 80 * disc], -1)
  image += rng.normal(0, 6, image.shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _op(name, level, frame, increasing=False, negate=False):
  index = augment.OP_NAMES.index(name)
  clip = tf.constant(frame[None])
  fill = tf.constant(FILL, tf.float32)
  return augment.apply_op(clip, index, level, negate, increasing, fill).numpy()[0]


def _enhancer(cls):
  return lambda image, factor: cls(image).enhance(factor)


# (op, level, PIL reference of the level, increasing set, worst per-pixel difference allowed).
# PIL rounds grey levels to integers (TF keeps them as floats): a difference of 1 is allowed.
PIL_CASES = [
    ('AutoContrast', 5, ImageOps.autocontrast, False, 1),
    ('Equalize', 5, ImageOps.equalize, False, 0),
    ('Invert', 5, ImageOps.invert, False, 0),
    ('Posterize', 5, lambda im: ImageOps.posterize(im, 2), False, 0),  # floor(5/10*4) = 2 bits
    ('Posterize', 5, lambda im: ImageOps.posterize(im, 2), True, 0),  # 4 - 2
    ('Solarize', 5, lambda im: ImageOps.solarize(im, 128), False, 0),
    ('Solarize', 3, lambda im: ImageOps.solarize(im, 256 - 76), True, 0),
    ('SolarizeAdd', 5, lambda im: im.point(lambda i: min(255, i + 55) if i < 128 else i), False, 0),
    ('Color', 5, lambda im: _enhancer(ImageEnhance.Color)(im, 1.0), False, 1),
    ('Color', 7, lambda im: _enhancer(ImageEnhance.Color)(im, 1.63), True, 1),
    ('Contrast', 2, lambda im: _enhancer(ImageEnhance.Contrast)(im, 0.46), False, 1),
    ('Brightness', 7, lambda im: _enhancer(ImageEnhance.Brightness)(im, 1.63), True, 1),
    ('Sharpness', 9, lambda im: _enhancer(ImageEnhance.Sharpness)(im, 1.72), False, 1),
]


@pytest.mark.parametrize('name,level,reference,increasing,tolerance', PIL_CASES)
def test_pixel_ops_match_pil(name, level, reference, increasing, tolerance):
  frame = _frame()
  ours = _op(name, level, frame, increasing).astype(int)
  theirs = np.asarray(reference(Image.fromarray(frame))).astype(int)
  assert np.abs(ours - theirs).max() <= tolerance
  if name != 'Color' or increasing:  # factor 1.0 is the identity
    assert np.abs(ours - frame.astype(int)).mean() > 1.0, 'the op changed nothing'


@pytest.mark.parametrize(
    'name,level,data',
    [
        ('ShearX', 5, (1, 0.15, 0, 0, 1, 0)),
        ('ShearY', 5, (1, 0, 0, 0.15, 1, 0)),
        ('TranslateXRel', 5, (1, 0, 0.225 * 48, 0, 1, 0)),
        ('TranslateYRel', 5, (1, 0, 0, 0, 1, 0.225 * 48)),
    ],
)
def test_geometric_ops_match_pil_affine(name, level, data):
  """The same output->input map as timm's PIL calls (bilinear, mean-colour fill)."""
  frame = _frame()
  ours = _op(name, level, frame).astype(int)
  theirs = np.asarray(
      Image.fromarray(frame).transform(
          frame.shape[1::-1],
          Image.Transform.AFFINE,
          data,
          Image.Resampling.BILINEAR,
          fillcolor=FILL,
      )
  ).astype(int)
  # Bilinear sampling conventions differ by a fraction of a pixel at most: compare on average.
  assert np.abs(ours - theirs).mean() < 3.0
  negated = _op(name, level, frame, negate=True).astype(int)
  assert np.abs(negated - ours).mean() > 5.0  # the drawn sign matters


def test_rotate_matches_pil_up_to_direction():
  frame = _frame()
  ours = _op('Rotate', 5, frame).astype(int)  # 15 degrees
  image = Image.fromarray(frame)
  candidates = [
      np.asarray(image.rotate(a, Image.Resampling.BILINEAR, fillcolor=FILL)).astype(int)
      for a in (15, -15)
  ]
  errors = sorted(np.abs(ours - c).mean() for c in candidates)
  assert errors[0] < 3.0 < errors[1]


def test_one_draw_for_every_frame_of_a_clip():
  """Identical frames stay identical through every augmentation switched on at once."""
  config = _data_config(randaugment='rand-m9-n6-mstd0.5-inc1', color_jitter=0.4, erase_prob=1.0)
  clip = tf.constant(np.repeat(_frame()[None], 4, 0))
  changed = 0
  for seed in range(6):
    out = augment.augment_clip(tf.constant([seed, 1], tf.int64), clip, config).numpy()
    assert all(np.array_equal(out[0], f) for f in out[1:])
    changed += int(np.abs(out[0].astype(int) - clip[0].numpy()).mean() > 1.0)
  assert changed >= 5


def test_same_key_same_clip_other_key_other_clip():
  config = _data_config(randaugment='rand-m7-n4-mstd0.5-inc1', erase_prob=0.5)
  clip = tf.constant(np.stack([_frame(s) for s in range(3)]))
  key = tf.constant([3, 4], tf.int64)
  first = augment.augment_clip(key, clip, config).numpy()
  again = augment.augment_clip(key, clip, config).numpy()
  assert np.array_equal(first, again)
  others = [
      augment.augment_clip(tf.constant([3, k], tf.int64), clip, config).numpy() for k in range(5, 9)
  ]
  assert all(not np.array_equal(first, o) for o in others)


def test_crop_window_in_frame_and_area_in_range():
  areas, ratios = [], []
  for seed in range(200):
    y, x, h, w = augment.crop_window(
        tf.constant([seed, 0], tf.int64), 90, 120, (0.08, 1.0), (3 / 4, 4 / 3)
    ).numpy()
    assert 0 <= y and y + h <= 90 and 0 <= x and x + w <= 120 and h > 0 and w > 0
    areas.append(h * w / (90 * 120))
    ratios.append(w / h)
  assert 0.07 < min(areas) < 0.2 and max(areas) > 0.85
  assert min(ratios) > 0.70 and max(ratios) < 1.40
  # Log-uniform aspect: about as many wider-than-tall as taller-than-wide crops.
  assert 0.35 < np.mean(np.array(ratios) > 1) < 0.65


@pytest.mark.parametrize(
    'height,width,expected',
    [
        (100, 200, (0, 33, 100, 133)),  # too wide: the widest allowed ratio, centred
        (200, 100, (33, 0, 133, 100)),  # too tall
        (100, 110, (0, 0, 100, 110)),  # within the ratio range: the whole frame
    ],
)
def test_crop_window_falls_back_to_timm_centre_crop(height, width, expected):
  """Areas above the frame never fit, so every attempt fails."""
  window = augment.crop_window(
      tf.constant([0, 0], tf.int64), height, width, (2.0, 3.0), (3 / 4, 4 / 3)
  )
  assert tuple(window.numpy()) == expected


def test_random_erasing_fills_normalised_gaussian_noise():
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.2)
  clip = tf.zeros([2, 64, 64, 3], tf.uint8)
  erased = 0
  for seed in range(20):
    key = tf.constant([seed, 7], tf.int64)
    out = augment.random_erase(key, clip, 1.0, (0.1, 0.3), mean, std).numpy()
    region = out[0].any(-1)
    assert np.array_equal(out[0], out[1])
    if region.sum() == 0:
      continue
    erased += 1
    rows, cols = np.nonzero(region)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert 0.09 * 64 * 64 <= box <= 0.31 * 64 * 64  # one rectangle of the drawn area
    pixels = out[0][rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] / 255.0
    normalised = (pixels - mean) / std
    assert abs(normalised.mean()) < 0.15 and 0.85 < normalised.std() < 1.15
  assert erased >= 18
  never = augment.random_erase(tf.constant([1, 1], tf.int64), clip, 0.0, (0.1, 0.3), mean, std)
  assert not never.numpy().any()


def test_rand_augment_applies_about_half_the_ops():
  """n=1 at probability 1/2: about half the clips change, the rest pass bit for bit."""
  spec = augment.RandAugmentSpec.parse('rand-m9-n1')
  clip = tf.constant(_frame()[None])
  unchanged = sum(
      np.array_equal(
          augment.rand_augment(tf.constant([s, 2], tf.int64), clip, spec, FILL).numpy(),
          clip.numpy(),
      )
      for s in range(60)
  )
  assert 18 <= unchanged <= 42


def _data_config(**overrides):
  fields = dict(
      randaugment='',
      color_jitter=0.0,
      erase_prob=0.0,
      erase_area=(0.02, 1 / 3),
      mean=(0.485, 0.456, 0.406),
      std=(0.229, 0.224, 0.225),
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def test_spec_parsing():
  spec = augment.RandAugmentSpec.parse('rand-m7-n4-mstd0.5-inc1')
  assert (spec.magnitude, spec.num_ops, spec.magnitude_std, spec.increasing) == (7, 4, 0.5, True)
  assert augment.RandAugmentSpec.parse('rand-n2-m9') == augment.RandAugmentSpec(9.0, 2)


@pytest.mark.parametrize(
    'overrides,field',
    [
        (dict(randaugment='rand-m7'), 'randaugment'),
        (dict(randaugment='autoaug'), 'randaugment'),
        (dict(randaugment='rand-m11-n2'), 'randaugment'),
        (dict(color_jitter=1.5), 'color_jitter'),
        (dict(erase_prob=2.0), 'erase_prob'),
        (dict(erase_area=(0.5, 0.2)), 'erase_area'),
    ],
)
def test_bad_settings_name_the_field(overrides, field):
  with pytest.raises(ValueError, match=f'config.data.{field}'):
    augment.check_config(_data_config(**overrides))


def test_level_mapping_of_the_increasing_set():
  """At magnitude 0 the increasing set leaves a clip unchanged (severity grows with M)."""
  frame = _frame()
  for name in ('Solarize', 'Color', 'Contrast', 'Brightness', 'Sharpness'):
    assert np.array_equal(_op(name, 0, frame, increasing=True), frame), name
  assert abs(augment._enhance(tf.constant(10.0), True).numpy() - 0.9) < 1e-6
