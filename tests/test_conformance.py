"""The generator contract, checked the same way for every registered family (``contract.FAMILIES``).

Parametrized over the registry, so a family added there is held to the same behaviours as the three built
in: tests/minimal_family.py is a fourth one, written from docs/ARCHITECTURE.md alone and registered on
import. A multi-stage family is checked as a user first has it: with its first training stage selected.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import minimal_family  # noqa: F401  (registers the fourth family)
import numpy as np
import pytest
import torch
from gen_inputs import H, W
from gen_inputs import images as _images
from gen_inputs import pose as _pose
from safetensors.torch import load_file, save_file

from posereid.augment.pose_bank import PoseBank
from posereid.augment.transform import PoseTransferAugment
from posereid.experiments.cli import main as cli_main
from posereid.models import (
    CHECKPOINT_DEFAULTED,
    FAMILIES,
    SAMPLING_DEFAULTS,
    CheckpointError,
    CheckpointMixin,
    GeneratorPipeline,
    PoseTransferGenerator,
    family_class,
    load_generator,
)
from posereid.models.sampling import NonFiniteSampleError

FAMILY_NAMES = sorted(FAMILIES)


def _fresh(family: str, seed: int = 0) -> GeneratorPipeline:
    torch.manual_seed(seed)
    pipe = family_class(family).from_preset("tiny", image_size=(H, W))
    if pipe.TRAINING_STAGES:
        pipe.set_training_stage(pipe.TRAINING_STAGES[0])
    return pipe


def _models(pipe: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in pipe.modules() if isinstance(m, CheckpointMixin)]


def test_the_fourth_family_is_registered_and_the_contract_has_what_callers_use() -> None:
    assert {"pidm", "pcdms", "cfld", "concat"} <= set(FAMILIES)
    for family in FAMILY_NAMES:
        pipe = _fresh(family)
        assert isinstance(pipe, PoseTransferGenerator) and pipe.family == family
        assert "tiny" in pipe.PRESETS and isinstance(pipe.TRAINING_STAGES, tuple)


def test_the_spelled_out_generate_signatures_keep_the_shared_defaults() -> None:
    """SAMPLING_DEFAULTS is written down twice on purpose (the base's generate, which the contract names,
    and the options dict the stage samplers complete); steps / sampler / guidance are ``None`` in the
    signature (the checkpoint decides) and every family's fresh model resolves them to the dict's values."""
    for fn in (PoseTransferGenerator.generate, GeneratorPipeline.generate):
        params = inspect.signature(fn).parameters
        want = {k: None if k in CHECKPOINT_DEFAULTED else v for k, v in SAMPLING_DEFAULTS.items()}
        assert {k: params[k].default for k in SAMPLING_DEFAULTS} == want, fn.__qualname__
    for family in FAMILY_NAMES:
        assert _fresh(family).sampling_defaults() == {k: SAMPLING_DEFAULTS[k] for k in CHECKPOINT_DEFAULTED}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_training_lowers_the_loss(family: str) -> None:
    pipe = _fresh(family).train()
    src, tgt, ks, kt = _images(2, 0), _images(2, 1), _pose(0.0, 2), _pose(3.0, 2)
    params = [p for p in pipe.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=2e-3)

    def loss() -> torch.Tensor:  # the same timesteps, noise and dropout every time
        return pipe.training_loss(src, tgt, ks, kt, generator=torch.Generator().manual_seed(0))

    before = float(loss().detach())
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < 0.7 * before


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_save_load_is_bit_identical_and_prefers_the_ema_weights(family: str, tmp_path: Path) -> None:
    pipe = _fresh(family).eval()
    src, kt, ks = _images(2, 2), _pose(2.0, 2), _pose(0.0, 2)
    out = pipe.generate(src, kt, ks, steps=2, seeds=[5, 6])
    pipe.save_pretrained(tmp_path / "plain")
    loaded = load_generator(tmp_path / "plain")
    assert type(loaded) is type(pipe) and not loaded.training
    assert torch.equal(loaded.generate(src, kt, ks, steps=2, seeds=[5, 6]), out)

    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in pipe.state_dict().items()}
    pipe.save_pretrained(tmp_path / "ema", ema_state_dict=ema)
    for use_ema, want in ((True, ema), (False, pipe.state_dict())):
        state = load_generator(tmp_path / "ema", use_ema=use_ema).state_dict()
        assert all(torch.equal(state[k], want[k]) for k in want), f"use_ema={use_ema}"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_seed_gives_the_same_image_whatever_else_is_in_the_batch(family: str) -> None:
    pipe = _fresh(family).eval()
    src, kt, ks = _images(3, 3), _pose(2.0, 3), _pose(0.0, 3)
    batch = pipe.generate(src, kt, ks, steps=2, seeds=[7, 8, 9])
    alone = pipe.generate(src[1:2], kt[1:2], ks[1:2], steps=2, seeds=[8])
    assert torch.allclose(batch[1], alone[0], atol=1e-3)
    assert (batch[0] - batch[2]).abs().mean() > 1e-3  # other seeds, other images


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_guidance_one_one_is_the_conditional_model_alone(family: str) -> None:
    """With ``(1, 1)`` every model call holds one branch (the batch itself) and no "dropped" condition is
    ever read: poisoning the learned null conditions changes nothing; ``(2, 2)`` does use them."""
    pipe = _fresh(family).eval()
    src, kt, ks = _images(2, 4), _pose(2.0, 2), _pose(0.0, 2)
    sizes: list[int] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0])) for m in _models(pipe)
    ]
    plain = pipe.generate(src, kt, ks, steps=2, seeds=[1, 2], guidance=(1.0, 1.0))
    assert sizes and set(sizes) == {2}
    sizes.clear()
    guided = pipe.generate(src, kt, ks, steps=2, seeds=[1, 2], guidance=(2.0, 2.0))
    assert max(sizes) > 2 and not torch.allclose(plain, guided)
    for h in hooks:
        h.remove()
    nulls = [p for name, p in pipe.named_parameters() if "null" in name]
    assert nulls, "a learned 'appearance dropped' condition is expected (a parameter named null...)"
    with torch.no_grad():
        for p in nulls:
            p.fill_(float("nan"))
    assert torch.equal(pipe.generate(src, kt, ks, steps=2, seeds=[1, 2], guidance=(1.0, 1.0)), plain)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_nan_is_refused_in_weights_files_live_weights_and_keypoints(family: str, tmp_path: Path) -> None:
    pipe = _fresh(family).eval()
    src, kt = _images(1, 5), _pose(1.0, 1)
    bad_kps = kt.clone()
    bad_kps[0, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pipe.generate(src, bad_kps, steps=1, seeds=[0])

    pipe.save_pretrained(tmp_path)
    weights = next(tmp_path.rglob("diffusion_pytorch_model.safetensors"))
    state = load_file(str(weights))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name][(0,) * state[name].ndim] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=rf"non-finite .*{name}"):
        load_generator(tmp_path)

    with torch.no_grad():
        for p in pipe.parameters():
            p.fill_(float("nan"))
    with pytest.raises(NonFiniteSampleError):
        pipe.generate(src, kt, steps=1, seeds=[0])


# ------------------------------------------------------------------------- the consumers of the contract
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    for family in FAMILY_NAMES:
        _fresh(family).save_pretrained(root / family)
    return {family: root / family for family in FAMILY_NAMES}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_offline_generation_and_the_augment_transform_accept_every_family(
    family: str, ckpts: dict[str, Path], tmp_path: Path
) -> None:
    from test_generate import make_market

    from posereid.augment.generate import read_manifest
    from posereid.reid_integration.market1501 import Market1501

    market = make_market(tmp_path / "market", n_pids=2, per_pid=2)
    out = tmp_path / "gen"
    rc = cli_main([
        "generate", "--generator", str(ckpts[family]), "--data", str(market), "--annotations",
        str(market / "ann.csv"), "--per-image", "1", "--steps", "1", "--out", str(out), "--device", "cpu",
        "--no-progress",
    ])  # fmt: skip
    assert rc == 0
    sources = [r for r in Market1501(market).train if r.has_identity]
    written = Market1501(out).train
    assert len(written) == len(sources) == len(read_manifest(out))
    assert {r.pid for r in written} == {r.pid for r in sources}  # filed under the source identities

    gen = load_generator(ckpts[family], device="cpu")
    bank = PoseBank(np.stack([_pose(s)[0].numpy() for s in (-2.0, 0.0, 2.0)]), image_hw=(H, W))
    images = torch.rand(2, 3, H, W)
    aug = PoseTransferAugment(gen, bank, p=1.0, steps=1, seed=0)
    first = aug(images)
    aug.reset()
    assert torch.equal(aug(images), first) and not torch.allclose(first, images)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_reid_gain_accepts_every_family(family: str, ckpts: dict[str, Path], tmp_path: Path) -> None:
    from posereid.experiments.synthetic import SynthConfig, write_synthetic_market

    market = tmp_path / "market"
    write_synthetic_market(
        market,
        SynthConfig(
            n_train_ids=3,
            n_test_ids=3,
            per_camera=1,
            cameras=2,
            n_distractors=1,
            n_junk=0,
            height=H,
            width=W,
            seed=1,
        ),  # fmt: skip
        progress=False,
    )
    out = tmp_path / "out"
    rc = cli_main([
        "reid-gain", "--data", str(market), "--out", str(out), "--fractions", "1", "--arms", "plain+synthetic",
        "--seeds", "0", "--reid-steps", "1", "--reid-model", "osnet_x0_25", "--reid-batch-size", "4",
        "--height", str(H), "--width", str(W), "--generator", str(ckpts[family]), "--steps", "1",
        "--per-image", "1", "--annotation-hw", str(H), str(W), "--device", "cpu", "--no-progress",
    ])  # fmt: skip
    assert rc == 0
    cell = json.loads(next((out / "work" / "cells").glob("*.json")).read_text())
    assert cell["synthetic_images"] > 0


def test_shared_config_fields_agree_across_families() -> None:
    """The size fields spelled out in every model's ``__init__`` (marked "kept on purpose" there) mean the same
    everywhere: same annotation, and the shared preset sizes build every model that takes them."""
    from posereid.models.cfld import CFLDModel
    from posereid.models.parts import TOKEN_UNET_SIZES
    from posereid.models.pcdms.model import PCDMsInpainter, PCDMsRefiner
    from posereid.models.pidm import PIDMModel

    token_models = (PIDMModel, PCDMsInpainter, PCDMsRefiner)
    common = ("image_size", "block_out_channels", "layers_per_block", "attention_head_dim", "norm_num_groups",
              "cross_attention_dim")  # fmt: skip
    for field in {*TOKEN_UNET_SIZES["tiny"], *common}:
        owners = [m for m in (*token_models, CFLDModel) if field in inspect.signature(m.__init__).parameters]
        kinds = {str(inspect.signature(m.__init__).parameters[field].annotation) for m in owners}
        assert len(kinds) == 1, (field, kinds)
        assert field not in TOKEN_UNET_SIZES["tiny"] or set(token_models) <= set(owners), field
    for model in token_models:
        assert list(model(**TOKEN_UNET_SIZES["tiny"]).config.image_size) == [H, W]
