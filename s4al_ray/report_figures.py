"""The report's figures, drawn at exact pixel sizes: the mIoU curve, the acquired-class shares
and the examples grid (see ``visual_report.py`` for the page that shows them).

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
state), at fixed pixel sizes: the layout is placed in pixels, so the PNG sizes below are exact.
Everything is read and written through :mod:`s4al_ray.storage`. Only what is drawn is decoded: a
handful of images, never the whole pool.
"""

from __future__ import annotations

import hashlib
import io
import json
import math

import numpy as np

from s4al_ray import storage
from s4al_ray.data.io import load_mask
from s4al_ray.pool.oracle import class_histogram
from s4al_ray.pool.state import PoolState

DPI = 100
MIOU_SIZE = (800, 450)  # pixels
ACQUIRED_HEIGHT = 450
# Examples grid, in pixels: one row per image, these columns.
IGNORE_COLOR = (0, 0, 0)


# -- Sizes (public so tests and callers know what to expect)


def acquired_size(num_classes: int) -> tuple[int, int]:
    """(width, height) in pixels of ``acquired_classes.png``."""
    return max(700, 160 + 56 * num_classes), ACQUIRED_HEIGHT


# -- Small helpers


def figure(size_px: tuple[int, int]):
    from matplotlib.figure import Figure

    # A hair over the exact size: the renderer truncates width * dpi to an int.
    return Figure(figsize=((size_px[0] + 1e-3) / DPI, (size_px[1] + 1e-3) / DPI), dpi=DPI)


def png_bytes(fig, panels: np.ndarray | None = None, painted: np.ndarray | None = None) -> bytes:
    """Render ``fig`` at its own size and dpi (savefig's bbox rcParams do not apply) and encode
    it as PNG; where ``painted`` (H, W) is set, the pixels of ``panels`` (H, W, 3) replace it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    if panels is not None and painted is not None:
        rgb = np.where(painted[..., None], panels, rgb)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _fallback_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Deterministic, distinguishable colours: tab20 order, then golden-ratio hues."""
    import colorsys

    from matplotlib import colormaps

    tab = [tuple(int(round(255 * v)) for v in colormaps["tab20"](i)[:3]) for i in range(20)]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # strong colours first
    colors = [tab[i] for i in order][:num_classes]
    for i in range(len(colors), num_classes):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.9)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def class_colors(data) -> list[tuple[int, int, int]]:
    """One RGB colour per class: the dataset's own palette (``DatasetInfo.colors``, filled by its
    loader) where it has one, else a fixed one."""
    if data.colors is not None:
        return list(data.colors)
    return _fallback_palette(len(data.classes))


def color_lut(colors: list[tuple[int, int, int]]) -> np.ndarray:
    """256 x 3 lookup: class id -> colour; ignore and unknown ids -> IGNORE_COLOR."""
    lut = np.tile(np.asarray(IGNORE_COLOR, np.uint8), (256, 1))
    lut[: len(colors)] = np.asarray(colors, np.uint8)
    return lut


def hex_color(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


# -- The mIoU curve


def draw_miou_curve(
    records: list[dict], classes: list[str], colors: list[tuple[int, int, int]]
) -> bytes:
    records = sorted(records, key=lambda r: r["round"])
    x = [100 * r.get("pool/labeled_frac", float("nan")) for r in records]

    def series(key: str) -> list[float]:
        return [100 * r[key] if r.get(key) is not None else float("nan") for r in records]

    fig = figure(MIOU_SIZE)
    ax = fig.add_axes((0.08, 0.12, 0.68, 0.78))
    for name, color in zip(classes, colors):
        ax.plot(
            x,
            series(f"val/iou/{name}"),
            color=hex_color(color),
            linewidth=1.0,
            alpha=0.85,
            marker=".",
            markersize=4,
            label=name,
        )
    miou = series("val/miou")
    ax.plot(x, miou, color="black", linewidth=2.6, marker="o", markersize=6, label="mIoU", zorder=5)
    for rec, xi, yi in zip(records, x, miou):
        if not math.isnan(yi):
            ax.annotate(
                f"r{rec['round']}: {yi:.1f}",
                (xi, yi),
                textcoords="offset points",
                xytext=(4, 6),
                fontsize=8,
                zorder=6,
            )
    ax.set_xlabel("labeled pixels (% of train pixels)")
    ax.set_ylabel("validation IoU (%)")
    ax.set_ylim(0, 100)
    if len(x) == 1 or (max(x) - min(x)) < 1e-9:
        ax.set_xlim(x[0] - 1, x[0] + 1)
    else:
        pad = 0.05 * (max(x) - min(x))
        ax.set_xlim(min(x) - pad, max(x) + pad)
    ax.grid(True, alpha=0.3)
    last = records[-1]["round"]
    ax.set_title(f"Validation mIoU and per-class IoU, rounds 0-{last}", fontsize=11)
    handles, labels = ax.get_legend_handles_labels()
    # mIoU first in the legend.
    handles, labels = handles[-1:] + handles[:-1], labels[-1:] + labels[:-1]
    ax.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        fontsize=8,
        frameon=False,
        ncol=1 if len(classes) <= 20 else 2,
    )
    return png_bytes(fig)


# -- Acquired pixels per class against the pool's class distribution


def acquired_class_pixels(state: PoolState, round_index: int) -> list[int]:
    """Acquired pixels per class, summed over the ledger's rounds up to ``round_index``."""
    counts = np.zeros(state.num_classes, dtype=np.int64)
    for entry in state.ledger:
        if entry["round"] <= round_index:
            counts += np.asarray(entry["class_pixels"], dtype=np.int64)
    return counts.tolist()


def pool_class_pixels(report_dir: str, data, state: PoolState) -> list[int]:
    """Ground-truth pixels per class over the pool images, computed once and cached."""
    ids = state.pool_ids
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    uri = storage.join(report_dir, "pool_classes.json")
    if storage.exists(uri):
        try:
            cached = json.loads(storage.read_text(uri))
            if cached.get("classes") == list(data.classes) and cached.get("pool_digest") == digest:
                return [int(v) for v in cached["pixels"]]
        except (ValueError, KeyError, TypeError):
            pass  # unreadable cache: recompute
    masks = {r["sample_id"]: r["mask_uri"] for r in data.rows("train")}
    counts = np.zeros(len(data.classes), dtype=np.int64)
    for sample_id in ids:
        counts += class_histogram(load_mask(masks[sample_id]), len(data.classes))
    storage.write_text(
        uri,
        json.dumps(
            {
                "classes": list(data.classes),
                "pool_images": len(ids),
                "pool_digest": digest,
                "pixels": counts.tolist(),
            },
            indent=1,
        ),
    )
    return counts.tolist()


def draw_acquired_classes(
    classes: list[str], acquired: list[int], pool: list[int], round_index: int
) -> bytes:
    acquired_arr = np.asarray(acquired, dtype=np.float64)
    pool_arr = np.asarray(pool, dtype=np.float64)
    acq_share = 100 * acquired_arr / max(acquired_arr.sum(), 1)
    pool_share = 100 * pool_arr / max(pool_arr.sum(), 1)
    width, height = acquired_size(len(classes))
    fig = figure((width, height))
    left, right = 70 / width, 1 - 20 / width
    ax = fig.add_axes((left, 0.19, right - left, 0.72))
    x = np.arange(len(classes))
    bar = 0.4
    ax.bar(x - bar / 2, pool_share, bar, color="#9aa5b1", label="pool ground truth")
    ax.bar(
        x + bar / 2,
        acq_share,
        bar,
        color="#e8590c",
        label=f"acquired, rounds 0-{round_index} ({int(acquired_arr.sum()):,} px)",
    )
    for xi, share in zip(x, acq_share):
        ax.text(
            xi + bar / 2,
            share + 0.5,
            f"{share:.1f}",
            ha="center",
            va="bottom",
            fontsize=7,
            color="#b34100",
        )
    ax.set_xticks(x)
    rotate = len(classes) > 8 or max(len(c) for c in classes) > 10
    ax.set_xticklabels(
        classes, rotation=35 if rotate else 0, ha="right" if rotate else "center", fontsize=9
    )
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylabel("share of pixels (%)")
    top = float(max(acq_share.max(initial=0), pool_share.max(initial=0)))
    ax.set_ylim(0, max(5.0, top * 1.12))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=9, frameon=False)
    ax.set_title("Acquired pixels per class vs the pool's class distribution", fontsize=11)
    return png_bytes(fig)


# -- A checkpoint's score (python run.py evaluate)


CONFUSION_LABELS_PX = 120  # below and left of the matrix: the class names


def confusion_size(num_classes: int) -> tuple[int, int]:
    """(width, height) in pixels of ``confusion.png``."""
    square = max(320, 34 * num_classes)  # the matrix; room for names, title and colour bar
    return CONFUSION_LABELS_PX + square + 90, CONFUSION_LABELS_PX + square + 40


def confusion_figure(confusion: np.ndarray, classes: list[str]) -> bytes:
    """The confusion matrix normalised per ground-truth row (each row: where that class's pixels
    went), percent in each cell when the classes are few enough to read them."""
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, confusion / totals, np.nan)
    width, height = confusion_size(len(classes))
    fig = figure((width, height))
    label_px = CONFUSION_LABELS_PX
    square = height - label_px - 40
    ax = fig.add_axes((label_px / width, label_px / height, square / width, square / height))
    image = ax.imshow(100 * np.nan_to_num(shares, nan=0.0), cmap="Blues", vmin=0.0, vmax=100.0)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if len(classes) <= 24:
        for i in ticks:
            for j in ticks:
                if np.isfinite(shares[i, j]) and shares[i, j] >= 0.005:
                    color = "white" if shares[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{100 * shares[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
    ax.set_title("confusion, % of each ground-truth class's pixels", fontsize=10)
    bar = fig.add_axes(
        ((label_px + square + 20) / width, label_px / height, 18 / width, square / height)
    )
    fig.colorbar(image, cax=bar)
    return png_bytes(fig)


def palette_png(label_png: bytes, colors: list[tuple[int, int, int]]) -> bytes:
    """A label map (grayscale PNG of class ids) as a palette PNG: the same pixel values, shown
    in the classes' colours (ignore and unknown ids black)."""
    from PIL import Image

    image = Image.open(io.BytesIO(label_png))
    labels = np.asarray(image, dtype=np.uint8)
    out = Image.fromarray(labels, mode="P")
    out.putpalette(color_lut(colors).flatten().tolist())
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
