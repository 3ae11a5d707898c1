"""The source-keypoint check scores the same pairs twice and reports both rows."""

from __future__ import annotations

from pathlib import Path

from posereid.experiments.cli import main as cli_main
from posereid.experiments.quality.source_pose_check import main
from posereid.models.pidm import PIDMPipeline


def test_source_pose_check_writes_both_rows(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli_main(["synth-market", str(data), "--train-ids", "2", "--test-ids", "3", "--height", "64",
                     "--width", "32", "--seed", "3", "--no-progress"]) == 0  # fmt: skip
    PIDMPipeline.from_preset("tiny", image_size=(64, 32)).save_pretrained(tmp_path / "gen")
    out = tmp_path / "report.md"
    assert main(["--generator", str(tmp_path / "gen"), "--data", str(data), "--n-pairs", "4", "--steps", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    rows = [line for line in out.read_text().splitlines() if line.startswith("| with")]
    assert [r.split("|")[1].strip() for r in rows] == ["with source keypoints", "without source keypoints"]
