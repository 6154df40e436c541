"""Decoding images and masks from local paths or s3:// URIs, and PNG encoding of label maps."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from s4al_ray import storage


def decode_image(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def decode_mask(data: bytes) -> np.ndarray:
    """(H, W) uint8 label map; palette PNGs give their indices, not their colours."""
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"mask has mode {img.mode}; expected a single-channel PNG")
        arr = np.asarray(img)
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255:
            raise ValueError(f"mask values up to {arr.max()} do not fit uint8")
        arr = arr.astype(np.uint8)
    return arr


def load_image(uri: str) -> np.ndarray:
    return decode_image(storage.read_bytes(uri))


def load_mask(uri: str) -> np.ndarray:
    try:
        return decode_mask(storage.read_bytes(uri))
    except ValueError as err:
        raise ValueError(f"{uri}: {err}") from err


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG of a (H, W) uint8 map: label maps compress far better than raw bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()


def image_size(uri: str) -> tuple[int, int]:
    """(height, width) from the file header only."""
    with Image.open(io.BytesIO(storage.read_bytes(uri))) as img:
        return img.height, img.width
