"""The pose judge's held-out report: PCKh@0.5 and people found on fresh renders (and, optionally, a
dataset's evaluation targets), as JSON and markdown."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posereid.experiments.quality.judge.degradations import blur_images
from posereid.experiments.quality.judge.model import PoseJudge, PoseJudgeEstimator
from posereid.experiments.quality.judge.renders import (
    EVAL_SEED,
    MIN_JUDGE_SEED,
    SIZES,
    SYNTH_JPEG_QUALITY,
    heldout_backgrounds,
    heldout_people,
)
from posereid.experiments.quality.metrics import pose_fidelity
from posereid.models.io_utils import atomic_write
from posereid.models.pose import as_keypoints, visible_mask

REPORT_JSON, REPORT_MD = "judge_report.json", "judge_report.md"
#: the acceptance bar of the held-out renders (issue 11): PCKh@0.5 and share of people found
TARGET_PCKH, TARGET_FOUND = 0.95, 0.98


def judge_metrics(pred: np.ndarray, target: np.ndarray, *, alpha: float = 0.5) -> dict[str, float]:
    """PCKh@``alpha`` (:func:`~posereid.experiments.quality.metrics.pose_fidelity`) and the share of people
    found: images whose target shows at least one joint and where at least one joint was predicted."""
    pred, target = as_keypoints(pred), as_keypoints(target)
    m = pose_fidelity(pred, target, alpha=alpha)
    people = visible_mask(target).any(-1)
    found = visible_mask(pred).any(-1)
    n_people = int(people.sum())
    return {
        "pckh": m["pckh"],
        "pckh_found": m["pckh_found"],
        "found_rate": float(found[people].mean()) if n_people else float("nan"),
        "joint_error_px": m["joint_error_px"],
        "n_images": int(len(pred)),
        "n_people": n_people,
        "n_joints": m["n_joints"],
        "no_person": int((people & ~found).sum()),
    }


Predictor = Callable[[torch.Tensor], np.ndarray]


def _as_predictor(judge: Any) -> tuple[Predictor, str]:
    if isinstance(judge, PoseJudge):
        judge = PoseJudgeEstimator(judge, device=judge.device)
    name = getattr(judge, "description", getattr(judge, "__name__", type(judge).__name__))
    if hasattr(judge, "detect"):
        return judge.detect, name
    if callable(judge):
        return judge, name
    raise TypeError(
        f"expected a PoseJudge, PoseJudgeEstimator or images → keypoints callable, got {type(judge)}"
    )


def evaluate_judge(
    judge: PoseJudge | PoseJudgeEstimator | Predictor,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    n_images: int = 512,
    sizes: Sequence[tuple[int, int]] = SIZES,
    seed: int = EVAL_SEED,
    robustness: bool = True,
    data: str | os.PathLike[str] | None = None,
    data_pairs: int | None = 200,
    data_seed: int = 0,
    data_annotation_hw: tuple[int, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """PCKh@0.5 and the share of people found on held-out renders at each size; report to ``out_dir``.

    Rows per size: ``people`` (:func:`heldout_people`: the acceptance set), with ``robustness`` also
    ``people, blurred`` (:func:`blur_images`) and ``backgrounds`` (``false_find_rate``: person-free
    images where someone was found). With ``data`` (a Market-format folder with its test annotations and
    pairs), also the real target images of ``evaluate-generator``'s pairs (``data_pairs`` drawn with
    ``data_seed``, the same draw as ``evaluate-generator --n-pairs --seed``) at each size;
    ``data_annotation_hw``: the ``(H, W)`` frame of its annotation CSV (``--annotation-size``; ``None``: the
    images' own size), as ``evaluate-generator`` reads it.

    Returns:
        ``{"rows": [{"set", "size", metrics...}], "acceptance": {...}, "config": {...}}``; with
        ``out_dir``, also written as :data:`REPORT_JSON` and :data:`REPORT_MD`.
    """
    if seed < MIN_JUDGE_SEED:
        raise ValueError(
            f"evaluation seed must be >= {MIN_JUDGE_SEED} (disjoint from the datasets), got {seed}"
        )
    predict, name = _as_predictor(judge)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for hw in sizes:
        hw = (int(hw[0]), int(hw[1]))
        size = f"{hw[0]}x{hw[1]}"
        images, kps = heldout_people(n_images, hw, seed=seed)
        t = time.perf_counter()
        pred = predict(images)
        rows.append({"set": "people", "size": size, **judge_metrics(pred, kps),
                     "ms_per_image": 1000 * (time.perf_counter() - t) / max(1, n_images)})  # fmt: skip
        if robustness:
            rows.append({"set": "people, blurred", "size": size,
                         **judge_metrics(predict(blur_images(images, seed=seed)), kps)})  # fmt: skip
            bg = heldout_backgrounds(max(16, n_images // 4), hw, seed=seed)
            found = visible_mask(as_keypoints(predict(bg))).any(-1)
            rows.append({"set": "backgrounds", "size": size, "n_images": int(len(bg)),
                         "false_find_rate": float(found.mean())})  # fmt: skip
        if data is not None:
            from posereid.experiments.quality.pairs import load_eval_pairs

            pairs = load_eval_pairs(
                data, hw, n_pairs=data_pairs, seed=data_seed, annotation_hw=data_annotation_hw
            )
            rows.append({"set": f"data targets ({Path(data).name})", "size": size,
                         **judge_metrics(predict(pairs.target), pairs.target_kps)})  # fmt: skip
    people = [r for r in rows if r["set"] == "people"]
    acceptance = {
        r["size"]: {
            "pckh": r["pckh"],
            "found_rate": r["found_rate"],
            "pass": bool(r["pckh"] >= TARGET_PCKH and r["found_rate"] >= TARGET_FOUND),
        }
        for r in people
    }
    result = {
        "rows": rows,
        "acceptance": {
            "target_pckh": TARGET_PCKH,
            "target_found": TARGET_FOUND,
            "sizes": acceptance,
            "pass": bool(people) and all(a["pass"] for a in acceptance.values()),
        },  # fmt: skip
        "config": {
            "n_images": n_images,
            "seed": seed,
            "sizes": [list(s) for s in sizes],
            "data": None if data is None else str(data),
            "data_pairs": data_pairs,
            "data_seed": data_seed,
            "data_annotation_hw": None if data_annotation_hw is None else list(data_annotation_hw),
            "seconds": round(time.perf_counter() - t0, 1),
            "judge": name,
            **(extra or {}),
        },  # fmt: skip
    }
    if out_dir is not None:
        write_judge_report(result, out_dir)
    return result


def render_judge_markdown(result: dict[str, Any]) -> str:
    """The report of :func:`evaluate_judge` as markdown."""
    cfg, acc = result["config"], result["acceptance"]

    def f(v: Any, pct: bool = False) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "–"
        return f"{100 * v:.1f} %" if pct else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [
        "# Pose judge: held-out synthetic people",
        "",
        f"Judge: {cfg['judge']}. Held-out renders: {cfg['n_images']} people per size from seed {cfg['seed']} "
        "(identities, poses and cameras disjoint from training and from every synth-market dataset), "
        f"JPEG quality {SYNTH_JPEG_QUALITY} like synth-market.",
        "",
        "| set | size | PCKh@0.5 | people found | PCKh (found) | joint error px | images | false finds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['set']} | {r['size']} | {f(r.get('pckh'))} | {f(r.get('found_rate'), True)} | "
            f"{f(r.get('pckh_found'))} | {f(r.get('joint_error_px'))} | {r.get('n_images', '–')} | "
            f"{f(r.get('false_find_rate'), True)} |"
        )
    lines += [
        "",
        f"Acceptance (people rows): PCKh@0.5 >= {acc['target_pckh']} and found >= {100 * acc['target_found']:.0f} % "
        f"at every size: **{'pass' if acc['pass'] else 'not yet'}** "
        + ", ".join(f"{k}: {'pass' if v['pass'] else 'fail'}" for k, v in acc["sizes"].items()),
        "",
        "A person is found when at least one joint is predicted (the `no_person` rule of "
        "`quality.metrics.pose_fidelity`); PCKh counts every joint visible in the target, a joint not "
        "predicted is wrong. 'people, blurred': the same images with Gaussian blur (σ 1 px at 128 rows) "
        "and noise (σ 3 grey levels). 'backgrounds': person-free images, share where someone was found.",
    ]
    return "\n".join(lines) + "\n"


def write_judge_report(result: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Write ``result`` as :data:`REPORT_JSON` and :data:`REPORT_MD` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / REPORT_JSON, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, default=float)
    with atomic_write(out / REPORT_MD, "w", encoding="utf-8") as fh:
        fh.write(render_judge_markdown(result))
    return {"json": str(out / REPORT_JSON), "md": str(out / REPORT_MD)}


__all__ = [
    "REPORT_JSON",
    "REPORT_MD",
    "TARGET_FOUND",
    "TARGET_PCKH",
    "Predictor",
    "evaluate_judge",
    "judge_metrics",
    "render_judge_markdown",
    "write_judge_report",
]
