"""Few-step sampling (posereid.models.few_step): the step-size embedding, the trajectory distillation, the
checkpoint's declared sampler and the defaults that follow it."""

from __future__ import annotations

import json

import pytest
import torch

from posereid.models.few_step import (
    FEW_STEP_FOLDER,
    StepSizeEmbedding,
    TrajectoryDataset,
    grid_pairs,
    jump_grid,
    record_trajectories,
)
from posereid.models.pidm.pipeline import PIDMPipeline


class _Pairs:
    """A few random pairs at the tiny preset's size, with the fields a pair dataset's fingerprint reads."""

    records: list = []
    pairs = None
    seed = 0

    def __init__(self, n: int, size: tuple[int, int]) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def get(self, k: int, flip: bool | None = False) -> dict[str, torch.Tensor]:
        h, w = self.size
        g = torch.Generator().manual_seed(k)
        kps = torch.rand(18, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
        return dict(
            source=torch.rand(3, h, w, generator=g), target=torch.rand(3, h, w, generator=g),
            source_kps=kps, target_kps=kps.flip(0),
        )  # fmt: skip


def _embedding(pipe: PIDMPipeline, **kwargs) -> StepSizeEmbedding:
    return StepSizeEmbedding(time_embed_dim=pipe.denoiser().time_embedding.linear_2.out_features, **kwargs)


@pytest.fixture(scope="module")
def teacher_and_trajectories(tmp_path_factory):
    torch.manual_seed(0)
    teacher = PIDMPipeline.from_preset("tiny").eval()
    root = tmp_path_factory.mktemp("few_step")
    pairs = _Pairs(4, teacher.image_size)
    folder = record_trajectories(teacher, pairs, root, 4, chunk=3, sampling={"steps": 8}, progress=False)
    return teacher, TrajectoryDataset(folder, pairs, 4), root


def test_grids_pair_the_samplers_jumps() -> None:
    assert jump_grid(1) == [1.0] and jump_grid(4) == [1.0, 0.75, 0.5, 0.25]
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    assert grid_pairs(sigmas, [1]) == [(0, 4)]
    assert grid_pairs(sigmas, [2, 4]) == [(0, 1), (0, 2), (1, 2), (2, 3), (2, 4), (3, 4)]


def test_trajectories_start_at_noise_and_end_at_the_teachers_sample(teacher_and_trajectories) -> None:
    """The recorded last state is what the teacher's generate returns for that seed (so the student learns
    the teacher's images), and a rerun keeps the chunks already on disk."""
    teacher, data, root = teacher_and_trajectories
    item = data[0]
    assert item["trajectory"].shape[0] == item["sigmas"].numel() == 9
    assert float(item["sigmas"][0]) == 1.0 and float(item["sigmas"][-1]) == 0.0
    assert abs(float(item["trajectory"][0].std()) - 1.0) < 0.3  # pure noise
    image = teacher.generate(
        item["source"][None], item["target_kps"][None], item["source_kps"][None],
        steps=8, sampler="dpmsolver++", guidance=(2.0, 2.0), seeds=[0],
    )  # fmt: skip
    assert torch.allclose(image[0], teacher.to_images(item["trajectory"][-1][None])[0], atol=1e-4)
    chunk = root / "trajectories" / "chunk-00000.safetensors"
    stamp = chunk.stat().st_mtime_ns
    record_trajectories(
        teacher, _Pairs(4, teacher.image_size), root, 4, chunk=3, sampling={"steps": 8}, progress=False
    )
    assert chunk.stat().st_mtime_ns == stamp


def test_a_fresh_embedding_leaves_the_teacher_unchanged_and_jumps_change_it(teacher_and_trajectories) -> None:
    """Zero-initialised: the student starts as the teacher; outside a jump the hook adds nothing."""
    teacher, data, _ = teacher_and_trajectories
    student = PIDMPipeline(type(teacher.model).from_config(teacher.model.config), teacher.scheduler)
    student.model.load_state_dict(teacher.model.state_dict())
    emb = _embedding(student)
    student.enable_few_step(emb)
    x, t = torch.randn(2, 3, *student.image_size), torch.tensor([500.0, 500.0])
    pose, app = student.conditions(
        data[0]["source"][None].repeat(2, 1, 1, 1), data[0]["target_kps"][None].repeat(2, 1, 1), None
    )
    with torch.no_grad():
        plain = student.model_output(x, t, pose, app)
        with emb.jumping(0.5):
            jumped = student.model_output(x, t, pose, app)
        assert torch.equal(plain, jumped)
        torch.nn.init.normal_(emb.embed.linear_2.weight, std=0.5)
        with emb.jumping(0.5):
            moved = student.model_output(x, t, pose, app)
        assert torch.equal(student.model_output(x, t, pose, app), plain)  # outside the block: untouched
        with emb.jumping(torch.tensor([0.5, 1.0])):  # one jump per sample
            per_sample = student.model_output(x, t, pose, app)
    assert not torch.allclose(moved, plain)
    assert torch.allclose(per_sample[0], moved[0], atol=1e-5) and not torch.allclose(per_sample[1], moved[1])


def test_distillation_moves_the_one_step_image_to_the_teachers(teacher_and_trajectories) -> None:
    """Training on the trajectories brings the 1-step image close to the teacher's 20-step guided sample
    (same noise); the same steps with the loss switched off (plain flow matching on the pairs) do not."""
    teacher, data, _ = teacher_and_trajectories
    batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
    goal = teacher.to_images(batch["trajectory"][:, -1])

    def one_step_error(distil: bool) -> tuple[float, float]:
        torch.manual_seed(0)
        student = PIDMPipeline(type(teacher.model).from_config(teacher.model.config), teacher.scheduler)
        student.model.load_state_dict(teacher.model.state_dict())
        student.enable_few_step(_embedding(student, steps=(1,)))

        def error() -> float:
            student.eval()
            with torch.no_grad(), student.few_step.jumping(1.0):
                pose, app = student.conditions(batch["source"], batch["target_kps"], batch["source_kps"])
                x1 = batch["trajectory"][:, 0]
                out = student.model_output(x1, torch.full((len(x1),), 1000.0), pose, app)
            return float((student.to_images(x1 - out) - goal).abs().mean())

        before = error()
        opt = torch.optim.Adam(student.parameters(), lr=1e-3)
        student.train()
        for step in range(60):
            gen = torch.Generator().manual_seed(step)
            extra = {"trajectory": batch["trajectory"], "sigmas": batch["sigmas"]} if distil else {}
            loss = student.training_loss(
                batch["source"],
                batch["target"],
                batch["source_kps"],
                batch["target_kps"],
                generator=gen,
                **extra,
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        return before, error()

    before, after = one_step_error(distil=True)
    _, without = one_step_error(distil=False)
    assert after < 0.7 * before, (before, after, without)
    assert after < 0.5 * without, (before, after, without)


def test_checkpoint_declares_its_sampler_and_generate_follows_it(teacher_and_trajectories, tmp_path) -> None:
    """``few_step/`` round-trips; a loaded few-step checkpoint samples with it by default (one call per
    step), refuses step counts it was not trained for and guidance it folded in; a plain flow checkpoint
    keeps the 20-step guided default and refuses the few-step sampler."""
    from posereid.models import load_generator

    teacher, data, _ = teacher_and_trajectories
    student = PIDMPipeline(type(teacher.model).from_config(teacher.model.config), teacher.scheduler)
    student.model.load_state_dict(teacher.model.state_dict())
    emb = _embedding(student, steps=(2, 4), default_steps=2, guidance=(2.0, 1.5))
    torch.nn.init.normal_(emb.embed.linear_2.weight, std=0.1)
    student.enable_few_step(emb).eval()
    student.save_pretrained(tmp_path / "ck")
    assert (
        json.loads((tmp_path / "ck" / "model_index.json").read_text())[FEW_STEP_FOLDER][1]
        == "StepSizeEmbedding"
    )
    loaded = load_generator(tmp_path / "ck")
    assert loaded.sampling_defaults() == {"steps": 2, "sampler": "few-step", "guidance": (1.0, 1.0)}
    src, kps = data[0]["source"][None], data[0]["target_kps"][None]
    calls = []
    loaded.denoiser().register_forward_hook(lambda *a: calls.append(1))
    default = loaded.generate(src, kps, seeds=[3])
    assert len(calls) == 2  # two jumps, one conditional call each
    assert torch.allclose(
        default, student.generate(src, kps, sampler="few-step", steps=2, seeds=[3]), atol=1e-5
    )
    assert not torch.allclose(default, loaded.generate(src, kps, steps=4, seeds=[3]), atol=1e-3)
    with pytest.raises(ValueError, match="trained for 2, 4 step"):
        loaded.generate(src, kps, steps=1)
    with pytest.raises(ValueError, match=r"folded in \(trained at 2,1.5\)"):
        loaded.generate(src, kps, guidance=(2.0, 2.0))
    assert teacher.sampling_defaults() == {"steps": 20, "sampler": "dpmsolver++", "guidance": (2.0, 2.0)}
    with pytest.raises(ValueError, match="needs a few-step checkpoint"):
        teacher.generate(src, kps, sampler="few-step")
    teacher.save_pretrained(tmp_path / "ck")  # a plain save over it removes the stale few_step/
    assert (
        not (tmp_path / "ck" / FEW_STEP_FOLDER).exists() and load_generator(tmp_path / "ck").few_step is None
    )


def test_few_step_needs_a_flow_model() -> None:
    pipe = PIDMPipeline.from_preset("tiny", prediction_type="v_prediction")
    with pytest.raises(ValueError, match="flow-matching"):
        pipe.enable_few_step(_embedding(PIDMPipeline.from_preset("tiny")))
    with pytest.raises(ValueError, match="wide"):
        PIDMPipeline.from_preset("tiny").enable_few_step(StepSizeEmbedding(time_embed_dim=7))
    with pytest.raises(ValueError, match="include default_steps"):
        StepSizeEmbedding(steps=(2, 4), default_steps=1)


def test_train_generator_few_step_from_a_teacher(synth_market, tmp_path, capsys) -> None:
    """``train-generator --few-step-from``: records the trajectories, fine-tunes, writes a final/ that
    ``posereid generate`` samples with the few-step sampler by default; a resume with another trajectory
    count is refused, naming the setting."""
    from posereid.experiments.cli import main as cli_main
    from posereid.models import load_generator

    teacher_dir = tmp_path / "teacher"
    PIDMPipeline.from_preset("tiny", image_size=(64, 32)).save_pretrained(teacher_dir)
    base = ["train-generator", "--data", str(synth_market), "--few-step-from", str(teacher_dir),
            "--steps", "2", "--batch-size", "2", "--checkpoint-every", "1", "--sample-every", "2",
            "--no-progress", "--device", "cpu", "--out", str(tmp_path / "fs")]  # fmt: skip
    assert cli_main([*base, "--few-step-trajectories", "3", "--few-step-steps", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "3 teacher trajectories" in out and "jumps for 1,2 step(s)" in out
    final = load_generator(tmp_path / "fs" / "final")
    assert final.sampling_defaults()["sampler"] == "few-step" and list(final.few_step.config.steps) == [1, 2]
    assert (tmp_path / "fs" / "samples" / "step-0000002.png").is_file()
    assert cli_main([*base, "--steps", "3", "--few-step-trajectories", "2", "--few-step-steps", "1,2"]) == 1
    assert "few_step: checkpoint 'teacher" in capsys.readouterr().err


def test_a_cfld_teacher_distils_into_a_few_step_cfld_generator(synth_market, tmp_path) -> None:
    """Few-step distillation is a shared family part: a CFLD flow teacher gives a CFLD student that loads with
    its step-size embedding and samples in one call by default, on its own UNet."""
    from posereid.experiments.cli import main as cli_main
    from posereid.models import load_generator
    from posereid.models.cfld import CFLDPipeline

    teacher_dir = tmp_path / "teacher"
    CFLDPipeline.from_preset("tiny", image_size=(64, 32), prediction_type="flow").save_pretrained(teacher_dir)
    assert cli_main(["train-generator", "--data", str(synth_market), "--few-step-from", str(teacher_dir),
                     "--steps", "2", "--batch-size", "2", "--checkpoint-every", "0", "--sample-every", "0",
                     "--few-step-trajectories", "2", "--no-progress", "--device", "cpu",
                     "--out", str(tmp_path / "fs")]) == 0  # fmt: skip
    student = load_generator(tmp_path / "fs" / "final")
    assert isinstance(student, CFLDPipeline) and student.few_step is not None
    assert student.sampling_defaults()["sampler"] == "few-step"
    src = torch.rand(1, 3, 64, 32)
    kps = torch.rand(1, 18, 2) * torch.tensor([31.0, 63.0])
    calls = []
    hook = student.denoiser().register_forward_hook(lambda *a: calls.append(1))
    out = student.generate(src, kps, kps, seeds=[0])
    hook.remove()
    assert student.sampling_defaults() == {"steps": 1, "sampler": "few-step", "guidance": (1.0, 1.0)}
    assert len(calls) == 1 and out.shape == (1, 3, 64, 32) and torch.isfinite(out).all()


def test_the_shipped_generator_samples_in_one_call_and_follows_the_target_pose(synth_market) -> None:
    """The shipped generator is a few-step checkpoint: by default one network call per image, and that
    call reads the target pose. Two target poses, same source and seed: the images differ inside the
    two skeletons' region (dilated limbs) far more than outside it. A model that ignored the pose would
    give the same image twice (no difference anywhere) and fail."""
    from posereid.augment.pose_bank import PoseBank
    from posereid.models import SHIPPED_GENERATOR, load_generator
    from posereid.models.images import pil_to_tensor01
    from posereid.models.pose import skeleton_tensor
    from posereid.reid_integration.market1501 import find_annotations, load_image

    gen = load_generator(SHIPPED_GENERATOR)
    assert gen.sampling_defaults() == {"steps": 1, "sampler": "few-step", "guidance": (1.0, 1.0)}
    h, w = gen.image_size
    bank = PoseBank.from_market(synth_market, find_annotations(synth_market), split="train", image_hw=(h, w))
    kps = torch.as_tensor(bank.get(list(range(len(bank))), (h, w)), dtype=torch.float32)
    seen = (kps >= 0).all(dim=-1)
    # the two most different poses of the split (over joints both show), and a source of a third image
    first, second = max(
        ((a, b) for a in range(len(kps)) for b in range(a + 1, len(kps))),
        key=lambda ab: float(((kps[ab[0]] - kps[ab[1]]).abs().sum(-1) * (seen[ab[0]] & seen[ab[1]])).sum()),
    )
    third = next(i for i in range(len(kps)) if i not in (first, second))
    image = load_image(synth_market / "bounding_box_train" / bank.names[third])
    source = pil_to_tensor01(image.resize((w, h)))
    targets = torch.stack([kps[first], kps[second]])
    calls: list[int] = []
    hook = gen.denoiser().register_forward_hook(lambda *a: calls.append(1))
    try:
        images = gen.generate(source[None].repeat(2, 1, 1, 1), targets, seeds=[7, 7])
    finally:
        hook.remove()
    assert len(calls) == 1  # one batched call for both images: one network call per image
    limbs = skeleton_tensor(targets, h, w).amax(dim=(0, 1))[None, None] > 0
    region = torch.nn.functional.max_pool2d(limbs.float(), 5, stride=1, padding=2)[0, 0] > 0
    diff = (images[0] - images[1]).abs().mean(dim=0)
    inside, outside = float(diff[region].mean()), float(diff[~region].mean())
    assert inside > 2.0 * outside and inside > 0.05, (inside, outside)


def test_reid_gain_samples_a_few_step_generator_with_its_own_sampler(tmp_path, capsys) -> None:
    """``reid-gain --generator FEW_STEP_DIR`` takes the options left out from the checkpoint (before the
    recipe's 12 steps at guidance 1); an option given stays; a plain checkpoint leaves them to the recipe."""
    import argparse

    from posereid.experiments.reid_gain.cli import checkpoint_sampling

    pipe = PIDMPipeline.from_preset("tiny")
    pipe.enable_few_step(_embedding(pipe, steps=(2, 4), default_steps=2)).save_pretrained(tmp_path / "fs")
    PIDMPipeline.from_preset("tiny").save_pretrained(tmp_path / "plain")

    def args(generator, **given):
        return argparse.Namespace(
            generator=generator, **{"sampler": None, "steps": None, "guidance": None, **given}
        )

    a = args(tmp_path / "fs")
    assert checkpoint_sampling(a) == ["sampler", "steps", "guidance"]
    assert (a.sampler, a.steps, a.guidance) == ("few-step", 2, (1.0, 1.0))
    assert "few-step checkpoint" in capsys.readouterr().out
    b = args(tmp_path / "fs", steps=4)
    assert checkpoint_sampling(b) == ["sampler", "guidance"] and b.steps == 4
    d = args(
        tmp_path / "fs", sampler="dpmsolver++"
    )  # another sampler: its steps and guidance are the recipe's
    assert checkpoint_sampling(d) == [] and (d.steps, d.guidance) == (None, None)
    c = args(tmp_path / "plain")
    assert checkpoint_sampling(c) == [] and c.sampler is None
    assert checkpoint_sampling(args(None)) == []
