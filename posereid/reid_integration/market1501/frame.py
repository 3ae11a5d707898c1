"""The keypoint frame of an annotation file, which comes from the data.

The ``(H, W)`` frame of a PATN CSV's coordinates is the size of the images it annotates
(:func:`annotation_frame`; images of mixed sizes are an error unless a frame is given explicitly, e.g. by
``--annotation-size HxW``, :func:`posereid.argtypes.add_annotation_size_arg`), and a keypoint outside that
frame is an error naming the file and line, or a counted skip (:func:`load_annotations`) — never silently
squeezed or dropped.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from posereid.models.io_utils import is_temp_file
from posereid.models.pose import as_keypoints
from posereid.reid_integration.market1501.folder import SPLIT_DIRS, Market1501, resolve_data_dir
from posereid.reid_integration.market1501.names import IMAGE_EXTENSIONS, MarketFormatError, MarketRecord
from posereid.reid_integration.market1501.patn import PatnAnnotations, read_patn_csv

logger = logging.getLogger(__name__)

#: Where :func:`annotation_frame` looks for the images a CSV annotates: a Market-1501 folder (its train,
#: query and gallery splits; ``gt_bbox`` holds uncropped boxes of other sizes), a plain folder of images,
#: a parsed :class:`Market1501`, or image paths / :class:`MarketRecord` s.
ImageSource = str | os.PathLike[str] | Market1501 | Iterable[str | os.PathLike[str] | MarketRecord]
_FRAME_SPLITS = ("train", "query", "gallery")


def _image_paths(images: ImageSource) -> tuple[list[Path], str]:
    """Candidate image files of an :data:`ImageSource` and a description of it for messages."""
    if isinstance(images, Market1501):
        return [r.path for s in _FRAME_SPLITS for r in images.split(s)], str(images.root)
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        if not folder.is_dir():
            return [], str(folder)
        try:
            root = resolve_data_dir(folder)
            dirs = [root / SPLIT_DIRS[s] for s in _FRAME_SPLITS]
        except MarketFormatError:
            root, dirs = folder, [folder]
        paths = [
            Path(e.path)
            for d in dirs
            if d.is_dir()
            for e in os.scandir(d)
            if e.name.lower().endswith(IMAGE_EXTENSIONS) and not is_temp_file(e.name)
        ]
        return paths, str(root)
    paths = [r.path if isinstance(r, MarketRecord) else Path(r) for r in images]
    return paths, f"{len(paths)} given image(s)"


def _image_hw(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` from the image header, or ``None`` when unreadable (reported where it is loaded)."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def annotation_frame(
    names: Iterable[str],
    images: ImageSource,
    *,
    explicit: tuple[int, int] | None = None,
    source: str = "annotations",
    default: tuple[int, int] | None = None,
    required: bool = True,
) -> tuple[int, int] | None:
    """The ``(H, W)`` frame of the keypoints of an annotation file: ``explicit`` if given, else the common
    size of the images it annotates.

    Args:
        names: the image names of the annotation rows (matched to image files by file name; never joined
            with a folder).
        images: where the annotated images are (an :data:`ImageSource`).
        explicit: a frame given by the user (``--annotation-size`` / ``annotation_hw=``); returned as is.
        source: the annotation file, for messages.
        default: returned (with a warning) when none of ``names`` is an image of ``images``.
        required: without a ``default``, ``True`` raises when no annotated image is found; ``False``
            returns ``None`` (the annotations then annotate nothing there).

    Raises:
        MarketFormatError: the annotated images have different sizes (the message lists sizes and files;
            pass an explicit frame), or no annotated image was found and neither ``default`` nor
            ``required=False`` allows it.
    """
    if explicit is not None:
        h, w = (int(explicit[0]), int(explicit[1]))
        if h < 1 or w < 1:
            raise ValueError(f"{source}: annotation frame must be positive, got {explicit!r}")
        return h, w
    wanted = set(names)
    paths, where = _image_paths(images)
    by_size: dict[tuple[int, int], list[Path]] = defaultdict(list)
    for p in sorted(paths):
        if p.name in wanted:
            hw = _image_hw(p)
            if hw is not None:
                by_size[hw].append(p)
    if not by_size:
        if default is not None:
            logger.warning(
                "%s: none of its %d image(s) found in %s to take the keypoint frame from; assuming %dx%d "
                "(pass --annotation-size HxW / annotation_hw= to say so)",
                source, len(wanted), where, default[0], default[1],
            )  # fmt: skip
            return int(default[0]), int(default[1])
        if not required:
            return None
        raise MarketFormatError(
            f"{source}: cannot tell the frame of its keypoints: none of its {len(wanted)} image name(s) is a "
            f"readable image in {where}; pass --annotation-size HxW (annotation_hw=)"
        )
    if len(by_size) > 1:
        listed = "; ".join(
            f"{h}x{w}: {len(ps)} image(s), e.g. {', '.join(str(p) for p in ps[:3])}"
            for (h, w), ps in sorted(by_size.items(), key=lambda kv: -len(kv[1]))
        )
        raise MarketFormatError(
            f"{source}: the images it annotates have different sizes ({listed}), so the frame of its "
            "keypoints is ambiguous; pass --annotation-size HxW (annotation_hw=) to give it"
        )
    ((frame, ps),) = by_size.items()
    logger.debug(
        "%s: keypoint frame %dx%d (the size of the %d image(s) it annotates)", source, *frame, len(ps)
    )
    return frame


#: how far an image's size may be from its keypoints' frame before it is refused (scale, aspect ratio)
MAX_FRAME_SCALE = 8.0
MAX_ASPECT_CHANGE = 0.25


def image_size_problem(hw: tuple[int, int], frame: tuple[int, int]) -> str | None:
    """Why an ``hw`` image cannot be used with keypoints in ``frame`` (``None`` when it can).

    A 1x1 crop leaves no joint after rescaling, a 4000x2000 one blows a 128x64 generation up to megabytes,
    and a crop of another aspect ratio bends the skeleton: such images are skipped and counted by batch
    commands (or refused with this reason), never silently squeezed.
    """
    (h, w), (fh, fw) = hw, frame
    scale = max(h / fh, w / fw, fh / max(h, 1), fw / max(w, 1))
    if min(h, w) < 8 or scale > MAX_FRAME_SCALE:
        return f"image size {h}x{w} is too far from the keypoint frame {fh}x{fw} (more than {MAX_FRAME_SCALE:g}x)"
    aspect = (h / w) / (fh / fw)
    if abs(aspect - 1.0) > MAX_ASPECT_CHANGE:
        return f"image size {h}x{w} has another aspect ratio than the keypoint frame {fh}x{fw}"
    return None


def check_in_frame(
    annotations: Mapping[str, np.ndarray],
    frame: tuple[int, int],
    *,
    on_error: Literal["raise", "skip"] = "raise",
    origin: str = "",
    source: str = "annotations",
) -> PatnAnnotations:
    """Check that every visible keypoint lies in ``frame`` = ``(H, W)`` (after rounding to a pixel).

    A row with a joint outside raises :class:`MarketFormatError` naming the file and line (``on_error=
    "raise"``) or is dropped, logged and counted in the result's ``skipped`` / ``errors`` (``"skip"``);
    it is never clamped or rescaled. ``origin`` says where the frame came from (appended to messages).
    Returns the annotations that pass (a :class:`PatnAnnotations`; the input is returned when all pass).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    ann = annotations if isinstance(annotations, PatnAnnotations) else PatnAnnotations(annotations)
    if not ann:
        return ann
    h, w = int(frame[0]), int(frame[1])
    names = list(ann)
    kps = np.stack([as_keypoints(ann[n], source=ann.where(n, source)) for n in names])
    vis = (kps >= 0).all(-1)
    outside = vis & ((kps[..., 0] >= w - 0.5) | (kps[..., 1] >= h - 0.5))
    bad_rows = np.flatnonzero(outside.any(-1))
    if len(bad_rows) == 0:
        return ann
    errors = []
    for i in bad_rows:
        j = int(np.flatnonzero(outside[i])[0])
        x, y = (float(v) for v in kps[i, j])
        errors.append(
            f"{ann.where(names[i], source)}: joint {j} of {names[i]!r} at (x={x:g}, y={y:g}) is outside the "
            f"{h}x{w} frame{origin}"
        )
    if on_error == "raise":
        more = f" ({len(errors) - 1} more row(s) like it)" if len(errors) > 1 else ""
        raise MarketFormatError(errors[0] + more)
    drop = {names[i] for i in bad_rows}
    out = PatnAnnotations((n, k) for n, k in ann.items() if n not in drop)
    out.path, out.lines = ann.path, {n: v for n, v in ann.lines.items() if n not in drop}
    out.skipped, out.errors = ann.skipped + len(errors), [*ann.errors, *errors]
    logger.warning(
        "%s: skipped %d row(s) with a keypoint outside the %dx%d frame; first: %s",
        ann.path or source, len(errors), h, w, errors[0],
    )  # fmt: skip
    return out


def load_annotations(
    annotations: str | os.PathLike[str] | Mapping[str, np.ndarray],
    images: ImageSource,
    *,
    frame: tuple[int, int] | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    default_frame: tuple[int, int] | None = None,
    required: bool = True,
) -> tuple[PatnAnnotations, tuple[int, int] | None]:
    """Read a PATN CSV (or take a ``name → (18, 2)`` mapping), find its keypoint frame from the data, and
    check every keypoint lies in it. The one way commands should read annotations they rescale.

    Args:
        annotations: PATN CSV path or mapping (e.g. an earlier :func:`read_patn_csv` result).
        images: where the annotated images are (see :func:`annotation_frame`).
        frame: an explicit ``(H, W)`` (``--annotation-size``); ``None`` → from the images.
        on_error: malformed rows and rows with a keypoint outside the frame raise naming the file and line
            (``"raise"``) or are skipped, logged and counted in ``skipped`` / ``errors`` (``"skip"``).
        default_frame, required: see :func:`annotation_frame`.

    Returns:
        ``(annotations, frame)``; ``frame`` is ``None`` only with ``required=False`` when no annotated image
        was found (then nothing is checked: the rows annotate no image of ``images``).
    """
    if isinstance(annotations, Mapping):
        ann = annotations if isinstance(annotations, PatnAnnotations) else PatnAnnotations(annotations)
    else:
        ann = read_patn_csv(annotations, image_hw=None, on_error=on_error)
    source = str(ann.path) if ann.path is not None else "annotations"
    hw = annotation_frame(
        ann.keys(), images, explicit=frame, source=source, default=default_frame, required=required
    )
    if hw is None:
        return ann, None
    if frame is not None:
        origin = " given by --annotation-size / annotation_hw"
    else:
        origin = (
            " of the images it annotates (pass --annotation-size HxW if its coordinates use another frame)"
        )
    return check_in_frame(ann, hw, on_error=on_error, origin=origin, source=source), hw


__all__ = [
    "MAX_ASPECT_CHANGE",
    "MAX_FRAME_SCALE",
    "ImageSource",
    "annotation_frame",
    "check_in_frame",
    "image_size_problem",
    "load_annotations",
]
