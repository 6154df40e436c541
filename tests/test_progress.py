"""Progress drawn in the driver from what workers post: lines when stdout is not a terminal."""

from __future__ import annotations

import time

import ray

from s4al_ray import progress
from s4al_ray.progress import StageProgress, post_images


@ray.remote(num_cpus=0)
def _finish_block(queue, images: int) -> None:
    post_images(queue, images)


def _until(condition, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.05)


def test_teacher_pass_lines_count_the_images_tasks_finish(ray_session, monkeypatch):
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)  # a line per block (else every 10 s)
    lines: list[str] = []
    with StageProgress("[round 3] teacher", 12, "images", lines.append, live=False) as queue:
        ray.get([_finish_block.remote(queue, 4) for _ in range(3)])
        _until(lambda: any("12/12" in line for line in lines))
    counts = [int(line.split()[3].split("/")[0]) for line in lines]
    assert counts == sorted(counts) and counts[-1] == 12 and len(counts) == 3
    assert lines[-1].startswith("[round 3] teacher 12/12 images, ")
    assert " images/s, ETA 0s" in lines[-1]


def test_lines_are_throttled_when_not_a_terminal(ray_session):
    lines: list[str] = []
    with StageProgress("[round 0] teacher", 100, "images", lines.append, live=False) as queue:
        ray.get([_finish_block.remote(queue, 1) for _ in range(99)])
        time.sleep(0.5)
    # 99 blocks within the 10 s interval: at most the first; none reaches the total.
    assert len(lines) <= 1


def test_training_estimates_from_its_epochs_not_its_start_up(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    lines: list[str] = []
    board = StageProgress("[round 1] train  ", 10, "epochs", lines.append, False, 4)
    board.started = 70.0  # 30 s of Ray Train start-up before the first report
    # A resumed round: epochs 1-5 were restored; the first report is epoch 6 (its loop: 2 s).
    board._epoch(
        {
            "epoch": 5,
            "train/loss_total": 0.5,
            "train/loss_sup": 0.4,
            "train/lr": 0.01,
            "train/seconds": 2.0,
        }
    )
    assert lines[-1] == (
        "[round 1] train   epoch 6/10: loss 0.500 (sup 0.400), 2.0 steps/s, lr 0.01, ETA 8s"
    )
    clock[0] = 106.0  # two more epochs in 6 s (checkpoints included): 3 s each, 2 to go
    board._epoch(
        {
            "epoch": 7,
            "train/loss_total": 0.4,
            "train/loss_sup": 0.3,
            "train/lr": 0.01,
            "train/seconds": 2.0,
        }
    )
    assert lines[-1].startswith("[round 1] train   epoch 8/10: loss 0.400 (sup 0.300)")
    assert lines[-1].endswith("ETA 6s")


def test_a_stage_opening_line_estimates_from_the_rounds_done():
    from s4al_ray.report import stage_estimate

    done = [{"time/train_s": 50.0}, {"time/train_s": 70.0, "time/teacher_s": 9.6}]
    assert stage_estimate(done, "time/train_s") == ", ~1m as before"
    assert stage_estimate(done, "time/teacher_s") == ", ~10s as before"
    assert stage_estimate([], "time/train_s") == ""


def test_on_a_terminal_epochs_stay_as_lines_above_the_live_bar():
    import io

    from tqdm import tqdm

    lines: list[str] = []
    board = StageProgress("[round 0] train  ", 4, "epochs", lines.append, True, 2)
    board.started = board._last_line = time.perf_counter()
    screen = io.StringIO()
    board._bar = tqdm(total=4, file=screen)  # what __enter__ opens on a terminal
    board._epoch({"epoch": 0, "train/loss_total": 0.5, "train/lr": 0.01, "train/seconds": 1.0})
    board._images(0)  # a teacher-style update only moves the bar
    assert lines == ["[round 0] train   epoch 1/4: loss 0.500, 2.0 steps/s, lr 0.01, ETA 3s"]
    assert board._bar.n == 1 and "ETA 3s" in screen.getvalue()
