"""The simulated oracle: reveals the ground truth of acquired regions from the dataset's masks."""

from __future__ import annotations

import numpy as np

from s4al_ray import IGNORE_INDEX
from s4al_ray.data.io import load_mask
from s4al_ray.pool.state import PoolState, Selection


class SimulatedOracle:
    def __init__(self, mask_uris: dict[str, str], num_classes: int) -> None:
        self.mask_uris = mask_uris
        self.num_classes = num_classes

    def reveal(self, state: PoolState, selection: Selection) -> list[int]:
        """Class histogram of the pixels revealed by ``selection`` (ignore pixels not counted)."""
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for sample_id, regions in selection.items():
            if not regions:
                continue
            mask = load_mask(self.mask_uris[sample_id])
            revealed = mask[state.grid(sample_id).mask(regions)]
            counts += class_histogram(revealed, self.num_classes)
        return counts.tolist()


def class_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    valid = labels[labels != IGNORE_INDEX].astype(np.int64)
    return np.bincount(valid, minlength=num_classes)[:num_classes]
