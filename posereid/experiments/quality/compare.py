"""Seen vs unseen people: several ``evaluate-generator`` reports in one table (``posereid quality-compare``).

A generator that keeps identity only for the people it was trained on is memorising, not transferring. The
same quality table scored on people it saw (its training configuration) and on people it never saw (a
dataset rendered with another seed) tells the two apart, but only once the rows of the two reports are put
side by side and each is measured against its own report's ceiling: the real images of the unseen people
may themselves be easier or harder for the judges. This module reads the reports (:func:`load_quality_report`),
matches their rows by generator and sampling setting (:func:`match_rows`), takes each identity and pose
metric as a share of its report's ceiling (:func:`share`; floor-to-ceiling when both exist), and reports the
gap in that share between the first report (the reference) and each other one (:func:`compare_quality`,
:func:`render_quality_comparison`). It reads JSON only: no torch, no generator.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from posereid.models.io_utils import atomic_write

#: the file ``evaluate-generator --out`` writes its numbers to
REPORT_NAME = "report.json"
#: the file ``quality-compare --out`` writes its table to
COMPARE_NAME = "compare.md"
#: flag a generated row whose identity share drops by more than this from the reference to another report
DEFAULT_GAP_THRESHOLD = 0.2
#: the system names of ``report.json`` (the same strings as :mod:`~posereid.experiments.quality.evaluate`'s
#: ``CEILING`` / ``TRAINED`` / ``FLOOR``, kept here so reading a report does not import torch)
CEILING_SYSTEM, TRAINED_SYSTEM, FLOOR_SYSTEM = "real (ceiling)", "trained", "untrained (floor)"
#: metric key → column label, in the table's order
COMPARE_METRICS: dict[str, str] = {
    "pckh": "PCKh",
    "rank1": "rank-1",
    "mAP": "mAP",
    "rank1_independent": "rank-1 indep.",
    "mAP_independent": "mAP indep.",
    "fd_reid": "FD re-ID ↓",
    "sharpness_ratio": "sharpness →1",
    "ssim": "SSIM",
    "sec_per_image": "s / image",
}
#: the metrics taken as a share of the ceiling: pose, then identity (both judges)
POSE_METRICS: tuple[str, ...] = ("pckh",)
IDENTITY_METRICS: tuple[str, ...] = ("rank1", "mAP", "rank1_independent", "mAP_independent")
SHARE_METRICS: tuple[str, ...] = POSE_METRICS + IDENTITY_METRICS
#: what every report's ceiling row must hold (a share of a missing ceiling is not a number)
REQUIRED_METRICS: tuple[str, ...] = ("pckh", "rank1", "mAP")
#: how a value becomes a share: of the ceiling (v / ceiling) or of the floor-to-ceiling range
#: ((v - floor) / (ceiling - floor)); ``auto``: floor-to-ceiling when every report has a floor row
Basis = Literal["auto", "ceiling", "floor-ceiling"]
BASES: tuple[str, ...] = ("auto", "ceiling", "floor-ceiling")
RowKind = Literal["ceiling", "generated", "floor"]


class ReportError(ValueError):
    """A report that cannot be compared: missing, unreadable, or lacking what the comparison needs. The
    message names the file."""


@dataclass(frozen=True)
class ReportRow:
    """One row of a report: its matching label (generator and sampling setting), what it is, its numbers
    (``None`` where the report has no finite value)."""

    key: str
    kind: RowKind
    metrics: Mapping[str, float | None]


@dataclass(frozen=True)
class QualityReport:
    """One ``evaluate-generator`` report as compared: its label, file, rows in the report's order (ceiling,
    generated rows, floor), its config and its re-ID judges' architectures by role."""

    label: str
    path: Path
    rows: dict[str, ReportRow]
    config: Mapping[str, Any] = field(default_factory=dict)
    judges: Mapping[str, str] = field(default_factory=dict)
    n_pairs: int | None = None

    @property
    def ceiling(self) -> ReportRow:
        return next(r for r in self.rows.values() if r.kind == "ceiling")

    @property
    def floor(self) -> ReportRow | None:
        return next((r for r in self.rows.values() if r.kind == "floor"), None)


@dataclass(frozen=True)
class RowComparison:
    """One row every report has: its values and shares per report, and per other report (in order) the
    gap in each share (reference - other), the identity shares compared and the gap between them."""

    key: str
    kind: RowKind
    values: tuple[Mapping[str, float | None], ...]
    shares: tuple[Mapping[str, float | None], ...]
    gaps: tuple[Mapping[str, float | None], ...]
    identity: tuple[tuple[float | None, float | None, float | None], ...]
    flagged: tuple[bool, ...]


@dataclass(frozen=True)
class QualityComparison:
    """The reports, the share basis used, the threshold, the shared rows and the rows only some reports
    have (key → the labels of the reports that have it)."""

    reports: tuple[QualityReport, ...]
    basis: Literal["ceiling", "floor-ceiling"]
    threshold: float
    rows: tuple[RowComparison, ...]
    partial: tuple[tuple[str, tuple[str, ...]], ...]

    def warnings(self) -> list[str]:
        """One line per generated row and other report whose identity share drops by more than the
        threshold from the reference."""
        ref = self.reports[0]
        out = []
        for row in self.rows:
            for other, (a, b, gap), flag in zip(self.reports[1:], row.identity, row.flagged):
                if flag and a is not None and b is not None and gap is not None:
                    out.append(
                        f"`{row.key}`: identity share {a:.3f} on {ref.label}, {b:.3f} on {other.label} (gap "
                        f"{gap:+.3f} > {self.threshold:g}): it keeps identity only on the people it trained on "
                        "(memorising, not transferring)"
                    )
        return out


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def report_file(path: str | Path) -> Path:
    """``path`` itself, or the ``report.json`` in it when it is a folder."""
    p = Path(path)
    return p / REPORT_NAME if p.is_dir() else p


def _number(value: Any) -> float | None:
    """A finite number, else ``None`` (report.json stores a NaN as null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _guidance_text(guidance: Any) -> str:
    """``[2.0, 2.0]`` → ``"2"``, ``[1.5, 3.0]`` → ``"1.5:3"`` (one weight when both are the same)."""
    if isinstance(guidance, (int, float)):
        return f"{guidance:g}"
    try:
        pose, app = (float(g) for g in guidance)
    except (TypeError, ValueError):
        return str(guidance)
    return f"{pose:g}" if pose == app else f"{pose:g}:{app:g}"


def setting_label(generator: str, setting: Mapping[str, Any]) -> str:
    """The label a generated row is matched by: ``"trained: few-step, 1 step, guidance 1"``."""
    steps, sampler, guidance = setting.get("steps"), setting.get("sampler"), setting.get("guidance")
    parts = [str(sampler)] if sampler is not None else []
    if steps is not None:
        parts.append(f"{steps} step{'' if steps == 1 else 's'}")
    if guidance is not None:
        parts.append(f"guidance {_guidance_text(guidance)}")
    return f"{generator}: {', '.join(parts)}" if parts else generator


def report_rows(result: Mapping[str, Any]) -> list[ReportRow]:
    """The rows of one ``report.json`` dict in the report's order: the ceiling, the trained generator at its
    setting, each ``settings`` row, each ``sweep`` row, the floor. A label a report uses twice (a sweep point
    that is also the main setting) gets its source appended, so no row is dropped."""
    systems, cfg = result.get("systems") or {}, result.get("config") or {}
    sampling = {k: cfg.get(k) for k in ("steps", "sampler", "guidance")}
    found: list[tuple[str, RowKind, Mapping[str, Any], str]] = []
    if CEILING_SYSTEM in systems:
        found.append(("ceiling (real targets)", "ceiling", systems[CEILING_SYSTEM], "system"))
    if TRAINED_SYSTEM in systems:
        found.append(
            (setting_label(TRAINED_SYSTEM, sampling), "generated", systems[TRAINED_SYSTEM], "system")
        )
    for name, metrics in systems.items():
        if name not in (CEILING_SYSTEM, TRAINED_SYSTEM, FLOOR_SYSTEM):
            found.append((name, "generated", metrics, "system"))
    for row in result.get("settings") or ():
        found.append(
            (setting_label(str(row.get("generator", TRAINED_SYSTEM)), row), "generated", row, "setting")
        )
    for row in result.get("sweep") or ():
        point = {"sampler": cfg.get("sampler"), **row}
        found.append((setting_label(TRAINED_SYSTEM, point), "generated", row, "sweep"))
    if FLOOR_SYSTEM in systems:
        found.append((setting_label("floor (untrained)", sampling), "floor", systems[FLOOR_SYSTEM], "system"))
    rows: list[ReportRow] = []
    seen: set[str] = set()
    for key, kind, metrics, source in found:
        if key in seen:
            key = f"{key} ({source} row)"
        seen.add(key)
        values = {m: _number(metrics.get(m)) for m in COMPARE_METRICS} if isinstance(metrics, Mapping) else {}
        rows.append(ReportRow(key, kind, values))
    return rows


def load_quality_report(path: str | Path, label: str | None = None) -> QualityReport:
    """Read one ``evaluate-generator`` report (``report.json`` or the folder holding it). Raises
    :class:`ReportError` naming the file when it is missing, unreadable, not such a report, has no
    ceiling row, or its ceiling lacks one of :data:`REQUIRED_METRICS`."""
    file = report_file(path)
    if not file.is_file():
        raise ReportError(
            f"quality report {file}: not found (give evaluate-generator's {REPORT_NAME} or the folder holding it)"
        )
    try:
        result = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"quality report {file}: unreadable ({exc})") from None
    if not isinstance(result, dict) or not isinstance(result.get("systems"), dict):
        raise ReportError(f"quality report {file}: not an evaluate-generator report (no 'systems' table)")
    rows = report_rows(result)
    ceiling = next((r for r in rows if r.kind == "ceiling"), None)
    if ceiling is None:
        raise ReportError(
            f"quality report {file}: no ceiling row ({CEILING_SYSTEM!r} under 'systems'); every share is taken of it"
        )
    lacking = [m for m in REQUIRED_METRICS if ceiling.metrics.get(m) is None]
    if lacking:
        raise ReportError(
            f"quality report {file}: the ceiling row lacks {', '.join(lacking)} (evaluated without a re-ID "
            "checkpoint or a pose judge?); the comparison needs them"
        )
    judges = {
        role: str(info.get("architecture"))
        for role, info in (result.get("reid_judges") or {}).items()
        if isinstance(info, Mapping)
    }
    cfg = result.get("config") if isinstance(result.get("config"), dict) else {}
    data = result.get("data") if isinstance(result.get("data"), dict) else {}
    pairs = data.get("pairs_used")
    return QualityReport(
        label=label or file.resolve().parent.name or str(file),
        path=file,
        rows={r.key: r for r in rows},
        config=cfg,
        judges=judges,
        n_pairs=pairs if isinstance(pairs, int) else None,
    )


def default_labels(paths: Sequence[str | Path]) -> list[str]:
    """One label per report: the name of the folder holding its ``report.json``; names that repeat get
    ``#k`` appended."""
    names = [report_file(p).resolve().parent.name or str(p) for p in paths]
    out = []
    for i, name in enumerate(names):
        out.append(f"{name} #{names[: i + 1].count(name)}" if names.count(name) > 1 else name)
    return out


# --------------------------------------------------------------------------------------------------
# Matching and shares
# --------------------------------------------------------------------------------------------------
def match_rows(reports: Sequence[QualityReport]) -> tuple[list[str], list[tuple[str, tuple[str, ...]]]]:
    """The row labels every report has (in the reference's order), and the others, each with the labels of
    the reports that have it (in order of first appearance). Rows are matched by their label only."""
    shared = [k for k in reports[0].rows if all(k in r.rows for r in reports[1:])]
    partial: list[tuple[str, tuple[str, ...]]] = []
    for report in reports:
        for key in report.rows:
            if key not in shared and key not in (k for k, _ in partial):
                partial.append((key, tuple(r.label for r in reports if key in r.rows)))
    return shared, partial


def share(value: float | None, ceiling: float | None, floor: float | None = None) -> float | None:
    """``value`` as a share of the ceiling: ``value / ceiling``, or with a floor ``(value - floor) /
    (ceiling - floor)``; ``None`` when a number is missing or the denominator is not positive."""
    if value is None or ceiling is None:
        return None
    if floor is None:
        return value / ceiling if ceiling > 0 else None
    span = ceiling - floor
    return (value - floor) / span if span > 0 else None


def _shares(report: QualityReport, row: ReportRow, basis: str) -> dict[str, float | None]:
    ceiling, floor = report.ceiling.metrics, report.floor.metrics if report.floor else {}
    out: dict[str, float | None] = {}
    for m in SHARE_METRICS:
        if basis == "floor-ceiling":
            out[m] = None if floor.get(m) is None else share(row.metrics.get(m), ceiling.get(m), floor[m])
        else:
            out[m] = share(row.metrics.get(m), ceiling.get(m))
    return out


def _difference(a: float | None, b: float | None) -> float | None:
    """``a - b``, or ``None`` when either is missing."""
    return None if a is None or b is None else a - b


def _identity(
    a: Mapping[str, float | None], b: Mapping[str, float | None]
) -> tuple[float | None, float | None, float | None]:
    """The mean identity share of two rows over the identity metrics both have, and its gap ``a - b``."""
    pairs = [
        (x, y) for x, y in ((a.get(m), b.get(m)) for m in IDENTITY_METRICS) if x is not None and y is not None
    ]
    if not pairs:
        return None, None, None
    ma = sum(x for x, _ in pairs) / len(pairs)
    mb = sum(y for _, y in pairs) / len(pairs)
    return ma, mb, ma - mb


def compare_quality(
    reports: Sequence[QualityReport], threshold: float = DEFAULT_GAP_THRESHOLD, basis: Basis = "auto"
) -> QualityComparison:
    """Compare two or more reports against the first: each shared row's values, its shares of each report's
    own ceiling and the gaps in them (reference - other; positive: the row loses more than the ceiling
    does), flagged when the identity share drops by more than ``threshold`` on a generated row."""
    if len(reports) < 2:
        raise ValueError(f"quality-compare needs two or more reports, got {len(reports)}")
    if basis not in BASES:
        raise ValueError(f"basis {basis!r}: choose from {', '.join(BASES)}")
    used: Literal["ceiling", "floor-ceiling"] = (
        "floor-ceiling"
        if basis == "floor-ceiling" or (basis == "auto" and all(r.floor for r in reports))
        else "ceiling"
    )
    shared, partial = match_rows(reports)
    rows = []
    for key in shared:
        per = [r.rows[key] for r in reports]
        shares = [_shares(r, row, used) for r, row in zip(reports, per)]
        gaps, identity, flagged = [], [], []
        for other in shares[1:]:
            gaps.append({m: _difference(shares[0][m], other[m]) for m in SHARE_METRICS})
            ident = _identity(shares[0], other)
            identity.append(ident)
            flagged.append(per[0].kind == "generated" and ident[2] is not None and ident[2] > threshold)
        rows.append(
            RowComparison(
                key=key,
                kind=per[0].kind,
                values=tuple(p.metrics for p in per),
                shares=tuple(shares),
                gaps=tuple(gaps),
                identity=tuple(identity),
                flagged=tuple(flagged),
            )
        )
    return QualityComparison(tuple(reports), used, threshold, tuple(rows), tuple(partial))


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------
def _fmt(value: float | None, key: str = "") -> str:
    if value is None:
        return "–"
    if key == "sec_per_image":
        return f"{value:.4f}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _column_labels(reports: Sequence[QualityReport]) -> dict[str, str]:
    """:data:`COMPARE_METRICS`' labels, the re-ID columns tagged with the judge's architecture when every
    report names the same one."""
    labels = dict(COMPARE_METRICS)
    for role, keys in (
        ("first", ("rank1", "mAP")),
        ("independent", ("rank1_independent", "mAP_independent")),
    ):
        archs = {r.judges.get(role) for r in reports}
        if len(archs) == 1 and None not in archs:
            arch = next(iter(archs))
            for k in keys:
                labels[k] += f" [{arch}]"
    return labels


def _generator_notes(reports: Sequence[QualityReport]) -> list[str]:
    """A line for each generator name that stands for different checkpoints in different reports (its rows
    then compare different models, not one model on two sets of people)."""
    names: dict[str, dict[str, str]] = {}
    for r in reports:
        gens = {TRAINED_SYSTEM: r.config.get("generator"), **(r.config.get("other_generators") or {})}
        for name, where in gens.items():
            if where is not None:
                names.setdefault(name, {})[r.label] = str(where)
    lines = []
    for name, where in names.items():
        paths = list(dict.fromkeys(where.values()))
        if len(paths) > 1:
            each = ", ".join(f"`{p}` in {' and '.join(k for k, w in where.items() if w == p)}" for p in paths)
            lines.append(f"- Note: generator `{name}` is {each}: its rows compare different checkpoints.")
    return lines


def render_quality_comparison(comparison: QualityComparison) -> str:
    """The markdown: which reports, the table (values side by side, share gaps), the warnings, the rows
    only some reports have, and a footnote on the shares."""
    reports = comparison.reports
    ref, others = reports[0], reports[1:]
    order = " / ".join(r.label for r in reports)
    gap_order = " / ".join(f"{ref.label} − {o.label}" for o in others)
    labels = _column_labels(reports)
    lines = [
        f"# Generator quality: {' vs '.join(r.label for r in reports)}",
        "",
        "Reports (the first is the reference):",
        "",
    ]
    for r in reports:
        cfg = r.config
        judges = " / ".join(r.judges.values()) or "none recorded"
        pairs = f"{r.n_pairs} pairs" if r.n_pairs is not None else "pairs not recorded"
        lines.append(
            f"- **{r.label}**: `{r.path}` — generator `{cfg.get('generator', '?')}`, data `{cfg.get('data', '?')}`, "
            f"{pairs}, re-ID judges {judges}"
        )
    lines += _generator_notes(reports)
    value_cols = list(COMPARE_METRICS)
    gap_cols = list(SHARE_METRICS)
    basis_word = "floor-to-ceiling share" if comparison.basis == "floor-ceiling" else "share of the ceiling"
    header = ["row"] + [labels[k] for k in value_cols] + [f"Δ {COMPARE_METRICS[k]}" for k in gap_cols]
    header.append("identity share → gap")
    lines += [
        "",
        f"Cells: {order}. Δ share: {gap_order}, in each report's own {basis_word} (positive: the row loses more "
        "than the real images do).",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in comparison.rows:
        cells = [row.key]
        cells += [" / ".join(_fmt(v.get(k), k) for v in row.values) for k in value_cols]
        cells += [" / ".join(_signed(g.get(k)) for g in row.gaps) for k in gap_cols]
        shares = [_fmt(row.identity[0][0])] + [_fmt(b) for _, b, _ in row.identity]
        gaps = " / ".join(_signed(g) for _, _, g in row.identity)
        mark = " **!**" if any(row.flagged) else ""
        cells.append(f"{' / '.join(shares)} → {gaps}{mark}")
        lines.append("| " + " | ".join(cells) + " |")
    warnings = comparison.warnings()
    lines.append("")
    if warnings:
        lines += [f"- **WARNING**: {w}." for w in warnings]
    else:
        lines.append(
            f"No generated row's identity share drops by more than {comparison.threshold:g} from {ref.label} to "
            f"{', '.join(o.label for o in others)}."
        )
    if comparison.partial:
        lines += ["", "Rows only some reports have (not compared):", ""]
        lines += [f"- `{key}`: only in {', '.join(where)}" for key, where in comparison.partial]
    formula = (
        "(v − floor) / (ceiling − floor), each report's own floor and ceiling (0 = the untrained generator, 1 = "
        "the real images)"
        if comparison.basis == "floor-ceiling"
        else "v / ceiling, each report's own ceiling (the real images)"
    )
    lines += [
        "",
        f"Shares: {formula}, for PCKh and each re-ID judge's rank-1 and mAP; '–' where a report lacks the value "
        "or the denominator is not positive. The identity share is the mean share over the re-ID metrics both "
        "reports have (rank-1 and mAP, first and independent judge); its gap flags a generated row when above "
        f"{comparison.threshold:g}. Rows are matched by generator name and sampling setting (sampler, steps, "
        "guidance); FD re-ID = Fréchet distance to real test images in the first judge's features (lower is "
        "better); sharpness = mean |Laplacian| over the real targets' (1 = as sharp as real).",
    ]
    return "\n".join(lines) + "\n"


def write_quality_comparison(comparison: QualityComparison, out: str | Path) -> Path:
    """Write :func:`render_quality_comparison` to ``out/compare.md`` (atomically) and return its path."""
    path = Path(out) / COMPARE_NAME
    with atomic_write(path, encoding="utf-8") as fh:
        fh.write(render_quality_comparison(comparison))
    return path


__all__ = [
    "BASES",
    "COMPARE_METRICS",
    "COMPARE_NAME",
    "DEFAULT_GAP_THRESHOLD",
    "IDENTITY_METRICS",
    "POSE_METRICS",
    "REPORT_NAME",
    "REQUIRED_METRICS",
    "QualityComparison",
    "QualityReport",
    "ReportError",
    "ReportRow",
    "RowComparison",
    "compare_quality",
    "default_labels",
    "load_quality_report",
    "match_rows",
    "render_quality_comparison",
    "report_file",
    "report_rows",
    "setting_label",
    "share",
    "write_quality_comparison",
]
