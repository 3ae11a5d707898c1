"""Market-1501 folder, image, PATN CSV and pairs CSV I/O."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from posereid.reid_integration.market1501 import (
    PATN_HEADER,
    RELEASE_DIR,
    SPLIT_DIRS,
    ImageReadError,
    Market1501,
    MarketFormatError,
    MarketWriter,
    check_image,
    format_market_name,
    load_image,
    parse_market_name,
    read_pairs_csv,
    read_patn_csv,
    write_pairs_csv,
    write_patn_csv,
)


def _person(h: int = 128, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 200, np.uint8)
    img[h // 5 : h - 4, w // 3 : 2 * w // 3] = rng.integers(0, 255, 3, dtype=np.uint8)
    return img


# --------------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, parsed",
    [
        ("0002_c1s1_000451_03.jpg", (2, 1, 1, 451, 3)),
        ("-1_c1s1_000401_03.jpg", (-1, 1, 1, 401, 3)),
        ("0000_c6s3_094992_01.jpg", (0, 6, 3, 94992, 1)),
        ("1501_c6s4_001902_01.jpg", (1501, 6, 4, 1902, 1)),
    ],
)
def test_parse_and_format_round_trip(name, parsed):
    assert parse_market_name(name) == parsed
    assert parse_market_name(f"/some/dir/{name}") == parsed
    assert format_market_name(*parsed) == name


def test_format_defaults_and_parse_inverse():
    assert format_market_name(7, 2) == "0007_c2s1_000000_01.jpg"
    assert format_market_name(-1, 3, 2, 5, 0, ext="png") == "-1_c3s2_000005_00.png"
    for t in [(0, 1, 1, 0, 0), (9999, 9, 6, 999999, 99), (-1, 5, 0, 12, 7), (3, 1, 9, 100000701, 4)]:
        assert parse_market_name(format_market_name(*t)) == t


@pytest.mark.parametrize(
    "bad",
    [
        "0002_c1_000451_03.jpg",
        "abc.jpg",
        "0002_c0s1_000451_03.jpg",
        "0002_c1s1_000451_03.txt",
        "-2_c1s1_000451_03.jpg",
        "0002_c12s1_000451_03.jpg",
        "0002_c1s1_000451_03.jpg.tmp-12.jpg",
    ],
)
def test_bad_names_raise_naming_the_name(bad):
    with pytest.raises(MarketFormatError, match=bad.split(".")[0][:6]):
        parse_market_name(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(pid=-2, cam=1),
        dict(pid=1, cam=0),
        dict(pid=1, cam=10),
        dict(pid=10000, cam=1),  # 5 digits
        dict(pid=1, cam=1, seq=10),  # 'c1s10'
        dict(pid=1, cam=1, frame=1_000_000),  # 7 digits
        dict(pid=1, cam=1, frame=99_999_999),  # 8 digits
        dict(pid=1, cam=1, frame=10**9),  # 10 digits
        dict(pid=1, cam=1, bbox=100),  # 3 digits
    ],
)
def test_format_rejects_bad_values(kwargs):
    """format_market_name writes only names parse_market_name reads back (no width it would refuse)."""
    with pytest.raises(ValueError):
        format_market_name(**kwargs)


# The issue's near misses: each is a second spelling of an accepted name's (pid, cam, seq, frame, bbox).
NEAR_MISSES = [
    "0001_c1s1_0000007_01.jpg",  # 7-digit frame, beside 0001_c1s1_000007_01.jpg
    "0001_c1s01_000007_01.jpg",  # 2-digit sequence
    "0001_c1s1_00000\uff17_01.jpg",  # full-width 7
    "\u0660001_c1s1_000007_01.jpg",  # Arabic-Indic 0
    "0001_c1s1_000007_001.jpg",  # 3-digit box
    "0001_c1s1_000007_1.jpg",  # 1-digit box
    "00001_c1s1_000007_01.jpg",  # 5-digit pid
    "001_c1s1_000007_01.jpg",  # 3-digit pid
    "0001_c01s1_000007_01.jpg",  # 2-digit camera
    "0001_C1S1_000007_01.jpg",  # upper-case c / s
    "0001_c1s1_7_01.jpg",  # unpadded frame
    "0001_c1s1_0100000701_00.jpg",  # a 9-digit synthetic frame zero-padded to 10
    "0001_c1s1_010000070_00.jpg",  # 9 digits with a leading zero (that is a 6-digit frame's field)
    "+001_c1s1_000007_01.jpg",
    "0001_c1s1_000007_01.jpg\n",
    " 0001_c1s1_000007_01.jpg",
]


@pytest.mark.parametrize("bad", NEAR_MISSES)
def test_issue_near_miss_names_are_refused(bad):
    """Issue 27 item 1: names that int() would read as another name's numbers are not Market names."""
    with pytest.raises(MarketFormatError, match="not a Market-1501 file name"):
        parse_market_name(bad)


def test_issue_example_folder_gives_one_synthetic_name_per_source(tmp_path):
    """The issue's folder: the near misses are skipped (counted, named), and no two sources share a
    synthetic name; with strict=True the first one stops the scan naming the file."""
    from posereid.augment.manifest import synthetic_name

    train = tmp_path / SPLIT_DIRS["train"]
    train.mkdir()
    names = [
        "0001_c1s1_000007_01.jpg",
        "0001_c1s1_0000007_01.jpg",
        "0001_c1s01_000007_01.jpg",
        "0001_c1s1_00000\uff17_01.jpg",
        "0001_c1s1_000007_01.png",  # differs only in the extension: the second one is skipped
        "0002_c2s1_000451_03.jpg",
    ]
    for name in names:
        Image.fromarray(_person()).save(train / name, format="PNG" if name.endswith(".png") else "JPEG")
    ds = Market1501(tmp_path)
    assert [r.name for r in ds.train] == ["0001_c1s1_000007_01.jpg", "0002_c2s1_000451_03.jpg"]
    assert ds.skipped["train"] == 4
    assert any("0001_c1s1_000007_01.png" in e and "extension" in e for e in ds.errors)
    synthetic = [synthetic_name(r.name, k) for r in ds.train for k in range(3)]
    assert len(set(synthetic)) == len(synthetic)
    with pytest.raises(MarketFormatError, match="0001_c1s01_000007_01.jpg"):
        Market1501(tmp_path, strict=True)


def test_issue_example_generate_writes_one_image_per_planned_name(tmp_path):
    """Issue 27 item 1 end to end: the folder of the issue (near-miss names beside real ones) gave
    "6 generated of 6 planned" but 4 files; now the near misses are skipped and files = manifest lines =
    unique names = planned."""
    from posereid.augment.generate import GenerateConfig, generate_offline, read_manifest
    from posereid.models.pidm import PIDMPipeline

    market = tmp_path / "market"
    train = market / SPLIT_DIRS["train"]
    train.mkdir(parents=True)
    names = [
        "0001_c1s1_000007_01.jpg",
        "0001_c1s1_0000007_01.jpg",
        "0001_c1s01_000007_01.jpg",
        "0001_c1s1_00000\uff17_01.jpg",
        "0002_c2s1_000451_03.jpg",
        "0002_c2s1_0000451_03.jpg",
    ]
    pose = np.array(
        [[32, 20], [32, 30], [22, 31], [20, 45], [19, 58], [42, 31], [44, 45], [45, 58], [26, 62],
         [26, 85], [26, 108], [38, 62], [38, 85], [38, 108], [30, 18], [34, 18], [27, 19], [37, 19]],
        np.float32,
    )  # fmt: skip
    for i, name in enumerate(names):
        Image.fromarray(_person(seed=i)).save(train / name)
    write_patn_csv(market / "ann.csv", {n: pose for n in names})
    torch.manual_seed(0)
    gen = PIDMPipeline.from_preset("tiny").eval()
    out = tmp_path / "out"
    summary = generate_offline(
        GenerateConfig(out, per_image=1, steps=1, batch_size=4, progress=False),
        gen,
        market,
        market / "ann.csv",
    )
    files = sorted(p.name for p in (out / "bounding_box_train").iterdir())
    entries = read_manifest(out)
    assert summary.planned == summary.generated == len(files) == len(entries) == 2
    assert sorted(e["name"] for e in entries) == files
    assert sorted(e["source"] for e in entries) == ["0001_c1s1_000007_01.jpg", "0002_c2s1_000451_03.jpg"]


def _candidate_names(rng: np.random.Generator, n: int) -> list[str]:
    """Well-formed names and their near misses: 0-2 edits each (a digit inserted or removed, a digit made
    full-width or Arabic-Indic, a letter upper-cased), so that collisions would be found if they existed."""
    out = []
    for _ in range(n):
        pid = -1 if rng.random() < 0.1 else int(rng.integers(0, 30))
        frame = int(rng.integers(0, 40)) if rng.random() < 0.8 else int(rng.integers(10**8, 10**8 + 40))
        ext = str(rng.choice(["jpg", "png", "jpeg", "JPG"]))
        name = list(
            format_market_name(pid, int(rng.integers(1, 4)), int(rng.integers(0, 3)), frame, 1, ext="jpg")
        )
        name[-3:] = list(ext)
        for _ in range(int(rng.integers(0, 3))):
            at = int(rng.integers(len(name) - 4))
            edit = int(rng.integers(4))
            if edit == 0 and name[at].isdigit():
                name.insert(at, "0")
            elif edit == 1 and name[at].isdigit():
                del name[at]
            elif edit == 2 and name[at] in "0123456789":
                name[at] = str(
                    rng.choice(
                        [
                            "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19",
                            "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",
                        ]
                    )
                )[int(name[at])]
            elif edit == 3:
                name[at] = name[at].upper()
        out.append("".join(name))
    return out


def test_parse_is_one_to_one_and_format_inverts_it():
    """Two accepted names never parse to one tuple (unless they differ only in the extension, which the
    folder reader refuses), and format(parse(name)) gives the name back: so two source images can never
    map to one synthetic name."""
    from posereid.augment.manifest import parse_synthetic_name, synthetic_name

    rng = np.random.default_rng(0)
    names = set(_candidate_names(rng, 20000))
    names |= {format_market_name(*t) for t in [(1, 1, 1, 7, 1), (-1, 9, 0, 999999, 99), (0, 3, 9, 10**8, 0)]}
    by_tuple: dict[tuple[int, ...], str] = {}
    accepted = 0
    for name in sorted(names):
        try:
            parsed = parse_market_name(name)
        except MarketFormatError:
            continue
        accepted += 1
        stem, ext = name.rsplit(".", 1)
        assert format_market_name(*parsed, ext=ext) == f"{stem}.{ext.lower()}"
        assert (
            stem.isascii()
            and stem.replace("_", "").replace("-", "").replace("c", "").replace("s", "").isdigit()
        )
        other = by_tuple.setdefault(parsed, name)
        assert other.rsplit(".", 1)[0] == stem, (other, name)
        if 1 <= parsed[2] and parsed[3] < 10**6:  # a real name: its synthetic names decode back to it
            for k in (0, 7, 99):
                assert parse_synthetic_name(synthetic_name(name, k)) == (stem, k)
    assert accepted > 500  # the generator does produce well-formed names
    synth = {
        synthetic_name(n, 0)
        for n in by_tuple.values()
        if parse_market_name(n)[3] < 10**6 and parse_market_name(n)[2] >= 1
    }
    assert len(synth) == sum(1 for t in by_tuple if t[3] < 10**6 and t[2] >= 1)


# --------------------------------------------------------------------------------------------------
# folder + writer + torchreid
# --------------------------------------------------------------------------------------------------
def _write_tiny_market(data_dir: Path) -> MarketWriter:
    w = MarketWriter(data_dir)
    for pid in (1, 2, 5):
        for cam in (1, 2):
            for k in range(2):
                w.add("train", _person(seed=pid * 10 + cam + k), pid, cam)
        w.add("query", _person(seed=pid), pid, 1)
        for k in range(2):
            w.add("gallery", _person(seed=pid + 100 + k), pid, 2)
    w.add("train", _person(seed=7), -1, 1)
    for cam in (1, 2):
        w.add("gallery", _person(seed=50 + cam), -1, cam)
        w.add("gallery", _person(seed=60 + cam), 0, cam)
    return w


def test_writer_folder_summary(tmp_path):
    w = _write_tiny_market(tmp_path / "m")
    assert w.written == 12 + 3 + 6 + 1 + 4
    (tmp_path / "m" / "bounding_box_train" / "Thumbs.db").write_bytes(b"x")  # ignored like the release's
    ds = Market1501(tmp_path / "m")
    s = ds.summary()
    assert s["train"] == dict(images=13, identities=3, cameras=2, junk=1, distractors=0, skipped=0)
    assert s["query"] == dict(images=3, identities=3, cameras=1, junk=0, distractors=0, skipped=0)
    assert s["gallery"] == dict(images=10, identities=3, cameras=2, junk=2, distractors=2, skipped=0)
    assert s["gt_bbox"]["images"] == 0
    # camid is 0-based, records sorted by name, paths exist
    q = ds.split("query")
    assert [r.camid for r in q] == [0, 0, 0] and [r.pid for r in q] == [1, 2, 5]
    assert all(r.path.is_file() and r.split == "query" for r in q)
    assert q[0].name == "0001_c1s1_000000_01.jpg"
    # parent layouts resolve to the same data dir
    (tmp_path / "p" / "market1501").mkdir(parents=True)
    (tmp_path / "m").rename(tmp_path / "p" / "market1501" / RELEASE_DIR)
    assert Market1501(tmp_path / "p").summary() == s


def test_folder_bad_names_strict_and_lenient(tmp_path):
    w = MarketWriter(tmp_path)
    w.add("train", _person(), 3, 1)
    bad = tmp_path / SPLIT_DIRS["train"] / "holiday_photo.jpg"
    Image.fromarray(_person()).save(bad)
    with pytest.raises(MarketFormatError, match="holiday_photo.jpg"):
        Market1501(tmp_path, strict=True)
    ds = Market1501(tmp_path)  # the default batch policy: skipped and counted
    assert len(ds.train) == 1 and ds.skipped["train"] == 1
    assert ds.summary()["train"]["skipped"] == 1


def test_missing_folder_names_root(tmp_path):
    with pytest.raises(MarketFormatError, match=str(tmp_path)):
        Market1501(tmp_path)


def test_writer_loads_in_torchreid_with_same_counts(tmp_path):
    tr_mod = pytest.importorskip("torchreid.reid.data.datasets.image.market1501")
    root = tmp_path / "trroot"
    _write_tiny_market(root / "market1501" / RELEASE_DIR)
    ours = Market1501(root)
    s = ours.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = tr_mod.Market1501(root=str(root), verbose=False)  # dataset_dir exists -> no download
    for split, tr_list in (("train", tr.train), ("query", tr.query), ("gallery", tr.gallery)):
        assert len(tr_list) == s[split]["images"] - s[split]["junk"]
    assert tr.num_train_pids == s["train"]["identities"] + (s["train"]["distractors"] > 0)
    assert tr.num_train_cams == s["train"]["cameras"]
    # torchreid keeps pid/camid for query/gallery (no relabel): identical triples to ours minus junk
    for split, tr_list in (("query", tr.query), ("gallery", tr.gallery)):
        theirs = {(Path(p).name, pid, cam) for p, pid, cam, _ in tr_list}
        mine = {(r.name, r.pid, r.camid) for r in ours.split(split) if not r.is_junk}
        assert theirs == mine
    assert {(Path(p).name, c) for p, _, c, _ in tr.train} == {
        (r.name, r.camid) for r in ours.train if not r.is_junk
    }
    # its own image reader decodes what we wrote
    from torchreid.reid.utils.tools import read_image

    assert read_image(tr.gallery[0][0]).size == (64, 128)


def test_writer_frames_never_collide(tmp_path):
    w = MarketWriter(tmp_path)
    a = w.add("train", _person(), 4, 2)
    b = w.add("train", _person(), 4, 2)
    c = w.add("train", _person(), 4, 2, seq=3)
    assert (a, b, c) == ("0004_c2s1_000000_01.jpg", "0004_c2s1_000001_01.jpg", "0004_c2s3_000000_01.jpg")
    w2 = MarketWriter(tmp_path)  # a later run continues after the files on disk
    assert w2.add("train", _person(), 4, 2) == "0004_c2s1_000002_01.jpg"
    with pytest.raises(FileExistsError, match="0004_c2s1_000000_01.jpg"):
        w2.add("train", _person(), 4, 2, frame=0)
    assert w2.add("train", _person(seed=3), 4, 2, frame=0, overwrite=True) == a
    named = w2.add("query", _person(), 9, 1, name="0009_c1s5_000042_02.jpg")
    assert named == "0009_c1s5_000042_02.jpg"
    with pytest.raises(ValueError, match="pid 9"):
        w2.add("query", _person(), 8, 1, name="0009_c1s5_000042_03.jpg")
    files = sorted(p.name for p in (tmp_path / "bounding_box_train").iterdir())
    assert files == sorted({a, b, c, "0004_c2s1_000002_01.jpg"})  # no temp leftovers


def test_writer_accepts_tensor_array_and_pil(tmp_path):
    w = MarketWriter(tmp_path, quality=100)
    t = torch.zeros(3, 128, 64)
    t[0] = 1.0
    t[2, :, :32] = 0.5
    arr = _person(seed=4)
    names = [
        w.add("train", t, 1, 1),
        w.add("train", arr, 1, 1),
        w.add("train", Image.fromarray(arr).convert("L"), 1, 1),
    ]
    ims = [np.asarray(load_image(tmp_path / "bounding_box_train" / n), dtype=np.int16) for n in names]
    assert ims[0].shape == (128, 64, 3)
    assert abs(int(ims[0][64, 48, 0]) - 255) <= 3 and abs(int(ims[0][64, 10, 2]) - 128) <= 3
    assert np.abs(ims[1] - arr).mean() < 3
    assert np.abs(ims[2][..., 0] - ims[2][..., 2]).max() <= 2  # grey stays grey
    with pytest.raises(ValueError, match="uint8"):
        w.add("train", arr.astype(np.float32), 1, 1)
    with pytest.raises(ValueError, match="NaN"):
        w.add("train", torch.full((3, 8, 8), float("nan")), 1, 1)
    with pytest.raises(ValueError, match="unknown split"):
        w.add("val", arr, 1, 1)


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------
def _call_with_watchdog(fn, *args):
    """Run ``fn`` in a daemon thread; a hang (torchreid's read_image behaviour) fails instead of blocking."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(60)
    assert not th.is_alive(), f"{fn.__name__} hung on {args}"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_truncated_and_garbage_images_raise_image_read_error(tmp_path):
    good = tmp_path / "0001_c1s1_000000_01.jpg"
    Image.fromarray(_person()).save(good, quality=95)
    check_image(good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for bad in (trunc, empty, garbage, text, tmp_path / "missing.jpg"):
        for fn in (check_image, load_image):
            with pytest.raises(ImageReadError, match=bad.name):
                _call_with_watchdog(fn, bad)
    assert issubclass(ImageReadError, OSError)


def test_modes_and_odd_sizes_load_as_rgb(tmp_path):
    rng = np.random.default_rng(0)
    cases = {
        "grey.png": Image.fromarray(rng.integers(0, 255, (37, 23), dtype=np.uint8), "L"),
        "rgba.png": Image.fromarray(rng.integers(0, 255, (37, 23, 4), dtype=np.uint8), "RGBA"),
        "pal.png": Image.fromarray(rng.integers(0, 255, (37, 23, 3), dtype=np.uint8)).convert("P"),
        "deep.png": Image.fromarray(rng.integers(0, 65535, (37, 23), dtype=np.uint16)),
        "cmyk.jpg": Image.fromarray(rng.integers(0, 255, (37, 23, 3), dtype=np.uint8)).convert("CMYK"),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        out = load_image(tmp_path / name)
        assert out.mode == "RGB" and out.size == (23, 37), name
        assert load_image(tmp_path / name, size=(128, 64)).size == (64, 128)
    grey = np.asarray(load_image(tmp_path / "grey.png"))
    assert (grey[..., 0] == np.asarray(cases["grey.png"])).all() and (grey[..., 0] == grey[..., 2]).all()
    rgba = np.asarray(load_image(tmp_path / "rgba.png"))
    assert (rgba == np.asarray(cases["rgba.png"])[..., :3]).all()
    deep = np.asarray(load_image(tmp_path / "deep.png"), dtype=np.int32)[..., 0]
    src = np.asarray(cases["deep.png"], dtype=np.float64) / 65535 * 255
    assert np.abs(deep - src).max() <= 1  # 16-bit is scaled, not clipped to white


# --------------------------------------------------------------------------------------------------
# PATN CSV
# --------------------------------------------------------------------------------------------------
def _random_annotations(n: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        xs = rng.integers(0, 64, 18)
        ys = rng.integers(0, 128, 18)
        kps = np.stack([xs, ys], -1).astype(np.float32)
        kps[rng.random(18) < 0.3] = -1
        out[format_market_name(i + 1, 1 + i % 6, 1, 10 * i, 1)] = kps
    return out


def test_patn_round_trip_exact(tmp_path):
    ann = _random_annotations()
    ann["0099_c1s1_000001_01.jpg"] = np.full((18, 2), -1, np.float32)
    path = tmp_path / "market-annotation-train.csv"
    write_patn_csv(path, ann)
    back = read_patn_csv(path)
    assert list(back) == list(ann) and back.skipped == 0
    for k in ann:
        assert back[k].dtype == np.float32 and back[k].shape == (18, 2)
        np.testing.assert_array_equal(back[k], ann[k])
    first = path.read_text().splitlines()
    write_patn_csv(tmp_path / "again.csv", back)
    assert (tmp_path / "again.csv").read_text().splitlines() == first
    assert first[0] == PATN_HEADER
    assert not list(tmp_path.glob("*.tmp-*"))


def test_patn_format_is_y_first(tmp_path):
    kps = np.full((18, 2), -1, np.float32)
    kps[0] = (10, 20)  # x=10, y=20
    kps[1] = (33.4, 120.6)  # rounded to the nearest pixel
    kps[2] = (5, np.nan)  # non-finite -> missing
    p = tmp_path / "a.csv"
    write_patn_csv(p, {"0001_c1s1_000000_01.jpg": kps})
    row = p.read_text().splitlines()[1]
    back = read_patn_csv(p)["0001_c1s1_000000_01.jpg"]
    rest = ", ".join(["-1"] * 16)
    assert row == f"0001_c1s1_000000_01.jpg:[20, 121, {rest}]:[10, 33, {rest}]"
    assert tuple(back[0]) == (10, 20) and tuple(back[1]) == (33, 121) and tuple(back[2]) == (-1, -1)


def _csv_with_rows(tmp_path: Path, rows: list[str]) -> Path:
    write_patn_csv(tmp_path / "good.csv", _random_annotations(2))
    lines = (tmp_path / "good.csv").read_text().splitlines()
    p = tmp_path / "bad.csv"
    p.write_text("\n".join(lines[:2] + rows + lines[2:]) + "\n")
    return p


_Y17 = "[" + ", ".join(["5"] * 17) + "]"
_Y18 = "[" + ", ".join(["5"] * 18) + "]"


@pytest.mark.parametrize(
    "row, problem",
    [
        (f"0003_c1s1_000000_01.jpg:{_Y17}:{_Y18}", "17 values"),
        (f"0003_c1s1_000000_01.jpg:{_Y18.replace('5', '5.5', 1)}:{_Y18}", "'5.5' is not an integer"),
        (f"0003_c1s1_000000_01.jpg:{_Y18.replace('5', '128', 1)}:{_Y18}", "outside the 128x64"),
        (f"0003_c1s1_000000_01.jpg:{_Y18}:{_Y18.replace('5', '64', 1)}", "outside the 128x64"),
        (f"0003_c1s1_000000_01.jpg:{_Y18}:{_Y18.replace('5', '-3', 1)}", "-3 < -1"),
        (f"0003_c1s1_000000_01.jpg:{_Y18}", "3 ':'-separated fields"),
        (f"0003_c1s1_000000_01.jpg:5, 5:{_Y18}", "bracketed list"),
        ("0003_c1s1_000000_01.jpg:" + _Y18.replace("5", "\uff15", 1) + ":" + _Y18, "is not an integer"),
        (f"0003_c1s1_000000_01.jpg:{_Y18.replace('5', '1_0', 1)}:{_Y18}", "'1_0' is not an integer"),
    ],
)
def test_patn_bad_rows_name_file_and_line(tmp_path, row, problem):
    p = _csv_with_rows(tmp_path, [row])
    with pytest.raises(MarketFormatError) as info:
        read_patn_csv(p)
    msg = str(info.value)
    assert str(p) in msg and "line 3" in msg and problem in msg


def test_patn_skip_mode_counts_and_keeps_good_rows(tmp_path, caplog):
    ann = _random_annotations(2)
    rows = [
        f"0003_c1s1_000000_01.jpg:{_Y17}:{_Y18}",
        f"0004_c1s1_000000_01.jpg:{_Y18.replace('5', 'x', 1)}:{_Y18}",
        f"{next(iter(ann))}:{_Y18}:{_Y18}",  # duplicate of the first row's name
    ]
    p = _csv_with_rows(tmp_path, rows)
    with caplog.at_level("WARNING"):
        got = read_patn_csv(p, on_error="skip")
    assert got.skipped == 3 and len(got.errors) == 3
    assert list(got) == list(ann)
    for k in ann:
        np.testing.assert_array_equal(got[k], ann[k])
    assert "skipped 3 bad row(s)" in caplog.text
    assert "line 4" in got.errors[1] and "duplicate" in got.errors[2]


def test_patn_header_and_image_hw(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("name,keypoints_y,keypoints_x\n")
    with pytest.raises(MarketFormatError, match="line 1"):
        read_patn_csv(p)
    big = np.full((18, 2), -1, np.float32)
    big[0] = (300, 500)
    write_patn_csv(p, {"x.jpg": big})
    with pytest.raises(MarketFormatError, match="outside"):
        read_patn_csv(p)
    assert tuple(read_patn_csv(p, image_hw=None)["x.jpg"][0]) == (300, 500)
    assert tuple(read_patn_csv(p, image_hw=(600, 400))["x.jpg"][0]) == (300, 500)
    with pytest.raises(MarketFormatError, match="':'"):
        write_patn_csv(p, {"a:b.jpg": big})


# --------------------------------------------------------------------------------------------------
# pairs CSV
# --------------------------------------------------------------------------------------------------
def test_pairs_round_trip_and_errors(tmp_path):
    pairs = [("0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg"), ("a.jpg", "b.jpg")]
    p = tmp_path / "market-pairs-train.csv"
    write_pairs_csv(p, pairs)
    assert p.read_text() == "from,to\n0002_c1s1_000451_03.jpg,0002_c2s1_000301_01.jpg\na.jpg,b.jpg\n"
    assert read_pairs_csv(p) == pairs
    p.write_text("from,to\na.jpg,b.jpg\na.jpg,b.jpg,c.jpg\n")
    with pytest.raises(MarketFormatError, match=r"line 3"):
        read_pairs_csv(p)
    p.write_text("src,dst\na.jpg,b.jpg\n")
    with pytest.raises(MarketFormatError, match="line 1"):
        read_pairs_csv(p)


def test_csv_readers_tolerate_bom_and_crlf(tmp_path):
    ann = _random_annotations(3)
    write_patn_csv(tmp_path / "a.csv", ann)
    text = (tmp_path / "a.csv").read_text()
    (tmp_path / "win.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    back = read_patn_csv(tmp_path / "win.csv")
    assert list(back) == list(ann) and all((back[k] == ann[k]).all() for k in ann)
    (tmp_path / "p.csv").write_bytes(b"\xef\xbb\xbffrom,to\r\na.jpg,b.jpg\r\n")
    assert read_pairs_csv(tmp_path / "p.csv") == [("a.jpg", "b.jpg")]
