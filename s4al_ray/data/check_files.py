"""Reading one sample for :mod:`s4al_ray.data.check`: its image, its mask, what is wrong.

Problems are ``(kind, message)`` pairs whose message names the file to fix (the source, when the
file checked is a prepared copy); notes are things worth a warning (EXIF rotation, transparency,
JPEG masks), gathered into one line per kind by :func:`note_warnings`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from s4al_ray import storage
from s4al_ray.data.io import (
    ORIENTATION_NAMES,
    QUARTER_TURNS,
    DatasetError,
    displayed_size,
    mask_array,
    open_image,
    orientation,
)
from s4al_ray.data.manifest import DatasetInfo

# Per kind of problem, how many files are named before the rest are only counted: a wholly
# wrong dataset should give a readable report, not 3,000 lines.
MAX_NAMED = 20


@dataclass
class SampleResult:
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, message naming a file)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (warning kind, file)
    counts: np.ndarray | None = None  # bincount of mask values (after label_map), 256 bins
    size: tuple[int, int] | None = None  # the image's (height, width), as decoded
    turn: int = 1  # the image's EXIF orientation


def shown_name(info: DatasetInfo, uri: str) -> str:
    """How a file is named in the report: the source to fix, and the copy if it is one."""
    source = info.source_of(uri)
    return uri if source == uri else f"{source} (prepared copy {uri})"


def _read(uri: str, shown: str, what: str, result: SampleResult) -> bytes | None:
    try:
        return storage.read_bytes(uri)
    except FileNotFoundError:
        result.problems.append((f"missing {what}", f"{shown}: {what} file is missing"))
        return None


def _check_image(uri: str, shown: str, result: SampleResult) -> None:
    """Sets ``result.size`` (None if unreadable) and notes rotation and transparency."""
    data = _read(uri, shown, "image", result)
    if data is None:
        return
    try:
        with open_image(data, shown) as img:
            size, turn = displayed_size(img), orientation(img)
            alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
            # PNG verify walks every chunk and its CRC without decoding: catches truncation
            # cheaply. For JPEG and others verify checks little, so decode them instead; and
            # decode an image with alpha, to see whether any of it is transparent.
            if img.format == "PNG" and not alpha:
                img.verify()
            else:
                img.load()
                if alpha and img.convert("RGBA").getchannel("A").getextrema()[0] < 255:
                    result.notes.append(("alpha", shown))
    except DatasetError as err:  # names the file
        result.problems.append(("unreadable image", str(err)))
        return
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for a bad file
        result.problems.append(
            ("unreadable image", f"{shown}: unreadable or truncated image ({err})")
        )
        return
    result.size, result.turn = size, turn
    if turn != 1:
        result.notes.append(("orientation", f"{shown} ({turn}: {ORIENTATION_NAMES[turn]})"))


def _mismatch(shown: str, mask: tuple[int, ...], image: str, result: SampleResult) -> str:
    size = result.size or (0, 0)
    text = f"{shown}: mask is {_hw(mask)} but image {image} is {_hw(size)}"
    if result.turn in QUARTER_TURNS and tuple(mask) == size[::-1]:
        text += (
            f" once its EXIF orientation {result.turn} ({ORIENTATION_NAMES[result.turn]}) is "
            "applied, as viewers show it; the mask fits the stored, unrotated pixels: rotate "
            "the mask to match, or re-save the image upright without the orientation tag"
        )
    return text


def _check_mask(row: dict, info: DatasetInfo, result: SampleResult) -> None:
    shown = shown_name(info, row["mask_uri"])
    data = _read(row["mask_uri"], shown, "mask", result)
    if data is None:
        return
    try:
        with open_image(data, shown) as img:
            turn, kind = orientation(img), img.format
            mask = mask_array(img, shown)
    except DatasetError as err:  # names the file
        result.problems.append(("unreadable mask", str(err)))
        return
    except Exception as err:  # noqa: BLE001
        result.problems.append(("unreadable mask", f"{shown}: unreadable or truncated ({err})"))
        return
    if turn != 1:
        result.notes.append(("orientation", f"{shown} ({turn}: {ORIENTATION_NAMES[turn]})"))
    if kind == "JPEG":
        result.notes.append(("jpeg mask", shown))
    if info.label_map is not None:
        mask = info.label_map[mask]
    result.counts = np.bincount(mask.ravel(), minlength=256)
    if result.size is not None and mask.shape != result.size:
        image = shown_name(info, row["image_uri"])
        result.problems.append(("size mismatch", _mismatch(shown, mask.shape, image, result)))
    bad = [
        v for v in np.flatnonzero(result.counts) if v >= info.num_classes and v != info.ignore_index
    ]
    if bad:
        pixels = int(result.counts[bad].sum())
        result.problems.append(
            (
                "label values",
                f"{shown}: values {', '.join(map(str, bad))} ({pixels} px) are not class "
                f"ids 0-{info.num_classes - 1} nor ignore {info.ignore_index}",
            )
        )


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]} (HxW)"


def check_sample(row: dict, info: DatasetInfo) -> SampleResult:
    result = SampleResult()
    _check_image(row["image_uri"], shown_name(info, row["image_uri"]), result)
    _check_mask(row, info, result)
    declared = (row["height"], row["width"])
    if result.size is not None and result.size != declared:
        # The pool's region grids and the crops are sized from the manifest, not the file.
        result.problems.append(
            (
                "manifest",
                f"{shown_name(info, row['image_uri'])}: image is {_hw(result.size)} but the "
                f"manifest says {_hw(declared)}",
            )
        )
    return result


NOTES = {
    "orientation": "file(s) have an EXIF orientation other than 1 and are read rotated, as "
    "viewers and annotation tools show them (check that their masks were drawn that way)",
    "alpha": "image(s) have transparent pixels: alpha is dropped, the colours under it are used",
    "jpeg mask": "mask(s) are JPEG data, whose lossy edges hold values between class ids: save "
    "masks as PNG",
}


def note_warnings(results: list[SampleResult]) -> list[str]:
    by_kind: dict[str, list[str]] = defaultdict(list)
    for result in results:
        for kind, name in result.notes:
            by_kind[kind].append(name)
    lines = []
    for kind, names in by_kind.items():
        more = f" ... and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
        lines.append(f"{len(names)} {NOTES[kind]}: {', '.join(names[:MAX_NAMED])}{more}")
    return lines
