"""Settings of the re-ID gain protocol: the arms, :class:`GainConfig`, fraction tags, the annotation lookup.

The protocol (:mod:`~posereid.experiments.reid_gain.protocol`), its subsets
(:mod:`~posereid.experiments.reid_gain.subset`), its report (:mod:`~posereid.experiments.reid_gain.report`)
and the ``reid-gain`` command (:mod:`~posereid.experiments.reid_gain.cli`) share this one definition of
the settings. It imports none of the other ``reid_gain`` modules (they all import it).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from posereid.models.io_utils import file_sha256
from posereid.reid_integration.market1501 import find_annotations
from posereid.reid_integration.soft_settings import SOFT_SYNTHETIC_RATIO

#: every arm the protocol knows; ``strong+synthetic+filtered`` needs the identity filter,
#: ``strong+synthetic+soft`` the ``strong`` arm (:data:`SOFT_ARM`) and ``strong+oracle`` a synthetic
#: dataset (:data:`ORACLE_ARM`).
ARMS: tuple[str, ...] = (
    "plain",
    "strong",
    "plain+synthetic",
    "strong+synthetic",
    "strong+synthetic+filtered",
    "strong+synthetic+soft",
    "strong+oracle",
    "strong+noise",
    "strong+noise+soft",
    "strong+noise+filtered",
)
DEFAULT_ARMS: tuple[str, ...] = ARMS[:4]
DEFAULT_FRACTIONS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
#: five seeds: the fewest for which a paired 95 % t-interval (4 degrees of freedom) is not absurdly wide.
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
BASELINES: tuple[str, ...] = ("plain", "strong")
#: the strong baseline trained on the kept images + real renders of the train identities in the views the
#: train split hides, as many as the synthetic images, under the same pids (synthetic datasets only): the
#: ceiling of pose augmentation. A synthetic arm is also reported as the share of its gain it recovers.
ORACLE_ARM = "strong+oracle"
#: the strong baseline + as many pixel-noise images as the synthetic arm adds (each with one kept image's
#: per-channel mean and spread, under its pid and camera): the floor, what a generator that has learnt
#: nothing but colour statistics gives. A synthetic arm below it is worse than adding noise.
NOISE_ARM = "strong+noise"
#: ``strong+synthetic`` whose synthetic images' loss mixes the hard source-pid label with the soft target of a
#: teacher: the ``strong`` cell model of the same seed and fraction (trained on the kept real images only, so
#: nothing leaks; no extra training when that cell kept its model). ``soft_weight`` / ``soft_temperature``
#: set the mix.
SOFT_ARM = "strong+synthetic+soft"
#: the floor's images (:data:`NOISE_ARM`) with the teacher's soft labels, and after the identity filter: what
#: the soft-label and filtered arms make of a generator that has learnt nothing but colour statistics.
NOISE_SOFT_ARM = "strong+noise+soft"
NOISE_FILTERED_ARM = "strong+noise+filtered"


def is_soft(arm: str) -> bool:
    """Whether ``arm``'s extra images are trained with the teacher's soft labels (it needs arm ``strong``)."""
    return arm.endswith("+soft")


def is_filtered(arm: str) -> bool:
    """Whether ``arm``'s extra images pass the identity filter first (it needs ``filter_checkpoint``)."""
    return arm.endswith("+filtered")


def arm_extra(arm: str) -> str:
    """What an arm adds to the kept real images: ``""`` (a baseline), ``"synthetic"`` (generated images,
    which need a generator), ``"oracle"`` (rendered ground truth) or ``"noise"`` (the floor)."""
    if arm == ORACLE_ARM:
        return "oracle"
    if arm.startswith(NOISE_ARM):
        return "noise"
    return "synthetic" if "synthetic" in arm else ""


#: config fields that change what a cached subset / generator / result means; a rerun must agree on them.
_PROTOCOL_FIELDS: tuple[str, ...] = (
    "subset_seed", "reid_steps", "reid_model", "reid_batch_size", "reid_lr", "height", "width",
    "generator_family", "generator_preset", "generator_options", "generator_steps", "generator_batch_size",
    "generator_lr", "generator", "generator_identity_weight",
    "generator_data", "per_image", "sampler", "steps", "guidance", "pose_sampling", "annotation_hw",
    "filter_checkpoint", "filter_score", "filter_threshold", "synthetic_ratio", "soft_synthetic_ratio", "soft_weight",
    "soft_temperature",
)  # fmt: skip
#: the protocol fields a baseline or oracle cell depends on (plus the data and its annotations): two runs
#: that agree on them train the same ``strong`` / ``plain`` / ``strong+oracle`` models, whatever their
#: generators, so one run may read those cells from the other (``baselines_from``).
BASELINE_FIELDS: tuple[str, ...] = (
    "data", "annotations_sha256", "subset_seed", "reid_steps", "reid_model", "reid_batch_size", "reid_lr",
    "height", "width", "per_image",
)  # fmt: skip


#: protocol fields that folders written before the field existed did not record, and the value they used
_UNRECORDED: dict[str, Any] = {
    "generator_family": "pidm", "generator_options": {}, "soft_weight": 0.5, "soft_temperature": 1.0,
    "generator_identity_weight": 0.0,
}  # fmt: skip


def with_unrecorded(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved ``gain_config.json`` with the fields it predates filled with the values its run used (a run
    before ``soft_synthetic_ratio`` mixed its soft-label arms by ``synthetic_ratio``)."""
    return {**_UNRECORDED, "soft_synthetic_ratio": saved.get("synthetic_ratio"), **saved}


class ProtocolMismatchError(RuntimeError):
    """The output folder holds results made with different protocol settings."""


class GainOutOfTimeError(RuntimeError):
    """``max_minutes`` ran out before every cell was done; rerunning the same call continues the run."""


@dataclass
class GainConfig:
    """Settings of one gain experiment (see the module docstring).

    Args:
        data: a Market-1501-format folder (``bounding_box_train``, ``query``, ``bounding_box_test``).
        out: output folder (results + ``work/`` cache).
        annotations: PATN CSV with keypoints of the train images; default: ``market-annotation-train.csv``
            in ``data`` or its parents.
        fractions: fractions of the train images kept (``1.0`` = all).
        arms: subset of :data:`ARMS` (``strong+oracle`` needs a dataset written by ``synth-market``).
        seeds: re-ID seeds (each arm × fraction is trained once per seed); default five (the report's
            paired 95 % intervals need several).
        subset_seed: seed of the subset choice (shared by all arms and seeds, so arms compare on the
            same ``D_tr``).
        reid_steps: optimisation steps of EVERY re-ID run (baseline and augmented alike).
        generator_family / generator_preset: the family (``posereid.models.FAMILIES``) and preset of the
            generators the protocol trains; a multi-stage family trains its stages in order, each for
            ``generator_steps``. generator_options: overrides of that preset (model or schedule fields,
            e.g. ``{"prediction_type": "v_prediction"}``), as ``from_preset(preset, **options)`` takes them.
        generator: reuse this generator checkpoint for every fraction instead of training one.
        generator_identity_weight: > 0 trains the protocol's generators with the identity loss of this weight
            (``train-generator --identity-model``) against a strong re-ID model trained on the kept images only
            (no dropped image reaches the generator through it), seeded apart from the filter model that
            gates and filters the images. Needs ``generator_data="kept"``; ``0``: no identity loss.
        generator_data: ``"kept"`` trains one generator per fraction on that fraction's images only;
            ``"full"`` trains one on all train images (PIDM's leaky setting, for comparison).
        per_image: synthetic images generated per kept source image.
        synthetic_ratio: share of synthetic images in the synthetic arms' batches (in expectation);
            ``None`` samples uniformly over real and synthetic images, so ``per_image=1`` gives half.
        soft_synthetic_ratio: the same share for the soft-label arms (``strong+synthetic+soft``,
            ``strong+noise+soft``); default :data:`~posereid.reid_integration.soft_settings.SOFT_SYNTHETIC_RATIO`
            (a quarter: with half of each batch synthetic, soft labels left the floor settled below strong;
            ``results/gain_protocol_soft``); ``None``: uniform, as ``synthetic_ratio=None``.
        sampler / steps / guidance: diffusion sampler name, sampling steps and guidance weight.
        pose_sampling: how target poses are drawn from the kept images' pose bank
            (``uniform``/``cluster``/``view``).
        gen_batch_size: images per generator call.
        annotation_hw: the ``(H, W)`` frame of the PATN annotation coordinates; ``None``: the train images'
            own size (the PATN convention; Market-1501 crops are all 128×64).
        filter_checkpoint: re-ID checkpoint for the identity-consistency filter of the
            ``strong+synthetic+filtered`` arm, or ``"auto"``: a strong-baseline model trained on each kept
            fraction (leakage-free). filter_score / filter_threshold: keep images scoring ≥ threshold
            (default: margin ≥ 0, i.e. closer to their own identity than to any other).
        soft_weight / soft_temperature: the ``strong+synthetic+soft`` arm's share ``w`` in ``[0, 1]`` of the
            teacher's soft term in a synthetic image's loss (``1 - w``: its hard label) and the softmax
            temperature ``T`` > 0 of that term (:func:`~posereid.reid_integration.soft_labels.soft_label_loss`).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, …
        max_minutes: wall-clock budget of one run (``None``: none). Once spent, no new cell starts and a
            generator training checkpoints and stops; the run raises :class:`GainOutOfTimeError` after
            writing the reports of the cells done, and the same call again continues where it stopped.
        baselines_from: another run's output folder to read the baseline, oracle and floor cells from instead of
            training them again (its :data:`BASELINE_FIELDS` must agree with this run's): how generators of
            several families are compared on the same ``strong`` and ``strong+oracle`` models.
    """

    data: Path
    out: Path
    annotations: Path | None = None
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    arms: tuple[str, ...] = DEFAULT_ARMS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    subset_seed: int = 0
    reid_steps: int = 3000
    reid_model: str = "resnet50"
    reid_batch_size: int = 32
    reid_lr: float = 3.5e-4
    height: int = 128
    width: int = 64
    generator_family: str = "pidm"
    generator_preset: str = "small"
    generator_options: dict[str, Any] = field(default_factory=dict)
    generator_steps: int = 20000
    generator_batch_size: int = 16
    generator_lr: float = 1e-4
    generator: Path | None = None
    generator_data: Literal["kept", "full"] = "kept"
    generator_identity_weight: float = 0.0
    per_image: int = 1
    synthetic_ratio: float | None = None
    soft_synthetic_ratio: float | None = SOFT_SYNTHETIC_RATIO
    sampler: str = "dpmsolver++"
    steps: int = 20
    guidance: tuple[float, float] = (2.0, 2.0)
    pose_sampling: str = "uniform"
    gen_batch_size: int = 32
    annotation_hw: tuple[int, int] | None = None
    filter_checkpoint: Path | str | None = None
    filter_score: Literal["similarity", "margin"] = "margin"
    filter_threshold: float = 0.0
    soft_weight: float | str = 0.5
    soft_temperature: float = 1.0
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True
    max_minutes: float | None = None
    baselines_from: Path | None = None

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.out = Path(self.out)
        self.annotations = None if self.annotations is None else Path(self.annotations)
        self.generator = None if self.generator is None else Path(self.generator)
        self.baselines_from = None if self.baselines_from is None else Path(self.baselines_from)
        self.generator_options = dict(self.generator_options or {})
        if self.filter_checkpoint is not None and str(self.filter_checkpoint) != "auto":
            self.filter_checkpoint = Path(self.filter_checkpoint)
        g = (
            (self.guidance, self.guidance)
            if isinstance(self.guidance, (int, float))
            else tuple(self.guidance)
        )
        if len(g) != 2:
            raise ValueError(f"guidance must be one weight or (pose, appearance), got {self.guidance!r}")
        self.guidance = (float(g[0]), float(g[1]))
        if self.annotation_hw is not None:
            self.annotation_hw = (int(self.annotation_hw[0]), int(self.annotation_hw[1]))
        self.fractions = tuple(float(f) for f in self.fractions)
        self.arms = tuple(self.arms)
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.fractions or any(not 0.0 < f <= 1.0 for f in self.fractions):
            raise ValueError(f"fractions must be in (0, 1], got {self.fractions}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"unknown arm(s) {unknown or '(none given)'}; choose from {', '.join(ARMS)}")
        filtered = [a for a in self.arms if is_filtered(a)]
        if filtered and self.filter_checkpoint is None:
            raise ValueError(
                f"arm '{filtered[0]}' needs filter_checkpoint: a re-ID checkpoint, or 'auto' to "
                "train a strong-baseline filter model on each kept fraction"
            )
        soft = [a for a in self.arms if is_soft(a)]
        if soft and "strong" not in self.arms:
            raise ValueError(
                f"arm '{soft[0]}' needs arm 'strong': its teacher is the strong cell model of the same seed and "
                "fraction (and its gain is paired with that cell)"
            )
        from posereid.reid_integration.soft_settings import check_soft_weight

        self.soft_weight = check_soft_weight(self.soft_weight)
        try:
            self.soft_temperature = float(self.soft_temperature)
        except (TypeError, ValueError):
            raise ValueError(f"soft_temperature must be a number, got {self.soft_temperature!r}") from None
        if not (math.isfinite(self.soft_temperature) and self.soft_temperature > 0.0):
            raise ValueError(f"soft_temperature must be a finite number > 0, got {self.soft_temperature}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if self.max_minutes is not None and not float(self.max_minutes) > 0:
            raise ValueError(f"max_minutes must be > 0 or None, got {self.max_minutes}")
        if self.generator_data not in ("kept", "full"):
            raise ValueError(f"generator_data must be 'kept' or 'full', got {self.generator_data!r}")
        w = self.generator_identity_weight
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise ValueError(f"generator_identity_weight must be a finite number >= 0, got {w!r}")
        if w > 0 and (self.generator_data != "kept" or self.generator is not None):
            raise ValueError(
                "generator_identity_weight trains the protocol's own generators (generator_data 'kept', no "
                "given generator) against a re-ID model of the kept images; for another generator, train it "
                "with `train-generator --identity-model` and pass it as the generator"
            )
        from posereid.reid_integration.train import check_synthetic_ratio  # (torchreid: import lazily)

        # checked here too: fail before any generation, not hours in
        for ratio in (self.synthetic_ratio, self.soft_synthetic_ratio):
            check_synthetic_ratio(ratio)
        for name in ("reid_steps", "generator_steps", "per_image", "steps", "height", "width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def work(self) -> Path:
        return self.out / "work"

    def generator_source(self) -> str:
        """What generator the synthetic arms use, as written in the results (``kept``/``full``/``given:…``)."""
        if self.generator is not None:
            return f"given:{self.generator}"
        return self.generator_data

    def protocol(self) -> dict[str, Any]:
        """The settings a rerun into the same ``out`` must share (JSON-ready)."""
        d = {k: getattr(self, k) for k in _PROTOCOL_FIELDS}
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
        # The data itself: cached subsets, generators and results are only valid for the same images and
        # keypoints, so a rerun with another folder or re-annotated images must not reuse them.
        d["data"] = str(Path(self.data).resolve())
        try:
            ann: Path | None = self.annotations or find_annotations(self.data)
        except FileNotFoundError:
            ann = None
        d["annotations_sha256"] = file_sha256(ann) if ann is not None and Path(ann).is_file() else None
        return d


# --------------------------------------------------------------------------------------------------
# Fractions and annotations
# --------------------------------------------------------------------------------------------------
def fraction_tag(fraction: float) -> str:
    """Stable folder/CSV key of a fraction: ``0.2`` → ``'0.2'``, ``1.0`` → ``'1'``."""
    return f"{float(fraction):.6g}"


def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.2,0.4"`` or ``"20%,40%"`` → ``(0.2, 0.4)``.

    A bare number is a fraction in (0, 1]; a percentage needs its ``%`` sign, so ``1.5`` is an error,
    not a silent 1.5 %.
    """
    out = []
    for raw in str(text).split(","):
        part = raw.strip()
        if not part:
            continue
        percent = part.endswith("%")
        try:
            v = float(part.rstrip("%"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"fraction {part!r} is not a number") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"fraction {part!r} is not a finite number")
        v = v / 100.0 if percent else v
        if not 0.0 < v <= 1.0:
            hint = "" if percent else f" (for {v:g} %, write {v:g}%)"
            raise argparse.ArgumentTypeError(
                f"fraction {part!r} must be in (0, 1], or a percentage in (0, 100]%{hint}"
            )
        out.append(v)
    if not out:
        raise argparse.ArgumentTypeError("no fraction given")
    return tuple(out)
