"""The Market-1501 input of an experiment run, parsed once, and the generator's training records.

:class:`MarketSource` holds one Market-format folder and its PATN annotation CSV and parses each at most
once, on first use: a run of the gain protocol (or the demo) builds one and passes it down, so its stages
and fractions share one scan of the folder instead of re-parsing it each time.
:func:`market_pose_records` turns a folder (or a source) into the generator's training records; the
``train-generator`` command and the gain protocol both use it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from PIL import Image
from tqdm.auto import tqdm

from posereid.models.pose import resize_keypoints, visible_mask
from posereid.reid_integration.market1501 import (
    BadInputPolicy,
    ImageReadError,
    Market1501,
    PatnAnnotations,
    check_image,
    image_size_problem,
    load_annotations,
    read_patn_csv,
)

if TYPE_CHECKING:
    from posereid.models.training import PoseRecord

logger = logging.getLogger(__name__)


class MarketSource:
    """A Market-1501-format folder and its PATN annotation CSV, each parsed at most once (on first use).

    Args:
        root: the Market folder (anything :class:`Market1501` accepts).
        annotations: its PATN keypoint CSV, or ``None`` when the run needs none.
        strict: stop at the first stray file of the folder (see :class:`Market1501`) instead of skipping
            and counting it (the default batch policy).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        annotations: str | os.PathLike[str] | None = None,
        *,
        strict: bool = False,
    ) -> None:
        self.root = Path(root)
        self.strict = bool(strict)
        self.annotations = None if annotations is None else Path(annotations)
        self._patn: dict[tuple[tuple[int, int] | None, str], PatnAnnotations] = {}

    @functools.cached_property
    def market(self) -> Market1501:
        """The parsed folder (:class:`Market1501`), scanned on first access only."""
        return Market1501(self.root, strict=self.strict)

    def patn(
        self, *, image_hw: tuple[int, int] | None = None, on_error: Literal["raise", "skip"] = "raise"
    ) -> PatnAnnotations:
        """The annotation CSV read with these :func:`read_patn_csv` options (read once per option set)."""
        if self.annotations is None:
            raise ValueError(f"{self.root}: no annotation CSV given for this Market folder")
        key = (None if image_hw is None else (int(image_hw[0]), int(image_hw[1])), on_error)
        if key not in self._patn:
            self._patn[key] = read_patn_csv(self.annotations, image_hw=image_hw, on_error=on_error)
        return self._patn[key]

    def __repr__(self) -> str:
        return f"MarketSource({str(self.root)!r}, annotations={self.annotations and str(self.annotations)!r})"


def market_pose_records(
    data: str | os.PathLike[str] | MarketSource,
    annotations: str | os.PathLike[str] | None = None,
    *,
    min_joints: int = 7,
    annotation_size: tuple[int, int] | None = None,
    strict: bool = False,
    progress: bool = True,
) -> list[PoseRecord]:
    """:class:`~posereid.models.training.PoseRecord` s for the train split; unusable images are skipped,
    counted and logged.

    ``data`` is a Market folder (with ``annotations``, its PATN CSV) or a :class:`MarketSource`, whose
    already parsed folder and annotations are reused. ``strict``: an unreadable image, a malformed or
    out-of-frame annotation row or a stray file of the folder raises, naming the file (and line), instead
    of being skipped and counted (the batch policy, :class:`BadInputPolicy`).
    """
    from posereid.models.training import PoseRecord

    source = data if isinstance(data, MarketSource) else MarketSource(data, annotations, strict=strict)
    market = source.market
    # the keypoints' frame comes from the data (or annotation_size); a row outside it is skipped, counted
    on_error = "raise" if strict else "skip"
    ann, frame = load_annotations(
        source.patn(on_error=on_error), market, frame=annotation_size, on_error=on_error
    )
    bad = BadInputPolicy(strict)
    skipped: Counter[str] = Counter()
    records: list[PoseRecord] = []
    for rec in tqdm(market.train, desc="checking images", leave=False, disable=not progress):
        if not rec.has_identity:
            skipped["junk/distractor image(s)"] += 1
            continue
        kps = ann.get(rec.name)
        if kps is None:
            skipped["image(s) without an annotation row"] += 1
            continue
        if int(visible_mask(kps).sum()) < min_joints:
            skipped[f"image(s) with fewer than {min_joints} visible joints"] += 1
            continue
        try:
            check_image(rec.path)
        except ImageReadError as exc:
            bad.skip_or_raise(exc)
            skipped["unreadable image(s)"] += 1
            logger.warning("%s", exc)
            continue
        with Image.open(rec.path) as im:
            hw = (im.height, im.width)
        problem = image_size_problem(hw, frame)
        if problem is not None:
            bad.skip_or_raise(ImageReadError(f"{rec.path}: {problem}"), "image(s) of a bad size")
            skipped["image(s) of a size far from the keypoint frame"] += 1
            logger.warning("%s: %s", rec.path, problem)
            continue
        if hw != frame:
            kps = resize_keypoints(kps, frame, hw)
        records.append(PoseRecord(rec.path, rec.pid, kps, name=rec.name))
    for why, n in sorted(skipped.items()):
        logger.warning("skipped %d %s", n, why)
    if ann.skipped:
        logger.warning("%s: %d malformed or out-of-frame row(s) ignored", source.annotations, ann.skipped)
    logger.info("%d training images of %d identities", len(records), len({r.pid for r in records}))
    return records


__all__ = ["MarketSource", "market_pose_records"]
