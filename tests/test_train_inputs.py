"""Train workers read their inputs by reference: the labeled set, and their own pool shard."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from s4al_ray.data.train_inputs import read_train_inputs, write_train_inputs
from s4al_ray.data.training import read_pseudo_labels


def _rows(prefix: str, count: int) -> list[dict]:
    return [
        {
            "sample_id": f"{prefix}{i:04d}",
            "image_uri": f"/img/{prefix}{i}.png",
            "mask_uri": f"/mask/{prefix}{i}.png",
            "height": 64,
            "width": 80,
            "split": "train",
        }
        for i in range(count)
    ]


def test_each_worker_reads_only_its_shard(tmp_path):
    uri = str(tmp_path / "inputs" / "round_001.parquet")
    labeled, pool, val = _rows("l", 30), _rows("p", 1000), _rows("v", 50)
    acquired = {"p0003": [1, 4], "p0999": [0]}
    weights = {r["sample_id"]: 1.0 + i % 3 for i, r in enumerate(pool)}
    write_train_inputs(uri, labeled, pool, val, acquired, weights)

    assert [r["sample_id"] for r in read_train_inputs(uri, "labeled")] == [
        r["sample_id"] for r in labeled
    ]
    everything = read_train_inputs(uri, "pool")
    assert [r["sample_id"] for r in everything] == sorted(r["sample_id"] for r in pool)
    by_id = {r["sample_id"]: r for r in everything}
    assert by_id["p0003"]["acquired"] == [1, 4] and by_id["p0001"]["acquired"] == []
    assert by_id["p0005"]["weight"] == weights["p0005"]

    for world in (2, 3, 4):
        shards = [read_train_inputs(uri, "pool", rank, world) for rank in range(world)]
        ids = [[r["sample_id"] for r in shard] for shard in shards]
        assert sorted(sum(ids, [])) == sorted(by_id)  # together: the whole pool, once
        assert all(shard == sorted(shard) for shard in ids)  # a deterministic order
        assert max(map(len, ids)) < 1.25 * len(pool) / world  # even: O(pool / workers) each
        val_ids = sum(
            (
                [r["sample_id"] for r in read_train_inputs(uri, "val", k, world)]
                for k in range(world)
            ),
            [],
        )
        assert sorted(val_ids) == sorted(r["sample_id"] for r in val)


def test_pseudo_labels_read_for_a_shard_only(tmp_path):
    teacher = tmp_path / "teacher" / "size_00"
    teacher.mkdir(parents=True)
    ids = [f"p{i:04d}" for i in range(200)]
    pq.write_table(
        pa.table(
            {
                "sample_id": ids,
                "label_png": [s.encode() for s in ids],
                "conf_png": [b"c" + s.encode() for s in ids],
            }
        ),
        str(teacher / "part-0.parquet"),
        row_group_size=32,
    )
    wanted = set(ids[5:40:3])
    got = read_pseudo_labels(str(tmp_path / "teacher"), wanted)
    assert set(got) == wanted
    assert got["p0005"] == (b"p0005", b"cp0005")
    assert len(read_pseudo_labels(str(tmp_path / "teacher"))) == 200


def test_small_pools_give_every_worker_rows(tmp_path):
    """Contiguous ranges: with at least as many pool images as workers none is empty; with fewer,
    every worker gets the whole pool (it could not draw batches from nothing)."""
    uri = str(tmp_path / "round_001.parquet")
    write_train_inputs(uri, _rows("l", 3), _rows("p", 10), _rows("v", 4), {}, None)
    sizes = [len(read_train_inputs(uri, "pool", rank, 4)) for rank in range(4)]
    assert sum(sizes) == 10 and min(sizes) >= 2
    assert sum(len(read_train_inputs(uri, "val", rank, 4)) for rank in range(4)) == 4
    tiny = str(tmp_path / "round_002.parquet")
    write_train_inputs(tiny, _rows("l", 3), _rows("p", 2), _rows("v", 4), {}, None)
    assert [len(read_train_inputs(tiny, "pool", rank, 4)) for rank in range(4)] == [2, 2, 2, 2]
