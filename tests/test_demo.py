"""``posereid demo``: end to end at toy sizes, resumable, and budget planning without optional pieces."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from posereid.experiments import demo
from posereid.experiments import reid_gain as rg
from posereid.experiments.cli import main as cli_main
from posereid.reid_integration import train as reid_train


def _png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_tiny_demo_end_to_end_then_rerun_reuses_everything(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "demo_out"
    assert cli_main(["demo", "--tiny", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert stage in printed
    assert "| 100% | plain | 1 |" in printed and "| 100% | plain+synthetic | 1 |" in printed
    assert "ΔmAP" in printed
    for name in ("samples.png", "identities.png", "people.png", "gain/results.png"):
        assert str(out / name) in printed  # where every output is
        w, h = _png(out / name)
        assert w > 50 and h > 50
    rows = rg.read_results(out / "gain" / "results.csv")
    assert sorted(r["arm"] for r in rows) == ["plain", "plain+synthetic"]
    assert len({r["steps"] for r in rows}) == 1  # same optimisation steps for baseline and augmented
    syn = next(r for r in rows if r["arm"] == "plain+synthetic")
    assert syn["synthetic_images"] == syn["images"] > 0
    plan = json.loads((out / "demo_plan.json").read_text())
    assert plan["hw"] == [32, 16] and plan["generator_how"] == "train"
    # the restricted-views dataset: every train identity shows only 2 of the 4 views
    from posereid.experiments.synthetic import read_synthetic_meta

    views: dict[str, set[str]] = {}
    for r in read_synthetic_meta(out / "data"):
        if r["split"] == "train":
            views.setdefault(r["pid"], set()).add(r["view"])
    assert views and all(len(v) <= 2 for v in views.values())

    calls: list = []
    monkeypatch.setattr(reid_train, "train_reid", lambda *a, **k: calls.append(a) or {})
    assert cli_main(["demo", "--tiny", "--out", str(out), "--device", "cpu"]) == 0
    again = capsys.readouterr().out
    assert not calls, "a rerun with the same options must not retrain"
    assert (
        "reusing the plan" in again
        and "reusing the one trained before" in again
        and "(already done)" in again
    )
    assert "| 100% | plain+synthetic | 1 |" in again


def test_demo_with_a_given_generator_trains_none(tmp_path: Path, capsys) -> None:
    from posereid.models.pidm import PIDMPipeline

    ckpt = tmp_path / "gen"
    PIDMPipeline.from_preset("tiny", image_size=(32, 16)).save_pretrained(ckpt)
    out = tmp_path / "demo_out"
    assert cli_main(["demo", "--tiny", "--out", str(out), "--device", "cpu", "--generator", str(ckpt)]) == 0
    assert f"using the given checkpoint {ckpt}" in capsys.readouterr().out
    assert not (out / "gain" / "work" / "generator-1").exists()
    (syn,) = [r for r in rg.read_results(out / "gain" / "results.csv") if r["arm"] == "plain+synthetic"]
    assert syn["generator"] == f"given:{ckpt}" and syn["synthetic_images"] > 0


def _plan_args(**kw) -> argparse.Namespace:
    base = dict(generator=None, tiny=False, train_generator=True, height=64, width=32, budget_minutes=10.0,
                seed=0, arms=None)  # fmt: skip
    base.update(kw)
    return argparse.Namespace(**base)


def _generator_steps(monkeypatch, budget_s: float, s_per_step: float) -> int:
    plan = demo.new_plan(_plan_args(), "cpu")
    monkeypatch.setattr(demo, "time_generator_step", lambda *a: s_per_step)
    demo.plan_generator(plan, budget_s, "cpu")
    return plan["generator_steps"]


def test_generator_training_plan_fits_the_budget_and_grows_with_it(monkeypatch) -> None:
    floor = _generator_steps(monkeypatch, 0.0, 1.0)  # the least the plan ever asks for
    budgets = [0.0, 10.0, 60.0, 230.0, 600.0, 3600.0, 1e6]
    steps = [_generator_steps(monkeypatch, b, 1.0) for b in budgets]
    assert steps == sorted(steps)  # more budget never gives fewer steps
    assert all(n * 1.0 <= b for n, b in zip(steps, budgets) if n > floor)  # and they fit in it
    assert steps[budgets.index(230.0)] > floor
    # measured speed matters: a machine twice as fast gets more steps for the same budget
    assert _generator_steps(monkeypatch, 230.0, 0.5) > steps[budgets.index(230.0)]


def _reid_plan(monkeypatch, budget_s: float, s_per_step: float, arms: str | None = None) -> dict:
    plan = demo.new_plan(_plan_args(), "cuda")
    monkeypatch.setattr(demo, "time_reid_step", lambda *a: s_per_step)
    demo.plan_reid(plan, 30, budget_s, "cuda", arms)
    return plan


def test_reid_plan_fits_the_budget_and_more_budget_never_buys_less(monkeypatch) -> None:
    monkeypatch.setattr(demo, "_filter_available", lambda: True)
    sps = 0.01
    budgets = [0.0, 30.0, 204.0, 600.0, 2000.0, 5000.0, 20_000.0, 1e6]
    plans = [_reid_plan(monkeypatch, b, sps) for b in budgets]
    floor = plans[0]["reid_steps"]  # the least a run ever gets
    for b, p in zip(budgets, plans):
        assert p["arms"][:2] == ["plain", "plain+synthetic"]  # the baseline and its augmented arm, always
        if p["reid_steps"] > floor:  # every run (arm × seed) gets the same steps, and all of them fit
            assert len(p["arms"]) * len(p["seeds"]) * p["reid_steps"] * sps <= b
    assert len(plans[0]["seeds"]) == 1 and len(plans[0]["arms"]) == 2  # a tight budget: the minimal pair
    for small, big in zip(plans, plans[1:]):  # more budget: never fewer arms or seeds
        assert set(small["arms"]) <= set(big["arms"]) and len(small["seeds"]) <= len(big["seeds"])
    rich = plans[-1]
    assert "strong+synthetic+filtered" in rich["arms"] and rich["filter"] == "auto" and len(rich["seeds"]) > 1
    # with the arms fixed, more budget never gives fewer optimisation steps (over all seeds)
    fixed = [_reid_plan(monkeypatch, b, sps, arms="plain,plain+synthetic") for b in budgets]
    totals = [p["reid_steps"] * len(p["seeds"]) for p in fixed]
    assert totals == sorted(totals) and totals[-1] > totals[0]
    # measured speed matters: a slower step gets fewer steps for the same budget
    assert _reid_plan(monkeypatch, 204.0, 10 * sps)["reid_steps"] < plans[budgets.index(204.0)]["reid_steps"]


def test_later_stages_share_the_time_actually_left() -> None:
    budget = 600.0
    usable = budget * (1 - demo.FINAL_RESERVE)  # the rest is kept for the reports
    for shares in (demo.SHARES_TRAIN, demo.SHARES_SHIPPED):
        for elapsed in (0.0, 100.0, 300.0, 500.0):
            gen = demo.stage_budget(shares, "generate", budget, elapsed)
            # generation used all of its share
            reid = demo.stage_budget(shares, "reid", budget, elapsed + gen)
            assert gen > 0 and reid > 0
            assert elapsed + gen + reid == pytest.approx(usable)  # the stages fit, and use what is left
        # a stage that starts later (an earlier one overran) gets less; past the budget, nothing
        late = [demo.stage_budget(shares, "generate", budget, e) for e in (0.0, 100.0, 300.0, 10_000.0)]
        assert late == sorted(late, reverse=True) and late[-1] == 0.0
        assert demo.stage_budget(shares, "reid", budget, 10_000.0) == 0.0
        # more budget never gives a stage less time
        more = [demo.stage_budget(shares, "generate", b, 100.0) for b in (300.0, 600.0, 1200.0)]
        assert more == sorted(more)


@pytest.mark.parametrize("faster", [1, 2])
def test_cpu_threads_are_chosen_by_measured_speed(monkeypatch, faster: int) -> None:
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(demo.os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    # a busy machine makes 2 threads slower than 1; an idle one the reverse
    monkeypatch.setattr(demo, "_timed", lambda fn, n: 1.0 if torch.get_num_threads() == faster else 5.0)
    try:
        assert demo.pick_cpu_threads(lambda: None) == faster
        assert torch.get_num_threads() == faster
    finally:
        torch.set_num_threads(before)


def test_planning_skips_the_filter_when_it_is_unavailable(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "posereid.augment.filter", None)  # import now raises ImportError
    assert demo._filter_available() is False
    plan = demo.new_plan(_plan_args(), "cuda")
    monkeypatch.setattr(demo, "time_reid_step", lambda *a: 0.001)
    demo.plan_reid(plan, 30, 204.0, "cuda", None)
    assert "strong+synthetic+filtered" not in plan["arms"] and plan["filter"] is None
    assert rg.GainConfig(data=Path("."), out=Path("."), arms=tuple(plan["arms"])).arms == tuple(plan["arms"])


def test_generation_planning_fits_the_budget(monkeypatch, tmp_path: Path) -> None:
    from posereid.models.pidm import PIDMPipeline

    ckpt = tmp_path / "g"
    PIDMPipeline.from_preset("tiny").save_pretrained(ckpt)
    n_sources, s_per_image_step = 250, 0.001
    monkeypatch.setattr(demo, "time_generation", lambda *a: s_per_image_step)

    def plan_for(budget_s: float) -> dict:
        plan = demo.new_plan(_plan_args(), "cpu")
        demo.plan_generation(plan, ckpt, n_sources, budget_s, "cpu")
        return plan

    budgets = [0.0, 2.0, 10.0, 60.0, 1000.0]
    plans = [plan_for(b) for b in budgets]
    floor = plans[0]  # the least the plan ever asks for
    for b, p in zip(budgets, plans):
        assert p["per_image"] >= 1 and p["guidance"][0] == p["guidance"][1]
        # guided sampling evaluates the model three times per step (conditional and two unconditional)
        passes = 1 if p["guidance"] == [1.0, 1.0] else 3
        if (p["steps"], p["per_image"]) != (floor["steps"], floor["per_image"]):
            assert n_sources * p["per_image"] * p["steps"] * passes * s_per_image_step <= b
    steps = [p["steps"] for p in plans]
    assert steps == sorted(steps) and steps[-1] > steps[0]  # more budget never gives fewer steps
    images = [p["per_image"] for p in plans]
    assert images[-1] > images[0]  # and a large one buys more images per source
