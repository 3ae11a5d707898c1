"""``posereid evaluate-generator``: the command line of :mod:`posereid.experiments.quality`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from posereid import argtypes
from posereid.argtypes import add_strict_arg, non_negative_int, positive_int
from posereid.experiments.quality.evaluate import REID_GAP_THRESHOLD, EvaluateConfig, evaluate_generator
from posereid.experiments.quality.pairs import ANNOTATIONS_NAME, PAIRS_NAME
from posereid.experiments.quality.report import parse_setting, parse_sweep, render_markdown
from posereid.models.pose_estimation import MissingExtraError
from posereid.models.sampling import SAMPLERS


def add_evaluate_generator_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``posereid evaluate-generator``."""
    parser.add_argument("--generator", required=True, help="generator checkpoint directory (save_pretrained)")
    parser.add_argument("--data", required=True, help="Market-1501-format folder")
    parser.add_argument(
        "--refiner", help="checkpoint with a refiner (PCDMs) run on the generator's output (scored together)"
    )
    parser.add_argument("--refiner-steps", type=positive_int, default=20, help="sampler steps of the refiner")
    parser.add_argument(
        "--annotations", help=f"PATN keypoint CSV (default: {ANNOTATIONS_NAME} beside the data)"
    )
    argtypes.add_annotation_size_arg(parser, what="--annotations")
    parser.add_argument("--pairs", help=f"PATN pairs CSV (default: {PAIRS_NAME}, else same-pid test pairs)")
    parser.add_argument("--reid-checkpoint", help="local re-ID model checkpoint for the identity metrics")
    parser.add_argument(
        "--independent-reid-checkpoint",
        metavar="PATH",
        help="a second re-ID checkpoint trained independently on the same real train images (train-reid with "
        "another --model and --seed): rank-1 / mAP under this judge too, and a warning when the two judges "
        "disagree (a generator trained against one re-ID model can learn to fool it); needs --reid-checkpoint",
    )
    parser.add_argument(
        "--reid-gap-threshold",
        type=float,
        default=REID_GAP_THRESHOLD,
        metavar="G",
        help="warn when, on the trained row, the two re-ID judges' shares of the ceiling (rank-1 or mAP) "
        "differ by more than G (default %(default)s)",
    )
    parser.add_argument(
        "--fid-weights",
        help="FID Inception weights file weights-inception-2015-12-05-6726825d.pth (or its folder); "
        "default: the torch hub cache, else FID is not computed",
    )
    parser.add_argument(
        "--lpips-weights",
        help="LPIPS backbone file (torchvision, e.g. alexnet-owt-7be5be79.pth) or a folder with it "
        "(+ optional <net>.pth linear layers); default: the torch hub cache, else LPIPS is not computed",
    )
    parser.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "squeeze"])
    parser.add_argument(
        "--n-pairs", type=non_negative_int, default=200, help="pairs to score (seeded draw); 0 = all"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=None,
        help="sampling steps (default: the checkpoint's: a few-step checkpoint's default count, else 20)",
    )  # fmt: skip
    argtypes.add_guidance_arg(parser, default=None)
    parser.add_argument(
        "--sampler", default=None, choices=sorted(SAMPLERS),
        help="sampler (default: the checkpoint's: few-step for a few-step checkpoint, else dpmsolver++)",
    )  # fmt: skip
    parser.add_argument(
        "--sweep",
        nargs="+",
        metavar="KEY=V,V",
        help="grid for the trained generator with --sampler, e.g. steps=10,20,50 guidance=1,2,3 (a few-step "
        "checkpoint: steps=1,2,4)",
    )
    parser.add_argument(
        "--setting", action="append", default=None, metavar="KEY=V,...",
        help="one more row per --setting (repeat it), same pairs, noise and judges: keys generator (a NAME of "
        "--other-generator; default the --generator), sampler, steps, guidance (w or w_pose:w_app); a key left "
        "out is that generator's default, e.g. --setting sampler=few-step,steps=2 --setting "
        "generator=teacher,sampler=dpmsolver++,steps=20,guidance=2",
    )  # fmt: skip
    parser.add_argument(
        "--other-generator", action="append", default=None, metavar="NAME=DIR",
        help="another generator checkpoint for --setting rows that name it (repeatable; with --refiner, refined "
        "alike), e.g. the teacher a few-step checkpoint was distilled from",
    )  # fmt: skip
    parser.add_argument("--compare-untrained", action=argparse.BooleanOptionalAction, default=True,
                        help="also score an untrained generator of the same config (the floor)")  # fmt: skip
    parser.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                        help="also score the real target images as if generated (the ceiling)")  # fmt: skip
    parser.add_argument("--no-pose", action="store_true", help="skip the pose metrics (no keypoint judge)")
    parser.add_argument(
        "--pose-judge",
        choices=("auto", "judge", "mediapipe"),
        default="auto",
        help="keypoint judge: auto = the trained pose judge on synthetic data, mediapipe on real photos",
    )
    parser.add_argument(
        "--pose-judge-dir", help="pose judge directory (default: the shipped posereid/assets/pose-judge)"
    )
    parser.add_argument(
        "--pose-upscale", type=positive_int, help="enlarge images by this factor before pose detection"
    )
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    argtypes.add_device_arg(parser)
    parser.add_argument("--out", required=True, help="report directory")
    add_strict_arg(parser)


def run_evaluate_generator(args: argparse.Namespace) -> int:
    """CLI entry: load the generator, evaluate, print where the report is."""
    from posereid.augment.sampling_settings import refiner_sampler
    from posereid.models.refine import load_sampler
    from posereid.models.runtime import resolve_device

    device = resolve_device(args.device)
    try:
        sweep = parse_sweep(args.sweep) if args.sweep else None
        guidance = args.guidance
        settings = [parse_setting(text) for text in args.setting or ()]
        named = [_named_path(text) for text in args.other_generator or ()]
        other_paths = dict(named)
        if len(other_paths) != len(named):
            raise ValueError("--other-generator: each NAME once")
    except ValueError as exc:
        print(f"posereid evaluate-generator: {exc}", file=sys.stderr)
        return 2
    try:
        config = _config_from_args(args, guidance, sweep, settings, other_paths)
    except ValueError as exc:  # a refused setting (e.g. the same checkpoint twice as the two judges)
        print(f"posereid evaluate-generator: {exc}", file=sys.stderr)
        return 2

    def load(path: str) -> Any:
        return load_sampler(
            path, device=device, refiner=args.refiner, refiner_steps=args.refiner_steps,
            sampler=refiner_sampler(args.sampler),
        )  # fmt: skip

    generator = load(args.generator)
    others = {name: load(path) for name, path in other_paths.items()}
    try:
        result = evaluate_generator(generator, config, others=others)
    except (FileNotFoundError, MissingExtraError) as exc:  # missing weights / data / package: say which
        print(f"posereid evaluate-generator: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a sampling setting a checkpoint cannot sample, refused before any image
        print(f"posereid evaluate-generator: {exc}", file=sys.stderr)
        return 2
    print(render_markdown(result).split("\n\nMetric status")[0])
    print(f"\nreport: {result['files']['report_md']}")
    return 0


def _named_path(text: str) -> tuple[str, str]:
    """``NAME=DIR`` of ``--other-generator``."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ValueError(f"--other-generator {text!r}: expected NAME=DIR (e.g. teacher=runs/flow/final)")
    return name.strip(), path.strip()


def _config_from_args(
    args: argparse.Namespace,
    guidance: tuple[float, float] | None,
    sweep: Any,
    settings: list[dict[str, Any]] | None = None,
    other_paths: dict[str, str] | None = None,
) -> EvaluateConfig:
    """The :class:`EvaluateConfig` of the command's options."""
    return EvaluateConfig(
        data=args.data,
        pairs=args.pairs,
        annotations=args.annotations,
        annotation_hw=args.annotation_size,
        reid_checkpoint=args.reid_checkpoint,
        independent_reid_checkpoint=args.independent_reid_checkpoint,
        reid_gap_threshold=args.reid_gap_threshold,
        fid_weights=args.fid_weights,
        lpips_weights=args.lpips_weights,
        lpips_net=args.lpips_net,
        pose_estimator=None if args.no_pose else args.pose_judge,
        pose_judge_dir=args.pose_judge_dir,
        steps=args.steps,
        guidance=guidance,
        sampler=args.sampler,
        n_pairs=args.n_pairs or None,
        seed=args.seed,
        out_dir=args.out,
        include_ceiling=args.ceiling,
        include_floor=args.compare_untrained,
        sweep=sweep,
        settings=tuple(settings) if settings else None,
        other_generators=other_paths or None,
        batch_size=args.batch_size,
        pose_upscale=args.pose_upscale,
        generator_name=str(args.generator) + (f" + refiner {args.refiner}" if args.refiner else ""),
        strict=args.strict,
    )


__all__ = ["add_evaluate_generator_args", "run_evaluate_generator"]
