"""Fixed cost per round on a multi-node cluster against one node, through `ray job submit`.

The smoke experiment (tiny compute: a round is almost all fixed cost) is submitted to two local
clusters of the same CPUs (``benchmarks/local_cluster.py``), one after the other:
- one node: a head with 2 CPUs, which also runs the work;
- multi-node: a head with no CPUs (drivers, job server) and 2 worker nodes of 1 CPU each, so
  every stage's work crosses nodes (Train workers, teacher tasks, the pool actor, the objects).
Per round the record's stage times (train: Ray Train start + the steps + publishing; teacher:
the Ray Data pass; acquire: selection + the pool actor's commit), median over rounds 1..n-1
(round 0 also pays first imports), plus the job's wall time. Storage is a local directory
declared shared (``storage_shared=true``), the same for both shapes, so the difference is the
cluster's shape, not S3.

    .venv/bin/python benchmarks/multinode.py            # ~5 min: 4 rounds per shape
    .venv/bin/python benchmarks/multinode.py --rounds 3 --json results/multinode.json
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from local_cluster import LocalCluster  # noqa: E402

STAGES = ("time/train_s", "time/teacher_s", "time/acquire_s", "time/round_s")
SHAPES = {"one node (head, 2 CPU)": (2, []), "head (0 CPU) + 2 workers (1 CPU)": (0, [1, 1])}


def _submit(head_cpus: int, workers: list[int], overrides: list[str], run_dir: str) -> dict:
    cluster = LocalCluster(head_cpus=head_cpus)
    try:
        for cpus in workers:
            cluster.add_worker(cpus)
        started = time.perf_counter()
        cluster.submit(overrides)
        wall = time.perf_counter() - started
        nodes = len(cluster.nodes())
    finally:
        cluster.close()
    records = []
    for name in sorted(os.listdir(os.path.join(run_dir, "rounds"))):
        with open(os.path.join(run_dir, "rounds", name)) as handle:
            records.append(json.load(handle))
    return {"wall_s": wall, "nodes": nodes, "records": records}


def main() -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per experiment (>= 2)")
    args = parser.parse_args()
    common.header("Fixed cost per round: multi-node against one node", args.quick)
    rounds = 2 if args.quick else max(2, args.rounds)
    scratch = common.scratch_dir()
    from s4al_ray.data.synthetic import generate_synthetic_dataset

    data = os.path.join(scratch, "data")
    generate_synthetic_dataset(data, num_train=24, num_val=6, height=64, width=80, seed=0)
    results = {}
    for index, (shape, (head_cpus, workers)) in enumerate(SHAPES.items()):
        name = f"shape{index}"
        overrides = [
            "--config",
            "configs/smoke.yaml",
            f"name={name}",
            f"storage={scratch}/runs",
            f"data.root={data}",
            "data.kind=folder",
            f"data.cache_dir={scratch}/cache",
            "storage_shared=true",
            f"loop.rounds={rounds}",
            "acquisition.total_budget=1.0",
            *args.overrides,
        ]
        print(f"\n{shape}: submitting {rounds} rounds ...", flush=True)
        results[shape] = _submit(head_cpus, workers, overrides, f"{scratch}/runs/{name}")
    rows = []
    for shape, result in results.items():
        later = result["records"][1:-1] or result["records"][1:]  # the last has no teacher pass
        rows.append(
            [shape, result["nodes"]]
            + [statistics.median(r[k] for r in later) for k in STAGES]
            + [result["wall_s"]]
        )
    one, many = rows
    rows.append(["multi-node / one node", ""] + [m / o for m, o in zip(many[2:], one[2:])])
    print(
        common.table(
            ["shape", "nodes", "train s", "teacher s", "acquire s", "round s", "job wall s"],
            rows,
            title=f"Per round, median of rounds 1..{rounds - 2} (`time/*` of the round records); "
            f"job wall = submit to end, {rounds} rounds",
        )
    )
    common.write_json(args.json, {"machine": common.machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
