"""The CFLD-style family (issue 13): PRD prompt, HGA query biases, pose adapter, training, guidance,
checkpoints, latent mode over a local VAE, the loader and ``train-generator`` (tiny preset, CPU)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from gen_inputs import H, W
from gen_inputs import images as _images
from gen_inputs import pose as _pose

from posereid.models import FAMILIES, PoseTransferGenerator, load_generator
from posereid.models.cfld import CFLDModel, CFLDPipeline, HybridGranularityProcessor
from posereid.models.cfld.pipeline import VAE_DIR
from posereid.models.checkpoint import SCHEDULER_CONFIG_NAME
from posereid.models.sampling import make_sampler, sample_loop


def _params(pipe: CFLDPipeline) -> int:
    return sum(p.numel() for p in pipe.parameters())


@pytest.fixture(scope="module")
def pipe() -> CFLDPipeline:
    torch.manual_seed(0)
    return CFLDPipeline.from_preset("tiny").eval()


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A noisy sample, timesteps and source images for direct model calls."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, H, W, generator=g), torch.tensor([50, 600]), _images(2, seed + 1)


def test_presets_and_ablations_build_run_and_are_smaller() -> None:
    torch.manual_seed(0)
    full = CFLDPipeline.from_preset("tiny")
    assert isinstance(full, PoseTransferGenerator) and full.family == "cfld" and full.image_size == (H, W)
    assert "cfld" in FAMILIES and full.model.config.timestep_sampling == "cubic"
    assert 200_000 < _params(full) < 1_000_000
    no_hga = CFLDPipeline.from_preset("tiny", use_hga=False)
    no_prd = CFLDPipeline.from_preset("tiny", use_prd=False)
    assert _params(no_hga) < _params(full) and _params(no_prd) < _params(full)
    assert not no_hga.model.hga_proj and no_prd.model.prd is None
    # without PRD the prompt is the last pyramid level's tokens (8x4 at 32x16 with stride 2, 2 levels)
    prompt = no_prd.model.encode_source(_images(1, 0))[0]
    assert prompt.shape == (1, 32, 32) and no_prd.model.source_shapes[-1] == (8, 4)
    for p in (no_hga, no_prd):
        out = p.generate(_images(2, 3), _pose(1.0, 2), steps=2, seeds=[0, 1])
        assert out.shape == (2, 3, H, W) and torch.isfinite(out).all() and out.std() > 0.01
    with pytest.raises(ValueError, match="no setting p_drop_source_pose"):
        CFLDPipeline.from_preset("tiny", p_drop_source_pose=0.1)
    with pytest.raises(ValueError, match="from_sd_components"):
        CFLDPipeline.from_preset("tiny", latent=True, vae_scale_factor=2)
    with pytest.raises(ValueError, match="down-sampling 4"):
        CFLDPipeline.from_preset("tiny", image_size=(30, 16))
    with pytest.raises(ValueError, match="prd_query_std must be > 0"):
        CFLDPipeline.from_preset("tiny", prd_query_std=0.0)
    wide = CFLDPipeline.from_preset("tiny", prd_query_std=1.0).model.prd.queries
    assert 0.8 < wide.std().item() < 1.2 and wide.shape == (16, 32)


def test_hga_biases_reach_the_up_block_queries(pipe: CFLDPipeline) -> None:
    net = pipe.model
    x, t, src = _inputs()
    pose = net.encode_pose(pipe.pose_maps(_pose(0.0, 2)))
    prompt, *biases = net.encode_source(src)
    assert len(biases) == len(net.hga_layers) > 0 and all(b.abs().sum() > 0 for b in biases)
    names = [n for n, _, _ in net.hga_layers]
    assert all(n.startswith("up_blocks.") and ".attn2." in n for n in names)
    up = net.unet.get_submodule(names[-1].removesuffix(".processor"))
    down = net.unet.get_submodule("down_blocks.1.attentions.0.transformer_blocks.0.attn2")
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, k=k: seen.__setitem__(k, o))
        for k, m in (("up", up), ("down", down))
    ]
    try:
        with torch.no_grad():
            a = net(x, t, pose, prompt, biases)
            up_a, down_a = seen["up"], seen["down"]
            b = net(x, t, pose, prompt, [torch.zeros_like(v) for v in biases])
    finally:
        for h in hooks:
            h.remove()
    assert not torch.allclose(up_a, seen["up"]) and not torch.allclose(a, b)
    assert torch.equal(down_a, seen["down"])  # only the up blocks read the biases
    with pytest.raises(ValueError, match="HGA biases"):
        net(x, t, pose, prompt, biases[:-1])

    # the processor: zero bias == plain attention; a bias moves the queries only (keys/values unchanged)
    proc = up.processor
    assert isinstance(proc, HybridGranularityProcessor) and proc.index == len(names) - 1
    g = torch.Generator().manual_seed(3)
    hs = torch.randn(2, 32, up.to_q.in_features, generator=g)
    ctx = torch.randn(2, 16, net.config.cross_attention_dim, generator=g)
    bias = torch.randn(2, 32, up.to_q.out_features, generator=g)
    biases_in = [None] * len(names)
    with torch.no_grad():
        plain = proc(up, hs, ctx)
        biases_in[-1] = torch.zeros_like(bias)
        assert torch.allclose(proc(up, hs, ctx, hga_biases=biases_in), plain, atol=1e-6)
        biases_in[-1] = bias
        got = proc(up, hs, ctx, hga_biases=biases_in)
        q = (up.to_q(hs) + bias).view(2, 32, up.heads, -1).transpose(1, 2)
        k = up.to_k(ctx).view(2, 16, up.heads, -1).transpose(1, 2)
        v = up.to_v(ctx).view(2, 16, up.heads, -1).transpose(1, 2)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        want = up.to_out[0]((attn @ v).transpose(1, 2).reshape(2, 32, -1))
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, plain, atol=1e-3)


def test_gradient_checkpointing_keeps_the_hga_gradients() -> None:
    """The biases travel with the UNet call: a re-run of a checkpointed block during backward sees them."""
    torch.manual_seed(0)
    pipe = CFLDPipeline.from_preset("tiny")
    x, t, src = _inputs(4)

    def grads() -> dict[str, torch.Tensor]:
        pipe.zero_grad()
        net = pipe.model
        prompt, *biases = net.encode_source(src)
        out = net(x, t, net.encode_pose(pipe.pose_maps(_pose(0.0, 2))), prompt, biases)
        out.square().mean().backward()
        return {n: p.grad.clone() for n, p in pipe.named_parameters() if "hga_proj" in n}

    plain = grads()
    pipe.model.enable_gradient_checkpointing()
    pipe.train()
    checkpointed = grads()
    scale = max(v.abs().max() for v in plain.values())
    assert plain and all(v.abs().sum() > 0 for v in plain.values())
    # relative: biases kept on the processors and cleared after the forward give ~1 % different gradients
    assert all((plain[k] - checkpointed[k]).abs().max() <= 1e-4 * scale for k in plain)


def test_pose_adapter_reaches_the_unet_and_dropping_it_removes_the_pose(pipe: CFLDPipeline) -> None:
    net = pipe.model
    x, t, src = _inputs(2)
    app = net.encode_source(src)
    left = net.encode_pose(pipe.pose_maps(_pose(-3.0, 2)))
    right = net.encode_pose(pipe.pose_maps(_pose(3.0, 2)))
    assert [tuple(r.shape[1:]) for r in left] == [(16, H, W), (32, H // 2, W // 2), (32, H // 4, W // 4)]
    with torch.no_grad():
        a = net(x, t, left, app[0], app[1:])
        b = net(x, t, right, app[0], app[1:])
        assert not torch.allclose(a, b, atol=1e-4)
        dropped_a = net(x, t, net.null_pose(left), app[0], app[1:])
        dropped_b = net(x, t, net.null_pose(right), app[0], app[1:])
        assert torch.equal(dropped_a, dropped_b) and not torch.allclose(dropped_a, a, atol=1e-4)
        # zero residuals are the same as passing none: the UNet then sees no pose at all
        assert torch.allclose(dropped_a, net(x, t, None, app[0], app[1:]), atol=1e-6)
        # a dropped appearance ignores the source: learned null prompt and zero biases
        other = net.encode_source(_images(2, 9))
        na, nb = (
            net(x, t, left, *_split(net.null_source(app))),
            net(x, t, left, *_split(net.null_source(other))),
        )
        assert torch.equal(na, nb) and not torch.allclose(na, a, atol=1e-4)


def _split(app: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    return app[0], app[1:]


def test_short_training_lowers_the_loss() -> None:
    torch.manual_seed(0)
    m = CFLDPipeline.from_preset("tiny")
    src, tgt, ks, kt = _images(4, 10), _images(4, 11), _pose(-2.0, 4), _pose(2.0, 4)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(123)
    losses = []
    m.train()
    for _ in range(40):
        opt.zero_grad()
        loss = m.training_loss(src, tgt, ks, kt, generator=g)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.6 * first, losses
    l1 = m.training_loss(src, tgt, ks, kt, generator=torch.Generator().manual_seed(5))
    l2 = m.training_loss(src, tgt, ks, kt, generator=torch.Generator().manual_seed(5))
    assert torch.equal(l1, l2)  # every random draw comes from the generator


def test_save_load_sample_bit_identical_and_loader(pipe: CFLDPipeline, tmp_path: Path) -> None:
    pipe.save_pretrained(tmp_path / "ckpt", ema_state_dict=pipe.state_dict())
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["_class_name"] == "CFLDModel" and cfg["use_hga"] and cfg["image_size"] == [H, W]
    assert (tmp_path / "ckpt" / SCHEDULER_CONFIG_NAME).is_file() and not (
        tmp_path / "ckpt" / VAE_DIR
    ).exists()
    loaded = load_generator(tmp_path / "ckpt")
    assert type(loaded) is CFLDPipeline and not loaded.training
    src, kt = _images(2, 20), _pose(3.0, 2)
    a = pipe.generate(src, kt, steps=3, seeds=[7, 8])
    b = loaded.generate(src, kt, _pose(0.0, 2), steps=3, seeds=[7, 8])  # source_kps is ignored
    assert torch.equal(a, b) and a.std() > 0.01
    assert not torch.equal(a, pipe.generate(src, kt, steps=3, seeds=[7, 9]))
    fresh = loaded.reinitialized()
    assert type(fresh) is CFLDPipeline and not torch.equal(
        fresh.model.unet.conv_in.weight, loaded.model.unet.conv_in.weight
    )


def test_guidance_one_is_the_conditional_model_in_one_branch(pipe: CFLDPipeline) -> None:
    src, kt = _images(2, 30), _pose(1.0, 2)
    batches: list[int] = []
    hook = pipe.model.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        guided = pipe.generate(src, kt, steps=3, seeds=[1, 2], guidance=(1.0, 1.0), sampler="euler")
        assert batches == [2, 2, 2]
        batches.clear()
        both = pipe.generate(src, kt, steps=3, seeds=[1, 2], guidance=(2.0, 2.0), sampler="euler")
        assert batches == [6, 6, 6] and not torch.allclose(both, guided, atol=1e-4)
    finally:
        hook.remove()
    net = pipe.model
    with torch.no_grad():
        prompt, *biases = net.encode_source(src)
        pose = net.encode_pose(pipe.pose_maps(kt))
        x = torch.cat([torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(s)) for s in (1, 2)])
        x = sample_loop(
            lambda x, t: net(x, t, pose, prompt, biases), make_sampler("euler", pipe.scheduler), x, 3
        )
    assert torch.equal(pipe.to_images(x), guided)


def _tiny_vae(directory: Path) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32,
    ).save_pretrained(directory)  # fmt: skip


def test_latent_mode_end_to_end_over_a_local_vae(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    with pytest.raises(FileNotFoundError, match=r"VAE directory .*nowhere.*save_pretrained"):
        CFLDPipeline.from_sd_components(tmp_path / "nowhere", preset="tiny")
    _tiny_vae(tmp_path / "vae")
    torch.manual_seed(0)
    pipe = CFLDPipeline.from_sd_components(tmp_path / "vae", preset="tiny")
    assert pipe.latent and pipe.model.sample_shape == (4, H // 2, W // 2) and pipe.image_size == (H, W)
    assert not any(p.requires_grad for p in pipe.vae.parameters())
    opt = torch.optim.Adam([p for p in pipe.parameters() if p.requires_grad], lr=1e-3)
    vae_before = pipe.vae.decoder.conv_out.weight.clone()
    src, tgt, ks, kt = _images(2, 40), _images(2, 41), _pose(0.0, 2), _pose(2.0, 2)
    pipe.train()
    for step in range(2):
        opt.zero_grad()
        loss = pipe.training_loss(src, tgt, ks, kt, generator=torch.Generator().manual_seed(step))
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    assert not pipe.vae.training and torch.equal(pipe.vae.decoder.conv_out.weight, vae_before)
    pipe.eval()
    a = pipe.generate(src, kt, steps=2, seeds=[3, 4])
    assert a.shape == (2, 3, H, W) and torch.isfinite(a).all() and a.std() > 0.001
    pipe.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / VAE_DIR / "config.json").is_file()
    assert not any(k.startswith("vae.") for k in _weights(tmp_path / "ckpt"))  # the VAE lives in vae/ only
    loaded = load_generator(tmp_path / "ckpt")
    assert type(loaded) is CFLDPipeline and loaded.latent
    assert torch.equal(loaded.generate(src, kt, steps=2, seeds=[3, 4]), a)
    # a UNet in the SD layout (cross-attention down blocks, then a plain one) starts the denoiser
    UNet2DConditionModel(
        sample_size=(H // 2, W // 2), in_channels=4, out_channels=4, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=24, attention_head_dim=2,
    ).save_pretrained(tmp_path / "unet")  # fmt: skip
    sd = CFLDPipeline.from_sd_components(tmp_path / "vae", tmp_path / "unet", preset="tiny")
    ref = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert sd.model.config.cross_attention_dim == 24 and sd.scheduler.config.beta_schedule == "scaled_linear"
    # SD's weights were trained as ε-prediction: the UNet keeps SD's schedule, not the presets' flow
    assert pipe.prediction_type == "flow" and sd.prediction_type == "epsilon"
    assert sd.scheduler.config.beta_start == 0.00085 and sd.scheduler.config.beta_end == 0.012
    asked = CFLDPipeline.from_sd_components(
        tmp_path / "vae", tmp_path / "unet", preset="tiny", prediction_type="flow"
    )
    assert asked.prediction_type == "flow"
    assert torch.equal(sd.model.unet.conv_in.weight, ref.conv_in.weight) and len(sd.model.hga_layers) == 2
    assert sd.generate(src, kt, steps=1, seeds=[0, 1]).shape == (2, 3, H, W)
    with pytest.raises(FileNotFoundError, match=r"UNet directory .*no_unet"):
        CFLDPipeline.from_sd_components(tmp_path / "vae", tmp_path / "no_unet", preset="tiny")


def _weights(directory: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(directory / "diffusion_pytorch_model.safetensors"), "pt") as fh:
        return list(fh.keys())


def test_cli_train_generator_cfld(synth_market: Path, tmp_path: Path) -> None:
    from posereid.experiments.cli import main

    out = tmp_path / "gen"
    args = ["train-generator", "--data", str(synth_market), "--annotations",
            str(synth_market / "market-annotation-train.csv"), "--family", "cfld", "--preset", "tiny",
            "--out", str(out), "--steps", "3", "--batch-size", "2", "--checkpoint-every", "0",
            "--sample-every", "3", "--seed", "1", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    with open(out / "train_log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["step"] for r in rows] == ["1", "2", "3"] and all(math.isfinite(float(r["loss"])) for r in rows)
    assert (out / "samples" / "step-0000003.png").is_file()
    gen = load_generator(out / "final")
    assert type(gen) is CFLDPipeline and gen.image_size == (H, W)
    assert isinstance(gen.model, CFLDModel)
