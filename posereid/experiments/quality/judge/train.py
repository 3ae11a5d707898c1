"""Training the pose judge on an endless, seeded stream of fresh renders (deterministic in the seed)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from posereid.experiments.quality.judge.heatmaps import focal_loss, keypoint_heatmaps
from posereid.experiments.quality.judge.model import PoseJudge, resize_to_height
from posereid.experiments.quality.judge.renders import (
    MIN_JUDGE_SEED,
    SIZES,
    TRAIN_SEED,
    training_batch,
    training_rng,
)
from posereid.experiments.quality.judge.report import evaluate_judge
from posereid.experiments.synthetic.params import Camera, sample_camera
from posereid.models.io_utils import atomic_write
from posereid.models.pose import resize_keypoints

logger = logging.getLogger(__name__)

TRAINING_NAME = "training.json"


@dataclasses.dataclass
class JudgeTrainConfig:
    """What :func:`train_judge` does.

    Args:
        steps: optimisation steps; ``None`` = as many as fit ``minutes`` (at least 200; timed on steps
            10-40, inside the warm-up, then fixed, so ``--steps N`` with the recorded count reproduces
            the run exactly).
        minutes: wall-clock budget when ``steps`` is None (also a hard stop at 1.2x).
        batch_size: images per step (each step is one size; sizes alternate).
        lr: Adam learning rate (:func:`_lr_factor`: 50 warm-up steps, cosine decay to 2 %).
        sizes: training image sizes ``(H, W)``.
        seed: seed of the weights and of the render stream (>= 10**6: disjoint from every dataset).
        camera_pool / pool_steps: cameras in use, renewed every ``pool_steps`` steps.
        augment: strength of :func:`degrade` (0 = clean renders).
        eval_images: held-out people per size for the final report (0 = no report).
        workers: 1 = render in a ``DataLoader`` worker beside training, 0 = in this process (same batches).
        log_every: steps per point of the loss curve.
        model: :class:`PoseJudge` arguments.
    """

    steps: int | None = None
    minutes: float = 10.0
    batch_size: int = 32
    lr: float = 3e-3
    sizes: tuple[tuple[int, int], ...] = SIZES
    seed: int = TRAIN_SEED
    camera_pool: int = 12
    pool_steps: int = 8
    augment: float = 1.0
    eval_images: int = 256
    grad_clip: float = 5.0
    workers: int = 1
    log_every: int = 25
    model: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.seed < MIN_JUDGE_SEED:
            raise ValueError(
                f"seed must be >= {MIN_JUDGE_SEED} (disjoint from every dataset), got {self.seed}"
            )
        if self.workers not in (0, 1):
            raise ValueError(f"workers must be 0 or 1 (one ordered render stream), got {self.workers}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.steps is None and not self.minutes > 0:
            raise ValueError(f"minutes must be > 0 when steps is not given, got {self.minutes}")
        for h, w in self.sizes:
            if h % 8 or w % 8:
                raise ValueError(f"training sizes must be divisible by 8, got {h}x{w}")
        height = int(self.model.get("input_height", 64))
        for h, w in self.sizes if height else ():
            if (w * height) % (8 * h):
                raise ValueError(f"training size {h}x{w} at the judge's {height} rows is not divisible by 8")


WARMUP_STEPS = 50


def _lr_factor(step: int, total: int | None) -> float:
    """Linear warm-up over :data:`WARMUP_STEPS` (a quarter of a run shorter than 200 steps), then cosine
    decay to 2 %. The warm-up does not depend on ``total`` (runs of >= 200 steps), so a run whose length
    was set by its time budget is reproduced exactly by ``--steps N``."""
    warm = WARMUP_STEPS if total is None or total >= 4 * WARMUP_STEPS else max(1, total // 4)
    if step < warm or total is None:
        return min(1.0, (step + 1) / warm)
    t = (step - warm) / max(1, total - warm)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class JudgeBatches(torch.utils.data.IterableDataset):
    """The endless, seeded stream of training batches: ``(images (B, 3, h, w), targets (B, 18, h/s, w/s))``
    at the judge's working size. Batch ``i`` is rendered at ``sizes[i % len(sizes)]``; the camera pool
    is renewed every ``pool_steps`` batches. One stream per seed whatever runs it (the main process or one
    ``DataLoader`` worker), so training is deterministic."""

    def __init__(self, cfg: JudgeTrainConfig, *, input_height: int, stride: int, sigma: float) -> None:
        super().__init__()
        self.cfg, self.input_height, self.stride, self.sigma = cfg, input_height, stride, sigma

    def __iter__(self):
        cfg = self.cfg
        rng = training_rng(cfg.seed)
        cams: list[Camera] = []
        for i in itertools.count():
            if i % cfg.pool_steps == 0:
                cams = [sample_camera(rng, c) for c in range(cfg.camera_pool)]
            hw = tuple(int(v) for v in cfg.sizes[i % len(cfg.sizes)])
            images, kps = training_batch(rng, cfg.batch_size, hw, cams, augment=cfg.augment)
            images = resize_to_height(images, self.input_height)  # as PoseJudge.predict does
            work = (int(images.shape[-2]), int(images.shape[-1]))
            if work != hw:
                kps = resize_keypoints(kps, hw, work)
            yield images, keypoint_heatmaps(kps, work, self.stride, self.sigma)


def _reproduce_command(cfg: JudgeTrainConfig, steps: int, out_dir: Any) -> str:
    parts = [
        "posereid pose-judge train",
        f"--out {out_dir if out_dir is not None else 'DIR'}",
        f"--steps {steps} --seed {cfg.seed} --batch-size {cfg.batch_size} --lr {cfg.lr:g}",
        "--sizes " + " ".join(f"{h}x{w}" for h, w in cfg.sizes),
        f"--augment {cfg.augment:g} --eval-images {cfg.eval_images}",
    ]
    if "channels" in cfg.model:
        parts.append("--channels " + " ".join(str(c) for c in cfg.model["channels"]))
    return " ".join(parts)


def train_judge(
    out_dir: str | os.PathLike[str] | None,
    config: JudgeTrainConfig | None = None,
    *,
    progress: bool = True,
    device: torch.device | str = "cpu",
    command: str | None = None,
) -> tuple[PoseJudge, dict[str, Any]]:
    """Train a :class:`PoseJudge` on fresh renders; save it (+ :data:`TRAINING_NAME` + the report) to ``out_dir``.

    Renders come from :class:`JudgeBatches`, in a ``DataLoader`` worker when ``config.workers`` is 1 (it
    renders the next batch while this process trains; the stream is the same either way).

    Returns:
        ``(judge in eval mode, summary)``; the summary (steps, seconds, loss curve, skipped steps,
        evaluation) is also written to ``out_dir/training.json``.
    """
    cfg = config or JudgeTrainConfig()
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        judge = PoseJudge(**cfg.model)
    judge.to(dev).train()
    stream = JudgeBatches(
        cfg, input_height=int(judge.config.input_height), stride=judge.stride, sigma=float(judge.config.sigma)
    )
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=cfg.workers, prefetch_factor=4 if cfg.workers else None
    )
    opt = torch.optim.Adam(judge.parameters(), lr=cfg.lr)
    total = cfg.steps
    budget = cfg.minutes * 60
    calib_from, calib_to = 10, WARMUP_STEPS - 10  # timed inside the warm-up, whose LR ignores the total
    curve: list[tuple[int, float]] = []
    run_loss, run_n, skipped, step = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    t_calib = t0
    bar = tqdm(total=total, desc="pose judge", unit="step", disable=not progress)
    batches = iter(loader)
    while total is None or step < total:
        images, target = next(batches)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(step, total)
        loss = focal_loss(judge(images.to(dev)), target.to(dev))
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(judge.parameters(), cfg.grad_clip)
            opt.step()
            run_loss, run_n = run_loss + float(loss.detach()), run_n + 1
        else:
            skipped += 1
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == total:
            if run_n:
                curve.append((step, round(run_loss / run_n, 5)))
                bar.set_postfix(loss=f"{run_loss / run_n:.3f}")
            run_loss, run_n = 0.0, 0
        if total is None and step == calib_from:
            t_calib = time.perf_counter()  # the first steps include start-up costs
        if total is None and step == calib_to:
            per_step = (time.perf_counter() - t_calib) / (calib_to - calib_from)
            total = int((budget - (time.perf_counter() - t0)) / per_step) + step
            total = max(total + total % len(cfg.sizes), 4 * WARMUP_STEPS)  # sizes get as many steps
            bar.total = total
            bar.refresh()
            logger.info("pose judge: %.2f s/step, %d steps fit %.1f minutes", per_step, total, cfg.minutes)
        if cfg.steps is None and time.perf_counter() - t0 > 1.2 * budget:
            logger.warning("pose judge: stopped at step %d of %d (1.2x the time budget)", step, total)
            break
    bar.close()
    del batches, loader  # stops the worker
    if run_n:
        curve.append((step, round(run_loss / run_n, 5)))
    seconds = time.perf_counter() - t0
    judge.eval()
    summary: dict[str, Any] = {
        "steps": step,
        "planned_steps": total,
        "truncated": bool(total is not None and step < total),  # hit the 1.2x hard stop: --steps N differs
        "seconds": round(seconds, 1),
        "skipped_non_finite": skipped,
        "loss_curve": curve,
        "config": {**dataclasses.asdict(cfg), "steps": step},
        "reproduce": command or _reproduce_command(cfg, step, out_dir),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
    }
    if cfg.eval_images:
        summary["evaluation"] = evaluate_judge(
            judge, out_dir, n_images=cfg.eval_images, robustness=True, extra={"training_steps": step}
        )
    if out_dir is not None:
        judge.save_pretrained(out_dir)
        with atomic_write(Path(out_dir) / TRAINING_NAME, "w", encoding="utf-8") as fh:
            json.dump({k: v for k, v in summary.items() if k != "evaluation"}, fh, indent=1, default=float)
    return judge, summary


__all__ = ["TRAINING_NAME", "WARMUP_STEPS", "JudgeBatches", "JudgeTrainConfig", "train_judge"]
