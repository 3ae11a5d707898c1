"""The PCDMs-style family: stages, losses, the canvas, guidance, checkpoints, the training loop and the CLI
(tiny preset, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gen_inputs import H, W
from gen_inputs import images as _images
from gen_inputs import pose as _pose
from PIL import Image, ImageDraw

from posereid.models import PoseTransferGenerator, load_generator
from posereid.models.checkpoint import (
    EMA_WEIGHTS_NAME,
    MODEL_INDEX_NAME,
    SCHEDULER_CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
)
from posereid.models.contract import FAMILIES, checkpoint_family
from posereid.models.pcdms import PCDMsPipeline
from posereid.models.pose import LIMBS
from posereid.models.training import (
    PosePairDataset,
    PoseRecord,
    TrainConfig,
    list_checkpoints,
    train_generator,
)


def _tiny(**overrides) -> PCDMsPipeline:
    torch.manual_seed(0)
    return PCDMsPipeline.from_preset("tiny", **overrides)


# --------------------------------------------------------------------------------------------------
# Stick figures: two asymmetric poses; an identity is the colours of arms, torso and legs
# --------------------------------------------------------------------------------------------------
IDENTITIES = (((230, 30, 30), (30, 30, 230), (240, 240, 40)), ((30, 200, 30), (240, 140, 20), (200, 40, 220)))


def _kps(kind: int) -> np.ndarray:
    """COCO-18 (x, y) at 32x16: 0 = left of centre, arms down; 1 = right of centre, arm raised, legs apart."""
    c = W / 2 - 0.5 + (-2 if kind == 0 else 1)
    pts = [
        (c, 4), (c, 8), (c - 3, 8), (c - 4, 13), (c - 4, 18), (c + 3, 8), (c + 4, 13), (c + 4, 18),
        (c - 2, 17), (c - 2, 23), (c - 2, 29), (c + 2, 17), (c + 2, 23), (c + 2, 29),
        (c - 1, 3), (c + 1, 3), (c - 2, 4), (c + 2, 4),
    ]  # fmt: skip
    kps = np.array(pts, np.float32)
    if kind == 1:
        kps[[3, 4, 6, 7]] = [(c - 5, 5), (c - 5, 1), (c + 5, 9), (c + 6, 11)]
        kps[[9, 10, 12, 13]] = [(c - 4, 23), (c - 6, 29), (c + 4, 23), (c + 6, 29)]
    return kps


def _figure(identity: int, kind: int) -> torch.Tensor:
    """``(3, H, W)`` in [0, 1]: a grey canvas with the stick figure of ``identity`` in pose ``kind``."""
    colours, pts = IDENTITIES[identity], [tuple(p) for p in _kps(kind)]
    im = Image.new("RGB", (W, H), (128, 128, 128))
    draw = ImageDraw.Draw(im)
    draw.polygon([pts[2], pts[5], pts[11], pts[8]], fill=colours[1])
    for a, b in LIMBS:
        part = 0 if {a, b} <= {2, 3, 4, 5, 6, 7} else 2 if {a, b} <= {8, 9, 10, 11, 12, 13} else 1
        draw.line([pts[a], pts[b]], fill=colours[part], width=2)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255


def _pairs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every same-identity pair (pose k → pose 1 − k): source, target, source_kps, target_kps."""
    rows = [(i, k) for i in range(len(IDENTITIES)) for k in (0, 1)]
    src = torch.stack([_figure(i, k) for i, k in rows])
    tgt = torch.stack([_figure(i, 1 - k) for i, k in rows])
    ks = torch.stack([torch.from_numpy(_kps(k)) for _, k in rows])
    kt = torch.stack([torch.from_numpy(_kps(1 - k)) for _, k in rows])
    return src, tgt, ks, kt


def _eval_loss(pipe: PCDMsPipeline, batch: tuple[torch.Tensor, ...], seeds: int = 4) -> float:
    """The current stage's loss with fixed draws (comparable before/after training)."""
    with torch.no_grad():
        return float(
            np.mean(
                [
                    pipe.training_loss(*batch, generator=torch.Generator().manual_seed(s)).item()
                    for s in range(seeds)
                ]
            )
        )


def _fit(pipe: PCDMsPipeline, stage: str, steps: int, lr: float) -> tuple[float, float, list[float]]:
    """``steps`` Adam steps of ``stage`` on the fixed stick-figure batch: eval loss before, after, train losses."""
    batch = _pairs()
    pipe.set_training_stage(stage)
    before = _eval_loss(pipe, batch)
    opt = torch.optim.Adam([p for p in pipe.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(123)
    pipe.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = pipe.training_loss(*batch, generator=g)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    pipe.eval()
    return before, _eval_loss(pipe, batch), losses


@pytest.fixture(scope="module")
def trained() -> tuple[PCDMsPipeline, float, float, list[float]]:
    """An inpainter trained 60 steps on the stick figures (v-prediction, no condition dropout: this checks
    that the conditions are learned; guidance is checked apart)."""
    pipe = _tiny(prediction_type="v_prediction", p_drop_pose=0.0, p_drop_appearance=0.0,
                 p_drop_source_pose=0.0, p_source_embedding=0.0)  # fmt: skip
    before, after, losses = _fit(pipe, "inpaint", 60, 3e-3)
    return pipe, before, after, losses


@pytest.fixture(scope="module")
def pipe() -> PCDMsPipeline:
    return _tiny().eval()


# --------------------------------------------------------------------------------------------------
# Construction and stages
# --------------------------------------------------------------------------------------------------
def test_presets_overrides_and_registration() -> None:
    tiny = _tiny()
    assert isinstance(tiny, PoseTransferGenerator) and tiny.family == "pcdms" and tiny.image_size == (H, W)
    assert FAMILIES["pcdms"][1] == ("PCDMsPipeline",)
    assert tiny.prior_scheduler.config.prediction_type == "sample"
    assert tuple(tiny.model.unet.config.sample_size) == (H, 2 * W)  # the canvas
    n = sum(p.numel() for p in tiny.parameters())
    assert 500_000 < n < 2_000_000, n
    wide = _tiny(
        image_size=(64, 32), prediction_type="v_prediction", prior_num_layers=1, refiner_use_target_pose=False
    )
    assert wide.image_size == (64, 32) and tuple(wide.prior.config.image_size) == (64, 32)
    assert tuple(wide.refiner.config.image_size) == (64, 32) and not wide.refiner.config.use_target_pose
    assert (
        wide.scheduler.config.prediction_type
        == wide.refiner_scheduler.config.prediction_type
        == "v_prediction"
    )
    assert wide.prior_scheduler.config.prediction_type == "sample" and wide.prior.config.num_layers == 1
    out = wide.generate(torch.rand(1, 3, 64, 32), _pose(0.0) * 2, steps=2, prior_steps=2, seeds=[0])
    assert out.shape == (1, 3, 64, 32) and out.std() > 0.01
    with pytest.raises(ValueError, match="unknown PCDMs config field 'bogus'"):
        _tiny(bogus=1)
    with pytest.raises(ValueError, match="prior has no config field 'bogus'"):
        _tiny(prior_bogus=1)
    with pytest.raises(ValueError, match="clean embedding"):
        _tiny(prior_prediction_type="epsilon")
    with pytest.raises(ValueError, match="embedding_dim 16 differs"):
        _tiny(prior_embedding_dim=16)
    with pytest.raises(ValueError, match="unknown pcdms preset 'huge'"):
        PCDMsPipeline.from_preset("huge")
    with pytest.raises(ValueError, match="down-sampling 4"):
        _tiny(image_size=(30, 16))


def test_set_training_stage_trains_only_that_stage() -> None:
    pipe = _tiny()
    src, tgt, ks, kt = _images(2, 1), _images(2, 2), _pose(0.0, 2), _pose(3.0, 2)
    owner = {"inpaint": "model.", "prior": "prior.", "refine": "refiner."}
    assert pipe.training_stage == "inpaint" and pipe.trained_stages == ()
    for stage in ("inpaint", "prior", "refine"):
        pipe.set_training_stage(stage)
        trainable = {k for k, p in pipe.named_parameters() if p.requires_grad}
        assert trainable and all(k.startswith(owner[stage]) for k in trainable), stage
        l1 = pipe.training_loss(src, tgt, ks, kt, generator=torch.Generator().manual_seed(5))
        l2 = pipe.training_loss(src, tgt, ks, kt, generator=torch.Generator().manual_seed(5))
        assert torch.isfinite(l1) and torch.equal(l1, l2)  # every draw from the generator
        pipe.zero_grad()
        l1.backward()
        with_grad = {k for k, p in pipe.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert with_grad and with_grad <= trainable, stage
    assert not any(p.requires_grad for p in pipe.model.embedder.parameters())  # the prior's target is frozen
    assert pipe.trained_stages == ("inpaint", "prior", "refine")
    assert pipe.default_stages == ("prior", "inpaint", "refine")
    assert pipe.reinitialized().trained_stages == pipe.trained_stages
    with pytest.raises(ValueError, match="unknown PCDMs training stage 'decode'"):
        pipe.set_training_stage("decode")


def test_inpaint_loss_ignores_the_source_half(pipe: PCDMsPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source half is given, not generated: whatever the network outputs there does not change the loss."""
    src, tgt, ks, kt = _images(2, 3), _images(2, 4), _pose(0.0, 2), _pose(3.0, 2)
    pipe.set_training_stage("inpaint")
    plain = pipe.training_loss(src, tgt, ks, kt, generator=torch.Generator().manual_seed(1))
    forward = type(pipe.model).forward

    def scribble_left(self, *args, **kwargs):  # noqa: ANN001, ANN202
        out = forward(self, *args, **kwargs).clone()
        out[..., :W] += 100.0
        return out

    monkeypatch.setattr(type(pipe.model), "forward", scribble_left)
    assert torch.equal(
        pipe.training_loss(src, tgt, ks, kt, generator=torch.Generator().manual_seed(1)), plain
    )


# --------------------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------------------
def test_inpainter_loss_falls(trained) -> None:  # noqa: ANN001
    _, before, after, losses = trained
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert after < 0.6 * before and last < 0.6 * first, (before, after, first, last)


def test_inpainter_follows_pose_and_appearance(trained) -> None:  # noqa: ANN001
    """After a short training the pose steers the image where the two poses differ, towards the right pose,
    and the source's colours reach the target. A model that ignored either condition fails."""
    pipe = trained[0]
    src = _figure(0, 0)[None].repeat(2, 1, 1, 1)
    ks = torch.from_numpy(_kps(0))[None].repeat(2, 1, 1)
    kt = torch.from_numpy(np.stack([_kps(0), _kps(1)]))
    a, b = pipe.generate(src, kt, ks, steps=8, guidance=(1.0, 1.0), seeds=[5, 5], stages=("inpaint",))
    real_a, real_b = _figure(0, 0), _figure(0, 1)
    where = (real_a - real_b).abs().amax(0) > 60 / 255
    change = (a - b).abs().mean(0)
    inside, outside = float(change[where].mean()), float(change[~where].mean())
    assert inside > 0.05 and inside > 1.5 * outside, f"pose change inside {inside:.3f}, outside {outside:.3f}"

    def err(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
        return float(((x - y) ** 2)[:, mask].mean())

    assert err(a, real_a, where) < err(a, real_b, where) and err(b, real_b, where) < err(b, real_a, where)
    # appearance: two identities, one target pose; each output is closer to its own identity's colours
    src2 = torch.stack([_figure(0, 0), _figure(1, 0)])
    o0, o1 = pipe.generate(src2, kt[1:].repeat(2, 1, 1), ks, steps=8, guidance=(1.0, 1.0), seeds=[5, 5],
                           stages=("inpaint",))  # fmt: skip
    r0, r1 = _figure(0, 1), _figure(1, 1)
    body = (r0 - r1).abs().amax(0) > 60 / 255
    assert err(o0, r0, body) < err(o0, r1, body) and err(o1, r1, body) < err(o1, r0, body)


def test_prior_and_refiner_losses_fall() -> None:
    pipe = _tiny()
    before, after, _ = _fit(pipe, "prior", 40, 3e-3)
    assert after < 0.6 * before, ("prior", before, after)
    before, after, _ = _fit(pipe, "refine", 20, 3e-3)
    assert after < 0.6 * before, ("refine", before, after)


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------
def test_canvas_returns_the_source_half_bit_identical(pipe: PCDMsPipeline) -> None:
    src = _images(2, 7)
    seen = []
    canvas = pipe.inpaint(src, _pose(2.0, 2), _pose(0.0, 2), steps=3, seeds=[1, 2],
                          callback=lambda i, t, x: seen.append(tuple(x.shape)))  # fmt: skip
    assert canvas.shape == (2, 3, H, 2 * W)
    assert torch.equal(canvas[..., :W], src)  # bit for bit: only the target half is generated
    assert not torch.allclose(canvas[..., W:], src, atol=0.05)
    assert seen == [(2, 3, H, W)] * 3  # the callback sees the target half
    no_kps = pipe.inpaint(src, _pose(2.0, 2), None, steps=2, sampler="ddim", seeds=[1, 2])
    assert torch.equal(no_kps[..., :W], src) and torch.isfinite(no_kps).all()
    # a sample does not depend on the rest of the batch
    one = pipe.inpaint(src[1:], _pose(2.0), _pose(0.0), steps=3, seeds=[2])
    torch.testing.assert_close(one[0], canvas[1], atol=1e-3, rtol=0)  # up to batched-kernel rounding


def test_guidance_one_one_is_the_conditional_prediction(pipe: PCDMsPipeline, monkeypatch) -> None:  # noqa: ANN001
    src, kt, ks = _images(2, 8), _pose(2.0, 2), _pose(0.0, 2)
    calls: list[tuple[torch.Tensor, ...]] = []
    forward = type(pipe.model).forward

    def spy(self, noisy, t, source, pose, tokens):  # noqa: ANN001, ANN202
        out = forward(self, noisy, t, source, pose, tokens)
        calls.append((noisy, t, source, pose, tokens, out))
        return out

    monkeypatch.setattr(type(pipe.model), "forward", spy)
    x, t = torch.randn(2, 3, H, 2 * W, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    noise = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = pipe.inpaint_denoiser(src, kt, ks, guidance=(1.0, 1.0), source_noise=noise)
        assert plain.num_branches == 1
        out = plain(x, t)
        assert len(calls) == 1 and calls[0][0].shape[0] == 2  # one call, no unconditional branch
        noisy, _, source, pose, tokens, cond = calls[0]
        assert torch.equal(out[..., W:], cond[..., W:])  # exactly the conditional prediction
        assert torch.equal(noisy[..., W:], x[..., W:])  # the target half of the state goes in unchanged
        torch.testing.assert_close(noisy[..., :W], pipe.scheduler.add_noise(src * 2 - 1, noise, t))
        assert pose[:, :, :, W:].abs().sum() > 0 and pose[:, :, :, :W].abs().sum() > 0  # both poses
        calls.clear()
        guided = pipe.inpaint_denoiser(src, kt, ks, guidance=(2.0, 3.0), source_noise=noise)(x, t)
        assert len(calls) == 1 and calls[0][0].shape[0] == 6  # the three branches in one batched call
        torch.testing.assert_close(calls[0][5][:2], cond, atol=1e-5, rtol=0)
        assert not torch.allclose(guided, out)
    with pytest.raises(ValueError, match="guidance weights must be finite"):
        pipe.generate(src, kt, steps=1, prior_guidance=(float("inf"), 1.0))


def test_stage_subsets_and_refine_checks(pipe: PCDMsPipeline) -> None:
    src, kt, ks = _images(2, 9), _pose(2.0, 2), _pose(0.0, 2)
    # without the prior, the inpainter gets the source's own embedding
    only = pipe.generate(src, kt, ks, steps=2, seeds=[3, 4], stages=("inpaint",))
    assert torch.equal(only, pipe.inpaint(src, kt, ks, steps=2, seeds=[3, 4])[..., W:])
    with_prior = pipe.generate(src, kt, ks, steps=2, prior_steps=2, seeds=[3, 4], stages=("inpaint", "prior"))
    emb = pipe.predict_embedding(src, kt, ks, steps=2, seeds=[3, 4])
    assert emb.shape == (2, pipe.model.config.embedding_dim) and not torch.allclose(emb, pipe.embed(src))
    assert not torch.equal(with_prior, only)
    full = pipe.generate(
        src, kt, None, steps=2, prior_steps=2, seeds=[3, 4], stages=("prior", "inpaint", "refine")
    )
    assert full.shape == (2, 3, H, W) and torch.isfinite(full).all()
    refined = pipe.refine(src, only, kt, steps=2, seeds=[3, 4])
    assert refined.shape == (2, 3, H, W) and not torch.allclose(refined, only)
    with pytest.raises(ValueError, match=r"lack 'inpaint'.*refine\(source, coarse, target_kps\)"):
        pipe.generate(src, kt, stages=("prior", "refine"))
    with pytest.raises(ValueError, match="unknown PCDMs stage"):
        pipe.generate(src, kt, stages=("inpaint", "upscale"))
    with pytest.raises(ValueError, match=r"coarse images are 64x32 but this generator works at 32x16"):
        pipe.refine(src, torch.rand(2, 3, 64, 32), kt, steps=1)
    with pytest.raises(ValueError, match=r"keypoints: expected shape \(2, 18, 2\)"):
        pipe.generate(src, kt, _pose(0.0, 1), steps=1)
    with pytest.raises(ValueError, match="NaN/Inf coordinates"):
        pipe.predict_embedding(src, torch.full((2, 18, 2), float("nan")), steps=1)


# --------------------------------------------------------------------------------------------------
# Checkpoints, the training loop, the CLI
# --------------------------------------------------------------------------------------------------
def test_save_load_bit_identical_and_ema_per_stage(pipe: PCDMsPipeline, tmp_path: Path) -> None:
    pipe.trained_stages = ("inpaint", "prior", "refine")
    ema = {k: v + 0.01 for k, v in pipe.state_dict().items()}
    pipe.save_pretrained(tmp_path / "ema", ema_state_dict=ema)
    pipe.save_pretrained(tmp_path / "ckpt")
    index = json.loads((tmp_path / "ckpt" / MODEL_INDEX_NAME).read_text())
    assert index["_class_name"] == "PCDMsPipeline" and index["prior"] == [
        "posereid.models.pcdms",
        "PCDMsPrior",
    ]
    assert index["trained_stages"] == ["inpaint", "prior", "refine"]
    for folder in ("prior", "inpainter", "refiner"):
        names = {f.name for f in (tmp_path / "ckpt" / folder).iterdir()}
        assert names == {"config.json", WEIGHTS_NAME, SCHEDULER_CONFIG_NAME}, (folder, names)
        assert EMA_WEIGHTS_NAME in {f.name for f in (tmp_path / "ema" / folder).iterdir()}
    assert (
        json.loads((tmp_path / "ckpt" / "prior" / SCHEDULER_CONFIG_NAME).read_text())["prediction_type"]
        == "sample"
    )
    assert not list(tmp_path.rglob("*.tmp-*"))
    assert checkpoint_family(tmp_path / "ckpt") == "pcdms"
    loaded = load_generator(tmp_path / "ckpt")
    assert type(loaded) is PCDMsPipeline and loaded.default_stages == ("prior", "inpaint", "refine")
    src, kt, ks = _images(2, 20), _pose(3.0, 2), _pose(0.0, 2)
    a = pipe.generate(src, kt, ks, steps=2, prior_steps=2, seeds=[7, 8])
    b = loaded.generate(src, kt, ks, steps=2, prior_steps=2, seeds=[7, 8])
    assert torch.equal(a, b)
    # EMA weights are preferred per stage; the raw ones stay available; names and order are the live ones
    with_ema = PCDMsPipeline.from_pretrained(tmp_path / "ema")
    raw = PCDMsPipeline.from_pretrained(tmp_path / "ema", use_ema=False)
    for key in ("model.unet.conv_in.weight", "prior.null_source", "refiner.unet.conv_in.weight"):
        assert torch.equal(with_ema.state_dict()[key], ema[key]) and torch.equal(
            raw.state_dict()[key], pipe.state_dict()[key]
        )
    assert [k for k, _ in with_ema.named_parameters()] == [k for k, _ in pipe.named_parameters()]
    (tmp_path / "ckpt" / MODEL_INDEX_NAME).write_text(json.dumps({**index, "_class_name": "PIDMPipeline"}))
    with pytest.raises(CheckpointError, match="not PCDMsPipeline"):
        PCDMsPipeline.from_pretrained(tmp_path / "ckpt")


def _records() -> list[PoseRecord]:
    def uint8(img: torch.Tensor) -> np.ndarray:
        return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    return [PoseRecord(uint8(_figure(i, k)), i, _kps(k), name=f"{i}_{k}") for i in range(2) for k in (0, 1)]


def test_training_loop_trains_one_stage_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared loop trains only the selected stage; killed by its time budget and resumed, it ends where
    an uninterrupted run ends (checkpoints hold every stage, the EMA uses the pipeline's names)."""
    import posereid.models.training as training

    ds = PosePairDataset(_records(), (H, W), seed=0)
    cfg = TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, ema_decay=0.9, checkpoint_every=0,
                      sample_every=0, tensorboard=False, seed=3, max_minutes=1.0)  # fmt: skip
    start = _tiny().set_training_stage("prior")
    init = {k: v.clone() for k, v in start.state_dict().items()}
    full = train_generator(start, ds, cfg, tmp_path / "full", progress=False)
    ticks = iter(range(0, 10_000, 25))  # every clock read is 25 s later: the 1-minute budget ends at step 3
    monkeypatch.setattr(training, "_clock", lambda: float(next(ticks)))
    cut = train_generator(_tiny().set_training_stage("prior"), ds, cfg, tmp_path / "cut", progress=False)
    assert cut.out_of_time and cut.steps == 3
    monkeypatch.setattr(training, "_clock", lambda: 0.0)
    rest = train_generator(_tiny().set_training_stage("prior"), ds, cfg, tmp_path / "cut", progress=False)
    assert (rest.start_step, rest.steps) == (3, 4)
    assert cut.losses + rest.losses == pytest.approx(full.losses, rel=1e-5)
    for use_ema in (False, True):
        a = PCDMsPipeline.from_pretrained(tmp_path / "full" / "final", use_ema=use_ema).state_dict()
        b = PCDMsPipeline.from_pretrained(tmp_path / "cut" / "final", use_ema=use_ema).state_dict()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k} (ema={use_ema})")
            assert k.startswith("prior.") or torch.equal(a[k], init[k]), f"{k} changed in the prior stage"
    assert any(not torch.equal(a[k], init[k]) for k in a if k.startswith("prior."))
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [3, 4]


def test_cli_trains_the_stages_in_order(synth_market: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from posereid.experiments.cli import main

    out = tmp_path / "gen"
    base = ["train-generator", "--data", str(synth_market), "--annotations", str(synth_market / "market-annotation-train.csv"),
            "--family", "pcdms", "--preset", "tiny", "--steps", "2", "--batch-size", "2", "--checkpoint-every", "0",
            "--sample-every", "0", "--no-progress"]  # fmt: skip
    assert main([*base, "--out", str(out), "--stage", "all"]) == 0
    for stage in ("inpaint", "prior", "refine"):
        assert [s for s, _ in list_checkpoints(out / stage)] == [2], stage
    final = load_generator(out / "final")
    assert type(final) is PCDMsPipeline and final.trained_stages == ("inpaint", "prior", "refine")
    prior_stage = PCDMsPipeline.from_pretrained(out / "prior" / "final")
    inpaint_stage = PCDMsPipeline.from_pretrained(out / "inpaint" / "final")
    key = "model.unet.conv_in.weight"  # each stage starts from the previous one's final/
    assert torch.equal(prior_stage.state_dict()[key], inpaint_stage.state_dict()[key])
    assert torch.equal(final.state_dict()[key], inpaint_stage.state_dict()[key])
    img = final.generate(_images(1, 0), _pose(0.0), steps=2, prior_steps=2, seeds=[0])
    assert img.shape == (1, 3, H, W)
    capsys.readouterr()
    assert main([*base, "--out", str(out)]) == 0  # a rerun: every stage finished, nothing to train
    assert capsys.readouterr().out.count("; skipped") == 3
    # one stage from an existing checkpoint
    assert main([*base, "--init", str(out / "final"), "--stage", "refine", "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "final" / MODEL_INDEX_NAME).is_file() and not (
        tmp_path / "r" / "inpaint"
    ).exists()
    assert main([*base, "--out", str(tmp_path / "x"), "--stage-steps", "1,2"]) == 1
    assert "--stage-steps: 2 value(s) for the 3 pcdms stages" in capsys.readouterr().err
    pidm = [a if a != "pcdms" else "pidm" for a in base]
    assert main([*pidm, "--out", str(tmp_path / "p"), "--stage", "prior"]) == 1
    assert "the pidm family trains in one stage" in capsys.readouterr().err
