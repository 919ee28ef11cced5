"""Clip-consistent training augmentation in tf.data: one random draw per clip, every frame alike.

A video model must see a clip as one scene: a crop, a rotation or a colour change that differed
between frames would be motion the clip does not hold. So each function here takes a stateless
key and a whole clip `(t, h, w, 3)` uint8, draws its parameters once from the key, and applies
them identically to all t frames. The same key gives the same clip, so training streams stay
deterministic from the seed (a resumed run repeats its batches exactly).

The augmentations are those of the image classifiers' recipes as timm implements them (the DFER
video recipes take them from there):
  * `crop_window`: Inception-style random resized crop (timm `RandomResizedCrop`): the area
    fraction uniform in `scale`, the aspect ratio log-uniform in `ratio`, up to `attempts` draws,
    a centre crop of the clamped aspect ratio when none fits.
  * `rand_augment`: RandAugment, `rand-m{M}-n{N}[-mstd{S}][-inc{0|1}]` as timm's
    `rand_augment_transform`: N ops drawn with replacement from timm's 15, each applied with
    probability 1/2 at magnitude M (out of 10) plus Gaussian noise of std S; `inc1` is the set
    whose severity increases with M (the video recipes' `rand-m7-n4-mstd0.5-inc1`).
  * `color_jitter`: brightness, contrast and saturation factors, each uniform in
    [1 - s, 1 + s], applied in that order.
  * `random_erase`: timm `RandomErasing(mode='pixel')`: with probability p one rectangle (area
    fraction in `area`, log-uniform aspect in (0.3, 3.3)) filled with per-pixel Gaussian noise of
    the dataset's mean and std, the same noise on every frame.

`augment_clip` applies the ones `config.data` switches on, after the crop and resize, in timm's
order (RandAugment, colour jitter, then erasing). Clip-wide statistics (auto-contrast and
equalise histograms, contrast's mean grey) are taken over the whole clip, so the mapping of pixel
values is one for all frames.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Sequence

import ml_collections
import tensorflow as tf

_split = tf.random.experimental.stateless_split

# timm's RandAugment: magnitudes are out of 10; geometric ops fill with the dataset mean.
_MAX_LEVEL = 10.0
_OP_PROBABILITY = 0.5
_ERASE_RATIO = (0.3, 1 / 0.3)
_ATTEMPTS = 10


# ----------------------------------------------------------------------------- Crop.


def _rectangles(
    key: tf.Tensor,
    h: tf.Tensor,
    w: tf.Tensor,
    area: Sequence[float],
    ratio: Sequence[float],
    attempts: int,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(a, b, key left): `attempts` rectangle sides, each of area uniform in `area` (fractions of
  h x w) and aspect a / b log-uniform in `ratio`, rounded to whole pixels."""
  area_key, ratio_key, place_key = tf.unstack(_split(key, 3))
  target = h * w * tf.random.stateless_uniform([attempts], area_key, area[0], area[1])
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = tf.exp(tf.random.stateless_uniform([attempts], ratio_key, log_lo, log_hi))
  return tf.round(tf.sqrt(target * aspect)), tf.round(tf.sqrt(target / aspect)), place_key


def _place_first(
    key: tf.Tensor, h: tf.Tensor, w: tf.Tensor, rect_h: tf.Tensor, rect_w: tf.Tensor, fits
) -> tf.Tensor:
  """[y, x, h, w] float32: the first rectangle that `fits`, at a uniform position in the frame."""
  first = tf.argmax(tf.cast(fits, tf.int32))
  y_key, x_key = tf.unstack(_split(key, 2))
  y = tf.floor(tf.random.stateless_uniform([], y_key) * (h - rect_h[first] + 1.0))
  x = tf.floor(tf.random.stateless_uniform([], x_key) * (w - rect_w[first] + 1.0))
  return tf.stack([y, x, rect_h[first], rect_w[first]])


def crop_window(
    key: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    scale: Sequence[float],
    ratio: Sequence[float],
    attempts: int = _ATTEMPTS,
) -> tf.Tensor:
  """[y, x, h, w] int32 window of an Inception-style random resized crop of an h x w frame.

  All `attempts` candidates are drawn at once (fixed cost); the first that fits the frame is
  taken. When none fits, the whole frame is cropped to the nearest aspect ratio in `ratio`,
  centred (timm's fallback).
  """
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  crop_w, crop_h, place_key = _rectangles(key, h, w, scale, ratio, attempts)
  fits = (crop_w > 0) & (crop_w <= w) & (crop_h > 0) & (crop_h <= h)
  drawn = _place_first(place_key, h, w, crop_h, crop_w, fits)

  frame_ratio = w / h
  fallback_w = tf.where(frame_ratio > ratio[1], tf.round(h * ratio[1]), w)
  fallback_h = tf.where(frame_ratio < ratio[0], tf.round(w / ratio[0]), h)
  fallback = tf.stack(
      [tf.floor((h - fallback_h) / 2), tf.floor((w - fallback_w) / 2), fallback_h, fallback_w]
  )
  return tf.cast(tf.where(tf.reduce_any(fits), drawn, fallback), tf.int32)


# ----------------------------------------------------------------------------- RandAugment.


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
  """A parsed `rand-m{M}-n{N}[-mstd{S}][-inc{0|1}]` string."""

  magnitude: float
  num_ops: int
  magnitude_std: float = 0.0
  increasing: bool = False

  _PATTERN = re.compile(r'rand((?:-(?:m|n|mstd|inc)[0-9.]+)+)')

  @classmethod
  def parse(cls, spec: str) -> RandAugmentSpec:
    """Raises ValueError naming the expected form for anything else."""
    usage = (
        f'config.data.randaugment={spec!r} is not a RandAugment spec: use '
        "'rand-m{M}-n{N}[-mstd{S}][-inc{0|1}]', e.g. 'rand-m7-n4-mstd0.5-inc1' (M in [0, 10]), "
        "or '' for none"
    )
    match = cls._PATTERN.fullmatch(spec)
    if not match:
      raise ValueError(usage)
    fields = dict(re.findall(r'-(mstd|inc|m|n)([0-9.]+)', match.group(1)))
    if 'm' not in fields or 'n' not in fields:
      raise ValueError(usage)
    try:
      parsed = cls(
          magnitude=float(fields['m']),
          num_ops=int(fields['n']),
          magnitude_std=float(fields.get('mstd', 0.0)),
          increasing=bool(int(fields.get('inc', 0))),
      )
    except ValueError:
      raise ValueError(usage) from None
    if not 0 <= parsed.magnitude <= _MAX_LEVEL or parsed.num_ops < 1:
      raise ValueError(usage)
    return parsed


def _blend(degenerate: tf.Tensor, clip: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL ImageEnhance's blend: degenerate + factor * (clip - degenerate), saturated to uint8."""
  mixed = degenerate + factor * (tf.cast(clip, tf.float32) - degenerate)
  return tf.saturate_cast(tf.round(mixed), tf.uint8)


def _grey(clip: tf.Tensor) -> tf.Tensor:
  """ITU-R 601 luma as PIL's 'L' conversion, float32 (t, h, w, 1)."""
  weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
  return tf.reduce_sum(tf.cast(clip, tf.float32) * weights, -1, keepdims=True)


def _auto_contrast(clip: tf.Tensor, _: tf.Tensor) -> tf.Tensor:
  """Each channel's clip-wide [min, max] stretched to [0, 255]; a flat channel is kept."""
  values = tf.cast(clip, tf.float32)
  lo = tf.reduce_min(values, [0, 1, 2])
  hi = tf.reduce_max(values, [0, 1, 2])
  flat = hi <= lo
  scale = tf.where(flat, 1.0, 255.0 / tf.maximum(hi - lo, 1.0))
  offset = tf.where(flat, 0.0, lo)
  return tf.saturate_cast(tf.floor((values - offset) * scale), tf.uint8)


def _equalize(clip: tf.Tensor, _: tf.Tensor) -> tf.Tensor:
  """PIL ImageOps.equalize per channel, from the clip-wide histogram."""

  def channel(values: tf.Tensor) -> tf.Tensor:
    histogram = tf.math.bincount(tf.cast(values, tf.int32), minlength=256, maxlength=256)
    last = tf.gather(histogram, tf.reduce_max(tf.where(histogram > 0)))
    step = (tf.reduce_sum(histogram) - last) // 255
    lut = (tf.cumsum(histogram, exclusive=True) + step // 2) // tf.maximum(step, 1)
    lut = tf.cast(tf.clip_by_value(lut, 0, 255), tf.uint8)
    return tf.where(step == 0, values, tf.gather(lut, tf.cast(values, tf.int32)))

  return tf.stack([channel(clip[..., c]) for c in range(3)], -1)


def _invert(clip: tf.Tensor, _: tf.Tensor) -> tf.Tensor:
  return 255 - clip


def _posterize(clip: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
  """Keeps the `bits` most significant bits of every value (8 or more: unchanged)."""
  # A mask, not shifts: a shift by the full width (keeping 0 bits) is undefined in TF.
  dropped = 8.0 - tf.clip_by_value(bits, 0.0, 8.0)
  mask = tf.cast(256.0 - tf.pow(2.0, dropped), tf.uint8)
  return tf.bitwise.bitwise_and(clip, mask)


def _solarize(clip: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
  """Values at or above `threshold` inverted."""
  return tf.where(tf.cast(clip, tf.float32) >= threshold, 255 - clip, clip)


def _solarize_add(clip: tf.Tensor, add: tf.Tensor) -> tf.Tensor:
  """`add` added to values below 128 (saturating)."""
  values = tf.cast(clip, tf.float32)
  return tf.where(values < 128.0, tf.saturate_cast(values + add, tf.uint8), clip)


def _color(clip: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  return _blend(_grey(clip), clip, factor)


def _contrast(clip: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  # PIL blends with the mean grey level, rounded; here the clip's, so frames stay alike.
  return _blend(tf.floor(tf.reduce_mean(_grey(clip)) + 0.5), clip, factor)


def _brightness(clip: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  return _blend(tf.zeros([], tf.float32), clip, factor)


def _sharpness(clip: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Blend with PIL's SMOOTH filter (3 x 3, centre 5, /13); the border pixels are kept."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  values = tf.cast(clip, tf.float32)
  smooth = tf.nn.depthwise_conv2d(values, kernel, [1, 1, 1, 1], 'VALID')
  smooth = tf.round(smooth)
  smooth = tf.pad(smooth, [[0, 0], [1, 1], [1, 1], [0, 0]])
  height, width = tf.shape(clip)[1], tf.shape(clip)[2]
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]
  inner = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
  degenerate = tf.where(inner[None, :, :, None], smooth, values)
  return _blend(degenerate, clip, factor)


def _transform(clip: tf.Tensor, matrix: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
  """Every frame through the 3 x 3 output->input pixel `matrix`, bilinear, outside = fill."""
  flat = tf.reshape(matrix, [9])[:8] / matrix[2, 2]
  # The op fills with one scalar; bilinear sampling is linear, so warping (clip - fill) with 0
  # and adding fill back fills each channel with its own value.
  warped = tf.raw_ops.ImageProjectiveTransformV3(
      images=tf.cast(clip, tf.float32) - fill,
      transforms=tf.tile(flat[None], [tf.shape(clip)[0], 1]),
      output_shape=tf.shape(clip)[1:3],
      fill_value=0.0,
      interpolation='BILINEAR',
      fill_mode='CONSTANT',
  )
  return tf.saturate_cast(tf.round(warped + fill), tf.uint8)


def _about_centre(clip: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
  """`matrix` (acting on centred coordinates) as a pixel-coordinate transform."""
  h = tf.cast(tf.shape(clip)[1], tf.float32)
  w = tf.cast(tf.shape(clip)[2], tf.float32)
  cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
  to_centre = tf.stack([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
  back = tf.stack([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
  return back @ matrix @ to_centre


def _rotate(clip: tf.Tensor, degrees: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
  # The sign of `degrees` is drawn at random, so the direction convention does not matter.
  angle = degrees * math.pi / 180.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  matrix = tf.stack([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
  return _transform(clip, _about_centre(clip, matrix), fill)


def _shear_x(clip: tf.Tensor, shear: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
  matrix = tf.stack([[1.0, shear, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  return _transform(clip, matrix, fill)


def _shear_y(clip: tf.Tensor, shear: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
  matrix = tf.stack([[1.0, 0.0, 0.0], [shear, 1.0, 0.0], [0.0, 0.0, 1.0]])
  return _transform(clip, matrix, fill)


def _translate_x(clip: tf.Tensor, fraction: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
  pixels = fraction * tf.cast(tf.shape(clip)[2], tf.float32)
  matrix = tf.stack([[1.0, 0.0, pixels], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  return _transform(clip, matrix, fill)


def _translate_y(clip: tf.Tensor, fraction: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
  pixels = fraction * tf.cast(tf.shape(clip)[1], tf.float32)
  matrix = tf.stack([[1.0, 0.0, 0.0], [0.0, 1.0, pixels], [0.0, 0.0, 1.0]])
  return _transform(clip, matrix, fill)


# (name, op, level -> argument, signed, geometric). `signed`: the argument's sign is drawn at
# random (timm's `_randomly_negate`); 'increasing': only in the increasing set. The levels map
# as timm's `LEVEL_TO_ARG`, both sets.
_Op = tuple[str, Callable[..., tf.Tensor], Callable[[tf.Tensor, bool], tf.Tensor], bool | str, bool]


def _enhance(level: tf.Tensor, increasing: bool) -> tf.Tensor:
  # Non-increasing: factor in [0.1, 1.9]; increasing: 1 +- [0, 0.9] (the sign drawn).
  return level / _MAX_LEVEL * 0.9 if increasing else level / _MAX_LEVEL * 1.8 + 0.1


def _posterize_bits(level: tf.Tensor, increasing: bool) -> tf.Tensor:
  bits = tf.floor(level / _MAX_LEVEL * 4.0)
  return 4.0 - bits if increasing else bits


def _solarize_threshold(level: tf.Tensor, increasing: bool) -> tf.Tensor:
  threshold = tf.floor(level / _MAX_LEVEL * 256.0)
  return 256.0 - threshold if increasing else threshold


_OPS: tuple[_Op, ...] = (
    ('AutoContrast', _auto_contrast, lambda m, inc: m, False, False),
    ('Equalize', _equalize, lambda m, inc: m, False, False),
    ('Invert', _invert, lambda m, inc: m, False, False),
    ('Rotate', _rotate, lambda m, inc: m / _MAX_LEVEL * 30.0, True, True),
    ('Posterize', _posterize, _posterize_bits, False, False),
    ('Solarize', _solarize, _solarize_threshold, False, False),
    ('SolarizeAdd', _solarize_add, lambda m, inc: tf.floor(m / _MAX_LEVEL * 110.0), False, False),
    ('Color', _color, _enhance, 'increasing', False),
    ('Contrast', _contrast, _enhance, 'increasing', False),
    ('Brightness', _brightness, _enhance, 'increasing', False),
    ('Sharpness', _sharpness, _enhance, 'increasing', False),
    ('ShearX', _shear_x, lambda m, inc: m / _MAX_LEVEL * 0.3, True, True),
    ('ShearY', _shear_y, lambda m, inc: m / _MAX_LEVEL * 0.3, True, True),
    ('TranslateXRel', _translate_x, lambda m, inc: m / _MAX_LEVEL * 0.45, True, True),
    ('TranslateYRel', _translate_y, lambda m, inc: m / _MAX_LEVEL * 0.45, True, True),
)
OP_NAMES = tuple(op[0] for op in _OPS)


def apply_op(
    clip: tf.Tensor,
    index: tf.Tensor | int,
    level: tf.Tensor | float,
    negate: tf.Tensor | bool,
    increasing: bool,
    fill: tf.Tensor,
) -> tf.Tensor:
  """RandAugment op `OP_NAMES[index]` at magnitude `level` (0..10) on a clip.

  `negate` flips the argument's sign where the op is signed: geometric ops, and the enhance
  ops (colour, contrast, brightness, sharpness) of the increasing set, whose factor is
  1 +- argument.
  """
  level = tf.cast(level, tf.float32)
  negate = tf.cast(negate, tf.bool)

  def branch(op: _Op) -> Callable[[], tf.Tensor]:
    _, fn, to_arg, signed, geometric = op
    signed = increasing if signed == 'increasing' else signed

    def run() -> tf.Tensor:
      arg = to_arg(level, increasing)
      if signed:
        arg = tf.where(negate, -arg, arg)
      if fn in (_color, _contrast, _brightness, _sharpness) and increasing:
        arg = 1.0 + arg
      return fn(clip, arg, fill) if geometric else fn(clip, arg)

    return run

  return tf.switch_case(tf.cast(index, tf.int32), [branch(op) for op in _OPS])


def rand_augment(
    key: tf.Tensor, clip: tf.Tensor, spec: RandAugmentSpec, fill: Sequence[float]
) -> tf.Tensor:
  """RandAugment on a (t, h, w, 3) uint8 clip: `spec.num_ops` ops, one draw for all frames.

  `fill`: the colour geometric ops bring in at the borders, in [0, 255] (the dataset mean).
  """
  fill = tf.constant(fill, tf.float32)
  for op_key in tf.unstack(_split(key, spec.num_ops)):
    index_key, apply_key, level_key, sign_key = tf.unstack(_split(op_key, 4))
    index = tf.random.stateless_uniform([], index_key, 0, len(_OPS), tf.int32)
    level = spec.magnitude + spec.magnitude_std * tf.random.stateless_normal([], level_key)
    level = tf.clip_by_value(level, 0.0, _MAX_LEVEL)
    negate = tf.random.stateless_uniform([], sign_key) < 0.5
    applied = tf.random.stateless_uniform([], apply_key) < _OP_PROBABILITY
    clip = tf.cond(
        applied,
        lambda c=clip, i=index, l=level, n=negate: apply_op(c, i, l, n, spec.increasing, fill),
        lambda c=clip: c,
    )
  return clip


# ----------------------------------------------------------------------------- Colour, erasing.


def color_jitter(key: tf.Tensor, clip: tf.Tensor, strength: float) -> tf.Tensor:
  """Brightness, contrast, then saturation, each factor uniform in [1 - s, 1 + s]."""
  factors = tf.random.stateless_uniform([3], key, max(0.0, 1.0 - strength), 1.0 + strength)
  clip = _brightness(clip, factors[0])
  clip = _contrast(clip, factors[1])
  return _color(clip, factors[2])


def erase_window(
    key: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    area: Sequence[float],
    attempts: int = _ATTEMPTS,
) -> tf.Tensor:
  """[y, x, h, w] int32 rectangle of timm's RandomErasing, h = 0 when no draw fits."""
  h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  # timm's RandomErasing takes the aspect as height / width.
  erase_h, erase_w, place_key = _rectangles(key, h, w, area, _ERASE_RATIO, attempts)
  fits = (erase_w < w) & (erase_h < h)
  window = _place_first(place_key, h, w, erase_h, erase_w, fits)
  return tf.cast(tf.where(tf.reduce_any(fits), window, tf.zeros([4])), tf.int32)


def random_erase(
    key: tf.Tensor,
    clip: tf.Tensor,
    probability: float,
    area: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
) -> tf.Tensor:
  """With `probability`, one rectangle of every frame set to the same Gaussian pixel noise.

  The noise is the dataset's per-channel `mean` and `std` (in [0, 1] units) in pixels, so after
  normalisation it is standard normal, as timm's 'pixel' mode fills normalised images.
  """
  apply_key, window_key, noise_key = tf.unstack(_split(key, 3))
  shape = tf.shape(clip)
  y, x, h, w = tf.unstack(erase_window(window_key, shape[1], shape[2], area))
  noise = tf.random.stateless_normal(shape[1:], noise_key)
  noise = tf.saturate_cast(
      tf.round((noise * tf.constant(std) + tf.constant(mean)) * 255.0), tf.uint8
  )
  rows = tf.range(shape[1])[:, None]
  cols = tf.range(shape[2])[None, :]
  inside = (rows >= y) & (rows < y + h) & (cols >= x) & (cols < x + w)
  inside &= tf.random.stateless_uniform([], apply_key) < probability
  return tf.where(inside[None, :, :, None], noise[None], clip)


# ----------------------------------------------------------------------------- The recipe.


def check_config(data_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the `config.data` field that cannot be an augmentation setting."""
  if data_config.randaugment:
    RandAugmentSpec.parse(data_config.randaugment)
  if not 0.0 <= data_config.color_jitter < 1.0:
    raise ValueError(
        f'config.data.color_jitter={data_config.color_jitter} must be in [0, 1) (0: off).'
    )
  if not 0.0 <= data_config.erase_prob <= 1.0:
    raise ValueError(f'config.data.erase_prob={data_config.erase_prob} must be in [0, 1].')
  lo, hi = data_config.erase_area
  if not 0.0 < lo <= hi < 1.0:
    raise ValueError(
        f'config.data.erase_area={tuple(data_config.erase_area)} must be (lo, hi) with '
        '0 < lo <= hi < 1: the erased fraction of the frame.'
    )


def augment_clip(
    key: tf.Tensor, clip: tf.Tensor, data_config: ml_collections.ConfigDict
) -> tf.Tensor:
  """RandAugment, colour jitter and random erasing of a cropped (t, S, S, 3) uint8 clip, each as
  `config.data` switches it on (randaugment, color_jitter, erase_prob)."""
  ra_key, jitter_key, erase_key = tf.unstack(_split(key, 3))
  if data_config.randaugment:
    spec = RandAugmentSpec.parse(data_config.randaugment)
    fill = [round(255 * m) for m in data_config.mean]
    clip = rand_augment(ra_key, clip, spec, fill)
  if data_config.color_jitter:
    clip = color_jitter(jitter_key, clip, data_config.color_jitter)
  if data_config.erase_prob:
    clip = random_erase(
        erase_key,
        clip,
        data_config.erase_prob,
        tuple(data_config.erase_area),
        tuple(data_config.mean),
        tuple(data_config.std),
    )
  return clip
