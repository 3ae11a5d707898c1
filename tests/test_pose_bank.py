"""PoseBank: CSV loading, validity filter, uniform/cluster/view sampling, persistence, seeding."""

import numpy as np
import pytest
from PIL import Image

from posereid.augment.pose_bank import PoseBank, estimate_view, valid_pose_mask
from posereid.models.pose import flip_keypoints, resize_keypoints
from posereid.reid_integration.market1501 import MarketFormatError, format_market_name, write_patn_csv

# A frontal pose in the 128x64 frame (x, y); COCO-18 order.
FRONT = np.array(
    [
        [32, 20], [32, 30], [22, 31], [20, 45], [19, 58], [42, 31], [44, 45], [45, 58], [26, 62],
        [26, 85], [26, 108], [38, 62], [38, 85], [38, 108], [30, 18], [34, 18], [27, 19], [37, 19],
    ],
    dtype=np.float32,
)  # fmt: skip


def make_view(view: str) -> np.ndarray:
    k = FRONT.copy()
    if view == "back":  # the subject's right shoulder is now on the image's right, face hidden
        k[:, 0] = 63 - k[:, 0]
        k[[0, 14, 15]] = -1
    elif view in ("right", "left"):
        k[2, 0], k[5, 0] = 31, 33  # shoulders overlap seen from the side
        k[8, 0], k[11, 0] = 31, 33
        k[0] = [38, 21]  # nose ahead of the neck: facing image-right
        k[[15, 17]] = -1  # far eye and ear hidden
        if view == "left":
            k = flip_keypoints(k, 64)
    return k


def jitter(k: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = k.copy()
    vis = (k >= 0).all(-1)
    out[vis] += rng.integers(-1, 2, size=(int(vis.sum()), 2))
    return out


def make_bank_poses(counts: dict[str, int], seed: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    names, kps, views = [], [], []
    for view, n in counts.items():
        for i in range(n):
            names.append(f"{view}_{i:03d}.jpg")
            kps.append(jitter(make_view(view), rng))
            views.append(view)
    return names, np.stack(kps), views


def test_estimate_view_on_constructed_poses_and_flips():
    for view in ("front", "back", "left", "right"):
        assert estimate_view(make_view(view)) == view
    # a mirror image of a right profile is a left profile; a mirrored frontal pose stays frontal
    assert estimate_view(flip_keypoints(make_view("right"), 64)) == "left"
    assert estimate_view(flip_keypoints(FRONT, 64)) == "front"
    assert estimate_view(flip_keypoints(make_view("back"), 64)) == "back"


def test_from_csv_filters_invalid_poses_and_counts_them(tmp_path):
    names, kps, _ = make_bank_poses({"front": 5, "back": 3})
    ann = dict(zip(names, kps))
    no_hip = FRONT.copy()
    no_hip[[8, 11]] = -1
    one_hip = FRONT.copy()  # a profile hides the far hip: still a usable pose
    one_hip[11] = -1
    no_shoulder = FRONT.copy()
    no_shoulder[[2, 5]] = -1
    sparse = np.full((18, 2), -1, np.float32)
    sparse[[1, 2, 8, 11]] = FRONT[[1, 2, 8, 11]]  # torso only: 4 joints
    ann.update({"nohip.jpg": no_hip, "noshoulder.jpg": no_shoulder, "sparse.jpg": sparse})
    csv = tmp_path / "ann.csv"
    write_patn_csv(csv, ann)

    bank = PoseBank.from_csv(csv, image_hw=(128, 64))
    assert len(bank) == 8 and bank.rejected == 3
    assert sorted(bank.rejected_names) == ["nohip.jpg", "noshoulder.jpg", "sparse.jpg"]
    np.testing.assert_array_equal(bank.get(0), kps[0])  # stored (x, y) in the reference frame
    assert bank.view_counts() == {"front": 5, "back": 3, "left": 0, "right": 0}
    # min_visible is configurable: the torso-only pose passes with min_visible=4
    loose = PoseBank.from_csv(csv, min_visible=4)
    assert len(loose) == 9 and loose.rejected == 2
    assert valid_pose_mask(np.stack([FRONT, no_hip, sparse]), min_visible=4).tolist() == [True, False, True]
    assert valid_pose_mask(one_hip[None]).tolist() == [True]


def test_from_csv_bad_row_names_file_and_line(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("name:keypoints_y:keypoints_x\na.jpg:[1, 2]:[3, 4]\n")
    with pytest.raises(MarketFormatError, match=r"bad\.csv line 2"):
        PoseBank.from_csv(csv)
    only_bad = tmp_path / "invalid.csv"
    write_patn_csv(only_bad, {"x.jpg": np.full((18, 2), -1, np.float32)})
    with pytest.raises(ValueError, match="no valid pose"):
        PoseBank.from_csv(only_bad)


def test_uniform_view_and_cluster_sampling_balance():
    counts = {"front": 60, "back": 4, "left": 4, "right": 4}
    names, kps, views = make_bank_poses(counts)
    bank = PoseBank(kps, names, n_clusters=4, seed=0)
    assert bank.view_counts() == counts
    n = 4000

    def view_share(sampling: str) -> dict[str, float]:
        idx = bank.sample_indices(n, 123, sampling=sampling)
        c = {v: 0 for v in counts}
        for i in idx:
            c[bank.views[i]] += 1
        return {v: c[v] / n for v in counts}

    uni = view_share("uniform")
    assert abs(uni["front"] - 60 / 72) < 0.03
    view = view_share("view")
    for v in counts:  # balanced over the 4 views present
        assert abs(view[v] - 0.25) < 0.03, view
    # k-means on normalised poses separates the views, so rare poses come up far more often
    clus = view_share("cluster")
    rare = 1 - clus["front"]
    assert rare > 2 * (1 - uni["front"]), clus
    labels = bank.cluster_labels()
    assert len(np.unique(labels)) >= 2 and labels.shape == (len(bank),)


def test_view_sampling_only_over_views_present():
    names, kps, _ = make_bank_poses({"front": 30, "left": 2})
    bank = PoseBank(kps, names)
    idx = bank.sample_indices(2000, 0, sampling="view")
    share_left = np.mean([bank.views[i] == "left" for i in idx])
    assert abs(share_left - 0.5) < 0.05
    with pytest.raises(ValueError, match="sampling must be one of"):
        bank.sample(3, 0, sampling="random")


def test_sample_rescales_to_requested_size_and_keeps_missing():
    names, kps, _ = make_bank_poses({"back": 5, "right": 5})
    bank = PoseBank(kps, names)
    small = bank.sample(6, 7, size=(32, 16))
    idx = bank.sample_indices(6, 7)
    np.testing.assert_allclose(small, resize_keypoints(bank.get(idx), (128, 64), (32, 16)), atol=1e-5)
    np.testing.assert_array_equal(bank.sample(6, 7), bank.get(idx))
    miss = (bank.get(idx) < 0).any(-1)
    assert miss.any() and (small[miss] == -1).all()
    vis = small[~miss]
    assert (vis[:, 0] <= 15.5).all() and (vis[:, 1] <= 31.5).all()


def test_seeding_is_reproducible():
    names, kps, _ = make_bank_poses({"front": 20, "back": 5, "left": 5, "right": 5})
    a = PoseBank(kps, names, n_clusters=5, seed=3)
    b = PoseBank(kps, names, n_clusters=5, seed=3)
    np.testing.assert_array_equal(a.cluster_labels(), b.cluster_labels())
    for s in ("uniform", "cluster", "view"):
        np.testing.assert_array_equal(a.sample(50, 11, sampling=s), b.sample(50, 11, sampling=s))
        assert not np.array_equal(a.sample_indices(50, 11, sampling=s), a.sample_indices(50, 12, sampling=s))
    rng1, rng2 = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(a.sample(10, rng1), a.sample(10, rng2))


def test_save_load_round_trip(tmp_path):
    names, kps, _ = make_bank_poses({"front": 10, "back": 3, "left": 3, "right": 3})
    bad = np.full((1, 18, 2), -1, np.float32)
    bank = PoseBank(np.concatenate([kps, bad]), [*names, "bad.jpg"], n_clusters=3, seed=1, min_visible=6)
    bank.cluster_labels()
    path = tmp_path / "bank.npz"
    bank.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["bank.npz"]  # no temp leftovers
    back = PoseBank.load(path)
    np.testing.assert_array_equal(back.keypoints, bank.keypoints)
    assert back.names == bank.names and back.image_hw == bank.image_hw
    assert back.rejected == 1 and back.rejected_names == ["bad.jpg"] and back.min_visible == 6
    assert back.view_counts() == bank.view_counts()
    np.testing.assert_array_equal(back.cluster_labels(), bank.cluster_labels())
    np.testing.assert_array_equal(
        back.sample(20, 4, sampling="cluster"), bank.sample(20, 4, sampling="cluster")
    )
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        PoseBank.load(tmp_path / "junk.npz")


def _saved_bank(tmp_path) -> tuple:
    names, kps, _ = make_bank_poses({"front": 6, "back": 2})
    bank = PoseBank(kps, names, n_clusters=2)
    bank.cluster_labels()
    path = tmp_path / "bank.npz"
    bank.save(path)
    return path, {k: v for k, v in np.load(path).items()}


def _damage(path, how: str, arrays: dict) -> None:
    """Rewrite ``path`` as a damaged bank (``how``): truncated, empty, a .npy, or one field changed."""
    import json

    raw = path.read_bytes()
    if how == "truncated":  # a zip archive cut short: BadZipFile inside np.load
        path.write_bytes(raw[: len(raw) // 2])
        return
    if how == "empty":
        path.write_bytes(b"")
        return
    if how == "npy":
        with open(path, "wb") as fh:
            np.save(fh, arrays["keypoints"])
        return
    arrays = dict(arrays)
    meta = json.loads(str(arrays["meta"]))
    if how == "no-meta":
        del arrays["meta"]
    elif how == "meta-list":
        arrays["meta"] = np.array("[1, 2]")
    elif how == "meta-not-json":
        arrays["meta"] = np.array("{oops")
    elif how == "no-image-hw":
        del meta["image_hw"]
    elif how == "bad-image-hw":
        meta["image_hw"] = [0, "64"]
    elif how == "bad-seed":
        meta["seed"] = -3
    elif how == "keypoints-shape":
        arrays["keypoints"] = arrays["keypoints"][:, :17]
    elif how == "keypoints-text":
        arrays["keypoints"] = np.array(["a", "b"])
    elif how == "clusters-short":
        arrays["clusters"] = arrays["clusters"][:-1]
    elif how == "clusters-negative":
        arrays["clusters"] = -arrays["clusters"] - 1
    elif how == "no-valid-pose":
        arrays["keypoints"] = np.full_like(arrays["keypoints"], -1)
    if "meta" in arrays and how not in ("meta-list", "meta-not-json"):
        arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


@pytest.mark.parametrize(
    "how",
    [
        "truncated", "empty", "npy", "no-meta", "meta-list", "meta-not-json", "no-image-hw", "bad-image-hw",
        "bad-seed", "keypoints-shape", "keypoints-text", "clusters-short", "clusters-negative", "no-valid-pose",
    ],
)  # fmt: skip
def test_load_of_a_damaged_bank_is_a_value_error_naming_the_file(tmp_path, how):
    """Issue 27 item 8: a bad .npz raised BadZipFile (or KeyError, EOFError ...) without the file name."""
    path, arrays = _saved_bank(tmp_path)
    assert len(PoseBank.load(path)) == 8
    _damage(path, how, arrays)
    with pytest.raises(ValueError, match=r"bank\.npz: "):
        PoseBank.load(path)


def test_load_of_a_missing_bank_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.npz"):
        PoseBank.load(tmp_path / "nothing.npz")


def test_from_market_uses_only_the_split_images(tmp_path):
    train = tmp_path / "bounding_box_train"
    train.mkdir()
    names = []
    for pid in (1, 2, 3):
        name = format_market_name(pid, 1, 1, 0, 1)
        Image.new("RGB", (64, 128)).save(train / name)
        names.append(name)
    ann = {n: FRONT for n in names[:2]}
    ann["9999_c1s1_000000_01.jpg"] = make_view("back")  # an image of another split: not used
    csv = tmp_path / "ann.csv"
    write_patn_csv(csv, ann)
    bank = PoseBank.from_market(tmp_path, csv)
    assert sorted(bank.names) == sorted(names[:2])
