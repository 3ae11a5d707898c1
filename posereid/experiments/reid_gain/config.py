"""Settings of the re-ID gain protocol: the arms, :class:`GainConfig` and the ``reid-gain`` arguments.

Split out of :mod:`posereid.experiments.reid_gain` so that the protocol, its report
(:mod:`~posereid.experiments.reid_gain_report`) and the command line share one definition of the settings.
It imports none of the other ``reid_gain*`` modules (they all import it). Every public name here is also
importable from :mod:`posereid.experiments.reid_gain`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from posereid.models.io_utils import file_sha256
from posereid.reid_integration.market1501 import resolve_data_dir

#: every arm the protocol knows; ``strong+synthetic+filtered`` needs the identity filter.
ARMS: tuple[str, ...] = (
    "plain",
    "strong",
    "plain+synthetic",
    "strong+synthetic",
    "strong+synthetic+filtered",
)
DEFAULT_ARMS: tuple[str, ...] = ARMS[:4]
DEFAULT_FRACTIONS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
BASELINES: tuple[str, ...] = ("plain", "strong")

#: config fields that change what a cached subset / generator / result means; a rerun must agree on them.
_PROTOCOL_FIELDS: tuple[str, ...] = (
    "subset_seed", "reid_steps", "reid_model", "reid_batch_size", "reid_lr", "height", "width",
    "generator_preset", "generator_steps", "generator_batch_size", "generator_lr", "generator",
    "generator_data", "per_image", "sampler", "steps", "guidance", "pose_sampling", "annotation_hw",
    "filter_checkpoint", "filter_score", "filter_threshold", "synthetic_ratio",
)  # fmt: skip


class ProtocolMismatchError(RuntimeError):
    """The output folder holds results made with different protocol settings."""


@dataclass
class GainConfig:
    """Settings of one gain experiment (see the module docstring).

    Args:
        data: a Market-1501-format folder (``bounding_box_train``, ``query``, ``bounding_box_test``).
        out: output folder (results + ``work/`` cache).
        annotations: PATN CSV with keypoints of the train images; default: ``market-annotation-train.csv``
            in ``data`` or its parents.
        fractions: fractions of the train images kept (``1.0`` = all).
        arms: subset of :data:`ARMS`.
        seeds: re-ID seeds (each arm × fraction is trained once per seed).
        subset_seed: seed of the subset choice (shared by all arms and seeds, so arms compare on the
            same ``D_tr``).
        reid_steps: optimisation steps of EVERY re-ID run (baseline and augmented alike).
        generator: reuse this generator checkpoint for every fraction instead of training one.
        generator_data: ``"kept"`` trains one generator per fraction on that fraction's images only;
            ``"full"`` trains one on all train images (PIDM's leaky setting, for comparison).
        per_image: synthetic images generated per kept source image.
        synthetic_ratio: share of synthetic images in the synthetic arms' batches (in expectation);
            ``None`` samples uniformly over real and synthetic images, so ``per_image=1`` gives half.
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
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, …
    """

    data: Path
    out: Path
    annotations: Path | None = None
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    arms: tuple[str, ...] = DEFAULT_ARMS
    seeds: tuple[int, ...] = (0, 1, 2)
    subset_seed: int = 0
    reid_steps: int = 3000
    reid_model: str = "resnet50"
    reid_batch_size: int = 32
    reid_lr: float = 3.5e-4
    height: int = 128
    width: int = 64
    generator_preset: str = "small"
    generator_steps: int = 20000
    generator_batch_size: int = 16
    generator_lr: float = 1e-4
    generator: Path | None = None
    generator_data: Literal["kept", "full"] = "kept"
    per_image: int = 1
    synthetic_ratio: float | None = None
    sampler: str = "dpmsolver++"
    steps: int = 20
    guidance: tuple[float, float] = (2.0, 2.0)
    pose_sampling: str = "uniform"
    gen_batch_size: int = 32
    annotation_hw: tuple[int, int] | None = None
    filter_checkpoint: Path | str | None = None
    filter_score: Literal["similarity", "margin"] = "margin"
    filter_threshold: float = 0.0
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.out = Path(self.out)
        self.annotations = None if self.annotations is None else Path(self.annotations)
        self.generator = None if self.generator is None else Path(self.generator)
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
        if "strong+synthetic+filtered" in self.arms and self.filter_checkpoint is None:
            raise ValueError(
                "arm 'strong+synthetic+filtered' needs filter_checkpoint: a re-ID checkpoint, or 'auto' to "
                "train a strong-baseline filter model on each kept fraction"
            )
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if self.generator_data not in ("kept", "full"):
            raise ValueError(f"generator_data must be 'kept' or 'full', got {self.generator_data!r}")
        if self.synthetic_ratio is not None:  # checked here too: fail before any generation, not hours in
            from posereid.reid_integration.train import check_synthetic_ratio  # (torchreid: import lazily)

            check_synthetic_ratio(self.synthetic_ratio)
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


def find_annotations(data: Path, split: str = "train") -> Path:
    """``market-annotation-<split>.csv`` in ``data``, its Market data dir, or their parents."""
    name = f"market-annotation-{split}.csv"
    cands: list[Path] = [data, data.parent]
    try:
        d = resolve_data_dir(data)
        cands += [d, d.parent, d.parent.parent]
    except ValueError:
        pass
    for c in cands:
        if (c / name).is_file():
            return c / name
    raise FileNotFoundError(
        f"no {name} found in {', '.join(dict.fromkeys(str(c) for c in cands))}; pass --annotations "
        "(a PATN CSV, e.g. from `posereid annotate`)"
    )


# --------------------------------------------------------------------------------------------------
# CLI: the arguments of posereid reid-gain
# --------------------------------------------------------------------------------------------------
def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.2,0.4"`` or ``"20,40"`` (values above 1 are percentages) → ``(0.2, 0.4)``."""
    out = []
    for part in str(text).split(","):
        part = part.strip().rstrip("%")
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"fraction {part!r} is not a number") from None
        v = v / 100.0 if v > 1.0 else v
        if not 0.0 < v <= 1.0:
            raise argparse.ArgumentTypeError(f"fraction {part!r} must be in (0, 1] or (0, 100] %")
        out.append(v)
    if not out:
        raise argparse.ArgumentTypeError("no fraction given")
    return tuple(out)


def _csv_list(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(p.strip()) for p in text.split(",") if p.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_reid_gain_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``posereid reid-gain`` options (defaults: those of :class:`GainConfig`) to ``parser``."""
    d = GainConfig(data=Path("."), out=Path("."))
    parser.add_argument("--data", required=True, help="Market-1501-format folder")
    parser.add_argument("--annotations", help="PATN CSV of the train images (default: found next to --data)")
    parser.add_argument("--out", required=True, help="output folder (results.csv/.md/.png + work/ cache)")
    parser.add_argument(
        "--fractions",
        type=parse_fractions,
        default=d.fractions,
        help="kept fractions, e.g. 0.2,0.4 or 20,40 (default: 20..100%%)",
    )
    parser.add_argument(
        "--arms", type=_csv_list(str), default=d.arms, help=f"comma list from {', '.join(ARMS)}"
    )
    parser.add_argument("--seeds", type=_csv_list(int), default=d.seeds, help="re-ID seeds, e.g. 0,1,2")
    parser.add_argument("--subset-seed", type=int, default=d.subset_seed, help="seed of the subset choice")
    parser.add_argument(
        "--reid-steps", type=int, default=d.reid_steps, help="optimisation steps of EVERY run"
    )
    parser.add_argument("--reid-model", default=d.reid_model, help="torchreid model name")
    parser.add_argument("--reid-batch-size", type=int, default=d.reid_batch_size)
    parser.add_argument("--reid-lr", type=float, default=d.reid_lr)
    parser.add_argument(
        "--generator-preset", default=d.generator_preset, help="tiny|small|market|deepfashion"
    )
    parser.add_argument("--generator-steps", type=int, default=d.generator_steps)
    parser.add_argument("--generator-batch-size", type=int, default=d.generator_batch_size)
    parser.add_argument("--generator-lr", type=float, default=d.generator_lr)
    parser.add_argument("--generator", help="reuse this generator checkpoint for every fraction")
    parser.add_argument(
        "--generator-data",
        choices=("kept", "full"),
        default=d.generator_data,
        help="train the generator on the kept fraction only (default) or on all train images",
    )
    parser.add_argument("--per-image", type=int, default=d.per_image, help="synthetic images per kept image")
    parser.add_argument(
        "--synthetic-ratio",
        type=float,
        default=None,
        metavar="R",
        help="share of synthetic images in the synthetic arms' batches (default: uniform over all images)",
    )
    parser.add_argument(
        "--sampler", default=d.sampler, help="diffusion sampler (dpmsolver++, ddim, unipc, …)"
    )
    parser.add_argument("--steps", type=int, default=d.steps, help="sampling steps")
    parser.add_argument(
        "--guidance",
        type=_csv_list(float),
        default=d.guidance,
        help="guidance weight, or pose,appearance weights",
    )
    parser.add_argument("--pose-sampling", choices=("uniform", "cluster", "view"), default=d.pose_sampling)
    parser.add_argument("--gen-batch-size", type=int, default=d.gen_batch_size)
    parser.add_argument(
        "--annotation-hw",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="frame of the annotation coordinates (default: the train images' own size)",
    )
    parser.add_argument(
        "--filter-checkpoint", help="re-ID checkpoint for the strong+synthetic+filtered arm, or 'auto'"
    )
    parser.add_argument("--filter-score", choices=("similarity", "margin"), default=d.filter_score)
    parser.add_argument("--filter-threshold", type=float, default=d.filter_threshold)
    parser.add_argument("--height", type=int, default=d.height)
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument("--device", default=d.device, help="auto (cuda if available), cpu, cuda, cuda:1, …")
    parser.add_argument("--workers", type=int, default=d.num_workers, help="data loader workers")
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> GainConfig:
    """A :class:`GainConfig` from parsed ``posereid reid-gain`` arguments."""
    guidance = tuple(args.guidance)
    return GainConfig(
        data=Path(args.data), out=Path(args.out), annotations=args.annotations, fractions=args.fractions,
        arms=args.arms, seeds=args.seeds, subset_seed=args.subset_seed, reid_steps=args.reid_steps,
        reid_model=args.reid_model, reid_batch_size=args.reid_batch_size, reid_lr=args.reid_lr,
        height=args.height, width=args.width, generator_preset=args.generator_preset,
        generator_steps=args.generator_steps, generator_batch_size=args.generator_batch_size,
        generator_lr=args.generator_lr, generator=args.generator, generator_data=args.generator_data,
        per_image=args.per_image, synthetic_ratio=args.synthetic_ratio, sampler=args.sampler, steps=args.steps,
        guidance=guidance * 2 if len(guidance) == 1 else guidance, pose_sampling=args.pose_sampling,
        gen_batch_size=args.gen_batch_size, annotation_hw=args.annotation_hw,
        filter_checkpoint=args.filter_checkpoint, filter_score=args.filter_score,
        filter_threshold=args.filter_threshold, device=args.device, num_workers=args.workers,
        progress=not args.no_progress,
    )  # fmt: skip
