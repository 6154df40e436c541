"""Sweep targets (final mIoU, area under the mIoU/labeled-pixels curve, mIoU at a budget) and the
sweep report: a table of trials sorted by the target, ``report.csv`` and ``curves.png``.

The targets are computed from round records (``pool/labeled_frac``, ``val/miou``), so the running
value a trial reports to Tune and the value in the report come from the same function.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from s4al_ray import storage

METRICS = ("final_miou", "auc", "miou_at_budget")


# -- Targets


def curve_auc(points: Sequence[tuple[float, float]]) -> float:
    """Trapezoid area under mIoU vs labeled fraction, divided by the labeled-fraction span.

    The result is the curve's mean mIoU over the budget range, comparable across trials with
    different budgets. One point (or no span) has no area: its (mean) mIoU is returned.
    """
    if not points:
        return 0.0
    pts = sorted(points)
    span = pts[-1][0] - pts[0][0]
    if span <= 0:
        return sum(y for _, y in pts) / len(pts)
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))
    return area / span


def miou_at_budget(points: Sequence[tuple[float, float]], budget: float) -> float:
    """mIoU of the last round trained with at most ``budget`` labeled pixels; 0.0 if none was
    (a trial whose first round already exceeds the budget scores nothing at that budget)."""
    within = [y for x, y in points if x <= budget + 1e-9]
    return within[-1] if within else 0.0


def target_value(metric: str, points: Sequence[tuple[float, float]], budget: float) -> float:
    """``points``: (labeled fraction, mIoU) per round, in round order."""
    if metric == "final_miou":
        return points[-1][1] if points else 0.0
    if metric == "auc":
        return curve_auc(points)
    if metric == "miou_at_budget":
        return miou_at_budget(points, budget)
    raise ValueError(f"unknown sweep metric {metric!r}; one of {', '.join(METRICS)}")


def curve_points(records: Sequence[dict]) -> list[tuple[float, float]]:
    return [
        (float(r["pool/labeled_frac"]), float(r["val/miou"]))
        for r in records
        if _is_number(r.get("pool/labeled_frac")) and _is_number(r.get("val/miou"))
    ]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- The report


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]  # searched dotted keys -> value
    records: list[dict]  # one per reported round, in round order
    rounds_planned: int
    error: str | None = None
    target: float = float("nan")
    auc: float = float("nan")
    extra: dict = field(default_factory=dict)

    @property
    def points(self) -> list[tuple[float, float]]:
        return curve_points(self.records)

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        done = len(self.records)
        if done >= self.rounds_planned:
            return "done"
        return f"stopped after {done}/{self.rounds_planned} rounds" if done else "not run"


def score_rows(rows: list[TrialRow], metric: str, budget: float) -> list[TrialRow]:
    """Fill target and AUC and sort best first (trials without results last)."""
    for row in rows:
        pts = row.points
        row.target = target_value(metric, pts, budget) if pts else float("nan")
        row.auc = curve_auc(pts) if pts else float("nan")
    return sorted(
        rows,
        key=lambda r: (
            math.isnan(r.target),
            -r.target if not math.isnan(r.target) else 0.0,
            r.trial_id,
        ),
    )


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Last segment of each dotted key, unless two keys share it (then the full key)."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves)}


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or not _is_number(value) else f"{100 * value:.{digits}f}"


def _final(row: TrialRow, key: str) -> float | None:
    return row.records[-1].get(key) if row.records else None


def report_columns(keys: Sequence[str], metric: str) -> list[str]:
    names = short_names(keys)
    return [
        "rank",
        "trial",
        *[names[k] for k in keys],
        f"target ({metric})",
        "final mIoU %",
        "labeled %",
        "AUC mIoU %",
        "rounds",
        "status",
    ]


def format_report(rows: list[TrialRow], keys: Sequence[str], metric: str) -> str:
    header = report_columns(keys, metric)
    body = []
    for rank, row in enumerate(rows, 1):
        body.append(
            [
                str(rank),
                row.trial_id,
                *[_fmt_value(row.params.get(k)) for k in keys],
                "-" if math.isnan(row.target) else f"{row.target:.4f}",
                _pct(_final(row, "val/miou")),
                _pct(_final(row, "pool/labeled_frac"), 2),
                _pct(row.auc),
                str(len(row.records)),
                row.status,
            ]
        )
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)
    ]
    lines = [
        "  ".join(h.rjust(w) for h, w in zip(header, widths)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def write_report_csv(rows: list[TrialRow], keys: Sequence[str], metric: str, uri: str) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "rank",
            "trial_id",
            *keys,
            "target",
            "metric",
            "final_miou",
            "final_labeled_frac",
            "auc",
            "rounds",
            "rounds_planned",
            "status",
            "error",
        ]
    )
    for rank, row in enumerate(rows, 1):
        writer.writerow(
            [
                rank,
                row.trial_id,
                *[row.params.get(k) for k in keys],
                "" if math.isnan(row.target) else row.target,
                metric,
                _final(row, "val/miou"),
                _final(row, "pool/labeled_frac"),
                "" if math.isnan(row.auc) else row.auc,
                len(row.records),
                row.rounds_planned,
                row.status,
                row.error or "",
            ]
        )
    storage.write_text(uri, buffer.getvalue())


def plot_curves(
    rows: list[TrialRow], keys: Sequence[str], metric: str, title: str, uri: str
) -> None:
    """One mIoU-vs-labeled-pixels line per trial, best first in the legend."""
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt

    names = short_names(keys)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for row in rows:
        pts = row.points
        if not pts:
            continue
        label = (
            ", ".join(f"{names[k]}={_fmt_value(row.params.get(k))}" for k in keys) or row.trial_id
        )
        score = "" if math.isnan(row.target) else f"  [{metric} {row.target:.3f}]"
        ax.plot(
            [100 * x for x, _ in pts],
            [100 * y for _, y in pts],
            marker="o",
            linewidth=1.5,
            label=f"{label}{score}",
        )
    ax.set_xlabel("labeled pixels (% of train pixels)")
    ax.set_ylabel("validation mIoU (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    storage.write_bytes(uri, buffer.getvalue())
