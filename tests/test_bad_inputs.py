"""One policy for a bad input in every batch command: skip it, count it, report it; ``--strict`` stops.

A stray file in a Market folder (a non-Market name, a symlink loop, a broken symlink) or one corrupt image
must not stop ``Market1501``, ``filter`` or ``evaluate-generator``; with ``strict`` / ``--strict`` they stop
at the first one with an error naming the file.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from posereid.argtypes import STRICT_HELP
from posereid.augment import filter as filter_mod
from posereid.augment.filter import IdentityFilter, filter_folder
from posereid.augment.generate import read_manifest, synthetic_name, write_manifest_file
from posereid.experiments.cli import build_parser
from posereid.experiments.cli import main as cli_main
from posereid.reid_integration.market1501 import (
    SPLIT_DIRS,
    BadInputPolicy,
    ImageReadError,
    Market1501,
    MarketFormatError,
    MarketWriter,
    format_market_name,
    write_patn_csv,
)

COLOURS = {1: (220, 30, 30), 2: (30, 200, 40), 3: (40, 40, 220)}
#: a standing person, (x, y) in a 128x64 frame
POSE = np.array(
    [
        [32, 20], [32, 30], [22, 31], [20, 45], [19, 58], [42, 31], [44, 45], [45, 58], [26, 62],
        [26, 85], [26, 108], [38, 62], [38, 85], [38, 108], [30, 18], [34, 18], [27, 19], [37, 19],
    ],
    dtype=np.float32,
)  # fmt: skip


def _img(colour, rng, size=(64, 32)) -> Image.Image:
    arr = np.clip(np.asarray(colour) + rng.normal(0, 8, (*size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _corrupt(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # a truncated JPEG


def _error_lines(err: str, command: str) -> list[str]:
    """The ``posereid <command>: error: …`` lines of stderr (progress bars also write there)."""
    return [line for line in err.splitlines() if line.startswith(f"posereid {command}: error:")]


def mean_colour(images: torch.Tensor) -> torch.Tensor:
    """A deterministic 're-ID model': the centred mean colour."""
    return images.mean(dim=(2, 3)) - 0.5


# --------------------------------------------------------------------------------------------------
# The shared policy
# --------------------------------------------------------------------------------------------------
def test_policy_counts_or_raises():
    bad = BadInputPolicy()
    bad.skip_or_raise(ImageReadError("a.jpg: truncated"))
    bad.skip_or_raise(MarketFormatError("b.csv line 3: bad row"), "malformed row(s)")
    assert bad.skipped == 2 and bad.counts == {"unreadable image(s)": 1, "malformed row(s)": 1}
    assert bad.errors[0] == "a.jpg: truncated" and "1 malformed row(s)" in bad.describe()
    with pytest.raises(ImageReadError, match="a.jpg"):
        BadInputPolicy(strict=True).skip_or_raise(ImageReadError("a.jpg: truncated"))


@pytest.mark.parametrize(
    "command", ["annotate", "generate", "filter", "train-reid", "evaluate-generator", "train-generator"]
)
def test_every_batch_command_has_the_same_strict_flag(command):
    parser, _ = build_parser(command)
    (action,) = [a for a in parser._actions if "--strict" in a.option_strings]
    assert action.help == STRICT_HELP and action.default is False


# --------------------------------------------------------------------------------------------------
# Market1501: a stray file is skipped and counted, or (strict) raises naming it
# --------------------------------------------------------------------------------------------------
@pytest.fixture()
def market_with_one_image(tmp_path):
    w = MarketWriter(tmp_path)
    w.add("train", np.zeros((16, 8, 3), np.uint8), 3, 1)
    return tmp_path, tmp_path / SPLIT_DIRS["train"]


def test_stray_name_is_skipped_and_counted_or_raises_when_strict(market_with_one_image, caplog):
    root, train = market_with_one_image
    Image.new("RGB", (8, 16)).save(train / "notes.jpg")
    with caplog.at_level(logging.WARNING):
        m = Market1501(root)
    assert len(m.train) == 1 and m.skipped["train"] == 1 and m.summary()["train"]["skipped"] == 1
    assert "notes.jpg" in m.errors[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "notes.jpg" in warnings[0]  # one warning per folder, naming an example
    with pytest.raises(MarketFormatError, match=r"bounding_box_train.notes\.jpg"):
        Market1501(root, strict=True)


def test_symlink_loop_and_broken_symlink_are_skipped_or_raise_when_strict(market_with_one_image):
    root, train = market_with_one_image
    loop = train / format_market_name(4, 1, 1, 5, 1)
    os.symlink(loop.name, loop)  # a link to itself: is_file() raises ELOOP
    m = Market1501(root)
    assert len(m.train) == 1 and m.skipped["train"] == 1
    with pytest.raises(ImageReadError, match=rf"{loop.name}.*symbolic link loop"):
        Market1501(root, strict=True)
    loop.unlink()
    broken = train / format_market_name(5, 1, 1, 5, 1)
    os.symlink("gone.jpg", broken)
    m = Market1501(root)
    assert len(m.train) == 1 and m.skipped["train"] == 1
    with pytest.raises(ImageReadError, match=rf"{broken.name}.*broken symbolic link"):
        Market1501(root, strict=True)


# --------------------------------------------------------------------------------------------------
# annotate, train-generator's records, generate: the same policy
# --------------------------------------------------------------------------------------------------
@pytest.fixture()
def posed_market(tmp_path):
    """Two identities x two 128x64 train images with annotations; the first image is corrupt."""
    rng = np.random.default_rng(0)
    w = MarketWriter(tmp_path / "m")
    names = [
        w.add("train", np.asarray(_img(COLOURS[pid], rng, (128, 64))), pid, cam)
        for pid in (1, 2)
        for cam in (1, 2)
    ]
    write_patn_csv(tmp_path / "m" / "ann.csv", {n: POSE for n in names})
    victim = tmp_path / "m" / SPLIT_DIRS["train"] / names[0]
    _corrupt(victim)
    return tmp_path / "m", victim


def test_annotate_skips_or_stops_at_an_unreadable_image(posed_market, tmp_path):
    from posereid.reid_integration.annotate import annotate_folder

    market, victim = posed_market
    folder = market / SPLIT_DIRS["train"]
    s = annotate_folder(folder, tmp_path / "a.csv", estimator=lambda im: POSE, progress=False)
    assert (s.images, s.processed, s.unreadable) == (4, 3, 1)
    with pytest.raises(ImageReadError, match=victim.name):
        annotate_folder(folder, tmp_path / "b.csv", estimator=lambda im: POSE, progress=False, strict=True)


def test_training_records_skip_or_stop_at_an_unreadable_image(posed_market):
    from posereid.experiments.data import market_pose_records

    market, victim = posed_market
    records = market_pose_records(market, market / "ann.csv")
    assert len(records) == 3 and victim.name not in {r.name for r in records}
    with pytest.raises(ImageReadError, match=victim.name):
        market_pose_records(market, market / "ann.csv", strict=True)


def test_generate_skips_or_stops_at_an_unreadable_source(posed_market, tmp_path):
    from posereid.augment.generate import GenerateConfig, generate_offline
    from posereid.models.pidm import PIDMPipeline

    market, victim = posed_market
    torch.manual_seed(0)
    gen = PIDMPipeline.from_preset("tiny").eval()
    kw = dict(per_image=1, steps=1, progress=False, grid_items=0)
    s = generate_offline(GenerateConfig(tmp_path / "o1", **kw), gen, market, market / "ann.csv")
    assert (s.generated, s.failed_items) == (3, 1) and victim.name in s.failures[0]
    with pytest.raises(ImageReadError, match=victim.name):
        generate_offline(GenerateConfig(tmp_path / "o2", strict=True, **kw), gen, market, market / "ann.csv")


# --------------------------------------------------------------------------------------------------
# filter: a corrupt generated or real image is skipped and reported, or (--strict) stops the run
# --------------------------------------------------------------------------------------------------
@pytest.fixture()
def gen_data(tmp_path):
    rng = np.random.default_rng(0)
    market = tmp_path / "market"
    for folder, pids in (("bounding_box_train", COLOURS), ("query", (1,)), ("bounding_box_test", (1, 2))):
        (market / folder).mkdir(parents=True)
        for pid in pids:
            for j in range(2):
                _img(COLOURS[pid], rng).save(market / folder / format_market_name(pid, j + 1, 1, 10 * j, 1))
    gen = tmp_path / "gen"
    (gen / "bounding_box_train").mkdir(parents=True)
    entries = []
    for pid in COLOURS:
        source = format_market_name(pid, 1, 1, 0, 1)
        for k in range(2):
            name = synthetic_name(source, k)
            _img(COLOURS[pid], rng).save(gen / "bounding_box_train" / name)
            entries.append({"name": name, "source": source, "source_pid": pid, "k": k, "filter_score": None})
    write_manifest_file(gen / "manifest.jsonl", entries)
    return market, gen, [e["name"] for e in entries]


def test_filter_skips_a_corrupt_image_and_counts_it(gen_data):
    market, gen, names = gen_data
    victim = gen / "bounding_box_train" / names[0]
    _corrupt(victim)
    _corrupt(market / "bounding_box_train" / format_market_name(3, 2, 1, 10, 1))  # a real reference
    s = filter_folder(gen, market, IdentityFilter(mean_colour), threshold=0.5)
    assert (s.unreadable_images, s.skipped_references) == (1, 1)
    assert s.scored == len(names) - 1 and s.kept == len(names) - 1
    assert victim.is_file()  # left where it was, its manifest line untouched
    by_name = {e["name"]: e for e in read_manifest(gen)}
    assert by_name[names[0]]["filter_score"] is None
    assert all(by_name[n]["filter_score"] is not None for n in names[1:])


def test_filter_cli_reports_skips_and_strict_stops_naming_the_file(gen_data, monkeypatch, capsys):
    market, gen, names = gen_data
    monkeypatch.setattr(filter_mod, "load_extractor", lambda *a, **k: mean_colour)
    victim = gen / "bounding_box_train" / names[0]
    _corrupt(victim)
    args = ["filter", "--dir", str(gen), "--data", str(market), "--reid-checkpoint", "unused.safetensors"]
    args += ["--threshold", "0.5", "--device", "cpu"]
    capsys.readouterr()
    assert cli_main([*args, "--strict"]) == 1
    err = _error_lines(capsys.readouterr().err, "filter")
    assert len(err) == 1 and victim.name in err[0]
    assert all(e.get("filter_score") is None for e in read_manifest(gen))  # nothing was scored or moved
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert f"scored {len(names) - 1}:" in out and "skipped 1 unreadable generated image(s)" in out


# --------------------------------------------------------------------------------------------------
# evaluate-generator: a test pair with an unreadable image is skipped and counted, or (--strict) stops
# --------------------------------------------------------------------------------------------------
def test_evaluate_generator_skips_pairs_with_an_unreadable_image(synth_market, tmp_path, monkeypatch, capsys):
    from posereid.experiments.quality import evaluate_generator
    from posereid.models.pidm import PIDMPipeline

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no LPIPS / FID weights
    first = (synth_market / "market-pairs-test.csv").read_text().splitlines()[1].split(",")[0]
    victim = next(p for d in ("query", "bounding_box_test") if (p := synth_market / d / first).is_file())
    _corrupt(victim)
    torch.manual_seed(0)
    gen = PIDMPipeline.from_preset("tiny").eval()
    kw = dict(pose_estimator=None, steps=1, n_pairs=None, include_ceiling=False, include_floor=False)
    res = evaluate_generator(gen, synth_market, out_dir=tmp_path / "r", **kw)
    skipped = res["data"]["skipped"]["unreadable_image"]
    assert skipped >= 1 and all(victim.name not in pair for pair in res["data"]["pairs"])
    assert "'unreadable_image': " + str(skipped) in (tmp_path / "r" / "report.md").read_text()
    with pytest.raises(ImageReadError, match=victim.name):
        evaluate_generator(gen, synth_market, strict=True, **kw)
    gen_dir = tmp_path / "gen"
    gen.save_pretrained(gen_dir)
    args = ["evaluate-generator", "--generator", str(gen_dir), "--data", str(synth_market), "--out"]
    args += [
        str(tmp_path / "cli"),
        "--n-pairs",
        "0",
        "--steps",
        "1",
        "--no-compare-untrained",
        "--no-ceiling",
    ]
    args += ["--no-pose", "--device", "cpu"]
    capsys.readouterr()
    assert cli_main([*args, "--strict"]) == 1
    err = _error_lines(capsys.readouterr().err, "evaluate-generator")
    assert len(err) == 1 and victim.name in err[0]
    assert cli_main(args) == 0
    assert f"'unreadable_image': {skipped}" in capsys.readouterr().out
