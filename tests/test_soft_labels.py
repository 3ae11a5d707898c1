"""Teacher soft labels for synthetic images (issue 26): the loss, the engine, the teacher check, train-reid."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import default_collate

from posereid.experiments.cli import main as cli_main
from posereid.reid_integration.market1501 import Market1501, MarketWriter
from posereid.reid_integration.soft_labels import (
    SOFT_AGREE,
    OnlineSoftTargets,
    SoftLabelSoftmaxEngine,
    SoftTargets,
    check_soft_weight,
    soft_label_loss,
    soft_targets_for_paths,
    synthetic_flags,
    teacher_soft_targets,
)
from posereid.reid_integration.torchreid_plugin import (
    build_reid_model,
    build_reid_transforms,
    save_reid_checkpoint,
    scan_reid_lists,
)
from posereid.reid_integration.train import PosereidDataManager, ReidTrainConfig, train_reid

SMALL = ["--model", "osnet_x0_25", "--height", "32", "--width", "16", "--batch-size", "8", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def synthetic_dir(synth_market, tmp_path_factory) -> Path:
    """A Market-format synthetic folder: every real train image mirrored, under its source pid, camera 6."""
    root = tmp_path_factory.mktemp("synthetic")
    writer = MarketWriter(root)
    for rec in Market1501(synth_market).train:
        if rec.has_identity:
            writer.add("train", ImageOps.mirror(Image.open(rec.path).convert("RGB")), rec.pid, 6)
    return root


def _teacher(tmp_path: Path, num_classes: int, name: str = "teacher.safetensors") -> Path:
    model = build_reid_model("osnet_x0_25", num_classes)
    meta = {"model": "osnet_x0_25", "num_classes": num_classes, "loss": "softmax", "height": 32, "width": 16}
    return save_reid_checkpoint(tmp_path / name, model, meta=meta)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_a_certain_teacher_at_t1_gives_the_hard_loss(weight):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen) * 3
    labels = torch.tensor([0, 3, 1, 2, 2, 0])
    teacher = F.one_hot(labels, 4).float()
    synthetic = torch.tensor([True, False, True, True, False, True])
    loss = soft_label_loss(logits, labels, teacher, synthetic, weight=weight, temperature=1.0)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    # a teacher that is not certain does change the loss on the synthetic items (w > 0)
    other = soft_label_loss(
        logits, labels, torch.full((6, 4), 0.25), synthetic, weight=weight, temperature=1.0
    )
    assert (other.item() == pytest.approx(loss.item(), rel=1e-6)) == (weight == 0.0)


def test_the_soft_term_is_the_tempered_kl(weight=0.6, temperature=2.0):
    gen = torch.Generator().manual_seed(1)
    logits, t_logits = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    labels = torch.tensor([0, 1, 2, 1, 0])
    synthetic = torch.tensor([True, True, False, False, True])
    p = F.softmax(t_logits / temperature, 1)
    loss = soft_label_loss(logits, labels, p, synthetic, weight=weight, temperature=temperature)
    ce = F.cross_entropy(logits, labels, reduction="none")
    q = F.softmax(logits / temperature, 1)
    kl = (p * (p.log() - q.log())).sum(1)
    expected = torch.where(synthetic, (1 - weight) * ce + weight * temperature**2 * kl, ce).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="soft_weight"):
        soft_label_loss(logits, labels, p, synthetic, weight=1.5, temperature=1.0)
    with pytest.raises(ValueError, match="soft_temperature"):
        soft_label_loss(logits, labels, p, synthetic, weight=0.5, temperature=0.0)


def test_agree_keeps_the_hard_label_where_the_teacher_recognises_the_person_and_else_its_soft_label():
    """``weight="agree"``: a synthetic item whose teacher's most probable identity is its label is trained on the
    hard label alone; one the teacher takes for someone else on the teacher's soft label alone."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 3, generator=gen)
    labels = torch.tensor([0, 1, 2, 0])
    t_logits = torch.tensor([[3.0, 0.0, 0.0], [2.0, 0.5, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    synthetic = torch.tensor([True, True, True, False])  # item 1: the teacher sees person 0, not 1
    p = F.softmax(t_logits / 2.0, 1)
    loss = soft_label_loss(logits, labels, p, synthetic, weight=SOFT_AGREE, temperature=2.0)
    ce = F.cross_entropy(logits, labels, reduction="none")
    q = F.softmax(logits / 2.0, 1)
    kl = (p * (p.log() - q.log())).sum(1)
    expected = torch.stack([ce[0], 4.0 * kl[1], ce[2], ce[3]]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(
        soft_label_loss(logits, labels, p, synthetic, weight=0.5, temperature=2.0).item(), rel=1e-3
    )
    assert check_soft_weight("agree") == SOFT_AGREE and check_soft_weight(0.25) == 0.25
    with pytest.raises(ValueError, match="soft_weight"):
        check_soft_weight("sometimes")
    assert (
        ReidTrainConfig(data="d", synthetic=["s"], soft_teacher="t", soft_weight="agree").soft_weight
        == "agree"
    )
    from posereid.experiments.cli import build_parser

    parser, _ = build_parser("train-reid")
    assert (
        parser.parse_args(["--data", "d", "--out", "o", "--soft-weight", "agree"]).soft_weight == SOFT_AGREE
    )


def _kl_to_teacher(model, batch, targets: SoftTargets) -> float:
    """Mean KL(teacher || student) at the targets' temperature over the batch's synthetic items."""
    teacher, has = targets.lookup(batch["impath"])
    with torch.no_grad():
        logits = model(batch["img"])
    log_q = F.log_softmax(logits[has] / targets.temperature, 1)
    return F.kl_div(log_q, teacher[has], reduction="none").sum(1).mean().item()


def test_the_student_moves_towards_the_teacher_on_synthetic_images(synth_market, synthetic_dir):
    lists = scan_reid_lists(synth_market, [synthetic_dir], progress=False)
    train_tf, test_tf = build_reid_transforms(32, 16)
    manager = PosereidDataManager(lists, train_transform=train_tf, test_transform=test_tf, batch_size=32)
    batch = default_collate([manager.train_set[i] for i in range(len(manager.train_set))])
    assert 0 < int(batch["synthetic"].sum()) < len(batch["pid"])
    # a teacher that disagrees with the hard labels: a fixed random distribution per synthetic image
    gen = torch.Generator().manual_seed(3)
    probs = {
        p: F.softmax(2 * torch.randn(lists.num_train_pids, generator=gen), 0) for p in sorted(lists.synthetic)
    }
    targets = SoftTargets(probs=probs, temperature=2.0, teacher="fixed", num_classes=lists.num_train_pids)
    kl = {}
    for weight in (1.0, 0.0):
        torch.manual_seed(0)
        model = build_reid_model("osnet_x0_25", lists.num_train_pids)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        engine = SoftLabelSoftmaxEngine(
            manager, model, optimizer, use_gpu=False, soft_targets=targets, soft_weight=weight
        )
        model.train()
        before = _kl_to_teacher(model, batch, targets)
        for _ in range(15):
            summary = engine.forward_backward(batch)
            assert set(summary) == {"loss", "acc"}
        kl[weight] = (before, _kl_to_teacher(model, batch, targets))
    assert kl[1.0][0] == pytest.approx(kl[0.0][0])  # the same initial model
    assert kl[1.0][1] < 0.5 * kl[1.0][0]  # w = 1: the synthetic items' distribution goes to the teacher's
    assert kl[1.0][1] < kl[0.0][1]  # w = 0 learns the hard labels instead


def test_a_teacher_with_another_class_count_is_refused_naming_the_file(synth_market, synthetic_dir, tmp_path):
    lists = scan_reid_lists(synth_market, [synthetic_dir], progress=False)
    wrong = _teacher(tmp_path, lists.num_train_pids + 2, "wrong_teacher.safetensors")
    with pytest.raises(ValueError, match=r"wrong_teacher\.safetensors.* 5 classes"):
        teacher_soft_targets(wrong, lists)
    right = _teacher(tmp_path, lists.num_train_pids)
    soft = teacher_soft_targets(right, lists, temperature=2.0)
    assert set(soft.probs) == set(lists.synthetic) and len(soft) == lists.num_synthetic
    assert all(
        p.shape == (lists.num_train_pids,) and p.sum().item() == pytest.approx(1.0)
        for p in soft.probs.values()
    )


def test_soft_options_are_validated_naming_the_field(synth_market, synthetic_dir, tmp_path):
    base = {"data": str(synth_market), "synthetic": [str(synthetic_dir)], "soft_teacher": tmp_path / "t"}
    with pytest.raises(ValueError, match="soft_weight"):
        ReidTrainConfig(**base, soft_weight=1.5)
    with pytest.raises(ValueError, match="soft_temperature"):
        ReidTrainConfig(**base, soft_temperature=0.0)
    with pytest.raises(ValueError, match="soft_teacher.*softmax"):
        ReidTrainConfig(**base, loss="triplet")
    with pytest.raises(ValueError, match="soft_teacher.*synthetic"):
        ReidTrainConfig(data=str(synth_market), soft_teacher=tmp_path / "t")
    with pytest.raises(SystemExit):
        cli_main(["train-reid", "--data", "d", "--out", "o", "--soft-weight", "2"])


def test_train_reid_with_a_soft_teacher_end_to_end(synth_market, synthetic_dir, tmp_path):
    common = [
        "train-reid",
        "--data",
        str(synth_market),
        *SMALL,
        "--steps",
        "4",
        "--device",
        "cpu",
        "--seed",
        "0",
    ]
    assert cli_main([*common, "--out", str(tmp_path / "teacher")]) == 0
    ckpt = tmp_path / "teacher" / "model.safetensors"
    out = tmp_path / "student"
    rc = cli_main(
        [*common, "--synthetic", str(synthetic_dir), "--soft-teacher", str(ckpt), "--soft-weight", "0.7",
         "--soft-temperature", "2", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["soft_teacher"] == str(ckpt)
    assert res["config"]["soft_weight"] == 0.7 and res["config"]["soft_temperature"] == 2.0
    assert res["config"]["synthetic_ratio"] == 0.25  # soft labels' default mix: a quarter of each batch
    soft = res["soft_labels"]
    assert soft["teacher"] == str(ckpt) and soft["weight"] == 0.7 and soft["temperature"] == 2.0
    assert soft["targets"] == res["synthetic_images"] > 0 and 0.0 <= soft["teacher_agreement"] <= 1.0
    assert res["steps"] == 4 and res["synthetic_seen"] > 0


def test_train_reid_mixes_a_quarter_synthetic_with_a_teacher_unless_told(tmp_path):
    """``--soft-teacher`` without ``--synthetic-ratio`` trains with a quarter of each batch synthetic (half left
    noise images settled below strong); a given share or ``uniform`` wins; without a teacher: uniform."""
    from posereid.experiments.cli import build_parser
    from posereid.reid_integration.cli import synthetic_ratio_of

    parser, _ = build_parser("train-reid")
    base = ["--data", "d", "--out", "o", "--synthetic", "s"]
    teacher = ["--soft-teacher", str(tmp_path / "t.safetensors")]
    assert synthetic_ratio_of(parser.parse_args([*base, *teacher])) == 0.25
    assert synthetic_ratio_of(parser.parse_args([*base, *teacher, "--synthetic-ratio", "0.4"])) == 0.4
    assert synthetic_ratio_of(parser.parse_args([*base, *teacher, "--synthetic-ratio", "uniform"])) is None
    assert synthetic_ratio_of(parser.parse_args(base)) is None
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--synthetic-ratio", "1"])


def test_weight_zero_trains_exactly_like_hard_labels(synth_market, synthetic_dir, tmp_path):
    """w = 0 leaves only the hard loss (with the engine's label smoothing) and the teacher draws no random
    number the run uses: the same losses as a run without a teacher."""
    teacher = _teacher(tmp_path, scan_reid_lists(synth_market, progress=False).num_train_pids)
    kw = {"data": str(synth_market), "synthetic": [str(synthetic_dir)], "model": "osnet_x0_25", "steps": 4,
          "batch_size": 8, "height": 32, "width": 16, "lr": 1e-3, "device": "cpu", "augment": "strong"}  # fmt: skip
    hard = train_reid(ReidTrainConfig(**kw), progress=False)
    soft = train_reid(ReidTrainConfig(**kw, soft_teacher=teacher, soft_weight=0.0), progress=False)
    assert soft["final_loss"] == pytest.approx(hard["final_loss"], rel=1e-4)
    assert soft["mAP"] == pytest.approx(hard["mAP"], abs=1e-4)
    assert hard["soft_labels"] is None


# --------------------------------------------------------------------------------------------------
# PoseAugmentedDataset batches: the ``is_synthetic`` flag and on-the-fly images (online teacher)
# --------------------------------------------------------------------------------------------------
class _ColourTeacher(torch.nn.Module):
    """A re-ID-style teacher that reads the class off the image: features = channel means, logits = scale·I."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.classifier = torch.nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.classifier.weight.copy_(scale * torch.eye(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = x.mean(dim=(2, 3))
        return self.classifier(feats) if self.training else feats  # torchreid: eval returns features


def _engine(student: torch.nn.Module, targets, weight: float, label_smooth: bool = False):
    """A soft-label engine on CPU with a stand-in data manager (the engine reads only these fields)."""
    manager = SimpleNamespace(train_loader=None, test_loader=None, num_train_pids=3)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    return SoftLabelSoftmaxEngine(
        manager, student, optimizer, use_gpu=False, label_smooth=label_smooth, soft_targets=targets,
        soft_weight=weight,
    )  # fmt: skip


def _on_the_fly_batch(imgs: torch.Tensor, pids: list[int], synthetic: list[bool]) -> dict:
    """A collated PoseAugmentedDataset batch whose synthetic items carry their real source's path."""
    return {
        "img": imgs,
        "pid": torch.tensor(pids),
        "camid": torch.zeros(len(pids), dtype=torch.long),
        "impath": ["/data/bounding_box_train/0002_c1s1_000001_00.jpg"] * len(pids),
        "dsetid": torch.zeros(len(pids), dtype=torch.long),
        "is_synthetic": torch.tensor(synthetic),
    }


@pytest.mark.parametrize("weight", [0.3, 1.0])
def test_online_targets_from_a_certain_teacher_give_the_hard_loss(weight):
    pids = [0, 2, 1, 2]
    imgs = F.one_hot(torch.tensor(pids), 3).float()[:, :, None, None].expand(-1, -1, 8, 4).contiguous()
    batch = _on_the_fly_batch(imgs, pids, [True, False, True, True])
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 4, 3))
    hard = F.cross_entropy(student(imgs), torch.tensor(pids)).item()
    certain = _engine(student, OnlineSoftTargets(_ColourTeacher(scale=100.0)), weight)
    assert certain.soft_loss(batch)[0].item() == pytest.approx(hard, rel=1e-5)
    # an unsure teacher (the same classes, nearly flat probabilities) does change the loss
    unsure = _engine(student, OnlineSoftTargets(_ColourTeacher(scale=0.1)), weight)
    assert unsure.soft_loss(batch)[0].item() != pytest.approx(hard, rel=1e-3)


def test_online_targets_are_the_teachers_probabilities_of_the_batch_images(tmp_path):
    ckpt = _teacher(tmp_path, 3)  # osnet_x0_25 at 32x16
    online = OnlineSoftTargets.from_checkpoint(ckpt, temperature=2.0)
    teacher = online.model
    with torch.no_grad():  # an untrained classifier is nearly flat: make its outputs tell images apart
        teacher.classifier.weight.mul_(300.0)
    gen = torch.Generator().manual_seed(0)
    synthetic = [True, False, True]
    # two batches of the same source image, re-rendered differently: the same impath, other images
    first = _on_the_fly_batch(torch.randn(3, 3, 64, 32, generator=gen), [0, 0, 0], synthetic)
    second = _on_the_fly_batch(torch.randn(3, 3, 64, 32, generator=gen), [0, 0, 0], synthetic)
    engine = _engine(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 32, 3)), online, 0.5)
    teacher.train()  # a caller's train mode must not reach the teacher's batch norm
    got = [engine.batch_targets(b, b["img"]) for b in (first, second)]
    with torch.no_grad():
        teacher.eval()
        for (probs, has), batch in zip(got, (first, second), strict=True):
            x = F.interpolate(batch["img"], size=(32, 16), mode="bilinear", align_corners=False)
            expected = F.softmax(teacher.classifier(teacher(x)) / 2.0, dim=1)
            assert has.tolist() == synthetic and (probs[1] == 0).all()
            torch.testing.assert_close(probs[has], expected[has])
    assert not torch.allclose(got[0][0][0], got[1][0][0], atol=1e-4)  # same impath, other targets
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="synthetic flag"):
        engine.batch_targets({k: v for k, v in first.items() if k != "is_synthetic"}, first["img"])


def test_an_is_synthetic_item_without_a_path_target_is_named(synth_market, tmp_path):
    """Offline PoseAugmentedDataset items carry ``is_synthetic``; one missing from the table is an error."""
    paths = sorted(str(r.path) for r in Market1501(synth_market).train if r.has_identity)[:4]
    targets = soft_targets_for_paths(_teacher(tmp_path, 3), paths[:3])  # the checkpoint's own class count
    assert set(targets.probs) == set(paths[:3]) and targets.num_classes == 3
    _, test_tf = build_reid_transforms(32, 16)
    items = [
        {"img": test_tf(Image.open(p).convert("RGB")), "pid": 0, "camid": 0, "impath": p, "dsetid": 0,
         "is_synthetic": True}
        for p in paths
    ]  # fmt: skip
    items[0]["is_synthetic"] = False  # a real item needs no target
    batch = default_collate(items)
    assert synthetic_flags(batch).tolist() == [False, True, True, True]
    engine = _engine(build_reid_model("osnet_x0_25", 3), targets, 0.5)
    with pytest.raises(KeyError, match=re.escape(Path(paths[3]).name)):
        engine.soft_loss(batch)
    batch["is_synthetic"][3] = False  # now every flagged item has a target
    loss, _, _ = engine.soft_loss(batch)
    assert torch.isfinite(loss)
