"""Results of the re-ID gain protocol: ``results.csv`` rows, their summary, markdown table and plot.

Used by :mod:`~posereid.experiments.reid_gain.protocol` (which runs the protocol and imports this module,
never the reverse): reading/writing the one-row-per-cell CSV, the mean ± std and paired-delta summary over seeds,
and ``results.md`` / ``results.png``. Only the settings from :mod:`~posereid.experiments.reid_gain.config`
are needed here. Every public name here is also importable from :mod:`posereid.experiments.reid_gain`.

**Statistics.** Arms are compared by paired per-seed differences (same seed, same subset): their mean with
a two-sided 95 % Student-t interval on ``n - 1`` degrees of freedom (:func:`paired_interval`). A
comparison is called *settled* only when that interval excludes 0 (:func:`verdict`); one seed gives no
interval and is never settled. With an oracle arm, every synthetic arm is also reported as the share of
the oracle's gain over ``strong`` it recovers, per seed, ``(arm - strong) / (oracle - strong)``, with the
same interval over seeds (:func:`recovered_share`), and as the ratio of the mean gains with Fieller's
interval (:func:`share_of_mean_gains`), which a seed with an oracle gain near 0 cannot blow up. No
correction for the number of comparisons is made.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from posereid.experiments.reid_gain.config import (
    ARMS,
    BASELINES,
    NOISE_ARM,
    NOISE_SOFT_ARM,
    ORACLE_ARM,
    SOFT_ARM,
    GainConfig,
    arm_extra,
    fraction_tag,
    is_filtered,
)
from posereid.models.io_utils import atomic_save, atomic_write

#: results.csv columns, in order. ``read_from``: the ``--baselines-from`` folder a cell was read from
#: (empty: trained in this output folder).
CSV_FIELDS: tuple[str, ...] = (
    "fraction", "arm", "seed", "mAP", "rank1", "rank5", "rank10", "images", "identities",
    "synthetic_images", "steps", "batch_size", "wall_s", "reid_model", "generator", "read_from",
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


def read_run(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The saved settings (``gain_config.json``) and result rows of a ``reid-gain --out`` folder."""
    cfg, csv_path = Path(out) / "gain_config.json", Path(out) / "results.csv"
    if not cfg.is_file() or not csv_path.is_file():
        raise FileNotFoundError(f"{out}: not a reid-gain output folder (no gain_config.json / results.csv)")
    return json.loads(cfg.read_text()), read_results(csv_path)


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


class Interval(NamedTuple):
    """A mean with its two-sided confidence interval over ``n`` paired values (``lo``/``hi`` are ``nan``
    below two values)."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def settled(self) -> bool:
        """Whether the interval excludes 0 (never with fewer than two values)."""
        return self.n >= 2 and (self.lo > 0.0 or self.hi < 0.0)


def paired_interval(diffs: Iterable[float], level: float = 0.95) -> Interval:
    """Mean of paired per-seed differences and its Student-t interval (``n - 1`` degrees of freedom).

    ``mean ± t_{(1+level)/2, n-1} · sd / sqrt(n)`` with the sample standard deviation ``sd``; ``nan``
    values are left out. Fewer than two values give no interval (``lo = hi = nan``).
    """
    from scipy.stats import t

    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    xs = [float(d) for d in diffs if not math.isnan(float(d))]
    if not xs:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = statistics.fmean(xs)
    if len(xs) == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(t.ppf(0.5 + level / 2.0, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))
    return Interval(mean, mean - half, mean + half, len(xs))


def verdict(interval: Interval) -> str:
    """``"settled"`` when the interval excludes 0, else ``"not settled"``."""
    return "settled" if interval.settled else "not settled"


class Share(NamedTuple):
    """The share of the oracle's gain over ``strong`` an arm recovers: per seed, and over seeds."""

    per_seed: dict[int, float]  # seeds where the oracle beat strong
    undefined: list[int]  # seeds where it did not (oracle - strong <= 0): no share
    oracle_gain: dict[int, float]  # oracle - strong, per seed
    interval: Interval  # mean of the per-seed shares
    of_means: Interval  # mean(arm - strong) / mean(oracle - strong), Fieller's interval


def recovered_share(
    arm: Mapping[int, float], strong: Mapping[int, float], oracle: Mapping[int, float], level: float = 0.95
) -> Share:
    """``(arm - strong) / (oracle - strong)`` per seed (metric values by seed), over the seeds all three
    have, and its mean with a t-interval (:func:`paired_interval`). A seed where the oracle did not beat
    the strong baseline has no share (listed in ``undefined``, left out of the mean)."""
    seeds = sorted(set(arm) & set(strong) & set(oracle))
    gain = {s: float(oracle[s]) - float(strong[s]) for s in seeds}
    per_seed = {s: (float(arm[s]) - float(strong[s])) / gain[s] for s in seeds if gain[s] > 0}
    undefined = [s for s in seeds if gain[s] <= 0]
    arm_gain = [float(arm[s]) - float(strong[s]) for s in seeds]
    of_means = share_of_mean_gains(arm_gain, [gain[s] for s in seeds], level)
    return Share(per_seed, undefined, gain, paired_interval(per_seed.values(), level), of_means)


def share_of_mean_gains(
    arm_gain: Sequence[float], oracle_gain: Sequence[float], level: float = 0.95
) -> Interval:
    """``mean(arm_gain) / mean(oracle_gain)`` over paired seeds, with Fieller's interval.

    The interval is every ratio ``r`` for which the paired differences ``arm_gain - r · oracle_gain`` have a
    Student-t interval (``n - 1`` degrees of freedom) containing 0: the exact interval of a ratio of two
    paired means. When the oracle's mean gain is itself not distinguishable from 0 at ``level`` the set is
    unbounded (``lo = -inf``, ``hi = inf``: no share can be claimed). Fewer than two seeds: no interval.
    """
    from scipy.stats import t

    a = [float(x) for x in arm_gain]
    b = [float(x) for x in oracle_gain]
    if len(a) != len(b):
        raise ValueError(f"{len(a)} arm gains for {len(b)} oracle gains: the seeds must be paired")
    n = len(a)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    ratio = ma / mb if mb else math.nan
    if n == 1:
        return Interval(ratio, math.nan, math.nan, 1)
    q = float(t.ppf(0.5 + level / 2.0, n - 1)) ** 2 / n
    saa, sbb = statistics.variance(a), statistics.variance(b)
    sab = statistics.covariance(a, b)
    # (ma - r mb)^2 <= q (saa - 2 r sab + r^2 sbb), i.e. A r^2 - 2 B r + C <= 0
    qa, qb, qc = mb * mb - q * sbb, ma * mb - q * sab, ma * ma - q * saa
    if qa <= 0:
        return Interval(ratio, -math.inf, math.inf, n)
    root = math.sqrt(max(qb * qb - qa * qc, 0.0))
    return Interval(ratio, (qb - root) / qa, (qb + root) / qa, n)


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fraction × arm: seeds, mean ± std of mAP and rank-1, and deltas vs ``plain`` / ``strong``.

    A delta is the mean over the seeds both arms have of the per-seed difference (paired: same seed, same
    subset), with the std of those differences and their 95 % t-interval (``d_<metric>_<base>``, ``_std``,
    ``_lo``, ``_hi``, ``_n``, ``_settled``); ``nan`` when no seed is shared. A ``strong+synthetic…`` arm of
    a fraction that also has ``strong`` and ``strong+oracle`` gets ``share_<metric>`` (a :class:`Share`).
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
                key = f"d_{metric}_{base}"
                _, entry[f"{key}_std"] = _mean_std(diffs)
                iv = paired_interval(diffs)
                entry[key], entry[f"{key}_lo"], entry[f"{key}_hi"], entry[f"{key}_n"] = iv
                entry[f"{key}_settled"] = iv.settled
            strong, oracle = cells.get((f, "strong")), cells.get((f, ORACLE_ARM))
            if arm_extra(a) in ("synthetic", "noise") and a.startswith("strong") and strong and oracle:
                entry[f"share_{metric}"] = recovered_share(
                    *({s: float(r[metric]) for s, r in c.items()} for c in (by_seed, strong, oracle))
                )
        out.append(entry)
    return out


def _pm(mean: float, std: float, signed: bool = False) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:+.1f} ± {std:.1f}" if signed else f"{mean:.1f} ± {std:.1f}"


def format_interval(iv: Interval, digits: int = 1, signed: bool = True) -> str:
    """``+5.0 [+1.2, +8.8] settled``; one value: ``+7.8 (1 seed) not settled``; none: ``–``."""
    if iv.n == 0:
        return "–"
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    if iv.n == 1:
        return f"{fmt.format(iv.mean)} (1 seed) not settled"
    return f"{fmt.format(iv.mean)} [{fmt.format(iv.lo)}, {fmt.format(iv.hi)}] {verdict(iv)}"


def summary_delta(e: dict[str, Any], metric: str, base: str) -> Interval:
    """The paired delta of a :func:`summarize` entry vs ``base`` (``plain``/``strong``) as an :class:`Interval`."""
    k = f"d_{metric}_{base}"
    return Interval(e[k], e[f"{k}_lo"], e[f"{k}_hi"], e[f"{k}_n"])


def share_lines(e: dict[str, Any], metric: str = "mAP") -> tuple[str, str, str]:
    """``(oracle gain per seed, share per seed, mean share [95 % CI] verdict)`` of a summary entry."""
    sh: Share = e[f"share_{metric}"]
    gains = ", ".join(f"s{s}: {g:+.1f}" for s, g in sorted(sh.oracle_gain.items()))
    per = ", ".join(
        f"s{s}: " + (f"{sh.per_seed[s]:.2f}" if s in sh.per_seed else "– (oracle ≤ strong)")
        for s in sorted(sh.oracle_gain)
    )
    return gains, per, format_interval(sh.interval, digits=2, signed=False)


def format_share_of_means(iv: Interval) -> str:
    """``0.88 [0.12, 1.60] settled``, or ``0.88 [unbounded: oracle gain not settled] not settled``."""
    if iv.n >= 2 and math.isinf(iv.lo):
        return f"{iv.mean:.2f} [unbounded: oracle gain not settled] not settled"
    return format_interval(iv, digits=2, signed=False)


def markdown_table(summary: Sequence[dict[str, Any]], header: str = "") -> str:
    """The summary as markdown: one row per fraction × arm (metrics in %, mean ± std over seeds; deltas
    are the mean of per-seed paired differences [95 % t-interval] and whether that is settled), then,
    when there is an oracle arm, the share of its gain each synthetic arm recovers."""
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
                deltas.append("–" if e["arm"] == base else format_interval(summary_delta(e, metric, base)))
        lines.append(
            f"| {e['fraction'] * 100:.0f}% | {e['arm']} | {e['seeds']} | {imgs} | {_pm(e['mAP'], e['mAP_std'])} "
            f"| {_pm(e['rank1'], e['rank1_std'])} | " + " | ".join(deltas) + " |"
        )
    lines.append(
        "\nΔ: mean of the per-seed paired differences [95 % t-interval, n − 1 degrees of freedom]; "
        "*settled* only when the interval excludes 0 (one seed: never)."
    )
    shares = [e for e in summary if "share_mAP" in e]
    if shares:
        lines += [
            "",
            f"Recovered share of the oracle's gain: (arm − strong) / ({ORACLE_ARM} − strong), per seed; "
            "1 = all of what real views of the hidden poses give, 0 = nothing.",
            "",
            "| kept | arm | oracle ΔmAP over strong | share of the mAP gain, per seed | share (mAP), mean [95 % CI] "
            "| share (rank-1), mean [95 % CI] | mean gain / mean oracle gain, mAP [95 % Fieller] | same, rank-1 |",
            "|---:|---|---|---|---|---|---|---|",
        ]
        for e in shares:
            gains, per, mean = share_lines(e, "mAP")
            rank1 = share_lines(e, "rank1")[2]
            ratios = [format_share_of_means(e[f"share_{m}"].of_means) for m in ("mAP", "rank1")]
            lines.append(
                f"| {e['fraction'] * 100:.0f}% | {e['arm']} | {gains} | {per} | {mean} | {rank1} | "
                + " | ".join(ratios)
                + " |"
            )
        lines.append(
            "\nThe ratio of the mean gains is the share a seed with an oracle gain near 0 cannot blow up; its "
            "interval (Fieller's) is every ratio r for which the paired (arm − strong) − r·(oracle − strong) "
            "has a t-interval containing 0."
        )
    return "\n".join(lines) + "\n"


def plot_results(summary: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """mAP and rank-1 vs kept fraction (one line per arm, ±std error bars) and, beside them, each arm's
    paired ΔmAP vs ``strong`` (``plain`` when there is no strong arm) with its 95 % interval, marked
    *settled* (filled marker) only when the interval excludes 0; PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if any(e["arm"] == a for e in summary)]
    fractions = sorted({e["fraction"] for e in summary})
    base = next((b for b in ("strong", "plain") if b in arms), None)
    compared = [a for a in arms if base is not None and a != base]
    panels = 3 if compared else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), constrained_layout=True)
    colour = {a: f"C{i}" for i, a in enumerate(arms)}
    for ax, metric, label in zip(axes, ("mAP", "rank1"), ("mAP (%)", "rank-1 (%)")):
        if len(fractions) == 1:  # one fraction: bars per arm (a line needs two points)
            pts = [next(e for e in summary if e["arm"] == a) for a in arms]
            ax.bar(
                range(len(arms)),
                [e[metric] for e in pts],
                yerr=[e[f"{metric}_std"] for e in pts],
                capsize=4,
                color=[colour[a] for a in arms],
                label=arms,
            )
            ax.set_xticks(range(len(arms)), arms, rotation=15, fontsize=8)
            ax.set_xlabel(f"arm ({fractions[0] * 100:.0f}% of the train images kept; ±std over seeds)")
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
                    linestyle="--" if not arm_extra(arm) else "-",
                    color=colour[arm],
                    label=arm,
                )
            ax.set_xlabel("train images kept (%; ±std over seeds)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if compared:
        ax = axes[2]
        ax.axhline(0.0, color="k", linewidth=0.8)
        width = 1.5  # percentage points between the arms of one fraction
        for i, arm in enumerate(compared):
            pts = sorted((e["fraction"], summary_delta(e, "mAP", base)) for e in summary if e["arm"] == arm)
            xs = (
                [i]
                if len(fractions) == 1
                else [p[0] * 100 + (i - (len(compared) - 1) / 2) * width for p in pts]
            )
            for x, (_, iv) in zip(xs, pts):
                if iv.n == 0:
                    continue
                err = [[iv.mean - iv.lo], [iv.hi - iv.mean]] if iv.n > 1 else None
                ax.errorbar(
                    [x], [iv.mean], yerr=err, marker="o", capsize=4, color=colour[arm],
                    markerfacecolor=colour[arm] if iv.settled else "white",
                    label=arm if x == xs[0] else None,
                )  # fmt: skip
                if len(fractions) == 1:
                    ax.annotate(
                        verdict(iv) if iv.n > 1 else "1 seed", (x, iv.hi if iv.n > 1 else iv.mean),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7,
                    )  # fmt: skip
        if len(fractions) == 1:
            ax.set_xticks(range(len(compared)), compared, rotation=15, fontsize=8)
            ax.set_xlim(-0.6, len(compared) - 0.4)
        else:
            ax.set_xlabel("train images kept (%)")
            ax.legend(fontsize=7)
        ax.set_ylabel(f"ΔmAP vs {base} (paired, 95 % CI)")
        ax.set_title("filled = settled (the interval excludes 0)", fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def _cell_list(rows: Sequence[dict[str, Any]]) -> str:
    """``50% `plain` seeds 0, 1; 50% `strong` seed 0``: the cells of ``rows`` by kept fraction and arm."""
    order = {a: i for i, a in enumerate(ARMS)}
    by: dict[tuple[float, str], list[int]] = defaultdict(list)
    for r in rows:
        by[(float(r["fraction"]), str(r["arm"]))].append(int(r["seed"]))
    parts = []
    for (fraction, arm), seeds in sorted(by.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
        s = sorted(seeds)
        parts.append(f"{100 * fraction:g}% `{arm}` seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}")
    return "; ".join(parts)


def _baselines_line(config: GainConfig, rows: Sequence[dict[str, Any]]) -> str:
    """The report's line on where the baseline, oracle and floor cells come from (``""`` when all were
    trained here and no ``baselines_from`` was given)."""
    base = [r for r in rows if arm_extra(str(r["arm"])) in ("", "oracle", "noise")]
    read = [r for r in base if r.get("read_from")]
    trained = [r for r in base if not r.get("read_from")]
    if read:
        where = ", ".join(f"`{s}`" for s in sorted({str(r["read_from"]) for r in read}))
        line = (
            f"- baseline, oracle and floor cells read from {where} (a run with the same data, subset and re-ID "
            f"settings: the same models), not trained again: {_cell_list(read)}"
        )
        if trained:
            line += f"; trained in this run (not there): {_cell_list(trained)}"
        return line + "\n"
    if config.baselines_from is not None and trained:
        return (
            f"- `{config.baselines_from}` held none of the baseline, oracle and floor cells asked for; they were "
            f"trained in this run: {_cell_list(trained)}\n"
        )
    return ""


def _describe_mix(ratio: float | None) -> str:
    """How a run's batches mix real and extra images, in words."""
    if ratio is None:
        return "batches sample real and synthetic images uniformly"
    return f"{100 * ratio:g} % of each batch synthetic (in expectation)"


def write_reports(config: GainConfig, rows: Sequence[dict[str, Any]]) -> dict[str, Path]:
    """``results.md`` and ``results.png`` from the CSV rows; returns their paths."""
    from posereid.reid_integration.soft_settings import describe_soft_weight

    summary = summarize(rows)
    seeds = sorted({int(r["seed"]) for r in rows})
    md_path, png_path = config.out / "results.md", config.out / "results.png"
    gen = config.generator_source()
    options = "".join(f", {k}={v}" for k, v in config.generator_options.items())
    gen_text = {
        "kept": f"trained on the kept fraction only (leakage-free), preset `{config.generator_preset}`{options}, "
        f"{config.generator_steps} steps",
        "full": f"trained on ALL train images (leaky, PIDM's setting), preset `{config.generator_preset}`{options}, "
        f"{config.generator_steps} steps",
    }.get(gen, f"given checkpoint `{config.generator}`")
    header = (
        "# Re-ID gain\n\n"
        f"- data: `{config.data}`; re-ID model `{config.reid_model}` at {config.height}x{config.width}, "
        f"{config.reid_steps} optimisation steps in EVERY run (batch {config.reid_batch_size})\n"
        f"- generator: {gen_text}; {config.per_image} image(s) per kept image, `{config.sampler}` "
        f"{config.steps} steps, guidance {tuple(config.guidance)}, pose sampling `{config.pose_sampling}`; "
        + _describe_mix(config.synthetic_ratio)
        + ".\n"
        + f"- subset seed {config.subset_seed}; metrics in %, mean ± std over the seeds ({', '.join(map(str, seeds))}); "
        "deltas are paired by seed, with 95 % t-intervals, and called settled only when the interval excludes 0\n"
        + (
            f"- `{ORACLE_ARM}`: the strong baseline + real renders of the train identities in the views the train "
            f"split hides, {config.per_image} per kept image under its pid (the ceiling of pose augmentation)\n"
            if any(r["arm"] == ORACLE_ARM for r in rows)
            else ""
        )
        + (
            f"- `{NOISE_ARM}`: the strong baseline + {config.per_image} pixel-noise image(s) per kept image, each "
            "with that image's per-channel mean and spread, under its pid (the floor: colour statistics only)\n"
            if any(r["arm"] == NOISE_ARM for r in rows)
            else ""
        )
        + (
            f"- `{SOFT_ARM}`: `strong+synthetic` where each synthetic image's loss is (1 − w)·CE(source pid) + "
            f"w·T²·KL(teacher ‖ student), {describe_soft_weight(config.soft_weight)}, T = {config.soft_temperature:g}; the teacher is "
            "the `strong` cell model of the same seed and fraction (kept real images only); "
            f"{_describe_mix(config.soft_synthetic_ratio)} in the soft-label arms\n"
            if any(r["arm"] == SOFT_ARM for r in rows)
            else ""
        )
        + (
            f"- `{NOISE_SOFT_ARM}`: `{NOISE_ARM}` with the same soft labels ({describe_soft_weight(config.soft_weight)}, "
            f"T = {config.soft_temperature:g}) on its noise images; "
            f"{_describe_mix(config.soft_synthetic_ratio)}\n"
            if any(r["arm"] == NOISE_SOFT_ARM for r in rows)
            else ""
        )
        + (
            "- `+filtered` arms: their extra images after the identity filter (score "
            f"{config.filter_score}, threshold {config.filter_threshold}; checkpoint "
            f"{config.filter_checkpoint}: `auto` is a strong model trained on each fraction's kept images)\n"
            if any(is_filtered(str(r["arm"])) for r in rows)
            else ""
        )
        + _baselines_line(config, rows)
    )
    with atomic_write(md_path, "w", encoding="utf-8") as fh:
        fh.write(markdown_table(summary, header))
    if summary:
        plot_results(
            summary, png_path, title=f"{config.reid_model}, {config.reid_steps} steps, generator: {gen}"
        )
    return {"markdown": md_path, "plot": png_path, "csv": config.out / "results.csv"}
