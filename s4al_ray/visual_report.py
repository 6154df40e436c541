"""Visual reports a researcher reads at a glance, redrawn into ``<run_dir>/report/`` every round.

* ``miou_curve.png``: validation mIoU (thick) and per-class IoU (thin) against labeled-pixel %.
* ``examples_round_XXX.png``: a few pool images with ground truth, the teacher's prediction, its
  thresholded pseudo-label and the acquired regions outlined (rounds that ran a teacher only).
* ``acquired_classes.png``: share of acquired pixels per class against the pool's ground truth
  (numbers in ``acquired_classes.json``; the pool's class counts, computed once from the train
  masks, cached in ``pool_classes.json``).
* ``report.html``: a static page with the round table and those images (relative links only).

The figures are drawn by ``report_figures.py``. Everything is read and written through
:mod:`s4al_ray.storage`, so a run directory may be an ``s3://`` URI.
"""

from __future__ import annotations

import html
import json

from s4al_ray import storage
from s4al_ray.layout import RunLayout
from s4al_ray.pool.state import PoolState
from s4al_ray.report import ROUND_COLUMNS, cell
from s4al_ray.report_examples import draw_examples
from s4al_ray.report_figures import (
    acquired_class_pixels,
    class_colors,
    draw_acquired_classes,
    draw_miou_curve,
    pool_class_pixels,
)

# -- The page


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1120px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;text-align:right;border-bottom:1px solid #eee}
th{background:#f4f5f7;border-bottom:1px solid #ccc}tr:last-child td{font-weight:600}
.scroll{overflow-x:auto}
figure{margin:12px 0 24px}figure img{max-width:100%;height:auto;border:1px solid #e3e3e3}
figcaption{font-size:13px;color:#555;margin-top:4px}
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        "</table></div>"
    )


def _figure_html(name: str, caption: str) -> str:
    src = html.escape(name, quote=True)
    alt = html.escape(name[: -len(".png")].replace("_", " "), quote=True)
    return (
        f'<figure><a href="{src}"><img src="{src}" alt="{alt}">'
        f"</a><figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def build_html(
    run_dir: str, records: list[dict], classes: list[str], present: set[str], round_index: int
) -> str:
    """The page; ``present`` holds the file names in the report folder that exist."""
    records = sorted(records, key=lambda r: r["round"])
    name = run_dir.rstrip("/").rsplit("/", 1)[-1]
    round_rows = [[cell(fmt, rec.get(key)) for _, key, fmt in ROUND_COLUMNS] for rec in records]
    class_rows = [
        [str(rec["round"]), *(cell("{:.1%}", rec.get(f"val/iou/{c}")) for c in classes)]
        for rec in records
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>S4AL+ report: {html.escape(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>S4AL+ report: {html.escape(name)}</h1>",
        f'<p class="meta">After round {round_index}. Run directory: '
        f"<code>{html.escape(run_dir)}</code></p>",
        "<h2>Rounds</h2>",
        _html_table([n for n, _, _ in ROUND_COLUMNS], round_rows),
        "<h2>Per-class IoU %</h2>",
        _html_table(["round", *classes], class_rows),
    ]
    figures = []
    if "miou_curve.png" in present:
        figures.append(
            _figure_html(
                "miou_curve.png",
                "Validation mIoU (black) and per-class IoU (thin lines) against "
                "the share of train pixels labeled when each round's student was trained.",
            )
        )
    if "acquired_classes.png" in present:
        figures.append(
            _figure_html(
                "acquired_classes.png",
                "Share of acquired pixels per class (all rounds so far) "
                "next to the class distribution of the pool's ground truth.",
            )
        )
    if figures:
        parts += ["<h2>Curves</h2>", *figures]
    examples = sorted(
        ((r, n) for n in present if (r := RunLayout.examples_round(n)) is not None), reverse=True
    )
    if examples:
        parts.append("<h2>Example pool images</h2>")
        for r, file_name in examples:
            parts.append(
                _figure_html(
                    file_name,
                    f"Round {r}: pool images with the most pixels acquired in round {r}. "
                    "Prediction = teacher arg-max; pseudo-label = prediction where its confidence "
                    "passes the class threshold (black = ignored); yellow boxes = regions acquired "
                    f"in round {r}, cyan = earlier.",
                )
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# -- The entry point


def write_round_report(
    layout: RunLayout,
    records: list[dict],
    data,
    state: PoolState,
    round_index: int,
    max_examples: int = 4,
) -> list[str]:
    """Draw this round's report into ``<run_dir>/report/``; return the URIs written.

    ``records`` are the round records so far (this round's included); ``state`` is the pool state
    including this round's commit (if any).
    """
    report_dir = layout.report_dir
    written: list[str] = []

    def put(file_name: str, payload: bytes) -> None:
        uri = layout.report_file(file_name)
        storage.write_bytes(uri, payload)
        written.append(uri)

    records = sorted((r for r in records if r["round"] <= round_index), key=lambda r: r["round"])
    colors = class_colors(data)
    put("miou_curve.png", draw_miou_curve(records, list(data.classes), colors))

    record = next((r for r in records if r["round"] == round_index), None)
    teacher_uri = layout.teacher(round_index)
    if (
        record is not None
        and record.get("teacher/thresholds") is not None
        and max_examples > 0
        and storage.exists(teacher_uri)
    ):
        png = draw_examples(data, state, record, teacher_uri, round_index, max_examples, colors)
        if png is not None:
            put(layout.examples_figure(round_index), png)

    acquired = acquired_class_pixels(state, round_index)
    pool = pool_class_pixels(report_dir, data, state)
    put(
        "acquired_classes.json",
        json.dumps(
            {
                "classes": list(data.classes),
                "round": round_index,
                "acquired_pixels": acquired,
                "pool_pixels": pool,
            },
            indent=1,
        ).encode(),
    )
    put(
        "acquired_classes.png",
        draw_acquired_classes(list(data.classes), acquired, pool, round_index),
    )

    present = {u.rstrip("/").rsplit("/", 1)[-1] for u in storage.list_files(report_dir)}
    put(
        "report.html",
        build_html(layout.run_dir, records, list(data.classes), present, round_index).encode(),
    )
    return written
