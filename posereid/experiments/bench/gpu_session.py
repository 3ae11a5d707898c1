"""The whole GPU session as one call: benchmark rows, then a `market`-preset training on synthetic people.

A lent GPU gives 15 minutes of device time in all (start-up included) and at most 10 minutes per command,
and brings back at most 8 files of 16 MB each from ``$OUT``. This script fits that: within ``--minutes``
(default 8) it

1. runs ``bench.generator`` (bf16 autocast, ``torch.compile``, training steps/s, and the achieved
   denoiser FLOP rate against a matmul rate measured in the same run) for ``--bench-presets``;
1b. times few-step sampling (:mod:`posereid.models.few_step`) on a flow model of ``--train-preset`` at the
   training size: 1, 2 and 4 steps of one network call each beside the same model's 20-step guidance-2
   DPM-Solver++ row (fp32, and bf16 autocast on CUDA), appended to ``bench_generator.md`` and
   ``session.json`` (images/s, s/image, network calls per image, speed-up). Random weights and a fresh
   zero-initialised step-size embedding: speed does not depend on the weights. Skipped (and said so in
   ``session.json``) when the bench left under a quarter of the budget (at most 2 minutes);
2. renders a synthetic 128×64 Market-format dataset and trains ``--train-preset`` on it with the recipe
   given by the flags (bf16 mixed precision on CUDA), stopping cleanly at the time left
   (``TrainConfig.max_minutes``: a checkpoint and a grid; no ``final/`` for a run the budget cut short);
3. leaves in ``--out`` only: ``bench_generator.md`` (with the few-step section), ``train_log.csv``,
   ``loss.png``, the first and last sample grids, ``train_config.json`` and ``session.json`` (what ran,
   how long each part took, the device, the few-step rows): 7 files, each far below 16 MB.

Step 2 calls the library (:func:`~posereid.experiments.synthetic.dataset.write_synthetic_market`,
:func:`~posereid.experiments.data.market_pose_records`, :func:`~posereid.models.training.train_generator`),
not the console script; ``session.json`` records the equivalent ``posereid train-generator`` arguments
(``train_argv``).

Run on the device (after the wheel prefix of docs/GPU.md)::

    python3 -m posereid.experiments.bench.gpu_session --out $OUT

Its CPU path (tiny presets, a few seconds) runs in the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from posereid.argtypes import non_negative_int, positive_float, positive_int
from posereid.experiments.data import market_pose_records
from posereid.experiments.synthetic.dataset import SynthConfig, write_synthetic_market
from posereid.models.contract import family_class
from posereid.models.few_step import FEW_STEP, TEACHER_SAMPLING, StepSizeEmbedding
from posereid.models.io_utils import atomic_write
from posereid.models.training import PosePairDataset, TrainConfig, TrainResult, train_generator

#: what may come back from the device, at most (files in --out, bytes each)
MAX_FILES = 8
MAX_BYTES = 16 * 1024 * 1024
ANNOTATIONS = "market-annotation-train.csv"  # written by write_synthetic_market beside the images


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
    p.add_argument("--few-step-steps", default="1,2,4", help="few-step counts to time ('' skips the rows)")
    p.add_argument("--few-step-repeats", type=positive_int, default=3, help="timed calls per few-step row")
    p.add_argument("--few-step-batch", type=positive_int, default=None, help="default: 32 on CUDA, 2 on CPU")


def synth_config(args: argparse.Namespace) -> SynthConfig:
    """The session's synthetic 128x64 people: ``--train-ids`` train identities, 2 test ones, 6 cameras."""
    return SynthConfig(
        n_train_ids=args.train_ids, n_test_ids=2, per_camera=4, cameras=6, height=args.height,
        width=args.width, seed=0,
    )  # fmt: skip


def train_settings(
    args: argparse.Namespace, device: torch.device, minutes: float
) -> tuple[dict[str, Any], TrainConfig]:
    """The ``--train-preset`` overrides (image size, recipe flags) and the :class:`TrainConfig` of a
    training stopped after ``minutes`` (bf16 mixed precision on CUDA, no checkpoint before the last)."""
    overrides: dict[str, Any] = {
        "image_size": (args.height, args.width),
        "prediction_type": args.prediction_type,
    }
    if args.zero_snr:
        overrides["rescale_betas_zero_snr"] = True
    if args.snr_gamma is not None:
        overrides["snr_gamma"] = args.snr_gamma
    if args.p_drop_source_pose is not None:
        overrides["p_drop_source_pose"] = args.p_drop_source_pose
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=min(500, args.steps),
        mixed_precision="bf16" if device.type == "cuda" else "no", checkpoint_every=0,
        sample_every=args.sample_every, seed=0, max_minutes=round(minutes, 3),
    )  # fmt: skip
    return overrides, config


def equivalent_argv(
    args: argparse.Namespace, data: Path, run: Path, overrides: dict[str, Any], config: TrainConfig
) -> list[str]:
    """The ``posereid train-generator`` arguments that train the same model (``session.json``'s record)."""
    h, w = overrides["image_size"]
    argv = [
        "--data", str(data), "--annotations", str(data / ANNOTATIONS), "--preset", args.train_preset,
        "--image-size", f"{h}x{w}", "--prediction-type", overrides["prediction_type"], "--out", str(run),
        "--steps", str(config.steps), "--batch-size", str(config.batch_size), "--lr", str(config.lr),
        "--warmup-steps", "500", "--checkpoint-every", str(config.checkpoint_every),
        "--sample-every", str(config.sample_every), "--max-minutes", f"{config.max_minutes:.3f}",
        "--seed", str(config.seed), "--no-progress",
    ]  # fmt: skip
    if config.mixed_precision != "no":
        argv += ["--mixed-precision", config.mixed_precision]
    if overrides.get("rescale_betas_zero_snr"):
        argv.append("--zero-snr")
    if "snr_gamma" in overrides:
        argv += ["--snr-gamma", str(overrides["snr_gamma"])]
    if "p_drop_source_pose" in overrides:
        argv += ["--p-drop-source-pose", str(overrides["p_drop_source_pose"])]
    return argv


def _seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (synchronised on CUDA)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def few_step_rows(
    preset: str, image_size: tuple[int, int], device: torch.device, steps: list[int], batch: int, repeats: int
) -> dict[str, Any]:
    """Time few-step sampling against the 20-step guidance-2 reference of the same model.

    The model is a fresh flow-matching ``preset`` PIDM at ``image_size`` with a zero-initialised
    :class:`StepSizeEmbedding` for ``steps`` attached (random weights: speed does not depend on them).
    Per dtype (fp32; bf16 autocast too on CUDA): the reference (DPM-Solver++, 20 steps, guidance (2, 2))
    and the few-step sampler at each of ``steps`` (guidance folded in, (1, 1)). Each setting runs once
    untimed with a forward pre-hook on the denoiser counting its calls and the images through it, then
    ``repeats`` timed calls (median). Returns ``{"preset", "image_size", "batch", "note", "rows"}``.
    """
    from posereid.experiments.bench.generator import make_inputs

    torch.manual_seed(0)
    pipe = family_class("pidm").from_preset(preset, image_size=image_size, prediction_type="flow")
    pipe = pipe.to(device).eval()
    unet = pipe.denoiser()
    pipe.enable_few_step(
        StepSizeEmbedding(
            time_embed_dim=unet.time_embedding.linear_2.out_features, steps=tuple(steps),
            default_steps=min(steps),
        )
    )  # fmt: skip
    src, ks, kt = make_inputs(pipe, batch)
    seeds = list(range(batch))
    reference = {**TEACHER_SAMPLING, "guidance": tuple(TEACHER_SAMPLING["guidance"])}
    settings = [reference, *({"sampler": FEW_STEP, "steps": k, "guidance": (1.0, 1.0)} for k in steps)]
    counts = {"calls": 0, "images": 0}

    def count(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        counts["calls"] += 1
        counts["images"] += int(sample.shape[0])

    dtypes: list[torch.dtype | None] = [None, torch.bfloat16] if device.type == "cuda" else [None]
    rows: list[dict[str, Any]] = []
    for dtype in dtypes:
        label = "fp32" if dtype is None else "bf16 autocast"
        ref_s: float | None = None
        for opts in settings:

            def call(opts: dict[str, Any] = opts, dtype: torch.dtype | None = dtype) -> torch.Tensor:
                return pipe.generate(src, kt, ks, seeds=seeds, autocast_dtype=dtype, **opts)

            counts.update(calls=0, images=0)
            hook = unet.register_forward_pre_hook(count, with_kwargs=True)
            try:
                call()  # warm-up, counted
            finally:
                hook.remove()
            seconds = _seconds(call, device, repeats) / batch
            ref_s = seconds if ref_s is None else ref_s
            few = opts["sampler"] == FEW_STEP
            rows.append({
                "method": f"ours {label} {'few-step' if few else 'DPM-Solver++ (the reference)'}",
                "sampler": opts["sampler"],
                "steps": int(opts["steps"]), "guidance": [float(g) for g in opts["guidance"]],
                "dtype": "fp32" if dtype is None else "bf16", "batch": batch,
                "denoiser_calls": counts["calls"], "network_calls_per_image": counts["images"] / batch,
                "s_per_image": seconds, "images_per_s": 1.0 / seconds,
                "speedup_vs_20_steps_g2": ref_s / seconds,
            })  # fmt: skip
    note = (
        f"`{preset}` flow model at {image_size[0]}x{image_size[1]}, random weights and a fresh "
        f"zero-initialised step-size embedding for {','.join(map(str, steps))} step(s): speed does not "
        "depend on the weights; "
        f"median of {repeats} timed calls of {batch} images after one counted warm-up call"
    )
    return {"preset": preset, "image_size": list(image_size), "batch": batch, "note": note, "rows": rows}


def render_few_step(result: dict[str, Any]) -> str:
    """The few-step section appended to ``bench_generator.md`` (its table's units: images/s per call)."""
    lines = [
        "",
        "## Few-step sampling (one network call per step, guidance folded in)",
        "",
        "| preset | method | steps | guidance | batch | rate | s / image | network calls / image | "
        "vs 20 steps g2, same model |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        g = ",".join(f"{v:g}" for v in r["guidance"])
        lines.append(
            f"| {result['preset']} | {r['method']} | {r['steps']} | {g} | {r['batch']} | "
            f"{r['images_per_s']:.3g} images/s | {r['s_per_image']:.4g} | {r['network_calls_per_image']:g} | "
            f"{r['speedup_vs_20_steps_g2']:.1f}x |"
        )
    return "\n".join([*lines, "", f"- {result['note']}", ""])


def train(
    args: argparse.Namespace, data: Path, run: Path, overrides: dict[str, Any], config: TrainConfig
) -> TrainResult:
    """Train a fresh ``--train-preset`` PIDM generator on ``data`` into ``run`` (as ``train-generator``
    does: the records, then the seed, then the model, so the same seed gives the same weights)."""
    records = market_pose_records(data, data / ANNOTATIONS)
    set_seed(config.seed)
    model = family_class("pidm").from_preset(args.train_preset, **overrides)
    dataset = PosePairDataset(records, model.image_size, singletons="skip", seed=config.seed)
    return train_generator(model, dataset, config, run, progress=False)


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

    # 1b. few-step rows of the train preset: a few calls, run when a quarter of the budget (at most 2
    # minutes) is still left after the bench, so that the training keeps its time
    steps = [int(k) for k in args.few_step_steps.split(",") if k]
    t_few = elapsed()
    if not steps:
        info["few_step"] = {"skipped": "--few-step-steps ''"}
    elif args.minutes - t_few - args.reserve_minutes < min(2.0, args.minutes / 4):
        info["few_step"] = {"skipped": f"{t_few:.1f} of {args.minutes} minutes spent by the bench"}
    else:
        batch = args.few_step_batch or (32 if device.type == "cuda" else 2)
        size = (args.height, args.width)
        info["few_step"] = few_step_rows(args.train_preset, size, device, steps, batch, args.few_step_repeats)
        report = out / "bench_generator.md"
        text = report.read_text(encoding="utf-8") if report.is_file() else "# Generator benchmark\n"
        with atomic_write(report) as fh:
            fh.write(text.rstrip("\n") + "\n" + render_few_step(info["few_step"]))
        print(render_few_step(info["few_step"]))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the timing model is gone; give its memory back to the training
    info["parts"]["few_step_minutes"] = round(elapsed() - t_few, 2)

    # 2. data + training with what is left
    t_data = elapsed()
    with tempfile.TemporaryDirectory(prefix="posereid-gpu-") as tmp:
        data, run = Path(tmp) / "data", Path(tmp) / "train"
        summary = write_synthetic_market(data, synth_config(args), progress=False)
        print(
            f"synthetic data: {summary['train']['images']} train images, "
            f"{summary['train']['identities']} identities"
        )
        info["parts"]["data_minutes"] = round(elapsed() - t_data, 2)
        left = args.minutes - elapsed() - args.reserve_minutes
        if left <= 0.05:
            raise RuntimeError(f"no time left for training after {elapsed():.1f} of {args.minutes} minutes")
        overrides, config = train_settings(args, device, left)
        t_train = elapsed()
        result = train(args, data, run, overrides, config)
        print(f"trained steps {result.start_step}..{result.steps}, final loss {result.final_loss:.4f}")
        info["parts"]["train_minutes"] = round(elapsed() - t_train, 2)
        info["train_argv"] = equivalent_argv(args, data, run, overrides, config)
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
