"""Generator quality (``posereid evaluate-generator``): does it keep the person and follow the pose?

Before spending GPU days on augmentation, a re-ID user wants to know whether a generator checkpoint is
any good. For a fixed, seeded selection of test pairs (source image → target pose, same person; the PATN
``market-pairs-test.csv`` or same-pid pairs of the test split) this module generates the target and
scores it three ways against the real target image:

* **image** — SSIM, LPIPS and their body-masked variants (Mask-SSIM / Mask-LPIPS: both images multiplied
  by a mask drawn from the target pose, as PATN/PIDM report them), and FID against the real training
  images (the PATN-line convention);
* **pose** — keypoints detected on the generated image (mediapipe) vs the target keypoints: PCKh@0.5
  (see :func:`~posereid.experiments.quality.metrics.pose_normaliser` for the head length), mean joint
  error in pixels, and the number of images where no person was found;
* **identity** — with a re-ID model: cosine similarity to the source identity's centroid vs the nearest
  other identity's centroid (over the real gallery), and rank-1 / mAP of the generated images used as
  queries against the real gallery.

Three systems are scored side by side: the **real target images** themselves (the ceiling: what a
perfect generator would get, including the pose detector's own errors), the **trained** generator, and
an **untrained** generator of the same config (the floor). ``sweep={"steps": [...], "guidance": [...]}``
repeats the trained generator's scores over a grid and plots them, to pick the fastest setting that
keeps quality. Outputs: ``report.md``, ``report.json``, ``sheet.png`` and ``sweep.png``.

An unreadable image (of a pair, or a real reference image) or a stray file in the data folder is
skipped and counted in the report's ``skipped`` line, like in every batch command; ``strict=True``
(``--strict``) stops at the first one with an error naming it.

Pretrained metric networks are never downloaded: a metric whose weights are absent is reported as "not
computed (…)" unless its flag was given, in which case a missing file is an error.

The pieces live beside this module, which runs them and holds the API:
:mod:`~posereid.experiments.quality.pairs` selects and loads the pairs,
:mod:`~posereid.experiments.quality.scoring` scores image sets, :mod:`~posereid.experiments.quality.metrics`
holds the metrics, :mod:`~posereid.experiments.quality.report` writes the report and
:mod:`~posereid.experiments.quality.cli` is the command. :mod:`posereid.experiments.quality` re-exports
their public names.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from posereid.experiments.quality.metrics import FidScorer, Lpips, MissingWeightsError
from posereid.experiments.quality.pairs import EvalPairs, load_eval_pairs
from posereid.experiments.quality.report import (
    parse_guidance,
    render_markdown,
    to_jsonable,
    write_sheet,
    write_sweep_plot,
)
from posereid.experiments.quality.scoring import Backends, FeatureFn, QualityScorer
from posereid.experiments.synthetic.dataset import META_CSV
from posereid.models.io_utils import atomic_write
from posereid.models.pose_estimation import MissingExtraError
from posereid.reid_integration.market1501 import Market1501

logger = logging.getLogger(__name__)

CEILING, TRAINED, FLOOR = "real (ceiling)", "trained", "untrained (floor)"


# --------------------------------------------------------------------------------------------------
# Metric back-ends (resolved once; the Backends container is in scoring.py)
# --------------------------------------------------------------------------------------------------
def _resolve_lpips(weights: Any, net: str) -> tuple[Lpips | None, str]:
    try:
        m = Lpips.from_local(weights, net=net)  # type: ignore[arg-type]
    except MissingWeightsError as exc:
        if weights is not None:
            raise
        return None, f"not computed (missing weights: {exc})"
    return m, f"computed ({net}; backbone {m.sources['backbone']}, linear layers {m.sources['linear']})"


def _resolve_fid(weights: Any, image_size: tuple[int, int]) -> tuple[FidScorer | None, str]:
    if isinstance(weights, torch.nn.Module):
        f = FidScorer.from_module(weights, image_size)
        return f, f"computed ({f.description}; not comparable with published Inception FID)"
    try:
        f = FidScorer.from_weights(weights)
    except MissingWeightsError as exc:
        if weights is not None:
            raise
        return None, f"not computed (missing weights: {exc})"
    except MissingExtraError as exc:
        if weights is not None:
            raise
        return None, f"not computed ({exc})"
    return f, f"computed ({f.description})"


def _resolve_pose(
    estimator: Any, *, synthetic: bool, judge_dir: str | os.PathLike[str] | None = None, device: Any = "cpu"
) -> tuple[Any, str]:
    """The keypoint judge: the trained pose judge for synthetic people (``"auto"`` on synthetic data, or
    ``"judge"``), mediapipe for real photos (``"auto"`` elsewhere, or ``"mediapipe"``), or a callable."""
    if estimator is None:
        return None, "not computed (pose estimator disabled)"
    if not isinstance(estimator, str):
        return estimator, f"computed ({getattr(estimator, 'description', type(estimator).__name__)})"
    if estimator not in ("auto", "judge", "mediapipe"):
        raise ValueError(f"pose estimator {estimator!r}: choose auto, judge or mediapipe")
    note = "real photos"
    if estimator == "judge" or (estimator == "auto" and synthetic):
        from posereid.experiments.quality.judge import PoseJudgeEstimator

        try:
            est = PoseJudgeEstimator.from_pretrained(judge_dir, device=device)
            return est, f"computed ({est.description}; synthetic data)"
        except FileNotFoundError as exc:
            if estimator == "judge" or judge_dir is not None:
                raise
            note = f"synthetic data, but {exc.args[0].split(':')[0]} holds no pose judge: nearly blind here"
            logger.warning("no pose judge found (%s); scoring pose with mediapipe", exc)
    from posereid.models.pose_estimation import PoseEstimator

    try:
        return PoseEstimator(), f"computed (mediapipe BlazePose → COCO-18; {note})"
    except MissingExtraError as exc:
        return None, f"not computed ({exc})"


def _resolve_reid(checkpoint: Any, device: torch.device) -> tuple[FeatureFn | None, str]:
    if checkpoint is None:
        return None, "not computed (no re-ID model: pass --reid-checkpoint PATH)"
    if callable(checkpoint):
        return checkpoint, f"computed ({getattr(checkpoint, '__name__', type(checkpoint).__name__)})"
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"--reid-checkpoint {path}: no such file")
    from posereid.reid_integration.torchreid_plugin import ReidFeatureExtractor

    return ReidFeatureExtractor.from_checkpoint(path, device=device), f"computed (re-ID model {path})"


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------
def generate_for_pairs(
    generator: Any,
    pairs: EvalPairs,
    *,
    steps: int,
    guidance: tuple[float, float],
    sampler: str,
    seed: int,
    batch_size: int,
) -> tuple[torch.Tensor, float]:
    """Generated images for every pair (pair ``i`` uses seed ``seed + i``) and the seconds per image."""
    dev = next(generator.parameters()).device
    out = []
    t0 = time.perf_counter()
    for i in tqdm(
        range(0, len(pairs), batch_size), desc=f"generate {steps} steps, guidance {guidance}", leave=False
    ):
        j = min(i + batch_size, len(pairs))
        imgs = generator.generate(
            pairs.source[i:j].to(dev),
            torch.from_numpy(pairs.target_kps[i:j]).to(dev),
            torch.from_numpy(pairs.source_kps[i:j]).to(dev),
            steps=steps,
            sampler=sampler,
            guidance=guidance,
            seeds=list(range(seed + i, seed + j)),
        )
        out.append(imgs.detach().float().cpu())
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return torch.cat(out), (time.perf_counter() - t0) / max(1, len(pairs))


def untrained_like(generator: Any, seed: int) -> Any:
    """A freshly initialised generator of the same family and config (the floor), seeded for repeatability."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = generator.reinitialized()
    return fresh.to(generator.device).eval()


def _score_all(
    generator: Any,
    pairs: EvalPairs,
    scorer: QualityScorer,
    *,
    steps: int,
    guidance: tuple[float, float],
    sampler: str,
    seed: int,
    batch_size: int,
    include_ceiling: bool,
    include_floor: bool,
    sweep: Mapping[str, Sequence] | None,
    sheet_rows: int,
) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Scores of the ceiling, the trained and the untrained generator, the sheet's images, the sweep rows."""
    systems: dict[str, dict[str, float]] = {}
    sheet_cols: dict[str, torch.Tensor] = {}
    if include_ceiling:
        systems[CEILING] = scorer.score(pairs.target, query_camids=pairs.target_camid)
    gen_kw = dict(sampler=sampler, seed=seed, batch_size=batch_size)
    runs = [(TRAINED, generator)] + ([(FLOOR, None)] if include_floor else [])
    for name, model in runs:
        model = model if model is not None else untrained_like(generator, seed)
        images, spi = generate_for_pairs(model, pairs, steps=steps, guidance=guidance, **gen_kw)
        systems[name] = {**scorer.score(images, query_camids=pairs.target_camid), "sec_per_image": spi}
        sheet_cols["generated" if name == TRAINED else "untrained"] = images[:sheet_rows].clone()
        del images
    sweep_rows: list[dict[str, Any]] = []
    if sweep:
        for s in [int(v) for v in sweep.get("steps", [steps])]:
            for g in [parse_guidance(v) for v in sweep.get("guidance", [guidance])]:
                images, spi = generate_for_pairs(generator, pairs, steps=s, guidance=g, **gen_kw)
                scores = scorer.score(images, query_camids=pairs.target_camid)
                sweep_rows.append({"steps": s, "guidance": list(g), **scores, "sec_per_image": spi})
    return systems, sheet_cols, sweep_rows


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def evaluate_generator(
    generator: Any,
    market_root: str | os.PathLike[str],
    *,
    pairs: str | os.PathLike[str] | None = None,
    annotations: str | os.PathLike[str] | None = None,
    reid_checkpoint: str | os.PathLike[str] | FeatureFn | None = None,
    fid_weights: str | os.PathLike[str] | torch.nn.Module | None = None,
    lpips_weights: str | os.PathLike[str] | None = None,
    lpips_net: str = "alex",
    pose_estimator: Any = "auto",
    pose_judge_dir: str | os.PathLike[str] | None = None,
    steps: int = 20,
    guidance: tuple[float, float] | float | str = (2.0, 2.0),
    sampler: str = "dpmsolver++",
    n_pairs: int | None = 200,
    seed: int = 0,
    out_dir: str | os.PathLike[str] | None = None,
    include_ceiling: bool = True,
    include_floor: bool = True,
    sweep: Mapping[str, Sequence] | None = None,
    batch_size: int = 32,
    pose_upscale: int | None = None,
    sheet_rows: int = 8,
    generator_name: str | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Score a pose-transfer generator on test pairs; write the report when ``out_dir`` is given.

    Args:
        generator: any family's :class:`~posereid.models.contract.PoseTransferGenerator` (on its device).
        market_root: Market-1501-format folder (its gallery is the re-ID gallery, its train split the FID
            reference).
        pairs / annotations: PATN pairs / annotation CSVs (defaults: ``market-pairs-test.csv`` /
            ``market-annotation-test.csv`` beside the data; without a pairs file, same-pid test pairs).
        reid_checkpoint: local re-ID checkpoint, or a callable ``(B,3,H,W) [0,1] → (B,D)`` features.
        fid_weights: FID Inception weights file (or a directory holding it), or a feature ``nn.Module``.
        lpips_weights: LPIPS backbone file or directory (see :meth:`Lpips.from_local`).
            For all three, ``None`` means "use the default location if the file is there, else report the
            metric as not computed"; a given path that does not exist raises.
        pose_estimator: ``"auto"`` (the pose judge on synthetic data, i.e. a folder with the renderer's
            metadata; mediapipe on real photos), ``"judge"``, ``"mediapipe"``, a callable
            ``uint8 HxWx3 → (18, 2)``, or None. ``pose_judge_dir``: the judge (default: the shipped one).
        steps, guidance, sampler: the sampling setting scored as "trained" (guidance: number = both weights,
            or ``(w_pose, w_appearance)`` / ``"wp:wa"``).
        n_pairs, seed: how many pairs to draw, and the seed of the draw and of every image's noise.
        include_ceiling / include_floor: also score the real targets / an untrained generator.
        sweep: ``{"steps": [...], "guidance": [...]}`` grid for the trained generator (plot + table).
        strict: stop at the first unreadable image or stray data file instead of skipping and counting it
            (``data.skipped`` of the result).

    Returns:
        ``{"config", "data", "metric_status", "reference", "systems": {name: metrics}, "sweep": [rows],
        "files"}``.
    """
    g = parse_guidance(guidance)
    dev = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    size = tuple(int(v) for v in generator.image_size)
    # metric networks first: an explicit path to a missing file fails before any work is done
    backends = Backends()
    backends.lpips, backends.status["LPIPS"] = _resolve_lpips(lpips_weights, lpips_net)
    if backends.lpips is not None:
        backends.lpips.to(dev)
    backends.fid, backends.status["FID"] = _resolve_fid(fid_weights, size)  # type: ignore[arg-type]
    backends.reid, backends.status["identity (re-ID)"] = _resolve_reid(reid_checkpoint, dev)
    market = Market1501(market_root, strict=strict)
    pairs_ = load_eval_pairs(
        market_root, size, pairs=pairs, annotations=annotations, n_pairs=n_pairs, seed=seed, market=market,
        strict=strict,
    )  # fmt: skip
    logger.info("scoring %d pairs from %s", len(pairs_), pairs_.origin)
    synthetic = any((p / META_CSV).is_file() for p in (Path(market_root), market.root))
    backends.pose, backends.status["pose (PCKh)"] = _resolve_pose(
        pose_estimator, synthetic=synthetic, judge_dir=pose_judge_dir, device=dev
    )
    try:
        scorer = QualityScorer(
            pairs_, market, backends, batch_size=batch_size, pose_upscale=pose_upscale, seed=seed, device=dev,
            strict=strict,
        )  # fmt: skip
        systems, sheet_cols, sweep_rows = _score_all(
            generator, pairs_, scorer, steps=steps, guidance=g, sampler=sampler, seed=seed, batch_size=batch_size,
            include_ceiling=include_ceiling, include_floor=include_floor, sweep=sweep, sheet_rows=sheet_rows,
        )  # fmt: skip
    finally:
        generator.train(was_training)
        if isinstance(pose_estimator, str) and backends.pose is not None:
            backends.pose.close()  # we opened it

    result: dict[str, Any] = {
        "config": {
            "generator": generator_name or type(generator).__name__,
            "image_size": list(size),
            "steps": steps,
            "guidance": list(g),
            "sampler": sampler,
            "n_pairs": n_pairs,
            "seed": seed,
            "data": str(market_root),
            "device": str(dev),
            "pose_judge": getattr(backends.pose, "description", "mediapipe")
            if backends.pose is not None
            else None,
        },
        "data": {
            "pairs_origin": pairs_.origin,
            "pairs_total": pairs_.total,
            "pairs_used": len(pairs_),
            "skipped": {**pairs_.skipped, "unreadable_reference_image": scorer.bad.skipped},
            "pairs": [list(p) for p in pairs_.names],
        },
        "metric_status": dict(backends.status),
        "reference": scorer.info,
        "systems": systems,
        "sweep": sweep_rows,
        "files": {},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {
            "sheet": out / "sheet.png",
            "report_json": out / "report.json",
            "report_md": out / "report.md",
        }
        write_sheet(
            files["sheet"], pairs_.source, pairs_.target, pairs_.target_kps, sheet_cols, rows=sheet_rows
        )
        if sweep_rows:
            files["sweep_plot"] = out / "sweep.png"
            refs = {k: v for k, v in systems.items() if k != TRAINED}
            write_sweep_plot(files["sweep_plot"], sweep_rows, refs)
        result["files"] = {k: str(v) for k, v in files.items()}
        with atomic_write(files["report_json"]) as fh:
            json.dump(to_jsonable(result), fh, indent=2, allow_nan=False)
        with atomic_write(files["report_md"]) as fh:
            fh.write(render_markdown(result))
    return result


__all__ = ["CEILING", "FLOOR", "TRAINED", "evaluate_generator", "generate_for_pairs", "untrained_like"]
