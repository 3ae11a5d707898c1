"""COCO-18 keypoints for new images with mediapipe BlazePose (the ``pose`` extra).

mediapipe 0.10.14 is the last release whose wheel ships the BlazePose models; only
``model_complexity=1`` is bundled (0 and 2 try to download), so that is the one used. BlazePose's 33
landmarks are mapped to COCO-18 / OpenPose order (:data:`BLAZEPOSE_TO_COCO18`); the neck is the midpoint of
the shoulders with the smaller of their visibilities. A joint whose visibility is below ``min_visibility``
or that falls outside the image is missing (``-1``).

Coordinates are pixel indices (x, y) of the input image: mediapipe's normalised ``u`` maps to
``u * W - 0.5`` (pixel centres at integers, as in :mod:`posereid.models.pose`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from posereid.models.images import tensor01_to_uint8
from posereid.models.pose import NUM_KEYPOINTS, drop_outside, missing_pose

logger = logging.getLogger(__name__)

#: BlazePose-33 landmark index for each COCO-18 joint; ``None`` = neck (midpoint of landmarks 11 and 12).
BLAZEPOSE_TO_COCO18: tuple[int | None, ...] = (
    0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7,
)  # fmt: skip
_LEFT_SHOULDER, _RIGHT_SHOULDER = 11, 12

INSTALL_HINT = "pip install posereid[pose]"


class MissingExtraError(ImportError):
    """An optional dependency (a ``posereid[...]`` extra) is not installed."""


def _import_mediapipe() -> Any:
    """Import mediapipe quietly, or raise :class:`MissingExtraError` naming the extra to install."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mediapipe as mp  # noqa: PLC0415 - optional dependency, imported lazily
            from mediapipe.python.solutions import pose as mp_pose  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"keypoint extraction needs mediapipe (BlazePose), which could not be imported ({exc}); "
            f"install the pose extra: {INSTALL_HINT}"
        ) from exc
    return mp


@contextlib.contextmanager
def _quiet(native: bool = True) -> Iterator[None]:
    """Hide protobuf's deprecation warning and, with ``native``, send file descriptor 2 to /dev/null while
    mediapipe's C++ side (absl/glog/TFLite) prints its start-up banners."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*GetPrototype.*", category=UserWarning)
        if not native:
            yield
            return
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no real fd 2 (e.g. some notebooks): leave it alone
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def _as_rgb_array(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """C-contiguous uint8 ``HxWx3`` RGB from PIL, uint8 numpy (``HxWx3`` / ``HxW``) or a ``(3,H,W)`` tensor."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"tensor images must be (3, H, W), got {tuple(t.shape)}")
        arr = tensor01_to_uint8(t).permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8 RGB, got dtype {arr.dtype}")
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"numpy images must be HxWx3 RGB (or HxW), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty image of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def landmarks_to_coco18(
    xyv: np.ndarray, height: int, width: int, *, min_visibility: float = 0.5
) -> np.ndarray:
    """Map ``(33, 3)`` BlazePose landmarks ``(u, v, visibility)`` (normalised) to ``(18, 2)`` pixel (x, y).

    Pure function (no mediapipe needed), so the mapping is testable on its own.
    """
    xyv = np.asarray(xyv, dtype=np.float64)
    if xyv.shape != (33, 3):
        raise ValueError(f"expected (33, 3) BlazePose landmarks, got {xyv.shape}")
    out = missing_pose()
    for j, src in enumerate(BLAZEPOSE_TO_COCO18):
        if src is None:
            ls, rs = xyv[_LEFT_SHOULDER], xyv[_RIGHT_SHOULDER]
            u, v = (ls[:2] + rs[:2]) / 2.0
            vis = min(ls[2], rs[2])
        else:
            u, v, vis = xyv[src]
        if np.isfinite([u, v, vis]).all() and vis >= min_visibility:
            out[j] = (u * width - 0.5, v * height - 0.5)
    return drop_outside(out, height, width)


class PoseEstimator:
    """mediapipe BlazePose → COCO-18 keypoints, one person per image.

    Usage::

        with PoseEstimator() as est:
            kps = est(image)          # (18, 2) float32 (x, y), all -1 when no person is found
            many = est.batch(images)  # (N, 18, 2)

    Args:
        min_visibility: joints below this BlazePose visibility are missing.
        min_detection_confidence: person-detector threshold (below → no person, all ``-1``).
        quiet: silence mediapipe's native absl/TFLite start-up log lines (stderr is redirected only
            while the graph starts, in the constructor).

    Not thread-safe (one mediapipe graph); use one estimator per worker.
    """

    def __init__(
        self,
        *,
        min_visibility: float = 0.5,
        min_detection_confidence: float = 0.5,
        quiet: bool = True,
    ) -> None:
        if not 0.0 <= min_visibility <= 1.0:
            raise ValueError(f"min_visibility must be in [0, 1], got {min_visibility}")
        mp = _import_mediapipe()
        self.min_visibility = float(min_visibility)
        self.quiet = quiet
        with _quiet(quiet):
            self._pose = mp.solutions.pose.Pose(
                static_image_mode=True,
                model_complexity=1,  # the only BlazePose model bundled in the wheel
                smooth_landmarks=False,
                enable_segmentation=False,
                min_detection_confidence=float(min_detection_confidence),
            )
            # The graph opens its TFLite models asynchronously and prints a one-time INFO banner then;
            # one blocking warm-up call makes that happen while stderr is still silenced.
            self._pose.process(np.zeros((64, 64, 3), np.uint8))

    def __call__(self, image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
        """``(18, 2)`` float32 (x, y) keypoints of the most prominent person; all ``-1`` if none."""
        if self._pose is None:
            raise RuntimeError("PoseEstimator is closed")
        arr = _as_rgb_array(image)
        with _quiet(native=False):
            result = self._pose.process(arr)
        if result.pose_landmarks is None:
            return missing_pose()
        lms = result.pose_landmarks.landmark
        xyv = np.array([(lm.x, lm.y, lm.visibility) for lm in lms], dtype=np.float64)
        return landmarks_to_coco18(xyv, arr.shape[0], arr.shape[1], min_visibility=self.min_visibility)

    def batch(self, images: Iterable[Image.Image | np.ndarray | torch.Tensor]) -> np.ndarray:
        """``(N, 18, 2)`` keypoints for a sequence of images (or a ``(N, 3, H, W)`` tensor)."""
        out = [self(im) for im in images]
        return np.stack(out) if out else np.zeros((0, NUM_KEYPOINTS, 2), dtype=np.float32)

    def close(self) -> None:
        """Release the mediapipe graph (idempotent)."""
        if getattr(self, "_pose", None) is not None:
            self._pose.close()
            self._pose = None

    def __enter__(self) -> PoseEstimator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "BLAZEPOSE_TO_COCO18",
    "INSTALL_HINT",
    "MissingExtraError",
    "PoseEstimator",
    "landmarks_to_coco18",
]
