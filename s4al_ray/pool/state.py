"""The pool state and its rules, as a plain object (the actor in ``actor.py`` owns the one copy).

Invariants kept by :meth:`PoolState.commit`: fully labeled images and pool images are disjoint,
a region is acquired at most once, a round is committed at most once (a repeat with the same
selection is a no-op, so retried commits are harmless), and the pixel ledger equals the true size
of the regions revealed.

Sized for pools of a million images: the image sizes come from the manifest (``ImageSizes``,
never persisted with the state), a round's selection is kept as columns (``RoundSelection``) and
the acquired regions as one bit per region (``AcquiredRegions``). Every derived view is built at
most once per state object and ``commit`` updates it in O(the selection); ``labeled_mask`` costs
O(that image's regions). Storage is ``store.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from s4al_ray.pool.fixed import FixedPool
from s4al_ray.pool.index import AcquiredRegions, ImageSizes
from s4al_ray.pool.selection import RoundSelection, Selection, selection_digest
from s4al_ray.region_maps import RegionMaps
from s4al_ray.regions import RegionGrid
from s4al_ray.superpixels import SegmentAreas, SuperpixelRegions

# 2: sizes come from the manifest; persisted as a head + one delta file per round (store.py).
STATE_VERSION = 2

__all__ = ["STATE_VERSION", "PoolState", "RoundSelection", "Selection", "selection_digest"]


@dataclass(frozen=True)
class _Checked:
    """A selection that passed validation, with what committing it needs."""

    images: np.ndarray  # positions in ``sizes`` of the selection's images, in its id order
    bits: np.ndarray  # bit position of every selected region
    pixels: int


class PoolState:
    version = STATE_VERSION

    def __init__(
        self,
        region_size: int,
        num_classes: int,
        sizes: ImageSizes | Mapping,  # every train image: (height, width), from the manifest
        labeled: list[str],  # fully labeled from the start
        initial_class_pixels: list[int] | None = None,  # of the labeled images
        maps: RegionMaps | None = None,  # squares of region_size unless given
        segments: SegmentAreas | None = None,  # the superpixels' areas, with slic maps
    ) -> None:
        self.region_size, self.num_classes = int(region_size), int(num_classes)
        sizes = ImageSizes.of(sizes)
        self.labeled = list(labeled)
        unknown = [s for s in self.labeled if s not in sizes]
        if unknown:
            raise ValueError(f"labeled ids not in the train split: {sorted(unknown)[:5]}")
        self.initial_class_pixels = _counts(initial_class_pixels, self.num_classes)
        maps = maps or RegionMaps("squares", self.region_size)
        if maps.size != self.region_size:
            raise ValueError(f"region maps of size {maps.size}, not {self.region_size}")
        self._fixed = FixedPool(sizes, self.labeled, maps, segments)
        self._entries: list[dict] = []  # one per committed round
        self._images: list[np.ndarray] = []  # per entry: positions of its images
        self._acquired: AcquiredRegions | None = None  # built on first use
        self._shared = False  # _acquired is also held by a caller or another state

    def _derived(self, keep: list[int]) -> "PoolState":
        """A state of the same pool holding entries ``keep`` (indices into the ledger)."""
        other = object.__new__(PoolState)
        other.__dict__.update(self.__dict__)
        other._entries = [self._entries[k] for k in keep]
        other._images = [self._images[k] for k in keep]
        other._acquired, other._shared = None, False
        if len(keep) == len(self._entries) and self._acquired is not None:
            # Same regions: share the bits; whichever commits first copies them.
            other._acquired = self._acquired
            other._shared = self._shared = True
        return other

    def before(self, round_index: int) -> "PoolState":
        """The state as round ``round_index`` saw it: only commits of earlier rounds. A resumed
        round therefore recomputes exactly what it computed the first time."""
        return self._derived([k for k, e in enumerate(self._entries) if e["round"] < round_index])

    def with_entry(self, entry: dict) -> "PoolState":
        """This state with one more committed round: an entry the actor returned, so validated
        already (its selection may be the one the caller sent, attached again). Refused: a
        selection whose digest is not the entry's, and a region acquired twice (a cheap check of
        its bits); the images' positions are checked, not trusted."""
        chosen = RoundSelection.of(entry["selection"])
        other = self.before(math.inf)
        previous = other.entry(entry["round"])
        if previous is not None:
            if previous["digest"] != chosen.digest:
                raise ValueError(f"round {entry['round']} is already in this state, differently")
            return other
        if chosen.digest != entry["digest"]:  # the caller attached the selection it sent
            raise ValueError(f"round {entry['round']}: not the selection the pool committed")
        try:  # positions handed on by select or the validating state: checked, not trusted
            images = self.sizes.positions(chosen.ids, hint=chosen.positions)
        except KeyError as err:
            raise ValueError(f"{err.args[0]}: not an image of the train split") from None
        bits = self._fixed.region_index.bits(np.repeat(images, chosen.counts), chosen.regions)
        if other._acquired_regions().contains(bits).any():
            raise ValueError(f"round {entry['round']}: regions were already acquired")
        other._add({**entry, "selection": chosen}, _Checked(images, bits, int(entry["pixels"])))
        return other

    # -- views, each built once per state object
    @property
    def sizes(self) -> ImageSizes:
        return self._fixed.sizes

    @property
    def ledger(self) -> list[dict]:
        return list(self._entries)

    @property
    def acquired(self) -> AcquiredRegions:
        """sample_id -> acquired region indices (a read-only mapping; it does not change when
        this state commits later: the state copies the bits first)."""
        acquired = self._acquired_regions()
        self._shared = True
        return acquired

    @property
    def labeled_class_pixels(self) -> list[int]:
        counts = np.asarray(self.initial_class_pixels, dtype=np.int64)
        for entry in self._entries:
            counts = counts + np.asarray(entry["class_pixels"], dtype=np.int64)
        return counts.tolist()

    @property
    def maps(self) -> RegionMaps:
        return self._fixed.maps

    def grid(self, sample_id: str) -> RegionGrid | SuperpixelRegions:
        """The regions of pool image ``sample_id`` (squares or its superpixels)."""
        return self._fixed.regions(sample_id)

    def region_pixels(self, sample_id: str, regions) -> int:
        """True pixel count of those regions of image ``sample_id``, from the pool's index (no
        segment map is read)."""
        regions = np.asarray(regions, dtype=np.int64)
        images = np.full(regions.size, self.sizes.index[sample_id], dtype=np.int64)
        return self._fixed.region_index.pixels(images, regions)

    @property
    def pool_ids(self) -> list[str]:
        return list(self._fixed.pool_ids)

    @property
    def pool_order(self) -> np.ndarray:
        """Where each of ``pool_ids`` sits in ``sizes`` (``acquisition.select`` hands them to
        the selection, so neither the driver nor the actor looks 10^6 ids up)."""
        return self._fixed.pool_order

    @property
    def pool_positions(self) -> np.ndarray:
        """Positions in ``sizes`` of the pool images, in ``sizes`` order: when the sizes came
        from the manifest's train rows, the rows a worker's shard is sliced from."""
        return self._fixed.pool_positions

    @property
    def total_pixels(self) -> int:
        return self._fixed.total_pixels

    @property
    def acquired_pixels(self) -> int:
        return int(sum(entry["pixels"] for entry in self._entries))

    @property
    def labeled_pixels(self) -> int:
        return int(self._fixed.labeled_image_pixels + self.acquired_pixels)

    @property
    def labeled_frac(self) -> float:
        return self.labeled_pixels / max(self.total_pixels, 1)

    @property
    def committed_rounds(self) -> list[int]:
        return [entry["round"] for entry in self._entries]

    @property
    def fingerprint(self) -> str:
        """Names this exact state (its pool and every committed round): equal fingerprints,
        equal states. The driver compares it with the actor's before fetching the state."""
        rounds = [[e["round"], e["digest"], e["pixels"], e["class_pixels"]] for e in self._entries]
        fields = [self.region_size, self.num_classes, self.initial_class_pixels, rounds]
        h = hashlib.sha256(self._fixed.fingerprint.encode() + json.dumps(fields).encode())
        return h.hexdigest()[:32]

    def entry(self, round_index: int) -> dict | None:
        return next((e for e in self._entries if e["round"] == round_index), None)

    def labeled_mask(self, sample_id: str) -> np.ndarray:
        """(H, W) bool: pixels whose ground truth is known for this image."""
        position = self.sizes.index[sample_id]
        if self._fixed.labeled_flags[position]:
            return np.ones(self.sizes[sample_id], dtype=bool)
        grid = self.grid(sample_id)
        if self._acquired is not None:
            return grid.mask(self._acquired.regions_at(position))
        # No bits built in this object: read the image from each round's columns instead.
        return grid.mask([r for e in self._entries for r in e["selection"].get(sample_id, [])])

    # -- the one mutation
    def validate_selection(self, selection: Selection) -> int:
        """Raise ValueError unless ``selection`` may be acquired; return its pixel count."""
        return self._check(RoundSelection.of(selection)).pixels

    def commit(
        self,
        round_index: int,
        selection: Selection,
        class_pixels: list[int] | None = None,
        persist: Callable[[dict], None] | None = None,
    ) -> dict:
        """Acquire ``selection`` as round ``round_index``; idempotent for an identical repeat.
        ``persist(entry)`` runs before the state changes, so a failed write changes nothing."""
        chosen = RoundSelection.of(selection)
        previous = self.entry(round_index)
        if previous is not None:
            if previous["digest"] != chosen.digest:
                raise ValueError(
                    f"round {round_index} was already committed with a different selection"
                )
            return previous
        checked = self._check(chosen)
        entry = {
            "round": int(round_index),
            "selection": chosen,
            "regions": chosen.num_regions,
            "images": len(chosen),
            "pixels": checked.pixels,
            "class_pixels": _counts(class_pixels, self.num_classes),
            "digest": chosen.digest,
        }
        if persist is not None:
            persist(entry)
        self._add(entry, checked)
        return entry

    def _add(self, entry: dict, checked: _Checked) -> None:
        acquired = self._acquired_regions()
        if self._shared:
            acquired = self._acquired = acquired.copy()
            self._shared = False
        chosen = entry["selection"]
        acquired.add(checked.bits, checked.images, chosen.counts)
        # The id strings of ``sizes`` (equal ones): a round's ids then cost no memory of their
        # own and are pickled as references to the pool's.
        ids = self.sizes.ids
        chosen.ids = [ids[k] for k in checked.images.tolist()]
        chosen.positions = checked.images
        self._entries.append(entry)
        self._images.append(checked.images)

    def _acquired_regions(self) -> AcquiredRegions:
        if self._acquired is None:
            index = self._fixed.region_index
            acquired = AcquiredRegions.empty(self.sizes, index)
            for entry, images in zip(self._entries, self._images):
                chosen = entry["selection"]
                owners = np.repeat(images, chosen.counts)
                acquired.add(index.bits(owners, chosen.regions), images, chosen.counts)
            self._acquired = acquired
        return self._acquired

    def _check(self, chosen: RoundSelection) -> _Checked:
        """Every rule, vectorised over the selection; the error names the first image (by id)
        that breaks the first rule broken."""
        try:
            images = self.sizes.positions(chosen.ids, hint=chosen.positions)
        except KeyError as err:
            raise ValueError(f"{err.args[0]}: not an image of the train split") from None
        labeled = self._fixed.labeled_flags[images]
        if labeled.any():
            sample_id = chosen.ids[int(np.argmax(labeled))]
            raise ValueError(f"{sample_id}: already fully labeled, not a pool image")
        local = np.repeat(np.arange(len(chosen), dtype=np.int64), chosen.counts)
        regions = chosen.regions.astype(np.int64)
        twice = (regions[1:] == regions[:-1]) & (local[1:] == local[:-1])
        if twice.any():
            sample_id = chosen.ids[int(local[np.argmax(twice)])]
            raise ValueError(f"{sample_id}: a region is selected twice in {chosen[sample_id]}")
        index = self._fixed.region_index
        owners = images[local]
        bad = (regions < 0) | (regions >= index.num_regions[owners])
        if bad.any():
            k = int(local[np.argmax(bad)])
            listed = regions[bad & (local == k)].tolist()
            raise ValueError(
                f"{chosen.ids[k]}: regions {listed} outside its {int(index.num_regions[images[k]])}"
            )
        bits = index.bits(owners, regions)
        again = self._acquired_regions().contains(bits)
        if again.any():
            k = int(local[np.argmax(again)])
            listed = regions[again & (local == k)].tolist()
            raise ValueError(f"{chosen.ids[k]}: regions {listed} were already acquired")
        return _Checked(images, bits, index.pixels(owners, regions))

    # -- comparison (Ray pickles the whole object from the actor to the driver)
    def __eq__(self, other) -> bool:
        if not isinstance(other, PoolState):
            return NotImplemented
        fields = ("region_size", "num_classes", "labeled", "initial_class_pixels", "_entries")
        fields += ("maps",)
        return self.sizes == other.sizes and all(
            getattr(self, f) == getattr(other, f) for f in fields
        )

    __hash__ = None

    def __repr__(self) -> str:
        return (
            f"PoolState({len(self.sizes)} images, {len(self.labeled)} labeled, "
            f"rounds {self.committed_rounds})"
        )


def _counts(class_pixels, num_classes: int) -> list[int]:
    values = [] if class_pixels is None else [int(v) for v in class_pixels]
    return values or [0] * num_classes
