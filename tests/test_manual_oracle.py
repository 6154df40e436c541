"""The manual oracle: stop with a query package, refuse bad masks, commit good ones, continue."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from s4al_ray.annotate import import_annotations
from s4al_ray.config import load_config
from s4al_ray.experiment import Experiment
from s4al_ray.pool.manual import AnnotationError
from s4al_ray.pool.state import PoolState


def _answer(run_dir: str, folder, data_root: str, edit=None) -> dict:
    """Answer the query from the dataset's ground truth (optionally spoiled by ``edit``)."""
    query = json.load(open(os.path.join(run_dir, "queries", "round_000", "query.json")))
    os.makedirs(folder, exist_ok=True)
    for image in query["images"]:
        mask = np.array(Image.open(os.path.join(data_root, "masks", f"{image['sample_id']}.png")))
        if edit:
            edit(image, mask)
        Image.fromarray(mask).save(os.path.join(folder, f"{image['sample_id']}.png"))
    return query


def _state_of(cfg) -> PoolState:
    """The pool state as a rerun driver loads it from the run directory."""
    from s4al_ray.data.registry import load_dataset
    from s4al_ray.layout import RunLayout
    from s4al_ray.pool.actor import load_state
    from s4al_ray.pool.index import ImageSizes

    rows = load_dataset(cfg.data, cfg.seed, log=lambda line: None).rows("train")
    return load_state(RunLayout.of(cfg.storage, cfg.name), ImageSizes.of_rows(rows))


def test_manual_round_trip(ray_session, smoke_data_root, tmp_path):
    cfg = load_config(
        "configs/smoke.yaml",
        [f"storage={tmp_path}", f"data.root={smoke_data_root}", "name=manual", "oracle=manual"],
    )
    run_dir = str(tmp_path / "manual")
    lines: list[str] = []
    records = Experiment(cfg, log=lines.append).run()
    assert records == []  # round 0 stopped at its acquisition
    assert any("query package for annotators" in line for line in lines)
    package = os.path.join(run_dir, "queries", "round_000")
    query = json.load(open(os.path.join(package, "query.json")))
    assert query["images"] and all(
        os.path.exists(os.path.join(package, "images", f"{i['sample_id']}.png"))
        for i in query["images"]
    )
    before = _state_of(cfg)
    assert before.committed_rounds == []

    def unlabeled_corner(image, mask):
        y0, y1, x0, x1 = image["regions"][0]["box_y0_y1_x0_x1"]
        mask[y0, x0] = 255

    def invalid_class(image, mask):
        y0, y1, x0, x1 = image["regions"][-1]["box_y0_y1_x0_x1"]
        mask[y1 - 1, x1 - 1] = 42

    for spoil, message in (
        (unlabeled_corner, "unlabeled"),
        (invalid_class, r"invalid values \[42\]"),
    ):
        folder = tmp_path / f"bad_{spoil.__name__}"
        _answer(run_dir, folder, smoke_data_root, spoil)
        with pytest.raises(AnnotationError, match=message):
            import_annotations(cfg, str(folder), log=lambda line: None)
        assert _state_of(cfg).ledger == before.ledger  # refused: the pool is unchanged

    good = tmp_path / "good"
    _answer(run_dir, good, smoke_data_root)
    entry = import_annotations(cfg, str(good), log=lambda line: None)
    after = _state_of(cfg)
    requested = sum(
        int(after.grid(i["sample_id"]).areas[[r["index"] for r in i["regions"]]].sum())
        for i in query["images"]
    )
    assert entry["pixels"] == requested
    assert after.labeled_pixels == before.labeled_pixels + requested
    label = np.array(
        Image.open(
            os.path.join(run_dir, "oracle", "labels", f"{query['images'][0]['sample_id']}.png")
        )
    )
    assert (label != 255).sum() == sum(
        (r["box_y0_y1_x0_x1"][1] - r["box_y0_y1_x0_x1"][0])
        * (r["box_y0_y1_x0_x1"][3] - r["box_y0_y1_x0_x1"][2])
        for r in query["images"][0]["regions"]
    )

    lines.clear()
    records = Experiment(cfg, log=lines.append).run()  # continues: round 0 reused, round 1 runs
    assert [r["round"] for r in records] == [0, 1]
    assert any("reusing the finished student" in line for line in lines)
    assert records[1]["pool/labeled_pixels"] == after.labeled_pixels
