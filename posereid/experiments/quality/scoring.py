"""Scoring of ``posereid evaluate-generator``: the metric back-ends and :class:`QualityScorer`.

Used by :mod:`~posereid.experiments.quality.evaluate` (which imports this module, never the reverse, and
resolves the back-ends from the user's flags): :class:`Backends` holds the optional metric networks, and
:class:`QualityScorer` computes the real-data side once (FID reference statistics, gallery features,
body masks, realism reference statistics), then scores any set of images aligned with the pairs of an
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
    CallableFeatures,
    FidScorer,
    JudgeFeatures,
    Lpips,
    body_mask,
    detect_keypoints,
    gaussian_blur,
    identity_fidelity,
    pose_fidelity,
    sharpness_ratio,
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

#: suffix of the independent re-ID judge's keys in a scored row (``rank1`` → ``rank1_independent``); the
#: first judge's keys keep their names
INDEPENDENT = "_independent"

#: the Fréchet-distance feature spaces: result key → what it is (the report's reference line)
FRECHET_SPACES: dict[str, str] = {
    "fd_reid": "the re-ID model's pooled features",
    "fd_judge": "the pose judge's globally pooled stage-3 features",
}


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
    #: a second re-ID model trained independently of ``reid`` (another architecture and seed): a judge the
    #: generator was not trained against; scored beside ``reid`` (and only with it) under the
    #: :data:`INDEPENDENT` keys
    independent_reid: FeatureFn | None = None


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------
def _features(fn: FeatureFn, images: torch.Tensor, batch: int) -> torch.Tensor:
    out = [fn(images[i : i + batch]).detach().float().cpu() for i in range(0, images.shape[0], batch)]
    return torch.cat(out)


class QualityScorer:
    """Scores generated image sets against one fixed set of pairs and real reference data.

    The real-data side (FID reference statistics, gallery features, the masks, the realism reference
    statistics in the re-ID and pose-judge feature spaces) is computed once in the constructor and reused
    for every scored set (ceiling, trained, floor, each sweep point). :meth:`realism_check` validates the
    realism metrics (Fréchet distances, sharpness ratio) on the same data. With
    ``backends.independent_reid``, rank-1 / rank-5 / mAP are also scored by that second re-ID judge, on the
    same queries and gallery (keys ending in :data:`INDEPENDENT`).
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
            judges = self._reid_judges()
            feats: dict[str, list[torch.Tensor]] = {k: [] for k in judges}
            for b in _image_batches(gal, None, batch_size, "gallery", self.bad, readable):
                for k, fn in judges.items():  # each gallery image is read once for every judge
                    feats[k].append(_features(fn, b, batch_size))
            if not readable:
                raise ValueError(f"{market.root}: no gallery image could be read; identity metrics need them")
            gal = readable
            #: gallery features of each re-ID judge, by key suffix ("" the first, INDEPENDENT the second)
            self.judge_gallery = {k: torch.cat(v) for k, v in feats.items()}
            self.gallery_feats = self.judge_gallery[""]
            self.gallery_pids = np.array([r.pid for r in gal])
            self.gallery_camids = np.array([r.camid for r in gal])
            row = {r.name: i for i, r in enumerate(gal)}
            # leave each pair's own source and target images out of its identity centroid
            self.exclude = np.array([[row.get(a, -1), row.get(b, -1)] for a, b in pairs.names])
            n_ids = len({p for p in self.gallery_pids.tolist() if p > 0})
            self.info["gallery"] = (
                f"{len(gal)} real gallery images (distractors included), {n_ids} identities"
            )
        self.frechet = self._frechet_reference(market, pairs, fid_reference_max, seed)
        self.bad.warn(f"{market.root}: real reference images")
        if self.bad.skipped:
            self.info["skipped reference images"] = self.bad.describe()

    def _reid_judges(self) -> dict[str, FeatureFn]:
        """The re-ID feature functions by the suffix of their keys in a scored row (the first judge: "")."""
        b = self.backends
        judges = {"": b.reid} if b.reid is not None else {}
        if b.independent_reid is not None and b.reid is not None:
            judges[INDEPENDENT] = b.independent_reid
        return judges

    def _frechet_reference(
        self, market: Market1501, pairs: EvalPairs, max_images: int, seed: int
    ) -> dict[str, FidScorer]:
        """Fréchet-distance scorers in the re-ID and pose-judge feature spaces (those available), holding
        the statistics of the real test images of people (gallery and query, junk and distractors out)
        other than the pairs' own source and target images, at the generator's size: the ceiling row is then
        two disjoint sets of real test images."""
        b = self.backends
        modules: dict[str, torch.nn.Module] = {}
        if b.reid is not None:
            modules["fd_reid"] = CallableFeatures(b.reid)
        judge = getattr(b.pose, "judge", None)  # the pose judge (PoseJudgeEstimator), not mediapipe
        if isinstance(judge, torch.nn.Module) and hasattr(judge, "pooled_features"):
            modules["fd_judge"] = JudgeFeatures(judge)
        if not modules:
            return {}
        own = {name for pair in pairs.names for name in pair}
        ref = [r for r in market.gallery + market.query if r.has_identity and r.name not in own]
        ref = sorted(ref, key=lambda r: r.name)
        if len(ref) > max_images:
            keep = np.sort(np.random.default_rng(seed).choice(len(ref), max_images, replace=False))
            ref = [ref[i] for i in keep]
        scorers = {k: FidScorer.from_module(m, self.size).to(self.device) for k, m in modules.items()}
        used: list[MarketRecord] = []
        for batch in _image_batches(ref, self.size, self.batch, "realism reference", self.bad, used):
            for f in scorers.values():
                f.add_real(batch)
        if len(used) < 2:
            self.info["realism reference"] = (
                f"not computed: {len(used)} real test image(s) besides the pairs'"
            )
            return {}
        self.info["realism reference"] = (
            f"{len(used)} real test images of people (the pairs' own images left out); Fréchet distances in "
            + " and ".join(FRECHET_SPACES[k] for k in scorers)
        )
        return scorers

    @torch.no_grad()
    def realism_check(self, *, blur_sigma: float | None = None, seed: int = 0) -> dict[str, Any]:
        """Validate the realism metrics on this data: the real targets (the ceiling), a Gaussian-blurred
        copy of them (σ = H/32 pixels unless given) and uniform noise images, each scored like a
        generated set. Trusted when, in every Fréchet space, real < blurred < noise, and the blurred
        copy's sharpness ratio is below 0.8."""
        target = self.pairs.target.float()
        sigma = float(blur_sigma) if blur_sigma is not None else max(1.0, self.size[0] / 32)
        blurred = gaussian_blur(target, sigma).clamp(0, 1)
        g = torch.Generator().manual_seed(seed)
        noise = torch.rand(target.shape, generator=g)
        sets = {"real": target, "blurred": blurred, "noise": noise}
        out: dict[str, Any] = {"blur_sigma_px": sigma}
        ok = True
        for key, f in self.frechet.items():
            if len(self.pairs) < 2:
                break
            fd = {name: f.score(ims, self.batch) for name, ims in sets.items()}
            out[key] = fd
            ok = ok and fd["real"] < fd["blurred"] < fd["noise"]
        out["sharpness_ratio"] = {name: sharpness_ratio(ims, target) for name, ims in sets.items()}
        ok = ok and out["sharpness_ratio"]["blurred"] < 0.8
        out["trusted"] = bool(ok)
        return out

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
            "sharpness_ratio": sharpness_ratio(images, p.target),
        }
        for key, f in self.frechet.items():
            out[key] = f.score(images, self.batch) if len(p) >= 2 else float("nan")
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
            if INDEPENDENT in self.judge_gallery:  # the same queries and gallery, the other judge's features
                r = evaluate_features(
                    _features(b.independent_reid, images, self.batch), self.judge_gallery[INDEPENDENT],
                    p.source_pid, self.gallery_pids, query_camids, self.gallery_camids, metric="cosine",
                    exclude=self.exclude,
                )  # fmt: skip
                for k in ("rank1", "rank5", "mAP"):
                    out[k + INDEPENDENT] = r[k]
                out["reid_valid_queries" + INDEPENDENT] = r["num_valid_queries"]
        return out


__all__ = ["FRECHET_SPACES", "INDEPENDENT", "Backends", "FeatureFn", "QualityScorer"]
