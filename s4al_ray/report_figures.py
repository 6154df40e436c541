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
from s4al_ray.data.io import decode_mask, load_image, load_mask
from s4al_ray.pool.oracle import class_histogram
from s4al_ray.pool.state import PoolState
from s4al_ray.pseudo_labels import compose_target

DPI = 100
MIOU_SIZE = (800, 450)  # pixels
ACQUIRED_HEIGHT = 450
# Examples grid, in pixels: one row per image, these columns.
EXAMPLE_COLUMNS = ("image", "ground truth", "prediction", "pseudo-label", "acquired regions")
PANEL_WIDTH = 200
PANEL_GAP = 6
EXAMPLE_LEFT, EXAMPLE_RIGHT, EXAMPLE_TOP = 30, 8, 30
LEGEND_ROW = 22  # height of one row of the class legend below the grid
LEGEND_COLUMNS = 6
IGNORE_COLOR = (0, 0, 0)
EARLIER_COLOR = "#00e5ff"  # regions acquired in earlier rounds
THIS_ROUND_COLOR = "#ffe600"  # regions acquired in the round shown


# ----------------------------------------------------------------------------------------------
# Sizes (public so tests and callers know what to expect)


def acquired_size(num_classes: int) -> tuple[int, int]:
    """(width, height) in pixels of ``acquired_classes.png``."""
    return max(700, 160 + 56 * num_classes), ACQUIRED_HEIGHT


def _panel_height(height: int, width: int) -> int:
    return int(min(max(round(PANEL_WIDTH * height / width), PANEL_WIDTH // 2), 2 * PANEL_WIDTH))


def _legend_height(num_classes: int) -> int:
    entries = num_classes + 3  # classes, ignore, two outline kinds
    return 12 + LEGEND_ROW * math.ceil(entries / LEGEND_COLUMNS)


def examples_size(num_examples: int, height: int, width: int, num_classes: int) -> tuple[int, int]:
    """(width, height) in pixels of ``examples_round_XXX.png`` for images of ``height x width``."""
    cols = len(EXAMPLE_COLUMNS)
    panel_h = _panel_height(height, width)
    fig_w = EXAMPLE_LEFT + cols * PANEL_WIDTH + (cols - 1) * PANEL_GAP + EXAMPLE_RIGHT
    fig_h = (EXAMPLE_TOP + num_examples * panel_h + (num_examples - 1) * PANEL_GAP
             + _legend_height(num_classes))
    return fig_w, fig_h


# ----------------------------------------------------------------------------------------------
# Small helpers


def _figure(size_px: tuple[int, int]):
    from matplotlib.figure import Figure

    # A hair over the exact size: the renderer truncates width * dpi to an int.
    return Figure(figsize=((size_px[0] + 1e-3) / DPI, (size_px[1] + 1e-3) / DPI), dpi=DPI)


def _png_bytes(fig, panels: np.ndarray | None = None, painted: np.ndarray | None = None) -> bytes:
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


def _lut(colors: list[tuple[int, int, int]]) -> np.ndarray:
    """256 x 3 lookup: class id -> colour; ignore and unknown ids -> IGNORE_COLOR."""
    lut = np.tile(np.asarray(IGNORE_COLOR, np.uint8), (256, 1))
    lut[: len(colors)] = np.asarray(colors, np.uint8)
    return lut


def _hex(color: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*color)


# ----------------------------------------------------------------------------------------------
# The mIoU curve


def draw_miou_curve(records: list[dict], classes: list[str],
                    colors: list[tuple[int, int, int]]) -> bytes:
    records = sorted(records, key=lambda r: r["round"])
    x = [100 * r.get("pool/labeled_frac", float("nan")) for r in records]

    def series(key: str) -> list[float]:
        return [100 * r[key] if r.get(key) is not None else float("nan") for r in records]

    fig = _figure(MIOU_SIZE)
    ax = fig.add_axes((0.08, 0.12, 0.68, 0.78))
    for name, color in zip(classes, colors):
        ax.plot(x, series(f"val/iou/{name}"), color=_hex(color), linewidth=1.0, alpha=0.85,
                marker=".", markersize=4, label=name)
    miou = series("val/miou")
    ax.plot(x, miou, color="black", linewidth=2.6, marker="o", markersize=6, label="mIoU",
            zorder=5)
    for rec, xi, yi in zip(records, x, miou):
        if not math.isnan(yi):
            ax.annotate(f"r{rec['round']}: {yi:.1f}", (xi, yi), textcoords="offset points",
                        xytext=(4, 6), fontsize=8, zorder=6)
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
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
              frameon=False, ncol=1 if len(classes) <= 20 else 2)
    return _png_bytes(fig)


# ----------------------------------------------------------------------------------------------
# Acquired pixels per class against the pool's class distribution


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
    storage.write_text(uri, json.dumps({"classes": list(data.classes), "pool_images": len(ids),
                                        "pool_digest": digest, "pixels": counts.tolist()},
                                       indent=1))
    return counts.tolist()


def draw_acquired_classes(classes: list[str], acquired: list[int], pool: list[int],
                          round_index: int) -> bytes:
    acquired_arr = np.asarray(acquired, dtype=np.float64)
    pool_arr = np.asarray(pool, dtype=np.float64)
    acq_share = 100 * acquired_arr / max(acquired_arr.sum(), 1)
    pool_share = 100 * pool_arr / max(pool_arr.sum(), 1)
    width, height = acquired_size(len(classes))
    fig = _figure((width, height))
    left, right = 70 / width, 1 - 20 / width
    ax = fig.add_axes((left, 0.19, right - left, 0.72))
    x = np.arange(len(classes))
    bar = 0.4
    ax.bar(x - bar / 2, pool_share, bar, color="#9aa5b1", label="pool ground truth")
    ax.bar(x + bar / 2, acq_share, bar, color="#e8590c",
           label=f"acquired, rounds 0-{round_index} ({int(acquired_arr.sum()):,} px)")
    for xi, share in zip(x, acq_share):
        ax.text(xi + bar / 2, share + 0.5, f"{share:.1f}", ha="center", va="bottom", fontsize=7,
                color="#b34100")
    ax.set_xticks(x)
    rotate = len(classes) > 8 or max(len(c) for c in classes) > 10
    ax.set_xticklabels(classes, rotation=35 if rotate else 0, ha="right" if rotate else "center",
                       fontsize=9)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylabel("share of pixels (%)")
    top = float(max(acq_share.max(initial=0), pool_share.max(initial=0)))
    ax.set_ylim(0, max(5.0, top * 1.12))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=9, frameon=False)
    ax.set_title("Acquired pixels per class vs the pool's class distribution", fontsize=11)
    return _png_bytes(fig)


# ----------------------------------------------------------------------------------------------
# Example pool images


def example_ids(state: PoolState, round_index: int, max_examples: int) -> list[str]:
    """Pool images with the most pixels acquired in ``round_index``, then the first pool ids."""
    entry = state.entry(round_index)
    ranked: list[str] = []
    if entry is not None:
        pixels = {sid: int(state.grid(sid).areas[regions].sum())
                  for sid, regions in entry["selection"].items() if regions}
        ranked = sorted(pixels, key=lambda sid: (-pixels[sid], sid))
    chosen = ranked[:max_examples]
    for sample_id in state.pool_ids:
        if len(chosen) >= max_examples:
            break
        if sample_id not in chosen:
            chosen.append(sample_id)
    return chosen


def _read_teacher(uri: str, sample_ids: list[str]) -> dict[str, tuple[bytes, bytes]]:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri)
    table = pq.read_table(path, filesystem=fs, columns=["sample_id", "label_png", "conf_png"],
                          filters=[("sample_id", "in", list(sample_ids))])
    columns = [table.column(c).to_pylist() for c in ("sample_id", "label_png", "conf_png")]
    return {sid: (label, conf) for sid, label, conf in zip(*columns)}


def _upscale(panel: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w, 3) uint8 panel to (height, width, 3)."""
    rows = np.minimum((np.arange(height) + 0.5) * panel.shape[0] / height, panel.shape[0] - 1)
    cols = np.minimum((np.arange(width) + 0.5) * panel.shape[1] / width, panel.shape[1] - 1)
    return panel[rows.astype(np.int64)[:, None], cols.astype(np.int64)[None, :]]


def _outline(canvas: np.ndarray, y0: int, y1: int, x0: int, x1: int, color, thick: int) -> None:
    """Draw a rectangle outline, inside the half-open box ``[y0, y1) x [x0, x1)``."""
    rgb = np.asarray(color, np.uint8)
    canvas[y0:y0 + thick, x0:x1] = rgb
    canvas[max(y1 - thick, y0):y1, x0:x1] = rgb
    canvas[y0:y1, x0:x0 + thick] = rgb
    canvas[y0:y1, max(x1 - thick, x0):x1] = rgb


def _rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


def draw_examples(data, state: PoolState, record: dict, teacher_uri: str, round_index: int,
                  max_examples: int, colors: list[tuple[int, int, int]]) -> bytes | None:
    """The examples grid. Panels are composed in numpy at their final pixel size and placed
    into the rendered figure (no resampling, no per-panel axes); matplotlib draws only the
    text and the legend."""
    from matplotlib.patches import Patch

    ids = example_ids(state, round_index, max_examples)
    predictions = _read_teacher(teacher_uri, ids)
    ids = [sid for sid in ids if sid in predictions]
    if not ids:
        return None
    rows = {r["sample_id"]: r for r in data.rows("train")}
    lut = _lut(colors)
    thresholds = record["teacher/thresholds"]
    this_round = (state.entry(round_index) or {}).get("selection", {})
    earlier: dict[str, list[int]] = {}
    for entry in state.ledger:
        if entry["round"] < round_index:
            for sid, regions in entry["selection"].items():
                earlier.setdefault(sid, []).extend(regions)

    first = rows[ids[0]]
    width, height = examples_size(len(ids), first["height"], first["width"], len(colors))
    panel_h = _panel_height(first["height"], first["width"])
    canvas = np.full((height, width, 3), 255, np.uint8)
    painted = np.zeros((height, width), bool)
    fig = _figure((width, height))
    for j, title in enumerate(EXAMPLE_COLUMNS):
        x_mid = EXAMPLE_LEFT + j * (PANEL_WIDTH + PANEL_GAP) + PANEL_WIDTH / 2
        fig.text(x_mid / width, 1 - (EXAMPLE_TOP - 8) / height, title, ha="center",
                 va="bottom", fontsize=10)
    for i, sid in enumerate(ids):
        row = rows[sid]
        image = load_image(row["image_uri"])
        truth = load_mask(row["mask_uri"])
        label_png, conf_png = predictions[sid]
        label, confidence = decode_mask(label_png), decode_mask(conf_png)
        pseudo = compose_target(label, confidence, thresholds, None, None)
        top = EXAMPLE_TOP + i * (panel_h + PANEL_GAP)
        grid = state.grid(sid)
        sy, sx = panel_h / row["height"], PANEL_WIDTH / row["width"]
        for j, panel in enumerate((image, lut[truth], lut[label], lut[pseudo], image)):
            x0 = EXAMPLE_LEFT + j * (PANEL_WIDTH + PANEL_GAP)
            view = canvas[top:top + panel_h, x0:x0 + PANEL_WIDTH]
            view[:] = _upscale(panel, panel_h, PANEL_WIDTH)
            painted[top:top + panel_h, x0:x0 + PANEL_WIDTH] = True
            if j == len(EXAMPLE_COLUMNS) - 1:
                for regions, color, thick in ((earlier.get(sid, []), EARLIER_COLOR, 1),
                                              (this_round.get(sid, []), THIS_ROUND_COLOR, 2)):
                    for region in regions:
                        y_a, y_b, x_a, x_b = grid.bounds(region)
                        _outline(view, round(y_a * sy), round(y_b * sy), round(x_a * sx),
                                 round(x_b * sx), _rgb(color), thick)
        new_px = int(grid.areas[this_round[sid]].sum()) if this_round.get(sid) else 0
        label_text = f"{sid}\n+{new_px:,} px" if new_px else sid
        fig.text((EXAMPLE_LEFT - 4) / width, 1 - (top + panel_h / 2) / height, label_text,
                 rotation=90, ha="right", va="center", fontsize=7, multialignment="center")
    handles = [Patch(facecolor=_hex(c), edgecolor="none", label=name)
               for name, c in zip(data.classes, colors)]
    handles.append(Patch(facecolor=_hex(IGNORE_COLOR), label="ignore / below threshold"))
    handles.append(Patch(fill=False, edgecolor=THIS_ROUND_COLOR, linewidth=1.6,
                         label=f"acquired in round {round_index}"))
    handles.append(Patch(fill=False, edgecolor=EARLIER_COLOR, label="acquired earlier"))
    fig.legend(handles=handles, loc="lower center", ncol=LEGEND_COLUMNS, fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 2 / height), handlelength=1.4,
               columnspacing=1.2)
    return _png_bytes(fig, canvas, painted)
