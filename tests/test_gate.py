"""The generator gate (issue 26 item 2): ``gate_generator``, ``reid-gain``'s stop and ``--force``,
``posereid check-generator``.

Three scored cases, each asserting the verdict: an untrained generator stops ``reid-gain`` (and ``--force``
lets it go on without redoing anything), the shipped asset passes on the demo's kind of people (renderer
seed 0, 64x32), and the shipped asset on people rendered with another seed is near the floor with its style
flagged. The data are tiny (8 train identities) and the re-ID judges are OSNet-x0.25 models of 150 steps.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch

from posereid.experiments import quality
from posereid.experiments import reid_gain as rg
from posereid.experiments.cli import main as cli_main
from posereid.experiments.quality import gate as qgate
from posereid.experiments.reid_gain import gate as rgate
from posereid.experiments.synthetic import SynthConfig, write_synthetic_market
from posereid.reid_integration import train as reid_train
from posereid.reid_integration.market1501 import MarketRecord

ASSET = Path(__file__).resolve().parents[1] / "posereid" / "assets" / "generator-small"
H, W = 64, 32
#: the re-ID judge's settings (the reid-gain run's own, and the one trained for the seed-1 data)
JUDGE = dict(model="osnet_x0_25", steps=150, batch_size=16, lr=0.01)
GATE_PAIRS = 16  # the shipped asset samples with its own few-step sampler (1 call)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two threads spin against each other (the Fréchet
    distance's eigenvalues take seconds instead of a fraction of one)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _people(root: Path, seed: int) -> Path:
    cfg = SynthConfig(n_train_ids=8, n_test_ids=2, per_camera=2, cameras=3, n_distractors=0, n_junk=0,
                      height=H, width=W, seed=seed)  # fmt: skip
    write_synthetic_market(root, cfg, progress=False)
    return root


class Spy:
    """Wraps a real function, recording its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


def _gain_args(data: Path, out: Path, generator: Path, *extra: str) -> list[str]:
    return [
        "reid-gain", "--data", str(data), "--out", str(out), "--fractions", "1", "--arms", "strong+synthetic",
        "--seeds", "0", "--reid-steps", str(JUDGE["steps"]), "--reid-model", JUDGE["model"],
        "--reid-batch-size", str(JUDGE["batch_size"]), "--reid-lr", str(JUDGE["lr"]), "--height", str(H),
        "--width", str(W), "--generator", str(generator), "--steps", "2", "--per-image", "1", "--device", "cpu",
        "--no-progress", "--gate-pairs", str(GATE_PAIRS), *extra,
    ]  # fmt: skip


def _run_cli(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli_main(argv)
    return rc, buf.getvalue()


@pytest.fixture(scope="module")
def seed0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's kind of people: renderer seed 0 at 64x32 (the shipped asset's training style)."""
    return _people(tmp_path_factory.mktemp("seed0"), seed=0)


@pytest.fixture(scope="module")
def stopped(seed0: Path, tmp_path_factory: pytest.TempPathFactory):
    """``reid-gain`` with an untrained generator: the gate's first call (trains its judge, then stops)."""
    tmp = tmp_path_factory.mktemp("stopped")
    from posereid.models.contract import family_class

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # another initialisation than the floor's (seed 0)
        untrained = tmp / "untrained"
        family_class("pidm").from_preset("tiny", image_size=(H, W)).save_pretrained(untrained)
    mp = pytest.MonkeyPatch()
    reid_spy = Spy(reid_train.train_reid)
    mp.setattr(reid_train, "train_reid", reid_spy)
    rc, printed = _run_cli(_gain_args(seed0, tmp / "gain", untrained))
    mp.undo()
    return tmp / "gain", untrained, rc, printed, reid_spy


# --------------------------------------------------------------------------------------------------
# (a) reid-gain stops for an untrained generator; --force goes on; a rerun redoes nothing
# --------------------------------------------------------------------------------------------------
def test_gate_stops_reid_gain_for_an_untrained_generator_and_force_goes_on(
    stopped, seed0, monkeypatch
) -> None:
    out, untrained, rc, printed, reid_spy = stopped
    assert rc == 4, printed
    assert (
        "generator gate: NEAR-FLOOR" in printed and "stopped: the generator gate stopped the run" in printed
    )
    assert "--force" in printed
    # the gate ran before any cell: the only re-ID model trained is its judge, on the kept images
    (judge_cfg,) = (args[0] for args, _ in reid_spy.calls)
    assert judge_cfg.data == str(out / "work" / "subset-1") and Path(judge_cfg.out).name == "filter-model-1"
    assert not rg.read_results(out / "results.csv")
    record = json.loads((out / rgate.GATE_JSON).read_text())["1"]
    result = qgate.GateResult.from_dict(record["result"])
    assert result.verdict == "near-floor" and record["forced"] is False
    assert result.identity < qgate.NEAR_FLOOR_MARGIN
    assert result.ceiling.mAP - result.floor.mAP >= qgate.MIN_IDENTITY_GAP  # the judge could tell
    assert result.settings["split"] == "train" and result.settings["pairs"] == GATE_PAIRS
    kept = {p.name for p in (out / "work" / "subset-1" / "bounding_box_train").iterdir()}
    assert {n for pair in result.settings["pair_names"] for n in pair} <= kept  # only kept train images

    # --force: the verdict is read back (not scored again) and the arm is trained
    gate_spy = Spy(rgate.gate_generator)
    monkeypatch.setattr(rgate, "gate_generator", gate_spy)
    rc, printed = _run_cli(_gain_args(seed0, out, untrained, "--force"))
    assert rc == 0, printed
    assert "generator gate: NEAR-FLOOR" in printed and "--force: training the generator arms" in printed
    assert not gate_spy.calls
    (row,) = rg.read_results(out / "results.csv")
    assert row["arm"] == "strong+synthetic" and row["synthetic_images"] > 0
    assert json.loads((out / rgate.GATE_JSON).read_text())["1"]["forced"] is True

    # a rerun with the same settings: every cell is done, so neither the gate nor any re-ID run happens
    reid_spy = Spy(reid_train.train_reid)
    monkeypatch.setattr(reid_train, "train_reid", reid_spy)
    rc, _ = _run_cli(_gain_args(seed0, out, untrained))
    assert rc == 0 and not reid_spy.calls and not gate_spy.calls
    assert rg.read_results(out / "results.csv") == [row]


# --------------------------------------------------------------------------------------------------
# (b) the shipped asset passes on the demo's kind of people
# --------------------------------------------------------------------------------------------------
def test_gate_passes_the_shipped_asset_on_the_demos_people(stopped, seed0) -> None:
    from posereid.models.contract import load_generator

    out = stopped[0]
    judge = out / "work" / "filter-model-1" / "model.safetensors"  # trained on seed0's train images
    result = quality.gate_generator(load_generator(ASSET, device="cpu"), seed0, judge, n_pairs=GATE_PAIRS)
    text = result.describe()
    assert result.verdict == "pass", text
    assert not result.style, text
    assert result.identity > 0.5, text
    assert result.pose > 0.8 and result.realism < qgate.STYLE_MARGIN, text
    assert result.floor.mAP < result.generator.mAP < result.ceiling.mAP + 0.1
    assert text.startswith("generator gate: PASS") and "identity mAP" in text and "pose PCKh" in text


# --------------------------------------------------------------------------------------------------
# (c) another style: the shipped asset on people rendered with another seed (posereid check-generator)
# --------------------------------------------------------------------------------------------------
def test_check_generator_flags_the_asset_on_people_of_another_style(tmp_path: Path) -> None:
    data = _people(tmp_path / "seed1", seed=1)
    judge_dir = tmp_path / "judge"
    reid_train.train_reid(
        reid_train.ReidTrainConfig(
            data=str(data), height=H, width=W, augment="strong", out=str(judge_dir), device="cpu", **JUDGE
        ),  # fmt: skip
        progress=False,
    )
    rc, printed = _run_cli([
        "check-generator", "--generator", str(ASSET), "--data", str(data), "--reid-checkpoint",
        str(judge_dir / "model.safetensors"), "--n-pairs", str(GATE_PAIRS),
        "--device", "cpu", "--out", str(tmp_path / "check"),
    ])  # fmt: skip
    saved = json.loads((tmp_path / "check" / "gate.json").read_text())
    result = qgate.GateResult.from_dict(saved)
    assert rc == 4, printed
    assert result.verdict == "near-floor" and result.style, printed
    assert result.realism_trusted and result.realism > qgate.STYLE_MARGIN, printed
    assert any(r.startswith("style: its Fréchet distance") for r in result.reasons), printed
    assert result.ceiling.fd_reid < result.generator.fd_reid < result.floor.fd_reid
    assert result.pose > 0.8  # it still follows the pose: the person, not the pose, is lost
    assert "STYLE: the generated images are unlike" in printed and saved["generator_checkpoint"] == str(ASSET)


# --------------------------------------------------------------------------------------------------
# The verdict rule and the pair draw (pure functions)
# --------------------------------------------------------------------------------------------------
def _scores(mAP: float, fd: float = 0.2, sharp: float = 1.0, pckh: float = 0.9) -> qgate.GateScores:
    return qgate.GateScores(mAP=mAP, rank1=mAP, id_margin=0.0, pckh=pckh, fd_reid=fd, sharpness=sharp)


def test_verdict_rule() -> None:
    floor, ceiling = _scores(0.2, fd=1.2, sharp=15.0, pckh=0.0), _scores(0.8, fd=0.2)

    def verdict(gen: qgate.GateScores, trusted: bool = True, **kw):
        return qgate.gate_verdict(floor, gen, ceiling, realism_trusted=trusted, **kw)

    v, style, reasons, pos = verdict(_scores(0.5))
    assert (
        (v, style) == ("pass", False)
        and math.isclose(pos["identity"], 0.5)
        and math.isclose(pos["realism"], 0.0)
    )
    v, *_ = verdict(_scores(0.2 + 0.29 * 0.6))
    assert v == "near-floor"
    assert verdict(_scores(0.2 + 0.29 * 0.6), near_floor_margin=0.2)[0] == "pass"
    assert verdict(_scores(0.5), trusted=True)[0] == "pass"
    # the realism position: 0.5 of the way from the real targets to the floor → style
    v, style, reasons, pos = verdict(_scores(0.5, fd=0.7))
    assert (v, style) == ("pass", True) and math.isclose(pos["realism"], 0.5) and "Fréchet" in reasons[-1]
    assert verdict(_scores(0.5, sharp=0.3))[1] is True  # blurred
    assert verdict(_scores(0.5, fd=0.7), trusted=False)[1] is False  # untrusted realism: no style verdict
    # a judge that cannot tell the real images from the floor's: no identity verdict
    assert qgate.gate_verdict(floor, _scores(0.21), _scores(0.3), realism_trusted=True)[0] == "untrusted"
    assert qgate.gate_verdict(floor, _scores(float("nan")), ceiling, realism_trusted=True)[0] == "untrusted"


def test_pairs_are_spread_over_people_and_each_has_a_match_in_another_camera() -> None:
    recs = [
        MarketRecord(Path(f"{pid:04d}_c{cam}s1_{i:06d}_01.jpg"), pid, cam - 1, 1, i, 1, "train")
        for pid, cams in ((1, (1, 1, 2)), (2, (1, 2)), (3, (1, 1, 1)), (4, (1, 2, 3, 3)))
        for i, cam in enumerate(cams)
    ]
    posed = {r.name for r in recs}
    pairs = qgate.select_pairs(recs, posed, 6, seed=0)
    by_name = {r.name: r for r in recs}
    pids = [by_name[a].pid for a, _ in pairs]
    # identity 2 has no third image, identity 3 one camera only: neither can be recognised
    assert set(pids) == {1, 4} and len(pairs) == 6
    assert pids[:2] in ([1, 4], [4, 1])  # one pair per identity per round
    for a, b in pairs:
        assert by_name[a].pid == by_name[b].pid and a != b
        assert any(
            r.pid == by_name[b].pid and r.name not in (a, b) and r.camid != by_name[b].camid for r in recs
        )
    assert qgate.select_pairs(recs, posed, 6, seed=0) == pairs  # seeded
    unposed = pairs[0][1]
    assert unposed not in {
        b for _, b in qgate.select_pairs(recs, posed - {unposed}, 6, seed=0)
    }  # targets need a pose


# --------------------------------------------------------------------------------------------------
# Pose is scored by the data's judge on reid-gain's kept-images subset too
# --------------------------------------------------------------------------------------------------
def _centre_colours(images: torch.Tensor) -> torch.Tensor:
    """A re-ID judge for the synthetic people without training: mean colours of a vertical centre strip."""
    h, w = images.shape[-2:]
    strip = images.float()[..., h // 5 : h * 9 // 10, w * 3 // 8 : w * 5 // 8]
    return torch.nn.functional.adaptive_avg_pool2d(strip, (4, 1)).flatten(1)


def test_reid_gain_gate_scores_the_real_targets_pose_as_evaluate_generator_does(
    synth_market: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subset folder ``reid-gain`` gates on has no ``synthetic-meta.csv``: the gate took its people for
    photos and scored pose with mediapipe, and the real targets (the ceiling) got PCKh 0.22 on a 64x32 run
    where ``evaluate-generator``'s pose judge gives them 0.96. The ceiling must be the pose judge's reading of
    the real targets, the same number ``evaluate-generator``'s scorer gives for them."""
    from posereid.experiments.quality.judge import PoseJudgeEstimator
    from posereid.experiments.reid_gain import protocol
    from posereid.models.contract import family_class
    from posereid.reid_integration.market1501 import Market1501, find_annotations, write_pairs_csv

    generator = tmp_path / "untrained"
    family_class("pidm").from_preset("tiny", image_size=(H, W)).save_pretrained(generator)
    judge = tmp_path / "judge.safetensors"  # only fingerprinted: the colour judge stands in for it
    judge.write_bytes(b"stand-in")
    monkeypatch.setattr(protocol, "ensure_generator", lambda *a, **k: generator)
    monkeypatch.setattr(protocol, "ensure_filter_model", lambda *a, **k: judge)
    monkeypatch.setattr(qgate, "_reid_judge", lambda features, device: (_centre_colours, "centre colours"))
    config = rg.GainConfig(
        data=synth_market, out=tmp_path / "gain", fractions=(1.0,), arms=("strong+synthetic",), seeds=(0,),
        steps=2, height=H, width=W, device="cpu", progress=False,
    )  # fmt: skip
    gate = rgate.GainGate(force=True, n_pairs=8, report=lambda text: None)
    gate(config, [("1", "strong+synthetic", 0)], device="cpu", source=None)
    result = gate.result
    assert result is not None and result.settings["data"] == str(config.work / "subset-1")
    assert result.ceiling.pckh > 0.8, (result.ceiling.pckh, result.settings["judges"])

    # evaluate-generator's pairs loading and scorer, on the same real targets of the source folder
    pairs_csv = tmp_path / "pairs.csv"
    write_pairs_csv(pairs_csv, [tuple(p) for p in result.settings["pair_names"]])
    ann = find_annotations(synth_market, "train")
    pairs = quality.load_eval_pairs(synth_market, (H, W), pairs=pairs_csv, annotations=ann, n_pairs=None)
    backends = quality.Backends()
    backends.pose = PoseJudgeEstimator.from_pretrained()
    try:
        scorer = quality.QualityScorer(pairs, Market1501(synth_market), backends)
        expected = scorer.score(pairs.target, query_camids=pairs.target_camid)["pckh"]
    finally:
        backends.pose.close()
    assert math.isclose(result.ceiling.pckh, expected, abs_tol=1e-9), (result.ceiling.pckh, expected)
    assert result.settings["synthetic"] and "pose judge" in result.settings["judges"]["pose"]


# --------------------------------------------------------------------------------------------------
# The annotation CSV's frame (--annotation-size) reaches the gate's pairs
# --------------------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by a stand-in to end a call once what it was given is recorded."""


def _stop(*args: object, **kwargs: object) -> None:
    raise _Stop


def test_the_annotation_frame_reaches_the_gates_pairs(
    synth_market: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gate_generator(annotation_hw=)`` loads its pairs in that frame (``None``: the images' own), and
    ``reid-gain``'s gate passes the run's ``annotation_hw``."""
    from types import SimpleNamespace

    from posereid.experiments.quality import pairs as qpairs
    from posereid.models import contract

    pairs_spy = Spy(_stop)
    monkeypatch.setattr(qpairs, "load_eval_pairs", pairs_spy)
    generator = torch.nn.Linear(1, 1)
    generator.image_size = (H, W)
    for frame in ((2 * H, 2 * W), None):
        with pytest.raises(_Stop):
            qgate.gate_generator(generator, synth_market, _centre_colours, n_pairs=4, annotation_hw=frame)
        assert pairs_spy.calls[-1][1]["annotation_hw"] == frame
    gate_spy = Spy(_stop)
    monkeypatch.setattr(rgate, "gate_generator", gate_spy)
    monkeypatch.setattr(contract, "load_generator", lambda path, device: generator)
    config = rg.GainConfig(
        data=synth_market, out=tmp_path / "gain", fractions=(1.0,), arms=("strong+synthetic",), seeds=(0,),
        steps=2, height=H, width=W, device="cpu", progress=False, annotation_hw=(2 * H, 2 * W),
    )  # fmt: skip
    subset = SimpleNamespace(root=synth_market, annotations=synth_market / "market-annotation-train.csv")
    with pytest.raises(_Stop):
        rgate.GainGate()._score(config, subset, tmp_path / "gen", tmp_path / "judge", "cpu", synthetic=True)
    assert gate_spy.calls[-1][1]["annotation_hw"] == (2 * H, 2 * W)
