"""``posereid pose-judge``: train a pose judge on fresh renders, or score one on held-out renders.

``posereid pose-judge train --out DIR --minutes M`` writes ``DIR`` (``config.json`` + safetensors +
``training.json`` + ``judge_report.{md,json}``); ``posereid pose-judge evaluate --judge DIR --out REPORT_DIR``
scores a judge (default: the shipped one) on held-out renders and, with ``--data``, on a dataset's
evaluation targets. No library module imports this one.
"""

from __future__ import annotations

import argparse
import sys

import torch

from posereid.argtypes import add_annotation_size_arg, hw_at_least, non_negative_int, positive_int
from posereid.experiments.quality.judge.model import PoseJudgeEstimator
from posereid.experiments.quality.judge.renders import EVAL_SEED, SIZES, TRAIN_SEED
from posereid.experiments.quality.judge.report import REPORT_MD, evaluate_judge, render_judge_markdown
from posereid.experiments.quality.judge.train import JudgeTrainConfig, train_judge

#: an image size the judge can read (HxW, both sides >= 8)
_SIZE = hw_at_least(8)


def add_pose_judge_args(parser: argparse.ArgumentParser) -> None:
    """The ``train`` and ``evaluate`` sub-commands and their options."""
    d = JudgeTrainConfig()
    sizes = [f"{h}x{w}" for h, w in SIZES]
    sub = parser.add_subparsers(dest="judge_command", required=True)
    t = sub.add_parser("train", help="train a pose judge on fresh synthetic renders")
    t.add_argument("--out", required=True, help="output directory (the judge + training.json + report)")
    t.add_argument("--minutes", type=float, default=d.minutes, help="time budget when --steps is not given")
    t.add_argument(
        "--steps", type=positive_int, help="optimisation steps (overrides --minutes; reproducible)"
    )
    t.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--seed", type=int, default=TRAIN_SEED, help="weights + render stream seed (>= 10**6)")
    t.add_argument("--sizes", nargs="+", type=_SIZE, default=[_SIZE(s) for s in sizes], metavar="HxW")
    t.add_argument("--augment", type=float, default=d.augment, help="degradation strength (0 = none)")
    t.add_argument(
        "--channels", type=positive_int, nargs=3, default=None, help="stage widths (default 32 64 128)"
    )
    t.add_argument("--eval-images", type=non_negative_int, default=d.eval_images,
                   help="held-out people per size for the final report (0 = none)")  # fmt: skip
    t.add_argument("--threads", type=positive_int, help="torch CPU threads")
    t.add_argument("--device", help="cpu / cuda (default cpu)")
    t.add_argument("--no-progress", action="store_true")
    e = sub.add_parser("evaluate", help="PCKh@0.5 and people found on held-out renders")
    e.add_argument("--judge", help="judge directory (default: the shipped posereid/assets/pose-judge)")
    e.add_argument("--out", required=True, help="report directory")
    e.add_argument("--n-images", type=positive_int, default=512, help="held-out people per size")
    e.add_argument("--sizes", nargs="+", type=_SIZE, default=[_SIZE(s) for s in sizes], metavar="HxW")
    e.add_argument("--seed", type=int, default=EVAL_SEED, help="held-out render seed (>= 10**6)")
    e.add_argument("--data", help="also score the evaluation targets of this Market-format folder")
    e.add_argument(
        "--data-pairs", type=non_negative_int, default=200, help="pairs drawn from --data (0 = all)"
    )
    e.add_argument(
        "--data-seed", type=non_negative_int, default=0, help="seed of that draw (evaluate-generator --seed)"
    )
    add_annotation_size_arg(e, what="--data's test annotation CSV")
    e.add_argument("--threshold", type=float, help="override the judge's presence threshold")
    e.add_argument("--threads", type=positive_int, help="torch CPU threads")
    e.add_argument("--device", help="cpu / cuda (default cpu)")


def run_pose_judge(args: argparse.Namespace) -> int:
    """Train a judge or write its held-out report; 2 on a bad value (e.g. a seed below 10**6)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or "cpu"
    try:
        if args.judge_command == "train":
            model = {"channels": list(args.channels)} if args.channels else {}
            cfg = JudgeTrainConfig(
                steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                sizes=tuple(args.sizes), augment=args.augment, eval_images=args.eval_images, model=model,
            )  # fmt: skip
            _, summary = train_judge(args.out, cfg, progress=not args.no_progress, device=device)
            print(
                f"trained {summary['steps']} steps in {summary['seconds']:.0f} s; judge written to {args.out}"
            )
            if "evaluation" in summary:
                print(render_judge_markdown(summary["evaluation"]))
            return 0
        est = PoseJudgeEstimator.from_pretrained(args.judge, device=device, threshold=args.threshold)
        result = evaluate_judge(
            est, args.out, n_images=args.n_images, sizes=args.sizes, seed=args.seed, data=args.data,
            data_pairs=args.data_pairs or None, data_seed=args.data_seed, data_annotation_hw=args.annotation_size,
        )  # fmt: skip
        print(render_judge_markdown(result))
        print(f"report: {args.out}/{REPORT_MD}")
        return 0
    except (FileNotFoundError, ValueError) as exc:
        print(f"pose judge: {exc}", file=sys.stderr)
        return 2


__all__ = ["add_pose_judge_args", "run_pose_judge"]
