"""The pose judge for synthetic people (posereid.experiments.quality.judge): training, checkpoints,
heatmap decoding, the estimator surface and the held-out evaluation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from posereid.experiments.quality import judge as J
from posereid.experiments.quality.metrics import detect_keypoints
from posereid.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from posereid.models.pose import NUM_KEYPOINTS, render_pose_maps

TINY = {"channels": (8, 16, 16), "blocks": (0, 1, 1)}


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these nets are tiny, and on a busy 2-core machine two threads run 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_judge(seed: int = 0) -> J.PoseJudge:
    torch.manual_seed(seed)
    return J.PoseJudge(**TINY)


# ------------------------------------------------------------------ training
def test_tiny_training_lowers_the_loss():
    model = {"channels": (16, 16, 32), "blocks": (0, 1, 1)}
    cfg = J.JudgeTrainConfig(
        steps=120,
        batch_size=8,
        lr=1e-2,
        sizes=((64, 32),),
        augment=0.3,
        eval_images=0,
        workers=0,
        model=model,
    )
    judge, summary = J.train_judge(None, cfg, progress=False)
    assert summary["steps"] == 120 and summary["skipped_non_finite"] == 0
    assert "--steps 120" in summary["reproduce"] and "--channels 16 16 32" in summary["reproduce"]
    curve = [loss for _, loss in summary["loss_curve"]]
    assert curve[-1] < 0.75 * curve[0], curve
    # the same held-out batch scored by the untrained (same seed, same init) and the trained judge
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        fresh = J.PoseJudge(**model).eval()
    images, kps = J.heldout_people(16, (64, 32), seed=J.EVAL_SEED + 7)
    target = J.keypoint_heatmaps(kps, (64, 32), 2, 0.025)
    with torch.no_grad():
        before = float(J.focal_loss(fresh(images), target))
        after = float(J.focal_loss(judge(images), target))
    assert after < 0.75 * before, (before, after)
    assert J.judge_metrics(J.PoseJudgeEstimator(judge).detect(images), kps)["pckh"] > 0.2


def test_training_is_deterministic_and_the_render_worker_changes_nothing():
    cfg = J.JudgeTrainConfig(
        steps=4, batch_size=4, sizes=((64, 32), (128, 64)), eval_images=0, workers=0, model=TINY
    )
    a, _ = J.train_judge(None, cfg, progress=False)
    b, _ = J.train_judge(None, dataclasses.replace(cfg, workers=1), progress=False)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_seeds_must_be_disjoint_from_the_datasets():
    with pytest.raises(ValueError, match="10\\*\\*6|1000000"):
        J.JudgeTrainConfig(seed=0)
    with pytest.raises(ValueError, match="1000000"):
        J.evaluate_judge(lambda x: np.zeros((len(x), 18, 2)), seed=3)


# ------------------------------------------------------------------ checkpoints
def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    judge = _tiny_judge()
    judge.train()
    with torch.no_grad():  # move the BatchNorm running statistics off their defaults
        judge(torch.rand(4, 3, 64, 32))
    judge.eval()
    judge.save_pretrained(tmp_path / "j")
    assert (tmp_path / "j" / CONFIG_NAME).is_file() and (tmp_path / "j" / WEIGHTS_NAME).is_file()
    cfg = json.loads((tmp_path / "j" / CONFIG_NAME).read_text())
    assert cfg["_class_name"] == "PoseJudge" and cfg["channels"] == [8, 16, 16]
    loaded = J.PoseJudge.from_pretrained(tmp_path / "j")
    assert not loaded.training
    x = torch.rand(3, 3, 128, 64)
    with torch.no_grad():
        assert torch.equal(judge(judge.working_size(x)), loaded(loaded.working_size(x)))
    k1, s1 = judge.predict(x, threshold=0.05)
    k2, s2 = loaded.predict(x, threshold=0.05)
    np.testing.assert_array_equal(k1, k2)
    np.testing.assert_array_equal(s1, s2)


def test_a_damaged_or_foreign_judge_folder_names_the_file(tmp_path):
    """PoseJudge's checkpoints are the shared CheckpointMixin's: no EMA file (as in the shipped judge)
    loads the plain weights; a config the constructor refuses or another class's folder names config.json."""
    judge = _tiny_judge()
    judge.save_pretrained(tmp_path / "j")
    assert not (tmp_path / "j" / "ema.safetensors").exists()
    J.PoseJudge.from_pretrained(tmp_path / "j")  # use_ema=True falls back to the plain weights
    cfg_path = tmp_path / "j" / CONFIG_NAME
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "output_stride": 3}))
    with pytest.raises(CheckpointError, match=r"config\.json: invalid PoseJudge config \(output_stride"):
        J.PoseJudge.from_pretrained(tmp_path / "j")
    cfg_path.write_text(json.dumps({**cfg, "_class_name": "PIDMModel"}))
    with pytest.raises(CheckpointError, match="is a 'PIDMModel' checkpoint, not PoseJudge"):
        J.PoseJudge.from_pretrained(tmp_path / "j")


# ------------------------------------------------------------------ decoding
def _gaussian(h: int, w: int, x: float, y: float, amp: float, sigma: float = 1.2) -> torch.Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    return amp * torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))


@pytest.mark.parametrize("px, py", [(5.0, 7.0), (5.3, 7.6), (0.0, 15.0), (2.45, 3.55)])
def test_decode_finds_a_peak_at_its_subpixel_location(px, py):
    heat = torch.zeros(1, NUM_KEYPOINTS, 16, 8)
    heat[0, 3] = _gaussian(16, 8, px, py, 0.9)
    kps, scores = J.decode_heatmaps(heat, stride=2, image_hw=(32, 16), threshold=0.3)
    expect = np.array([(px + 0.5) * 2 - 0.5, (py + 0.5) * 2 - 0.5])
    expect = np.clip(expect, 0, [15, 31])
    if px > 0:  # an interior peak is exact; at the border the parabola has no outer neighbour
        np.testing.assert_allclose(kps[0, 3], expect, atol=1e-3)
    else:
        np.testing.assert_allclose(kps[0, 3], expect, atol=1.0)
    assert (kps[0, np.arange(18) != 3] == -1).all()
    assert scores[0, 3] == pytest.approx(float(heat[0, 3].max()))


def test_decode_empty_weak_and_too_few_joints_are_missing():
    empty = torch.zeros(2, NUM_KEYPOINTS, 16, 8)
    kps, _ = J.decode_heatmaps(empty, stride=2, image_hw=(32, 16), threshold=0.3)
    assert (kps == -1).all()
    weak = empty.clone()
    weak[0, 1] = _gaussian(16, 8, 4, 4, 0.2)  # peak below the threshold
    kps, _ = J.decode_heatmaps(weak, stride=2, image_hw=(32, 16), threshold=0.3)
    assert (kps == -1).all()
    one = empty.clone()
    one[0, 1] = _gaussian(16, 8, 4, 4, 0.9)
    kps, _ = J.decode_heatmaps(one, stride=2, image_hw=(32, 16), threshold=0.3, min_joints=1)
    assert (kps[0, 1] >= 0).all()
    kps, _ = J.decode_heatmaps(one, stride=2, image_hw=(32, 16), threshold=0.3, min_joints=2)
    assert (kps == -1).all()  # a person needs at least min_joints joints


def test_training_targets_decode_back_to_the_keypoints():
    _, kps = J.heldout_people(6, (64, 32), seed=J.EVAL_SEED + 1)
    heat = J.keypoint_heatmaps(kps, (64, 32), 2, 0.025)
    assert heat.shape == (6, NUM_KEYPOINTS, 32, 16) and float(heat.max()) == 1.0
    dec, _ = J.decode_heatmaps(heat, stride=2, image_hw=(64, 32), threshold=0.5)
    vis = (kps >= 0).all(-1)
    assert ((dec >= 0).all(-1) == vis).all()
    assert np.abs(dec[vis] - kps[vis]).max() <= 1.0  # the nearest pixel is set to 1: at most a pixel off
    # the Gaussian part is pose.render_pose_maps' (no duplicate renderer)
    k = J.to_heatmap_coords(kps, 2)
    ref = render_pose_maps(k, 32, 16, sigma=0.8, limbs=False)
    assert torch.allclose(torch.where(heat == 1, ref, heat), ref)


# ------------------------------------------------------------------ the estimator surface
def test_estimator_has_the_pose_estimator_call_surface():
    est = J.PoseJudgeEstimator(_tiny_judge().eval(), threshold=0.0)  # untrained: every joint "found"
    img = np.random.default_rng(0).integers(0, 255, (128, 64, 3), dtype=np.uint8)
    kp = est(img)
    assert kp.shape == (18, 2) and kp.dtype == np.float32
    assert (kp[:, 0] <= 63).all() and (kp[:, 1] <= 127).all() and (kp >= 0).all()
    for hw in [(64, 32), (128, 64), (100, 50), (256, 128)]:
        out = est.detect(torch.rand(2, 3, *hw))
        assert out.shape == (2, 18, 2)
        assert (out[..., 0] <= hw[1] - 1).all() and (out[..., 1] <= hw[0] - 1).all() and (out >= 0).all()
    images = torch.rand(3, 3, 64, 32)
    np.testing.assert_allclose(est.batch(images), est.detect(images))
    # QualityScorer's path: metrics.detect_keypoints(estimator, images) calls est(uint8 HxWx3)
    via_scorer = detect_keypoints(est, images)
    assert via_scorer.shape == (3, 18, 2)
    np.testing.assert_allclose(via_scorer, est.detect((images * 255).round() / 255), atol=1e-4)
    with est as same:
        assert same is est
    assert "pose judge" in est.description


def test_missing_judge_directory_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no pose judge here"):
        J.PoseJudgeEstimator.from_pretrained(tmp_path / "nothing")


# ------------------------------------------------------------------ evaluation
def test_a_perfect_predictor_scores_one_and_finds_everyone(tmp_path):
    _, kps = J.heldout_people(24, (64, 32))
    m = J.judge_metrics(kps, kps)
    assert m["pckh"] == 1.0 and m["found_rate"] == 1.0 and m["no_person"] == 0 and m["n_people"] == 24
    # end to end: an oracle that knows every held-out render's keypoints
    table = {}
    for hw in J.SIZES:
        images, k = J.heldout_people(12, hw)
        table.update({im.numpy().tobytes(): kp for im, kp in zip(images, k)})

    def oracle(images: torch.Tensor) -> np.ndarray:
        return np.stack(
            [table.get(im.numpy().tobytes(), np.full((18, 2), -1.0, np.float32)) for im in images]
        )

    result = J.evaluate_judge(oracle, tmp_path, n_images=12, robustness=False)
    assert result["acceptance"]["pass"]
    for row in result["rows"]:
        assert row["pckh"] == 1.0 and row["found_rate"] == 1.0
    assert (tmp_path / J.REPORT_MD).is_file() and "pass" in (tmp_path / J.REPORT_MD).read_text()
    assert json.loads((tmp_path / J.REPORT_JSON).read_text())["acceptance"]["pass"]
    # a predictor that finds nobody
    nobody = J.evaluate_judge(lambda x: np.full((len(x), 18, 2), -1.0), None, n_images=8, sizes=[(64, 32)])
    people = nobody["rows"][0]
    assert people["pckh"] == 0.0 and people["found_rate"] == 0.0 and not nobody["acceptance"]["pass"]
    assert nobody["rows"][2]["set"] == "backgrounds" and nobody["rows"][2]["false_find_rate"] == 0.0


def test_heldout_people_are_deterministic_and_unlike_training():
    a, ka = J.heldout_people(4, (64, 32))
    b, kb = J.heldout_people(4, (64, 32))
    assert torch.equal(a, b) and np.array_equal(ka, kb)
    c, _ = J.heldout_people(4, (64, 32), seed=J.EVAL_SEED + 1)
    assert not torch.equal(a, c)


def test_cli_train_then_evaluate(tmp_path, capsys):
    from posereid.experiments.cli import main as cli_main

    def main(argv: list[str]) -> int:
        return cli_main(["pose-judge", *argv])

    out = tmp_path / "judge"
    rc = main(["train", "--out", str(out), "--steps", "4", "--batch-size", "4", "--channels", "8", "16", "16",
               "--sizes", "64x32", "--eval-images", "8", "--no-progress"])  # fmt: skip
    assert rc == 0
    for name in (CONFIG_NAME, WEIGHTS_NAME, J.TRAINING_NAME, J.REPORT_MD, J.REPORT_JSON):
        assert (out / name).is_file(), name
    training = json.loads((out / J.TRAINING_NAME).read_text())
    assert training["steps"] == 4 and "--steps 4" in training["reproduce"]
    rc = main(["evaluate", "--judge", str(out), "--out", str(tmp_path / "rep"), "--n-images", "8",
               "--sizes", "64x32", "128x64"])  # fmt: skip
    assert rc == 0
    rep = json.loads((tmp_path / "rep" / J.REPORT_JSON).read_text())
    assert {r["size"] for r in rep["rows"]} == {"64x32", "128x64"}
    assert "PCKh@0.5" in capsys.readouterr().out
    assert main(["train", "--out", str(out), "--steps", "2", "--seed", "5"]) == 2  # seed below 10**6


def test_the_warm_up_does_not_depend_on_the_run_length():
    """A time-budget run fixes its length inside the warm-up, so `--steps N` replays it exactly."""
    from posereid.experiments.quality.judge.train import WARMUP_STEPS, _lr_factor

    for step in range(WARMUP_STEPS):
        assert _lr_factor(step, None) == _lr_factor(step, 200) == _lr_factor(step, 5000)
    assert _lr_factor(4999, 5000) == pytest.approx(0.02, abs=1e-3)


def test_evaluate_generator_picks_the_judge_by_data_kind(tmp_path):
    """Synthetic data is scored by the pose judge, real photos by mediapipe, and the status says which."""
    from posereid.experiments.quality.evaluate import _resolve_pose

    _tiny_judge().save_pretrained(tmp_path / "judge")
    est, status = _resolve_pose("auto", synthetic=True, judge_dir=tmp_path / "judge")
    assert isinstance(est, J.PoseJudgeEstimator) and "pose judge" in status and "synthetic data" in status
    est, status = _resolve_pose("judge", synthetic=False, judge_dir=tmp_path / "judge")
    assert isinstance(est, J.PoseJudgeEstimator)
    with pytest.raises(FileNotFoundError, match="no pose judge here"):
        _resolve_pose("judge", synthetic=True, judge_dir=tmp_path / "none")
    est, status = _resolve_pose("auto", synthetic=False)
    assert not isinstance(est, J.PoseJudgeEstimator) and ("mediapipe" in status or "not computed" in status)
    if est is not None:
        est.close()


def test_the_package_re_exports_its_names_and_no_library_module_imports_the_command():
    """``quality.judge`` gives every public name (never a submodule shadowing a function of the same
    name), and only the ``cli`` module imports ``cli``."""
    import importlib
    import pathlib
    import types

    modules = ["model", "heatmaps", "degradations", "renders", "train", "report", "cli"]
    for name in modules:
        importlib.import_module(f"posereid.experiments.quality.judge.{name}")
    for name in J.__all__:
        assert not isinstance(getattr(J, name), types.ModuleType), name
    assert J.degrade is importlib.import_module("posereid.experiments.quality.judge.degradations").degrade
    for path in pathlib.Path(J.__file__).parent.glob("*.py"):
        if path.stem != "cli":
            assert "judge.cli" not in path.read_text(encoding="utf-8"), path


def test_data_targets_read_the_annotation_csv_in_its_own_frame(synth_market, tmp_path):
    """``--data`` with a test annotation CSV written at twice the images' size: with its frame
    (``data_annotation_hw``, ``--annotation-size``) a judge that finds the true keypoints scores 1; read in the
    images' own frame the same judge looked wrong."""
    import shutil

    from posereid.experiments.quality.pairs import load_eval_pairs
    from posereid.reid_integration.market1501 import read_patn_csv, write_patn_csv

    data = tmp_path / "data"
    shutil.copytree(synth_market, data)
    truth = load_eval_pairs(data, (64, 32), n_pairs=None)
    table = {im.numpy().tobytes(): kp for im, kp in zip(truth.target, truth.target_kps)}
    csv = data / "market-annotation-test.csv"
    ann = read_patn_csv(csv, image_hw=None)
    write_patn_csv(
        csv, {n: np.where(k >= 0, 2 * k + 0.5, -1) for n, k in ann.items()}
    )  # pixel-centre aligned

    def judge(images: torch.Tensor) -> np.ndarray:
        return np.stack(
            [table.get(im.numpy().tobytes(), np.full((18, 2), -1.0, np.float32)) for im in images]
        )

    def data_row(**kw) -> dict:
        result = J.evaluate_judge(judge, None, n_images=4, sizes=[(64, 32)], robustness=False, data=data,
                                  data_pairs=None, **kw)  # fmt: skip
        return next(r for r in result["rows"] if r["set"].startswith("data targets"))

    assert data_row(data_annotation_hw=(128, 64))["pckh"] == pytest.approx(1.0)
    assert data_row()["pckh"] < 0.5
