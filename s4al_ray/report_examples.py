"""The report's examples grid: a few pool images with ground truth, the teacher's prediction,
its thresholded pseudo-label and the acquired regions outlined, composed in numpy at the final
pixel size and placed into a matplotlib figure that draws only text and the legend."""

from __future__ import annotations

import math

import numpy as np

from s4al_ray import storage
from s4al_ray.data.io import decode_mask, load_image, load_mask
from s4al_ray.pool.state import PoolState
from s4al_ray.pseudo_labels import compose_target
from s4al_ray.report_figures import IGNORE_COLOR, color_lut, figure, hex_color, png_bytes
from s4al_ray.superpixels import region_edges

EXAMPLE_COLUMNS = ("image", "ground truth", "prediction", "pseudo-label", "acquired regions")
PANEL_WIDTH = 200
PANEL_GAP = 6
EXAMPLE_LEFT, EXAMPLE_RIGHT, EXAMPLE_TOP = 30, 8, 30
LEGEND_ROW = 22  # height of one row of the class legend below the grid
LEGEND_COLUMNS = 6
EARLIER_COLOR = "#00e5ff"  # regions acquired in earlier rounds
THIS_ROUND_COLOR = "#ffe600"  # regions acquired in the round shown


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
    fig_h = (
        EXAMPLE_TOP
        + num_examples * panel_h
        + (num_examples - 1) * PANEL_GAP
        + _legend_height(num_classes)
    )
    return fig_w, fig_h


def example_ids(state: PoolState, round_index: int, max_examples: int) -> list[str]:
    """Pool images with the most pixels acquired in ``round_index``, then the first pool ids."""
    entry = state.entry(round_index)
    ranked: list[str] = []
    if entry is not None:
        pixels = {
            sid: state.region_pixels(sid, regions)
            for sid, regions in entry["selection"].items()
            if regions
        }
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
    table = pq.read_table(
        path,
        filesystem=fs,
        columns=["sample_id", "label_png", "conf_png"],
        filters=[("sample_id", "in", list(sample_ids))],
    )
    columns = [table.column(c).to_pylist() for c in ("sample_id", "label_png", "conf_png")]
    return {sid: (label, conf) for sid, label, conf in zip(*columns)}


def _upscale(panel: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w, ...) panel to (height, width, ...)."""
    rows = np.minimum((np.arange(height) + 0.5) * panel.shape[0] / height, panel.shape[0] - 1)
    cols = np.minimum((np.arange(width) + 0.5) * panel.shape[1] / width, panel.shape[1] - 1)
    return panel[rows.astype(np.int64)[:, None], cols.astype(np.int64)[None, :]]


def _outline(canvas: np.ndarray, y0: int, y1: int, x0: int, x1: int, color, thick: int) -> None:
    """Draw a rectangle outline, inside the half-open box ``[y0, y1) x [x0, x1)``."""
    rgb = np.asarray(color, np.uint8)
    canvas[y0 : y0 + thick, x0:x1] = rgb
    canvas[max(y1 - thick, y0) : y1, x0:x1] = rgb
    canvas[y0:y1, x0 : x0 + thick] = rgb
    canvas[y0:y1, max(x1 - thick, x0) : x1] = rgb


def _outline_regions(view: np.ndarray, labels: np.ndarray, color, thick: int) -> None:
    """Outline each superpixel of ``labels`` (image-sized ids, -1 elsewhere) on the panel
    ``view``, ``thick`` pixels wide, inside its edge."""
    if (labels < 0).all():
        return
    shown = _upscale(labels, *view.shape[:2])
    for _ in range(thick):
        edge = region_edges(shown)
        view[edge] = np.asarray(color, np.uint8)
        shown = np.where(edge, -1, shown)


def _rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def draw_examples(
    data,
    state: PoolState,
    record: dict,
    teacher_uri: str,
    round_index: int,
    max_examples: int,
    colors: list[tuple[int, int, int]],
) -> bytes | None:
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
    lut = color_lut(colors)
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
    fig = figure((width, height))
    for j, title in enumerate(EXAMPLE_COLUMNS):
        x_mid = EXAMPLE_LEFT + j * (PANEL_WIDTH + PANEL_GAP) + PANEL_WIDTH / 2
        fig.text(
            x_mid / width,
            1 - (EXAMPLE_TOP - 8) / height,
            title,
            ha="center",
            va="bottom",
            fontsize=10,
        )
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
            view = canvas[top : top + panel_h, x0 : x0 + PANEL_WIDTH]
            view[:] = _upscale(panel, panel_h, PANEL_WIDTH)
            painted[top : top + panel_h, x0 : x0 + PANEL_WIDTH] = True
            if j == len(EXAMPLE_COLUMNS) - 1:
                for regions, color, thick in (
                    (earlier.get(sid, []), EARLIER_COLOR, 1),
                    (this_round.get(sid, []), THIS_ROUND_COLOR, 2),
                ):
                    if state.maps.superpixels:
                        _outline_regions(view, grid.labels(regions), _rgb(color), thick)
                        continue
                    for region in regions:
                        y_a, y_b, x_a, x_b = grid.bounds(region)
                        _outline(
                            view,
                            round(y_a * sy),
                            round(y_b * sy),
                            round(x_a * sx),
                            round(x_b * sx),
                            _rgb(color),
                            thick,
                        )
        new_px = int(grid.areas[this_round[sid]].sum()) if this_round.get(sid) else 0
        label_text = f"{sid}\n+{new_px:,} px" if new_px else sid
        fig.text(
            (EXAMPLE_LEFT - 4) / width,
            1 - (top + panel_h / 2) / height,
            label_text,
            rotation=90,
            ha="right",
            va="center",
            fontsize=7,
            multialignment="center",
        )
    handles = [
        Patch(facecolor=hex_color(c), edgecolor="none", label=name)
        for name, c in zip(data.classes, colors)
    ]
    handles.append(Patch(facecolor=hex_color(IGNORE_COLOR), label="ignore / below threshold"))
    handles.append(
        Patch(
            fill=False,
            edgecolor=THIS_ROUND_COLOR,
            linewidth=1.6,
            label=f"acquired in round {round_index}",
        )
    )
    handles.append(Patch(fill=False, edgecolor=EARLIER_COLOR, label="acquired earlier"))
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=LEGEND_COLUMNS,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 2 / height),
        handlelength=1.4,
        columnspacing=1.2,
    )
    return png_bytes(fig, canvas, painted)
