"""SynthFER: procedural cartoon facial-expression videos, rendered in numpy.

A clip shows one cartoon face (random identity: face shape, skin, hair and background colours,
eye spacing and size, brow and mouth placement) with small per-frame head motion, lighting changes
and pixel noise. Its expression is a vector of six components (`EXPRESSION_COMPONENTS`: mouth
curvature, opening and width, brow raise and tilt, eye opening) that an intensity curve drives
over time from neutral (0) to the class's apex (`APEX`).

Classes use DFEW's names and order (`CLASS_NAMES`, labels 0..6). Five classes are told apart by
their apex appearance. The pair `TIME_REVERSED_PAIR = ('Surprise', 'Fear')` shares ONE apex (raised
brows, wide eyes, open mouth) and differs only in the direction of time: Surprise is an onset
(neutral -> apex), Fear is the offset of the same apex (apex -> neutral), i.e. the onset curve
reversed. Every other per-frame process (head motion, lighting) is a sum of sinusoids with uniform
random phases, a stationary process whose distribution is invariant under time reversal, and the
noise is i.i.d. per frame. Hence the frames of a Fear clip, taken as an unordered set, have exactly
the distribution of those of a Surprise clip: a model that averages frames cannot beat chance
between the two, one that models time can. In the single-image variant (`static=True`, the apex
alone) the pair is ambiguous by construction: an image classifier tops out at 50% on it.

Harder renders (the builder's `hard` variants) turn on knobs that are off by default: more
classes rendered as another class's onset reversed in time (`time_reversed`, `ONSET_OF`: Sad is a
smile that fades, Disgust an angry frown that relaxes, so a model that averages frames is blind to
three pairs), subtle apexes (`expression_gain`, `min_apex`), fast onsets at random times,
expressions that return to neutral (`hold`, `offset_duration`), occluders over part of the face
for part of the clip (`occlusion_prob`), and stronger head motion, zoom and lighting.
`MAFW_CLASS_NAMES` adds four classes to the seven, in MAFW's order, for an 11-class variant;
`DFEW_LIKE_WEIGHTS` and `MAFW_LIKE_WEIGHTS` give imbalanced class frequencies, with the rare
classes the real datasets have rare.

Everything is deterministic from the `numpy.random.Generator` passed in; the TFDS builder derives
one generator per example from (seed, split, index) so examples can be rendered in any order. A
knob left at its default draws nothing, so the default renders do not change as knobs are added.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ('Happy', 'Sad', 'Neutral', 'Angry', 'Surprise', 'Disgust', 'Fear')

# (onset class, offset class): same apex, opposite direction of time.
TIME_REVERSED_PAIR: tuple[str, str] = ('Surprise', 'Fear')

EXPRESSION_COMPONENTS: tuple[str, ...] = (
    'mouth_curve',  # > 0: corners up (smile); < 0: corners down (frown).
    'mouth_open',  # vertical opening of the lips.
    'mouth_width',  # relative change of the mouth's width.
    'brow_raise',  # > 0: brows up.
    'brow_tilt',  # > 0: inner ends up (sad); < 0: inner ends down (angry "V").
    'eye_open',  # relative change of the eye's height.
)

# Apex expression of each class, as offsets from the neutral face, in units of `_EXPRESSION_SCALE`.
# Chosen so that every class has at least one big feature (mouth, brows or eyes) that survives
# 32-px rendering; the Fear apex is Surprise's (see TIME_REVERSED_PAIR).
_SURPRISE_APEX = (0.0, 1.0, -0.35, 1.0, 0.15, 0.6)
APEX: dict[str, tuple[float, ...]] = {
    'Happy': (1.0, 0.35, 0.3, 0.15, 0.0, -0.35),
    'Sad': (-0.9, 0.0, -0.1, 0.1, 1.0, -0.4),
    'Neutral': (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    'Angry': (-0.25, 0.0, -0.35, -0.8, -1.0, 0.05),
    'Surprise': _SURPRISE_APEX,
    'Disgust': (-0.6, 0.45, 0.1, -0.35, 0.0, -0.65),
    'Fear': _SURPRISE_APEX,
}

# MAFW's eleven classes in its order: the seven above under MAFW's names, then four more.
MAFW_CLASS_NAMES: tuple[str, ...] = (
    'anger',
    'disgust',
    'fear',
    'happiness',
    'neutral',
    'sadness',
    'surprise',
    'contempt',
    'anxiety',
    'helplessness',
    'disappointment',
)
_MAFW_TO_DFEW = {
    'anger': 'Angry',
    'disgust': 'Disgust',
    'fear': 'Fear',
    'happiness': 'Happy',
    'neutral': 'Neutral',
    'sadness': 'Sad',
    'surprise': 'Surprise',
}
# The four: a half smile under lowered brows; a tense mouth under raised inner brows and wide
# eyes; drooping lids under raised inner brows; a pressed frown. Helplessness lies near Sad and
# Disappointment near Disgust, as the real classes are confused.
APEX.update(
    {
        'contempt': (0.4, 0.0, 0.25, -0.3, -0.35, -0.35),
        'anxiety': (-0.3, 0.15, -0.3, 0.5, 0.6, 0.4),
        'helplessness': (-0.5, 0.2, 0.0, 0.35, 0.8, -0.6),
        'disappointment': (-0.6, 0.0, 0.25, -0.2, 0.4, -0.2),
    }
)
# Imbalanced class frequencies (approximate, rounded): DFEW's Disgust and Fear are rare, MAFW's
# contempt, helplessness and disappointment.
DFEW_LIKE_WEIGHTS = (0.25, 0.17, 0.21, 0.18, 0.12, 0.02, 0.05)
MAFW_LIKE_WEIGHTS = (0.15, 0.09, 0.07, 0.2, 0.1, 0.15, 0.1, 0.02, 0.07, 0.02, 0.03)
CLASS_SETS = {'dfew': CLASS_NAMES, 'mafw': MAFW_CLASS_NAMES}


# Classes that can be rendered as the offset of another class's onset (`RenderParams.
# time_reversed`), with that class: Fear is Surprise's (always); in the hard variants a smile that
# fades is Sad, an angry frown that relaxes is Disgust, and (MAFW's extra classes) contempt that
# fades is disappointment, anxiety that fades is helplessness. Names are DFEW's for the seven.
ONSET_OF: dict[str, str] = {
    'Fear': 'Surprise',
    'Sad': 'Happy',
    'Disgust': 'Angry',
    'disappointment': 'contempt',
    'helplessness': 'anxiety',
}


def _canonical(name: str) -> str:
  return _MAFW_TO_DFEW.get(name, name)


def is_offset(name: str, time_reversed: tuple[str, ...] = (TIME_REVERSED_PAIR[1],)) -> bool:
  """Whether the class (of either class set) is rendered as its `ONSET_OF` class reversed."""
  return _canonical(name) in time_reversed


def apex_of(name: str, time_reversed: tuple[str, ...] = (TIME_REVERSED_PAIR[1],)) -> np.ndarray:
  """The apex expression of a class of either class set: its onset partner's if it is an offset."""
  name = _canonical(name)
  return np.asarray(APEX[ONSET_OF[name] if name in time_reversed else name])


def reversed_pairs(
    class_names: tuple[str, ...], time_reversed: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
  """The (onset, offset) class pairs of a class set, in its own names, that share an apex."""
  by_canonical = {_canonical(n): n for n in class_names}
  return tuple(
      (by_canonical[ONSET_OF[c]], n)
      for n, c in ((n, _canonical(n)) for n in class_names)
      if c in time_reversed
  )


_OCCLUDER_COLOURS = (np.array([0.15, 0.12, 0.1]), np.array([0.85, 0.8, 0.7]))


# Face units per unit of each expression component (the image spans [-1, 1] at scale 1).
_EXPRESSION_SCALE = np.array([0.16, 0.16, 0.35, 0.1, 0.08, 0.6])

# Identity: each entry is drawn uniformly in (low, high), in face units (image half-width = 1).
_IDENTITY_RANGES: dict[str, tuple[float, float]] = {
    'face_half_width': (0.56, 0.68),
    'face_half_height': (0.74, 0.86),
    'hair_volume': (0.95, 1.15),  # hair ellipse size relative to the face.
    'eye_dx': (0.22, 0.28),  # eye centre distance from the midline.
    'eye_y': (-0.16, -0.08),
    'eye_half_width': (0.10, 0.13),
    'eye_half_height': (0.06, 0.075),
    'pupil_radius': (0.045, 0.06),
    'brow_gap': (0.1, 0.13),  # brow height above the eye centre.
    'brow_half_length': (0.1, 0.13),
    'brow_radius': (0.022, 0.03),  # half thickness.
    'nose_y': (0.08, 0.16),
    'mouth_y': (0.36, 0.44),
    'mouth_half_width': (0.17, 0.22),
    'lip_thickness': (0.02, 0.03),
    'skin_tone': (0.0, 1.0),  # 0: lightest, 1: darkest of `_SKIN_RANGE`.
}
_SKIN_RANGE = (np.array([0.96, 0.80, 0.69]), np.array([0.42, 0.28, 0.19]))
_SKIN_TINT = (0.92, 1.08)  # per-channel multiplier of the skin colour.
_HAIR_BRIGHTNESS = (0.03, 0.3)  # hair (and brow) colour = brightness * per-channel tint.
_HAIR_TINT = (0.6, 1.0)
_IRIS_RANGE = (0.05, 0.35)  # per channel.
_BACKGROUND_RANGE = (0.25, 0.9)  # per channel.
_HAIR_SHAPE = (1.08, 0.78, -0.3)  # hair ellipse: x, y half-axes and centre y, over the face size.
_NOSE_HALF_AXES = (0.045, 0.07)
_MIN_EYE_OPEN = 0.1  # floor of the eye height factor, so eyes never vanish.
_MIN_MOUTH_WIDTH = 0.2  # floor of the mouth width factor.
_LIP_TINT = np.array([0.62, 0.3, 0.3])  # multiplies the skin colour.
_NOSE_TINT = 0.85  # nose shading, multiplies the skin colour.
_MOUTH_INSIDE = np.array([0.18, 0.04, 0.05])
_SCLERA = np.array([0.97, 0.97, 0.95])


@dataclasses.dataclass(frozen=True)
class RenderParams:
  """Nuisance and difficulty knobs of the renderer.

  Attributes:
    noise_std: per-pixel Gaussian noise, in [0, 1] pixel units.
    motion: head translation amplitude, in face units (image half-width = 1).
    rotation_deg: head in-plane rotation amplitude, in degrees.
    zoom: relative head-scale amplitude.
    lighting: amplitude of the global gain and of the horizontal light gradient.
    motion_frequency: (low, high) angular frequency of motion and lighting, radians per frame.
    expression_jitter: std of each identity's resting-face offset on every expression component.
    min_apex: apex intensities are drawn uniformly in (min_apex, 1).
    onset_start: (low, high) onset start, as a fraction of the clip.
    onset_duration: (low, high) onset duration, as a fraction of the clip.
    expression_gain: multiplies every apex (below 1: subtle expressions).
    hold: (low, high) time at the apex before the expression returns to neutral, as a fraction
      of the clip; () keeps the apex to the end.
    offset_duration: (low, high) duration of the return to neutral (with `hold`).
    occlusion_prob: probability of an occluder (a dark or light ellipse, a hand or an object)
      over part of the face, from a random frame for at least half the clip.
    occlusion_size: (low, high) occluder half-size, in face units.
    time_reversed: the classes (DFEW names; MAFW's for its four extra) rendered as the onset of
      their `ONSET_OF` class reversed in time, with its apex: a model that averages frames
      cannot tell such a pair apart.
  """

  noise_std: float = 0.03
  motion: float = 0.05
  rotation_deg: float = 4.0
  zoom: float = 0.04
  lighting: float = 0.12
  motion_frequency: tuple[float, float] = (0.1, 0.6)
  expression_jitter: float = 0.06
  min_apex: float = 0.7
  onset_start: tuple[float, float] = (0.05, 0.35)
  onset_duration: tuple[float, float] = (0.25, 0.5)
  expression_gain: float = 1.0
  hold: tuple[float, ...] = ()
  offset_duration: tuple[float, float] = (0.3, 0.5)
  occlusion_prob: float = 0.0
  occlusion_size: tuple[float, float] = (0.25, 0.45)
  time_reversed: tuple[str, ...] = (TIME_REVERSED_PAIR[1],)

  def __post_init__(self):
    unknown = set(self.time_reversed) - set(ONSET_OF)
    if unknown:
      raise ValueError(f'time_reversed={sorted(unknown)}: known offset classes {sorted(ONSET_OF)}.')


def smoothstep(x: np.ndarray) -> np.ndarray:
  """Smooth ramp from 0 (x <= 0) to 1 (x >= 1)."""
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3.0 - 2.0 * x)


def intensity_curve(
    rng: np.random.Generator, num_frames: int, params: RenderParams, *, reverse: bool
) -> np.ndarray:
  """Expression intensity over time, shape (t,), in [0, 1].

  Args:
    rng: random source.
    num_frames: T.
    params: renderer knobs (onset start and duration ranges).
    reverse: False for an onset (neutral -> apex), True for the offset (the same curve reversed).

  Returns:
    (t,) float64 array; a one-frame clip is at the apex (1).
  """
  start = rng.uniform(*params.onset_start)
  duration = rng.uniform(*params.onset_duration)
  if num_frames == 1:
    return np.ones(1)
  time = np.linspace(0.0, 1.0, num_frames)
  curve = smoothstep((time - start) / duration)
  if params.hold:
    offset_start = start + duration + rng.uniform(*params.hold)
    curve = curve * (1.0 - smoothstep((time - offset_start) / rng.uniform(*params.offset_duration)))
  return curve[::-1] if reverse else curve


def stationary_track(
    rng: np.random.Generator, num_frames: int, params: RenderParams, num_tones: int = 2
) -> np.ndarray:
  """A random smooth signal in [-1, 1], shape (t,), whose law is invariant under time reversal.

  A sum of sinusoids with uniform random phases is stationary; reversing time maps each phase
  phi to pi - w (T - 1) - phi, again uniform, so the reversed track has the same distribution.

  Args:
    rng: random source.
    num_frames: T.
    params: renderer knobs (frequency range).
    num_tones: number of sinusoids summed.

  Returns:
    (t,) float64 array.
  """
  amplitudes = rng.uniform(0.0, 1.0, num_tones) / num_tones
  frequencies = rng.uniform(*params.motion_frequency, num_tones)
  phases = rng.uniform(0.0, 2.0 * np.pi, num_tones)
  t = np.arange(num_frames)[:, None]
  return (amplitudes * np.sin(frequencies * t + phases)).sum(axis=1)


def expression_track(
    rng: np.random.Generator,
    label: int,
    num_frames: int,
    params: RenderParams,
    *,
    static: bool = False,
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> np.ndarray:
  """Expression vector over time, shape (t, 6), in units of the component scales.

  Args:
    rng: random source.
    label: class index into `class_names`.
    num_frames: T.
    params: renderer knobs.
    static: the apex alone, constant over time (the single-image variant).
    class_names: the class set (`CLASS_SETS`).

  Returns:
    (t, len(EXPRESSION_COMPONENTS)) float64 array.
  """
  name = class_names[label]
  rest = rng.normal(0.0, params.expression_jitter, len(EXPRESSION_COMPONENTS))
  amplitude = rng.uniform(params.min_apex, 1.0) * params.expression_gain
  if static:
    curve = np.ones(num_frames)
  else:
    curve = intensity_curve(rng, num_frames, params, reverse=is_offset(name, params.time_reversed))
  return rest + amplitude * curve[:, None] * apex_of(name, params.time_reversed)


def _sample_identity(rng: np.random.Generator) -> dict[str, np.ndarray | float]:
  identity = {k: rng.uniform(lo, hi) for k, (lo, hi) in _IDENTITY_RANGES.items()}
  lightest, darkest = _SKIN_RANGE
  skin = lightest + identity['skin_tone'] * (darkest - lightest)
  identity['skin'] = np.clip(skin * rng.uniform(*_SKIN_TINT, 3), 0.0, 1.0)
  identity['hair'] = rng.uniform(*_HAIR_BRIGHTNESS) * rng.uniform(*_HAIR_TINT, 3)
  identity['iris'] = rng.uniform(*_IRIS_RANGE, 3)
  identity['background'] = rng.uniform(*_BACKGROUND_RANGE, 3)
  return identity


def _pixel_centres(resolution: int) -> np.ndarray:
  """Pixel-centre coordinates along one image axis, in image units ([-1, 1])."""
  return ((np.arange(resolution) + 0.5) / resolution * 2.0 - 1.0).astype(np.float32)


def _coverage(sdf: np.ndarray, pixel: np.ndarray) -> np.ndarray:
  """Anti-aliased inside-ness (1 inside, 0 outside, linear across one pixel of the edge)."""
  return np.clip(0.5 - sdf / pixel, 0.0, 1.0)


def _ellipse_sdf(x, y, cx, cy, half_x, half_y):
  radius = np.sqrt(((x - cx) / half_x) ** 2 + ((y - cy) / half_y) ** 2)
  return (radius - 1.0) * np.minimum(half_x, half_y)


def _capsule_sdf(x, y, x0, y0, x1, y1, radius):
  """Signed distance to a thick segment (x0, y0)-(x1, y1)."""
  dx, dy = x1 - x0, y1 - y0
  along = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
  return np.hypot(x - x0 - along * dx, y - y0 - along * dy) - radius


def _paint(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
  """Alpha-composites `colour` over canvas (t h w 3) in place; alpha is (t h w)."""
  canvas += alpha[..., None] * (colour.astype(np.float32) - canvas)


def _draw_faces(
    ident: dict, expression: np.ndarray, pose: dict[str, np.ndarray], resolution: int
) -> np.ndarray:
  """Rasterises T frames of one face, (t h w 3) float in [0, 1], before lighting and noise."""
  num_frames = expression.shape[0]
  # Pixel centres in image units, then the inverse head pose maps them to face units.
  grid = _pixel_centres(resolution)
  px, py = grid[None, None, :], grid[None, :, None]

  def col(per_frame: np.ndarray) -> np.ndarray:  # (t,) -> (t 1 1), to broadcast over pixels
    return np.reshape(per_frame, (num_frames, 1, 1)).astype(np.float32)

  angle, scale = col(pose['rotation']), col(pose['scale'])
  sx, sy = px - col(pose['tx']), py - col(pose['ty'])
  x = (np.cos(angle) * sx + np.sin(angle) * sy) / scale
  y = (-np.sin(angle) * sx + np.cos(angle) * sy) / scale
  pixel = 2.0 / resolution / scale

  e = {k: col(v) for k, v in zip(EXPRESSION_COMPONENTS, (expression * _EXPRESSION_SCALE).T)}
  canvas = np.empty((num_frames, resolution, resolution, 3), np.float32)
  canvas[...] = ident['background']

  fw, fh = ident['face_half_width'], ident['face_half_height']
  hair_x, hair_y, hair_centre = _HAIR_SHAPE
  hair = _ellipse_sdf(
      x,
      y,
      0.0,
      hair_centre * fh,
      fw * ident['hair_volume'] * hair_x,
      fh * ident['hair_volume'] * hair_y,
  )
  _paint(canvas, _coverage(hair, pixel), ident['hair'])
  _paint(canvas, _coverage(_ellipse_sdf(x, y, 0.0, 0.0, fw, fh), pixel), ident['skin'])
  nose = _ellipse_sdf(x, y, 0.0, ident['nose_y'], *_NOSE_HALF_AXES)
  _paint(canvas, _coverage(nose, pixel), _NOSE_TINT * ident['skin'])

  eye_half_height = ident['eye_half_height'] * np.maximum(1.0 + e['eye_open'], _MIN_EYE_OPEN)
  brow_y = ident['eye_y'] - ident['brow_gap'] - e['brow_raise']
  for side in (-1.0, 1.0):
    eye_x = side * ident['eye_dx']
    sclera = _coverage(
        _ellipse_sdf(x, y, eye_x, ident['eye_y'], ident['eye_half_width'], eye_half_height), pixel
    )
    _paint(canvas, sclera, _SCLERA)
    pupil = _coverage(np.hypot(x - eye_x, y - ident['eye_y']) - ident['pupil_radius'], pixel)
    _paint(canvas, pupil * sclera, ident['iris'])  # the lids clip the pupil
    inner_x = eye_x - side * ident['brow_half_length']
    outer_x = eye_x + side * ident['brow_half_length']
    brow = _capsule_sdf(
        x,
        y,
        inner_x,
        brow_y - e['brow_tilt'],
        outer_x,
        brow_y + e['brow_tilt'],
        ident['brow_radius'],
    )
    _paint(canvas, _coverage(brow, pixel), ident['hair'])

  # Mouth: a band around a parabolic centre line whose corners rise by `mouth_curve` while its
  # middle sinks by as much, so the mouth bends about a fixed height.
  half_width = ident['mouth_half_width'] * np.maximum(1.0 + e['mouth_width'], _MIN_MOUTH_WIDTH)
  across = np.clip(x / half_width, -1.0, 1.0)
  centre_y = ident['mouth_y'] + e['mouth_curve'] * (0.5 - across**2)
  profile = np.sqrt(1.0 - across**2)
  opening = np.maximum(e['mouth_open'], 0.0) * profile
  outside_x = np.abs(x) - half_width
  lips = np.maximum(np.abs(y - centre_y) - opening - ident['lip_thickness'] * profile, outside_x)
  _paint(canvas, _coverage(lips, pixel), _LIP_TINT * ident['skin'])
  inside = np.maximum(np.abs(y - centre_y) - opening, outside_x)
  _paint(canvas, _coverage(inside, pixel), _MOUTH_INSIDE)
  return canvas


def render_clip(
    rng: np.random.Generator,
    label: int,
    num_frames: int,
    resolution: int,
    params: RenderParams,
    *,
    static: bool = False,
    class_names: tuple[str, ...] = CLASS_NAMES,
) -> np.ndarray:
  """Renders one clip of class `label`.

  Args:
    rng: random source; the clip is a deterministic function of its state.
    label: class index into `class_names`.
    num_frames: T.
    resolution: frame height and width in pixels.
    params: renderer knobs.
    static: render the apex expression on every frame (the single-image variant uses T=1).
    class_names: the class set (`CLASS_SETS`).

  Returns:
    Frames in temporal order, (t h w 3) uint8.
  """
  identity = _sample_identity(rng)
  expression = expression_track(
      rng, label, num_frames, params, static=static, class_names=class_names
  )
  track = functools.partial(stationary_track, rng, num_frames, params)
  pose = {
      'tx': params.motion * track(),
      'ty': params.motion * track(),
      'rotation': np.deg2rad(params.rotation_deg) * track(),
      'scale': 1.0 + params.zoom * track(),
  }
  gain = 1.0 + params.lighting * track()
  gradient = params.lighting * track()
  frames = _draw_faces(identity, expression, pose, resolution)
  noise = rng.normal(0.0, params.noise_std, frames.shape).astype(np.float32)
  if params.occlusion_prob and rng.uniform() < params.occlusion_prob:
    _occlude(rng, frames, pose, params)
  grid = _pixel_centres(resolution)
  light = gain[:, None, None] * (1.0 + gradient[:, None, None] * grid[None, None, :])
  frames *= light[..., None].astype(np.float32)
  frames += noise
  return np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


def _occlude(
    rng: np.random.Generator, frames: np.ndarray, pose: dict[str, np.ndarray], params: RenderParams
) -> None:
  """Paints one ellipse over the eyes' or the mouth's region, following the head, on frames
  [start, end) with end - start >= half the clip (in place)."""
  num_frames, resolution = frames.shape[:2]
  start = int(rng.integers(0, num_frames // 2 + 1))
  end = int(rng.integers(start + (num_frames + 1) // 2, num_frames + 1))
  centre = np.array([rng.uniform(-0.35, 0.35), rng.choice([-0.1, 0.4]) + rng.uniform(-0.1, 0.1)])
  half = rng.uniform(*params.occlusion_size, 2)
  colour = _OCCLUDER_COLOURS[int(rng.integers(2))] * rng.uniform(0.85, 1.15, 3)
  grid = _pixel_centres(resolution)
  x, y = grid[None, :], grid[:, None]
  for t in range(start, end):
    cx = centre[0] * pose['scale'][t] + pose['tx'][t]
    cy = centre[1] * pose['scale'][t] + pose['ty'][t]
    sdf = _ellipse_sdf(x, y, cx, cy, half[0] * pose['scale'][t], half[1] * pose['scale'][t])
    alpha = _coverage(sdf, 2.0 / resolution)
    frames[t] += alpha[..., None] * (np.clip(colour, 0.0, 1.0).astype(np.float32) - frames[t])


def balanced_labels(
    rng: np.random.Generator, num_examples: int, num_classes: int = len(CLASS_NAMES)
) -> np.ndarray:
  """Class labels with counts that differ by at most one, in random order, shape (n,) int."""
  return rng.permutation(np.arange(num_examples) % num_classes)


def weighted_labels(
    rng: np.random.Generator, num_examples: int, weights: tuple[float, ...]
) -> np.ndarray:
  """Class labels in proportions `weights` (largest remainders, every class at least once), in
  random order, shape (n,) int."""
  weights = np.asarray(weights, np.float64) / np.sum(weights)
  counts = np.maximum(np.floor(weights * num_examples).astype(int), 1)
  order = np.argsort(-(weights * num_examples - np.floor(weights * num_examples)), kind='stable')
  for i in range(num_examples - counts.sum()):
    counts[order[i % len(order)]] += 1
  while counts.sum() > num_examples:
    counts[np.argmax(counts)] -= 1
  return rng.permutation(np.repeat(np.arange(len(weights)), counts))


def encode_jpeg(frames: np.ndarray, quality: int) -> list[bytes]:
  """Encodes (t h w 3) uint8 RGB frames as one JPEG byte string per frame."""
  flags = [cv2.IMWRITE_JPEG_QUALITY, quality]
  encoded = []
  for frame in frames:
    ok, buffer = cv2.imencode('.jpg', np.ascontiguousarray(frame[..., ::-1]), flags)  # RGB->BGR
    if not ok:
      raise RuntimeError('JPEG encoding failed.')
    encoded.append(buffer.tobytes())
  return encoded
