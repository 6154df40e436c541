"""Round tables and progress lines for the terminal, and the rounds CSV."""

from __future__ import annotations

import csv
import io
import statistics

from s4al_ray import storage

ROUND_COLUMNS = (
    ("round", "round", "{:d}"),
    ("labeled %", "pool/labeled_frac", "{:.2%}"),
    ("mIoU %", "val/miou", "{:.1%}"),
    ("pix acc %", "val/pixel_acc", "{:.1%}"),
    ("acquired px", "pool/acquired_pixels", "{:d}"),
    ("pseudo kept %", "teacher/kept_frac", "{:.1%}"),
    ("train s", "time/train_s", "{:.1f}"),
    ("teacher s", "time/teacher_s", "{:.1f}"),
)


def cell(fmt: str, value) -> str:
    """A table cell: formatted, percent signs dropped (the header says %), "-" when missing."""
    if value is None:
        return "-"
    try:
        return fmt.format(value).replace("%", "")
    except (ValueError, TypeError):
        return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([line, rule, *body])


def format_round_table(records: list[dict]) -> str:
    header = [name for name, _, _ in ROUND_COLUMNS]
    rows = [[cell(fmt, rec.get(key)) for _, key, fmt in ROUND_COLUMNS] for rec in records]
    return _table(header, rows)


def format_class_table(record: dict, classes: list[str], title: str | None = None) -> str:
    """Per-class IoU of every split the record scored (val, and test where it has one), and
    the mean as the last row."""
    splits = [s for s in ("val", "test") if f"{s}/miou" in record]
    rows = [
        [name, *(cell("{:.1%}", record.get(f"{s}/iou/{name}")) for s in splits)] for name in classes
    ]
    rows.append(["mean", *(cell("{:.1%}", record.get(f"{s}/miou")) for s in splits)])
    title = title or f"Per-class IoU %, round {record['round']}"
    return f"{title}:\n" + _table(["class", *(f"{s} IoU %" for s in splits)], rows)


def write_rounds_csv(records: list[dict], uri: str) -> None:
    keys: list[str] = []
    for rec in records:
        keys += [k for k in rec if k not in keys and not isinstance(rec[k], (list, dict))]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    storage.write_text(uri, buffer.getvalue())


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fmt_estimate(seconds: float) -> str:
    """A rounded duration for an estimate: ~40s, ~4m, ~1h05m."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"~{max(1, int(round(seconds)))}s"
    minutes = int(round(seconds / 60))
    if minutes < 60:
        return f"~{minutes}m"
    return f"~{minutes // 60}h{minutes % 60:02d}m"


# -- Progress


def stage_estimate(records: list[dict], key: str) -> str:
    """``", ~2m10s as before"``: the mean time of this stage (``time/train_s``) in the rounds
    done, to append to the stage's opening line; empty before any."""
    times = [r[key] for r in records if r.get(key)]
    return f", {fmt_estimate(statistics.fmean(times))} as before" if times else ""


def eta_line(records: list[dict], total_rounds: int, elapsed_s: float) -> str:
    """``"round 2/5 done, 3m10s elapsed, ~4m left"``.

    The estimate sums, for each round still to run, the mean training time of the rounds done
    plus (except for the last round, which runs no teacher and acquires nothing) their mean
    teacher + acquisition time. Without timings it falls back to elapsed time per round done.
    """
    done = (max(int(r["round"]) for r in records) + 1) if records else 0
    head = f"round {done}/{total_rounds} done, {fmt_duration(elapsed_s)} elapsed"
    remaining = list(range(done, total_rounds))
    if not remaining:
        return f"{head}, finished"
    train = [r["time/train_s"] for r in records if r.get("time/train_s") is not None]
    extra = [
        r.get("time/teacher_s", 0.0) + r.get("time/acquire_s", 0.0)
        for r in records
        if r.get("time/teacher_s")
    ]
    if train:
        mean_train = statistics.fmean(train)
        mean_extra = statistics.fmean(extra) if extra else 0.0
        estimate = sum(
            mean_train + (mean_extra if r < total_rounds - 1 else 0.0) for r in remaining
        )
    elif done:
        estimate = elapsed_s / done * len(remaining)
    else:
        return f"{head}, {len(remaining)} rounds left"
    return f"{head}, {fmt_estimate(estimate)} left"
