"""Benchmark: offline generation throughput vs calling the generator one image at a time.

Same process, same generator, same sources, poses and seeds:

* ``offline``: :func:`posereid.augment.generate.generate_offline` with ``--batch-size`` (loading sources,
  one ``generate`` call per batch, JPEG + fsync + manifest per image, sample grid);
* ``bare batched``: the same batched ``generate`` calls without any I/O, to show the pipeline's overhead;
* ``one at a time``: ``generator.generate`` on one image per call (what a per-item dataloader transform
  does), no I/O.

The generator is a randomly initialised preset (throughput does not depend on the weights): ``small``
(64x32) on CPU, ``market`` (128x64) on CUDA. Sources are a small synthetic Market-1501 folder
(:mod:`posereid.experiments.synthetic.dataset`). Usage::

    python -m posereid.experiments.bench.augment [--images 16] [--steps 10] [--out results/bench_augment_cpu.md]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from posereid.augment.generate import GenerateConfig, generate_offline
from posereid.augment.manifest import read_manifest
from posereid.augment.pose_bank import PoseBank
from posereid.models.images import pil_to_tensor01
from posereid.models.io_utils import atomic_write
from posereid.models.pidm import PIDMPipeline
from posereid.models.pose import resize_keypoints
from posereid.reid_integration.market1501 import Market1501, load_image, read_patn_csv

#: the repository's committed reports (run from the repository root)
RESULTS = Path("results")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(entries: list[dict], market: Path, ann: dict, bank: PoseBank, hw: tuple[int, int], device):
    """Sources, source/target keypoints and seeds of the offline run's items, in its order."""
    recs = {r.name: r for r in Market1501(market).train}
    srcs, skps, tkps, seeds = [], [], [], []
    for e in entries:
        im = load_image(recs[e["source"]].path, size=hw)
        srcs.append(pil_to_tensor01(im))
        skps.append(resize_keypoints(ann[e["source"]], (128, 64), hw))
        tkps.append(resize_keypoints(np.asarray(e["target_pose"], np.float32), bank.image_hw, hw))
        seeds.append(int(e["seed"]))
    to = lambda a: torch.from_numpy(np.stack(a)).to(device)  # noqa: E731
    return torch.stack(srcs).to(device), to(skps), to(tkps), seeds


def run(preset: str, device: torch.device, n_images: int, steps: int, batch_size: int) -> dict:
    from posereid.experiments.synthetic.dataset import SynthConfig, write_synthetic_market

    torch.manual_seed(0)
    gen = PIDMPipeline.from_preset(preset).to(device).eval()
    hw = gen.image_size
    per_image = 2
    with tempfile.TemporaryDirectory() as tmp:
        market = Path(tmp) / "market"
        n_ids = max(1, -(-n_images // (per_image * 2)))
        write_synthetic_market(
            market,
            SynthConfig(
                n_train_ids=n_ids,
                n_test_ids=2,
                per_camera=1,
                cameras=2,
                min_cameras=2,
                n_distractors=0,
                n_junk=0,
            ),
            progress=False,
        )
        ann_path = market / "market-annotation-train.csv"
        ann = read_patn_csv(ann_path)
        bank = PoseBank.from_market(market, ann)
        n_src = len(Market1501(market).train)
        # warm-up (allocations, cudnn autotune, lazy imports) outside the timed runs
        gen.generate(
            torch.rand(2, 3, *hw, device=device),
            torch.full((2, 18, 2), 5.0, device=device),
            steps=2,
            seeds=[0, 1],
        )
        _sync(device)
        out = Path(tmp) / "out"
        t = time.perf_counter()
        summary = generate_offline(
            GenerateConfig(out, per_image=per_image, steps=steps, batch_size=batch_size, progress=False),
            gen,
            market,
            ann,
            pose_bank=bank,
        )
        _sync(device)
        t_offline = time.perf_counter() - t
        entries = sorted(read_manifest(out), key=lambda e: e["index"])[:n_images]
        src, skps, tkps, seeds = _inputs(entries, market, ann, bank, hw, device)
        n = len(entries)
        res = {
            "preset": preset,
            "image_size": hw,
            "device": str(device),
            "steps": steps,
            "batch_size": batch_size,
            "offline_images": summary.generated,
            "offline_s": t_offline,
            "sources": n_src,
            "n": n,
        }
        t = time.perf_counter()
        for i in range(0, n, batch_size):
            gen.generate(
                src[i : i + batch_size],
                tkps[i : i + batch_size],
                skps[i : i + batch_size],
                steps=steps,
                seeds=seeds[i : i + batch_size],
            )
        _sync(device)
        res["bare_batched_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(n):
            gen.generate(
                src[i : i + 1], tkps[i : i + 1], skps[i : i + 1], steps=steps, seeds=seeds[i : i + 1]
            )
        _sync(device)
        res["one_at_a_time_s"] = time.perf_counter() - t
    return res


def report(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# Offline generation throughput vs one image per generator call",
        "",
        f"`python -m posereid.experiments.bench.augment --images {args.images} --steps {args.steps} "
        f"--batch-size {args.batch_size}` — {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU")
        + f"; {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end (a shared machine "
        "makes absolute numbers noisy; the ratios are measured in the same run).",
        "",
        "Randomly initialised generator (throughput does not depend on the weights), DPM-Solver++ with",
        "disentangled guidance (3 branches per step in one batched UNet call). `offline` is the full",
        "`posereid generate` pipeline: source loading, batched `generate`, JPEG + fsync + manifest line per",
        "image. `one at a time` calls `generator.generate` on single images with the same inputs and seeds",
        "and does no I/O. Images/s, higher is better; ratio = offline / one at a time.",
        "",
        "| preset | size | device | steps | batch | offline img/s | bare batched img/s | one-at-a-time img/s | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        off = r["offline_images"] / r["offline_s"]
        one = r["n"] / r["one_at_a_time_s"]
        bare = r["n"] / r["bare_batched_s"]
        lines.append(
            f"| {r['preset']} | {r['image_size'][0]}x{r['image_size'][1]} | {r['device']} | {r['steps']} | "
            f"{r['batch_size']} | {off:.2f} | {bare:.2f} | {one:.2f} | {off / one:.2f}x |"
        )
    lines += ["", "Reading (computed from the rows above):", ""]
    for r in results:
        off, bare = r["offline_images"] / r["offline_s"], r["n"] / r["bare_batched_s"]
        one = r["n"] / r["one_at_a_time_s"]
        lines.append(
            f"- {r['device']}: batching alone changes throughput {bare / one:.2f}x (bare batched vs one at a "
            f"time); the offline pipeline's I/O and bookkeeping cost {max(0.0, 1 - off / bare) * 100:.0f}% "
            f"of the bare batched throughput."
        )
    if not any(r["device"].startswith("cuda") for r in results):
        lines.append("- No GPU in this run; on a CUDA machine the script adds a `market` (128x64) row.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m posereid.experiments.bench.augment", description=__doc__.splitlines()[0]
    )
    p.add_argument("--images", type=int, default=16, help="images per measurement")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, help="markdown report (default results/bench_augment_{cpu,cuda}.md)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = [run("small", torch.device("cpu"), args.images, args.steps, args.batch_size)]
    if torch.cuda.is_available():
        results.append(
            run(
                "market",
                torch.device("cuda"),
                max(args.images, 64),
                max(args.steps, 20),
                max(args.batch_size, 32),
            )
        )
    text = report(results, args)
    out = args.out or RESULTS / f"bench_augment_{'cuda' if torch.cuda.is_available() else 'cpu'}.md"
    with atomic_write(out) as fh:
        fh.write(text)
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
