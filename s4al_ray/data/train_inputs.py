"""A round's training inputs as one parquet file the train workers read by reference.

The driver writes, once per round, every labeled, pool and val row the student may use (with each
pool image's acquired regions and sampling weight) to ``<run>/train_inputs/round_XXX.parquet``;
the job carries only its URI. Each worker reads the labeled set, and only its own contiguous
range of the pool and val sets: rows are sorted by (set, sample id) and numbered within their
set, so a range is a few row groups and the others are skipped. A worker's memory for the pool
is O(pool / workers), not O(pool). Class-balanced weights are normalised within each shard.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from s4al_ray import storage

SETS = ("labeled", "pool", "val")
SCHEMA = pa.schema(
    [
        ("set", pa.string()),
        ("position", pa.int64()),  # index within the set, in sample-id order
        ("sample_id", pa.string()),
        ("image_uri", pa.string()),
        ("mask_uri", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("acquired", pa.list_(pa.int32())),  # pool: regions with ground truth
        ("weight", pa.float64()),  # pool: class-balanced sampling weight (1 without)
    ]
)


def write_train_inputs(
    uri: str,
    labeled: list[dict],
    pool: list[dict],
    val: list[dict],
    acquired: dict[str, list[int]],
    weights: dict[str, float] | None,
) -> None:
    """Write the round's rows (manifest rows: sample_id, image_uri, mask_uri, height, width)."""
    records = []
    counts = {}
    for name, rows in zip(SETS, (labeled, pool, val)):
        counts[name] = len(rows)
        for position, row in enumerate(sorted(rows, key=lambda r: r["sample_id"])):
            sid = row["sample_id"]
            records.append(
                {
                    "set": name,
                    "position": position,
                    "sample_id": sid,
                    "image_uri": row["image_uri"],
                    "mask_uri": row["mask_uri"],
                    "height": int(row["height"]),
                    "width": int(row["width"]),
                    "acquired": list(acquired.get(sid, [])) if name == "pool" else [],
                    "weight": float(weights[sid]) if (weights and name == "pool") else 1.0,
                }
            )
    table = pa.Table.from_pylist(records, schema=SCHEMA)
    table = table.replace_schema_metadata({"counts": json.dumps(counts)})
    fs, path = storage.filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        pq.write_table(table, out, row_group_size=4096)


def shard_range(count: int, rank: int, world: int) -> tuple[int, int]:
    """Worker ``rank``'s contiguous share of ``count`` rows; every rank gets one when
    ``count >= world``."""
    return count * rank // world, count * (rank + 1) // world


def read_train_inputs(uri: str, which: str, rank: int = 0, world: int = 1) -> list[dict]:
    """The rows of set ``which``: all of them, or worker ``rank`` of ``world``'s range; sorted by
    sample id. A pool smaller than the worker count gives each worker the whole pool (a worker
    without pool images could not draw its batches)."""
    if which not in SETS:
        raise ValueError(f"unknown training set {which!r}; one of {SETS}")
    fs, path = storage.filesystem(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    condition = pads.field("set") == which
    count = json.loads(dataset.schema.metadata[b"counts"])[which]
    low, high = shard_range(count, rank, world)
    if world > 1 and (count >= world or which != "pool"):
        condition = condition & (pads.field("position") >= low) & (pads.field("position") < high)
    table = dataset.to_table(filter=condition)
    rows = table.drop_columns(["set", "position"]).to_pylist()
    return sorted(rows, key=lambda r: r["sample_id"])
