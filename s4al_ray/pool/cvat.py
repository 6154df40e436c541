"""CVAT round trips for the manual oracle (``annotation.tool=cvat``).

Out: ``<query package>/cvat/``: ``images/`` (the queried images as they are) and
``annotations.xml`` in "CVAT for images 1.1" with the requested regions as boxes and the
teacher's pseudo-label inside them as masks (``source="auto"``): ``cvat-cli task create ...
--labels "$(cat labels.json)" --annotation_path annotations.xml --annotation_format "CVAT 1.1"
local images/*``.
In: a "CVAT for images 1.1" export (the XML, or the zip CVAT downloads), masks decoded with
cvat-sdk's mask codec and polygons rasterised; the checks against the query are the manual
oracle's.
"""

from __future__ import annotations

import io
import json
import os
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
from PIL import Image, ImageDraw

from s4al_ray import IGNORE_INDEX, storage
from s4al_ray.region_maps import requested_mask
from s4al_ray.report_figures import hex_color

REGION_LABEL = "label this region"


def image_name(query_image: dict) -> str:
    """The image's file name in the task: its sample id with the source file's extension."""
    ext = os.path.splitext(query_image["image_uri"])[1] or ".png"
    return query_image["sample_id"] + ext


def annotations_xml(
    query: dict,
    colors: list[tuple[int, int, int]],
    pseudo_labels: dict[str, np.ndarray],
    inside: dict[str, np.ndarray] | None = None,
) -> str:
    """The pre-annotations: each requested region's box, and the pseudo-label's masks inside
    the regions (``inside``: their pixels per image; a square query's by default)."""
    from cvat_sdk.masks import encode_mask

    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = f"round {query['round']:03d}"
    ET.SubElement(task, "size").text = str(len(query["images"]))
    labels = ET.SubElement(task, "labels")
    kinds = [(n, c, "mask") for n, c in zip(query["classes"], colors)]
    for name, color, kind in [*kinds, (REGION_LABEL, (255, 255, 0), "rectangle")]:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "color").text = hex_color(color)
        ET.SubElement(label, "type").text = kind
        ET.SubElement(label, "attributes")
    for index, image in enumerate(query["images"]):
        height, width = image["height"], image["width"]
        node = ET.SubElement(
            root,
            "image",
            id=str(index),
            name=image_name(image),
            width=str(width),
            height=str(height),
        )
        pixels = requested_mask(query, image, "") if inside is None else inside[image["sample_id"]]
        for region in image["regions"]:
            y0, y1, x0, x1 = region["box_y0_y1_x0_x1"]
            box = dict(xtl=x0, ytl=y0, xbr=x1, ybr=y1)
            ET.SubElement(node, "box", label=REGION_LABEL, **_shape(), **_text(box))
        label_map = pseudo_labels.get(image["sample_id"])
        if label_map is None:
            continue
        for c in np.unique(label_map[pixels]):
            if c >= len(query["classes"]):
                continue
            *runs, x1, y1, x2, y2 = encode_mask(pixels & (label_map == c))
            place = dict(left=x1, top=y1, width=x2 - x1 + 1, height=y2 - y1 + 1)
            attrs = dict(label=query["classes"][int(c)], rle=", ".join(map(str, runs)))
            ET.SubElement(node, "mask", **attrs, **_shape(source="auto"), **_text(place))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def _shape(source: str = "manual") -> dict[str, str]:
    return {"source": source, "occluded": "0", "z_order": "0"}


def _text(values: dict) -> dict[str, str]:
    return {k: str(v) for k, v in values.items()}


def write_task_package(
    package: str,
    query: dict,
    colors: list,
    pseudo_labels: dict[str, np.ndarray],
    inside: dict[str, np.ndarray] | None = None,
) -> None:
    folder = storage.join(package, "cvat")
    for image in query["images"]:
        data = storage.read_bytes(image["image_uri"])
        storage.write_bytes(storage.join(folder, "images", image_name(image)), data)
    storage.write_text(
        storage.join(folder, "annotations.xml"),
        annotations_xml(query, colors, pseudo_labels, inside),
    )
    # cvat-cli's --labels: the task's labels must exist before the annotations are uploaded.
    labels = [
        {"name": n, "type": "mask", "color": hex_color(c)} for n, c in zip(query["classes"], colors)
    ]
    labels.append({"name": REGION_LABEL, "type": "rectangle", "color": "#ffff00"})
    storage.write_text(storage.join(folder, "labels.json"), json.dumps(labels))


def read_export(path: str) -> bytes:
    """The XML of a CVAT export: the file itself, or ``annotations.xml`` in its zip."""
    data = storage.read_bytes(path)
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if "annotations.xml" not in archive.namelist():
                raise ValueError("the zip has no annotations.xml: export as 'CVAT for images 1.1'")
            return archive.read("annotations.xml")
    return data


def export_masks(data: bytes, source: str, query: dict) -> tuple[dict[str, np.ndarray], list[str]]:
    """Class-id masks (IGNORE_INDEX where nothing was drawn) from a "CVAT for images 1.1"
    export: masks and polygons, in z_order. Returns (masks, problems)."""
    from cvat_sdk.masks import decode_mask

    classes = query["classes"]
    by_name = {image_name(i): i for i in query["images"]}
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        return {}, [f"{source}: not XML ({err}); export as 'CVAT for images 1.1'"]
    masks: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for node in root.iter("image"):
        name = node.get("name", "")
        image = by_name.get(name) or by_name.get(os.path.basename(name))
        if image is None:
            problems.append(f"{source}: image {name!r} is not in this round's query")
            continue
        height, width = image["height"], image["width"]
        where = f"{source}: image {name}"
        size = (int(node.get("height", -1)), int(node.get("width", -1)))
        if size != (height, width):
            problems.append(f"{where}: size {size[1]}x{size[0]}, expected {width}x{height}")
            continue
        shapes = [s for s in node if s.tag in ("mask", "polygon")]
        if not shapes:
            continue  # reported as missing by the query check
        mask = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        for shape in sorted(shapes, key=lambda s: int(s.get("z_order", 0))):
            label = shape.get("label")
            if label not in classes:
                problems.append(f"{where}: label {label!r} is not a class of {classes}")
                continue
            try:
                painted = _painted(shape, height, width, decode_mask)
            except (ValueError, TypeError) as err:
                problems.append(f"{where}: {shape.tag} of {label!r} unreadable ({err})")
                continue
            mask[painted] = classes.index(label)
        masks[image["sample_id"]] = mask
    return masks, problems


def _painted(shape: ET.Element, height: int, width: int, decode_mask) -> np.ndarray:
    if shape.tag == "mask":
        runs = [int(v) for v in shape.get("rle", "").split(",") if v.strip()]
        left, top = int(shape.get("left")), int(shape.get("top"))
        right = left + int(shape.get("width")) - 1
        bottom = top + int(shape.get("height")) - 1
        return decode_mask(
            [*runs, left, top, right, bottom], image_width=width, image_height=height
        )
    points = [tuple(map(float, p.split(","))) for p in shape.get("points", "").split(";")]
    canvas = Image.new("1", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)
