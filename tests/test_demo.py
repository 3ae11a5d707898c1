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


def test_budget_planning_scales_with_measured_speed(monkeypatch) -> None:
    plan = demo.new_plan(_plan_args(), "cpu")
    monkeypatch.setattr(demo, "time_generator_step", lambda *a: 1.0)
    demo.plan_generator(plan, 230.0, "cpu")
    assert plan["generator_steps"] == 200  # 230 s / (1 s/step × 1.15 margin)

    slow, fast = dict(plan), dict(plan)
    monkeypatch.setattr(demo, "time_reid_step", lambda *a: 0.2)
    demo.plan_reid(slow, 30, 204.0, "cpu", None)
    assert slow["arms"] == ["plain", "plain+synthetic"] and slow["seeds"] == [0]
    assert slow["reid_steps"] == int(204.0 / (2 * (0.2 * 1.6 + 0.02)))
    monkeypatch.setattr(demo, "time_reid_step", lambda *a: 0.001)
    monkeypatch.setattr(demo, "_filter_available", lambda: True)
    demo.plan_reid(fast, 30, 2000.0, "cuda", None)
    assert fast["arms"][:4] == ["plain", "plain+synthetic", "strong", "strong+synthetic"]
    assert fast["arms"][-1] == "strong+synthetic+filtered" and fast["filter"] == "auto"
    assert len(fast["seeds"]) == 3 and fast["reid_steps"] == 3000  # capped


def test_later_stages_share_the_time_actually_left() -> None:
    shares = demo.SHARES_TRAIN
    usable = 600.0 * (1 - demo.FINAL_RESERVE)
    on_time = demo.stage_budget(shares, "generate", 600.0, 0.0)
    assert on_time == pytest.approx(usable * shares["generate"] / (shares["generate"] + shares["reid"]))
    late = demo.stage_budget(shares, "generate", 600.0, 300.0)  # generator training overran
    assert late < on_time
    assert demo.stage_budget(shares, "reid", 600.0, 400.0) == pytest.approx(usable - 400.0)
    assert demo.stage_budget(shares, "reid", 600.0, 10_000.0) == 0.0


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
    plan = demo.new_plan(_plan_args(), "cpu")
    monkeypatch.setattr(demo, "time_generation", lambda *a: 0.01)  # s per image per step
    demo.plan_generation(plan, ckpt, 250, 60.0, "cpu")
    cost = 250 * plan["steps"] * 0.01 * 1.15 * (3 if plan["guidance"][0] != 1.0 else 1)
    assert cost <= 60.0 and plan["per_image"] == 1 and plan["guidance"] == [1.0, 1.0]
    rich = demo.new_plan(_plan_args(), "cuda")
    monkeypatch.setattr(demo, "time_generation", lambda *a: 1e-5)
    demo.plan_generation(rich, ckpt, 250, 60.0, "cpu")
    assert rich["steps"] == 25 and rich["guidance"] == [2.0, 2.0] and rich["per_image"] == 4
