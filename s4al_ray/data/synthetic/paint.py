"""Painting on a synthetic scene: the canvas (image + class mask), textures, colour helpers,
smooth noise, and the photometric finish applied to the whole image.

Everything draws from the one generator it is handed, in a fixed order: a sample's bytes depend
on its seed alone (see :mod:`s4al_ray.data.synthetic`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

Color = np.ndarray  # shape (3,), float32 in 0..255


@dataclass(frozen=True)
class Tex:
    """A texture: base colour + per-pixel (fine) and blotchy (coarse) luminance noise.

    Evaluated only on the pixels being painted, which keeps drawing cheap.
    """

    base: Color
    fine: float = 0.0
    coarse: float = 0.0
    cells: int = 8


class Canvas:
    """Float RGB image plus class mask; painting a region sets both (mask = topmost object)."""

    def __init__(
        self, rng: np.random.Generator, height: int, width: int, thin_scale: float = 1.0
    ) -> None:
        self.rng = rng
        self.h, self.w = height, width
        # Size multiple of the thin and small objects (poles, signs, pedestrians' width).
        self.thin_scale = float(thin_scale)
        self.img = np.zeros((height, width, 3), np.float32)
        self.mask = np.zeros((height, width), np.uint8)
        yy, xx = np.mgrid[0:height, 0:width]
        # Pixel centres, so sub-pixel geometry (thin poles far away) rounds consistently.
        self.yy = yy.astype(np.float32) + 0.5
        self.xx = xx.astype(np.float32) + 0.5
        self._smooth: dict[int, np.ndarray] = {}

    def smooth_at(self, cells: int, idx: np.ndarray) -> np.ndarray:
        """Smooth noise at flat pixel indices ``idx``: a random HxW window of a cached
        double-size field (one field per scale), so textures sharing a scale still differ."""
        if cells not in self._smooth:
            self._smooth[cells] = smooth_noise(self.rng, 2 * self.h, 2 * self.w, 2 * cells)
        oy, ox = int(self.rng.integers(0, self.h)), int(self.rng.integers(0, self.w))
        rows, cols = np.divmod(idx, self.w)
        return self._smooth[cells][rows + oy, cols + ox]

    def paint(self, region: np.ndarray, color: np.ndarray | Tex, cls: int | None) -> None:
        """Paint ``region`` with a flat colour (3,), a full-canvas array (H, W, 3) or a Tex."""
        idx = np.flatnonzero(region)  # one boolean scan, then cheap integer gathers
        if idx.size == 0:
            return
        img = self.img.reshape(-1, 3)
        if isinstance(color, Tex):
            lum = self.rng.standard_normal(idx.size, dtype=np.float32) * np.float32(color.fine)
            if color.coarse > 0:
                lum += color.coarse * self.smooth_at(color.cells, idx)
            img[idx] = color.base[None, :] + lum[:, None]
        else:
            img[idx] = color.reshape(-1, 3)[idx] if color.ndim == 3 else color
        if cls is not None:
            self.mask.reshape(-1)[idx] = cls

    def rect(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        # Outer product of 1-D row/column tests: far cheaper than four full-canvas compares.
        rows = (self.yy[:, 0] >= y0) & (self.yy[:, 0] < y1)
        cols = (self.xx[0] >= x0) & (self.xx[0] < x1)
        return rows[:, None] & cols[None, :]

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        return ((self.xx - cx) / rx) ** 2 + ((self.yy - cy) / ry) ** 2 <= 1.0


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise (H, W), roughly N(0, 1): bilinear upsampling of a coarse grid."""
    gh, gw = max(2, cells), max(2, int(round(cells * w / max(h, 1))))
    grid = rng.normal(size=(gh, gw)).astype(np.float32)
    # Pillow's C resize is deterministic and far faster than numpy gather-interpolation.
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR))


def rgb(*values: float) -> Color:
    return np.asarray(values, np.float32)


def jitter(rng: np.random.Generator, base: Color, amount: float) -> Color:
    return np.clip(base + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


def grey(rng: np.random.Generator, lo: float, hi: float, tint: float = 6.0) -> Color:
    """A grey with a slight tint: the colour shared by road, buildings, cars, poles, sky."""
    return jitter(rng, rgb(*([rng.uniform(lo, hi)] * 3)), tint)


def pick(rng: np.random.Generator, options: list[Callable[[], Color]]) -> Color:
    return options[int(rng.integers(len(options)))]()


# -- Photometric finish


def _blur(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge replication: softens the drawn edges slightly."""
    p = np.pad(img, ((1, 1), (0, 0), (0, 0)), mode="edge")
    img = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    return 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]


def photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    # Per-image exposure/contrast/white balance: the same class differs between images.
    contrast = np.float32(rng.uniform(0.65, 1.3))
    offset = (128.0 + rng.uniform(-35, 35) + rng.uniform(-12, 12, 3)).astype(np.float32)
    img = (img - np.float32(128.0)) * contrast + offset  # offset = brightness + colour cast
    if rng.random() < 0.8:
        img = _blur(img)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(2, 8))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
