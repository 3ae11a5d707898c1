"""``posereid quality-compare``: two or more ``evaluate-generator`` reports in one table
(:mod:`posereid.experiments.quality.compare`).

Typical use: the quality table of one generator on people of its training configuration (``seen``) and on
people rendered with another seed (``unseen``); a row whose identity share of the ceiling drops by more
than ``--gap-threshold`` between the two is flagged: it keeps identity only on the people it trained on.
Reports are given as paths (``report.json`` or its folder) or ``NAME=PATH``; the first is the reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posereid.argtypes import check_labels, keep_usage_error, unit_interval, usage_error
from posereid.experiments.quality.compare import (
    BASES,
    COMPARE_NAME,
    DEFAULT_GAP_THRESHOLD,
    compare_quality,
    default_labels,
    load_quality_report,
    render_quality_comparison,
    report_file,
    write_quality_comparison,
)


def add_quality_compare_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``posereid quality-compare``."""
    parser.add_argument(
        "reports", nargs="+", metavar="[NAME=]PATH",
        help="two or more evaluate-generator reports (report.json or the folder holding it), optionally named "
        "NAME=PATH; the first is the reference (e.g. seen=runs/q/seed0 unseen=runs/q/seed1)",
    )  # fmt: skip
    parser.add_argument(
        "--labels",
        help="comma list of labels, one per report, all different (default: NAME= if given, else each "
        "report's folder name)",
    )
    parser.add_argument(
        "--gap-threshold", type=unit_interval, default=DEFAULT_GAP_THRESHOLD, metavar="G",
        help="warn when a generated row's identity share of the ceiling is more than G lower in a report than "
        "in the reference (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--normalise", choices=BASES, default="auto",
        help="shares: floor-ceiling ((v - floor) / (ceiling - floor)), ceiling (v / ceiling), or auto "
        "(default: floor-ceiling when every report has a floor row)",
    )  # fmt: skip
    parser.add_argument("--out", help=f"folder for {COMPARE_NAME} (default: print only)")
    keep_usage_error(parser)


def split_named(text: str) -> tuple[str | None, str]:
    """``"seen=runs/q0"`` → ``("seen", "runs/q0")``; a path that exists as given (even with ``=`` in it),
    or text without ``=``, has no name."""
    name, sep, path = text.partition("=")
    if not sep or Path(text).exists() or not name or not path:
        return None, text
    return name, path


def run_quality_compare(args: argparse.Namespace) -> int:
    """Run ``posereid quality-compare``: print the table and, with ``--out``, write it."""
    named = [split_named(t) for t in args.reports]
    paths = [p for _, p in named]
    if len(paths) < 2:
        usage_error(args, f"give two or more reports to compare, got {len(paths)}")
    files = [report_file(p).resolve() for p in paths]
    twice = next((paths[i] for i, f in enumerate(files) if f in files[:i]), None)
    if twice is not None:
        usage_error(args, f"report {twice} is given twice")
    if args.labels is not None:
        if any(n for n, _ in named):
            usage_error(args, "name the reports either with --labels or with NAME=PATH, not both")
        labels, source = [s.strip() for s in args.labels.split(",")], "--labels"
    else:
        defaults = default_labels(paths)
        labels, source = [n or d for (n, _), d in zip(named, defaults)], "the labels"
    check_labels(args, labels, len(paths), "report", source=source)
    reports = [load_quality_report(p, label) for p, label in zip(paths, labels)]
    comparison = compare_quality(reports, threshold=args.gap_threshold, basis=args.normalise)
    print(render_quality_comparison(comparison), end="")
    if args.out:
        print(f"written: {write_quality_comparison(comparison, Path(args.out))}")
    return 0


__all__ = ["add_quality_compare_args", "run_quality_compare", "split_named"]
