"""Pseudo-labels: the threshold policy, its application and the share kept, from one integer rule.

The teacher stores its confidence per pixel as a uint8 *level* (``round(p * 255)``), so
thresholds can be chosen after inference without rerunning it. Every stage compares levels with
the same rule, :func:`threshold_levels`: a pixel is kept when ``level >= round(threshold * 255)``.
The student's targets (:func:`compose_target`, :func:`pseudo_targets`) and the "pseudo kept %"
the round table prints (:func:`kept_fraction`, counted exactly on a 256-level histogram) can
therefore never disagree.
"""

from __future__ import annotations

import numpy as np

from s4al_ray import IGNORE_INDEX

LEVELS = 256  # uint8 confidence levels
# Class-aware thresholds are chosen on coarse bins of confidence (the lower edge of the bin that
# holds the class's quantile): a conservative, stable choice on small pools.
POLICY_BINS = 20


def confidence_levels(confidence):
    """Confidence in [0, 1] (numpy array or torch tensor) -> uint8 levels, as the teacher stores
    them."""
    if isinstance(confidence, np.ndarray):
        return (confidence * 255.0).round().astype(np.uint8)
    import torch

    return (confidence * 255.0).round().to(torch.uint8)


def threshold_levels(thresholds) -> np.ndarray:
    """The lowest kept level of each class: ``round(threshold * 255)``."""
    return np.round(np.asarray(thresholds, dtype=np.float64) * 255.0).astype(np.int64)


def confidence_histogram(label: np.ndarray, level: np.ndarray, num_classes: int) -> np.ndarray:
    """(C * LEVELS,) counts of pixels per predicted class and confidence level."""
    return np.bincount(
        label.astype(np.int64).ravel() * LEVELS + level.astype(np.int64).ravel(),
        minlength=num_classes * LEVELS,
    )


def class_thresholds(
    hist: np.ndarray, threshold: float, class_aware: bool, quantile: float
) -> list[float]:
    """Per-class confidence thresholds from the pool's (C, LEVELS) histogram.

    Global: every class uses ``threshold``. Class-aware (the S4AL+ answer to the long tail): a
    class's threshold is the ``quantile`` of its own confidence distribution, capped by the global
    threshold, so a rare class the teacher is less sure about still keeps its most confident
    pseudo-labels instead of losing all of them.
    """
    num_classes = hist.shape[0]
    if not class_aware:
        return [float(threshold)] * num_classes
    coarse_bin = np.minimum(np.arange(LEVELS) * POLICY_BINS // LEVELS, POLICY_BINS - 1)
    out = []
    for counts in hist:
        coarse = np.bincount(coarse_bin, weights=counts, minlength=POLICY_BINS)
        total = coarse.sum()
        if total == 0:
            out.append(float(threshold))
            continue
        bin_index = int(np.searchsorted(np.cumsum(coarse) / total, quantile))
        out.append(float(min(threshold, bin_index / POLICY_BINS)))
    return out


def kept_fraction(hist: np.ndarray, thresholds: list[float]) -> float:
    """Share of pixels of the (C, LEVELS) histogram that :func:`compose_target` keeps."""
    levels = threshold_levels(thresholds)
    kept = sum(int(hist[c, max(levels[c], 0) :].sum()) for c in range(hist.shape[0]))
    return float(kept / max(int(hist.sum()), 1))


def compose_target(
    label: np.ndarray,
    level: np.ndarray,
    thresholds: list[float],
    truth: np.ndarray | None,
    known: np.ndarray | None,
) -> np.ndarray:
    """Pseudo-label where the teacher's confidence level passes its class threshold, ignore
    elsewhere; ground truth wherever it is known (acquired regions)."""
    limits = threshold_levels(thresholds)
    passed = level.astype(np.int64) >= limits[np.minimum(label, len(limits) - 1)]
    target = np.where(passed & (label < len(limits)), label, IGNORE_INDEX).astype(np.uint8)
    if truth is not None and known is not None:
        target[known] = truth[known]
    return target


def pseudo_targets(probs, thresholds: list[float], known):
    """The same rule on a batch of torch probabilities (B, C, H, W), for the mean-teacher
    baseline that labels every batch online: ignore below the class threshold, ``known`` (ground
    truth or IGNORE_INDEX) wherever it is set."""
    import torch

    confidence, label = probs.max(1)
    limits = torch.from_numpy(threshold_levels(thresholds)).to(label.device)[label]
    target = torch.where(
        confidence_levels(confidence).long() >= limits, label, torch.full_like(label, IGNORE_INDEX)
    )
    return torch.where(known != IGNORE_INDEX, known, target)
