"""Keypoint extraction (mediapipe BlazePose → COCO-18) and ``posereid annotate``."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from posereid.experiments import cli, synthetic
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


# --------------------------------------------------------------------------------------------------
# (e) resumable runs (fake estimator, no mediapipe needed)
# --------------------------------------------------------------------------------------------------
class _FakeEstimator:
    """Keypoints computed from an image's colour, with half pixels and negative joints to round.

    Records the colour index of every image it sees; raises ``fail_with`` on call number
    ``fail_after + 1`` (``fail_after=k`` → k images done, then the "crash"); black images have no person.
    """

    def __init__(self, fail_after: int | None = None, fail_with: type[BaseException] = KeyboardInterrupt):
        self.fail_after, self.fail_with = fail_after, fail_with
        self.seen: list[int] = []

    @staticmethod
    def keypoints(image: Image.Image) -> np.ndarray:
        r, g, _ = (int(v) for v in np.asarray(image)[0, 0])
        kps = np.full((18, 2), -1, np.float32)
        if r == 0:
            return kps  # no person
        j = np.arange(18)
        kps[:, 0] = r / 10 + j * 0.5  # x.5 values exercise round-half-to-even
        kps[:, 1] = g / 4 - j * 0.25  # goes negative for the last joints → missing
        return kps

    def __call__(self, image: Image.Image) -> np.ndarray:
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise self.fail_with("simulated interruption")
        self.seen.append(int(np.asarray(image)[0, 0, 2]))
        return self.keypoints(image)


_COLOURS = {  # name → (r, g, b); b is the image's index, what _FakeEstimator records
    "0001_c1s1_000001_01.png": (31, 17, 1),
    "0002_c1s1_000002_01.png": (0, 0, 2),  # no person
    "0003_c1s1_000003_01.png": (45, 9, 3),
    "0004_c1s1_000004_01.png": (77, 30, 4),
    "0005_c2s1_000005_01.png": (0, 0, 5),  # no person
    "0006_c2s1_000006_01.png": (123, 3, 6),
    "0007_c2s1_000007_01.png": (200, 60, 7),
}
_ANNOTATED = [b for (_, _, b) in _COLOURS.values()]  # indices in listing order


def _make_colour_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in _COLOURS.items():
        Image.new("RGB", (8, 16), colour).save(folder / name)  # PNG: colours survive exactly
    (folder / "0000_c1s1_000000_01.jpg").write_bytes(b"broken")  # unreadable: no row, retried each run
    return folder


def _legacy_csv(folder: Path, path: Path) -> bytes:
    """What the one-pass writer produced: the raw estimator floats straight into write_patn_csv."""
    from posereid.reid_integration.market1501 import load_image, write_patn_csv

    names = sorted(_COLOURS)
    write_patn_csv(path, {n: _FakeEstimator.keypoints(load_image(folder / n)) for n in names})
    return path.read_bytes()


def _run(folder: Path, out: Path, est: _FakeEstimator, **kwargs):
    return annotate_folder(folder, out, estimator=est, progress=False, **kwargs)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize(
    ("k", "exc"), [(0, KeyboardInterrupt), (1, KeyboardInterrupt), (4, RuntimeError), (6, KeyboardInterrupt)]
)
def test_interrupted_run_resumes_to_identical_csv(tmp_path, caplog, k, exc):
    from posereid.reid_integration.annotate import partial_path

    imgs = _make_colour_folder(tmp_path / "imgs")
    expected = _legacy_csv(imgs, tmp_path / "legacy.csv")
    full = _run(imgs, tmp_path / "full.csv", _FakeEstimator())
    assert (tmp_path / "full.csv").read_bytes() == expected  # same bytes as before runs were resumable
    assert (full.images, full.processed, full.no_person, full.unreadable, full.reused) == (8, 7, 2, 1, 0)

    out = tmp_path / "out" / "ann.csv"
    crashing = _FakeEstimator(fail_after=k, fail_with=exc)
    with caplog.at_level("WARNING"), pytest.raises(exc, match="simulated"):
        _run(imgs, out, crashing)
    assert crashing.seen == _ANNOTATED[:k]
    assert not out.exists() and _leftovers(out.parent) == []  # no CSV at all, let alone a half one
    if k:
        saved = read_patn_csv(partial_path(out), image_hw=None)  # the progress file is itself PATN
        assert list(saved) == sorted(_COLOURS)[:k]
        assert "run the same command again to resume" in caplog.text
    caplog.clear()

    rest = _FakeEstimator()
    with caplog.at_level("INFO"):
        s = _run(imgs, out, rest)
    assert rest.seen == _ANNOTATED[k:]  # only the remaining images reached the estimator
    assert out.read_bytes() == expected
    assert (s.processed, s.no_person, s.unreadable, s.reused, s.annotated) == (7, 2, 1, k, 7 - k)
    if k:
        assert f"reusing {k} row(s)" in caplog.text
    assert not partial_path(out).exists()  # done: the progress file is gone

    again = _FakeEstimator()
    mtime = out.stat().st_mtime_ns
    s = _run(imgs, out, again)  # a finished run is a no-op that leaves the CSV alone
    assert again.seen == [] and s.reused == 7 and out.stat().st_mtime_ns == mtime
    assert out.read_bytes() == expected and not partial_path(out).exists()


def test_truncated_last_line_of_progress_file_is_dropped(tmp_path, caplog):
    from posereid.reid_integration.annotate import partial_path

    imgs = _make_colour_folder(tmp_path / "imgs")
    expected = _legacy_csv(imgs, tmp_path / "legacy.csv")
    lines = expected.decode().splitlines(keepends=True)  # header, then rows in listing order
    out = tmp_path / "ann.csv"
    part = partial_path(out)

    # a kill in the middle of row 3: a torn line that does not even parse
    part.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    est = _FakeEstimator()
    with caplog.at_level("WARNING"):
        _run(imgs, out, est)
    assert "truncated last line" in caplog.text
    assert est.seen == _ANNOTATED[2:] and out.read_bytes() == expected

    # a kill just before the newline: the row parses, but without its newline it was never committed, and
    # the next row must start on a line of its own, not continue this one
    out.unlink()
    part.write_text("".join(lines[:3]) + lines[3].rstrip("\n"))
    est = _FakeEstimator(fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        _run(imgs, out, est)
    assert est.seen == [3]
    assert part.read_text() == "".join(lines[:4])  # cut at the last newline, then row 3 appended whole
    est = _FakeEstimator()
    _run(imgs, out, est)
    assert est.seen == _ANNOTATED[3:] and out.read_bytes() == expected

    # only a torn header: as good as empty; a garbled complete line: ignored, its image redone
    out.unlink()
    part.write_text(lines[0][:7])
    est = _FakeEstimator()
    _run(imgs, out, est)
    assert est.seen == _ANNOTATED and out.read_bytes() == expected
    out.unlink()
    part.write_text(lines[0] + lines[1] + "0002_c1s1_000002_01.png:[1, 2]:[3\x00\x00]\n" + lines[3])
    est = _FakeEstimator()
    with caplog.at_level("WARNING"):
        _run(imgs, out, est)
    assert "ignoring 1 malformed line" in caplog.text
    assert est.seen == [_ANNOTATED[1], *_ANNOTATED[3:]] and out.read_bytes() == expected


def test_killed_process_resumes(tmp_path):
    """``kill -9`` (no ``finally``, no fsync): every row flushed before the kill is reused."""
    import subprocess
    import textwrap

    from posereid.reid_integration.annotate import lock_path, partial_path

    imgs = _make_colour_folder(tmp_path / "imgs")
    expected = _legacy_csv(imgs, tmp_path / "legacy.csv")
    out = tmp_path / "ann.csv"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_annotate import _FakeEstimator
        from posereid.reid_integration.annotate import annotate_folder

        class Killer(_FakeEstimator):
            def __call__(self, image):
                if len(self.seen) == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().__call__(image)

        annotate_folder({str(imgs)!r}, {str(out)!r}, estimator=Killer(), progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not out.exists() and _leftovers(tmp_path) == []
    assert len(read_patn_csv(partial_path(out), image_hw=None)) == 3
    assert lock_path(out).exists()  # the dead run's lock file is still there, and is taken over
    est = _FakeEstimator()
    assert _run(imgs, out, est).reused == 3
    assert est.seen == _ANNOTATED[3:] and out.read_bytes() == expected


def test_existing_csv_is_reused_and_never_half_replaced(tmp_path, monkeypatch):
    import os

    from posereid.reid_integration.annotate import partial_path

    imgs = _make_colour_folder(tmp_path / "imgs")
    expected = _legacy_csv(imgs, tmp_path / "legacy.csv")
    last = sorted(_COLOURS)[-1]
    moved = tmp_path / last
    (imgs / last).rename(moved)
    out = tmp_path / "ann.csv"
    _run(imgs, out, _FakeEstimator())
    old = out.read_bytes()

    (imgs / last).write_bytes(moved.read_bytes())  # a new image: only it is annotated
    with monkeypatch.context() as m:  # killed while moving the new CSV into place
        m.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        est = _FakeEstimator()
        with pytest.raises(KeyboardInterrupt):
            _run(imgs, out, est)
    assert est.seen == [7]
    assert out.read_bytes() == old and _leftovers(tmp_path) == []  # the old CSV, whole
    assert list(read_patn_csv(partial_path(out), image_hw=None)) == [last]
    est = _FakeEstimator()
    s = _run(imgs, out, est)
    assert est.seen == [] and s.reused == 7 and out.read_bytes() == expected

    est = _FakeEstimator()
    s = _run(imgs, out, est, overwrite=True)  # start over: everything again, same result
    assert est.seen == _ANNOTATED and s.reused == 0 and out.read_bytes() == expected
    est = _FakeEstimator(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        _run(imgs, out, est, overwrite=True)  # overwrite discards the old CSV at once ...
    assert not out.exists()
    est = _FakeEstimator()
    _run(imgs, out, est)  # ... so resuming an interrupted overwrite reuses only its own rows
    assert est.seen == _ANNOTATED[2:] and out.read_bytes() == expected


def test_rows_for_another_folder_are_refused(tmp_path):
    from posereid.reid_integration.annotate import partial_path

    imgs = _make_colour_folder(tmp_path / "imgs")
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (8, 16), (50, 50, 9)).save(other / "0009_c1s1_000009_01.png")
    out = tmp_path / "ann.csv"
    _run(imgs, out, _FakeEstimator())
    before = out.read_bytes()
    with pytest.raises(MarketFormatError, match=r"not in .*other.*--overwrite"):
        _run(other, out, _FakeEstimator())
    assert out.read_bytes() == before and not partial_path(out).exists()
    with pytest.raises(KeyboardInterrupt):
        _run(imgs, tmp_path / "b.csv", _FakeEstimator(fail_after=2))
    with pytest.raises(MarketFormatError, match=r"b\.csv\.partial has rows for 2 image"):
        _run(other, tmp_path / "b.csv", _FakeEstimator())
    assert len(read_patn_csv(partial_path(tmp_path / "b.csv"), image_hw=None)) == 2  # kept
    est = _FakeEstimator()
    s = _run(other, out, est, overwrite=True)
    assert (
        est.seen == [9]
        and s.processed == 1
        and list(read_patn_csv(out, image_hw=None)) == ["0009_c1s1_000009_01.png"]
    )


def test_two_runs_on_the_same_output_are_refused(tmp_path):
    from posereid.reid_integration.annotate import AnnotateLockedError

    imgs = _make_colour_folder(tmp_path / "imgs")
    out = tmp_path / "ann.csv"
    errors: list[BaseException] = []

    class Meddler(_FakeEstimator):
        def __call__(self, image):
            if not self.seen:
                try:  # a second run while the first one is in its first image
                    _run(imgs, out, _FakeEstimator())
                except AnnotateLockedError as exc:
                    errors.append(exc)
            return super().__call__(image)

    _run(imgs, out, Meddler())
    assert len(errors) == 1 and "another `posereid annotate`" in str(errors[0])
    assert "ann.csv.lock" in str(errors[0])  # names the lock it found taken
    assert out.read_bytes() == _legacy_csv(imgs, tmp_path / "legacy.csv")


def test_cli_interrupt_resume_and_overwrite(tmp_path, monkeypatch, capsys):
    from posereid.reid_integration import cli as reid_cli

    imgs = _make_colour_folder(tmp_path / "imgs")
    out = tmp_path / "ann.csv"
    made: list[_FakeEstimator] = []

    class CliFake(_FakeEstimator):
        fail_next: int | None = 3

        def __init__(self, min_visibility: float = 0.5) -> None:
            super().__init__(fail_after=CliFake.fail_next)
            made.append(self)

        def close(self) -> None:
            pass

    monkeypatch.setattr(reid_cli, "PoseEstimator", CliFake)
    argv = ["annotate", str(imgs), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "ann.csv.partial" in err and "Traceback" not in err
    CliFake.fail_next = None
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "annotated 7/8 images" in printed and "(3 reused from an earlier run)" in printed
    assert made[-1].seen == _ANNOTATED[3:]
    assert out.read_bytes() == _legacy_csv(imgs, tmp_path / "legacy.csv")
    assert cli.main([*argv, "--overwrite"]) == 0
    assert made[-1].seen == _ANNOTATED and "reused" not in capsys.readouterr().out
    parser, _ = cli.build_parser("annotate")
    assert "--overwrite" in parser.format_help() and ".partial" in parser.format_help()
