"""The generator gate: is this generator worth a re-ID run on *this* data?

A generator that is good on its own training people can be useless on a user's images: the shipped
asset, trained on one set of synthetic people, redraws unseen people in its own training style and
loses their identity (it cost 13 mAP on a dataset rendered with another seed, issue 26). The gate
scores a generator on a small, seeded set of held-out pairs of the user's own data with the quality
module's scorers (:func:`~posereid.experiments.quality.pairs.load_eval_pairs`,
:class:`~posereid.experiments.quality.scoring.QualityScorer` and its
:meth:`~posereid.experiments.quality.scoring.QualityScorer.realism_check`, the pose judge), between two
references scored on the same pairs:

* the **floor**: an untrained generator of the same family and config
  (:func:`~posereid.experiments.quality.evaluate.untrained_like`), sampled with the same settings;
* the **ceiling**: the real target images themselves.

Three readings, each with the floor / generator / ceiling numbers and the generator's normalised
position between them (0 = the floor, 1 = the ceiling):

* **identity** (the verdict): mAP of the generated images used as queries against the real images of
  the same data (each pair's own source and target left out), with rank-1 and the centroid margin beside it;
* **pose**: PCKh of the pose judge (synthetic people) or mediapipe (photos), chosen by
  ``evaluate-generator``'s own rule (:func:`~posereid.experiments.quality.evaluate.is_synthetic_data`; a
  caller scoring a folder derived from synthetic data, e.g. ``reid-gain``'s kept-images subset, says so with
  ``synthetic``);
* **realism**: the Fréchet distance to the other real images in the re-ID feature space and the sharpness
  ratio; its position runs from 0 (as close to the real images as the real targets are) to 1 (as far as the
  floor's images).

The verdict (:data:`VERDICTS`): ``pass``; ``near-floor`` when the generator's identity score is within
``near_floor_margin`` (a share of the floor-to-ceiling gap, :data:`NEAR_FLOOR_MARGIN`) of the floor: its
images carry little more of the person than an untrained generator's, and training on them costs mAP;
``untrusted`` when the re-ID judge scores the real targets less than :data:`MIN_IDENTITY_GAP` above the
floor (it cannot tell people apart on this data, so the gate cannot judge). Beside it the ``style`` flag:
the generated set is far from the user's real images (realism position above ``style_margin``, or a
sharpness ratio outside :data:`SHARPNESS_BAND`) while the realism metrics pass their own check on this
data: the generator draws in another style than the user's images (e.g. the shipped asset on people
rendered with another seed).

:func:`gate_generator` is the API (:func:`gate_verdict` the rule alone) (``posereid check-generator`` its command, and ``reid-gain`` runs it
before its generator arms). Every public name here is also importable from :mod:`posereid.experiments.quality`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from posereid.models.io_utils import atomic_write
from posereid.reid_integration.market1501 import (
    Market1501,
    MarketRecord,
    find_annotations,
    read_patn_csv,
    write_pairs_csv,
)

if TYPE_CHECKING:  # the scorers (torch, torchmetrics, the generator) are imported when the gate runs
    import torch

    from posereid.experiments.quality.pairs import EvalPairs
    from posereid.experiments.quality.scoring import FeatureFn, QualityScorer
    from posereid.models.contract import PoseTransferSampler

logger = logging.getLogger(__name__)

#: the verdicts, in order of what they let through
VERDICTS: tuple[str, ...] = ("pass", "near-floor", "untrusted")
#: a generator whose identity score lies within this share of the floor-to-ceiling gap above the floor is
#: ``near-floor``. Measured with this gate (16 train pairs, 6 steps, an OSNet judge of 100-200 steps): the shipped
#: asset sits at 0.7-0.95 on people rendered like its training people (renderer seed 0, where it gained +6 mAP in
#: reid-gain) and at 0.0-0.25 on people rendered with seeds 1-4 (where it cost mAP, issue 26)
NEAR_FLOOR_MARGIN = 0.3
#: realism position (Fréchet distance in re-ID features, 0 = real, 1 = the floor) above which the generated set
#: is ``style``-flagged; measured as above: the asset at 0.03-0.14 on seed-0 people, 0.4-0.7 on seed-1 people
STYLE_MARGIN = 0.33
#: sharpness ratios (generated / real) outside this band also raise the ``style`` flag (blurred clothes, noise)
SHARPNESS_BAND: tuple[float, float] = (0.5, 2.0)
#: the identity score's ceiling must beat its floor by this much (mAP, in [0, 1]) for the gate to judge: with a
#: few dozen queries mAP moves by about 0.05, and a judge of 30 steps reached only 0.02-0.08
MIN_IDENTITY_GAP = 0.15
#: the identity score the verdict reads (a key of :meth:`QualityScorer.score`)
IDENTITY_METRIC = "mAP"
#: pairs scored by default: a few dozen keep the gate under a minute on a CPU at 64x32
DEFAULT_PAIRS = 24

Split = Literal["train", "test"]


@dataclass(frozen=True)
class GateScores:
    """One system's numbers on the gate's pairs (NaN: not computed)."""

    mAP: float
    rank1: float
    id_margin: float
    pckh: float
    fd_reid: float
    sharpness: float

    @classmethod
    def from_scores(cls, scores: dict[str, float]) -> GateScores:
        nan = float("nan")
        return cls(
            mAP=float(scores.get("mAP", nan)), rank1=float(scores.get("rank1", nan)),
            id_margin=float(scores.get("id_margin", nan)), pckh=float(scores.get("pckh", nan)),
            fd_reid=float(scores.get("fd_reid", nan)), sharpness=float(scores.get("sharpness_ratio", nan)),
        )  # fmt: skip


def _position(value: float, floor: float, ceiling: float) -> float:
    """Where ``value`` lies from ``floor`` (0) to ``ceiling`` (1); NaN when the two do not differ."""
    gap = ceiling - floor
    if not all(math.isfinite(v) for v in (value, floor, ceiling)) or abs(gap) < 1e-12:
        return float("nan")
    return (value - floor) / gap


@dataclass
class GateResult:
    """The gate's verdict on one generator and one data folder.

    ``identity`` / ``pose`` are positions from the floor (0) to the ceiling (1); ``realism`` runs from the
    ceiling (0: as close to the other real images as the real targets) to the floor (1). ``verdict`` is one
    of :data:`VERDICTS`; ``style`` flags a generated set unlike the user's images; ``reasons`` say why, in
    words. ``settings`` records what was scored (pairs, sampling, margins, judges).
    """

    floor: GateScores
    generator: GateScores
    ceiling: GateScores
    identity: float
    pose: float
    realism: float
    verdict: str
    style: bool
    reasons: list[str] = field(default_factory=list)
    realism_trusted: bool = False
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def near_floor(self) -> bool:
        """Whether the verdict is ``near-floor`` (what stops ``reid-gain`` unless ``--force``)."""
        return self.verdict == "near-floor"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN → ``None``)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v

        return clean(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateResult:
        """The inverse of :meth:`as_dict` (``None`` → NaN)."""

        def num(v: Any) -> float:
            return float("nan") if v is None else float(v)

        systems = {
            k: GateScores(**{f: num(x) for f, x in d[k].items()}) for k in ("floor", "generator", "ceiling")
        }
        return cls(
            **systems, identity=num(d["identity"]), pose=num(d["pose"]), realism=num(d["realism"]),
            verdict=str(d["verdict"]), style=bool(d["style"]), reasons=list(d.get("reasons", [])),
            realism_trusted=bool(d.get("realism_trusted", False)), settings=dict(d.get("settings", {})),
        )  # fmt: skip

    def describe(self) -> str:
        """The verdict as one block of text: the headline, the numbers, and what they mean."""
        s = self.settings
        head = {
            "pass": "PASS: the generator keeps the people of this data clearly above the floor",
            "near-floor": "NEAR-FLOOR: the generator's images carry little more identity than an untrained "
            "generator's; training a re-ID model on them is likely to cost mAP",
            "untrusted": "UNTRUSTED: the re-ID judge cannot tell the real images from the floor's on this data, "
            "so the gate cannot judge identity",
        }[self.verdict]
        lines = [f"generator gate: {head}"]
        if self.style:
            lines.append(
                "  STYLE: the generated images are unlike this data's real images (another style than the one "
                "the generator was trained on?)"
            )
        lines.append(
            f"  scored on {s.get('pairs', '?')} held-out pairs ({s.get('split', '?')} split of {s.get('data', '?')}, "
            f"{s.get('identities', '?')} identities); {s.get('steps', '?')} {s.get('sampler', '?')} steps, guidance "
            f"{_fmt_pair(s.get('guidance'))}, seed {s.get('seed', '?')}"
        )

        def row(name: str, key: str, position: float | None, fmt: str = "{:.3f}") -> str:
            vals = [getattr(x, key) for x in (self.floor, self.generator, self.ceiling)]
            cells = "".join(f"{(fmt.format(v) if math.isfinite(v) else '–'):>11}" for v in vals)
            pos = "" if position is None else f"{(f'{position:.2f}' if math.isfinite(position) else '–'):>10}"
            return f"  {name:<18}{cells}{pos}"

        lines.append(f"  {'':<18}{'floor':>11}{'generator':>11}{'ceiling':>11}{'position':>10}")
        lines.append(row(f"identity {IDENTITY_METRIC}", "mAP", self.identity))
        lines.append(row("identity rank-1", "rank1", None))
        lines.append(row("identity margin", "id_margin", None))
        lines.append(row("pose PCKh", "pckh", self.pose))
        lines.append(row("realism FD re-ID", "fd_reid", self.realism))
        lines.append(row("sharpness ratio", "sharpness", None, "{:.2f}"))
        lines.append(
            f"  position: identity and pose 0 = the floor (an untrained generator of the same config), 1 = the "
            f"real target images; realism 0 = as close to the other real images as the real targets, 1 = as far "
            f"as the floor. near-floor below {s.get('near_floor_margin', NEAR_FLOOR_MARGIN):g} on identity; style "
            f"above {s.get('style_margin', STYLE_MARGIN):g} on realism or a sharpness ratio outside "
            f"{SHARPNESS_BAND[0]:g}-{SHARPNESS_BAND[1]:g}"
            + (
                ""
                if self.realism_trusted
                else " (realism metrics failed their check on this data: no style verdict)"
            )
        )
        lines.extend(f"  - {r}" for r in self.reasons)
        return "\n".join(lines)


def _fmt_pair(g: Any) -> str:
    try:
        return f"{float(g[0]):g},{float(g[1]):g}"
    except (TypeError, IndexError, ValueError):
        return "?"


def gate_verdict(
    floor: GateScores,
    generator: GateScores,
    ceiling: GateScores,
    *,
    realism_trusted: bool,
    near_floor_margin: float = NEAR_FLOOR_MARGIN,
    style_margin: float = STYLE_MARGIN,
) -> tuple[str, bool, list[str], dict[str, float]]:
    """The verdict, the style flag, the reasons and the positions from the three systems' scores (a pure
    function: the thresholds are documented at the module's top)."""
    f, g, c = (getattr(x, IDENTITY_METRIC) for x in (floor, generator, ceiling))
    positions = {
        "identity": _position(g, f, c),
        "pose": _position(generator.pckh, floor.pckh, ceiling.pckh),
        "realism": _position(generator.fd_reid, ceiling.fd_reid, floor.fd_reid),
    }
    reasons: list[str] = []
    if not all(math.isfinite(v) for v in (f, g, c)) or c - f < MIN_IDENTITY_GAP:
        verdict = "untrusted"
        positions["identity"] = float("nan")  # no scale to place the generator on
        reasons.append(
            f"identity: the real targets score {IDENTITY_METRIC} {c:.3f} against the floor's {f:.3f} (need a gap of "
            f"at least {MIN_IDENTITY_GAP:g}): a better re-ID judge (more training steps) is needed"
        )
    elif g - f < near_floor_margin * (c - f):
        verdict = "near-floor"
        reasons.append(
            f"identity: {IDENTITY_METRIC} {g:.3f} is {positions['identity']:.2f} of the way from the floor ({f:.3f}) "
            f"to the real images ({c:.3f}), below the margin {near_floor_margin:g}"
        )
    else:
        verdict = "pass"
        reasons.append(
            f"identity: {IDENTITY_METRIC} {g:.3f} is {positions['identity']:.2f} of the way from the floor ({f:.3f}) "
            f"to the real images ({c:.3f})"
        )
    style = False
    if realism_trusted:
        r, sharp = positions["realism"], generator.sharpness
        if math.isfinite(r) and r > style_margin:
            style = True
            reasons.append(
                f"style: its Fréchet distance to the real images in re-ID features ({generator.fd_reid:.3f}) is "
                f"{r:.2f} of the way from the real targets' ({ceiling.fd_reid:.3f}) to the floor's "
                f"({floor.fd_reid:.3f}), above {style_margin:g}"
            )
        if math.isfinite(sharp) and not SHARPNESS_BAND[0] <= sharp <= SHARPNESS_BAND[1]:
            style = True
            reasons.append(
                f"style: sharpness ratio {sharp:.2f} (1 = as sharp as the real images) is outside "
                f"{SHARPNESS_BAND[0]:g}-{SHARPNESS_BAND[1]:g}"
            )
    if math.isfinite(positions["pose"]) and positions["pose"] < near_floor_margin:
        reasons.append(f"pose: PCKh {generator.pckh:.3f} is near the floor's {floor.pckh:.3f} too")
    return verdict, style, reasons, positions


# --------------------------------------------------------------------------------------------------
# Pairs of the user's own images
# --------------------------------------------------------------------------------------------------
def _split_records(market: Market1501, split: Split) -> list[MarketRecord]:
    if split == "train":
        return [r for r in market.train if r.has_identity]
    if split == "test":
        return [r for r in market.query + market.gallery if r.has_identity]
    raise ValueError(f"split {split!r}: choose train or test")


def select_pairs(
    records: Sequence[MarketRecord], posed: set[str], n_pairs: int, seed: int
) -> list[tuple[str, str]]:
    """Up to ``n_pairs`` ordered same-identity pairs ``(source, target)``, spread over the identities.

    A pair is kept only when its target has a pose (in ``posed``) and its identity has a third image in
    another camera than the target's: that image is what the generated target is recognised by (the pair's
    own source and target are left out of the gallery), so every scored pair is a valid re-ID query. Drawn
    with ``seed``: one pair per identity in a shuffled identity order, then a second round, and so on.
    """
    by_pid: dict[int, list[MarketRecord]] = {}
    for r in sorted(records, key=lambda r: r.name):
        by_pid.setdefault(r.pid, []).append(r)
    rng = np.random.default_rng(seed)
    pools: list[list[tuple[str, str]]] = []
    for pid in sorted(by_pid):
        recs = by_pid[pid]
        cands = [
            (a.name, b.name)
            for a in recs
            for b in recs
            if a.name != b.name
            and b.name in posed
            and any(c.name not in (a.name, b.name) and c.camid != b.camid for c in recs)
        ]
        if cands:
            pools.append([cands[i] for i in rng.permutation(len(cands))])
    order = rng.permutation(len(pools)) if pools else []
    out: list[tuple[str, str]] = []
    depth = 0
    while len(out) < n_pairs and any(depth < len(p) for p in pools):
        for i in order:
            if depth < len(pools[i]) and len(out) < n_pairs:
                out.append(pools[i][depth])
        depth += 1
    return out


def _market_view(market: Market1501, split: Split, records: list[MarketRecord]) -> Market1501:
    """``market`` as the scorer reads it: for the train split, the train images are the gallery the generated
    targets are recognised in and the realism reference (nothing from the test split is read)."""
    if split == "test":
        return market
    view = copy.copy(market)
    view.train, view.query, view.gallery = [], [], list(records)
    return view


# --------------------------------------------------------------------------------------------------
# The judges
# --------------------------------------------------------------------------------------------------
def _reid_judge(features: Any, device: torch.device) -> tuple[FeatureFn, str]:
    """The re-ID feature function: ``features`` itself when callable, else a re-ID checkpoint's extractor."""
    if callable(features):
        return features, f"re-ID features {getattr(features, '__name__', type(features).__name__)}"
    if features is None:
        raise ValueError("the gate needs a re-ID judge: a feature function or a re-ID checkpoint")
    path = Path(features).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"re-ID checkpoint {path}: no such file")
    from posereid.reid_integration.torchreid_plugin import ReidFeatureExtractor

    return ReidFeatureExtractor.from_checkpoint(path, device=device), f"re-ID model {path}"


# --------------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------------
def recipe_sampling(
    generator: Any,
    data: str | os.PathLike[str],
    steps: int | None = None,
    sampler: str | None = None,
    guidance: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """What ``reid-gain`` samples ``generator`` with on ``data``, each option left out (``None``) taken from a
    few-step checkpoint's own setting when its own sampler is used (:func:`~posereid.augment.sampling_settings.
    fill_from_own`), else from the data's recipe: the setting the gate scores."""
    from posereid.augment.sampling_settings import fill_from_own, own_sampling
    from posereid.reid_integration.recipes import choose_recipe

    recipe = choose_recipe(None, data)
    asked = fill_from_own(own_sampling(generator), steps=steps, sampler=sampler, guidance=guidance)
    return {
        "steps": asked["steps"] or recipe.steps,
        "sampler": asked["sampler"] or recipe.sampler,
        "guidance": tuple(asked["guidance"] or recipe.guidance),
    }


def gate_generator(
    generator: PoseTransferSampler,
    data: str | os.PathLike[str],
    features: FeatureFn | str | os.PathLike[str],
    *,
    annotations: str | os.PathLike[str] | None = None,
    split: Split = "train",
    n_pairs: int = DEFAULT_PAIRS,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: tuple[float, float] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    pose_estimator: Any = "auto",
    synthetic: bool | None = None,
    near_floor_margin: float = NEAR_FLOOR_MARGIN,
    style_margin: float = STYLE_MARGIN,
    strict: bool = False,
    annotation_hw: tuple[int, int] | None = None,
) -> GateResult:
    """Score ``generator`` on held-out pairs of ``data`` against the floor and the ceiling; the verdict.

    Args:
        generator: any family's sampler (:class:`~posereid.models.contract.PoseTransferSampler`), on its device.
        data: the user's Market-1501-format folder.
        features: the re-ID judge: a feature function ``(B, 3, H, W) [0, 1] → (B, D)`` or a re-ID checkpoint,
            trained on the real images of ``data``'s train split (e.g. ``train-reid`` on them) so that it knows
            the user's people and style.
        annotations: PATN keypoints of the split's images (default: ``market-annotation-<split>.csv`` found
            beside ``data``), in the frame ``annotation_hw``.
        split: whose images are paired: ``"train"`` (default: the images a user augments; the same images are
            the gallery and the realism reference, so nothing of the test split is read) or ``"test"``
            (query + gallery, as ``evaluate-generator`` scores).
        n_pairs / seed: how many pairs (:func:`select_pairs`) and the seed of the draw and of every image's noise.
        steps / sampler / guidance: the sampling setting scored (the one the images will be made with);
            ``None``: :func:`recipe_sampling` (a few-step checkpoint's own, else the data's recipe: 12
            DPM-Solver++ steps at guidance 1 on synthetic data).
        pose_estimator: ``"auto"`` (the pose judge on the synthetic renderer's data, mediapipe on photos),
            ``"judge"``, ``"mediapipe"``, a callable, or ``None``; resolved as ``evaluate-generator`` resolves it.
        synthetic: whether ``data`` holds the synthetic renderer's people (what ``"auto"`` reads); ``None``
            (default): detected as ``evaluate-generator`` does
            (:func:`~posereid.experiments.quality.evaluate.is_synthetic_data` on ``data``). A folder derived
            from synthetic data without its ``synthetic-meta.csv`` (``reid-gain``'s kept-images subset) needs
            it given: mediapipe scores real 64x32 renders at a PCKh of 0.2-0.4, the pose judge at about 0.95.
        near_floor_margin / style_margin: the verdict's thresholds (:data:`NEAR_FLOOR_MARGIN`,
            :data:`STYLE_MARGIN`).
        strict: stop at the first unreadable image instead of skipping and counting it.
        annotation_hw: the ``(H, W)`` frame of ``annotations``' coordinates (``--annotation-size``); ``None``
            (default): the images' own size (:func:`~posereid.experiments.quality.pairs.load_eval_pairs`).
    """
    from posereid.experiments.quality.evaluate import _resolve_pose, is_synthetic_data
    from posereid.experiments.quality.pairs import load_eval_pairs
    from posereid.experiments.quality.scoring import Backends, QualityScorer

    if not 0.0 < near_floor_margin < 1.0:
        raise ValueError(f"near_floor_margin must be in (0, 1), got {near_floor_margin}")
    if not style_margin > 0.0:
        raise ValueError(f"style_margin must be > 0, got {style_margin}")
    if n_pairs < 2:
        raise ValueError(f"n_pairs must be >= 2 (the Fréchet distance needs two images), got {n_pairs}")
    dev = next(generator.parameters()).device
    size = tuple(int(v) for v in generator.image_size)
    market = Market1501(data, strict=strict)
    records = _split_records(market, split)
    ann = Path(annotations) if annotations is not None else find_annotations(data, split)
    posed = {n for n, k in read_patn_csv(ann, image_hw=None).items() if (k >= 0).all(-1).any()}
    names = select_pairs(records, posed, n_pairs, seed)
    if len(names) < 2:
        raise ValueError(
            f"{data}: only {len(names)} usable pair(s) in the {split} split (a pair needs a posed target and a "
            "third image of the same person in another camera); the gate needs at least 2"
        )
    view = _market_view(market, split, records)
    with tempfile.TemporaryDirectory(prefix="posereid-gate-") as tmp:
        pairs_csv = Path(tmp) / "gate-pairs.csv"
        write_pairs_csv(pairs_csv, names)
        pairs = load_eval_pairs(
            data, size, pairs=pairs_csv, annotations=ann, n_pairs=None, seed=seed, market=view, strict=strict,
            annotation_hw=annotation_hw,
        )  # fmt: skip
    if synthetic is None:
        synthetic = is_synthetic_data(data, market.root)
    setting = recipe_sampling(generator, data, steps, sampler, guidance)
    steps, sampler, guidance = setting["steps"], setting["sampler"], setting["guidance"]
    backends = Backends()
    backends.reid, backends.status["identity"] = _reid_judge(features, dev)
    backends.pose, backends.status["pose"] = _resolve_pose(pose_estimator, synthetic=synthetic, device=dev)
    was_training = generator.training
    generator.eval()
    try:
        scorer = QualityScorer(
            pairs, view, backends, batch_size=batch_size, seed=seed, device=dev, strict=strict
        )
        systems = _score_systems(generator, pairs, scorer, steps=steps, sampler=sampler, guidance=guidance,
                                 seed=seed, batch_size=batch_size)  # fmt: skip
        check = scorer.realism_check(seed=seed)
    finally:
        generator.train(was_training)
        if isinstance(pose_estimator, str) and backends.pose is not None:
            backends.pose.close()
    floor, gen, ceiling = (GateScores.from_scores(systems[k]) for k in ("floor", "generator", "ceiling"))
    trusted = bool(check.get("trusted")) and "fd_reid" in check
    verdict, style, reasons, pos = gate_verdict(
        floor,
        gen,
        ceiling,
        realism_trusted=trusted,
        near_floor_margin=near_floor_margin,
        style_margin=style_margin,
    )
    settings = {
        "data": str(data), "split": split, "annotations": str(ann),
        "annotation_hw": None if annotation_hw is None else [int(v) for v in annotation_hw], "pairs": len(pairs),
        "identities": len(set(pairs.source_pid.tolist())), "steps": int(steps), "sampler": sampler,
        "guidance": [float(guidance[0]), float(guidance[1])], "seed": int(seed), "synthetic": bool(synthetic),
        "near_floor_margin": float(near_floor_margin), "style_margin": float(style_margin),
        "identity_metric": IDENTITY_METRIC, "judges": dict(backends.status), "reference": dict(scorer.info),
        "pair_names": [list(p) for p in pairs.names],
    }  # fmt: skip
    return GateResult(
        floor=floor, generator=gen, ceiling=ceiling, identity=pos["identity"], pose=pos["pose"],
        realism=pos["realism"], verdict=verdict, style=style, reasons=reasons, realism_trusted=trusted,
        settings=settings,
    )  # fmt: skip


def _score_systems(
    generator: PoseTransferSampler,
    pairs: EvalPairs,
    scorer: QualityScorer,
    *,
    steps: int,
    sampler: str,
    guidance: tuple[float, float],
    seed: int,
    batch_size: int,
) -> dict[str, dict[str, float]]:
    """The ceiling's, the generator's and the floor's scores on the same pairs, noise and sampling."""
    from posereid.experiments.quality.evaluate import generate_for_pairs, untrained_like

    out = {"ceiling": scorer.score(pairs.target, query_camids=pairs.target_camid)}
    kw = dict(steps=steps, guidance=tuple(guidance), sampler=sampler, seed=seed, batch_size=batch_size)
    for name, model in (("generator", generator), ("floor", None)):
        model = model if model is not None else untrained_like(generator, seed)
        images, _ = generate_for_pairs(model, pairs, **kw)
        out[name] = scorer.score(images, query_camids=pairs.target_camid)
    return out


def write_gate_json(path: str | os.PathLike[str], result: GateResult, **extra: Any) -> Path:
    """Write ``result`` (plus ``extra`` fields, which must not reuse its keys) as JSON, atomically; returns the
    path. :meth:`GateResult.from_dict` reads it back."""
    import json

    body = result.as_dict()
    clash = sorted(set(extra) & set(body))
    if clash:
        raise ValueError(f"write_gate_json: extra field(s) {clash} would replace the result's own")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        json.dump({**body, **extra}, fh, indent=2, allow_nan=False)
    return path


__all__ = [
    "DEFAULT_PAIRS",
    "IDENTITY_METRIC",
    "MIN_IDENTITY_GAP",
    "NEAR_FLOOR_MARGIN",
    "SHARPNESS_BAND",
    "STYLE_MARGIN",
    "VERDICTS",
    "GateResult",
    "GateScores",
    "gate_generator",
    "gate_verdict",
    "select_pairs",
    "write_gate_json",
]
