"""What an image's regions are, for every stage of a round: squares of ``acquisition.region_size``
(``RegionGrid``), or SLIC superpixels of about that size (``SuperpixelRegions``) whose segment
maps are computed once per run and stored beside it.

One home for the rule: the pool state, the teacher's post-process, the training loader, the
oracles and the reports all ask :meth:`RegionMaps.of` for an image's regions, so a region id means
the same pixels everywhere, and a budget counts each region's true size.

Stored under the run (``RunLayout.superpixels_dir``): one 16-bit PNG of segment ids per train image
(written by a Ray Data pass, so a cluster segments in parallel on its CPUs), then
``regions.parquet``: every image's segment areas, written last, so its presence means the maps
are complete. A resumed run reads them instead of segmenting again. Nothing is written into the
dataset.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from s4al_ray import storage
from s4al_ray.config import ConfigError
from s4al_ray.regions import RegionGrid
from s4al_ray.superpixels import (
    COMPACTNESS,
    SegmentAreas,
    SuperpixelRegions,
    segment_count,
    slic_segments,
)

REGION_KINDS = ("squares", "slic")
AREAS_FILE = "regions.parquet"
# The most segments a stored map may hold (16-bit ids); settings that ask SLIC for more are
# refused up front (check_region_size), a map that still has more when it is stored.
MAX_SEGMENTS = 65535
CHANGED = "the dataset changed since the run began; start a new experiment with name=<new name>"


@dataclass(frozen=True)
class RegionMaps:
    """Where each image's regions come from: ``kind`` squares of side ``size``, or SLIC segments
    of about ``size``^2 pixels stored under ``root``. Small and picklable: it travels in the
    jobs to the teacher, the train workers and the pool actor."""

    kind: str = "squares"
    size: int = 20
    root: str = ""

    def __post_init__(self) -> None:
        if self.kind not in REGION_KINDS:
            raise ValueError(f"region kind {self.kind!r} is not one of {REGION_KINDS}")
        if self.kind == "slic" and not self.root:
            raise ValueError("superpixel regions need the folder of their segment maps")

    @classmethod
    def of_run(cls, kind: str, size: int, superpixels_dir: str) -> "RegionMaps":
        """A run's maps (``superpixels_dir``: its ``RunLayout.superpixels_dir``, kept only for
        superpixels, so squares of one size are equal in every run)."""
        return cls(kind, int(size), superpixels_dir if kind == "slic" else "")

    @property
    def superpixels(self) -> bool:
        return self.kind == "slic"

    def segment_uri(self, sample_id: str) -> str:
        return storage.join(self.root, f"{sample_id}.png")

    @property
    def areas_uri(self) -> str:
        return storage.join(self.root, AREAS_FILE)

    def of(
        self, sample_id: str, height: int, width: int, cache=None
    ) -> RegionGrid | SuperpixelRegions:
        """The regions of image ``sample_id`` of that size (the manifest's); ``cache``: a
        ``data.training.DecodeCache`` that keeps decoded segment maps (the training loader)."""
        if not self.superpixels:
            return RegionGrid(int(height), int(width), self.size)
        uri = self.segment_uri(sample_id)
        segments = load_segments(uri) if cache is None else cache.get(uri, load_segments)
        if segments.shape != (height, width):
            raise ValueError(
                f"{uri}: a {segments.shape} segment map for a {height}x{width} image; {CHANGED}"
            )
        return SuperpixelRegions(segments)


def requested_mask(query: dict, image: dict, package: str) -> np.ndarray:
    """(H, W) bool: the pixels of one queried image's requested regions (a query package's
    ``query.json`` entry): its squares, or the superpixels of the segment map in ``package``."""
    indices = [r["index"] for r in image["regions"]]
    if "segments" in image:
        if not package:
            raise ValueError("a superpixel query's regions are read from its package's maps")
        segments = load_segments(storage.join(package, image["segments"]))
        return np.isin(segments, indices)
    return RegionGrid(image["height"], image["width"], query["region_size"]).mask(indices)


def encode_segments(segments: np.ndarray) -> bytes:
    """Lossless 16-bit PNG of a (H, W) segment-id map of at most MAX_SEGMENTS segments."""
    count = int(segments.max()) + 1
    if count > MAX_SEGMENTS:
        raise ValueError(
            f"{count} superpixels, more than a 16-bit segment map holds ({MAX_SEGMENTS})"
        )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(segments, dtype=np.uint16)).save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()


def decode_segments(data: bytes) -> np.ndarray:
    """(H, W) uint16 segment ids (half the memory of int32 in caches and batches)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image, dtype=np.uint16)


def load_segments(uri: str) -> np.ndarray:
    """A stored segment map; a missing or damaged one is named (ValueError)."""
    try:
        return decode_segments(storage.read_bytes(uri))
    except (OSError, ValueError) as err:  # FileNotFoundError, PIL's UnidentifiedImageError
        raise ValueError(f"{uri}: superpixel map missing or unreadable ({err}); {CHANGED}") from err


def run_regions(
    acquisition, superpixels_dir: str, rows: list[dict], log=print, begun: bool = False
) -> tuple[RegionMaps, SegmentAreas | None]:
    """A run's regions (``acquisition``: its config section) and, for superpixels, their areas:
    segmented once per run (a resumed run reads the stored maps). ``rows``: the manifest's train
    rows; ``begun``: the run has a pool state already, so its maps must be there (segmenting
    again could renumber the regions its rounds acquired)."""
    maps = RegionMaps.of_run(acquisition.regions, acquisition.region_size, superpixels_dir)
    if not maps.superpixels:
        return maps, None
    if begun:
        areas = read_segment_areas(maps, [str(r["sample_id"]) for r in rows])
    else:
        areas = build_segment_maps(maps, rows, COMPACTNESS, log)
    heights, widths = ([r[key] for r in rows] for key in ("height", "width"))
    k = areas.first_untiled(heights, widths)
    if k is not None:
        row = rows[k]
        raise ConfigError(
            f"{maps.areas_uri}: the superpixels of {row['sample_id']} cover "
            f"{int(areas.image_pixels()[k])} px, not its {row['height']}x{row['width']}; {CHANGED}"
        )
    return maps, areas


def check_region_size(acquisition, rows: list[dict]) -> None:
    """``acquisition.region_size`` against the train images (``rows``: the manifest's), before
    any work: no larger than the smallest side, and for superpixels no more segments than a
    16-bit map holds."""
    size = acquisition.region_size
    smallest = min(min(r["height"], r["width"]) for r in rows)
    if size > smallest:
        raise ConfigError(
            f"acquisition.region_size ({size}) is larger than the smallest train image side "
            f"({smallest} px)"
        )
    if acquisition.regions != "slic":
        return
    largest = max(segment_count(r["height"], r["width"], size) for r in rows)
    if largest > MAX_SEGMENTS:
        raise ConfigError(
            f"acquisition.region_size={size} asks SLIC for {largest} superpixels on the largest "
            f"train image, more than a segment map holds ({MAX_SEGMENTS}); choose a larger size"
        )


def _segment_batch(batch: dict, maps: RegionMaps, compactness: float) -> pa.Table:
    """One block of the pass: segment, store, and return each image's areas."""
    from s4al_ray.data.io import load_image

    areas = []
    for sample_id, uri in zip(map(str, batch["sample_id"]), map(str, batch["image_uri"])):
        segments = slic_segments(load_image(uri), maps.size, compactness)
        try:
            encoded = encode_segments(segments)
        except ValueError as err:
            raise ValueError(f"{uri}: {err}; choose a larger acquisition.region_size") from err
        storage.write_bytes(maps.segment_uri(sample_id), encoded)
        areas.append(np.bincount(segments.ravel()).astype(np.int32))
    return _areas_table([str(s) for s in batch["sample_id"]], areas)


def _areas_table(ids: list[str], areas: list[np.ndarray]) -> pa.Table:
    return pa.table(
        {"sample_id": pa.array(ids, pa.string()), "areas": pa.array(areas, pa.list_(pa.int32()))}
    )


def build_segment_maps(
    maps: RegionMaps, rows: list[dict], compactness: float, log=print
) -> SegmentAreas:
    """The segment areas of every train image (``rows``: manifest rows), segmenting and storing
    the maps first unless a complete set is already stored (a resumed run)."""
    ids = [str(r["sample_id"]) for r in rows]
    if storage.exists(maps.areas_uri):
        return read_segment_areas(maps, ids)
    import ray

    started = time.perf_counter()
    items = [{"sample_id": r["sample_id"], "image_uri": r["image_uri"]} for r in rows]
    # Blocks sized by the data, not by the CPUs present now: an autoscaling cluster grows into
    # them (16 images a task, at most 512 tasks).
    blocks = max(1, min(-(-len(items) // 16), 512))
    done = (
        ray.data.from_items(items, override_num_blocks=blocks)
        .map_batches(
            _segment_batch,
            fn_kwargs={"maps": maps, "compactness": compactness},
            batch_format="numpy",
            batch_size=16,
        )
        .to_arrow_refs()
    )
    areas = _areas_in_order(pa.concat_tables(ray.get(done)), ids, "the segmentation pass")
    buffer = pa.BufferOutputStream()
    pq.write_table(_areas_table(ids, areas.per_image()), buffer)
    storage.write_bytes(maps.areas_uri, buffer.getvalue().to_pybytes())  # last: marks complete
    log(
        f"[regions] {len(rows)} images cut into {areas.total} SLIC superpixels "
        f"({areas.flat.mean():.0f} px each on average; asked for ~{maps.size}x{maps.size}) in "
        f"{time.perf_counter() - started:.1f}s, stored in {maps.root}"
    )
    return areas


def read_segment_areas(maps: RegionMaps, ids: list[str]) -> SegmentAreas:
    """The stored areas of images ``ids``, in that order; refused by name when one is missing
    (the pool state checks that they add up to each image's size)."""
    uri = maps.areas_uri
    if not storage.exists(uri):
        raise ConfigError(
            f"{uri} is missing: the run's pool state was written with these superpixels; "
            "start a new experiment with name=<new name>"
        )
    try:
        table = pq.read_table(pa.BufferReader(storage.read_bytes(uri)))
    except (OSError, pa.ArrowException) as err:
        raise ConfigError(f"{uri}: superpixel areas unreadable ({err}); {CHANGED}") from err
    return _areas_in_order(table, ids, uri)


def _areas_in_order(table: pa.Table, ids: list[str], source: str) -> SegmentAreas:
    """The areas of ``_areas_table`` rows, in the order of ``ids``; refused by name when an
    image has none."""
    by_id = dict(zip(table["sample_id"].to_pylist(), table["areas"].to_numpy(False)))
    missing = [s for s in ids if s not in by_id]
    if missing:
        raise ConfigError(f"{source} has no superpixels for train images {missing[:3]}; {CHANGED}")
    return SegmentAreas.of([np.asarray(by_id[s], dtype=np.int32) for s in ids])
