"""The re-ID gain protocol: subsets, leakage-free generators, equal steps, resume, reports."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from posereid.augment.manifest import parse_synthetic_name
from posereid.experiments import reid_gain as rg
from posereid.experiments.cli import main as cli_main
from posereid.experiments.identity_loss import IdentityLoss
from posereid.experiments.reid_gain.report import write_results
from posereid.experiments.synthetic import SynthConfig, write_synthetic_market
from posereid.models import training
from posereid.reid_integration import train as reid_train
from posereid.reid_integration.market1501 import Market1501, MarketRecord, parse_market_name

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
    # 95 % t-interval of (+3, +1): 2 ± t(0.975, 1) · sqrt(2) / sqrt(2) = 2 ± 12.71
    assert s["plain+synthetic"]["d_mAP_plain_lo"] == pytest.approx(2.0 - 12.7062, abs=1e-3)
    assert s["plain+synthetic"]["d_mAP_plain_hi"] == pytest.approx(2.0 + 12.7062, abs=1e-3)
    assert s["plain+synthetic"]["d_mAP_plain_n"] == 2 and not s["plain+synthetic"]["d_mAP_plain_settled"]
    md = rg.markdown_table(rg.summarize(back))
    assert "| 50% | plain+synthetic | 2 |" in md and "+2.0 [-10.7, +14.7] not settled" in md
    assert "+1.0 (1 seed) not settled" in md  # one shared seed: no interval, never settled
    assert "Recovered share" not in md  # no oracle arm


def test_paired_interval_on_known_inputs() -> None:
    iv = rg.paired_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd sqrt(2.5), t(0.975, 4) = 2.776445: half-width 2.776445 * 1.581139 / sqrt(5) = 1.963243
    assert iv.n == 5 and iv.mean == pytest.approx(3.0)
    assert (iv.lo, iv.hi) == (pytest.approx(1.036757, abs=1e-6), pytest.approx(4.963243, abs=1e-6))
    assert iv.settled and rg.verdict(iv) == "settled"
    neg = rg.paired_interval([-1.0, -2.0, -3.0, -4.0, -5.0])
    assert neg.hi == pytest.approx(-1.036757, abs=1e-6) and neg.settled  # excludes 0 from below
    wide = rg.paired_interval([5.0, -1.8, 4.0, 7.6, 0.2])  # the README's old "+3.3 ± 4.8" kind of result
    assert wide.lo < 0 < wide.hi and not wide.settled and rg.verdict(wide) == "not settled"
    one = rg.paired_interval([7.8])
    assert one.mean == 7.8 and one.n == 1 and math.isnan(one.lo) and not one.settled
    assert rg.paired_interval([]).n == 0 and not rg.paired_interval([]).settled
    assert rg.paired_interval([2.0, float("nan"), 4.0]).n == 2  # nan left out
    # a 90 % interval is narrower than the 95 % one
    assert rg.paired_interval([1, 2, 3, 4, 5], level=0.9).lo > iv.lo
    assert rg.format_interval(iv) == "+3.0 [+1.0, +5.0] settled"
    assert rg.format_interval(one) == "+7.8 (1 seed) not settled"
    with pytest.raises(ValueError, match="level"):
        rg.paired_interval([1.0, 2.0], level=95)


def test_recovered_share_per_seed_and_over_seeds() -> None:
    strong = {0: 40.0, 1: 42.0, 2: 44.0, 3: 46.0}
    oracle = {0: 50.0, 1: 47.0, 2: 54.0, 3: 45.0}  # seed 3: the oracle did not beat strong
    synthetic = {0: 45.0, 1: 43.0, 2: 46.0, 3: 47.0}
    sh = rg.recovered_share(synthetic, strong, oracle)
    assert sh.per_seed == pytest.approx({0: 0.5, 1: 0.2, 2: 0.2})
    assert sh.undefined == [3] and sh.oracle_gain == pytest.approx({0: 10.0, 1: 5.0, 2: 10.0, 3: -1.0})
    assert sh.interval.n == 3 and sh.interval.mean == pytest.approx(0.3)
    assert sh.interval == rg.paired_interval([0.5, 0.2, 0.2])
    # only seeds all three arms have count
    assert rg.recovered_share({0: 45.0}, strong, oracle).per_seed == {0: 0.5}


def test_share_of_mean_gains_is_fiellers_interval() -> None:
    """The ratio of the mean gains and the ratios r where the paired t-interval of arm − r·oracle holds 0."""
    arm = [4.8, 0.2, 1.0, 12.0, 4.0]  # gains over strong of the synthetic and the oracle arm, per seed
    oracle = [1.3, 6.0, 9.0, 13.0, 8.0]
    iv = rg.share_of_mean_gains(arm, oracle)
    assert iv.n == 5 and iv.mean == pytest.approx(sum(arm) / sum(oracle))
    assert iv.lo < iv.mean < iv.hi
    for r, end in ((iv.lo, "lo"), (iv.hi, "hi")):  # at each end, 0 sits exactly on the t-interval's edge
        edge = getattr(rg.paired_interval([a - r * b for a, b in zip(arm, oracle)]), end)
        assert edge == pytest.approx(0.0, abs=1e-9)
    inside = rg.paired_interval([a - iv.mean * b for a, b in zip(arm, oracle)])
    assert inside.lo < 0 < inside.hi
    # one seed with an oracle gain near 0 blows up the per-seed mean, not the ratio of means
    per_seed = rg.recovered_share(dict(enumerate(arm)), dict.fromkeys(range(5), 0.0), dict(enumerate(oracle)))
    assert per_seed.of_means == iv and per_seed.interval.hi - per_seed.interval.lo > iv.hi - iv.lo
    # an oracle gain that is itself not settled leaves the share unbounded, and the table says so
    loose = rg.share_of_mean_gains([1.0, 0.5, 2.0, -1.0], [3.0, -2.0, 4.0, -3.5])
    assert math.isinf(loose.lo) and math.isinf(loose.hi) and not loose.settled
    assert "unbounded" in rg.format_share_of_means(loose)
    one = rg.share_of_mean_gains([1.0], [2.0])
    assert one.mean == 0.5 and one.n == 1 and math.isnan(one.lo)
    with pytest.raises(ValueError, match="paired"):
        rg.share_of_mean_gains([1.0, 2.0], [1.0])


def _rows(arms: dict[str, list[float]], fraction: float = 1.0) -> list[dict]:
    return [
        {"fraction": fraction, "arm": a, "seed": s, "mAP": v, "rank1": v + 5, "images": 10,
         "synthetic_images": 10 if "+" in a else 0}
        for a, vals in arms.items()
        for s, v in enumerate(vals)
    ]  # fmt: skip


def test_table_reports_intervals_verdicts_and_the_recovered_share(tmp_path: Path) -> None:
    rows = _rows({
        "plain": [30.0, 31.0, 29.0, 30.5, 30.0],
        "strong": [40.0, 42.0, 41.0, 43.0, 40.0],
        "plain+synthetic": [35.0, 35.5, 34.0, 36.0, 35.0],
        "strong+synthetic": [44.0, 42.0, 47.0, 41.0, 41.0],
        "strong+oracle": [50.0, 52.0, 51.0, 53.0, 50.0],
    })  # fmt: skip
    summary = {e["arm"]: e for e in rg.summarize(rows)}
    syn = summary["strong+synthetic"]
    assert syn["d_mAP_strong"] == pytest.approx(1.8) and syn["d_mAP_strong_n"] == 5
    assert not syn["d_mAP_strong_settled"] and summary["strong+oracle"]["d_mAP_strong_settled"]
    assert summary["plain+synthetic"]["d_mAP_plain_settled"]
    share = syn["share_mAP"]  # (synthetic - strong) / (oracle - strong) per seed: 4/10, 0, 6/10, -2/10, 1/10
    assert share.per_seed == pytest.approx({0: 0.4, 1: 0.0, 2: 0.6, 3: -0.2, 4: 0.1})
    assert share.interval.mean == pytest.approx(0.18)
    assert "share_mAP" not in summary["plain+synthetic"]  # a share is of the gain over STRONG
    md = rg.markdown_table(list(summary.values()))
    line = next(ln for ln in md.splitlines() if ln.startswith("| 100% | strong+synthetic | 5 |"))
    assert "not settled" in line
    assert "+10.0 [" in md and "] settled" in md  # the oracle's gain over strong is settled
    assert "Recovered share of the oracle's gain" in md
    share_line = next(ln for ln in md.splitlines() if "s0: 0.40" in ln)
    assert "s3: -0.20" in share_line and "0.18 [" in share_line and "not settled" in share_line
    assert f"{1.8 / 10.0:.2f} [" in share_line  # mean gain 1.8 over mean oracle gain 10.0
    # a seed where the oracle did not beat strong gives no share, and says so
    rows2 = [dict(r, mAP=39.0) if (r["arm"], r["seed"]) == ("strong+oracle", 0) else r for r in rows]
    md2 = rg.markdown_table(rg.summarize(rows2))
    assert "s0: – (oracle ≤ strong)" in md2
    cfg = rg.GainConfig(data=tmp_path, out=tmp_path, arms=tuple(summary), per_image=1)
    rg.write_reports(cfg, rows)
    text = (tmp_path / "results.md").read_text()
    assert "strong+oracle`: the strong baseline + real renders" in text and "seeds (0, 1, 2, 3, 4)" in text
    with Image.open(tmp_path / "results.png") as im:
        assert im.format == "PNG" and im.width > 1000  # three panels: mAP, rank-1, Δ vs strong with CI


def _write_run(out: Path, rows: list[dict], **settings) -> Path:
    out.mkdir(parents=True)
    (out / "gain_config.json").write_text(
        json.dumps({"generator_preset": "small", "generator_steps": 5, **settings})
    )
    rg.write_results(out / "results.csv", rows)
    return out


def test_compare_puts_each_generator_beside_the_others_on_the_same_baselines(tmp_path: Path) -> None:
    """Two runs (two families) on one strong/oracle baseline: one row per generator with its paired gain
    and recovered share; a run whose strong cells differ is flagged; the CLI writes the table and plot."""
    base = {"strong": [40.0, 42.0, 41.0, 43.0, 40.0], "strong+oracle": [50.0, 52.0, 51.0, 53.0, 50.0]}
    a = _write_run(tmp_path / "a", _rows({**base, "strong+synthetic": [45.0, 47.0, 46.0, 48.0, 45.0]}),
                   generator_family="cfld")  # fmt: skip
    b = _write_run(tmp_path / "b", _rows({**base, "strong+synthetic": [41.0, 42.0, 42.0, 43.0, 41.0]}),
                   generator_family="pidm")  # fmt: skip
    runs = [rg.load_run(a), rg.load_run(b)]
    assert runs[0].label.startswith("cfld `small`, 5 steps")
    md = rg.compare_table(runs)
    row_a = next(ln for ln in md.splitlines() if "| strong+synthetic | cfld" in ln)
    row_b = next(ln for ln in md.splitlines() if "| strong+synthetic | pidm" in ln)
    assert "+5.0 [+5.0, +5.0] settled" in row_a and "| 0.50 [0.50, 0.50] settled |" in row_a
    assert "+0.6 [" in row_b and "not settled" in row_b  # gains 1, 0, 1, 0, 1: mean 0.6
    assert "| 100% | strong+oracle | real renders | 5 |" in md and "+10.0 [+10.0, +10.0] settled" in md
    assert "All runs share the first run's `strong` models" in md
    more = _rows({**base, "strong+synthetic": [41.0] * 5}) + _rows({"strong": [44.0]}, fraction=0.5)
    d = _write_run(tmp_path / "d", more)  # one more fraction than the first run: the shared cells agree
    assert "All runs share" in rg.compare_table([runs[0], rg.load_run(d)])
    c = _write_run(tmp_path / "c", _rows({"strong": [30.0] * 5, "strong+synthetic": [31.0] * 5}))
    md2 = rg.compare_table([runs[0], rg.load_run(c, "other")])
    assert "**Not the same baseline models**: other" in md2 and "– (no oracle)" in md2
    # a later run with its own (10-seed) oracle: the table and the plot both keep the first run's
    e = _write_run(tmp_path / "e", _rows({"strong": [40.0, 42.0, 41.0, 43.0, 40.0] * 2,
                                          "strong+oracle": [44.0] * 10, "strong+synthetic": [42.0] * 10}))  # fmt: skip
    later = [runs[0], rg.load_run(e)]
    # the floor: shown once, from the first run that has it, with its own (here negative) share
    fl = _write_run(tmp_path / "fl", _rows({**base, "strong+noise": [35.0, 37.0, 36.0, 38.0, 35.0]}))
    md3 = rg.compare_table([rg.load_run(fl), runs[1]])
    floor_row = next(ln for ln in md3.splitlines() if "| strong+noise |" in ln)
    assert "| pixel noise (the floor) | 5 |" in floor_row and "-5.0 [-5.0, -5.0] settled" in floor_row
    assert "| -0.50 [-0.50, -0.50] settled |" in floor_row
    # every other row paired with the floor's seeds: the oracle 15 above it, run b's images 5.6 above it
    assert "| +15.0 [+15.0, +15.0] settled | 1 | 1 |" in md3
    row_b3 = next(ln for ln in md3.splitlines() if "| strong+synthetic | pidm" in ln)
    assert row_b3.split(" | ")[7].startswith("+5.6 [") and "– (no oracle)" not in row_b3
    assert rg.first_cells(later, "strong+oracle")[1.0]["seeds"] == 5
    assert "| 100% | strong+oracle | real renders | 5 |" in rg.compare_table(later)
    assert (
        cli_main(["reid-gain-compare", str(a), str(b), "--out", str(tmp_path / "cmp"), "--labels", "A,B"])
        == 0
    )
    assert "| 100% | strong+synthetic | A | 5 |" in (tmp_path / "cmp" / "comparison.md").read_text()
    with Image.open(tmp_path / "cmp" / "comparison.png") as im:
        assert im.format == "PNG" and im.width > 1000
    with pytest.raises(FileNotFoundError, match="not a reid-gain output folder"):
        rg.load_run(tmp_path / "cmp")


def test_compare_lends_the_oracle_to_runs_without_one_and_keeps_each_soft_setting(tmp_path: Path) -> None:
    """A run made with ``--baselines-from`` without the oracle arm takes the oracle cells of a compared run with
    the same ``strong`` cells (its shares appear, and the table says whose); a floor variant with other soft
    settings gets its own row, each naming its weight and mix; the plot draws a run's arms as separate series."""
    from posereid.experiments.reid_gain import compare

    strong = [40.0, 42.0, 41.0, 43.0, 40.0]
    base = _write_run(tmp_path / "base", _rows({"strong": strong, "strong+oracle": [50.0, 52.0, 51.0, 53.0, 50.0],
                                                rg.NOISE_SOFT_ARM: [38.0] * 5, rg.NOISE_ARM: [35.0] * 5}),
                      synthetic_ratio=None)  # fmt: skip
    soft = _write_run(tmp_path / "soft", _rows({"strong": strong, rg.NOISE_SOFT_ARM: [41.0] * 5,
                                                "strong+synthetic": [45.0, 47.0, 46.0, 48.0, 45.0],
                                                rg.SOFT_ARM: [43.0, 45.0, 44.0, 46.0, 43.0]}),
                      synthetic_ratio=None, soft_synthetic_ratio=0.25, soft_weight=0.5, soft_temperature=1.0)  # fmt: skip
    runs = [rg.load_run(base, "floor"), rg.load_run(soft, "asset")]
    assert [r.oracle_from for r in compare.lend_oracle(runs)] == [None, "floor"]
    md = rg.compare_table(runs)
    row = next(
        ln
        for ln in md.splitlines()
        if f"| {rg.SOFT_ARM} | asset (w = 0.5, T = 1, 25 % of each batch) |" in ln
    )
    assert "| 0.30 [0.30, 0.30] settled |" in row  # gain 3 of the oracle's 10
    assert "asset: shares from the oracle cells of floor" in md
    floors = [ln for ln in md.splitlines() if f"| {rg.NOISE_SOFT_ARM} |" in ln]
    assert len(floors) == 2 and "uniform batches" in floors[0] and "25 % of each batch" in floors[1]
    other = _write_run(tmp_path / "other", _rows({"strong": [30.0] * 5, "strong+synthetic": [31.0] * 5}))
    assert compare.lend_oracle([rg.load_run(other)] + runs)[0].oracle_from is None  # other strong cells
    variants = compare.variant_table(runs).splitlines()[2:]  # each soft arm against its generator's hard arm
    assert [ln.split(" | ")[4:] for ln in variants] == [
        ["5", "+3.0 [+3.0, +3.0] settled |"],  # the floor's soft arm vs the floor
        ["5", "+6.0 [+6.0, +6.0] settled |"],  # the other run's soft floor vs the first run's floor
        ["5", "-2.0 [-2.0, -2.0] settled |"],  # the asset's soft arm vs its hard arm
    ]
    assert "| strong+noise (floor) |" in variants[1] and "| strong+synthetic |" in variants[2]
    labels = [label for label, _ in compare.plot_series(runs)]
    assert labels == [
        "strong+oracle",
        f"{rg.NOISE_ARM} (floor)",
        "asset: strong+synthetic",
        f"asset: {rg.SOFT_ARM}",
    ]


def test_default_seeds_are_five() -> None:
    assert rg.GainConfig(data=Path("."), out=Path(".")).seeds == (0, 1, 2, 3, 4)
    parser = argparse.ArgumentParser()
    from posereid.experiments.reid_gain.cli import add_reid_gain_args

    add_reid_gain_args(parser)
    args = parser.parse_args(["--data", "d", "--out", "o"])
    assert tuple(args.seeds) == (0, 1, 2, 3, 4) and "strong+oracle" not in args.arms


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
    n_train = len([r for r in Market1501(market).train if r.has_identity])
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
    full_pids = {r.pid for r in Market1501(market).train if r.has_identity}
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


def test_max_minutes_stops_between_cells_and_the_same_call_continues(
    market: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a fake clock where every re-ID run takes 10 minutes, a 15-minute budget runs two cells, writes their
    reports and stops; the same call again runs only the third."""
    from posereid.experiments.reid_gain import protocol

    now = [0.0]
    monkeypatch.setattr(protocol, "_clock", lambda: now[0])
    real = reid_train.train_reid

    def ten_minutes(*args, **kwargs):
        now[0] += 600.0
        return real(*args, **kwargs)

    reid_spy = Spy(ten_minutes)
    monkeypatch.setattr(reid_train, "train_reid", reid_spy)
    config = _config(
        market, tmp_path / "gain", fractions=(1.0,), arms=("plain",), seeds=(0, 1, 2), max_minutes=15
    )
    with pytest.raises(rg.GainOutOfTimeError, match=r"2 of 3 cells.*rerun"):
        rg.run_gain(config)
    assert len(reid_spy.calls) == 2 and len(rg.read_results(config.out / "results.csv")) == 2
    assert (config.out / "results.md").is_file()  # the cells done are reported
    rows = rg.run_gain(config)  # a fresh budget: only the missing cell
    assert len(reid_spy.calls) == 3 and sorted(r["seed"] for r in rows) == [0, 1, 2]
    with pytest.raises(ValueError, match="max_minutes"):
        _config(market, tmp_path / "x", max_minutes=0)


def test_a_generator_out_of_time_stops_the_run(market: Path, tmp_path: Path, monkeypatch) -> None:
    """The generator training gets what is left of the budget; when it runs out, the run stops with
    ``GainOutOfTimeError`` (no cell uses a half-trained generator) and the CLI exits 3."""
    seen: list[float | None] = []

    def out_of_time(model, dataset, config, output_dir, **kwargs):
        seen.append(config.max_minutes)
        return training.TrainResult(steps=1, output_dir=Path(output_dir), out_of_time=True)

    monkeypatch.setattr(training, "train_generator", out_of_time)
    args = ["reid-gain", "--data", str(market), "--out", str(tmp_path / "gain"), "--fractions", "1",
            "--arms", "plain+synthetic", "--seeds", "0", "--reid-steps", "3", "--height", str(H), "--width",
            str(W), "--generator-preset", "tiny", "--generator-steps", "2", "--steps", "2", "--device", "cpu",
            "--no-progress", "--max-minutes", "30"]  # fmt: skip
    assert cli_main(args) == 3
    assert len(seen) == 1 and 29.0 < seen[0] <= 30.0
    assert not (tmp_path / "gain" / "results.csv").is_file()


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


def test_baselines_from_another_run_are_read_not_retrained(
    run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second generator (other steps) compared on the first run's baseline models: only its synthetic
    cells train, its CSV carries the first run's baseline rows unchanged, and a run whose re-ID settings
    differ is refused."""
    config, rows, _, _ = run
    reid_spy = Spy(reid_train.train_reid)
    monkeypatch.setattr(reid_train, "train_reid", reid_spy)
    other = _config(config.data, tmp_path / "other", generator_steps=3, baselines_from=config.out)
    got = rg.run_gain(other)
    assert [args[0].synthetic != () for args, _ in reid_spy.calls] == [True, True]  # no baseline trained
    first = {rg.cell_key(r["fraction"], r["arm"], r["seed"]): r for r in rows if r["arm"] == "plain"}
    mine = {rg.cell_key(r["fraction"], r["arm"], r["seed"]): r for r in got if r["arm"] == "plain"}
    assert mine.keys() == first.keys() and all(mine[k]["mAP"] == first[k]["mAP"] for k in first)
    assert all(r["generator"] == "kept" for r in got if r["arm"] == "plain+synthetic")
    assert f"read from `{config.out}`" in (other.out / "results.md").read_text()
    assert len(rg.read_results(other.out / "results.csv")) == 4
    # the two generators answer the same requests: one sheet, a column each (source, pose, 2 runs, source)
    paths = rg.write_comparison([rg.load_run(config.out, "a"), rg.load_run(other.out, "b")], tmp_path / "cmp")
    with Image.open(paths["samples"]) as im:
        assert im.width == 5 * (W * math.ceil(160 / H) + 4)
    for field, value in (("reid_steps", 4), ("per_image", 2)):
        with pytest.raises(rg.ProtocolMismatchError, match=field):
            rg.run_gain(_config(config.data, tmp_path / field, baselines_from=config.out, **{field: value}))
    with pytest.raises(FileNotFoundError, match="not a reid-gain output folder"):
        rg.run_gain(_config(config.data, tmp_path / "x", baselines_from=tmp_path))


def test_generator_options_reach_the_trained_generator(market: Path, tmp_path: Path, monkeypatch) -> None:
    """``--generator-option prediction_type=v_prediction`` trains a v-prediction generator (the recipe is
    in its saved schedule); an unknown field is refused before any re-ID model trains."""
    reid_spy = Spy(reid_train.train_reid)
    monkeypatch.setattr(reid_train, "train_reid", reid_spy)
    args = ["reid-gain", "--data", str(market), "--out", str(tmp_path / "gain"), "--fractions", "1", "--arms",
            "plain,plain+synthetic", "--seeds", "0", "--reid-steps", "2", "--height", str(H), "--width", str(W),
            "--generator-preset", "tiny", "--generator-steps", "2", "--steps", "2", "--device", "cpu",
            "--no-progress", "--generator-option", "prediction_type=v_prediction"]  # fmt: skip
    assert cli_main(args) == 0
    config = _config(market, tmp_path / "gain", generator_options={"prediction_type": "v_prediction"})
    schedules = [
        json.loads(p.read_text()) for p in rg.generator_dir(config, 1.0).rglob("scheduler_config.json")
    ]
    assert schedules and {s["prediction_type"] for s in schedules} == {"v_prediction"}
    assert "prediction_type=v_prediction" in (tmp_path / "gain" / "results.md").read_text()
    calls = len(reid_spy.calls)
    bad = _config(
        market, tmp_path / "bad", arms=("plain", "plain+synthetic"), generator_options={"no_such": 1}
    )
    with pytest.raises(ValueError, match="no_such"):
        rg.run_gain(bad)
    assert len(reid_spy.calls) == calls
    with pytest.raises(SystemExit):
        cli_main([*args[:-1], "not-a-pair"])


@pytest.mark.parametrize("family", ["pidm"])  # every family: tests/test_conformance.py
def test_cli_with_a_given_generator_records_it(family: str, market: Path, tmp_path: Path, capsys) -> None:
    from posereid.models.contract import family_class

    ckpt = tmp_path / "gen"
    family_class(family).from_preset("tiny", image_size=(H, W)).save_pretrained(ckpt)  # any family, unchanged
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


def test_generator_identity_loss_trains_against_a_model_of_the_kept_images_apart_from_the_gates(
    market: Path, tmp_path: Path, monkeypatch
) -> None:
    """``generator_identity_weight``: the protocol's generator trains with the identity loss against a strong
    re-ID model of the kept images only (no leakage), seeded apart from the filter model that gates and
    filters its images; the weight is recorded (a rerun with another is refused), and it needs the protocol's
    own kept-image generators."""
    gen_spy, reid_spy = Spy(training.train_generator), Spy(reid_train.train_reid)
    monkeypatch.setattr(training, "train_generator", gen_spy)
    monkeypatch.setattr(reid_train, "train_reid", reid_spy)
    config = _config(market, tmp_path / "out", fractions=(0.5,), arms=("plain+synthetic",),
                     generator_identity_weight=0.3)  # fmt: skip
    rg.run_gain(config)
    identity_cfg = reid_spy.calls[0][0][0]  # trained before the generator, on the kept images only
    assert identity_cfg.data == str(config.work / "subset-0.5") and identity_cfg.augment == "strong"
    assert identity_cfg.seed == config.subset_seed + rg.IDENTITY_MODEL_SEED_OFFSET
    model, _dataset, tcfg = gen_spy.calls[0][0][:3]
    features, weight = model._identity
    assert callable(features) and weight == 0.3
    ckpt = config.work / "identity-model-0.5" / "model.safetensors"
    assert tcfg.identity_loss == IdentityLoss(ckpt, 0.3).description()
    saved = json.loads((config.out / "gain_config.json").read_text())
    assert saved["generator_identity_weight"] == 0.3
    assert "identity loss 0.3" in rg.run_label(saved)  # the comparison names it
    with pytest.raises(rg.ProtocolMismatchError, match="generator_identity_weight"):
        rg.run_gain(_config(market, tmp_path / "out", fractions=(0.5,), arms=("plain+synthetic",)))
    for bad in ({"generator_data": "full"}, {"generator": tmp_path}):
        with pytest.raises(ValueError, match="identity"):
            _config(market, tmp_path / "x", generator_identity_weight=0.3, **bad)


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


def test_protocol_trains_a_multi_stage_family_stage_by_stage(
    market: Path, tmp_path: Path, monkeypatch
) -> None:
    """``generator_family="pcdms"``: one leakage-free generator per fraction, its three stages in order."""
    from posereid.models import load_generator
    from posereid.models.pcdms import PCDMsPipeline

    gen_spy = Spy(training.train_generator)
    monkeypatch.setattr(training, "train_generator", gen_spy)
    config = _config(
        market, tmp_path / "out", fractions=(1.0,), arms=("plain+synthetic",), generator_family="pcdms"
    )
    (row,) = rg.run_gain(config)
    assert [c[0][0].training_stage for c in gen_spy.calls] == ["inpaint", "prior", "refine"]
    final = rg.generator_dir(config, 1.0)
    gen = load_generator(final)
    assert type(gen) is PCDMsPipeline and gen.trained_stages == ("inpaint", "prior", "refine")
    assert row["synthetic_images"] > 0 and row["generator"] == "kept"
    with pytest.raises(rg.ProtocolMismatchError, match="generator_family"):
        rg.run_gain(_config(market, config.out, fractions=(1.0,), arms=("plain+synthetic",)))


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


# --------------------------------------------------------------------------------------------------
# the oracle arm
# --------------------------------------------------------------------------------------------------
def test_oracle_views_show_train_identities_in_their_hidden_views(market: Path, tmp_path: Path) -> None:
    from posereid.experiments.synthetic import (
        hidden_train_views,
        oracle_name,
        read_synthetic_meta,
        write_oracle_views,
    )

    train = sorted(r.name for r in Market1501(market).train if r.has_identity)
    sources = train[::2]
    summary = write_oracle_views(market, tmp_path / "oracle", sources, per_image=2)
    hidden = hidden_train_views(market)
    assert all(len(v) == 2 for v in hidden.values())  # train_views=2 of 4
    recs = Market1501(tmp_path / "oracle").train
    assert summary["images"] == len(recs) == 2 * len(sources)  # as many as the synthetic images would be
    assert sorted(r.name for r in recs) == sorted(oracle_name(n, k) for n in sources for k in range(2))
    meta = {r["name"]: r for r in read_synthetic_meta(tmp_path / "oracle" / "oracle-meta.csv")}
    by_source = {oracle_name(n, k): n for n in sources for k in range(2)}
    for r in recs:
        src_pid, src_cam = parse_market_name(by_source[r.name])[:2]
        assert (r.pid, r.camid + 1) == (src_pid, src_cam)  # under the source's pid, seen by its camera
        assert meta[r.name]["view"] in hidden[r.pid]  # a view the train split never shows
        assert r.name not in train
    with Image.open(recs[0].path) as im:
        assert im.size == (W, H)
    # deterministic, and its own random streams: a second render gives the same bytes
    write_oracle_views(market, tmp_path / "again", sources, per_image=2)
    for r in recs:
        assert (tmp_path / "again" / "bounding_box_train" / r.name).read_bytes() == r.path.read_bytes()
    with pytest.raises(FileExistsError):
        write_oracle_views(market, tmp_path / "oracle", sources)


def test_oracle_needs_the_renderers_metadata(market: Path, tmp_path: Path) -> None:
    import shutil

    from posereid.experiments.synthetic import SyntheticMetadataError, write_oracle_views

    real = tmp_path / "real"  # a Market folder without the renderer's metadata, like real Market-1501
    shutil.copytree(market, real, ignore=shutil.ignore_patterns("synthetic-*"))
    with pytest.raises(SyntheticMetadataError, match="synth-market"):
        write_oracle_views(real, tmp_path / "o")
    config = _config(real, tmp_path / "out", fractions=(1.0,), arms=("strong", "strong+oracle"))
    calls: list = []
    mp = pytest.MonkeyPatch()
    mp.setattr(reid_train, "train_reid", lambda *a, **k: calls.append(a))
    try:
        with pytest.raises(rg.OracleUnavailableError, match="strong\\+oracle.*synth-market"):
            rg.run_gain(config)
    finally:
        mp.undo()
    assert not calls  # refused before any training
    # metadata the renderer no longer reproduces is refused too
    tampered = tmp_path / "tampered"
    shutil.copytree(market, tampered)
    doc = json.loads((tampered / "synthetic-identities.json").read_text())
    doc["identities"]["1"]["build"] += 0.1
    (tampered / "synthetic-identities.json").write_text(json.dumps(doc))
    with pytest.raises(SyntheticMetadataError, match="no longer reproduces identity 1"):
        write_oracle_views(tampered, tmp_path / "o2")


def test_oracle_arm_trains_strong_on_oracle_views_without_a_generator(market: Path, tmp_path: Path) -> None:
    gen_spy, reid_spy = Spy(training.train_generator), Spy(reid_train.train_reid)
    mp = pytest.MonkeyPatch()
    mp.setattr(training, "train_generator", gen_spy)
    mp.setattr(reid_train, "train_reid", reid_spy)
    try:
        config = _config(
            market, tmp_path / "out", fractions=(0.5,), arms=("strong", "strong+oracle"), per_image=2
        )
        rows = {r["arm"]: r for r in rg.run_gain(config)}
    finally:
        mp.undo()
    assert not gen_spy.calls  # the oracle needs no generator
    strong_cfg, oracle_cfg = (args[0] for args, _ in reid_spy.calls)
    assert oracle_cfg.augment == strong_cfg.augment == "strong" and oracle_cfg.steps == strong_cfg.steps
    assert oracle_cfg.synthetic == (str(rg.oracle_dir(config, 0.5)),) and not strong_cfg.synthetic
    oracle = rows["strong+oracle"]
    assert oracle["synthetic_images"] == 2 * oracle["images"] and oracle["generator"] == "oracle"
    kept = set(json.loads((config.work / "subset-0.5" / "subset.json").read_text())["names"])
    from posereid.experiments.synthetic import oracle_name

    names = {p.name for p in (rg.oracle_dir(config, 0.5) / "bounding_box_train").iterdir()}
    assert names == {oracle_name(n, k) for n in kept for k in range(2)}  # from the KEPT images only
    md = (config.out / "results.md").read_text()
    assert "| 50% | strong+oracle | 1 |" in md and "real renders" in md


def test_noise_floor_arm_adds_colour_matched_noise_under_the_kept_pids(
    market: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``strong+noise``: one pixel-noise image per kept image, named for its pid and camera, with that image's
    colour statistics and none of its structure; the re-ID cell trains on them, and a rerun writes the same
    folder."""
    import numpy as np

    reid_spy = Spy(reid_train.train_reid)
    monkeypatch.setattr(reid_train, "train_reid", reid_spy)
    config = _config(market, tmp_path / "g", fractions=(1.0,), arms=("strong", "strong+noise"))
    rows = rg.run_gain(config)
    noise = rg.noise_dir(config, 1.0)
    (cfg,) = [args[0] for args, _ in reid_spy.calls if args[0].synthetic]
    assert [Path(p) for p in cfg.synthetic] == [noise]
    row = next(r for r in rows if r["arm"] == "strong+noise")
    kept = sorted(p.name for p in (market / "bounding_box_train").glob("*.jpg"))
    assert row["generator"] == "noise" and row["synthetic_images"] == len(kept)
    files = sorted((noise / "bounding_box_train").glob("*.jpg"))
    assert len(files) == len(kept)
    for f in files:
        src_stem, k = parse_synthetic_name(f.name)
        src = market / "bounding_box_train" / f"{src_stem}.jpg"
        assert k == 0 and parse_market_name(f.name)[:2] == parse_market_name(src.name)[:2]
        a = np.asarray(Image.open(f).convert("RGB"), dtype=float)
        b = np.asarray(Image.open(src).convert("RGB"), dtype=float)
        assert a.shape == b.shape
        assert (
            np.abs(a.mean((0, 1)) - b.mean((0, 1))).max() < 12
        )  # the person's colours (clipping moves them a little)
        a, b = a - a.mean((0, 1)), b - b.mean((0, 1))  # within each channel: the body's shape
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.3  # none of it
    before = {f.name: f.read_bytes() for f in files}
    (noise / "gain_done.json").unlink()  # unmarked: written again, the same
    assert rg.ensure_noise(config, 1.0, rg.prepare_fraction(config, 1.0)) == len(kept)
    assert {f.name: f.read_bytes() for f in (noise / "bounding_box_train").glob("*.jpg")} == before
    assert (
        "`strong+noise`: the strong baseline + 1 pixel-noise image(s)"
        in (config.out / "results.md").read_text()
    )


def test_floor_soft_and_filtered_arms_use_the_noise_images_the_teacher_and_the_filter(
    market: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``strong+noise+soft`` trains on the floor's noise images with the strong cell's soft labels;
    ``strong+noise+filtered`` on those the identity filter keeps (a manifest is written for the noise folder,
    which has none); the unfiltered floor folder is left whole, and the report and the comparison show both."""
    reid_spy = Spy(reid_train.train_reid)
    monkeypatch.setattr(reid_train, "train_reid", reid_spy)
    arms = ("strong", rg.NOISE_ARM, rg.NOISE_SOFT_ARM, rg.NOISE_FILTERED_ARM)
    config = _config(market, tmp_path / "g", fractions=(1.0,), arms=arms, filter_checkpoint="auto")
    rows = rg.run_gain(config)
    by_arm = {c.extra["arm"]: c for c in (args[0] for args, _ in reid_spy.calls) if c.extra.get("arm")}
    noise, filtered = rg.noise_dir(config, 1.0), rg.noise_dir(config, 1.0, filtered=True)
    assert by_arm[rg.NOISE_SOFT_ARM].synthetic == (str(noise),)
    assert by_arm[rg.NOISE_SOFT_ARM].soft_teacher == rg.teacher_checkpoint(config, 1.0, 0)
    assert by_arm[rg.NOISE_ARM].soft_teacher is None and by_arm[rg.NOISE_FILTERED_ARM].soft_teacher is None
    assert by_arm[rg.NOISE_FILTERED_ARM].synthetic == (str(filtered),)
    all_noise = sorted(p.name for p in (noise / "bounding_box_train").glob("*.jpg"))
    kept = sorted(p.name for p in (filtered / "bounding_box_train").glob("*.jpg"))
    manifest = [json.loads(line) for line in (filtered / "manifest.jsonl").open()]
    assert sorted(m["name"] for m in manifest) == all_noise  # every noise image was scored
    assert sorted(m["name"] for m in manifest if m["kept"]) == kept
    assert all((m["filter_margin"] >= 0) == m["kept"] for m in manifest)
    assert all(m["source_pid"] == parse_market_name(m["name"])[0] for m in manifest)
    row = {r["arm"]: r for r in rows}
    assert row[rg.NOISE_FILTERED_ARM]["synthetic_images"] == len(kept) < len(all_noise)
    assert {row[a]["generator"] for a in arms[1:]} == {"noise"}
    md = (config.out / "results.md").read_text()
    assert f"`{rg.NOISE_SOFT_ARM}`" in md and "`+filtered` arms" in md
    from posereid.experiments.reid_gain.compare import compare_table, load_run

    table = compare_table([load_run(config.out)])
    assert (
        f"| 100% | {rg.NOISE_SOFT_ARM} | pixel noise, soft labels (w = 0.5, T = 1, 25 % of each batch) | 1 |"
        in table
    )
    assert f"| 100% | {rg.NOISE_FILTERED_ARM} | pixel noise, filtered (margin ≥ 0.0) | 1 |" in table


def test_floor_variants_are_read_from_another_run_only_with_the_same_soft_and_filter_settings(
    market: Path, tmp_path: Path
) -> None:
    """``--baselines-from``: the floor's soft-label and filtered cells depend on the soft-label and filter
    settings too, so they are read only from a run that used the same ones; the plain floor always is."""
    arms = ("strong", rg.NOISE_ARM, rg.NOISE_SOFT_ARM, rg.NOISE_FILTERED_ARM)
    src = tmp_path / "src"
    theirs = _config(market, src, fractions=(1.0,), arms=arms, filter_checkpoint="auto", soft_weight=0.5)
    src.mkdir()
    (src / "gain_config.json").write_text(json.dumps(theirs.protocol(), default=str))
    rows = [
        {"fraction": 1.0, "arm": a, "seed": 0, "mAP": 10.0 + i, "rank1": 10.0, "rank5": 0.0, "rank10": 0.0,
         "images": 4, "identities": 2, "synthetic_images": 4, "steps": 3, "batch_size": 8, "wall_s": 1.0,
         "reid_model": "osnet_x0_25", "generator": "noise" if i else ""}
        for i, a in enumerate(arms)
    ]  # fmt: skip
    write_results(src / "results.csv", rows)
    plan = [(rg.fraction_tag(1.0), a, 0) for a in arms]

    def read(**kw) -> set[str]:
        mine = _config(market, tmp_path / "mine", fractions=(1.0,), arms=arms, baselines_from=src, **kw)
        return {r["arm"] for r in rg.import_baselines(mine, plan, set())}

    assert read(filter_checkpoint="auto", soft_weight=0.5) == set(arms)
    assert read(filter_checkpoint="auto", soft_weight=0.25) == set(arms) - {rg.NOISE_SOFT_ARM}
    assert read(filter_checkpoint="auto", filter_threshold=0.1) == set(arms) - {rg.NOISE_FILTERED_ARM}
    # the soft floor's batches follow soft_synthetic_ratio, the other floors' synthetic_ratio
    assert read(filter_checkpoint="auto", soft_synthetic_ratio=None) == set(arms) - {rg.NOISE_SOFT_ARM}
    assert read(filter_checkpoint="auto", synthetic_ratio=0.5) == {"strong", rg.NOISE_SOFT_ARM}
    # a folder written before soft_synthetic_ratio existed mixed its soft arms by synthetic_ratio (uniform here)
    old = json.loads((src / "gain_config.json").read_text())
    del old["soft_synthetic_ratio"]
    (src / "gain_config.json").write_text(json.dumps(old))
    assert read(filter_checkpoint="auto") == set(arms) - {rg.NOISE_SOFT_ARM}
    assert read(filter_checkpoint="auto", soft_synthetic_ratio=None) == set(arms)


# --------------------------------------------------------------------------------------------------
# the strong+synthetic+soft arm: the strong cell model of the same seed and fraction is the teacher
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def soft_run(market: Path, tmp_path_factory: pytest.TempPathFactory):
    """One tiny run of ``strong`` and the soft arm (two seeds), with a spy on the re-ID trainer."""
    mp = pytest.MonkeyPatch()
    reid_spy = Spy(reid_train.train_reid)
    mp.setattr(reid_train, "train_reid", reid_spy)
    config = _config(market, tmp_path_factory.mktemp("soft"), fractions=(0.5,), arms=("strong", rg.SOFT_ARM),
                     seeds=(0, 1), soft_weight=0.7, soft_temperature=2.0)  # fmt: skip
    rows = rg.run_gain(config)
    yield config, rows, [args[0] for args, _ in reid_spy.calls]
    mp.undo()


def test_soft_arm_is_taught_by_the_strong_cell_of_its_seed_and_fraction(soft_run) -> None:
    config, rows, cfgs = soft_run
    strong = [c for c in cfgs if c.extra["arm"] == "strong"]
    soft = [c for c in cfgs if c.extra["arm"] == rg.SOFT_ARM]
    assert len(strong) == len(soft) == 2 and len(cfgs) == 4  # no extra training for the teachers
    for c in soft:
        teacher = rg.teacher_checkpoint(config, 0.5, c.seed)
        assert c.soft_teacher == teacher and teacher.is_file()
        assert cfgs.index(c) > next(i for i, s in enumerate(cfgs) if s in strong and s.seed == c.seed)
        assert (c.soft_weight, c.soft_temperature, c.augment) == (0.7, 2.0, "strong")
        assert (
            c.synthetic_ratio == rg.GainConfig.soft_synthetic_ratio == 0.25
        )  # the soft arms' own default mix
        assert c.synthetic == (str(rg.synthetic_dir(config, 0.5)),) and c.steps == config.reid_steps
        detail = json.loads((config.work / "cells" / f"0.5_{rg.SOFT_ARM}_s{c.seed}.json").read_text())
        assert detail["soft_labels"]["teacher"] == str(teacher) and detail["soft_labels"]["weight"] == 0.7
    for c in strong:  # the strong cells keep their model (and its meta) and nothing else
        assert Path(c.out) == rg.cell_dir(config, 0.5, "strong", c.seed) and not c.synthetic
        assert sorted(p.name for p in Path(c.out).iterdir()) == [
            "model.safetensors",
            "model.safetensors.json",
        ]
    got = {(r["arm"], r["seed"]) for r in rg.read_results(config.out / "results.csv")}
    assert got == {(a, s) for a in ("strong", rg.SOFT_ARM) for s in (0, 1)}
    assert all(
        r["generator"] == "kept" and r["synthetic_images"] > 0 for r in rows if r["arm"] == rg.SOFT_ARM
    )
    md = (config.out / "results.md").read_text()
    assert f"| 50% | {rg.SOFT_ARM} | 2 |" in md and "w = 0.7, T = 2" in md
    assert "25 % of each batch synthetic (in expectation) in the soft-label arms" in md
    (entry,) = [e for e in rg.summarize(rows) if e["arm"] == rg.SOFT_ARM]
    assert entry["d_mAP_strong_n"] == 2  # paired with the strong cells of the same seeds


def test_soft_arm_rerun_reuses_its_cells_and_other_runs_keep_no_model(
    soft_run, market: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, rows, _ = soft_run
    before = (config.out / "results.csv").read_text()
    reid_spy, gen_spy = Spy(reid_train.train_reid), Spy(training.train_generator)
    monkeypatch.setattr(reid_train, "train_reid", reid_spy)
    monkeypatch.setattr(training, "train_generator", gen_spy)
    again = rg.run_gain(_config(market, config.out, fractions=(0.5,), arms=("strong", rg.SOFT_ARM),
                                seeds=(0, 1), soft_weight=0.7, soft_temperature=2.0))  # fmt: skip
    assert not reid_spy.calls and not gen_spy.calls
    assert (config.out / "results.csv").read_text() == before and len(again) == 4
    with pytest.raises(rg.ProtocolMismatchError, match="soft_weight"):
        rg.run_gain(_config(market, config.out, fractions=(0.5,), arms=("strong", rg.SOFT_ARM), seeds=(0, 1)))
    # without the soft arm a strong cell keeps no model (the folder is as large as before)
    plain = _config(market, tmp_path / "plain", fractions=(0.5,), arms=("strong",))
    rg.run_gain(plain)
    (cfg,) = [args[0] for args, _ in reid_spy.calls]
    assert cfg.out is None and not rg.cell_dir(plain, 0.5, "strong", 0).exists()
    detail = json.loads((plain.work / "cells" / "0.5_strong_s0.json").read_text())
    assert "checkpoint" not in detail
    # a folder without a soft-label cell takes other soft-label settings (they shape only those cells)
    reid_spy.calls.clear()
    rg.run_gain(_config(market, plain.out, fractions=(0.5,), arms=("strong",), soft_weight=0.7,
                        soft_synthetic_ratio=None))  # fmt: skip
    assert not reid_spy.calls
    saved = json.loads((plain.out / "gain_config.json").read_text())
    assert (saved["soft_weight"], saved["soft_synthetic_ratio"]) == (0.7, None)
    with pytest.raises(rg.ProtocolMismatchError, match="reid_steps"):  # the others still count
        rg.run_gain(_config(market, plain.out, fractions=(0.5,), arms=("strong",), reid_steps=4))


def test_soft_arm_with_baselines_from_uses_their_strong_models_or_trains_its_own_teacher(
    soft_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run reading its strong cells from another run takes that run's strong cell models as teachers; where
    that run kept none (seed 1 below), it trains the teacher here with the strong cell's settings, once."""
    config, _, _ = soft_run
    generator = rg.generator_dir(config, 0.5)
    reid_spy = Spy(reid_train.train_reid)
    monkeypatch.setattr(reid_train, "train_reid", reid_spy)
    src = tmp_path / "src"  # a copy of the soft run whose seed-1 strong cell kept no model
    import shutil

    shutil.copytree(config.out, src, ignore=shutil.ignore_patterns("generator-*", "synthetic-*", "subset-*"))
    shutil.rmtree(src / "work" / "cells" / "0.5_strong_s1")
    other = _config(config.data, tmp_path / "other", fractions=(0.5,), arms=("strong", rg.SOFT_ARM),
                    seeds=(0, 1), generator=generator, baselines_from=src)  # fmt: skip
    rg.run_gain(other)
    cfgs = [args[0] for args, _ in reid_spy.calls]
    teachers = [c for c in cfgs if not c.synthetic]
    soft = {c.seed: c for c in cfgs if c.synthetic}
    assert soft[0].soft_teacher == rg.teacher_checkpoint(rg.GainConfig(data=config.data, out=src), 0.5, 0)
    (own,) = teachers  # only seed 1's teacher was trained here, as the strong cell would be
    mine = rg.teacher_checkpoint(other, 0.5, 1)
    assert (own.seed, own.augment, own.steps, own.data) == (
        1,
        "strong",
        other.reid_steps,
        str(other.work / "subset-0.5"),
    )
    assert Path(own.out) == mine.parent and soft[1].soft_teacher == mine and mine.is_file()
    got = rg.read_results(other.out / "results.csv")
    assert {r["arm"] for r in got if r.get("read_from")} == {"strong"}  # the strong rows are theirs
    reid_spy.calls.clear()
    rg.run_gain(other)  # a rerun trains nothing, teachers included
    assert not reid_spy.calls


def test_soft_arm_settings_are_validated(market: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="soft_weight"):
        _config(market, tmp_path, arms=("strong", rg.SOFT_ARM), soft_weight=1.5)
    with pytest.raises(ValueError, match="soft_weight"):
        _config(market, tmp_path, soft_weight=float("nan"))
    with pytest.raises(ValueError, match="soft_weight must be a number"):
        _config(market, tmp_path, soft_weight="half")
    with pytest.raises(ValueError, match="soft_temperature"):
        _config(market, tmp_path, arms=("strong", rg.SOFT_ARM), soft_temperature=0.0)
    with pytest.raises(ValueError, match="needs arm 'strong'"):
        _config(market, tmp_path, arms=(rg.SOFT_ARM,))
    from posereid.experiments.cli import build_parser

    parser, _ = build_parser("reid-gain")
    args = parser.parse_args(
        ["--data", "d", "--out", "o", "--soft-weight", "0.25", "--soft-temperature", "3"]
    )
    assert (args.soft_weight, args.soft_temperature) == (0.25, 3.0)
    assert parser.parse_args(["--data", "d", "--out", "o"]).soft_synthetic_ratio == 0.25
    assert (
        parser.parse_args(
            ["--data", "d", "--out", "o", "--soft-synthetic-ratio", "uniform"]
        ).soft_synthetic_ratio
        is None
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "d", "--out", "o", "--soft-synthetic-ratio", "1"])
    for bad in (["--soft-weight", "1.5"], ["--soft-temperature", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["--data", "d", "--out", "o", *bad])


def test_baselines_from_reads_oracle_and_floor_cells_only_at_the_same_synthetic_ratio(
    run, tmp_path: Path
) -> None:
    """The oracle and floor arms add images, so their batches follow ``synthetic_ratio``: a run with another
    ratio reads only the baselines from ``--baselines-from`` (its floor cells are other models) and trains its
    own floor; at the same ratio it reads the floor too."""
    import shutil

    config, rows, _, _ = run
    src = tmp_path / "src"
    shutil.copytree(config.out, src, ignore=shutil.ignore_patterns("work"))
    floor = [{**r, "arm": rg.NOISE_ARM} for r in rows if r["arm"] == "plain"]
    rg.write_results(src / "results.csv", [*rg.read_results(src / "results.csv"), *floor])
    arms = ("plain", rg.NOISE_ARM)
    other = _config(config.data, tmp_path / "other", arms=arms, baselines_from=src, synthetic_ratio=0.25)
    read = rg.import_baselines(other, rg.planned_cells(other), set())
    assert {r["arm"] for r in read} == {"plain"}  # the floor of another mix is trained here
    same = _config(config.data, tmp_path / "same", arms=arms, baselines_from=src)
    assert {r["arm"] for r in rg.import_baselines(same, rg.planned_cells(same), set())} == {
        "plain",
        rg.NOISE_ARM,
    }
