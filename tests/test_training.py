"""Generator training loop: learning, exact resume, non-finite steps, checkpoint atomicity, CLI."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from posereid.models.pidm import PIDMPipeline
from posereid.models.pose import LIMBS, flip_keypoints
from posereid.models.training import (
    NonFiniteLossError,
    PosePairDataset,
    PoseRecord,
    ResumeMismatchError,
    TrainConfig,
    list_checkpoints,
    train_generator,
)

H, W = 32, 16


# --------------------------------------------------------------------------------------------------
# Data: stick figures whose limb colours are the identity (coloured shapes drawn at the keypoints)
# --------------------------------------------------------------------------------------------------
def _pose(kind: int) -> np.ndarray:
    """COCO-18 (x, y) at 32x16, both asymmetric (a flip is visible): 0 = standing left of centre, arms
    down; 1 = right of centre, right arm raised, left arm out, legs apart."""
    c = W / 2 - 0.5 + (-2 if kind == 0 else 1)
    k = [
        (c, 4), (c, 8), (c - 3, 8), (c - 4, 13), (c - 4, 18), (c + 3, 8), (c + 4, 13), (c + 4, 18),
        (c - 2, 17), (c - 2, 23), (c - 2, 29), (c + 2, 17), (c + 2, 23), (c + 2, 29),
        (c - 1, 3), (c + 1, 3), (c - 2, 4), (c + 2, 4),
    ]  # fmt: skip
    kps = np.array(k, np.float32)
    if kind == 1:
        kps[[3, 4]] = [(c - 5, 5), (c - 5, 1)]
        kps[[6, 7]] = [(c + 5, 9), (c + 6, 11)]
        kps[[9, 10]] = [(c - 4, 23), (c - 6, 29)]
        kps[[12, 13]] = [(c + 4, 23), (c + 6, 29)]
    return kps


def _render(
    colours: tuple[tuple[int, int, int], ...], kps: np.ndarray, size: tuple[int, int] = (H, W)
) -> np.ndarray:
    """Grey canvas; arms in colour 0, torso/head in colour 1, legs in colour 2."""
    sy, sx = size[0] / H, size[1] / W
    im = Image.new("RGB", (size[1], size[0]), (128, 128, 128))
    d = ImageDraw.Draw(im)
    pts = [((x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5) for x, y in kps]
    d.polygon([pts[2], pts[5], pts[11], pts[8]], fill=colours[1])
    for a, b in LIMBS:
        part = 0 if {a, b} <= {2, 3, 4, 5, 6, 7} else 2 if {a, b} <= {8, 9, 10, 11, 12, 13} else 1
        d.line([pts[a], pts[b]], fill=colours[part], width=max(2, round(2 * sx)))
    return np.asarray(im).copy()


IDENTITIES = (((230, 30, 30), (30, 30, 230), (240, 240, 40)), ((30, 200, 30), (240, 140, 20), (200, 40, 220)))


def _records(size: tuple[int, int] = (H, W)) -> list[PoseRecord]:
    recs = []
    for pid, colours in enumerate(IDENTITIES):
        for kind in (0, 1):
            kps = _pose(kind)
            scaled = kps.copy()
            scaled[:, 0] = (kps[:, 0] + 0.5) * size[1] / W - 0.5
            scaled[:, 1] = (kps[:, 1] + 0.5) * size[0] / H - 0.5
            recs.append(PoseRecord(_render(colours, kps, size), pid, scaled, name=f"{pid}_{kind}"))
    return recs


def _tiny(**overrides) -> PIDMPipeline:
    torch.manual_seed(0)
    return PIDMPipeline.from_preset("tiny", **overrides)


def _config(**kw) -> TrainConfig:
    base = dict(
        steps=8, batch_size=2, lr=1e-3, warmup_steps=2, lr_schedule="cosine", ema_decay=0.9,
        checkpoint_every=4, keep_checkpoints=2, sample_every=0, log_every=2, tensorboard=False, seed=3,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------
def test_dataset_pairs_resizes_and_flips_consistently() -> None:
    recs = _records(size=(64, 32)) + [PoseRecord(_render(IDENTITIES[0], _pose(0)), 7, _pose(0), name="alone")]
    ds = PosePairDataset(recs, (H, W), flip_prob=0.5, seed=1)
    assert len(ds) == 4 and ds.skipped["image of a single-image identity"] == 1
    flips = 0
    for epoch in range(6):
        for k in range(len(ds)):
            item = ds[(epoch, k)]
            again = ds[(epoch, k)]
            torch.testing.assert_close(item["source"], again["source"])  # a function of (seed, epoch, k)
            assert item["source"].shape == (3, H, W) and item["target"].shape == (3, H, W)
            tgt_kind = k % 2  # targets are records in order; the only partner is the other pose
            base = _pose(tgt_kind)
            if np.allclose(item["target_kps"].numpy(), base, atol=1e-4):
                src = _pose(1 - tgt_kind)
            else:  # flipped: both images and both skeletons mirrored, left/right labels swapped
                flips += 1
                assert np.allclose(item["target_kps"].numpy(), flip_keypoints(base, W), atol=1e-4)
                src = flip_keypoints(_pose(1 - tgt_kind), W)
                plain = ds.get(k, epoch=epoch, flip=False)
                torch.testing.assert_close(item["target"].flip(-1), plain["target"], atol=0, rtol=0)
                torch.testing.assert_close(item["source"].flip(-1), plain["source"], atol=0, rtol=0)
            assert np.allclose(item["source_kps"].numpy(), src, atol=1e-4)
            assert item["pid"] == k // 2
    assert 0 < flips < 24, flips

    named = PosePairDataset(recs, (H, W), pairs=[("0_0", "0_1"), ("0_0", "1_1"), ("nope", "0_1")])
    assert named.pairs == [(0, 1), (1, 0)]  # both directions; cross-identity and unknown names skipped
    assert named.skipped == {"pair of two identities": 1, "pair with an unknown image": 1}
    with pytest.raises(ValueError, match="no training pairs"):
        PosePairDataset(recs[-1:], (H, W))


def test_dataset_unreadable_image_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    recs = [PoseRecord(bad, 1, _pose(0)), PoseRecord(bad, 1, _pose(1))]
    with pytest.raises(OSError, match="broken.jpg"):
        PosePairDataset(recs, (H, W))[0]


# --------------------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_learns_pose_transfer(tmp_path: Path) -> None:
    recs = _records()
    ds = PosePairDataset(recs, (H, W), seed=0)
    batch = torch.utils.data.default_collate([ds.get(k, flip=False) for k in range(len(ds))])
    # v-prediction: with eps-prediction a few hundred CPU steps do not yet give clean samples. No condition
    # dropout: this checks that the loop trains the conditional model (CFG is test_generator's business).
    model = _tiny(prediction_type="v_prediction", p_drop_pose=0.0, p_drop_appearance=0.0)

    def eval_loss(m: PIDMPipeline) -> float:  # fixed timesteps/noise: comparable before/after
        with torch.no_grad():
            return float(np.mean([
                m.training_loss(batch["source"], batch["target"], batch["source_kps"], batch["target_kps"],
                                generator=torch.Generator().manual_seed(s)).item()
                for s in range(8)
            ]))  # fmt: skip

    def sample_mse(m: PIDMPipeline) -> float:
        out = m.eval().generate(batch["source"], batch["target_kps"], batch["source_kps"], steps=10,
                                guidance=(1.0, 1.0), seeds=list(range(len(ds))))  # fmt: skip
        return float(((out - batch["target"]) ** 2).mean())

    loss0, mse0 = eval_loss(model), sample_mse(model)
    cfg = _config(steps=120, batch_size=4, lr=3e-3, warmup_steps=10, lr_schedule="constant", ema_decay=0.9,
                  checkpoint_every=0, sample_every=60, num_samples=2, sample_steps=4, log_every=50,
                  tensorboard=True)  # fmt: skip
    res = train_generator(model, ds, cfg, tmp_path / "run", progress=False)
    assert res.steps == 120 and len(res.losses) == 120 and res.skipped_nonfinite == 0
    trained = PIDMPipeline.from_pretrained(tmp_path / "run" / "final")  # EMA weights
    loss1, mse1 = eval_loss(trained), sample_mse(trained)
    first, last = np.mean(res.losses[:20]), np.mean(res.losses[-20:])
    msg = f"eval loss {loss0:.3f} -> {loss1:.3f}; train loss first20 {first:.3f} last20 {last:.3f}; "
    msg += f"sample MSE {mse0:.4f} -> {mse1:.4f}"
    assert loss1 < 0.5 * loss0 and last < 0.6 * first, msg
    assert mse1 < 0.5 * mse0, msg
    # The pose steers the image where the poses differ: one source, one seed, the two target poses. The
    # samples must differ inside the region where the two real renders differ (raised arm, spread legs),
    # and much less elsewhere; a generator that ignored the pose would give two equal images.
    src = torch.from_numpy(_render(IDENTITIES[0], _pose(0))).permute(2, 0, 1)[None].float().div(255)
    src2, ks2 = src.repeat(2, 1, 1, 1), torch.from_numpy(np.stack([_pose(0)] * 2))
    kt2 = torch.from_numpy(np.stack([_pose(0), _pose(1)]))
    a, b = trained.generate(src2, kt2, ks2, steps=10, guidance=(1.0, 1.0), seeds=[5, 5])
    real = np.abs(_render(IDENTITIES[0], _pose(0)).astype(np.float32) - _render(IDENTITIES[0], _pose(1)))
    where = torch.from_numpy(real.max(-1) > 60)
    change = (a - b).abs().mean(0)
    inside, outside = float(change[where].mean()), float(change[~where].mean())
    assert inside > 0.1 and inside > 2 * outside, f"pose change: inside {inside:.3f}, outside {outside:.3f}"
    assert (tmp_path / "run" / "samples" / "step-0000120.png").is_file()
    assert any((tmp_path / "run" / "tensorboard").iterdir())


# --------------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------------
class _Interrupt(Exception):
    pass


def _kill_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    """Make ``training_loss`` raise on call ``calls + 1`` (a job killed mid-run)."""
    original = PIDMPipeline.training_loss
    count = {"n": 0}

    def patched(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise _Interrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PIDMPipeline, "training_loss", patched)


def test_resume_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = PosePairDataset(_records(), (H, W), seed=0)
    cfg = _config(steps=6, checkpoint_every=3, keep_checkpoints=3, grad_accum=2)
    full = train_generator(_tiny(), ds, cfg, tmp_path / "full", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "full")] == [3, 6]

    with monkeypatch.context() as mp:
        _kill_after(mp, calls=4 * cfg.grad_accum)  # dies during step 5, after the step-3 checkpoint
        with pytest.raises(_Interrupt):
            train_generator(_tiny(), ds, cfg, tmp_path / "cut", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [3]
    other_init = PIDMPipeline.from_preset("tiny")  # weights come from the checkpoint, not init
    resumed = train_generator(other_init, ds, cfg, tmp_path / "cut", progress=False)
    assert resumed.start_step == 3 and resumed.steps == 6
    assert resumed.losses == pytest.approx(full.losses[3:], rel=1e-5)

    for use_ema in (False, True):
        a = PIDMPipeline.from_pretrained(tmp_path / "full" / "final", use_ema=use_ema).state_dict()
        b = PIDMPipeline.from_pretrained(tmp_path / "cut" / "final", use_ema=use_ema).state_dict()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k} (ema={use_ema})")
    raw = PIDMPipeline.from_pretrained(tmp_path / "full" / "final", use_ema=False).state_dict()
    ema = PIDMPipeline.from_pretrained(tmp_path / "full" / "final", use_ema=True).state_dict()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw), "EMA weights should differ from raw weights"

    with open(tmp_path / "cut" / "train_log.csv", newline="") as fh:  # row 4 of the killed run redone
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert [float(r["lr"]) for r in rows[:3]] == [0.0, 5e-4, 1e-3]  # lr used by the step (2 warm-up steps)
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        train_generator(_tiny(), ds, cfg, tmp_path / "cut", resume=False, progress=False)
    again = train_generator(_tiny(), ds, cfg, tmp_path / "cut", progress=False)  # finished: nothing to do
    assert again.steps == 6 and again.losses == []


def test_frozen_parameters_stay_out_of_the_ema_and_resume_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frozen part (a latent model's VAE, a finished stage) is saved as it is, in the raw and EMA weights,
    and the EMA averages only what trains, across a resume too."""

    def frozen() -> PIDMPipeline:
        pipe = _tiny()
        pipe.model.appearance.requires_grad_(False)
        return pipe

    init = {k: v.clone() for k, v in frozen().model.appearance.state_dict().items()}
    ds = PosePairDataset(_records(), (H, W), seed=0)
    cfg = _config(steps=6, checkpoint_every=3, keep_checkpoints=3)
    train_generator(frozen(), ds, cfg, tmp_path / "full", progress=False)
    with monkeypatch.context() as mp:
        _kill_after(mp, calls=4)
        with pytest.raises(_Interrupt):
            train_generator(frozen(), ds, cfg, tmp_path / "cut", progress=False)
    train_generator(frozen(), ds, cfg, tmp_path / "cut", progress=False)
    for use_ema in (False, True):
        a = PIDMPipeline.from_pretrained(tmp_path / "full" / "final", use_ema=use_ema).model
        b = PIDMPipeline.from_pretrained(tmp_path / "cut" / "final", use_ema=use_ema).model
        for k, v in a.appearance.state_dict().items():
            assert torch.equal(v, init[k]), f"frozen {k} changed (ema={use_ema})"
        for (k, v), w in zip(a.unet.state_dict().items(), b.unet.state_dict().values()):
            torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-6, msg=f"{k} (ema={use_ema})")
    raw = PIDMPipeline.from_pretrained(tmp_path / "full" / "final", use_ema=False).model.unet.state_dict()
    ema = PIDMPipeline.from_pretrained(tmp_path / "full" / "final", use_ema=True).model.unet.state_dict()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw), "the trained part should be averaged"


def test_time_budget_checkpoints_and_resume_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``max_minutes`` stops a job cleanly (checkpoint + grid); the next call resumes to the same weights."""
    import posereid.models.training as training

    ds = PosePairDataset(_records(), (H, W), seed=0)
    full = train_generator(
        _tiny(), ds, _config(steps=5, checkpoint_every=0), tmp_path / "full", progress=False
    )
    ticks = iter(range(0, 10_000, 25))  # every clock read is 25 s later: the 1-minute budget ends at step 3
    monkeypatch.setattr(training, "_clock", lambda: float(next(ticks)))
    cfg = _config(steps=5, checkpoint_every=0, sample_every=100, max_minutes=1.0)
    cut = train_generator(_tiny(), ds, cfg, tmp_path / "cut", progress=False)
    assert cut.out_of_time and cut.steps == 3 and len(cut.losses) == 3
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [3]
    assert (tmp_path / "cut" / "samples" / "step-0000003.png").is_file()  # a grid of where it stopped
    monkeypatch.setattr(training, "_clock", lambda: 0.0)
    rest = train_generator(_tiny(), ds, cfg, tmp_path / "cut", progress=False)
    assert not rest.out_of_time and (rest.start_step, rest.steps) == (3, 5)
    assert cut.losses + rest.losses == pytest.approx(full.losses, rel=1e-5)
    a = PIDMPipeline.from_pretrained(tmp_path / "full" / "final").state_dict()
    b = PIDMPipeline.from_pretrained(tmp_path / "cut" / "final").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(ValueError, match="max_minutes"):
        _config(max_minutes=0)


# --------------------------------------------------------------------------------------------------
# Non-finite losses
# --------------------------------------------------------------------------------------------------
def test_nonfinite_steps_skipped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = PosePairDataset(_records(), (H, W), seed=0)
    original = PIDMPipeline.training_loss
    seen: list[torch.Tensor] = []

    def patched(self, *args, **kwargs):
        seen.append(torch.cat([p.detach().flatten() for p in self.parameters()]).clone())
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if len(seen) in (2, 3) else loss

    monkeypatch.setattr(PIDMPipeline, "training_loss", patched)
    cfg = _config(steps=5, warmup_steps=0, checkpoint_every=0)  # warm-up would make step 1 a no-op (lr 0)
    res = train_generator(_tiny(), ds, cfg, tmp_path / "nan", progress=False)
    assert res.skipped_nonfinite == 2
    assert np.isnan(res.losses[1]) and np.isnan(res.losses[2]) and np.isfinite(res.losses).sum() == 3
    # seen[i] = weights at the start of step i+1
    assert not torch.equal(seen[0], seen[1])  # a good step updates
    assert torch.equal(seen[1], seen[2]) and torch.equal(seen[2], seen[3])  # NaN steps 2 and 3 do not
    assert not torch.equal(seen[3], seen[4])
    with open(tmp_path / "nan" / "train_log.csv", newline="") as fh:
        assert [int(r["skipped"]) for r in csv.DictReader(fh)] == [0, 1, 1, 0, 0]

    monkeypatch.setattr(PIDMPipeline, "training_loss", lambda self, *a, **k: torch.tensor(float("inf")))
    cfg = _config(steps=20, checkpoint_every=0, max_nonfinite_in_row=3)
    with pytest.raises(NonFiniteLossError, match=r"4 consecutive steps.*max_nonfinite_in_row=3"):
        train_generator(_tiny(), ds, cfg, tmp_path / "diverged", progress=False)


# --------------------------------------------------------------------------------------------------
# Checkpoint atomicity
# --------------------------------------------------------------------------------------------------
def test_partial_checkpoints_ignored_on_resume(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = PosePairDataset(_records(), (H, W), seed=0)
    out = tmp_path / "run"
    train_generator(_tiny(), ds, _config(steps=8, checkpoint_every=2), out, progress=False)
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000006", "step-0000008"]  # keep_checkpoints=2
    shutil.rmtree(ckpts / "step-0000008")  # as if killed before step 8 was written
    # A job killed while writing step 8 leaves a temp dir; a hand-copied dir may lack its state file.
    leftover = ckpts / f"step-0000008.tmp-{os.getpid() + 1}"
    (leftover / "model").mkdir(parents=True)
    (leftover / "model" / "config.json").write_text("{")
    incomplete = ckpts / "step-0000010"
    (incomplete / "model").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="posereid.models.training"):
        res = train_generator(_tiny(), ds, _config(steps=8, checkpoint_every=2), out, progress=False)
    assert res.start_step == 6 and res.steps == 8
    assert not leftover.exists()
    assert "incomplete checkpoint" in caplog.text and "leftover partial checkpoint" in caplog.text
    assert [s for s, _ in list_checkpoints(out)] == [6, 8]
    PIDMPipeline.from_pretrained(ckpts / "step-0000008" / "model")


def test_resume_with_other_settings_stops_and_names_them(tmp_path: Path) -> None:
    """Resuming with another LR or batch size would train a mix of two runs: it is an error, and nothing
    (train_config.json, the log, the checkpoints) is touched."""
    ds = PosePairDataset(_records(), (H, W), seed=0)
    out = tmp_path / "run"
    train_generator(_tiny(), ds, _config(steps=4, checkpoint_every=2), out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ResumeMismatchError, match=r"lr: checkpoint 0\.001, now 0\.003.*--overwrite"):
        train_generator(_tiny(), ds, _config(steps=4, checkpoint_every=2, lr=3e-3), out, progress=False)
    with pytest.raises(ResumeMismatchError, match=r"batch_size: checkpoint 2, now 3"):
        train_generator(_tiny(), ds, _config(steps=4, checkpoint_every=2, batch_size=3), out, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # run-control knobs may change on resume
    res = train_generator(
        _tiny(), ds, _config(steps=4, checkpoint_every=2, max_minutes=5.0), out, progress=False
    )
    assert res.start_step == 4


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def test_cli_train_generator_and_sample(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from posereid.experiments.cli import main
    from posereid.reid_integration.market1501 import MarketWriter, write_pairs_csv, write_patn_csv

    data = tmp_path / "market"
    writer = MarketWriter(data)
    ann: dict[str, np.ndarray] = {}
    recs = _records(size=(64, 32))
    for i, rec in enumerate(recs):
        name = writer.add("train", Image.fromarray(rec.image), pid=rec.pid + 1, cam=1 + i % 2, frame=i)
        ann[name] = rec.keypoints
    unannotated = writer.add("train", Image.fromarray(recs[0].image), pid=1, cam=3, frame=99)
    few = writer.add("train", Image.fromarray(recs[0].image), pid=2, cam=3, frame=98)
    ann[few] = np.where(np.arange(18)[:, None] < 3, recs[0].keypoints, -1.0)  # only 3 visible joints
    (data / "bounding_box_train" / "0001_c4s1_000050_01.jpg").write_bytes(b"truncated")
    ann["0001_c4s1_000050_01.jpg"] = recs[0].keypoints
    write_patn_csv(tmp_path / "ann.csv", ann)
    names = list(ann)
    write_pairs_csv(tmp_path / "pairs.csv", [(names[0], names[1]), (names[3], names[2]), (names[0], few)])
    out = tmp_path / "gen"
    args = ["train-generator", "--data", str(data), "--annotations", str(tmp_path / "ann.csv"),
            "--pairs", str(tmp_path / "pairs.csv"), "--preset", "tiny", "--out", str(out), "--steps", "2",
            "--batch-size", "2",
            "--checkpoint-every", "2", "--sample-every", "2", "--seed", "1", "--no-progress"]  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert "skipped 1 image(s) without an annotation row" in caplog.text, caplog.text
    assert "skipped 1 image(s) with fewer than" in caplog.text and "skipped 1 unreadable image" in caplog.text
    assert "skipped 1 pair with an unknown image" in caplog.text and "4 training pairs" in caplog.text
    assert unannotated and PIDMPipeline.from_pretrained(out / "final").image_size == (H, W)
    with open(out / "train_log.csv", newline="") as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["1", "2"]
    assert (out / "samples" / "step-0000002.png").is_file()
    assert (out / "loss.png").stat().st_size > 0  # the loss curve is plotted at the end

    src = data / "bounding_box_train" / next(iter(ann))
    png = tmp_path / "sample.png"
    args = ["sample", "--generator", str(out / "final"), "--source", str(src), "--target-pose-from",
            list(ann)[1], "--annotations", str(tmp_path / "ann.csv"), "--out", str(png),
            "--steps", "2"]  # fmt: skip
    assert main(args) == 0
    with Image.open(png) as im:
        assert im.size[1] >= H and im.size[0] >= 3 * W  # source | target skeleton | generated


def _cli_market(tmp_path: Path) -> tuple[Path, Path]:
    from posereid.reid_integration.market1501 import MarketWriter, write_patn_csv

    data = tmp_path / "market"
    writer = MarketWriter(data)
    ann = {}
    for i, rec in enumerate(_records()):
        ann[writer.add("train", Image.fromarray(rec.image), pid=rec.pid + 1, cam=1 + i % 2, frame=i)] = (
            rec.keypoints
        )
    write_patn_csv(tmp_path / "ann.csv", ann)
    return data, tmp_path / "ann.csv"


def test_cli_same_seed_same_run_and_changed_settings_need_overwrite(tmp_path: Path, capsys) -> None:
    """--seed fixes the initial weights (once three runs with one seed started from different losses);
    rerunning an output folder with another --lr stops naming it, and --overwrite starts over."""
    from posereid.experiments.cli import main

    data, ann = _cli_market(tmp_path)

    def train(out: str, *extra: str) -> int:
        return main(["train-generator", "--data", str(data), "--annotations", str(ann), "--preset", "tiny",
                     "--out", str(tmp_path / out), "--steps", "2", "--batch-size", "2", "--checkpoint-every", "0",
                     "--sample-every", "0", "--no-progress", *extra])  # fmt: skip

    assert (
        train("a", "--seed", "4") == 0 and train("b", "--seed", "4") == 0 and train("c", "--seed", "5") == 0
    )
    a, b, c = (
        PIDMPipeline.from_pretrained(tmp_path / o / "final", use_ema=False).state_dict() for o in "abc"
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    capsys.readouterr()
    assert train("a", "--seed", "4", "--lr", "0.003") == 1
    err = capsys.readouterr().err
    assert "lr: checkpoint 0.0001, now 0.003" in err and "--overwrite" in err and "Traceback" not in err
    assert train("a", "--seed", "4", "--lr", "0.003", "--overwrite") == 0
    assert json.loads((tmp_path / "a" / "train_config.json").read_text())["lr"] == 0.003


def test_training_records_skip_images_far_from_the_keypoint_frame(tmp_path: Path, caplog) -> None:
    from posereid.experiments.data import market_pose_records
    from posereid.reid_integration.market1501 import read_patn_csv, write_patn_csv

    data, ann = _cli_market(tmp_path)
    first = sorted((data / "bounding_box_train").glob("*.jpg"))[0]
    Image.new("RGB", (1, 1)).save(first)  # once: trained with 0 of 13 joints left
    rows = read_patn_csv(ann, image_hw=(H, W))
    write_patn_csv(ann, rows)
    with caplog.at_level(logging.WARNING):
        recs = market_pose_records(data, ann, annotation_size=(H, W))
    assert first.name not in {r.name for r in recs} and len(recs) == len(rows) - 1
    assert "skipped 1 image(s) of a size far from the keypoint frame" in caplog.text
