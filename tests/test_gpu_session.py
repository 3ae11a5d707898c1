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
    assert set(info["parts"]) == {"bench_minutes", "few_step_minutes", "data_minutes", "train_minutes"}
    times = [*info["parts"].values(), info["total_minutes"]]
    assert all(math.isfinite(t) and t >= 0 for t in times) and info["total_minutes"] > 0
    config = json.loads((out / "train_config.json").read_text())
    assert config["steps"] == 4 and config["batch_size"] == 2 and config["checkpoint_every"] == 0
    report = (out / "bench_generator.md").read_text()
    assert "| tiny |" in report and "## Few-step sampling" in report
    assert "| tiny | ours fp32 few-step | 1 |" in report
    check_few_step_rows(info["few_step"])


def check_few_step_rows(few: dict) -> None:
    """The few-step rows (fp32 on the CPU): the same model's 20-step guidance-2 reference, then 1, 2 and
    4 steps of one conditional network call each (counted by a hook on the denoiser, not timed)."""
    assert few["preset"] == "tiny" and few["image_size"] == [32, 16] and "zero-initialised" in few["note"]
    rows = few["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows] == [
        ("dpmsolver++", 20), ("few-step", 1), ("few-step", 2), ("few-step", 4),
    ]  # fmt: skip
    ref, one = rows[0], rows[1]
    assert ref["guidance"] == [2.0, 2.0] and all(r["guidance"] == [1.0, 1.0] for r in rows[1:])
    # the reference: 20 batched calls of three guidance branches; a few-step call: one branch per step
    assert ref["denoiser_calls"] == 20 and ref["network_calls_per_image"] == 60
    for r in rows[1:]:
        assert r["denoiser_calls"] == r["steps"] and r["network_calls_per_image"] == r["steps"]
    assert one["network_calls_per_image"] < ref["network_calls_per_image"]
    assert ref["speedup_vs_20_steps_g2"] == 1.0
    for r in rows:
        assert math.isfinite(r["s_per_image"]) and r["s_per_image"] > 0
        assert math.isclose(r["images_per_s"] * r["s_per_image"], 1.0)
        assert math.isclose(r["speedup_vs_20_steps_g2"], ref["s_per_image"] / r["s_per_image"])
