"""The synthetic dataset's label set: class names, their ids as drawn, and the palette."""

from __future__ import annotations

SYNTHETIC_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "sky",
    "vegetation",
    "car",
    "pedestrian",
    "pole",
    "sign",
)
# Cityscapes palette for the same classes, so visualisations look familiar.
SYNTHETIC_COLORS: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (70, 130, 180),
    (107, 142, 35),
    (0, 0, 142),
    (220, 20, 60),
    (153, 153, 153),
    (220, 220, 0),
)
ROAD, SIDEWALK, BUILDING, SKY, VEGETATION, CAR, PEDESTRIAN, POLE, SIGN = range(9)
