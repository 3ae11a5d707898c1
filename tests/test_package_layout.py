"""Package layout: commands apart from the library, and the market1501 package's re-exports."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import types
from pathlib import Path

import pytest

import posereid
from posereid.experiments.cli import COMMANDS

ROOT = Path(posereid.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (``from a import b`` counts as ``a`` and ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", ["augment", "reid_integration"])
def test_no_library_module_imports_a_command_module(package: str) -> None:
    cli = f"posereid.{package}.cli"
    for path in (ROOT / package).rglob("*.py"):
        if path.name != "cli.py":
            assert cli not in _imported_modules(path), path


@pytest.mark.parametrize("command", ["annotate", "generate", "filter", "train-reid"])
def test_the_moved_commands_live_in_their_packages_cli(command: str) -> None:
    module_name = COMMANDS[command][0]
    assert module_name.endswith(".cli")
    module = importlib.import_module(module_name)
    snake = command.replace("-", "_")
    assert callable(getattr(module, f"add_{snake}_args")) and callable(getattr(module, f"run_{snake}"))


def test_market1501_re_exports_every_public_name_of_its_modules() -> None:
    import posereid.reid_integration.market1501 as m

    for info in pkgutil.iter_modules(m.__path__):
        sub = importlib.import_module(f"{m.__name__}.{info.name}")
        for name in sub.__all__:
            assert getattr(m, name) is getattr(sub, name), f"{info.name}.{name}"
    for name in m.__all__:
        assert not isinstance(getattr(m, name), types.ModuleType), name
