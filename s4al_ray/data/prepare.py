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
s3://; the source is only read. Each file is written atomically and ``prepared.json``, written
last, marks a complete cache. The marker records the source, the size and a digest of the label
table; a cache built differently is refused, never mixed. It also holds the classes and their
colours.

The cache is keyed by its sources. ``sources.json`` records, per sample, the source files and
their stamps (size and mtime_ns), and a digest of the listings of every source folder (plus the
root and ``splits/``: ``classes.yaml`` and the split files count too). A load lists those folders
(one listing each, no header reads) and uses the cache only when nothing changed; otherwise the
source is scanned again and only the samples whose files changed (or are new) are prepared
again, so fixing one source file and rerunning fixes the cache. An interrupted build resumes the
same way (the record is saved every few seconds). When the source is gone altogether, a
complete cache is used as it is. Errors, and the dataset check (``DatasetInfo.sources``), name
the source file, not the prepared copy. Finding the source's files is :mod:`s4al_ray.data.scan`.
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

from s4al_ray import storage
from s4al_ray.data.io import ORIENTATION_NAMES, DatasetError
from s4al_ray.data.manifest import DatasetInfo, make_manifest
from s4al_ray.data.prepare_sample import Done, delete, existing_outputs, prepare_sample
from s4al_ray.data.scan import io_workers, parent, snapshot, snapshot_stamp

CACHE_FORMAT = 1
MARKER = "prepared.json"
PARTIAL = "partial.json"
SOURCES = "sources.json"
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


def _load_cache(out: str, marker: dict, spec: CacheSpec, record: dict) -> DatasetInfo:
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, "manifest.parquet"))))
    rows = [
        {**r, "image_uri": _resolve(out, r["image_uri"]), "mask_uri": _resolve(out, r["mask_uri"])}
        for r in table.to_pylist()
    ]
    sources = {}  # prepared copy -> its source, for messages that name the file to fix
    for r in rows:
        entry = record.get("samples", {}).get(r["sample_id"])
        for column, key in (("image_uri", "image"), ("mask_uri", "mask")):
            if entry and r[column] != entry[key]:
                sources[r[column]] = entry[key]
    # A marker written before it recorded colours has none: the spec's palette, if any.
    colors = marker.get("colors", spec.colors)
    return DatasetInfo(
        make_manifest(rows),
        list(marker["classes"]),
        int(marker["ignore_index"]),
        colors=colors,
        sources=sources or None,
    )


def _source_dirs(spec: CacheSpec, rows: list[dict]) -> list[str]:
    """The folders whose listings key the cache: every source file's, the root, splits/."""
    folders = {parent(r[c]) for r in rows for c in ("image_uri", "mask_uri")}
    return sorted(folders | {spec.source, storage.join(spec.source, "splits")})


def _digest(snap: dict) -> str:
    return hashlib.sha1(json.dumps(snap, sort_keys=True).encode()).hexdigest()


class _Progress:
    """One line every few seconds: a Cityscapes build takes minutes and must not look stuck."""

    def __init__(self, log: Log, what: str, total: int) -> None:
        self.log, self.what, self.total = log, what, total
        self.start = self.last = time.perf_counter()
        self.done = self.skipped = 0

    def step(self, result: Done) -> bool:
        """Count ``result``; True when a line was logged (every few seconds, and at the end)."""
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
            return True
        return False


def _ranges(values: list[int]) -> str:
    """[34, 35, 36, 200] -> "34-36, 200": a whole range of stray values stays one short line."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _note_warnings(out: str, spec: CacheSpec, sids: set[str]) -> list[str]:
    """From the per-sample notes: raw values outside the label table (set to ignore), and
    source images turned upright by their EXIF orientation."""
    pixels: dict[int, int] = {}
    files, turned = [], []
    for uri in storage.list_files(storage.join(out, "notes"), ".json"):
        if uri.rsplit("/", 1)[-1][: -len(".json")] not in sids:
            continue  # a sample no longer in the source
        note = json.loads(storage.read_text(uri))
        if "turn" in note:
            turned.append(
                f"{note['image_uri']} ({note['turn']}: {ORIENTATION_NAMES[note['turn']]})"
            )
        if "values" not in note:
            continue
        files.append(note["mask_uri"])
        for value, count in note["values"].items():
            pixels[int(value)] = pixels.get(int(value), 0) + count
    warnings = []
    if pixels:
        warnings.append(
            f"{spec.value_name}s {_ranges(sorted(pixels))} are not in the {spec.kind} label "
            f"table and were set to ignore: {sum(pixels.values())} px in {len(files)} masks, "
            f"e.g. {files[0]}"
        )
    if turned:
        more = f" ... and {len(turned) - 20} more" if len(turned) > 20 else ""
        warnings.append(
            f"{len(turned)} source image(s) have an EXIF orientation other than 1 and were "
            "prepared rotated, as viewers show them (check that their masks were drawn that "
            f"way): {', '.join(turned[:20])}{more}"
        )
    return warnings


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
        "warnings": _note_warnings(out, spec, {r["sample_id"] for r in rows}),
    }
    storage.write_text(storage.join(out, MARKER), json.dumps(marker, indent=1))  # last
    return marker


def _stale(out: str, existing: set[str], sids: set[str]) -> None:
    """Delete the outputs of samples that are no longer in the source."""
    for name in existing:
        if name.split("/", 1)[1][: -len(".png")] not in sids:
            delete(storage.join(out, name))


def build_cache(
    raw: DatasetInfo, spec: CacheSpec, cache_dir: str, log: Log = print, scan_key: str = ""
) -> DatasetInfo:
    """Write (or bring up to date) the cache of ``raw`` and return the dataset it holds; samples
    whose outputs were made from their files as they are now are kept."""
    out = spec.path(cache_dir)
    _check_params(out, spec)  # refuses a cache built otherwise
    storage.write_text(storage.join(out, PARTIAL), json.dumps({"params": spec.params()}))
    delete(storage.join(out, MARKER))  # incomplete until this build is done
    rows = raw.manifest.to_pylist()
    dirs = _source_dirs(spec, rows)
    snap = snapshot(dirs)
    stamps = {
        r["sample_id"]: [snapshot_stamp(snap, r["image_uri"]), snapshot_stamp(snap, r["mask_uri"])]
        for r in rows
    }
    previous = (_read_json(storage.join(out, SOURCES)) or {}).get("samples", {})
    current = {sid for sid, stamp in stamps.items() if previous.get(sid, {}).get("stamps") == stamp}
    existing = existing_outputs(out)
    _stale(out, existing, set(stamps))
    notes = {u.rsplit("/", 1)[-1][:-5] for u in storage.list_files(storage.join(out, "notes"))}
    record: dict = {"samples": {}}
    progress = _Progress(log, f"{spec.kind} -> {out}", len(rows))
    with ThreadPoolExecutor(max_workers=io_workers()) as pool:
        results = []
        work = pool.map(
            lambda r: prepare_sample(r, spec, out, existing, r["sample_id"] in current, notes),
            rows,
        )
        for row, result in zip(rows, work):
            if result.row is not None:
                sid = row["sample_id"]
                record["samples"][sid] = {
                    "image": row["image_uri"],
                    "mask": row["mask_uri"],
                    "stamps": stamps[sid],
                }
            if progress.step(result):  # every few seconds: an interrupted build resumes
                storage.write_text(storage.join(out, SOURCES), json.dumps(record))
            results.append(result)
    errors = [r.error for r in results if r.error]
    if errors:
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise DatasetError(
            f"{len(errors)} samples could not be prepared (fix them and rerun; "
            "finished samples are kept):\n  " + "\n  ".join(errors[:20]) + more
        )
    record.update(key=scan_key, dirs=dirs, digest=_digest(snap))
    storage.write_text(storage.join(out, SOURCES), json.dumps(record))
    marker = _write_metadata(out, spec, raw, [r.row for r in results])
    for warning in marker["warnings"]:
        log(f"[prepare] warning: {warning}")
    delete(storage.join(out, PARTIAL))  # the marker now says it all
    return _load_cache(out, marker, spec, record)


def load_prepared(
    spec: CacheSpec,
    cache_dir: str,
    scan: Callable[[], DatasetInfo],
    log: Log = print,
    scan_key: str = "",
) -> DatasetInfo:
    """The prepared dataset: from the cache when its sources are unchanged, else scanned from
    the source and brought up to date. ``scan_key``: anything else the scan depends on (the seed
    of a folder dataset's made-up split), kept with the cache."""
    out = spec.path(cache_dir)
    marker = _check_params(out, spec)
    if marker is not None:
        record = _read_json(storage.join(out, SOURCES)) or {}
        if not storage.is_dir(spec.source):
            log(f"[prepare] {spec.source} not found: using the prepared copy {out} as it is")
            return _load_cache(out, marker, spec, record)
        if "digest" not in record:
            log(f"[prepare] {out} records no source stamps (an older cache): updating it")
        elif record.get("key", "") != scan_key or record["digest"] != _digest(
            snapshot(record["dirs"])
        ):
            log(f"[prepare] the source changed since {out} was prepared: updating it")
        else:
            return _load_cache(out, marker, spec, record)
    return build_cache(scan(), spec, cache_dir, log, scan_key)


def cache_warnings(spec: CacheSpec, cache_dir: str) -> list[str]:
    marker = _read_json(storage.join(spec.path(cache_dir), MARKER))
    return list(marker.get("warnings", [])) if marker else []
