"""Classification metrics as the FER papers report them: WAR, UAR, confusion matrix.

WAR (weighted average recall) is plain accuracy; UAR (unweighted average recall) is the mean
of per-class recalls, i.e. the mean of the diagonal of the row-normalised confusion matrix,
over the classes that have examples (a class absent from the labels has no recall).
"""

from __future__ import annotations

from typing import IO, Any, Sequence

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  """(num_classes, num_classes) counts; rows are true classes, columns predictions."""
  labels, preds = np.asarray(labels, np.int64), np.asarray(preds, np.int64)
  if labels.shape != preds.shape:
    raise ValueError(f'labels {labels.shape} and preds {preds.shape} differ in shape')
  bad = (labels < 0) | (labels >= num_classes) | (preds < 0) | (preds >= num_classes)
  if bad.any():
    raise ValueError(f'{bad.sum()} labels/predictions outside [0, {num_classes})')
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, preds), 1)
  return cm


def summarize(cm: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
  """WAR, UAR, per-class recall (None for classes without examples) from a confusion matrix."""
  cm = np.asarray(cm)
  support = cm.sum(axis=1)
  recall = [float(cm[i, i] / support[i]) if support[i] else None for i in range(len(cm))]
  present = [r for r in recall if r is not None]
  names = list(class_names) if class_names is not None else [str(i) for i in range(len(cm))]
  return {
      'war': float(np.trace(cm) / max(cm.sum(), 1)),
      'uar': float(np.mean(present)) if present else 0.0,
      'per_class_recall': dict(zip(names, recall)),
      'confusion_matrix': cm.tolist(),
      'class_names': names,
      'num_examples': int(cm.sum()),
  }


def plot_confusion(
    cm: np.ndarray, class_names: Sequence[str], path: str | IO[bytes], title: str = ''
) -> None:
  """Row-normalised confusion matrix as a PNG (counts in the cells), to a path or open file."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (plotting is optional at import)

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  cm = np.asarray(cm)
  norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(cm), 0.8 + 0.6 * len(cm)))
  ax.imshow(norm, cmap='Blues', vmin=0, vmax=1)
  for i in range(len(cm)):
    for j in range(len(cm)):
      ax.text(
          j,
          i,
          f'{cm[i, j]}',
          ha='center',
          va='center',
          color='white' if norm[i, j] > 0.5 else 'black',
          fontsize=8,
      )
  ax.set_xticks(range(len(cm)), class_names, rotation=45, ha='right')
  ax.set_yticks(range(len(cm)), class_names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
