"""The re-ID gain protocol: subsets, leakage-free generators, equal steps, resume, reports."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from posereid.experiments import reid_gain as rg
from posereid.experiments.cli import main as cli_main
from posereid.experiments.synthetic import SynthConfig, write_synthetic_market
from posereid.models import training
from posereid.models.pidm import PIDMPipeline
from posereid.reid_integration import train as reid_train
from posereid.reid_integration.market1501 import Market1501, MarketRecord

H, W = 32, 16


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("market")
    cfg = SynthConfig(n_train_ids=5, n_test_ids=4, per_camera=2, cameras=2, n_distractors=2, n_junk=1,
                      height=H, width=W, train_views=2, seed=3)  # fmt: skip
    write_synthetic_market(root, cfg, progress=False)
    return root


def _config(market: Path, out: Path, **kw) -> rg.GainConfig:
    base = dict(
        data=market, out=out, fractions=(0.5, 1.0), arms=("plain", "plain+synthetic"), seeds=(0,),
        reid_steps=3, reid_model="osnet_x0_25", reid_batch_size=8, height=H, width=W,
        generator_preset="tiny", generator_steps=2, generator_batch_size=4, steps=2, gen_batch_size=16,
        device="cpu", progress=False,
    )  # fmt: skip
    base.update(kw)
    return rg.GainConfig(**base)


class Spy:
    """Wraps a real function, recording its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


@pytest.fixture(scope="module")
def run(market: Path, tmp_path_factory: pytest.TempPathFactory):
    """One tiny protocol run with spies on the generator and re-ID trainers."""
    mp = pytest.MonkeyPatch()
    gen_spy, reid_spy = Spy(training.train_generator), Spy(reid_train.train_reid)
    mp.setattr(training, "train_generator", gen_spy)
    mp.setattr(reid_train, "train_reid", reid_spy)
    out = tmp_path_factory.mktemp("gain")
    config = _config(market, out)
    rows = rg.run_gain(config)
    yield config, rows, gen_spy, reid_spy
    mp.undo()


# --------------------------------------------------------------------------------------------------
# subsets
# --------------------------------------------------------------------------------------------------
def _records(n_ids: int, per_id: int) -> list[MarketRecord]:
    return [
        MarketRecord(Path(f"{pid:04d}_c1s1_{i:06d}_01.jpg"), pid, 0, 1, i, 1, "train")
        for pid in range(1, n_ids + 1)
        for i in range(per_id if pid > 1 else 1)  # identity 1 has a single image
    ]


def test_subsets_keep_every_identity_are_nested_and_seeded() -> None:
    recs = _records(10, 6)  # 55 images
    prev: set[str] = set()
    for f in (0.1, 0.2, 0.4, 0.8, 1.0):
        kept = rg.select_subset(recs, f, seed=1)
        names = {r.name for r in kept}
        assert {r.pid for r in kept} == set(range(1, 11)), f"an identity was dropped at {f}"
        assert len(kept) == max(10, round(f * 55))
        assert prev <= names, "subsets of one seed must be nested"
        prev = names
    assert {r.name for r in rg.select_subset(recs, 0.4, seed=1)} == {
        r.name for r in rg.select_subset(recs, 0.4, 1)
    }
    assert {r.name for r in rg.select_subset(recs, 0.4, seed=1)} != {
        r.name for r in rg.select_subset(recs, 0.4, 2)
    }
    with pytest.raises(ValueError, match="fraction"):
        rg.select_subset(recs, 0.0, seed=0)


def test_parse_fractions_and_config_validation(tmp_path: Path) -> None:
    assert rg.parse_fractions("20%,40%,100%") == (0.2, 0.4, 1.0)
    assert rg.parse_fractions("0.5, 1") == (0.5, 1.0)
    with pytest.raises(Exception, match="must be in"):
        rg.parse_fractions("150%")
    with pytest.raises(argparse.ArgumentTypeError, match=r"for 1.5 %, write 1.5%"):
        rg.parse_fractions("1.5")  # once silently 1.5 %
    with pytest.raises(ValueError, match="unknown arm"):
        rg.GainConfig(data=tmp_path, out=tmp_path, arms=("plain", "magic"))
    with pytest.raises(ValueError, match="filter_checkpoint"):
        rg.GainConfig(data=tmp_path, out=tmp_path, arms=("strong+synthetic+filtered",))
    assert rg.GainConfig(data=tmp_path, out=tmp_path, guidance=1.5).guidance == (1.5, 1.5)


def test_summary_deltas_are_paired_by_seed(tmp_path: Path) -> None:
    rows = [
        {"fraction": 0.5, "arm": "plain", "seed": 0, "mAP": 10.0, "rank1": 20.0, "images": 4},
        {"fraction": 0.5, "arm": "plain", "seed": 1, "mAP": 14.0, "rank1": 22.0, "images": 4},
        {"fraction": 0.5, "arm": "strong", "seed": 0, "mAP": 12.0, "rank1": 21.0, "images": 4},
        {"fraction": 0.5, "arm": "plain+synthetic", "seed": 0, "mAP": 13.0, "rank1": 25.0, "images": 4},
        {"fraction": 0.5, "arm": "plain+synthetic", "seed": 1, "mAP": 15.0, "rank1": 25.0, "images": 4},
    ]
    rg.write_results(tmp_path / "r.csv", rows)
    back = rg.read_results(tmp_path / "r.csv")
    assert [(r["arm"], r["seed"], r["mAP"]) for r in back] == [(r["arm"], r["seed"], r["mAP"]) for r in rows]
    s = {e["arm"]: e for e in rg.summarize(back)}
    assert s["plain"]["mAP"] == pytest.approx(12.0) and s["plain"]["mAP_std"] == pytest.approx(2**1.5)
    # paired: seed 0: +3, seed 1: +1 → mean +2, std sqrt(2)
    assert s["plain+synthetic"]["d_mAP_plain"] == pytest.approx(2.0)
    assert s["plain+synthetic"]["d_mAP_plain_std"] == pytest.approx(2**0.5)
    assert s["plain+synthetic"]["d_mAP_strong"] == pytest.approx(1.0)  # only seed 0 is shared
    assert s["plain+synthetic"]["d_rank1_plain"] == pytest.approx(4.0)
    md = rg.markdown_table(rg.summarize(back))
    assert "| 50% | plain+synthetic | 2 |" in md and "+2.0 ± 1.4" in md


# --------------------------------------------------------------------------------------------------
# the protocol, end to end (tiny)
# --------------------------------------------------------------------------------------------------
def test_run_writes_csv_markdown_and_plot(run, market: Path) -> None:
    config, rows, _, _ = run
    keys = sorted((r["fraction"], r["arm"], r["seed"]) for r in rows)
    assert keys == [
        (0.5, "plain", 0),
        (0.5, "plain+synthetic", 0),
        (1.0, "plain", 0),
        (1.0, "plain+synthetic", 0),
    ]
    with open(config.out / "results.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == 4 and set(rg.CSV_FIELDS) <= set(csv_rows[0])
    n_train = len([r for r in Market1501(market).train if r.pid > 0])
    for r in rows:
        assert math.isfinite(r["mAP"]) and math.isfinite(r["rank1"])  # every run had valid queries
        assert r["images"] == (n_train if r["fraction"] == 1.0 else max(5, round(0.5 * n_train)))
        if r["arm"] == "plain":
            assert r["synthetic_images"] == 0 and r["generator"] == ""
        else:  # one synthetic image per kept image, generator trained on the kept fraction
            assert r["synthetic_images"] == r["images"] and r["generator"] == "kept"
    md = (config.out / "results.md").read_text()
    assert md.count("| 50% |") == 2 and md.count("| 100% |") == 2
    assert "ΔmAP vs plain" in md and "leakage-free" in md
    with Image.open(config.out / "results.png") as im:
        assert im.format == "PNG" and im.width > 200


def test_every_identity_kept_at_every_fraction(run, market: Path) -> None:
    config, _, _, _ = run
    full_pids = {r.pid for r in Market1501(market).train if r.pid > 0}
    for f in config.fractions:
        sub = Market1501(config.work / f"subset-{rg.fraction_tag(f)}")
        assert {r.pid for r in sub.train} == full_pids
        assert len(sub.query) == len(Market1501(market).query)  # test splits untouched


def test_generator_and_synthetic_images_see_only_the_kept_fraction(run, market: Path) -> None:
    config, _, gen_spy, _ = run
    assert len(gen_spy.calls) == 2  # one generator per fraction
    all_train = {r.name for r in Market1501(market).train}
    for (args, _), f in zip(gen_spy.calls, sorted(config.fractions)):
        dataset = args[1]
        seen = {Path(rec.image).name for rec in dataset.records}
        kept = set(
            json.loads((config.work / f"subset-{rg.fraction_tag(f)}" / "subset.json").read_text())["names"]
        )
        assert seen and seen <= kept, f"generator of fraction {f} saw images outside its subset"
        if f < 1.0:
            assert len(kept) < len(all_train)
        # sources AND target poses of the synthetic images come from the kept images only
        manifest = [json.loads(line) for line in (rg.synthetic_dir(config, f) / "manifest.jsonl").open()]
        assert manifest and {m["source"] for m in manifest} <= kept
        assert {m["target_source"] for m in manifest} <= kept


def test_baseline_and_augmented_arms_get_the_same_steps(run) -> None:
    config, rows, _, reid_spy = run
    assert len(reid_spy.calls) == 4
    cfgs = [args[0] for args, _ in reid_spy.calls]
    assert {c.steps for c in cfgs} == {config.reid_steps}
    assert {r["steps"] for r in rows} == {config.reid_steps}  # steps actually taken, as counted
    assert len({r["batch_size"] for r in rows}) == 1  # baseline and synthetic arms: same batch size
    assert [bool(c.synthetic) for c in cfgs] == [False, True, False, True]


def test_rerun_resumes_without_recomputing(run, monkeypatch: pytest.MonkeyPatch) -> None:
    config, rows, _, _ = run
    csv_before = (config.out / "results.csv").read_text()
    gen_spy, reid_spy = Spy(training.train_generator), Spy(reid_train.train_reid)
    monkeypatch.setattr(training, "train_generator", gen_spy)
    monkeypatch.setattr(reid_train, "train_reid", reid_spy)
    again = rg.run_gain(_config(config.data, config.out))
    assert not reid_spy.calls and not gen_spy.calls
    assert (config.out / "results.csv").read_text() == csv_before
    assert sorted(map(str, again)) == sorted(map(str, rows))
    # one more seed for the baseline: exactly the two new cells run; nothing else is retrained
    more = rg.run_gain(_config(config.data, config.out, arms=("plain",), seeds=(0, 1)))
    assert len(reid_spy.calls) == 2 and not gen_spy.calls
    assert sorted((r["fraction"], r["seed"]) for r in more) == [(0.5, 0), (0.5, 1), (1.0, 0), (1.0, 1)]
    assert len(rg.read_results(config.out / "results.csv")) == 6
    with pytest.raises(rg.ProtocolMismatchError, match="reid_steps"):
        rg.run_gain(_config(config.data, config.out, reid_steps=4))
    with pytest.raises(rg.ProtocolMismatchError, match="synthetic_ratio"):
        rg.run_gain(_config(config.data, config.out, synthetic_ratio=0.3))


def test_cli_with_a_given_generator_records_it(market: Path, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "gen"
    PIDMPipeline.from_preset("tiny", image_size=(H, W)).save_pretrained(ckpt)
    out = tmp_path / "out"
    rc = cli_main([
        "reid-gain", "--data", str(market), "--out", str(out), "--fractions", "1", "--arms", "plain+synthetic",
        "--seeds", "0", "--reid-steps", "2", "--reid-model", "osnet_x0_25", "--reid-batch-size", "8",
        "--height", str(H), "--width", str(W), "--generator", str(ckpt), "--steps", "1", "--per-image", "2",
        "--annotation-hw", str(H), str(W), "--device", "cpu", "--no-progress", "--synthetic-ratio", "0.25",
    ])  # fmt: skip
    assert rc == 0
    (row,) = rg.read_results(out / "results.csv")
    cell = json.loads(next((out / "work" / "cells").glob("*.json")).read_text())
    assert cell["config"]["synthetic_ratio"] == 0.25 and cell["synthetic_images"] > 0
    assert "25 % of each batch synthetic" in (out / "results.md").read_text()
    assert row["generator"] == f"given:{ckpt}"
    assert row["synthetic_images"] == 2 * row["images"]
    assert not (out / "work" / "generator-1").exists()  # nothing was trained
    printed = capsys.readouterr().out
    assert "| 100% | plain+synthetic |" in printed and str(out / "results.md") in printed


def test_filtered_arm_uses_a_filter_trained_on_the_kept_images(
    market: Path, tmp_path: Path, monkeypatch
) -> None:
    reid_spy = Spy(reid_train.train_reid)
    monkeypatch.setattr(reid_train, "train_reid", reid_spy)
    config = _config(market, tmp_path / "out", fractions=(0.5,), arms=("strong+synthetic+filtered",),
                     filter_checkpoint="auto")  # fmt: skip
    (row,) = rg.run_gain(config)
    filter_cfg, cell_cfg = (args[0] for args, _ in reid_spy.calls)
    subset_root = str(config.work / "subset-0.5")
    assert filter_cfg.data == subset_root and filter_cfg.augment == "strong" and filter_cfg.out
    assert cell_cfg.synthetic == (str(rg.synthetic_dir(config, 0.5, filtered=True)),)
    unfiltered = rg.synthetic_dir(config, 0.5) / "bounding_box_train"
    kept = sorted(
        p.name for p in (rg.synthetic_dir(config, 0.5, filtered=True) / "bounding_box_train").iterdir()
    )
    assert len(list(unfiltered.iterdir())) == row["images"]  # the unfiltered folder is left whole
    assert row["synthetic_images"] == len(kept) <= row["images"]
    manifest = [
        json.loads(line) for line in (rg.synthetic_dir(config, 0.5, filtered=True) / "manifest.jsonl").open()
    ]
    assert sorted(m["name"] for m in manifest if m["kept"]) == kept
    assert all((m["filter_margin"] >= 0) == m["kept"] for m in manifest)


def test_generator_data_full_trains_one_generator_on_all_images(
    market: Path, tmp_path: Path, monkeypatch
) -> None:
    gen_spy = Spy(training.train_generator)
    monkeypatch.setattr(training, "train_generator", gen_spy)
    config = _config(market, tmp_path / "out", arms=("plain+synthetic",), generator_data="full")
    rows = rg.run_gain(config)
    assert len(gen_spy.calls) == 1  # one generator, shared by every fraction
    seen = {Path(rec.image).name for rec in gen_spy.calls[0][0][1].records}
    half = set(json.loads((config.work / "subset-0.5" / "subset.json").read_text())["names"])
    assert seen <= {r.name for r in Market1501(market).train} and not seen <= half  # beyond the 50 % subset
    assert {r["generator"] for r in rows} == {"full"}
    assert "ALL train images" in (config.out / "results.md").read_text()


def test_a_run_parses_the_market_folder_once(market: Path, tmp_path: Path, monkeypatch) -> None:
    """The source folder and its annotation CSV are parsed once per run, not once per fraction or stage."""
    import sys

    from posereid.reid_integration import market1501 as m1501

    root = m1501.resolve_data_dir(market)
    annotations = rg.find_annotations(market)
    scans: list[Path] = []
    reads: list[Path] = []
    init, read = m1501.Market1501.__init__, m1501.read_patn_csv

    def counting_init(self, path, *args, **kwargs):
        init(self, path, *args, **kwargs)
        if self.root == root:
            scans.append(self.root)

    def counting_read(path, *args, **kwargs):
        if Path(path).resolve() == annotations.resolve():
            reads.append(Path(path))
        return read(path, *args, **kwargs)

    monkeypatch.setattr(m1501.Market1501, "__init__", counting_init)
    for mod in [m for name, m in list(sys.modules.items()) if name.startswith("posereid")]:
        if getattr(mod, "read_patn_csv", None) is read:  # every module that imported it by name
            monkeypatch.setattr(mod, "read_patn_csv", counting_read)
    monkeypatch.setattr(
        reid_train, "train_reid", lambda cfg, **kw: {"mAP": 0.5, "rank1": 0.5, "rank5": 0.6, "rank10": 0.7}
    )
    config = _config(market, tmp_path / "out", fractions=(0.25, 0.5, 1.0), arms=("plain",), seeds=(0, 1))
    rows = rg.run_gain(config)
    assert len(rows) == 6  # 3 fractions x 2 seeds
    assert len(scans) == 1, f"{root} parsed {len(scans)} times in one run"
    assert len(reads) == 1, f"{annotations} read {len(reads)} times in one run"
    # a given source is used as is: the caller's parse is the run's only one
    scans.clear()
    reads.clear()
    source = rg.market_source(_config(market, tmp_path / "out2", fractions=(0.5, 1.0), arms=("plain",)))
    rg.run_gain(_config(market, tmp_path / "out2", fractions=(0.5, 1.0), arms=("plain",)), source=source)
    assert len(scans) == 1 and len(reads) == 1
