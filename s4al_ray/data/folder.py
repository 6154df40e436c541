"""The folder layout: a user's own data, and the layout of the built-in synthetic dataset.

```
<root>/images/<id>.<png|jpg|jpeg>   <root>/masks/<id>.png   <root>/classes.yaml
<root>/splits/train.txt, val.txt, test.txt   (optional: one sample id per line)
```

The dataset root is only ever read: nothing is written under it (a prepared copy goes to
``data.cache_dir``, outputs to the run directory). Sample ids are the file names without their
extension (Unicode and spaces are fine; compared in Unicode NFC form, so a macOS-decomposed
file name matches the same id typed in a split file). Names starting with "." are skipped.

Splits. What the split files give decides the rest, in memory, never saved:

* none (no splits/ folder): an 80/20 train/val split of every id drawn with SPLIT_SEED,
  recomputed on each load: the same for every experiment seed, so runs over several seeds are
  scored on one val set. Write splits/train.txt and val.txt to choose the split yourself;
* val.txt (and perhaps test.txt) without train.txt: train is every id listed in neither;
* test.txt alone: the other ids are split 80/20 into train/val with SPLIT_SEED, as above;
* train.txt without val.txt: refused, since which ids to hold out is the user's call.

An id listed twice (in one file or in two), or with no image, is an error naming file and line.
``classes.yaml`` is validated by :func:`read_classes`.
"""

from __future__ import annotations

import difflib
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from s4al_ray import storage
from s4al_ray.data.io import DatasetError, image_size, storage_problem
from s4al_ray.data.manifest import DatasetInfo, make_manifest
from s4al_ray.yamlfile import YamlError, load_yaml

__all__ = ["DatasetError", "load_folder_dataset", "read_classes", "split_key"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
CLASS_KEYS = ("classes", "colors", "ignore_index")
VAL_FRACTION = 0.2
# The split made when no split files are given: fixed, never the experiment seed.
SPLIT_SEED = 0
MAX_NAMED = 20
EXAMPLE = "e.g. 'classes: [background, road, car]' (names in class-id order)"


def _stem(uri: str) -> str:
    return unicodedata.normalize("NFC", os.path.splitext(uri.rstrip("/").rsplit("/", 1)[-1])[0])


def _listing(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


# -- classes.yaml


def read_classes(root: str) -> tuple[list[str], int, list[list[int]] | None]:
    """(class names, ignore index, colours) from ``<root>/classes.yaml``; colours are None when
    absent or unusable (a palette is cosmetic: it never fails a dataset)."""
    uri = storage.join(root, "classes.yaml")
    if not storage.exists(uri):
        raise DatasetError(
            f"{uri} is missing: a folder dataset needs a classes.yaml with "
            "'classes: [name, ...]' (optional 'colors', 'ignore_index')"
        )
    try:
        data = load_yaml(storage.read_bytes(uri).decode("utf-8-sig"), uri)
    except YamlError as err:
        raise DatasetError(str(err)) from None
    except UnicodeDecodeError:
        raise DatasetError(f"{uri} is not UTF-8 text: save it as UTF-8") from None
    classes, ignore = _validate_classes(uri, data)
    return classes, ignore, _colors(data.get("colors"), len(classes))


def _validate_classes(uri: str, data: object) -> tuple[list[str], int]:
    if data is None:
        raise DatasetError(f"{uri} is empty: list the class names, {EXAMPLE}")
    if isinstance(data, list):
        raise DatasetError(
            f"{uri} holds a list, but must be a mapping: put the names under a 'classes:' key, "
            f"{EXAMPLE}"
        )
    if not isinstance(data, dict):
        raise DatasetError(f"{uri} must be a mapping with a 'classes' list, {EXAMPLE}")
    for key in data:
        if key not in CLASS_KEYS:
            close = difflib.get_close_matches(str(key), CLASS_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DatasetError(
                f"{uri}: unknown key '{key}'{hint}; the keys are {', '.join(CLASS_KEYS)}"
            )
    classes = data.get("classes")
    if isinstance(classes, dict):
        raise DatasetError(
            f"{uri}: 'classes' must be a list of names in class-id order, not a mapping, {EXAMPLE}"
        )
    if not isinstance(classes, list) or not classes:
        raise DatasetError(f"{uri}: 'classes' must be a non-empty list of names, {EXAMPLE}")
    first: dict[str, int] = {}
    for cid, name in enumerate(classes):
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(
                f"{uri}: class {cid} is {name!r}, not a name; write each name as text "
                "(quote names YAML reads otherwise, e.g. 'yes', '1')"
            )
        if name in first:
            raise DatasetError(
                f"{uri}: class name '{name}' is given twice (ids {first[name]} and {cid}); "
                "class names must be unique"
            )
        first[name] = cid
    if len(classes) > 255:
        raise DatasetError(
            f"{uri}: {len(classes)} classes do not fit 8-bit masks (at most 255 classes, "
            "as one of 0-255 is the ignore index)"
        )
    ignore = data.get("ignore_index", 255)
    if isinstance(ignore, bool) or not isinstance(ignore, int):
        raise DatasetError(
            f"{uri}: ignore_index must be an integer 0-255 (the mask value of unlabelled "
            f"pixels, normally 255), not {ignore!r}"
        )
    if not 0 <= ignore <= 255:
        raise DatasetError(
            f"{uri}: ignore_index {ignore} is outside 0-255, the values an 8-bit mask holds; "
            "use 255"
        )
    if ignore < len(classes):
        raise DatasetError(
            f"{uri}: ignore_index {ignore} is the id of class '{classes[ignore]}' (class ids "
            f"are 0-{len(classes) - 1}), whose pixels would all be ignored; use a value above "
            f"{len(classes) - 1}, normally 255"
        )
    return classes, ignore


def _colors(colors: object, num_classes: int) -> list[list[int]] | None:
    """One RGB per class (extra channels such as alpha dropped), or None."""
    if not isinstance(colors, list) or len(colors) != num_classes:
        return None
    try:
        palette = [[int(v) for v in c[:3]] for c in colors]
    except (TypeError, ValueError):
        return None
    return palette if all(len(c) == 3 for c in palette) else None


# -- Split files


def _split_files(root: str) -> dict[str, str]:
    """``{file name: uri}`` of the files in ``<root>/splits``."""
    return {_listing(u): u for u in storage.list_files(storage.join(root, "splits"))}


def split_key(root: str, seed: int) -> str:
    """What the folder dataset's split depends on besides its files: the seed when the split is
    made here (no train.txt nor val.txt), nothing otherwise. Part of a prepared cache's key."""
    files = _split_files(storage.absolute(root))
    return "" if {"train.txt", "val.txt"} & set(files) else f"seed {seed}"


def _read_lines(uri: str) -> list[tuple[int, str]]:
    """(line number, id) of each non-blank line."""
    try:
        text = storage.read_bytes(uri).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(
            f"{uri} is not UTF-8 text: save it as UTF-8, one sample id per line"
        ) from None
    return [
        (number, unicodedata.normalize("NFC", line.strip()))
        for number, line in enumerate(text.split("\n"), 1)
        if line.strip()
    ]


def _suggest(sample_id: str, images: dict[str, str]) -> str:
    stem = _stem(sample_id)
    if stem != sample_id and stem in images:
        return f" (write {stem!r}: an id is the file name without folder or extension)"
    close = (
        difflib.get_close_matches(sample_id, list(images), n=1, cutoff=0.8)
        if len(images) < 5000
        else []
    )
    return f" (did you mean {close[0]!r}?)" if close else ""


def _listed_problems(
    given: dict[str, tuple[str, list]], images: dict[str, str], image_dir: str
) -> list[str]:
    where: dict[str, tuple[str, int]] = {}
    problems = []
    for uri, lines in given.values():
        for number, sid in lines:
            if sid in where:
                first_uri, first_line = where[sid]
                if first_uri == uri:
                    problems.append(
                        f"{uri} line {number}: {sid!r} is listed twice (first at line "
                        f"{first_line}); remove one"
                    )
                else:
                    problems.append(
                        f"{sid!r} is listed in two splits, {first_uri} line {first_line} and "
                        f"{uri} line {number}: a sample belongs to one split, remove it from one"
                    )
                continue
            where[sid] = (uri, number)
            if sid not in images:
                hint = _suggest(sid, images) if len(problems) < MAX_NAMED else ""
                problems.append(
                    f"{uri} line {number}: {sid!r} has no image in {image_dir}{hint}; fix the id "
                    "or remove the line"
                )
    return problems


def _seeded(ids: list[str], seed: int) -> dict[str, list[str]]:
    order = np.random.default_rng(seed).permutation(len(ids))
    num_val = max(1, int(round(len(ids) * VAL_FRACTION)))
    return {
        "train": sorted(ids[i] for i in order[num_val:]),
        "val": sorted(ids[i] for i in order[:num_val]),
    }


def _splits(root: str, images: dict[str, str], seed: int) -> dict[str, list[str]]:
    files = _split_files(root)
    folder = storage.join(root, "splits")
    given = {
        s: (files[f"{s}.txt"], _read_lines(files[f"{s}.txt"]))
        for s in SPLITS
        if f"{s}.txt" in files
    }
    other = sorted(n for n in files if n.endswith(".txt") and n[:-4] not in SPLITS)
    if not given and other:
        raise DatasetError(
            f"{folder} holds {', '.join(other)} but none of train.txt, val.txt, test.txt: "
            "rename the split files (or remove them to get a seeded 80/20 train/val split)"
        )
    problems = _listed_problems(given, images, storage.join(root, "images"))
    if problems:
        more = f"\n  ... and {len(problems) - MAX_NAMED} more" if len(problems) > MAX_NAMED else ""
        raise DatasetError(
            f"{len(problems)} problem(s) in the split files:\n  "
            + "\n  ".join(problems[:MAX_NAMED])
            + more
        )
    if "train" in given and "val" not in given:
        hint = f" (found {', '.join(other)}: is that the val list?)" if other else ""
        raise DatasetError(
            f"{given['train'][0]} is given but {storage.join(folder, 'val.txt')} is missing"
            f"{hint}: add val.txt listing the validation ids, one per line (a run needs train "
            "and val), or remove the split files to get a seeded 80/20 train/val split"
        )
    splits = {s: [sid for _, sid in lines] for s, (_, lines) in given.items()}
    rest = sorted(set(images) - {sid for members in splits.values() for sid in members})
    if "train" not in given and "val" in given:
        if not rest:
            raise DatasetError(
                f"every id is listed in {', '.join(u for u, _ in given.values())}: none is "
                f"left for train; add {storage.join(folder, 'train.txt')} or list fewer ids"
            )
        splits["train"] = rest
    elif "train" not in given:  # nothing given, or test.txt alone
        if len(rest) < 2:
            raise DatasetError(
                f"{len(rest)} sample(s) outside the split files: too few for a train/val "
                f"split; add images or write {folder}/train.txt and val.txt"
            )
        splits.update(_seeded(rest, seed))
    return {s: splits[s] for s in SPLITS if s in splits}


# -- Loading


def _by_id(uris: list[str], what: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for uri in uris:
        sid = _stem(uri)
        if sid in found:
            raise DatasetError(
                f"{found[sid]} and {uri} are both {what} for sample id {sid!r} (an id is the "
                "file name without extension): keep one"
            )
        found[sid] = uri
    return found


def _files(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    return [
        u
        for u in storage.list_files(folder)
        if u.lower().endswith(suffixes) and not _listing(u).startswith(".")
    ]


def _sizes(uris: list[str]) -> list[tuple[int, int]]:
    """Image sizes from the headers, read in threads; one DatasetError naming every bad file."""

    def size(uri: str) -> tuple[int, int] | str:
        try:
            return image_size(uri)
        except DatasetError as err:
            return str(err)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as pool:
        sizes = list(pool.map(size, uris))
    errors = [s for s in sizes if isinstance(s, str)]
    if errors:
        more = f"\n  ... and {len(errors) - MAX_NAMED} more" if len(errors) > MAX_NAMED else ""
        raise DatasetError(
            f"{len(errors)} image(s) cannot be read (fix or remove them):\n  "
            + "\n  ".join(errors[:MAX_NAMED])
            + more
        )
    return sizes  # type: ignore[return-value]


def load_folder_dataset(root: str, seed: int = SPLIT_SEED) -> DatasetInfo:
    """The folder dataset at ``root`` (local or s3://); ``seed`` makes a split if none is given.
    Bad files, split lists and classes.yaml raise :class:`DatasetError` naming them."""
    root = storage.absolute(root)
    try:
        return _load(root, seed)
    except OSError as err:
        raise storage_problem(root, err) from None


def _load(root: str, seed: int) -> DatasetInfo:
    classes, ignore, colors = read_classes(root)
    image_dir, mask_dir = storage.join(root, "images"), storage.join(root, "masks")
    images = _by_id(_files(image_dir, IMAGE_SUFFIXES), "images")
    masks = _by_id(_files(mask_dir, (".png",)), "masks")
    if not images:
        raise DatasetError(f"no images (*.png, *.jpg) under {image_dir}")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DatasetError(
            f"{len(missing)} images have no mask under {mask_dir} (expected <id>.png): "
            + ", ".join(images[s] for s in missing[:5])
        )
    members = [(split, sid) for split, ids in _splits(root, images, seed).items() for sid in ids]
    sizes = _sizes([images[sid] for _, sid in members])
    rows = [
        {
            "sample_id": sid,
            "image_uri": images[sid],
            "mask_uri": masks[sid],
            "split": split,
            "height": height,
            "width": width,
        }
        for (split, sid), (height, width) in zip(members, sizes)
    ]
    return DatasetInfo(make_manifest(rows), classes, ignore, colors=colors)
