"""What a synthetic person looks like and how it is seen: appearance, pose and camera parameters.

An :class:`Identity` fixes appearance (body proportions, skin, hair, upper garment colour + pattern, lower
garment, shoes, optional backpack or shoulder bag), a :class:`PoseParams` a pose (view direction, walking
gait phase, scale, shift) and a :class:`Camera` a camera's look (background, illumination tint, blur,
noise). :func:`sample_identity`, :func:`sample_pose`, :func:`sample_camera` and :func:`make_cameras` draw
them from a numpy ``Generator``; the colour palettes (skin, hair, garments, shoes) live here too.

These are plain frozen dataclasses and pure sampling code, kept apart from the drawing in
:mod:`posereid.experiments.synthetic.people` (the package re-exports both): what a person looks like
is decided here, how it becomes pixels and keypoints there.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]
VIEWS: tuple[str, ...] = ("front", "left", "back", "right")
VIEW_YAW = {"front": 0.0, "left": 90.0, "back": 180.0, "right": 270.0}


# --------------------------------------------------------------------------------------------------
# Appearance, pose and camera parameters
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """Fixed appearance of one person (colours are RGB 0-255)."""

    height: float  # body height relative to the frame (≈ 0.88 … 1.0)
    build: float  # width factor for shoulders, hips and limbs (≈ 0.85 … 1.2)
    skin: RGB
    hair: RGB
    hair_length: str  # none | short | medium | long
    upper: RGB
    upper2: RGB  # second colour of the pattern
    pattern: str  # plain | stripes | checks | two-tone
    sleeves: str  # long | short
    lower: RGB
    lower_kind: str  # trousers | shorts | skirt
    shoes: RGB
    bag: str  # none | backpack | shoulder
    bag_colour: RGB
    bag_side: int  # +1: shoulder bag hangs at the subject's left hip, -1: right


@dataclass(frozen=True)
class PoseParams:
    """One pose: view direction, yaw jitter (degrees), gait phase (radians), stride and arm-swing
    amplitudes (0 = standing, 1 = full walk), scale (1 = the identity's full height), shift (fractions of
    the frame's width/height) and forward lean (degrees)."""

    view: str
    yaw: float = 0.0
    phase: float = 0.0
    stride: float = 0.8
    arm_swing: float = 0.8
    scale: float = 0.95
    dx: float = 0.0
    dy: float = 0.0
    lean: float = 4.0


@dataclass(frozen=True)
class Camera:
    """A camera's look: background kind and colours, illumination, blur (px at 128 rows), noise (σ in
    grey levels), per-image brightness jitter and the chance of clutter (a pole or a passer-by's edge)."""

    index: int
    background: str  # plain | tiles | brick | foliage | street
    colours: tuple[RGB, RGB, RGB]  # upper background, lower background, floor
    horizon: float  # fraction of the height where the floor starts
    tint: tuple[float, float, float]
    brightness: float
    contrast: float
    blur: float
    noise: float
    flicker: float  # per-image brightness jitter (fraction)
    clutter: float
    texture_seed: int


def hsv_colour(h: float, s: float, v: float) -> RGB:
    """RGB 0-255 colour of HSV ``(h, s, v)`` in [0, 1] (the hue wraps around)."""
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))  # type: ignore[return-value]


def _jitter(rng: np.random.Generator, c: Sequence[int], amount: int) -> RGB:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in c)  # type: ignore[return-value]


_SKINS = ((255, 224, 196), (241, 194, 160), (224, 172, 125), (198, 134, 94), (161, 102, 68), (120, 77, 50),
          (88, 57, 39))  # fmt: skip
_HAIRS = ((28, 24, 24), (28, 24, 24), (66, 42, 28), (108, 72, 42), (196, 164, 104), (138, 66, 36),
          (150, 150, 150))  # fmt: skip
_SHOES = ((20, 20, 20), (235, 235, 235), (110, 70, 40), (120, 120, 120))


def _garment_colour(rng: np.random.Generator, kind: str) -> RGB:
    r = rng.random()
    if kind == "lower":
        if r < 0.40:  # black / navy / charcoal
            return hsv_colour(rng.choice([0.0, 0.62, 0.6]), rng.uniform(0, 0.4), rng.uniform(0.08, 0.3))
        if r < 0.65:  # denim
            return hsv_colour(rng.uniform(0.57, 0.63), rng.uniform(0.35, 0.7), rng.uniform(0.3, 0.65))
        if r < 0.80:  # khaki / beige
            return hsv_colour(rng.uniform(0.08, 0.14), rng.uniform(0.2, 0.5), rng.uniform(0.5, 0.85))
    elif r < 0.30:  # dark neutral tops
        return hsv_colour(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.08, 0.35))
    elif r < 0.45:  # white / light grey
        return hsv_colour(rng.random(), rng.uniform(0, 0.12), rng.uniform(0.8, 0.98))
    return hsv_colour(rng.random(), rng.uniform(0.4, 0.95), rng.uniform(0.35, 0.95))


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random appearance."""
    upper = _garment_colour(rng, "upper")
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in upper))
    # the pattern's second colour contrasts in value or hue
    upper2 = (
        hsv_colour(rng.random(), rng.uniform(0, 0.2), 0.95 if v < 0.55 else 0.12)
        if rng.random() < 0.5
        else hsv_colour(h + rng.uniform(0.3, 0.7), rng.uniform(0.5, 0.9), rng.uniform(0.4, 0.95))
    )
    bag = str(rng.choice(["none", "backpack", "shoulder"], p=[0.5, 0.3, 0.2]))
    bag_colour = (
        _garment_colour(rng, "upper") if rng.random() < 0.6 else hsv_colour(0, 0, rng.uniform(0.05, 0.2))
    )
    return Identity(
        height=float(rng.uniform(0.88, 1.0)),
        build=float(rng.uniform(0.85, 1.2)),
        skin=_jitter(rng, _SKINS[rng.integers(len(_SKINS))], 8),
        hair=_jitter(rng, _HAIRS[rng.integers(len(_HAIRS))], 10),
        hair_length=str(rng.choice(["none", "short", "medium", "long"], p=[0.05, 0.5, 0.25, 0.2])),
        upper=upper,
        upper2=upper2,
        pattern=str(rng.choice(["plain", "stripes", "checks", "two-tone"], p=[0.5, 0.2, 0.12, 0.18])),
        sleeves=str(rng.choice(["long", "short"], p=[0.6, 0.4])),
        lower=_garment_colour(rng, "lower"),
        lower_kind=str(rng.choice(["trousers", "shorts", "skirt"], p=[0.7, 0.15, 0.15])),
        shoes=_jitter(rng, _SHOES[rng.integers(4)], 10)
        if rng.random() < 0.9
        else hsv_colour(rng.random(), 0.8, 0.8),
        bag=bag,
        bag_colour=bag_colour,
        bag_side=int(rng.choice([-1, 1])),
    )


def sample_pose(rng: np.random.Generator, views: Sequence[str] = VIEWS) -> PoseParams:
    """Draw a pose: a view from ``views``, yaw jitter ±15°, walking (80 %) or standing, scale 0.86-1."""
    if not views or any(v not in VIEW_YAW for v in views):
        raise ValueError(f"views must be a non-empty subset of {VIEWS}, got {views!r}")
    u = rng.random(8)
    walking = u[0] < 0.8
    stride = 0.5 + 0.5 * u[1] if walking else 0.25 * u[1]
    return PoseParams(
        view=views[int(u[2] * len(views))],
        yaw=float(30 * u[3] - 15),
        phase=float(2 * math.pi * u[4]),
        stride=float(stride),
        arm_swing=float(stride * (0.7 + 0.5 * u[5])),
        scale=float(0.86 + 0.14 * u[6]),
        dx=float(0.12 * u[7] - 0.06),
        dy=float(0.04 * rng.random() - 0.02),
        lean=float(2 + 4 * stride),
    )


def sample_camera(rng: np.random.Generator, index: int) -> Camera:
    """Draw a camera look (background kind and colours, tint, blur, noise)."""
    hue = rng.random()
    top = hsv_colour(hue, rng.uniform(0.05, 0.45), rng.uniform(0.35, 0.9))
    low = hsv_colour(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.05, 0.4), rng.uniform(0.25, 0.8))
    floor = hsv_colour(
        rng.uniform(0.05, 0.15) if rng.random() < 0.5 else rng.random(),
        rng.uniform(0, 0.3),
        rng.uniform(0.25, 0.75),
    )
    tint = np.clip(1 + rng.normal(0, 0.08, 3), 0.8, 1.2)
    return Camera(
        index=int(index),
        background=str(rng.choice(["plain", "tiles", "brick", "foliage", "street"])),
        colours=(top, low, floor),
        horizon=float(rng.uniform(0.45, 0.75)),
        tint=tuple(float(t) for t in tint),  # type: ignore[arg-type]
        brightness=float(rng.uniform(0.75, 1.15)),
        contrast=float(rng.uniform(0.8, 1.1)),
        blur=float(rng.uniform(0.2, 1.0)),
        noise=float(rng.uniform(1.5, 6.0)),
        flicker=float(rng.uniform(0.03, 0.1)),
        clutter=float(rng.uniform(0.0, 0.35)),
        texture_seed=int(rng.integers(2**31)),
    )


def make_cameras(n: int, seed: int = 0) -> list[Camera]:
    """``n`` cameras drawn from ``seed`` (the same seed gives the same cameras)."""
    rng = np.random.default_rng([seed, 0xCA])
    return [sample_camera(rng, i) for i in range(n)]


__all__ = [
    "RGB",
    "VIEWS",
    "VIEW_YAW",
    "Camera",
    "Identity",
    "PoseParams",
    "hsv_colour",
    "make_cameras",
    "sample_camera",
    "sample_identity",
    "sample_pose",
]
