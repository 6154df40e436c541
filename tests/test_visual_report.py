"""Visual reports: files, PNG sizes, links of report.html, acquired-class numbers, eta lines.

A tiny fake run on disk (no Ray): the smoke dataset, a pool state with one committed round, a
teacher parquet for that round and two round records (the last one ran no teacher).
"""

from __future__ import annotations

import io
import json
import os
from html.parser import HTMLParser

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from s4al_ray import report_examples as examples
from s4al_ray import report_figures as figures
from s4al_ray.data.folder import load_folder_dataset
from s4al_ray.data.io import encode_png, load_mask
from s4al_ray.layout import RunLayout
from s4al_ray.pool.oracle import SimulatedOracle, class_histogram
from s4al_ray.pool.state import PoolState
from s4al_ray.report import eta_line
from s4al_ray.report_examples import examples_size
from s4al_ray.visual_report import write_round_report

REGION = 24  # does not divide 64x80: edge regions are smaller


def _records(classes: list[str]) -> list[dict]:
    def record(r: int, frac: float, miou: float, teacher: bool) -> dict:
        rec = {
            "round": r,
            "pool/labeled_frac": frac,
            "val/miou": miou,
            "val/pixel_acc": 0.7,
            "pool/acquired_pixels": 1234 if teacher else 0,
            "time/train_s": 60.0,
            "time/teacher_s": 15.0 if teacher else 0.0,
            "time/acquire_s": 5.0 if teacher else 0.0,
            **{
                f"val/iou/{c}": (None if c == "sign" else miou * (i + 1) / len(classes))
                for i, c in enumerate(classes)
            },
        }
        if teacher:
            rec["teacher/thresholds"] = [0.7] * len(classes)
            rec["teacher/kept_frac"] = 0.6
        return rec

    return [record(0, 0.25, 0.2, True), record(1, 0.3, 0.25, False)]


@pytest.fixture(scope="module")
def fake_run(smoke_data_root, tmp_path_factory):
    data = load_folder_dataset(smoke_data_root)
    train = data.rows("train")
    labeled = sorted(r["sample_id"] for r in train)[:6]
    state = PoolState(
        region_size=REGION,
        num_classes=data.num_classes,
        sizes={r["sample_id"]: [r["height"], r["width"]] for r in train},
        labeled=labeled,
    )
    pool = state.pool_ids
    # Round 0 acquires 1280 px of pool[3], 576 of pool[5] and 128 of pool[0]: the 3x4 grid's
    # edge regions are cut (region 3: 24x8, 8: 16x24, 11: 16x8).
    selection = {pool[3]: [0, 4, 11], pool[0]: [11], pool[5]: [3, 8]}
    masks = {r["sample_id"]: r["mask_uri"] for r in train}
    class_pixels = SimulatedOracle(masks, data.num_classes).reveal(state, selection)
    state.commit(0, selection, class_pixels)

    run_dir = str(tmp_path_factory.mktemp("runs") / "fake")
    rng = np.random.default_rng(0)
    rows = {"sample_id": [], "label_png": [], "conf_png": [], "scores": []}
    for sample_id in pool:
        truth = load_mask(masks[sample_id])
        label = np.where(rng.random(truth.shape) < 0.1, 0, truth).astype(np.uint8)
        rows["sample_id"].append(sample_id)
        rows["label_png"].append(encode_png(label))
        rows["conf_png"].append(encode_png(rng.integers(0, 256, truth.shape, dtype=np.uint8)))
        rows["scores"].append([0.5] * state.grid(sample_id).num_regions)
    teacher_dir = os.path.join(run_dir, "teacher", "round_000", "size_00")
    os.makedirs(teacher_dir)
    pq.write_table(pa.table(rows), os.path.join(teacher_dir, "part-0.parquet"))
    return run_dir, data, state, _records(data.classes)


def _png_size(path: str) -> tuple[int, int]:
    with Image.open(path) as img:
        img.load()
        return img.size


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]


def _html_links(path: str) -> list[str]:
    parser = _Links()
    with open(path, encoding="utf-8") as handle:
        parser.feed(handle.read())
    return parser.links


def test_report_files_sizes_links_and_numbers(fake_run, monkeypatch):
    run_dir, data, state, records = fake_run
    report = os.path.join(run_dir, "report")

    written = write_round_report(RunLayout(run_dir), records[:1], data, state, 0)
    names = {os.path.basename(u) for u in written}
    assert names == {
        "miou_curve.png",
        "examples_round_000.png",
        "acquired_classes.png",
        "acquired_classes.json",
        "report.html",
    }
    assert all(os.path.exists(u) for u in written)
    assert os.path.exists(os.path.join(report, "pool_classes.json"))

    # Exact pixel sizes (the layout is placed in pixels, so they do not drift).
    assert _png_size(os.path.join(report, "miou_curve.png")) == figures.MIOU_SIZE == (800, 450)
    assert _png_size(os.path.join(report, "acquired_classes.png")) == (700, 450)
    assert examples_size(4, 64, 80, 9) == (1062, 744)
    assert _png_size(os.path.join(report, "examples_round_000.png")) == (1062, 744)

    # The plotted numbers: acquired = the ledger's class_pixels; pool = its ground truth.
    numbers = json.loads(open(os.path.join(report, "acquired_classes.json")).read())
    assert numbers["classes"] == data.classes
    assert numbers["acquired_pixels"] == state.entry(0)["class_pixels"]
    assert sum(numbers["acquired_pixels"]) > 0
    masks = {r["sample_id"]: r["mask_uri"] for r in data.rows("train")}
    expected_pool = sum(
        class_histogram(load_mask(masks[s]), data.num_classes) for s in state.pool_ids
    )
    assert numbers["pool_pixels"] == np.asarray(expected_pool).tolist()

    links = _html_links(os.path.join(report, "report.html"))
    assert "examples_round_000.png" in links and "miou_curve.png" in links
    for link in links:
        assert "://" not in link and not link.startswith("/"), link
        assert os.path.isfile(os.path.join(report, link)), link

    # Round 1 ran no teacher: no examples figure for it; the pool's class counts come from the
    # cache (no mask is decoded again); the page keeps linking round 0's examples.
    def no_masks(uri):
        raise AssertionError(f"decoded {uri} although pool_classes.json is cached")

    monkeypatch.setattr(figures, "load_mask", no_masks)
    monkeypatch.setattr(examples, "load_mask", no_masks)
    written = write_round_report(RunLayout(run_dir), records, data, state, 1)
    assert "examples_round_001.png" not in {os.path.basename(u) for u in written}
    assert not os.path.exists(os.path.join(report, "examples_round_001.png"))
    numbers = json.loads(open(os.path.join(report, "acquired_classes.json")).read())
    assert numbers["round"] == 1 and numbers["acquired_pixels"] == state.entry(0)["class_pixels"]
    assert _png_size(os.path.join(report, "miou_curve.png")) == (800, 450)
    links = _html_links(os.path.join(report, "report.html"))
    assert "examples_round_000.png" in links and "examples_round_001.png" not in links
    assert all(os.path.isfile(os.path.join(report, link)) for link in links)
    page = open(os.path.join(report, "report.html"), encoding="utf-8").read()
    assert "<script" not in page and "http" not in page
    assert page.count("<tr>") == 2 * len(records) + 2  # round table + per-class table


def test_example_choice_is_by_acquired_pixels_then_first_ids(fake_run):
    _, _, state, _ = fake_run
    pool = state.pool_ids
    chosen = examples.example_ids(state, 0, 4)
    assert chosen[:3] == [pool[3], pool[5], pool[0]]  # 1280, 576 and 128 px acquired
    assert chosen[3] == pool[1]  # then the first pool id not already shown
    assert examples.example_ids(state, 5, 2) == pool[:2]  # a round without commit: first ids


def test_examples_figure_grows_with_examples(fake_run):
    run_dir, data, state, records = fake_run
    png = examples.draw_examples(
        data,
        state,
        records[0],
        os.path.join(run_dir, "teacher", "round_000"),
        0,
        2,
        figures.class_colors(data),
    )
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == examples_size(2, 64, 80, data.num_classes) == (1062, 412)


def test_eta_line():
    def rec(r, train=60.0, teacher=15.0, acquire=5.0):
        return {
            "round": r,
            "time/train_s": train,
            "time/teacher_s": teacher,
            "time/acquire_s": acquire,
        }

    # Rounds 2 and 3 cost train + teacher + acquire (80s), the last one train only (60s).
    assert eta_line([rec(0), rec(1)], 5, 190.0) == "round 2/5 done, 3m10s elapsed, ~4m left"
    assert eta_line([rec(0)], 2, 45.0) == "round 1/2 done, 45s elapsed, ~1m left"
    assert eta_line([rec(0, train=20.0)], 2, 25.0) == "round 1/2 done, 25s elapsed, ~20s left"
    assert eta_line([rec(0), rec(1, teacher=0.0, acquire=0.0)], 2, 125.0) == (
        "round 2/2 done, 2m05s elapsed, finished"
    )
    assert eta_line([{"round": 0}], 3, 30.0) == "round 1/3 done, 30s elapsed, ~1m left"
    assert eta_line([rec(r) for r in range(3)], 60, 4000.0) == (
        "round 3/60 done, 1h06m elapsed, ~1h16m left"
    )
