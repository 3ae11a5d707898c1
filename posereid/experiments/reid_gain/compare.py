"""Several ``reid-gain`` runs (one generator each) in one table and plot (``posereid reid-gain-compare``,
whose command line is in :mod:`~posereid.experiments.reid_gain.cli`).

The protocol trains one generator family per run. To compare families, the later runs read the first
run's baseline and oracle cells (``reid-gain --baselines-from``), so every generator is scored against the
same ``strong`` and ``strong+oracle`` models; this module then puts each run's synthetic arm beside the
others, per kept fraction: the paired gain over ``strong`` with its 95 % interval, and the share of the
oracle's gain it recovers (ratio of the mean gains, Fieller's interval). Runs whose ``strong`` cells differ
are still compared, each against its own baseline, and the table says so.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from posereid.augment.manifest import manifest_paths, read_manifest
from posereid.experiments.reid_gain.config import (
    NOISE_ARM,
    NOISE_FILTERED_ARM,
    NOISE_SOFT_ARM,
    ORACLE_ARM,
    arm_extra,
    fraction_tag,
    is_filtered,
    is_soft,
    with_unrecorded,
)
from posereid.experiments.reid_gain.report import (
    Interval,
    cell_key,
    format_interval,
    format_share_of_means,
    paired_interval,
    read_run,
    summarize,
    summary_delta,
)
from posereid.models.io_utils import atomic_save, atomic_write
from posereid.reid_integration.soft_settings import describe_soft_weight

#: the floor's soft-label and filtered variants: rows beside the floor, from the first run that has them
_FLOOR_VARIANTS: dict[str, str] = {
    NOISE_SOFT_ARM: "pixel noise, soft labels",
    NOISE_FILTERED_ARM: "pixel noise, filtered",
}


@dataclass
class GainRun:
    """One ``reid-gain`` output folder: its saved settings, result rows and summary."""

    path: Path
    label: str
    settings: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    #: the label of the compared run whose oracle cells this run's shares use (:func:`lend_oracle`)
    oracle_from: str | None = None

    def strong_cells(self) -> dict[tuple[str, str, int], float]:
        """``strong`` mAP by cell: two runs with equal values here share their baseline models."""
        return {
            cell_key(r["fraction"], r["arm"], r["seed"]): float(r["mAP"])
            for r in self.rows
            if r["arm"] == "strong"
        }


def run_label(settings: dict[str, Any]) -> str:
    """``cfld `small`, 320 steps (lr 0.0003, kept)`` or ``given `generator-small```, from ``gain_config.json``."""
    if settings.get("generator"):
        return f"given `{Path(str(settings['generator'])).name}`"
    family = settings.get("generator_family", "pidm")
    options = "".join(f", {k}={v}" for k, v in (settings.get("generator_options") or {}).items())
    if settings.get("generator_identity_weight"):
        options += f", identity loss {settings['generator_identity_weight']:g}"
    return (
        f"{family} `{settings.get('generator_preset')}`{options}, {settings.get('generator_steps')} steps "
        f"(lr {settings.get('generator_lr')}, {settings.get('generator_data', 'kept')})"
    )


#: result columns that must hold finite numbers for a run to be compared
_FINITE_FIELDS = ("fraction", "mAP", "rank1", "rank5", "rank10")


def load_run(path: Path, label: str | None = None) -> GainRun:
    """Read one ``reid-gain --out`` folder; a clear error when it is not one, or when a result is not a
    finite number (``mAP = nan``: naming the file, its line and the cell)."""
    path = Path(path)
    settings, rows = read_run(path)
    for line, r in enumerate(rows, start=2):  # line 1 is the header
        bad = [k for k in _FINITE_FIELDS if isinstance(r.get(k), float) and not math.isfinite(r[k])]
        if bad:
            raise ValueError(
                f"{path / 'results.csv'} line {line}: {', '.join(f'{k}={r[k]}' for k in bad)} is not a finite "
                f"number (cell {r.get('fraction')} {r.get('arm')} seed {r.get('seed')}); the file is damaged "
                "or was edited: rerun that cell (delete its row and run reid-gain again)"
            )
    return GainRun(path, label or run_label(settings), settings, rows, summarize(rows))


def distinct_labels(runs: Sequence[GainRun]) -> list[GainRun]:
    """``runs`` with labels that tell them apart: runs sharing a label (two runs of one generator recipe)
    get their folder appended, ``label (folder)``, and a number if their folders' names are the same too."""
    out = list(runs)
    suffixes: tuple[Callable[[GainRun, int], str], ...] = (lambda r, _: r.path.name, lambda _, k: f"#{k}")
    for suffix in suffixes:
        counts, seen = Counter(r.label for r in out), Counter[str]()
        for i, r in enumerate(out):
            if counts[r.label] > 1:
                seen[r.label] += 1
                out[i] = replace(r, label=f"{r.label} ({suffix(r, seen[r.label])})")
    return out


def _synthetic_entries(run: GainRun) -> list[dict[str, Any]]:
    return [e for e in run.summary if arm_extra(e["arm"]) == "synthetic" and e["arm"].startswith("strong")]


def _same_baselines(a: dict[tuple[str, str, int], float], b: dict[tuple[str, str, int], float]) -> bool:
    """Whether two runs' ``strong`` cells agree wherever both have one (and they share at least one)."""
    common = a.keys() & b.keys()
    return bool(common) and all(a[k] == b[k] for k in common)


def _has_oracle(run: GainRun) -> bool:
    return any(r["arm"] == ORACLE_ARM for r in run.rows)


def lend_oracle(runs: Sequence[GainRun]) -> list[GainRun]:
    """``runs``, where a run without ``strong+oracle`` cells takes them from the first compared run that has them
    and the same ``strong`` cells (a run made with ``--baselines-from`` that did not ask for the oracle arm), so
    its arms get their shares of the oracle's gain; the borrowed rows are marked ``read_from``."""
    out = list(runs)
    for i, run in enumerate(out):
        if _has_oracle(run):
            continue
        donor = next(
            (d for d in runs if _has_oracle(d) and _same_baselines(run.strong_cells(), d.strong_cells())),
            None,
        )
        tags = {fraction_tag(r["fraction"]) for r in run.rows}
        lent = [] if donor is None else [
            {**r, "read_from": str(donor.path)} for r in donor.rows
            if r["arm"] == ORACLE_ARM and fraction_tag(r["fraction"]) in tags
        ]  # fmt: skip
        if lent:
            rows = [*run.rows, *lent]
            out[i] = replace(run, rows=rows, summary=summarize(rows), oracle_from=donor.label)
    return out


def arm_settings(run: GainRun, arm: str) -> str:
    """What else than the generator an arm's cells depend on, in words: a soft-label arm's weight, temperature
    and share of synthetic images per batch; a filtered arm's filter; ``""`` for the others."""
    s = with_unrecorded(run.settings)
    if is_soft(arm):
        ratio = s.get("soft_synthetic_ratio")
        mix = "uniform batches" if ratio is None else f"{100 * float(ratio):g} % of each batch"
        return f"{describe_soft_weight(s['soft_weight'])}, T = {float(s['soft_temperature']):g}, {mix}"
    if is_filtered(arm):
        return f"{s.get('filter_score')} ≥ {s.get('filter_threshold')}"
    return ""


def _share(entry: dict[str, Any]) -> Interval | None:
    """An entry's share of the oracle's mAP gain (ratio of means, Fieller), if it has an oracle."""
    return entry["share_mAP"].of_means if "share_mAP" in entry else None


def _share_cells(entry: dict[str, Any]) -> str:
    """The two share columns (mAP, rank-1) of a table row."""
    return " | ".join(
        format_share_of_means(entry[f"share_{m}"].of_means) if f"share_{m}" in entry else "– (no oracle)"
        for m in ("mAP", "rank1")
    )


def first_cells(runs: Sequence[GainRun], arm: str) -> dict[float, dict[str, Any]]:
    """Per kept fraction, the summary of ``arm`` from the first run that has it: the ``strong`` and oracle
    rows the table and the plot both show (runs built with ``--baselines-from`` share them; the first wins
    where an older run has more seeds)."""
    cells: dict[float, dict[str, Any]] = {}
    for run in runs:
        for e in run.summary:
            if e["arm"] == arm:
                cells.setdefault(e["fraction"], e)
    return cells


def _by_seed(rows: Sequence[dict[str, Any]], arm: str) -> dict[str, dict[int, float]]:
    """``arm``'s mAP per kept fraction (its tag) and seed."""
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["arm"] == arm:
            out.setdefault(fraction_tag(r["fraction"]), {})[int(r["seed"])] = float(r["mAP"])
    return out


def _first_by_seed(runs: Sequence[GainRun], arm: str) -> dict[str, dict[int, float]]:
    """Per kept fraction (its tag), ``arm``'s mAP by seed from the first run that has it there (the rows
    behind :func:`first_cells`): the floor's are what every other arm is paired with."""
    out: dict[str, dict[int, float]] = {}
    for run in runs:
        for tag, seeds in _by_seed(run.rows, arm).items():
            out.setdefault(tag, seeds)
    return out


def _vs_floor(values: dict[int, float], floor: dict[int, float] | None) -> str:
    """ΔmAP over the floor, paired by seed [95 % CI] verdict; ``–`` without a floor."""
    seeds = sorted(values.keys() & (floor or {}).keys())
    if not seeds:
        return "–"
    return format_interval(paired_interval([values[s] - floor[s] for s in seeds]))


def compare_table(runs: Sequence[GainRun]) -> str:
    """Markdown: per kept fraction, the strong baseline, the oracle's gain, then each run's synthetic arm
    (ΔmAP / Δrank-1 vs ``strong`` [95 % CI], verdict, recovered share of the oracle's gain)."""
    if not runs:
        raise ValueError("no run to compare")
    runs = lend_oracle(distinct_labels(runs))  # a row must say which run it is
    first = runs[0].strong_cells()
    shared = [r.label for r in runs[1:] if not _same_baselines(first, r.strong_cells())]
    lines = [
        "| kept | arm | generator | seeds | mAP | ΔmAP vs strong [95 % CI] | Δrank-1 vs strong [95 % CI] "
        "| ΔmAP vs the floor [95 % CI] | share of the oracle's gain, mAP [Fieller 95 %] | same, rank-1 |",
        "|---:|---|---|---:|---:|---|---|---|---|---|",
    ]
    floor_seeds, oracle_seeds = _first_by_seed(runs, NOISE_ARM), _first_by_seed(runs, ORACLE_ARM)
    fractions = sorted({e["fraction"] for r in runs for e in r.summary})
    bases, oracles = first_cells(runs, "strong"), first_cells(runs, ORACLE_ARM)
    floors = first_cells(runs, NOISE_ARM)
    for f in fractions:
        base, oracle = bases.get(f), oracles.get(f)
        kept, tag = f"{f * 100:.0f}%", fraction_tag(f)
        fl = floor_seeds.get(tag)
        if base is not None:
            lines.append(
                f"| {kept} | strong | – | {base['seeds']} | {base['mAP']:.1f} ± {base['mAP_std']:.1f} | – | – | – | – | – |"
            )
        if oracle is not None:
            lines.append(
                f"| {kept} | {ORACLE_ARM} | real renders | {oracle['seeds']} | {oracle['mAP']:.1f} ± "
                f"{oracle['mAP_std']:.1f} | {format_interval(summary_delta(oracle, 'mAP', 'strong'))} | "
                f"{format_interval(summary_delta(oracle, 'rank1', 'strong'))} | "
                f"{_vs_floor(oracle_seeds.get(tag, {}), fl)} | 1 | 1 |"
            )
        floor = floors.get(f)
        if floor is not None:
            lines.append(
                f"| {kept} | {NOISE_ARM} | pixel noise (the floor) | {floor['seeds']} | {floor['mAP']:.1f} ± "
                f"{floor['mAP_std']:.1f} | {format_interval(summary_delta(floor, 'mAP', 'strong'))} | "
                f"{format_interval(summary_delta(floor, 'rank1', 'strong'))} | – | {_share_cells(floor)} |"
            )
        for arm, what in _FLOOR_VARIANTS.items():
            shown: list[dict[int, float]] = []  # a variant run with other settings gets its own row
            for run in runs:
                seeds = _by_seed(run.rows, arm).get(tag)
                if not seeds or seeds in shown:
                    continue
                shown.append(seeds)
                e = next(e for e in run.summary if e["arm"] == arm and e["fraction"] == f)
                lines.append(
                    f"| {kept} | {arm} | {what} ({arm_settings(run, arm)}) | {e['seeds']} | {e['mAP']:.1f} ± "
                    f"{e['mAP_std']:.1f} | {format_interval(summary_delta(e, 'mAP', 'strong'))} | "
                    f"{format_interval(summary_delta(e, 'rank1', 'strong'))} | {_vs_floor(seeds, fl)} | "
                    f"{_share_cells(e)} |"
                )
        for run in runs:
            for e in _synthetic_entries(run):
                if e["fraction"] != f:
                    continue
                extra = arm_settings(run, e["arm"])
                lines.append(
                    f"| {kept} | {e['arm']} | {run.label}{f' ({extra})' if extra else ''} | {e['seeds']} | {e['mAP']:.1f} ± {e['mAP_std']:.1f} | "
                    f"{format_interval(summary_delta(e, 'mAP', 'strong'))} | {format_interval(summary_delta(e, 'rank1', 'strong'))} "
                    f"| {_vs_floor(_by_seed(run.rows, e['arm']).get(tag, {}), fl)} | {_share_cells(e)} |"
                )
    lines.append(
        "\nΔ: mean of the per-seed paired differences with the run's own `strong` cells [95 % t-interval]; "
        "*settled* only when the interval excludes 0; vs the floor: paired with the first run's "
        f"`{NOISE_ARM}` cells (above 0: better than as many images of colour-matched noise). "
        "Share: mean gain / mean oracle gain, with Fieller's "
        "interval (every ratio r for which the paired (arm − strong) − r·(oracle − strong) has a t-interval "
        "containing 0)."
        + "".join(
            f" {', '.join(r.label for r in runs if r.oracle_from == donor)}: shares from the oracle cells of "
            f"{donor} (the same `strong` cells)."
            for donor in dict.fromkeys(r.oracle_from for r in runs if r.oracle_from)
        )
    )
    lines.append(
        "\nAll runs share the first run's `strong` models (the same values in every cell both have)."
        if not shared
        else "\n**Not the same baseline models**: " + ", ".join(shared) + " have other `strong` cells than "
        f"{runs[0].label}; each is compared with its own."
    )
    return "\n".join(lines) + "\n"


def variant_table(runs: Sequence[GainRun]) -> str:
    """Markdown: each soft-label or filtered arm against the hard-label arm of the same generator (its own run's
    ``strong+synthetic`` / ``strong+noise``, else that of a compared run with the same generator settings and
    ``strong`` cells), ΔmAP paired by seed [95 % CI]; ``""`` when no arm has such a partner."""
    runs = distinct_labels(runs)

    def generator_key(run: GainRun) -> tuple[str, ...]:
        keys = ("generator", "generator_family", "generator_preset", "generator_options", "generator_steps",
                "generator_lr", "generator_data", "sampler", "steps", "guidance", "per_image", "pose_sampling")  # fmt: skip
        return tuple(repr(run.settings.get(k)) for k in keys)

    def hard_arm(arm: str) -> str:
        return NOISE_ARM if arm_extra(arm) == "noise" else "strong+synthetic"

    lines: list[str] = []
    shown: set[tuple[str, str, tuple[float, ...]]] = set()  # a variant another run read in is shown once
    for run in runs:
        variants = sorted({r["arm"] for r in run.rows if is_soft(r["arm"]) or is_filtered(r["arm"])})
        for arm in variants:
            hard = hard_arm(arm)
            partners = [run] + [
                o for o in runs if o is not run and (arm_extra(arm) == "noise" or generator_key(o) == generator_key(run))
                and _same_baselines(run.strong_cells(), o.strong_cells())
            ]  # fmt: skip
            partner = next((o for o in partners if any(r["arm"] == hard for r in o.rows)), None)
            if partner is None:
                continue
            mine, theirs = _by_seed(run.rows, arm), _by_seed(partner.rows, hard)
            for tag in sorted(mine, key=float):
                seeds = sorted(mine[tag].keys() & theirs.get(tag, {}).keys())
                key = (tag, arm, tuple(mine[tag][s] for s in sorted(mine[tag])))
                if not seeds or key in shown:
                    continue
                shown.add(key)
                diff = paired_interval([mine[tag][s] - theirs[tag][s] for s in seeds])
                where = "" if partner is run else f" ({partner.label})"
                lines.append(
                    f"| {100 * float(tag):.0f}% | {run.label} | {arm} ({arm_settings(run, arm)}) | {hard}{where} | "
                    f"{len(seeds)} | {format_interval(diff)} |"
                )
    if not lines:
        return ""
    return (
        "| kept | run | arm | against | seeds | ΔmAP vs the hard-label arm [95 % CI] |\n"
        "|---:|---|---|---|---:|---|\n" + "\n".join(lines) + "\n"
    )


def _clip(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi)


def plot_series(runs: Sequence[GainRun]) -> list[tuple[str, list[tuple[float, Interval, Interval | None]]]]:
    """The plot's lines: ``(label, [(fraction, ΔmAP vs strong, share of the oracle's gain), ...])`` for the
    oracle, the floor and each run's synthetic arms (one line per arm, labelled with it when a run has several)."""
    series: list[tuple[str, list[tuple[float, Interval, Interval | None]]]] = []
    oracle = first_cells(runs, ORACLE_ARM)
    if oracle:
        series.append(
            (ORACLE_ARM, [(f, summary_delta(e, "mAP", "strong"), None) for f, e in sorted(oracle.items())])
        )
    floor = first_cells(runs, NOISE_ARM)
    if floor:
        series.append(
            (
                f"{NOISE_ARM} (floor)",
                [(f, summary_delta(e, "mAP", "strong"), _share(e)) for f, e in sorted(floor.items())],
            )
        )
    for run in lend_oracle(runs):
        entries = _synthetic_entries(run)
        arms = sorted({e["arm"] for e in entries})
        for arm in arms:  # one series per arm: a run's hard, soft and filtered arms are separate lines
            pts = [
                (e["fraction"], summary_delta(e, "mAP", "strong"), _share(e))
                for e in entries
                if e["arm"] == arm
            ]
            series.append(
                (run.label if len(arms) == 1 else f"{run.label}: {arm}", sorted(pts, key=lambda p: p[0]))
            )
    return series


def plot_compare(runs: Sequence[GainRun], path: Path, title: str = "") -> None:
    """ΔmAP vs ``strong`` by kept fraction for the oracle and each run's synthetic arm (95 % CI, filled =
    settled), and beside it the recovered share of the oracle's gain (ratio of means, Fieller's interval,
    clipped to [-1, 2] where it is unbounded); PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    series = plot_series(runs)
    width = 1.2
    for i, (label, pts) in enumerate(series):
        # tab10 without its grey (C7): grey and black are the floor's and the oracle's
        colour = {ORACLE_ARM: "k", f"{NOISE_ARM} (floor)": "0.55"}.get(
            label, f"C{[0, 1, 2, 3, 4, 5, 6, 8, 9][i % 9]}"
        )
        offset = (i - (len(series) - 1) / 2) * width
        for axis, which in ((ax, 1), (bx, 2)):
            xs, ys, lo, hi, filled = [], [], [], [], []
            clip = (lambda v: _clip(v, -1.0, 2.0)) if which == 2 else (lambda v: v)
            for p in pts:
                iv = p[which]
                if iv is None or iv.n == 0:
                    continue
                xs.append(p[0] * 100 + offset)
                ys.append(clip(iv.mean))  # a share far outside [-1, 2] is drawn at the edge
                lo.append(clip(iv.lo))
                hi.append(clip(iv.hi))
                filled.append(iv.settled)
            if not xs:
                continue
            axis.plot(xs, ys, "-", color=colour, alpha=0.5)
            for x, y, a, b, s in zip(xs, ys, lo, hi, filled):
                err = None if math.isnan(a) else [[max(0.0, y - a)], [max(0.0, b - y)]]
                axis.errorbar([x], [y], yerr=err, marker="o", capsize=4, color=colour,
                              markerfacecolor=colour if s else "white")  # fmt: skip
            axis.plot([], [], "o-", color=colour, label=label)
    ax.axhline(0.0, color="k", linewidth=0.8)
    ax.set_xlabel("train images kept (%)")
    ax.set_ylabel("ΔmAP vs strong (paired, 95 % CI)")
    ax.set_title("filled = settled (the interval excludes 0)", fontsize=8)
    if ax.get_legend_handles_labels()[0]:  # runs without a strong arm have nothing to draw
        ax.legend(fontsize=7)
    for y in (0.0, 0.5, 1.0):
        bx.axhline(y, color="k", linewidth=0.8 if y != 0.5 else 0.5, linestyle="-" if y != 0.5 else ":")
    bx.set_xlabel("train images kept (%)")
    bx.set_ylabel("share of the oracle's mAP gain (Fieller 95 %)")
    bx.set_title("ratio of mean gains; values and intervals clipped to [-1, 2]", fontsize=8)
    for axis in (ax, bx):
        axis.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def _work_dir(run: GainRun, kind: str, fraction: float) -> Path:
    return run.path / "work" / f"{kind}-{fraction_tag(fraction)}"


def sheet_fraction(runs: Sequence[GainRun]) -> float | None:
    """The largest kept fraction whose synthetic folder every run that kept its ``work/`` has (``None``:
    no such fraction, or no run kept its images)."""
    with_work = [r for r in runs if (r.path / "work").is_dir()]
    common = [
        f for f in sorted({e["fraction"] for r in with_work for e in r.summary}, reverse=True)
        if all(manifest_paths(_work_dir(r, "synthetic", f)) for r in with_work)
    ]  # fmt: skip
    return common[0] if with_work and common else None


def write_compare_sheet(runs: Sequence[GainRun], fraction: float, path: Path, rows: int = 8) -> None:
    """PNG: the same generation requests (source image and target pose) answered by each run's generator,
    beside a real render of that person in a view the train split hides (the oracle), when a run has it.

    Rows are spread over the first run's manifest; a run without that image leaves its column out.
    """
    import numpy as np
    import torch

    from posereid.experiments.quality.report import write_sheet
    from posereid.experiments.synthetic.dataset import oracle_name
    from posereid.models.images import pil_to_tensor01
    from posereid.models.pose import resize_keypoints
    from posereid.reid_integration.market1501 import load_image

    with_work = [r for r in runs if manifest_paths(_work_dir(r, "synthetic", fraction))]
    if not with_work:
        raise FileNotFoundError(f"no run has a synthetic folder for fraction {fraction_tag(fraction)}")
    synthetic = _work_dir(with_work[0], "synthetic", fraction)
    entries = read_manifest(synthetic)  # the checked reader: torn lines dropped, unsafe names refused
    picked = [entries[i] for i in np.linspace(0, len(entries) - 1, min(rows, len(entries))).astype(int)]
    first = load_image(synthetic / "bounding_box_train" / picked[0]["name"])
    hw = (first.height, first.width)

    def stack(paths: list[Path]) -> torch.Tensor:
        return torch.stack([pil_to_tensor01(load_image(p, size=hw)) for p in paths])

    source = stack(
        [_work_dir(with_work[0], "subset", fraction) / "bounding_box_train" / e["source"] for e in picked]
    )
    kps = np.stack(
        [resize_keypoints(np.asarray(e["target_pose"]), tuple(e["pose_frame"]), hw) for e in picked]
    )
    columns: dict[str, torch.Tensor] = {}
    for run in with_work:
        files = [_work_dir(run, "synthetic", fraction) / "bounding_box_train" / e["name"] for e in picked]
        if all(f.is_file() for f in files):
            columns[run.label] = stack(files)
    oracle = [
        [
            _work_dir(r, "oracle", fraction) / "bounding_box_train" / oracle_name(e["source"], e["k"])
            for e in picked
        ]
        for r in runs
    ]
    real = next((files for files in oracle if all(f.is_file() for f in files)), None)
    # no oracle folder: the last column repeats the source, and says so
    last, label = (source, "source (no oracle)") if real is None else (stack(real), "oracle (real)")
    write_sheet(path, source, last, kps, columns, rows=len(picked), real_label=label)


def write_comparison(runs: Sequence[GainRun], out: Path) -> dict[str, Path]:
    """``comparison.md``, ``comparison.png`` and, when runs kept their ``work/`` folders, ``samples.png``
    (:func:`write_compare_sheet` at :func:`sheet_fraction`) in ``out``; returns their paths. Runs sharing
    a label are told apart by :func:`distinct_labels` everywhere (header, table, plot, sheet)."""
    runs = distinct_labels(runs)
    out.mkdir(parents=True, exist_ok=True)
    md, png = out / "comparison.md", out / "comparison.png"
    header = "# Re-ID gain: generators compared\n\nRuns:\n" + "".join(
        f"- {r.label}: `{r.path}` ({len(r.rows)} cells; fractions "
        f"{', '.join(fraction_tag(f) for f in sorted({e['fraction'] for e in r.summary}))})\n"
        for r in runs
    )
    variants = variant_table(runs)
    with atomic_write(md, "w", encoding="utf-8") as fh:
        fh.write(header + "\n" + compare_table(runs))
        if variants:
            fh.write(
                "\n## Soft-label and filtered arms against the same generator's hard labels\n\n" + variants
            )
    plot_compare(runs, png, title="re-ID gain over the strong baseline, by generator")
    paths = {"markdown": md, "plot": png}
    fraction = sheet_fraction(runs)
    if fraction is not None:
        paths["samples"] = out / "samples.png"
        write_compare_sheet(runs, fraction, paths["samples"])
    return paths


__all__ = [
    "GainRun",
    "arm_settings",
    "compare_table",
    "distinct_labels",
    "lend_oracle",
    "load_run",
    "plot_compare",
    "plot_series",
    "run_label",
    "sheet_fraction",
    "variant_table",
    "write_compare_sheet",
    "write_comparison",
]
