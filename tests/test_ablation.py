"""Issue 24's ablation rows in ``studies/ablation.py``: reference attention, the identity loss, both (no
training: the rows' settings, the refusal of an ``+id`` row without a re-ID model, what a run records)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from studies import ablation


def _reid_checkpoint(path: Path) -> Path:
    from posereid.reid_integration.torchreid_plugin import build_reid_model, save_reid_checkpoint

    torch.manual_seed(0)
    meta = {"model": "osnet_x0_25", "num_classes": 3, "loss": "softmax", "height": 32, "width": 16}
    return save_reid_checkpoint(path, build_reid_model("osnet_x0_25", 3), meta=meta)


def test_issue24_rows_are_todays_rows_plus_what_their_names_say() -> None:
    flow, cfld = ablation._overrides("flow"), ablation._overrides("cfld")
    assert flow == {"prediction_type": "flow"} and cfld == {"prediction_type": "flow"}
    for base, family, steps in (("flow", "pidm", 500), ("cfld", "cfld", 320)):
        plain = ablation._overrides(base)
        assert ablation._overrides(f"{base}+ref") == {**plain, "reference_attention": True}
        assert ablation._overrides(f"{base}+id") == plain  # the loss is a training setting, not a model field
        assert ablation._overrides(f"{base}+ref+id") == {**plain, "reference_attention": True}
        for row in (f"{base}+ref", f"{base}+id", f"{base}+ref+id"):
            spec = ablation.FAMILY_ROWS[row]
            assert spec["family"] == family and spec["steps"] == steps, row  # today's budget
            assert (row in ablation.IDENTITY_ROWS) == row.endswith("+id"), row
            assert row in ablation.ISSUE24_ROWS
    assert ablation.FAMILY_ROWS["cfld"]["steps"] == 320 and "flow" in ablation.ROWS
    assert set(ablation.IDENTITY_ROWS) <= set(ablation.ISSUE24_ROWS)
    # the +ref rows build models with reference attention (tiny sizes: the same fields as the small preset)
    for row in ("flow+ref", "cfld+ref+id"):
        torch.manual_seed(0)
        pipe = ablation._pipeline(row).from_preset("tiny", **ablation._overrides(row))
        assert pipe.model.config.reference_attention is True and len(pipe.model.reference_proj) > 0
        assert pipe.family == ablation.FAMILY_ROWS[row]["family"]


def test_an_id_row_without_an_identity_model_is_refused_before_any_work(tmp_path: Path) -> None:
    work = tmp_path / "work"
    base = ["run", "--work", str(work), "--data", str(tmp_path), "--reid-checkpoint", str(tmp_path / "r")]
    with pytest.raises(SystemExit, match=r"flow\+ref\+id, cfld\+id .*--identity-model PATH"):
        ablation.main([*base, "--rows", "flow,flow+ref+id,cfld+id"])
    with pytest.raises(SystemExit, match="re-ID checkpoint not found"):
        ablation.main([*base, "--rows", "cfld+id", "--identity-model", str(tmp_path / "missing.safetensors")])
    with pytest.raises(SystemExit, match="unknown ablation row 'flow\\+nothing'"):
        ablation.main([*base, "--rows", "flow,flow+nothing"])
    assert not work.exists()  # nothing was trained
    ablation.check_identity(["flow", "cfld+ref"], None)  # rows without the loss need no model


def test_the_help_lists_the_new_options_and_rows(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ablation.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--identity-model", "--identity-weight", "--independent-reid-checkpoint"):
        assert option in text
    for row in ablation.ISSUE24_ROWS:
        assert f" {row}," in text or f" {row}." in text or text.endswith(row), row


def test_the_identity_loss_is_set_and_recorded_as_train_generator_does(tmp_path: Path) -> None:
    from posereid.experiments.identity_loss import IdentityLoss
    from posereid.experiments.train_generator import add_train_generator_args
    from posereid.models.io_utils import file_sha256

    parser = argparse.ArgumentParser()
    add_train_generator_args(parser)
    assert ablation.IDENTITY_WEIGHT == parser.get_default("identity_weight")
    assert ablation.IdentityLoss is IdentityLoss  # one owner of the glue, train-generator's
    ckpt = _reid_checkpoint(tmp_path / "reid.safetensors")
    identity = ablation.IdentityLoss(ckpt, 0.25)
    sha = file_sha256(ckpt)[:12]
    assert identity.record() == {"model": "reid.safetensors", "sha256": sha, "weight": 0.25}
    # train-generator's TrainConfig.identity_loss wording: a resume under the other command is checked alike
    assert identity.description() == f"reid.safetensors sha256:{sha} weight 0.25"
    torch.manual_seed(0)
    pipe = ablation._pipeline("flow+id").from_preset("tiny", **ablation._overrides("flow+id"))
    features, weight = identity.apply(pipe)._identity
    assert callable(features) and weight == 0.25
    assert features(torch.rand(2, 3, 32, 16)).shape[0] == 2


def test_the_table_names_the_identity_model_and_the_independent_judge() -> None:
    def scores(rank1: float, indep: bool) -> dict[str, float]:
        s = {"pckh": 0.8, "rank1": rank1, "mAP": 0.1, "ssim": 0.2, "mask_ssim": 0.6, "id_margin": -0.3}
        return {**s, "rank1_independent": rank1 / 2, "mAP_independent": 0.05} if indep else s

    rec = {"model": "model.safetensors", "sha256": "0123456789ab", "weight": 0.1, "is_first_judge": True}
    runs = {
        "flow": [{"row": "flow", "seed": 0, "steps": 500, "trained": scores(0.05, False)}],
        "flow+id": [
            {"row": "flow+id", "seed": s, "steps": 500, "trained": scores(0.2, True), "identity_loss": rec}
            for s in (0, 1)
        ],
    }
    table = ablation.render_table(runs)
    head = table.splitlines()[0]
    assert "rank-1 (indep. judge)" in head and "mAP (indep. judge)" in head
    flow = next(line for line in table.splitlines() if line.startswith("| flow |"))
    assert flow.count("–") == 2  # scored before the independent judge: its cells are blank
    ident = next(line for line in table.splitlines() if line.startswith("- flow+id"))
    assert "seeds 0,1" in ident and "model.safetensors sha256:0123456789ab, weight 0.1" in ident
    assert "first re-ID judge" in ident


def test_an_id_row_trains_with_the_loss_and_records_it(
    synth_market: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train_row`` hands the training loop a model with the identity loss set and a ``TrainConfig`` naming it
    (the loop itself is stubbed: no training here); a row without the loss gets neither."""
    import posereid.models.training as training

    seen: dict[str, tuple] = {}

    def fake_train(model, dataset, config, out, **kw):  # noqa: ANN001, ANN003, ANN202
        seen[Path(out).name] = (model._identity, config)

    monkeypatch.setattr(training, "train_generator", fake_train)
    identity = ablation.IdentityLoss(_reid_checkpoint(tmp_path / "reid.safetensors"))
    for row in ("cfld+id", "cfld+ref"):
        assert ablation.train_row(tmp_path / "work", synth_market, row, 0, 500, None, identity)
    (features, weight), config = seen["cfld+id-s0"]
    assert callable(features) and weight == 0.1 and config.identity_loss == identity.description()
    assert config.steps == 320  # the cfld rows' budget, whatever --steps says
    (features, _), config = seen["cfld+ref-s0"]
    assert features is None and config.identity_loss is None


def test_an_equal_budget_gives_rows_that_cost_more_per_step_fewer_steps(tmp_path: Path) -> None:
    """``run --equal-budget BENCH``: every row gets the quiet CPU-minutes of the PIDM flow row at 500 steps,
    so a row 25 % dearer per step trains 400 steps; staged rows keep their split; a row the bench lacks is
    refused before any training, naming it."""
    import json

    bench = {
        "flow": {"sec_per_train_step": {"all": 0.8}, "sec_per_image": 1.0},
        "flow+ref+id": {"sec_per_train_step": {"all": 1.0}, "sec_per_image": 1.0},
        "cfld": {"sec_per_train_step": {"all": 1.25}, "sec_per_image": 1.0},
        "pcdms": {"sec_per_train_step": {"inpaint": 0.5, "prior": 0.1, "refine": 0.5}, "sec_per_image": 1.0},
    }
    steps = ablation.equal_budget_steps(["flow", "flow+ref+id", "cfld", "pcdms"], bench)
    assert steps == {"flow": 500, "flow+ref+id": 400, "cfld": 320}
    for row, n in steps.items():  # each costs what the flow row at 500 steps costs
        assert ablation.budget_minutes(row, bench, n) == pytest.approx(0.8 * 500 / 60, rel=0.01)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    work = tmp_path / "work"
    with pytest.raises(KeyError, match="cfld\\+ref"):
        ablation.main(["run", "--work", str(work), "--data", str(tmp_path), "--reid-checkpoint", str(tmp_path),
                       "--rows", "flow,cfld+ref", "--equal-budget", str(path)])  # fmt: skip
    assert not work.exists()
    bench["flow+ref"] = {"sec_per_train_step": {}, "sec_per_image": 1.0}  # a bench that timed no training
    with pytest.raises(KeyError, match="flow\\+ref"):
        ablation.equal_budget_steps(["flow", "flow+ref"], bench)


def test_bench_times_the_training_of_a_one_model_family() -> None:
    """``bench``: a one-model family (its ``TRAINING_STAGES`` empty) gets its seconds per training step under
    ``all`` (the key ``--equal-budget`` reads), not an empty timing."""
    res = ablation.bench_rows(["flow"], train_steps=1, images=1, steps=1, rounds=2)
    cost = res["flow"]["sec_per_train_step"]
    assert list(cost) == ["all"] and cost["all"] > 0
    assert ablation.equal_budget_steps(["flow"], res) == {"flow": 500}


def test_bench_with_data_times_the_real_training_loop(
    synth_market: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bench --data``: the training cost is the real loop's (the shared ``train_generator`` on the data),
    from a longer run less a 5-step one; the bench says which it timed, and refuses a staged row."""
    from posereid.models import training

    runs = []
    real = training.train_generator

    def spy(model, dataset, cfg, out, **kw):
        runs.append(cfg.steps)
        return real(model, dataset, cfg, out, **kw)

    monkeypatch.setattr(training, "train_generator", spy)
    res = ablation.bench_rows(["flow"], train_steps=2, images=1, steps=1, rounds=1, data=synth_market)
    assert runs == [5, 7]
    assert res["flow"]["timed"] == "training loop" and res["flow"]["sec_per_train_step"]["all"] > 0
    assert (
        ablation.bench_rows(["flow"], train_steps=1, images=1, steps=1, rounds=1)["flow"]["timed"]
        == "bare step"
    )
    with pytest.raises(ValueError, match="pcdms"):
        ablation.bench_rows(["pcdms"], rounds=1, data=synth_market)


def test_bench_keeps_each_rows_fastest_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stall during one row's timing (the first row of a bench read 3x its cost) must not set the budget:
    the rows are timed in order, then in reverse, and each keeps its fastest timing."""
    calls = []

    def fake(row, train_steps, images, steps, identity, records):
        # the flow row stalls on its first timing only
        calls.append(row)
        stalled = row == "flow" and calls.count("flow") == 1
        return {"sec_per_train_step": {"all": 2.3 if stalled else 0.7}, "sec_per_image": 0.9}

    monkeypatch.setattr(ablation, "_bench_row", fake)
    res = ablation.bench_rows(["flow", "cfld"], rounds=2)
    assert calls == ["flow", "cfld", "cfld", "flow"]
    assert res["flow"]["sec_per_train_step"]["all"] == 0.7


def test_unseen_people_scores_join_the_result_and_the_table_flags_a_memorising_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run --unseen-data``: each run is scored on the unseen dataset too (its own judges; the real images and
    the untrained generator there on the first) and the table gives identity and pose shares seen vs unseen:
    a row that keeps identity only on the people of its training style is flagged, one that transfers is not."""
    import json

    from posereid.experiments.quality import evaluate
    from posereid.models import contract

    work, calls = tmp_path / "work", []
    scores: dict[str, tuple[float, float]] = {}  # row → (trained mAP_independent, PCKh) on the unseen data

    def fake_evaluate(gen, data, **kw):
        calls.append((gen, data, kw))
        m, p = scores[kw["generator_name"]]
        systems = {"trained": {"pckh": p, "rank1": m, "mAP": m, "mAP_independent": m}}
        if kw["include_ceiling"]:
            systems["real (ceiling)"] = {"pckh": 1.0, "rank1": 1.0, "mAP": 1.0, "mAP_independent": 1.0}
            systems["untrained (floor)"] = {"pckh": 0.0, "rank1": 0.0, "mAP": 0.0, "mAP_independent": 0.0}
        return {"systems": systems}

    monkeypatch.setattr(evaluate, "evaluate_generator", fake_evaluate)
    monkeypatch.setattr(contract, "load_generator", lambda path, device: f"gen:{path.parent.name}")
    refs = {"ceiling": {"pckh": 1.0, "mAP_independent": 1.0}, "floor": {"pckh": 0.0, "mAP_independent": 0.0}}
    for row, seen in (("flow+ref", 0.9), ("cfld", 0.6)):
        out = ablation.run_dir(work, row, 0)
        out.mkdir(parents=True)
        (out / "result.json").write_text(json.dumps(
            {"row": row, "seed": 0, "trained": {"pckh": 0.9, "mAP_independent": seen}, **(refs if row == "cfld" else {})}
        ))  # fmt: skip
    unseen = ablation.Unseen(
        tmp_path / "seed1", tmp_path / "judge.safetensors", tmp_path / "judge2.safetensors"
    )
    scores.update({"flow+ref": (0.3, 0.85), "cfld": (0.55, 0.85)})  # seen identity shares: 0.9 and 0.6
    ablation.evaluate_unseen(work, "flow+ref", 0, unseen, references=True, n_pairs=8)
    ablation.evaluate_unseen(work, "cfld", 0, unseen, references=False, n_pairs=8)
    assert [c[1] for c in calls] == [unseen.data] * 2
    assert (
        calls[0][2]["reid_checkpoint"] == unseen.reid
        and calls[0][2]["independent_reid_checkpoint"] == unseen.independent_reid
    )
    saved = json.loads((ablation.run_dir(work, "flow+ref", 0) / "result.json").read_text())
    assert saved["unseen"]["trained"]["mAP_independent"] == 0.3 and "ceiling" in saved["unseen"]
    table = ablation.render_seen_unseen(ablation.collect(work))
    rows = {
        ln.split(" | ")[0].strip("| "): ln
        for ln in table.splitlines()
        if ln.startswith("| flow") or ln.startswith("| cfld")
    }
    assert "| 0.90 | 0.30 | +0.60 |" in rows["flow+ref"] and "| 0.60 | 0.55 | +0.05 |" in rows["cfld"]
    assert "**Gap above 0.2**" in table and "flow+ref (identity +0.60)" in table and "cfld (" not in table
