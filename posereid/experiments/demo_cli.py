"""``posereid demo``: the command line of the demo (:mod:`posereid.experiments.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from posereid.argtypes import csv_list, non_negative_int, positive_float, positive_int
from posereid.experiments.demo import DemoOptions, run_pipeline
from posereid.experiments.reid_gain.config import ARMS, ORACLE_ARM


def _arm(text: str) -> str:
    """One re-ID arm of :data:`~posereid.experiments.reid_gain.config.ARMS`."""
    if text not in ARMS:
        raise argparse.ArgumentTypeError(f"unknown arm {text!r}; choose from {', '.join(ARMS)}")
    return text


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    """Add the ``posereid demo`` options (defaults: those of :class:`DemoOptions`) to ``parser``."""
    d = DemoOptions()
    parser.add_argument("--out", default=str(d.out), help=f"output folder (default: {d.out})")
    parser.add_argument(
        "--budget-minutes",
        type=positive_float,
        default=d.budget_minutes,
        help="time budget for the whole demo",
    )
    parser.add_argument("--device", default=d.device, help="auto (cuda if available), cpu, cuda, …")
    parser.add_argument("--seed", type=non_negative_int, default=d.seed)
    parser.add_argument("--generator", help="use this generator checkpoint directory")
    parser.add_argument(
        "--train-generator",
        action="store_true",
        help="train a generator even when one is shipped in posereid/assets/generator-small",
    )
    parser.add_argument(
        "--height", type=positive_int, default=d.height, help="image height when training a generator"
    )
    parser.add_argument(
        "--width", type=positive_int, default=d.width, help="image width when training a generator"
    )
    parser.add_argument(
        "--arms",
        type=csv_list(_arm),
        help=f"comma list from {', '.join(ARMS)} (default: strong and strong+synthetic always, "
        f"{ORACLE_ARM} when it fits, more on a budget that allows them)",
    )
    parser.add_argument(
        "--tiny",
        "--quick",
        dest="tiny",
        action="store_true",
        help="toy sizes and step counts: the whole pipeline in seconds (for tests)",
    )


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    """A :class:`DemoOptions` from parsed ``posereid demo`` arguments."""
    return DemoOptions(
        out=Path(args.out), budget_minutes=args.budget_minutes, device=args.device, seed=args.seed,
        generator=Path(args.generator) if args.generator else None, train_generator=args.train_generator,
        height=args.height, width=args.width, arms=args.arms, tiny=args.tiny,
    )  # fmt: skip


def run_demo(args: argparse.Namespace) -> int:
    """Run ``posereid demo`` (it prints its stages, the results and where every output is)."""
    run_pipeline(options_from_args(args))
    return 0


__all__ = ["add_demo_args", "options_from_args", "run_demo"]
