"""Lazy re-exports for package ``__init__`` files (PEP 562).

Importing ``posereid.models`` must not pull in diffusers, and ``posereid.experiments`` must not pull in
torchmetrics, just to reach one light function; names are resolved on first access instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence


def attach(
    package: str, submodules: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """Return ``(__getattr__, __dir__, __all__)`` exporting ``submodules[mod]`` names from ``package.mod``."""
    where = {name: mod for mod, names in submodules.items() for name in names}
    public = sorted(where)

    def __getattr__(name: str) -> object:
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return public

    return __getattr__, __dir__, public
