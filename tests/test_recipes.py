"""Defaults that follow the data: the recipe a folder calls for, what it fills, and what it announces."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from posereid.experiments.cli import build_parser
from posereid.experiments.reid_gain.cli import announce_recipe, apply_recipe, config_from_args
from posereid.reid_integration.recipes import RECIPES, probe_step_seconds, recipe_for


def _market(root: Path, h: int, w: int) -> Path:
    (root / "bounding_box_train").mkdir(parents=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(
        root / "bounding_box_train" / "0001_c1s1_000001_00.jpg"
    )
    return root


def test_reid_gain_without_recipe_flags_takes_the_recipe_of_the_data(
    synth_market: Path, tmp_path: Path, capsys
) -> None:
    parser, _ = build_parser("reid-gain")
    args = parser.parse_args(["--data", str(synth_market), "--out", str(tmp_path / "o")])
    recipe, taken = apply_recipe(args)
    assert recipe.name == "synthetic" and "synthetic renderer" in recipe.why
    config = config_from_args(args)
    assert (config.reid_model, config.height, config.width, config.reid_steps, config.reid_lr) == (
        "osnet_x0_25",
        64,
        32,
        471,
        0.01,
    )  # the committed synthetic results' settings
    assert config.pose_sampling == "view" and config.guidance == (1.0, 1.0)
    announce_recipe(recipe, taken, "cpu", probe=False)
    out = capsys.readouterr().out
    assert out.startswith("recipe synthetic") and "--reid-model" in out and "osnet_x0_25 at 64x32" in out

    market = _market(tmp_path / "market", 128, 64)
    args = parser.parse_args(["--data", str(market), "--out", str(tmp_path / "o2"), "--reid-steps", "10"])
    recipe, taken = apply_recipe(args)
    assert recipe.name == "market" and "128x64" in recipe.why
    assert args.reid_model == "resnet50" and args.reid_steps == 10 and "reid_steps" not in taken  # given wins
    assert recipe_for(_market(tmp_path / "small", 64, 32)).name == "synthetic"


def test_an_explicit_recipe_wins_over_the_data(synth_market: Path, tmp_path: Path) -> None:
    parser, _ = build_parser("train-reid")
    args = parser.parse_args(["--data", str(synth_market), "--out", str(tmp_path), "--recipe", "market"])
    assert args.recipe == "market" and args.model is None  # filled when the command runs
    parser, _ = build_parser("reid-gain")
    args = parser.parse_args(["--data", str(synth_market), "--out", str(tmp_path), "--recipe", "market"])
    assert apply_recipe(args)[0] == RECIPES["market"].__class__(
        **{**RECIPES["market"].__dict__, "why": "chosen with --recipe"}
    )
    assert args.reid_model == "resnet50"


def test_the_probe_measures_a_training_step() -> None:
    seconds = probe_step_seconds("osnet_x0_25", 32, 16, 4, steps=1)
    assert math.isfinite(seconds) and 0 < seconds < 60
