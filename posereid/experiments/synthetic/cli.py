"""``posereid synth-market`` and ``posereid synth-grid``: the command line of :mod:`posereid.experiments.synthetic`."""

from __future__ import annotations

import argparse
import sys

from posereid.argtypes import add_progress_arg
from posereid.experiments.synthetic.dataset import SynthConfig, render_grid, write_synthetic_market


def _train_views(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--train-views must be 'all' or 1..4, got {text!r}") from None
    if not 1 <= value <= 4:
        raise argparse.ArgumentTypeError(f"--train-views must be 'all' or 1..4, got {value}")
    return value


def add_synth_market_args(parser: argparse.ArgumentParser) -> None:
    d = SynthConfig()
    parser.add_argument("out", metavar="OUT", nargs="?", help="new folder for the Market-1501-format dataset")
    parser.add_argument(
        "--out", dest="out_flag", metavar="OUT", help="the same, as every other command spells it"
    )
    parser.add_argument("--train-ids", type=int, default=d.n_train_ids, help="training identities")
    parser.add_argument("--test-ids", type=int, default=d.n_test_ids, help="query/gallery identities")
    parser.add_argument("--per-camera", type=int, default=d.per_camera, help="images per identity per camera")
    parser.add_argument("--cameras", type=int, default=d.cameras, help="cameras (2-9)")
    parser.add_argument(
        "--distractors", type=int, default=d.n_distractors, help="gallery distractors (pid 0)"
    )
    parser.add_argument("--junk", type=int, default=d.n_junk, help="gallery junk images (pid -1)")
    parser.add_argument("--height", type=int, default=d.height)
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument(
        "--train-views",
        type=_train_views,
        default=d.train_views,
        help="'all' or views (1-4) per train identity",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    add_progress_arg(parser)


def run_synth_market(args: argparse.Namespace) -> int:
    if (args.out is None) == (args.out_flag is None):
        print("posereid synth-market: error: give the output folder once (OUT or --out OUT)", file=sys.stderr)
        return 2
    args.out = args.out or args.out_flag
    config = SynthConfig(
        n_train_ids=args.train_ids, n_test_ids=args.test_ids, per_camera=args.per_camera, cameras=args.cameras,
        n_distractors=args.distractors, n_junk=args.junk, height=args.height, width=args.width,
        train_views=args.train_views, seed=args.seed,
    )  # fmt: skip
    summary = write_synthetic_market(args.out, config, progress=args.progress)
    print(f"{'split':<8} {'images':>7} {'ids':>5} {'cams':>5} {'distr':>6} {'junk':>5}")
    for split in ("train", "query", "gallery"):
        c = summary[split]
        print(
            f"{split:<8} {c['images']:>7} {c['identities']:>5} {c['cameras']:>5} {c['distractors']:>6} {c['junk']:>5}"
        )
    print(f"pairs: train {summary['pairs_train']}, test {summary['pairs_test']}; written to {args.out}")
    return 0


def add_synth_grid_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="PNG", help="output PNG")
    parser.add_argument("--ids", type=int, default=6, help="identities (rows)")
    parser.add_argument("--cols", type=int, default=8, help="poses per identity (columns)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling")
    parser.add_argument("--no-skeleton", action="store_true", help="images only, no skeleton copies")


def run_synth_grid(args: argparse.Namespace) -> int:
    grid = render_grid(
        args.out,
        n_ids=args.ids,
        n_cols=args.cols,
        seed=args.seed,
        skeleton=not args.no_skeleton,
        scale=args.scale,
    )
    print(f"wrote {args.out} ({grid.width}x{grid.height})")
    return 0


__all__ = ["add_synth_grid_args", "add_synth_market_args", "run_synth_grid", "run_synth_market"]
