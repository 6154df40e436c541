"""The pool state at scale: its invariants against a plain reference, per-round delta files, the
previous-version fallback, old run directories refused, and a commit's cost independent of the
pool's size."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from s4al_ray.layout import RunLayout
from s4al_ray.pool.actor import PoolStateHolder, load_state
from s4al_ray.pool.index import ImageSizes
from s4al_ray.pool.selection import RoundSelection, selection_digest
from s4al_ray.pool.state import PoolState
from s4al_ray.pool.store import PoolStateError, check_format, delta_bytes
from s4al_ray.regions import RegionGrid

REGION = 16


def _pool(n: int = 12, labeled: int = 2) -> PoolState:
    """Images of uneven sizes (a fixed size per id, whatever n), so edge regions are cut at the
    border in both directions."""
    k = np.arange(n)
    ids = [f"s{i:05d}" for i in range(n)]
    return PoolState(
        REGION, 3, ImageSizes(ids, 20 + 7 * k % 50, 20 + 11 * k % 70), ids[:labeled], [5, 6, 7]
    )


def _random_selection(state: PoolState, rng, taken: dict[str, set[int]]) -> dict:
    selection = {}
    for sample_id in rng.choice(state.pool_ids, size=4, replace=False):
        free = sorted(set(range(state.grid(sample_id).num_regions)) - taken.get(sample_id, set()))
        if free:
            count = int(rng.integers(1, min(4, len(free)) + 1))
            selection[str(sample_id)] = [int(r) for r in rng.choice(free, count, replace=False)]
    return selection


def _files(root) -> dict[str, bytes]:
    out = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def test_invariants_hold_against_a_plain_reference():
    rng = np.random.default_rng(1)
    state = _pool()
    taken: dict[str, set[int]] = {}
    for r in range(6):
        selection = _random_selection(state, rng, taken)
        entry = state.commit(r, selection, [1, 1, 1])
        true_pixels = sum(int(state.grid(s).areas[v].sum()) for s, v in selection.items())
        assert entry["pixels"] == true_pixels  # cut edge regions counted at their true size
        for s, v in selection.items():
            taken.setdefault(s, set()).update(v)
        again = next(iter(selection))
        with pytest.raises(ValueError, match="already acquired"):
            state.commit(r + 1, {again: [selection[again][0]]})
    assert state.acquired == {s: sorted(v) for s, v in taken.items()}
    assert set(state.pool_ids).isdisjoint(state.labeled)
    assert set(state.pool_ids) | set(state.labeled) == set(state.sizes)
    assert state.acquired_pixels == sum(
        int(state.grid(s).areas[sorted(v)].sum()) for s, v in taken.items()
    )
    for sample_id in state.sizes:
        grid = state.grid(sample_id)
        expected = grid.mask(sorted(taken.get(sample_id, ())))
        if sample_id in state.labeled:
            expected = np.ones((grid.height, grid.width), bool)
        assert np.array_equal(state.labeled_mask(sample_id), expected)
    assert state.labeled_class_pixels == [5 + 6, 6 + 6, 7 + 6]


def test_vectorised_areas_match_the_region_grid():
    state = _pool(n=30)
    for sample_id in state.sizes:
        grid = state.grid(sample_id)
        selection = {sample_id: list(range(grid.num_regions))}
        if sample_id in state.labeled:
            continue
        assert state.validate_selection(selection) == grid.height * grid.width
    h, w = state.sizes["s00003"]
    assert state.grid("s00003") == RegionGrid(h, w, REGION)


def test_commits_are_idempotent_and_conflicts_refused(tmp_path):
    layout = RunLayout(str(tmp_path))
    holder = PoolStateHolder(layout, _pool(), {})
    first = holder.commit(0, {"s00003": [2, 0], "s00004": [1], "s00005": []}, [1, 2, 3])
    files = _files(tmp_path)
    again = holder.commit(0, {"s00004": [1], "s00003": [0, 2]})  # same regions, other order
    assert again == first and holder.state.committed_rounds == [0]
    assert _files(tmp_path) == files  # a repeat writes nothing
    with pytest.raises(ValueError, match="different selection"):
        holder.commit(0, {"s00003": [1]})
    assert selection_digest({"a": [2, 1], "b": []}) == selection_digest({"a": [1, 2]})
    assert RoundSelection.of({"b": [3], "a": [2, 1]}) == {"a": [1, 2], "b": [3]}


def test_reload_equals_the_state_before_after_several_rounds(tmp_path):
    layout = RunLayout(str(tmp_path))
    rng = np.random.default_rng(2)
    holder = PoolStateHolder(layout, _pool(), {})
    taken: dict[str, set[int]] = {}
    for r in range(4):
        selection = _random_selection(holder.state, rng, taken)
        holder.commit(r, selection, [r, 1, 0])
        for s, v in selection.items():
            taken.setdefault(s, set()).update(v)
        reloaded = load_state(layout, _pool().sizes)
        assert reloaded == holder.state
        assert reloaded.acquired == holder.state.acquired
        assert reloaded.labeled_class_pixels == holder.state.labeled_class_pixels
        assert reloaded.labeled_pixels == holder.state.labeled_pixels
    # Ray hands the driver a pickled copy: the same state, views included.
    copy = pickle.loads(pickle.dumps(holder.snapshot()))
    assert copy == holder.state and copy.acquired == holder.state.acquired
    assert np.array_equal(copy.labeled_mask("s00005"), holder.state.labeled_mask("s00005"))


def test_damaged_head_falls_back_to_the_previous_version(tmp_path, capsys):
    layout = RunLayout(str(tmp_path))
    holder = PoolStateHolder(layout, _pool(), {})
    holder.commit(0, {"s00003": [0]}, [1, 0, 0])
    holder.commit(1, {"s00004": [1]}, [0, 1, 0])
    text = open(layout.pool_head).read()
    with open(layout.pool_head, "w") as handle:  # cut short, as a non-atomic copy would leave it
        handle.write(text[: len(text) // 2])
    reloaded = PoolStateHolder(layout, _pool(), {})
    assert "unreadable" in capsys.readouterr().out
    assert reloaded.state.committed_rounds == [0]
    reloaded.commit(
        1, {"s00004": [2]}, [0, 1, 0]
    )  # redone (here differently): overwrites the delta
    state = load_state(layout, _pool().sizes)
    assert state.committed_rounds == [0, 1] and state.acquired == {"s00003": [0], "s00004": [2]}
    # the next damage falls back to a good version again (the damaged head was never kept)
    with open(layout.pool_head, "w") as handle:
        handle.write("{")
    assert load_state(layout, _pool().sizes, warn=lambda line: None).committed_rounds == [0]
    os.remove(layout.pool_head_previous)
    with pytest.raises(PoolStateError, match="no previous version"):
        load_state(layout, _pool().sizes)


def test_old_format_run_directory_is_refused_by_name(tmp_path):
    layout = RunLayout(str(tmp_path / "old-run"))
    os.makedirs(layout.pool_dir)
    with open(layout.legacy_pool_state, "w") as handle:
        handle.write('{"version": 1, "ledger": []}')
    for attempt in (
        lambda: check_format(layout),
        lambda: load_state(layout, _pool().sizes),
        lambda: PoolStateHolder(layout, _pool(), {}),
    ):
        with pytest.raises(PoolStateError) as err:
            attempt()
        message = str(err.value)
        assert layout.run_dir in message and "state.json" in message and "name=" in message
    assert not os.path.exists(layout.pool_head)  # nothing written beside the old state


def test_a_commit_writes_the_head_and_one_delta_whatever_the_pool_size(tmp_path):
    written = {}
    for n in (20, 20000):
        root = tmp_path / f"pool{n}"
        holder = PoolStateHolder(RunLayout(str(root)), _pool(n=n), {})
        holder.commit(0, {"s00003": [0, 1]}, [1, 1, 1])
        before = _files(root)
        holder.commit(1, {"s00004": [2], "s00007": [0]}, [1, 1, 1])
        after = _files(root)
        changed = {k for k in after if before.get(k) != after[k]}
        assert changed == {
            "pool/head.json",
            "pool/head.prev.json",
            "pool/rounds/round_001.parquet",
        }
        written[n] = {k: after[k] for k in changed}
        assert "s00011" not in after["pool/head.json"].decode()  # no image list in the head
    assert written[20] == written[20000]  # the same bytes for a pool 1000x larger


def test_a_failed_write_changes_nothing_and_a_stale_delta_is_overwritten(tmp_path):
    layout = RunLayout(str(tmp_path))
    holder = PoolStateHolder(layout, _pool(), {})

    def crash(entry):
        raise OSError("disk full")

    with pytest.raises(OSError):
        holder.state.commit(0, {"s00003": [0]}, [1, 0, 0], persist=crash)
    assert holder.state.committed_rounds == [] and holder.state.acquired == {}
    os.makedirs(os.path.dirname(layout.pool_round(0)))
    with open(layout.pool_round(0), "wb") as handle:  # left by a commit that died before its head
        handle.write(delta_bytes(RoundSelection.of({"s00009": [3]}), 0))
    assert load_state(layout, _pool().sizes).committed_rounds == []  # not named by any head
    holder.commit(0, {"s00003": [0]}, [1, 0, 0])
    assert load_state(layout, _pool().sizes).acquired == {"s00003": [0]}


def test_reload_refuses_deltas_that_do_not_fit(tmp_path):
    layout = RunLayout(str(tmp_path))
    holder = PoolStateHolder(layout, _pool(), {})
    holder.commit(0, {"s00003": [0]}, [1, 0, 0])
    smaller = ImageSizes([f"s{k:05d}" for k in range(12) if k != 3], [30] * 11, [30] * 11)
    with pytest.raises(PoolStateError, match="does not fit this dataset"):
        load_state(layout, smaller)
    with open(layout.pool_round(0), "wb") as handle:
        handle.write(delta_bytes(RoundSelection.of({"s00004": [0]}), 0))
    with pytest.raises(PoolStateError, match="not the selection the head committed"):
        load_state(layout, _pool().sizes)


def test_json_deltas_of_runs_begun_before_parquet_are_read(tmp_path):
    """Run format 3 as the previous s4al-ray wrote it: the head names rounds/round_XXX.json,
    JSON columns. It is continued as is; new rounds are written as parquet beside it."""
    import json

    layout = RunLayout(str(tmp_path))
    holder = PoolStateHolder(layout, _pool(), {})
    holder.commit(0, {"s00003": [0, 2], "s00005": [1]}, [1, 0, 0])
    expected = holder.state
    os.remove(layout.pool_round(0))
    with open(layout.pool_file("rounds/round_000.json"), "w") as handle:
        json.dump({"version": 2, "round": 0, "sample_ids": ["s00003", "s00005"],
                   "counts": [2, 1], "regions": [0, 2, 1]}, handle)  # fmt: skip
    for uri in (layout.pool_head, layout.pool_head_previous):
        text = open(uri).read().replace("round_000.parquet", "round_000.json")
        open(uri, "w").write(text)
    again = PoolStateHolder(layout, _pool(), {})
    assert again.state == expected
    again.commit(1, {"s00004": [1]}, [0, 1, 0])
    assert os.path.exists(layout.pool_round(1)) and layout.pool_round(1).endswith(".parquet")
    assert load_state(layout, _pool().sizes).acquired == {
        "s00003": [0, 2],
        "s00004": [1],
        "s00005": [1],
    }


def test_before_and_with_entry():
    state = _pool()
    e0 = state.commit(0, {"s00003": [1]})
    e1 = state.commit(1, {"s00004": [2]})
    seen = state.before(1)
    assert seen.acquired == {"s00003": [1]} and seen.committed_rounds == [0]
    assert state.before(0).acquired_pixels == 0 and state.before(0).acquired == {}
    assert state.acquired == {"s00003": [1], "s00004": [2]}
    after = seen.with_entry(e1)
    assert after == state and seen.committed_rounds == [0]  # seen is unchanged
    assert seen.with_entry(e0) == seen  # an entry already there: nothing added
    with pytest.raises(ValueError, match="differently"):
        seen.with_entry({**e0, "selection": {"s00003": [2]}})
    twice = {"s00003": [1]}
    with pytest.raises(ValueError, match="already acquired"):
        seen.with_entry({**e1, "round": 2, "selection": twice, "digest": selection_digest(twice)})
    with pytest.raises(ValueError, match="not the selection the pool committed"):
        seen.with_entry({**e1, "selection": {"s00004": [3]}})
    pairs = RoundSelection.from_pairs(["s00005", "s00004", "s00005"], [7, 2, 1])
    assert pairs == {"s00004": [2], "s00005": [1, 7]}
    assert pairs.digest == selection_digest({"s00005": [7, 1], "s00004": [2]})


def test_fingerprint_names_the_pool_and_its_ledger(tmp_path):
    """Equal for a state and any copy of it (what the driver compares before fetching the
    actor's state again), different once a round is committed or the pool differs; a driver
    that attaches the selection it sent to the actor's short entry holds the actor's state."""
    state = _pool()
    holder = PoolStateHolder(RunLayout(str(tmp_path)), state, {})
    assert (
        holder.fingerprint() == state.fingerprint == pickle.loads(pickle.dumps(state)).fingerprint
    )
    selection = RoundSelection.of({"s00004": [2, 0], "s00006": [1]})
    entry = holder.commit(0, selection, [1, 2, 3], with_selection=False)
    assert entry["selection"] is None and entry["regions"] == 3
    after = state.with_entry({**entry, "selection": selection})
    assert after == holder.state and after.fingerprint == holder.fingerprint()
    assert state.fingerprint != after.fingerprint  # state itself is unchanged
    assert after.before(0).fingerprint == state.fingerprint
    assert holder.commit(0, selection, with_selection=False)["selection"] is None  # repeat
    wrong = RoundSelection.of({"s00004": [2, 0], "s00006": [1]})
    wrong.positions = np.array([6, 4])  # a caller's mistake: looked up instead of trusted
    assert state.with_entry({**entry, "selection": wrong}) == after
    other_labeled = PoolState(state.region_size, state.num_classes, state.sizes, ["s00001"])
    assert other_labeled.fingerprint != state.fingerprint
    squares_of_another_size = PoolState(10, state.num_classes, state.sizes, state.labeled)
    assert squares_of_another_size.fingerprint != state.fingerprint


def test_pool_snapshot_sends_the_state_only_when_the_drivers_copy_is_stale(ray_session, tmp_path):
    import ray

    from s4al_ray.pool.actor import PoolActor, pool_snapshot

    state = _pool()
    actor = PoolActor.remote(RunLayout(str(tmp_path)), state, {})
    assert pool_snapshot(actor, known=state) is state  # nothing sent: the actor's is this one
    selection = RoundSelection.of({"s00005": [1]})
    entry = ray.get(actor.commit.remote(0, selection, [1, 0, 0], with_selection=False))
    fetched = pool_snapshot(actor, known=state)  # stale: the committed state is sent
    assert fetched is not state and fetched.committed_rounds == [0]
    after = state.with_entry({**entry, "selection": selection})
    assert pool_snapshot(actor, known=after) is after and after == fetched
    ray.kill(actor)


def test_views_are_snapshots_and_derived_states_share_nothing_mutable():
    state = _pool()
    state.commit(0, {"s00003": [1]})
    view = state.acquired
    copy = state.before(5)
    state.commit(1, {"s00004": [2]})
    assert view == {"s00003": [1]} and copy.acquired == {"s00003": [1]}
    copy.commit(1, {"s00005": [0]})
    assert state.acquired == {"s00003": [1], "s00004": [2]}
    assert copy.acquired == {"s00003": [1], "s00005": [0]}
    assert "s00004" in state.acquired and "s00005" not in state.acquired
    assert state.acquired.get("s00006", []) == [] and len(state.acquired) == 2


def test_acquired_lists_a_pool_larger_than_one_unpacking_block():
    n = 70000  # more than one block of images in AcquiredRegions.items
    ids = [f"i{k:06d}" for k in range(n)]
    state = PoolState(REGION, 2, ImageSizes(ids, [40] * n, [50] * n), ids[:1])
    picked = {ids[k]: [k % 12, (k + 5) % 12] for k in range(1, n, 7)}
    state.commit(0, picked)
    expected = {k: sorted(v) for k, v in picked.items()}
    assert dict(state.acquired.items()) == expected
    assert state.acquired.lists(ids[:15]) == [expected.get(s, []) for s in ids[:15]]
    assert state.labeled_pixels == 40 * 50 + sum(
        int(state.grid(s).areas[v].sum()) for s, v in picked.items()
    )


def test_damaged_last_delta_falls_back_to_the_previous_head(tmp_path, capsys):
    """The head parses but the delta of its last round is cut short: the previous head does not
    name that delta, so the run reloads at the round before and redoes the last commit."""
    layout = RunLayout(str(tmp_path))
    holder = PoolStateHolder(layout, _pool(), {})
    holder.commit(0, {"s00003": [0]}, [1, 0, 0])
    holder.commit(1, {"s00004": [1]}, [0, 1, 0])
    with open(layout.pool_round(1), "w") as handle:
        handle.write('{"version": 2, "round"')
    state = load_state(layout, _pool().sizes)
    assert "round 1's selection is unreadable" in capsys.readouterr().out
    assert state.committed_rounds == [0]
    os.remove(layout.pool_labeled)
    with pytest.raises(PoolStateError, match="labeled.json is unreadable"):
        load_state(layout, _pool().sizes, warn=lambda line: None)


def test_acquired_bits_set_in_any_order_are_exactly_those_added():
    """``AcquiredRegions.add`` ORs one byte per run of sorted bits: random, unsorted sets of
    new bits, sharing bytes, against a plain boolean array."""
    from s4al_ray.pool.index import AcquiredRegions, RegionIndex

    sizes = ImageSizes(["a", "b", "c"], [64, 40, 64], [64, 64, 30])
    index = RegionIndex(sizes, 8)
    rng = np.random.default_rng(0)
    for _ in range(200):
        acquired, expected = AcquiredRegions.empty(sizes, index), np.zeros(index.num_bytes * 8)
        for _ in range(2):
            free = np.flatnonzero(expected == 0)
            bits = rng.choice(free, int(rng.integers(0, 40)), replace=False)
            acquired.add(bits, np.empty(0, np.int64), np.empty(0, np.int64))
            expected[bits] = 1
        np.testing.assert_array_equal(np.unpackbits(acquired.bits, bitorder="little"), expected)
