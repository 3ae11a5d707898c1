"""Renders of synthetic people for the pose judge: training batches and the held-out sets.

Every render comes from :func:`~posereid.experiments.synthetic.people.render_person` (which knows each
keypoint), drawn from seeded streams disjoint from every dataset's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from posereid.experiments.quality.judge.degradations import degrade, jpeg_round_trip
from posereid.experiments.synthetic.params import Camera, sample_camera, sample_identity, sample_pose
from posereid.experiments.synthetic.people import render_background, render_person
from posereid.models.pose import NUM_KEYPOINTS, flip_keypoints

#: Seeds of the judge's own renders. ``synth-market``, the demo and the tests use small seeds (0, 1, 2,
#: ...) and draw from ``default_rng([seed, tag, ...])``; the judge's streams start at 10**6 and carry
#: their own tags, so no judge image shares an identity, pose or camera stream with a dataset.
TRAIN_SEED = 1_000_000
EVAL_SEED = 2_000_000
_TRAIN_TAG, _EVAL_TAG = 0x7A1, 0xE7A
MIN_JUDGE_SEED = 1_000_000

#: the image sizes the judge is trained and evaluated at, ``(H, W)``
SIZES: tuple[tuple[int, int], ...] = ((64, 32), (128, 64))
SYNTH_JPEG_QUALITY = 95  # MarketWriter's default: what synth-market images go through


def training_rng(seed: int) -> np.random.Generator:
    """The generator of the training render stream of ``seed`` (its own tag: disjoint from the held-out sets)."""
    return np.random.default_rng([seed, _TRAIN_TAG])


def _person(
    rng: np.random.Generator,
    camera: Camera,
    hw: tuple[int, int],
    *,
    kind: str = "person",
    widen: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One render as ``synth-market`` makes them (``kind`` person / partial / junk / background)."""
    h, w = hw
    if kind == "background":
        return render_background(camera, height=h, width=w, rng=rng), np.full(
            (NUM_KEYPOINTS, 2), -1.0, np.float32
        )
    idn, pose = sample_identity(rng), sample_pose(rng)
    if kind == "partial":  # a badly cropped distractor, as dataset.plan_synthetic draws them
        pose = dataclasses.replace(
            pose,
            scale=float(rng.uniform(1.2, 2.0)),
            dx=float(rng.choice([-1, 1]) * rng.uniform(0.25, 0.5)),
            dy=float(rng.uniform(-0.5, 0.3)),
        )
    elif kind == "junk":  # just the feet of a passer-by
        pose = dataclasses.replace(pose, dy=float(rng.uniform(-0.75, -0.6)))
    elif widen:  # a little outside the renderer's usual framing: generators misplace people
        pose = dataclasses.replace(
            pose,
            scale=float(rng.uniform(0.7, 1.12)),
            dx=float(rng.uniform(-0.15, 0.15)),
            dy=float(rng.uniform(-0.06, 0.06)),
            yaw=float(rng.uniform(-30, 30)),
        )
    return render_person(idn, pose, camera, height=h, width=w, rng=rng)


def training_batch(
    rng: np.random.Generator,
    n: int,
    hw: tuple[int, int],
    cameras: Sequence[Camera],
    *,
    augment: float = 1.0,
) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` fresh renders ``(n, 3, H, W)`` in ``[0, 1]`` and their keypoints ``(n, 18, 2)``.

    Mix: 82 % people (a third of them framed more loosely), 10 % cropped distractors, 4 % feet only, 4 %
    backgrounds; half are mirrored (with the left/right swap), and ``degrade`` runs at ``augment``.
    """
    imgs = np.empty((n, hw[0], hw[1], 3), np.uint8)
    kps = np.empty((n, NUM_KEYPOINTS, 2), np.float32)
    for i in range(n):
        r = rng.random()
        kind = "person" if r < 0.82 else "partial" if r < 0.92 else "junk" if r < 0.96 else "background"
        cam = cameras[int(rng.integers(len(cameras)))]
        img, kp = _person(rng, cam, hw, kind=kind, widen=rng.random() < 0.33)
        if rng.random() < 0.5:
            img, kp = img[:, ::-1], flip_keypoints(kp, hw[1])
        imgs[i] = degrade(np.ascontiguousarray(img), rng, augment)
        kps[i] = kp
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255.0), kps


def heldout_people(
    n: int, hw: tuple[int, int], *, seed: int = EVAL_SEED, jpeg_quality: int | None = SYNTH_JPEG_QUALITY
) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` held-out people rendered as ``synth-market`` writes them (fresh identity, any view, a camera
    of a pool of 6 per 24 people, JPEG at quality 95), and their exact keypoints. The same seed and size
    give the same images."""
    rng = np.random.default_rng([seed, _EVAL_TAG, hw[0], hw[1]])
    imgs = np.empty((n, hw[0], hw[1], 3), np.uint8)
    kps = np.empty((n, NUM_KEYPOINTS, 2), np.float32)
    cams: list[Camera] = []
    for i in range(n):
        if i % 24 == 0:
            cams = [sample_camera(rng, c) for c in range(6)]
        img, kp = _person(rng, cams[int(rng.integers(6))], hw)
        imgs[i] = jpeg_round_trip(img, jpeg_quality) if jpeg_quality else img
        kps[i] = kp
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255.0), kps


def heldout_backgrounds(n: int, hw: tuple[int, int], *, seed: int = EVAL_SEED) -> torch.Tensor:
    """``n`` person-free held-out images (for the false-find rate)."""
    rng = np.random.default_rng([seed, _EVAL_TAG, 0xB6, hw[0], hw[1]])
    out = np.empty((n, hw[0], hw[1], 3), np.uint8)
    for i in range(n):
        out[i] = jpeg_round_trip(
            render_background(sample_camera(rng, 0), height=hw[0], width=hw[1], rng=rng), 95
        )
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)


__all__ = [
    "EVAL_SEED",
    "MIN_JUDGE_SEED",
    "SIZES",
    "SYNTH_JPEG_QUALITY",
    "TRAIN_SEED",
    "heldout_backgrounds",
    "heldout_people",
    "training_batch",
    "training_rng",
]
