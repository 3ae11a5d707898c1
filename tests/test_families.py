"""The PCDMs refiner after any family (RefinedGenerator, ``generate --refiner``, the augment transform).

That every family goes through ``posereid generate``, ``PoseTransferAugment`` and ``reid-gain`` unchanged is
tests/test_conformance.py's job (parametrized over the family registry).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from posereid.augment.pose_bank import PoseBank
from posereid.augment.transform import PoseTransferAugment
from posereid.experiments.cli import main as cli_main
from posereid.models import load_generator
from posereid.models.cfld import CFLDPipeline
from posereid.models.pcdms import PCDMsPipeline
from posereid.models.pidm import PIDMPipeline
from posereid.models.refine import RefinedGenerator, load_refiner, refiner_seeds
from tests.test_generate import BASE, make_market

HW = (32, 16)
PIPELINES = {"pidm": PIDMPipeline, "pcdms": PCDMsPipeline, "cfld": CFLDPipeline}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint of every family (random weights), saved as train-generator would."""
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for family, cls in PIPELINES.items():
        torch.manual_seed(0)
        cls.from_preset("tiny", image_size=HW).save_pretrained(root / family)
        out[family] = root / family
    return out


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    return make_market(tmp_path_factory.mktemp("market"), n_pids=2, per_pid=2)


def _kps(n: int, seed: int = 0) -> torch.Tensor:
    """Standing poses in the 32x16 frame (BASE is in 128x64), jittered per item."""
    rng = np.random.default_rng(seed)
    base = BASE / 4.0
    return torch.from_numpy(
        np.stack([base + rng.uniform(-1, 1, base.shape) for _ in range(n)]).astype(np.float32)
    )


def test_refined_generator_is_the_refiner_on_the_base_output(ckpts) -> None:
    base = load_generator(ckpts["pidm"], device="cpu")
    refiner = load_refiner(ckpts["pcdms"], device="cpu")
    both = RefinedGenerator(base, refiner, steps=2)
    src, tgt, skp = torch.rand(2, 3, *HW), _kps(2, 1), _kps(2, 2)
    seeds = [3, 4]
    coarse = base.generate(src, tgt, skp, steps=2, seeds=seeds)
    expected = refiner.refine(src, coarse, tgt, skp, steps=2, seeds=refiner_seeds(seeds))
    out = both.generate(src, tgt, skp, steps=2, seeds=seeds)
    assert torch.equal(out, expected)
    assert not torch.allclose(out, coarse)  # the refiner changed the base's images
    assert refiner_seeds(seeds) != seeds  # its noise is not the base's draw again


def test_refiner_size_and_family_errors(ckpts, tmp_path) -> None:
    refiner = load_refiner(ckpts["pcdms"], device="cpu")
    other = PIDMPipeline.from_preset("tiny", image_size=(64, 32))
    with pytest.raises(ValueError, match=r"refiner works at \(32, 16\).*generator at \(64, 32\)"):
        RefinedGenerator(other, refiner)
    with pytest.raises(ValueError, match="a pidm checkpoint has no refiner"):
        load_refiner(ckpts["pidm"])


def test_generate_with_a_refiner_refines_and_will_not_mix_into_an_unrefined_folder(
    ckpts, market, tmp_path, capsys
) -> None:
    common = [
        "generate", "--generator", str(ckpts["cfld"]), "--data", str(market), "--annotations",
        str(market / "ann.csv"), "--per-image", "1", "--steps", "2", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    plain, refined = tmp_path / "plain", tmp_path / "refined"
    assert cli_main([*common, "--out", str(plain)]) == 0
    assert (
        cli_main([*common, "--out", str(refined), "--refiner", str(ckpts["pcdms"]), "--refiner-steps", "2"])
        == 0
    )
    a = {p.name: np.asarray(Image.open(p)) for p in (plain / "bounding_box_train").glob("*.jpg")}
    b = {p.name: np.asarray(Image.open(p)) for p in (refined / "bounding_box_train").glob("*.jpg")}
    assert a.keys() == b.keys() and any(not np.array_equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    rc = cli_main([*common, "--out", str(plain), "--refiner", str(ckpts["pcdms"]), "--refiner-steps", "2"])
    assert rc != 0 and "started with other settings (generator_sha256" in capsys.readouterr().err


def test_augment_with_a_refiner_equals_the_refined_generator(ckpts) -> None:
    base = load_generator(ckpts["pidm"], device="cpu")
    refiner = load_refiner(ckpts["pcdms"], device="cpu")
    bank = PoseBank(_kps(6).numpy(), image_hw=HW)
    images = torch.rand(2, 3, *HW)
    aug = PoseTransferAugment(base, bank, p=1.0, steps=2, seed=0, refiner=refiner, refiner_steps=2)
    out = aug(images)
    params = aug.last_params
    target = torch.from_numpy(bank.get(params["pose_index"], size=HW))
    expected = RefinedGenerator(base, refiner, steps=2).generate(
        images, target, None, steps=2, seeds=[int(s) for s in params["seeds"]]
    )
    assert torch.allclose(out, expected, atol=1e-6)


def test_a_refiner_whose_refine_stage_was_never_trained_is_refused(ckpts, market, tmp_path, capsys) -> None:
    """Issue 27 item 5: a PCDMs checkpoint trained only up to the inpainter (``trained_stages:
    ["inpaint"]``) is refused as a refiner, naming the checkpoint and the command that trains the stage;
    ``generate --refiner`` stops before writing anything (it put every image through a random refiner)."""
    torch.manual_seed(0)
    pipe = PCDMsPipeline.from_preset("tiny", image_size=HW).set_training_stage("inpaint")
    pipe.save_pretrained(tmp_path / "inpaint-only")
    ckpt = tmp_path / "inpaint-only"
    with pytest.raises(ValueError, match="refine stage of this pcdms checkpoint was never trained") as info:
        load_refiner(ckpt, device="cpu")
    msg = str(info.value)
    assert msg.startswith(f"{ckpt}: ") and f"['inpaint'] in {ckpt / 'model_index.json'}" in msg
    assert "train-generator --family pcdms --stage refine" in msg
    base = load_generator(ckpts["pidm"], device="cpu")
    with pytest.raises(ValueError, match=r"trained only inpaint, never its refine stage.*--stage refine"):
        RefinedGenerator(base, load_generator(ckpt, device="cpu"))
    out = tmp_path / "gen"
    capsys.readouterr()
    rc = cli_main([
        "generate", "--generator", str(ckpts["pidm"]), "--data", str(market), "--annotations",
        str(market / "ann.csv"), "--per-image", "1", "--steps", "2", "--out", str(out), "--device", "cpu",
        "--no-progress", "--refiner", str(ckpt),
    ])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith(f"posereid generate: error: {ckpt}: "), err
    assert "--stage refine" in err[0] and not out.exists()
    # trained through the refine stage, it is a refiner again
    pipe.set_training_stage("refine").save_pretrained(tmp_path / "refined")
    assert load_refiner(tmp_path / "refined", device="cpu").trained_stages == ("inpaint", "refine")
