"""One vocabulary across commands: the same thing has the same flag and the same value format everywhere.

Walks every command's ``--help`` (the parser each command builds) and checks the shared names, parses the
shared value formats through each command's own parser, and checks that an old spelling still works and
warns once.
"""

from __future__ import annotations

import argparse

import pytest

from posereid import argtypes
from posereid.experiments.cli import COMMANDS, build_parser

#: shared flag → the commands that must take it with exactly that spelling
SHARED: dict[str, set[str]] = {
    "--data": {"train-generator", "generate", "filter", "train-reid", "reid-gain", "evaluate-generator"},
    "--annotations": {"train-generator", "sample", "generate", "reid-gain", "evaluate-generator"},
    "--annotation-size": {"train-generator", "sample", "generate", "reid-gain"},
    "--steps": {"sample", "generate", "reid-gain", "evaluate-generator", "train-generator", "train-reid"},
    "--sampler": {"sample", "generate", "reid-gain", "evaluate-generator"},
    "--guidance": {"sample", "generate", "reid-gain", "evaluate-generator"},
    "--seed": {"train-generator", "sample", "generate", "train-reid", "evaluate-generator", "demo", "synth-market"},
    "--device": {
        "train-generator", "sample", "generate", "filter", "train-reid", "reid-gain", "evaluate-generator", "demo",
    },
    "--out": set(COMMANDS) - {"filter", "pose-judge"},
    "--no-progress": {"train-generator", "generate", "filter", "reid-gain", "annotate", "synth-market"},
    "--recipe": {"reid-gain", "train-reid", "train-generator"},
}  # fmt: skip
#: old spellings that must still parse (and warn once): command → (old argv, the new option's dest, value)
ALIASES = {
    "generate": (["--guidance-pose", "3"], "guidance", (3.0, 2.0)),
    "sample": (["--guidance-appearance", "1.5"], "guidance", (2.0, 1.5)),
    "reid-gain": (["--annotation-hw", "64", "32"], "annotation_size", (64, 32)),
}
#: the required options of those commands
REQUIRED = {
    "generate": ["--generator", "g", "--data", "d", "--per-image", "1", "--out", "o"],
    "sample": ["--generator", "g", "--source", "s.jpg", "--target-pose-from", "t.jpg", "--out", "o.png"],
    "reid-gain": ["--data", "d", "--out", "o"],
}


def _options(command: str) -> set[str]:
    parser, _ = build_parser(command)
    return {
        opt
        for action in parser._actions  # the parser's own option list: what --help prints
        if action.help != argparse.SUPPRESS
        for opt in action.option_strings
    }


def test_every_command_spells_the_shared_options_alike() -> None:
    missing = {
        flag: sorted(c for c in commands if flag not in _options(c)) for flag, commands in SHARED.items()
    }
    assert not {k: v for k, v in missing.items() if v}, missing
    helps = {c: build_parser(c)[0].format_help() for c in COMMANDS}
    for old in ("--guidance-pose", "--guidance-appearance", "--annotation-hw"):
        assert not [c for c, text in helps.items() if old in text], f"{old} is shown in a --help"


@pytest.mark.parametrize("text", ["1.5,2", "1.5:2"])
def test_guidance_has_one_value_format(text: str) -> None:
    for command in sorted(SHARED["--guidance"]):
        parser, _ = build_parser(command)
        action = next(a for a in parser._actions if "--guidance" in a.option_strings)
        assert action.type(text) == (1.5, 2.0), command
        assert action.type("2") == (2.0, 2.0), command
    with pytest.raises(argparse.ArgumentTypeError, match="finite"):
        argtypes.guidance("nan")


@pytest.mark.parametrize("command", sorted(ALIASES))
def test_an_old_spelling_still_works_and_warns_once(command: str, capsys) -> None:
    argv, dest, value = ALIASES[command]
    parser, _ = build_parser(command)
    argtypes._WARNED.clear()
    args = parser.parse_args([*REQUIRED[command], *argv])
    args2 = parser.parse_args([*REQUIRED[command], *argv])
    assert getattr(args, dest) == value == getattr(args2, dest)
    err = capsys.readouterr().err
    assert err.count("old spelling") == 1 and argv[0] in err


def test_annotations_are_found_beside_the_data(tmp_path) -> None:
    from posereid.reid_integration.market1501 import find_annotations

    (tmp_path / "with").mkdir()
    (tmp_path / "with" / "market-annotation-train.csv").write_text("name:keypoints_y:keypoints_x\n")
    assert find_annotations(tmp_path / "with") == tmp_path / "with" / "market-annotation-train.csv"
    (tmp_path / "without" / "data").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="pass --annotations"):
        find_annotations(tmp_path / "without" / "data")
