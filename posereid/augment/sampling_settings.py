"""The sampling setting a consumer of a generator uses when its user gives none: the checkpoint's.

A few-step checkpoint (:mod:`posereid.models.few_step`) declares its own sampler: ``sampling_defaults()``
is ``{"steps": K, "sampler": "few-step", "guidance": (1, 1)}`` (one network call per step, guidance folded
in); any other checkpoint's is :data:`~posereid.models.pipeline.SAMPLING_DEFAULTS`' (20 DPM-Solver++ steps
at guidance 2), which was every consumer's default before few-step checkpoints existed. ``generate`` takes
``None`` for "the checkpoint's", but a consumer that records what it sampled with (a generated folder's
manifest, a quality report, a transform's repr, the demo's plan) resolves the setting here, once, before
sampling, with the same rules as :meth:`GeneratorPipeline.generate
<posereid.models.pipeline.GeneratorPipeline.generate>`, and then passes explicit values:

* ``sampler=None`` is the checkpoint's sampler;
* ``steps`` / ``guidance`` left out are the checkpoint's when the sampler is the checkpoint's own, else
  the plain defaults (a few-step checkpoint sampled with ``"euler"`` is its plain flow model: 20 steps at
  guidance 2 unless told otherwise);
* the few-step sampler is refused for a checkpoint without one, and on a few-step checkpoint it takes
  only the step counts it was trained for and guidance ``(1, 1)``: :func:`check_sampling` says so before
  any image is made.
"""

from __future__ import annotations

from typing import Any

from posereid.models.few_step import FEW_STEP
from posereid.models.pipeline import CHECKPOINT_DEFAULTED, SAMPLING_DEFAULTS
from posereid.models.sampling import NOT_FEW_STEP

#: the setting of a checkpoint without a sampler of its own (``SAMPLING_DEFAULTS``' three options)
PLAIN_SAMPLING: dict[str, Any] = {k: SAMPLING_DEFAULTS[k] for k in CHECKPOINT_DEFAULTED}


def _setting(steps: Any, sampler: Any, guidance: Any) -> dict[str, Any]:
    return {"steps": int(steps), "sampler": str(sampler), "guidance": tuple(float(g) for g in guidance)}


def checkpoint_sampling(generator: Any) -> dict[str, Any]:
    """``steps`` / ``sampler`` / ``guidance`` that ``generator`` samples with when given none: its
    ``sampling_defaults()`` (a generator without that method: :data:`PLAIN_SAMPLING`)."""
    defaults = getattr(generator, "sampling_defaults", None)
    own = defaults() if callable(defaults) else PLAIN_SAMPLING
    return _setting(own["steps"], own["sampler"], own["guidance"])


def own_sampling(generator: Any) -> dict[str, Any] | None:
    """The setting ``generator``'s checkpoint declares for itself (a few-step checkpoint: its sampler, its
    default step count, guidance ``(1, 1)``), or ``None`` when it has none of its own (the plain
    defaults), so that a consumer with a default of its own (e.g. a budget planner) keeps it."""
    own = checkpoint_sampling(generator)
    return None if own == _setting(**PLAIN_SAMPLING) else own


def fill_from_own(
    own: dict[str, Any] | None, *, steps: Any = None, sampler: Any = None, guidance: Any = None
) -> dict[str, Any]:
    """The options left out (``None``) taken from a checkpoint's ``own`` setting (:func:`own_sampling`), only
    when the sampler is its own (left out, or named): with another sampler they stay ``None`` for the
    caller's defaults (a recipe), since a few-step checkpoint's step count and folded-in guidance mean nothing
    to, e.g., DPM-Solver++ (1 step at guidance 1 would be a blur). The rule of :func:`resolve_sampling`, for
    consumers whose fallback is not the plain default (``reid-gain``, the generator gate)."""
    asked = {"steps": steps, "sampler": sampler, "guidance": guidance}
    if own is None or (sampler is not None and sampler != own["sampler"]):
        return asked
    return {k: own[k] if v is None else v for k, v in asked.items()}


def resolve_sampling(
    generator: Any, *, steps: int | None = None, sampler: str | None = None, guidance: Any = None
) -> dict[str, Any]:
    """The setting ``generator.generate(steps=, sampler=, guidance=)`` uses, each ``None`` resolved as
    ``generate`` resolves it (see the module docstring); checked with :func:`check_sampling`.

    ``guidance`` is a ``(w_pose, w_appearance)`` pair (or ``None``); returns ``{"steps": int, "sampler":
    str, "guidance": (float, float)}``.
    """
    own = checkpoint_sampling(generator)
    sampler = own["sampler"] if sampler is None else sampler
    base = own if sampler == own["sampler"] else PLAIN_SAMPLING
    setting = _setting(
        base["steps"] if steps is None else steps, sampler, base["guidance"] if guidance is None else guidance
    )
    check_sampling(generator, setting)
    return setting


def _step_size_embedding(generator: Any) -> Any:
    """A few-step checkpoint's step-size embedding (of the generator, or of the base a refiner follows)."""
    for g in (generator, getattr(generator, "base", None)):
        embedding = getattr(g, "few_step", None)
        if embedding is not None:
            return embedding
    return None


def check_sampling(generator: Any, setting: dict[str, Any]) -> None:
    """Refuse, before any image is made, a few-step setting ``generator`` cannot sample: the few-step
    sampler on a checkpoint without one, guidance other than ``(1, 1)``, a step count it was not trained
    for (``ValueError``, the words of ``generate``'s own refusal)."""
    if setting["sampler"] != FEW_STEP:
        return
    if checkpoint_sampling(generator)["sampler"] != FEW_STEP:
        raise ValueError(NOT_FEW_STEP)
    if tuple(float(g) for g in setting["guidance"]) != (1.0, 1.0):
        raise ValueError(
            "a few-step checkpoint has its guidance folded in; sample it with guidance (1, 1) or leave "
            f"guidance unset (got {tuple(setting['guidance'])})"
        )
    embedding = _step_size_embedding(generator)
    if embedding is not None:
        embedding.check_steps(int(setting["steps"]))


def refiner_sampler(sampler: str | None) -> str:
    """The sampler of a refiner run after the generator (``--refiner``): the one asked for, except the
    few-step one or none (a refiner has no few-step sampler): then the plain default, DPM-Solver++."""
    return PLAIN_SAMPLING["sampler"] if sampler is None or sampler == FEW_STEP else str(sampler)


def describe_sampling(setting: dict[str, Any]) -> str:
    """``"few-step, 1 step(s), guidance 1,1"``: a setting in words, for summaries."""
    g = setting["guidance"]
    return f"{setting['sampler']}, {setting['steps']} step(s), guidance {g[0]:g},{g[1]:g}"


__all__ = [
    "PLAIN_SAMPLING",
    "check_sampling",
    "checkpoint_sampling",
    "describe_sampling",
    "fill_from_own",
    "own_sampling",
    "refiner_sampler",
    "resolve_sampling",
]
