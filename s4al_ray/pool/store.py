"""The pool state on storage: a small head, the labeled ids, one delta file per committed round.

    pool/labeled.json            the fully labeled ids, written once when the run starts
    pool/rounds/round_XXX.parquet  one round's selection (a row per image: its id and regions),
                                 written before its head (runs begun before it: .json columns)
    pool/head.json               version, region size and kind (squares | slic; squares where
                                 absent), classes, initial class pixels and, per committed
                                 round, its digest, counts and delta file name
    pool/head.prev.json          the head before the last commit (used if the head is damaged)

A commit writes its delta file, then the previous head, then the new head, each atomically: it
costs O(its selection) whatever the pool or the number of rounds. Until its head names it a delta
file is not part of the state, so one left by a commit that died before its head is simply
overwritten when the commit is redone. Image sizes are not stored: the manifest has them, and
loading checks every round against them again.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s4al_ray import storage
from s4al_ray.config import ConfigError
from s4al_ray.layout import RunLayout
from s4al_ray.pool.index import ImageSizes
from s4al_ray.pool.selection import RoundSelection
from s4al_ray.pool.state import STATE_VERSION, PoolState
from s4al_ray.region_maps import RegionMaps, read_segment_areas

_HEAD_KEYS = ("version", "region_size", "num_classes", "initial_class_pixels", "labeled", "rounds")


class PoolStateError(ConfigError):
    """The run directory's pool state cannot be used here; the message names the file and the
    fix (a ConfigError: the command line prints it without a traceback)."""


class DamagedPoolFile(PoolStateError):
    """A pool file cut short or unreadable (not one that disagrees with the data): the previous
    head, which does not name the last round's delta, can be used instead."""


def check_format(layout: RunLayout) -> None:
    """Refuse, by name, a run directory whose pool this version cannot read (cheap: the driver
    calls it before the pool actor starts, so the user sees this and not an actor's traceback)."""
    if storage.exists(layout.legacy_pool_state) and not storage.exists(layout.pool_head):
        old = layout.legacy_pool_state
        raise PoolStateError(
            f"{layout.run_dir} holds a pool state of an earlier s4al-ray ({old}, pool state "
            f"version 1, run format 2) that this version (pool state version {STATE_VERSION}: "
            "pool/head.json + one file per round) cannot continue. Start a new experiment with "
            "name=<new name>, or finish this one with the s4al-ray that began it"
        )
    if storage.exists(layout.pool_head):
        try:
            version = json.loads(storage.read_text(layout.pool_head)).get("version")
        except (ValueError, AttributeError):
            return  # damaged: loading falls back to the previous version
        _check_version(version, layout.pool_head)


def _check_version(version, uri: str) -> None:
    if version != STATE_VERSION:
        raise PoolStateError(
            f"{uri}: pool state version {version} is not {STATE_VERSION}: this run directory was "
            "written by an incompatible s4al-ray; start a new experiment with name=<new name>"
        )


def labeled_digest(labeled: list[str]) -> str:
    return hashlib.sha256("\n".join(labeled).encode()).hexdigest()[:16]


def head_text(
    layout: RunLayout,
    state: PoolState,
    ledger: list[dict] | None = None,
    deltas: dict[int, str] | None = None,
) -> str:
    """The head of ``state`` (or of ``state`` with ``ledger`` as its rounds); ``deltas``: the
    file names of rounds already written (a run begun before parquet deltas has .json ones)."""
    deltas = deltas or {}
    rounds = [
        {
            "round": e["round"],
            "digest": e["digest"],
            "pixels": e["pixels"],
            "regions": e["regions"],
            "images": e["images"],
            "class_pixels": e["class_pixels"],
            "delta": deltas.get(e["round"], layout.pool_round_name(e["round"])),
        }
        for e in (state.ledger if ledger is None else ledger)
    ]
    head = {
        "version": STATE_VERSION,
        "region_size": state.region_size,
        "regions": state.maps.kind,
        "num_classes": state.num_classes,
        "initial_class_pixels": state.initial_class_pixels,
        "labeled": {"count": len(state.labeled), "digest": labeled_digest(state.labeled)},
        "rounds": rounds,
    }
    return json.dumps(head, indent=1)


def delta_bytes(chosen: RoundSelection, round_index: int) -> bytes:
    """A round's delta file: parquet, one row per image (``sample_id``, ``regions``), the round
    and digest in its metadata. A 5-million-region round: ~0.1 s, where JSON took ~0.9 s."""
    regions = pa.LargeListArray.from_arrays(
        pa.array(chosen.starts, pa.int64()), pa.array(chosen.regions, pa.int32())
    )
    table = pa.table({"sample_id": pa.array(chosen.ids, pa.string()), "regions": regions})
    meta = {"version": STATE_VERSION, "round": int(round_index), "digest": chosen.digest}
    table = table.replace_schema_metadata({"s4al": json.dumps(meta)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def warm_parquet_writer() -> None:
    """The first parquet write of a process sets the writer up (~0.3 s here): done when the
    pool actor starts, so round 0's commit does not pay it."""
    pq.write_table(pa.table({"warm": pa.array([], pa.int8())}), pa.BufferOutputStream())


def read_delta(uri: str) -> RoundSelection:
    """A delta file, parquet or (runs begun before it) JSON columns; its regions are sorted
    again and its ids checked sorted: a file is not trusted."""
    if uri.endswith(".json"):
        delta = json.loads(storage.read_text(uri))
        return RoundSelection.from_columns(delta["sample_ids"], delta["counts"], delta["regions"])
    table = pq.read_table(pa.BufferReader(storage.read_bytes(uri)))
    regions = table.column("regions").combine_chunks()
    counts = np.diff(regions.offsets.to_numpy())
    values = regions.values.to_numpy(zero_copy_only=False)
    return RoundSelection.from_columns(table.column("sample_id").to_pylist(), counts, values)


def _write_delta(layout: RunLayout, entry: dict) -> None:
    chosen = RoundSelection.of(entry["selection"])
    storage.write_bytes(layout.pool_round(entry["round"]), delta_bytes(chosen, entry["round"]))


def write_initial(layout: RunLayout, state: PoolState) -> str:
    """Persist a new run's state; returns the head written."""
    storage.write_text(
        layout.pool_labeled, json.dumps({"version": STATE_VERSION, "labeled": state.labeled})
    )
    for entry in state.ledger:
        _write_delta(layout, entry)
    head = head_text(layout, state)
    storage.write_text(layout.pool_head, head)
    return head


def write_commit(layout: RunLayout, state: PoolState, entry: dict, previous_head: str) -> str:
    """Persist ``entry`` as the next round of ``state``; returns the new head. ``previous_head``
    is the last head known good (not re-read: it may be the damaged one)."""
    _write_delta(layout, entry)
    written = {m["round"]: m["delta"] for m in json.loads(previous_head)["rounds"]}
    head = head_text(layout, state, [*state.ledger, entry], written)
    storage.write_text(layout.pool_head_previous, previous_head)
    storage.write_text(layout.pool_head, head)
    return head


def read_state(layout: RunLayout, sizes: ImageSizes, warn=print) -> tuple[PoolState, str] | None:
    """(state, its head) as persisted, or None for a new run. Writes are atomic, but a head
    damaged by anything else (a copy cut short, a full disk on a network filesystem) must not
    lose the run: the previous version, kept beside it, is used instead, with a warning."""
    check_format(layout)
    uri, previous = layout.pool_head, layout.pool_head_previous
    if not storage.exists(uri) and not storage.exists(previous):
        return None
    try:
        text = storage.read_text(uri)
        head = _parse_head(text, uri)
    except PoolStateError:
        raise
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        if not storage.exists(previous):
            raise PoolStateError(
                f"{uri} is unreadable ({str(err)[:80]}) and has no previous version beside it"
            ) from err
        warn(
            f"WARNING: {uri} is unreadable ({str(err)[:80]}); using the previous version "
            f"{previous}: the last commit is redone"
        )
        text = storage.read_text(previous)
        head = _parse_head(text, previous)
    try:
        return _build(layout, head, sizes), text
    except DamagedPoolFile as err:
        # A head that parses but names a delta cut short (the crash happened between the
        # delta and the head) or damaged: the previous head does not name it.
        if not storage.exists(previous) or storage.read_text(previous) == text:
            raise
        warn(f"WARNING: {err}; using the previous version {previous}: the last commit is redone")
        text = storage.read_text(previous)
        return _build(layout, _parse_head(text, previous), sizes), text


def _parse_head(text: str, uri: str) -> dict:
    head = json.loads(text)
    if not isinstance(head, dict):
        raise TypeError("not a JSON object")
    _check_version(head.get("version"), uri)
    missing = [k for k in _HEAD_KEYS if k not in head]
    if missing:
        raise KeyError(f"missing {missing}")
    for meta in head["rounds"]:
        int(meta["round"]), str(meta["digest"]), str(meta["delta"]), int(meta["pixels"])
    return head


def _build(layout: RunLayout, head: dict, sizes: ImageSizes) -> PoolState:
    """Replay the rounds the head names through ``commit``: every invariant is checked again,
    against the image sizes of today's manifest."""
    try:
        labeled = json.loads(storage.read_text(layout.pool_labeled))["labeled"]
        expected = head["labeled"]["digest"]
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        raise DamagedPoolFile(f"{layout.pool_labeled} is unreadable ({str(err)[:80]})") from err
    if labeled_digest(labeled) != expected:
        raise PoolStateError(
            f"{layout.pool_labeled} is not the labeled set {layout.pool_head} "
            "was written with; start a new experiment with name=<new name>"
        )
    # Heads written before superpixels existed have no "regions": squares.
    kind = head.get("regions", "squares")
    maps = RegionMaps.of_run(kind, head["region_size"], layout.superpixels_dir)
    try:
        segments = read_segment_areas(maps, sizes.ids) if maps.superpixels else None
        state = PoolState(
            head["region_size"],
            head["num_classes"],
            sizes,
            labeled,
            head["initial_class_pixels"],
            maps,
            segments,
        )
    except ConfigError as err:  # the superpixels' areas: missing or unreadable, named
        raise PoolStateError(str(err)) from err
    except ValueError as err:
        raise _unfit(layout, layout.pool_labeled, err) from err
    for meta in head["rounds"]:
        uri = layout.pool_file(meta["delta"])
        try:
            chosen = read_delta(uri)
        except (ValueError, KeyError, TypeError, FileNotFoundError, pa.ArrowException) as err:
            raise DamagedPoolFile(
                f"{uri}: round {meta['round']}'s selection is unreadable ({str(err)[:80]})"
            ) from err
        if chosen.digest != meta["digest"]:
            raise PoolStateError(
                f"{uri}: not the selection the head committed for round {meta['round']} "
                f"(digest {chosen.digest}, head says {meta['digest']})"
            )
        try:
            entry = state.commit(meta["round"], chosen, meta["class_pixels"])
        except ValueError as err:
            raise _unfit(layout, uri, err) from err
        if entry["pixels"] != meta["pixels"]:
            raise _unfit(
                layout, uri, ValueError(f"{entry['pixels']} px, head says {meta['pixels']}")
            )
    return state


def _unfit(layout: RunLayout, uri: str, err: Exception) -> PoolStateError:
    return PoolStateError(
        f"{uri} does not fit this dataset's train images ({err}): the run at {layout.run_dir} "
        "was made with other data; start a new experiment with name=<new name>"
    )
