"""The whole GPU session as one call: benchmark rows, then a `market`-preset training on synthetic people.

A lent GPU gives 15 minutes of device time in all (start-up included) and at most 10 minutes per command,
and brings back at most 8 files of 16 MB each from ``$OUT``. This script fits that: within ``--minutes``
(default 8) it

1. runs ``bench.generator`` (bf16 autocast, ``torch.compile``, training steps/s, and the achieved
   denoiser FLOP rate against a matmul rate measured in the same run) for ``--bench-presets``;
2. renders a synthetic 128×64 Market-format dataset and trains ``--train-preset`` on it with the recipe
   given by the flags (bf16 mixed precision on CUDA), stopping cleanly at the time left
   (``--max-minutes``: checkpoint, grid, ``final/``);
3. leaves in ``--out`` only: ``bench_generator.md``, ``train_log.csv``, ``loss.png``, the first and last
   sample grids, ``train_config.json`` and ``session.json`` (what ran, how long each part took, the
   device): 7 files, each far below 16 MB.

Run on the device (after the wheel prefix of docs/GPU.md)::

    python3 -m posereid.experiments.bench.gpu_session --out $OUT

Its CPU path (tiny presets, a few seconds) runs in the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from posereid.argtypes import non_negative_int, positive_float, positive_int
from posereid.models.io_utils import atomic_write

#: what may come back from the device, at most (files in --out, bytes each)
MAX_FILES = 8
MAX_BYTES = 16 * 1024 * 1024


def add_session_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="the folder that comes back ($OUT)")
    p.add_argument("--minutes", type=positive_float, default=8.0, help="wall-clock budget of the whole call")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--bench-presets", default="small,market", help="presets timed by bench.generator")
    p.add_argument("--bench-steps", default="20", help="DPM-Solver++ step counts to time")
    p.add_argument("--train-preset", default="market")
    p.add_argument("--height", type=positive_int, default=128)
    p.add_argument("--width", type=positive_int, default=64)
    p.add_argument("--train-ids", type=positive_int, default=150, help="synthetic train identities")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=positive_float, default=2e-4)
    p.add_argument(
        "--steps", type=positive_int, default=20000, help="LR schedule length (time stops it first)"
    )
    p.add_argument("--sample-every", type=non_negative_int, default=1000)
    p.add_argument(
        "--prediction-type",
        default="flow",
        choices=("epsilon", "v_prediction", "flow"),
        help="default: flow, the winner of the CPU ablation (results/generator_v2)",
    )
    p.add_argument("--zero-snr", action="store_true", help="zero terminal SNR schedule")
    p.add_argument("--snr-gamma", type=positive_float, default=None, help="min-SNR-gamma loss weighting")
    p.add_argument("--p-drop-source-pose", type=float, default=None, help="source-pose dropout")
    p.add_argument("--reserve-minutes", type=positive_float, default=0.75, help="kept for saving and copying")


def _cli(argv: list[str]) -> None:
    from posereid.experiments.cli import main as cli_main

    rc = cli_main(argv)
    if rc:
        raise RuntimeError(f"posereid {argv[0]} exited with {rc}")


def run_session(args: argparse.Namespace) -> dict:
    """Run the benchmark and the training within ``args.minutes``; return what ``session.json`` holds."""
    from posereid.experiments.bench import generator as bench_generator
    from posereid.models.runtime import resolve_device

    t0 = time.monotonic()
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "budget_minutes": args.minutes,
        "parts": {},
    }

    def elapsed() -> float:
        return (time.monotonic() - t0) / 60.0

    # 1. benchmark rows (the report is written after every preset, so a cut run keeps what it measured)
    bench_argv = ["--device", device.type, "--presets", args.bench_presets, "--steps", args.bench_steps,
                  "--out", str(out / "bench_generator.md")]  # fmt: skip
    if device.type == "cuda":
        bench_argv.append("--flops")  # the FLOP accounting's CPU path is tests/test_bench_generator's
    else:
        bench_argv += ["--batch", "1", "--train-steps", "1"]
    bench_generator.main(bench_argv)
    info["parts"]["bench_minutes"] = round(elapsed(), 2)

    # 2. data + training with what is left
    with tempfile.TemporaryDirectory(prefix="posereid-gpu-") as tmp:
        data, run = Path(tmp) / "data", Path(tmp) / "train"
        _cli(["synth-market", str(data), "--train-ids", str(args.train_ids), "--test-ids", "2",
              "--per-camera", "4", "--cameras", "6", "--height", str(args.height), "--width", str(args.width),
              "--seed", "0", "--no-progress"])  # fmt: skip
        info["parts"]["data_minutes"] = round(elapsed() - info["parts"]["bench_minutes"], 2)
        left = args.minutes - elapsed() - args.reserve_minutes
        if left <= 0.05:
            raise RuntimeError(f"no time left for training after {elapsed():.1f} of {args.minutes} minutes")
        train_argv = [
            "train-generator", "--data", str(data), "--annotations", str(data / "market-annotation-train.csv"),
            "--preset", args.train_preset, "--image-size", f"{args.height}x{args.width}",
            "--prediction-type", args.prediction_type, "--out", str(run), "--steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup-steps", "500",
            "--checkpoint-every", "0", "--sample-every", str(args.sample_every), "--max-minutes", f"{left:.3f}",
            "--seed", "0", "--no-progress",
        ]  # fmt: skip
        if device.type == "cuda":
            train_argv += ["--mixed-precision", "bf16"]
        if args.zero_snr:
            train_argv.append("--zero-snr")
        if args.snr_gamma is not None:
            train_argv += ["--snr-gamma", str(args.snr_gamma)]
        if args.p_drop_source_pose is not None:
            train_argv += ["--p-drop-source-pose", str(args.p_drop_source_pose)]
        t_train = elapsed()
        _cli(train_argv)
        info["parts"]["train_minutes"] = round(elapsed() - t_train, 2)
        info["train_argv"] = train_argv[1:]
        with open(run / "train_log.csv", encoding="utf-8") as fh:
            rows = fh.read().splitlines()[1:]
        info["train_steps"] = int(rows[-1].split(",")[0]) if rows else 0
        for name in ("train_log.csv", "loss.png", "train_config.json"):
            if (run / name).is_file():
                shutil.copy(run / name, out / name)
        grids = sorted((run / "samples").glob("*.png"))
        for label, grid in (("first", grids[:1]), ("last", grids[-1:])):
            for g in grid:
                shutil.copy(g, out / f"samples_{label}_{g.stem}.png")
    info["total_minutes"] = round(elapsed(), 2)
    with atomic_write(out / "session.json") as fh:
        json.dump(info, fh, indent=2)
    files = [p for p in out.iterdir() if p.is_file()]
    too_big = [p.name for p in files if p.stat().st_size > MAX_BYTES]
    if len(files) > MAX_FILES or too_big:
        raise RuntimeError(f"{out}: {len(files)} files (limit {MAX_FILES}), too large: {too_big}")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m posereid.experiments.bench.gpu_session", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_session_args(p)
    info = run_session(p.parse_args(argv))
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
