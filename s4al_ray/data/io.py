"""Decoding images and masks from local paths or s3:// URIs, and PNG encoding of label maps.

Every reader (the loaders, the dataset check, the prepared cache, training, evaluation) decodes
through here, so they all see the same pixels:

* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): a photo whose Orientation tag
  says "rotate 90" comes back rotated, as image viewers and annotation tools display it, so a
  mask drawn over what the tool showed lines up. Masks follow the same rule (they rarely carry
  EXIF). :func:`image_size` gives the size after rotation, so manifests agree with the decoded
  arrays. The dataset check lists rotated files (a warning) and flags an image whose rotated size
  no longer matches its mask (an error: the mask was drawn on the stored pixels). For PNGs only
  an eXIf chunk ahead of the pixel data counts: it is what Pillow sees without decoding, so
  header and decode cannot disagree.
* Images become RGB: palette ('P'), grey ('L', 'LA', 16-bit), CMYK JPEGs are converted; alpha
  ('RGBA', 'LA', 'PA') is dropped, not composited (the check warns when it is not all opaque).
* Masks must be single-channel: 'L', or 'P', whose *indices* are read (not its colours): that is
  what most annotation tools save. 16-bit masks ('I;16', 'I') are accepted only when every value
  fits 0..255; bilevel ('1') masks read as 0/1.
* The content decides the format, not the file name: a JPEG called ``x.png`` decodes.
* Anything unreadable (empty, truncated, not an image, over Pillow's decompression-bomb limit of
  ``2 * Image.MAX_IMAGE_PIXELS`` pixels) raises :class:`DatasetError` naming the file.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import ExifTags, Image, ImageOps

from s4al_ray import storage

ORIENTATION_TAG = ExifTags.Base.Orientation
# Orientations that swap width and height (a quarter turn, with or without a flip).
QUARTER_TURNS = (5, 6, 7, 8)
# As exiftool names them: what a viewer does to the stored pixels to show them.
ORIENTATION_NAMES = {
    2: "mirror horizontal",
    3: "rotate 180",
    4: "mirror vertical",
    5: "mirror horizontal and rotate 270 CW",
    6: "rotate 90 CW",
    7: "mirror horizontal and rotate 90 CW",
    8: "rotate 270 CW",
}
MASK_MODES = ("L", "P", "1", "I", "I;16", "I;16L", "I;16B")


class DatasetError(ValueError):
    """A dataset problem, naming the files involved and the fix."""


def _where(uri: str) -> str:
    """The prefix naming the file in a message; none for bytes from no file."""
    return f"{uri}: " if uri else ""


def open_image(data: bytes, uri: str = "") -> Image.Image:
    """``Image.open`` of ``data`` (header only); a DatasetError naming ``uri`` if it is empty,
    not an image, or larger than Pillow's decompression-bomb limit."""
    if not data:
        raise DatasetError(f"{_where(uri)}the file is empty (0 bytes); re-export or re-download it")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise DatasetError(
            f"{_where(uri)}refused as too large ({str(err).split(',')[0]}): Pillow's "
            f"decompression-bomb guard allows at most {limit:,} pixels (2 x "
            "PIL.Image.MAX_IMAGE_PIXELS); downscale the image or cut it into tiles"
        ) from None
    except Image.UnidentifiedImageError:
        raise DatasetError(
            f"{_where(uri)}not an image Pillow can read ({len(data):,} bytes starting "
            f"{data[:8]!r}); expected PNG or JPEG: re-export it"
        ) from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for a bad header
        raise DatasetError(
            f"{_where(uri)}unreadable image header ({err}); re-export or re-download it"
        ) from None


def orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 = as stored) of an opened image, read without decoding it."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # PngImageFile.getexif() would decode the whole file to look further
    try:
        value = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - broken EXIF: read the pixels as stored
        return 1
    return value if value in ORIENTATION_NAMES else 1


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """(height, width) after the EXIF orientation is applied."""
    if orientation(img) in QUARTER_TURNS:
        return img.width, img.height
    return img.height, img.width


def _upright(img: Image.Image) -> Image.Image:
    return ImageOps.exif_transpose(img) if orientation(img) != 1 else img


def _decode_error(uri: str, what: str, err: Exception) -> DatasetError:
    return DatasetError(
        f"{_where(uri)}unreadable or truncated {what} ({err}); re-export or re-download it"
    )


def decode_image(data: bytes, uri: str = "") -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied, alpha dropped."""
    with open_image(data, uri) as img:
        try:
            return np.asarray(_upright(img).convert("RGB"))
        except Exception as err:  # noqa: BLE001 - truncated data surfaces here, as OSError etc.
            raise _decode_error(uri, "image", err) from None


def mask_array(img: Image.Image, uri: str = "") -> np.ndarray:
    """(H, W) uint8 label map of an opened mask; palette PNGs give their indices."""
    if img.mode not in MASK_MODES:
        raise DatasetError(
            f"{_where(uri)}mask has mode {img.mode}; a mask holds one class id per pixel: "
            "save it as a single-channel 8-bit PNG (mode L, or P with the ids as indices)"
        )
    try:
        arr = np.asarray(_upright(img))
    except Exception as err:  # noqa: BLE001
        raise _decode_error(uri, "mask", err) from None
    if arr.dtype != np.uint8:
        low, high = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if low < 0 or high > 255:
            raise DatasetError(
                f"{_where(uri)}mask values {low}..{high} do not fit uint8 (0..255); "
                "save the class ids as an 8-bit PNG"
            )
        arr = arr.astype(np.uint8)
    return arr


def decode_mask(data: bytes, uri: str = "") -> np.ndarray:
    """(H, W) uint8 label map; palette PNGs give their indices, not their colours."""
    with open_image(data, uri) as img:
        return mask_array(img, uri)


def load_image(uri: str) -> np.ndarray:
    return decode_image(storage.read_bytes(uri), uri)


def load_mask(uri: str) -> np.ndarray:
    return decode_mask(storage.read_bytes(uri), uri)


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG of a (H, W) uint8 map: label maps compress far better than raw bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()


def image_size(uri: str, head_bytes: int = 1 << 16) -> tuple[int, int]:
    """(height, width) as decoded (EXIF orientation applied), from the file's first bytes: one
    small read, even on S3; the whole file only when its header runs past them (big EXIF)."""
    fs, path = storage.filesystem(uri)
    try:
        with fs.open_input_file(path) as handle:
            head = handle.read(head_bytes)
    except FileNotFoundError:
        raise DatasetError(f"{uri}: no such file") from None
    try:
        with Image.open(io.BytesIO(head)) as img:
            return displayed_size(img)
    except Exception:  # noqa: BLE001 - a header past the first bytes, or no image: see below
        pass
    data = head if len(head) < head_bytes else storage.read_bytes(uri)
    with open_image(data, uri) as img:
        return displayed_size(img)


def storage_problem(uri: str, err: Exception, what: str = "the dataset") -> DatasetError:
    """A DatasetError for storage that cannot be read (endpoint down, no such bucket, access
    denied, permissions), naming the URI, the endpoint and what to check."""
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    if not storage.is_s3(uri):
        return DatasetError(
            f"cannot access {what} at {uri}: {detail}; check the path and its permissions"
        )
    bucket = uri[len(storage.S3_PREFIX) :].split("/", 1)[0]
    endpoint = storage.s3_endpoint() or "AWS S3 (no endpoint override)"
    return DatasetError(
        f"cannot access {what} at {uri} (bucket '{bucket}', endpoint {endpoint}, region "
        f"{storage.s3_region()}): {detail}. Check that the endpoint is reachable (s3_endpoint "
        f"in the config, or {storage.ENDPOINT_ENV}), that the bucket exists and that the AWS "
        "credentials allow reading it"
    )
