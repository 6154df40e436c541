"""``run.py serve-predictions``: Label Studio's ML-backend protocol over HTTP, answered from the
run's newest finished teacher pass (no Ray: the pass is written here in the teacher's format)."""

from __future__ import annotations

import json
import os
import threading
import urllib.request

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s4al_ray.data.io import encode_png
from s4al_ray.layout import RunLayout
from s4al_ray.serve_predictions import make_server, task_sample_id

CLASSES = ["road", "car", "pole"]


def _write_pass(layout: RunLayout, r: int, labels: dict[str, np.ndarray]) -> None:
    folder = layout.teacher(r)
    os.makedirs(folder, exist_ok=True)
    table = pa.table(
        {
            "sample_id": list(labels),
            "label_png": [encode_png(m) for m in labels.values()],
            "conf_png": [encode_png(np.full(m.shape, 200, np.uint8)) for m in labels.values()],
        }
    )
    pq.write_table(table, os.path.join(folder, "part-0.parquet"))
    with open(layout.teacher_summary(r), "w") as f:
        json.dump({"round": r}, f)


@pytest.fixture
def backend(tmp_path):
    layout = RunLayout.of(str(tmp_path), "served")
    server = make_server("127.0.0.1", 0, layout, 3, CLASSES)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield layout, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_predict_answers_with_the_newest_pass(backend):
    from label_studio_sdk.converter.brush import decode_rle

    layout, url = backend
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        assert json.loads(response.read())["status"] == "UP"
    assert _post(f"{url}/setup", {"project": "1.0"})["model_version"] == "none"
    tasks = [{"data": {"sample_id": "a"}}, {"data": {"image": "/data/local-files/?d=images/b.png"}}]
    assert [r["result"] for r in _post(f"{url}/predict", {"tasks": tasks})["results"]] == [[], []]

    old = np.zeros((6, 7), np.uint8)
    label = np.array([[0] * 7, [1] * 7, [2] * 7, [255] * 7, [1] * 7, [0] * 7], np.uint8)
    _write_pass(layout, 0, {"a": old, "b": old})
    _write_pass(layout, 1, {"a": label})  # a later round, finished while serving
    assert _post(f"{url}/setup", {})["model_version"] == "round_001"
    results = _post(f"{url}/predict", {"tasks": tasks + [{"data": {}}]})["results"]
    assert [r["model_version"] for r in results] == ["round_001"] * 3
    assert results[1]["result"] == [] and results[2]["result"] == []  # b not in round 1's pass
    painted = {}
    for region in results[0]["result"]:
        (name,) = region["value"]["brushlabels"]
        alpha = decode_rle(region["value"]["rle"]).reshape(6, 7, 4)[..., 3]
        painted[name] = alpha > 0
    assert sorted(painted) == sorted(CLASSES)  # 255 (below the threshold) is left unlabeled
    for c, name in enumerate(CLASSES):
        assert (painted[name] == (label == c)).all()


def test_bad_requests_get_an_error_not_a_crash(backend):
    _, url = backend
    for path, body in (("/predict", {"tasks": "x"}), ("/nowhere", {})):
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(f"{url}{path}", body)
        assert refused.value.code in (400, 404)
    request = urllib.request.Request(f"{url}/predict", data=b"{not json")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400


def test_tasks_name_their_image_by_id_or_url():
    assert task_sample_id({"data": {"sample_id": "x1", "image": "y.png"}}) == "x1"
    assert task_sample_id({"data": {"image": "/data/local-files/?d=img%2Fa%20b.png"}}) == "a b"
    assert task_sample_id({"data": {"image": "https://h/b/k/c.jpg?X-Amz-Signature=1"}}) == "c"
    assert task_sample_id({"data": {}}) is None
