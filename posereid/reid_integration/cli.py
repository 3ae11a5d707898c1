"""The commands of :mod:`posereid.reid_integration`: ``posereid annotate`` and ``posereid train-reid``.

Argument parsing, the glue from options to the library (:mod:`posereid.reid_integration.annotate`,
:mod:`posereid.reid_integration.train`) and the printed summaries live here; no library module imports
this one. The train-reid library (and torchreid) is imported only when that command is chosen, so
``posereid annotate`` never imports torchreid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from posereid.argtypes import (
    add_device_arg,
    add_strict_arg,
    non_negative_float,
    positive_float,
    positive_int,
    share_or_uniform,
)
from posereid.models.pose_estimation import MissingExtraError, PoseEstimator
from posereid.reid_integration.annotate import (
    PARTIAL_SUFFIX,
    AnnotateLockedError,
    annotate_folder,
    partial_path,
)
from posereid.reid_integration.market1501 import MarketFormatError
from posereid.reid_integration.recipes import RECIPES
from posereid.reid_integration.soft_settings import SOFT_SYNTHETIC_RATIO, soft_weight_arg


# --------------------------------------------------------------------------------------------------
# posereid annotate DIR --out CSV
# --------------------------------------------------------------------------------------------------
def add_annotate_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``posereid annotate`` options to ``parser``."""
    parser.add_argument("dir", type=Path, metavar="DIR", help="folder of person images")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="CSV",
        help=(
            f"PATN annotation CSV to write (atomically, when every image is done). Progress is saved in "
            f"CSV{PARTIAL_SUFFIX} as it goes: after an interruption run the same command again to resume. "
            "Images that already have a row in CSV or CSV.partial are not annotated again"
        ),
    )
    parser.add_argument("--recursive", action="store_true", help="also annotate images in sub-folders")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"start over: delete CSV and CSV{PARTIAL_SUFFIX} and annotate every image again "
        "(needed after changing --min-visibility)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_strict_arg(parser)
    parser.add_argument(
        "--min-visibility",
        type=float,
        default=0.5,
        help="BlazePose visibility below which a joint is missing",
    )


def run_annotate(args: argparse.Namespace) -> int:
    """``posereid annotate``: run the pose estimator over a folder and print the summary; exit code 2 for
    a missing extra, a bad folder or output, or another run on the same output; 130 when interrupted."""
    try:
        estimator = PoseEstimator(min_visibility=args.min_visibility)
    except MissingExtraError as exc:
        print(f"posereid annotate: error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = annotate_folder(
            args.dir,
            args.out,
            estimator=estimator,
            recursive=args.recursive,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            strict=args.strict,
        )
    except (NotADirectoryError, MarketFormatError, AnnotateLockedError) as exc:
        print(f"posereid annotate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"posereid annotate: interrupted; progress is saved in {partial_path(args.out)}, "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        estimator.close()
    print(summary)
    return 0


# --------------------------------------------------------------------------------------------------
# posereid train-reid
# --------------------------------------------------------------------------------------------------
def add_train_reid_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``posereid train-reid`` options (defaults: those of ``ReidTrainConfig``) to ``parser``."""
    from posereid.reid_integration.train import ReidTrainConfig

    d = ReidTrainConfig(data="")
    parser.add_argument(
        "--data", required=True, help="Market-1501-format folder (bounding_box_train, query, …)"
    )
    parser.add_argument(
        "--synthetic",
        action="append",
        default=[],
        metavar="DIR",
        help="Market-format folder of generated train images under their source pids (repeatable)",
    )
    parser.add_argument(
        "--recipe", choices=("auto", *RECIPES), default="auto",
        help="settings sized to the data (auto: synthetic for the renderer's 64x32 people, market otherwise); "
        "fills --model, --height, --width, --steps, --batch-size and --lr when they are not given",
    )  # fmt: skip
    parser.add_argument("--model", default=None, help="torchreid model name, e.g. osnet_x0_25, resnet50")
    parser.add_argument("--loss", choices=["softmax", "triplet"], default=d.loss)
    parser.add_argument("--steps", type=positive_int, default=None, help="optimisation steps (fixed budget)")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--lr", type=positive_float, default=None)
    parser.add_argument("--weight-decay", type=non_negative_float, default=d.weight_decay)
    parser.add_argument("--height", type=positive_int, default=None)
    parser.add_argument("--width", type=positive_int, default=None)
    parser.add_argument(
        "--augment",
        choices=["plain", "strong"],
        default=d.augment,
        help="strong = random horizontal flip + random erasing",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--synthetic-ratio",
        type=share_or_uniform,
        default=_UNSET,
        metavar="R|uniform",
        help="share of synthetic images per batch, in expectation (default: uniform over real and synthetic "
        f"images; with --soft-teacher {SOFT_SYNTHETIC_RATIO}, the share measured to keep soft labels harmless)",
    )
    parser.add_argument("--out", required=True, help="output folder (results.json, model.safetensors)")
    parser.add_argument(
        "--pretrained",
        default=None,
        metavar="LOCAL_FILE",
        help="local weights (.safetensors or torch state dict); never downloaded",
    )
    parser.add_argument(
        "--soft-teacher",
        type=Path,
        default=None,
        metavar="CKPT",
        help="re-ID checkpoint (train-reid's model.safetensors) trained on the same real train identities: "
        "its probabilities become soft labels of the synthetic images (softmax loss only)",
    )
    parser.add_argument(
        "--soft-weight",
        type=soft_weight_arg,
        default=d.soft_weight,
        metavar="W",
        help="share of the teacher's soft term in a synthetic image's loss, in [0, 1] (1 - W: its hard label), "
        "or 'agree': the hard label alone where the teacher's most probable identity is the image's source pid, "
        "the teacher's soft label alone elsewhere",
    )
    parser.add_argument(
        "--soft-temperature",
        type=positive_float,
        default=d.soft_temperature,
        metavar="T",
        help="softmax temperature of the teacher and the student in the soft term",
    )
    add_device_arg(parser)
    parser.add_argument("--num-instances", type=int, default=d.num_instances)
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--metric", choices=["euclidean", "cosine"], default=d.metric)
    add_strict_arg(parser)


#: ``--synthetic-ratio`` not given (``uniform`` is given as ``None``)
_UNSET = object()


def synthetic_ratio_of(args: argparse.Namespace) -> float | None:
    """``--synthetic-ratio`` as given, else :data:`SOFT_SYNTHETIC_RATIO` with ``--soft-teacher`` (soft labels with
    half of each batch synthetic left noise images settled below the strong baseline; a quarter kept them
    harmless, ``results/gain_protocol_soft``), else ``None`` (uniform)."""
    if args.synthetic_ratio is not _UNSET:
        return args.synthetic_ratio
    if getattr(args, "soft_teacher", None) is not None and args.synthetic:
        print(
            f"--soft-teacher: {SOFT_SYNTHETIC_RATIO:g} of each batch synthetic (--synthetic-ratio uniform: uniform)"
        )
        return SOFT_SYNTHETIC_RATIO
    return None


def run_train_reid(args: argparse.Namespace) -> int:
    """``posereid train-reid``: train, evaluate and print the metrics and the skipped inputs."""
    from posereid.reid_integration.recipes import choose_recipe, fill_from_recipe
    from posereid.reid_integration.train import ReidTrainConfig, train_reid

    recipe = choose_recipe(args.recipe, args.data)
    fields = {"model": "reid_model", "height": "height", "width": "width", "steps": "reid_steps",
              "batch_size": "reid_batch_size", "lr": "reid_lr"}  # fmt: skip
    taken = fill_from_recipe(args, recipe, fields)
    print(
        f"recipe {recipe.name} ({recipe.why}): {args.model} at {args.height}x{args.width}, {args.steps} steps x "
        f"batch {args.batch_size}, lr {args.lr:g}"
        + (f"; from the recipe: {', '.join('--' + t.replace('_', '-') for t in taken)}" if taken else "")
    )
    config = ReidTrainConfig(
        data=args.data,
        synthetic=tuple(args.synthetic),
        model=args.model,
        loss=args.loss,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        height=args.height,
        width=args.width,
        augment=args.augment,
        seed=args.seed,
        out=args.out,
        pretrained=args.pretrained,
        device=None if args.device == "auto" else args.device,
        num_instances=args.num_instances,
        workers=args.workers,
        metric=args.metric,
        strict=args.strict,
        synthetic_ratio=synthetic_ratio_of(args),
        soft_teacher=args.soft_teacher,
        soft_weight=args.soft_weight,
        soft_temperature=args.soft_temperature,
    )
    r = train_reid(config)
    print(
        f"rank1 {r['rank1']:.4f}  rank5 {r['rank5']:.4f}  rank10 {r['rank10']:.4f}  mAP {r['mAP']:.4f}  "
        f"steps {r['steps']}  images {r['images']} ({r['synthetic_images']} synthetic)  -> {args.out}"
    )
    skipped = r.get("skipped", {})
    print(
        f"skipped {skipped.get('corrupt', 0)} unreadable image(s) and {skipped.get('stray_file', 0)} stray "
        "file(s) (--strict stops at the first instead)"
    )
    return 0


__all__ = ["add_annotate_args", "add_train_reid_args", "run_annotate", "run_train_reid"]
