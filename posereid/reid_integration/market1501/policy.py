"""One bad input never stops a batch: the batch policy every command shares.

Every batch command (``annotate``, ``train-generator``, ``generate``, ``filter``, ``train-reid``,
``evaluate-generator``) treats an unreadable image, a malformed row or a stray file (a non-Market name, a
broken symlink or a symlink loop in a split folder) the same way, through :class:`BadInputPolicy`: skip
it, count it, log one warning naming an example, and report the count in the command's summary;
``--strict`` (:func:`posereid.argtypes.add_strict_arg`, one help text for every command) stops at the
first one instead, with an error naming the file.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class BadInputPolicy:
    """What a batch command does with one bad input, the same everywhere (see the module docstring).

    Call :meth:`skip_or_raise` with the error of each bad input (an error that names the file, and the
    line for a row): with ``strict`` it is raised at once; otherwise it is counted per ``kind``
    (:attr:`counts`, :attr:`skipped`), its message kept (:attr:`errors`, the first ``max_errors``) and
    logged at debug level. :meth:`warn` then logs one warning for the whole batch naming an example, and
    the command puts :attr:`skipped` (or :meth:`describe`) in its summary.
    """

    def __init__(self, strict: bool = False, *, max_errors: int = 20) -> None:
        self.strict = bool(strict)
        self.max_errors = int(max_errors)
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []

    def skip_or_raise(self, exc: BaseException, kind: str = "unreadable image(s)") -> None:
        """Raise ``exc`` if strict, else count it under ``kind`` and go on (the caller skips the input)."""
        if self.strict:
            raise exc
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.errors) < self.max_errors:
            self.errors.append(str(exc))
        logger.debug("skipping: %s", exc)

    @property
    def skipped(self) -> int:
        """How many inputs were skipped."""
        return sum(self.counts.values())

    def describe(self) -> str:
        """``"2 unreadable image(s), 1 file(s) with a bad name"``, or ``"none"``."""
        return ", ".join(f"{n} {kind}" for kind, n in self.counts.items()) or "none"

    def warn(self, where: str, log: logging.Logger | None = None) -> None:
        """One warning for the batch (if anything was skipped), naming the first bad input."""
        if self.skipped:
            (log or logger).warning(
                "%s: skipped %s (--strict stops at the first instead); e.g. %s",
                where,
                self.describe(),
                self.errors[0],
            )


__all__ = ["BadInputPolicy"]
