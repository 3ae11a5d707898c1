"""Benchmark the pose-transfer generator: sampling images/s, training steps/s, against a naive baseline.

    python -m posereid.experiments.bench.generator [--presets tiny,small] [--device cpu|cuda] [--out results.md]

Every ratio is against a straightforward baseline measured in the same run on the same model: fp32,
DDIM 50 steps, one image at a time, the three guidance branches as separate UNet calls and the
appearance tokens re-encoded at every step. "ours" is :meth:`PIDMPipeline.generate`: all
guidance branches in one batched UNet call, tokens computed once, a batch of images, DPM-Solver++.
The 50-step DPM-Solver++ row has the baseline's step count and UNet cost per step, so it isolates the
batching gain; a 5-step DDIM run checks that both loops compute the same images.

On CUDA it adds bf16-autocast and ``torch.compile`` rows (on CPU with ``--cpu-bf16`` / ``--compile``).
With ``--flops`` (always for the ``market`` preset on CUDA) it reports, per 20-step row, the achieved
denoiser FLOP rate (FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode``) as a fraction of a
matmul rate of the same dtype measured in the same run. Weights are random: speed does not depend on
training.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from posereid.models.io_utils import atomic_write
from posereid.models.pidm import PIDMPipeline
from posereid.models.pose import resize_keypoints
from posereid.models.runtime import resolve_device
from posereid.models.sampling import initial_noise, make_generators, make_sampler

# An upright person in the 128x64 Market frame, (x, y) per COCO-18 joint.
_STANDING = np.array(
    [[32, 14], [32, 28], [24, 28], [20, 44], [18, 60], [40, 28], [44, 44], [46, 60], [27, 64], [27, 88],
     [27, 112], [37, 64], [37, 88], [37, 112], [30, 12], [34, 12], [27, 14], [37, 14]],
    dtype=np.float32,
)  # fmt: skip


@dataclass
class Row:
    preset: str
    method: str
    steps: int
    batch: int
    rate: float  # images/s (sampling) or steps/s (training)
    unit: str = "images/s"
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def make_inputs(model: PIDMPipeline, batch: int, seed: int = 0):
    """Smooth random source images and jittered standing poses at the model's size."""
    h, w = model.image_size
    g = torch.Generator().manual_seed(seed)
    src = torch.nn.functional.interpolate(
        torch.rand(batch, 3, 8, 4, generator=g), size=(h, w), mode="bilinear"
    )
    base = resize_keypoints(_STANDING, (128, 64), (h, w))
    rng = np.random.default_rng(seed)
    jitter = rng.normal(0.0, 0.03 * h, size=(2, batch, 18, 2)).astype(np.float32)
    kps = np.clip(base[None] + jitter, 0, [w - 1, h - 1]).astype(np.float32)
    return src.to(model.device), torch.from_numpy(kps[0]), torch.from_numpy(kps[1])


@torch.no_grad()
def baseline_generate(
    model: PIDMPipeline,
    source: torch.Tensor,
    target_kps: torch.Tensor,
    source_kps: torch.Tensor,
    seeds: list[int],
    *,
    steps: int = 50,
    guidance: tuple[float, float] = (2.0, 2.0),
) -> torch.Tensor:
    """The naive loop: per image, per step re-encode, and one UNet call per guidance branch (fp32 DDIM)."""
    w_p, w_s = guidance
    outs = []
    for i in range(source.shape[0]):
        src, ks, kt = source[i : i + 1], source_kps[i : i + 1], target_kps[i : i + 1]
        sched = make_sampler("ddim", model.scheduler)
        sched.set_timesteps(steps, device=model.device)
        x = initial_noise((1, 3, *model.image_size), make_generators([seeds[i]], None, 1), model.device)
        x = x * sched.init_noise_sigma
        net = model.model
        for t in sched.timesteps:
            tokens = model.encode_appearance(src, ks)
            pose = model.pose_maps(kt)  # re-rendered per step, like the tokens
            null = net.null_tokens(1, tokens.shape[1])
            xin = sched.scale_model_input(x, t)
            cond = net(xin, t, pose, tokens)
            no_pose = net(xin, t, torch.zeros_like(pose), tokens)
            no_app = net(xin, t, pose, null)
            eps = cond + (w_p - 1.0) * (cond - no_pose) + (w_s - 1.0) * (cond - no_app)
            x = sched.step(eps, t, x).prev_sample
        outs.append((x.clamp(-1, 1) + 1) / 2)
    return torch.cat(outs)


def bench_training(model: PIDMPipeline, batch: int, steps: int, amp: torch.dtype | None) -> float:
    """Adam steps/s on random pairs (one warm-up step not counted)."""
    src, ks, kt = make_inputs(model, batch, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    dev = model.device

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss = model.training_loss(src, src.flip(0), ks, kt)
        loss.backward()
        opt.step()

    step()
    dt, _ = _timed(lambda: [step() for _ in range(steps)], dev)
    model.eval()
    return steps / dt


def denoiser_flops(model: PIDMPipeline, batch: int, branches: int = 3) -> int:
    """FLOPs of one guided denoiser call (``branches`` × ``batch`` images through the UNet)."""
    src, ks, kt = make_inputs(model, batch)
    n = batch * branches
    with torch.no_grad():
        tokens = model.encode_appearance(src, ks).repeat(branches, 1, 1)
        pose = model.pose_maps(kt).repeat(branches, 1, 1, 1)
        x = torch.randn(n, 3, *model.image_size, device=model.device)
        counter = FlopCounterMode(display=False)
        with counter:
            model.model(x, torch.tensor(500, device=model.device), pose, tokens)
    return counter.get_total_flops()


def matmul_rate(
    device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int = 8192, reps: int = 20
) -> float:
    """Measured dense matmul FLOP/s (the practical peak the denoiser is compared with)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    dt, _ = _timed(lambda: [a @ b for _ in range(reps)], device)
    return 2 * n**3 * reps / dt


def flop_rate_notes(model: PIDMPipeline, rows: list[Row], batch: int, device: torch.device) -> list[str]:
    """Achieved denoiser FLOP/s of the 20-step sampling rows vs a matmul rate of the same dtype.

    One guided DPM-Solver++ step is one batched UNet call on 3 × ``batch`` images, so an image costs
    ``20 × flops(call) / batch``; multiplied by the measured images/s that is the FLOP rate the sampler
    sustains (the appearance encoder, run once per image, is left out: it is under 1 % of the work).
    """
    name = next(r.preset for r in rows)
    flops = denoiser_flops(model, batch)
    per_image = 20 * flops / batch
    notes = [f"`{name}`: denoiser {flops / batch / 3 / 1e9:.2f} GFLOP per image per guidance branch"]
    n = 8192 if device.type == "cuda" else 2048
    peaks: dict[str, float] = {}
    for r in rows:
        if r.steps != 20 or r.unit != "images/s" or not r.method.startswith("ours"):
            continue
        dtype = torch.bfloat16 if "bf16" in r.method else torch.float32
        label = "bf16" if dtype is torch.bfloat16 else "fp32"
        if label not in peaks:
            peaks[label] = matmul_rate(device, dtype, n=n)
        achieved = per_image * r.rate
        notes.append(
            f"`{name}` {r.method}: {achieved / 1e12:.3g} TFLOP/s = {100 * achieved / peaks[label]:.0f} % of "
            f"the {label} matmul rate measured in this run ({peaks[label] / 1e12:.3g} TFLOP/s, {n}x{n})"
        )
    return notes


def bench_preset(args: argparse.Namespace, name: str, device: torch.device) -> tuple[list[Row], list[str]]:
    torch.manual_seed(0)
    # a DDPM schedule (v-prediction), so that the DDIM baseline applies; the cost per step does not depend
    # on the noise recipe (the preset's flow matching runs the same UNet calls)
    model = PIDMPipeline.from_preset(name, prediction_type="v_prediction").to(device).eval()
    batch = args.batch
    src, ks, kt = make_inputs(model, batch)
    seeds = list(range(batch))
    rows: list[Row] = []
    notes: list[str] = []
    params = sum(p.numel() for p in model.parameters()) / 1e6
    notes.append(f"`{name}`: {model.image_size[0]}x{model.image_size[1]}, {params:.2f} M parameters")
    model.generate(src[:1], kt[:1], ks[:1], steps=2, seeds=[0])  # warm-up (allocations, kernels)

    nb = min(args.baseline_images, batch)
    dt, _ = _timed(lambda: baseline_generate(model, src[:nb], kt[:nb], ks[:nb], seeds[:nb]), device)
    base_rate = nb / dt
    rows.append(
        Row(name, "baseline: fp32 DDIM, 1 image, 3 UNet calls/step, re-encode/step", 50, 1, base_rate)
    )

    def ours(label: str, steps: int, sampler: str = "dpmsolver++", amp: torch.dtype | None = None) -> None:
        dt, _ = _timed(
            lambda: model.generate(
                src, kt, ks, steps=steps, sampler=sampler, seeds=seeds, autocast_dtype=amp
            ),
            device,
        )
        rows.append(Row(name, label, steps, batch, batch / dt))

    # Same sampler and steps as the baseline: the two loops must give the same images (checked at 5 steps;
    # with random weights long trajectories amplify float rounding chaotically, trained ones do not).
    check = baseline_generate(model, src[:nb], kt[:nb], ks[:nb], seeds[:nb], steps=5)
    mine = model.generate(src[:nb], kt[:nb], ks[:nb], steps=5, sampler="ddim", seeds=seeds[:nb])
    notes.append(
        f"`{name}`: baseline loop vs generate(sampler='ddim'), 5 steps: max abs image difference "
        f"{(check - mine).abs().max().item():.1e} (same computation, batched differently)"
    )
    for steps in args.steps:
        ours("ours fp32 DPM-Solver++", steps)
    amp = torch.bfloat16
    use_bf16 = device.type == "cuda" or args.cpu_bf16
    if use_bf16:
        ours("ours bf16 autocast DPM-Solver++", 20, amp=amp)
    if args.compile or device.type == "cuda":
        eager_unet = model.model.unet
        model.model.unet = torch.compile(eager_unet)
        for dtype in [None, amp] if use_bf16 else [None]:
            label = "bf16" if dtype is not None else "fp32"
            t0 = time.perf_counter()  # first calls compile (one graph per dtype); not in the rates
            model.generate(src, kt, ks, steps=2, seeds=seeds, autocast_dtype=dtype)
            notes.append(f"`{name}`: torch.compile warm-up ({label}) {time.perf_counter() - t0:.0f} s")
            ours(f"ours {label} + torch.compile DPM-Solver++", 20, amp=dtype)
        model.model.unet = eager_unet
    rows.append(
        Row(
            name,
            "training fp32 (Adam)",
            0,
            batch,
            bench_training(model, batch, args.train_steps, None),
            "steps/s",
        )
    )
    if device.type == "cuda":
        rows.append(
            Row(
                name,
                "training bf16 autocast (Adam)",
                0,
                batch,
                bench_training(model, batch, args.train_steps, amp),
                "steps/s",
            )
        )
    if args.flops or (device.type == "cuda" and name == "market"):
        notes += flop_rate_notes(model, rows, batch, device)
    for r in rows:
        if r.unit == "images/s":
            r.note = f"{r.rate / base_rate:.1f}x"
    return rows, notes


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render(rows: list[Row], notes: list[str], header: list[str]) -> str:
    lines = [
        *header,
        "",
        "| preset | method | steps | batch | rate | vs baseline |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        steps = str(r.steps) if r.steps else "-"
        lines.append(
            f"| {r.preset} | {r.method} | {steps} | {r.batch} | {r.rate:.3g} {r.unit} | {r.note or '-'} |"
        )
    lines += ["", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", default="tiny,small", help="comma-separated presets (default tiny,small)")
    p.add_argument("--device", default=str(resolve_device(None)), choices=["cpu", "cuda"])
    p.add_argument(
        "--batch", type=int, default=None, help="images per generate call (default 4 CPU, 32 CUDA)"
    )
    p.add_argument("--steps", default="10,20,50", help="DPM-Solver++ step counts to time")
    p.add_argument("--baseline-images", type=int, default=1, help="images the slow baseline generates")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--cpu-bf16", action="store_true", help="also time bf16 autocast on CPU")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (always on CUDA)")
    p.add_argument(
        "--flops",
        action="store_true",
        help="report the achieved denoiser FLOP rate vs a measured matmul rate (always for CUDA market)",
    )
    p.add_argument("--note", default="", help="a line for the report (e.g. how loaded the machine was)")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m posereid.experiments.bench.generator", description=__doc__.split("\n")[0]
    )
    add_bench_args(p)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or (32 if device.type == "cuda" else 4)
    args.steps = [int(s) for s in args.steps.split(",") if s]
    rows, notes = [], []
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t0 = time.perf_counter()
    presets = [n for n in args.presets.split(",") if n]
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()

    def header(done: int) -> list[str]:
        load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        lines = [
            "# Generator benchmark",
            "",
            f"`python -m posereid.experiments.bench.generator --presets {args.presets} --device {args.device} "
            f"--batch {args.batch} --steps {','.join(map(str, args.steps))}"
            f"{' --threads ' + str(args.threads) if args.threads else ''}"
            f"{' --cpu-bf16' if args.cpu_bf16 else ''}{' --compile' if args.compile else ''}"
            f"{' --flops' if args.flops else ''}`",
            "",
            f"Device: {device.type} ({dev_name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"1-min load average {load0:.1f} at start / {load1:.1f} at end ({os.cpu_count()} cores), "
            f"total {time.perf_counter() - t0:.0f} s. Random weights, guidance (2, 2) = 3 branches.",
        ]
        if done < len(presets):
            lines += ["", f"Incomplete: {done} of {len(presets)} presets measured so far."]
        return lines + (["", args.note] if args.note else [])

    for k, name in enumerate(presets, start=1):
        r, n = bench_preset(args, name, device)
        rows += r
        notes += n
        print(render(r, [], []), flush=True)
        if args.out:  # after every preset: a run stopped at a time limit keeps what it measured
            with atomic_write(args.out) as fh:
                fh.write(render(rows, notes, header(k)))
    final = header(len(presets))
    text = render(rows, notes, final)
    print("\n".join(text.splitlines()[len(final) :]))
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
