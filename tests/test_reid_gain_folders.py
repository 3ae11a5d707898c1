"""reid-gain output folders across runs (issue 27 item 9) and reid-gain-compare's inputs (items 9, 10): a
refused run writes nothing, a folder without results takes new settings, the report says which baseline
cells were read and which trained, and the comparison refuses non-finite results and duplicate labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posereid.experiments import reid_gain as rg
from posereid.experiments.cli import main as cli_main
from posereid.experiments.synthetic import SynthConfig, write_synthetic_market
from posereid.reid_integration import train as reid_train

H, W = 32, 16


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("market")
    cfg = SynthConfig(n_train_ids=4, n_test_ids=3, per_camera=2, cameras=2, n_distractors=1, n_junk=1,
                      height=H, width=W, train_views=2, seed=5)  # fmt: skip
    write_synthetic_market(root, cfg, progress=False)
    return root


@pytest.fixture
def fake_reid(monkeypatch: pytest.MonkeyPatch) -> list:
    """Re-ID training replaced by a stub (the folders' bookkeeping is under test, not the models)."""
    calls: list = []

    def train(cfg, progress=True):  # noqa: ANN001, ANN202
        calls.append(cfg)
        return {"mAP": 0.25 + 0.01 * cfg.seed, "rank1": 0.5, "rank5": 0.6, "rank10": 0.7}

    monkeypatch.setattr(reid_train, "train_reid", train)
    return calls


def _config(market: Path, out: Path, **kw) -> rg.GainConfig:
    base = dict(
        data=market, out=out, fractions=(1.0,), arms=("plain",), seeds=(0,), reid_steps=2,
        reid_model="osnet_x0_25", reid_batch_size=8, height=H, width=W, device="cpu", progress=False,
    )  # fmt: skip
    return rg.GainConfig(**{**base, **kw})


def test_a_refused_run_writes_nothing_and_the_corrected_rerun_runs(
    market: Path, tmp_path: Path, fake_reid: list
) -> None:
    out = tmp_path / "gain"
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        rg.run_gain(_config(market, out, annotations=tmp_path / "missing.csv"))
    assert not (out / "gain_config.json").exists() and not fake_reid
    rows = rg.run_gain(_config(market, out))  # corrected: the CSV beside the data
    assert len(rows) == 1 and len(fake_reid) == 1
    with pytest.raises(FileNotFoundError, match="no generator checkpoint"):  # checked before the baselines
        rg.run_gain(_config(market, tmp_path / "g", arms=("plain", "plain+synthetic"), generator=tmp_path))
    assert not (tmp_path / "g" / "gain_config.json").exists() and len(fake_reid) == 1


def test_a_folder_without_results_takes_new_settings(market: Path, tmp_path: Path, fake_reid: list) -> None:
    """Settings recorded by a run that produced nothing are replaced; with work/ from the old settings the
    refusal says there is no result yet and what to delete."""
    out = tmp_path / "gain"
    out.mkdir()
    (out / "gain_config.json").write_text(json.dumps(_config(market, out, reid_steps=7).protocol()))
    rg.run_gain(_config(market, out))
    assert json.loads((out / "gain_config.json").read_text())["reid_steps"] == 2
    other = tmp_path / "other"
    (other / "work").mkdir(parents=True)
    (other / "gain_config.json").write_text(json.dumps(_config(market, other, reid_steps=7).protocol()))
    with pytest.raises(rg.ProtocolMismatchError, match=r"no result yet.*reid_steps.*delete .*work"):
        rg.run_gain(_config(market, other))
    with pytest.raises(rg.ProtocolMismatchError, match="holds results made with other settings"):
        rg.run_gain(_config(market, out, reid_steps=3))


def test_baselines_from_a_run_with_fewer_seeds_reports_read_and_trained_cells(
    market: Path, tmp_path: Path, fake_reid: list
) -> None:
    first = _config(market, tmp_path / "first", arms=("plain", "strong"), seeds=(0,))
    rg.run_gain(first)
    assert len(fake_reid) == 2
    second = _config(market, tmp_path / "second", arms=("plain", "strong"), seeds=(0, 1),
                     baselines_from=first.out)  # fmt: skip
    rows = rg.run_gain(second)
    assert len(fake_reid) == 4 and all(c.seed == 1 for c in fake_reid[2:])  # only seed 1 trained
    read = {(r["arm"], r["seed"]) for r in rows if r.get("read_from")}
    assert read == {("plain", 0), ("strong", 0)}
    text = (second.out / "results.md").read_text()
    line = next(ln for ln in text.splitlines() if "read from" in ln)
    assert f"read from `{first.out}`" in line and "100% `plain` seed 0; 100% `strong` seed 0" in line, line
    assert "trained in this run (not there): 100% `plain` seed 1; 100% `strong` seed 1" in line, line
    rg.run_gain(second)  # a rerun reads the provenance back from results.csv
    assert (second.out / "results.md").read_text() == text and len(fake_reid) == 4


def _write_run(out: Path, rows: list[dict], **settings: object) -> Path:
    out.mkdir(parents=True)
    (out / "gain_config.json").write_text(
        json.dumps({"generator_preset": "small", "generator_steps": 5, **settings})
    )
    rg.write_results(out / "results.csv", rows)
    return out


def _rows(synthetic: float) -> list[dict]:
    return [
        {"fraction": 1.0, "arm": arm, "seed": s, "mAP": value + s, "rank1": value + 5.0 + s}
        for arm, value in (("strong", 40.0), ("strong+synthetic", synthetic))
        for s in range(3)
    ]


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        rc = cli_main(argv)
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    return rc, capsys.readouterr().err


def test_compare_refuses_a_non_finite_result_naming_file_and_line(tmp_path: Path, capsys) -> None:
    a = _write_run(tmp_path / "a", _rows(42.0))
    rows = _rows(43.0)
    rows[4]["mAP"] = float("nan")
    b = _write_run(tmp_path / "b", rows)
    rc, err = _cli(["reid-gain-compare", str(a), str(b), "--out", str(tmp_path / "cmp")], capsys)
    assert rc == 1 and f"{b / 'results.csv'} line 6: mAP=nan" in err and "Traceback" not in err, err
    assert not (tmp_path / "cmp").exists()


def test_compare_tells_runs_with_one_recipe_apart(tmp_path: Path, capsys) -> None:
    a = _write_run(tmp_path / "a", _rows(42.0))
    b = _write_run(tmp_path / "b", _rows(44.0))
    assert cli_main(["reid-gain-compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| strong+synthetic | pidm `small`, 5 steps (lr None, kept) (a) |" in md, md
    assert "| strong+synthetic | pidm `small`, 5 steps (lr None, kept) (b) |" in md
    rg.write_comparison(
        [rg.load_run(a, "x"), rg.load_run(b, "x")], tmp_path / "cmp2"
    )  # the library: told apart
    md = (tmp_path / "cmp2" / "comparison.md").read_text()
    assert "| strong+synthetic | x (a) |" in md and "| strong+synthetic | x (b) |" in md
    capsys.readouterr()
    rc, err = _cli(
        ["reid-gain-compare", str(a), str(b), "--out", str(tmp_path / "c3"), "--labels", "x,x"], capsys
    )
    assert rc == 2 and "reid-gain-compare: error: --labels: 'x' is given to two runs" in err, err
    rc, err = _cli(["reid-gain-compare", str(a), str(a), "--out", str(tmp_path / "c4")], capsys)
    assert rc == 2 and "is given twice" in err, err


def test_compare_labels_of_the_wrong_count_is_a_usage_error(tmp_path: Path, capsys) -> None:
    a = _write_run(tmp_path / "a", _rows(42.0))
    b = _write_run(tmp_path / "b", _rows(44.0))
    rc, err = _cli(
        ["reid-gain-compare", str(a), str(b), "--out", str(tmp_path / "c"), "--labels", "A"], capsys
    )
    assert rc == 2 and "usage: posereid reid-gain-compare" in err, err
    assert "posereid reid-gain-compare: error: --labels has 1 label(s) for 2 run(s)" in err
