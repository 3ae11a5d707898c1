"""The one-call GPU session script, on its CPU path with tiny presets and a tiny budget."""

from __future__ import annotations

import json
import math
from pathlib import Path

from posereid.experiments.bench.gpu_session import MAX_BYTES, MAX_FILES, main


def test_gpu_session_cpu_path_fits_the_transfer_limits(tmp_path: Path) -> None:
    out = tmp_path / "OUT"
    rc = main([
        "--out", str(out), "--minutes", "2.5", "--device", "cpu", "--bench-presets", "tiny", "--bench-steps", "2",
        "--train-preset", "tiny", "--height", "32", "--width", "16", "--train-ids", "3", "--batch-size", "2",
        "--steps", "4", "--sample-every", "2", "--prediction-type", "v_prediction", "--zero-snr", "--snr-gamma", "5",
        "--p-drop-source-pose", "0.5",
        "--reserve-minutes", "0.1",
    ])  # fmt: skip
    assert rc == 0
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= MAX_FILES and all((out / f).stat().st_size <= MAX_BYTES for f in files)
    for name in ("bench_generator.md", "train_log.csv", "loss.png", "session.json", "train_config.json"):
        assert name in files, files
    assert any(f.startswith("samples_last_") for f in files)
    info = json.loads((out / "session.json").read_text())
    assert info["train_steps"] == 4
    argv = info["train_argv"]  # the equivalent train-generator command line, recipe flags included
    assert "--zero-snr" in argv and argv[argv.index("--snr-gamma") + 1] == "5.0"
    assert argv[argv.index("--prediction-type") + 1] == "v_prediction" and "--mixed-precision" not in argv
    assert set(info["parts"]) == {"bench_minutes", "data_minutes", "train_minutes"}
    times = [*info["parts"].values(), info["total_minutes"]]
    assert all(math.isfinite(t) and t >= 0 for t in times) and info["total_minutes"] > 0
    config = json.loads((out / "train_config.json").read_text())
    assert config["steps"] == 4 and config["batch_size"] == 2 and config["checkpoint_every"] == 0
    assert "| tiny |" in (out / "bench_generator.md").read_text()
