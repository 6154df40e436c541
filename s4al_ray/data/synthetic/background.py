"""The street a synthetic scene stands on: its one-point-perspective geometry (:class:`Street`)
and the background layers drawn before any object (:func:`draw_background`: sky, buildings,
ground).
"""

from __future__ import annotations

import numpy as np

from s4al_ray.data.synthetic.classes import BUILDING, ROAD, SIDEWALK, SKY, VEGETATION
from s4al_ray.data.synthetic.paint import Canvas, Color, Tex, grey, jitter, pick, rgb, smooth_noise

# -- Scene geometry: a one-point-perspective street


class Street:
    """Horizon, vanishing point and the road/sidewalk edge lines converging on it."""

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.horizon = h * rng.uniform(0.36, 0.47)
        self.vx = w * rng.uniform(0.38, 0.62)
        half = w * rng.uniform(0.42, 0.62)  # road half-width at the bottom row
        centre = self.vx + w * rng.uniform(-0.12, 0.12)
        self.road_l, self.road_r = centre - half, centre + half
        self.walk_l = self.road_l - w * rng.uniform(0.18, 0.4)
        self.walk_r = self.road_r + w * rng.uniform(0.18, 0.4)
        self.centre = centre

    def depth(self, y: np.ndarray | float) -> np.ndarray | float:
        """0 at the horizon, 1 at the bottom row: object scale for things standing at row y."""
        return np.clip((y - self.horizon) / (self.h - self.horizon), 0.0, 1.0)

    def edge_x(self, bottom_x: float, y: np.ndarray | float) -> np.ndarray | float:
        """x of the line from the vanishing point to ``bottom_x`` on the bottom row, at row y."""
        return self.vx + (bottom_x - self.vx) * self.depth(y)

    def between(self, c: Canvas, left_bottom: float, right_bottom: float) -> np.ndarray:
        below = c.yy >= self.horizon
        return (
            below
            & (c.xx >= self.edge_x(left_bottom, c.yy))
            & (c.xx < self.edge_x(right_bottom, c.yy))
        )


# -- Background layers


def _draw_sky(rng: np.random.Generator, c: Canvas) -> None:
    # Overcast skies are grey like concrete and asphalt: one of the intended colour overlaps.
    kind = rng.choice(3, p=[0.5, 0.35, 0.15])
    if kind == 0:  # clear blue
        top, bottom = jitter(rng, rgb(70, 120, 200), 25), jitter(rng, rgb(175, 205, 235), 20)
    elif kind == 1:  # overcast
        top, bottom = grey(rng, 150, 200), grey(rng, 190, 235)
    else:  # dusk
        top, bottom = jitter(rng, rgb(90, 90, 150), 25), jitter(rng, rgb(230, 170, 120), 25)
    t = (c.yy[:, :1] / c.h)[:, :, None]  # (H, 1, 1): the gradient is per row
    gradient = top * (1 - t) + bottom * t
    clouds = np.clip(smooth_noise(rng, c.h, c.w, 5), 0, None) * np.float32(rng.uniform(10, 45))
    grain = rng.standard_normal((c.h, c.w), dtype=np.float32) * np.float32(3.0)
    tex = gradient + (clouds + grain)[:, :, None]
    c.paint(np.ones((c.h, c.w), bool), tex, SKY)


def _building_color(rng: np.random.Generator) -> Color:
    return pick(
        rng,
        [
            lambda: grey(rng, 70, 190),  # concrete, as grey as the road
            lambda: grey(rng, 70, 190),
            lambda: jitter(rng, rgb(150, 80, 60), 25),  # brick
            lambda: jitter(rng, rgb(200, 180, 140), 25),  # sandstone / beige
            lambda: jitter(rng, rgb(120, 140, 165), 20),  # blue-grey glass-ish
            lambda: jitter(rng, rgb(225, 220, 210), 15),  # white render
            lambda: jitter(rng, rgb(110, 130, 90), 20),  # greenish paint, near vegetation
        ],
    )


def _draw_building(
    rng: np.random.Generator, c: Canvas, x0: float, x1: float, top: float, scale: float
) -> None:
    region = c.rect(x0, top, x1, c.h)
    tex = Tex(_building_color(rng), fine=5, coarse=8, cells=6)
    c.paint(region, tex, BUILDING)
    # Window grid: a periodic pattern in facade coordinates, scaled by distance.
    period_x = max(3.0, c.w * rng.uniform(0.04, 0.08) * scale)
    period_y = max(3.0, period_x * rng.uniform(0.9, 1.5))
    fill_x, fill_y = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.6)
    # Evaluated on the facade's bounding box only: the modulo pattern is the costly part.
    box = (slice(max(0, int(top)), c.h), slice(max(0, int(x0)), max(0, min(c.w, int(x1) + 1))))
    xx, yy = c.xx[box], c.yy[box]
    fx = ((xx - x0 - 0.3 * period_x) % period_x) < fill_x * period_x
    fy = ((yy - top - 0.3 * period_y) % period_y) < fill_y * period_y
    windows = np.zeros_like(region)
    windows[box] = region[box] & fx & fy & (xx < x1 - 0.3 * period_x)
    if rng.random() < 0.5:  # dark glass
        win = grey(rng, 20, 70, tint=10)
    else:  # sky reflections: blue-ish windows overlap with sky colours
        win = jitter(rng, rgb(120, 150, 190), 35)
    c.paint(windows, Tex(win, fine=4, coarse=10, cells=10), BUILDING)


def _draw_buildings(rng: np.random.Generator, c: Canvas, st: Street) -> None:
    # Grass/hedge ground first: it shows below the horizon where there is a gap between buildings.
    grass = Tex(jitter(rng, rgb(80, 115, 50), 20), fine=14, coarse=10, cells=10)
    c.paint(c.yy >= st.horizon, grass, VEGETATION)
    x = -c.w * rng.uniform(0.0, 0.1)
    while x < c.w:
        bw = c.w * rng.uniform(0.08, 0.26)
        if rng.random() < 0.15:  # a gap showing sky
            x += c.w * rng.uniform(0.02, 0.07)
            continue
        # Buildings near the vanishing point are far away, hence lower and finer.
        dist = min(1.0, abs(x + bw / 2 - st.vx) / (0.5 * c.w))
        top = st.horizon - c.h * (rng.uniform(0.04, 0.1) + dist * rng.uniform(0.08, 0.3))
        _draw_building(rng, c, x, x + bw, top, 0.4 + 0.6 * dist)
        x += bw


def _draw_ground(rng: np.random.Generator, c: Canvas, st: Street) -> None:
    _draw_sidewalks(rng, c, st)
    _draw_road(rng, c, st)


def _draw_sidewalks(rng: np.random.Generator, c: Canvas, st: Street) -> None:
    base = pick(
        rng,
        [
            lambda: grey(rng, 110, 190),  # concrete slabs, close to road and building greys
            lambda: grey(rng, 110, 190),
            lambda: jitter(rng, rgb(170, 120, 105), 20),  # red pavers
            lambda: jitter(rng, rgb(185, 170, 140), 20),  # sandy tiles
        ],
    )
    tex = Tex(base, fine=7, coarse=8, cells=10)
    region = st.between(c, st.walk_l, st.road_l) | st.between(c, st.road_r, st.walk_r)
    # Tile joints: rows spaced in perspective (equal steps of 1/depth, denser far away).
    d = np.maximum(st.depth(c.yy), 1e-3)
    joints = ((1.0 / d) * rng.uniform(1.5, 3.0) % 1.0) < 0.12
    c.paint(region, tex, SIDEWALK)
    c.paint(region & joints, Tex(base * 0.75, fine=7), SIDEWALK)
    # Curb: a lighter strip along the road edge.
    curb_w = 0.035 * c.w
    curb = st.between(c, st.road_l - curb_w, st.road_l) | st.between(
        c, st.road_r, st.road_r + curb_w
    )
    c.paint(curb, Tex(np.clip(base * 1.15 + 15, 0, 255), fine=7), SIDEWALK)


def _draw_road(rng: np.random.Generator, c: Canvas, st: Street) -> None:
    asphalt = grey(rng, 60, 140, tint=5)
    tex = Tex(asphalt, fine=9, coarse=12, cells=10)
    region = st.between(c, st.road_l, st.road_r)
    c.paint(region, tex, ROAD)
    # Lane markings stay class road: white paint on road must not be confused with signs.
    paint = jitter(rng, rgb(235, 235, 225), 15) if rng.random() < 0.75 else rgb(230, 190, 40)
    d = np.maximum(st.depth(c.yy), 1e-3)
    half = 0.5 * max(1.0, 0.018 * c.w) * d + 0.35
    dashed = ((1.0 / d) * rng.uniform(1.0, 2.0) % 1.0) < 0.5
    centre = np.abs(c.xx - st.edge_x(st.centre, c.yy)) < half
    c.paint(region & centre & dashed, paint, ROAD)
    for side in (st.road_l, st.road_r):  # solid edge lines just inside the curb
        inner = side + (0.04 * c.w if side == st.road_l else -0.04 * c.w)
        if rng.random() < 0.6:
            c.paint(region & (np.abs(c.xx - st.edge_x(inner, c.yy)) < half), paint, ROAD)


def draw_background(rng: np.random.Generator, c: Canvas, st: Street) -> None:
    """Sky, buildings, then the ground, in that order (the order of their random draws)."""
    _draw_sky(rng, c)
    _draw_buildings(rng, c, st)
    _draw_ground(rng, c, st)
