"""The generator contract every family implements, and the one loader that picks the family.

Augment, offline generation, the identity filter, quality reports, the demo and the re-ID gain protocol
only ever hold a :class:`PoseTransferGenerator`; :func:`load_generator` turns a checkpoint directory into
one. A family is a folder under ``posereid/models/`` whose pipeline subclasses
:class:`~posereid.models.pipeline.GeneratorPipeline` and is listed in :data:`FAMILIES`.

Which family a directory holds is read as diffusers does: ``model_index.json``'s ``_class_name`` (the
pipeline class), else ``config.json``'s ``_class_name`` (the main model's class, for a checkpoint written
before pipelines wrote an index).

A new family registers itself with :func:`register_family` (``docs/ARCHITECTURE.md``, "A new family").
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from posereid.models.checkpoint import CONFIG_NAME, MODEL_INDEX_NAME, CheckpointError, read_json
from posereid.models.pipeline import GeneratorPipeline


@runtime_checkable
class PoseTransferSampler(Protocol):
    """Source image + keypoints, target keypoints → image: what sampling callers need (the augment transform,
    offline generation, the identity filter, quality reports). Every family's pipeline is one, and so is a
    wrapper such as :class:`~posereid.models.refine.RefinedGenerator`."""

    family: str

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the images the generator reads and writes."""

    @property
    def device(self) -> torch.device:
        """Where the weights are; inputs are moved there."""

    #: ``generate(source, target_kps, source_kps=None, *, steps, sampler, guidance, seeds, generator, callback,
    #: autocast_dtype, progress) -> (B, 3, H, W)`` images in ``[0, 1]``; one seed per sample makes each
    #: image independent of the batch. The one spelled-out signature is the base pipeline's (no copy here).
    generate = GeneratorPipeline.generate

    def sampling_defaults(self) -> dict[str, Any]:
        """``steps`` / ``sampler`` / ``guidance`` that ``generate`` uses when they are left out (``None``):
        a few-step checkpoint's own sampler, else 20 DPM-Solver++ steps at guidance 2."""

    def reinitialized(self) -> PoseTransferSampler:
        """A fresh, untrained generator of the same configuration (a quality report's floor)."""


@runtime_checkable
class PoseTransferGenerator(PoseTransferSampler, Protocol):
    """A trainable, saveable generator: what every family's pipeline provides (``load_generator`` returns
    one). Implementations are ``torch.nn.Module`` s (``.to``, ``.eval``, ``.parameters`` work), so the shared
    training loop (:func:`posereid.models.training.train_generator`) can optimise, average and checkpoint
    them without knowing the family.
    """

    #: preset name → config fields (:meth:`from_preset`)
    PRESETS: ClassVar[dict[str, dict]]
    #: stages a multi-stage family trains one at a time; empty for a one-model family
    TRAINING_STAGES: ClassVar[tuple[str, ...]]

    #: ``training_loss(source, target, source_kps, target_kps, *, generator=None)``: the scalar loss of one
    #: batch of same-identity pairs (the shared training loop's hook).
    training_loss = GeneratorPipeline.training_loss

    def save_pretrained(
        self, save_directory: str | os.PathLike[str], ema_state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Write a checkpoint directory that :func:`load_generator` reads back."""

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PoseTransferGenerator:
        """A fresh, untrained generator of preset ``name`` (``PRESETS``), any config field overridden."""

    def set_training_stage(self, stage: str) -> PoseTransferGenerator:
        """Train ``stage`` of ``TRAINING_STAGES`` next (a one-model family refuses every name)."""

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], *, use_ema: bool = True
    ) -> PoseTransferGenerator:
        """Load a checkpoint directory of this family."""


#: the generator checkpoint the package ships: the PIDM family's ``small`` preset (64x32), trained on the demo's
#: synthetic people (``make generator-asset`` reproduces it; README says where its gain was measured)
SHIPPED_GENERATOR = Path(__file__).resolve().parents[1] / "assets" / "generator-small"


#: family name → (``module:PipelineClass``, class names a checkpoint of it may carry: the pipeline's in
#: ``model_index.json``, the main model's in ``config.json``)
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "pidm": ("posereid.models.pidm:PIDMPipeline", ("PIDMPipeline", "PIDMModel")),
    "pcdms": ("posereid.models.pcdms:PCDMsPipeline", ("PCDMsPipeline",)),
    "cfld": ("posereid.models.cfld:CFLDPipeline", ("CFLDPipeline", "CFLDModel")),
}


def register_family(family: str, pipeline: str | type, class_names: Sequence[str] = ()) -> None:
    """Make ``family`` known to :func:`load_generator`, the commands and the conformance tests.

    ``pipeline``: the pipeline class, or ``"module:ClassName"`` (imported on first use);
    ``class_names``: the ``_class_name`` values its checkpoints carry (default: the pipeline class's name
    and its ``model_class``'s). Registering a name again replaces it.
    """
    if isinstance(pipeline, str):
        module, _, name = pipeline.partition(":")
        if not module or not name:
            raise ValueError(f"pipeline must be a class or 'module:ClassName', got {pipeline!r}")
        names = tuple(class_names) or (name,)
    else:
        module, name = pipeline.__module__, pipeline.__qualname__
        default = (
            pipeline.__name__,
            getattr(getattr(pipeline, "model_class", None), "__name__", pipeline.__name__),
        )
        names = tuple(class_names) or tuple(dict.fromkeys(default))
        _CLASSES[f"{module}:{name}"] = pipeline
    FAMILIES[family] = (f"{module}:{name}", names)


#: classes registered directly (e.g. defined in a script or a test module) by their ``module:name``
_CLASSES: dict[str, type] = {}


class UnknownGeneratorError(CheckpointError):
    """A checkpoint directory names no known family (the message lists the known ones)."""


def family_class(family: str) -> type[GeneratorPipeline]:
    """The pipeline class of ``family`` (imported on demand)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown generator family {family!r}; known: {', '.join(FAMILIES)}")
    spec = FAMILIES[family][0]
    if spec in _CLASSES:
        return _CLASSES[spec]
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def is_checkpoint_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory written by a pipeline's ``save_pretrained`` (any family)."""
    directory = Path(path)
    return (directory / MODEL_INDEX_NAME).is_file() or (directory / CONFIG_NAME).is_file()


def checkpoint_family(path: str | os.PathLike[str]) -> str:
    """The family a checkpoint directory holds, from ``model_index.json`` or ``config.json``."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: generator checkpoint directory not found")
    meta = directory / MODEL_INDEX_NAME
    if not meta.is_file():
        meta = directory / CONFIG_NAME
    if not meta.is_file():
        raise FileNotFoundError(
            f"{directory}: no {MODEL_INDEX_NAME} or {CONFIG_NAME}; expected a directory written by "
            "save_pretrained (e.g. runs/gen/final)"
        )
    name = read_json(meta).get("_class_name")
    for family, (_, names) in FAMILIES.items():
        if name in names:
            return family
    known = "; ".join(f"{f} ({', '.join(n)})" for f, (_, n) in FAMILIES.items())
    raise UnknownGeneratorError(
        f"{meta}: _class_name {name!r} is not a known generator family; known: {known}"
    )


def load_generator(
    path: str | os.PathLike[str], *, use_ema: bool = True, device: torch.device | str | None = None
) -> PoseTransferGenerator:
    """Load any family's checkpoint directory (EMA weights preferred), in eval mode, on ``device``."""
    pipe = family_class(checkpoint_family(path)).from_pretrained(path, use_ema=use_ema)
    if device is not None:
        pipe = pipe.to(device)
    return pipe.eval()


__all__ = [
    "FAMILIES",
    "SHIPPED_GENERATOR",
    "PoseTransferGenerator",
    "PoseTransferSampler",
    "UnknownGeneratorError",
    "checkpoint_family",
    "family_class",
    "is_checkpoint_dir",
    "load_generator",
    "register_family",
]
