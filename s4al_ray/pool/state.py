"""The pool state and its rules, as a plain object (the actor in ``actor.py`` owns the one copy).

Invariants kept by :meth:`PoolState.commit`: fully labeled images and pool images are disjoint,
a region is acquired at most once, a round is committed at most once (a repeat with the same
selection is a no-op, so retried commits are harmless), and the pixel ledger equals the true size
of the regions revealed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from s4al_ray.regions import RegionGrid

STATE_VERSION = 1
Selection = dict[str, list[int]]


def selection_digest(selection: Selection) -> str:
    canonical = json.dumps({k: sorted(map(int, v)) for k, v in sorted(selection.items()) if v})
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass
class PoolState:
    region_size: int
    num_classes: int
    sizes: dict[str, list[int]]  # every train image: [height, width]
    labeled: list[str]  # fully labeled from the start
    initial_class_pixels: list[int] = field(default_factory=list)  # of the labeled images
    ledger: list[dict] = field(default_factory=list)  # one entry per committed round
    version: int = STATE_VERSION

    def __post_init__(self) -> None:
        unknown = set(self.labeled) - set(self.sizes)
        if unknown:
            raise ValueError(f"labeled ids not in the train split: {sorted(unknown)[:5]}")
        if not self.initial_class_pixels:
            self.initial_class_pixels = [0] * self.num_classes

    def before(self, round_index: int) -> "PoolState":
        """The state as round ``round_index`` saw it: only commits of earlier rounds. A resumed
        round therefore recomputes exactly what it computed the first time."""
        return replace(self, ledger=[e for e in self.ledger if e["round"] < round_index])

    def with_entry(self, entry: dict) -> "PoolState":
        """This state with one more committed round (a ledger entry the actor returned)."""
        return replace(self, ledger=[*self.ledger, entry])

    @property
    def acquired(self) -> dict[str, list[int]]:
        """sample_id -> acquired region indices, derived from the ledger."""
        merged: dict[str, set[int]] = {}
        for entry in self.ledger:
            for sample_id, regions in entry["selection"].items():
                merged.setdefault(sample_id, set()).update(regions)
        return {k: sorted(v) for k, v in merged.items() if v}

    @property
    def labeled_class_pixels(self) -> list[int]:
        counts = np.asarray(self.initial_class_pixels, dtype=np.int64)
        for entry in self.ledger:
            counts = counts + np.asarray(entry["class_pixels"], dtype=np.int64)
        return counts.tolist()

    # -- derived views
    def grid(self, sample_id: str) -> RegionGrid:
        height, width = self.sizes[sample_id]
        return RegionGrid(height, width, self.region_size)

    @property
    def pool_ids(self) -> list[str]:
        labeled = set(self.labeled)
        return sorted(s for s in self.sizes if s not in labeled)

    @property
    def total_pixels(self) -> int:
        return int(sum(h * w for h, w in self.sizes.values()))

    @property
    def acquired_pixels(self) -> int:
        return int(sum(entry["pixels"] for entry in self.ledger))

    @property
    def labeled_pixels(self) -> int:
        full = sum(self.sizes[s][0] * self.sizes[s][1] for s in self.labeled)
        return int(full + self.acquired_pixels)

    @property
    def labeled_frac(self) -> float:
        return self.labeled_pixels / max(self.total_pixels, 1)

    @property
    def committed_rounds(self) -> list[int]:
        return [entry["round"] for entry in self.ledger]

    def entry(self, round_index: int) -> dict | None:
        return next((e for e in self.ledger if e["round"] == round_index), None)

    # -- the one mutation
    def validate_selection(self, selection: Selection) -> int:
        """Raise ValueError unless ``selection`` may be acquired; return its pixel count."""
        labeled = set(self.labeled)
        acquired = self.acquired
        pixels = 0
        for sample_id, regions in selection.items():
            if sample_id not in self.sizes:
                raise ValueError(f"{sample_id}: not an image of the train split")
            if sample_id in labeled:
                raise ValueError(f"{sample_id}: already fully labeled, not a pool image")
            grid = self.grid(sample_id)
            regions = [int(r) for r in regions]
            if len(set(regions)) != len(regions):
                raise ValueError(f"{sample_id}: a region is selected twice in {regions}")
            bad = [r for r in regions if not 0 <= r < grid.num_regions]
            if bad:
                raise ValueError(f"{sample_id}: regions {bad} outside its {grid.num_regions}")
            again = set(regions) & set(acquired.get(sample_id, []))
            if again:
                raise ValueError(f"{sample_id}: regions {sorted(again)} were already acquired")
            pixels += int(grid.areas[regions].sum()) if regions else 0
        return pixels

    def commit(
        self, round_index: int, selection: Selection, class_pixels: list[int] | None = None
    ) -> dict:
        """Acquire ``selection`` as round ``round_index``; idempotent for an identical repeat."""
        digest = selection_digest(selection)
        previous = self.entry(round_index)
        if previous is not None:
            if previous["digest"] != digest:
                raise ValueError(
                    f"round {round_index} was already committed with a different selection"
                )
            return previous
        pixels = self.validate_selection(selection)
        clean = {k: sorted(int(r) for r in v) for k, v in sorted(selection.items()) if v}
        entry = {
            "round": int(round_index),
            "selection": clean,
            "regions": int(sum(map(len, clean.values()))),
            "images": len(clean),
            "pixels": pixels,
            "class_pixels": list(class_pixels or [0] * self.num_classes),
            "digest": digest,
        }
        self.ledger.append(entry)
        return entry

    def labeled_mask(self, sample_id: str) -> np.ndarray:
        """(H, W) bool: pixels whose ground truth is known for this image."""
        height, width = self.sizes[sample_id]
        if sample_id in set(self.labeled):
            return np.ones((height, width), dtype=bool)
        return self.grid(sample_id).mask(self.acquired.get(sample_id, []))

    # -- persistence
    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "PoolState":
        data = json.loads(text)
        version = data.get("version")
        if version != STATE_VERSION:
            raise ValueError(
                f"pool state version {version} is not {STATE_VERSION}: this run directory was "
                "written by an incompatible s4al-ray; use a new experiment name"
            )
        return cls(**data)
