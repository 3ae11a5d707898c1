"""Bad input on the command line: one line ``posereid <command>: ...`` naming the flag or file, exit 2 for
usage and 1 for runtime failures, and no traceback unless ``-v``."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

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
