"""mIoU against a hand-computed confusion matrix."""

from __future__ import annotations

import math

import numpy as np
import torch

from s4al_ray.evaluate import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy


def test_confusion_matrix_skips_ignore():
    target = torch.tensor([[0, 0, 1, 255], [2, 2, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 2], [2, 0, 1, 1]])
    expected = np.array([[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(pred, target, 3).numpy(), expected)


def test_iou_by_hand():
    confusion = np.array([[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    # class 0: tp 1, fp 1 (col) , fn 1 (row) -> 1/3; class 1: 3/(3+1+0) = 0.75; class 2: 1/2
    np.testing.assert_allclose(iou_per_class(confusion), [1 / 3, 0.75, 0.5])
    assert math.isclose(mean_iou(confusion), (1 / 3 + 0.75 + 0.5) / 3)
    assert math.isclose(pixel_accuracy(confusion), 5 / 7)


def test_absent_classes_are_excluded_not_zero():
    confusion = np.zeros((4, 4), dtype=np.int64)
    confusion[0, 0] = 10
    confusion[1, 1] = 5
    confusion[1, 0] = 5
    ious = iou_per_class(confusion)
    assert np.isnan(ious[2]) and np.isnan(ious[3])
    assert math.isclose(mean_iou(confusion), (10 / 15 + 5 / 10) / 2)
