"""Keypoint extraction (mediapipe BlazePose → COCO-18) and ``posereid annotate``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from posereid.experiments import cli
from posereid.models.pose import KEYPOINT_NAMES, visible_mask
from posereid.models.pose_estimation import (
    BLAZEPOSE_TO_COCO18,
    MissingExtraError,
    PoseEstimator,
    landmarks_to_coco18,
)
from posereid.reid_integration.annotate import annotate_folder, list_images
from posereid.reid_integration.market1501 import MarketFormatError, read_patn_csv

J = {name: i for i, name in enumerate(KEYPOINT_NAMES)}
NEEDS_MEDIAPIPE = "mediapipe (the posereid[pose] extra) is not installed"


def _grace_hopper() -> Image.Image:
    """A 512x600 portrait shipped in matplotlib's sample data (no download)."""
    cbook = pytest.importorskip("matplotlib.cbook")
    path = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    if not path.is_file():
        pytest.skip("matplotlib sample data not installed")
    return Image.open(path).convert("RGB")


@pytest.fixture(scope="module")
def estimator():
    pytest.importorskip("mediapipe", reason=NEEDS_MEDIAPIPE)
    with PoseEstimator() as est:
        yield est


# --------------------------------------------------------------------------------------------------
# mapping (no mediapipe needed)
# --------------------------------------------------------------------------------------------------
def test_blazepose_mapping_matches_design():
    # DESIGN §2: [0, mid(11,12), 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7]
    assert BLAZEPOSE_TO_COCO18 == (0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
    h, w = 100, 50
    lms = np.zeros((33, 3))
    lms[:, 0] = (np.arange(33) + 0.5) / 40  # u distinct per landmark, inside the image
    lms[:, 1] = 0.5
    lms[:, 2] = 0.9
    lms[11, 2], lms[12, 2] = 0.95, 0.6  # neck takes the smaller shoulder visibility
    lms[13, 2] = 0.3  # l_elbow invisible
    lms[28, 0] = 1.2  # r_ankle outside the image
    kps = landmarks_to_coco18(lms, h, w)
    assert kps.shape == (18, 2) and kps.dtype == np.float32
    np.testing.assert_allclose(kps[J["r_shoulder"]], (lms[12, 0] * w - 0.5, 0.5 * h - 0.5), atol=1e-4)
    np.testing.assert_allclose(kps[J["l_eye"]], (lms[2, 0] * w - 0.5, 0.5 * h - 0.5), atol=1e-4)
    np.testing.assert_allclose(kps[J["neck"], 0], (lms[11, 0] + lms[12, 0]) / 2 * w - 0.5, atol=1e-4)
    assert (kps[J["l_elbow"]] == -1).all() and (kps[J["r_ankle"]] == -1).all()
    assert visible_mask(kps).sum() == 16
    lms[12, 2] = 0.4  # one shoulder invisible -> neck missing too
    kps = landmarks_to_coco18(lms, h, w)
    assert (kps[J["neck"]] == -1).all() and (kps[J["r_shoulder"]] == -1).all()
    assert visible_mask(landmarks_to_coco18(lms, h, w, min_visibility=0.2))[J["l_elbow"]]


# --------------------------------------------------------------------------------------------------
# (a) a real photo
# --------------------------------------------------------------------------------------------------
def test_real_photo_keypoints_are_plausible(estimator):
    im = _grace_hopper()  # measured once by eye: face skin x 160..370, y 150..330; shoulders at y ≈ 420
    kps = estimator(im)
    vis = visible_mask(kps)
    for name in ("nose", "neck", "r_eye", "l_eye", "r_shoulder", "l_shoulder"):
        assert vis[J[name]], f"{name} not found"
    nose = kps[J["nose"]]
    assert 220 <= nose[0] <= 310 and 190 <= nose[1] <= 270
    r_eye, l_eye = kps[J["r_eye"]], kps[J["l_eye"]]
    assert r_eye[0] < nose[0] < l_eye[0]  # subject's right eye is on the image's left
    assert 160 <= r_eye[1] < nose[1] and 160 <= l_eye[1] < nose[1]
    rs, ls = kps[J["r_shoulder"]], kps[J["l_shoulder"]]
    assert rs[0] < 160 and ls[0] > 360 and 350 <= rs[1] <= 500 and 350 <= ls[1] <= 500
    np.testing.assert_allclose(kps[J["neck"]], (rs + ls) / 2, atol=1.0)
    # the hips and legs are below the frame: no joint is invented there
    for name in ("r_hip", "l_hip", "r_knee", "l_knee", "r_ankle", "l_ankle"):
        assert not vis[J[name]], name
    # same person through every input type, and in a batch
    arr = np.asarray(im)
    np.testing.assert_allclose(estimator(arr), kps, atol=1e-3)
    both = estimator.batch([im, np.zeros((128, 64, 3), np.uint8)])
    assert both.shape == (2, 18, 2)
    np.testing.assert_allclose(both[0], kps, atol=1e-3)
    assert (both[1] == -1).all()


# --------------------------------------------------------------------------------------------------
# (b) a rendered synthetic person
# --------------------------------------------------------------------------------------------------
def test_synthetic_person_keypoints_near_truth(estimator):
    synthetic = pytest.importorskip("posereid.experiments.synthetic")
    cameras = synthetic.make_cameras(4, seed=0)
    torso = [J[n] for n in ("neck", "r_shoulder", "l_shoulder", "r_hip", "l_hip")]
    for seed in (1, 2, 3, 4):  # front views at Market size (128x64); the renderer gives exact keypoints
        rng = np.random.default_rng(seed)
        identity = synthetic.sample_identity(rng)
        image, truth = synthetic.render_person(
            identity, synthetic.PoseParams(view="front"), cameras[seed % 4], rng=rng
        )
        kps = estimator(image)
        both = visible_mask(kps)[torso] & visible_mask(truth)[torso]
        assert both.sum() == 5, f"seed {seed}: torso not found"
        err = np.linalg.norm(kps[torso] - truth[torso], axis=-1).mean()
        assert err < 0.15 * image.shape[0], f"seed {seed}: torso error {err:.1f}px"
        # left/right labels agree with the renderer's (subject's right shoulder on the image's left)
        assert kps[J["r_shoulder"], 0] < kps[J["l_shoulder"], 0]


# --------------------------------------------------------------------------------------------------
# (c) annotate_folder
# --------------------------------------------------------------------------------------------------
def _make_folder(folder: Path) -> None:
    folder.mkdir()
    # a Market-sized 128x64 crop of the portrait (squashed, as Market crops are)
    _grace_hopper().resize((64, 128), Image.Resampling.BILINEAR).save(folder / "0001_c1s1_000000_01.jpg")
    Image.new("RGB", (64, 128), (128, 128, 128)).save(folder / "0002_c1s1_000000_01.jpg")
    good = (folder / "0001_c1s1_000000_01.jpg").read_bytes()
    (folder / "0003_c1s1_000000_01.jpg").write_bytes(good[: len(good) // 3])  # truncated
    (folder / "notes.txt").write_text("not an image, not listed")


def test_annotate_folder_counts_and_writes_patn(tmp_path, estimator, caplog):
    _make_folder(tmp_path / "imgs")
    out = tmp_path / "ann" / "market-annotation-test.csv"
    with caplog.at_level("WARNING"):
        s = annotate_folder(tmp_path / "imgs", out, estimator=estimator, progress=False)
    assert (s.images, s.processed, s.no_person, s.unreadable, s.bad_names) == (3, 2, 1, 1, 0)
    assert "0003_c1s1_000000_01.jpg" in caplog.text
    ann = read_patn_csv(out)  # valid PATN in the 128x64 frame
    assert list(ann) == ["0001_c1s1_000000_01.jpg", "0002_c1s1_000000_01.jpg"]
    assert (ann["0002_c1s1_000000_01.jpg"] == -1).all()
    person = ann["0001_c1s1_000000_01.jpg"]
    nose = person[J["nose"]]
    assert 20 <= nose[0] <= 46 and 32 <= nose[1] <= 70  # the face region, scaled to 64x128
    assert visible_mask(person)[[J["r_shoulder"], J["l_shoulder"]]].all()


def test_annotate_folder_plumbing_with_fake_estimator(tmp_path):
    """Counting, key names, recursion and rounding without mediapipe."""
    root = tmp_path / "r"
    (root / "sub").mkdir(parents=True)
    for name in ("a.jpg", "sub/b.png"):
        Image.new("RGB", (40, 30), (255, 0, 0) if "a" in name else (0, 0, 0)).save(root / name)
    (root / "c.jpg").write_bytes(b"")

    def fake(image: Image.Image) -> np.ndarray:
        kps = np.full((18, 2), -1, np.float32)
        if np.asarray(image)[0, 0, 0] > 128:  # "a person" in red images only
            kps[0] = (12.4, 7.6)
        return kps

    s = annotate_folder(root, tmp_path / "flat.csv", estimator=fake, progress=False)
    assert (s.images, s.processed, s.no_person, s.unreadable) == (2, 1, 0, 1)
    s = annotate_folder(root, tmp_path / "all.csv", estimator=fake, recursive=True, progress=False)
    assert (s.images, s.processed, s.no_person, s.unreadable) == (3, 2, 1, 1)
    ann = read_patn_csv(tmp_path / "all.csv", image_hw=(30, 40))
    assert list(ann) == ["a.jpg", "b.png"] and tuple(ann["a.jpg"][0]) == (12, 8)
    Image.new("RGB", (8, 8)).save(root / "sub" / "a.jpg")
    with pytest.raises(MarketFormatError, match="same file name"):
        list_images(root, recursive=True)


# --------------------------------------------------------------------------------------------------
# (d) missing extra
# --------------------------------------------------------------------------------------------------
def test_missing_mediapipe_names_the_extra(tmp_path, monkeypatch, capsys):
    for mod in [m for m in sys.modules if m == "mediapipe" or m.startswith("mediapipe.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # makes `import mediapipe` raise ImportError
    with pytest.raises(MissingExtraError, match=r"pip install posereid\[pose\]") as info:
        PoseEstimator()
    assert isinstance(info.value, ImportError)
    (tmp_path / "imgs").mkdir()
    rc = cli.main(["annotate", str(tmp_path / "imgs"), "--out", str(tmp_path / "a.csv")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "pip install posereid[pose]" in err and "Traceback" not in err
    assert not (tmp_path / "a.csv").exists()


def test_cli_annotate_end_to_end(tmp_path, estimator, capsys):
    _make_folder(tmp_path / "imgs")
    rc = cli.main(["annotate", str(tmp_path / "imgs"), "--out", str(tmp_path / "a.csv"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "annotated 2/3 images" in out and "1 without a person" in out and "1 unreadable" in out
    assert len(read_patn_csv(tmp_path / "a.csv")) == 2
    rc = cli.main(["annotate", str(tmp_path / "nope"), "--out", str(tmp_path / "b.csv")])
    assert rc == 2 and "not a directory" in capsys.readouterr().err
