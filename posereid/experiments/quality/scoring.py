"""Scoring of ``posereid evaluate-generator``: the metric back-ends and :class:`QualityScorer`.

Used by :mod:`~posereid.experiments.quality.evaluate` (which imports this module, never the reverse, and
resolves the back-ends from the user's flags): :class:`Backends` holds the optional metric networks, and
:class:`QualityScorer` computes the real-data side once (FID reference statistics, gallery features,
body masks), then scores any set of images aligned with the pairs of an
:class:`~posereid.experiments.quality.pairs.EvalPairs` (image, pose and identity metrics from
:mod:`posereid.experiments.quality.metrics`). Every public name here is also importable from
:mod:`posereid.experiments.quality`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from posereid.experiments.quality.metrics import (
    FidScorer,
    Lpips,
    body_mask,
    detect_keypoints,
    identity_fidelity,
    pose_fidelity,
    ssim_scores,
)
from posereid.experiments.quality.pairs import EvalPairs
from posereid.models.images import pil_to_tensor01
from posereid.reid_integration.evaluate import evaluate_features
from posereid.reid_integration.market1501 import (
    BadInputPolicy,
    ImageReadError,
    Market1501,
    MarketRecord,
    load_image,
)

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def _image_batches(
    records: Sequence[MarketRecord],
    size: tuple[int, int] | None,
    batch: int,
    desc: str,
    bad: BadInputPolicy,
    kept: list[MarketRecord] | None = None,
):
    """Yield ``(B, 3, H, W)`` batches of real images at ``size`` (``None``: the first image's size).

    An unreadable image goes to ``bad`` (skipped and counted, or raised when strict); the records of the
    yielded images are appended to ``kept``."""
    for i in tqdm(range(0, len(records), batch), desc=desc, leave=False, disable=len(records) <= batch):
        ims = []
        for r in records[i : i + batch]:
            try:
                im = load_image(r.path, size=size)
            except ImageReadError as exc:
                bad.skip_or_raise(exc, "unreadable reference image(s)")
                continue
            size = size or (im.height, im.width)
            ims.append(pil_to_tensor01(im))
            if kept is not None:
                kept.append(r)
        if ims:
            yield torch.stack(ims)


# --------------------------------------------------------------------------------------------------
# Metric back-ends (resolved once, in quality.evaluate_generator)
# --------------------------------------------------------------------------------------------------
@dataclass
class Backends:
    """The optional metric networks, and for each one that is absent the reason shown in the report."""

    lpips: Lpips | None = None
    fid: FidScorer | None = None
    pose: Any = None
    reid: FeatureFn | None = None
    status: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------
def _features(fn: FeatureFn, images: torch.Tensor, batch: int) -> torch.Tensor:
    out = [fn(images[i : i + batch]).detach().float().cpu() for i in range(0, images.shape[0], batch)]
    return torch.cat(out)


class QualityScorer:
    """Scores generated image sets against one fixed set of pairs and real reference data.

    The real-data side (FID reference statistics, gallery features, the masks) is computed once in the
    constructor and reused for every scored set (ceiling, trained, floor, each sweep point).
    """

    def __init__(
        self,
        pairs: EvalPairs,
        market: Market1501,
        backends: Backends,
        *,
        batch_size: int = 32,
        pose_upscale: int | None = None,
        fid_reference_max: int = 5000,
        seed: int = 0,
        device: torch.device | str = "cpu",
        strict: bool = False,
    ) -> None:
        self.pairs, self.backends, self.batch = pairs, backends, batch_size
        #: real reference images (FID reference, gallery) that could not be read: skipped and counted
        self.bad = BadInputPolicy(strict)
        self.device = torch.device(device)
        h, w = pairs.target.shape[-2:]
        self.size = (int(h), int(w))
        self.pose_upscale = pose_upscale or max(1, math.ceil(128 / self.size[0]))
        self.mask = body_mask(pairs.target_kps, *self.size)
        self.info: dict[str, Any] = {}
        if backends.fid is not None:
            ref = market.train or market.gallery
            ref = [r for r in ref if not r.is_junk]
            if len(ref) > fid_reference_max:
                keep = np.sort(np.random.default_rng(seed).choice(len(ref), fid_reference_max, replace=False))
                ref = [ref[i] for i in keep]
            backends.fid.to(self.device)
            used: list[MarketRecord] = []
            for batch in _image_batches(ref, self.size, batch_size, "FID reference", self.bad, used):
                backends.fid.add_real(batch)
            self.info["fid_reference"] = f"{len(used)} real {'train' if market.train else 'gallery'} images"
        if backends.reid is not None:
            gal = [r for r in market.gallery if not r.is_junk]  # real resolution; the re-ID model resizes
            if not gal:
                raise ValueError(
                    f"{market.root}: the gallery (bounding_box_test) is empty; identity metrics need it"
                )
            readable: list[MarketRecord] = []
            feats = [
                _features(backends.reid, b, batch_size)
                for b in _image_batches(gal, None, batch_size, "gallery", self.bad, readable)
            ]
            if not readable:
                raise ValueError(f"{market.root}: no gallery image could be read; identity metrics need them")
            gal = readable
            self.gallery_feats = torch.cat(feats)
            self.gallery_pids = np.array([r.pid for r in gal])
            self.gallery_camids = np.array([r.camid for r in gal])
            row = {r.name: i for i, r in enumerate(gal)}
            # leave each pair's own source and target images out of its identity centroid
            self.exclude = np.array([[row.get(a, -1), row.get(b, -1)] for a, b in pairs.names])
            n_ids = len({p for p in self.gallery_pids.tolist() if p > 0})
            self.info["gallery"] = (
                f"{len(gal)} real gallery images (distractors included), {n_ids} identities"
            )
        self.bad.warn(f"{market.root}: real reference images")
        if self.bad.skipped:
            self.info["skipped reference images"] = self.bad.describe()

    @torch.no_grad()
    def score(self, images: torch.Tensor, *, query_camids: np.ndarray) -> dict[str, float]:
        """All available metrics of ``images`` (aligned with the pairs) against the real targets."""
        p, b = self.pairs, self.backends
        images = images.detach().float().cpu().clamp(0, 1)
        if images.shape != p.target.shape:
            raise ValueError(f"expected {tuple(p.target.shape)} images, got {tuple(images.shape)}")
        out: dict[str, float] = {
            "ssim": float(ssim_scores(images, p.target).mean()),
            "mask_ssim": float(ssim_scores(images, p.target, mask=self.mask).mean()),
        }
        if b.lpips is not None:
            lp = [
                b.lpips(images[i : i + self.batch], p.target[i : i + self.batch])
                for i in range(0, len(p), self.batch)
            ]
            mlp = [
                b.lpips(
                    images[i : i + self.batch], p.target[i : i + self.batch], self.mask[i : i + self.batch]
                )
                for i in range(0, len(p), self.batch)
            ]
            out["lpips"], out["mask_lpips"] = float(torch.cat(lp).mean()), float(torch.cat(mlp).mean())
        if b.fid is not None:
            out["fid"] = b.fid.score(images, self.batch) if len(p) >= 2 else float("nan")
        if b.pose is not None:
            if hasattr(b.pose, "detect"):  # the pose judge: batched, any size, no upscaling
                detected = b.pose.detect(images)
            else:
                detected = detect_keypoints(b.pose, images, upscale=self.pose_upscale)
            for k, v in pose_fidelity(detected, p.target_kps).items():
                out[k if k in ("pckh", "joint_error_px", "no_person") else f"pose_{k}"] = v
        if b.reid is not None:
            feats = _features(b.reid, images, self.batch)
            ids = identity_fidelity(
                feats, p.source_pid, self.gallery_feats, self.gallery_pids, exclude=self.exclude
            )
            s = ids.summary()
            out.update(
                own_centroid_cos=s["own_centroid_cos"],
                other_centroid_cos=s["other_centroid_cos"],
                id_margin=s["margin"],
                id_closer_to_own=s["closer_to_own"],
            )
            # The pair's own source and target images leave the gallery for its query, for every system
            # alike: a copy of either must not count as recognising the person.
            r = evaluate_features(
                feats, self.gallery_feats, p.source_pid, self.gallery_pids, query_camids, self.gallery_camids,
                metric="cosine", exclude=self.exclude,
            )  # fmt: skip
            out.update(
                rank1=r["rank1"], rank5=r["rank5"], mAP=r["mAP"], reid_valid_queries=r["num_valid_queries"]
            )
        return out


__all__ = ["Backends", "FeatureFn", "QualityScorer"]
