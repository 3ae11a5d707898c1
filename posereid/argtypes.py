"""argparse types and options shared by every command: bad values stop in the parser with a one-line usage
error.

Every layer may import this module (it imports nothing from posereid), so ``posereid generate --batch-size
0`` or ``--guidance nan`` is refused before any model is loaded, with exit code 2. The options that several
commands share are defined here once, with one spelling, one value format and one help text (the shared
vocabulary; ``tests/test_cli_vocabulary.py`` walks every command's ``--help``): ``--data``,
``--annotations`` (found beside the data when left out), ``--annotation-size HxW``, ``--steps``,
``--sampler``, ``--guidance W`` or ``W_POSE,W_APP``, ``--seed``, ``--device``, ``--out``, ``--no-progress``,
``--strict``. Old spellings stay as aliases that warn once (:func:`add_alias`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


#: the most synthetic images per source: the box field of a Market name holds k in two digits
MAX_PER_IMAGE = 100


def per_image(text: str) -> int:
    """Synthetic images per source image: 1 to :data:`MAX_PER_IMAGE` (a Market name's 2-digit box field
    numbers them 0-99)."""
    value = _int_at_least(text, 1)
    if value > MAX_PER_IMAGE:
        raise argparse.ArgumentTypeError(
            f"must be <= {MAX_PER_IMAGE} (a synthetic image's number is the 2-digit box field), got {value}"
        )
    return value


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


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (weight decay, thresholds of a distance)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
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


def share_or_uniform(text: str) -> float | None:
    """A share in [0, 1) as :func:`share`, or ``uniform`` (``None``: sample uniformly over all images)."""
    return None if text.strip().lower() == "uniform" else share(text)


def unit_interval(text: str) -> float:
    """A number in [0, 1], both ends included (e.g. a mixing weight)."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


def unit_share(text: str) -> float:
    """A share in (0, 1] (e.g. the best-scoring fraction of images to keep)."""
    value = finite_float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a share in (0, 1], got {text!r}")
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


def _hw_at_least(text: str, low: int) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 128x64, got {text!r}") from None
    if h < low or w < low:
        what = "positive" if low == 1 else f"at least {low}x{low}"
        raise argparse.ArgumentTypeError(f"image size must be {what}, got {text!r}")
    return h, w


def hw(text: str) -> tuple[int, int]:
    """``HxW`` → ``(H, W)``, e.g. ``"128x64"`` → ``(128, 64)`` (both sides >= 1): an image size or frame."""
    return _hw_at_least(text, 1)


def hw_at_least(low: int) -> Callable[[str], tuple[int, int]]:
    """An ``HxW`` type whose sides must both be >= ``low`` (e.g. ``hw_at_least(8)``)."""

    def parse(text: str) -> tuple[int, int]:
        return _hw_at_least(text, low)

    return parse


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


# --------------------------------------------------------------------------------------------------
# Options several commands share (one definition, one help text)
# --------------------------------------------------------------------------------------------------
#: the help of ``--strict``, the same in every batch command.
STRICT_HELP = (
    "stop at the first unreadable image or malformed row (or stray file in a Market folder), with an "
    "error naming the file, instead of skipping it, counting it and reporting the count in the summary "
    "(the default)"
)


def guidance(text: str) -> tuple[float, float]:
    """``W`` (both weights) or ``W_POSE,W_APP`` (``W_POSE:W_APP`` too): finite ``(w_pose, w_appearance)``."""
    parts = text.replace(":", ",").split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a weight like 2 or pose,appearance weights like 1.5,3, got {text!r}"
        ) from None
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected one or two weights (pose,appearance), got {text!r}")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"guidance weights must be finite numbers, got {text!r}")
    return (values[0], values[-1])


#: old spellings already warned about in this process (each warns once)
_WARNED: set[str] = set()


def warn_once(old: str, new: str) -> None:
    """Tell the user (stderr, once per process) that ``old`` is an old spelling of ``new``."""
    if old not in _WARNED:
        _WARNED.add(old)
        print(f"posereid: {old} is an old spelling; use {new} (it does the same)", file=sys.stderr)


def add_alias(
    parser: argparse.ArgumentParser,
    old: str,
    new: str,
    *,
    dest: str,
    convert: Callable[[Any, argparse.Namespace], Any] = lambda value, _ns: value,
    **kwargs: Any,
) -> None:
    """Accept ``old`` as a hidden alias of ``new``: it warns once and stores ``convert(value, namespace)`` in
    ``dest`` (the new option's destination), so the rest of the command sees one spelling."""

    class _Alias(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
            warn_once(old, new)
            setattr(namespace, dest, convert(values, namespace))

    parser.add_argument(old, action=_Alias, dest=f"_alias_{dest}", help=argparse.SUPPRESS, **kwargs)


#: the guidance of a checkpoint without a few-step sampler (``posereid.models.pipeline.SAMPLING_DEFAULTS``;
#: this module imports nothing from posereid): what an old ``--guidance-pose`` / ``--guidance-appearance``
#: alone keeps as the other weight
PLAIN_GUIDANCE: tuple[float, float] = (2.0, 2.0)


def add_guidance_arg(
    parser: argparse.ArgumentParser,
    default: tuple[float, float] | None = PLAIN_GUIDANCE,
    *,
    what: str = "sampling",
) -> None:
    """``--guidance W`` or ``W_POSE,W_APP`` (``args.guidance``: a ``(w_pose, w_appearance)`` pair); the old
    ``--guidance-pose`` / ``--guidance-appearance`` set one weight each.

    ``default=None``: ``args.guidance`` stays ``None`` when the option is not given, meaning the
    checkpoint's own (a few-step checkpoint has its guidance folded in and samples at 1,1; any other at
    2,2); an old one-weight alias then keeps :data:`PLAIN_GUIDANCE`'s other weight, as it always did.
    """
    told = (
        "the checkpoint's: 1,1 for a few-step checkpoint, else 2,2"
        if default is None
        else f"{default[0]:g},{default[1]:g}"
    )
    parser.add_argument(
        "--guidance", type=guidance, default=None if default is None else tuple(default),
        metavar="W|W_POSE,W_APP",
        help=f"classifier-free guidance of {what}: one weight for both conditions or pose,appearance "
        f"weights; 1 is the plain conditional model (default: {told})",
    )  # fmt: skip
    for index, name in enumerate(("pose", "appearance")):
        add_alias(
            parser, f"--guidance-{name}", "--guidance W_POSE,W_APP", dest="guidance", type=finite_float,
            convert=lambda w, ns, i=index: tuple(
                float(w) if j == i else (ns.guidance or PLAIN_GUIDANCE)[j] for j in range(2)
            ),
        )  # fmt: skip


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` (``args.progress``: draw progress bars, default on)."""
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def add_device_arg(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--device`` (``auto``: this process's accelerator, else the CPU; or cpu, cuda, cuda:1, ...)."""
    parser.add_argument(
        "--device", default=default, help="auto (the accelerator when there is one), cpu, cuda, cuda:1, ..."
    )


def add_annotations_arg(parser: argparse.ArgumentParser, *, split: str = "train") -> None:
    """``--annotations`` (``args.annotations``; ``None``: the command looks for
    ``market-annotation-<split>.csv`` beside the data, ``market1501.find_annotations``)."""
    parser.add_argument(
        "--annotations", type=Path, default=None,
        help=f"PATN keypoint CSV (default: market-annotation-{split}.csv in the --data folder)",
    )  # fmt: skip


def add_strict_arg(parser: argparse.ArgumentParser) -> None:
    """Add ``--strict`` (:data:`STRICT_HELP`; the batch policy of
    :class:`~posereid.reid_integration.market1501.BadInputPolicy`) to a batch command's parser."""
    parser.add_argument("--strict", action="store_true", help=STRICT_HELP)


def add_annotation_size_arg(parser: argparse.ArgumentParser, *, what: str = "the annotation CSV") -> None:
    """Add ``--annotation-size HxW`` (``args.annotation_size``: ``(H, W)`` or ``None`` = from the data)."""
    parser.add_argument(
        "--annotation-size",
        type=hw,
        default=None,
        metavar="HxW",
        help=f"frame of the keypoint coordinates of {what} (default: the size of the images it annotates; "
        "required when those have mixed sizes)",
    )


def keep_usage_error(parser: argparse.ArgumentParser) -> None:
    """Let the command's run function report a usage error found after parsing (e.g. a ``--labels`` count that
    does not fit the inputs) as the parser's own: a usage line and exit code 2, as for a bad flag value."""
    parser.set_defaults(usage_error=parser.error)


def usage_error(args: argparse.Namespace, message: str) -> None:
    """``args``' parser's usage error (exit code 2; see :func:`keep_usage_error`), or ``ValueError`` for a
    namespace built by hand."""
    report = getattr(args, "usage_error", None)
    if report is None:
        raise ValueError(message)
    report(message)


def check_labels(
    args: argparse.Namespace, labels: list[str], count: int, noun: str, *, source: str = "--labels"
) -> None:
    """Row labels of a comparison: one per ``noun`` (``count`` of them), none empty, all different; otherwise
    :func:`usage_error` saying which (``source``: where the labels came from, for the message)."""
    if len(labels) != count:
        usage_error(args, f"{source} has {len(labels)} label(s) for {count} {noun}(s)")
    if not all(labels):
        usage_error(args, f"{source}: a label is empty: {labels}")
    dup = next((label for i, label in enumerate(labels) if label in labels[:i]), None)
    if dup is not None:
        usage_error(args, f"{source}: {dup!r} is given to two {noun}s; each {noun} needs its own label")


__all__ = [
    "PLAIN_GUIDANCE",
    "add_alias",
    "add_annotations_arg",
    "add_device_arg",
    "add_guidance_arg",
    "add_progress_arg",
    "check_labels",
    "guidance",
    "keep_usage_error",
    "non_negative_float",
    "unit_share",
    "usage_error",
    "warn_once",
    "STRICT_HELP",
    "add_annotation_size_arg",
    "add_strict_arg",
    "csv_list",
    "finite_float",
    "hw",
    "hw_at_least",
    "key_value",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "shard",
    "share",
]
