"""Superpixel regions as the unit of the pool: stored maps, exact budget accounting in the pool
state and its persisted form, the training loader's known pixels, and the manual oracle's
package and import check, all at the superpixels' true sizes."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from s4al_ray import IGNORE_INDEX, storage
from s4al_ray.config import ConfigError, load_config
from s4al_ray.data.io import encode_png
from s4al_ray.data.training import PoolImages
from s4al_ray.layout import RunLayout
from s4al_ray.pool.index import ImageSizes
from s4al_ray.pool.manual import AnnotationError, read_answers, write_query_package
from s4al_ray.pool.state import PoolState
from s4al_ray.pool.store import read_state, write_commit, write_initial
from s4al_ray.region_maps import (
    RegionMaps,
    _areas_table,
    decode_segments,
    encode_segments,
    read_segment_areas,
)
from s4al_ray.superpixels import SegmentAreas, SuperpixelRegions, region_edges, slic_segments


def _images(n=4, height=37, width=45, seed=0) -> list[np.ndarray]:
    """Colour patches of 9x9 px (SLIC's segments follow them), cut at an odd size."""
    rng = np.random.default_rng(seed)
    patches = rng.integers(0, 256, (n, 5, 6, 3), dtype=np.uint8)
    return [np.kron(p, np.ones((9, 9, 1), np.uint8))[:height, :width] for p in patches]


def _stored_images(ids: list[str], folder) -> dict[str, dict]:
    """``_images()`` written as a dataset holds them: the items a query package reads."""
    from PIL import Image

    items = {}
    for sample_id, image in zip(ids, _images()):
        uri = str(folder / f"{sample_id}.png")
        Image.fromarray(image).save(uri)
        items[sample_id] = {"image_uri": uri}
    return items


@pytest.fixture
def stored(tmp_path):
    """A run's superpixel maps for four images, stored as the round loop stores them."""
    layout = RunLayout.of(str(tmp_path / "runs"), "exp")
    maps = RegionMaps.of_run("slic", 9, layout.superpixels_dir)
    ids = [f"img{k}" for k in range(4)]
    segments = {}
    for sample_id, image in zip(ids, _images()):
        segments[sample_id] = slic_segments(image, 9)
        storage.write_bytes(maps.segment_uri(sample_id), encode_segments(segments[sample_id]))
    areas = [np.bincount(segments[s].ravel()).astype(np.int32) for s in ids]
    import pyarrow.parquet as pq

    pq.write_table(_areas_table(ids, areas), maps.areas_uri)
    sizes = ImageSizes(ids, [37] * 4, [45] * 4)
    return layout, maps, sizes, segments


def _slic_state(maps, sizes, labeled=("img0",)) -> PoolState:
    areas = read_segment_areas(maps, sizes.ids)
    return PoolState(maps.size, 3, sizes, list(labeled), None, maps, areas)


def test_segment_maps_round_trip_as_16_bit_pngs():
    segments = np.arange(300 * 301, dtype=np.int64).reshape(300, 301) % 70000 // 2
    assert int(segments.max()) > 255  # needs the 16 bits
    assert np.array_equal(decode_segments(encode_segments(segments)), segments)
    with pytest.raises(ValueError, match="16-bit"):
        encode_segments(np.full((2, 2), 70000))


def test_regions_of_an_image_are_its_stored_superpixels(stored):
    _, maps, _, segments = stored
    regions = maps.of("img1", 37, 45)
    assert isinstance(regions, SuperpixelRegions)
    assert np.array_equal(regions.segments, segments["img1"])
    with pytest.raises(ValueError, match="img1.png.*dataset changed"):
        maps.of("img1", 40, 45)
    squares = RegionMaps("squares", 9).of("img1", 37, 45)
    assert squares.num_regions == 5 * 5  # ceil(37/9) x ceil(45/9)


def test_pool_state_counts_each_superpixel_at_its_true_size(stored):
    _, maps, sizes, segments = stored
    state = _slic_state(maps, sizes)
    seg = segments["img2"]
    chosen = [0, 2, int(seg.max())]
    entry = state.commit(0, {"img2": chosen, "img3": [1]})
    expected = int(np.isin(seg, chosen).sum() + (segments["img3"] == 1).sum())
    assert entry["pixels"] == expected == state.acquired_pixels
    assert np.array_equal(state.labeled_mask("img2"), np.isin(seg, chosen))
    assert state.labeled_mask("img0").all()  # fully labeled from the start
    # region ids outside the image's superpixels are refused, with their count
    count = int(segments["img1"].max()) + 1
    with pytest.raises(ValueError, match=f"img1: regions \\[{count}\\] outside its {count}"):
        state.validate_selection({"img1": [count]})
    with pytest.raises(ValueError, match="already acquired"):
        state.validate_selection({"img2": [2]})


def test_superpixel_areas_must_tile_each_image(stored):
    _, maps, sizes, _ = stored
    areas = read_segment_areas(maps, sizes.ids)
    short = SegmentAreas(areas.counts, areas.flat.copy())
    short.flat[0] -= 1
    with pytest.raises(ValueError, match="img0: its superpixels cover"):
        PoolState(9, 3, sizes, ["img0"], None, maps, short)
    with pytest.raises(ConfigError, match="no superpixels for train images \\['other'\\]"):
        read_segment_areas(maps, [*sizes.ids, "other"])


def test_a_resumed_run_refuses_stored_superpixels_of_other_images(stored):
    """Stored maps that no longer tile the manifest's images (the dataset changed) are refused
    by name before the pool state is built; matching ones are read, not segmented again."""
    from s4al_ray.region_maps import run_regions

    layout, maps, sizes, _ = stored
    rows = [{"sample_id": s, "height": 37, "width": 45} for s in sizes.ids]
    acquisition = SimpleNamespace(regions="slic", region_size=9)
    got, areas = run_regions(acquisition, layout.superpixels_dir, rows, log=print)
    assert got == maps and areas.counts.size == 4
    rows[2]["height"] = 40
    with pytest.raises(ConfigError, match="superpixels of img2 cover 1665 px, not its 40x45"):
        run_regions(acquisition, layout.superpixels_dir, rows, log=print)
    # a run with a pool state whose areas are gone is refused, not segmented again
    os.remove(maps.areas_uri)
    with pytest.raises(ConfigError, match="regions.parquet is missing: the run's pool state"):
        run_regions(acquisition, layout.superpixels_dir, rows, log=print, begun=True)
    # a damaged map is named wherever it is read
    with open(maps.segment_uri("img3"), "wb") as handle:
        handle.write(b"not a png")
    with pytest.raises(ValueError, match="img3.png: superpixel map missing or unreadable"):
        maps.of("img3", 37, 45)


def test_persisted_superpixel_state_reloads_with_the_same_pixels(stored):
    layout, maps, sizes, segments = stored
    state = _slic_state(maps, sizes)
    head = write_initial(layout, state)
    entry = state.commit(
        0, {"img1": [1, 3]}, [5, 0, 0], persist=lambda e: write_commit(layout, state, e, head)
    )
    loaded, _ = read_state(layout, sizes)
    assert loaded == state and loaded.maps == maps
    assert loaded.ledger[0]["pixels"] == entry["pixels"]
    assert entry["pixels"] == int(np.isin(segments["img1"], [1, 3]).sum())
    # a head of superpixels without its stored areas is refused by name
    os.remove(maps.areas_uri)
    with pytest.raises(Exception, match="regions.parquet is missing"):
        read_state(layout, sizes)


def test_training_loader_knows_exactly_the_acquired_superpixels(stored, tmp_path):
    _, maps, _, segments = stored
    mask = np.random.default_rng(3).integers(0, 3, (37, 45)).astype(np.uint8)
    mask_uri = str(tmp_path / "mask.png")
    storage.write_bytes(mask_uri, encode_png(mask))
    label = np.zeros((37, 45), np.uint8)
    level = np.full((37, 45), 255, np.uint8)  # confident everywhere: the pseudo-label is kept
    item = {"sample_id": "img2", "height": 37, "width": 45, "mask_uri": mask_uri}
    pool = PoolImages(
        [item], {"img2": (encode_png(label), encode_png(level))}, [0.5] * 3, {"img2": [1]}, maps
    )
    target = pool.target(item)
    inside = segments["img2"] == 1
    assert np.array_equal(target[inside], mask[inside])  # ground truth in the superpixel
    assert (target[~inside] == 0).all()  # the pseudo-label elsewhere


def test_region_edges_outline_each_region_from_inside():
    labels = np.full((6, 9), -1)
    labels[1:5, 2:6] = 3
    labels[1:5, 6:8] = 5  # touching the first: both keep their own outline
    edge = region_edges(labels)
    assert not edge[labels < 0].any()
    assert edge[labels == 3].sum() == 4 * 4 - 2 * 2 and not edge[2:4, 3:5].any()
    assert edge[labels == 5].all()  # two pixels wide: all of it is edge
    assert edge[1:5, 5].all() and edge[1:5, 6].all()  # the shared border, on both sides


def test_manual_query_of_superpixels_checks_their_own_pixels(stored, tmp_path):
    layout, maps, sizes, segments = stored
    state = _slic_state(maps, sizes)
    items = _stored_images(sizes.ids, tmp_path)
    seg = segments["img2"]
    package = write_query_package(layout, 0, {"img2": [0, 2]}, state, items, ["a", "b", "c"])
    query = json.loads(storage.read_text(storage.join(package, "query.json")))
    assert query["regions"] == "slic"
    stored_map = decode_segments(storage.read_bytes(storage.join(package, "segments/img2.png")))
    assert np.array_equal(stored_map, seg)
    assert "requested superpixels" in storage.read_text(storage.join(package, "README.txt"))
    # An answer labels exactly the two superpixels; the rest of their boxes stays unlabeled.
    answers = tmp_path / "answers"
    answer = np.full((37, 45), IGNORE_INDEX, np.uint8)
    answer[seg == 0], answer[seg == 2] = 1, 2
    storage.write_bytes(str(answers / "img2.png"), encode_png(answer))
    selection, counts, _ = read_answers(layout, 0, str(answers), 3)
    assert selection == {"img2": [0, 2]}
    assert counts == [0, int((seg == 0).sum()), int((seg == 2).sum())]
    answer[seg == 2] = IGNORE_INDEX  # one superpixel left unlabeled: refused, by region
    storage.write_bytes(str(answers / "img2.png"), encode_png(answer))
    with pytest.raises(AnnotationError, match="img2: region 2 .* unlabeled"):
        read_answers(layout, 0, str(answers), 3)


@pytest.mark.parametrize("tool", ["label_studio", "cvat"])
def test_annotation_tools_pre_annotate_exactly_the_requested_superpixels(tool, stored, tmp_path):
    """A superpixel query in Label Studio or CVAT: the pseudo-label pre-annotates exactly the
    superpixels' pixels (not their boxes), and accepted as it is, the manual oracle's check
    (reading the package's segment maps) takes it with the class pixels of those superpixels."""
    from s4al_ray.pool import cvat, label_studio
    from s4al_ray.pool.manual import ToolPackage, check_answers

    layout, maps, sizes, segments = stored
    state = _slic_state(maps, sizes)
    items = _stored_images(sizes.ids, tmp_path)
    pseudo = {s: np.random.default_rng(4).integers(0, 3, (37, 45)).astype(np.uint8) for s in items}
    selection = {"img1": [0, 3], "img2": [1]}
    package = write_query_package(
        layout, 0, selection, state, items, ["a", "b", "c"], ToolPackage(tool, COLORS, pseudo)
    )
    query = json.loads(storage.read_text(storage.join(package, "query.json")))
    if tool == "label_studio":
        tasks = json.loads(storage.read_text(storage.join(package, "label_studio", "tasks.json")))
        accepted = [
            {**t, "annotations": [{"result": t["predictions"][0]["result"]}]} for t in tasks
        ]
        masks, problems = label_studio.export_masks(json.dumps(accepted), "x.json", query)
    else:
        xml = storage.read_bytes(storage.join(package, "cvat", "annotations.xml"))
        masks, problems = cvat.export_masks(xml, "x.xml", query)
    assert problems == []
    for sample_id, regions in selection.items():
        inside = np.isin(segments[sample_id], regions)
        expected = np.where(inside, pseudo[sample_id], IGNORE_INDEX)
        np.testing.assert_array_equal(masks[sample_id], expected)
    chosen, counts, _ = check_answers(query, "x", masks, [], 3, package)
    assert chosen == selection
    assert sum(counts) == sum(int(np.isin(segments[s], r).sum()) for s, r in selection.items())


COLORS = [(128, 64, 128), (0, 0, 142), (153, 153, 153)]


def test_regions_kind_is_validated():
    with pytest.raises(ConfigError, match="acquisition.regions"):
        load_config("configs/smoke.yaml", ["acquisition.regions=hexagons"])


def test_a_region_size_too_small_for_16_bit_maps_is_refused_before_any_work():
    from s4al_ray.region_maps import check_region_size

    rows = [{"height": 1024, "width": 2048}]
    check_region_size(SimpleNamespace(region_size=8, regions="slic"), rows)  # 32768 segments
    with pytest.raises(ConfigError, match="asks SLIC for 131072 superpixels.*choose a larger"):
        check_region_size(SimpleNamespace(region_size=4, regions="slic"), rows)
    check_region_size(SimpleNamespace(region_size=4, regions="squares"), rows)
    with pytest.raises(ConfigError, match="larger than the smallest train image side"):
        check_region_size(SimpleNamespace(region_size=2000, regions="squares"), rows)
