"""argparse types shared by every command: bad values stop in the parser with a one-line usage error.

Every layer may import this module (it imports nothing from posereid), so ``posereid generate --batch-size
0`` or ``--guidance-pose nan`` is refused before any model is loaded, with exit code 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, steps, images per source)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (intervals where 0 means "never", seeds)."""
    return _int_at_least(text, 0)


def finite_float(text: str) -> float:
    """A finite number (NaN and infinities would silently become grey images or NaN losses)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, time budgets)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def share(text: str) -> float:
    """A share in [0, 1) (e.g. of synthetic images per batch: 1 would leave no real image)."""
    value = finite_float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a share in [0, 1), got {text!r}")
    return value


def shard(text: str) -> tuple[int, int]:
    """``i/n`` with ``0 <= i < n``: this process generates the items with ``index % n == i``."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n like 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"need 0 <= i < n in i/n, got {text!r}")
    return i, n


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` (a model or schedule option): the value is read as JSON when it parses (``3``, ``0.5``,
    ``true``, ``[1, 2]``), else kept as text (``flow``)."""
    import json

    key, sep, raw = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a field name as KEY, got {text!r}")
    try:
        value: object = json.loads(raw)
    except ValueError:
        value = raw
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{key}: must be a finite number, got {raw!r}")
    return key.strip(), value


def csv_list(item: Callable[[str], object]) -> Callable[[str], tuple]:
    """A comma-separated list whose items are checked by ``item`` (one of the types above)."""

    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return tuple(item(p) for p in parts)

    return parse


__all__ = [
    "csv_list",
    "finite_float",
    "key_value",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "shard",
    "share",
]
