"""``posereid quality-compare``: evaluate-generator reports side by side, and the seen-vs-unseen gap.

Small synthetic ``report.json`` files (the committed report's structure, only the fields the comparison
reads) check that a generator that keeps identity only on the people it saw is flagged and one that keeps
it on both is not, that rows one report lacks are listed apart, and that a bad report is refused naming its
file; one test reads the committed 256-pair seed-0 / seed-1 reports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from posereid.experiments.cli import main
from posereid.experiments.quality import compare as qc

ROOT = Path(__file__).resolve().parents[1]
SEEN_256 = ROOT / "results" / "few_step" / "quality_seed0_256"
UNSEEN_256 = ROOT / "results" / "few_step" / "quality_seed1_256"
TEACHER = "teacher: dpmsolver++, 20 steps, guidance 2"
TRAINED = "trained: few-step, 1 step, guidance 1"
FLOOR = "floor (untrained): few-step, 1 step, guidance 1"
CEILING = "ceiling (real targets)"


def _row(identity: float, pckh: float = 0.9, **extra: float) -> dict[str, float]:
    """A row whose four re-ID numbers are all ``identity``."""
    return {
        "pckh": pckh, "rank1": identity, "mAP": identity, "rank1_independent": identity,
        "mAP_independent": identity, "fd_reid": 0.3, "sharpness_ratio": 1.1, "ssim": 0.3, **extra,
    }  # fmt: skip


def _report(
    ceiling: float,
    trained: float,
    floor: float | None,
    settings: list[dict[str, Any]] | None = None,
    data: str = "d",
) -> dict[str, Any]:
    """A report.json dict: the ceiling, the trained row (few-step, 1 step, guidance 1), the floor, settings."""
    systems: dict[str, Any] = {
        qc.CEILING_SYSTEM: _row(ceiling, pckh=0.95),
        qc.TRAINED_SYSTEM: _row(trained, sec_per_image=0.01),
    }
    if floor is not None:
        systems[qc.FLOOR_SYSTEM] = _row(floor, pckh=0.01, sec_per_image=0.01)
    return {
        "config": {"generator": "g", "data": data, "steps": 1, "sampler": "few-step", "guidance": [1.0, 1.0]},
        "data": {"pairs_used": 64},
        "systems": systems,
        "sweep": [],
        "settings": settings or [],
        "reid_judges": {
            "first": {"architecture": "osnet_x0_25"},
            "independent": {"architecture": "resnet18"},
        },
    }


def _write(folder: Path, result: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / qc.REPORT_NAME).write_text(json.dumps(result), encoding="utf-8")
    return folder


def _compare(tmp_path: Path, seen: dict[str, Any], unseen: dict[str, Any], **kw: Any) -> qc.QualityComparison:
    reports = [
        qc.load_quality_report(_write(tmp_path / "seen", seen), "seen"),
        qc.load_quality_report(_write(tmp_path / "unseen", unseen), "unseen"),
    ]
    return qc.compare_quality(reports, **kw)


def _by_key(comparison: qc.QualityComparison) -> dict[str, qc.RowComparison]:
    return {r.key: r for r in comparison.rows}


def test_a_generator_that_loses_identity_on_unseen_people_gets_a_positive_gap_and_the_warning(
    tmp_path: Path,
) -> None:
    # floor 0.1, ceiling 0.5 in both: seen 0.4 is 0.75 of the way up, unseen 0.12 only 0.05
    comp = _compare(tmp_path, _report(0.5, 0.4, 0.1), _report(0.5, 0.12, 0.1))
    row = _by_key(comp)[TRAINED]
    assert comp.basis == "floor-ceiling"
    ref, other, gap = row.identity[0]
    assert ref == pytest.approx(0.75) and other == pytest.approx(0.05) and gap == pytest.approx(0.70)
    assert row.gaps[0]["mAP_independent"] == pytest.approx(0.70) and row.flagged == (True,)
    assert _by_key(comp)[CEILING].flagged == (False,) and _by_key(comp)[FLOOR].flagged == (False,)
    text = qc.render_quality_comparison(comp)
    assert (
        len(comp.warnings()) == 1 and "keeps identity only on the people it trained on" in comp.warnings()[0]
    )
    assert f"**WARNING**: `{TRAINED}`" in text and "(v − floor) / (ceiling − floor)" in text


def test_a_generator_that_keeps_identity_relative_to_each_ceiling_is_not_flagged(tmp_path: Path) -> None:
    # the unseen people are harder for the judges (ceiling 0.3, not 0.6), the generator keeps half of each
    comp = _compare(tmp_path, _report(0.6, 0.3, None), _report(0.3, 0.15, None))
    row = _by_key(comp)[TRAINED]
    assert comp.basis == "ceiling"  # no floor row: value / ceiling
    assert row.identity[0] == pytest.approx((0.5, 0.5, 0.0)) and row.flagged == (False,)
    assert row.values[1]["rank1"] == pytest.approx(0.15)
    text = qc.render_quality_comparison(comp)
    assert not comp.warnings() and "WARNING" not in text
    assert "No generated row's identity share drops by more than 0.2" in text and "v / ceiling" in text


def test_the_threshold_and_the_basis_can_be_chosen(tmp_path: Path) -> None:
    seen, unseen = _report(0.5, 0.4, 0.1), _report(0.5, 0.3, 0.1)  # floor-ceiling gap 0.25, ceiling gap 0.2
    assert _by_key(_compare(tmp_path, seen, unseen))[TRAINED].flagged == (True,)
    assert _by_key(_compare(tmp_path, seen, unseen, threshold=0.3))[TRAINED].flagged == (False,)
    by_ceiling = _by_key(_compare(tmp_path, seen, unseen, basis="ceiling"))[TRAINED]
    assert by_ceiling.identity[0][2] == pytest.approx(0.2)


def test_a_row_only_one_report_has_is_listed_apart(tmp_path: Path) -> None:
    extra = {"generator": "teacher", "sampler": "euler", "steps": 2, "guidance": [1.0, 1.0], **_row(0.3)}
    comp = _compare(tmp_path, _report(0.5, 0.4, 0.1, settings=[extra]), _report(0.5, 0.4, 0.1))
    key = "teacher: euler, 2 steps, guidance 1"
    assert key not in _by_key(comp) and comp.partial == ((key, ("seen",)),)
    assert [r.key for r in comp.rows] == [CEILING, TRAINED, FLOOR]
    text = qc.render_quality_comparison(comp)
    assert f"- `{key}`: only in seen" in text and f"| {key} |" not in text


def test_a_row_lacking_a_metric_prints_a_dash(tmp_path: Path) -> None:
    unseen = _report(0.5, 0.4, 0.1)
    del unseen["systems"][qc.TRAINED_SYSTEM]["ssim"]
    unseen["systems"][qc.TRAINED_SYSTEM]["rank1_independent"] = None  # a NaN in report.json
    comp = _compare(tmp_path, _report(0.5, 0.4, 0.1), unseen)
    row = _by_key(comp)[TRAINED]
    assert row.values[1]["ssim"] is None and row.gaps[0]["rank1_independent"] is None
    assert row.identity[0][2] == pytest.approx(0.0)  # the three metrics both have
    line = next(x for x in qc.render_quality_comparison(comp).splitlines() if x.startswith(f"| {TRAINED} |"))
    assert "0.300 / –" in line


def test_a_generator_name_that_stands_for_two_checkpoints_is_noted(tmp_path: Path) -> None:
    unseen = _report(0.5, 0.4, 0.1)
    unseen["config"]["generator"] = "other"
    text = qc.render_quality_comparison(_compare(tmp_path, _report(0.5, 0.4, 0.1), unseen))
    assert "- Note: generator `trained` is `g` in seen, `other` in unseen" in text


def test_a_missing_or_bad_report_is_refused_naming_its_file(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(qc.ReportError, match=re.escape(str(missing)) + ": not found"):
        qc.load_quality_report(missing)
    broken = tmp_path / "broken" / qc.REPORT_NAME
    broken.parent.mkdir()
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(qc.ReportError, match=re.escape(str(broken)) + ".*unreadable"):
        qc.load_quality_report(broken)
    no_reid = _report(0.5, 0.4, 0.1)
    del no_reid["systems"][qc.CEILING_SYSTEM]["rank1"]
    folder = _write(tmp_path / "no_reid", no_reid)
    with pytest.raises(qc.ReportError, match=re.escape(str(folder / qc.REPORT_NAME)) + ".*lacks rank1"):
        qc.load_quality_report(folder)
    good = _write(tmp_path / "good", _report(0.5, 0.4, 0.1))
    assert main(["quality-compare", str(good), str(missing)]) == 1
    err = capsys.readouterr().err
    assert "posereid quality-compare: error: quality report" in err and f"{missing}: not found" in err


def test_the_command_names_its_reports_and_writes_compare_md(tmp_path: Path, capsys) -> None:
    seen = _write(tmp_path / "a", _report(0.5, 0.4, 0.1))
    unseen = _write(tmp_path / "b", _report(0.5, 0.12, 0.1))
    out = tmp_path / "cmp"
    assert main(["quality-compare", f"seen={seen}", f"unseen={unseen}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    written = (out / qc.COMPARE_NAME).read_text(encoding="utf-8")
    assert (
        written in printed and "# Generator quality: seen vs unseen" in written and "**WARNING**" in written
    )
    assert main(["quality-compare", str(seen), str(unseen), "--labels", "x,y"]) == 0
    assert "Cells: x / y." in capsys.readouterr().out
    assert main(["quality-compare", str(seen), str(unseen)]) == 0  # default labels: the folder names
    assert "Cells: a / b." in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["quality-compare", str(seen), str(unseen), "--labels", "only-one"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["quality-compare", str(seen)])


def test_the_system_names_are_evaluate_generators() -> None:
    from posereid.experiments.quality import evaluate

    assert (qc.CEILING_SYSTEM, qc.TRAINED_SYSTEM, qc.FLOOR_SYSTEM) == (
        evaluate.CEILING,
        evaluate.TRAINED,
        evaluate.FLOOR,
    )


def test_the_committed_seen_and_unseen_reports() -> None:
    seen = json.loads((SEEN_256 / qc.REPORT_NAME).read_text(encoding="utf-8"))
    unseen = json.loads((UNSEEN_256 / qc.REPORT_NAME).read_text(encoding="utf-8"))
    reports = [qc.load_quality_report(SEEN_256, "seen"), qc.load_quality_report(UNSEEN_256, "unseen")]
    comp = qc.compare_quality(reports)
    rows = _by_key(comp)
    assert [r.key for r in comp.rows] == [CEILING, TRAINED, TEACHER, FLOOR] and not comp.partial
    for key, system in ((CEILING, qc.CEILING_SYSTEM), (TRAINED, qc.TRAINED_SYSTEM)):
        for i, result in enumerate((seen, unseen)):
            for metric in ("pckh", "rank1", "mAP", "rank1_independent", "mAP_independent", "fd_reid"):
                assert rows[key].values[i][metric] == pytest.approx(result["systems"][system][metric])
    assert rows[TEACHER].values[1]["rank1"] == pytest.approx(unseen["settings"][0]["rank1"])
    assert rows[CEILING].identity[0] == pytest.approx((1.0, 1.0, 0.0))
    text = qc.render_quality_comparison(comp)
    assert "| ceiling (real targets) | 0.926 / 0.958 |" in text
    assert f"| {TRAINED} | 0.896 / 0.825 | 0.188 / 0.047 |" in text
