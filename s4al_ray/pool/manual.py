"""The manual oracle: query packages for human annotators, and checked import of their masks.

After acquisition the run writes ``<run_dir>/queries/round_XXX/``: ``query.json`` (per image the
requested regions as boxes), one PNG per image with those regions outlined, and ``README.txt``.
Annotators return one PNG mask per image (class ids; anything outside the requested regions is
ignored). ``python run.py annotate --import <folder>`` checks every mask and only then commits
through the pool actor; labels are merged into ``<run_dir>/oracle/labels/<id>.png`` (255 where
no label was given), which the student reads instead of the dataset's masks.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image, ImageDraw

from s4al_ray import IGNORE_INDEX, storage
from s4al_ray.data.io import decode_mask, encode_png, load_image, load_mask
from s4al_ray.layout import RunLayout
from s4al_ray.pool.oracle import class_histogram
from s4al_ray.pool.state import PoolState, Selection


class AnnotationError(ValueError):
    """Returned masks that cannot be committed; nothing was changed."""


class AwaitingAnnotation(Exception):
    """The run stopped cleanly: a query package waits for human annotation."""

    def __init__(self, round_index: int, package: str) -> None:
        super().__init__(f"round {round_index}: waiting for annotations of {package}")
        self.round_index, self.package = round_index, package


def _outlined(image: np.ndarray, boxes: list[list[int]]) -> bytes:
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for y0, y1, x0, x1 in boxes:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 0), width=1)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def write_query_package(
    layout: RunLayout,
    round_index: int,
    selection: Selection,
    state: PoolState,
    items: dict[str, dict],
    classes: list[str],
) -> str:
    """Write the package for ``selection``; returns its URI."""
    package = layout.queries(round_index)
    images = []
    for sample_id, regions in sorted(selection.items()):
        grid = state.grid(sample_id)
        boxes = [list(grid.bounds(r)) for r in regions]
        images.append(
            {
                "sample_id": sample_id,
                "image_uri": items[sample_id]["image_uri"],
                "height": grid.height,
                "width": grid.width,
                "regions": [
                    {"index": int(r), "box_y0_y1_x0_x1": b} for r, b in zip(regions, boxes)
                ],
            }
        )
        storage.write_bytes(
            storage.join(package, "images", f"{sample_id}.png"),
            _outlined(load_image(items[sample_id]["image_uri"]), boxes),
        )
    query = {
        "round": round_index,
        "region_size": state.region_size,
        "classes": classes,
        "ignore_index": IGNORE_INDEX,
        "images": images,
    }
    storage.write_text(storage.join(package, "README.txt"), _instructions(classes))
    storage.write_text(storage.join(package, "query.json"), json.dumps(query, indent=1))
    return package


def _instructions(classes: list[str]) -> str:
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(classes))
    return (
        "For every image listed in query.json, return a single-channel PNG mask with the same\n"
        "name and size as the image (images/<sample_id>.png shows the requested regions\n"
        "outlined in yellow). Label every pixel inside the requested boxes with a class id;\n"
        f"pixels outside them are not read. Class ids:\n{names}\n"
        "Then: python run.py annotate --import <folder with the masks> (same config), and\n"
        "python run.py (same config) to continue the experiment.\n"
    )


def pending_round(layout: RunLayout, state: PoolState) -> int | None:
    """The round whose query package has not been committed yet, if any."""
    names = (uri.rstrip("/").rsplit("/", 1)[-1] for uri in _dirs(layout.queries_dir))
    rounds = sorted(int(n[len("round_") :]) for n in names if n.startswith("round_"))
    waiting = [r for r in rounds if r not in state.committed_rounds]
    return waiting[0] if waiting else None


def _dirs(uri: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    return [i.path for i in infos if i.type == pafs.FileType.Directory]


def read_answers(
    layout: RunLayout, round_index: int, folder: str, num_classes: int
) -> tuple[Selection, list[int], dict[str, np.ndarray]]:
    """Check the returned masks against the query; returns (selection, class pixels, masks).

    Raises AnnotationError listing every problem (missing files, wrong sizes, unlabeled or
    invalid pixels inside a requested region); nothing is committed then.
    """
    query = json.loads(storage.read_text(storage.join(layout.queries(round_index), "query.json")))
    problems: list[str] = []
    selection: Selection = {}
    masks: dict[str, np.ndarray] = {}
    counts = np.zeros(num_classes, dtype=np.int64)
    for image in query["images"]:
        sample_id = image["sample_id"]
        path = os.path.join(folder, f"{sample_id}.png")
        if not os.path.exists(path):
            problems.append(f"{path}: missing (requested {len(image['regions'])} regions)")
            continue
        try:
            with open(path, "rb") as handle:
                mask = decode_mask(handle.read())
        except (OSError, ValueError) as err:
            problems.append(f"{path}: not a readable single-channel PNG ({err})")
            continue
        if mask.shape != (image["height"], image["width"]):
            problems.append(
                f"{path}: size {mask.shape[1]}x{mask.shape[0]}, expected "
                f"{image['width']}x{image['height']}"
            )
            continue
        for region in image["regions"]:
            y0, y1, x0, x1 = region["box_y0_y1_x0_x1"]
            values = mask[y0:y1, x0:x1]
            bad = sorted({int(v) for v in np.unique(values) if v >= num_classes})
            if bad:
                what = "unlabeled (255)" if bad == [IGNORE_INDEX] else f"invalid values {bad}"
                problems.append(
                    f"{path}: region {region['index']} (box y {y0}-{y1}, x {x0}-{x1})"
                    f" has {what}; classes are 0..{num_classes - 1}"
                )
            counts += class_histogram(values, num_classes)
        selection[sample_id] = [r["index"] for r in image["regions"]]
        masks[sample_id] = mask
    if problems:
        raise AnnotationError("annotations refused, nothing committed:\n  " + "\n  ".join(problems))
    return selection, counts.tolist(), masks


def store_labels(
    layout: RunLayout, state: PoolState, masks: dict[str, np.ndarray], selection: Selection
) -> None:
    """Merge the newly labeled regions into each image's oracle label file."""
    for sample_id, regions in selection.items():
        uri = layout.oracle_label(sample_id)
        height, width = state.sizes[sample_id]
        merged = (
            load_mask(uri).copy()
            if storage.exists(uri)
            else np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        )
        region_mask = state.grid(sample_id).mask(regions)
        merged[region_mask] = masks[sample_id][region_mask]
        storage.write_bytes(uri, encode_png(merged))
