"""The generator benchmark script runs end to end and its FLOP accounting is sane (no timing asserts)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from posereid.experiments.bench.generator import main


def test_bench_generator_report_with_flop_rates(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    rc = main(
        ["--presets", "tiny", "--device", "cpu", "--batch", "2", "--steps", "2,20", "--train-steps", "1",
         "--threads", "1", "--flops", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    text = out.read_text()
    assert re.search(r"\| tiny \| baseline: fp32 DDIM.*\| 1\.0x \|", text)
    rows = re.findall(r"\| tiny \| ours fp32 DPM-Solver\+\+ \| (\d+) \| 2 \| ([\d.e+-]+) images/s \|", text)
    rates = {int(steps): float(rate) for steps, rate in rows}
    assert set(rates) == {2, 20} and all(math.isfinite(r) and r > 0 for r in rates.values())
    gflop = float(re.search(r"denoiser ([\d.]+) GFLOP per image per guidance branch", text).group(1))
    assert 0.05 < gflop < 1.0  # tiny at 32x16: a few hundred MFLOP, not zero, not the small preset's 1.7
    pct = re.search(r"ours fp32 DPM-Solver\+\+: ([\d.e+-]+) TFLOP/s = (\d+) % of the fp32 matmul rate", text)
    assert pct is not None and float(pct.group(1)) > 0  # a measured rate, reported against the matmul rate
    assert "same computation, batched differently" in text


def test_bench_generator_keeps_finished_presets_when_a_later_one_fails(tmp_path: Path) -> None:
    """A run cut short (a time limit, an error) leaves the presets it measured in the report."""
    out = tmp_path / "bench.md"
    args = ["--presets", "tiny,no-such-preset", "--device", "cpu", "--batch", "1", "--steps", "2",
            "--train-steps", "1", "--threads", "1", "--out", str(out)]  # fmt: skip
    with pytest.raises(ValueError, match="no-such-preset"):
        main(args)
    text = out.read_text()
    assert "| tiny | ours fp32 DPM-Solver++ | 2 | 1 |" in text
    assert "Incomplete: 1 of 2 presets measured so far." in text
