"""One synthetic street scene: the street and its background (:mod:`.background`) and the
objects on it, drawn far to near; :func:`render_scene` puts them together.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from s4al_ray.data.synthetic.background import Street, draw_background
from s4al_ray.data.synthetic.classes import CAR, PEDESTRIAN, POLE, SIGN, VEGETATION
from s4al_ray.data.synthetic.paint import Canvas, Color, Tex, grey, jitter, photometric, pick, rgb

# -- Objects, drawn far-to-near so nearer ones occlude farther ones


def _tree(rng: np.random.Generator, c: Canvas, x: float, base_y: float, scale: float) -> None:
    r = c.h * rng.uniform(0.12, 0.22) * scale + 3
    trunk_h = r * rng.uniform(1.0, 1.8)
    trunk_w = max(1.5, r * 0.22)
    crown_y = base_y - trunk_h - 0.6 * r
    # Trunks count as vegetation (as in Cityscapes), brown-grey like poles and buildings.
    trunk = jitter(rng, rgb(95, 75, 55), 20)
    c.paint(
        c.rect(x - trunk_w / 2, base_y - trunk_h - r * 0.5, x + trunk_w / 2, base_y),
        trunk,
        VEGETATION,
    )
    crown = np.zeros((c.h, c.w), bool)
    for _ in range(int(rng.integers(2, 5))):
        crown |= c.ellipse(
            x + rng.uniform(-0.6, 0.6) * r,
            crown_y + rng.uniform(-0.5, 0.4) * r,
            r * rng.uniform(0.6, 1.0),
            r * rng.uniform(0.5, 0.9),
        )
    leaf = pick(
        rng,
        [
            lambda: jitter(rng, rgb(60, 110, 40), 25),
            lambda: jitter(rng, rgb(40, 75, 35), 15),  # dark, near the shadowed greys
            lambda: jitter(rng, rgb(150, 140, 60), 25),  # autumn
        ],
    )
    # High-frequency foliage noise is the texture cue that separates trees from green facades.
    c.paint(crown, Tex(leaf, fine=28, coarse=15, cells=16), VEGETATION)


def _car_color(rng: np.random.Generator) -> Color:
    return pick(
        rng,
        [
            lambda: grey(rng, 50, 150),  # road-like greys
            lambda: grey(rng, 50, 150),
            lambda: grey(rng, 180, 235),  # white / silver
            lambda: grey(rng, 15, 45),  # black
            lambda: jitter(rng, rgb(170, 30, 30), 30),
            lambda: jitter(rng, rgb(40, 60, 140), 30),
            lambda: jitter(rng, rgb(60, 110, 70), 25),
        ],
    )


def _car(rng: np.random.Generator, c: Canvas, cx: float, base_y: float, scale: float) -> None:
    w = c.w * rng.uniform(0.26, 0.36) * scale + 2
    h = w * rng.uniform(0.55, 0.75)
    body = _car_color(rng)
    tex = Tex(body, fine=4, coarse=6, cells=6)
    c.paint(c.rect(cx - w / 2, base_y - 0.62 * h, cx + w / 2, base_y - 0.12 * h), tex, CAR)
    cabin_in = w * rng.uniform(0.1, 0.2)
    c.paint(
        c.rect(cx - w / 2 + cabin_in, base_y - h, cx + w / 2 - cabin_in, base_y - 0.6 * h), tex, CAR
    )
    glass = grey(rng, 25, 80, tint=12)
    c.paint(
        c.rect(
            cx - w / 2 + cabin_in + 0.05 * w,
            base_y - 0.93 * h,
            cx + w / 2 - cabin_in - 0.05 * w,
            base_y - 0.64 * h,
        ),
        glass,
        CAR,
    )
    wheel = grey(rng, 10, 35)
    for wx in (cx - 0.32 * w, cx + 0.32 * w):
        c.paint(c.ellipse(wx, base_y - 0.12 * h, 0.11 * w, 0.12 * h), wheel, CAR)
    light = jitter(rng, rgb(200, 40, 30), 25)  # tail lights: red like many signs
    for lx in (cx - 0.43 * w, cx + 0.36 * w):
        c.paint(c.rect(lx, base_y - 0.5 * h, lx + 0.07 * w, base_y - 0.4 * h), light, CAR)


def _pedestrian(
    rng: np.random.Generator, c: Canvas, cx: float, base_y: float, scale: float
) -> None:
    h = c.h * rng.uniform(0.36, 0.5) * scale + 4
    shirt = pick(rng, [lambda: grey(rng, 20, 220), lambda: jitter(rng, rgb(128, 128, 128), 110)])
    trousers = pick(rng, [lambda: grey(rng, 20, 90), lambda: jitter(rng, rgb(50, 60, 110), 30)])
    rx = max(0.8, h * rng.uniform(0.08, 0.11) * c.thin_scale)
    c.paint(c.ellipse(cx, base_y - 0.27 * h, rx * 0.8, 0.27 * h), trousers, PEDESTRIAN)
    c.paint(c.ellipse(cx, base_y - 0.6 * h, rx, 0.22 * h), shirt, PEDESTRIAN)
    skin = jitter(rng, rgb(190, 150, 120), 40)
    head = max(0.8, 0.07 * h * c.thin_scale)
    c.paint(c.ellipse(cx, base_y - 0.88 * h, head, max(0.8, 0.08 * h)), skin, PEDESTRIAN)


def _sign_color(rng: np.random.Generator) -> tuple[Color, Color]:
    """(face, border) colours: red/blue/yellow/white, the usual traffic-sign set."""
    faces = [rgb(200, 30, 35), rgb(30, 70, 170), rgb(235, 200, 30), rgb(235, 235, 230)]
    face = jitter(rng, faces[int(rng.integers(len(faces)))], 20)
    border = jitter(rng, rgb(240, 240, 240), 10) if rng.random() < 0.6 else grey(rng, 20, 60)
    return face, border


def _sign(rng: np.random.Generator, c: Canvas, cx: float, cy: float, size: float) -> None:
    s = max(2.0, size * c.thin_scale) / 2
    shape = int(rng.integers(3))
    if shape == 0:  # square / rectangle
        outer = c.rect(cx - s * 1.2, cy - s, cx + s * 1.2, cy + s)
        inner = c.rect(cx - s * 0.8, cy - s * 0.6, cx + s * 0.8, cy + s * 0.6)
    elif shape == 1:  # circle
        outer, inner = c.ellipse(cx, cy, s, s), c.ellipse(cx, cy, 0.65 * s, 0.65 * s)
    else:  # triangle pointing up
        dy = c.yy - (cy - s)
        outer = (dy >= 0) & (dy <= 2 * s) & (np.abs(c.xx - cx) <= 0.6 * dy)
        inner = (dy >= 0.7 * s) & (dy <= 1.7 * s) & (np.abs(c.xx - cx) <= 0.4 * dy - 0.2 * s)
    face, border = _sign_color(rng)
    c.paint(outer, border, SIGN)
    c.paint(inner, face, SIGN)


def _pole(
    rng: np.random.Generator, c: Canvas, x: float, base_y: float, scale: float, toward_road: float
) -> None:
    # 1-3 px at the default 160 px width (thin and easy to miss), scaled for larger images so
    # the class frequency does not depend on the resolution.
    width = float(min(1.0 + np.floor(scale * 2.2 + rng.uniform(0, 0.9)), 3.0))
    width = max(1.0, round(width * c.w / 160.0 * c.thin_scale))
    top = base_y - c.h * rng.uniform(0.55, 0.85) * scale - 4
    x0 = np.floor(x)
    color = pick(rng, [lambda: grey(rng, 60, 170), lambda: jitter(rng, rgb(60, 80, 60), 15)])
    c.paint(c.rect(x0, top, x0 + width, base_y), color, POLE)
    kind = rng.random()
    if kind < 0.7:  # sign on top
        size = max(4.0, c.w * rng.uniform(0.04, 0.07) * (0.4 + 0.6 * scale))
        _sign(rng, c, x0 + width / 2, top + size * 0.3, size)
    elif kind < 0.9:  # street lamp arm reaching over the road
        arm = c.w * rng.uniform(0.05, 0.12) * scale * toward_road
        lo, hi = sorted((x0, x0 + arm))
        c.paint(c.rect(lo, top, hi + width, top + max(1.0, width - 1)), color, POLE)


def _side_point(rng: np.random.Generator, st: Street, y: float, left: bool, outer: bool) -> float:
    """x of a random point on the left/right sidewalk (outer half or curb half) at row y."""
    road = st.edge_x(st.road_l if left else st.road_r, y)
    walk = st.edge_x(st.walk_l if left else st.walk_r, y)
    f = rng.uniform(0.45, 0.9) if outer else rng.uniform(0.08, 0.35)
    return float(road + (walk - road) * f)


def _plan_objects(
    rng: np.random.Generator, c: Canvas, st: Street
) -> list[tuple[float, Callable[[], None]]]:
    """(base row, draw call) for every object; the caller draws them sorted by base row."""
    span = c.h - st.horizon
    plan: list[tuple[float, Callable[[], None]]] = []

    def row(lo: float, hi: float) -> float:
        return float(st.horizon + span * rng.uniform(lo, hi))

    def kept() -> bool:
        # Thin objects drawn s times larger appear 1/s as often, so their share of the pixels
        # stays about the same (a long tail of fewer, visible objects); the default drawing
        # (s <= 1) draws no number here, so its scenes stay bit for bit the same.
        return c.thin_scale <= 1.0 or bool(rng.random() < 1.0 / c.thin_scale)

    for _ in range(int(rng.choice(5, p=[0.05, 0.25, 0.3, 0.25, 0.15]))):
        y, left = row(0.05, 0.55), bool(rng.random() < 0.5)
        x = _side_point(rng, st, y, left, outer=True)
        plan.append((y, lambda x=x, y=y: _tree(rng, c, x, y, float(st.depth(y)) + 0.15)))
    for _ in range(int(rng.choice(5, p=[0.05, 0.3, 0.3, 0.2, 0.15]))):
        y = row(0.15, 0.9)
        d = float(st.depth(y))
        x = float(
            st.edge_x(st.road_l, y)
            + (st.edge_x(st.road_r, y) - st.edge_x(st.road_l, y)) * rng.uniform(0.15, 0.85)
        )
        plan.append((y, lambda x=x, y=y, d=d: _car(rng, c, x, y, d)))
    for _ in range(int(rng.choice(5, p=[0.2, 0.3, 0.25, 0.15, 0.1]))):
        if not kept():
            continue
        y, left = row(0.15, 0.95), bool(rng.random() < 0.5)
        x = _side_point(rng, st, y, left, outer=bool(rng.random() < 0.5))
        plan.append((y, lambda x=x, y=y: _pedestrian(rng, c, x, y, float(st.depth(y)))))
    for _ in range(int(rng.choice(4, p=[0.1, 0.4, 0.35, 0.15]))):
        if not kept():
            continue
        y, left = row(0.15, 0.85), bool(rng.random() < 0.5)
        x = _side_point(rng, st, y, left, outer=False)
        toward = 1.0 if left else -1.0
        plan.append((y, lambda x=x, y=y, t=toward: _pole(rng, c, x, y, float(st.depth(y)), t)))
    if rng.random() < 0.25 and kept():  # a sign fixed to a facade: not always on poles
        y = st.horizon - c.h * rng.uniform(0.0, 0.08)
        x = c.w * (rng.uniform(0.03, 0.25) if rng.random() < 0.5 else rng.uniform(0.75, 0.97))
        plan.append(
            (st.horizon, lambda x=x, y=y: _sign(rng, c, x, y, c.w * rng.uniform(0.03, 0.05)))
        )
    return plan


def render_scene(
    rng: np.random.Generator, height: int, width: int, thin_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene: (image HxWx3 uint8, mask HxW uint8 of class ids).

    ``thin_scale`` s widens the thin and small objects (pole width, sign size, pedestrian
    width) and, above 1, draws each of them with probability 1/s, so they become fewer and
    visible while keeping about their share of the pixels; at 1.0 the scene is the default
    drawing, bit for bit.
    """
    c = Canvas(rng, height, width, thin_scale)
    st = Street(rng, height, width)
    draw_background(rng, c, st)
    plan = _plan_objects(rng, c, st)
    for _, draw in sorted(plan, key=lambda item: item[0]):  # stable sort: ties keep plan order
        draw()
    return photometric(rng, c.img), c.mask
