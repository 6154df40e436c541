"""The teacher pass: Ray Data tasks with a per-process model cache against the actor pool."""

from __future__ import annotations

import glob
import os
import signal
import threading
import time
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import torch
from conftest import pids_matching

from s4al_ray import storage
from s4al_ray.config import load_config
from s4al_ray.data.registry import load_dataset
from s4al_ray.model import model_from_config
from s4al_ray.teacher import TeacherJob, run_teacher, warm_task_workers
from s4al_ray.teacher_stages import TeacherModel, predict_rows


@pytest.fixture(scope="module")
def teacher_setup(ray_session, smoke_data_root):
    cfg = load_config("configs/smoke.yaml", [f"data.root={smoke_data_root}"])
    data = load_dataset(cfg.data, cfg.seed, log=lambda line: None)
    rows = [
        {**row, "acquired": [0] if i % 3 == 0 else [], "pool_index": i}
        for i, row in enumerate(data.rows("train")[:12])
    ]
    job = TeacherJob(
        round=0,
        seed=0,
        model=cfg.model,
        num_classes=data.num_classes,
        checkpoint_uri="",
        checkpoint_stamp="",
        region_size=24,
        score="entropy",
        class_weights=None,
        scales=[1.0],
        flip=False,
        use_gpu=False,
        cpus_per_worker=1,
        reuse_workers=True,
        num_workers=2,
        batch_size=4,
    )
    return cfg, data, rows, job


def _save_model(cfg, num_classes: int, seed: int, path: str) -> str:
    torch.manual_seed(seed)
    model = model_from_config(cfg.model, num_classes, "none")
    torch.save({"model": model.state_dict()}, path)
    return path


def _outputs(uri: str) -> dict[str, tuple]:
    table = pq.read_table(uri).to_pylist()
    return {r["sample_id"]: (r["label_png"], r["conf_png"], tuple(r["scores"])) for r in table}


def _pass(rows, job: TeacherJob, checkpoint: str, out: str, reuse_workers: bool) -> dict:
    job = replace(
        job,
        checkpoint_uri=checkpoint,
        checkpoint_stamp=storage.stamp(checkpoint),
        reuse_workers=reuse_workers,
    )
    run_teacher(job, rows, out)
    return _outputs(out)


def test_task_path_writes_what_the_actor_pool_writes(teacher_setup, tmp_path):
    cfg, data, rows, teacher_cfg = teacher_setup
    checkpoint = _save_model(cfg, data.num_classes, 1, str(tmp_path / "round_000.pt"))
    tasks = _pass(rows, teacher_cfg, checkpoint, str(tmp_path / "tasks"), True)
    actors = _pass(rows, teacher_cfg, checkpoint, str(tmp_path / "actors"), False)
    assert set(tasks) == {r["sample_id"] for r in rows}
    assert tasks == actors


def test_rewritten_checkpoint_is_not_served_from_a_cached_model(teacher_setup, tmp_path):
    """Task workers cache the model by config: a checkpoint rewritten under the same path (a
    rerun round) must be reloaded, never answered by the previous weights."""
    cfg, data, rows, teacher_cfg = teacher_setup
    path = str(tmp_path / "round_001.pt")
    first = _pass(
        rows, teacher_cfg, _save_model(cfg, data.num_classes, 1, path), str(tmp_path / "a"), True
    )
    _save_model(cfg, data.num_classes, 2, path)
    os.utime(path, ns=(1, 1))  # a different stamp even if the rewrite landed in the same tick
    second = _pass(rows, teacher_cfg, path, str(tmp_path / "b"), True)
    reference = _pass(rows, teacher_cfg, path, str(tmp_path / "c"), False)
    assert second == reference
    assert second != first


def test_warm_up_imports_the_teachers_code_in_the_worker(ray_session):
    """The warm-up task imports the stages (torch, the model) in the worker it runs on: a remote
    function reaches the worker by value, so an empty one imported nothing and the first pass
    paid every import again."""
    import ray

    loaded = ray.get(warm_task_workers(2), timeout=120)
    assert loaded == [["torch", "torchvision", "s4al_ray.teacher_stages"]] * 2


def test_teacher_pass_survives_a_killed_task_worker(teacher_setup, tmp_path):
    """A teacher worker process killed mid-pass: Ray Data retries its batch on another worker
    and the parquet still holds every pool image once, with the same predictions."""
    cfg, data, rows, teacher_cfg = teacher_setup
    checkpoint = _save_model(cfg, data.num_classes, 3, str(tmp_path / "round_002.pt"))
    many = [{**r, "sample_id": f"{r['sample_id']}~{k}"} for k in range(20) for r in rows]
    killed: list[int] = []

    def kill_first_teacher_worker() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for pid in pids_matching("model_batch"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.02)

    killer = threading.Thread(target=kill_first_teacher_worker, daemon=True)
    killer.start()
    out = _pass(many, teacher_cfg, checkpoint, str(tmp_path / "killed"), True)
    killer.join(timeout=5)
    assert killed, "no teacher worker was found to kill"
    assert sorted(out) == sorted(r["sample_id"] for r in many)
    reference = _pass(rows, teacher_cfg, checkpoint, str(tmp_path / "reference"), True)
    assert all(out[f"{sid}~7"] == value for sid, value in reference.items())


def test_random_scores_do_not_depend_on_batching(teacher_setup, tmp_path):
    """Random acquisition draws per image from (seed, sample id): the same scores whichever
    worker, batch or position an image lands in."""
    cfg, data, rows, teacher_cfg = teacher_setup
    checkpoint = _save_model(cfg, data.num_classes, 4, str(tmp_path / "round_003.pt"))
    job = replace(teacher_cfg, score="random", checkpoint_uri=checkpoint)
    model = TeacherModel(job)

    def scores(batch_rows: list[dict]) -> dict[str, list[float]]:
        table = predict_rows(model, batch_rows, job).to_pylist()
        return {r["sample_id"]: r["scores"] for r in table}

    together = scores(rows[:4])
    alone = scores(rows[2:3])
    reversed_order = scores(rows[:4][::-1])
    sid = rows[2]["sample_id"]
    assert together[sid] == alone[sid] == reversed_order[sid]
    assert together[rows[0]["sample_id"]] != together[sid]


@pytest.mark.parametrize("mode", ["budget", "topk"])
def test_read_candidates_select_what_ranking_every_stored_score_selects(
    teacher_setup, tmp_path, mode
):
    """The driver's candidates (cut by the blocks' histograms, in the driver or in Ray Data
    tasks) select exactly what one ranking of every region score the pass stored selects."""
    import numpy as np

    from s4al_ray.acquisition import select, select_regions
    from s4al_ray.regions import RegionGrid
    from s4al_ray.teacher import read_teacher_output

    cfg, data, rows, teacher_cfg = teacher_setup
    checkpoint = _save_model(cfg, data.num_classes, 5, str(tmp_path / "round_004.pt"))
    pool_px = sum(r["height"] * r["width"] for r in rows)
    job = replace(
        teacher_cfg,
        checkpoint_uri=checkpoint,
        checkpoint_stamp=storage.stamp(checkpoint),
        budget_pixels=pool_px // 20,
        mode=mode,
        top_k=2,
    )
    out = str(tmp_path / "budgeted")
    run_teacher(job, rows, out)
    here = read_teacher_output(out, data.num_classes, job, filter_in_tasks=False)
    in_tasks = read_teacher_output(out, data.num_classes, job, filter_in_tasks=True)
    ids = sorted(r["sample_id"] for r in rows)
    options = dict(mode=mode, budget_pixels=job.budget_pixels, top_k=job.top_k)
    chosen = select(here.candidates, ids, **options)
    assert chosen == select(in_tasks.candidates, ids, **options)
    stored = {
        r["sample_id"]: np.asarray(r["scores"], np.float32) for r in pq.read_table(out).to_pylist()
    }
    grids = {r["sample_id"]: RegionGrid(r["height"], r["width"], job.region_size) for r in rows}
    acquired = {r["sample_id"]: r["acquired"] for r in rows if r["acquired"]}
    assert chosen == select_regions(stored, grids, acquired, **options)
    assert sum(map(len, chosen.values())) > 0
    assert here.hist.sum() == sum(r["height"] * r["width"] for r in rows)
    # A pass written before the candidate histograms (a run resumed across the upgrade): every
    # candidate is read, and the selection is the same.
    for path in sorted(glob.glob(os.path.join(out, "**", "*.parquet"), recursive=True)):
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["cand_hist_keys", "cand_hist_counts"]), path)
    older = read_teacher_output(out, data.num_classes, job)
    assert len(older.candidates) >= len(here.candidates)
    assert select(older.candidates, ids, **options) == chosen


def test_class_balanced_candidates_select_what_the_stored_label_maps_imply(teacher_setup, tmp_path):
    """With class-balanced selection the blocks put every candidate in the group of the rarest
    class their label map shows on it; the driver's candidates (cut per group, in the driver or
    in Ray Data tasks) select exactly what the class-balanced rule over every stored region
    score and label map selects."""
    import numpy as np

    from s4al_ray.acquisition import class_rarity_ranks, region_groups, select, select_regions
    from s4al_ray.data.io import decode_mask
    from s4al_ray.regions import RegionGrid
    from s4al_ray.teacher import read_teacher_output

    cfg, data, rows, teacher_cfg = teacher_setup
    checkpoint = _save_model(cfg, data.num_classes, 6, str(tmp_path / "round_005.pt"))
    pool_px = sum(r["height"] * r["width"] for r in rows)
    ranks = class_rarity_ranks(np.arange(data.num_classes)[::-1] * 100)  # the last class rarest
    job = replace(
        teacher_cfg,
        checkpoint_uri=checkpoint,
        checkpoint_stamp=storage.stamp(checkpoint),
        budget_pixels=pool_px // 10,
        rarity_ranks=ranks.tolist(),
    )
    out = str(tmp_path / "balanced")
    run_teacher(job, rows, out)
    ids = sorted(r["sample_id"] for r in rows)
    options = dict(budget_pixels=job.budget_pixels, selection="class_balanced")
    here = read_teacher_output(out, data.num_classes, job, filter_in_tasks=False)
    in_tasks = read_teacher_output(out, data.num_classes, job, filter_in_tasks=True)
    chosen = select(here.candidates, ids, **options)
    assert chosen == select(in_tasks.candidates, ids, **options)

    grids = {r["sample_id"]: RegionGrid(r["height"], r["width"], job.region_size) for r in rows}
    acquired = {r["sample_id"]: r["acquired"] for r in rows if r["acquired"]}
    stored, groups = {}, {}
    for r in pq.read_table(out).to_pylist():
        sid, grid = r["sample_id"], grids[r["sample_id"]]
        stored[sid] = np.asarray(r["scores"], np.float32)
        known = grid.mask(acquired.get(sid, []))
        counts = grid.region_class_counts(decode_mask(r["label_png"]), data.num_classes, known)
        groups[sid] = region_groups(counts, ranks)
    assert chosen == select_regions(stored, grids, acquired, groups=groups, **options)
    assert len(np.unique(here.candidates.group)) > 1  # several classes compete
    assert chosen != select_regions(stored, grids, acquired, budget_pixels=job.budget_pixels)


def test_diverse_candidates_carry_the_models_region_embeddings(teacher_setup, tmp_path):
    """With diverse selection the model stage returns region embeddings and the blocks keep the
    candidates that cover the shortlist: the driver's candidates (read in the driver or in Ray
    Data tasks) carry, for every region, the embedding the student itself gives it, and select
    exactly what the plain rule selects over every stored score and those embeddings."""
    import numpy as np

    from s4al_ray.acquisition import select, select_regions
    from s4al_ray.acquisition_diversity import candidate_pixels
    from s4al_ray.data.io import load_image
    from s4al_ray.data.training import normalize
    from s4al_ray.region_embeddings import region_embeddings
    from s4al_ray.regions import RegionGrid
    from s4al_ray.teacher import read_teacher_output

    cfg, data, rows, teacher_cfg = teacher_setup
    checkpoint = _save_model(cfg, data.num_classes, 7, str(tmp_path / "round_006.pt"))
    budget = sum(r["height"] * r["width"] for r in rows) // 20
    job = replace(
        teacher_cfg,
        checkpoint_uri=checkpoint,
        checkpoint_stamp=storage.stamp(checkpoint),
        budget_pixels=candidate_pixels("diverse", budget, 3.0),
        embed_regions=True,
    )
    out = str(tmp_path / "diverse")
    run_teacher(job, rows, out)
    here = read_teacher_output(out, data.num_classes, job, filter_in_tasks=False)
    in_tasks = read_teacher_output(out, data.num_classes, job, filter_in_tasks=True)
    ids = sorted(r["sample_id"] for r in rows)
    options = dict(budget_pixels=budget, selection="diverse", shortlist=3.0)
    chosen = select(here.candidates, ids, **options)
    assert chosen == select(in_tasks.candidates, ids, **options)
    assert 0 < sum(map(len, chosen.values())) < len(here.candidates)

    model = model_from_config(cfg.model, data.num_classes, "none")
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    model.eval()
    direct = {}
    with torch.no_grad():
        for row in rows:
            image = torch.from_numpy(np.array(load_image(row["image_uri"]))).permute(2, 0, 1)[None]
            image = normalize(image.float() / 255.0)
            embedding = model(image, with_embedding=True)["embedding"]
            size = (row["height"], row["width"])
            direct[row["sample_id"]] = region_embeddings(embedding, size, job.region_size)[0]
    for k in range(len(here.candidates)):
        sid = ids[here.candidates.image[k]]
        expected = direct[sid][here.candidates.region[k]].astype(np.float32)
        assert np.allclose(here.candidates.embedding[k].astype(np.float32), expected, atol=5e-3)
    # The plain rule over every stored score, with the pass's own (batched, float16) vectors
    # where it kept candidates: a bit of rounding must not decide a near-tie here.
    for k in range(len(here.candidates)):
        direct[ids[here.candidates.image[k]]][here.candidates.region[k]] = (
            here.candidates.embedding[k]
        )
    grids = {r["sample_id"]: RegionGrid(r["height"], r["width"], job.region_size) for r in rows}
    acquired = {r["sample_id"]: r["acquired"] for r in rows if r["acquired"]}
    stored = {
        r["sample_id"]: np.asarray(r["scores"], np.float32) for r in pq.read_table(out).to_pylist()
    }
    assert chosen == select_regions(stored, grids, acquired, embeddings=direct, **options)


def test_oracle_error_scores_are_the_teachers_error_rate_on_each_regions_unlabeled_pixels(
    teacher_setup, tmp_path
):
    """The decode stage reads the ground truth only for a score that needs it: each stored
    region score is the share of the region's pixels, outside acquired regions, where the
    stored label map differs from the true mask."""
    import numpy as np

    from s4al_ray.data.io import decode_mask, load_mask
    from s4al_ray.regions import RegionGrid

    cfg, data, rows, teacher_cfg = teacher_setup
    checkpoint = _save_model(cfg, data.num_classes, 8, str(tmp_path / "round_007.pt"))
    job = replace(
        teacher_cfg,
        checkpoint_uri=checkpoint,
        checkpoint_stamp=storage.stamp(checkpoint),
        score="oracle_error",
    )
    out = str(tmp_path / "oracle")
    run_teacher(job, rows, out)
    by_id = {r["sample_id"]: r for r in rows}
    errors = 0.0
    for stored in pq.read_table(out).to_pylist():
        row = by_id[stored["sample_id"]]
        grid = RegionGrid(row["height"], row["width"], job.region_size)
        truth = load_mask(row["mask_uri"])
        wrong = (decode_mask(stored["label_png"]) != truth) & (truth < data.num_classes)
        wrong &= ~grid.mask(row["acquired"])
        assert np.allclose(stored["scores"], grid.region_means(wrong), atol=1e-6)
        errors += float(wrong.sum())
    assert errors > 0  # an untrained model is wrong somewhere
