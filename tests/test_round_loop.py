"""Two tiny rounds through the real Ray Train + Ray Data + pool actor path."""

from __future__ import annotations

import csv
import glob
import json
import os
import tempfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from s4al_ray.config import load_config
from s4al_ray.experiment import Experiment
from s4al_ray.pool.state import PoolState
from s4al_ray.runtime import resources

# The smoke dataset with a test split of 6 images, which the last round scores.
WITH_TEST = "data.synthetic.num_test=6"


@pytest.fixture(scope="module")
def smoke_run(ray_session, tmp_path_factory):
    storage = str(tmp_path_factory.mktemp("runs"))
    root = str(tmp_path_factory.mktemp("data") / "synthetic_smoke_test")
    cfg = load_config(
        "configs/smoke.yaml", [f"storage={storage}", f"data.root={root}", "name=loop", WITH_TEST]
    )
    lines: list[str] = []
    before = _tmp_checkpoints()
    records = Experiment(cfg, resources(), log=lines.append).run()
    return cfg, os.path.join(storage, "loop"), records, lines, _tmp_checkpoints() - before


def _state_of(cfg) -> PoolState:
    """The pool state as a rerun driver loads it from the run directory."""
    from s4al_ray.data.registry import load_dataset
    from s4al_ray.layout import RunLayout
    from s4al_ray.pool.actor import load_state
    from s4al_ray.pool.index import ImageSizes

    rows = load_dataset(cfg.data, cfg.seed, log=lambda line: None).rows("train")
    return load_state(RunLayout.of(cfg.storage, cfg.name), ImageSizes.of_rows(rows))


def _tmp_checkpoints() -> set[str]:
    """Epoch checkpoint directories the Ray Train workers staged under the temp dir."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "s4al-ckpt-*")))


def test_records_and_labeled_pixels_grow(smoke_run):
    cfg, run_dir, records, _, _ = smoke_run
    assert [r["round"] for r in records] == [0, 1]
    assert records[1]["pool/labeled_frac"] > records[0]["pool/labeled_frac"]
    assert records[0]["pool/acquired_pixels"] > 0
    # Where the work ran: this session's one node, for the student's rank and all 18 pool images.
    import ray

    here = ray.get_runtime_context().get_node_id()
    assert records[0]["teacher/nodes"] == {here: 18} and records[0]["train/nodes"] == [here]
    for record in records:
        assert 0.0 <= record["val/miou"] <= 1.0
        assert record["time/train_s"] > 0
    with open(os.path.join(run_dir, "rounds.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["round"]) for r in rows] == [0, 1]


def test_budget_ledger_matches_revealed_pixels(smoke_run):
    cfg, run_dir, records, _, _ = smoke_run
    state = _state_of(cfg)
    acquired = sum(state.grid(s).areas[r].sum() for s, r in state.acquired.items())
    assert acquired == state.acquired_pixels == records[0]["pool/acquired_pixels"]
    assert acquired <= cfg.acquisition.round_budget * state.total_pixels
    assert records[1]["pool/labeled_pixels"] == state.labeled_pixels


def test_artefacts_written(smoke_run):
    cfg, run_dir, _, lines, _ = smoke_run
    assert load_config(os.path.join(run_dir, "config.yaml")) == cfg
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "round_000.pt"))
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "round_001.pt"))
    table = pq.read_table(os.path.join(run_dir, "teacher", "round_000"))
    assert table.num_rows == 18  # 24 train images, 6 initially labeled
    assert set(table.column_names) >= {"sample_id", "label_png", "conf_png", "scores"}
    with open(os.path.join(run_dir, "rounds", "round_001.json")) as handle:
        assert json.load(handle)["round"] == 1
    assert any(line.startswith("[round 1] train") for line in lines)
    assert any("mIoU" in line for line in lines)


def test_progress_inside_the_stages_reaches_the_driver_as_lines(smoke_run):
    """Not a terminal (pytest captures stdout): one line per epoch from Ray Train's reports, and
    the teacher pass's images, drawn by the driver while worker logs stay off."""
    cfg, _, _, lines, _ = smoke_run
    epochs = [line for line in lines if line.startswith("[round 0] train   epoch ")]
    assert [line.split(":")[0] for line in epochs] == [
        "[round 0] train   epoch 1/2",
        "[round 0] train   epoch 2/2",
    ]
    assert "loss " in epochs[0] and "(sup " in epochs[0] and "steps/s, lr " in epochs[0]
    assert "ETA " in epochs[0] and epochs[-1].endswith("ETA 0s")
    teacher = [
        line for line in lines if line.startswith("[round 0] teacher ") and "images/s" in line
    ]
    assert teacher and teacher[-1].startswith("[round 0] teacher 18/18 images, ")
    # Round 1's opening line says what round 0's training took.
    assert any(line.startswith("[round 1] train ") and " as before ..." in line for line in lines)


def test_tensorboard_events_hold_every_round_and_epoch_once(smoke_run):
    """Read back with TensorBoard's own reader (before the tests below resume this run): the
    records' names, step = round; the student's epochs under epoch/, step counted over rounds
    (2 rounds x 2 epochs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, records, _, _ = smoke_run
    events = EventAccumulator(os.path.join(run_dir, "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/miou", "pool/labeled_frac", "time/train_s", "val/iou/car"} <= tags
    assert {"epoch/loss_total", "epoch/loss_sup", "epoch/lr", "epoch/seconds"} <= tags
    miou = [(e.step, e.value) for e in events.Scalars("val/miou")]
    assert miou == [(r["round"], pytest.approx(r["val/miou"], rel=1e-6)) for r in records]
    assert [e.step for e in events.Scalars("epoch/loss_total")] == [0, 1, 2, 3]


def test_no_checkpoint_copies_left_in_tmp(smoke_run):
    # Ray Train copies each epoch checkpoint into run storage; the staging copy must go (it once
    # leaked a model file per epoch, per round, per trial: tens of GB over a day of runs).
    *_, leaked = smoke_run
    assert leaked == set()


def test_rerun_skips_finished_rounds(smoke_run):
    cfg, run_dir, records, _, _ = smoke_run
    lines: list[str] = []
    again = Experiment(cfg, resources(), log=lines.append).run()
    assert [r["val/miou"] for r in again] == [r["val/miou"] for r in records]
    assert sum("already done" in line for line in lines) == 2


def test_the_last_round_scores_the_test_split_apart_from_val(smoke_run):
    cfg, run_dir, records, lines, _ = smoke_run
    assert not any(key.startswith("test/") for key in records[0])  # only the last round
    last = records[1]
    assert 0.0 <= last["test/miou"] <= 1.0 and last["time/test_s"] > 0
    assert {f"test/iou/{c}" for c in ("road", "car")} <= set(last)
    scores = json.load(open(os.path.join(run_dir, "evaluate", "test_round_001", "scores.json")))
    assert scores["images"] == 6 and scores["miou"] == pytest.approx(last["test/miou"])
    assert scores["checkpoint"].endswith("checkpoints/round_001.pt")
    assert sum(map(sum, scores["confusion"])) > 0.9 * 6 * 64 * 80  # all but ignored pixels
    with open(os.path.join(run_dir, "rounds.csv")) as handle:
        assert "test/miou" in next(csv.reader(handle))
    table = next(line for line in lines if "Per-class IoU" in line).strip().splitlines()
    assert table[1].split() == ["class", "val", "IoU", "%", "test", "IoU", "%"]
    assert table[-1].split()[0] == "mean"


def _evaluate(cfg, run_dir: str, *options: str) -> tuple[int, str]:
    """``python run.py evaluate`` on the smoke run (this session's Ray), its exit status and
    standard output."""
    import contextlib
    import io

    from s4al_ray.cli import main

    overrides = [f"storage={cfg.storage}", f"data.root={cfg.data.root}", "name=loop", WITH_TEST]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["evaluate", "--config", "configs/smoke.yaml", *options, *overrides])
    return status, out.getvalue()


def test_evaluate_gives_the_confusion_the_round_recorded(smoke_run):
    """Scored on Ray Data, round 0's checkpoint gets exactly the val confusion matrix its Ray
    Train workers computed at the end of training."""
    from PIL import Image

    cfg, run_dir, _, _, _ = smoke_run
    status, out = _evaluate(cfg, run_dir, "--checkpoint", "0", "--predictions", "2")
    assert status == 0, out
    folder = os.path.join(run_dir, "evaluate", "val_round_000")
    recorded = json.load(open(os.path.join(run_dir, "checkpoints", "round_000.json")))
    scores = json.load(open(os.path.join(folder, "scores.json")))
    assert scores["confusion"] == recorded["val/confusion"]
    assert f"val mIoU {100 * scores['miou']:.1f}" in out and "Per-class IoU %, val" in out
    with open(os.path.join(folder, "images.csv")) as handle:
        images = list(csv.DictReader(handle))
    assert len(images) == 6 and float(images[0]["miou"]) <= float(images[-1]["miou"])
    predictions = sorted(os.listdir(os.path.join(folder, "predictions")))
    assert len(predictions) == 2  # the first two val ids
    image = Image.open(os.path.join(folder, "predictions", predictions[0]))
    assert image.mode == "P" and image.size == (80, 64)
    assert np.asarray(image).max() < len(scores["classes"])  # pixel values are class ids
    assert Image.open(os.path.join(folder, "confusion.png")).size[0] > 400


def test_evaluate_last_on_test_matches_the_last_record(smoke_run):
    cfg, run_dir, records, _, _ = smoke_run
    status, out = _evaluate(cfg, run_dir, "--checkpoint", "last", "--split", "test")
    assert status == 0, out
    folder = os.path.join(run_dir, "evaluate", "test_round_001")
    assert json.load(open(os.path.join(folder, "scores.json")))["miou"] == pytest.approx(
        records[1]["test/miou"]
    )


@pytest.mark.parametrize(
    "options, message",
    [
        (["--checkpoint", "7"], "round 7 has no checkpoint in "),
        (["--checkpoint", "last", "--split", "extra"], "the dataset has no extra images; it has"),
        (["--checkpoint", "nowhere/model.pt"], "--checkpoint nowhere/model.pt: no such file"),
        (["--checkpoint", "{bad}"], "cannot be loaded into the configured model"),
        ([], "evaluate needs --checkpoint"),
    ],
)
def test_evaluate_refuses_bad_input_by_name(smoke_run, tmp_path, capsys, options, message):
    cfg, run_dir, _, _, _ = smoke_run
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    options = [str(bad) if o == "{bad}" else o for o in options]
    status, _ = _evaluate(cfg, run_dir, *options)
    assert status == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(os.path.join(run_dir, "evaluate", "extra_round_001"))


def test_mean_teacher_baseline_runs_on_the_same_path(ray_session, smoke_data_root, tmp_path):
    cfg = load_config(
        "configs/smoke.yaml",
        [
            f"storage={tmp_path}",
            f"data.root={smoke_data_root}",
            "name=mt",
            "train.method=mean_teacher",
        ],
    )
    records = Experiment(cfg, log=lambda line: None).run()
    assert [r["round"] for r in records] == [0, 1]
    metrics = json.load(open(os.path.join(tmp_path, "mt", "checkpoints", "round_001.json")))
    assert metrics["train/loss_unsup"] >= 0.0  # round 1 trained on teacher-labeled pool batches


def test_more_rounds_on_resume_reopen_the_last_one(smoke_run):
    """The earlier last round ran no teacher and acquired nothing: with loop.rounds raised it
    runs them (reusing its student), so the new round trains on more labels."""
    from dataclasses import replace

    cfg, run_dir, records, _, _ = smoke_run
    lines: list[str] = []
    more = replace(cfg, loop=replace(cfg.loop, rounds=3))
    again = Experiment(more, resources(), log=lines.append).run()
    assert [r["round"] for r in again] == [0, 1, 2]
    assert any("round 1] was the last round of the earlier run" in line for line in lines)
    assert any("round 1] train   reusing the finished student" in line for line in lines)
    assert again[1]["val/miou"] == records[1]["val/miou"]
    assert again[1]["pool/acquired_pixels"] > 0
    assert again[2]["pool/labeled_pixels"] > again[1]["pool/labeled_pixels"]


def test_class_balanced_selection_and_reco_warmup_run_on_the_same_path(
    ray_session, smoke_data_root, tmp_path
):
    """The cold-start options through the real round loop: the teacher writes each candidate's
    class group, the committed selection stays within the budget, and the ledger's pixels are
    the regions' true sizes."""
    cfg = load_config(
        "configs/smoke.yaml",
        [
            f"storage={tmp_path}",
            f"data.root={smoke_data_root}",
            "name=balanced",
            "acquisition.selection=class_balanced",
            "reco.warmup_steps=6",
        ],
    )
    records = Experiment(cfg, log=lambda line: None).run()
    assert [r["round"] for r in records] == [0, 1]
    table = pq.read_table(os.path.join(tmp_path, "balanced", "teacher", "round_000"))
    groups = [g for row in table.column("cand_groups").to_pylist() for g in row]
    regions = [g for row in table.column("cand_regions").to_pylist() for g in row]
    assert len(groups) == len(regions) > 0
    assert 0 <= min(groups) and max(groups) <= 9  # a rarity rank, or 9: nothing unlabeled
    state = _state_of(cfg)
    acquired = sum(state.grid(s).areas[r].sum() for s, r in state.acquired.items())
    assert 0 < acquired == records[0]["pool/acquired_pixels"]
    assert acquired <= cfg.acquisition.round_budget * state.total_pixels


def test_diverse_selection_runs_through_the_round_loop(ray_session, smoke_data_root, tmp_path):
    """Diverse selection through the real round loop: the teacher writes an embedding for every
    candidate, and the committed selection stays within the budget at the regions' true
    sizes."""
    from s4al_ray.acquisition_diversity import EMBED_DIM

    cfg = load_config(
        "configs/smoke.yaml",
        [
            f"storage={tmp_path}",
            f"data.root={smoke_data_root}",
            "name=diverse",
            "acquisition.selection=diverse",
        ],
    )
    records = Experiment(cfg, log=lambda line: None).run()
    assert [r["round"] for r in records] == [0, 1]
    table = pq.read_table(os.path.join(tmp_path, "diverse", "teacher", "round_000"))
    regions = table.column("cand_regions").to_pylist()
    vectors = table.column("cand_embedding").to_pylist()
    assert [len(v) for v in vectors] == [EMBED_DIM * len(r) for r in regions]
    state = _state_of(cfg)
    acquired = sum(state.grid(s).areas[r].sum() for s, r in state.acquired.items())
    budget = cfg.acquisition.round_budget * state.total_pixels
    assert 0 < acquired == records[0]["pool/acquired_pixels"] <= budget


def test_superpixel_regions_run_through_the_round_loop(ray_session, smoke_data_root, tmp_path):
    """SLIC superpixels as the unit of labeling, through the real round loop: segmented once per
    run and stored beside it, scored per superpixel by the teacher, committed at their true
    sizes, and read back (not segmented again) by a resumed run."""
    from s4al_ray.region_maps import decode_segments

    overrides = [
        f"storage={tmp_path}",
        f"data.root={smoke_data_root}",
        "name=slic",
        "acquisition.regions=slic",
    ]
    cfg = load_config("configs/smoke.yaml", overrides)
    lines: list[str] = []
    records = Experiment(cfg, log=lines.append).run()
    assert [r["round"] for r in records] == [0, 1]
    folder = os.path.join(tmp_path, "slic", "superpixels")
    maps = {
        name[: -len(".png")]: decode_segments(open(os.path.join(folder, name), "rb").read())
        for name in os.listdir(folder)
        if name.endswith(".png")
    }
    state = _state_of(cfg)
    assert sorted(maps) == sorted(state.sizes.ids)
    assert any("SLIC superpixels" in line for line in lines)
    table = pq.read_table(os.path.join(tmp_path, "slic", "teacher", "round_000"))
    for sample_id, scores in zip(table["sample_id"].to_pylist(), table["scores"].to_pylist()):
        assert len(scores) == int(maps[sample_id].max()) + 1  # one score per superpixel
    acquired = sum(int(np.isin(maps[s], r).sum()) for s, r in state.acquired.items())
    budget = cfg.acquisition.round_budget * state.total_pixels
    assert 0 < acquired == records[0]["pool/acquired_pixels"] <= budget
    assert acquired == state.ledger[0]["pixels"] == sum(state.ledger[0]["class_pixels"])
    stamps = {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)}
    again = Experiment(load_config("configs/smoke.yaml", [*overrides, "loop.rounds=3"])).run()
    assert again[2]["pool/labeled_pixels"] > again[1]["pool/labeled_pixels"]
    assert stamps == {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)}


def test_diverse_selection_over_superpixels_embeds_each_one(ray_session, smoke_data_root, tmp_path):
    """Diverse selection with superpixels: the decode stage reads the segment maps, the model
    stage embeds every superpixel, and the selection stays within the budget at true sizes."""
    from s4al_ray.acquisition_diversity import EMBED_DIM

    overrides = [f"storage={tmp_path}", f"data.root={smoke_data_root}", "name=slic_diverse"]
    overrides += ["acquisition.regions=slic", "acquisition.selection=diverse"]
    cfg = load_config("configs/smoke.yaml", overrides)
    records = Experiment(cfg, log=lambda line: None).run()
    table = pq.read_table(os.path.join(tmp_path, "slic_diverse", "teacher", "round_000"))
    regions = table.column("cand_regions").to_pylist()
    vectors = table.column("cand_embedding").to_pylist()
    assert sum(map(len, regions)) > 0
    assert [len(v) for v in vectors] == [EMBED_DIM * len(r) for r in regions]
    state = _state_of(cfg)
    acquired = sum(int(state.grid(s).areas[r].sum()) for s, r in state.acquired.items())
    budget = cfg.acquisition.round_budget * state.total_pixels
    assert 0 < acquired == records[0]["pool/acquired_pixels"] <= budget
