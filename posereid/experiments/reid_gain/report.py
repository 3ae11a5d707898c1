"""Results of the re-ID gain protocol: ``results.csv`` rows, their summary, markdown table and plot.

Used by :mod:`~posereid.experiments.reid_gain.protocol` (which runs the protocol and imports this module,
never the reverse): reading/writing the one-row-per-cell CSV, the mean ± std and paired-delta summary over seeds,
and ``results.md`` / ``results.png``. Only the settings from :mod:`~posereid.experiments.reid_gain.config`
are needed here. Every public name here is also importable from :mod:`posereid.experiments.reid_gain`.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from posereid.experiments.reid_gain.config import ARMS, BASELINES, GainConfig, fraction_tag
from posereid.models.io_utils import atomic_save, atomic_write

#: results.csv columns, in order.
CSV_FIELDS: tuple[str, ...] = (
    "fraction", "arm", "seed", "mAP", "rank1", "rank5", "rank10", "images", "identities",
    "synthetic_images", "steps", "batch_size", "wall_s", "reid_model", "generator",
)  # fmt: skip


def cell_key(fraction: float | str, arm: str, seed: int | str) -> tuple[str, str, int]:
    """The identity of one result row: ``(fraction tag, arm, seed)``."""
    return fraction_tag(float(fraction)), str(arm), int(seed)


_INT_FIELDS = ("seed", "images", "identities", "synthetic_images", "steps")
_FLOAT_FIELDS = ("fraction", "mAP", "rank1", "rank5", "rank10", "wall_s")


def read_results(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``results.csv`` (numbers parsed); ``[]`` if the file does not exist."""
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [
            f for f in ("fraction", "arm", "seed", "mAP", "rank1") if f not in (reader.fieldnames or [])
        ]
        if missing:
            raise ValueError(f"{path} line 1: not a results file (missing column(s) {', '.join(missing)})")
        for row in reader:
            try:
                out: dict[str, Any] = dict(row)
                for k in _INT_FIELDS:
                    if row.get(k) not in (None, ""):
                        out[k] = int(float(row[k]))
                for k in _FLOAT_FIELDS:
                    if row.get(k) not in (None, ""):
                        out[k] = float(row[k])
            except ValueError as exc:
                raise ValueError(f"{path} line {reader.line_num}: {exc}") from None
            rows.append(out)
    return rows


def write_results(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows (sorted by fraction, arm order, seed) as ``results.csv``; atomic."""
    order = {a: i for i, a in enumerate(ARMS)}
    rows = sorted(rows, key=lambda r: (float(r["fraction"]), order.get(r["arm"], 99), int(r["seed"])))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {k: (f"{v:.4f}" if isinstance(v, float) and k != "fraction" else v) for k, v in r.items()}
        )
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(buf.getvalue())


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fraction × arm: seeds, mean ± std of mAP and rank-1, and deltas vs ``plain`` / ``strong``.

    A delta is the mean over the seeds both arms have of the per-seed difference (paired: same seed, same
    subset), with the std of those differences; ``nan`` when no seed is shared.
    """
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        f, a, s = cell_key(r["fraction"], r["arm"], r["seed"])
        cells[(f, a)][s] = r
    order = {a: i for i, a in enumerate(ARMS)}
    out: list[dict[str, Any]] = []
    for f, a in sorted(cells, key=lambda k: (float(k[0]), order.get(k[1], 99))):
        by_seed = cells[(f, a)]
        first = next(iter(by_seed.values()))
        entry: dict[str, Any] = {
            "fraction": float(f), "arm": a, "seeds": len(by_seed),
            "images": first.get("images"), "synthetic_images": first.get("synthetic_images"),
        }  # fmt: skip
        for metric in ("mAP", "rank1"):
            entry[metric], entry[f"{metric}_std"] = _mean_std([float(r[metric]) for r in by_seed.values()])
            for base in BASELINES:
                ref = cells.get((f, base), {})
                diffs = [float(by_seed[s][metric]) - float(ref[s][metric]) for s in by_seed if s in ref]
                entry[f"d_{metric}_{base}"], entry[f"d_{metric}_{base}_std"] = _mean_std(diffs)
        out.append(entry)
    return out


def _pm(mean: float, std: float, signed: bool = False) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:+.1f} ± {std:.1f}" if signed else f"{mean:.1f} ± {std:.1f}"


def markdown_table(summary: Sequence[dict[str, Any]], header: str = "") -> str:
    """The summary as a markdown table (metrics in %, mean ± std over seeds; deltas paired by seed)."""
    lines = [header.rstrip() + "\n"] if header else []
    lines += [
        "| kept | arm | seeds | images (+synthetic) | mAP | rank-1 | ΔmAP vs plain | ΔmAP vs strong "
        "| Δrank-1 vs plain | Δrank-1 vs strong |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in summary:
        syn = e.get("synthetic_images") or 0
        imgs = f"{e['images']}" + (f" (+{syn})" if syn else "")
        deltas = []
        for metric in ("mAP", "rank1"):
            for base in BASELINES:
                same = e["arm"] == base
                deltas.append(
                    "–" if same else _pm(e[f"d_{metric}_{base}"], e[f"d_{metric}_{base}_std"], True)
                )
        lines.append(
            f"| {e['fraction'] * 100:.0f}% | {e['arm']} | {e['seeds']} | {imgs} | {_pm(e['mAP'], e['mAP_std'])} "
            f"| {_pm(e['rank1'], e['rank1_std'])} | " + " | ".join(deltas) + " |"
        )
    return "\n".join(lines) + "\n"


def plot_results(summary: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """mAP and rank-1 vs kept fraction, one line per arm with ±std error bars; PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if any(e["arm"] == a for e in summary)]
    fractions = sorted({e["fraction"] for e in summary})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric, label in zip(axes, ("mAP", "rank1"), ("mAP (%)", "rank-1 (%)")):
        if len(fractions) == 1:  # one fraction: bars per arm (a line needs two points)
            pts = [next(e for e in summary if e["arm"] == a) for a in arms]
            colours = [f"C{i}" for i in range(len(arms))]
            ax.bar(
                range(len(arms)),
                [e[metric] for e in pts],
                yerr=[e[f"{metric}_std"] for e in pts],
                capsize=4,
                color=colours,
                label=arms,
            )
            ax.set_xticks(range(len(arms)), arms, rotation=15, fontsize=8)
            ax.set_xlabel(f"arm ({fractions[0] * 100:.0f}% of the train images kept)")
        else:
            for arm in arms:
                pts = sorted(
                    (e["fraction"], e[metric], e[f"{metric}_std"]) for e in summary if e["arm"] == arm
                )
                ax.errorbar(
                    [p[0] * 100 for p in pts],
                    [p[1] for p in pts],
                    yerr=[p[2] for p in pts],
                    marker="o",
                    capsize=3,
                    linestyle="--" if "synthetic" not in arm else "-",
                    label=arm,
                )
            ax.set_xlabel("train images kept (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def write_reports(config: GainConfig, rows: Sequence[dict[str, Any]]) -> dict[str, Path]:
    """``results.md`` and ``results.png`` from the CSV rows; returns their paths."""
    summary = summarize(rows)
    md_path, png_path = config.out / "results.md", config.out / "results.png"
    gen = config.generator_source()
    gen_text = {
        "kept": f"trained on the kept fraction only (leakage-free), preset `{config.generator_preset}`, "
        f"{config.generator_steps} steps",
        "full": f"trained on ALL train images (leaky, PIDM's setting), preset `{config.generator_preset}`, "
        f"{config.generator_steps} steps",
    }.get(gen, f"given checkpoint `{config.generator}`")
    header = (
        "# Re-ID gain\n\n"
        f"- data: `{config.data}`; re-ID model `{config.reid_model}` at {config.height}x{config.width}, "
        f"{config.reid_steps} optimisation steps in EVERY run (batch {config.reid_batch_size})\n"
        f"- generator: {gen_text}; {config.per_image} image(s) per kept image, `{config.sampler}` "
        f"{config.steps} steps, guidance {tuple(config.guidance)}, pose sampling `{config.pose_sampling}`; "
        + (
            "batches sample real and synthetic images uniformly\n"
            if config.synthetic_ratio is None
            else f"{100 * config.synthetic_ratio:.0f} % of each batch synthetic (in expectation)\n"
        )
        + f"- subset seed {config.subset_seed}; metrics in %, mean ± std over seeds; deltas are paired by seed\n"
    )
    with atomic_write(md_path, "w", encoding="utf-8") as fh:
        fh.write(markdown_table(summary, header))
    if summary:
        plot_results(
            summary, png_path, title=f"{config.reid_model}, {config.reid_steps} steps, generator: {gen}"
        )
    return {"markdown": md_path, "plot": png_path, "csv": config.out / "results.csv"}
