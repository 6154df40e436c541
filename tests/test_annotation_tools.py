"""Label Studio and CVAT round trips of a query package (no Ray): the tool's import the project
writes (pre-annotated with the pseudo-labels), the export an annotator returns, decoded and
checked by the manual oracle's one rule. Image sizes are not multiples of the region size."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from s4al_ray.pool import cvat, label_studio
from s4al_ray.pool.manual import AnnotationError, ToolPackage, answer_masks, check_answers

CLASSES = ["road", "car", "pole"]
COLORS = [(128, 64, 128), (0, 0, 142), (153, 153, 153)]
REGION = 16


def _boxes(height: int, width: int, indices: list[int]) -> list[dict]:
    cols = -(-width // REGION)
    out = []
    for index in indices:
        y0, x0 = (index // cols) * REGION, (index % cols) * REGION
        box = [y0, min(y0 + REGION, height), x0, min(x0 + REGION, width)]
        out.append({"index": index, "box_y0_y1_x0_x1": box})
    return out


@pytest.fixture
def query(tmp_path):
    """Two queried images (50x70 and 37x41: edge regions are partial) with ground truth and
    pseudo-labels; the images are written as a dataset would hold them."""
    rng = np.random.default_rng(0)
    shapes = {"a/frame_1": (50, 70, [0, 4, 14]), "frame_2": (37, 41, [2, 8])}
    images, truth, pseudo = [], {}, {}
    for sample_id, (height, width, indices) in shapes.items():
        uri = tmp_path / "dataset" / f"{sample_id}.jpg"
        uri.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(uri)
        truth[sample_id] = rng.integers(0, len(CLASSES), (height, width)).astype(np.uint8)
        pseudo[sample_id] = rng.integers(0, len(CLASSES), (height, width)).astype(np.uint8)
        images.append(
            {
                "sample_id": sample_id,
                "image_uri": str(uri),
                "height": height,
                "width": width,
                "regions": _boxes(height, width, indices),
            }
        )
    made = {"round": 3, "region_size": REGION, "classes": CLASSES, "images": images}
    return made, truth, pseudo


def _inside(image: dict) -> np.ndarray:
    inside = np.zeros((image["height"], image["width"]), dtype=bool)
    for region in image["regions"]:
        y0, y1, x0, x1 = region["box_y0_y1_x0_x1"]
        inside[y0:y1, x0:x1] = True
    return inside


def _classes_inside(query: dict, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        i["sample_id"]: np.where(_inside(i), labels[i["sample_id"]], 255) for i in query["images"]
    }


# -- Label Studio


def _label_studio_export(tasks: list[dict], query: dict, truth: dict, spoil=None) -> str:
    """What Label Studio exports after an annotator painted the ground truth in every region."""
    by_id = {i["sample_id"]: i for i in query["images"]}
    exported = []
    for number, t in enumerate(tasks, start=1):
        image = by_id[t["data"]["sample_id"]]
        inside = _inside(image)
        gt = truth[image["sample_id"]]
        result = [
            label_studio.brush_result(inside & (gt == c), CLASSES[c]) for c in np.unique(gt[inside])
        ]
        annotation = {"id": number, "result": result, "was_cancelled": False}
        exported.append({**t, "id": number, "annotations": [annotation]})
    if spoil:
        spoil(exported)
    return json.dumps(exported)


def test_label_studio_tasks_carry_regions_and_pseudo_labels(query, tmp_path):
    made, _, pseudo = query
    package = str(tmp_path / "package")
    ToolPackage("label_studio", COLORS, pseudo, local_files_root=str(tmp_path)).write(package, made)
    tasks = json.load(open(os.path.join(package, "label_studio", "tasks.json")))
    config = open(os.path.join(package, "label_studio", "labeling_config.xml")).read()
    assert '<Label value="car" background="#00008e"/>' in config and "BrushLabels" in config
    assert [t["data"]["sample_id"] for t in tasks] == ["a/frame_1", "frame_2"]
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=dataset/a/frame_1.jpg"
    for t, image in zip(tasks, made["images"]):
        (prediction,) = t["predictions"]
        assert prediction["model_version"] == "round_003"
        rectangles = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
        assert len(rectangles) == len(image["regions"])
        y0, y1, x0, x1 = image["regions"][-1]["box_y0_y1_x0_x1"]
        last = rectangles[-1]["value"]
        assert last["x"] == pytest.approx(100 * x0 / image["width"])
        assert last["width"] == pytest.approx(100 * (x1 - x0) / image["width"])
    # The pre-annotation, decoded as an export of it would be: the pseudo-label in the regions.
    as_answers = [{**t, "annotations": [{"result": t["predictions"][0]["result"]}]} for t in tasks]
    masks, problems = label_studio.export_masks(json.dumps(as_answers), "x.json", made)
    assert problems == []
    expected = _classes_inside(made, pseudo)
    for sample_id, mask in masks.items():
        np.testing.assert_array_equal(mask, expected[sample_id])


def test_label_studio_export_round_trip(query, tmp_path):
    made, truth, pseudo = query
    package = str(tmp_path / "package")
    ToolPackage("label_studio", COLORS, pseudo, local_files_root=str(tmp_path)).write(package, made)
    tasks = json.load(open(os.path.join(package, "label_studio", "tasks.json")))
    export = tmp_path / "export.json"
    export.write_text(_label_studio_export(tasks, made, truth))
    masks, problems = answer_masks(str(export), made)
    selection, counts, kept = check_answers(made, str(export), masks, problems, len(CLASSES))
    assert selection == {i["sample_id"]: [r["index"] for r in i["regions"]] for i in made["images"]}
    expected = _classes_inside(made, truth)
    for sample_id, mask in kept.items():
        np.testing.assert_array_equal(mask, expected[sample_id])
    assert sum(counts) == sum(int(_inside(i).sum()) for i in made["images"])


def _refused(made, source: str, text: str, *messages: str) -> None:
    with open(source, "w") as handle:
        handle.write(text)
    masks, problems = answer_masks(source, made)
    with pytest.raises(AnnotationError) as err:
        check_answers(made, source, masks, problems, len(CLASSES))
    for message in messages:
        assert message in str(err.value), str(err.value)


def test_label_studio_bad_exports_are_refused_by_name(query, tmp_path):
    made, truth, pseudo = query
    package = str(tmp_path / "package")
    ToolPackage("label_studio", COLORS, pseudo, local_files_root=str(tmp_path)).write(package, made)
    tasks = json.load(open(os.path.join(package, "label_studio", "tasks.json")))
    source = str(tmp_path / "bad.json")

    def unknown_label(exported):
        exported[1]["annotations"][0]["result"][0]["value"]["brushlabels"] = ["sky"]

    def missing_image(exported):
        del exported[0]

    def wrong_size(exported):
        exported[1]["annotations"][0]["result"][0]["original_width"] = 99

    def part_of_a_region(exported):  # only its first class painted: the rest is unlabeled
        exported[0]["annotations"][0]["result"] = exported[0]["annotations"][0]["result"][:1]

    cases = [
        (unknown_label, ["task 2 (frame_2): label ['sky'] is not one class of"]),
        (missing_image, ["a/frame_1: missing (requested regions [0, 4, 14])"]),
        (wrong_size, ["task 2 (frame_2): mask of size 99x37, expected 41x37"]),
        (part_of_a_region, ["a/frame_1: region 0 (box y 0-16, x 0-16) has unlabeled (255)"]),
    ]
    for spoil, messages in cases:
        _refused(made, source, _label_studio_export(tasks, made, truth, spoil), *messages)
    _refused(made, source, "{not json", "not JSON")


# -- CVAT


def test_cvat_package_and_export_round_trip(query, tmp_path):
    made, truth, pseudo = query
    package = str(tmp_path / "package")
    ToolPackage("cvat", COLORS, pseudo).write(package, made)
    folder = os.path.join(package, "cvat")
    assert sorted(os.listdir(os.path.join(folder, "images"))) == ["a", "frame_2.jpg"]
    labels = json.load(open(os.path.join(folder, "labels.json")))
    assert [label["name"] for label in labels] == [*CLASSES, cvat.REGION_LABEL]
    xml = open(os.path.join(folder, "annotations.xml"), "rb").read()
    assert xml.count(b"<box ") == sum(len(i["regions"]) for i in made["images"])
    # The pre-annotations read back as CVAT would import them: the pseudo-labels in the regions.
    masks, problems = cvat.export_masks(xml, "annotations.xml", made)
    assert problems == []
    for sample_id, mask in masks.items():
        np.testing.assert_array_equal(mask, _classes_inside(made, pseudo)[sample_id])
    # An export (zip, as CVAT downloads it) of the annotator's masks: the ground truth.
    archive = tmp_path / "task_export.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("annotations.xml", cvat.annotations_xml(made, COLORS, truth))
    masks, problems = answer_masks(str(archive), made)
    selection, _, kept = check_answers(made, str(archive), masks, problems, len(CLASSES))
    assert set(selection) == {"a/frame_1", "frame_2"}
    for sample_id, mask in kept.items():
        np.testing.assert_array_equal(mask, _classes_inside(made, truth)[sample_id])


def test_cvat_polygons_are_rasterised(query, tmp_path):
    made, _, _ = query
    made = {**made, "images": made["images"][1:]}  # frame_2: regions 2 (x 32-41) and 8
    image = made["images"][0]
    xml = (
        '<?xml version="1.0"?><annotations><version>1.1</version>'
        f'<image id="0" name="frame_2.jpg" width="{image["width"]}" height="{image["height"]}">'
        '<polygon label="road" points="0,0;41,0;41,37;0,37" z_order="0"/>'
        '<polygon label="car" points="32,0;41,0;41,16;32,16" z_order="1"/></image></annotations>'
    )
    masks, problems = cvat.export_masks(xml.encode(), "poly.xml", made)
    assert problems == []
    mask = masks["frame_2"]
    assert (mask[1:15, 33:40] == 1).all() and (mask[20:36, 1:30] == 0).all()


def test_cvat_bad_exports_are_refused_by_name(query, tmp_path):
    made, truth, _ = query
    good = cvat.annotations_xml(made, COLORS, truth)
    source = str(tmp_path / "bad.xml")
    # The last column of each image left unpainted: its right-edge regions answered in part.
    partial = {k: v.copy() for k, v in truth.items()}
    for mask in partial.values():
        mask[:, -1] = 255
    cases = [
        (good.replace('label="car"', 'label="sky"', 1), ["label 'sky' is not a class of"]),
        (
            good.replace('name="frame_2.jpg"', 'name="other.jpg"'),
            ["image 'other.jpg' is not in this round's query", "frame_2: missing"],
        ),
        (
            good.replace('width="41"', 'width="40"'),
            ["image frame_2.jpg: size 40x37, expected 41x37"],
        ),
        (cvat.annotations_xml(made, COLORS, partial), ["frame_2: region 2", "unlabeled (255)"]),
    ]
    for text, messages in cases:
        _refused(made, source, text, *messages)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:
        handle.writestr("other.txt", "")
    with open(tmp_path / "bad.zip", "wb") as handle:
        handle.write(buffer.getvalue())
    with pytest.raises(AnnotationError, match="no annotations.xml"):
        answer_masks(str(tmp_path / "bad.zip"), made)


def test_damaged_exports_are_refused_not_crashed(query, tmp_path):
    made, truth, pseudo = query
    package = str(tmp_path / "package")
    ToolPackage("label_studio", COLORS, pseudo, local_files_root=str(tmp_path)).write(package, made)
    tasks = json.load(open(os.path.join(package, "label_studio", "tasks.json")))
    assert all(t["data"]["round"] == 3 for t in tasks)
    source = str(tmp_path / "damaged.json")

    def cut_rle(exported):
        exported[0]["annotations"][0]["result"][0]["value"]["rle"] = [1, 2]

    def earlier_round_task(exported):  # one project kept across rounds: skipped, not refused
        old = {"sample_id": "old_frame", "round": 2, "image": "x"}
        exported.append({**exported[0], "id": 99, "data": old})

    _refused(made, source, _label_studio_export(tasks, made, truth, cut_rle), "RLE unreadable")
    with open(source, "w") as handle:
        handle.write(_label_studio_export(tasks, made, truth, earlier_round_task))
    masks, problems = answer_masks(source, made)
    assert set(check_answers(made, source, masks, problems, len(CLASSES))[0]) == set(truth)
    _refused(made, source, json.dumps([3]), "not a Label Studio task")
    good = cvat.annotations_xml(made, COLORS, truth)
    _refused(made, str(tmp_path / "d.xml"), good.replace(' left="', ' lft="', 1), "unreadable")
    with open(tmp_path / "cut.zip", "wb") as handle:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("annotations.xml", good)
        data = bytearray(buffer.getvalue())
        data[40:200] = bytes(160)  # the compressed stream damaged, the directory intact
        handle.write(bytes(data))
    with pytest.raises(AnnotationError, match="cut.zip"):
        answer_masks(str(tmp_path / "cut.zip"), made)


def test_local_images_outside_the_served_root_are_refused_up_front(tmp_path):
    from s4al_ray.config import ConfigError
    from s4al_ray.config_schema import AnnotationConfig
    from s4al_ray.pool.manual import check_tool_settings

    served = AnnotationConfig(tool="label_studio", local_files_root=str(tmp_path / "served"))
    check_tool_settings(served, str(tmp_path / "served" / "dataset"))
    check_tool_settings(served, "s3://bucket/dataset")  # presigned URLs: no root needed
    with pytest.raises(ConfigError, match="annotation.local_files_root=.*outside it"):
        check_tool_settings(served, str(tmp_path / "elsewhere"))


def test_a_label_studio_server_without_token_or_answer_is_refused_up_front(tmp_path, monkeypatch):
    import socket

    from s4al_ray.config import ConfigError
    from s4al_ray.config_schema import AnnotationConfig
    from s4al_ray.pool.manual import check_tool_settings

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = AnnotationConfig(tool="label_studio", local_files_root=str(tmp_path), url=url)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=f"annotation.url={url}: set LABEL_STUDIO_API_KEY"):
        check_tool_settings(settings, str(tmp_path))
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-a-real-token-0123")
    with pytest.raises(ConfigError, match="no Label Studio server answered") as refused:
        check_tool_settings(settings, str(tmp_path))
    assert "not-a-real-token" not in str(refused.value)  # the token is never echoed
