"""The ``posereid`` console script.

Each subcommand lives in the module that does its work. The module defines ``add_<name>_args(parser)``
and ``run_<name>(args) -> int | None`` (``<name>`` is the command with ``-`` → ``_``). Only the chosen
command's module is imported, so ``posereid --help`` stays fast (no torch/diffusers import).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

#: command → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth-market": ("posereid.experiments.synthetic.cli", "render a synthetic Market-1501-format dataset"),
    "synth-grid": ("posereid.experiments.synthetic.cli", "grid PNG of synthetic identities x poses/cameras"),
    "annotate": ("posereid.reid_integration.cli", "extract COCO-18 keypoints (mediapipe) to a PATN CSV"),
    "train-generator": ("posereid.experiments.train_generator", "train the pose-transfer generator"),
    "sample": ("posereid.experiments.train_generator", "generate images with a trained generator"),
    "generate": ("posereid.augment.cli", "offline generation into a Market-format folder"),
    "filter": ("posereid.augment.cli", "re-score / re-filter a generated folder by identity"),
    "train-reid": ("posereid.reid_integration.cli", "train and evaluate a re-ID model with torchreid"),
    "reid-gain": ("posereid.experiments.reid_gain.cli", "the re-ID gain protocol (baseline vs augmented)"),
    "reid-gain-compare": (
        "posereid.experiments.reid_gain.cli",
        "several reid-gain runs in one table and plot",
    ),
    "evaluate-generator": (
        "posereid.experiments.quality.cli",
        "generator quality: SSIM/LPIPS/FID, pose, identity",
    ),
    "check-generator": (
        "posereid.experiments.quality.gate_cli",
        "the generator gate: score a generator on your data against the floor and the ceiling",
    ),
    "quality-compare": (
        "posereid.experiments.quality.compare_cli",
        "several evaluate-generator reports in one table: seen vs unseen people, the gap in each share",
    ),
    "pose-judge": (
        "posereid.experiments.quality.judge.cli",
        "train / evaluate the pose judge for synthetic people",
    ),
    "demo": ("posereid.experiments.demo_cli", "end-to-end demo on synthetic people"),
}


def _snake(name: str) -> str:
    return name.replace("-", "_")


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="posereid",
        description="Pose-transfer diffusion augmentation for person re-identification.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {k:<20} {v[1]}" for k, v in COMMANDS.items()),
    )
    p.add_argument("command", nargs="?", help="one of the commands below")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def build_parser(command: str) -> tuple[argparse.ArgumentParser, object]:
    """Import ``command``'s module and return its parser and run function."""
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"posereid {command}", description=help_text)
    getattr(module, f"add_{_snake(command)}_args")(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser, getattr(module, f"run_{_snake(command)}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        top = _top_parser()
        if argv and argv[0] == "--version":
            from posereid import __version__

            print(__version__)
            return 0
        if argv and argv[0] not in ("-h", "--help"):
            top.print_usage(sys.stderr)
            print(
                f"posereid: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr
            )
            return 2
        top.print_help()
        return 0
    parser, run = build_parser(argv[0])
    args = parser.parse_args(argv[1:])  # a bad flag value exits here with code 2 and a usage line
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if argv[0] == "generate" and getattr(args, "check", False):
            rc = check_before_generate(args)
            if rc:
                return rc
        rc = run(args)  # type: ignore[operator]
    except KeyboardInterrupt:
        print(f"posereid {argv[0]}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line; -v shows the traceback
        if args.verbose:
            traceback.print_exc()
        print(f"posereid {argv[0]}: error: {describe_error(exc)}", file=sys.stderr)
        return 1
    return int(rc or 0)


def check_before_generate(args: argparse.Namespace) -> int:
    """``posereid generate --check``: the generator gate on generate's own generator, refiner, data,
    annotations, sampling (left out: the checkpoint's, as generate samples), seed and device, through
    ``check-generator``'s :func:`~posereid.experiments.quality.gate_cli.check_generator`. It runs here, not in
    :mod:`posereid.augment.cli`, because imports point one way (``experiments`` → ``augment``). Returns the
    exit code: 4 (``near-floor``: nothing is generated), else 0 and ``args.checked`` is set for
    :func:`~posereid.augment.cli.run_generate`."""
    from pathlib import Path

    from posereid.augment.cli import CHECK_DIR
    from posereid.experiments.quality.gate import DEFAULT_PAIRS
    from posereid.experiments.quality.gate_cli import check_generator, exit_code

    out = Path(args.out) / CHECK_DIR
    result = check_generator(
        args.generator, args.data, reid_checkpoint=args.check_reid_checkpoint, out=out,
        annotations=args.annotations, split="train", n_pairs=args.check_pairs or DEFAULT_PAIRS, steps=args.steps,
        sampler=args.sampler, guidance=args.guidance, sampling_defaults="checkpoint", refiner=args.refiner,
        refiner_steps=args.refiner_steps, seed=args.seed, device=args.device, strict=args.strict,
        command="generate --check", annotation_hw=args.annotation_size,
    )  # fmt: skip
    rc = exit_code(result)
    if rc:
        print(
            f"generate --check: the generator is near the floor on {args.data}: nothing generated (exit code {rc}); "
            "use a better generator, or rerun without --check to generate anyway"
        )
        return rc
    print(f"generate --check: {result.verdict}: generating")
    args.checked = True
    return 0


_OS_HINTS = {
    errno.ENOSPC: " (free some space, or choose another output folder)",
    errno.EDQUOT: " (disk quota exceeded: free some space, or choose another output folder)",
    errno.EACCES: " (no permission: choose another output folder, or fix its permissions)",
    errno.EROFS: " (read-only file system: choose another output folder)",
}


def describe_error(exc: BaseException) -> str:
    """One line for a failed command: our own errors already name the file or flag; OS errors get the
    path and what to do (a full disk, a read-only folder), and the error type is kept for the rest. The
    writers (:mod:`posereid.models.io_utils`) give a failed write the name of the file being written."""
    if isinstance(exc, OSError) and exc.filename is not None:
        what = exc.strerror or str(exc)
        return f"{what}: {exc.filename}{_OS_HINTS.get(exc.errno or 0, '')}"
    if isinstance(exc, OSError) and exc.errno in _OS_HINTS:  # no file named: at least what to do
        return f"{exc.strerror or os.strerror(exc.errno)}{_OS_HINTS[exc.errno]}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (ValueError, OSError, RuntimeError)) and type(exc).__module__.startswith("posereid"):
        return text
    return f"{text} ({type(exc).__name__}; rerun with -v for the traceback)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
