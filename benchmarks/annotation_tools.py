"""A round's annotation-tool export and import at scale: Label Studio tasks and CVAT task
package written for N queried images (pre-annotated with pseudo-labels), then an export of
annotators' answers decoded and checked. No Ray: the driver-side cost of the round trip.

    python benchmarks/annotation_tools.py --images 1000 --height 1024 --width 2048

Each image asks for ``--regions`` regions of 64 px (Cityscapes at 1% of pixels per round is ~5).
The first Label Studio call imports label-studio-sdk (~7 s of it on this 2-vCPU machine: its
converter imports nltk). Prints seconds per stage and per image; writes
benchmarks/results/annotation_tools.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image

from s4al_ray.pool.manual import ToolPackage, answer_masks, check_answers

CLASSES = [f"class_{i}" for i in range(19)]
COLORS = [(i * 13 % 256, i * 57 % 256, i * 101 % 256) for i in range(19)]
REGION = 64


def _query(root: str, images: int, height: int, width: int, regions: int, rng) -> dict:
    image_path = os.path.join(root, "dataset", "frame.jpg")
    os.makedirs(os.path.dirname(image_path), exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
        image_path, quality=90
    )
    rows, cols = -(-height // REGION), -(-width // REGION)
    out = []
    for n in range(images):
        picked = sorted(rng.choice(rows * cols, regions, replace=False).tolist())
        boxes = []
        for index in picked:
            y0, x0 = (index // cols) * REGION, (index % cols) * REGION
            box = [y0, min(y0 + REGION, height), x0, min(x0 + REGION, width)]
            boxes.append({"index": index, "box_y0_y1_x0_x1": box})
        out.append(
            {
                "sample_id": f"frame_{n:06d}",
                "image_uri": image_path,  # one file: the package copies, never decodes, it
                "height": height,
                "width": width,
                "regions": boxes,
            }
        )
    return {"round": 1, "region_size": REGION, "classes": CLASSES, "images": out}


def _labels(height: int, width: int, rng) -> np.ndarray:
    """A label map of blocky segments (a few classes per region, as real scenes have)."""
    coarse = rng.integers(0, len(CLASSES), (-(-height // 16), -(-width // 16))).astype(np.uint8)
    return np.kron(coarse, np.ones((16, 16), dtype=np.uint8))[:height, :width]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--regions", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/annotation_tools.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        query = _query(root, args.images, args.height, args.width, args.regions, rng)
        label_map = _labels(args.height, args.width, rng)  # shared: only the codecs are timed
        labels = {i["sample_id"]: label_map for i in query["images"]}
        seconds = {}
        for tool in ("label_studio", "cvat"):
            package = os.path.join(root, tool)
            start = time.perf_counter()
            ToolPackage(tool, COLORS, labels, local_files_root=root).write(package, query)
            seconds[f"{tool}/export_s"] = time.perf_counter() - start
        # The annotators' answers: the tools' own exports of the pre-annotations.
        tasks = json.load(open(os.path.join(root, "label_studio", "label_studio", "tasks.json")))
        answered = [
            {**t, "id": n, "annotations": [t["predictions"][0]]} for n, t in enumerate(tasks)
        ]
        sources = {"label_studio": os.path.join(root, "export.json")}
        with open(sources["label_studio"], "w") as handle:
            json.dump(answered, handle)
        sources["cvat"] = os.path.join(root, "cvat", "cvat", "annotations.xml")
        for tool, source in sources.items():
            start = time.perf_counter()
            masks, problems = answer_masks(source, query)
            selection, _, _ = check_answers(query, source, masks, problems, len(CLASSES))
            seconds[f"{tool}/import_s"] = time.perf_counter() - start
            assert len(selection) == args.images
        sizes = {
            "label_studio/tasks_mb": os.path.getsize(sources["label_studio"]) / 2**20,
            "cvat/xml_mb": os.path.getsize(sources["cvat"]) / 2**20,
        }
    shape = f"{args.images} images of {args.width}x{args.height}, {args.regions} regions of 64 px"
    print(f"annotation round trip, {shape}:")
    for key, value in seconds.items():
        print(f"  {key:24s} {value:8.2f} s   {1000 * value / args.images:7.2f} ms/image")
    for key, value in sizes.items():
        print(f"  {key:24s} {value:8.2f} MB")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"args": vars(args), **seconds, **sizes}, handle, indent=1)


if __name__ == "__main__":
    main()
