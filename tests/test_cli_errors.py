"""Bad input on the command line: one line ``posereid <command>: ...`` naming the flag or file, exit 2 for
usage and 1 for runtime failures, and no traceback unless ``-v``."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from PIL import Image

from posereid.experiments.cli import describe_error, main
from posereid.models.checkpoint import WEIGHTS_NAME
from posereid.models.pidm import PIDMPipeline


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "ckpt"
    PIDMPipeline.from_preset("tiny").save_pretrained(path)
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        rc = exc.code
    err = capsys.readouterr().err
    return int(rc), err


USAGE = [
    (["generate", "--batch-size", "0"], "--batch-size"),
    (["generate", "--per-image", "0"], "--per-image"),
    (["generate", "--shard", "3/2"], "--shard"),
    (["generate", "--guidance-pose", "nan"], "--guidance-pose"),
    (["train-generator", "--batch-size", "0"], "--batch-size"),
    (["train-generator", "--lr", "inf"], "--lr"),
    (["sample", "--guidance-appearance", "nan"], "--guidance-appearance"),
    (["reid-gain", "--fractions", "1.5"], "--fractions"),
    (["reid-gain", "--seeds", "0,x"], "--seeds"),
    (["evaluate-generator", "--steps", "0"], "--steps"),
]


@pytest.mark.parametrize(("argv", "flag"), USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_bad_flag_values_stop_in_the_parser(argv: list[str], flag: str, capsys, tmp_path: Path) -> None:
    rc, err = _run([*argv, "--data", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert f"posereid {argv[0]}: error: argument {flag}" in err
    assert "Traceback" not in err


def _damaged(ckpt: Path, tmp_path: Path, what: str) -> Path:
    bad = tmp_path / what
    bad.mkdir()
    for f in ckpt.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    if what == "truncated":
        w = bad / WEIGHTS_NAME
        w.write_bytes(w.read_bytes()[:100])
    elif what == "pickle":
        (bad / WEIGHTS_NAME).write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.")
    elif what == "config":
        cfg = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**cfg, "image_size": "big"}))
    elif what == "unknown":  # the file that names the pipeline class
        (bad / "model_index.json").write_text(json.dumps({"_class_name": "Mystery"}))
    return bad


@pytest.mark.parametrize(
    ("what", "names"),
    [
        ("truncated", WEIGHTS_NAME),
        ("pickle", WEIGHTS_NAME),
        ("config", "config.json"),
        ("unknown", "known: pidm"),
        ("missing", "not found"),
    ],
)
@pytest.mark.parametrize("verbose", [False, True])
def test_damaged_checkpoint_is_one_line_naming_the_file(
    ckpt: Path, tmp_path: Path, capsys, what: str, names: str, verbose: bool
) -> None:
    gen = tmp_path / "missing" if what == "missing" else _damaged(ckpt, tmp_path, what)
    src = tmp_path / "src.jpg"
    argv = ["sample", "--generator", str(gen), "--source", str(src), "--target-pose-from", "x.jpg",
            "--annotations", str(tmp_path / "a.csv"), "--out", str(tmp_path / "o.png")]  # fmt: skip
    rc, err = _run([*argv, "-v"] if verbose else argv, capsys)
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("posereid sample: error: ") and names in last and str(gen) in last
    assert ("Traceback" in err) == verbose


def test_os_errors_name_the_path_and_what_to_do() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/x.jpg")
    assert describe_error(full) == (
        "No space left on device: /data/out/x.jpg (free some space, or choose another output folder)"
    )
    ro = PermissionError(errno.EACCES, "Permission denied", "/ro/out")
    assert describe_error(ro).startswith("Permission denied: /ro/out (no permission")
    plain = ZeroDivisionError("division by zero")
    assert describe_error(plain) == "division by zero (ZeroDivisionError; rerun with -v for the traceback)"


def test_posereid_help_lists_the_same_commands(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("synth-market", "synth-grid", "annotate", "train-generator", "sample", "generate", "filter",
                "train-reid", "reid-gain", "evaluate-generator", "demo"):  # fmt: skip
        assert f"  {cmd} " in out


# --------------------------------------------------------------------------------------------------
# Issue 27 item 10: a legal long file name is written; a full disk names the file and leaves no trace
# --------------------------------------------------------------------------------------------------
def _long_name(n: int, suffix: str) -> str:
    return "x" * (n - len(suffix)) + suffix


@pytest.mark.parametrize("n", [200, 240, 253, 255])
def test_long_legal_file_names_are_written(tmp_path: Path, n: int) -> None:
    """A name the file system takes (up to 255 bytes) is written by every writer although the temporary
    name adds a suffix; nothing else is left in the folder."""
    import numpy as np

    from posereid.augment.pose_bank import PoseBank
    from posereid.models.io_utils import atomic_save, atomic_write
    from posereid.reid_integration.market1501 import read_patn_csv, write_patn_csv

    text = tmp_path / _long_name(n, ".json")
    with atomic_write(text) as fh:
        fh.write("{}")
    assert text.read_text() == "{}"
    raw = tmp_path / _long_name(n, ".bin")
    atomic_save(raw, lambda tmp: Path(tmp).write_bytes(b"ab"))
    assert raw.read_bytes() == b"ab"
    pose = np.array(
        [[32, 20], [32, 30], [22, 31], [20, 45], [19, 58], [42, 31], [44, 45], [45, 58], [26, 62],
         [26, 85], [26, 108], [38, 62], [38, 85], [38, 108], [30, 18], [34, 18], [27, 19], [37, 19]],
        np.float32,
    )  # fmt: skip
    bank = tmp_path / _long_name(n, ".npz")
    PoseBank([pose, pose + 1], ["a.jpg", "b.jpg"]).save(bank)
    assert len(PoseBank.load(bank)) == 2
    csv = tmp_path / _long_name(n, ".csv")
    write_patn_csv(csv, {"0001_c1s1_000000_01.jpg": pose})
    assert list(read_patn_csv(csv)) == ["0001_c1s1_000000_01.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (text, raw, bank, csv))


def test_long_name_cli_output(tmp_path: Path, capsys) -> None:
    """``synth-grid --out`` with a 253-character name (the issue's case) writes it."""
    out = tmp_path / _long_name(253, ".png")
    rc, err = _run(["synth-grid", "--out", str(out), "--ids", "1", "--cols", "1"], capsys)
    assert rc == 0, err
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_temp_names_of_long_names_stay_legal_and_recognisable(tmp_path: Path) -> None:
    from posereid.models.io_utils import is_temp_file, temp_sibling

    for n in (6, 100, 240, 255):
        for name in (_long_name(n, ".jpg"), "é" * (n // 2)):
            path = tmp_path / name
            plain, hidden = temp_sibling(path), temp_sibling(path, hidden=True, keep_suffix=True)
            for tmp in (plain, hidden):
                assert len(tmp.name.encode()) <= 255 and is_temp_file(tmp) and tmp.parent == tmp_path
            assert hidden.name.startswith(".") and hidden.name.endswith(path.suffix)
            if len(name.encode()) < 200:
                assert plain.name.startswith(name)  # short names keep the NAME.tmp-<pid> convention
    a, b = (temp_sibling(tmp_path / _long_name(255, s)) for s in ("a.jpg", "b.jpg"))
    assert a != b  # two long names that differ only at the end get two temporary names


class _DiskFull(OSError):
    """What a write on a full disk raises: ENOSPC, and no file name."""

    def __init__(self) -> None:
        super().__init__(errno.ENOSPC, "No space left on device")


def test_disk_full_names_the_file_and_leaves_the_old_one(tmp_path: Path) -> None:
    from posereid.models.io_utils import atomic_save, atomic_write
    from posereid.reid_integration.market1501 import MarketWriter

    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(OSError) as info:
        with atomic_write(target) as fh:
            fh.write("new, half")
            raise _DiskFull()
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert describe_error(info.value) == (
        f"No space left on device: {target} (free some space, or choose another output folder)"
    )
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]

    def full_saver(tmp: Path) -> None:
        Path(tmp).write_bytes(b"half")
        raise _DiskFull()

    img = tmp_path / "grid.png"
    with pytest.raises(OSError, match="No space left on device") as info:
        atomic_save(img, full_saver)
    assert info.value.filename == str(img) and describe_error(info.value).endswith(
        f"{img} (free some space, or choose another output folder)"
    )

    def rust_saver(tmp: Path) -> None:  # safetensors reports a full disk in its own exception type
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, ... })")

    weights = tmp_path / "w.safetensors"
    with pytest.raises(OSError) as info:
        atomic_save(weights, rust_saver)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]

    writer = MarketWriter(tmp_path / "m")
    writer.add("train", Image.new("RGB", (8, 16)), 1, 1)

    def full_save(self, *args, **kwargs):
        raise _DiskFull()

    monkey = pytest.MonkeyPatch()
    monkey.setattr(Image.Image, "save", full_save)
    try:
        with pytest.raises(OSError) as info:
            writer.add("train", Image.new("RGB", (8, 16)), 2, 1)
    finally:
        monkey.undo()
    assert info.value.filename == str(tmp_path / "m" / "bounding_box_train" / "0002_c1s1_000000_01.jpg")
    assert [p.name for p in (tmp_path / "m" / "bounding_box_train").iterdir()] == ["0001_c1s1_000000_01.jpg"]


def test_other_write_errors_keep_their_own_message(tmp_path: Path) -> None:
    """Not every OSError is a full disk: PIL's "cannot write mode" (no errno) and another file's error
    go through unchanged."""
    from posereid.models.io_utils import atomic_save

    with pytest.raises(OSError, match="cannot write mode") as info:
        atomic_save(tmp_path / "x.jpg", lambda tmp: Image.new("RGBA", (4, 4)).save(tmp, format="JPEG"))
    assert info.value.filename is None
    with pytest.raises(FileNotFoundError) as info:
        atomic_save(tmp_path / "y.bin", lambda tmp: open(tmp_path / "missing" / "z"))
    assert info.value.filename == str(tmp_path / "missing" / "z")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_in_a_command_is_one_line_naming_the_file(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "grid.png"

    def full_save(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise _DiskFull()

    monkeypatch.setattr(Image.Image, "save", full_save)
    rc, err = _run(["synth-grid", "--out", str(out), "--ids", "1", "--cols", "1"], capsys)
    assert rc == 1
    assert err.strip().splitlines()[-1] == (
        f"posereid synth-grid: error: No space left on device: {out} (free some space, or choose another "
        "output folder)"
    )
    assert list(tmp_path.iterdir()) == []


def test_os_error_without_a_file_still_says_what_to_do() -> None:
    assert describe_error(_DiskFull()) == (
        "No space left on device (free some space, or choose another output folder)"
    )
