"""The identity loss on the predicted clean image (issue 24, build item 2)."""

from __future__ import annotations

import pytest
import torch
from gen_inputs import images as _images
from gen_inputs import pose as _pose

from posereid.models.pidm import PIDMPipeline
from posereid.models.pipeline import PairBatch
from posereid.models.sampling import clean_estimate, diffusion_target, noisy_sample, training_scheduler


def _features(x: torch.Tensor) -> torch.Tensor:
    """A stand-in re-ID feature: the colour layout on a 4x2 grid, centred (cosine then compares layouts)."""
    v = torch.nn.functional.adaptive_avg_pool2d(x, (4, 2)).flatten(1)
    return v - v.mean(dim=1, keepdim=True)


@pytest.mark.parametrize("kind", ["flow", "epsilon", "v_prediction", "sample"])
def test_clean_estimate_inverts_the_forward_process(kind: str) -> None:
    scheduler = training_scheduler(prediction_type=kind)
    x0, noise = torch.rand(3, 3, 8, 4) * 2 - 1, torch.randn(3, 3, 8, 4)
    t = torch.tensor([100, 500, 900]) if kind != "flow" else torch.tensor([100.0, 500.0, 900.0])
    noisy = noisy_sample(scheduler, x0, noise, t)
    x0_hat, signal = clean_estimate(scheduler, noisy, diffusion_target(scheduler, x0, noise, t), t)
    assert torch.allclose(x0_hat, x0, atol=1e-3)
    assert signal.shape == (3,) and bool((signal[:-1] > signal[1:]).all())  # noisier: counts less


def _similarity(pipe: PIDMPipeline, batch: PairBatch) -> float:
    """Identity similarity of the predicted clean image to the target, at one fixed set of training draws."""
    gen = torch.Generator().manual_seed(7)
    x0 = pipe.encode_target(batch.target, gen)
    pose, app = pipe.training_conditions(batch, gen)
    t, _, noisy = pipe.noised(pipe.scheduler, x0, gen)
    with torch.no_grad():
        x0_hat, _ = clean_estimate(pipe.scheduler, noisy, pipe.model_output(noisy, t, pose, app), t)
        predicted = (x0_hat.clamp(-1, 1) + 1) / 2
        return (
            torch.nn.functional.cosine_similarity(_features(predicted), _features(batch.target)).mean().item()
        )


def test_the_identity_loss_moves_the_output_towards_the_identity() -> None:
    """Same model, same draws, five SGD steps: with the identity loss the predicted image's identity features
    move towards the target's clearly more than with the denoising loss alone (fails when it is off)."""
    batch = PairBatch(_images(4, 0), _images(4, 1), _pose(0.0, 4), _pose(2.0, 4))
    gains = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(0)
        pipe = PIDMPipeline.from_preset("tiny")
        before = _similarity(pipe, batch)
        pipe.set_identity_loss(_features if weight else None, weight=weight)
        opt = torch.optim.SGD([p for p in pipe.parameters() if p.requires_grad], lr=0.01)
        for _ in range(5):
            opt.zero_grad()
            pipe.training_loss(*batch, generator=torch.Generator().manual_seed(7)).backward()
            opt.step()
        gains[weight] = _similarity(pipe, batch) - before
    assert gains[5.0] > gains[0.0] + 0.05, gains


def _loss(pipe, batch: PairBatch) -> float:  # noqa: ANN001
    with torch.no_grad():
        return pipe.training_loss(*batch, generator=torch.Generator().manual_seed(7)).item()


def test_the_identity_loss_leaves_out_samples_whose_appearance_was_dropped() -> None:
    """A sample trained without the source's appearance (guidance's unconditional branch) cannot know the
    person, so the loss must not pull it towards one: with every appearance dropped it adds nothing, with
    none dropped it adds a positive term."""
    batch = PairBatch(_images(4, 0), _images(4, 1), _pose(0.0, 4), _pose(2.0, 4))
    for p_drop, adds in ((1.0, False), (0.0, True)):
        torch.manual_seed(0)
        pipe = PIDMPipeline.from_preset("tiny", p_drop_appearance=p_drop)
        plain = _loss(pipe, batch)
        with_id = _loss(pipe.set_identity_loss(_features, weight=5.0), batch)
        if adds:
            assert with_id > plain + 1e-4, (plain, with_id)
        else:
            assert with_id == pytest.approx(plain, abs=1e-7)


@pytest.mark.parametrize("stage", ["inpaint", "refine"])
def test_each_pcdms_image_stage_trains_with_the_identity_loss(stage: str) -> None:
    """PCDMs trains its image stages with its own losses; the identity loss must join them, not be set and
    silently ignored (the prior predicts an embedding, not an image: it has none)."""
    from posereid.models.pcdms import PCDMsPipeline

    batch = PairBatch(_images(4, 0), _images(4, 1), _pose(0.0, 4), _pose(2.0, 4))
    torch.manual_seed(0)
    pipe = PCDMsPipeline.from_preset("tiny")
    pipe.set_training_stage(stage)
    plain = _loss(pipe, batch)
    assert _loss(pipe.set_identity_loss(_features, weight=5.0), batch) > plain + 1e-4


def test_the_identity_network_is_not_part_of_the_generator() -> None:
    net = torch.nn.Linear(8, 4)
    pipe = PIDMPipeline.from_preset("tiny").set_identity_loss(lambda x: net(x.flatten(1)[:, :8]), weight=0.5)
    pipe.set_identity_loss(net, weight=0.5)
    assert not any(p is net.weight for p in pipe.parameters())
    assert not any(k.endswith("weight") and v is net.weight for k, v in pipe.state_dict().items())
    with pytest.raises(ValueError, match="finite number >= 0"):
        pipe.set_identity_loss(net, weight=float("nan"))
    with pytest.raises(TypeError, match="callable"):
        pipe.set_identity_loss("resnet", weight=1.0)  # type: ignore[arg-type]


def test_train_generator_takes_an_identity_model(synth_market, tmp_path, capsys) -> None:
    """``train-generator --identity-model`` trains with the loss and records it, so a resume without it stops."""
    import json

    from posereid.experiments.cli import main as cli_main

    reid = tmp_path / "reid"
    assert cli_main(["train-reid", "--data", str(synth_market), "--out", str(reid), "--steps", "2",
                     "--batch-size", "8", "--height", "32", "--width", "16", "--device", "cpu"]) == 0  # fmt: skip
    ckpt = reid / "model.safetensors"
    base = ["train-generator", "--data", str(synth_market), "--preset", "tiny", "--image-size", "64x32",
            "--steps", "2", "--batch-size", "2", "--checkpoint-every", "1", "--sample-every", "0", "--no-progress",
            "--device", "cpu", "--out", str(tmp_path / "gen")]  # fmt: skip
    assert cli_main(
        [*base, "--identity-model", str(ckpt), "--identity-weight", "0.5", "--max-minutes", "0.0001"]
    ) in (0, 3)
    recorded = json.loads((tmp_path / "gen" / "train_config.json").read_text())["identity_loss"]
    assert recorded.startswith("model.safetensors sha256:") and recorded.endswith("weight 0.5")
    capsys.readouterr()
    assert cli_main([*base, "--steps", "2"]) == 1  # the resume without it is refused, naming the setting
    assert "identity_loss: checkpoint 'model.safetensors sha256:" in capsys.readouterr().err
