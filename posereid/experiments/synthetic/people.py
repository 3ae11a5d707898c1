"""The synthetic-people renderer: :func:`render_person` and :func:`render_background`.

:func:`render_person` draws an :class:`Identity` (appearance) in a :class:`PoseParams` (view direction,
walking gait phase, scale, shift) seen by a :class:`Camera` (background, illumination tint, blur, noise)
and returns the image with exact COCO-18 keypoints. This module holds the drawing: camera backgrounds and
sensor, the 3-D stick figure, the painter and the keypoint occlusion rules. The parameters and their
samplers live in :mod:`posereid.experiments.synthetic.params`; :mod:`posereid.experiments.synthetic.dataset`
builds Market-1501-format datasets from it. :mod:`posereid.experiments.synthetic` re-exports all three.

Speed: PIL draws the parts (C code), per-camera backgrounds and noise tables are cached, and blur, tint
and noise run as a few whole-array numpy operations (see ``bench.synthetic``).

Geometry: the body is a 3-D stick figure in its own frame (``l`` = subject's left, ``u`` = up,
``f`` = forward) rotated by the view's yaw and projected orthographically; parts are painted far to
near. ``view`` names the side of the subject that faces the camera: ``front`` (subject's right shoulder
on the image's left), ``back``, ``left`` (left side towards the camera, walking towards the image's
left) and ``right``.

Keypoint occlusion rules (a hidden joint is ``-1``, like a joint outside the image):

- nose: hidden when the face turns away (back views); eyes: each is hidden when its outward normal
  (35° off the face's forward direction) points away from the camera, so a side view shows only the
  near eye and a back view none; ears: hidden only on the far side of a side view.
- shoulders and hips: the far one of a side view is hidden behind the torso.
- elbows, wrists, knees, ankles: hidden when a body part or bag painted after them (the torso or the
  near-side arm/leg) covers the joint's pixel, e.g. the far wrist behind the torso. Clothing (a skirt,
  straps) does not hide joints.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from posereid.experiments.synthetic.params import (
    RGB,
    VIEW_YAW,
    VIEWS,
    Camera,
    Identity,
    PoseParams,
    hsv_colour,
)
from posereid.models.pose import NUM_KEYPOINTS, drop_outside

# --------------------------------------------------------------------------------------------------
# Backgrounds, tint and noise (cached per camera and size)
# --------------------------------------------------------------------------------------------------
_BASE_HW = (160, 96)  # canonical background size for a 128x64 frame (with room to shift)


@functools.lru_cache(maxsize=64)
def _base_background(cam: Camera) -> Image.Image:
    rng = np.random.default_rng(cam.texture_seed)
    h, w = _BASE_HW
    top, low, floor = (np.array(c, np.float32) for c in cam.colours)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = top * (1 - t) + low * t
    hz = int(cam.horizon * h)
    img = np.repeat(img, w, axis=1)
    img[hz:] = floor * (1 + 0.25 * (t[hz:] - cam.horizon))
    blobs = np.asarray(
        Image.fromarray(rng.normal(0, 1, (8, 6)).astype(np.float32)).resize((w, h), Image.BICUBIC)
    )
    img += blobs[..., None] * (28 if cam.background == "foliage" else 10)
    im = Image.fromarray(np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    dark = tuple(int(c * 0.7) for c in cam.colours[0])
    if cam.background == "tiles":
        for i in range(8):
            y = hz + int((h - hz) * (i / 8) ** 1.5)
            d.line([(0, y), (w, y)], fill=tuple(int(c * 0.8) for c in cam.colours[2]))
        for x in range(-4 * w, 5 * w, 24):
            d.line([(w / 2 + x / 8, hz), (w / 2 + x, h)], fill=tuple(int(c * 0.8) for c in cam.colours[2]))
    elif cam.background == "brick":
        for r, y in enumerate(range(0, hz, 7)):
            d.line([(0, y), (w, y)], fill=dark)
            for x in range((r % 2) * 8, w, 16):
                d.line([(x, y), (x, y + 7)], fill=dark)
    elif cam.background == "street":
        for _ in range(int(rng.integers(2, 5))):
            x0, y0 = int(rng.integers(-10, w)), int(rng.integers(0, hz // 2))
            colour = tuple(int(v) for v in rng.integers(30, 230, 3))
            d.rectangle([x0, y0, x0 + int(rng.integers(8, 30)), y0 + int(rng.integers(10, 40))], fill=colour)
    return im


@functools.lru_cache(maxsize=64)
def _background(cam: Camera, height: int, width: int) -> Image.Image:
    """The camera's blurred background at 1.25x the frame height and 1.5x its width (random crops shift
    it a little per image)."""
    im = _base_background(cam).resize((round(width * 1.5), round(height * 1.25)), Image.BILINEAR)
    blur = cam.blur * height / 128
    return im.filter(ImageFilter.BoxBlur(blur)) if blur > 0.2 else im


@functools.lru_cache(maxsize=32)  # about 0.5 MB each at 128x64
def _sensor(cam: Camera, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel gain ``(H, W, 3)`` (contrast x brightness x tint) and, twice the frame size, Gaussian noise
    plus the contrast offset (random crops differ per image). Full-size arrays keep numpy's inner loops long."""
    t = np.array(cam.tint, np.float32)
    gain = np.ascontiguousarray(np.tile(cam.contrast * cam.brightness * t, (height, width, 1)))
    noise = np.random.default_rng(12345).normal(0, cam.noise, (2 * height, 2 * width, 3)).astype(np.float32)
    return gain, noise + 128 * (1 - cam.contrast) * cam.brightness * t


# --------------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------------
_D = math.radians


def _body(idn: Identity, pose: PoseParams) -> dict[str, tuple[float, float, float]]:
    """3-D points in the body frame (l, u, f) in units of body height, soles at u = 0."""
    b = idn.build
    sh_w, hip_w, td = 0.1 * b, 0.068 * b, 0.055 * b
    lean = math.tan(_D(pose.lean))
    u_hip, u_sh = 0.52, 0.815
    p: dict[str, tuple[float, float, float]] = {}
    for name, side, ph in (("r", -1.0, pose.phase), ("l", 1.0, pose.phase + math.pi)):
        a = _D(26) * pose.stride * math.sin(ph)
        k = a - _D(6 + 42 * max(0.0, math.cos(ph))) * pose.stride
        hip = (side * hip_w, u_hip, 0.0)
        knee = (side * hip_w * 0.95, u_hip - 0.245 * math.cos(a), 0.245 * math.sin(a))
        ankle = (side * hip_w * 0.85, knee[1] - 0.235 * math.cos(k), knee[2] + 0.235 * math.sin(k))
        p[name + "hip"], p[name + "knee"], p[name + "ankle"] = hip, knee, ankle
        p[name + "heel"] = (ankle[0], ankle[1] - 0.03, ankle[2] - 0.02)
        p[name + "toe"] = (ankle[0], ankle[1] - 0.035, ankle[2] + 0.07)
        sh = (side * sh_w, u_sh, (u_sh - u_hip) * lean)
        beta = -_D(24) * pose.arm_swing * math.sin(ph)
        gamma = beta + _D(10) + 0.6 * max(0.0, beta)
        elbow = (sh[0] + side * 0.018, sh[1] - 0.165 * math.cos(beta), sh[2] + 0.165 * math.sin(beta))
        wrist = (elbow[0] + side * 0.01, elbow[1] - 0.15 * math.cos(gamma), elbow[2] + 0.15 * math.sin(gamma))
        p[name + "sh"], p[name + "elbow"], p[name + "wrist"] = sh, elbow, wrist
    f_up = lambda u: (u - u_hip) * lean  # noqa: E731 - forward shift of the leaning upper body
    hc = (0.0, 0.935, f_up(0.935) + 0.008)
    p["hc"] = hc
    p["neck"] = (0.0, u_sh + 0.01, f_up(u_sh))
    p["nose"] = (0.0, hc[1] - 0.012, hc[2] + 0.06)
    for name, side in (("r", -1.0), ("l", 1.0)):
        p[name + "eye"] = (side * 0.022, hc[1] + 0.008, hc[2] + 0.05)
        p[name + "ear"] = (side * 0.055, hc[1], hc[2] - 0.005)
    p["hair"] = (0.0, hc[1] + 0.012, hc[2] - 0.012)
    p["face"] = (0.0, hc[1] - 0.01, hc[2] + 0.012)
    p["longhair_top"] = (0.0, hc[1], hc[2] - 0.04)
    p["longhair_bot"] = (0.0, 0.73 if idn.hair_length == "long" else 0.86, f_up(0.75) - td - 0.01)
    p["waist"] = (0.0, u_hip + 0.05, f_up(u_hip + 0.05))
    p["crotch"] = (0.0, u_hip - 0.06, 0.0)
    p["hem"] = (0.0, 0.33, 0.02)
    p["pack"] = (0.0, 0.66, f_up(0.66) - td - 0.045)
    p["bag"] = (idn.bag_side * (hip_w + 0.055), 0.5, 0.0)
    for name, side in (("r", -1.0), ("l", 1.0)):  # strap ends on the chest (f > 0) and back (f < 0)
        for face, fs in (("f", 1.0), ("b", -1.0)):
            p[f"strap_{name}{face}0"] = (side * sh_w * 0.6, u_sh + 0.005, f_up(u_sh) + fs * td)
            p[f"strap_{name}{face}1"] = (side * sh_w * 0.55, 0.6, f_up(0.6) + fs * td)
    lowest = min(p[n][1] for n in ("rheel", "rtoe", "lheel", "ltoe"))
    return {k: (v[0], v[1] - lowest, v[2]) for k, v in p.items()}


# COCO-18 order → body point names
_KP_NAMES = ("nose", "neck", "rsh", "relbow", "rwrist", "lsh", "lelbow", "lwrist", "rhip", "rknee",
             "rankle", "lhip", "lknee", "lankle", "reye", "leye", "rear", "lear")  # fmt: skip


def _shade(c: RGB, f: float) -> RGB:
    return (min(255, int(c[0] * f)), min(255, int(c[1] * f)), min(255, int(c[2] * f)))


class _Painter:
    """Paints one person's projected parts far to near and records what each part covers.

    Each part gets an order key (larger = nearer the camera); ``occl`` keeps the parts that can hide a
    joint (body parts and bags) and ``own`` the key of the part each limb joint belongs to.
    """

    def __init__(
        self, im: Image.Image, idn: Identity, body: dict, yaw: float, k: float, origin: tuple
    ) -> None:
        c, s = math.cos(yaw), math.sin(yaw)
        cx, ground = origin
        self.pts = {n: (cx + k * (v[0] * c - v[2] * s), ground - k * v[1]) for n, v in body.items()}
        self.depth = {n: v[0] * s + v[2] * c for n, v in body.items()}
        self.im, self.d, self.idn, self.k, self.c, self.s = im, ImageDraw.Draw(im), idn, k, c, s
        self.ac, self.as_, self.b = abs(c), abs(s), idn.build
        self.occl: list[tuple[float, str, str, tuple]] = []  # (key, joints it can hide, shape, geometry)
        self.own: dict[str, float] = {}
        self.key = 0.0

    def parts(self) -> list[tuple[float, str, str]]:
        idn, c, s = self.idn, self.c, self.s
        parts = [(-5.0, "pelvis", ""), (0.0, "torso", ""), (10.0, "head", "")]
        for side, sign in (("r", -1.0), ("l", 1.0)):
            lateral = sign * s  # > 0: this side faces the camera
            parts.append((-10 + lateral, "leg", side))
            parts.append((0.05 + 0.2 * lateral + 0.01 * self.depth[side + "wrist"], "arm", side))
        if idn.hair_length in ("medium", "long"):
            parts.append((-0.6 * c, "longhair", ""))
        if idn.bag == "backpack":
            parts.append((self.depth["pack"] + (0.3 if c < -0.5 else -0.3 if c > 0.5 else 0.0), "pack", ""))
            if c > -0.3:
                parts.append((0.5, "straps", ""))
        elif idn.bag == "shoulder":
            parts.append((self.depth["bag"] + 0.05, "bag", ""))
            parts.append((0.5 if c > 0 else -0.5 * c, "strap", ""))
        return sorted(parts)

    def paint(self) -> None:
        for key, part, side in self.parts():
            self.key = key
            getattr(self, "_" + part)(side)

    # drawing primitives ---------------------------------------------------------------------------
    def capsule(self, names: Sequence[str], width: float, colour: RGB, caps: bool = True) -> None:
        """Thick segments through the named points with round joints (and round ends if ``caps``)."""
        xy = [self.pts[n] for n in names]
        w = max(1.0, width * self.k)
        iw, r = max(1, round(w)), w / 2 - 0.25
        for a, b in zip(xy, xy[1:]):
            self.d.line((a, b), fill=colour, width=iw)
        for x, y in xy if caps else xy[1:-1]:
            self.d.ellipse((x - r, y - r, x + r, y + r), fill=colour)

    def ellipse(self, centre: str, rx: float, ry: float, colour: RGB) -> None:
        x, y = self.pts[centre]
        self.d.ellipse((x - rx * self.k, y - ry * self.k, x + rx * self.k, y + ry * self.k), fill=colour)

    def box(self, centre: str, half_w: float, half_h: float, colour: RGB, cut: float) -> tuple:
        """A rectangle with corners cut by ``cut`` x its half width (cheaper than rounded corners)."""
        x, y = self.pts[centre]
        self.d.polygon(_octagon(x - half_w, y - half_h, x + half_w, y + half_h, cut * half_w), fill=colour)
        return (x - half_w, y - half_h, x + half_w, y + half_h)

    # parts ----------------------------------------------------------------------------------------
    def _leg(self, side: str) -> None:
        idn, k, hip, knee, ankle = self.idn, self.k, side + "hip", side + "knee", side + "ankle"
        self.own[knee] = self.own[ankle] = self.key
        thigh, shin = 0.068 * self.b, 0.055 * self.b
        if idn.lower_kind == "trousers":
            self.capsule([hip, knee, ankle], shin, idn.lower, caps=False)
            self.capsule([hip, knee], thigh, idn.lower)
        else:
            self.capsule([hip, knee, ankle], shin * 0.9, idn.skin, caps=False)
            if idn.lower_kind == "shorts":
                (hx, hy), (kx, ky) = self.pts[hip], self.pts[knee]
                self.pts[side + "mid"] = (hx * 0.4 + kx * 0.6, hy * 0.4 + ky * 0.6)
                self.capsule([hip, side + "mid"], thigh * 1.1, idn.lower)
        self.capsule([side + "heel", side + "toe"], 0.04 * self.b, idn.shoes)
        self.occl.append((self.key, "leg", "cap", (self.pts[hip], self.pts[knee], thigh * k / 2)))
        self.occl.append((self.key, "leg", "cap", (self.pts[knee], self.pts[ankle], shin * k / 2)))

    def _arm(self, side: str) -> None:
        idn, k, sh, elbow, wrist = self.idn, self.k, side + "sh", side + "elbow", side + "wrist"
        self.own[elbow] = self.own[wrist] = self.key
        ua, fa = 0.056 * self.b, 0.044 * self.b
        self.capsule([elbow, wrist], fa, idn.upper if idn.sleeves == "long" else idn.skin, caps=False)
        self.capsule([sh, elbow], ua, idn.upper)
        self.ellipse(wrist, 0.024, 0.026, idn.skin)
        self.occl.append((self.key, "arm", "cap", (self.pts[sh], self.pts[elbow], ua * k / 2)))
        self.occl.append((self.key, "arm", "cap", (self.pts[elbow], self.pts[wrist], fa * k / 2)))

    def _pelvis(self, _: str) -> None:
        (xw, yw), (xc, yc), (xh, yh) = self.pts["waist"], self.pts["crotch"], self.pts["hem"]
        hw = self.k * self.b * (self.ac * 0.1 + self.as_ * 0.06)
        if self.idn.lower_kind == "skirt":  # flares to the knees
            xc, yc, hem = xh, yh, self.k * self.b * (self.ac * 0.16 + self.as_ * 0.11)
        else:
            hem = hw
        self.d.polygon([(xw - hw, yw), (xw + hw, yw), (xc + hem, yc), (xc - hem, yc)], fill=self.idn.lower)

    def _torso(self, _: str) -> None:
        idn, k = self.idn, self.k
        ht = k * self.b * (self.ac * 0.125 + self.as_ * 0.065)
        hb = k * self.b * (self.ac * 0.1 + self.as_ * 0.06)
        (xt, yt), (xb, yb) = self.pts["neck"], self.pts["waist"]
        yb += 0.01 * k
        poly = [(xt - ht, yt + 0.25 * ht), (xt - 0.55 * ht, yt - 0.15 * ht), (xt + 0.55 * ht, yt - 0.15 * ht),
                (xt + ht, yt + 0.25 * ht), (xb + hb, yb), (xb - hb, yb)]  # fmt: skip
        self.d.polygon(poly, fill=idn.upper)
        self.occl.append((self.key, "arm", "trap", ((xt, yt), (xb, yb), ht, hb)))
        if idn.pattern == "plain":
            return
        # the pattern: a mask of the torso times a mask of stripes / checks / the lower half
        x0, y0 = int(min(xt - ht, xb - hb)) - 1, int(yt - ht) - 1
        mask = Image.new("L", (int(max(xt + ht, xb + hb)) + 2 - x0, int(yb) + 2 - y0), 0)
        ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in poly], fill=255)
        pat = Image.new("L", mask.size, 0)
        dp, (mw, mh) = ImageDraw.Draw(pat), mask.size
        period = max(2.0, 0.036 * k)
        if idn.pattern == "two-tone":
            dp.rectangle((0, (yt + yb) / 2 - y0, mw, mh), fill=255)
        else:
            for y in np.arange(yt - y0, mh, period):
                dp.rectangle((0, y, mw, y + period / 2 - 0.5), fill=255)
            if idn.pattern == "checks":
                for x in np.arange((xt + xb) / 2 - x0 - 4 * period, mw, period):
                    dp.rectangle((x, 0, x + period / 2 - 0.5, mh), fill=255)
        self.im.paste(idn.upper2, (x0, y0), ImageChops.multiply(mask, pat))

    def _longhair(self, _: str) -> None:
        (x0, y0), (x1, y1) = self.pts["longhair_top"], self.pts["longhair_bot"]
        hw = self.k * (self.ac * 0.062 + self.as_ * 0.045)
        self.d.polygon(_octagon(min(x0, x1) - hw, y0, max(x0, x1) + hw, y1, hw * 0.6), fill=self.idn.hair)

    def _head(self, _: str) -> None:
        idn, k = self.idn, self.k
        x, y = self.pts["neck"]
        self.d.rectangle((x - 0.022 * k, y - 0.06 * k, x + 0.022 * k, y), fill=_shade(idn.skin, 0.9))
        rx = self.ac * 0.05 + self.as_ * 0.056
        if idn.hair_length != "none":
            grow = 1.0 if idn.hair_length == "short" else 1.12
            self.ellipse("hair", (rx + 0.006) * grow, 0.066 * grow, idn.hair)
        if self.depth["face"] > self.depth["hair"] - 0.004 or idn.hair_length == "none":
            self.ellipse("face", rx * 0.96, 0.06, idn.skin)
        if k >= 80:  # eyes as dark dots where they are visible
            for e, side in (("reye", -1), ("leye", 1)):
                if _eye_visible(side, self.c, self.s):
                    self.d.point(self.pts[e], fill=(30, 20, 20))

    def _pack(self, _: str) -> None:
        idn, k = self.idn, self.k
        hw, hh = k * (self.ac * 0.085 * self.b + self.as_ * 0.045), k * 0.12
        rect = self.box("pack", hw, hh, idn.bag_colour, 0.25)
        if self.c < -0.5:  # the front pocket, seen from behind
            x, y = self.pts["pack"]
            self.d.rectangle(
                (x - 0.6 * hw, y + 0.15 * hh, x + 0.6 * hw, y + 0.8 * hh), fill=_shade(idn.bag_colour, 0.7)
            )
        self.occl.append((self.key, "arm", "rect", rect))

    def _straps(self, _: str) -> None:
        for sd in "rl":
            pts = [self.pts[f"strap_{sd}f0"], self.pts[f"strap_{sd}f1"]]
            self.d.line(pts, fill=_shade(self.idn.bag_colour, 0.8), width=max(1, round(0.018 * self.k)))

    def _bag(self, _: str) -> None:
        hw, hh = self.k * (self.ac * 0.025 + self.as_ * 0.075), self.k * 0.055
        self.occl.append((self.key, "arm", "rect", self.box("bag", hw, hh, self.idn.bag_colour, 0.2)))

    def _strap(self, _: str) -> None:
        top = self.pts[f"strap_{'r' if self.idn.bag_side > 0 else 'l'}{'f' if self.c > 0 else 'b'}0"]
        self.d.line(
            [top, self.pts["bag"]], fill=_shade(self.idn.bag_colour, 0.8), width=max(1, round(0.016 * self.k))
        )

    # keypoints ------------------------------------------------------------------------------------
    def keypoints(self) -> np.ndarray:
        """COCO-18 keypoints with the occlusion rules of the module docstring."""
        c, s = self.c, self.s
        out = np.array([self.pts[n] for n in _KP_NAMES], dtype=np.float64)
        hidden = [False] * NUM_KEYPOINTS
        hidden[0] = c < -0.3  # nose
        for j, side in ((14, -1), (15, 1)):
            hidden[j] = not _eye_visible(side, c, s)
        for j, side in ((16, -1), (17, 1)):  # ears: outward normal (±1, 0, -0.2), normalised
            hidden[j] = side * 0.98 * s - 0.196 * c < -0.5
        for j, side in ((2, -1), (5, 1), (8, -1), (11, 1)):  # far shoulder / hip of a side view
            hidden[j] = side * s < -0.6
        occl = sorted(self.occl, key=lambda o: -o[0])
        for j in (3, 4, 6, 7, 9, 10, 12, 13):  # arm joints: hidden by the torso, near arm or a bag;
            x, y = out[j]  # leg joints: by the near leg
            mine, group = self.own[_KP_NAMES[j]], "arm" if j < 8 else "leg"
            for key, hides, kind, g in occl:
                if key <= mine:
                    break
                if hides == group and _covers(kind, g, x, y):
                    hidden[j] = True
                    break
        out[hidden] = -1.0
        return out


def _octagon(x0: float, y0: float, x1: float, y1: float, cut: float) -> list[tuple[float, float]]:
    return [(x0 + cut, y0), (x1 - cut, y0), (x1, y0 + cut), (x1, y1 - cut), (x1 - cut, y1), (x0 + cut, y1),
            (x0, y1 - cut), (x0, y0 + cut)]  # fmt: skip


def _eye_visible(side: int, c: float, s: float) -> bool:
    """An eye's outward normal (±sin 35°, 0, cos 35°) must point towards the camera."""
    return side * 0.574 * s + 0.819 * c >= 0.15


def _covers(kind: str, g: tuple, x: float, y: float) -> bool:
    if kind == "cap":  # a capsule: distance to the segment below the radius
        (ax, ay), (bx, by), r = g
        vx, vy = bx - ax, by - ay
        t = min(1.0, max(0.0, ((x - ax) * vx + (y - ay) * vy) / max(vx * vx + vy * vy, 1e-9)))
        return (x - ax - t * vx) ** 2 + (y - ay - t * vy) ** 2 < r * r
    if kind == "trap":  # the torso's trapezoid
        (xt, yt), (xb, yb), ht, hb = g
        t = (y - yt) / max(yb - yt, 1e-9)
        return 0 <= t <= 1 and abs(x - (xt + t * (xb - xt))) < ht + t * (hb - ht)
    x0, y0, x1, y1 = g
    return x0 <= x <= x1 and y0 <= y <= y1


def _canvas(camera: Camera, height: int, width: int, u: list[float]) -> tuple[Image.Image, int]:
    """A random crop of the camera's background at the working size, and the supersampling factor."""
    ss = max(1, math.ceil(64 / height))  # tiny images are drawn larger and box-downsampled
    hw, ww = height * ss, width * ss
    bg = _background(camera, hw, ww)
    ox, oy = int(u[0] * (bg.width - ww)), int(u[1] * (bg.height - hw))
    im = bg.crop((ox, oy, ox + ww, oy + hw))
    if u[2] < camera.clutter:  # a pole or the edge of a passer-by
        x, w = (u[3] * 0.3 if u[4] < 0.5 else 1 - u[3] * 0.3) * ww, 0.035 * hw
        ImageDraw.Draw(im).rectangle(
            (x - w, hw * 0.05 * u[7], x + w, hw), fill=hsv_colour(u[5], 0.4, 0.15 + 0.6 * u[6])
        )
    return im, ss


def _finish(im: Image.Image, camera: Camera, u: list[float], box: tuple, ss: int) -> np.ndarray:
    """Downsample, blur ``box`` (the person; the cached background is blurred already), then apply the
    camera's contrast, brightness and tint as a per-pixel gain and add Gaussian noise."""
    if ss > 1:
        im = im.reduce(ss)
        box = tuple(v / ss for v in box)
    height, width = im.height, im.width
    img = np.asarray(im, dtype=np.float32)
    radius = camera.blur * height / 128 * (0.7 + 0.6 * u[8])
    e = radius / (2 * radius + 1)  # the outer weight of a 3-tap box blur of this radius
    x0, y0 = max(0, int(box[0]) - 1), max(0, int(box[1]) - 1)
    x1, y1 = min(width, int(box[2]) + 2), min(height, int(box[3]) + 2)
    if e > 0.05 and x1 - x0 > 2 and y1 - y0 > 2:
        r = img[y0:y1, x0:x1]
        h = r[:, :-2] + r[:, 2:]  # horizontal pass over the interior columns
        h *= e
        h += (1 - 2 * e) * r[:, 1:-1]
        v = h[:-2] + h[2:]  # vertical pass over the interior rows
        v *= e
        v += (1 - 2 * e) * h[1:-1]
        img[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = v
    gain, noise = _sensor(camera, height, width)
    img *= gain
    img *= 1 + camera.flicker * (2 * u[9] - 1)  # per-image brightness jitter
    nx, ny = int(u[10] * width), int(u[11] * height)
    img += noise[ny : ny + height, nx : nx + width]
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def render_person(
    identity: Identity,
    pose: PoseParams,
    camera: Camera,
    *,
    height: int = 128,
    width: int = 64,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``identity`` in ``pose`` seen by ``camera``.

    Images smaller than 64 rows are drawn at an integer multiple of the size and box-downsampled.
    ``rng`` draws the per-image nuisances (background crop, clutter, blur, brightness, noise); ``None``
    means a fixed seed.

    Returns:
        ``(image uint8 (H, W, 3), keypoints float32 (18, 2))``: keypoints (x, y) in pixels, -1 where a
        joint is hidden by the view (see the module docstring) or outside the image.
    """
    if pose.view not in VIEW_YAW:
        raise ValueError(f"pose.view must be one of {VIEWS}, got {pose.view!r}")
    if height < 8 or width < 4:
        raise ValueError(f"image size must be at least 8x4, got {height}x{width}")
    u = (np.random.default_rng(0) if rng is None else rng).random(12).tolist()
    im, ss = _canvas(camera, height, width, u)
    hw, ww = im.height, im.width
    k = pose.scale * identity.height * 0.9 * hw  # pixels per body height
    # pixel centres sit at integer coordinates, so the continuous frame is shifted by half a pixel
    cx, ground = ww / 2 + pose.dx * ww - 0.5, hw * 0.975 + pose.dy * hw - 0.5
    painter = _Painter(
        im, identity, _body(identity, pose), _D(VIEW_YAW[pose.view] + pose.yaw), k, (cx, ground)
    )
    fx = (painter.pts["rheel"][0] + painter.pts["lheel"][0]) / 2  # shadow
    painter.d.ellipse(
        (fx - 0.16 * k, ground - 0.02 * k, fx + 0.16 * k, ground + 0.012 * k),
        fill=_shade(camera.colours[2], 0.6),
    )
    painter.paint()
    kps = painter.keypoints()
    if ss > 1:
        kps = np.where(kps >= 0, (kps + 0.5) / ss - 0.5, -1.0)
    m = 0.14 * k  # the person's box, with room for limbs and bags
    xs = [p[0] for p in painter.pts.values()]
    ys = [p[1] for p in painter.pts.values()]
    img = _finish(im, camera, u, (min(xs) - m, min(ys) - m, max(xs) + m, max(ys) + m), ss)
    return img, _inside(kps, height, width)


def _inside(kps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Joints outside the image become missing; those within half a pixel of the border are clamped
    onto it (``drop_outside`` keeps x in (-0.5, 0), which ``as_keypoints`` would read as missing)."""
    out = drop_outside(kps.astype(np.float32), height, width)
    vis = (out >= 0).any(-1)
    out[vis] = np.clip(out[vis], 0, [width - 1, height - 1])
    return out


def render_background(
    camera: Camera, *, height: int = 128, width: int = 64, rng: np.random.Generator | None = None
) -> np.ndarray:
    """A person-free image from ``camera`` (Market-style junk / false detections)."""
    u = (np.random.default_rng(0) if rng is None else rng).random(12).tolist()
    im, ss = _canvas(camera, height, width, u)
    return _finish(im, camera, u, (0, 0, 0, 0), ss)


__all__ = ["render_background", "render_person"]
