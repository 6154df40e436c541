"""``check_dataset``: read every sample once before training, so bad files fail early, by name.

Without it a bad file surfaces hours into a run and far from its cause: a truncated PNG kills a
Ray worker mid-epoch, a mask of the wrong size breaks a batch, a label value that is not a class
either crashes the loss or is silently learned as something it is not. Each problem is reported
with the file to fix. Cost: one read of each image (size from its header; PNGs are checked to
their last chunk with ``verify``, which needs no decoding; other formats are decoded) and one
decode of each mask, which also gives the class pixel histogram. Samples are checked in threads,
which overlap the reads (S3 especially) with Pillow's C code; one sample's reading is
:mod:`s4al_ray.data.check_files`. Besides errors, warnings list files that are read otherwise
than stored (EXIF orientation applied, transparency dropped) and JPEG masks. A prepared copy's
problems name its source file, the one to fix.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from s4al_ray import storage
from s4al_ray.data.check_files import MAX_NAMED, check_sample, note_warnings, shown_name
from s4al_ray.data.io import DatasetError
from s4al_ray.data.manifest import DatasetInfo

# Error kinds in the order they are reported (the most basic first).
ERROR_KINDS = (
    "manifest",
    "count mismatch",
    "missing image",
    "unreadable image",
    "missing mask",
    "unreadable mask",
    "size mismatch",
    "label values",
)


@dataclass
class CheckReport:
    """What :func:`check_dataset` found. ``errors`` must be fixed before training."""

    classes: list[str]
    ignore_index: int = 255
    samples: int = 0
    split_counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Pixels per class id over every readable mask, and per split.
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    split_histograms: dict[str, np.ndarray] = field(default_factory=dict)
    ignored_pixels: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        splits = ", ".join(f"{n} {s}" for s, n in self.split_counts.items())
        lines = [
            f"Dataset check: {self.samples} samples ({splits}), {len(self.classes)} classes, "
            f"checked in {self.seconds:.2f}s"
        ]
        for title, items in (("Errors", self.errors), ("Warnings", self.warnings)):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend(f"  - {item}" for item in items)
        lines.extend(self._histogram_lines())
        verdict = (
            "OK" if self.ok else f"FAILED: {len(self.errors)} error(s); fix the files named above"
        )
        lines.append(f"Result: {verdict}")
        return "\n".join(lines)

    def _histogram_lines(self) -> list[str]:
        if not self.histogram.size:
            return []
        labelled = max(int(self.histogram.sum()), 1)
        train = self.split_histograms.get("train")
        train_total = max(int(train.sum()), 1) if train is not None else 1
        width = max(len(c) for c in self.classes)
        lines = [
            "Class pixels (share of labelled pixels):",
            f"  {'id':>3}  {'class':<{width}}  {'pixels':>13}  {'all':>6}  {'train':>6}",
        ]
        for cid, name in enumerate(self.classes):
            count = int(self.histogram[cid])
            train_share = f"{100 * train[cid] / train_total:5.1f}%" if train is not None else "-"
            lines.append(
                f"  {cid:>3}  {name:<{width}}  {count:>13,}  "
                f"{100 * count / labelled:5.1f}%  {train_share:>6}"
            )
        total = labelled + self.ignored_pixels
        lines.append(
            f"  ignore ({self.ignore_index}): {self.ignored_pixels:,} pixels, "
            f"{100 * self.ignored_pixels / max(total, 1):.1f}% of all pixels"
        )
        return lines


def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0]


def _suffix(uri: str, sample_id: str) -> str | None:
    """What follows the sample id in the file name (".png", "_gtFine_labelIds.png"), if any."""
    name = uri.rsplit("/", 1)[-1]
    return name[len(sample_id) :] if name.startswith(sample_id) else None


def _unused_files(rows: list[dict], column: str) -> dict[str, str]:
    """Files beside the manifest's files that no sample uses, by sample id.

    Only names shaped like the used ones count (same suffix after the id), so the colour and
    instance PNGs that Cityscapes keeps beside its label-id masks are not mistaken for masks.
    """
    used = {r[column] for r in rows}
    suffixes: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        suffix = _suffix(r[column], r["sample_id"])
        if suffix:
            suffixes[_parent(r[column])].add(suffix)
    unused = {}
    for folder, ends in suffixes.items():
        for uri in storage.list_files(folder):
            end = next((e for e in ends if uri.endswith(e)), None)
            if end and uri not in used:
                unused[uri.rsplit("/", 1)[-1][: -len(end)]] = uri
    return unused


def _count_problems(rows: list[dict]) -> tuple[list[tuple[str, str]], list[str]]:
    """Images without masks and masks without images in the dataset's folders."""
    image_dirs = {_parent(r["image_uri"]) for r in rows}
    if image_dirs & {_parent(r["mask_uri"]) for r in rows}:
        return [], []  # images and masks share a folder: cannot tell one from the other
    images = _unused_files(rows, "image_uri")
    masks = _unused_files(rows, "mask_uri")
    problems = []
    for sid in sorted(set(images) - set(masks)):
        problems.append(
            ("count mismatch", f"{images[sid]}: image has no mask (more images than masks)")
        )
    for sid in sorted(set(masks) - set(images)):
        problems.append(
            ("count mismatch", f"{masks[sid]}: mask has no image (more masks than images)")
        )
    paired = sorted(set(images) & set(masks))
    warnings = (
        [
            f"{len(paired)} image/mask pairs are in no split and are not used, e.g. "
            f"{images[paired[0]]}"
        ]
        if paired
        else []
    )
    return problems, warnings


def _manifest_problems(rows: list[dict]) -> list[tuple[str, str]]:
    if not rows:
        return [("manifest", "the dataset has no samples")]
    seen: dict[str, str] = {}
    problems = []
    for r in rows:
        if r["sample_id"] in seen:
            problems.append(
                (
                    "manifest",
                    f"{r['image_uri']}: sample id {r['sample_id']!r} also "
                    f"used by {seen[r['sample_id']]}",
                )
            )
        seen.setdefault(r["sample_id"], r["image_uri"])
    return problems


def _grouped(problems: list[tuple[str, str]]) -> list[str]:
    by_kind: dict[str, list[str]] = defaultdict(list)
    for kind, message in problems:
        by_kind[kind].append(message)
    lines = []
    for kind in sorted(by_kind, key=lambda k: ERROR_KINDS.index(k) if k in ERROR_KINDS else 99):
        messages = by_kind[kind]
        lines.extend(f"{kind}: {m}" for m in messages[:MAX_NAMED])
        if len(messages) > MAX_NAMED:
            lines.append(f"{kind}: ... and {len(messages) - MAX_NAMED} more files")
    return lines


def _class_warnings(report: CheckReport, all_ignore: list[str]) -> list[str]:
    warnings = []
    train = report.split_histograms.get("train")
    for cid, name in enumerate(report.classes):
        if report.histogram[cid] == 0:
            warnings.append(
                f"class {cid} '{name}' never appears in any mask: it can be neither "
                "learned nor scored (wrong class list or label mapping?)"
            )
        elif train is not None and train[cid] == 0:
            warnings.append(f"class {cid} '{name}' never appears in the train masks")
    if all_ignore:
        warnings.append(
            f"{len(all_ignore)} masks are entirely ignore ({report.ignore_index}), "
            f"e.g. {all_ignore[0]}"
        )
    for split in ("train", "val"):
        if not report.split_counts.get(split):
            warnings.append(f"no '{split}' samples: a run needs train and val")
    return warnings


def check_dataset(info: DatasetInfo, workers: int | None = None) -> CheckReport:
    """Read every sample of ``info`` once and report problems (errors name the file)."""
    t0 = time.perf_counter()
    rows = info.manifest.to_pylist()
    report = CheckReport(
        classes=list(info.classes), ignore_index=info.ignore_index, samples=len(rows)
    )
    for r in rows:
        report.split_counts[r["split"]] = report.split_counts.get(r["split"], 0) + 1
    problems = _manifest_problems(rows)
    count_problems, count_warnings = _count_problems(rows) if rows else ([], [])
    problems += count_problems
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda r: check_sample(r, info), rows))
    totals = {s: np.zeros(256, dtype=np.int64) for s in report.split_counts}
    all_ignore = []
    for row, result in zip(rows, results):
        problems += result.problems
        if result.counts is not None:
            totals[row["split"]] += result.counts
            if result.counts[info.ignore_index] == result.counts.sum():
                all_ignore.append(shown_name(info, row["mask_uri"]))
    k = info.num_classes
    report.split_histograms = {s: t[:k].copy() for s, t in totals.items()}
    overall = sum(totals.values(), np.zeros(256, dtype=np.int64))
    report.histogram = overall[:k].copy()
    report.ignored_pixels = int(overall[info.ignore_index])
    report.errors = _grouped(problems)
    report.warnings = count_warnings + note_warnings(results)
    report.warnings += _class_warnings(report, all_ignore)
    report.seconds = time.perf_counter() - t0
    return report


def require_clean(info: DatasetInfo, log: Callable[[str], None] = print) -> CheckReport:
    """Check before a run: raise :class:`DatasetError` with the report if anything is wrong."""
    report = check_dataset(info)
    if report.errors:
        raise DatasetError(
            "the dataset check failed (python run.py prepare --config ... prints "
            "the full report):\n" + report.format()
        )
    for warning in report.warnings:
        log(f"[data] warning: {warning}")
    return report
