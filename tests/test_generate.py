"""Offline generation: Market-format output, non-colliding names, SIGKILL + resume, shards, torchreid."""

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from posereid.augment.generate import (
    CONFIG_FILE,
    GenerateConfig,
    GenerateConfigError,
    generate_offline,
    generator_sha256,
    manifest_paths,
    parse_synthetic_name,
    read_manifest,
    synthetic_name,
)
from posereid.experiments.cli import main as cli_main
from posereid.models.checkpoint import WEIGHTS_NAME
from posereid.models.io_utils import file_sha256
from posereid.models.pidm import PIDMPipeline
from posereid.reid_integration.market1501 import (
    Market1501,
    MarketFormatError,
    format_market_name,
    load_image,
    parse_market_name,
    write_patn_csv,
)

BASE = np.array(
    [
        [32, 20], [32, 30], [22, 31], [20, 45], [19, 58], [42, 31], [44, 45], [45, 58], [26, 62],
        [26, 85], [26, 108], [38, 62], [38, 85], [38, 108], [30, 18], [34, 18], [27, 19], [37, 19],
    ],
    dtype=np.float32,
)  # fmt: skip
PER_IMAGE = 4
STEPS = 2


def make_market(root: Path, n_pids: int = 4, per_pid: int = 2, seed: int = 0) -> Path:
    """A tiny Market-1501 folder (one colour per identity) with a PATN CSV of its train images."""
    rng = np.random.default_rng(seed)
    ann = {}
    splits = (
        ("bounding_box_train", range(1, n_pids + 1)),
        ("query", (50, 51)),
        ("bounding_box_test", (50, 51)),
    )
    for folder, pids in splits:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for pid in pids:
            colour = rng.integers(0, 256, 3)
            for j in range(per_pid):
                name = format_market_name(pid, 1 + j, 1, 100 * j + 5, 1)
                arr = np.clip(colour + rng.normal(0, 10, (128, 64, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / folder / name)
                if folder == "bounding_box_train":
                    ann[name] = BASE + rng.integers(-3, 4, BASE.shape)
    write_patn_csv(root / "ann.csv", ann)
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    market = make_market(tmp / "market")
    torch.manual_seed(0)
    gen = PIDMPipeline.from_preset("tiny").eval()
    gen.save_pretrained(tmp / "ckpt")
    # the reference: one uninterrupted in-process run
    ref = tmp / "ref"
    summary = generate_offline(
        GenerateConfig(ref, per_image=PER_IMAGE, steps=STEPS, batch_size=4, progress=False),
        gen,
        market,
        market / "ann.csv",
    )
    return tmp, market, gen, ref, summary


def _images(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "bounding_box_train").iterdir())


def _temp_files(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*") if ".tmp-" in p.name]


def test_output_is_a_market_folder_under_source_pids(setup):
    _, market, gen, ref, summary = setup
    real = Market1501(market).train
    assert summary.generated == summary.planned == len(real) * PER_IMAGE
    names = _images(ref)
    assert len(names) == len(real) * PER_IMAGE
    real_names = {r.name for r in real} | {r.name for r in Market1501(market).query}
    assert not set(names) & real_names
    entries = read_manifest(ref)
    assert sorted(e["name"] for e in entries) == names
    by_name = {e["name"]: e for e in entries}
    for name in names:
        pid, cam, seq, _, k = parse_market_name(name)
        e = by_name[name]
        src_pid, src_cam, *_ = parse_market_name(e["source"])
        assert (pid, cam, seq) == (src_pid, src_cam, 9) and e["source_pid"] == pid and e["camid"] == cam - 1
        assert parse_synthetic_name(name) == (Path(e["source"]).stem, e["k"]) and k == e["k"]
        assert np.asarray(e["target_pose"]).shape == (18, 2) and e["target_source"] in {r.name for r in real}
        assert e["steps"] == STEPS and e["guidance"] == [2.0, 2.0] and e["filter_score"] is None
        assert e["generator_sha256"] == generator_sha256(gen)
    assert load_image(ref / "bounding_box_train" / names[0]).size == (64, 128)  # the source's size
    assert (ref / "samples.png").is_file()
    # the hash is the sha256 of the weights file save_pretrained writes
    assert generator_sha256(gen) == file_sha256(setup[0] / "ckpt" / WEIGHTS_NAME)


@pytest.mark.parametrize(
    "field, value",
    [
        ("per_image", 0), ("sampling", "random"), ("steps", 0), ("sampler", "nope"), ("guidance", (2.0,)),
        ("guidance", (2.0, float("nan"))), ("batch_size", 0), ("seed", -1), ("shard", (2, 2)),
        ("filter_threshold", float("inf")), ("filter_score", "cosine"), ("annotation_hw", (0, 64)),
        ("out_size", (128,)), ("grid_items", -1), ("autocast_dtype", "bf16"),
    ],
)  # fmt: skip
def test_generate_config_refuses_a_bad_value_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"GenerateConfig\.{field}\b"):
        GenerateConfig(**{"out_dir": tmp_path, "per_image": 1, field: value})


def test_generate_config_normalises_its_values(tmp_path):
    c = GenerateConfig(str(tmp_path), per_image=2, guidance=[1, 3], shard=[1, 4], annotation_hw=[64, 32])
    assert (
        c.out_dir == tmp_path
        and c.guidance == (1.0, 3.0)
        and c.shard == (1, 4)
        and c.annotation_hw == (64, 32)
    )


def test_synthetic_names_never_collide_with_real_ones(tmp_path):
    name = synthetic_name("0002_c1s1_000451_03.jpg", 0)
    assert name == "0002_c1s9_100045103_00.jpg"
    assert parse_synthetic_name(name) == ("0002_c1s1_000451_03", 0)
    assert synthetic_name("0002_c1s1_000451_03.jpg", 1) != name
    assert synthetic_name("0002_c1s1_000451_04.jpg", 0) != name
    # a folder whose real images already use such a name is refused, naming the clash
    market = make_market(tmp_path / "m", n_pids=2, per_pid=1)
    clash = synthetic_name(format_market_name(1, 1, 1, 5, 1), 0)
    Image.new("RGB", (64, 128)).save(market / "query" / clash)
    gen = PIDMPipeline.from_preset("tiny").eval()
    with pytest.raises(MarketFormatError, match=clash):
        generate_offline(
            GenerateConfig(tmp_path / "o", per_image=1, steps=1, progress=False),
            gen,
            market,
            market / "ann.csv",
        )


def _cli_args(ckpt: Path, market: Path, out: Path, *extra: str) -> list[str]:
    return [
        "generate", "--generator", str(ckpt), "--data", str(market), "--annotations", str(market / "ann.csv"),
        "--per-image", str(PER_IMAGE), "--out", str(out), "--steps", str(STEPS), "--no-progress",
        "--device", "cpu", *extra,
    ]  # fmt: skip


def _generate_in_child(gen, market: Path, out: Path) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    generate_offline(
        GenerateConfig(out, per_image=PER_IMAGE, steps=STEPS, batch_size=1, progress=False),
        gen,
        market,
        market / "ann.csv",
    )


def test_sigkill_at_random_points_then_resume_loses_and_duplicates_nothing(setup):
    """Kill generation with SIGKILL at random moments (forked child processes: no re-import cost), then
    finish with the ``posereid generate`` CLI; the result must equal an uninterrupted run."""
    tmp, market, gen, ref, _ = setup
    out = tmp / "killed"
    rnd = random.Random(1234)
    ctx = multiprocessing.get_context("fork")
    interrupted = 0
    expected = len(_images(ref))
    for _ in range(4):
        before = len(_images(out)) if (out / "bounding_box_train").is_dir() else 0
        proc = ctx.Process(target=_generate_in_child, args=(gen, market, out))
        proc.start()
        deadline = time.monotonic() + 30
        while proc.is_alive() and time.monotonic() < deadline:  # wait until it is writing images
            if (out / "bounding_box_train").is_dir() and len(_images(out)) > before:
                break
            time.sleep(0.005)
        time.sleep(rnd.uniform(0.0, 0.4))
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        interrupted += proc.exitcode == -signal.SIGKILL and len(read_manifest(out)) < expected
    assert interrupted >= 1, "no kill landed before the run finished"
    assert cli_main(_cli_args(tmp / "ckpt", market, out, "--batch-size", "3")) == 0  # the CLI finishes it

    names = _images(out)
    assert names == _images(ref)  # final count = expected, same names, nothing extra
    assert _temp_files(out) == []
    raw = (out / "manifest.jsonl").read_text()
    assert raw.endswith("\n")
    lines = [json.loads(line) for line in raw.splitlines()]
    assert sorted(e["name"] for e in lines) == names  # one line per image, no duplicates
    # the plan is deterministic: the resumed run made the same choices and images as the reference
    ref_entries = {e["name"]: e for e in read_manifest(ref)}
    for e in lines:
        r = ref_entries[e["name"]]
        assert (e["seed"], e["target_source"], e["target_pose"]) == (
            r["seed"],
            r["target_source"],
            r["target_pose"],
        )
        a = np.asarray(load_image(out / "bounding_box_train" / e["name"]), np.float32)
        b = np.asarray(load_image(ref / "bounding_box_train" / e["name"]), np.float32)
        assert np.abs(a - b).mean() < 2.0  # equal up to batch-composition float noise + JPEG


def test_resume_reconciles_orphans_temp_files_and_torn_lines(setup, tmp_path):
    _, market, gen, ref, _ = setup
    out = tmp_path / "out"
    kw = dict(per_image=PER_IMAGE, steps=STEPS, batch_size=4, progress=False)
    generate_offline(GenerateConfig(out, **kw), gen, market, market / "ann.csv")
    train = out / "bounding_box_train"
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    # simulate every state a SIGKILL can leave: a temp image, an image whose line was never appended,
    # a torn last line, and a line whose image vanished
    (train / f"{json.loads(lines[0])['name']}.tmp-999999").write_bytes(b"\xff\xd8partial")
    orphan = json.loads(lines[1])["name"]
    vanished = json.loads(lines[2])["name"]
    (train / vanished).unlink()
    kept = [ln for i, ln in enumerate(lines) if i != 1]
    manifest.write_text("\n".join(kept) + "\n" + lines[1][:25])
    (out / "manifest.jsonl.tmp-999999").write_text("{")
    s = generate_offline(GenerateConfig(out, **kw), gen, market, market / "ann.csv")
    assert s.removed_temp_files == 2 and s.removed_orphan_images == 1
    assert s.dropped_manifest_lines == 2  # the torn line and the line of the vanished image
    assert s.generated == 2 and s.already_done == s.planned - 2
    assert _images(out) == _images(ref) and _temp_files(out) == []
    assert sorted(e["name"] for e in read_manifest(out)) == _images(ref)
    assert {orphan, vanished} <= {json.loads(x)["name"] for x in manifest.read_text().splitlines()[-2:]}
    # resuming with other settings is refused instead of mixing two plans
    with pytest.raises(GenerateConfigError, match="seed"):
        generate_offline(GenerateConfig(out, **{**kw, "seed": 1}), gen, market, market / "ann.csv")
    assert json.loads((out / CONFIG_FILE).read_text())["seed"] == 0


def test_shards_together_equal_the_unsharded_run(setup, tmp_path):
    _, market, gen, ref, _ = setup
    out = tmp_path / "sharded"
    s0, s1 = (
        generate_offline(
            GenerateConfig(out, per_image=PER_IMAGE, steps=STEPS, batch_size=5, shard=(i, 2), progress=False),
            gen, market, market / "ann.csv",
        )
        for i in range(2)
    )  # fmt: skip
    assert s0.planned + s1.planned == len(_images(ref)) and s0.generated == s0.planned
    parts = [p.name for p in manifest_paths(out)]
    assert parts == ["manifest.shard-0-of-2.jsonl", "manifest.shard-1-of-2.jsonl"]
    names0 = {json.loads(x)["name"] for x in (out / parts[0]).read_text().splitlines()}
    names1 = {json.loads(x)["name"] for x in (out / parts[1]).read_text().splitlines()}
    assert not names0 & names1
    assert sorted(names0 | names1) == _images(out) == _images(ref)
    ref_entries = {e["name"]: e for e in read_manifest(ref)}
    assert all(e["seed"] == ref_entries[e["name"]]["seed"] for e in read_manifest(out))


def test_unreadable_source_is_counted_and_skipped(tmp_path):
    market = make_market(tmp_path / "m", n_pids=2, per_pid=2)
    bad = sorted((market / "bounding_box_train").iterdir())[0]
    bad.write_bytes(b"not a jpeg")
    gen = PIDMPipeline.from_preset("tiny").eval()
    s = generate_offline(
        GenerateConfig(tmp_path / "o", per_image=2, steps=1, progress=False), gen, market, market / "ann.csv"
    )
    assert s.failed_items == 2 and s.generated == 6 and bad.name in s.failures[0]


def test_generated_folder_loads_in_torchreid_under_source_pids(setup):
    pytest.importorskip("torchreid")
    from posereid.reid_integration.torchreid_plugin import scan_reid_lists

    _, market, _, ref, _ = setup
    real_only = scan_reid_lists(market)
    mixed = scan_reid_lists(market, [ref])
    assert mixed.num_train_pids == real_only.num_train_pids  # no new identities
    assert mixed.num_synthetic == len(_images(ref))
    assert len(mixed.train) == len(real_only.train) + len(_images(ref))
    label_of = {os.path.basename(p): lab for p, lab, _, _ in mixed.train}
    real_label = {parse_market_name(os.path.basename(p))[0]: lab for p, lab, _, _ in real_only.train}
    for e in read_manifest(ref):  # each synthetic image carries its source identity's label
        assert label_of[e["name"]] == real_label[e["source_pid"]]


def test_pose_augmented_dataset_mixes_offline_images_under_source_pids(setup):
    from posereid.augment.dataset import PoseAugmentedDataset
    from posereid.reid_integration.torchreid_plugin import PosereidMarketDataset

    _, market, _, ref, _ = setup
    base = [(str(r.path), r.pid, r.camid) for r in Market1501(market).train]
    ds = PoseAugmentedDataset(base, synthetic_dir=ref, ratio=0.5, seed=0)
    assert len(ds) == len(base) + len(base) // 2
    manifest = {e["name"]: e for e in read_manifest(ref)}
    for i in range(len(ds)):
        item = ds[i]
        assert item["is_synthetic"] == (i >= len(base)) == ds.is_synthetic(i)
        if item["is_synthetic"]:
            e = manifest[Path(item["impath"]).name]
            assert item["pid"] == e["source_pid"] and item["camid"] == e["camid"]
            assert item["img"].size == (64, 128)
        else:
            assert (item["impath"], item["pid"], item["camid"]) == base[i]
    # deterministic mapping; another seed picks other synthetic images; ratio 2 cycles through all of them
    again = PoseAugmentedDataset(base, synthetic_dir=ref, ratio=0.5, seed=0)
    assert [again.source_of(i) for i in range(len(ds))] == [ds.source_of(i) for i in range(len(ds))]
    other = PoseAugmentedDataset(base, synthetic_dir=ref, ratio=0.5, seed=1)
    assert [other.source_of(i) for i in range(len(ds))] != [ds.source_of(i) for i in range(len(ds))]
    full = PoseAugmentedDataset(base, synthetic_dir=ref, ratio=float(PER_IMAGE), seed=0)
    assert sorted(full.source_of(i)[1] for i in range(len(base), len(full))) == list(range(len(manifest)))
    # torchreid base: relabelled pids; synthetic items get the label of their source identity
    tr = PosereidMarketDataset(market, check_images=False)
    label = {parse_market_name(Path(p).name)[0]: lab for p, lab, _, _ in tr.train}
    mixed = PoseAugmentedDataset(tr, synthetic_dir=ref, ratio=1.0)
    for i in range(len(tr), len(mixed)):
        item = mixed[i]
        assert item["pid"] == label[manifest[Path(item["impath"]).name]["source_pid"]]
    assert mixed[0]["is_synthetic"] is False and "dsetid" in mixed[0]
    # synthetic identities must exist in the base: the error names the manifest and the image
    only_pid_1 = [b for b in base if b[1] == 1]
    with pytest.raises(ValueError, match=r"manifest\.jsonl: \d{4}_c\ds9_\d+_\d+\.jpg has source pid [234]"):
        PoseAugmentedDataset(only_pid_1, synthetic_dir=ref)


def test_pose_augmented_dataset_on_the_fly(setup):
    from posereid.augment.dataset import PoseAugmentedDataset
    from posereid.augment.pose_bank import PoseBank
    from posereid.augment.transform import PoseTransferAugment

    _, market, gen, _, _ = setup
    base = [(str(r.path), r.pid, r.camid) for r in Market1501(market).train]
    aug = PoseTransferAugment(gen, PoseBank.from_csv(market / "ann.csv"), p=0.0, steps=1, seed=0)
    ds = PoseAugmentedDataset(base, generator_augment=aug, ratio=0.25, seed=3, annotations=market / "ann.csv")
    assert len(ds) == len(base) + 2 and aug.p == 0.0  # the caller's transform is not modified
    for i in range(len(base), len(ds)):
        kind, src = ds.source_of(i)
        item = ds[i]
        assert kind == "on-the-fly" and item["is_synthetic"] and item["pid"] == base[src][1]
        real = np.asarray(load_image(base[src][0]), np.float32)
        assert (
            item["img"].size == (64, 128) and np.abs(np.asarray(item["img"], np.float32) - real).mean() > 10
        )


def test_per_image_is_capped_where_the_name_can_number_it(tmp_path, capsys) -> None:
    """k is the 2-digit box field of a synthetic name: more than 100 per source would write off-format names."""
    from posereid.augment.generate import GenerateConfig
    from posereid.experiments.cli import main as cli_main

    with pytest.raises(ValueError, match="per_image must be <= 100"):
        GenerateConfig(out_dir=tmp_path, per_image=101)
    assert GenerateConfig(out_dir=tmp_path, per_image=100).per_image == 100
    with pytest.raises(SystemExit) as stop:  # a usage error, in the parser
        cli_main(["generate", "--generator", str(tmp_path), "--data", str(tmp_path), "--per-image", "101",
                  "--out", str(tmp_path / "o")])  # fmt: skip
    assert stop.value.code == 2 and "must be <= 100" in capsys.readouterr().err
