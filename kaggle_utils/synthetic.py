"""Synthetic Carvana: studio photos of simple 3D cars on a turntable, in Kaggle's exact layout.

The embedded default data set, so that ``make demo`` and the tests run anywhere. Each car is a few
convex solids (lower body, tapered cabin, four wheel cylinders) with random proportions and paint,
turned through 16 yaw angles (01 = front, 05 = left side facing left, 09 = back, 13 = facing right;
angles k and 18-k are mirror images, as on Kaggle), projected with a mild perspective from slightly
above, flat-shaded, with windows, lights, a soft floor shadow (not part of the mask), a turntable
and a lettered studio wall. Polygons are filled with cv2 (anti-aliased, 1/16 px precision), so a
full 1918x1280 image takes a few tens of ms.

Layout written (what ``layout.find_data`` reads)::

    OUT/train/<car>_<NN>.jpg           OUT/train_masks/<car>_<NN>_mask.gif   (palette {0, 1})
    OUT/train_masks.csv (img,rle_mask)  OUT/metadata.csv (id,year,make,model,trim1,trim2)
    OUT/test/<car>_<NN>.jpg            OUT/sample_submission.csv (img,rle_mask = "1 1")
    OUT/test_masks.csv                 (the truth for the synthetic test set)

Usage: ``python -m kaggle_utils.synthetic OUT [--train-cars 8 --test-cars 2 --height 1280
--width 1918 --seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from kaggle_utils.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from kaggle_utils.constants import MASK_SHAPE
from kaggle_utils.imageio import encode_jpeg, encode_mask_gif

N_ANGLES = 16
FULL_SIZE = MASK_SHAPE  # Carvana's (H, W)
MARKER = ".synthetic.json"
_CSV_FILES = ("train_masks.csv", "test_masks.csv", "metadata.csv", "sample_submission.csv")
_VERSION = 1
_SHIFT = 4  # cv2 fixed-point bits: polygon vertices at 1/16 px
_ONE = 1 << _SHIFT

_PAINTS = {
    "silver": (172, 175, 180),
    "white": (228, 229, 231),
    "black": (32, 33, 36),
    "red": (150, 22, 28),
    "blue": (28, 55, 125),
    "grey": (98, 101, 106),
    "green": (40, 80, 55),
    "beige": (190, 175, 145),
    "orange": (200, 95, 30),
}
_MAKES = {
    "Acura": ["ILX", "TLX", "MDX"],
    "BMW": ["3 Series", "X3", "5 Series"],
    "Chevrolet": ["Malibu", "Cruze", "Equinox"],
    "Ford": ["Focus", "Fusion", "Escape"],
    "Honda": ["Civic", "Accord", "CR-V"],
    "Hyundai": ["Elantra", "Sonata", "Tucson"],
    "Kia": ["Optima", "Soul", "Sorento"],
    "Mazda": ["MAZDA3", "MAZDA6", "CX-5"],
    "Nissan": ["Altima", "Sentra", "Rogue"],
    "Toyota": ["Corolla", "Camry", "RAV4"],
    "Volkswagen": ["Jetta", "Passat", "Golf"],
}
_TRIMS = [("Base", ""), ("LX", ""), ("EX", "w/Tech"), ("SE", "FWD"), ("Limited", "AWD")]
_BODIES = ("sedan", "hatchback", "suv", "coupe")


# ----------------------------------------------------------------------------- geometry


@dataclass
class Face:
    """A planar polygon of a convex solid, in the car frame (x forward, y left, z up, metres)."""

    pts: np.ndarray  # (n, 3)
    tag: str
    normal: np.ndarray  # outward unit normal


@dataclass
class Car:
    """One car's random proportions, paint and metadata (the same for all 16 views)."""

    car_id: str
    body: str
    paint: np.ndarray  # RGB float
    length: float
    width: float
    height: float
    clearance: float
    belt: float
    hood_len: float
    trunk_len: float
    wheel_r: float
    wheelbase: float
    offset: np.ndarray  # car centre offset on the turntable (along its axis: mirror pairs hold)
    scale: float
    meta: dict


def _random_car(rng: np.random.Generator, car_id: str) -> Car:
    body = str(rng.choice(_BODIES))
    length = rng.uniform(4.2, 4.9)
    tall = body == "suv"
    height = rng.uniform(1.62, 1.78) if tall else rng.uniform(1.36, 1.5)
    if body == "coupe":
        height -= 0.06
    make = str(rng.choice(sorted(_MAKES)))
    trim = _TRIMS[int(rng.integers(len(_TRIMS)))]
    paint = np.array(_PAINTS[str(rng.choice(sorted(_PAINTS)))], dtype=np.float64)
    paint = np.clip(paint * rng.uniform(0.92, 1.08), 0, 255)
    return Car(
        car_id=car_id,
        body=body,
        paint=paint,
        length=length,
        width=rng.uniform(1.78, 1.9),
        height=height,
        clearance=rng.uniform(0.26, 0.31) if tall else rng.uniform(0.19, 0.23),
        belt=height * rng.uniform(0.6, 0.64),
        hood_len=length * (rng.uniform(0.22, 0.28) if body != "coupe" else 0.3),
        trunk_len=length * (0.06 if body in ("hatchback", "suv") else rng.uniform(0.16, 0.22)),
        wheel_r=rng.uniform(0.34, 0.39) if tall else rng.uniform(0.3, 0.34),
        wheelbase=length * rng.uniform(0.58, 0.62),
        offset=np.array([rng.uniform(-0.1, 0.1), 0.0]),  # along the car axis: mirror pairs
        scale=rng.uniform(0.95, 1.05),
        meta={
            "year": int(rng.integers(2008, 2018)),
            "make": make,
            "model": str(rng.choice(_MAKES[make])),
            "trim1": trim[0],
            "trim2": trim[1],
        },
    )


def _prism(profile: np.ndarray, half_w: np.ndarray, tags: list[str], name: str) -> list[Face]:
    """A convex solid from a side profile (x, z) and per-vertex half widths (planar sides)."""
    left = np.stack([profile[:, 0], half_w, profile[:, 1]], axis=1)
    right = left * np.array([1.0, -1.0, 1.0])
    faces = [Face(left, f"{name}_side_left", None), Face(right[::-1], f"{name}_side_right", None)]
    n = len(profile)
    for i in range(n):
        j = (i + 1) % n
        faces.append(Face(np.stack([left[i], left[j], right[j], right[i]]), tags[i], None))
    centre = np.concatenate([left, right]).mean(axis=0)
    for f in faces:
        f.normal = _outward_normal(f.pts, centre)
    return faces


def _outward_normal(pts: np.ndarray, centre: np.ndarray) -> np.ndarray:
    # Newell's method, then orient away from the solid's centre.
    nxt = np.roll(pts, -1, axis=0)
    n = np.array(
        [
            np.sum((pts[:, 1] - nxt[:, 1]) * (pts[:, 2] + nxt[:, 2])),
            np.sum((pts[:, 2] - nxt[:, 2]) * (pts[:, 0] + nxt[:, 0])),
            np.sum((pts[:, 0] - nxt[:, 0]) * (pts[:, 1] + nxt[:, 1])),
        ]
    )
    n /= np.linalg.norm(n) + 1e-12
    return -n if np.dot(n, pts.mean(axis=0) - centre) < 0 else n


def _car_solids(car: Car) -> tuple[list[Face], list[Face], list[tuple[float, float, float]]]:
    """Lower body faces, cabin faces, wheels (x, side, radius) in the car frame."""
    L, W, c, hb = car.length, car.width, car.clearance, car.belt
    xf, xr = L / 2, -L / 2
    x_ws, x_rw = xf - car.hood_len, xr + car.trunk_len
    hood_front = hb - (0.12 if car.body != "suv" else 0.06)
    tail = hb - (0.04 if car.body in ("sedan", "coupe") else 0.0)
    body = np.array(
        [
            [xr + 0.12, c],
            [xf - 0.15, c],
            [xf, c + 0.16],
            [xf, hood_front - 0.1],
            [xf - 0.14, hood_front],
            [x_ws, hb],
            [x_rw, hb],
            [xr + 0.06, tail],
            [xr, tail - 0.12],
            [xr, c + 0.14],
        ]
    )
    body_tags = [
        "bottom",
        "front_low",
        "front",
        "front_top",
        "hood",
        "shoulder",
        "deck",
        "rear_top",
        "rear",
        "rear_low",
    ]
    lower = _prism(body, np.full(len(body), W / 2), body_tags, "body")

    top = car.height
    ws_run = (top - hb) * (1.45 if car.body != "suv" else 1.0)
    if car.body in ("hatchback", "suv"):
        rw_run = (top - hb) * (0.35 if car.body == "suv" else 0.6)
        x_rb = x_rw + 0.08 + rw_run
        x_rwb = x_rw + 0.08
    else:
        rw_run = (top - hb) * 1.1
        x_rwb = x_rw + 0.05
        x_rb = x_rwb + rw_run
    x_wsb = x_ws - 0.05
    x_rf = x_wsb - ws_run
    cabin = np.array(
        [
            [x_rwb, hb],
            [x_wsb, hb],
            [x_rf, top - 0.03],
            [0.5 * (x_rf + x_rb), top],
            [x_rb, top - 0.03],
        ]
    )
    # Tumblehome: the greenhouse narrows towards the roof (planar: half width affine in z).
    hw = W / 2 - 0.06 - 0.22 * (cabin[:, 1] - hb) / (top - hb)
    cab = _prism(
        cabin, hw, ["cabin_bottom", "windshield", "roof_front", "roof_rear", "rear_window"], "cabin"
    )

    half_wb = car.wheelbase / 2
    centre_x = 0.5 * (xf + xr) + 0.02 * L
    wheels = [(centre_x + sx * half_wb, sy, car.wheel_r) for sx in (1, -1) for sy in (1, -1)]
    return lower, cab, wheels


# ----------------------------------------------------------------------------- camera


class Camera:
    """Pinhole camera on the +X side of the turntable, looking slightly down at the car."""

    def __init__(self, size: tuple[int, int], scale: float = 1.0):
        h, w = size
        self.size = size
        dist, pitch = 11.0, np.deg2rad(11.0)
        target = np.array([0.0, 0.0, 0.55])
        self.pos = target + dist * np.array([np.cos(pitch), 0.0, np.sin(pitch)])
        fwd = target - self.pos
        self.fwd = fwd / np.linalg.norm(fwd)
        right = np.cross(self.fwd, [0.0, 0.0, 1.0])
        self.right = right / np.linalg.norm(right)
        self.up = np.cross(self.right, self.fwd)
        # Side view of a 4.6 m car spans ~72% of the width, whatever the aspect.
        self.f = 0.72 * w * dist / 4.6 * scale * min(1.0, (h / w) / (MASK_SHAPE[0] / MASK_SHAPE[1]))
        self.cx, self.cy = (w - 1) / 2.0, 0.52 * h

    def project(self, p: np.ndarray) -> np.ndarray:
        rel = np.atleast_2d(p) - self.pos
        z = rel @ self.fwd
        u = self.cx + self.f * (rel @ self.right) / z
        v = self.cy - self.f * (rel @ self.up) / z
        return np.stack([u, v], axis=1)


def _yaw(angle: int) -> float:
    """Kaggle's angle 01 faces the camera; the car turns so that 05 faces image-left."""
    return -np.deg2rad((angle - 1) * 360.0 / N_ANGLES)


def _rot(yaw: float, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(yaw), np.sin(yaw)
    r = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    t = np.array([offset[0], offset[1], 0.0]) @ r.T
    return r, t


def _fix(uv: np.ndarray) -> np.ndarray:
    return np.round(uv * _ONE).astype(np.int32).reshape(-1, 1, 2)


# ----------------------------------------------------------------------------- rendering


def _background(size: tuple[int, int], rng: np.random.Generator, cam: Camera) -> np.ndarray:
    """Light grey studio: wall gradient, lettering, floor meeting the wall, turntable."""
    h, w = size
    horizon = float(cam.project(np.array([-7.0, 0.0, 0.0]))[0, 1])
    horizon = min(max(horizon, 0.2 * h), 0.6 * h)
    tone = rng.uniform(-6, 6)
    rows = np.arange(h, dtype=np.float32)[:, None]
    wall_t = np.clip(rows / max(horizon, 1.0), 0, 1)
    wall = (
        np.array([238, 238, 240], np.float32) * (1 - wall_t)
        + np.array([222, 223, 227], np.float32) * wall_t
    )
    floor_t = np.clip((rows - horizon) / max(h - horizon, 1.0), 0, 1)
    floor = (
        np.array([198, 201, 207], np.float32) * (1 - floor_t)
        + np.array([176, 179, 186], np.float32) * floor_t
    )
    col = np.where(rows < horizon, wall, floor) + tone
    img = np.broadcast_to(col[:, None, :], (h, w, 3)).astype(np.uint8).copy()

    # Big lettering on the wall (the real studio has a logo the car often overlaps).
    text, font, thick = "CARSYNTH", cv2.FONT_HERSHEY_SIMPLEX, max(1, int(0.012 * w))
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, thick)
    fs = 0.82 * w / tw
    (tw, th), _ = cv2.getTextSize(text, font, fs, thick)
    org = (int((w - tw) / 2), int(min(0.2 * h + th / 2, horizon - 0.05 * h)))
    cv2.putText(img, text, org, font, fs, (70, 72, 78), thick, cv2.LINE_AA)

    # Turntable disc (a circle on the floor: rotation invariant) and its rim.
    t = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    disc = np.stack([3.3 * np.cos(t), 3.3 * np.sin(t), np.zeros_like(t)], axis=1)
    poly = _fix(cam.project(disc))
    overlay = img.copy()
    cv2.fillPoly(overlay, [poly], (188, 191, 198), cv2.LINE_AA, _SHIFT)
    img = cv2.addWeighted(overlay, 0.6, img, 0.4, 0)
    cv2.polylines(img, [poly], True, (160, 163, 170), max(1, int(0.002 * w)), cv2.LINE_AA, _SHIFT)
    # Wall/floor seam.
    cv2.line(img, (0, int(horizon)), (w - 1, int(horizon)), (205, 206, 210), max(1, h // 400))
    return img


def _shade(colour: np.ndarray, normal: np.ndarray, light: np.ndarray, gloss: float) -> tuple:
    d = max(0.0, float(np.dot(normal, light)))
    sky = max(0.0, float(normal[2]))
    c = colour * (0.42 + 0.5 * d) + gloss * (70.0 * sky + 30.0 * d**8)
    return tuple(float(v) for v in np.clip(c, 0, 255))


def _sub_quad(q: np.ndarray, s0: float, s1: float, t0: float, t1: float) -> np.ndarray:
    """Sub-rectangle of a quad (q0..q3) in its bilinear parameters: s along q0->q1, t along q0->q3."""
    a, b, c, d = q

    def at(s: float, t: float) -> np.ndarray:
        return (1 - s) * (1 - t) * a + s * (1 - t) * b + s * t * c + (1 - s) * t * d

    return np.stack([at(s0, t0), at(s1, t0), at(s1, t1), at(s0, t1)])


def _inset(pts: np.ndarray, fx: float, fz: float, lift: float = 0.0) -> np.ndarray:
    """Shrink a side polygon about its centre (x and z separately), optionally raised."""
    c = pts.mean(axis=0)
    out = c + (pts - c) * np.array([fx, 1.0, fz])
    out[:, 2] += lift
    return out


def _floor_shadow(cam: Camera, car: Car, wheels: list, world, size: tuple[int, int]) -> np.ndarray:
    """Soft shadow (uint8 0..255) under the car, drawn at 1/4 size, blurred and scaled up."""
    h, w = size
    sh, sw = max(8, h // 4), max(8, w // 4)
    small = np.array([sw / w, sh / h])
    shadow = np.zeros((sh, sw), np.uint8)
    hl, hw = car.length / 2 + 0.2, car.width / 2 + 0.25
    foot = np.array([[hl, hw, 0.0], [hl, -hw, 0.0], [-hl, -hw, 0.0], [-hl, hw, 0.0]])
    cv2.fillPoly(shadow, [_fix(cam.project(world(foot)) * small)], 200, cv2.LINE_AA, _SHIFT)
    blur = max(1.0, 0.01 * sw)
    shadow = cv2.GaussianBlur(shadow, (0, 0), blur)
    for x, side, _ in wheels:  # darker contact patches
        uv = cam.project(world(np.array([[x, side * (car.width / 2 - 0.12), 0.0]])))[0] * small
        axes = (max(1, int(0.04 * sw)), max(1, int(0.01 * sh)))
        cv2.ellipse(shadow, (int(uv[0]), int(uv[1])), axes, 0, 0, 360, 255, -1, cv2.LINE_AA)
    shadow = cv2.GaussianBlur(shadow, (0, 0), blur * 0.5)
    return cv2.resize(shadow, (w, h), interpolation=cv2.INTER_LINEAR)


def _darken(img: np.ndarray, shadow: np.ndarray, strength: float = 0.7) -> None:
    """img *= 1 - strength * shadow / 255, in place, over the shadow's bounding box only."""
    ys, xs = np.nonzero(shadow[::4, ::4] > 2)
    if not len(ys):
        return
    y0, y1 = max(0, 4 * ys.min() - 4), min(img.shape[0], 4 * ys.max() + 5)
    x0, x1 = max(0, 4 * xs.min() - 4), min(img.shape[1], 4 * xs.max() + 5)
    keep = cv2.convertScaleAbs(shadow[y0:y1, x0:x1], alpha=-strength, beta=255.0)
    region = img[y0:y1, x0:x1]
    img[y0:y1, x0:x1] = cv2.multiply(region, cv2.merge([keep, keep, keep]), scale=1 / 255.0)


def render_view(
    car: Car, angle: int, size: tuple[int, int], background: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One studio photo (RGB uint8) and its mask (uint8 {0,1}: the car only, not its shadow)."""
    h, w = size
    cam = Camera(size, car.scale)
    rot, trans = _rot(_yaw(angle), car.offset)
    lower, cabin, wheels = _car_solids(car)  # car frame

    def world(p: np.ndarray) -> np.ndarray:
        return p @ rot.T + trans

    def sees(pts: np.ndarray, normal: np.ndarray) -> bool:
        return float(np.dot(normal @ rot.T, cam.pos - world(pts).mean(axis=0))) > 1e-9

    light = cam.pos / np.linalg.norm(cam.pos) + np.array([0.0, 0.0, 1.2])
    light /= np.linalg.norm(light)
    img = background.copy()
    mask = np.zeros((h, w), np.uint8)
    _darken(img, _floor_shadow(cam, car, wheels, world, size))

    W = car.width
    paint = car.paint
    gloss = 1.0 if paint.mean() > 60 else 0.6
    glass = np.array([38.0, 44.0, 54.0])
    line_w = max(1, w // 900)

    def shade(colour: np.ndarray, normal: np.ndarray, g: float = gloss) -> tuple:
        return _shade(colour, normal @ rot.T, light, g)

    def fill(pts: np.ndarray, colour, to_mask: bool = True) -> None:
        poly = _fix(cam.project(world(pts)))
        cv2.fillPoly(img, [poly], colour, cv2.LINE_AA, _SHIFT)
        if to_mask:
            cv2.fillPoly(mask, [poly], 1, cv2.LINE_8, _SHIFT)

    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)

    def disc(x: float, y: float, z: float, r: float) -> np.ndarray:
        return np.stack([x + r * np.cos(t), np.full_like(t, y), z + r * np.sin(t)], axis=1)

    def draw_wheel(x: float, side: int, r: float, near: bool) -> None:
        outer_y, inner_y = side * (W / 2 + 0.01), side * (W / 2 - 0.24)
        both = np.concatenate([disc(x, outer_y, r, r), disc(x, inner_y, r, r)])
        hull = cv2.convexHull(cam.project(world(both)).astype(np.float32))
        poly = np.round(hull * _ONE).astype(np.int32)
        cv2.fillPoly(img, [poly], (28, 28, 30), cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(mask, [poly], 1, cv2.LINE_8, _SHIFT)
        if near and sees(np.array([[x, outer_y, r]]), np.array([0.0, side, 0.0])):
            y = outer_y + side * 0.005
            for frac, col in (
                (0.64, (150, 152, 156)),
                (0.42, (112, 114, 118)),
                (0.14, (60, 60, 62)),
            ):
                fill(disc(x, y, r, frac * r), col, to_mask=False)

    near = [s for s, f in ((1, lower[0]), (-1, lower[1])) if sees(f.pts, f.normal)]
    ends = {"front", "front_low", "front_top", "rear", "rear_low", "rear_top"}
    visible = [f for f in lower if sees(f.pts, f.normal)]

    # Painter's order: far wheels, body (minus its ends), near wheels (in front of the body
    # sides, as if seen through the arches), body ends (bumpers hide wheels behind them), cabin.
    for x, s, r in wheels:
        if s not in near:
            draw_wheel(x, s, r, near=False)
    for f in visible:
        if f.tag in ends:
            continue
        fill(f.pts, shade(paint, f.normal))
        if "side" in f.tag:
            ys = f.pts[0, 1]
            for xd in (0.18 * car.length, -0.12 * car.length):  # door seams
                seg = np.array([[xd, ys, car.clearance + 0.06], [xd, ys, car.belt - 0.03]])
                uv = _fix(cam.project(world(seg)))
                cv2.polylines(
                    img,
                    [uv],
                    False,
                    shade(paint * 0.55, f.normal, 0.0),
                    line_w,
                    cv2.LINE_AA,
                    _SHIFT,
                )
    for x, s, r in wheels:
        if s in near:
            draw_wheel(x, s, r, near=True)
    for f in visible:
        if f.tag not in ends:
            continue
        fill(f.pts, shade(paint, f.normal))
        if f.tag == "front":  # s runs bottom -> top, t left -> right
            for t0, t1 in ((0.04, 0.26), (0.74, 0.96)):
                fill(_sub_quad(f.pts, 0.55, 0.95, t0, t1), (228, 230, 232), to_mask=False)
            fill(_sub_quad(f.pts, 0.15, 0.7, 0.32, 0.68), (35, 36, 40), to_mask=False)
        elif f.tag == "rear":  # s runs top -> bottom
            for t0, t1 in ((0.03, 0.24), (0.76, 0.97)):
                fill(_sub_quad(f.pts, 0.05, 0.45, t0, t1), (150, 20, 24), to_mask=False)
            fill(_sub_quad(f.pts, 0.35, 0.8, 0.38, 0.62), (215, 218, 222), to_mask=False)
    for f in cabin:
        if not sees(f.pts, f.normal):
            continue
        colour = shade(paint, f.normal)
        fill(f.pts, colour)
        if f.tag in ("windshield", "rear_window"):
            fill(_sub_quad(f.pts, 0.06, 0.94, 0.07, 0.93), shade(glass, f.normal, 0.5), False)
        elif "side" in f.tag:
            a, b = np.polyfit(f.pts[:, 2], f.pts[:, 1], 1)  # side plane: y = a z + b
            win = _inset(f.pts, 0.87, 0.7, lift=0.01)
            win[:, 1] = a * win[:, 2] + b
            fill(win, shade(glass, f.normal, 0.4), to_mask=False)
            # B-pillar: a body-coloured band splitting front and rear windows.
            zb, zt = win[:, 2].min(), win[:, 2].max()
            xm = float(np.mean(f.pts[:, 0]))
            pillar = np.array(
                [[xm - 0.06, 0, zb], [xm + 0.06, 0, zb], [xm + 0.05, 0, zt], [xm - 0.05, 0, zt]]
            )
            pillar[:, 1] = a * pillar[:, 2] + b
            fill(pillar, colour, to_mask=False)
    return img, mask


# ----------------------------------------------------------------------------- data set


def _car_ids(
    seed: int, n: int, kind: int, taken: set[str]
) -> list[tuple[str, np.random.Generator]]:
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, kind, i])
        cid = rng.bytes(6).hex()
        while cid in taken:
            cid = rng.bytes(6).hex()
        taken.add(cid)
        out.append((cid, rng))
    return out


def _rle(mask: np.ndarray) -> str:
    from kaggle_utils.rle import rle_encode

    return rle_encode(mask)


def _csv(rows: list[tuple], header: str) -> str:
    return header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows)


def generate(
    out_dir: str | os.PathLike,
    n_train_cars: int = 8,
    n_test_cars: int = 2,
    size: tuple[int, int] = FULL_SIZE,
    seed: int = 0,
    quality: int = 90,
    force: bool = False,
    verbose: bool = False,
    hq: bool = False,
) -> Path:
    """Write a synthetic Carvana into ``out_dir`` (Kaggle layout) and return ``out_dir``.

    hq: also train_hq/ and test_hq/, the same photos at JPEG quality 100 (Kaggle's *_hq sets are
    the same frames, less compressed), to test members with ``hq: true``.

    Deterministic for (cars, size, seed, quality). A folder already holding the same complete set
    is left as it is; one holding another or an unfinished synthetic set is regenerated; a
    non-empty folder that is not a synthetic set is refused.
    """
    out = Path(out_dir)
    h, w = int(size[0]), int(size[1])
    if n_train_cars < 1 or n_test_cars < 0:
        raise ValueError("need at least one train car and a non-negative number of test cars")
    if h < 32 or w < 32:
        raise ValueError(f"image size {h}x{w} too small (min 32x32)")
    params = {
        "version": _VERSION,
        "n_train_cars": int(n_train_cars),
        "n_test_cars": int(n_test_cars),
        "size": [h, w],
        "seed": int(seed),
        "quality": int(quality),
    }
    if hq:  # absent when off: sets generated before the option keep their marker
        params["hq"] = True
    say = print if verbose else (lambda *a, **k: None)
    marker = out / MARKER
    if marker.is_file():
        old = json.loads(marker.read_text())
        if not force and old.get("complete") and old.get("params") == params:
            say(f"{out}: synthetic Carvana already complete ({params}), nothing to do")
            return out
        say(f"{out}: replacing an earlier or unfinished synthetic set")
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} is not empty and holds no synthetic Carvana ({MARKER} missing): "
            "choose an empty or new folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"params": params, "complete": False})  # first: claims the folder
    for sub in ("train", "train_masks", "test", "train_hq", "test_hq"):
        shutil.rmtree(out / sub, ignore_errors=True)
        if hq or not sub.endswith("_hq"):
            (out / sub).mkdir()
    for name in (*_CSV_FILES, *(p.name for p in out.glob(".*.tmp"))):
        (out / name).unlink(missing_ok=True)

    start = time.perf_counter()
    taken: set[str] = set()
    cars = [("train", *c) for c in _car_ids(seed, n_train_cars, 0, taken)]
    cars += [("test", *c) for c in _car_ids(seed, n_test_cars, 1, taken)]
    train_rows, test_rows, meta_rows = [], [], []
    for split, cid, rng in cars:
        car = _random_car(rng, cid)
        meta_rows.append((cid, *(car.meta[k] for k in ("year", "make", "model", "trim1", "trim2"))))
        bg = _background((h, w), rng, Camera((h, w), car.scale))
        for angle in range(1, N_ANGLES + 1):
            name = f"{cid}_{angle:02d}"
            img, mask = render_view(car, angle, (h, w), bg)
            atomic_write_bytes(out / split / f"{name}.jpg", encode_jpeg(img, quality), fsync=False)
            if hq:
                jpg = encode_jpeg(img, 100)
                atomic_write_bytes(out / f"{split}_hq" / f"{name}.jpg", jpg, fsync=False)
            if split == "train":
                atomic_write_bytes(
                    out / "train_masks" / f"{name}_mask.gif", encode_mask_gif(mask), fsync=False
                )
                train_rows.append((f"{name}.jpg", _rle(mask)))
            else:
                test_rows.append((f"{name}.jpg", _rle(mask)))
        say(
            f"  {split} car {cid} ({car.body}, {car.meta['make']} {car.meta['model']}): "
            f"{N_ANGLES} views -> {out / split}"
        )

    atomic_write_text(out / "train_masks.csv", _csv(sorted(train_rows), "img,rle_mask"))
    atomic_write_text(out / "test_masks.csv", _csv(sorted(test_rows), "img,rle_mask"))
    atomic_write_text(
        out / "sample_submission.csv",
        _csv([(i, "1 1") for i, _ in sorted(test_rows)], "img,rle_mask"),
    )
    atomic_write_text(
        out / "metadata.csv", _csv(sorted(meta_rows), "id,year,make,model,trim1,trim2")
    )
    atomic_write_json(marker, {"params": params, "complete": True})
    say(
        f"wrote {len(train_rows)} train images + GIF masks, {len(test_rows)} test images "
        f"({w}x{h}), train_masks.csv, test_masks.csv, metadata.csv, sample_submission.csv "
        f"to {out} in {time.perf_counter() - start:.1f} s"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kaggle_utils.synthetic",
        description="Generate a synthetic Carvana data set in Kaggle's layout.",
    )
    ap.add_argument("out", type=Path, help="output folder (created; must be empty or synthetic)")
    ap.add_argument("--train-cars", type=int, default=8)
    ap.add_argument("--test-cars", type=int, default=2)
    ap.add_argument("--height", type=int, default=FULL_SIZE[0])
    ap.add_argument("--width", type=int, default=FULL_SIZE[1])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality")
    ap.add_argument("--force", action="store_true", help="regenerate even if up to date")
    ap.add_argument("--hq", action="store_true", help="also train_hq/ and test_hq/ (quality 100)")
    args = ap.parse_args(argv)
    generate(
        args.out,
        n_train_cars=args.train_cars,
        n_test_cars=args.test_cars,
        size=(args.height, args.width),
        seed=args.seed,
        quality=args.quality,
        force=args.force,
        verbose=True,
        hq=args.hq,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
