"""The ablation table (``posereid.experiments.quality.ablation``): merging committed and new runs, the
mean ± sd over seeds, the budget column, and the committed table's equal-budget claim."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from posereid.experiments.quality import ablation

RESULTS = Path(ablation.__file__).resolve().parents[1] / "results" / "generator_v2"


def _scores(pckh: float, rank1: float = 0.0) -> dict[str, float]:
    return {"pckh": pckh, "rank1": rank1, "mAP": 0.1, "ssim": 0.2, "mask_ssim": 0.6, "id_margin": -0.3}


def _record(row: str, seed: int, pckh: float, steps: int = 500, refs: bool = False) -> dict:
    rec = {"row": row, "seed": seed, "steps": steps, "train_wall_s": 1.0, "trained": _scores(pckh)}
    if refs:
        rec["ceiling"], rec["floor"] = _scores(0.95, 0.6), _scores(0.01)
    return rec


def test_collect_merges_committed_runs_and_new_runs_win(tmp_path: Path) -> None:
    committed = tmp_path / "ablation_runs.json"
    committed.write_text(json.dumps({
        "flow": [_record("flow", 0, 0.10, refs=True)], "v_pred": [_record("v_pred", 0, 0.30)],
    }))  # fmt: skip
    work = tmp_path / "work"
    for row, seed, pckh in (("flow", 0, 0.80), ("flow", 1, 0.84)):
        (work / f"{row}-s{seed}").mkdir(parents=True)
        (work / f"{row}-s{seed}" / "result.json").write_text(json.dumps(_record(row, seed, pckh)))
    runs = ablation.collect(work, [committed])
    assert [(r["seed"], r["trained"]["pckh"]) for r in runs["flow"]] == [(0, 0.80), (1, 0.84)]
    assert [r["trained"]["pckh"] for r in runs["v_pred"]] == [0.30]  # only committed: kept

    runs["flow"][0]["ceiling"], runs["flow"][0]["floor"] = _scores(0.95, 0.6), _scores(0.01)
    bench = {"flow": {"sec_per_train_step": {"all": 0.6}, "sec_per_image": 0.9}}
    table = ablation.render_table(runs, bench)
    flow = next(line for line in table.splitlines() if line.startswith("| flow |"))
    cells = [c.strip() for c in flow.strip("|").split("|")]
    assert cells[1] == "0,1" and cells[2] == "0.820 ± 0.028"  # mean ± sd of 0.80 and 0.84
    assert cells[-3:] == ["500", "5.0", "0.90"]  # 500 steps × 0.6 s = 5.0 CPU-minutes
    v_pred = next(line for line in table.splitlines() if line.startswith("| v_pred |"))
    assert "0.300" in v_pred and v_pred.rstrip(" |").endswith("–")  # no bench entry: no budget claimed
    lines = table.splitlines()
    assert lines[2].startswith("| ceiling") and lines[-1].startswith("| floor")


def test_budget_of_a_staged_family_sums_its_stages() -> None:
    bench = {"pcdms": {"sec_per_train_step": {"inpaint": 2.0, "prior": 0.1, "refine": 1.0}}}
    stages = ablation.FAMILY_ROWS["pcdms"]["stage_steps"]
    want = (2.0 * stages["inpaint"] + 0.1 * stages["prior"] + 1.0 * stages["refine"]) / 60
    assert ablation.budget_minutes("pcdms", bench, 0) == pytest.approx(want)
    assert ablation.budget_minutes("nowhere", bench, 10) is None


def test_committed_family_rows_are_at_the_pidm_budget() -> None:
    """The committed table compares families at one CPU budget: every CFLD row within 20 % of PIDM's."""
    table = (RESULTS / "ablation_table.md").read_text()
    minutes = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 3 and re.fullmatch(r"\d+\.\d", cells[-2]):
            minutes[cells[0]] = float(cells[-2])
    pidm = minutes["flow"]
    for row in ("cfld", "cfld-no_hga", "cfld-no_prd"):
        assert abs(minutes[row] - pidm) <= 0.2 * pidm, (row, minutes[row], pidm)
