"""Round tables for the terminal and the rounds CSV."""

from __future__ import annotations

import csv
import io

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


def format_class_table(record: dict, classes: list[str]) -> str:
    rows = [[name, cell("{:.1%}", record.get(f"val/iou/{name}"))] for name in classes]
    return f"Per-class IoU %, round {record['round']}:\n" + _table(["class", "IoU %"], rows)


def write_rounds_csv(records: list[dict], uri: str) -> None:
    keys: list[str] = []
    for rec in records:
        keys += [k for k in rec if k not in keys and not isinstance(rec[k], (list, dict))]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    storage.write_text(uri, buffer.getvalue())
