"""The README cannot drift from the code: its commands and code blocks run, in order, at tiny sizes.

Every ```bash block's ``posereid`` commands run through the console script's ``main`` and every ```python
block runs with ``exec``, in one temporary working directory, so later blocks use what earlier ones made.
Sizes shrink through :data:`TINY`, a list of exact replacements that must each apply once: a README edit
that removes one of them fails here too (update the list with the README).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from posereid.experiments.cli import main as cli_main

README = Path(__file__).resolve().parents[1] / "README.md"
#: README text → its tiny version (each must occur exactly once in the README)
TINY = [
    ("--train-ids 40 --test-ids 40", "--train-ids 3 --test-ids 3 --per-camera 2 --cameras 2 --distractors 1 --junk 1"),
    ("--steps 6000", "--steps 2 --preset tiny --image-size 64x32 --batch-size 2 --checkpoint-every 0 --sample-every 0"),
    ("--per-image 2", "--per-image 1 --steps 1 --batch-size 4"),
    ("--augment strong", "--augment strong --steps 2 --batch-size 8"),
    ("--fractions 0.2,1", "--fractions 1 --seeds 0 --reid-steps 2 --reid-batch-size 8 --steps 1"),
]  # fmt: skip
#: commands that are not posereid's (installing, the Makefile): the test suite itself runs under one
OTHER = ("pip ", "make ")


def _blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(bash|python)\n(.*?)```", text, flags=re.S)


def _commands(block: str) -> list[list[str]]:
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        line = line.split("  #")[0].strip()  # an aligned comment after the command
        if not line or line.startswith("#") or line.startswith(OTHER):
            continue
        argv = shlex.split(line)
        assert argv[0] == "posereid", f"README command not run by this test: {line}"
        commands.append(argv[1:])
    return commands


def test_every_tiny_replacement_still_applies() -> None:
    text = README.read_text(encoding="utf-8")
    stale = [old for old, _ in TINY if text.count(old) != 1]
    assert not stale, f"README changed: update tests/test_readme.py TINY for {stale}"
    assert len(text.splitlines()) < 150, "the README is read in five minutes: keep it under 150 lines"


@pytest.mark.slow
def test_readme_blocks_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text(encoding="utf-8")
    for old, new in TINY:
        text = text.replace(old, new)
    monkeypatch.chdir(tmp_path)
    ran = {"bash": 0, "python": 0}
    for kind, block in _blocks(text):
        if kind == "python":
            exec(compile(block, str(README), "exec"), {"__name__": "readme"})
            ran[kind] += 1
            continue
        for argv in _commands(block):
            assert cli_main([*argv, *(["--no-progress"] if argv[0] in NO_PROGRESS else [])]) in (0, None), (
                argv
            )
            ran[kind] += 1
    assert ran["python"] >= 1 and ran["bash"] >= 5, ran
    assert os.path.isdir("runs/gain") and (tmp_path / "runs" / "gain" / "results.csv").is_file()


#: commands whose bars would clutter the test log
NO_PROGRESS = {"synth-market", "train-generator", "generate", "reid-gain"}
