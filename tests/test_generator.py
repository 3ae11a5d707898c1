"""The PIDM-style family and the generator contract: conditioning, training loss, checkpoints, the loader,
the shipped asset, local backbone (tiny preset, CPU)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from gen_inputs import H, W
from gen_inputs import images as _images
from gen_inputs import pose as _pose
from safetensors.torch import load_file, save_file

from posereid.models import PoseTransferGenerator, load_generator
from posereid.models.appearance import BackboneNotFoundError
from posereid.models.checkpoint import (
    EMA_WEIGHTS_NAME,
    SCHEDULER_CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    CheckpointMismatchError,
)
from posereid.models.contract import UnknownGeneratorError
from posereid.models.guidance import condition_dropout
from posereid.models.pidm import PIDMPipeline
from posereid.models.pose import POSE_CHANNELS
from posereid.models.sampling import NonFiniteSampleError, sample_timesteps

ASSET = Path(__file__).resolve().parents[1] / "posereid" / "assets" / "generator-small"


@pytest.fixture(scope="module")
def model() -> PIDMPipeline:
    torch.manual_seed(0)
    return PIDMPipeline.from_preset("tiny").eval()


def test_presets_and_sizes() -> None:
    torch.manual_seed(0)
    tiny = PIDMPipeline.from_preset("tiny")
    assert tiny.image_size == (H, W)
    assert isinstance(tiny, PoseTransferGenerator) and tiny.family == "pidm"
    n = sum(p.numel() for p in tiny.model.unet.parameters())
    assert 100_000 < n < 1_000_000
    wide = PIDMPipeline.from_preset("tiny", image_size=(64, 32))
    assert wide.image_size == (64, 32)
    out = wide.generate(torch.rand(1, 3, 64, 32), _pose(0.0) * 2, steps=2, seeds=[0])
    assert out.shape == (1, 3, 64, 32)
    with pytest.raises(ValueError, match="down-sampling 4"):
        PIDMPipeline.from_preset("tiny", image_size=(30, 16))
    with pytest.raises(ValueError, match="unknown pidm preset"):
        PIDMPipeline.from_preset("huge")
    # the presets' recipe is flow matching (results/generator_v2); a DDPM recipe keeps PIDM's linear betas
    assert tiny.prediction_type == "flow" and tiny.scheduler.config.num_train_timesteps == 1000
    sched = PIDMPipeline.from_preset("tiny", prediction_type="v_prediction").scheduler
    assert sched.config.num_train_timesteps == 1000
    assert sched.betas[0].item() == pytest.approx(1e-4) and sched.betas[-1].item() == pytest.approx(2e-2)


def test_wrong_image_size_raises(model: PIDMPipeline) -> None:
    with pytest.raises(ValueError, match=r"64x32 but this generator works at 32x16"):
        model.generate(torch.rand(1, 3, 64, 32), _pose(0.0), steps=1)
    with pytest.raises(ValueError, match="expected a \\(B, 3, H, W\\)"):
        model.encode_appearance(torch.rand(3, H, W))
    with pytest.raises(ValueError, match="NaN/Inf coordinates"):
        model.generate(torch.rand(1, 3, H, W), torch.full((1, 18, 2), float("nan")), steps=1)
    with pytest.raises(ValueError, match="guidance weights must be finite"):
        model.generate(torch.rand(1, 3, H, W), _pose(0.0), steps=1, guidance=(float("nan"), 2.0))
    with pytest.raises(ValueError, match="keypoints"):
        model.generate(torch.rand(2, 3, H, W), _pose(0.0), steps=1)  # 1 pose for 2 images


def test_condition_dropout_semantics(model: PIDMPipeline) -> None:
    src = _images(2, 1)
    tokens = model.encode_appearance(src, _pose(0.0, 2))
    net = model.model
    assert tokens.shape == (2, net.appearance.num_conv_tokens, net.config.cross_attention_dim)
    x = torch.randn(2, 3, H, W)
    t = torch.tensor([10, 700])
    pose = model.pose_maps(torch.stack([_pose(-2.0)[0], _pose(2.0)[0]]))
    empty = torch.zeros_like(pose)
    null = net.null_tokens(2, tokens.shape[1])
    yes, no = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)

    def run(p, tok, drop_p, drop_a):  # noqa: ANN001, ANN202
        return net(x, t, *condition_dropout(p, tok, empty, null, drop_p, drop_a))

    with torch.no_grad():
        cond = net(x, t, pose, tokens)
        assert torch.equal(cond, run(pose, tokens, no, no))
        # a dropped pose is the same as empty pose maps
        no_pose = run(pose, tokens, yes, no)
        assert torch.allclose(no_pose, net(x, t, torch.zeros(2, POSE_CHANNELS, H, W), tokens), atol=1e-6)
        assert not torch.allclose(no_pose, cond)
        # a dropped appearance ignores the source entirely
        other = model.encode_appearance(_images(2, 2), _pose(0.0, 2))
        a = run(pose, tokens, no, yes)
        b = run(pose, other, no, yes)
        assert torch.allclose(a, b, atol=1e-6)
        assert not torch.allclose(a, cond)
        # per-sample masks act per sample
        mixed = run(pose, tokens, no, torch.tensor([True, False]))
        assert torch.allclose(mixed[0], a[0], atol=1e-6) and torch.allclose(mixed[1], cond[1], atol=1e-6)


def test_training_loss_reproducible_and_differentiable() -> None:
    torch.manual_seed(0)
    m = PIDMPipeline.from_preset("tiny")
    src, tgt = _images(2, 3), _images(2, 4)
    kps_s, kps_t = _pose(0.0, 2), _pose(3.0, 2)
    l1 = m.training_loss(src, tgt, kps_s, kps_t, generator=torch.Generator().manual_seed(5))
    l2 = m.training_loss(src, tgt, kps_s, kps_t, generator=torch.Generator().manual_seed(5))
    assert l1.ndim == 0 and torch.isfinite(l1) and torch.equal(l1, l2)
    l1.backward()
    assert m.model.unet.conv_in.weight.grad is not None and m.model.unet.conv_in.weight.grad.abs().sum() > 0
    assert (
        m.model.appearance.stem.weight.grad is not None
        and m.model.appearance.stem.weight.grad.abs().sum() > 0
    )


def test_cubic_timesteps_favour_high_noise() -> None:
    t = sample_timesteps(4000, 1000, "cubic", generator=torch.Generator().manual_seed(0))
    u = sample_timesteps(4000, 1000, "uniform", generator=torch.Generator().manual_seed(0))
    assert 0 <= t.min() and t.max() <= 999
    assert t.float().mean() > 700 and abs(u.float().mean().item() - 500) < 40


def _fit(m: PIDMPipeline, steps: int) -> tuple[float, float]:
    """Eval loss (fixed noise/timesteps) on 2 fixed pairs before and after ``steps`` Adam steps."""
    src, tgt = _images(2, 10), _images(2, 11)
    ks, kt = _pose(-2.0, 2), _pose(2.0, 2)

    def eval_loss() -> float:
        with torch.no_grad():
            return sum(
                m.training_loss(src, tgt, ks, kt, generator=torch.Generator().manual_seed(s)).item()
                for s in range(4)
            )

    before = eval_loss()
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(123)
    m.train()
    for _ in range(steps):
        opt.zero_grad()
        m.training_loss(src, tgt, ks, kt, generator=g).backward()
        opt.step()
    m.eval()
    return before, eval_loss()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_short_training_reduces_loss_and_samples(prediction_type: str) -> None:
    torch.manual_seed(0)
    m = PIDMPipeline.from_preset("tiny", prediction_type=prediction_type)
    before, after = _fit(m, 30)
    assert after < 0.75 * before, (before, after)
    out = m.generate(_images(2, 10), _pose(2.0, 2), _pose(-2.0, 2), steps=4, seeds=[0, 1])
    assert out.shape == (2, 3, H, W) and out.std() > 0.01


def test_save_load_bit_identical_sampling(model: PIDMPipeline, tmp_path) -> None:
    model.save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["_class_name"] == "PIDMModel" and cfg["image_size"] == [H, W]
    sched = json.loads((tmp_path / "ckpt" / SCHEDULER_CONFIG_NAME).read_text())  # diffusers' own format
    assert sched["_class_name"] == "FlowMatchEulerDiscreteScheduler"  # the presets' flow recipe
    assert not list((tmp_path / "ckpt").glob("*.tmp-*"))
    loaded = load_generator(tmp_path / "ckpt")
    assert type(loaded) is PIDMPipeline
    src, kt, ks = _images(2, 20), _pose(3.0, 2), _pose(0.0, 2)
    a = model.generate(src, kt, ks, steps=3, seeds=[7, 8])
    b = loaded.generate(src, kt, ks, steps=3, seeds=[7, 8])
    assert torch.equal(a, b)


def test_checkpoint_files_are_readable_like_other_outputs(model: PIDMPipeline, tmp_path) -> None:
    """safetensors creates its files 0600; a checkpoint on a shared disk gets the umask's default mode."""
    model.save_pretrained(tmp_path / "ckpt", ema_state_dict=model.state_dict())
    mask = os.umask(0)
    os.umask(mask)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "ckpt").iterdir()}
    assert set(modes) == {
        "config.json",
        "model_index.json",
        WEIGHTS_NAME,
        EMA_WEIGHTS_NAME,
        SCHEDULER_CONFIG_NAME,
    }
    assert set(modes.values()) == {0o666 & ~mask}, modes


def test_ema_weights_preferred_on_load(model: PIDMPipeline, tmp_path) -> None:
    ema = {k: v + 0.01 for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path, ema_state_dict=ema)
    assert (tmp_path / EMA_WEIGHTS_NAME).is_file()
    key = "model.unet.conv_in.weight"
    with_ema = PIDMPipeline.from_pretrained(tmp_path)
    assert torch.equal(with_ema.state_dict()[key], ema[key])
    raw = PIDMPipeline.from_pretrained(tmp_path, use_ema=False)
    assert torch.equal(raw.state_dict()[key], model.state_dict()[key])
    # saving again without EMA removes the stale EMA file instead of letting it win on load
    model.save_pretrained(tmp_path)
    assert not (tmp_path / EMA_WEIGHTS_NAME).exists()
    assert torch.equal(PIDMPipeline.from_pretrained(tmp_path).state_dict()[key], model.state_dict()[key])
    with pytest.raises(CheckpointMismatchError, match="missing keys: unet.conv_in.bias"):
        model.save_pretrained(
            tmp_path, ema_state_dict={k: v for k, v in ema.items() if k != "model.unet.conv_in.bias"}
        )


def test_config_weights_mismatch_names_keys(model: PIDMPipeline, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / WEIGHTS_NAME))
    state["extra.weight"] = torch.zeros(2)
    del state["unet.conv_out.bias"]
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(CheckpointMismatchError) as err:
        PIDMPipeline.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "missing keys: unet.conv_out.bias" in msg and "unexpected keys: extra.weight" in msg
    assert WEIGHTS_NAME in msg
    # a config that builds a differently shaped model
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["cross_attention_dim"] = 48
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatch: .*attn2\.to_k\.weight"):
        PIDMPipeline.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        PIDMPipeline.from_pretrained(tmp_path / "nope")


def test_local_transformers_backbone(tmp_path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    bb_dir = tmp_path / "dino"
    Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=32,
            patch_size=8,
        )
    ).save_pretrained(bb_dir)
    m = PIDMPipeline.from_preset("tiny", backbone_path=str(bb_dir)).eval()
    src = _images(2, 30)
    tokens = m.encode_appearance(src, _pose(0.0, 2))
    n_bb = (32 // 8) ** 2 + 1  # patches + CLS
    assert tokens.shape == (2, m.model.appearance.num_conv_tokens + n_bb, m.model.config.cross_attention_dim)
    # the backbone tokens depend on the source, and the backbone is frozen
    other = m.encode_appearance(_images(2, 31), _pose(0.0, 2))
    assert not torch.allclose(tokens[:, -n_bb:], other[:, -n_bb:])
    assert not any(p.requires_grad for p in m.model.appearance.backbone.parameters())
    out = m.generate(src, _pose(2.0, 2), _pose(0.0, 2), steps=2, seeds=[0, 1])
    m.save_pretrained(tmp_path / "ckpt")
    bb_dir.rename(tmp_path / "moved")  # the checkpoint carries its own backbone copy
    loaded = PIDMPipeline.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(out, loaded.generate(src, _pose(2.0, 2), _pose(0.0, 2), steps=2, seeds=[0, 1]))
    missing = tmp_path / "no-such-backbone"
    with pytest.raises(BackboneNotFoundError, match="no-such-backbone"):
        PIDMPipeline.from_preset("tiny", backbone_path=str(missing))


# ------------------------------------------------------------------------------------ the contract


def test_checkpoint_without_its_scheduler_or_of_an_unknown_class_is_refused_naming_the_file(tmp_path) -> None:
    """Every model folder carries its training scheduler; a folder without one (or one whose class no family
    claims, like the pre-family ``PoseTransferGenerator``) is refused with the file's name, not guessed."""
    PIDMPipeline.from_preset("tiny").save_pretrained(tmp_path)
    (tmp_path / SCHEDULER_CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError, match=rf"{SCHEDULER_CONFIG_NAME}: not found"):
        load_generator(tmp_path)
    (tmp_path / "model_index.json").unlink()
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "_class_name": "PoseTransferGenerator"}))
    with pytest.raises(UnknownGeneratorError, match=r"config.json: _class_name 'PoseTransferGenerator'"):
        load_generator(tmp_path)


def test_shipped_asset_is_the_flow_recipe_and_follows_the_target_pose() -> None:
    """The shipped ``small`` generator loads with its flow schedule and, in its default one-call sampling,
    draws the person in the target pose: the pose judge finds the target's joints on its images, clearly
    more often than the source's (a model ignoring the target pose would copy the source's)."""
    gen = load_generator(ASSET)
    assert isinstance(gen, PIDMPipeline) and gen.image_size == (64, 32) and gen.prediction_type == "flow"
    assert (
        json.loads((ASSET / SCHEDULER_CONFIG_NAME).read_text())["_class_name"]
        == "FlowMatchEulerDiscreteScheduler"
    )
    from posereid.experiments.quality.judge import PoseJudgeEstimator, heldout_people, judge_metrics

    people, kps = heldout_people(8, gen.image_size)  # people neither the generator nor the judge saw
    target = np.roll(kps, 1, axis=0)  # each person into the next one's pose
    out = gen.generate(people, torch.from_numpy(target), torch.from_numpy(kps), seeds=list(range(8)))
    assert torch.isfinite(out).all()
    with PoseJudgeEstimator.from_pretrained() as judge:
        found = judge.detect(out)
    follows, stays = judge_metrics(found, target)["pckh"], judge_metrics(found, kps)["pckh"]
    assert follows > 0.7 and follows > stays + 0.15, (follows, stays)


def test_schedule_round_trips_through_scheduler_config(tmp_path) -> None:
    m = PIDMPipeline.from_preset("tiny", prediction_type="v_prediction", num_train_timesteps=500)
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert "prediction_type" not in cfg  # the schedule belongs to the scheduler file, not the model
    loaded = load_generator(tmp_path)
    assert loaded.prediction_type == "v_prediction" and loaded.scheduler.config.num_train_timesteps == 500


def test_load_generator_names_file_and_known_families(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "StableDiffusionSomething"}))
    with pytest.raises(UnknownGeneratorError, match=r"config\.json.*StableDiffusionSomething.*known: pidm"):
        load_generator(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON"):
        load_generator(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model_index.json or config.json"):
        load_generator(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_generator(tmp_path / "missing")


def test_damaged_weights_are_refused_naming_file_or_tensor(model: PIDMPipeline, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated download
    with pytest.raises(CheckpointError, match=WEIGHTS_NAME + ".*damaged"):
        load_generator(tmp_path)
    weights.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a pickle renamed to .safetensors
    with pytest.raises(CheckpointError, match=WEIGHTS_NAME):
        load_generator(tmp_path)
    state = {k: v.clone() for k, v in model.model.state_dict().items()}
    state["unet.conv_out.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"non-finite .* unet\.conv_out\.weight"):
        load_generator(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "image_size": "big"}))
    with pytest.raises(CheckpointError, match=r"config\.json: invalid PIDMModel config"):
        load_generator(tmp_path)


def test_nan_never_becomes_an_image(tmp_path) -> None:
    m = PIDMPipeline.from_preset("tiny").eval()
    with torch.no_grad():
        m.model.unet.conv_out.bias.fill_(float("nan"))  # weights that went bad in memory
    with pytest.raises(NonFiniteSampleError, match=r"step 1 of 2 .*batch items \[0, 1\]"):
        m.generate(_images(2, 1), _pose(0.0, 2), steps=2, seeds=[0, 1])


# ------------------------------------------------------------------------------------ v2 recipe options


def test_source_pose_dropout_trains_the_no_source_pose_case() -> None:
    """With p_drop_source_pose=1 every training sample sees empty source maps, exactly what sampling
    without source keypoints feeds; with 0 the source pose changes the loss."""
    src, tgt, ks, kt = _images(2, 3), _images(2, 4), _pose(0.0, 2), _pose(3.0, 2)

    def loss(m: PIDMPipeline, kps) -> float:  # noqa: ANN001
        return m.training_loss(src, tgt, kps, kt, generator=torch.Generator().manual_seed(5)).item()

    torch.manual_seed(0)
    always = PIDMPipeline.from_preset("tiny", p_drop_source_pose=1.0)
    assert loss(always, ks) == loss(always, None)
    torch.manual_seed(0)
    never = PIDMPipeline.from_preset("tiny")
    assert loss(never, ks) != loss(never, None)
    with pytest.raises(ValueError, match="p_drop_source_pose"):
        PIDMPipeline.from_preset("tiny", p_drop_source_pose=1.5)


def test_min_snr_weights_follow_the_formula() -> None:
    from posereid.models.sampling import min_snr_weights, training_scheduler

    t = torch.tensor([0, 300, 999])
    for kind in ("epsilon", "v_prediction"):
        sched = training_scheduler(kind)
        abar = sched.alphas_cumprod[t]
        snr = abar / (1 - abar)
        want = snr.clamp(max=5.0) / (snr if kind == "epsilon" else snr + 1)
        torch.testing.assert_close(min_snr_weights(sched, t, 5.0), want.float())
        assert min_snr_weights(sched, t, None) is None
    # the weighting changes the loss, and gamma=inf with v-prediction weights by SNR/(SNR+1) < 1
    torch.manual_seed(0)
    plain = PIDMPipeline.from_preset("tiny", prediction_type="v_prediction")
    torch.manual_seed(0)
    weighted = PIDMPipeline.from_preset("tiny", prediction_type="v_prediction", snr_gamma=5.0)
    args = (_images(2, 3), _images(2, 4), _pose(0.0, 2), _pose(3.0, 2))
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert (
        weighted.training_loss(*args, generator=g()).item() < plain.training_loss(*args, generator=g()).item()
    )


@pytest.mark.parametrize("sampler", ["dpmsolver++", "ddim", "unipc", "euler", "ddpm"])
def test_zero_terminal_snr_schedule_samples_with_every_sampler(sampler: str, tmp_path) -> None:
    torch.manual_seed(0)
    m = PIDMPipeline.from_preset("tiny", prediction_type="v_prediction", rescale_betas_zero_snr=True).eval()
    assert m.scheduler.alphas_cumprod[-1].item() < 1e-6  # the last training step is pure noise
    out = m.generate(_images(2, 1), _pose(1.0, 2), _pose(0.0, 2), steps=3, sampler=sampler, seeds=[0, 1])
    assert out.shape == (2, 3, H, W) and out.std() > 0.01
    m.save_pretrained(tmp_path)
    assert load_generator(tmp_path).scheduler.config.rescale_betas_zero_snr is True
    with pytest.raises(ValueError, match="needs prediction_type='v_prediction'"):
        PIDMPipeline.from_preset("tiny", prediction_type="epsilon", rescale_betas_zero_snr=True)


def test_per_level_texture_attention_reads_the_matching_scale(tmp_path, monkeypatch) -> None:
    """PIDM's texture diffusion: each UNet resolution cross-attends to the appearance level closest to it.
    Changing one level's tokens changes the output only through the layers assigned to that level."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from posereid.models.texture_attention import LevelTokensProcessor, assign_levels

    torch.manual_seed(0)
    m = PIDMPipeline.from_preset("tiny", texture_attention="per_level").eval()
    net = m.model
    shapes = net.appearance.shapes  # (16, 8), (8, 4) at 32x16 with stride 2
    levels = assign_levels(net.unet, m.image_size, shapes)
    assert levels["down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"] == 0  # 16x8 ↔ 16x8
    assert levels["mid_block.attentions.0.transformer_blocks.0.attn2.processor"] == 1  # 8x4 ↔ 8x4
    assert all(isinstance(p, LevelTokensProcessor) for p in net.unet.attn_processors.values())
    tokens = m.encode_appearance(_images(2, 1), _pose(0.0, 2))
    assert [t.shape[1] for t in tokens] == [h * w for h, w in shapes]
    seen: dict[int, set[int]] = {}
    original = AttnProcessor2_0.__call__

    def spy(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):  # noqa: ANN001, ANN202
        if attn.is_cross_attention:
            seen.setdefault(self.level, set()).add(encoder_hidden_states.shape[1])
        return original(self, attn, hidden_states, encoder_hidden_states, *args, **kwargs)

    monkeypatch.setattr(AttnProcessor2_0, "__call__", spy)
    x, t, pose = torch.randn(2, 3, H, W), torch.tensor([10, 500]), m.pose_maps(_pose(2.0, 2))
    with torch.no_grad():
        base = net(x, t, pose, tokens)
        other = (tokens[0], tokens[1] + 1.0)
        assert (net(x, t, pose, other) - base).abs().max() > 1e-4
    monkeypatch.undo()
    # each layer received its own level's tokens, not the flat bag
    assert seen == {0: {shapes[0][0] * shapes[0][1]}, 1: {shapes[1][0] * shapes[1][1]}}
    # guidance, training and checkpoints work unchanged
    loss = m.training_loss(_images(2, 3), _images(2, 4), _pose(0.0, 2), _pose(3.0, 2))
    loss.backward()
    out = m.generate(_images(2, 1), _pose(1.0, 2), _pose(0.0, 2), steps=2, seeds=[0, 1], guidance=(2.0, 1.5))
    m.save_pretrained(tmp_path)
    again = load_generator(tmp_path).generate(
        _images(2, 1), _pose(1.0, 2), _pose(0.0, 2), steps=2, seeds=[0, 1], guidance=(2.0, 1.5)
    )
    assert torch.equal(out, again)
