"""Built-in synthetic dataset: procedurally drawn street-like scenes.

The point is a dataset that needs no download yet behaves like CamVid/Cityscapes where it matters
for S4AL+: a few big "stuff" classes (road, building, sky), medium ones, and thin or small rare
classes (pedestrian, pole, sign) with a long-tailed pixel frequency. Colours overlap on purpose
(grey road vs grey buildings vs grey cars vs overcast sky) so a per-pixel colour lookup cannot
solve it; shape and context are needed.

Layout written to ``root`` (the project's "folder" dataset layout)::

    images/<id>.png      RGB uint8
    masks/<id>.png       mode "L" uint8 class ids (255 = ignore, never produced here)
    classes.yaml         {"classes": [...], "colors": [[r, g, b], ...], "ignore_index": 255}
    splits/train.txt, splits/val.txt
    .synthetic.json      generation parameters, written last as the completion marker

Drawing is vectorised numpy over the whole canvas (no per-pixel Python loops), so a few hundred
small images take seconds. Sample ``i`` draws only from ``np.random.default_rng([seed, i])``, so a
file's bytes do not depend on how many samples are generated or on the number of workers.

The label set is :mod:`.classes`, painting (canvas, textures, photometric finish) :mod:`.paint`,
one street scene :mod:`.scene`; this module writes the dataset. Worker processes import it by
name (spawn), so what they run lives at module level here.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np
import yaml
from PIL import Image

from s4al_ray import IGNORE_INDEX
from s4al_ray.data.io import DatasetError
from s4al_ray.data.synthetic.classes import SYNTHETIC_CLASSES, SYNTHETIC_COLORS
from s4al_ray.data.synthetic.scene import render_scene

# Bump when the drawing changes: the marker then no longer matches and stale data is refused.
GENERATOR_VERSION = 1
MARKER_FILE = ".synthetic.json"
PARTIAL_FILE = ".synthetic.partial"


# -- Writing the dataset


def sample_id(index: int) -> str:
    return f"syn_{index:05d}"


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _save_png(array: np.ndarray, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    # uint8 HxW -> mode "L", HxWx3 -> "RGB" (passing mode= is deprecated in recent Pillow).
    Image.fromarray(array).save(tmp, format="PNG", compress_level=3)
    os.replace(tmp, path)  # never leave a truncated PNG under the final name


def _write_sample(
    root: str, index: int, seed: int, height: int, width: int, thin_scale: float
) -> None:
    image, mask = render_scene(np.random.default_rng([seed, index]), height, width, thin_scale)
    sid = sample_id(index)
    _save_png(image, os.path.join(root, "images", f"{sid}.png"))
    _save_png(mask, os.path.join(root, "masks", f"{sid}.png"))


def _write_chunk(args: tuple[str, list[int], int, int, int, float]) -> None:
    root, indices, seed, height, width, thin_scale = args
    for i in indices:
        _write_sample(root, i, seed, height, width, thin_scale)


def _write_all(
    root: str, count: int, seed: int, height: int, width: int, thin_scale: float, workers: int
) -> None:
    if workers <= 1 or count < 2:
        _write_chunk((root, list(range(count)), seed, height, width, thin_scale))
        return
    workers = min(workers, count)
    chunks = [
        (root, list(range(k, count, workers)), seed, height, width, thin_scale)
        for k in range(workers)
    ]
    # spawn, not fork: the caller may be a Ray/torch process with threads that fork would corrupt.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(_write_chunk, chunks))


def _params(
    num_train: int,
    num_val: int,
    height: int,
    width: int,
    seed: int,
    num_test: int = 0,
    thin_scale: float = 1.0,
) -> dict[str, Any]:
    # workers is deliberately absent: it does not change a single output byte.
    params = {
        "generator": "s4al_ray.synthetic",
        "version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "height": int(height),
        "width": int(width),
        "seed": int(seed),
    }
    if num_test:  # only when asked for: datasets generated before num_test keep their marker
        params["num_test"] = int(num_test)
    if thin_scale != 1.0:  # likewise: the default drawing keeps the markers written before it
        params["thin_scale"] = float(thin_scale)
    return params


def _check_existing(root: str, params: dict[str, Any]) -> bool:
    """True if ``root`` already holds exactly this dataset; raise if it holds something else."""
    marker = os.path.join(root, MARKER_FILE)
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            found = json.load(f)
        if found == params:
            return True
        raise DatasetError(
            f"{root} already holds a synthetic dataset generated with different parameters "
            f"({found} != {params}); delete that directory or choose another data.root."
        )
    # No marker: an interrupted run of ours leaves PARTIAL_FILE; anything else with a
    # classes.yaml is someone's real dataset, which must never be overwritten.
    if os.path.exists(os.path.join(root, "classes.yaml")) and not os.path.exists(
        os.path.join(root, PARTIAL_FILE)
    ):
        raise DatasetError(
            f"{root} holds a dataset that was not generated here (classes.yaml but no "
            f"{MARKER_FILE}); delete that directory or choose another data.root."
        )
    return False


def _classes_yaml() -> str:
    return yaml.safe_dump(
        {
            "classes": list(SYNTHETIC_CLASSES),
            "colors": [list(col) for col in SYNTHETIC_COLORS],
            "ignore_index": IGNORE_INDEX,
        },
        sort_keys=False,
    )


def generate_synthetic_dataset(
    root: str,
    num_train: int = 240,
    num_val: int = 60,
    height: int = 128,
    width: int = 160,
    seed: int = 0,
    workers: int = 1,
    num_test: int = 0,
    thin_scale: float = 1.0,
) -> str:
    """Write the synthetic dataset to ``root`` (idempotent) and return ``root``.

    Samples ``0..num_train-1`` form the train split, the next ``num_val`` the val split and the
    next ``num_test`` the test split. ``thin_scale`` widens poles, signs and pedestrians (see
    ``scene.render_scene``).
    """
    if num_train < 0 or num_val < 0 or num_test < 0 or num_train + num_val == 0:
        raise ValueError("num_train, num_val and num_test must be >= 0, train + val not 0")
    if height < 16 or width < 16:
        raise ValueError("height and width must be at least 16 pixels")
    if not thin_scale > 0:
        raise ValueError(f"thin_scale must be > 0, got {thin_scale}")
    params = _params(num_train, num_val, height, width, seed, num_test, thin_scale)
    if _check_existing(root, params):
        return root
    for sub in ("images", "masks", "splits"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    _atomic_write_bytes(os.path.join(root, PARTIAL_FILE), json.dumps(params).encode())

    count = num_train + num_val + num_test
    _write_all(root, count, seed, height, width, thin_scale, workers)
    ids = [sample_id(i) for i in range(count)]
    splits = {
        "train": ids[:num_train],
        "val": ids[num_train : num_train + num_val],
        "test": ids[num_train + num_val :],
    }
    for name, part in splits.items():
        if name == "test" and not part:
            continue  # no empty test.txt: a split listed is a split the dataset has
        text = "".join(f"{s}\n" for s in part)
        _atomic_write_bytes(os.path.join(root, "splits", f"{name}.txt"), text.encode())
    _atomic_write_bytes(os.path.join(root, "classes.yaml"), _classes_yaml().encode())
    # Marker last: its presence means every file above is complete.
    marker = json.dumps(params, indent=2, sort_keys=True) + "\n"
    _atomic_write_bytes(os.path.join(root, MARKER_FILE), marker.encode())
    os.remove(os.path.join(root, PARTIAL_FILE))
    return root
