"""Generator quality (``posereid evaluate-generator``): does it keep the person and follow the pose?

Before spending GPU days on augmentation, a re-ID user wants to know whether a generator checkpoint is
any good. For a fixed, seeded selection of test pairs (source image → target pose, same person; the PATN
``market-pairs-test.csv`` or same-pid pairs of the test split) this module generates the target and
scores it three ways against the real target image:

* **image** — SSIM, LPIPS and their body-masked variants (Mask-SSIM / Mask-LPIPS: both images multiplied
  by a mask drawn from the target pose, as PATN/PIDM report them), and FID against the real training
  images (the PATN-line convention);
* **realism** (no Inception needed; SSIM and PCKh reward blur, these do not) — the Fréchet distance to real
  test images in the re-ID model's and the pose judge's feature spaces, and the sharpness ratio (mean
  absolute Laplacian relative to the real targets), validated on the same data by
  :meth:`~posereid.experiments.quality.scoring.QualityScorer.realism_check`;
* **pose** — keypoints detected on the generated image (mediapipe) vs the target keypoints: PCKh@0.5
  (see :func:`~posereid.experiments.quality.metrics.pose_normaliser` for the head length), mean joint
  error in pixels, and the number of images where no person was found;
* **identity** — with a re-ID model: cosine similarity to the source identity's centroid vs the nearest
  other identity's centroid (over the real gallery), and rank-1 / mAP of the generated images used as
  queries against the real gallery. A generator trained against one re-ID model (an identity loss) can
  learn to fool it, so a second, **independent judge** (another architecture and seed, trained on the
  same real images; ``independent_reid_checkpoint``) scores rank-1 / mAP beside it, and the report warns
  when the two judges' shares of the ceiling differ by more than ``reid_gap_threshold`` on the trained
  row (:func:`reid_agreement`).

Three systems are scored side by side: the **real target images** themselves (the ceiling: what a
perfect generator would get, including the pose detector's own errors), the **trained** generator, and
an **untrained** generator of the same config (the floor). ``sweep={"steps": [...], "guidance": [...]}``
repeats the trained generator's scores over a grid and plots them, to pick the fastest setting that
keeps quality. ``settings=({"sampler": ..., "steps": ..., "guidance": ..., "generator": ...}, ...)`` adds
one row per sampling setting, of the trained generator or of another one given to
:func:`evaluate_generator` by name (``others``; e.g. a few-step checkpoint's 1/2/4-step rows beside its
teacher's 20-step guidance-2 row and the teacher's naive 1/2-step rows), every row on the same pairs, noise
and judges. Outputs: ``report.md``, ``report.json``, ``sheet.png`` and ``sweep.png``.

**Sampling.** ``steps`` / ``sampler`` / ``guidance`` left ``None`` are the checkpoint's (a few-step
checkpoint's own sampler at its default step count and guidance (1, 1), else 20 DPM-Solver++ steps at
guidance 2; :func:`~posereid.augment.sampling_settings.resolve_sampling`), as is each setting row's missing
key for its generator; the report records the values used. The floor of a few-step checkpoint is an
untrained model with a fresh (zero) step-size embedding, sampled with the same few-step setting.

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

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from posereid.augment.sampling_settings import check_sampling, checkpoint_sampling, resolve_sampling
from posereid.experiments.quality.metrics import FidScorer, Lpips, MissingWeightsError
from posereid.experiments.quality.pairs import EvalPairs, load_eval_pairs
from posereid.experiments.quality.report import (
    SETTING_KEYS,
    parse_guidance,
    render_markdown,
    to_jsonable,
    write_sheet,
    write_sweep_plot,
)
from posereid.experiments.quality.scoring import INDEPENDENT, Backends, FeatureFn, QualityScorer
from posereid.experiments.synthetic.dataset import META_CSV
from posereid.models.io_utils import atomic_write
from posereid.models.pose_estimation import MissingExtraError
from posereid.reid_integration.market1501 import Market1501

if TYPE_CHECKING:
    from posereid.models.contract import PoseTransferSampler

logger = logging.getLogger(__name__)

CEILING, TRAINED, FLOOR = "real (ceiling)", "trained", "untrained (floor)"

#: default of :attr:`EvaluateConfig.reid_gap_threshold`: the widest gap, in shares of the ceiling, between
#: the two re-ID judges on the trained row before the report warns. On 64 pairs a generator's rank-1 near
#: 0.3 has a standard error of about sqrt(0.3 * 0.7 / 64) = 0.06, i.e. 0.1 of a 0.6 ceiling; two judges
#: that see the same images agree closer than that, so a gap of twice it is a disagreement, not noise.
REID_GAP_THRESHOLD = 0.2
#: the identity metrics compared between the two re-ID judges (as shares of the ceiling)
REID_GAP_METRICS: tuple[str, ...] = ("rank1", "mAP")
_GAP_LABELS = {"rank1": "rank-1", "mAP": "mAP"}


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


def is_synthetic_data(*folders: str | os.PathLike[str] | None) -> bool:
    """Whether any of ``folders`` holds the synthetic renderer's people (``synth-market`` wrote its
    ``synthetic-meta.csv`` there): what the ``"auto"`` pose estimator picks the pose judge by, in
    ``evaluate-generator`` and the generator gate alike."""
    return any(f is not None and (Path(f) / META_CSV).is_file() for f in folders)


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


def _realism_status(backends: Backends) -> str:
    """The report's line on the Inception-free realism metrics (which feature spaces are available)."""
    spaces = []
    if backends.reid is not None:
        spaces.append("re-ID features")
    if hasattr(getattr(backends.pose, "judge", None), "pooled_features"):
        spaces.append("pose-judge features")
    fd = (
        f"Fréchet distance in {' and '.join(spaces)}"
        if spaces
        else "no Fréchet distance (no re-ID model or pose judge)"
    )
    return (
        f"computed ({fd} against real test images; sharpness = mean |Laplacian| relative to the real targets; "
        "validated on this data in the realism check below)"
    )


def _resolve_reid(
    checkpoint: Any, device: torch.device, *, flag: str = "--reid-checkpoint", role: str = "first"
) -> tuple[FeatureFn | None, str, dict[str, Any] | None]:
    """The re-ID feature function of ``checkpoint`` (a path or a callable), its status line and what it is
    (:func:`_judge_info`; ``None`` without a model)."""
    if checkpoint is None:
        return None, f"not computed (no re-ID model: pass {flag} PATH)", None
    if callable(checkpoint):
        info = _judge_info(checkpoint, role)
        return checkpoint, f"computed ({info['architecture']})", info
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    from posereid.reid_integration.torchreid_plugin import ReidFeatureExtractor

    fn = ReidFeatureExtractor.from_checkpoint(path, device=device)
    info = _judge_info(path, role)
    seed = f", seed {info['seed']}" if info.get("seed") is not None else ""
    return fn, f"computed (re-ID model {path}: {info['architecture']}{seed})", info


def _judge_info(checkpoint: Any, role: str) -> dict[str, Any]:
    """What a re-ID judge is, for the report: its role, architecture (a checkpoint's torchreid model name;
    a callable's ``architecture`` attribute or name), and for a file its path, seed and SHA-256 prefix (the
    form ``train-generator --identity-model`` records in ``train_config.json``, so a reader can tell which
    judge a generator was trained against)."""
    if callable(checkpoint):
        arch = getattr(checkpoint, "architecture", None)
        arch = arch or getattr(checkpoint, "__name__", None) or type(checkpoint).__name__
        return {"role": role, "architecture": str(arch), "checkpoint": None, "seed": None, "sha256": None}
    from posereid.models.io_utils import file_sha256
    from posereid.reid_integration.torchreid_plugin import load_reid_checkpoint

    _, meta = load_reid_checkpoint(checkpoint)
    return {
        "role": role,
        "architecture": str(meta.get("model", "unknown")),
        "checkpoint": str(checkpoint),
        "seed": meta.get("seed"),
        "sha256": file_sha256(checkpoint)[:12],
    }


def _share(row: Mapping[str, Any], ceiling: Mapping[str, Any], key: str) -> float:
    """``row[key] / ceiling[key]``; NaN where either is missing or not finite, or the ceiling is 0."""
    a, c = row.get(key), ceiling.get(key)
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, c))
    return float(a) / float(c) if ok and c != 0 else float("nan")


def reid_judge_gap(row: Mapping[str, Any], ceiling: Mapping[str, Any]) -> dict[str, float]:
    """For each of :data:`REID_GAP_METRICS`: the row's share of the ceiling under the first re-ID judge
    minus its share under the independent judge (positive: the first judge is the kinder one), and
    ``"gap"``, the largest absolute difference (NaN when no metric has a share under both judges).

    Shares, not raw values, because the two judges need not be equally good on real images: what should
    agree is how far the generator gets towards the real images under each."""
    out: dict[str, float] = {}
    for key in REID_GAP_METRICS:
        out[key] = _share(row, ceiling, key) - _share(row, ceiling, key + INDEPENDENT)
    finite = [abs(v) for v in out.values() if math.isfinite(v)]
    out["gap"] = max(finite) if finite else float("nan")
    return out


def reid_agreement(
    systems: Mapping[str, dict[str, Any]],
    sweep_rows: Sequence[dict[str, Any]],
    judges: Mapping[str, Mapping[str, Any]],
    threshold: float = REID_GAP_THRESHOLD,
) -> dict[str, Any]:
    """Do the two re-ID judges agree? Adds ``reid_gap`` (:func:`reid_judge_gap`'s ``"gap"``) to every
    generated row (systems other than the ceiling, and the sweep rows) and returns the trained row's
    comparison: each judge's shares of the ceiling, the gap, the threshold and ``warning`` (a sentence
    when the gap exceeds ``threshold``, else ``None``). Without a ceiling row the gap is not computed."""
    names = {role: info["architecture"] for role, info in judges.items()}
    out: dict[str, Any] = {"threshold": threshold, "metrics": list(REID_GAP_METRICS), "warning": None}
    ceiling = systems.get(CEILING)
    if ceiling is None:
        out["gap"] = None
        out["note"] = "not computed: no ceiling row to take shares of (run with the ceiling)"
        return out
    for name, row in [*systems.items(), *((None, r) for r in sweep_rows)]:
        if name != CEILING:
            row["reid_gap"] = reid_judge_gap(row, ceiling)["gap"]
    trained = systems.get(TRAINED)
    if trained is None:
        out["gap"] = None
        out["note"] = "not computed: no trained row"
        return out
    diff = reid_judge_gap(trained, ceiling)
    out["gap"] = diff["gap"]
    out["share_of_ceiling"] = {
        role: {k: _share(trained, ceiling, k + suffix) for k in REID_GAP_METRICS}
        for role, suffix in (("first", ""), ("independent", INDEPENDENT))
    }
    out["difference"] = {k: diff[k] for k in REID_GAP_METRICS}
    if not math.isfinite(diff["gap"]):
        out["note"] = "not computed: the ceiling's rank-1 and mAP are 0 or missing under a judge"
        return out
    if diff["gap"] > threshold:
        key = max(REID_GAP_METRICS, key=lambda k: abs(diff[k]) if math.isfinite(diff[k]) else -1.0)
        first, indep = (out["share_of_ceiling"][r][key] for r in ("first", "independent"))
        out["warning"] = (
            f"the two re-ID judges disagree on the trained generator: its {_GAP_LABELS[key]} is {first:.2f}x the "
            f"ceiling's under {names.get('first')} but {indep:.2f}x under {names.get('independent')} "
            f"(gap {diff['gap']:.2f} > {threshold:g}). A generator trained against one re-ID model can "
            "learn to fool it: trust the judge it was not trained against, and check which one its identity "
            "loss used."
        )
    return out


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------
def generate_for_pairs(
    generator: PoseTransferSampler,
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


def untrained_like(generator: PoseTransferSampler, seed: int) -> PoseTransferSampler:
    """A freshly initialised generator of the same family and config (the floor), seeded for repeatability
    (a few-step checkpoint's floor samples with the same few-step setting: ``reinitialized`` keeps a fresh
    step-size embedding)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = generator.reinitialized()
    return fresh.to(generator.device).eval()


def _score_all(
    generator: PoseTransferSampler,
    pairs: EvalPairs,
    scorer: QualityScorer,
    config: EvaluateConfig,
    setting_runs: Sequence[tuple[dict[str, Any], PoseTransferSampler]] = (),
) -> tuple[dict[str, dict[str, float]], dict[str, torch.Tensor], list[dict[str, Any]], list[dict[str, Any]]]:
    """Scores of the ceiling, the trained and the untrained generator, the sheet's images, the sweep rows
    and the setting rows (``setting_runs``: each row's resolved setting and its generator). ``config``'s
    sampling is resolved (no ``None``)."""
    systems: dict[str, dict[str, float]] = {}
    sheet_cols: dict[str, torch.Tensor] = {}
    if config.include_ceiling:
        systems[CEILING] = scorer.score(pairs.target, query_camids=pairs.target_camid)
    gen_kw = dict(sampler=config.sampler, seed=config.seed, batch_size=config.batch_size)
    runs = [(TRAINED, generator)] + ([(FLOOR, None)] if config.include_floor else [])
    for name, model in runs:
        model = model if model is not None else untrained_like(generator, config.seed)
        images, spi = generate_for_pairs(model, pairs, steps=config.steps, guidance=config.guidance, **gen_kw)
        systems[name] = {**scorer.score(images, query_camids=pairs.target_camid), "sec_per_image": spi}
        sheet_cols["generated" if name == TRAINED else "untrained"] = images[: config.sheet_rows].clone()
        del images
    sweep_rows: list[dict[str, Any]] = []
    for s, g in _sweep_grid(config):
        images, spi = generate_for_pairs(generator, pairs, steps=s, guidance=g, **gen_kw)
        scores = scorer.score(images, query_camids=pairs.target_camid)
        sweep_rows.append(
            {"steps": s, "guidance": list(g), "sampler": config.sampler, **scores, "sec_per_image": spi}
        )
    setting_rows: list[dict[str, Any]] = []
    for setting, model in setting_runs:
        images, spi = generate_for_pairs(
            model, pairs, steps=setting["steps"], guidance=setting["guidance"], sampler=setting["sampler"],
            seed=config.seed, batch_size=config.batch_size,
        )  # fmt: skip
        scores = scorer.score(images, query_camids=pairs.target_camid)
        setting_rows.append(
            {**setting, "guidance": list(setting["guidance"]), **scores, "sec_per_image": spi}
        )
    return systems, sheet_cols, sweep_rows, setting_rows


def _sweep_grid(config: EvaluateConfig) -> list[tuple[int, tuple[float, float]]]:
    """The (steps, guidance) points of ``config.sweep`` (none without a sweep); the resolved setting
    stands in for a key the sweep leaves out."""
    if not config.sweep:
        return []
    return [
        (s, g)
        for s in config.sweep.get("steps", (config.steps,))
        for g in config.sweep.get("guidance", (config.guidance,))
    ]


def resolve_settings(
    generator: PoseTransferSampler,
    config: EvaluateConfig,
    others: Mapping[str, PoseTransferSampler] | None = None,
) -> tuple[EvaluateConfig, list[tuple[dict[str, Any], PoseTransferSampler]]]:
    """``config`` with its sampling resolved for ``generator`` (``None``: the checkpoint's), and each of
    ``config.settings`` resolved for its generator (``others[name]``, or ``generator``), checked before any
    image is made: an unknown generator name, or a few-step setting its checkpoint cannot sample (also in
    the sweep), raises ``ValueError``."""
    main = resolve_sampling(generator, steps=config.steps, sampler=config.sampler, guidance=config.guidance)
    config = dataclasses.replace(config, **main)
    for s, g in _sweep_grid(config):
        try:
            check_sampling(generator, {"steps": s, "sampler": config.sampler, "guidance": g})
        except ValueError as exc:
            raise ValueError(f"EvaluateConfig.sweep: steps {s}, guidance {g}: {exc}") from None
    others = dict(others or {})
    if TRAINED in others:
        raise ValueError(
            f"another generator may not be named {TRAINED!r} (the evaluated one's name in the rows)"
        )
    runs: list[tuple[dict[str, Any], PoseTransferSampler]] = []
    for i, row in enumerate(config.settings or ()):
        name = row.get("generator")
        if name is not None and name not in others:
            raise ValueError(
                f"EvaluateConfig.settings[{i}]: generator {name!r} was not given (others: {sorted(others) or 'none'})"
            )
        model = generator if name is None else others[name]
        try:
            setting = resolve_sampling(
                model, steps=row.get("steps"), sampler=row.get("sampler"), guidance=row.get("guidance")
            )
        except ValueError as exc:
            raise ValueError(f"EvaluateConfig.settings[{i}] ({name or TRAINED}): {exc}") from None
        runs.append(({"generator": name or TRAINED, **setting}, model))
    unused = sorted(set(others) - {row.get("generator") for row in config.settings or ()})
    if unused:
        raise ValueError(f"other generator(s) {unused} given but no setting row names them")
    return config, runs


# --------------------------------------------------------------------------------------------------
# The settings
# --------------------------------------------------------------------------------------------------
POSE_ESTIMATORS: tuple[str, ...] = ("auto", "judge", "mediapipe")
LPIPS_NETS: tuple[str, ...] = ("alex", "vgg", "squeeze")


def _path_or(value: Any) -> Any:
    """A path given as text becomes a :class:`~pathlib.Path`; a module or callable stays as it is."""
    return Path(value) if isinstance(value, (str, os.PathLike)) else value


@dataclass
class EvaluateConfig:
    """What :func:`evaluate_generator` scores and how; checked on construction (errors name the field).

    Args:
        data: Market-1501-format folder (its gallery is the re-ID gallery, its train split the FID
            reference).
        pairs / annotations: PATN pairs / annotation CSVs (defaults: ``market-pairs-test.csv`` /
            ``market-annotation-test.csv`` beside the data; without a pairs file, same-pid test pairs).
        annotation_hw: the ``(H, W)`` frame of the annotation CSV's coordinates (``--annotation-size``);
            ``None`` (default): each image's own size (:func:`~posereid.experiments.quality.pairs.load_eval_pairs`).
        reid_checkpoint: local re-ID checkpoint, or a callable ``(B,3,H,W) [0,1] → (B,D)`` features.
        independent_reid_checkpoint: a second re-ID judge of the same kind, trained independently of the
            first on the same real train images (another torchreid architecture and seed): its rank-1 /
            rank-5 / mAP go to the ``*_independent`` keys of every row. Needs ``reid_checkpoint``; the same
            file (or callable) is refused. A callable's ``architecture`` attribute (else its name) labels it.
        reid_gap_threshold: the report warns when, on the trained row, the two judges' shares of the
            ceiling (rank-1 or mAP) differ by more than this (:data:`REID_GAP_THRESHOLD`,
            :func:`reid_agreement`).
        fid_weights: FID Inception weights file (or a directory holding it), or a feature ``nn.Module``.
        lpips_weights: LPIPS backbone file or directory (see :meth:`Lpips.from_local`); ``lpips_net``: one
            of :data:`LPIPS_NETS`. For all three weights, ``None`` means "use the default location if the
            file is there, else report the metric as not computed"; a given path that does not exist raises.
        pose_estimator: ``"auto"`` (the pose judge on synthetic data, i.e. a folder with the renderer's
            metadata; mediapipe on real photos), ``"judge"``, ``"mediapipe"``, a callable
            ``uint8 HxWx3 → (18, 2)``, or None. ``pose_judge_dir``: the judge (default: the shipped one).
        steps, guidance, sampler: the sampling setting scored as "trained" (guidance: one number = both
            weights, or ``(w_pose, w_appearance)`` / ``"wp:wa"``; stored as a pair of floats). ``None`` (the
            default): the checkpoint's (a few-step checkpoint's own sampler, else 20 DPM-Solver++ steps at
            guidance 2), resolved by :func:`evaluate_generator`, whose report records the values used.
        n_pairs, seed: how many pairs to draw (``None``: all), and the seed of the draw and of every
            image's noise.
        out_dir: where to write ``report.md``, ``report.json``, ``sheet.png`` (and ``sweep.png``); ``None``:
            no files, the result only.
        include_ceiling / include_floor: also score the real targets / an untrained generator.
        sweep: ``{"steps": [...], "guidance": [...]}`` grid for the trained generator (plot + table);
            stored as tuples of ints / guidance pairs. Its sampler is ``sampler`` (e.g. a few-step
            checkpoint's ``steps=[1, 2, 4]``).
        settings: further rows, one per sampling setting: mappings with any of ``generator`` (a name of
            :func:`evaluate_generator`'s ``others``; left out: the trained generator), ``sampler``,
            ``steps``, ``guidance`` (left out: that generator's default, as above); the report's "Settings"
            table, on the same pairs, noise and judges as every other row.
        other_generators: ``name → description`` (e.g. the checkpoint path) of ``others`` for the report.
        batch_size: images per generator and metric call. pose_upscale: enlarge images by this factor
            before pose detection. sheet_rows: pairs shown in ``sheet.png``.
        generator_name: the generator's name in the report (default: its class name).
        strict: stop at the first unreadable image or stray data file instead of skipping and counting it
            (``data.skipped`` of the result).
    """

    data: Path
    pairs: Path | None = None
    annotations: Path | None = None
    reid_checkpoint: Path | FeatureFn | None = None
    fid_weights: Path | torch.nn.Module | None = None
    lpips_weights: Path | None = None
    lpips_net: str = "alex"
    pose_estimator: str | Callable[..., Any] | None = "auto"
    pose_judge_dir: Path | None = None
    steps: int | None = None
    guidance: tuple[float, float] | None = None
    sampler: str | None = None
    n_pairs: int | None = 200
    seed: int = 0
    out_dir: Path | None = None
    include_ceiling: bool = True
    include_floor: bool = True
    sweep: dict[str, tuple] | None = None
    settings: tuple[dict[str, Any], ...] | None = None
    other_generators: dict[str, str] | None = None
    batch_size: int = 32
    pose_upscale: int | None = None
    sheet_rows: int = 8
    generator_name: str | None = None
    strict: bool = False
    independent_reid_checkpoint: Path | FeatureFn | None = None
    reid_gap_threshold: float = REID_GAP_THRESHOLD
    annotation_hw: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        from posereid.models.sampling import SAMPLERS

        self.data = Path(self.data)
        for name in ("pairs", "annotations", "lpips_weights", "pose_judge_dir", "out_dir"):
            value = getattr(self, name)
            setattr(self, name, None if value is None else Path(value))
        self.reid_checkpoint = _path_or(self.reid_checkpoint)
        self.independent_reid_checkpoint = _path_or(self.independent_reid_checkpoint)
        self._check_independent_judge()
        self.fid_weights = _path_or(self.fid_weights)
        if self.guidance is not None:
            try:
                self.guidance = parse_guidance(self.guidance)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"EvaluateConfig.guidance: {exc}") from None
        for name in ("batch_size", "sheet_rows"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("seed", self.seed, low=0)
        for name in ("steps", "n_pairs", "pose_upscale"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), low=1)
        if self.annotation_hw is not None:
            if len(self.annotation_hw) != 2:
                raise ValueError(f"EvaluateConfig.annotation_hw must be (H, W), got {self.annotation_hw!r}")
            for value in self.annotation_hw:
                _check_int("annotation_hw", value, low=1)
            self.annotation_hw = (self.annotation_hw[0], self.annotation_hw[1])
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(
                f"EvaluateConfig.sampler: {self.sampler!r}, choose from {', '.join(SAMPLERS)} or None (the "
                "checkpoint's)"
            )
        if self.settings is not None:
            self.settings = tuple(_checked_setting(i, row) for i, row in enumerate(self.settings))
        if self.other_generators is not None:
            self.other_generators = {str(k): str(v) for k, v in dict(self.other_generators).items()}
        if self.lpips_net not in LPIPS_NETS:
            raise ValueError(
                f"EvaluateConfig.lpips_net: {self.lpips_net!r}, choose from {', '.join(LPIPS_NETS)}"
            )
        pose = self.pose_estimator
        if pose not in POSE_ESTIMATORS and not (
            pose is None or (callable(pose) and not isinstance(pose, str))
        ):
            raise ValueError(
                f"EvaluateConfig.pose_estimator: {pose!r}, choose from {', '.join(POSE_ESTIMATORS)}, a "
                "callable or None"
            )
        if self.sweep is not None:
            self.sweep = _checked_sweep(self.sweep)

    def _check_independent_judge(self) -> None:
        """The independent re-ID judge needs a first judge to compare with, and must not be that judge."""
        first, second = self.reid_checkpoint, self.independent_reid_checkpoint
        gap = self.reid_gap_threshold
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not math.isfinite(gap) or gap <= 0:
            raise ValueError(f"EvaluateConfig.reid_gap_threshold must be a finite number > 0, got {gap!r}")
        self.reid_gap_threshold = float(gap)
        if second is None:
            return
        if first is None:
            raise ValueError(
                "EvaluateConfig.independent_reid_checkpoint needs reid_checkpoint (the judge it is compared with)"
            )
        same = (
            first is second
            if callable(first) or callable(second)
            else Path(first).expanduser().resolve() == Path(second).expanduser().resolve()
        )
        if same:
            raise ValueError(
                f"EvaluateConfig.independent_reid_checkpoint is reid_checkpoint ({second}): an independent "
                "judge is another re-ID model (train-reid with another --model and --seed)"
            )


def _check_int(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"EvaluateConfig.{name} must be a whole number >= {low}, got {value!r}")


def _checked_setting(index: int, row: Mapping[str, Any]) -> dict[str, Any]:
    """A setting row with known keys only, its steps a whole number >= 1, its sampler a known one and its
    guidance a ``(w_pose, w_appearance)`` pair (a key left out stays out: the generator's default)."""
    from posereid.models.sampling import SAMPLERS

    where = f"EvaluateConfig.settings[{index}]"
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected a mapping of {', '.join(SETTING_KEYS)}, got {row!r}")
    unknown = sorted(set(row) - set(SETTING_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; use {', '.join(SETTING_KEYS)}")
    out = {k: v for k, v in row.items() if v is not None}
    if "steps" in out:
        _check_int(f"settings[{index}]['steps']", out["steps"], low=1)
    if "sampler" in out and out["sampler"] not in SAMPLERS:
        raise ValueError(f"{where}: sampler {out['sampler']!r}, choose from {', '.join(SAMPLERS)}")
    if "guidance" in out:
        try:
            out["guidance"] = parse_guidance(out["guidance"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
    if "generator" in out:
        out["generator"] = str(out["generator"])
    return out


def _checked_sweep(sweep: Mapping[str, Sequence]) -> dict[str, tuple]:
    """``sweep`` with its steps as ints and its guidance values as ``(w_pose, w_appearance)`` pairs."""
    unknown = sorted(set(sweep) - {"steps", "guidance"})
    if unknown:
        raise ValueError(f"EvaluateConfig.sweep: unknown key(s) {unknown}; use steps and/or guidance")
    out: dict[str, tuple] = {}
    if "steps" in sweep:
        for v in sweep["steps"]:
            _check_int("sweep['steps'] item", v, low=1)
        out["steps"] = tuple(sweep["steps"])
    if "guidance" in sweep:
        try:
            out["guidance"] = tuple(parse_guidance(v) for v in sweep["guidance"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"EvaluateConfig.sweep['guidance']: {exc}") from None
    if any(not values for values in out.values()):
        raise ValueError(f"EvaluateConfig.sweep: every key needs at least one value, got {dict(sweep)}")
    return out


# --------------------------------------------------------------------------------------------------
# Entry point and its steps
# --------------------------------------------------------------------------------------------------
def evaluate_generator(
    generator: PoseTransferSampler,
    config: EvaluateConfig | str | os.PathLike[str],
    *,
    others: Mapping[str, PoseTransferSampler] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Score a pose-transfer generator on test pairs; write the report when ``config.out_dir`` is given.

    Args:
        generator: any family's :class:`~posereid.models.contract.PoseTransferGenerator` (on its device).
        config: the :class:`EvaluateConfig`. A script may instead pass the Market folder and the config's
            other fields as keywords (``EvaluateConfig(data=config, **options)``); with a config, keywords
            replace its fields.
        others: further generators by name (on their devices), for ``config.settings`` rows that name
            them (e.g. ``{"teacher": the flow checkpoint a few-step one was distilled from}``).

    Returns:
        ``{"config", "data", "metric_status", "reference", "systems": {name: metrics}, "sweep": [rows],
        "files", "realism_check"}`` (``realism_check``: :meth:`QualityScorer.realism_check`), with a re-ID
        model also ``"reid_judges"`` (``{"first": …, "independent": …}``: architecture, checkpoint, seed,
        SHA-256 prefix), and with two ``"reid_agreement"`` (:func:`reid_agreement`).
    """
    if isinstance(config, EvaluateConfig):
        config = dataclasses.replace(config, **options) if options else config
    else:
        config = EvaluateConfig(data=config, **options)
    asked = {k: getattr(config, k) for k in ("steps", "sampler", "guidance")}
    # the checkpoint's setting where none was given, every row checked before any work
    config, setting_runs = resolve_settings(generator, config, others)
    dev = next(generator.parameters()).device
    size = tuple(int(v) for v in generator.image_size)
    # metric networks first: an explicit path to a missing file fails before any work is done
    backends, judges = _metric_backends(config, size, dev)
    market = Market1501(config.data, strict=config.strict)
    pairs = load_eval_pairs(
        config.data, size, pairs=config.pairs, annotations=config.annotations, n_pairs=config.n_pairs,
        seed=config.seed, market=market, strict=config.strict, annotation_hw=config.annotation_hw,
    )  # fmt: skip
    logger.info("scoring %d pairs from %s", len(pairs), pairs.origin)
    synthetic = is_synthetic_data(config.data, market.root)
    backends.pose, backends.status["pose (PCKh)"] = _resolve_pose(
        config.pose_estimator, synthetic=synthetic, judge_dir=config.pose_judge_dir, device=dev
    )
    backends.status["realism (Fréchet distance, sharpness)"] = _realism_status(backends)
    modes = {id(m): (m, m.training) for m in (generator, *(others or {}).values())}
    for model, _ in modes.values():
        model.eval()
    try:
        scorer = QualityScorer(
            pairs, market, backends, batch_size=config.batch_size, pose_upscale=config.pose_upscale,
            seed=config.seed, device=dev, strict=config.strict,
        )  # fmt: skip
        systems, sheet_cols, sweep_rows, setting_rows = _score_all(
            generator, pairs, scorer, config, setting_runs
        )
        realism_check = scorer.realism_check(seed=config.seed)
    finally:
        for model, was_training in modes.values():
            model.train(was_training)
        if isinstance(config.pose_estimator, str) and backends.pose is not None:
            backends.pose.close()  # we opened it
    result = _result(config, generator, size, dev, pairs, backends, scorer, systems, sweep_rows)
    result["config"]["checkpoint_sampling"] = checkpoint_sampling(generator)
    result["config"]["sampling_asked"] = asked
    if config.settings:
        result["settings"] = setting_rows
        result["config"]["other_generators"] = {
            name: (config.other_generators or {}).get(name, type(model).__name__)
            for name, model in (others or {}).items()
        }
    result["realism_check"] = realism_check
    if judges:
        result["reid_judges"] = judges
    if len(judges) == 2:
        result["reid_agreement"] = reid_agreement(
            systems, [*sweep_rows, *setting_rows], judges, config.reid_gap_threshold
        )
        if result["reid_agreement"]["warning"]:
            logger.warning("%s", result["reid_agreement"]["warning"])
    if config.out_dir is not None:
        _write_report(config.out_dir, result, pairs, sheet_cols, config.sheet_rows)
    return result


def _metric_backends(
    config: EvaluateConfig, size: tuple[int, ...], dev: torch.device
) -> tuple[Backends, dict[str, dict[str, Any]]]:
    """LPIPS, FID and the re-ID judge(s) of ``config`` (the pose judge comes once the data is known), and
    what each re-ID judge is (``{"first": info, "independent": info}``, those given)."""
    backends = Backends()
    backends.lpips, backends.status["LPIPS"] = _resolve_lpips(config.lpips_weights, config.lpips_net)
    if backends.lpips is not None:
        backends.lpips.to(dev)
    backends.fid, backends.status["FID"] = _resolve_fid(config.fid_weights, size)  # type: ignore[arg-type]
    judges: dict[str, dict[str, Any]] = {}
    backends.reid, backends.status["identity (re-ID)"], info = _resolve_reid(config.reid_checkpoint, dev)
    if info is not None:
        judges["first"] = info
    if config.independent_reid_checkpoint is not None:
        fn, status, info = _resolve_reid(
            config.independent_reid_checkpoint, dev, flag="--independent-reid-checkpoint", role="independent"
        )
        backends.independent_reid, backends.status["identity (independent re-ID judge)"] = fn, status
        judges["independent"] = info  # type: ignore[assignment]
        first = judges["first"]
        if info is not None and info["sha256"] is not None and info["sha256"] == first["sha256"]:
            raise ValueError(
                f"--independent-reid-checkpoint {info['checkpoint']} holds the same weights as "
                f"--reid-checkpoint {first['checkpoint']}: not an independent judge"
            )
        same = [k for k in ("architecture", "seed") if info and info[k] is not None and info[k] == first[k]]
        if same:
            backends.status["identity (independent re-ID judge)"] += (
                f"; same {' and '.join(same)} as the first judge: less independent than another architecture "
                "and seed"
            )
    return backends, judges


def _result(
    config: EvaluateConfig,
    generator: PoseTransferSampler,
    size: tuple[int, ...],
    dev: torch.device,
    pairs: EvalPairs,
    backends: Backends,
    scorer: QualityScorer,
    systems: dict[str, dict[str, float]],
    sweep_rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """The result (and ``report.json``): settings, data accounting, metric status, scores."""
    return {
        "config": {
            "generator": config.generator_name or type(generator).__name__,
            "image_size": list(size),
            "steps": config.steps,
            "guidance": list(config.guidance),
            "sampler": config.sampler,
            "n_pairs": config.n_pairs,
            "seed": config.seed,
            "data": str(config.data),
            "annotation_hw": None if config.annotation_hw is None else list(config.annotation_hw),
            "device": str(dev),
            "pose_judge": getattr(backends.pose, "description", "mediapipe")
            if backends.pose is not None
            else None,
        },
        "data": {
            "pairs_origin": pairs.origin,
            "pairs_total": pairs.total,
            "pairs_used": len(pairs),
            "skipped": {**pairs.skipped, "unreadable_reference_image": scorer.bad.skipped},
            "pairs": [list(p) for p in pairs.names],
        },
        "metric_status": dict(backends.status),
        "reference": scorer.info,
        "systems": systems,
        "sweep": sweep_rows,
        "files": {},
    }


def _write_report(
    out_dir: Path,
    result: dict[str, Any],
    pairs: EvalPairs,
    sheet_cols: dict[str, torch.Tensor],
    sheet_rows: int,
) -> dict[str, str]:
    """``sheet.png``, ``sweep.png`` (with a sweep), ``report.json`` and ``report.md`` in ``out_dir``; their
    paths go into ``result["files"]`` (before the reports are written) and are returned."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "sheet": out_dir / "sheet.png",
        "report_json": out_dir / "report.json",
        "report_md": out_dir / "report.md",
    }
    write_sheet(files["sheet"], pairs.source, pairs.target, pairs.target_kps, sheet_cols, rows=sheet_rows)
    if result["sweep"]:
        files["sweep_plot"] = out_dir / "sweep.png"
        refs = {k: v for k, v in result["systems"].items() if k != TRAINED}
        write_sweep_plot(files["sweep_plot"], result["sweep"], refs)
    result["files"] = {k: str(v) for k, v in files.items()}
    with atomic_write(files["report_json"]) as fh:
        json.dump(to_jsonable(result), fh, indent=2, allow_nan=False)
    with atomic_write(files["report_md"]) as fh:
        fh.write(render_markdown(result))
    return result["files"]


__all__ = [
    "CEILING",
    "FLOOR",
    "LPIPS_NETS",
    "POSE_ESTIMATORS",
    "REID_GAP_METRICS",
    "REID_GAP_THRESHOLD",
    "TRAINED",
    "EvaluateConfig",
    "evaluate_generator",
    "generate_for_pairs",
    "is_synthetic_data",
    "reid_agreement",
    "resolve_settings",
    "reid_judge_gap",
    "untrained_like",
]
