"""The consumers follow the checkpoint's sampling default when the user gives none (issue 25 item 3): a
few-step checkpoint samples with its own sampler at its default step count, guidance (1, 1); any other keeps
20 DPM-Solver++ steps at guidance 2. Checked on what each consumer records AND on what the denoiser ran
(a forward hook counts its calls and their batch: guided sampling stacks three branches in one call)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from posereid.augment.pose_bank import PoseBank
from posereid.augment.sampling_settings import (
    check_sampling,
    fill_from_own,
    own_sampling,
    refiner_sampler,
    resolve_sampling,
)
from posereid.augment.transform import PoseTransferAugment
from posereid.experiments.cli import main as cli_main
from posereid.experiments.quality.report import render_markdown
from posereid.models.contract import load_generator
from posereid.models.few_step import StepSizeEmbedding
from posereid.models.pidm import PIDMPipeline

#: the tiny few-step checkpoint: trained for 1 and 2 steps, 2 by default (so "its default" is not just 1)
FEW_STEPS, FEW_DEFAULT = (1, 2), 2
PLAIN = {"steps": 20, "sampler": "dpmsolver++", "guidance": (2.0, 2.0)}
FEW = {"steps": FEW_DEFAULT, "sampler": "few-step", "guidance": (1.0, 1.0)}


def _few_step(pipe: PIDMPipeline, steps=FEW_STEPS, default=FEW_DEFAULT) -> PIDMPipeline:
    width = pipe.denoiser().time_embedding.linear_2.out_features
    return pipe.enable_few_step(StepSizeEmbedding(time_embed_dim=width, steps=steps, default_steps=default))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """A plain and a few-step tiny checkpoint on disk (same weights)."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    pipe = PIDMPipeline.from_preset("tiny").eval()
    pipe.save_pretrained(root / "plain")
    _few_step(pipe).save_pretrained(root / "few")
    return {"plain": root / "plain", "few": root / "few"}


@pytest.fixture
def models(ckpts) -> dict[str, PIDMPipeline]:
    return {name: load_generator(path, device="cpu") for name, path in ckpts.items()}


def _count_calls(pipe) -> list[int]:
    """A list that grows by the batch size of every denoiser call of ``pipe``."""
    calls: list[int] = []
    pipe.denoiser().register_forward_hook(lambda _m, args, _out: calls.append(int(args[0].shape[0])))
    return calls


def _poses(n: int) -> np.ndarray:
    base = np.array(
        [[32, 20], [32, 30], [22, 31], [20, 45], [19, 58], [42, 31], [44, 45], [45, 58], [26, 62],
         [26, 85], [26, 108], [38, 62], [38, 85], [38, 108], [30, 18], [34, 18], [27, 19], [37, 19]],
        dtype=np.float32,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    return np.stack([base + rng.integers(-3, 4, base.shape) for _ in range(n)]).astype(np.float32)


def _tiny_market(root: Path) -> Path:
    """Three train images (two identities) at 128x64 with their PATN CSV, and a query/gallery pair."""
    from PIL import Image

    from posereid.reid_integration.market1501 import format_market_name, write_patn_csv

    rng, poses, ann = np.random.default_rng(0), iter(_poses(3)), {}
    for folder, items in (("bounding_box_train", ((1, 1), (1, 2), (2, 1))), ("query", ((50, 1),)),
                          ("bounding_box_test", ((50, 2),))):  # fmt: skip
        (root / folder).mkdir(parents=True)
        for pid, cam in items:
            name = format_market_name(pid, cam, 1, 5, 1)
            Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)).save(root / folder / name)
            if folder == "bounding_box_train":
                ann[name] = next(poses)
    write_patn_csv(root / "ann.csv", ann)
    return root


# --------------------------------------------------------------------------------------------------
# the rule
# --------------------------------------------------------------------------------------------------
def test_resolution_follows_generate(models) -> None:
    few, plain = models["few"], models["plain"]
    assert resolve_sampling(few) == FEW and resolve_sampling(plain) == PLAIN
    assert own_sampling(few) == FEW and own_sampling(plain) is None
    # a plain sampler on a few-step checkpoint is its flow path, at the plain defaults unless told
    assert resolve_sampling(few, sampler="euler") == {**PLAIN, "sampler": "euler"}
    assert resolve_sampling(few, steps=1) == {**FEW, "steps": 1}
    twelve = {**PLAIN, "steps": 12, "guidance": (1.0, 1.0)}
    assert resolve_sampling(plain, steps=12, guidance=(1, 1)) == twelve
    with pytest.raises(ValueError, match="trained for 1, 2 step"):
        resolve_sampling(few, steps=4)
    with pytest.raises(ValueError, match="folded in"):
        resolve_sampling(few, guidance=(2, 2))
    with pytest.raises(ValueError, match="needs a few-step checkpoint"):
        check_sampling(plain, FEW)
    assert (
        refiner_sampler(None) == refiner_sampler("few-step") == "dpmsolver++"
        and refiner_sampler("ddim") == "ddim"
    )
    # consumers with a recipe of their own (reid-gain, the gate) take the checkpoint's options only for its own
    # sampler: a few-step checkpoint sampled with DPM-Solver++ gets the recipe's steps and guidance, not 2 steps
    assert fill_from_own(FEW, sampler="dpmsolver++") == {
        "steps": None,
        "sampler": "dpmsolver++",
        "guidance": None,
    }
    assert (
        fill_from_own(FEW, steps=1) == {**FEW, "steps": 1} and fill_from_own(None, steps=3)["sampler"] is None
    )
    from posereid.experiments.quality.gate import recipe_sampling

    data = Path(
        "unused-recipe-probe"
    )  # choose_recipe(None, path) of a folder that is not there: the market recipe
    recipe = recipe_sampling(plain, data)
    assert recipe_sampling(few, data) == FEW
    assert recipe_sampling(few, data, sampler="dpmsolver++") == {**recipe, "sampler": "dpmsolver++"}
    # and it is what generate does with the same options left out
    x, kps = torch.rand(1, 3, 32, 16), torch.from_numpy(_poses(1) / 4)
    assert torch.equal(
        few.generate(x, kps, seeds=[3]), few.generate(x, kps, seeds=[3], **resolve_sampling(few))
    )


# --------------------------------------------------------------------------------------------------
# posereid generate
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["few", "plain"])
def test_generate_cli_samples_with_the_checkpoints_default(kind, ckpts, tmp_path, monkeypatch, capsys):
    import posereid.models.refine as refine

    calls: list[int] = []
    real_load = refine.load_sampler

    def load_and_count(*args, **kwargs):
        generator = real_load(*args, **kwargs)
        generator.denoiser().register_forward_hook(lambda _m, a, _o: calls.append(int(a[0].shape[0])))
        return generator

    monkeypatch.setattr(refine, "load_sampler", load_and_count)
    out, market = tmp_path / "out", _tiny_market(tmp_path / "market")
    argv = ["generate", "--generator", str(ckpts[kind]), "--data", str(market), "--annotations",
            str(market / "ann.csv"), "--per-image", "1", "--out", str(out), "--no-progress", "--device", "cpu"]  # fmt: skip
    assert cli_main(argv) == 0
    expected = FEW if kind == "few" else PLAIN
    recorded = json.loads((out / "generate_config.json").read_text())
    assert {k: recorded[k] for k in expected} == {**expected, "guidance": list(expected["guidance"])}
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert lines and all(line["sampler"] == expected["sampler"] for line in lines)
    assert f"{expected['sampler']}, {expected['steps']} step(s)" in capsys.readouterr().out
    # what ran: one batch of the 3 sources; few-step: its default count of unguided calls
    assert len(lines) == 3 and calls == [3 * (1 if kind == "few" else 3)] * expected["steps"]
    # the folder recorded what was used: the same setting spelled out resumes it (nothing left to do)
    g = ",".join(f"{w:g}" for w in expected["guidance"])
    spelled = ["--steps", str(expected["steps"]), "--sampler", expected["sampler"], "--guidance", g]
    assert cli_main([*argv, *spelled]) == 0 and "0 generated, 3 already done" in capsys.readouterr().out


def test_generate_config_takes_the_few_step_sampler_and_none(tmp_path) -> None:
    from posereid.augment.generate import GenerateConfig

    config = GenerateConfig(tmp_path, per_image=1)
    assert (config.steps, config.sampler, config.guidance) == (None, None, None)
    assert GenerateConfig(tmp_path, per_image=1, sampler="few-step").sampler == "few-step"
    with pytest.raises(ValueError, match=r"GenerateConfig\.sampler"):
        GenerateConfig(tmp_path, per_image=1, sampler="nope")


# --------------------------------------------------------------------------------------------------
# PoseTransferAugment
# --------------------------------------------------------------------------------------------------
def test_transform_samples_with_the_checkpoints_default(models) -> None:
    bank = PoseBank(_poses(6))
    images = torch.rand(3, 3, 64, 32)
    few, plain = models["few"], models["plain"]
    few_calls, plain_calls = _count_calls(few), _count_calls(plain)

    aug = PoseTransferAugment(few, bank, p=1.0, seed=0)
    assert (aug.steps, aug.sampler, aug.guidance) == (FEW_DEFAULT, "few-step", (1.0, 1.0))
    assert "sampler='few-step'" in repr(aug) and f"steps={FEW_DEFAULT}" in repr(aug)
    out = aug(images)
    assert few_calls == [3] * FEW_DEFAULT  # one unguided call per step for the whole batch
    explicit = PoseTransferAugment(
        few, bank, p=1.0, seed=0, sampler="few-step", steps=FEW_DEFAULT, guidance=1
    )
    assert torch.equal(out, explicit(images))

    aug = PoseTransferAugment(plain, bank, p=1.0, seed=0)
    assert (aug.steps, aug.sampler, aug.guidance) == (20, "dpmsolver++", (2.0, 2.0))
    aug(images)
    assert plain_calls == [9] * 20  # three guidance branches stacked in each call

    # a few-step setting the checkpoint cannot sample stops at construction, not inside a training loop
    with pytest.raises(ValueError, match="PoseTransferAugment: .*trained for 1, 2"):
        PoseTransferAugment(few, bank, steps=4)
    with pytest.raises(ValueError, match="PoseTransferAugment: .*few-step checkpoint"):
        PoseTransferAugment(plain, bank, sampler="few-step")


# --------------------------------------------------------------------------------------------------
# evaluate-generator
# --------------------------------------------------------------------------------------------------
def test_evaluate_generator_resolves_every_row_per_checkpoint(models, synth_market) -> None:
    from posereid.experiments.quality.evaluate import EvaluateConfig, evaluate_generator

    few, plain = models["few"], models["plain"]
    few_calls, plain_calls = _count_calls(few), _count_calls(plain)
    config = EvaluateConfig(
        data=synth_market, pose_estimator=None, n_pairs=2, seed=0, include_ceiling=False, batch_size=8,
        sweep={"steps": [1, 2]},
        settings=({"generator": "teacher"}, {"sampler": "few-step", "steps": 1},
                  {"generator": "teacher", "sampler": "euler", "steps": 1, "guidance": 1}),
        other_generators={"teacher": "the flow checkpoint"},
    )  # fmt: skip
    res = evaluate_generator(few, config, others={"teacher": plain})
    cfg = res["config"]
    assert (cfg["sampler"], cfg["steps"], list(cfg["guidance"])) == ("few-step", FEW_DEFAULT, [1.0, 1.0])
    assert cfg["sampling_asked"] == {"steps": None, "sampler": None, "guidance": None}
    assert cfg["other_generators"] == {"teacher": "the flow checkpoint"}
    assert [(r["sampler"], r["steps"]) for r in res["sweep"]] == [("few-step", 1), ("few-step", 2)]
    assert [(r["generator"], r["sampler"], r["steps"], tuple(r["guidance"])) for r in res["settings"]] == [
        ("teacher", "dpmsolver++", 20, (2.0, 2.0)),
        ("trained", "few-step", 1, (1.0, 1.0)),
        ("teacher", "euler", 1, (1.0, 1.0)),
    ]
    # the floor (an untrained model with a fresh step-size embedding) was sampled the same few-step way
    assert "untrained (floor)" in res["systems"]
    # what ran on the few-step checkpoint: trained row 2 calls, sweep 1 + 2, setting row 1; pairs unguided
    assert few_calls == [2] * (FEW_DEFAULT + 1 + 2 + 1)
    assert plain_calls == [6] * 20 + [2]  # the teacher's default (guided, 3 branches) and its naive 1 step
    # same pairs and noise: the sweep point equal to the trained setting scores the same
    assert res["sweep"][1]["ssim"] == pytest.approx(res["systems"]["trained"]["ssim"], abs=1e-6)
    assert "## Settings" in render_markdown(res)


def test_evaluate_generator_refuses_bad_rows_before_any_work(models, tmp_path) -> None:
    from posereid.experiments.quality.evaluate import EvaluateConfig, resolve_settings
    from posereid.experiments.quality.report import parse_setting

    few, plain = models["few"], models["plain"]
    config, runs = resolve_settings(plain, EvaluateConfig(data=tmp_path))
    assert (config.steps, config.sampler, config.guidance) == (20, "dpmsolver++", (2.0, 2.0)) and runs == []
    teacher = {"teacher": plain}
    bad = [
        (few, {"sweep": {"steps": [4]}}, {}, "trained for 1, 2"),
        (
            few,
            {"settings": ({"generator": "teacher", "sampler": "few-step"},)},
            teacher,
            "few-step checkpoint",
        ),
        (few, {"settings": ({"generator": "nobody"},)}, teacher, "'nobody' was not given"),
        (few, {}, teacher, r"\['teacher'\] given but no setting row names them"),
        (plain, {"sampler": "few-step"}, {}, "few-step checkpoint"),
    ]
    for model, fields, others, words in bad:
        with pytest.raises(ValueError, match=words):
            resolve_settings(model, EvaluateConfig(data=tmp_path, **fields), others)
    assert parse_setting("generator=teacher,sampler=dpmsolver++,steps=20,guidance=1.5:2") == {
        "generator": "teacher", "sampler": "dpmsolver++", "steps": 20, "guidance": (1.5, 2.0),
    }  # fmt: skip
    for text in ("steps=0", "colour=red", "steps=1,steps=2", "sampler"):
        with pytest.raises(ValueError, match="--setting"):
            parse_setting(text)


def test_evaluate_generator_cli_takes_settings_and_another_generator(ckpts, synth_market, tmp_path) -> None:
    out = tmp_path / "report"
    argv = [
        "evaluate-generator", "--generator", str(ckpts["few"]), "--other-generator", f"teacher={ckpts['plain']}",
        "--data", str(synth_market), "--out", str(out), "--no-pose", "--n-pairs", "2", "--no-compare-untrained",
        "--no-ceiling", "--device", "cpu", "--setting", "sampler=few-step,steps=1",
        "--setting", "generator=teacher,sampler=euler,steps=2,guidance=1",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    doc = json.loads((out / "report.json").read_text())
    assert (doc["config"]["sampler"], doc["config"]["steps"]) == ("few-step", FEW_DEFAULT)
    assert [(r["generator"], r["sampler"], r["steps"]) for r in doc["settings"]] == [
        ("trained", "few-step", 1), ("teacher", "euler", 2),
    ]  # fmt: skip
    md = (out / "report.md").read_text()
    assert "(the checkpoint's default)" in md and f"`teacher`: `{ckpts['plain']}`" in md
    assert cli_main([*argv[:-4], "--setting", "generator=nobody"]) == 2  # refused, no report work


# --------------------------------------------------------------------------------------------------
# the demo
# --------------------------------------------------------------------------------------------------
def test_demo_plans_the_checkpoints_own_sampler(ckpts, monkeypatch) -> None:
    from posereid.experiments import demo

    monkeypatch.setattr(demo, "time_generation", lambda *a: 0.001)
    options = demo.DemoOptions(generator=None, tiny=False, train_generator=True, height=64, width=32,
                               budget_minutes=10.0, seed=0, arms=None)  # fmt: skip
    plans = {}
    for kind in ("few", "plain"):
        plans[kind] = demo.new_plan(options, "cpu")
        demo.plan_generation(plans[kind], ckpts[kind], 250, 60.0, "cpu")
    few, plain = plans["few"], plans["plain"]
    assert (few.sampler, few.steps, few.guidance) == ("few-step", FEW_DEFAULT, (1.0, 1.0))
    assert plain.sampler == "dpmsolver++" and plain.steps > FEW_DEFAULT
    assert few.per_image >= plain.per_image  # the saved time buys images
    # the timing probe runs a plain sampler: it works on a checkpoint trained for 1 step only
    one_step = _few_step(PIDMPipeline.from_preset("tiny").eval(), steps=(1,), default=1)
    assert demo.time_generation(one_step, 2) > 0
