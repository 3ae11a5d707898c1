"""Identity-consistency filter: scores, threshold / keep-top, re-filtering a folder, generation with a filter."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from posereid.augment import manifest as M
from posereid.augment.filter import FilterError, IdentityFilter, filter_folder, select
from posereid.augment.generate import (
    GenerateConfig,
    generate_offline,
    read_manifest,
    synthetic_name,
    write_manifest_file,
)
from posereid.experiments.cli import main as cli_main
from posereid.reid_integration.market1501 import format_market_name, write_patn_csv

COLOURS = {1: (220, 30, 30), 2: (30, 200, 40), 3: (40, 40, 220), 4: (230, 220, 40)}
POSE = np.array(
    [
        [32, 20], [32, 30], [22, 31], [20, 45], [19, 58], [42, 31], [44, 45], [45, 58], [26, 62],
        [26, 85], [26, 108], [38, 62], [38, 85], [38, 108], [30, 18], [34, 18], [27, 19], [37, 19],
    ],
    dtype=np.float32,
)  # fmt: skip


def mean_colour(images: torch.Tensor) -> torch.Tensor:
    """A deterministic 're-ID model': the centred mean colour."""
    return images.mean(dim=(2, 3)) - 0.5


def _img(colour, rng, size=(128, 64)) -> Image.Image:
    arr = np.clip(np.asarray(colour) + rng.normal(0, 8, (*size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_market(root: Path) -> Path:
    rng = np.random.default_rng(0)
    ann = {}
    for folder, pids in (("bounding_box_train", COLOURS), ("query", (1,)), ("bounding_box_test", (1, 2))):
        (root / folder).mkdir(parents=True)
        for pid in pids:
            for j in range(2):
                name = format_market_name(pid, j + 1, 1, 10 * j, 1)
                _img(COLOURS[pid], rng).save(root / folder / name)
                if folder == "bounding_box_train":
                    ann[name] = POSE
    write_patn_csv(root / "ann.csv", ann)
    return root


def make_generated(root: Path, market: Path) -> dict[str, bool]:
    """A generated folder: two faithful images per identity and one showing the NEXT identity's colours.

    Returns name → whether the image really shows its claimed identity."""
    rng = np.random.default_rng(1)
    train = root / "bounding_box_train"
    train.mkdir(parents=True)
    truth, entries = {}, []
    for pid in COLOURS:
        source = format_market_name(pid, 1, 1, 0, 1)
        for k in range(3):
            wrong = k == 2
            shown = pid % len(COLOURS) + 1 if wrong else pid
            name = synthetic_name(source, k)
            _img(COLOURS[shown], rng).save(train / name)
            truth[name] = not wrong
            entries.append({"name": name, "source": source, "source_pid": pid, "k": k, "filter_score": None})
    half = len(entries) // 2
    write_manifest_file(root / "manifest.shard-0-of-2.jsonl", entries[:half])
    write_manifest_file(root / "manifest.shard-1-of-2.jsonl", entries[half:])
    return truth


@pytest.fixture()
def data(tmp_path):
    market = make_market(tmp_path / "market")
    gen_dir = tmp_path / "gen"
    truth = make_generated(gen_dir, market)
    return market, gen_dir, truth


def test_wrong_identity_images_score_low(data):
    market, gen_dir, truth = data
    filt = IdentityFilter(mean_colour, batch_size=5).fit_market(market)
    assert filt.pids.tolist() == [1, 2, 3, 4]
    names = sorted(truth)
    pids = [int(n[:4]) for n in names]  # the source pid is the name's pid
    ims = [Image.open(gen_dir / "bounding_box_train" / n).convert("RGB") for n in names]
    sim, margin = filt.score(ims, pids)
    good = np.array([truth[n] for n in names])
    assert sim[good].min() > 0.9 > 0.5 > sim[~good].max()
    assert (margin[good] > 0).all() and (margin[~good] < 0).all()
    with pytest.raises(FilterError, match=r"identities \[9\]"):
        filt.score(ims[:1], [9])


def test_select_threshold_and_keep_top():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3])
    keep, thr = select(scores, threshold=0.5)
    assert keep.tolist() == [True, False, True, True, False] and thr == 0.5
    keep, thr = select(scores, keep_top=0.4)
    assert keep.tolist() == [True, False, False, True, False] and thr == 0.7
    keep, thr = select(scores)
    assert keep.all() and thr is None
    with pytest.raises(FilterError):
        select(scores, threshold=0.1, keep_top=0.5)
    with pytest.raises(FilterError):
        select(scores, keep_top=0.0)


def test_refilter_folder_moves_rejected_and_rewrites_manifests(data):
    market, gen_dir, truth = data
    s = filter_folder(gen_dir, market, IdentityFilter(mean_colour), threshold=0.5)
    n_bad = sum(not v for v in truth.values())
    assert (s.scored, s.kept, s.rejected, s.moved_to_rejected) == (
        len(truth),
        len(truth) - n_bad,
        n_bad,
        n_bad,
    )
    kept_files = {p.name for p in (gen_dir / "bounding_box_train").iterdir()}
    rejected_files = {p.name for p in (gen_dir / "rejected").iterdir()}
    assert kept_files == {n for n, ok in truth.items() if ok}
    assert rejected_files == {n for n, ok in truth.items() if not ok}
    entries = read_manifest(gen_dir)
    assert len(entries) == len(truth)
    for e in entries:  # both parts rewritten with scores and the decision; other fields kept
        assert e["kept"] == truth[e["name"]] and isinstance(e["filter_score"], float) and "source" in e
        assert (e["filter_score"] >= 0.5) == e["kept"]
    assert not [p for p in gen_dir.rglob("*") if ".tmp-" in p.name]
    # re-filtering with keep-top on the margin moves images back where they now belong
    s2 = filter_folder(gen_dir, market, IdentityFilter(mean_colour), keep_top=1.0, score="margin")
    assert s2.kept == len(truth) and s2.restored == n_bad and not any((gen_dir / "rejected").iterdir())
    # manifest-only: decisions recorded, nothing moved
    s3 = filter_folder(gen_dir, market, IdentityFilter(mean_colour), keep_top=0.5, mode="manifest-only")
    assert s3.kept == len(truth) // 2 and s3.moved_to_rejected == 0
    assert len(list((gen_dir / "bounding_box_train").iterdir())) == len(truth)
    assert sum(e["kept"] for e in read_manifest(gen_dir)) == len(truth) // 2


def test_manifest_rewrite_is_atomic(data, monkeypatch):
    market, gen_dir, _ = data
    parts = sorted(gen_dir.glob("manifest*.jsonl"))
    before = [p.read_bytes() for p in parts]
    calls = {"n": 0}
    real_dumps = json.dumps

    def failing_dumps(obj, **kw):  # die in the middle of writing the first part
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed mid-write")
        return real_dumps(obj, **kw)

    monkeypatch.setattr(M.json, "dumps", failing_dumps)
    with pytest.raises(RuntimeError, match="mid-write"):
        filter_folder(gen_dir, market, IdentityFilter(mean_colour), threshold=0.5, mode="manifest-only")
    monkeypatch.undo()
    assert [p.read_bytes() for p in parts] == before  # old manifests intact
    assert not [p for p in gen_dir.rglob("*") if ".tmp-" in p.name]


def test_unknown_source_pid_names_the_manifest_and_image(data):
    market, gen_dir, _ = data
    part = gen_dir / "manifest.shard-0-of-2.jsonl"
    entries = [json.loads(x) for x in part.read_text().splitlines()]
    entries[0]["source_pid"] = 77
    write_manifest_file(part, entries)
    with pytest.raises(
        FilterError, match=rf"manifest.shard-0-of-2.jsonl: {entries[0]['name']} has source_pid 77"
    ):
        filter_folder(gen_dir, market, IdentityFilter(mean_colour), threshold=0.5)


def test_generation_with_filter_records_scores_and_rejects_below_threshold(data, tmp_path):
    from posereid.models.pidm import PIDMPipeline

    market, _, _ = data
    torch.manual_seed(0)
    gen = PIDMPipeline.from_preset("tiny").eval()
    filt = IdentityFilter(mean_colour).fit_market(market)
    out = tmp_path / "filtered"
    s = generate_offline(
        GenerateConfig(out, per_image=2, steps=1, filter_threshold=0.0, progress=False),
        gen,
        market,
        market / "ann.csv",
        identity_filter=filt,
    )
    entries = read_manifest(out)
    assert len(entries) == s.generated == 16 and s.rejected == sum(not e["kept"] for e in entries)
    assert 0 < s.rejected < 16, [e["filter_score"] for e in entries]
    for e in entries:
        assert e["kept"] == (e["filter_score"] >= 0.0)
        folder = "bounding_box_train" if e["kept"] else "rejected"
        assert (out / folder / e["name"]).is_file()


def test_filter_cli_with_a_reid_checkpoint(data, tmp_path, capsys):
    from posereid.reid_integration.torchreid_plugin import build_reid_model, save_reid_checkpoint

    market, gen_dir, truth = data
    torch.manual_seed(0)
    ckpt = tmp_path / "reid.safetensors"
    save_reid_checkpoint(
        ckpt,
        build_reid_model("osnet_x0_25", 4),
        meta={"model": "osnet_x0_25", "num_classes": 4, "height": 64, "width": 32},
    )

    def filter_args(checkpoint, *extra: str) -> list[str]:
        return [
            "filter",
            "--dir",
            str(gen_dir),
            "--data",
            str(market),
            "--reid-checkpoint",
            str(checkpoint),
            *extra,
        ]

    rc = cli_main(filter_args(ckpt, "--keep-top", "0.5", "--mode", "manifest-only", "--device", "cpu"))
    assert rc == 0
    entries = read_manifest(gen_dir)
    assert sum(e["kept"] for e in entries) == len(truth) // 2
    kept = [e["filter_score"] for e in entries if e["kept"]]
    assert min(kept) >= max(e["filter_score"] for e in entries if not e["kept"])  # the best half is kept
    capsys.readouterr()
    assert cli_main(filter_args(tmp_path / "missing.safetensors")) == 1
    assert "missing.safetensors" in capsys.readouterr().err


def _bars(err: str) -> list[str]:
    """The tqdm output in a captured stderr (bars redraw with carriage returns)."""
    return [line for line in err.split("\n") if "\r" in line or "%|" in line]


def test_no_progress_writes_no_bar(data, tmp_path, monkeypatch, capsys):
    """Issue 27 item 10: ``generate --filter-checkpoint ... --no-progress`` drew the identity filter's
    "real centroids" bar, and ``filter`` had no switch at all (two bars: real centroids, generated); with
    ``--no-progress`` neither writes a bar to stderr, and without it the bars are still there."""
    import posereid.augment.filter as F
    from posereid.models.pidm import PIDMPipeline

    monkeypatch.setattr(F, "load_extractor", lambda *a, **k: mean_colour)
    market, _, _ = data
    torch.manual_seed(0)
    PIDMPipeline.from_preset("tiny").save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "out"
    generate = [
        "generate", "--generator", str(tmp_path / "ckpt"), "--data", str(market), "--annotations",
        str(market / "ann.csv"), "--per-image", "1", "--steps", "1", "--out", str(out), "--device", "cpu",
        "--filter-checkpoint", "x", "--filter-threshold", "-1", "--no-progress",
    ]  # fmt: skip
    refilter = [
        "filter",
        "--dir",
        str(out),
        "--data",
        str(market),
        "--reid-checkpoint",
        "x",
        "--device",
        "cpu",
    ]
    capsys.readouterr()
    assert cli_main(generate) == 0
    assert _bars(capsys.readouterr().err) == []
    assert cli_main([*refilter, "--no-progress"]) == 0
    assert _bars(capsys.readouterr().err) == []
    assert cli_main(refilter) == 0
    bars = _bars(capsys.readouterr().err)
    assert any("real centroids" in b for b in bars) and any("generated" in b for b in bars)
