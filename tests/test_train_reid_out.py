"""train-reid refuses an --out that cannot be a folder before it trains (issue 27 item 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from posereid.experiments.cli import main as cli_main
from posereid.reid_integration import train as reid_train


@pytest.mark.parametrize("where", ["file", "below_a_file"])
def test_out_that_is_a_file_is_refused_before_training(
    synth_market: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    def no_training(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model was built: training started")

    monkeypatch.setattr(reid_train, "build_reid_model", no_training)
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "run"
    rc = cli_main(["train-reid", "--data", str(synth_market), "--out", str(out), "--steps", "1",
                   "--model", "osnet_x0_25", "--height", "32", "--width", "16", "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and str(blocker) in err and "training started" not in err, err
    assert "not a folder" in err or "is a file" in err
    assert blocker.read_text() == "not a folder"


def test_check_output_dir_accepts_new_and_existing_folders(tmp_path: Path) -> None:
    reid_train.check_output_dir(tmp_path)
    reid_train.check_output_dir(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()  # checking writes nothing
