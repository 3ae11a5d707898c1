"""Reports of ``posereid evaluate-generator``: option parsing, markdown, JSON, image sheet, sweep plot.

Split from :mod:`~posereid.experiments.quality.evaluate` (which computes the numbers) so each file stays
focused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from posereid.models.images import tensor01_to_pil
from posereid.models.io_utils import atomic_save
from posereid.models.pose import resize_keypoints, skeleton_tensor

#: metric key → (label, higher is better; ``None``: 1 is best, as for the real images)
METRICS: dict[str, tuple[str, bool | None]] = {
    "ssim": ("SSIM", True),
    "mask_ssim": ("Mask-SSIM", True),
    "lpips": ("LPIPS", False),
    "mask_lpips": ("Mask-LPIPS", False),
    "fid": ("FID", False),
    "fd_reid": ("Fréchet distance, re-ID features", False),
    "fd_judge": ("Fréchet distance, pose-judge features", False),
    "sharpness_ratio": ("sharpness ratio (Laplacian)", None),
    "pckh": ("PCKh@0.5", True),
    "joint_error_px": ("joint error (px)", False),
    "no_person": ("images with no person found", False),
    "own_centroid_cos": ("cos to own identity", True),
    "other_centroid_cos": ("cos to nearest other identity", False),
    "id_margin": ("identity margin (own - other)", True),
    "rank1": ("re-ID rank-1", True),
    "mAP": ("re-ID mAP", True),
    "rank1_independent": ("re-ID rank-1, independent judge", True),
    "mAP_independent": ("re-ID mAP, independent judge", True),
    "reid_gap": ("re-ID judges' gap (share of ceiling)", False),
    "sec_per_image": ("seconds / image", False),
}


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------
def parse_guidance(text: str | float | Sequence[float]) -> tuple[float, float]:
    """``"2"`` → ``(2, 2)`` (both weights); ``"1.5:3"`` → ``(w_pose, w_appearance) = (1.5, 3)``."""
    if isinstance(text, (int, float)):
        return float(text), float(text)
    if not isinstance(text, str):
        vals = tuple(float(v) for v in text)
        if len(vals) != 2:
            raise ValueError(f"guidance must be one number or a (pose, appearance) pair, got {text!r}")
        return vals  # type: ignore[return-value]
    parts = text.split(":")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"guidance {text!r}: expected a number like 2 or a pose:appearance pair like 1.5:3"
        ) from None
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"guidance {text!r}: weights must be finite numbers")
    if len(vals) == 1:
        return vals[0], vals[0]
    if len(vals) != 2:
        raise ValueError(f"guidance {text!r}: expected a number like 2 or a pose:appearance pair like 1.5:3")
    return vals[0], vals[1]


def parse_sweep(items: Sequence[str]) -> dict[str, list]:
    """``["steps=10,20,50", "guidance=1,2,1.5:3"]`` → ``{"steps": [10, 20, 50], "guidance": [(1, 1), …]}``."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or key not in ("steps", "guidance") or not values.strip():
            raise ValueError(
                f"--sweep {item!r}: expected steps=N,N,... or guidance=G,G,... (G = w or w_pose:w_app)"
            )
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if key == "steps":
            try:
                grid[key] = [int(v) for v in vals]
            except ValueError:
                raise ValueError(f"--sweep {item!r}: steps must be integers") from None
            if any(v < 1 for v in grid[key]):
                raise ValueError(f"--sweep {item!r}: steps must be >= 1")
        else:
            grid[key] = [parse_guidance(v) for v in vals]
    return grid


#: the keys of one ``--setting`` row (:func:`parse_setting`)
SETTING_KEYS: tuple[str, ...] = ("generator", "sampler", "steps", "guidance")


def parse_setting(text: str) -> dict[str, Any]:
    """``"generator=teacher,sampler=euler,steps=2,guidance=1"`` → one row of the report's settings table
    (``EvaluateConfig.settings``). Any key may be left out: ``generator`` is then the evaluated one, and
    ``sampler`` / ``steps`` / ``guidance`` that generator's default; guidance is ``w`` or ``w_pose:w_app``."""
    row: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in SETTING_KEYS or not value:
            raise ValueError(
                f"--setting {text!r}: expected KEY=VALUE pairs joined by commas, keys {', '.join(SETTING_KEYS)} "
                "(e.g. sampler=few-step,steps=1 or generator=teacher,sampler=dpmsolver++,steps=20,guidance=2)"
            )
        if key in row:
            raise ValueError(f"--setting {text!r}: {key} given twice")
        if key == "steps":
            try:
                row[key] = int(value)
            except ValueError:
                raise ValueError(f"--setting {text!r}: steps must be an integer") from None
            if row[key] < 1:
                raise ValueError(f"--setting {text!r}: steps must be >= 1")
        elif key == "guidance":
            row[key] = parse_guidance(value)
        else:
            row[key] = value
    return row


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------
def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    return obj


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"


def _better(higher: bool | None) -> str:
    return "1 = real" if higher is None else ("higher is better" if higher else "lower is better")


def _arrow(higher: bool | None) -> str:
    return "→ 1" if higher is None else ("↑" if higher else "↓")


def _to_pil(t: torch.Tensor, scale: int) -> Image.Image:
    im = tensor01_to_pil(t)
    return im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) if scale > 1 else im


def write_sheet(
    path: Path,
    source: torch.Tensor,
    target: torch.Tensor,
    target_kps: np.ndarray,
    columns: Mapping[str, torch.Tensor],
    rows: int = 8,
    real_label: str = "real target",
) -> None:
    """PNG grid, one row per pair: source | target pose | each generated set (``columns``) | real target.

    ``real_label`` names the last column (``target``'s images). Small images are enlarged by an integer
    factor (nearest neighbour, so no detail is invented) to at least 160 px high; the skeleton is drawn at
    the enlarged size so it stays legible.
    """
    n = min(rows, len(target))
    h, w = (int(v) for v in target.shape[-2:])
    scale = max(1, math.ceil(160 / h))
    ch, cw = h * scale, w * scale
    skel = skeleton_tensor(resize_keypoints(target_kps[:n], (h, w), (ch, cw)), ch, cw)
    cols: dict[str, tuple[torch.Tensor, int]] = {"source": (source[:n], scale), "target pose": (skel, 1)}
    cols.update({k: (v[:n], scale) for k, v in columns.items()})
    cols[real_label] = (target[:n], scale)
    head, gap = 14, 4
    sheet = Image.new("RGB", ((cw + gap) * len(cols), head + (ch + gap) * n), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, (label, (ims, s)) in enumerate(cols.items()):
        x = c * (cw + gap)
        draw.text((x + 2, 1), label[: max(4, cw // 6)], fill=(0, 0, 0))
        for r in range(n):
            sheet.paste(_to_pil(ims[r], s), (x, head + r * (ch + gap)))
    atomic_save(path, lambda tmp: sheet.save(tmp, format="PNG"))


def write_sweep_plot(
    path: Path, rows: Sequence[Mapping[str, Any]], references: Mapping[str, Mapping[str, Any]] | None = None
) -> None:
    """One panel per metric: metric vs sampling steps, one line per guidance setting.

    ``references`` (e.g. the ceiling and floor systems) are drawn as horizontal dashed lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def ok(v: Any) -> bool:
        return isinstance(v, (int, float)) and math.isfinite(v)

    keys = [k for k in METRICS if any(ok(r.get(k)) for r in rows)]
    cols = min(3, max(1, len(keys)))
    nrows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    guidances = sorted({tuple(r["guidance"]) for r in rows})
    steps = sorted({int(r["steps"]) for r in rows})
    for ax, key in zip(axes.flat, keys):
        label, higher = METRICS[key]
        for g in guidances:
            pts = sorted((r["steps"], r[key]) for r in rows if tuple(r["guidance"]) == g and ok(r.get(key)))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"guidance {g[0]:g}:{g[1]:g}")
        for (name, ref), style in zip((references or {}).items(), ("--", ":", "-.")):
            if ok(ref.get(key)):
                ax.axhline(ref[key], color="grey", linestyle=style, linewidth=1, label=name)
        ax.set_title(f"{label} ({_better(higher)})", fontsize=9)
        ax.set_xlabel("sampling steps")
        ax.set_xticks(steps)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    if keys:
        axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def metric_labels(result: Mapping[str, Any]) -> dict[str, str]:
    """The report's label of each metric: :data:`METRICS`' labels, and with two re-ID judges their
    rank-1 / mAP rows tagged with each judge's architecture (e.g. ``re-ID rank-1 [osnet_x0_25]``)."""
    labels = {k: label for k, (label, _) in METRICS.items()}
    judges = result.get("reid_judges") or {}
    if "independent" in judges:
        for role, suffix in (("first", ""), ("independent", "_independent")):
            for key in ("rank1", "mAP"):
                labels[key + suffix] += f" [{judges[role]['architecture']}]"
    return labels


def _judge_lines(result: Mapping[str, Any]) -> list[str]:
    """The two re-ID judges and whether they agree (with two judges only): a warning line when they do
    not, then what each judge is."""
    judges, agree = result.get("reid_judges") or {}, result.get("reid_agreement")
    if agree is None or "independent" not in judges:
        return []
    lines = [""]
    if agree.get("warning"):
        lines.append(f"**WARNING: {agree['warning']}**")
    elif agree.get("gap") is None or not math.isfinite(agree["gap"]):
        lines.append(f"Re-ID judges' agreement {agree.get('note', 'not computed')}.")
    else:
        lines.append(
            f"The two re-ID judges agree on the trained generator: gap {agree['gap']:.2f} <= "
            f"{agree['threshold']:g} (shares of the ceiling's {' and '.join(agree['metrics'])})."
        )
    lines += ["", "Re-ID judges:", ""]
    for role, info in judges.items():
        where = (
            f"`{info['checkpoint']}` (sha256 {info['sha256']})" if info.get("checkpoint") else "a callable"
        )
        seed = f", seed {info['seed']}" if info.get("seed") is not None else ""
        lines.append(f"- {role}: {info['architecture']}{seed}, {where}")
    return lines


def _setting_of(d: Mapping[str, Any]) -> tuple[Any, ...]:
    """``(steps, sampler, guidance)`` of a config or a checkpoint's defaults, comparable."""
    return int(d["steps"]), str(d["sampler"]), tuple(float(g) for g in d["guidance"])


def render_markdown(result: Mapping[str, Any]) -> str:
    """The human-readable report."""
    cfg, systems = result["config"], result["systems"]
    labels = metric_labels(result)
    names = list(systems)
    own = cfg.get("checkpoint_sampling")
    own_text = " (the checkpoint's default)" if own and _setting_of(own) == _setting_of(cfg) else ""
    lines = [
        "# Generator quality",
        "",
        f"Generator: `{cfg['generator']}` ({cfg['image_size'][0]}x{cfg['image_size'][1]}), sampler "
        f"{cfg['sampler']}, {cfg['steps']} steps, guidance pose:appearance {cfg['guidance'][0]:g}:{cfg['guidance'][1]:g}"
        f"{own_text}, seed {cfg['seed']}.",
        f"Data: `{cfg['data']}`; pairs from {result['data']['pairs_origin']}: {result['data']['pairs_used']} used "
        f"of {result['data']['pairs_total']} (skipped: {result['data']['skipped']}).",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, (_, higher) in METRICS.items():
        if any(key in s for s in systems.values()):
            arrow = _arrow(higher)
            lines.append(
                f"| {labels[key]} {arrow} | " + " | ".join(_fmt(systems[n].get(key)) for n in names) + " |"
            )
    lines += _judge_lines(result)
    lines += ["", "Metric status:", ""]
    lines += [f"- **{k}**: {v}" for k, v in result["metric_status"].items()]
    for k, v in result.get("reference", {}).items():
        lines.append(f"- {k}: {v}")
    lines += _realism_check_lines(result.get("realism_check"))
    if result.get("sweep"):
        keys = [k for k in METRICS if any(k in r for r in result["sweep"])]
        lines += [
            "",
            "## Sweep (trained generator)",
            "",
            "| steps | guidance | " + " | ".join(labels[k] for k in keys) + " |",
        ]
        lines.append("|---|---|" + "---|" * len(keys))
        for r in result["sweep"]:
            g = r["guidance"]
            lines.append(
                f"| {r['steps']} | {g[0]:g}:{g[1]:g} | " + " | ".join(_fmt(r.get(k)) for k in keys) + " |"
            )
        lines += ["", "![sweep](sweep.png)"]
    lines += _settings_lines(result, labels)
    lines += [
        "",
        "![sheet: source | target pose | generated | ground truth](sheet.png)",
        "",
        "Definitions: SSIM uses a Gaussian 11x11 window (sigma 1.5) on [0,1] images; Mask-* multiply both "
        "images by a body mask drawn from the target pose (thick limbs, torso, head, dilated). FID is against "
        "real training images. PCKh@0.5: a target joint is correct when the joint detected on the image is "
        "within 0.5 x head length, head length = 2 x neck-to-nose distance (0.5 x neck-to-hip when neck or "
        "nose is missing); an undetected joint is wrong. Identity: cosine of the re-ID feature to the source "
        "identity's gallery centroid (the pair's own images left out) vs the nearest other identity's "
        "centroid; re-ID uses the images as queries against the real gallery with the target image's camera, "
        "the pair's own source and target images removed from its gallery (a copy of either must not count "
        "as a match). The ceiling scores the real target images as if generated. SSIM and PCKh reward blur; "
        "the realism metrics do not: a Fréchet distance (||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), "
        "Dowson & Landau 1982, as FID) between the scored images and real test images of people (the pairs' "
        "own images left out, so the ceiling is real vs real), in the re-ID model's pooled features and in "
        "the pose judge's globally pooled stage-3 features (0 = same statistics; it grows with few images, "
        "so compare rows, which have the same count); sharpness = mean |Laplacian| (4-neighbour kernel) of "
        "the scored images over that of the real targets (1 = as sharp as real, below 1 = blurrier, above 1 "
        "= noisier). With an independent re-ID judge (another architecture and seed trained on the same real "
        "images; a generator trained against the first judge can learn to fool it), its rank-1 and mAP are "
        "scored the same way, and the judges' gap of a generated row is the largest |share under the first "
        "judge - share under the independent one| over rank-1 and mAP, a share being the row's value over the "
        "ceiling's under the same judge; the report warns when the trained row's gap exceeds the threshold.",
    ]
    return "\n".join(lines) + "\n"


def _settings_lines(result: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """The settings table (``--setting`` rows): one row per generator and sampling setting, on the same
    pairs, noise and judges as the systems above."""
    rows = result.get("settings")
    if not rows:
        return []
    others = result["config"].get("other_generators") or {}
    keys = [k for k in METRICS if any(k in r for r in rows)]
    lines = ["", "## Settings (same pairs, noise and judges)", ""]
    if others:
        lines += [f"- `{name}`: `{what}`" for name, what in others.items()] + [""]
    lines += [
        "| generator | sampler | steps | guidance | " + " | ".join(labels[k] for k in keys) + " |",
        "|---|---|---|---|" + "---|" * len(keys),
    ]
    for r in rows:
        g = r["guidance"]
        lines.append(
            f"| {r['generator']} | {r['sampler']} | {r['steps']} | {g[0]:g}:{g[1]:g} | "
            + " | ".join(_fmt(r.get(k)) for k in keys)
            + " |"
        )
    return lines


def _realism_check_lines(check: Mapping[str, Any] | None) -> list[str]:
    """The report's validation of the realism metrics (real targets vs a blurred copy vs noise)."""
    if not check:
        return []
    sets = ("real", "blurred", "noise")
    lines = [
        "",
        f"Realism check (the real targets, a copy blurred with sigma {check['blur_sigma_px']:g} px, uniform "
        f"noise, each scored as if generated): **{'passed' if check['trusted'] else 'FAILED'}** (trusted "
        "when real < blurred < noise in every Fréchet distance and the blurred sharpness is below 0.8).",
        "",
        "| metric | " + " | ".join(sets) + " |",
        "|---|---|---|---|",
    ]
    for key in ("fd_reid", "fd_judge", "sharpness_ratio"):
        if key in check:
            lines.append(f"| {METRICS[key][0]} | " + " | ".join(_fmt(check[key].get(s)) for s in sets) + " |")
    return lines


__all__ = [
    "METRICS",
    "metric_labels",
    "SETTING_KEYS",
    "parse_guidance",
    "parse_setting",
    "parse_sweep",
    "render_markdown",
    "to_jsonable",
    "write_sheet",
    "write_sweep_plot",
]
