"""The one-off studies under ``studies/`` (run from the repository root): the ablation table (merging
committed and new runs, the mean ± sd over seeds, the budget column, the committed table's equal-budget
claim), the source-keypoint check and the CFLD probe."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from posereid.experiments.cli import main as cli_main
from posereid.models.cfld import CFLDPipeline
from posereid.models.pidm import PIDMPipeline
from studies import ablation, cfld_probe, source_pose_check

RESULTS = Path(__file__).resolve().parents[1] / "results" / "generator_v2"


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


def test_source_pose_check_writes_both_rows(tmp_path: Path) -> None:
    """The source-keypoint check scores the same pairs twice and reports both rows."""
    data = tmp_path / "data"
    assert cli_main(["synth-market", str(data), "--train-ids", "2", "--test-ids", "3", "--height", "64",
                     "--width", "32", "--seed", "3", "--no-progress"]) == 0  # fmt: skip
    PIDMPipeline.from_preset("tiny", image_size=(64, 32)).save_pretrained(tmp_path / "gen")
    out = tmp_path / "report.md"
    assert source_pose_check.main(["--generator", str(tmp_path / "gen"), "--data", str(data), "--n-pairs", "4",
                                   "--steps", "2", "--out", str(out)]) == 0  # fmt: skip
    rows = [line for line in out.read_text().splitlines() if line.startswith("| with")]
    assert [r.split("|")[1].strip() for r in rows] == ["with source keypoints", "without source keypoints"]


def test_probe_measures_what_the_denoiser_listens_to(synth_market: Path, tmp_path: Path) -> None:
    """The CFLD probe: a model without HGA has no HGA sensitivity; scaling the HGA projections up raises it;
    "HGA off" zeroes the HGA biases only (a reference-attention model whose biases are already 0 does not
    move: its reference tokens stay); swapping the source or the pose moves the output; a non-CFLD
    checkpoint is refused by name."""
    torch.manual_seed(0)
    for name, kw in (("full", {}), ("no_hga", {"use_hga": False})):
        CFLDPipeline.from_preset("tiny", image_size=(64, 32), **kw).save_pretrained(tmp_path / name)
    loud = CFLDPipeline.from_pretrained(tmp_path / "full")
    ref = CFLDPipeline.from_preset("tiny", image_size=(64, 32), reference_attention=True)
    with torch.no_grad():
        for proj in loud.model.hga_proj:
            proj.weight.mul_(50.0)
        for proj in ref.model.hga_proj:  # zero biases: zeroing them again changes nothing
            proj.weight.zero_()
            proj.bias.zero_()
    loud.save_pretrained(tmp_path / "loud")
    ref.save_pretrained(tmp_path / "ref")
    prompt, biases, refs = cfld_probe.split_source(
        ref.model, ref.model.encode_source(torch.rand(2, 3, 64, 32))
    )
    assert prompt.ndim == 3 and len(biases) == len(ref.model.hga_proj) > 0
    assert len(refs) == len(ref.model.reference_proj) > 0
    names = ("full", "no_hga", "loud", "ref")
    res = {n: cfld_probe.probe(tmp_path / n, synth_market, n_pairs=6) for n in names}
    assert all(s["hga"] == 0.0 for n in ("no_hga", "ref") for s in res[n]["sensitivity"])
    for a, b in zip(res["full"]["sensitivity"], res["loud"]["sensitivity"]):
        assert 0 < a["hga"] < b["hga"]
    assert all(s["appearance"] > 0 and s["pose"] > 0 for r in res.values() for s in r["sensitivity"])
    assert 0 < res["full"]["prompt_token_spread"] and 0 < res["full"]["prompt_person_spread"]
    assert "| " in cfld_probe.render(list(res.values()))
    PIDMPipeline.from_preset("tiny", image_size=(64, 32)).save_pretrained(tmp_path / "pidm")
    with pytest.raises(ValueError, match="pidm checkpoint"):
        cfld_probe.probe(tmp_path / "pidm", synth_market, n_pairs=6)
