"""Pool bookkeeping at scale: one round's driver-side work on simulated pools of 10^4-10^6 images.

No pixels: a manifest (pyarrow, as ``DatasetInfo.manifest``) of 2048x1024 images, 64-px regions
(512 per image), 1% of the images fully labeled, and per round 1% of the train pixels acquired
(5.12 regions per image, spread over the pool as random scores spread them). Per round, as
``Experiment.run_round`` does it:

- snapshot: ``pool_snapshot`` with the state the driver holds (its initial state in round 0,
  the last round's after its commit): the actor's fingerprint is compared and the state sent
  only when it differs (``--fetch-snapshot``: sent every round, as before), then ``before(r)``;
- worker items: the pool rows each of 4 train workers reads (the manifest rows sliced per worker;
  the HEAD variant builds today's ``jobs.pool_rows`` list and the ``acquired`` dict instead);
- acquisition: as ``teacher.read_teacher_output`` and ``Experiment.acquire`` do it, the driver
  sums the 64-image teacher blocks' candidate histograms (``acquisition_cutoff``) into the
  round's cut-off, merges the candidates that pass it and selects. The teacher's side (random
  region scores for every pool region, block histograms, cutting the candidates) is simulated
  outside the timed parts; the cut itself, Ray Data tasks on a cluster, is timed apart as
  ``cut_off_tasks_s``. HEAD ranked every pool region's score in the driver
  (``select_regions``; skipped above ``--acquisition-max`` images);
- commit: send the selection to the actor, which validates, persists and returns the ledger
  entry without the selection (the driver holds it), then ``with_entry`` in the driver.

The pool actor runs in a process of its own (spawned; state and entries cross as pickles, as
Ray sends them), so the driver's peak is the driver's. Each size and variant runs in a fresh
driver process. Peak RSS is the kernel's high-water mark (``VmHWM`` in /proc/self/status), reset
before each part through /proc/self/clear_refs; where that cannot be reset, the figure is
``resource.getrusage`` ``ru_maxrss`` (the peak so far). The commit's selection is drawn directly
(same seed for both variants, as RoundSelection columns, what ``select`` returns, for the new
state; as a dict of lists for HEAD), so its cost does not depend on whether acquisition ran.

The "HEAD" variant is the single-JSON pool state this replaced (``s4al_ray/pool/state.py`` of
``--before-rev``, loaded from git at run time; its actor rewrote ``state.json`` and a copy of it on
every commit and sent the state as JSON text), measured beside the new one in the same run.

    .venv/bin/python benchmarks/scale.py            # 10^4, 10^5, 10^6 (+ HEAD at 10^4, 10^5)
    .venv/bin/python benchmarks/scale.py --quick    # 10^3, 10^4, two rounds: ~1 minute
"""

from __future__ import annotations

import os
import pickle
import re
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

HEIGHT, WIDTH, REGION, CLASSES, WORKERS = 1024, 2048, 64, 19, 4
BLOCK, CHUNK = 64, 8192  # images per teacher block; images simulated at once
REGIONS_PER_IMAGE = (HEIGHT // REGION) * (WIDTH // REGION)
BEFORE_REV = "67e19fb2307d39122b4ea1c68f8654bf8a3e2549"  # the last single-JSON pool state
RESULTS = os.path.join(common.ROOT, "benchmarks", "results", "scale.json")
PARTS = ("snapshot_s", "worker_items_s", "acquisition_s", "commit_s")


# -- memory
def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_gb() -> float:
    try:
        status = open("/proc/self/status").read()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 2**20
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# -- the state before this change, loaded from git
def head_state_module(rev: str):
    return common.module_at(rev, "s4al_ray/pool/state.py", "head_pool_state")


# -- the pool actor's process
def serve(conn, variant: str, run_dir: str, rev: str) -> None:
    """The actor: the new ``PoolStateHolder``, or HEAD's state with HEAD's persistence."""
    from s4al_ray import storage
    from s4al_ray.layout import RunLayout

    layout = RunLayout(run_dir)
    initial = pickle.loads(conn.recv_bytes())
    if variant == "new":
        from s4al_ray.pool.actor import PoolStateHolder

        holder = PoolStateHolder(layout, initial, {})
    else:
        old = head_state_module(rev)
        state = old.PoolState.from_json(initial)
        uri, previous = layout.legacy_pool_state, layout.path("pool", "state.prev.json")

        def persist() -> None:  # HEAD's PoolStateHolder._persist
            if storage.exists(uri):
                storage.write_bytes(previous, storage.read_bytes(uri))
            storage.write_text(uri, state.to_json())

        persist()
    conn.send_bytes(b"ready")
    while True:
        op, payload = pickle.loads(conn.recv_bytes())
        if op == "fingerprint":
            out = holder.fingerprint().encode()
        elif op == "snapshot":
            if variant == "new":
                out = pickle.dumps(holder.snapshot(), protocol=5)
            else:
                out = state.to_json().encode()
        elif op == "commit":
            r, selection, class_pixels = payload
            if variant == "new":
                entry = holder.commit(r, selection, class_pixels, with_selection=False)
            else:
                entry = state.commit(r, selection, class_pixels)
                persist()
            out = pickle.dumps(entry, protocol=5)
        else:
            conn.send_bytes(pickle.dumps(peak_gb()))
            return
        conn.send_bytes(out)


class Actor:
    def __init__(self, variant: str, run_dir: str, rev: str, initial) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve, args=(child, variant, run_dir, rev))
        self.proc.start()
        self.conn.send_bytes(pickle.dumps(initial, protocol=5))
        assert self.conn.recv_bytes() == b"ready"

    def call(self, op: str, payload=None) -> bytes:
        self.conn.send_bytes(pickle.dumps((op, payload), protocol=5))
        return self.conn.recv_bytes()

    def close(self) -> float:
        peak = pickle.loads(self.call("stop"))
        self.proc.join()
        return peak


# -- the simulated pool
def manifest(n: int):
    import pyarrow as pa

    ids = [f"frame_{k:07d}" for k in range(n)]
    return pa.table(
        {
            "sample_id": ids,
            "image_uri": [f"s3://fleet/images/{s}.jpg" for s in ids],
            "mask_uri": [f"s3://fleet/masks/{s}.png" for s in ids],
            "split": ["train"] * n,
            "height": pa.array([HEIGHT] * n, pa.int32()),
            "width": pa.array([WIDTH] * n, pa.int32()),
        }
    )


def selections(n: int, labeled_every: int, rounds: int, columns: bool, seed: int = 0):
    """Per round, 1% of the train pixels as random not-yet-acquired pool regions: today's
    ``{sample_id: regions}`` dict, or (``columns``) the ``RoundSelection`` a vectorised
    acquisition can hand over instead."""
    import numpy as np

    from s4al_ray.pool.selection import RoundSelection

    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(np.arange(n) % labeled_every != 0)
    per_round = int(0.01 * n * REGIONS_PER_IMAGE)
    taken = np.empty(0, np.int64)
    for _ in range(rounds):
        draw = np.unique(rng.integers(0, pool.size * REGIONS_PER_IMAGE, int(per_round * 1.1)))
        draw = draw[~np.isin(draw, taken, assume_unique=True)]
        draw = np.sort(rng.permutation(draw)[:per_round])
        taken = np.union1d(taken, draw)
        image, region = np.divmod(draw, REGIONS_PER_IMAGE)
        cuts = np.flatnonzero(np.diff(image)) + 1
        images = pool[image[np.concatenate([[0], cuts])]]
        ids = [f"frame_{k:07d}" for k in images.tolist()]
        if columns:
            chosen = RoundSelection.from_columns(ids, np.diff(np.r_[0, cuts, draw.size]), region)
            chosen.positions = images  # as acquisition.select hands them on (pool_order)
            yield chosen
        else:
            yield {s: p.tolist() for s, p in zip(ids, np.split(region, cuts))}


def global_acquisition(state, scores: dict, budget_pixels: int) -> dict:
    """HEAD's acquisition: every pool image's region scores ranked at once in the driver."""
    from s4al_ray.acquisition import select_regions

    grids = {s: state.grid(s) for s in scores}
    return select_regions(scores, grids, state.acquired, budget_pixels=budget_pixels)


def teacher_blocks(state, r: int):
    """The teacher's side, simulated a chunk of pool images at a time: random region scores of
    the regions not yet acquired, as the candidates of its 64-image blocks (a block is far
    smaller than a 1% budget, so ``block_candidates`` keeps all of them) and each block's
    histogram. The same chunk is drawn again, identically, when it is cut."""
    import numpy as np

    from s4al_ray.acquisition import Candidates
    from s4al_ray.pool.index import RegionIndex

    index = RegionIndex(state.sizes, REGION)
    positions, acquired = state.pool_positions, state.acquired
    for lo in range(0, positions.size, CHUNK):
        hi = min(positions.size, lo + CHUNK)
        score = np.random.default_rng((r, lo)).random((hi - lo) * REGIONS_PER_IMAGE, np.float32)
        image = np.repeat(np.arange(lo, hi, dtype=np.int64), REGIONS_PER_IMAGE)
        region = np.tile(np.arange(REGIONS_PER_IMAGE, dtype=np.int64), hi - lo)
        free = ~acquired.contains(index.bits(positions[image], region))
        area = np.full(int(free.sum()), REGION * REGION, np.int64)
        yield Candidates(image[free], region[free], score[free], area)


def block_histograms(c) -> list:
    """Each 64-image block's ``CandidateHistogram`` of one chunk's candidates (what
    ``CandidateHistogram.of`` gives per block, for a whole chunk at once)."""
    import numpy as np

    from s4al_ray.acquisition_cutoff import CandidateHistogram

    keys = CandidateHistogram.keys_of(c)  # below 2^48: 16 bits of bin, 32 of area
    distinct, counts = np.unique((c.image // BLOCK) << 48 | keys, return_counts=True)
    owner, key = distinct >> 48, distinct & ((1 << 48) - 1)
    cuts = np.flatnonzero(np.diff(owner)) + 1
    return [
        CandidateHistogram(k, n.astype(np.int64))
        for k, n in zip(np.split(key, cuts), np.split(counts, cuts))
    ]


def worker_items(variant: str, table, state) -> list:
    import numpy as np
    import pyarrow as pa

    if variant == "new":  # each worker's rows, sliced from the manifest by position
        shards = np.array_split(state.pool_positions, WORKERS)
        return [table.take(pa.array(shard)) for shard in shards]
    # HEAD: jobs.pool_rows over data.rows("train"), and the acquired dict, in every config
    by_id = {row["sample_id"]: row for row in table.to_pylist() if row["split"] == "train"}
    return [[by_id[s] for s in state.pool_ids], state.acquired]


def drive(variant: str, n: int, rounds: int, acquire: bool, rev: str, fetch: bool, conn) -> None:
    """One size and variant, in a fresh driver process; sends its figures back on ``conn``."""

    from s4al_ray.pool.index import ImageSizes
    from s4al_ray.pool.state import PoolState

    old = head_state_module(rev) if variant == "head" else None
    run_dir = tempfile.mkdtemp(prefix="s4al-scale-")
    t0 = time.perf_counter()
    table = manifest(n)
    ids = table.column("sample_id").to_pylist()
    labeled_every = 100
    labeled = ids[::labeled_every]
    if old is None:
        sizes = ImageSizes(ids, table.column("height"), table.column("width"))
        initial = PoolState(REGION, CLASSES, sizes, labeled)
    else:
        sizes = {s: [HEIGHT, WIDTH] for s in ids}
        initial = old.PoolState(REGION, CLASSES, sizes, labeled).to_json()
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    actor = Actor(variant, run_dir, rev, initial)
    init_s = time.perf_counter() - t0
    # The driver keeps the state it built, as ``Experiment.prepare`` does (its first ``known``).
    known = initial if old is None and not fetch else None
    if known is not None:  # Experiment.prepare's pool_snapshot(known=initial), before round 0
        assert actor.call("fingerprint").decode() == known.fingerprint
    del initial, sizes
    resettable = reset_peak()
    rows = []
    columns = old is None  # what today's select returns; HEAD's state takes a dict
    for r, selection in enumerate(selections(n, labeled_every, rounds, columns)):
        row, known = one_round(r, selection, actor, old, variant, table, acquire, known)
        known = None if fetch else known
        row["pool_dir_mb"] = _tree_bytes(os.path.join(run_dir, "pool")) / 2**20
        rows.append(row)
    actor_peak = actor.close()
    shutil.rmtree(run_dir, ignore_errors=True)
    conn.send(
        {
            "variant": variant,
            "images": n,
            "setup_s": setup_s,
            "init_s": init_s,
            "rounds": rows,
            "peak_resettable": resettable,
            "driver_peak_gb": max(max(r["peak_gb"].values()) for r in rows),
            "actor_peak_gb": actor_peak,
            "load": common.load1(),
        }
    )


class Parts:
    """Seconds and peak RSS of each part of a round."""

    def __init__(self) -> None:
        self.row: dict = {k: None for k in PARTS}
        self.peaks: dict[str, float] = {}

    def run(self, name: str, fn):
        """Run ``fn`` as (more of) part ``name``: seconds add up, the peak is the largest."""
        reset_peak()
        started = time.perf_counter()
        out = fn()
        self.row[name] = (self.row[name] or 0.0) + time.perf_counter() - started
        self.peaks[name] = max(self.peaks.get(name, 0.0), peak_gb())
        return out


def one_round(r: int, selection, actor: Actor, old, variant: str, table, acquire: bool, known):
    """One round's parts; returns (its figures, the state the driver then holds)."""
    import numpy as np

    parts = Parts()

    def snapshot():  # as pool_snapshot(actor, known)
        if known is not None and actor.call("fingerprint").decode() == known.fingerprint:
            return known.before(r)
        data = actor.call("snapshot")
        fetched = pickle.loads(data) if old is None else old.PoolState.from_json(data.decode())
        return fetched.before(r)

    state = parts.run("snapshot_s", snapshot)
    parts.run("worker_items_s", lambda: worker_items(variant, table, state))
    budget = int(0.01 * state.total_pixels)
    task_s = None
    if acquire and old is None:
        chosen, task_s = cut_off_acquisition(parts, state, r, budget)
        assert abs(chosen.num_regions - budget // REGION**2) <= 1, chosen
    elif acquire:
        rng = np.random.default_rng(100 + r)
        pool_ids = state.pool_ids
        matrix = rng.random((len(pool_ids), REGIONS_PER_IMAGE), dtype=np.float32)
        scores = dict(zip(pool_ids, matrix))
        parts.run("acquisition_s", lambda: global_acquisition(state, scores, budget))
        del scores, matrix

    def commit():
        entry = pickle.loads(actor.call("commit", (r, selection, [1] * CLASSES)))
        if old is None:  # the driver attaches the selection it sent, as Experiment.acquire does
            entry = {**entry, "selection": selection}
        return state.with_entry(entry)

    after = parts.run("commit_s", commit)
    assert after.committed_rounds == list(range(r + 1))
    row = {"round": r, **parts.row, "peak_gb": parts.peaks, "cut_off_tasks_s": task_s}
    row["round_s"] = sum(row[k] or 0.0 for k in PARTS)
    return row, (after if old is None else None)


def cut_off_acquisition(parts: "Parts", state, r: int, budget: int):
    """The round loop's acquisition: the driver sums the blocks' histograms and finds the
    cut-off (``read_teacher_output``), the candidates are cut where they lie (Ray Data tasks on
    a cluster; timed apart, not driver work), and the driver merges what passes and selects."""
    import numpy as np

    from s4al_ray.acquisition import Candidates, select
    from s4al_ray.acquisition_cutoff import CandidateHistogram, HistogramSum

    # The blocks' histograms go to a file, as the teacher's parquet holds them, and the driver
    # reads them back a few hundred blocks at a time, as read_teacher_output does.
    spool = tempfile.TemporaryFile()
    sizes = []
    for c in teacher_blocks(state, r):
        for hist in block_histograms(c):
            spool.write(hist.keys.astype("<i8").tobytes() + hist.counts.astype("<i8").tobytes())
            sizes.append(hist.keys.size)

    def find_cutoff():
        total = HistogramSum()
        spool.seek(0)
        for lo in range(0, len(sizes), 256):  # a parquet batch of ~256 blocks, added at once
            keys, counts = [], []
            for size in sizes[lo : lo + 256]:
                pair = np.frombuffer(spool.read(16 * size), "<i8")
                keys.append(pair[:size])
                counts.append(pair[size:])
            total.add(CandidateHistogram(np.concatenate(keys), np.concatenate(counts)))
        return total.result().cutoff(budget)

    cutoff = parts.run("acquisition_s", find_cutoff)
    spool.close()
    started = time.perf_counter()
    kept = Candidates.concat([cutoff.keep(c) for c in teacher_blocks(state, r)])
    task_s = time.perf_counter() - started

    def merge_and_select():
        return select(kept, state.pool_ids, budget_pixels=budget)

    return parts.run("acquisition_s", merge_and_select), task_s


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run_one(variant: str, n: int, rounds: int, acquire: bool, rev: str, fetch: bool) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=drive, args=(variant, n, rounds, acquire, rev, fetch, theirs))
    proc.start()
    result = ours.recv()
    proc.join()
    return result


def summary(result: dict) -> dict:
    """The figures of a run's worst round (the largest sum of the parts)."""
    worst = max(result["rounds"], key=lambda r: r["round_s"])
    keys = [*PARTS, "round_s", "cut_off_tasks_s"]
    return {k: worst.get(k) for k in keys}


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="pool sizes (images)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per size (3)")
    parser.add_argument(
        "--acquisition-max",
        type=int,
        default=None,
        help="largest pool on which HEAD's acquisition (select_regions over every score) runs "
        "(100000; 1000 with --quick)",
    )
    parser.add_argument("--before-max", type=int, default=100_000, help="largest HEAD pool")
    parser.add_argument("--before-rev", default=BEFORE_REV, help="git revision of 'HEAD'")
    parser.add_argument(
        "--fetch-snapshot",
        action="store_true",
        help="send the whole state every round (before the driver kept its copy)",
    )
    args = parser.parse_args(argv)
    sizes = args.sizes or ([1_000, 10_000] if args.quick else [10_000, 100_000, 1_000_000])
    rounds = args.rounds or (2 if args.quick else 3)
    json_path = args.json or (None if args.quick else RESULTS)
    acquisition_max = args.acquisition_max or (1_000 if args.quick else 100_000)
    common.header("Pool bookkeeping at scale", args.quick)
    print(
        f"{HEIGHT}x{WIDTH} images, {REGION}-px regions ({REGIONS_PER_IMAGE} per image), 1% "
        f"labeled images, 1% of pixels per round, {rounds} rounds, {WORKERS} workers; "
        "selections committed as RoundSelection columns (HEAD: dicts of lists)"
    )
    results = []
    for n in sizes:
        variants = ["new"] + (["head"] if n <= args.before_max else [])
        for variant in variants:
            acquire = variant == "new" or n <= acquisition_max
            result = run_one(variant, n, rounds, acquire, args.before_rev, args.fetch_snapshot)
            results.append(result)
            s = summary(result)
            print(
                f"  {n:>9,d} images  {variant:<4s} round {s['round_s']:7.2f}s  driver peak "
                f"{result['driver_peak_gb']:.2f} GB  actor peak {result['actor_peak_gb']:.2f} "
                f"GB  load {result['load']:.1f}",
                flush=True,
            )
    table_rows = []
    for result in results:
        s = summary(result)
        last = result["rounds"][-1]
        table_rows.append(
            [
                f"{result['images']:,d}",
                "HEAD" if result["variant"] == "head" else "new",
                *[("-" if s[k] is None else f"{s[k]:.3f}") for k in PARTS],
                f"{s['round_s']:.2f}",
                "-" if s["cut_off_tasks_s"] is None else f"{s['cut_off_tasks_s']:.1f}",
                f"{result['driver_peak_gb']:.2f}",
                f"{result['actor_peak_gb']:.2f}",
                f"{last['pool_dir_mb']:.1f}",
            ]
        )
    headers = ["images", "state", "snapshot s", "worker items s", "acquisition s", "commit s"]
    headers += ["round s", "cut-off tasks s", "driver peak GB", "actor peak GB", "pool files MB"]
    print(common.table(headers, table_rows, f"Worst of {rounds} rounds ('-': not run)"))
    new = [r for r in results if r["variant"] == "new"]
    _targets(new)
    common.write_json(
        json_path,
        {
            "sizes": [r["images"] for r in new],
            "round_bookkeeping_s": [summary(r)["round_s"] for r in new],
            "driver_peak_gb": [r["driver_peak_gb"] for r in new],
            "parts": {k: [summary(r)[k] for r in new] for k in PARTS},
            "head": {
                "rev": args.before_rev,
                "sizes": [r["images"] for r in results if r["variant"] == "head"],
                "round_bookkeeping_s": [
                    summary(r)["round_s"] for r in results if r["variant"] == "head"
                ],
                "driver_peak_gb": [r["driver_peak_gb"] for r in results if r["variant"] == "head"],
            },
            "acquisition_max": acquisition_max,
            "snapshot": "sent every round" if args.fetch_snapshot else "pool_snapshot(known=)",
            "selection_form": "RoundSelection columns (HEAD: dict of lists)",
            "peak_rss": "VmHWM, reset per part via /proc/self/clear_refs"
            if all(r["peak_resettable"] for r in results)
            else "ru_maxrss (not resettable: the peak so far)",
            "machine": common.machine(),
            "runs": results,
        },
    )
    return 0


def _targets(new: list[dict]) -> None:
    by_size = {r["images"]: summary(r) | {"peak": r["driver_peak_gb"]} for r in new}
    big = by_size.get(1_000_000)
    if big is None:
        return
    print(
        f"\n10^6 images: bookkeeping {big['round_s']:.2f}s (target <= 10), driver peak "
        f"{big['peak']:.2f} GB (target <= 2)"
        + ("" if big["acquisition_s"] is not None else "; acquisition not run (see --help)")
    )
    small = by_size.get(100_000)
    if small is not None:  # over the parts run at both sizes
        common_parts = [k for k in PARTS if big[k] is not None and small[k] is not None]
        ratio = sum(big[k] for k in common_parts) / sum(small[k] for k in common_parts)
        print(f"10^5 -> 10^6: {ratio:.1f}x over {', '.join(common_parts)} (target <= 12x)")


if __name__ == "__main__":
    sys.exit(common.run(main))
