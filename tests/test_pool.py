"""Pool invariants: disjoint sets, no region acquired twice, exact budget, idempotent commits,
persistence through the actor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from s4al_ray.layout import RunLayout
from s4al_ray.pool.actor import PoolStateHolder, load_state
from s4al_ray.pool.state import PoolState
from s4al_ray.pool.store import PoolStateError


def make_state(region_size: int = 16) -> PoolState:
    sizes = {f"img{i}": [40, 50] for i in range(6)}
    return PoolState(region_size=region_size, num_classes=3, sizes=sizes, labeled=["img0"])


def test_labeled_and_pool_are_disjoint():
    state = make_state()
    assert set(state.pool_ids).isdisjoint(state.labeled)
    assert set(state.pool_ids) | set(state.labeled) == set(state.sizes)


def test_commit_counts_true_region_pixels():
    state = make_state()
    grid = state.grid("img1")  # 40x50 with 16 px regions: 3x4 grid, edges 8 high / 2 wide
    entry = state.commit(0, {"img1": [0, 3, 11], "img2": [5]})
    expected = grid.areas[[0, 3, 11]].sum() + grid.areas[5]
    assert entry["pixels"] == expected == 256 + 16 * 2 + 8 * 2 + 256
    assert state.acquired_pixels == expected
    assert state.labeled_pixels == 40 * 50 + expected
    assert state.labeled_mask("img1").sum() == grid.areas[[0, 3, 11]].sum()


def test_region_never_acquired_twice():
    state = make_state()
    state.commit(0, {"img1": [1, 2]})
    with pytest.raises(ValueError, match="already acquired"):
        state.commit(1, {"img1": [2, 3]})
    with pytest.raises(ValueError, match="selected twice"):
        state.commit(1, {"img2": [4, 4]})
    assert state.committed_rounds == [0]


def test_labeled_images_and_bad_regions_refused():
    state = make_state()
    with pytest.raises(ValueError, match="already fully labeled"):
        state.commit(0, {"img0": [1]})
    with pytest.raises(ValueError, match="outside"):
        state.commit(0, {"img1": [12]})
    with pytest.raises(ValueError, match="not an image of the train split"):
        state.commit(0, {"nope": [1]})


def test_commit_is_idempotent_per_round():
    state = make_state()
    first = state.commit(0, {"img1": [1], "img2": []})
    again = state.commit(0, {"img1": [1]})
    assert again == first and len(state.ledger) == 1
    with pytest.raises(ValueError, match="different selection"):
        state.commit(0, {"img1": [2]})


def test_before_round_hides_later_commits():
    state = make_state()
    state.commit(0, {"img1": [1]})
    state.commit(1, {"img2": [2]})
    assert state.before(1).acquired == {"img1": [1]}
    assert state.before(0).acquired_pixels == 0
    assert state.acquired == {"img1": [1], "img2": [2]}


def test_storage_round_trip_and_version_check(tmp_path):
    layout = RunLayout(str(tmp_path))
    state = make_state()
    holder = PoolStateHolder(layout, state, {})
    holder.commit(0, {"img3": [0, 1]}, [1, 2, 3])
    again = load_state(layout, state.sizes)
    assert again.acquired == holder.state.acquired == {"img3": [0, 1]}
    assert again.labeled_pixels == holder.state.labeled_pixels and again == holder.state
    head = json.loads(open(layout.pool_head).read())
    with open(layout.pool_head, "w") as handle:
        json.dump({**head, "version": 99}, handle)
    with pytest.raises(PoolStateError, match="incompatible"):
        load_state(layout, state.sizes)


def _write_masks(tmp_path, state: PoolState) -> dict[str, str]:
    uris = {}
    for sample_id, (h, w) in state.sizes.items():
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[:, 25:] = 1
        mask[0, 0] = 255
        path = tmp_path / f"{sample_id}.png"
        Image.fromarray(mask).save(path)
        uris[sample_id] = str(path)
    return uris


def test_holder_persists_before_returning_and_reloads(tmp_path):
    state = make_state()
    masks = _write_masks(tmp_path, state)
    holder = PoolStateHolder(RunLayout(str(tmp_path)), state, masks)
    entry = holder.commit(0, {"img1": [0, 1]})
    # region 0: x 0..15 class 0 (one ignore pixel); region 1: x 16..31, class 0 up to x=24
    assert entry["class_pixels"] == [255 + 9 * 16, 7 * 16, 0]
    assert state.committed_rounds == []  # the holder commits on its own copy
    reloaded = PoolStateHolder(RunLayout(str(tmp_path)), make_state(), masks)
    assert reloaded.state.acquired == {"img1": [0, 1]}
    assert load_state(RunLayout(str(tmp_path)), state.sizes).committed_rounds == [0]


def test_pool_actor_is_single_writer(ray_session, tmp_path):
    from s4al_ray.pool.actor import get_pool_actor

    state = make_state()
    masks = _write_masks(tmp_path, state)
    actor = get_pool_actor("test-pool", RunLayout(str(tmp_path)), state, masks)
    same = get_pool_actor("test-pool", RunLayout(str(tmp_path)), state, masks)
    ray = ray_session
    ray.get(actor.commit.remote(0, {"img2": [3]}))
    ray.get(same.commit.remote(0, {"img2": [3]}))  # a retried commit is a no-op
    snapshot = ray.get(same.snapshot.remote())  # the state object itself, pickled by Ray
    assert isinstance(snapshot, PoolState)
    assert snapshot.acquired == {"img2": [3]} and len(snapshot.ledger) == 1
    ray.kill(actor, no_restart=True)
