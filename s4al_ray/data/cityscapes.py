"""Cityscapes in its official layout, mapped to the 19 train ids of cityscapesscripts.

```
<root>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
<root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
```
(the ``*_gtFine_color.png``, ``*_instanceIds.png`` and ``*_polygons.json`` beside the masks are
not used; the test split has no public fine labels and is skipped). Sample ids are the file
stems without the suffix, e.g. ``aachen_000000_000019``.

Label mapping. The masks on disk hold *label ids*. :data:`LABELS` is the official label table
written out as data; :data:`LABEL_MAP` sends each label id to its train id exactly as the table
says and every other value, including ids that are not in the table at all (34..254), to 255
(ignore). The S4AL reference code sent unknown ids to road; here they are ignored, and counted
in a warning by ``python run.py prepare``. The table is applied once, when the prepared cache is
written (see :mod:`s4al_ray.data.prepare` for why), so every stage of a run reads train-id
masks: resized to ``data.resize_height x resize_width`` (688x688 in the paper: images bilinear,
masks nearest), or at full size with only the mapped masks copied.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from s4al_ray import IGNORE_INDEX, storage
from s4al_ray.config import DataConfig
from s4al_ray.data.folder import DatasetError
from s4al_ray.data.manifest import DatasetInfo
from s4al_ray.data.prepare import CacheSpec, load_prepared, spec_size
from s4al_ray.data.scan import label_lut, list_tree, pair_files, raw_dataset

IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"
SPLITS = ("train", "val")
DOWNLOAD = (
    "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com/ (free registration) and unzip both into it"
)


class Label(NamedTuple):
    name: str
    id: int
    train_id: int  # 255 (and -1 for the license plate) = not trained on
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


# The official table (cityscapesscripts/helpers/labels.py), row for row.
LABELS: tuple[Label, ...] = (
    Label("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    Label("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    Label("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    Label("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    Label("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    Label("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    Label("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    Label("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    Label("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    Label("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    Label("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    Label("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    Label("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    Label("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    Label("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    Label("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    Label("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    Label("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    Label("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    Label("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    Label("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    Label("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    Label("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    Label("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    Label("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    Label("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    Label("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
    Label("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
)

_TRAINED = sorted(
    (lab for lab in LABELS if 0 <= lab.train_id < IGNORE_INDEX), key=lambda lab: lab.train_id
)
CLASSES: list[str] = [lab.name for lab in _TRAINED]  # index = train id
COLORS: list[list[int]] = [list(lab.color) for lab in _TRAINED]
# Label id -> train id; the license plate (-1) cannot occur in a uint8 mask.
LABEL_MAP = label_lut({lab.id: lab.train_id for lab in _TRAINED})
KNOWN_IDS = frozenset(lab.id for lab in LABELS if lab.id >= 0)


def _layout_error(root: str, problem: str) -> DatasetError:
    return DatasetError(
        f"Cityscapes not found at {root}: {problem}. Expected the official layout "
        f"{root}/leftImg8bit/{{train,val}}/<city>/*{IMAGE_SUFFIX} and "
        f"{root}/gtFine/{{train,val}}/<city>/*{MASK_SUFFIX}; {DOWNLOAD}"
    )


def _by_id(uris: list[str], suffix: str) -> dict[str, str]:
    return {u.rsplit("/", 1)[-1][: -len(suffix)]: u for u in uris}


def scan_cityscapes(root: str) -> DatasetInfo:
    """The dataset as found under ``root``: label-id masks, with :data:`LABEL_MAP` attached."""
    root = storage.absolute(root)
    if not storage.is_dir(root):
        raise _layout_error(root, "the directory does not exist")
    rows = []
    for split in SPLITS:
        image_dir = storage.join(root, "leftImg8bit", split)
        mask_dir = storage.join(root, "gtFine", split)
        images = _by_id(list_tree(image_dir, IMAGE_SUFFIX), IMAGE_SUFFIX)
        masks = _by_id(list_tree(mask_dir, MASK_SUFFIX), MASK_SUFFIX)
        if not images:
            raise _layout_error(root, f"no *{IMAGE_SUFFIX} under {image_dir}")
        if not masks:
            raise _layout_error(root, f"no *{MASK_SUFFIX} under {mask_dir}")
        for sid in pair_files(images, masks, f"{image_dir} and {mask_dir}"):
            rows.append(
                {"sample_id": sid, "image_uri": images[sid], "mask_uri": masks[sid], "split": split}
            )
    return raw_dataset(rows, CLASSES, LABEL_MAP, COLORS)


def cache_spec(data: DataConfig) -> CacheSpec:
    return CacheSpec(
        kind="cityscapes",
        source=storage.absolute(data.root),
        size=spec_size(data.resize_height, data.resize_width),
        label_map=LABEL_MAP,
        known_values=KNOWN_IDS,
        colors=COLORS,
        value_name="label id",
    )


def load_cityscapes(data: DataConfig, log: Callable[[str], None] = print) -> DatasetInfo:
    """Train-id Cityscapes from the prepared cache (built on first use)."""
    return load_prepared(cache_spec(data), data.cache_dir, lambda: scan_cityscapes(data.root), log)
