"""Preparing one sample of the cache (:mod:`s4al_ray.data.prepare`): read the source mask and
image, check that their sizes agree, map the mask through the label table, resize both and write
them. Every error names the source files."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from s4al_ray import storage
from s4al_ray.data.io import (
    DatasetError,
    decode_image,
    decode_mask,
    encode_png,
    open_image,
    orientation,
)


class SampleSpec(Protocol):
    """What of a :class:`s4al_ray.data.prepare.CacheSpec` one sample needs."""

    size: tuple[int, int] | None
    label_map: np.ndarray | None
    known_values: frozenset[int]


@dataclass
class Done:
    row: dict | None = None  # manifest row (URIs inside the cache relative to it)
    error: str | None = None
    skipped: bool = False


def delete(uri: str) -> None:
    if storage.exists(uri):
        fs, path = storage.filesystem(uri)
        fs.delete_file(path)


def existing_outputs(out: str) -> set[str]:
    """Names already written (``images/x.png``, ``masks/x.png``): one listing, not a stat each."""
    names = set()
    for sub in ("images", "masks"):
        uris = storage.list_files(storage.join(out, sub))
        names |= {f"{sub}/{u.rsplit('/', 1)[-1]}" for u in uris}
    return names


class SampleError(Exception):
    """A sample that cannot be prepared; the message names its files."""


def mismatch(row: dict, image: tuple[int, ...], mask: tuple[int, ...]) -> SampleError:
    turned = (
        "; they match turned a quarter: if the image has an EXIF orientation (applied when it "
        "is read), rotate the mask to match or re-save the image upright"
        if tuple(image[::-1]) == tuple(mask)
        else ""
    )
    return SampleError(
        f"{row['mask_uri']}: mask is {mask[0]}x{mask[1]} but image {row['image_uri']} is "
        f"{image[0]}x{image[1]} (HxW){turned}"
    )


def resized_image(
    row: dict, size: tuple[int, int], mask_shape: tuple[int, ...]
) -> tuple[bytes, int]:
    """PNG bytes of the image at ``size``, and the EXIF orientation that was applied."""
    uri = row["image_uri"]
    data = storage.read_bytes(uri)
    with open_image(data, uri) as img:
        turn = orientation(img)
    image = decode_image(data, uri)
    if image.shape[:2] != mask_shape:
        raise mismatch(row, image.shape[:2], mask_shape)
    if image.shape[:2] == size and data[:8] == b"\x89PNG\r\n\x1a\n":
        return data, turn  # the right size and lossless: copy (decodes the same), no re-encode
    resized = Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR)
    buffer = io.BytesIO()
    resized.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), turn


def prepare_sample(
    row: dict, spec: SampleSpec, out: str, existing: set[str], current: bool, notes: set[str]
) -> Done:
    """Prepare one sample; ``current``: its outputs, if any, were made from its files as they
    are now (same stamps), so they are kept."""
    sid = row["sample_id"]
    image_name, mask_name = f"images/{sid}.png", f"masks/{sid}.png"
    height, width = spec.size or (row["height"], row["width"])
    image_rel = image_name if spec.size else row["image_uri"]
    entry = {**row, "image_uri": image_rel, "mask_uri": mask_name, "height": height, "width": width}
    if current and mask_name in existing and (not spec.size or image_name in existing):
        return Done(entry, skipped=True)
    turn = 1
    try:
        raw = decode_mask(storage.read_bytes(row["mask_uri"]), row["mask_uri"])
        if spec.size:
            image, turn = resized_image(row, spec.size, raw.shape)
        elif raw.shape != (row["height"], row["width"]):
            raise mismatch(row, (row["height"], row["width"]), raw.shape)
    except (SampleError, DatasetError) as err:  # these name the source file
        return Done(error=str(err))
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes a named error
        return Done(error=f"{row['image_uri']} / {row['mask_uri']}: cannot read ({err})")
    counts = np.bincount(raw.ravel(), minlength=256)
    unknown = {
        int(v): int(counts[v])
        for v in np.flatnonzero(counts)
        if spec.label_map is not None and int(v) not in spec.known_values
    }
    mask = spec.label_map[raw] if spec.label_map is not None else raw
    if spec.size:
        storage.write_bytes(storage.join(out, image_name), image)
        mask = np.asarray(Image.fromarray(mask).resize((spec.size[1], spec.size[0]), Image.NEAREST))
    storage.write_bytes(storage.join(out, mask_name), encode_png(mask))
    # What the build reports is kept beside the cache, so a resumed build still reports it.
    note = storage.join(out, "notes", f"{sid}.json")
    found: dict = {"mask_uri": row["mask_uri"], "values": unknown} if unknown else {}
    if turn != 1:  # the copy is upright: only the source tells that it was turned
        found.update(image_uri=row["image_uri"], turn=turn)
    if found:
        storage.write_text(note, json.dumps(found))
    elif sid in notes:  # from an earlier version of this sample's files
        delete(note)
    return Done(entry)
