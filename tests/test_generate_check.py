"""``posereid generate --check``: the generator gate before generating (issue 26 item 2).

The gate is ``check-generator``'s own code path (``gate_cli.check_generator``), run by the console script
before ``generate``. An untrained tiny generator is scored for real (a clothes-colour re-ID judge stands in
for a trained re-ID model, to keep it fast) and stops generate with exit code 4 before any image is
written; a passing verdict (stubbed) goes on to generate with the sampling setting the gate scored; left-out
sampling options resolve as each command samples (``check-generator``: reid-gain's; ``generate``: the
checkpoint's)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from test_gate import Spy, _run_cli

from posereid.augment.cli import CHECK_DIR, run_generate
from posereid.experiments.quality import gate as qgate
from posereid.experiments.quality.gate_cli import check_generator, exit_code

H, W = 64, 32


def _centre_colours(images: torch.Tensor) -> torch.Tensor:
    """A re-ID judge for the synthetic people without training: the mean colours of a vertical strip
    through the middle of the image (the person's clothes, little background), top to bottom in 4 parts."""
    h, w = images.shape[-2:]
    strip = images.float()[..., h // 5 : h * 9 // 10, w * 3 // 8 : w * 5 // 8]
    return torch.nn.functional.adaptive_avg_pool2d(strip, (4, 1)).flatten(1)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PIDM generator that was never trained, initialised as the gate's floor is (seed 0): its images
    are the floor's, so its verdict does not hang on the noise of a few pairs of 3 people."""
    from posereid.models.contract import family_class

    path = tmp_path_factory.mktemp("untrained") / "generator"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        family_class("pidm").from_preset("tiny", image_size=(H, W)).save_pretrained(path)
    return path


def _generate(data: Path, generator: Path, out: Path, *extra: str) -> list[str]:
    return [
        "generate", "--generator", str(generator), "--data", str(data), "--per-image", "1", "--out", str(out),
        "--device", "cpu", "--no-progress", "--check", "--check-pairs", "6", "--batch-size", "4", *extra,
    ]  # fmt: skip


def test_generate_check_stops_an_untrained_generator_before_any_image(
    synth_market: Path, untrained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qgate, "_reid_judge", lambda features, device: (_centre_colours, "centre colours"))
    out = tmp_path / "generated"
    rc, printed = _run_cli(
        _generate(synth_market, untrained, out, "--check-reid-checkpoint", "unused", "--steps", "2")
    )
    assert rc == 4, printed
    assert "generator gate: NEAR-FLOOR" in printed and "nothing generated" in printed
    assert not list(out.rglob("*.jpg")) and not list(out.glob("manifest*"))
    saved = json.loads((out / CHECK_DIR / "gate.json").read_text())
    result = qgate.GateResult.from_dict(saved)
    assert result.verdict == "near-floor" and saved["generator_checkpoint"] == str(untrained)
    assert abs(result.identity) < 0.05 and result.generator.mAP < result.ceiling.mAP
    assert result.ceiling.mAP - result.floor.mAP >= qgate.MIN_IDENTITY_GAP  # the judge could tell
    # generate's sampling: --steps given, the rest the checkpoint's (20 DPM-Solver++ steps at guidance 2)
    assert (result.settings["steps"], result.settings["sampler"]) == (2, "dpmsolver++")
    assert result.settings["guidance"] == [2.0, 2.0] and result.settings["split"] == "train"


def _passing(*args: object, **kwargs: object) -> qgate.GateResult:
    """A stand-in for ``gate_generator``: a passing verdict, nothing scored."""
    scores = qgate.GateScores(mAP=0.9, rank1=1.0, id_margin=0.1, pckh=0.9, fd_reid=0.1, sharpness=1.0)
    floor = qgate.GateScores(mAP=0.3, rank1=0.3, id_margin=0.0, pckh=0.1, fd_reid=1.0, sharpness=1.0)
    return qgate.GateResult(floor, scores, scores, 1.0, 1.0, 0.0, "pass", False, settings={"pairs": 6})


def test_generate_check_passes_then_generates_with_the_scored_setting(
    synth_market: Path, untrained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(_passing)
    monkeypatch.setattr(qgate, "gate_generator", spy)
    out = tmp_path / "generated"
    judge = tmp_path / "judge.safetensors"
    rc, printed = _run_cli(_generate(synth_market, untrained, out, "--check-reid-checkpoint", str(judge),
                                     "--steps", "1", "--guidance", "1.5"))  # fmt: skip
    assert rc == 0, printed
    assert "generator gate: PASS" in printed and "generate --check: pass: generating" in printed
    ((args, kwargs),) = spy.calls
    assert args[1:] == (synth_market, judge) and kwargs["n_pairs"] == 6 and kwargs["split"] == "train"
    assert (kwargs["steps"], kwargs["sampler"], kwargs["guidance"]) == (1, "dpmsolver++", (1.5, 1.5))
    assert list((out / "bounding_box_train").glob("*.jpg"))
    lines = [json.loads(x) for p in out.glob("manifest*.jsonl") for x in p.read_text().splitlines()]
    assert lines and all(e["steps"] == 1 and e["sampler"] == "dpmsolver++" for e in lines)


def test_check_generator_samples_as_reid_gain_or_as_generate(
    synth_market: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sampling left out: ``check-generator`` takes reid-gain's (a few-step checkpoint's own sampler, else the
    recipe's), ``generate --check`` the checkpoint's (what generate samples with)."""
    from posereid.models.few_step import StepSizeEmbedding
    from posereid.models.pidm import PIDMPipeline
    from posereid.reid_integration.recipes import choose_recipe

    torch.manual_seed(0)
    pipe = PIDMPipeline.from_preset("tiny").eval()
    pipe.save_pretrained(tmp_path / "plain")
    width = pipe.denoiser().time_embedding.linear_2.out_features
    pipe.enable_few_step(StepSizeEmbedding(time_embed_dim=width, steps=(1, 2), default_steps=2))
    pipe.save_pretrained(tmp_path / "few")
    spy = Spy(_passing)
    monkeypatch.setattr(qgate, "gate_generator", spy)
    recipe = choose_recipe(None, synth_market)
    expected = {
        ("plain", "recipe"): (recipe.steps, recipe.sampler, tuple(recipe.guidance)),
        ("few", "recipe"): (2, "few-step", (1.0, 1.0)),
        ("plain", "checkpoint"): (20, "dpmsolver++", (2.0, 2.0)),
        ("few", "checkpoint"): (2, "few-step", (1.0, 1.0)),
    }
    for (name, defaults), setting in expected.items():
        result = check_generator(
            tmp_path / name, synth_market, reid_checkpoint=tmp_path / "judge", sampling_defaults=defaults,
            device="cpu",
        )  # fmt: skip
        assert exit_code(result) == 0
        kwargs = spy.calls[-1][1]
        assert (kwargs["steps"], kwargs["sampler"], tuple(kwargs["guidance"])) == setting, (name, defaults)


def test_run_generate_refuses_a_check_that_did_not_run() -> None:
    """Called without the console script, ``--check`` would be skipped silently: refused instead."""
    with pytest.raises(RuntimeError, match="console script"):
        run_generate(argparse.Namespace(check=True))


def test_check_generator_and_generate_check_pass_the_annotation_frame(
    synth_market: Path, untrained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``check-generator --annotation-size HxW`` scores in that frame; ``generate --check`` passes generate's."""
    from posereid.augment.cli import add_generate_args
    from posereid.experiments import cli as ecli
    from posereid.experiments.quality import gate_cli

    spy = Spy(_passing)
    monkeypatch.setattr(qgate, "gate_generator", spy)
    argv = ["check-generator", "--generator", str(untrained), "--data", str(synth_market), "--device", "cpu",
            "--reid-checkpoint", str(tmp_path / "judge.safetensors")]  # fmt: skip
    rc, printed = _run_cli([*argv, "--annotation-size", "128x64"])
    assert rc == 0, printed
    assert spy.calls[-1][1]["annotation_hw"] == (128, 64)
    rc, printed = _run_cli(argv)
    assert rc == 0 and spy.calls[-1][1]["annotation_hw"] is None, printed
    parser = argparse.ArgumentParser()
    add_generate_args(parser)
    args = parser.parse_args(
        _generate(synth_market, untrained, tmp_path / "out", "--annotation-size", "128x64")[1:]
    )
    check_spy = Spy(_passing)
    monkeypatch.setattr(gate_cli, "check_generator", check_spy)
    assert ecli.check_before_generate(args) == 0
    assert check_spy.calls[-1][1]["annotation_hw"] == (128, 64)
