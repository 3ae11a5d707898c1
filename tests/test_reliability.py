"""Issue 15 (items 1 and 2): silent wrong results.

1. The keypoint frame of a PATN CSV comes from the images it annotates (or an explicit
   ``--annotation-size``), never from a hard-coded 128x64: on 64x32 data the target skeletons given to the
   generator are the annotations themselves, not squeezed into the top-left quarter; a keypoint outside
   the frame and images of mixed sizes are errors that name the file (and line).
2. Names read from manifests, PATN / pairs CSVs and pose banks never reach outside their folder:
   ``../x.jpg``, absolute names and symlinks leading out are refused with the file, line and name, and
   ``posereid filter`` neither reads nor moves anything then.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from posereid.augment.dataset import PoseAugmentedDataset
from posereid.augment.filter import IdentityFilter, filter_folder
from posereid.augment.generate import GenerateConfig, generate_offline, read_manifest, synthetic_name
from posereid.augment.manifest import CONFIG_FILE, write_manifest_file
from posereid.augment.pose_bank import PoseBank
from posereid.experiments.cli import main as cli_main
from posereid.models.locks import FILTER_LOCK_NAME
from posereid.models.pose import resize_keypoints
from posereid.reid_integration.market1501 import (
    Market1501,
    MarketFormatError,
    UnsafeNameError,
    annotation_frame,
    check_file_name,
    check_in_frame,
    load_annotations,
    read_pairs_csv,
    read_patn_csv,
    safe_child,
)

H, W = 64, 32  # the demo's image size
TRAIN_CSV = "market-annotation-train.csv"
TEST_CSV = "market-annotation-test.csv"


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------
def _synth_market(out: Path) -> None:
    args = ["--train-ids", "3", "--test-ids", "2", "--per-camera", "1", "--cameras", "2",
            "--distractors", "0", "--junk", "0", "--height", str(H), "--width", str(W)]  # fmt: skip
    assert cli_main(["synth-market", str(out), *args, "--no-progress"]) == 0


@pytest.fixture(scope="module")
def small_market(tmp_path_factory) -> Path:
    """A 64x32 synthetic Market-1501 folder written by ``posereid synth-market`` (annotations in the
    images' own frame)."""
    out = tmp_path_factory.mktemp("synth") / "market"
    _synth_market(out)
    return out


@pytest.fixture()
def market(small_market, tmp_path) -> Path:
    """A private copy (tests modify it)."""
    return Path(shutil.copytree(small_market, tmp_path / "market"))


class SpyGenerator(torch.nn.Module):
    """The cheapest generator: returns its sources and records the keypoints it was asked to draw,
    by seed (one seed per output item)."""

    def __init__(self, image_size: tuple[int, int] = (H, W)) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.image_size = image_size
        self.device = torch.device("cpu")
        self.calls: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def generate(self, source, target_kps, source_kps, *, seeds, **kwargs):
        assert tuple(source.shape[-2:]) == tuple(self.image_size)
        for s, t, k in zip(seeds, target_kps, source_kps):
            self.calls[int(s)] = (t.cpu().numpy().copy(), k.cpu().numpy().copy())
        return source.clone()


def _patch_generator_loading(monkeypatch, fake: SpyGenerator) -> None:
    """Make ``posereid generate --generator X`` load ``fake`` (the command loads through refine.load_sampler,
    which calls load_generator)."""
    import posereid.models.contract as contract
    import posereid.models.refine as refine

    for module in (contract, refine):
        monkeypatch.setattr(module, "load_generator", lambda *args, **kwargs: fake)


def _check_spied_keypoints(gen: SpyGenerator, out: Path, ann_target: dict, ann_source: dict, frame) -> None:
    """Every generated item was drawn with its annotation's keypoints rescaled from ``frame`` to the
    generator's size (exactly the annotation when the sizes agree)."""
    entries = read_manifest(out)
    assert entries and len(gen.calls) == len(entries)
    for e in entries:
        target, source = gen.calls[e["seed"]]
        want_t = resize_keypoints(ann_target[e["target_source"]], frame, gen.image_size)
        want_s = resize_keypoints(ann_source[e["source"]], frame, gen.image_size)
        np.testing.assert_allclose(target, want_t, atol=1e-4, err_msg=e["name"])
        np.testing.assert_allclose(source, want_s, atol=1e-4, err_msg=e["name"])
        assert e["pose_frame"] == list(frame)
        np.testing.assert_allclose(e["target_pose"], ann_target[e["target_source"]], atol=0.01)


# --------------------------------------------------------------------------------------------------
# 1. The keypoint frame comes from the data
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gen_size", [(H, W), (2 * H, 2 * W)], ids=["same-size", "generator-2x"])
def test_generate_uses_the_annotations_in_the_images_own_frame(market, tmp_path, gen_size):
    ann = read_patn_csv(market / TRAIN_CSV, image_hw=(H, W))
    gen = SpyGenerator(gen_size)
    out = tmp_path / "out"
    s = generate_offline(
        GenerateConfig(out, per_image=2, steps=1, batch_size=4, progress=False),
        gen,
        market,
        market / TRAIN_CSV,
    )
    assert s.generated == s.planned == 2 * len(Market1501(market).train)
    _check_spied_keypoints(gen, out, ann, ann, (H, W))
    assert json.loads((out / CONFIG_FILE).read_text())["annotation_hw"] == [H, W]


def test_generate_cli_frame_from_data_flag_and_pose_bank_csv(market, tmp_path, monkeypatch):
    gen = SpyGenerator()
    _patch_generator_loading(monkeypatch, gen)
    ann_train = read_patn_csv(market / TRAIN_CSV, image_hw=(H, W))
    ann_test = read_patn_csv(market / TEST_CSV, image_hw=(H, W))

    def args(out: Path, *extra: str) -> list[str]:
        return [
            "generate", "--generator", str(tmp_path / "ckpt"), "--data", str(market),
            "--annotations", str(market / TRAIN_CSV), "--per-image", "2", "--out", str(out), "--steps", "1",
            "--no-progress", "--device", "cpu", *extra,
        ]  # fmt: skip

    # no flag: the frame of the images (64x32)
    assert cli_main(args(tmp_path / "a")) == 0
    _check_spied_keypoints(gen, tmp_path / "a", ann_train, ann_train, (H, W))
    # a --pose-bank CSV (poses of the test images, found in --data's query/gallery): also their frame
    gen.calls.clear()
    assert cli_main(args(tmp_path / "b", "--pose-bank", str(market / TEST_CSV))) == 0
    _check_spied_keypoints(gen, tmp_path / "b", ann_test, ann_train, (H, W))
    # an explicit --annotation-size is obeyed (here: claim the CSV is in a 128x64 frame)
    gen.calls.clear()
    assert cli_main(args(tmp_path / "c", "--annotation-size", f"{2 * H}x{2 * W}")) == 0
    _check_spied_keypoints(gen, tmp_path / "c", ann_train, ann_train, (2 * H, 2 * W))


def test_keypoint_outside_the_frame_is_an_error_naming_file_and_line(market, tmp_path):
    csv = market / TRAIN_CSV
    lines = csv.read_text().splitlines()
    name, ys, xs = lines[2].split(":")
    x_list = [int(v) for v in xs.strip("[]").split(",")]
    x_list[1] = W + 8  # inside the old 128x64 default, outside the 64x32 images
    lines[2] = f"{name}:{ys}:[{', '.join(map(str, x_list))}]"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(MarketFormatError, match=rf"{csv} line 3: joint 1 of '{name}' .* outside the 64x32"):
        generate_offline(
            GenerateConfig(tmp_path / "o", per_image=1, steps=1, progress=False), SpyGenerator(), market, csv
        )
    assert not (tmp_path / "o" / "bounding_box_train").exists() or not any(
        (tmp_path / "o" / "bounding_box_train").iterdir()
    )
    with pytest.raises(MarketFormatError, match=rf"line 3: joint 1 of '{name}'"):
        PoseBank.from_market(market, csv)
    with pytest.raises(MarketFormatError, match=rf"line 3: joint 1 of '{name}'"):
        PoseBank.from_csv(csv)
    # skip mode: the row is dropped and counted, never clamped
    ann, frame = load_annotations(csv, market, on_error="skip")
    assert frame == (H, W) and name not in ann and ann.skipped == 1 and "line 3" in ann.errors[0]
    assert len(ann) == len(lines) - 2


def test_mixed_image_sizes_need_an_explicit_frame(market, tmp_path):
    first = sorted((market / "bounding_box_train").iterdir())[0]
    Image.open(first).convert("RGB").resize((2 * W, 2 * H)).save(first)
    with pytest.raises(
        MarketFormatError, match=rf"different sizes .*64x32.*128x64: 1 image\(s\), e\.g\. .*{first.name}"
    ):
        generate_offline(
            GenerateConfig(tmp_path / "o", per_image=1, steps=1, progress=False),
            SpyGenerator(),
            market,
            market / TRAIN_CSV,
        )
    config = GenerateConfig(tmp_path / "o", per_image=1, steps=1, annotation_hw=(H, W), progress=False)
    s = generate_offline(config, SpyGenerator(), market, market / TRAIN_CSV)
    assert s.generated == s.planned > 0


def test_pose_bank_and_dataset_read_annotations_in_the_images_frame(market):
    ann = read_patn_csv(market / TRAIN_CSV, image_hw=(H, W))
    for bank in (PoseBank.from_market(market, market / TRAIN_CSV), PoseBank.from_csv(market / TRAIN_CSV)):
        assert bank.image_hw == (H, W)
        for i, name in enumerate(bank.names):
            np.testing.assert_array_equal(bank.get(i), ann[name])
    # a CSV with no image beside it keeps PATN's frame (with a warning); images given explicitly must exist
    assert annotation_frame(["x.jpg"], market, default=(128, 64)) == (128, 64)
    with pytest.raises(MarketFormatError, match="annotation-size"):
        annotation_frame(["x.jpg"], market)

    class SpyAugment:  # what PoseAugmentedDataset hands the transform on the fly
        p = 0.5

        def __init__(self) -> None:
            self.seen = []

        def __call__(self, img, kps=None):
            self.seen.append((img.size, np.asarray(kps.keypoints if hasattr(kps, "keypoints") else kps)))
            return img, kps

    base = [(str(r.path), r.pid, r.camid) for r in Market1501(market).train]
    aug = SpyAugment()
    ds = PoseAugmentedDataset(base, generator_augment=aug, ratio=1.0, annotations=market / TRAIN_CSV)
    assert ds.annotation_hw == (H, W)
    for i in range(len(base), len(ds)):
        _, src = ds.source_of(i)
        ds.augment.seen.clear()
        ds[i]
        ((size, kps),) = ds.augment.seen
        assert size == (W, H)
        np.testing.assert_allclose(kps.reshape(18, 2), ann[Path(base[src][0]).name], atol=1e-4)


def test_check_in_frame_on_mappings():
    k = np.full((18, 2), -1, np.float32)
    k[0] = (31, 63)
    assert len(check_in_frame({"a.jpg": k}, (H, W))) == 1
    k2 = k.copy()
    k2[3] = (32, 10)
    with pytest.raises(MarketFormatError, match=r"joint 3 of 'b.jpg' at \(x=32, y=10\) is outside the 64x32"):
        check_in_frame({"a.jpg": k, "b.jpg": k2}, (H, W))
    got = check_in_frame({"a.jpg": k, "b.jpg": k2}, (H, W), on_error="skip")
    assert list(got) == ["a.jpg"] and got.skipped == 1


# --------------------------------------------------------------------------------------------------
# 2. Names from files stay inside their folder
# --------------------------------------------------------------------------------------------------
def test_safe_child_and_check_file_name(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"x")
    outside = tmp_path / "victim.jpg"
    outside.write_bytes(b"secret")
    assert safe_child(root, "a.jpg", source="m line 1") == root / "a.jpg"
    assert safe_child(root, "new.jpg", source="m line 1") == root / "new.jpg"  # need not exist
    for bad in (
        "../victim.jpg",
        str(outside),
        "sub/a.jpg",
        "..",
        ".",
        "",
        "a\\..\\b.jpg",
        "C:x.jpg",
        "a\0.jpg",
    ):
        with pytest.raises(UnsafeNameError, match="m line 7"):
            safe_child(root, bad, source="m line 7")
    with pytest.raises(UnsafeNameError):
        check_file_name(None, source="m")
    os.symlink(outside, root / "link.jpg")
    with pytest.raises(UnsafeNameError, match=r"m line 2: image name 'link.jpg' resolves to .*victim.jpg"):
        safe_child(root, "link.jpg", source="m line 2")
    os.symlink(root / "a.jpg", root / "inside.jpg")  # a link within the folder is fine
    assert safe_child(root, "inside.jpg", source="m") == root / "inside.jpg"
    os.symlink(root, tmp_path / "alias", target_is_directory=True)  # so is a folder that is a link
    assert safe_child(tmp_path / "alias", "a.jpg", source="m") == tmp_path / "alias" / "a.jpg"


def _gen_folder(root: Path, market: Path) -> tuple[Path, list[dict]]:
    """A generated folder with one image per train image (copies of the source), in one manifest."""
    train = root / "bounding_box_train"
    train.mkdir(parents=True)
    entries = []
    for i, rec in enumerate(Market1501(market).train):
        name = synthetic_name(rec.name, 0)
        shutil.copy(rec.path, train / name)
        entries.append({"name": name, "source": rec.name, "source_pid": rec.pid, "k": 0, "index": i})
    write_manifest_file(root / "manifest.jsonl", entries)
    return root, entries


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the filter's own lock file (``.filter.lock``, left by design: flock)."""
    return {
        str(p.relative_to(folder)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if (p.is_file() or p.is_symlink()) and not p.name.startswith(FILTER_LOCK_NAME)
    }


def _mean_colour(images: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=(2, 3)) - 0.5


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink"])
def test_filter_never_reads_or_moves_files_outside_its_folder(market, tmp_path, monkeypatch, capsys, attack):
    victim = tmp_path / "victim" / "v1.jpg"
    victim.parent.mkdir()
    shutil.copy(next((market / "bounding_box_train").iterdir()), victim)
    before_victim = victim.read_bytes()
    gen_dir, entries = _gen_folder(tmp_path / "gen", market)
    if attack == "dotdot":
        bad = "../../victim/v1.jpg"  # gen/bounding_box_train/../../victim/v1.jpg
    elif attack == "absolute":
        bad = str(victim)
    else:
        bad = entries[1]["name"]
        (gen_dir / "bounding_box_train" / bad).unlink()
        os.symlink(victim, gen_dir / "bounding_box_train" / bad)
    entries[1]["name"] = bad
    write_manifest_file(gen_dir / "manifest.jsonl", entries)
    before = _snapshot(gen_dir)
    pattern = rf"manifest\.jsonl line 2.*'{bad}'"
    # threshold 2: every image would be rejected, i.e. moved to rejected/
    with pytest.raises(UnsafeNameError, match=pattern):
        filter_folder(gen_dir, market, IdentityFilter(_mean_colour), threshold=2.0)
    # the command: the same clear error, exit without touching anything
    import posereid.augment.filter as F

    monkeypatch.setattr(F, "load_extractor", lambda *a, **k: _mean_colour)
    rc = cli_main(["filter", "--dir", str(gen_dir), "--data", str(market), "--reid-checkpoint", "x",
                   "--threshold", "2", "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1 and err.startswith("posereid filter: error: ") and re.search(pattern, err), err
    assert victim.read_bytes() == before_victim and victim.is_file()
    assert _snapshot(gen_dir) == before and not (gen_dir / "rejected").exists()
    # the dataset reading the same folder refuses it too
    base = [(str(r.path), r.pid, r.camid) for r in Market1501(market).train]
    with pytest.raises(UnsafeNameError, match=pattern):
        PoseAugmentedDataset(base, synthetic_dir=gen_dir)


@pytest.mark.parametrize("bad", ["../victim.jpg", "/abs/x.jpg"])
def test_patn_csv_with_a_path_name_stops_generate(market, tmp_path, bad):
    csv = market / TRAIN_CSV
    lines = csv.read_text().splitlines()
    _, ys, xs = lines[1].split(":")
    lines.insert(2, f"{bad}:{ys}:{xs}")
    csv.write_text("\n".join(lines) + "\n")
    pattern = rf"{csv} line 3: image name '{bad}' is not a plain file name"
    with pytest.raises(UnsafeNameError, match=pattern):
        generate_offline(
            GenerateConfig(tmp_path / "o", per_image=1, steps=1, progress=False), SpyGenerator(), market, csv
        )
    with pytest.raises(UnsafeNameError, match=pattern):
        PoseBank.from_csv(csv)


def test_pairs_csv_and_pose_bank_file_with_path_names(tmp_path):
    p = tmp_path / "pairs.csv"
    p.write_text("from,to\na.jpg,b.jpg\na.jpg,../../etc/x.jpg\n")
    with pytest.raises(UnsafeNameError, match=r"pairs\.csv line 3: image name '\.\./\.\./etc/x\.jpg'"):
        read_pairs_csv(p)
    k = np.array(
        [[32, 20], [32, 30], [22, 31], [20, 45], [19, 58], [42, 31], [44, 45], [45, 58], [26, 62],
         [26, 85], [26, 108], [38, 62], [38, 85], [38, 108], [30, 18], [34, 18], [27, 19], [37, 19]],
        np.float32,
    )  # fmt: skip
    bank = PoseBank([k, k], ["a.jpg", "b.jpg"])
    bank.names[1] = "/abs/b.jpg"
    bank.save(tmp_path / "bank.npz")
    with pytest.raises(UnsafeNameError, match=r"bank\.npz names\[1\]: image name '/abs/b\.jpg'"):
        PoseBank.load(tmp_path / "bank.npz")


def test_degenerate_source_sizes_are_skipped_and_counted(market, tmp_path):
    """A 1x1 crop (no joint survives) and a 4000x2000 one (a megabyte synthetic from a 64x32 generation)
    are skipped, counted and named; the other sources are generated as usual."""
    train = sorted((market / "bounding_box_train").glob("*.jpg"))
    tiny, huge = train[0], train[1]
    Image.new("RGB", (1, 1)).save(tiny)
    Image.new("RGB", (2000, 4000)).save(huge)
    gen = SpyGenerator()
    out = tmp_path / "out"
    config = GenerateConfig(out, per_image=2, steps=1, batch_size=4, progress=False, annotation_hw=(H, W))
    s = generate_offline(config, gen, market, market / TRAIN_CSV)
    n_sources = len([r for r in Market1501(market).train if r.has_identity])
    assert s.failed_items == 4 and s.generated == s.planned - 4 == 2 * (n_sources - 2)
    assert any(str(tiny) in f and "too far from the keypoint frame" in f for f in s.failures)
    assert any(str(huge) in f and "4000x2000" in f for f in s.failures)
    written = {p.name for p in (out / "bounding_box_train").glob("*.jpg")}
    assert not any(n.startswith((tiny.stem, huge.stem)) for n in written)
    assert len(written) == s.generated
    # without an explicit frame the mixed sizes are refused up front (the frame would be ambiguous)
    with pytest.raises(MarketFormatError, match="different sizes"):
        generate_offline(
            GenerateConfig(tmp_path / "o2", per_image=1, progress=False), gen, market, market / TRAIN_CSV
        )
