"""Pseudo-label thresholds, training targets and the kept share: one integer rule."""

from __future__ import annotations

import numpy as np
import pytest

from s4al_ray import IGNORE_INDEX
from s4al_ray.pseudo_labels import (
    LEVELS,
    class_thresholds,
    compose_target,
    confidence_histogram,
    confidence_levels,
    kept_fraction,
    pseudo_targets,
)


def _hist(confidences_by_class: dict[int, list[float]], num_classes: int) -> np.ndarray:
    labels, confs = [], []
    for c, values in confidences_by_class.items():
        labels += [c] * len(values)
        confs += [round(v * 255) for v in values]
    hist = confidence_histogram(
        np.array(labels, dtype=np.uint8), np.array(confs, dtype=np.uint8), num_classes
    )
    return hist.reshape(num_classes, LEVELS)


def test_rare_class_keeps_pseudo_labels_a_global_threshold_drops():
    # class 0 (common) is confident, class 1 (rare) never reaches the global 0.7
    hist = _hist({0: [0.95] * 900 + [0.6] * 100, 1: [0.55, 0.6, 0.62, 0.65]}, 2)
    global_t = class_thresholds(hist, 0.7, class_aware=False, quantile=0.5)
    aware_t = class_thresholds(hist, 0.7, class_aware=True, quantile=0.5)
    assert global_t == [0.7, 0.7]
    assert aware_t[0] == 0.7  # capped by the global threshold
    assert aware_t[1] <= 0.6  # the rare class's own median confidence
    label = np.array([[1, 1, 0]], dtype=np.uint8)
    conf = np.array([[round(0.62 * 255), round(0.65 * 255), round(0.95 * 255)]], dtype=np.uint8)
    assert (compose_target(label, conf, global_t, None, None) == [[255, 255, 0]]).all()
    assert (compose_target(label, conf, aware_t, None, None) == [[1, 1, 0]]).all()


def test_class_without_predictions_gets_global_threshold():
    hist = _hist({0: [0.9]}, 3)
    assert class_thresholds(hist, 0.8, True, 0.5)[1:] == [0.8, 0.8]


def test_known_pixels_override_pseudo_labels():
    label = np.zeros((2, 3), dtype=np.uint8)
    conf = np.full((2, 3), 50, dtype=np.uint8)  # all below threshold -> ignore
    truth = np.full((2, 3), 2, dtype=np.uint8)
    known = np.array([[True, False, False], [False, False, True]])
    target = compose_target(label, conf, [0.7, 0.7, 0.7], truth, known)
    assert target.tolist() == [[2, 255, 255], [255, 255, 2]]


def test_histogram_counts_every_pixel():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (16, 16)).astype(np.uint8)
    conf = rng.integers(0, 256, (16, 16)).astype(np.uint8)
    hist = confidence_histogram(label, conf, 4).reshape(4, LEVELS)
    assert hist.sum() == 256
    assert hist.sum(1).tolist() == np.bincount(label.ravel(), minlength=4).tolist()


@pytest.mark.parametrize("class_aware", [False, True])
def test_printed_kept_share_is_the_share_trained_on(class_aware):
    """The round table's "pseudo kept %" (from the pool histogram) equals the share of pixels
    whose training target is a pseudo-label, at every threshold, including the levels where a
    float rule and an integer rule disagree (0.7 -> level 178.5, rounded to 178)."""
    rng = np.random.default_rng(1)
    images = [
        (
            rng.integers(0, 3, (20, 24)).astype(np.uint8),
            rng.integers(150, 256, (20, 24)).astype(np.uint8),
        )
        for _ in range(6)
    ]
    hist = sum(confidence_histogram(label, level, 3) for label, level in images).reshape(3, LEVELS)
    for threshold in (0.7, 0.72, 0.9):
        thresholds = class_thresholds(hist, threshold, class_aware, 0.5)
        targets = [compose_target(label, level, thresholds, None, None) for label, level in images]
        trained = np.mean(np.concatenate([t.ravel() for t in targets]) != IGNORE_INDEX)
        assert kept_fraction(hist, thresholds) == pytest.approx(trained, abs=1e-12)


def test_online_targets_follow_the_same_rule():
    """The mean teacher's torch rule keeps exactly the pixels the offline rule keeps."""
    import torch

    probs = torch.softmax(
        torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(0)) * 3, dim=1
    )
    known = torch.full((2, 6, 7), IGNORE_INDEX, dtype=torch.long)
    thresholds = [0.7, 0.55, 0.9]
    online = pseudo_targets(probs, thresholds, known)
    confidence, label = probs.max(1)
    offline = [
        compose_target(
            label[i].numpy().astype(np.uint8),
            confidence_levels(confidence[i].numpy()),
            thresholds,
            None,
            None,
        )
        for i in range(2)
    ]
    assert online.numpy().tolist() == np.stack(offline).astype(np.int64).tolist()


def test_mean_teacher_batch_keeps_known_pixels_and_ignores_unsure():
    import torch

    from s4al_ray.mean_teacher import mean_teacher_batch

    class Fixed(torch.nn.Module):
        """A 'teacher' that is sure of class 1 on the left half and unsure on the right."""

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            logits = torch.zeros(x.shape[0], 3, *x.shape[-2:])
            logits[:, 1, :, : x.shape[-1] // 2] = 10.0
            return {"logits": logits}

    images = torch.rand(2, 3, 8, 8)
    known = torch.full((2, 8, 8), 255, dtype=torch.long)
    known[:, 0, 7] = 2  # one acquired pixel on the unsure side
    generator = torch.Generator().manual_seed(0)
    _, targets = mean_teacher_batch(Fixed(), images, known, [0.7, 0.7, 0.7], (8, 8), generator)
    values = set(torch.unique(targets).tolist())
    assert values <= {1, 2, 255} and 1 in values
    assert (targets == 2).sum() <= 2  # only the acquired pixels carry class 2
