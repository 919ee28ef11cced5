"""WAR/UAR/confusion matrix against hand-computed values."""

import numpy as np
import pytest

from feadapter_jax import metrics


def test_confusion_matrix_and_summary_by_hand():
  labels = np.array([0, 0, 0, 1, 1, 2])
  preds = np.array([0, 0, 1, 1, 2, 2])
  cm = metrics.confusion_matrix(labels, preds, 3)
  np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
  s = metrics.summarize(cm, ['a', 'b', 'c'])
  assert s['war'] == pytest.approx(4 / 6)
  assert s['uar'] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
  assert s['per_class_recall'] == pytest.approx({'a': 2 / 3, 'b': 0.5, 'c': 1.0})
  assert s['num_examples'] == 6


def test_a_class_without_examples_has_no_recall_and_is_left_out_of_uar():
  cm = metrics.confusion_matrix(np.array([0, 0, 2]), np.array([0, 1, 1]), 3)
  s = metrics.summarize(cm)
  assert s['per_class_recall']['1'] is None
  assert s['uar'] == pytest.approx((1 / 2 + 0) / 2)  # classes 0 and 2 only
  assert s['war'] == pytest.approx(1 / 3)


def test_out_of_range_labels_fail():
  with pytest.raises(ValueError, match='outside'):
    metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)


def test_confusion_png_is_written(tmp_path):
  path = tmp_path / 'cm.png'
  metrics.plot_confusion(np.array([[3, 1], [0, 2]]), ['x', 'y'], str(path), 'title')
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
