"""Preparing a real dataset once: a cache that every stage of a run can read as it is.

Why a cache. Every stage (the student's loader, the simulated oracle, the pool's class counts,
evaluation) reads ``mask_uri`` PNGs and takes their values as class ids, 255 = ignore. The
published datasets store other values: Cityscapes masks hold *label ids* (0..33), CamVid marks
void with 11. Instead of teaching each stage a per-dataset lookup table (``DatasetInfo.label_map``)
and keeping them all consistent, the table is applied exactly once, here, and the manifest given
to a run points at the mapped copies. Nothing downstream changes and nothing can forget the map.

* With ``data.resize_height/width`` set, images are resized bilinearly, masks are mapped then
  resized nearest-neighbour (never interpolated: 7 and 11 must not average to 9), and the cache
  is a complete folder dataset (``images/``, ``masks/``, ``splits/``, ``classes.yaml``) that
  ``data.kind: folder`` can read as well.
* With 0 x 0 (keep the size), only mapped masks are written; ``image_uri`` keeps pointing at the
  original images, so nothing large is copied.

The cache lives in ``<cache_dir>/<kind>_<H>x<W | native>-<hash of the source root>``, local or
s3://. It is resumable: each file is written atomically, a rerun skips samples whose outputs
exist, and ``prepared.json``, written last, marks a complete cache. From then on loading reads
only the saved ``manifest.parquet`` (no listing, no header reads). The marker records the source,
the size and a digest of the label table; a cache built differently is refused, never mixed. It
also holds the classes and their colours, so a loaded cache needs nothing from the source.
Finding the source's files is :mod:`s4al_ray.data.scan`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
import yaml
from PIL import Image

from s4al_ray import storage
from s4al_ray.data.folder import DatasetError
from s4al_ray.data.io import decode_image, decode_mask, encode_png
from s4al_ray.data.manifest import DatasetInfo, make_manifest
from s4al_ray.data.scan import io_workers

CACHE_FORMAT = 1
MARKER = "prepared.json"
PARTIAL = "partial.json"
PROGRESS_EVERY_S = 5.0
Log = Callable[[str], None]


# -- The cache


@dataclass
class CacheSpec:
    """What a prepared cache is made from; its ``params`` must match for the cache to be used."""

    kind: str
    source: str
    size: tuple[int, int] | None  # (height, width); None keeps the images' own size
    label_map: np.ndarray | None
    known_values: frozenset[int] = frozenset()  # raw values the label table names
    colors: list[list[int]] | None = None
    value_name: str = "label value"  # how the raw values are called in messages

    def params(self) -> dict:
        lut = self.label_map if self.label_map is not None else np.arange(256, dtype=np.uint8)
        return {
            "format": CACHE_FORMAT,
            "kind": self.kind,
            "source": self.source,
            "size": list(self.size) if self.size else None,
            "label_map_sha1": hashlib.sha1(lut.tobytes()).hexdigest(),
        }

    def path(self, cache_dir: str) -> str:
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "native"
        digest = hashlib.sha1(self.source.encode()).hexdigest()[:8]
        return storage.join(storage.absolute(cache_dir), f"{self.kind}_{size}-{digest}")


def spec_size(height: int, width: int) -> tuple[int, int] | None:
    return (height, width) if height and width else None


@dataclass
class _Done:
    row: dict | None = None  # manifest row (URIs inside the cache relative to it)
    error: str | None = None
    skipped: bool = False


def _read_json(uri: str) -> dict | None:
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def _check_params(out: str, spec: CacheSpec) -> dict | None:
    """The marker of a complete matching cache, None if incomplete; raise if built otherwise."""
    want = spec.params()
    for name in (MARKER, PARTIAL):
        found = _read_json(storage.join(out, name))
        if found is not None and found.get("params") != want:
            raise DatasetError(
                f"{out} holds a cache prepared with other settings ({found.get('params')} != "
                f"{want}); delete it or choose another data.cache_dir"
            )
        if found is not None and name == MARKER:
            return found
    return None


def _resolve(out: str, uri: str) -> str:
    return uri if storage.is_s3(uri) or os.path.isabs(uri) else storage.join(out, uri)


def _load_cache(out: str, marker: dict, spec: CacheSpec) -> DatasetInfo:
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, "manifest.parquet"))))
    rows = [
        {**r, "image_uri": _resolve(out, r["image_uri"]), "mask_uri": _resolve(out, r["mask_uri"])}
        for r in table.to_pylist()
    ]
    # A marker written before it recorded colours has none: the spec's palette, if any.
    colors = marker.get("colors", spec.colors)
    return DatasetInfo(
        make_manifest(rows), list(marker["classes"]), int(marker["ignore_index"]), colors=colors
    )


def _existing(out: str) -> set[str]:
    """Names already written (``images/x.png``, ``masks/x.png``): one listing, not a stat each."""
    names = set()
    for sub in ("images", "masks"):
        uris = storage.list_files(storage.join(out, sub))
        names |= {f"{sub}/{u.rsplit('/', 1)[-1]}" for u in uris}
    return names


class _SampleError(Exception):
    """A sample that cannot be prepared; the message names its files."""


def _resized_image(uri: str, size: tuple[int, int], mask_shape: tuple[int, ...]) -> bytes:
    """PNG bytes of the image at ``size``."""
    data = storage.read_bytes(uri)
    image = decode_image(data)
    if image.shape[:2] != mask_shape:
        raise _SampleError(
            f"{uri}: image is {image.shape[0]}x{image.shape[1]} but its mask is "
            f"{mask_shape[0]}x{mask_shape[1]} (HxW)"
        )
    if image.shape[:2] == size and data[:8] == b"\x89PNG\r\n\x1a\n":
        return data  # already the right size and lossless: copy, do not re-encode
    resized = Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR)
    buffer = io.BytesIO()
    resized.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _prepare_sample(row: dict, spec: CacheSpec, out: str, existing: set[str]) -> _Done:
    sid = row["sample_id"]
    image_name, mask_name = f"images/{sid}.png", f"masks/{sid}.png"
    height, width = spec.size or (row["height"], row["width"])
    image_rel = image_name if spec.size else row["image_uri"]
    entry = {**row, "image_uri": image_rel, "mask_uri": mask_name, "height": height, "width": width}
    if mask_name in existing and (not spec.size or image_name in existing):
        return _Done(entry, skipped=True)
    try:
        raw = decode_mask(storage.read_bytes(row["mask_uri"]))
        if spec.size:
            image = _resized_image(row["image_uri"], spec.size, raw.shape)
        elif raw.shape != (row["height"], row["width"]):
            raise _SampleError(
                f"{row['mask_uri']}: mask is {raw.shape[0]}x{raw.shape[1]} but "
                f"image {row['image_uri']} is {row['height']}x{row['width']} (HxW)"
            )
    except _SampleError as err:
        return _Done(error=str(err))
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes a named error
        return _Done(error=f"{row['image_uri']} / {row['mask_uri']}: cannot read ({err})")
    counts = np.bincount(raw.ravel(), minlength=256)
    unknown = {
        int(v): int(counts[v])
        for v in np.flatnonzero(counts)
        if spec.label_map is not None and int(v) not in spec.known_values
    }
    mask = spec.label_map[raw] if spec.label_map is not None else raw
    if spec.size:
        storage.write_bytes(storage.join(out, image_name), image)
        mask = np.asarray(Image.fromarray(mask).resize((spec.size[1], spec.size[0]), Image.NEAREST))
    storage.write_bytes(storage.join(out, mask_name), encode_png(mask))
    if unknown:  # kept beside the cache so a resumed build still reports it
        storage.write_text(
            storage.join(out, "notes", f"{sid}.json"),
            json.dumps({"mask_uri": row["mask_uri"], "values": unknown}),
        )
    return _Done(entry)


class _Progress:
    """One line every few seconds: a Cityscapes build takes minutes and must not look stuck."""

    def __init__(self, log: Log, what: str, total: int) -> None:
        self.log, self.what, self.total = log, what, total
        self.start = self.last = time.perf_counter()
        self.done = self.skipped = 0

    def step(self, result: _Done) -> None:
        self.done += 1
        self.skipped += result.skipped
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY_S or self.done == self.total:
            self.last = now
            made = self.done - self.skipped
            rate = made / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            self.log(
                f"[prepare] {self.what}: {self.done}/{self.total} samples "
                f"({100 * self.done / self.total:.0f}%, {self.skipped} already done), "
                f"{rate:.1f}/s, ~{eta:.0f}s left"
            )


def _ranges(values: list[int]) -> str:
    """[34, 35, 36, 200] -> "34-36, 200": a whole range of stray values stays one short line."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _unknown_warnings(out: str, spec: CacheSpec) -> list[str]:
    """Raw values outside the label table (set to ignore), from the per-sample notes."""
    pixels: dict[int, int] = {}
    files = []
    for uri in storage.list_files(storage.join(out, "notes"), ".json"):
        note = json.loads(storage.read_text(uri))
        files.append(note["mask_uri"])
        for value, count in note["values"].items():
            pixels[int(value)] = pixels.get(int(value), 0) + count
    if not pixels:
        return []
    return [
        f"{spec.value_name}s {_ranges(sorted(pixels))} are not in the {spec.kind} label table "
        f"and were set to ignore: {sum(pixels.values())} px in {len(files)} masks, "
        f"e.g. {files[0]}"
    ]


def _write_metadata(out: str, spec: CacheSpec, raw: DatasetInfo, rows: list[dict]) -> dict:
    # The palette found with the files (a folder dataset's classes.yaml), else the spec's.
    colors = raw.colors if raw.colors is not None else spec.colors
    palette = [list(c) for c in colors] if colors else None
    classes = {"classes": raw.classes, "ignore_index": raw.ignore_index}
    if palette:
        classes["colors"] = palette
    storage.write_text(storage.join(out, "classes.yaml"), yaml.safe_dump(classes, sort_keys=False))
    if spec.size:  # images are in the cache too: make it a complete folder dataset
        for split in sorted({r["split"] for r in rows}):
            ids = [r["sample_id"] for r in rows if r["split"] == split]
            storage.write_text(storage.join(out, "splits", f"{split}.txt"), "\n".join(ids) + "\n")
    buffer = io.BytesIO()
    pq.write_table(make_manifest(rows), buffer)
    storage.write_bytes(storage.join(out, "manifest.parquet"), buffer.getvalue())
    marker = {
        "params": spec.params(),
        "classes": raw.classes,
        "colors": palette,
        "ignore_index": raw.ignore_index,
        "samples": len(rows),
        "warnings": _unknown_warnings(out, spec),
    }
    storage.write_text(storage.join(out, MARKER), json.dumps(marker, indent=1))  # last
    return marker


def build_cache(raw: DatasetInfo, spec: CacheSpec, cache_dir: str, log: Log = print) -> DatasetInfo:
    """Write (or finish writing) the cache of ``raw`` and return the dataset it holds."""
    out = spec.path(cache_dir)
    if _check_params(out, spec) is None:
        storage.write_text(storage.join(out, PARTIAL), json.dumps({"params": spec.params()}))
    existing = _existing(out)
    rows = raw.manifest.to_pylist()
    progress = _Progress(log, f"{spec.kind} -> {out}", len(rows))
    with ThreadPoolExecutor(max_workers=io_workers()) as pool:
        results = []
        for result in pool.map(lambda r: _prepare_sample(r, spec, out, existing), rows):
            progress.step(result)
            results.append(result)
    errors = [r.error for r in results if r.error]
    if errors:
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise DatasetError(
            f"{len(errors)} samples could not be prepared (fix them and rerun; "
            "finished samples are kept):\n  " + "\n  ".join(errors[:20]) + more
        )
    marker = _write_metadata(out, spec, raw, [r.row for r in results])
    for warning in marker["warnings"]:
        log(f"[prepare] warning: {warning}")
    if storage.exists(storage.join(out, PARTIAL)):  # the marker now says it all
        partial_fs, partial_path = storage.filesystem(storage.join(out, PARTIAL))
        partial_fs.delete_file(partial_path)
    return _load_cache(out, marker, spec)


def load_prepared(
    spec: CacheSpec, cache_dir: str, scan: Callable[[], DatasetInfo], log: Log = print
) -> DatasetInfo:
    """The prepared dataset: from a complete cache, else scanned from the source and built."""
    out = spec.path(cache_dir)
    marker = _check_params(out, spec)
    if marker is not None:
        return _load_cache(out, marker, spec)
    return build_cache(scan(), spec, cache_dir, log)


def cache_warnings(spec: CacheSpec, cache_dir: str) -> list[str]:
    marker = _read_json(storage.join(spec.path(cache_dir), MARKER))
    return list(marker.get("warnings", [])) if marker else []
