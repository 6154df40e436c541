"""Label Studio round trips for the manual oracle (``annotation.tool=label_studio``).

Out: ``<query package>/label_studio/tasks.json`` (one task per queried image: its image URL, the
requested regions as rectangles and the teacher's pseudo-label inside them as a brush
pre-annotation under ``predictions``, ``model_version`` = the round) and
``labeling_config.xml`` (BrushLabels with the dataset's classes and colours).
In: a Label Studio JSON export of those tasks, decoded into one class-id mask per image with
label-studio-sdk's brush RLE codec; the checks against the query are the manual oracle's.
"""

from __future__ import annotations

import json
from xml.sax.saxutils import quoteattr

import numpy as np

from s4al_ray import IGNORE_INDEX, storage
from s4al_ray.layout import round_name
from s4al_ray.report_figures import hex_color

BRUSH = "label"  # the BrushLabels control: what annotators paint
REGIONS = "region"  # the RectangleLabels control: the regions to label
REGION_LABEL = "label this region"


def labeling_config(classes: list[str], colors: list[tuple[int, int, int]]) -> str:
    labels = "\n".join(
        f"    <Label value={quoteattr(name)} background={quoteattr(hex_color(color))}/>"
        for name, color in zip(classes, colors)
    )
    return (
        "<View>\n"
        '  <Image name="image" value="$image" zoomControl="true"/>\n'
        f'  <BrushLabels name="{BRUSH}" toName="image">\n{labels}\n  </BrushLabels>\n'
        f'  <RectangleLabels name="{REGIONS}" toName="image" editable="false">\n'
        f'    <Label value="{REGION_LABEL}" background="#ffff00"/>\n'
        "  </RectangleLabels>\n"
        "</View>\n"
    )


def served_path(path: str, local_files_root: str) -> str | None:
    """``path`` relative to Label Studio's local-files root, None when it is outside."""
    import os

    inside = os.path.relpath(os.path.abspath(path), os.path.abspath(local_files_root))
    return None if inside.startswith("..") else inside


def image_url(uri: str, local_files_root: str) -> str:
    """Where Label Studio fetches the image: http(s) as is, S3 as a presigned URL (a week),
    a local file through Label Studio's local-files serving (relative to its document root)."""
    if uri.startswith(("http://", "https://")):
        return uri
    if storage.is_s3(uri):
        import boto3

        bucket, _, key = uri[len("s3://") :].partition("/")
        client = boto3.client(
            "s3", endpoint_url=storage.s3_endpoint(), region_name=storage.s3_region()
        )
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=7 * 24 * 3600
        )
    path = served_path(uri, local_files_root)
    if path is None:
        raise ValueError(
            f"{uri} is outside annotation.local_files_root={local_files_root}: set it to a "
            "directory above the dataset (and Label Studio's LOCAL_FILES_DOCUMENT_ROOT to the same)"
        )
    from urllib.parse import quote

    return f"/data/local-files/?d={quote(path)}"


def brush_result(mask: np.ndarray, label: str) -> dict:
    """One brush region of ``mask`` (bool, H x W) in Label Studio's RLE (alpha channel set)."""
    from label_studio_sdk.converter.brush import mask2rle

    height, width = mask.shape
    return {
        "from_name": BRUSH,
        "to_name": "image",
        "type": "brushlabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "format": "rle",
            "rle": mask2rle(mask.astype(np.uint8) * 255),
            "brushlabels": [label],
        },
    }


def brush_results(
    label_map: np.ndarray, classes: list[str], where: np.ndarray | None = None
) -> list[dict]:
    """One brush region per class of ``label_map`` (within ``where``, if given); values that are
    not classes (255: below the confidence threshold) stay unpainted."""
    inside = np.ones(label_map.shape, dtype=bool) if where is None else where
    return [
        brush_result(inside & (label_map == c), classes[int(c)])
        for c in np.unique(label_map[inside])
        if c < len(classes)
    ]


def rectangle_result(box: list[int], height: int, width: int) -> dict:
    y0, y1, x0, x1 = box
    return {
        "from_name": REGIONS,
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": 100.0 * x0 / width,
            "y": 100.0 * y0 / height,
            "width": 100.0 * (x1 - x0) / width,
            "height": 100.0 * (y1 - y0) / height,
            "rotation": 0,
            "rectanglelabels": [REGION_LABEL],
        },
    }


def task(
    query_image: dict,
    url: str,
    classes: list[str],
    pseudo_label: np.ndarray | None,
    round_index: int,
    inside: np.ndarray,
) -> dict:
    """The task of one queried image; the pseudo-label's classes inside its regions (``inside``:
    their pixels, ``region_maps.requested_mask``) as the prediction (annotators correct it
    instead of painting from nothing). Each region is boxed; a superpixel's box is its
    bounding box, and its brush pre-annotation covers exactly its pixels."""
    height, width = query_image["height"], query_image["width"]
    boxes = [r["box_y0_y1_x0_x1"] for r in query_image["regions"]]
    result = [rectangle_result(b, height, width) for b in boxes]
    if pseudo_label is not None:
        result += brush_results(pseudo_label, classes, inside)
    data = {"image": url, "sample_id": query_image["sample_id"], "round": round_index}
    model = round_name(round_index)
    return {"data": data, "predictions": [{"model_version": model, "result": result}]}


def write_tasks(package: str, tasks: list[dict], config: str) -> None:
    storage.write_text(storage.join(package, "label_studio", "tasks.json"), json.dumps(tasks))
    storage.write_text(storage.join(package, "label_studio", "labeling_config.xml"), config)


def export_masks(text: str, source: str, query: dict) -> tuple[dict[str, np.ndarray], list[str]]:
    """Class-id masks (IGNORE_INDEX where nothing was painted) from a Label Studio JSON export:
    per task its latest annotation that was not cancelled. Returns (masks, problems)."""
    from label_studio_sdk.converter.brush import decode_rle

    classes = query["classes"]
    shapes = {i["sample_id"]: (i["height"], i["width"]) for i in query["images"]}
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as err:
        return {}, [f"{source}: not JSON ({err}); export the project as 'JSON'"]
    if not isinstance(tasks, list):
        return {}, [f"{source}: not a Label Studio JSON export (a list of tasks)"]
    masks: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for t in tasks:
        if not isinstance(t, dict) or not isinstance(t.get("data"), dict):
            problems.append(f"{source}: an entry that is not a Label Studio task: {str(t)[:80]}")
            continue
        sample_id = t["data"].get("sample_id")
        where = f"{source}: task {t.get('id')}"
        if t["data"].get("round", query["round"]) != query["round"]:
            continue  # an earlier round's task of the same project: already committed
        if sample_id not in shapes:
            problems.append(f"{where}: image {sample_id!r} is not in this round's query")
            continue
        done = [a for a in t.get("annotations") or [] if not a.get("was_cancelled")]
        if not done:
            continue  # reported as missing by the query check
        latest = max(done, key=lambda a: (str(a.get("updated_at", "")), a.get("id", 0)))
        height, width = shapes[sample_id]
        mask = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        for result in latest.get("result") or []:
            if result.get("type") != "brushlabels":
                continue
            value = result.get("value") or {}
            names = value.get("brushlabels") or []
            unknown = [n for n in names if n not in classes]
            if unknown or len(names) != 1:
                problems.append(
                    f"{where} ({sample_id}): label {names} is not one class of {classes}"
                )
                continue
            size = (result.get("original_height"), result.get("original_width"))
            if size != (height, width):
                problems.append(
                    f"{where} ({sample_id}): mask of size {size[1]}x{size[0]}, expected "
                    f"{width}x{height}"
                )
                continue
            try:
                flat = decode_rle(value.get("rle") or [])
            except (ValueError, IndexError, TypeError, OverflowError) as err:
                problems.append(f"{where} ({sample_id}): brush RLE unreadable ({err!r})")
                continue
            if flat.size != height * width * 4:
                problems.append(f"{where} ({sample_id}): brush RLE does not fit {width}x{height}")
                continue
            painted = flat.reshape(height, width, 4)[:, :, 3] > 0
            mask[painted] = classes.index(names[0])
        masks[sample_id] = mask
    return masks, problems
