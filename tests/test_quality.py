"""Generator-quality evaluation: metrics, local-weights loading, pose/identity scoring, reports."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from posereid.experiments.quality import EvaluateConfig, evaluate_generator, load_eval_pairs
from posereid.experiments.quality import metrics as qm
from posereid.experiments.quality.report import parse_guidance, parse_sweep
from posereid.models.pose import KEYPOINT_NAMES, missing_pose

HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None

J = {name: i for i, name in enumerate(KEYPOINT_NAMES)}
H, W = 64, 32


def _standing_pose(h: int = H, w: int = W, dx: float = 0.0) -> np.ndarray:
    """A frontal standing person in an h x w frame (fractions of the frame)."""
    frac = {
        "nose": (0.5, 0.12), "neck": (0.5, 0.22), "r_shoulder": (0.35, 0.23), "r_elbow": (0.3, 0.38),
        "r_wrist": (0.28, 0.52), "l_shoulder": (0.65, 0.23), "l_elbow": (0.7, 0.38), "l_wrist": (0.72, 0.52),
        "r_hip": (0.42, 0.55), "r_knee": (0.42, 0.72), "r_ankle": (0.42, 0.9), "l_hip": (0.58, 0.55),
        "l_knee": (0.58, 0.72), "l_ankle": (0.58, 0.9), "r_eye": (0.46, 0.1), "l_eye": (0.54, 0.1),
        "r_ear": (0.42, 0.12), "l_ear": (0.58, 0.12),
    }  # fmt: skip
    kps = missing_pose()
    for name, (fx, fy) in frac.items():
        kps[J[name]] = (fx * (w - 1) + dx, fy * (h - 1))
    return kps


# --------------------------------------------------------------------------------------------------
# SSIM and the body mask
# --------------------------------------------------------------------------------------------------
def test_ssim_identical_is_one_and_noise_lowers_it():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, H, W, generator=g)
    same = qm.ssim_scores(a, a.clone())
    assert torch.allclose(same, torch.ones(3), atol=1e-5)
    noisy = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    worse = qm.ssim_scores(noisy, a)
    assert (worse < 0.95).all()
    much = (a + 0.5 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert (qm.ssim_scores(much, a) < worse).all()  # more noise, lower SSIM


def test_body_mask_covers_joints_and_excludes_far_background():
    kps = _standing_pose()
    m = qm.body_mask(kps[None], H, W)
    assert m.shape == (1, 1, H, W) and set(m.unique().tolist()) <= {0.0, 1.0}
    for x, y in kps:
        assert m[0, 0, round(y), round(x)] == 1
    # the torso between shoulders and hips is filled
    assert m[0, 0, round(0.4 * (H - 1)), round(0.5 * (W - 1))] == 1
    # far background: image corners and the side edges beside the body
    for y, x in [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1), (H // 2, 0), (H // 2, W - 1)]:
        assert m[0, 0, y, x] == 0
    assert 0.1 < m.mean() < 0.75
    # missing joints draw nothing
    assert qm.body_mask(missing_pose()[None], H, W).sum() == 0


def test_mask_ssim_ignores_background_changes():
    g = torch.Generator().manual_seed(1)
    kps = _standing_pose()[None]
    mask = qm.body_mask(kps, H, W)
    a = torch.rand(1, 3, H, W, generator=g)
    b = torch.where(mask.bool(), a, torch.rand(1, 3, H, W, generator=g))  # same person, new background
    assert qm.ssim_scores(b, a) < 0.9
    assert qm.ssim_scores(b, a, mask=mask).item() == pytest.approx(1.0, abs=1e-5)
    c = torch.where(mask.bool(), torch.rand(1, 3, H, W, generator=g), a)  # new person, same background
    assert qm.ssim_scores(c, a, mask=mask) < 0.5


# --------------------------------------------------------------------------------------------------
# LPIPS and FID from local weights
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lpips_dir(tmp_path_factory):
    """A random-weight SqueezeNet backbone (torchvision format) + positive linear layers on disk."""
    import torchvision

    d = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(weights=None)
    torch.save(net.state_dict(), d / qm.lpips_backbone_filename("squeeze"))
    chans = [64, 128, 256, 384, 384, 512, 512]
    torch.save(
        {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(chans)}, d / "squeeze.pth"
    )
    return d


def test_lpips_loads_local_weights_and_scores(lpips_dir):
    lp = qm.Lpips.from_local(lpips_dir, net="squeeze")
    assert lp.sources["linear"].endswith("squeeze.pth") and str(lpips_dir) in lp.sources["linear"]
    # the backbone really is the file's weights, not a fresh random init
    saved = torch.load(lpips_dir / qm.lpips_backbone_filename("squeeze"), weights_only=True)
    assert torch.equal(lp.network.net.slices[0][0].weight, saved["features.0.weight"])
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, 3, H, W, generator=g), torch.rand(3, 3, H, W, generator=g)
    assert torch.equal(lp(a, a.clone()), torch.zeros(3))
    d = lp(a, b)
    assert d.shape == (3,) and (d > 0).all()
    near = lp(a, (a + 0.02 * torch.randn(a.shape, generator=g)).clamp(0, 1))
    assert (near < d).all()
    # a file path (not a directory) works too; the linear layers then come from torchmetrics' wheel
    lp2 = qm.Lpips.from_local(lpips_dir / qm.lpips_backbone_filename("squeeze"), net="squeeze")
    assert lp2.sources["linear"] == str(qm.bundled_lpips_linear("squeeze"))


def test_lpips_missing_or_wrong_weights_errors(tmp_path, monkeypatch, lpips_dir):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(qm.MissingWeightsError) as err:
        qm.Lpips.from_local(None, net="alex")
    msg = str(err.value)
    assert "alexnet-owt-7be5be79.pth" in msg and "--lpips-weights" in msg
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in msg
    with pytest.raises(qm.MissingWeightsError, match="--lpips-weights"):
        qm.Lpips.from_local(tmp_path / "nope.pth", net="alex")
    bad = tmp_path / "bad.pth"
    torch.save({"something.else": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.pth"):
        qm.Lpips.from_local(bad, net="squeeze")


class _TinyFeatures(torch.nn.Module):
    """A small random conv net standing in for Inception in the FID code path."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 5, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), (2, 1)).flatten(1)


def test_fid_with_a_feature_module():
    g = torch.Generator().manual_seed(3)
    real = torch.rand(24, 3, H, W, generator=g)
    fid = qm.FidScorer.from_module(_TinyFeatures(), (H, W))
    fid.add_real(real)
    assert fid.score(real.clone()) == pytest.approx(0.0, abs=1e-4)
    other = torch.rand(24, 3, H, W, generator=g) * 0.5 + 0.5  # brighter images
    far = fid.score(other)
    assert far > 1e-3
    assert fid.score(real.clone()) == pytest.approx(0.0, abs=1e-4)  # the real statistics were kept
    with pytest.raises(ValueError, match="at least 2"):
        fid.score(real[:1])


def test_fid_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(qm.MissingWeightsError) as err:
        qm.FidScorer.from_weights(None)
    msg = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and "--fid-weights" in msg
    assert str(tmp_path / "th" / "hub" / "checkpoints") in msg
    with pytest.raises(qm.MissingWeightsError, match="--fid-weights"):
        qm.FidScorer.from_weights(tmp_path / "missing.pth")
    # the weights are there but torchmetrics' Inception needs torch-fidelity: say so
    from posereid.models.pose_estimation import MissingExtraError

    ckpt = tmp_path / "th" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / qm.FID_WEIGHTS_FILENAMES[0]).write_bytes(b"not used")
    assert qm.find_fid_weights(None) == ckpt / qm.FID_WEIGHTS_FILENAMES[0]
    assert qm.find_fid_weights(ckpt) == ckpt / qm.FID_WEIGHTS_FILENAMES[0]  # a directory holding it
    monkeypatch.setattr(qm, "torch_fidelity_available", lambda: False)
    with pytest.raises(MissingExtraError, match="pip install torch-fidelity"):
        qm.FidScorer.from_weights(None)


# --------------------------------------------------------------------------------------------------
# Pose fidelity (pure scoring; the estimator is a separate step)
# --------------------------------------------------------------------------------------------------
def test_pckh_perfect_shifted_and_no_person():
    t = np.stack([_standing_pose(128, 64)] * 3)
    head = 2 * np.linalg.norm(t[0, J["neck"]] - t[0, J["nose"]])
    s = qm.pose_fidelity(t.copy(), t)
    assert s["pckh"] == 1.0 and s["joint_error_px"] == pytest.approx(0.0) and s["no_person"] == 0
    assert s["head_rule"] == 3 and s["n_joints"] == 3 * 18
    small = t.copy()
    small[..., 0] += 0.4 * head  # within 0.5 x head: still correct
    assert qm.pose_fidelity(small, t)["pckh"] == 1.0
    big = t.copy()
    big[..., 0] += 0.6 * head
    r = qm.pose_fidelity(big, t)
    assert r["pckh"] == 0.0 and r["joint_error_px"] == pytest.approx(0.6 * head, rel=1e-4)
    mixed = t.copy()
    mixed[1] = -1  # the detector found nobody in image 1
    mixed[2, :9, 0] += 0.6 * head  # 9 joints of image 2 are off
    m = qm.pose_fidelity(mixed, t)
    assert m["no_person"] == 1
    assert m["pckh"] == pytest.approx((18 + 0 + 9) / 54)
    assert m["pckh_found"] == pytest.approx((18 + 9) / 36)
    undetected = t.copy()
    undetected[0, J["l_wrist"]] = -1  # a missed joint is wrong, not ignored
    assert qm.pose_fidelity(undetected[:1], t[:1])["pckh"] == pytest.approx(17 / 18)


def test_pckh_normaliser_falls_back_to_torso():
    t = _standing_pose(128, 64)
    size, rule = qm.pose_normaliser(t[None])
    assert rule[0] == "head" and size[0] == pytest.approx(2 * np.linalg.norm(t[1] - t[0]))
    no_nose = t.copy()
    no_nose[J["nose"]] = -1
    size, rule = qm.pose_normaliser(no_nose[None])
    torso = np.linalg.norm(t[J["neck"]] - (t[J["r_hip"]] + t[J["l_hip"]]) / 2)
    assert rule[0] == "torso" and size[0] == pytest.approx(0.5 * torso)
    legs_only = missing_pose()
    legs_only[[J["r_knee"], J["r_ankle"]]] = t[[J["r_knee"], J["r_ankle"]]]
    s = qm.pose_fidelity(legs_only[None], legs_only[None])
    assert s["no_scale"] == 1 and s["n_joints"] == 0 and np.isnan(s["pckh"])


def test_detect_keypoints_with_upscale_maps_back():
    seen = []

    def estimator(im: np.ndarray) -> np.ndarray:  # a keypoint at a fixed fraction of the frame
        seen.append(im.shape)
        k = missing_pose()
        k[0] = (0.25 * im.shape[1] - 0.5, 0.5 * im.shape[0] - 0.5)
        return k

    imgs = torch.rand(2, 3, 32, 16)
    out1 = qm.detect_keypoints(estimator, imgs)
    out4 = qm.detect_keypoints(estimator, imgs, upscale=4)
    assert seen[0] == (32, 16, 3) and seen[-1] == (128, 64, 3)
    np.testing.assert_allclose(out1[:, 0], out4[:, 0], atol=1e-4)
    assert (out4[:, 1:] == -1).all()


# --------------------------------------------------------------------------------------------------
# Identity fidelity
# --------------------------------------------------------------------------------------------------
def _colour_features(images: torch.Tensor) -> torch.Tensor:
    """A deterministic identity feature: mean colour of the upper and lower halves (L2-normalised)."""
    h = images.shape[-2] // 2
    f = torch.cat([images[..., :h, :].mean((-1, -2)), images[..., h:, :].mean((-1, -2))], dim=1)
    return torch.nn.functional.normalize(f - 0.4, dim=1)


def test_identity_fidelity_with_deterministic_features():
    colours = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.9, 0.1), 3: (0.1, 0.1, 0.9)}
    g = torch.Generator().manual_seed(4)

    def person(pid: int, n: int) -> torch.Tensor:
        c = torch.tensor(colours[pid]).view(1, 3, 1, 1)
        return (c + 0.05 * torch.randn(n, 3, H, W, generator=g)).clamp(0, 1)

    ref = torch.cat([person(p, 4) for p in (1, 2, 3)])
    ref_pids = np.repeat([1, 2, 3], 4)
    gallery = _colour_features(ref)
    good = _colour_features(torch.cat([person(1, 2), person(2, 2)]))
    s = qm.identity_fidelity(good, np.array([1, 1, 2, 2]), gallery, ref_pids).summary()
    assert s["own_centroid_cos"] > 0.99 and s["closer_to_own"] == 1.0 and s["margin"] > 0.3
    # the right colours under the wrong label: closer to another identity
    swapped = qm.identity_fidelity(good, np.array([2, 2, 1, 1]), gallery, ref_pids).summary()
    assert swapped["closer_to_own"] == 0.0 and swapped["margin"] < 0
    # a query whose pid has no reference image is skipped, not scored
    lone = qm.identity_fidelity(good[:1], np.array([7]), gallery, ref_pids).summary()
    assert lone["n_scored"] == 0 and lone["n_skipped"] == 1
    # exclusion: a real reference image scored against its own centroid leaves itself out
    row = 0
    inc = qm.identity_fidelity(gallery[row : row + 1], ref_pids[:1], gallery, ref_pids)
    exc = qm.identity_fidelity(
        gallery[row : row + 1], ref_pids[:1], gallery, ref_pids, exclude=np.array([[row]])
    )
    centroid_wo = torch.nn.functional.normalize(gallery[1:4].double().sum(0), dim=0)
    assert exc.own[0] == pytest.approx(float(gallery[0].double() @ centroid_wo), abs=1e-6)
    assert inc.own[0] > exc.own[0]


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------
def test_parse_guidance_and_sweep():
    assert parse_guidance("2") == (2.0, 2.0)
    assert parse_guidance("1.5:3") == (1.5, 3.0)
    assert parse_guidance(2) == (2.0, 2.0)
    with pytest.raises(ValueError, match="pose:appearance"):
        parse_guidance("a:b")
    grid = parse_sweep(["steps=10,20,50", "guidance=1,2,1:3"])
    assert grid == {"steps": [10, 20, 50], "guidance": [(1.0, 1.0), (2.0, 2.0), (1.0, 3.0)]}
    for bad in (["steps=ten"], ["cfg=1"], ["steps="], ["steps=0"]):
        with pytest.raises(ValueError, match="--sweep"):
            parse_sweep(bad)


# --------------------------------------------------------------------------------------------------
# The real mediapipe estimator on synthetic people
# --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_MEDIAPIPE, reason="mediapipe (the posereid[pose] extra) is not installed")
def test_pose_fidelity_with_mediapipe_on_synthetic_people():
    from posereid.experiments import synthetic as syn
    from posereid.models.pose_estimation import PoseEstimator

    rng = np.random.default_rng(0)
    cams = syn.make_cameras(2, seed=0)
    ims, kps = [], []
    for i in range(6):
        pose = syn.sample_pose(rng, views=(syn.VIEWS[i % 4],))
        im, k = syn.render_person(syn.sample_identity(rng), pose, cams[i % 2], rng=rng)
        ims.append(im), kps.append(k)
    x = torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).float() / 255
    truth = np.stack(kps)
    with PoseEstimator() as est:
        real = qm.pose_fidelity(qm.detect_keypoints(est, x), truth)
        shifted = qm.pose_fidelity(qm.detect_keypoints(est, torch.roll(x, 12, dims=-1)), truth)
        blank = qm.pose_fidelity(qm.detect_keypoints(est, torch.full_like(x, 0.5)), truth)
    assert real["no_person"] <= 3 and real["pckh_found"] > 0.6  # people in the right pose are found
    assert shifted["pckh"] < real["pckh"] / 2  # the same people 12 px off the target pose score far lower
    assert blank["no_person"] == 6 and blank["pckh"] == 0.0


# --------------------------------------------------------------------------------------------------
# End to end on a tiny synthetic Market folder with the tiny generator
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_generator():
    from posereid.models.pidm import PIDMPipeline

    torch.manual_seed(1)  # differs from the floor's fixed seed, so "trained" and "untrained" differ
    return PIDMPipeline.from_preset("tiny").eval()


def _strict_json(path):
    def no_nan(c):
        raise AssertionError(f"non-standard JSON constant {c}")

    return json.loads(path.read_text(), parse_constant=no_nan)


def test_evaluate_generator_end_to_end(synth_market, tiny_generator, lpips_dir, tmp_path):
    out = tmp_path / "report"
    config = EvaluateConfig(
        data=synth_market, reid_checkpoint=_colour_features, fid_weights=_TinyFeatures(), lpips_weights=lpips_dir,
        lpips_net="squeeze", pose_estimator="auto", steps=2, n_pairs=4, seed=0, out_dir=out,
        sweep={"steps": [1, 2], "guidance": [1, "1:2"]}, batch_size=8,
    )  # fmt: skip
    evaluate_generator(tiny_generator, config)
    for name in ("report.md", "report.json", "sheet.png", "sweep.png"):
        assert (out / name).is_file(), name
    doc = _strict_json(out / "report.json")
    assert doc["data"]["pairs_used"] == 4 and doc["data"]["pairs_origin"].endswith("market-pairs-test.csv")
    ceil, gen, floor = (doc["systems"][k] for k in ("real (ceiling)", "trained", "untrained (floor)"))
    # the ceiling is the real target scored as if generated
    assert ceil["ssim"] == pytest.approx(1.0, abs=1e-3) and ceil["mask_ssim"] == pytest.approx(1.0, abs=1e-3)
    assert ceil["lpips"] == pytest.approx(0.0, abs=1e-6) and ceil["mask_lpips"] == pytest.approx(
        0.0, abs=1e-6
    )
    for s in (gen, floor):
        # FID's ordering is tested with real statistics in test_fid_with_a_feature_module; here the random
        # 6-channel stand-in on 4 pairs cannot rank images (an untrained model's scored 0.046 < 0.047 real)
        assert s["ssim"] < 0.5 and s["lpips"] > ceil["lpips"] and np.isfinite(s["fid"]) and ceil["fid"] >= 0
        assert s["sec_per_image"] > 0
    assert gen["ssim"] != floor["ssim"]  # a different generator than the fresh one
    # the realism metrics (tests/test_realism.py checks their behaviour) are in every row
    for sys_ in (ceil, gen, floor):
        assert {"fd_reid", "fd_judge", "sharpness_ratio"} <= set(sys_) and sys_["fd_judge"] >= 0
    assert ceil["sharpness_ratio"] == pytest.approx(1.0)
    assert doc["metric_status"]["realism (Fréchet distance, sharpness)"].startswith("computed")
    assert set(doc["realism_check"]) >= {"fd_reid", "fd_judge", "sharpness_ratio", "trusted"}
    assert ceil["own_centroid_cos"] > floor["own_centroid_cos"]  # real people match their identity better
    assert np.isfinite(gen["rank1"]) and np.isfinite(gen["mAP"])  # the queries had gallery matches
    if HAS_MEDIAPIPE:
        assert doc["metric_status"]["pose (PCKh)"].startswith("computed")
        for sys_ in (ceil, gen, floor):  # tiny 32x16 images: the detector mostly fails, but it is counted
            assert sys_["pose_n_images"] == 4 and np.isfinite(sys_["pckh"])
        assert gen["pckh"] <= ceil["pckh"]
    else:
        assert doc["metric_status"]["pose (PCKh)"].startswith("not computed")
    assert [(r["steps"], tuple(r["guidance"])) for r in doc["sweep"]] == [
        (1, (1.0, 1.0)), (1, (1.0, 2.0)), (2, (1.0, 1.0)), (2, (1.0, 2.0)),
    ]  # fmt: skip
    # the sweep point equal to the main setting reproduces it exactly (per-pair seeds)
    res2 = evaluate_generator(
        tiny_generator,
        EvaluateConfig(
            data=synth_market, reid_checkpoint=_colour_features, pose_estimator=None, steps=1, guidance="1:2",
            n_pairs=4, seed=0, include_ceiling=False, include_floor=False,
        ),
    )  # fmt: skip
    assert res2["systems"]["trained"]["ssim"] == pytest.approx(doc["sweep"][1]["ssim"], abs=1e-6)
    md = (out / "report.md").read_text()
    assert "| SSIM ↑ | 1.0000 |" in md and "sweep.png" in md and "sheet.png" in md
    assert (
        "| Fréchet distance, pose-judge features ↓ |" in md and "| Fréchet distance, re-ID features ↓ |" in md
    )
    assert "| sharpness ratio (Laplacian) → 1 | 1.0000 |" in md and "Realism check" in md
    with Image.open(out / "sheet.png") as im:
        # 4 pairs x 5 columns (source, pose, generated, untrained, real) of 32x16 images enlarged 5x, 4 px gaps
        assert im.size == (5 * (80 + 4), 14 + 4 * (160 + 4))
    with Image.open(out / "sweep.png") as im:
        assert im.width > 400


def test_missing_weights_reported_or_raised(synth_market, tiny_generator, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    config = EvaluateConfig(
        data=synth_market, pose_estimator=None, steps=1, n_pairs=2, include_ceiling=False, include_floor=False,
        out_dir=tmp_path / "r",
    )  # fmt: skip
    res = evaluate_generator(tiny_generator, config)
    status = res["metric_status"]
    assert (
        status["LPIPS"].startswith("not computed (missing weights")
        and "alexnet-owt-7be5be79.pth" in status["LPIPS"]
    )
    assert status["FID"].startswith("not computed") and "--fid-weights" in status["FID"]
    assert status["identity (re-ID)"].startswith("not computed")
    assert "lpips" not in res["systems"]["trained"] and "fid" not in res["systems"]["trained"]
    assert "alexnet-owt-7be5be79.pth" in (tmp_path / "r" / "report.md").read_text()
    # an explicit path to a missing file is an error, raised before any generation
    with pytest.raises(qm.MissingWeightsError, match="--lpips-weights"):
        evaluate_generator(
            tiny_generator, EvaluateConfig(synth_market, lpips_weights=tmp_path / "no" / "x.pth")
        )
    with pytest.raises(qm.MissingWeightsError, match="--fid-weights"):
        evaluate_generator(tiny_generator, EvaluateConfig(synth_market, fid_weights=tmp_path / "nope.pth"))


def test_evaluate_config_checks_its_fields_and_normalises_them(tmp_path):
    cfg = EvaluateConfig(
        data=str(tmp_path), guidance="1:2", out_dir=str(tmp_path / "r"), sweep={"steps": [1], "guidance": [1]}
    )
    assert cfg.guidance == (1.0, 2.0) and cfg.out_dir == tmp_path / "r" and cfg.data == tmp_path
    assert cfg.sweep == {"steps": (1,), "guidance": ((1.0, 1.0),)}
    bad = {
        "steps": {"steps": 0},
        "batch_size": {"batch_size": -1},
        "seed": {"seed": -1},
        "n_pairs": {"n_pairs": 0},
        "pose_upscale": {"pose_upscale": 0},
        "sheet_rows": {"sheet_rows": 0},
        "guidance": {"guidance": "nan"},
        "sampler": {"sampler": "no-such-sampler"},
        "lpips_net": {"lpips_net": "resnet"},
        "pose_estimator": {"pose_estimator": "openpose"},
        "sweep": {"sweep": {"cfg": [1]}},
    }
    for field, kw in bad.items():
        with pytest.raises(ValueError, match=f"EvaluateConfig.{field}"):
            EvaluateConfig(data=tmp_path, **kw)
    # the keyword form builds the same config; keywords replace a given config's fields
    with pytest.raises(ValueError, match="EvaluateConfig.steps"):
        evaluate_generator(None, tmp_path, steps=0)
    with pytest.raises(ValueError, match="EvaluateConfig.steps"):
        evaluate_generator(None, cfg, steps=0)


def test_pair_selection_is_seeded_and_skips_are_counted(synth_market, tmp_path):
    a = load_eval_pairs(synth_market, (32, 16), n_pairs=3, seed=0)
    b = load_eval_pairs(synth_market, (32, 16), n_pairs=3, seed=0)
    c = load_eval_pairs(synth_market, (32, 16), n_pairs=3, seed=5)
    assert a.names == b.names and a.names != c.names and len(a) == 3
    assert a.source.shape == (3, 3, 32, 16) and a.target_kps.shape == (3, 18, 2)
    assert torch.equal(a.target, b.target)
    # keypoints follow the resize from the 64x32 files to the generator's 32x16
    full = load_eval_pairs(synth_market, (64, 32), n_pairs=3, seed=0)
    vis = (full.target_kps >= 0).all(-1)
    np.testing.assert_allclose((a.target_kps[vis] + 0.5) * 2 - 0.5, full.target_kps[vis], atol=1e-4)
    pairs = tmp_path / "pairs.csv"
    first = a.names[0]
    pairs.write_text(f"from,to\n{first[0]},{first[1]}\nmissing_c1s1_000000_01.jpg,{first[1]}\n")
    d = load_eval_pairs(synth_market, (32, 16), pairs=pairs, n_pairs=None)
    assert d.names == [first] and d.skipped["image_not_found"] == 1


def test_pairs_read_keypoints_in_the_given_annotation_frame(synth_market, tmp_path):
    """A CSV written in a frame twice the images' size: with ``annotation_hw`` its keypoints land in image
    coordinates; without it they are read in the images' own frame (twice too far, the farther ones dropped)."""
    from posereid.reid_integration.market1501 import MarketFormatError, read_patn_csv, write_patn_csv

    native = load_eval_pairs(synth_market, (H, W), n_pairs=4, seed=0)
    ann = read_patn_csv(synth_market / "market-annotation-test.csv", image_hw=None)
    big = tmp_path / "annotation-128x64.csv"
    write_patn_csv(big, {n: np.where(k >= 0, 2 * k, -1) for n, k in ann.items()})
    scaled = load_eval_pairs(
        synth_market, (H, W), annotations=big, n_pairs=4, seed=0, annotation_hw=(2 * H, 2 * W)
    )
    assert scaled.names == native.names
    vis = (native.target_kps >= 0).all(-1)
    assert vis.sum() > 10 and np.array_equal(vis, (scaled.target_kps >= 0).all(-1))
    # 2k in the 128x64 frame is k - 0.25 in the 64x32 images (pixel-centre aligned)
    np.testing.assert_allclose(scaled.target_kps[vis], native.target_kps[vis] - 0.25, atol=1e-4)
    # without the frame: the coordinates are taken as the images' own (today's reading), so they differ
    wrong = load_eval_pairs(synth_market, (H, W), annotations=big, n_pairs=4, seed=0)
    wvis = (wrong.target_kps >= 0).all(-1)
    assert wrong.names == native.names and wvis.sum() < vis.sum()
    np.testing.assert_allclose(wrong.target_kps[wvis], 2 * native.target_kps[wvis], atol=1e-4)
    # a frame the keypoints do not fit: the rows are skipped (strict: an error naming the file)
    with pytest.raises(MarketFormatError, match="annotation-128x64.csv"):
        load_eval_pairs(synth_market, (H, W), annotations=big, n_pairs=4, annotation_hw=(H, W), strict=True)


def test_evaluate_config_checks_the_annotation_frame(tmp_path):
    assert EvaluateConfig(data=tmp_path, annotation_hw=[128, 64]).annotation_hw == (128, 64)
    for bad in ((128,), (0, 64), (128.0, 64)):
        with pytest.raises(ValueError, match="EvaluateConfig.annotation_hw"):
            EvaluateConfig(data=tmp_path, annotation_hw=bad)


def test_cli_writes_report(synth_market, tiny_generator, lpips_dir, tmp_path, capsys):
    from posereid.experiments.cli import main

    gen_dir = tmp_path / "gen"
    tiny_generator.save_pretrained(gen_dir)
    out = tmp_path / "cli_out"
    args = [
        "evaluate-generator", "--generator", str(gen_dir), "--data", str(synth_market), "--out", str(out),
        "--n-pairs", "2", "--steps", "1", "--guidance", "1.5:2", "--no-compare-untrained", "--no-pose",
        "--lpips-weights", str(lpips_dir), "--lpips-net", "squeeze", "--sweep", "steps=1,2", "guidance=1",
        "--annotation-size", "64x32", "--device", "cpu",
    ]  # fmt: skip
    assert main(args) == 0
    doc = _strict_json(out / "report.json")
    assert doc["config"]["guidance"] == [1.5, 2.0] and doc["config"]["steps"] == 1
    assert doc["config"]["annotation_hw"] == [64, 32]  # the CSV's frame, as given
    assert set(doc["systems"]) == {"real (ceiling)", "trained"} and len(doc["sweep"]) == 2
    assert "lpips" in doc["systems"]["trained"] and (out / "sweep.png").is_file()
    assert "report:" in capsys.readouterr().out
    # a flag pointing to a missing weights file: a clear error naming the flag, exit code 2
    assert main([*args[:-2], "--fid-weights", str(tmp_path / "nope.pth")]) == 2
    assert "--fid-weights" in capsys.readouterr().err
    assert main([*args[:-2], "--sweep", "steps=x"]) == 2
