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
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from s4al_ray import IGNORE_INDEX, storage
from s4al_ray.data.io import decode_mask, encode_png, load_image, load_mask
from s4al_ray.layout import RunLayout
from s4al_ray.pool.oracle import class_histogram
from s4al_ray.pool.state import PoolState, Selection
from s4al_ray.region_maps import encode_segments, load_segments, requested_mask
from s4al_ray.superpixels import region_edges


class AnnotationError(ValueError):
    """Returned masks that cannot be committed; nothing was changed."""


class AwaitingAnnotation(Exception):
    """The run stopped cleanly: a query package waits for human annotation."""

    def __init__(self, round_index: int, package: str) -> None:
        super().__init__(f"round {round_index}: waiting for annotations of {package}")
        self.round_index, self.package = round_index, package


def _outlined(image: np.ndarray, boxes: list[list[int]], labels: np.ndarray | None) -> bytes:
    """The image with the requested regions outlined in yellow: their boxes (squares), or the
    edge of each region in ``labels`` (superpixels: ``SuperpixelRegions.labels``)."""
    if labels is not None:
        image = image.copy()
        image[region_edges(labels)] = (255, 255, 0)
        canvas = Image.fromarray(image)
    else:
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
    tool: ToolPackage | None = None,
) -> str:
    """Write the package for ``selection`` (and ``tool``'s files beside it); returns its URI."""
    package = layout.queries(round_index)
    superpixels = state.maps.superpixels
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
        labels = None
        if superpixels:  # the image's segment map beside it: a region is the pixels of its id
            images[-1]["segments"] = f"segments/{sample_id}.png"
            storage.write_bytes(
                storage.join(package, images[-1]["segments"]), encode_segments(grid.segments)
            )
            labels = grid.labels(regions)
        storage.write_bytes(
            storage.join(package, "images", f"{sample_id}.png"),
            _outlined(load_image(items[sample_id]["image_uri"]), boxes, labels),
        )
    query = {
        "round": round_index,
        "regions": state.maps.kind,
        "region_size": state.region_size,
        "classes": classes,
        "ignore_index": IGNORE_INDEX,
        "images": images,
    }
    if tool is not None:  # before query.json, which completes the package
        tool.write(package, query)
    storage.write_text(storage.join(package, "README.txt"), _instructions(classes, superpixels))
    storage.write_text(storage.join(package, "query.json"), json.dumps(query, indent=1))
    return package


@dataclass
class ToolPackage:
    """An annotation tool's import written beside the query package: the tool, the dataset's
    colours, and the teacher's pseudo-label of each queried image (its pre-annotation)."""

    tool: str  # label_studio | cvat
    colors: list[tuple[int, int, int]]
    pseudo_labels: dict[str, np.ndarray]
    local_files_root: str = "/"
    url: str = ""  # a Label Studio server to push the tasks to
    project: str = ""  # its project's title

    def write(self, package: str, query: dict) -> None:
        inside = {i["sample_id"]: requested_mask(query, i, package) for i in query["images"]}
        if self.tool == "cvat":
            from s4al_ray.pool import cvat

            cvat.write_task_package(package, query, self.colors, self.pseudo_labels, inside)
            return
        from s4al_ray.pool import label_studio

        tasks = [
            label_studio.task(
                image,
                label_studio.image_url(image["image_uri"], self.local_files_root),
                query["classes"],
                self.pseudo_labels.get(image["sample_id"]),
                query["round"],
                inside[image["sample_id"]],
            )
            for image in query["images"]
        ]
        config = label_studio.labeling_config(query["classes"], self.colors)
        label_studio.write_tasks(package, tasks, config)
        if self.url:
            from s4al_ray.pool.label_studio_server import push_tasks

            local = [i["image_uri"] for i in query["images"] if "://" not in i["image_uri"]]
            dirs = [os.path.dirname(os.path.abspath(uri)) for uri in local]
            push_tasks(self.url, self.project, tasks, config, dirs)


def tool_package(
    settings, teacher_uri: str, selection: Selection, data, run_name: str
) -> ToolPackage | None:
    """``settings.tool``'s import for a query (None for PNG folders), pre-annotated with the
    pseudo-labels of the teacher pass at ``teacher_uri`` (only the queried images are read)."""
    from s4al_ray.data.training import read_pseudo_labels
    from s4al_ray.pool.label_studio_server import project_title
    from s4al_ray.report_figures import class_colors

    if settings.tool == "folder":
        return None
    stored = read_pseudo_labels(teacher_uri, set(selection))
    labels = {sid: decode_mask(label) for sid, (label, _) in stored.items()}
    return ToolPackage(
        settings.tool,
        class_colors(data),
        labels,
        settings.local_files_root,
        settings.url if settings.tool == "label_studio" else "",
        project_title(run_name),
    )


def check_tool_settings(settings, data_root: str) -> None:
    """Refuse, before any work, a Label Studio package whose local images Label Studio could
    not serve (outside ``annotation.local_files_root``), and a server that does not answer or
    refuses the token."""
    from s4al_ray.config import ConfigError
    from s4al_ray.pool.label_studio import served_path

    if settings.tool != "label_studio":
        return
    if settings.url:
        from s4al_ray.pool.label_studio_server import check_server

        check_server(settings.url)
    if "://" in data_root:
        return
    if served_path(data_root, settings.local_files_root) is None:
        raise ConfigError(
            f"annotation.local_files_root={settings.local_files_root}: the dataset {data_root} "
            "is outside it, so Label Studio could not serve its images; set it to a directory "
            "above the dataset (and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT to the same)"
        )


def query_instructions(waiting: AwaitingAnnotation, settings, run_name: str) -> list[str]:
    """What the driver prints when it stops for annotators: where the package is, how to
    answer it in ``settings.tool``, and how to continue."""
    from s4al_ray.pool.label_studio_server import EXPORT_SOURCE, project_title

    tool = settings.tool
    if tool == "label_studio" and settings.url:
        return [
            f"[round {waiting.round_index}] acquire: query package for annotators written to "
            f"{waiting.package}/ and its tasks pushed to {settings.url} (project "
            f"{project_title(run_name)!r})",
            "Stopped: annotate the requested regions there, then run\n"
            f"  python run.py annotate --import {EXPORT_SOURCE} <same config and options>\n"
            "  python run.py <same config and options>      # continues this experiment",
        ]
    written, answers = {
        "folder": ("", "<folder of masks>"),
        "label_studio": (
            ", label_studio/tasks.json + labeling_config.xml: create a project with that "
            "config and import the tasks",
            "<Label Studio JSON export>",
        ),
        "cvat": (
            ', cvat/: cvat-cli task create <name> --labels "$(cat cvat/labels.json)" '
            '--annotation_path cvat/annotations.xml --annotation_format "CVAT 1.1" '
            "local cvat/images/*",
            "<CVAT for images 1.1 export, .xml or .zip>",
        ),
    }[tool]
    return [
        f"[round {waiting.round_index}] acquire: query package for annotators written to "
        f"{waiting.package}/ (query.json, images/, README.txt{written})",
        "Stopped: annotate the requested regions, then run\n"
        f"  python run.py annotate --import {answers} <same config and options>\n"
        "  python run.py <same config and options>      # continues this experiment",
    ]


def _instructions(classes: list[str], superpixels: bool = False) -> str:
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(classes))
    where = (
        "requested superpixels (segments/<sample_id>.png holds each pixel's region id; a\n"
        "region is the pixels of its index)"
        if superpixels
        else "requested boxes"
    )
    return (
        "For every image listed in query.json, return a single-channel PNG mask with the same\n"
        "name and size as the image (images/<sample_id>.png shows the requested regions\n"
        f"outlined in yellow). Label every pixel inside the {where} with a class id;\n"
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
    layout: RunLayout, round_index: int, source: str, num_classes: int
) -> tuple[Selection, list[int], dict[str, np.ndarray]]:
    """Check the returned annotations against the query; returns (selection, class pixels,
    masks). ``source`` is a folder of PNG masks, a Label Studio JSON export (``.json``) or a
    CVAT for images 1.1 export (``.xml`` or its ``.zip``).

    Raises AnnotationError listing every problem (missing images, wrong sizes, labels outside
    the classes, unlabeled or invalid pixels inside a requested region); nothing is committed.
    """
    package = layout.queries(round_index)
    query = json.loads(storage.read_text(storage.join(package, "query.json")))
    masks, problems = answer_masks(source, query)
    return check_answers(query, source, masks, problems, num_classes, package)


def answer_masks(source: str, query: dict) -> tuple[dict[str, np.ndarray], list[str]]:
    """Each answered image's class-id mask, decoded from ``source``'s format; (masks, problems)."""
    if not storage.exists(source):
        raise AnnotationError(f"{source}: no such file or folder")
    if storage.is_dir(source):
        return _folder_masks(source, query)
    if source.endswith(".json"):
        from s4al_ray.pool import label_studio

        try:
            return label_studio.export_masks(storage.read_text(source), source, query)
        except (ValueError, OSError, AttributeError, TypeError) as err:
            raise AnnotationError(f"{source}: not a Label Studio JSON export ({err})") from err
    if source.endswith((".xml", ".zip")):
        from s4al_ray.pool import cvat

        try:
            return cvat.export_masks(cvat.read_export(source), source, query)
        except (ValueError, OSError, zipfile.BadZipFile, zlib.error) as err:
            raise AnnotationError(f"{source}: {err}") from err
    raise AnnotationError(
        f"{source}: expected a folder of PNG masks, a Label Studio JSON export (.json) or a "
        "CVAT for images 1.1 export (.xml or .zip)"
    )


def _folder_masks(folder: str, query: dict) -> tuple[dict[str, np.ndarray], list[str]]:
    masks, problems = {}, []
    for image in query["images"]:
        path = storage.join(folder, f"{image['sample_id']}.png")
        if not storage.exists(path):
            continue  # reported as missing by the query check
        try:
            masks[image["sample_id"]] = decode_mask(storage.read_bytes(path))
        except (OSError, ValueError) as err:
            problems.append(f"{path}: not a readable single-channel PNG ({err})")
    return masks, problems


def check_answers(
    query: dict,
    source: str,
    masks: dict[str, np.ndarray],
    problems: list[str],
    num_classes: int,
    package: str = "",
) -> tuple[Selection, list[int], dict[str, np.ndarray]]:
    """The one rule for every format: each queried image answered at its size, and every pixel
    of each requested region labeled with a class (pixels outside the regions are not read).
    A superpixel query's regions are read from its segment maps in ``package``."""
    problems = list(problems)
    selection: Selection = {}
    counts = np.zeros(num_classes, dtype=np.int64)
    for image in query["images"]:
        sample_id = image["sample_id"]
        indices = [r["index"] for r in image["regions"]]
        where = f"{source}: {sample_id}"
        mask = masks.get(sample_id)
        if mask is None:
            problems.append(f"{where}: missing (requested regions {indices})")
            continue
        if mask.shape != (image["height"], image["width"]):
            problems.append(
                f"{where}: size {mask.shape[1]}x{mask.shape[0]}, expected "
                f"{image['width']}x{image['height']}"
            )
            continue
        segments = None
        if "segments" in image:
            try:
                segments = load_segments(storage.join(package, image["segments"]))
            except ValueError as err:
                problems.append(f"{where}: {err}")
                continue
        for region in image["regions"]:
            y0, y1, x0, x1 = region["box_y0_y1_x0_x1"]
            values = mask[y0:y1, x0:x1]
            if segments is not None:  # the superpixel's own pixels, not its box
                values = values[segments[y0:y1, x0:x1] == region["index"]]
            bad = sorted({int(v) for v in np.unique(values) if v >= num_classes})
            if bad:
                what = "unlabeled (255)" if bad == [IGNORE_INDEX] else f"invalid values {bad}"
                problems.append(
                    f"{where}: region {region['index']} (box y {y0}-{y1}, x {x0}-{x1})"
                    f" has {what}; classes are 0..{num_classes - 1}"
                )
            counts += class_histogram(values, num_classes)
        selection[sample_id] = indices
        masks[sample_id] = mask
    if problems:
        raise AnnotationError("annotations refused, nothing committed:\n  " + "\n  ".join(problems))
    return selection, counts.tolist(), {sid: masks[sid] for sid in selection}


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
