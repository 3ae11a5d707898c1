"""Flow matching / rectified flow (``prediction_type="flow"``): the noise path, the velocity target and its
sign, the timestep the network sees, the samplers, training, checkpoints and the CLI (tiny presets, CPU)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from gen_inputs import H, W
from gen_inputs import images as _images
from gen_inputs import pose as _pose

from posereid.models import load_generator
from posereid.models.checkpoint import SCHEDULER_CONFIG_NAME, CheckpointError
from posereid.models.pidm import PIDMPipeline
from posereid.models.pipeline import load_scheduler
from posereid.models.sampling import (
    FLOW_SAMPLERS,
    diffusion_loss,
    diffusion_target,
    initial_noise,
    make_generators,
    make_sampler,
    min_snr_weights,
    model_timesteps,
    noisy_sample,
    sample_loop,
    training_scheduler,
)

T = 1000


# ----------------------------------------------------------------------------------------------- formulas
def test_flow_noisy_sample_and_target_are_the_formulas() -> None:
    sched = training_scheduler("flow")
    assert type(sched) is FlowMatchEulerDiscreteScheduler
    assert sched.config.num_train_timesteps == T and sched.config.shift == 1.0
    draws = torch.tensor([0, 249, 499, 999])  # training draws, as sample_timesteps gives them
    t = model_timesteps(sched, draws)
    sigma = (draws.float() + 1.0) / T  # the scheduler's training sigmas 1/T .. 1 (shift 1)
    assert t.is_floating_point() and torch.allclose(t, sigma * T, atol=1e-4, rtol=0)  # network sees σ·T
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 5, 2, generator=g) * 2 - 1
    eps = torch.randn(4, 3, 5, 2, generator=g)
    s = sigma.view(-1, 1, 1, 1)
    x_t = noisy_sample(sched, x0, eps, t)
    torch.testing.assert_close(x_t, (1 - s) * x0 + s * eps, atol=1e-6, rtol=0)
    # diffusers' own forward process agrees (these timesteps are in its training table)
    torch.testing.assert_close(x_t, sched.scale_noise(x0, t, eps), atol=1e-6, rtol=0)
    assert torch.equal(diffusion_target(sched, x0, eps, t), eps - x0)
    assert diffusion_loss(sched, eps - x0, x0, eps, t).item() == 0.0
    # σ = 1 is pure noise; the smallest σ is 1/T (never exactly x0)
    torch.testing.assert_close(x_t[3], eps[3], atol=1e-6, rtol=0)
    # the sign: one step of diffusers' flow Euler with that target moves x_t exactly to x_{σ_next}
    euler = make_sampler("euler", sched)
    euler.set_timesteps(4)
    sig, sig_next = euler.sigmas[0], euler.sigmas[1]
    x = (1 - sig) * x0 + sig * eps
    stepped = euler.step(eps - x0, euler.timesteps[0], x).prev_sample
    torch.testing.assert_close(stepped, (1 - sig_next) * x0 + sig_next * eps, atol=1e-5, rtol=0)


def test_ddpm_helpers_are_unchanged() -> None:
    """``model_timesteps`` / ``noisy_sample`` are the identity / ``add_noise`` for DDPM (old recipes draw the same)."""
    sched = training_scheduler("v_prediction")
    t = torch.tensor([0, 10, 999])
    assert torch.equal(model_timesteps(sched, t), t)
    x0, eps = torch.randn(3, 3, 4, 2), torch.randn(3, 3, 4, 2)
    assert torch.equal(noisy_sample(sched, x0, eps, t), sched.add_noise(x0, eps, t))
    assert torch.equal(diffusion_target(sched, x0, eps, t), sched.get_velocity(x0, eps, t))


def test_flow_schedule_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="rescale_betas_zero_snr does not apply to prediction_type='flow'"):
        training_scheduler("flow", rescale_betas_zero_snr=True)
    with pytest.raises(ValueError, match="no betas; drop beta_schedule"):
        training_scheduler("flow", beta_schedule="scaled_linear")
    with pytest.raises(ValueError, match="no field.*clip_sample"):
        training_scheduler("flow", clip_sample=False)
    with pytest.raises(ValueError, match="'epsilon', 'v_prediction', 'sample' or 'flow'"):
        training_scheduler("flow_prediction")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min-SNR.*not defined for prediction_type='flow'"):
        min_snr_weights(training_scheduler("flow"), torch.tensor([5]), 5.0)
    with pytest.raises(ValueError, match="snr_gamma=5.0.*flow"):  # refused when built, not at step 1
        PIDMPipeline.from_preset("tiny", prediction_type="flow", snr_gamma=5.0)
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        PIDMPipeline.from_preset("tiny", prediction_type="flow", rescale_betas_zero_snr=True)


# ----------------------------------------------------------------------------------------------- samplers
def test_flow_samplers_and_unsupported_ones() -> None:
    train = training_scheduler("flow")
    assert type(make_sampler("euler", train)) is FlowMatchEulerDiscreteScheduler
    dpm = make_sampler("dpmsolver++", train)
    assert type(dpm) is DPMSolverMultistepScheduler
    assert dpm.config.use_flow_sigmas and dpm.config.prediction_type == "flow_prediction"
    assert dpm.config.flow_shift == 1.0 and dpm.config.thresholding  # x0 clipped to [-1, 1] (pixels)
    assert not make_sampler("dpmsolver++", train, clip_x0=False).config.thresholding
    assert make_sampler("unipc", train).config.prediction_type == "flow_prediction"
    for name in ("ddim", "ddpm"):
        with pytest.raises(ValueError, match=rf"'{name}' does not support prediction_type='flow'.*euler"):
            make_sampler(name, train)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("heun9", train)
    # a DDPM training scheduler still gets the DDPM samplers
    assert type(make_sampler("euler", DDPMScheduler())) is not FlowMatchEulerDiscreteScheduler


@pytest.mark.parametrize("sampler", sorted(set(FLOW_SAMPLERS) - {"few-step"}))  # few-step: test_few_step.py
def test_flow_samplers_recover_the_data_with_an_oracle_velocity(sampler: str) -> None:
    """A denoiser that knows x0 returns the exact velocity ``ε − x0 = (x_t − x0)/σ`` with ``σ = t/T``.

    Every flow sampler must land on x0 in a few steps. This fails if the target's sign, the timestep
    scale the network sees (σ·T) or the sampling loop's handling of the flow schedulers were wrong.
    """
    train = training_scheduler("flow")
    target = torch.linspace(-0.8, 0.8, 2 * 3 * 8 * 4).view(2, 3, 8, 4)
    seen: list[torch.Tensor] = []

    def oracle(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        sigma = float(t) / T
        return (x_t - target) / sigma

    gens = make_generators([0, 1], None, 2)
    x = sample_loop(oracle, make_sampler(sampler, train), initial_noise(target.shape, gens, "cpu"), 6)
    # Euler is exact; the solvers pass int(σ·T) to the network (diffusers), so σ = t/T is off by < 1/T
    assert torch.allclose(x, target, atol=5e-3), (x - target).abs().max()
    assert len(seen) == 6 and float(seen[0]) >= 0.99 * T and float(seen[-1]) < T / 2  # from σ ≈ 1 down
    if sampler == "euler":
        assert seen[0].is_floating_point() and float(seen[0]) == T  # σ·T as a float, σ = 1 first

    def wrong_sign(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # x0 − ε: the test must catch it
        return -oracle(x_t, t)

    bad = sample_loop(wrong_sign, make_sampler(sampler, train), initial_noise(target.shape, gens, "cpu"), 6)
    assert (bad - target).abs().max() > 0.5


# ----------------------------------------------------------------------------------------------- training
def test_flow_pidm_trains_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    m = PIDMPipeline.from_preset("tiny", prediction_type="flow")
    assert m.prediction_type == "flow"
    src, tgt = _images(2, 10), _images(2, 11)
    ks, kt = _pose(-2.0, 2), _pose(2.0, 2)

    def eval_loss() -> float:
        with torch.no_grad():
            return sum(
                m.training_loss(src, tgt, ks, kt, generator=torch.Generator().manual_seed(s)).item()
                for s in range(4)
            )

    a = m.training_loss(src, tgt, ks, kt, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, m.training_loss(src, tgt, ks, kt, generator=torch.Generator().manual_seed(5)))
    before = eval_loss()
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(123)
    m.train()
    for _ in range(60):
        opt.zero_grad()
        m.training_loss(src, tgt, ks, kt, generator=g).backward()
        opt.step()
    m.eval()
    after = eval_loss()
    assert after < 0.6 * before, (before, after)
    out = m.generate(src, kt, ks, steps=4, sampler="euler", seeds=[0, 1])
    assert out.shape == (2, 3, H, W) and out.std() > 0.01


@pytest.mark.parametrize("family", ["cfld", "pcdms"])
def test_other_families_train_sample_and_save_with_flow(family: str, tmp_path: Path) -> None:
    from posereid.models.contract import family_class

    torch.manual_seed(0)
    pipe = family_class(family).from_preset("tiny", prediction_type="flow")
    src, tgt, ks, kt = _images(2, 3), _images(2, 4), _pose(0.0, 2), _pose(2.0, 2)
    stages = ("inpaint", "prior", "refine") if family == "pcdms" else ("",)
    for stage in stages:
        if stage:
            pipe.set_training_stage(stage)
        loss = pipe.training_loss(src, tgt, ks, kt, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(loss) and loss.requires_grad
    if family == "pcdms":  # the prior stays DDPM predicting the clean embedding; the image stages flow
        assert (
            type(pipe.prior_scheduler) is DDPMScheduler
            and pipe.prior_scheduler.config.prediction_type == "sample"
        )
        assert type(pipe.refiner_scheduler) is FlowMatchEulerDiscreteScheduler
        canvas = pipe.inpaint(src, kt, ks, steps=2, sampler="dpmsolver++", seeds=[0, 1])
        assert torch.equal(canvas[..., :W], src)
    out = pipe.generate(src, kt, ks, steps=2, sampler="euler", seeds=[0, 1])
    assert out.shape == (2, 3, H, W) and torch.isfinite(out).all()
    pipe.save_pretrained(tmp_path / "ckpt")
    loaded = load_generator(tmp_path / "ckpt")
    assert type(loaded.scheduler) is FlowMatchEulerDiscreteScheduler
    if family == "pcdms":
        assert type(loaded.prior_scheduler) is DDPMScheduler
        assert type(loaded.refiner_scheduler) is FlowMatchEulerDiscreteScheduler


def test_sample_grid_of_a_flow_model_does_not_use_ddim(tmp_path: Path) -> None:
    from posereid.models.training import save_sample_grid

    m = PIDMPipeline.from_preset("tiny", prediction_type="flow").eval()
    batch = {
        "source": _images(1, 1),
        "target": _images(1, 2),
        "source_kps": _pose(0.0),
        "target_kps": _pose(1.0),
    }
    save_sample_grid(m, batch, tmp_path / "grid.png", steps=2, seed=0, sampler="ddim")
    assert (tmp_path / "grid.png").is_file()


# ----------------------------------------------------------------------------------------------- checkpoints
def test_flow_checkpoint_round_trip_is_bit_identical(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = PIDMPipeline.from_preset("tiny", prediction_type="flow", num_train_timesteps=500).eval()
    m.save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / SCHEDULER_CONFIG_NAME).read_text())  # diffusers' own format
    assert cfg["_class_name"] == "FlowMatchEulerDiscreteScheduler" and cfg["shift"] == 1.0
    assert cfg["num_train_timesteps"] == 500
    assert "prediction_type" not in json.loads((tmp_path / "ckpt" / "config.json").read_text())
    loaded = load_generator(tmp_path / "ckpt")
    assert type(loaded.scheduler) is FlowMatchEulerDiscreteScheduler and loaded.prediction_type == "flow"
    assert loaded.scheduler.config.num_train_timesteps == 500
    src, kt, ks = _images(2, 20), _pose(3.0, 2), _pose(0.0, 2)
    for sampler in ("euler", "dpmsolver++"):
        a = m.generate(src, kt, ks, steps=3, sampler=sampler, seeds=[7, 8])
        b = loaded.generate(src, kt, ks, steps=3, sampler=sampler, seeds=[7, 8])
        assert torch.equal(a, b), sampler


def test_load_scheduler_refuses_other_classes_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / SCHEDULER_CONFIG_NAME).write_text(json.dumps({"_class_name": "EulerDiscreteScheduler"}))
    with pytest.raises(
        CheckpointError,
        match=r"scheduler_config\.json: training scheduler 'EulerDiscreteScheduler' is not supported "
        r"\(expected DDPMScheduler or FlowMatchEulerDiscreteScheduler\)",
    ):
        load_scheduler(tmp_path)


# ----------------------------------------------------------------------------------------------- CLI
def test_train_generator_accepts_prediction_type_flow(tmp_path: Path) -> None:
    from posereid.experiments.train_generator import _preset_model, add_train_generator_args

    parser = argparse.ArgumentParser()
    add_train_generator_args(parser)
    base = ["--data", str(tmp_path), "--annotations", str(tmp_path / "a.csv"), "--out", str(tmp_path / "o")]
    args = parser.parse_args([*base, "--preset", "tiny", "--prediction-type", "flow"])
    assert _preset_model(args).prediction_type == "flow"
    args = parser.parse_args([*base, "--preset", "tiny", "--prediction-type", "flow", "--zero-snr"])
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        _preset_model(args)
