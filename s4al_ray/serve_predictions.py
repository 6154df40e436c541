"""``python run.py serve-predictions``: a Label Studio ML backend that answers with the run's
latest finished teacher pass, so annotators see the pseudo-labels of any task live.

Label Studio's ML-backend protocol over plain HTTP (stdlib server, loopback by default):
``GET /health`` -> ``{"status": "UP"}``; ``POST /setup`` -> ``{"model_version": "round_XXX"}``;
``POST /predict`` with ``{"tasks": [...]}`` -> ``{"results": [...]}``, one prediction per task
(the pseudo-label's classes as brush regions; an empty result for an image the pass does not
hold). A task names its image by ``data.sample_id`` (this project's tasks) or by its image
URL's file name. Every request reads the newest pass, so a round that finishes while the
server runs is served from the next request on.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

from s4al_ray import storage
from s4al_ray.layout import RunLayout, round_name


def latest_pass(layout: RunLayout, rounds: int) -> tuple[int, str] | None:
    """(round, parquet URI) of the newest finished teacher pass, None before the first."""
    for r in range(rounds - 1, -1, -1):
        if storage.exists(layout.teacher_summary(r)):
            return r, layout.teacher(r)
    return None


def task_sample_id(task: dict) -> str | None:
    """The image a Label Studio task shows: ``data.sample_id``, else its image URL's stem
    (``/data/local-files/?d=images/x.png``, ``s3://b/images/x.png``, ``https://.../x.png?...``)."""
    data = task.get("data") or {}
    if data.get("sample_id"):
        return str(data["sample_id"])
    url = data.get("image")
    if not isinstance(url, str) or not url:
        return None
    parsed = urlparse(url)
    path = parse_qs(parsed.query).get("d", [parsed.path])[0]
    return os.path.splitext(os.path.basename(unquote(path)))[0] or None


def predictions(tasks: list[dict], layout: RunLayout, rounds: int, classes: list[str]) -> dict:
    """The ``/predict`` answer for ``tasks`` from the newest pass."""
    from s4al_ray.data.io import decode_mask
    from s4al_ray.data.training import read_pseudo_labels
    from s4al_ray.pool.label_studio import brush_results

    found = latest_pass(layout, rounds)
    if found is None:
        return {"results": [{"result": [], "score": 0.0, "model_version": "none"} for _ in tasks]}
    round_index, uri = found
    sample_ids = [task_sample_id(t) for t in tasks]
    stored = read_pseudo_labels(uri, {sid for sid in sample_ids if sid})
    results = []
    for sample_id in sample_ids:
        label = stored.get(sample_id)
        result = [] if label is None else brush_results(decode_mask(label[0]), classes)
        results.append(
            {
                "result": result,
                "score": 1.0 if result else 0.0,
                "model_version": round_name(round_index),
            }
        )
    return {"results": results}


def make_server(host: str, port: int, layout: RunLayout, rounds: int, classes: list[str]):
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.rstrip("/") in ("/health", ""):
                self._send(200, {"status": "UP", "model_class": "s4al-ray teacher"})
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            try:
                body = self._body()
            except ValueError as err:
                self._send(400, {"error": f"body is not JSON ({err})"})
                return
            if self.path == "/setup":
                found = latest_pass(layout, rounds)
                version = round_name(found[0]) if found else "none"
                self._send(200, {"model_version": version})
            elif self.path == "/predict":
                tasks = body.get("tasks")
                if not isinstance(tasks, list):
                    self._send(400, {"error": "expected {'tasks': [...]}"})
                    return
                self._send(200, predictions(tasks, layout, rounds, classes))
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def log_message(self, format: str, *args) -> None:
            sys.stderr.write(f"[serve-predictions] {self.address_string()} {format % args}\n")

    return ThreadingHTTPServer((host, port), Handler)


def serve_command(cfg, host: str, port: int) -> int:
    from s4al_ray.data.registry import load_dataset

    layout = RunLayout.of(cfg.storage, cfg.name)
    classes = load_dataset(cfg.data, cfg.seed, log=lambda line: None).classes
    server = make_server(host, port, layout, cfg.loop.rounds, list(classes))
    found = latest_pass(layout, cfg.loop.rounds)
    where = f"round {found[0]}'s teacher pass" if found else "no finished teacher pass yet"
    print(
        f"[serve-predictions] Label Studio ML backend for {layout.run_dir} ({where}) on "
        f"http://{host}:{server.server_address[1]}: add it under Project > Settings > Model"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
