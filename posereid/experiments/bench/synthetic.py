"""Benchmark the synthetic-people renderer on one core.

Measures images per second for rendering to arrays (``render_person`` with a fresh pose per image, the
per-image cost of a dataset run) and for render + JPEG write (``MarketWriter.add`` into a temporary
folder), at 128x64, 64x32 and 32x16, single process with ``torch.set_num_threads(1)``. The JPEG-write-only
rate of the same images is measured in the same run as the baseline the other rows are compared with.

Each row is the best and the median of ``--repeats`` runs, in wall-clock time and in CPU time of this
process (``time.process_time``): on a shared machine the wall-clock rate drops when other processes take
the core, the CPU-time rate much less. Run with ``OMP_NUM_THREADS=1``:

    OMP_NUM_THREADS=1 python -m posereid.experiments.bench.synthetic
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from posereid.experiments.synthetic.params import make_cameras, sample_identity, sample_pose
from posereid.experiments.synthetic.people import render_person
from posereid.models.io_utils import atomic_write
from posereid.reid_integration.market1501 import MarketWriter, format_market_name

#: the repository's committed reports (run from the repository root)
DEFAULT_OUT = Path("results") / "bench_synthetic.md"
TARGET = 2000.0  # images/s at 128x64, render only


def _rate(fn: Callable[[int], object], n: int, repeats: int) -> tuple[float, float, float]:
    """(best wall images/s, median wall images/s, best CPU-time images/s) over ``repeats`` runs of n calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            fn(i)
        wall.append(n / (time.perf_counter() - t0))
        cpu.append(n / max(time.process_time() - c0, 1e-9))
    return max(wall), statistics.median(wall), max(cpu)


def _bench_size(h: int, w: int, ids, cams, rng, n: int, repeats: int) -> list[tuple]:
    def render(i: int):
        return render_person(
            ids[i % len(ids)], sample_pose(rng), cams[i % len(cams)], height=h, width=w, rng=rng
        )

    for i in range(200):  # warm the background / noise caches
        render(i)
    images = [render(i)[0] for i in range(min(n, 500))]
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        writer = MarketWriter(tmp)
        counter = iter(range(10**9))

        def write(img: np.ndarray) -> None:
            k = next(counter)
            writer.add("train", img, 1 + k % 999, 1, name=format_market_name(1 + k % 999, 1, 1, k, 1))

        r_only = _rate(render, n, repeats)
        r_encode = _rate(lambda i: _encode(render(i)[0]), n, repeats)
        r_write = _rate(lambda i: write(render(i)[0]), n, repeats)
        w_only = _rate(lambda i: write(images[i % len(images)]), n, repeats)
    return [
        (f"{h}x{w}", "render only", *r_only),
        (f"{h}x{w}", "render + JPEG encode (in memory)", *r_encode),
        (f"{h}x{w}", "render + JPEG write (MarketWriter)", *r_write),
        (f"{h}x{w}", "JPEG write only (baseline)", *w_only),
    ]


def _encode(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def run_benchmark(
    n: int = 2000, repeats: int = 3, sizes: tuple[tuple[int, int], ...] = ((128, 64), (64, 32), (32, 16))
) -> list[tuple]:
    """Table rows ``(size, what, best wall images/s, median wall images/s, best CPU-time images/s)``."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    cams = make_cameras(6, seed=0)
    ids = [sample_identity(rng) for _ in range(50)]
    rows: list[tuple] = []
    for h, w in sizes:
        rows += _bench_size(h, w, ids, cams, rng, n, repeats)
    return rows


def format_report(rows, n: int, repeats: int) -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    lines = [
        "# Synthetic-people renderer throughput",
        "",
        f"Measured {datetime.date.today().isoformat()} by `python -m posereid.experiments.bench.synthetic` "
        f"({n} images per run, best / median of {repeats} runs), single process, `torch.set_num_threads(1)`, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"numpy {np.__version__}, Pillow {PIL.__version__}; load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min).",
        "",
        "| size | what | images/s (best wall) | images/s (median wall) | images/s (CPU time) | x JPEG-write-only |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    base = {r[0]: r[4] for r in rows if r[1].startswith("JPEG")}
    for size, what, best, med, cpu in rows:
        lines.append(f"| {size} | {what} | {best:,.0f} | {med:,.0f} | {cpu:,.0f} | {cpu / base[size]:.2f} |")
    r128 = next(r for r in rows if r[0] == "128x64" and r[1] == "render only")
    lines += [
        "",
        f"Target: >= {TARGET:,.0f} images/s rendering 128x64 to arrays on one core. This run: "
        f"{r128[4]:,.0f}/s in CPU time ({'meets' if r128[4] >= TARGET else 'misses'} the target), "
        f"{r128[2]:,.0f}/s best wall-clock ({'meets' if r128[2] >= TARGET else 'misses'} it; wall-clock counts "
        "the time other processes hold the core).",
        "The last column compares CPU-time rates with writing the same kind of image through MarketWriter "
        "alone (temporary file, hard link, unlink per image).",
        "Images under 64 rows (32x16 here) are drawn at 64 rows or more and box-downsampled, and most of the cost is "
        "per drawing call, so smaller images are barely cheaper.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m posereid.experiments.bench.synthetic", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--n", type=int, default=2000, help="images per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report")
    parser.add_argument(
        "--note", default="", help="a line added to the report (e.g. how loaded the machine was)"
    )
    args = parser.parse_args(argv)
    rows = run_benchmark(args.n, args.repeats)
    report = format_report(rows, args.n, args.repeats)
    if args.note:
        report += f"\nNote: {args.note}\n"
    print(report)
    with atomic_write(args.out, "w", encoding="utf-8") as fh:
        fh.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
