r"""FE-Adapter against its peers on one frozen image classifier: one table and one figure.

  python -m feadapter_jax.experiments.compare --config=configs/synthetic.py[:args] \
      --workdir=workdirs/compare [--seeds=0,1,2] [--methods=fe_adapter,aim] [--budget=STEPS] \
      [--image_config=configs/synthetic_image.py[:args]] [--docs_dir=docs] \
      [--config.field=value ...] [--image_config.field=value ...]

1. Pre-trains the image classifier once (`--image_config`, in WORKDIR/image), or reuses it when
   that run has finished, so every method adapts the SAME frozen backbone (WORKDIR/image/export).
   `--config.init.checkpoint=DIR` names another backbone directory instead (a converted one, or
   a training run's export/), and nothing is pre-trained.
2. Trains every method x seed from the video config read with the args
   'method=M,seed=S,init=BACKBONE' added to those after ':', and its `--config.field`
   overrides, for the same number of steps (`--budget`), evaluating once at the end, in
   WORKDIR/<method>/seed<S>. The architecture and the input normalisation come from the
   backbone (`models/backbone.py`), so `--image_config.model.width=32` narrows every run.
3. Writes WORKDIR/results.md (table + what it shows, generated from the numbers and checked
   against the variant's `TARGETS`) and WORKDIR/accuracy_vs_params.png (UAR against trainable
   parameters, the paper's Figure 1), and copies both to `--docs_dir` when given. On the hard
   variants they are results_<variant>.md and accuracy_vs_params_<variant>.png.

WORKDIR and `--docs_dir` may be local or URIs (gs://bucket/compare): they are read and written
through `etils.epath`.

Resumable: a killed comparison, rerun with the same flags, reads finished runs from their
results.json and lets `train.train_and_evaluate` resume the unfinished one from its checkpoint.

Train clips/s is `batch_size` x the median of the steps/s that clu's ReportProgress logs to the
run's TensorBoard events every `log_every_steps` (wall time between two reports, so compilation,
which happens before the first report, and the final evaluation are left out).
"""

from __future__ import annotations

from feadapter_jax import cli  # pylint: disable=g-bad-import-order  (first: quiets TensorFlow)

import dataclasses  # pylint: disable=g-import-not-at-top,g-bad-import-order
import json
import os
from typing import Any, Callable, Mapping, Sequence

from absl import app
from absl import flags
from etils import epath
import jax
import matplotlib
import matplotlib.transforms
import ml_collections
import numpy as np
import tensorflow as tf
from tensorflow.core.util import event_pb2

from feadapter_jax import methods as methods_lib
from feadapter_jax import train
from feadapter_jax import workdir as workdir_lib
from feadapter_jax.data.synth_fer import builder as synth_builder
from feadapter_jax.data.synth_fer import render as synth_render
from feadapter_jax.models import backbone as backbone_lib
from feadapter_jax.models import builder

METHODS = tuple(methods_lib.METHODS)
TABLE_FILE = 'results.md'
FIGURE_FILE = 'accuracy_vs_params.png'
IMAGE_DIR = 'image'
REQUEST_FILE = 'compare_config.json'
PAIR_CHANCE, PAIR_CHANCE_TOLERANCE = 0.5, 0.1
MAX_FRACTION_OF_FULL = 0.1
DEFAULT_SEEDS = (0, 1, 2)
MAX_BUBBLE_AREA_PT2, MIN_BUBBLE_AREA_PT2 = 2500, 30
# Vertical offsets (points) of a bubble's label, tried in turn (right of it, then left) until the
# label covers no other label or bubble.
LABEL_OFFSETS_PT = (0, 12, -12, 24, -24, 36, -36, 48, -48, 60, -60, 72, -72)
# 250 steps (about 6 epochs of SynthFER) x 6 methods x 3 seeds + the image pre-training: about
# 35 minutes on 2 CPU cores, FE-Adapter's runs (the slowest step) a third of it.
DEFAULT_BUDGET_STEPS = 250
DEFAULT_IMAGE_CONFIG = 'configs/synthetic_image.py'


def method_label(method: str) -> str:
  return methods_lib.get(method).label


@dataclasses.dataclass(frozen=True)
class Targets:
  """What a comparison on a SynthFER variant is expected to show; results.md says whether the
  numbers do. None: reported, no target.

  Attributes:
    fe_uar: FE-Adapter's UAR, at least.
    fe_pair: FE-Adapter's accuracy on the time-reversed pairs, at least.
    probe_uar: the linear probe's UAR, at most (a benchmark that frame averaging cannot solve).
    st_gap_stds: FE-Adapter's UAR above ST-Adapter's by more than this many seed stds of the
      difference.
  """

  fe_uar: float
  fe_pair: float | None = None
  probe_uar: float | None = None
  st_gap_stds: float | None = None


# By SynthFER variant: the quick demo, where every temporal adapter should solve the task, and the
# benchmark that separates methods.
TARGETS = {
    'video': Targets(fe_uar=0.9, fe_pair=0.9),
    'hard': Targets(fe_uar=0.75, probe_uar=0.45, st_gap_stds=2.0),
    'hard_mafw': Targets(fe_uar=0.75, probe_uar=0.45, st_gap_stds=2.0),
}


@dataclasses.dataclass(frozen=True)
class Setting:
  """The benchmark a comparison runs on.

  Attributes:
    variant: the SynthFER variant (`synth_fer.builder.VARIANTS`).
    class_names: its classes, in label order.
    pairs: its (onset, offset) classes that share an apex and differ only by the direction of time.
    targets: what the comparison is expected to show.
  """

  variant: str
  class_names: tuple[str, ...]
  pairs: tuple[tuple[str, str], ...]
  targets: Targets

  @property
  def pair_names(self) -> str:
    return ', '.join('/'.join(p) for p in self.pairs)

  @property
  def time_blind_ceiling(self) -> str:
    """The best UAR of a model blind to time, which at best gets one class of each pair."""
    k, n = len(self.class_names), len(self.pairs)
    return f'{k - n}/{k} = {100 * (k - n) / k:.1f}%'

  def file_name(self, name: str) -> str:
    """An output file's name: 'results.md' on the quick demo, 'results_hard.md' on `hard`."""
    if self.variant == 'video':
      return name
    stem, ext = os.path.splitext(name)
    return f'{stem}_{self.variant}{ext}'


def setting_of(config: ml_collections.ConfigDict) -> Setting:
  """The benchmark of a SynthFER video config."""
  variant = config.data.builder_config
  if variant not in TARGETS:
    raise ValueError(
        f'config.data.builder_config={variant!r}: compare runs on the SynthFER variants '
        f'{", ".join(TARGETS)}.'
    )
  synth = synth_builder.synth_config(variant, **config.data.synth)
  pairs = synth_render.reversed_pairs(synth.class_names, synth.render.time_reversed)
  return Setting(variant, synth.class_names, pairs, TARGETS[variant])


VIDEO = Setting(
    'video',
    synth_render.CLASS_NAMES,
    synth_render.reversed_pairs(
        synth_render.CLASS_NAMES, synth_render.RenderParams().time_reversed
    ),
    TARGETS['video'],
)


def pair_accuracy(
    confusion: Any,
    class_names: Sequence[str],
    pairs: Sequence[Sequence[str]] = VIDEO.pairs,
) -> float:
  """Accuracy over the clips of the `pairs`' classes: right class (of all classes) / clips."""
  cm = np.asarray(confusion)
  idx = [list(class_names).index(name) for pair in pairs for name in pair]
  return float(sum(cm[i, i] for i in idx) / cm[idx].sum())


def clips_per_second(run_dir: str | os.PathLike[str], batch_size: int) -> float:
  """`batch_size` x the median logged steps/s over the run's event files (NaN if none)."""
  steps_per_s = []
  for path in epath.Path(run_dir).glob('events.out.tfevents.*'):
    for record in tf.data.TFRecordDataset(os.fspath(path)):
      event = event_pb2.Event.FromString(record.numpy())
      steps_per_s += [
          float(tf.make_ndarray(v.tensor)) for v in event.summary.value if v.tag == 'steps_per_sec'
      ]
  return batch_size * float(np.median(steps_per_s)) if steps_per_s else float('nan')


def num_params(config: ml_collections.ConfigDict) -> int:
  """Parameters of the model `config` builds on its backbone (shapes only, nothing allocated)."""
  config = backbone_lib.resolve(config)
  shapes = builder.param_shapes(builder.build_model(config), builder.clip_shape(config))
  return sum(leaf.size for leaf in jax.tree.leaves(shapes))


@dataclasses.dataclass
class Plan:
  """What to run: config files with their args and overrides, methods, seeds, step budget.

  Attributes:
    config: the video config, 'path.py[:args]'; must take method, seed and init args.
    workdir: parent directory of every run.
    methods, seeds: the runs, one per pair.
    budget_steps: training steps of every video run.
    overrides: {'field': value} set in every video config (`--config.field=value`);
      'init.checkpoint' names the backbone, which is then not pre-trained.
    image_config: the image pre-training config, 'path.py[:args]'.
    image_overrides: {'field': value} set in the image config (`--image_config.field=value`).
    docs_dir: also copy the table and figure here.
  """

  config: str
  workdir: str
  methods: Sequence[str] = METHODS
  seeds: Sequence[int] = DEFAULT_SEEDS
  budget_steps: int = DEFAULT_BUDGET_STEPS
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  image_config: str = DEFAULT_IMAGE_CONFIG
  image_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  docs_dir: str = ''

  def command(self, program: str = 'python -m feadapter_jax.experiments.compare') -> str:
    """The command line of `program` that reproduces this plan (defaults left out)."""
    flags_ = [
        f'--config={self.config}',
        f'--workdir={self.workdir}',
        f'--seeds={",".join(map(str, self.seeds))}',
        f'--budget={self.budget_steps}',
    ]
    if tuple(self.methods) != METHODS:
      flags_.append(f'--methods={",".join(self.methods)}')
    if self.image_config != DEFAULT_IMAGE_CONFIG:
      flags_.append(f'--image_config={self.image_config}')
    flags_ += [f"'--config.{k}={v}'" for k, v in self.overrides.items()]
    flags_ += [f"'--image_config.{k}={v}'" for k, v in self.image_overrides.items()]
    if self.docs_dir:
      flags_.append(f'--docs_dir={self.docs_dir}')
    return ' '.join([program, *flags_])

  @property
  def pretrains(self) -> bool:
    """Whether the comparison pre-trains its backbone (no `init.checkpoint` override)."""
    return not self.overrides.get('init.checkpoint')

  @property
  def backbone(self) -> str:
    if not self.pretrains:
      return self.overrides['init.checkpoint']
    return os.fspath(epath.Path(self.workdir) / IMAGE_DIR / workdir_lib.EXPORT_DIR)

  def image_run(self) -> ml_collections.ConfigDict:
    return cli.load_config(self.image_config, self.image_overrides)

  def video_run(self, method: str, seed: int) -> ml_collections.ConfigDict:
    spec = cli.with_args(self.config, f'method={method}', f'seed={seed}', f'init={self.backbone}')
    config = cli.load_config(spec, self.overrides)
    config.total_steps = self.budget_steps
    # One evaluation, after the last step: every method is scored at the same point.
    config.eval_every_steps = self.budget_steps
    return config


def train_or_read(
    config: ml_collections.ConfigDict, run_dir: str | os.PathLike[str]
) -> dict[str, Any] | None:
  """The run's results: read when finished, else trained (resuming); None when preempted.

  Raises:
    ValueError: run_dir holds a run of another config (a changed budget, override or arg).
  """
  # The config as this comparison asks for it (the trainer's own config.json rewrites paths).
  directory = epath.Path(run_dir)
  requested = directory / REQUEST_FILE
  wanted = json.loads(config.to_json_best_effort())
  if requested.exists():
    if json.loads(requested.read_text()) != wanted:
      raise ValueError(
          f"{run_dir} holds a run of another config than this comparison's "
          f'(compare {requested}): rerun with the flags it was started with, or '
          'use a new --workdir.'
      )
  else:
    directory.mkdir(parents=True, exist_ok=True)
    requested.write_text(json.dumps(wanted, indent=2))
  done = directory / workdir_lib.RESULTS_FILE
  if not done.exists():
    print(f'== {config.method} seed {config.seed} -> {run_dir}', flush=True)
    if train.train_and_evaluate(config, os.fspath(directory)).get('preempted'):
      return None
  return json.loads(done.read_text())


@dataclasses.dataclass
class Runs:
  """The image pre-training's results (None when the backbone was given) and
  {method: [results per seed]} of the video runs."""

  image: dict[str, Any] | None
  video: dict[str, list[dict[str, Any]]]


def run_all(plan: Plan) -> Runs | None:
  """Trains (or reads) every run; adds pair accuracy and clips/s. None when preempted."""
  if unknown := sorted(set(plan.methods) - set(METHODS)):
    raise ValueError(f'Unknown methods {unknown}; known: {list(METHODS)}')
  image = None
  if plan.pretrains:
    image = train_or_read(plan.image_run(), epath.Path(plan.workdir) / IMAGE_DIR)
    if image is None:
      return None
  video = {}
  pairs = setting_of(plan.video_run(plan.methods[0], plan.seeds[0])).pairs
  for method in plan.methods:
    video[method] = []
    for seed in plan.seeds:
      config = plan.video_run(method, seed)
      run_dir = epath.Path(plan.workdir) / method / f'seed{seed}'
      results = train_or_read(config, run_dir)
      if results is None:
        return None
      results['pair_accuracy'] = pair_accuracy(
          results['confusion_matrix'], results['class_names'], pairs
      )
      results['clips_per_s'] = clips_per_second(run_dir, config.batch_size)
      video[method].append(results)
  return Runs(image, video)


@dataclasses.dataclass
class Row:
  """One method over its seeds: accuracies as (mean, std) fractions, std with ddof=1."""

  method: str
  trainable_params: int
  fraction_of_full: float
  uar: tuple[float, float]
  war: tuple[float, float]
  pair: tuple[float, float]
  clips_per_s: float


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  # Sample std: three seeds estimate the seed noise; a single seed shows none.
  return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else 0.0)


def summarize(runs: dict[str, list[dict[str, Any]]], full_params: int) -> list[Row]:
  """One row per method; `full_params` is what full fine-tuning trains."""
  rows = []
  for method, seeds in runs.items():
    trainable = seeds[0]['trainable_params']
    rows.append(
        Row(
            method=method,
            trainable_params=trainable,
            fraction_of_full=trainable / full_params,
            uar=mean_std([r['uar'] for r in seeds]),
            war=mean_std([r['war'] for r in seeds]),
            pair=mean_std([r['pair_accuracy'] for r in seeds]),
            clips_per_s=float(np.mean([r['clips_per_s'] for r in seeds])),
        )
    )
  return rows


def pct(mean_std: tuple[float, float]) -> str:
  return f'{100 * mean_std[0]:.1f} +- {100 * mean_std[1]:.1f}'


def table(rows: Sequence[Row], setting: Setting = VIDEO) -> str:
  """The markdown table: one row per method, accuracies in % (mean +- std over seeds)."""
  lines = [
      '| method | trainable params | % of full FT | UAR (%) | WAR (%) | '
      f'{setting.pair_names} accuracy (%) | train clips/s |',
      '|---|---:|---:|---:|---:|---:|---:|',
  ]
  for r in rows:
    lines.append(
        f'| {method_label(r.method)} | {r.trainable_params:,} | '
        f'{100 * r.fraction_of_full:.2f} | {pct(r.uar)} | {pct(r.war)} | '
        f'{pct(r.pair)} | {r.clips_per_s:.1f} |'
    )
  return '\n'.join(lines)


def per_seed_table(
    runs: dict[str, list[dict[str, Any]]], seeds: Sequence[int], setting: Setting = VIDEO
) -> str:
  """The markdown table of every run: one row per method and seed."""
  lines = [
      '| method | seed | UAR (%) | WAR (%) | '
      f'{setting.pair_names} accuracy (%) | train clips/s |',
      '|---|---:|---:|---:|---:|---:|',
  ]
  for method, results in runs.items():
    for seed, r in zip(seeds, results):
      lines.append(
          f'| {method_label(method)} | {seed} | {100 * r["uar"]:.1f} | '
          f'{100 * r["war"]:.1f} | {100 * r["pair_accuracy"]:.1f} | '
          f'{r["clips_per_s"]:.1f} |'
      )
  return '\n'.join(lines)


def _versus(a: Row, b: Row) -> tuple[float, float, str]:
  """(UAR of a - UAR of b, the seed std of that difference, 'above' | 'within seed noise of' |
  'below')."""
  diff = a.uar[0] - b.uar[0]
  noise = float(np.hypot(a.uar[1], b.uar[1]))
  verdict = 'above' if diff > noise else 'within seed noise of' if diff >= -noise else 'below'
  return diff, noise, verdict


def _meets(ok: bool) -> str:
  return 'meets' if ok else 'misses'


def findings(rows: Sequence[Row], setting: Setting = VIDEO) -> str:
  """What the numbers show, sentence by sentence, each claim checked against its target."""
  by = {r.method: r for r in rows}
  targets = setting.targets
  pairs = [' vs '.join(p) for p in setting.pairs]
  pairs = ', '.join(pairs[:-1]) + ' and ' + pairs[-1] if len(pairs) > 1 else pairs[0]
  what = (
      'the two classes that differ only by the direction of time'
      if len(setting.pairs) == 1
      else f'the {len(setting.pairs)} pairs of classes that differ only by the direction of time'
  )
  ceiling = setting.time_blind_ceiling
  out = []
  fe = by.get('fe_adapter')
  if fe:
    pair_target = (
        f' ({_meets(fe.pair[0] >= targets.fe_pair)} the {100 * targets.fe_pair:.0f}% target)'
        if targets.fe_pair is not None
        else ''
    )
    out.append(
        f'FE-Adapter reaches {pct(fe.uar)}% UAR ({_meets(fe.uar[0] >= targets.fe_uar)} the '
        f'{100 * targets.fe_uar:.0f}% target) and separates {pairs}, {what}, at '
        f'{pct(fe.pair)}%{pair_target}.'
    )
  lp = by.get('linear_probe')
  if lp:
    near = abs(lp.pair[0] - PAIR_CHANCE) <= PAIR_CHANCE_TOLERANCE
    why = ', as their frames, taken as a set, have the same distribution' if near else ''
    uar_target = (
        f' ({_meets(lp.uar[0] <= targets.probe_uar)} the target of at most '
        f'{100 * targets.probe_uar:.0f}%)'
        if targets.probe_uar is not None
        else ''
    )
    out.append(
        f'The linear probe, which averages the frozen image features over frames, '
        f'gets {pct(lp.pair)}% on {"that pair" if len(setting.pairs) == 1 else "those pairs"}: '
        f'{"near" if near else "not near"} chance '
        f'({100 * PAIR_CHANCE:.0f}% +- {100 * PAIR_CHANCE_TOLERANCE:.0f}){why}; its UAR '
        f'is {pct(lp.uar)}%{uar_target}, where a model blind to time tops out at {ceiling}.'
    )
  full = by.get('full_finetune')
  if fe and full:
    diff, noise, verdict = _versus(fe, full)
    small = fe.fraction_of_full <= MAX_FRACTION_OF_FULL
    out.append(
        f'FE-Adapter trains {100 * fe.fraction_of_full:.2f}% of the parameters full '
        f'fine-tuning trains ({"within" if small else "over"} the '
        f'{100 * MAX_FRACTION_OF_FULL:.0f}% target) and its UAR is '
        f"{100 * diff:+.1f} points from full fine-tuning's, against a seed std of the "
        f'difference of {100 * noise:.1f} points: {verdict} full fine-tuning, which '
        f'also processes frames one by one and is bound by the same {ceiling}.'
    )
  peers = [by[m] for m in ('st_adapter', 'aim') if m in by]
  if fe and peers:
    best = max(peers, key=lambda r: r.uar[0])
    diff, noise, verdict = _versus(fe, best)
    out.append(
        f'Of the other adapters, {method_label(best.method)} does best, {pct(best.uar)}% '
        f"with {best.trainable_params / fe.trainable_params:.2f}x FE-Adapter's trainable "
        f'parameters: FE-Adapter is {verdict} it ({100 * diff:+.1f} points, seed std '
        f'{100 * noise:.1f}).'
    )
  st = by.get('st_adapter')
  if fe and st and targets.st_gap_stds is not None:
    diff, noise, _ = _versus(fe, st)
    needed = targets.st_gap_stds * noise
    out.append(
        f"FE-Adapter's UAR is {100 * diff:+.1f} points from ST-Adapter's "
        f'({_meets(diff > needed)} the target of more than {targets.st_gap_stds:g} seed stds '
        f'of the difference, {100 * needed:.1f} points).'
    )
  if fe and full:
    speed = (
        f'FE-Adapter trains at {fe.clips_per_s:.0f} clips/s, '
        f"{fe.clips_per_s / full.clips_per_s:.2f}x full fine-tuning's "
        f'{full.clips_per_s:.0f}'
    )
    st = by.get('st_adapter')
    if st and fe.clips_per_s < st.clips_per_s:
      speed += (
          f", and {fe.clips_per_s / st.clips_per_s:.2f}x ST-Adapter's "
          f'{st.clips_per_s:.0f} (same place in the block, a fixed temporal conv): its '
          'per-location dynamic dilated 3D conv costs compute, not parameters'
      )
    out.append(speed + '.')
  return ' '.join(out)


def _place_labels(
    ax: Any, points: Sequence[tuple[float, float]], radii_pt: Sequence[float], texts: Sequence[str]
) -> None:
  """Labels beside their bubbles (right, else left), moved up or down until each lies inside the
  axes and covers no other label or bubble; the first place is the fallback."""
  renderer = ax.figure.canvas.get_renderer()
  px_per_pt = ax.figure.dpi / 72
  inside = ax.get_window_extent(renderer)
  bubbles = [
      matplotlib.transforms.Bbox.from_bounds(
          cx - r * px_per_pt, cy - r * px_per_pt, 2 * r * px_per_pt, 2 * r * px_per_pt
      )
      for (cx, cy), r in zip(ax.transData.transform(points), radii_pt)
  ]
  places = [(side, dy) for side in (1, -1) for dy in LABEL_OFFSETS_PT]
  placed = []
  for i, ((x, y), r, text) in enumerate(zip(points, radii_pt, texts)):
    obstacles = placed + bubbles[:i] + bubbles[i + 1 :]

    def label(place, x=x, y=y, r=r, text=text):
      side, dy = place
      return ax.annotate(
          text,
          (x, y),
          xytext=(side * (r + 4), dy),
          textcoords='offset points',
          fontsize=8,
          va='center',
          ha='left' if side > 0 else 'right',
      )

    def free(place):
      trial = label(place)
      box = trial.get_window_extent(renderer)
      trial.remove()
      return (
          inside.containsx(box.x0)
          and inside.containsx(box.x1)
          and inside.containsy(box.y0)
          and inside.containsy(box.y1)
          and not any(box.overlaps(other) for other in obstacles)
      )

    side, dy = next(filter(free, places), places[0])
    placed.append(label((side, dy)).get_window_extent(renderer))
    if dy:  # a leader line from a moved label to its bubble
      ax.annotate(
          '',
          (x, y),
          xytext=(side * (r + 4), dy),
          textcoords='offset points',
          arrowprops=dict(arrowstyle='-', lw=0.5, color='0.4'),
      )


def plot(rows: Sequence[Row], path: str | os.PathLike[str], title: str) -> None:
  """Bubble chart: x = trainable parameters (log), y = UAR +- seed std, area ~ parameters."""
  matplotlib.use('Agg')  # files only, also without a display
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  (after the backend)

  params = np.array([r.trainable_params for r in rows], np.float64)
  uar = np.array([100 * r.uar[0] for r in rows])
  std = np.array([100 * r.uar[1] for r in rows])
  # Area proportional to parameters; the floor keeps the smallest (a head alone) visible.
  area = np.maximum(MAX_BUBBLE_AREA_PT2 * params / params.max(), MIN_BUBBLE_AREA_PT2)
  colours = ['tab:red' if r.method.startswith('fe_') else 'tab:blue' for r in rows]
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  ax.scatter(params, uar, s=area, c=colours, alpha=0.45, edgecolors='k', linewidths=0.8, zorder=2)
  ax.errorbar(params, uar, yerr=std, fmt='none', ecolor='k', capsize=3, zorder=3)
  ax.set_xscale('log')
  ax.set_xlim(params.min() / 3, params.max() * 6)
  ax.set_ylim(max(min(uar.min() - std.max(), 100) - 10, 0), 105)
  ax.set_xlabel('trainable parameters (log scale; bubble area proportional)')
  ax.set_ylabel('UAR (%), mean +- std over seeds')
  ax.set_title(title, fontsize=10)
  ax.grid(True, which='major', alpha=0.3)
  fig.tight_layout()
  _place_labels(
      ax,
      list(zip(params, uar)),
      np.sqrt(area / np.pi),
      [f'{method_label(r.method)} ({r.trainable_params:,})' for r in rows],
  )
  # Through epath, which matplotlib does not know: a PNG into the opened file.
  with epath.Path(path).open('wb') as f:
    fig.savefig(f, format='png', dpi=120)
  plt.close(fig)


def report(plan: Plan, runs: Runs) -> list[Row]:
  """Writes WORKDIR/results[_variant].md and WORKDIR/accuracy_vs_params[_variant].png; returns
  the rows."""
  rows = summarize(runs.video, num_params(plan.video_run('full_finetune', plan.seeds[0])))
  video = backbone_lib.resolve(plan.video_run(plan.methods[0], plan.seeds[0]))
  setting = setting_of(video)
  synth = video.data.synth
  pairs = setting.pair_names
  origin = (
      f'pre-trained on single apex frames ({100 * runs.image["uar"]:.1f}% UAR on images, '
      f'where {"/".join(synth_render.TIME_REVERSED_PAIR)} is ambiguous)'
      if runs.image
      else f'from {plan.backbone}'
  )
  num_classes = len(setting.class_names)
  setup = (
      f'SynthFER `{setting.variant}` ({synth.num_train} train / {synth.num_test} test clips of '
      f'{synth.num_frames} frames at {synth.resolution}x{synth.resolution}, {num_classes} '
      f'classes): {synth_builder.DESCRIPTIONS[setting.variant]} Every method adapts the same frozen image classifier (ViT width '
      f'{video.model.width}, depth {video.model.depth}) {origin} and '
      f"trains {plan.budget_steps} steps of batch {video.batch_size} with its config's "
      f'learning rate; seeds {", ".join(map(str, plan.seeds))} set the initialisation, '
      'data order and augmentation. Accuracies are on the test split after the last step, '
      f'mean +- std over seeds. {pairs} accuracy: clips of these time-reversed classes '
      f'predicted as their own class (of all {num_classes}), over those clips; chance between '
      'the two of a pair is 50%. Train clips/s: batch size x the median steps/s logged during '
      'training (compilation and evaluation excluded), mean over seeds, on a CPU shared with '
      'whatever else ran.'
  )
  figure = setting.file_name(FIGURE_FILE)
  text = '\n\n'.join(
      [
          f'# FE-Adapter and its peers on SynthFER `{setting.variant}`',
          setup,
          table(rows, setting),
          '**What it shows.** ' + findings(rows, setting),
          f'![UAR against trainable parameters]({figure})',
          '## Per seed',
          per_seed_table(runs.video, plan.seeds, setting),
          f'Generated by `{plan.command()}`.',
      ]
  )
  workdir = epath.Path(plan.workdir)
  (workdir / setting.file_name(TABLE_FILE)).write_text(text + '\n')
  seeds = f'{len(plan.seeds)} seed{"s" if len(plan.seeds) > 1 else ""}'
  plot(
      rows,
      workdir / figure,
      f'SynthFER {setting.variant}: UAR against trainable parameters ({seeds}, '
      f'{plan.budget_steps} steps each)',
  )
  return rows


def run(plan: Plan) -> list[Row] | None:
  """Runs the comparison and writes its table and figure; None when preempted (rerun)."""
  runs = run_all(plan)
  if runs is None:
    print('Comparison preempted: rerun the same command to resume.', flush=True)
    return None
  rows = report(plan, runs)
  setting = setting_of(plan.video_run(plan.methods[0], plan.seeds[0]))
  print(table(rows, setting) + '\n\n' + findings(rows, setting), flush=True)
  if plan.docs_dir:
    docs_dir = epath.Path(plan.docs_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)
    for name in (setting.file_name(TABLE_FILE), setting.file_name(FIGURE_FILE)):
      (epath.Path(plan.workdir) / name).copy(docs_dir / name, overwrite=True)
  return rows


def define_plan_flags(
    default_config: str, default_methods: Sequence[str], what: str
) -> Callable[[], Plan]:
  """Defines the flags of a driver that runs a `Plan` (compare, ablate); returns the function
  that reads them into one, after the flags are parsed. `what` names the driver's output."""
  config = cli.define_config(
      'config',
      default_config,
      'Video config file with method, seed and init args, `path.py[:args]`; override fields '
      'with `--config.field=value`.',
  )
  image_config = cli.define_config(
      'image_config',
      DEFAULT_IMAGE_CONFIG,
      'Config that pre-trains the image classifier; override fields with '
      '`--image_config.field=value`.',
  )
  workdir = flags.DEFINE_string('workdir', None, 'Parent directory of all runs.', required=True)
  methods = flags.DEFINE_list('methods', list(default_methods), 'Methods to run.')
  seeds = flags.DEFINE_list('seeds', list(map(str, DEFAULT_SEEDS)), 'Seeds per method.')
  budget = flags.DEFINE_integer('budget', DEFAULT_BUDGET_STEPS, 'Training steps of every run.')
  docs_dir = flags.DEFINE_string('docs_dir', '', f'Also copy {what} here.')

  def plan() -> Plan:
    return Plan(
        config=cli.config_spec(config),
        workdir=workdir.value,
        methods=methods.value,
        seeds=[int(s) for s in seeds.value],
        budget_steps=budget.value,
        overrides=cli.config_overrides(config),
        image_config=cli.config_spec(image_config),
        image_overrides=cli.config_overrides(image_config),
        docs_dir=docs_dir.value,
    )

  return plan


def main(argv) -> None:
  del argv
  cli.start()
  run(_PLAN())


if __name__ == '__main__':
  # Flags only when run as a program: importing this module (tests) defines none.
  _PLAN = define_plan_flags('configs/synthetic.py', METHODS, 'the table and figure')
  app.run(main)
