"""The independent re-ID judge of ``evaluate-generator`` (issue 24 item 3): a second re-ID model scores
identity beside the first, and the report warns when the two disagree on the trained generator."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from posereid.experiments.quality.evaluate import (
    CEILING,
    TRAINED,
    EvaluateConfig,
    evaluate_generator,
    reid_agreement,
    reid_judge_gap,
)
from posereid.experiments.quality.report import render_markdown
from posereid.reid_integration.market1501 import parse_market_name

# --------------------------------------------------------------------------------------------------
# People painted in two flat colours, two judges that each see one half, and a generator that keeps only
# the upper half: both judges recognise every real person; only the upper-body judge recognises the
# generated ones, so the two must disagree on the generator and agree on the ceiling.
# --------------------------------------------------------------------------------------------------
#: test pid → (upper colour, lower colour); the distractor (pid 0) is grey below, like a generated image
COLOURS = {
    4: ((0.9, 0.1, 0.1), (0.9, 0.9, 0.1)),
    5: ((0.1, 0.9, 0.1), (0.1, 0.9, 0.9)),
    6: ((0.1, 0.1, 0.9), (0.9, 0.1, 0.9)),
    0: ((0.9, 0.9, 0.9), (0.5, 0.5, 0.5)),
}


@pytest.fixture(scope="module")
def painted_market(synth_market, tmp_path_factory):
    """The synthetic Market folder (its names, pairs and poses) with every test image repainted: the
    upper half in its person's upper colour, the lower half in the lower colour, plus a little noise."""
    root = tmp_path_factory.mktemp("painted") / "market"
    shutil.copytree(synth_market, root)
    rng = np.random.default_rng(0)
    for folder in ("bounding_box_test", "query"):
        for path in sorted((root / folder).glob("*.jpg")):
            pid = parse_market_name(path.name)[0]
            upper, lower = COLOURS.get(pid, ((0.2, 0.2, 0.2), (0.2, 0.2, 0.2)))  # junk: dark
            with Image.open(path) as im:
                w, h = im.size
            arr = np.empty((h, w, 3), np.float32)
            arr[: h // 2], arr[h // 2 :] = upper, lower
            arr = np.clip(arr + rng.normal(0, 0.02, arr.shape), 0, 1)
            Image.fromarray((arr * 255).round().astype(np.uint8)).save(path, quality=95)
    return root


def _half_features(images: torch.Tensor, lower: bool) -> torch.Tensor:
    h = images.shape[-2] // 2
    part = images[..., h + 2 :, :] if lower else images[..., : h - 2, :]  # clear of the seam
    return torch.nn.functional.normalize(part.mean((-1, -2)) - 0.4, dim=1)


def upper_judge(images: torch.Tensor) -> torch.Tensor:
    """A re-ID judge that looks at the upper body's colour only."""
    return _half_features(images, lower=False)


def lower_judge(images: torch.Tensor) -> torch.Tensor:
    """A re-ID judge that looks at the lower body's colour only."""
    return _half_features(images, lower=True)


def upper_judge_copy(images: torch.Tensor) -> torch.Tensor:
    """Another judge that agrees with :func:`upper_judge` everywhere."""
    return _half_features(images, lower=False)


lower_judge.architecture = "lower-half"  # type: ignore[attr-defined]


class _UpperHalfGenerator(torch.nn.Module):
    """A stand-in generator: the source image with its lower half grey."""

    image_size = (32, 16)

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.w.device

    def generate(self, source: torch.Tensor, target_kps: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = source.clone()
        out[..., out.shape[-2] // 2 :, :] = 0.5
        return out


def _config(data, **kw) -> EvaluateConfig:
    """A fast evaluation: no pose judge, LPIPS or FID, no floor."""
    base = dict(data=data, pose_estimator=None, steps=1, n_pairs=None, include_floor=False, batch_size=64)
    return EvaluateConfig(**{**base, **kw})


@pytest.fixture(scope="module", autouse=True)
def _no_metric_weights(tmp_path_factory):
    """No LPIPS / FID weights from the torch hub cache: those metrics are not what is tested here."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("empty_torch_home")))
        yield


@pytest.fixture(scope="module")
def two_judges(painted_market, tmp_path_factory):
    """One evaluation with the upper-body judge first and the lower-body judge as the independent one."""
    out = tmp_path_factory.mktemp("two_judges")
    config = _config(
        painted_market, reid_checkpoint=upper_judge, independent_reid_checkpoint=lower_judge, out_dir=out,
        sweep={"steps": [1, 2]},
    )  # fmt: skip
    return evaluate_generator(_UpperHalfGenerator(), config), out


def test_report_carries_both_judges_and_they_differ(two_judges):
    result, out = two_judges
    ceil, gen = result["systems"][CEILING], result["systems"][TRAINED]
    for row in (ceil, gen, *result["sweep"]):
        assert {"rank1", "mAP", "rank1_independent", "mAP_independent"} <= set(row)
        assert all(math.isfinite(row[k]) for k in ("rank1", "mAP", "rank1_independent", "mAP_independent"))
    # both judges recognise every real person; only the upper-body judge recognises the half-grey copies
    assert ceil["rank1"] == ceil["rank1_independent"] == 1.0 and ceil["reid_valid_queries"] > 0
    assert gen["rank1"] == 1.0 and gen["rank1_independent"] == 0.0
    assert gen["mAP"] > 0.9 > 0.5 > gen["mAP_independent"]
    assert "reid_gap" in gen and "reid_gap" not in ceil and all("reid_gap" in r for r in result["sweep"])
    judges = result["reid_judges"]
    assert judges["first"]["architecture"] == "upper_judge"
    assert judges["independent"]["architecture"] == "lower-half"
    # the files: JSON keys, the markdown table rows labelled by architecture, the warning line
    doc = json.loads((out / "report.json").read_text())
    assert doc["systems"][TRAINED]["rank1_independent"] == pytest.approx(gen["rank1_independent"])
    assert (
        doc["reid_agreement"]["warning"] and doc["reid_agreement"]["gap"] > doc["reid_agreement"]["threshold"]
    )
    md = (out / "report.md").read_text()
    assert (
        "| re-ID rank-1 [upper_judge] ↑ |" in md and "| re-ID mAP, independent judge [lower-half] ↑ |" in md
    )
    assert "**WARNING: the two re-ID judges disagree" in md
    assert "| re-ID judges' gap (share of ceiling) ↓ |" in md


def test_the_warning_appears_exactly_when_the_gap_exceeds_the_threshold(two_judges):
    result, _ = two_judges
    systems = {k: dict(v) for k, v in result["systems"].items()}
    gap = reid_judge_gap(systems[TRAINED], systems[CEILING])["gap"]
    assert gap == pytest.approx(result["reid_agreement"]["gap"]) and gap == pytest.approx(1.0)
    for threshold, warned in ((gap - 1e-6, True), (gap, False), (gap + 1e-6, False)):
        agree = reid_agreement(systems, [], result["reid_judges"], threshold)
        assert (agree["warning"] is not None) is warned, threshold
        md = render_markdown({**result, "reid_agreement": agree})
        assert ("**WARNING:" in md) is warned and ("judges agree" in md) is not warned
    # the gap: the largest difference of the two judges' shares of the ceiling, over rank-1 and mAP
    gen = {"rank1": 0.5, "mAP": 0.3, "rank1_independent": 0.2, "mAP_independent": 0.3}
    ceil = {"rank1": 1.0, "mAP": 0.6, "rank1_independent": 0.5, "mAP_independent": 0.3}
    d = reid_judge_gap(gen, ceil)
    assert d["rank1"] == pytest.approx(0.5 - 0.4) and d["mAP"] == pytest.approx(0.5 - 1.0)
    assert d["gap"] == pytest.approx(0.5)
    # a ceiling at 0 under a judge gives no share: no gap, no warning
    assert math.isnan(reid_judge_gap(gen, {**ceil, "rank1_independent": 0.0, "mAP_independent": 0.0})["gap"])


def test_judges_that_agree_raise_no_warning(painted_market):
    config = _config(
        painted_market, reid_checkpoint=upper_judge, independent_reid_checkpoint=upper_judge_copy
    )
    result = evaluate_generator(_UpperHalfGenerator(), config)
    gen = result["systems"][TRAINED]
    assert gen["rank1"] == gen["rank1_independent"] and gen["reid_gap"] == 0.0
    assert result["reid_agreement"]["warning"] is None
    assert "judges agree" in render_markdown(result)


def test_single_judge_report_keeps_its_format(painted_market):
    config = _config(painted_market, reid_checkpoint=upper_judge)
    result = evaluate_generator(_UpperHalfGenerator(), config)
    gen = result["systems"][TRAINED]
    assert "rank1" in gen and not any(k.endswith("_independent") or k == "reid_gap" for k in gen)
    assert "reid_agreement" not in result and result["reid_judges"]["first"]["architecture"] == "upper_judge"
    md = render_markdown(result)
    assert "| re-ID rank-1 ↑ |" in md and "independent" not in md.split("Definitions")[0]


def test_config_refuses_a_judge_that_is_not_independent(tmp_path):
    with pytest.raises(ValueError, match="independent_reid_checkpoint needs reid_checkpoint"):
        EvaluateConfig(data=tmp_path, independent_reid_checkpoint=lower_judge)
    with pytest.raises(ValueError, match="independent_reid_checkpoint is reid_checkpoint"):
        EvaluateConfig(data=tmp_path, reid_checkpoint=upper_judge, independent_reid_checkpoint=upper_judge)
    with pytest.raises(ValueError, match="independent_reid_checkpoint is reid_checkpoint"):
        EvaluateConfig(
            data=tmp_path, reid_checkpoint="a/m.safetensors", independent_reid_checkpoint="a/m.safetensors"
        )
    for bad in (0, -0.1, float("nan"), True):
        with pytest.raises(ValueError, match="EvaluateConfig.reid_gap_threshold"):
            EvaluateConfig(data=tmp_path, reid_gap_threshold=bad)


# --------------------------------------------------------------------------------------------------
# The command with two tiny re-ID checkpoints of different architectures and seeds
# --------------------------------------------------------------------------------------------------
def _reid_checkpoint(path, arch: str, seed: int):
    from posereid.reid_integration.torchreid_plugin import build_reid_model, save_reid_checkpoint

    torch.manual_seed(seed)
    meta = {"model": arch, "num_classes": 3, "loss": "softmax", "height": 32, "width": 16, "seed": seed}
    return save_reid_checkpoint(path, build_reid_model(arch, 3), meta=meta)


def test_cli_with_two_reid_checkpoints(synth_market, tmp_path, capsys):
    from posereid.experiments.cli import main
    from posereid.models.pidm import PIDMPipeline

    first = _reid_checkpoint(tmp_path / "osnet.safetensors", "osnet_x0_25", 0)
    second = _reid_checkpoint(tmp_path / "resnet.safetensors", "resnet18", 1)
    torch.manual_seed(1)
    PIDMPipeline.from_preset("tiny").save_pretrained(tmp_path / "gen")
    out = tmp_path / "out"
    args = [
        "evaluate-generator", "--generator", str(tmp_path / "gen"), "--data", str(synth_market),
        "--out", str(out), "--n-pairs", "3", "--steps", "1", "--no-compare-untrained", "--no-pose",
        "--device", "cpu", "--reid-checkpoint", str(first), "--independent-reid-checkpoint", str(second),
    ]  # fmt: skip
    assert main(args) == 0
    doc = json.loads((out / "report.json").read_text())
    judges = doc["reid_judges"]
    assert (judges["first"]["architecture"], judges["first"]["seed"]) == ("osnet_x0_25", 0)
    assert (judges["independent"]["architecture"], judges["independent"]["seed"]) == ("resnet18", 1)
    assert {"rank1_independent", "mAP_independent"} <= set(doc["systems"][TRAINED])
    assert "reid_gap" in doc["systems"][TRAINED] and "threshold" in doc["reid_agreement"]
    printed = capsys.readouterr().out
    assert "[osnet_x0_25]" in printed and "[resnet18]" in printed
    # the same file twice, or the independent judge alone: refused with exit code 2 before any work
    assert main([*args[:-1], str(first)]) == 2
    assert "independent_reid_checkpoint is reid_checkpoint" in capsys.readouterr().err
    assert main([*args[:-4], "--independent-reid-checkpoint", str(second)]) == 2
    assert "needs reid_checkpoint" in capsys.readouterr().err
