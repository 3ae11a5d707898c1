"""The commands of :mod:`posereid.augment`: ``posereid generate`` and ``posereid filter``.

Argument parsing, the glue from options to the library (:mod:`posereid.augment.generate`,
:mod:`posereid.augment.filter`) and the printed summaries live here; no library module imports this one.
Each command imports its library module when it is chosen, so one command never pays for the other's
imports.
"""

from __future__ import annotations

import argparse

from posereid import argtypes
from posereid.argtypes import (
    MAX_PER_IMAGE,
    add_annotation_size_arg,
    add_strict_arg,
    finite_float,
    non_negative_int,
    per_image,
    positive_int,
)


# --------------------------------------------------------------------------------------------------
# posereid generate
# --------------------------------------------------------------------------------------------------
def add_generate_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``posereid generate`` options to ``parser``."""
    from posereid.augment.pose_bank import SAMPLINGS
    from posereid.models.sampling import SAMPLERS

    parser.add_argument("--generator", required=True, help="generator checkpoint directory (save_pretrained)")
    parser.add_argument("--data", required=True, help="Market-1501 folder whose train images are the sources")
    argtypes.add_annotations_arg(parser)
    parser.add_argument(
        "--per-image",
        type=per_image,
        required=True,
        help=f"synthetic images per source image (1-{MAX_PER_IMAGE})",
    )
    parser.add_argument("--out", required=True, help="output folder (Market format + manifest.jsonl)")
    parser.add_argument(
        "--pose-bank", help="target poses: PATN CSV or PoseBank .npz (default: train annotations)"
    )
    add_annotation_size_arg(parser, what="--annotations (and of a --pose-bank CSV)")
    parser.add_argument("--sampling", choices=SAMPLINGS, default="uniform", help="pose sampling strategy")
    parser.add_argument(
        "--steps", type=positive_int, default=None,
        help="sampling steps (default: the checkpoint's: a few-step checkpoint's default count, else 20)",
    )  # fmt: skip
    parser.add_argument(
        "--sampler", default=None, choices=sorted(SAMPLERS),
        help="sampler (default: the checkpoint's: few-step for a few-step checkpoint, else dpmsolver++)",
    )  # fmt: skip
    argtypes.add_guidance_arg(parser, default=None)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--shard",
        type=argtypes.shard,
        help="i/n: generate items with index %% n == i (default: accelerate rank)",
    )
    parser.add_argument(
        "--refiner", help="checkpoint with a refiner (PCDMs) run on every generated image (any family's)"
    )
    parser.add_argument(
        "--refiner-steps", type=positive_int, default=20,
        help="sampler steps of the refiner (its sampler: --sampler, dpmsolver++ when that is few-step or unset)",
    )  # fmt: skip
    parser.add_argument("--filter-checkpoint", help="re-ID checkpoint: score each image by identity")
    parser.add_argument("--filter-threshold", type=finite_float, help="reject images scoring below this")
    parser.add_argument("--filter-score", choices=("similarity", "margin"), default="similarity")
    parser.add_argument(
        "--out-size", type=positive_int, nargs=2, metavar=("H", "W"), help="size of written images"
    )
    argtypes.add_device_arg(parser)
    parser.add_argument("--autocast", choices=("none", "bf16", "fp16"), default="none")
    argtypes.add_progress_arg(parser)
    add_strict_arg(parser)
    add_check_args(parser)


#: the folder of ``OUT`` where ``generate --check`` keeps its verdict (``gate.json``) and its auto re-ID judge
CHECK_DIR = "gate"


def add_check_args(parser: argparse.ArgumentParser) -> None:
    """``generate --check``: the generator gate before generating (run by the console script, see
    :func:`run_generate`)."""
    group = parser.add_argument_group(
        "generator gate",
        "score the generator on held-out pairs of --data's train images before generating (posereid "
        "check-generator with generate's generator, refiner, sampling, seed and device)",
    )
    group.add_argument(
        "--check", action="store_true",
        help=f"run the generator gate first: print its verdict (and write OUT/{CHECK_DIR}/gate.json); a near-floor "
        "verdict stops with exit code 4 and generates nothing",
    )  # fmt: skip
    group.add_argument(
        "--check-reid-checkpoint", default="auto", metavar="PATH|auto",
        help="the gate's re-ID judge: a train-reid checkpoint of --data's train images, or auto (default): train a "
        f"strong baseline on them with the data's recipe into OUT/{CHECK_DIR}/reid-judge (reused by a rerun)",
    )  # fmt: skip
    group.add_argument(
        "--check-pairs", type=positive_int, default=None, metavar="N",
        help="held-out pairs the gate scores (default: check-generator's)",
    )  # fmt: skip


def run_generate(args: argparse.Namespace) -> int:
    """``posereid generate``: load the generator (+ refiner, pose bank, identity filter), generate, print
    the summary; exit code 1 when a source image failed.

    ``--check`` (the generator gate) is run before this by the console script
    (:func:`posereid.experiments.cli.main`), because this package may not import the gate's; it marks the
    namespace ``checked`` so that a caller who skipped it is told instead of generating unchecked.
    """
    if getattr(args, "check", False) and not getattr(args, "checked", False):
        raise RuntimeError(
            "generate --check: the gate runs from the posereid console script (posereid.experiments.cli.main); "
            "call that, or posereid.experiments.quality.gate_cli.check_generator before run_generate"
        )
    import torch

    from posereid.augment.generate import GenerateConfig, generate_offline
    from posereid.augment.pose_bank import PoseBank
    from posereid.augment.sampling_settings import describe_sampling, refiner_sampler
    from posereid.models.refine import load_sampler
    from posereid.models.runtime import resolve_device
    from posereid.reid_integration.market1501 import find_annotations

    # the settings first: a bad combination stops before any model is loaded
    config = GenerateConfig(
        out_dir=args.out, per_image=args.per_image, sampling=args.sampling, steps=args.steps,
        sampler=args.sampler, guidance=args.guidance,
        batch_size=args.batch_size, seed=args.seed, shard=args.shard, filter_threshold=args.filter_threshold,
        filter_score=args.filter_score, annotation_hw=args.annotation_size,
        out_size=tuple(args.out_size) if args.out_size else None,
        autocast_dtype={"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.autocast],
        progress=args.progress, strict=args.strict,
    )  # fmt: skip
    annotations = args.annotations or find_annotations(args.data)
    device = resolve_device(args.device)
    generator = load_sampler(
        args.generator,
        device=device,
        refiner=args.refiner,
        refiner_steps=args.refiner_steps,
        sampler=refiner_sampler(args.sampler),
    )
    bank = None
    if args.pose_bank:
        bank = (
            PoseBank.load(args.pose_bank)
            if args.pose_bank.endswith(".npz")
            else PoseBank.from_csv(args.pose_bank, image_hw=args.annotation_size, images=args.data)
        )
    identity_filter = None
    if args.filter_checkpoint:
        from posereid.augment.filter import IdentityFilter, load_extractor

        extractor = load_extractor(args.filter_checkpoint, device)
        identity_filter = IdentityFilter(extractor, progress=args.progress).fit_market(
            args.data, strict=args.strict
        )
    summary = generate_offline(
        config, generator, args.data, annotations, pose_bank=bank, identity_filter=identity_filter
    )
    print(
        f"shard {summary.shard}: {summary.generated} generated, {summary.already_done} already done, "
        f"{summary.rejected} rejected, {summary.failed_items} failed of {summary.planned} planned "
        f"({summary.images_per_s:.2f} images/s, {describe_sampling(summary.sampling)}); manifest "
        f"{summary.manifest}"
    )
    return 1 if summary.failed_items else 0


# --------------------------------------------------------------------------------------------------
# posereid filter
# --------------------------------------------------------------------------------------------------
def add_filter_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``posereid filter`` options to ``parser``."""
    parser.add_argument("--dir", required=True, help="folder written by `posereid generate`")
    parser.add_argument("--data", required=True, help="Market-1501 folder with the REAL train images")
    parser.add_argument("--reid-checkpoint", required=True, help="local posereid re-ID checkpoint")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=finite_float, help="keep images whose score is >= this")
    group.add_argument(
        "--keep-top",
        type=argtypes.unit_share,
        metavar="FRACTION",
        help="keep the best-scoring fraction, in (0, 1]",
    )
    parser.add_argument(
        "--score",
        choices=("similarity", "margin"),
        default="similarity",
        help="what the threshold / ranking applies to",
    )
    parser.add_argument(
        "--mode",
        choices=("move", "manifest-only"),
        default="move",
        help="move rejected images to <dir>/rejected/, or only write scores to the manifest",
    )
    argtypes.add_device_arg(parser)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        default=(128, 64),
        metavar=("H", "W"),
        help="size images are batched at (the re-ID model then resizes to its input size)",
    )
    argtypes.add_progress_arg(parser)
    add_strict_arg(parser)


def run_filter(args: argparse.Namespace) -> int:
    """``posereid filter``: re-score a generated folder with a re-ID checkpoint and print the summary."""
    from posereid.augment.filter import IdentityFilter, filter_folder, load_extractor
    from posereid.models.runtime import resolve_device

    extractor = load_extractor(args.reid_checkpoint, resolve_device(args.device))
    filt = IdentityFilter(
        extractor,
        image_size=tuple(args.image_size),
        batch_size=args.batch_size,
        progress=args.progress,
    )
    summary = filter_folder(
        args.dir,
        args.data,
        filt,
        threshold=args.threshold,
        keep_top=args.keep_top,
        score=args.score,
        mode=args.mode,
        strict=args.strict,
    )
    print(
        f"scored {summary.scored}: kept {summary.kept}, rejected {summary.rejected} "
        f"(threshold {summary.threshold}, moved {summary.moved_to_rejected}, restored {summary.restored}, "
        f"missing {summary.missing_images}, unlisted {summary.unlisted_images}); skipped "
        f"{summary.unreadable_images} unreadable generated image(s) and {summary.skipped_references} "
        "real reference image(s)"
    )
    return 0


__all__ = [
    "CHECK_DIR",
    "add_check_args",
    "add_filter_args",
    "add_generate_args",
    "run_filter",
    "run_generate",
]
