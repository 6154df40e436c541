"""A round's training inputs as one parquet file the train workers read by reference.

The driver writes, once per round, every labeled, pool and val row the student may use (with each
pool image's acquired regions and sampling weight) to ``<run>/train_inputs/round_XXX.parquet``;
the job carries only its URI. Each worker reads the labeled set, and only its own shard of the
pool and val sets (rows hashed into buckets, the file sorted by bucket so a shard's read skips
the other row groups). A worker's memory for the pool is O(pool / workers), not O(pool).
"""

from __future__ import annotations

import zlib

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from s4al_ray import storage

BUCKETS = 1024  # shards are unions of buckets: any worker count up to this splits evenly
SETS = ("labeled", "pool", "val")
SCHEMA = pa.schema(
    [
        ("set", pa.string()),
        ("bucket", pa.int32()),
        ("sample_id", pa.string()),
        ("image_uri", pa.string()),
        ("mask_uri", pa.string()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("acquired", pa.list_(pa.int32())),  # pool: regions with ground truth
        ("weight", pa.float64()),  # pool: class-balanced sampling weight (1 without)
    ]
)


def bucket(sample_id: str) -> int:
    return zlib.crc32(sample_id.encode()) % BUCKETS


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
    for name, rows in zip(SETS, (labeled, pool, val)):
        for row in rows:
            sid = row["sample_id"]
            records.append(
                {
                    "set": name,
                    "bucket": bucket(sid),
                    "sample_id": sid,
                    "image_uri": row["image_uri"],
                    "mask_uri": row["mask_uri"],
                    "height": int(row["height"]),
                    "width": int(row["width"]),
                    "acquired": list(acquired.get(sid, [])) if name == "pool" else [],
                    "weight": float(weights[sid]) if (weights and name == "pool") else 1.0,
                }
            )
    records.sort(key=lambda r: (r["bucket"], r["sample_id"]))
    table = pa.Table.from_pylist(records, schema=SCHEMA)
    fs, path = storage.filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        pq.write_table(table, out, row_group_size=4096)


def shard_buckets(rank: int, world: int) -> list[int]:
    return [b for b in range(BUCKETS) if b % world == rank]


def read_train_inputs(uri: str, which: str, rank: int = 0, world: int = 1) -> list[dict]:
    """The rows of set ``which``: all of them, or worker ``rank`` of ``world``'s shard; sorted by
    sample id, so a shard's order (and the batches drawn from it) never depends on the file."""
    if which not in SETS:
        raise ValueError(f"unknown training set {which!r}; one of {SETS}")
    fs, path = storage.filesystem(uri)
    condition = pads.field("set") == which
    if world > 1:
        condition = condition & pads.field("bucket").isin(shard_buckets(rank, world))
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(filter=condition)
    rows = table.drop_columns(["set", "bucket"]).to_pylist()
    return sorted(rows, key=lambda r: r["sample_id"])
