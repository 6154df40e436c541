"""The manual oracle: stop with a query package, refuse bad masks, commit good ones, continue.
The run writes a Label Studio import beside it, and the good answers come back as its export."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import requests
from PIL import Image

from s4al_ray.annotate import import_annotations
from s4al_ray.config import ConfigError, load_config
from s4al_ray.experiment import Experiment
from s4al_ray.pool.manual import AnnotationError, check_tool_settings
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


def _paint_ground_truth(client, task, image: dict, classes: list[str], data_root: str) -> None:
    """Annotate ``task`` in Label Studio as an annotator would: the brush paints each requested
    region's ground truth (one brush region per class, in Label Studio's RLE)."""
    from s4al_ray.pool.label_studio import brush_result

    truth = np.array(Image.open(os.path.join(data_root, "masks", f"{image['sample_id']}.png")))
    inside = np.zeros(truth.shape, dtype=bool)
    for region in image["regions"]:
        y0, y1, x0, x1 = region["box_y0_y1_x0_x1"]
        inside[y0:y1, x0:x1] = True
    result = [brush_result(inside & (truth == c), classes[c]) for c in np.unique(truth[inside])]
    client.annotations.create(task.id, result=result)


def _state_of(cfg) -> PoolState:
    """The pool state as a rerun driver loads it from the run directory."""
    from s4al_ray.data.registry import load_dataset
    from s4al_ray.layout import RunLayout
    from s4al_ray.pool.actor import load_state
    from s4al_ray.pool.index import ImageSizes

    rows = load_dataset(cfg.data, cfg.seed, log=lambda line: None).rows("train")
    return load_state(RunLayout.of(cfg.storage, cfg.name), ImageSizes.of_rows(rows))


def test_manual_round_trip(
    ray_session, smoke_data_root, label_studio_server, tmp_path, monkeypatch
):
    url, token = label_studio_server
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    cfg = load_config(
        "configs/smoke.yaml",
        [
            f"storage={tmp_path}",
            f"data.root={smoke_data_root}",
            "name=manual",
            "oracle=manual",
            "annotation.tool=label_studio",
            f"annotation.local_files_root={smoke_data_root}",
            f"annotation.url={url}",
        ],
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

    # The run pushed its tasks (the round's pseudo-labels inside the requested regions as
    # predictions) into the run's project; Label Studio serves their images from the dataset.
    from label_studio_sdk import LabelStudio

    from s4al_ray.pool.oracle import SimulatedOracle

    client = LabelStudio(base_url=url, api_key=token)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0" * 40)
    with pytest.raises(ConfigError, match="the token was refused"):
        check_tool_settings(cfg.annotation, smoke_data_root)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", token)
    (project,) = [p for p in client.projects.list() if p.title == "s4al-ray: manual"]
    tasks = {t.data["sample_id"]: t for t in client.tasks.list(project=project.id)}
    assert sorted(tasks) == [i["sample_id"] for i in query["images"]]
    assert all(t.data["round"] == 0 for t in tasks.values())
    first = tasks[query["images"][0]["sample_id"]]
    assert first.data["image"].startswith("/data/local-files/?d=images/")
    served = requests.get(url + first.data["image"], headers={"Authorization": f"Token {token}"})
    assert served.status_code == 200 and served.content.startswith(b"\x89PNG")
    predictions = client.predictions.list(task=first.id)
    assert predictions and predictions[0].model_version == "round_000"
    assert any(r["type"] == "brushlabels" for r in predictions[0].result)
    assert any("pushed to" in line for line in lines)

    # Incomplete: one image not annotated yet; refused by name, nothing committed.
    for image in query["images"][1:]:
        _paint_ground_truth(
            client, tasks[image["sample_id"]], image, query["classes"], smoke_data_root
        )
    with pytest.raises(AnnotationError, match=f"{query['images'][0]['sample_id']}: missing"):
        import_annotations(cfg, "label-studio", log=lambda line: None)
    assert _state_of(cfg).ledger == before.ledger
    _paint_ground_truth(client, first, query["images"][0], query["classes"], smoke_data_root)
    entry = import_annotations(cfg, "label-studio", log=lambda line: None)
    again = []
    assert import_annotations(cfg, "label-studio", log=again.append) == entry  # a no-op
    assert "already committed: nothing changed" in again[-1]
    # The same ledger as the simulated oracle's for the same selection.
    selection = {i["sample_id"]: [r["index"] for r in i["regions"]] for i in query["images"]}
    masks = {
        i["sample_id"]: os.path.join(smoke_data_root, "masks", f"{i['sample_id']}.png")
        for i in query["images"]
    }
    assert entry["class_pixels"] == SimulatedOracle(masks, len(query["classes"])).reveal(
        before, selection
    )
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
