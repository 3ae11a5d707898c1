"""Benchmark few-step sampling: seconds per image and the online transform's cost per re-ID training step.

    python -m posereid.experiments.bench.few_step --student DIR --teacher DIR --data DATA [--out report.md]

Every row is measured in one run on the same inputs (real source images of ``DATA``'s train split and
poses of its pose bank), batch ``--batch`` images per call, the median of ``--repeats`` timed calls after
one warm-up call. Rows: the teacher (a flow checkpoint) at the quality table's setting (DPM-Solver++ 20
steps, guidance 2: three conditions per step) and at the gain protocol's (12 steps, guidance 1); the
few-step student sampled by its plain flow path at the same 20-step guidance-2 setting (the "same model"
reference the issue asks for) and by its few-step sampler at each trained step count. Ratios are
against the student's own 20-step guidance-2 row and the teacher's.

The second table is what a re-ID training loop pays per step for :class:`~posereid.augment.PoseTransferAugment`
inside it (``batch_transform`` on the batch, ``p`` of the images replaced), beside the bare step: an
osnet_x0_25 softmax step on a 64×32 batch of ``--reid-batch`` images (forward, backward, SGD). Weights of
the re-ID model are random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from posereid.models.io_utils import atomic_write


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocations, oneDNN kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(data: Path, size: tuple[int, int], n: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``n`` train images of ``data`` at ``size`` and the pose bank of its train annotations."""
    from posereid.augment.pose_bank import PoseBank
    from posereid.models.images import pil_to_tensor01
    from posereid.reid_integration.market1501 import find_annotations, load_image

    bank = PoseBank.from_market(data, find_annotations(data), split="train", image_hw=size)
    files = sorted((data / "bounding_box_train").glob("*.jpg"))[:n]
    if len(files) < n:
        raise SystemExit(f"{data}/bounding_box_train: {len(files)} images, {n} needed")
    h, w = size
    images = torch.stack([pil_to_tensor01(load_image(f).resize((w, h))) for f in files])
    kps = torch.as_tensor(bank.sample(n, 0, size=size), dtype=torch.float32)
    return images, kps, bank


def sampling_rows(
    student: Any, teacher: Any, images: torch.Tensor, kps: torch.Tensor, repeats: int
) -> list[dict]:
    """s/image of each sampling setting (see the module docstring)."""
    seeds = list(range(len(images)))
    settings: list[tuple[str, Any, dict]] = [
        ("teacher", teacher, dict(sampler="dpmsolver++", steps=20, guidance=(2.0, 2.0))),
        ("teacher", teacher, dict(sampler="dpmsolver++", steps=12, guidance=(1.0, 1.0))),
        ("student, plain flow path", student, dict(sampler="dpmsolver++", steps=20, guidance=(2.0, 2.0))),
        *[
            ("student", student, dict(sampler="few-step", steps=int(k), guidance=(1.0, 1.0)))
            for k in sorted(student.few_step.config.steps, reverse=True)
        ],
    ]
    rows = []
    for name, model, opts in settings:
        branches = 1 + sum(float(g) != 1.0 for g in opts["guidance"])
        seconds = _median_seconds(lambda m=model, o=opts: m.generate(images, kps, seeds=seeds, **o), repeats)
        rows.append({
            "model": name, **opts, "calls": opts["steps"] * branches, "s_per_image": seconds / len(images),
        })  # fmt: skip
    return rows


def transform_rows(
    student: Any, teacher: Any, bank: Any, images: torch.Tensor, reid_batch: int, p: float, repeats: int
) -> list[dict]:
    """Seconds per re-ID training step, bare and with the online transform of each generator."""
    from posereid.augment.transform import PoseTransferAugment
    from posereid.reid_integration.torchreid_plugin import build_reid_model

    torch.manual_seed(0)
    model = build_reid_model("osnet_x0_25", num_classes=30).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = images.repeat((reid_batch + len(images) - 1) // len(images), 1, 1, 1)[:reid_batch]
    pids = torch.arange(reid_batch) % 30

    def step(transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None) -> Callable[[], None]:
        def run() -> None:
            x = batch if transform is None else transform(batch, pids)
            loss = torch.nn.functional.cross_entropy(model(x), pids)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return run

    rows = [{"transform": "none", "s_per_step": _median_seconds(step(None), repeats)}]
    for name, gen, opts in (
        ("teacher, 12 steps guidance 1 (the protocol's)", teacher, dict(steps=12, guidance=(1.0, 1.0))),
        ("teacher, 20 steps guidance 2", teacher, dict(steps=20, guidance=(2.0, 2.0))),
        ("student, its default (few-step)", student, {}),
    ):
        aug = PoseTransferAugment(gen, bank, p=p, seed=0, **opts)
        rows.append({"transform": name, "s_per_step": _median_seconds(step(aug.batch_transform), repeats)})
    return rows


def render(sampling: list[dict], online: list[dict], header: list[str]) -> str:
    ref_student = next(r for r in sampling if r["model"].startswith("student, plain"))["s_per_image"]
    ref_teacher = sampling[0]["s_per_image"]
    lines = [*header, "", "| model | sampler | steps | guidance | network calls / image | s / image | "
             "speed-up vs the same model at 20 steps g2 | vs the teacher at 20 steps g2 |", "|---|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in sampling:
        same = ref_student if r["model"].startswith("student") else ref_teacher
        g = ",".join(f"{v:g}" for v in r["guidance"])
        lines.append(
            f"| {r['model']} | {r['sampler']} | {r['steps']} | {g} | {r['calls']} | {r['s_per_image']:.4f} | "
            f"{same / r['s_per_image']:.1f}x | {ref_teacher / r['s_per_image']:.1f}x |"
        )
    bare = online[0]["s_per_step"]
    lines += [
        "",
        "| online transform in a re-ID training step | s / step | x the bare step |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['transform']} | {r['s_per_step']:.3f} | {r['s_per_step'] / bare:.1f}x |" for r in online]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from posereid.models import load_generator

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", type=Path, required=True, help="a few-step checkpoint")
    p.add_argument("--teacher", type=Path, required=True, help="the flow checkpoint it was distilled from")
    p.add_argument("--data", type=Path, required=True, help="Market-1501 folder with train annotations")
    p.add_argument("--batch", type=int, default=16, help="images per generate call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per row (median)")
    p.add_argument("--reid-batch", type=int, default=32, help="re-ID training batch")
    p.add_argument("--p", type=float, default=0.5, help="share of a batch the online transform replaces")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--note", default="", help="a line for the report (e.g. how loaded the machine was)")
    p.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    student = load_generator(args.student, device="cpu")
    teacher = load_generator(args.teacher, device="cpu")
    if getattr(student, "few_step", None) is None:
        raise SystemExit(f"--student {args.student}: not a few-step checkpoint (no few_step/ folder)")
    images, kps, bank = _inputs(args.data, student.image_size, args.batch)
    with torch.no_grad():
        sampling = sampling_rows(student, teacher, images, kps, args.repeats)
    online = transform_rows(student, teacher, bank, images, args.reid_batch, args.p, args.repeats)
    header = [
        "# Few-step sampling: s/image and the online transform's cost",
        "",
        f"`python -m posereid.experiments.bench.few_step --student {args.student} --teacher {args.teacher} "
        f"--data {args.data} --batch {args.batch} --repeats {args.repeats}` — {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end. {args.note}".rstrip(),
    ]
    text = render(sampling, online, header)
    print(text)
    if args.out is not None:
        with atomic_write(args.out) as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
