"""A refiner after any generator: PCDMs' third stage restoring texture on another family's output.

PCDMs (Shen et al., ICLR 2024) report that their refining stage, a diffusion model conditioned on a coarse
image and the source, also improves other methods' results. :class:`RefinedGenerator` composes any
:class:`~posereid.models.contract.PoseTransferGenerator` with anything that has
``refine(source, coarse, target_kps, *, steps, sampler, guidance, seeds)`` (a PCDMs pipeline), and is
itself a generator: ``posereid generate --refiner DIR``, ``PoseTransferAugment(..., refiner=...)``,
``evaluate-generator --refiner DIR``, the demo and reid-gain use it unchanged.

A refiner whose checkpoint records its trained stages (``trained_stages`` in ``model_index.json``, written
by ``train-generator``) without ``refine`` is refused (:func:`load_refiner`, :class:`RefinedGenerator`):
it would put every image through random weights. One with no record (a pipeline never staged, e.g. made
by ``from_preset``) is taken as it is, like ``generate`` takes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from posereid.models.checkpoint import MODEL_INDEX_NAME
from posereid.models.contract import (
    PoseTransferGenerator,
    PoseTransferSampler,
    checkpoint_family,
    load_generator,
)

#: the refiner's per-sample seed is derived from the generation seed so its noise is not the same draw
_REFINER_SEED_OFFSET = 0x5EED


@runtime_checkable
class Refiner(Protocol):
    """What :class:`RefinedGenerator` needs of a refiner (a PCDMs pipeline provides it)."""

    @property
    def image_size(self) -> tuple[int, int]: ...

    @property
    def device(self) -> torch.device: ...

    def refine(
        self, source: torch.Tensor, coarse: torch.Tensor, target_kps: torch.Tensor, source_kps: Any = None,
        **options: Any,
    ) -> torch.Tensor:  # fmt: skip
        """``coarse`` images refined; ``options`` are the sampling options (``steps``, ``sampler``, ``guidance``,
        ``seeds``, ``generator``: see :class:`~posereid.models.pipeline.SamplingOptions`)."""


def refiner_seeds(seeds: Sequence[int] | None) -> list[int] | None:
    """Per-sample refiner seeds: a fixed function of the generation seeds (reproducible, not the same draw)."""
    return None if seeds is None else [(int(s) + _REFINER_SEED_OFFSET) % 2**63 for s in seeds]


#: what to do about a refiner whose refine stage was never trained
_TRAIN_REFINE = (
    "train it first (`posereid train-generator --family pcdms --stage refine --init {ckpt} --out DIR`)"
)


def untrained_refine_stage(refiner: object) -> tuple[str, ...] | None:
    """The recorded ``trained_stages`` of ``refiner`` when they leave out ``refine``, else ``None`` (trained,
    or no record: a pipeline never staged runs every stage)."""
    stages = getattr(refiner, "trained_stages", None)
    if stages is None or isinstance(stages, str):
        stages = () if stages is None else (stages,)
    stages = tuple(str(s) for s in stages)
    return stages if stages and "refine" not in stages else None


class RefinedGenerator(nn.Module):
    """``base`` generates, ``refiner`` restores texture; one :class:`PoseTransferGenerator` to callers.

    Args:
        base: any family's generator.
        refiner: an object with ``refine`` (see :class:`Refiner`) working at ``base``'s image size.
        steps, sampler, guidance: the refiner's sampling settings (the base uses those of ``generate``);
            ``guidance=None`` keeps the refiner's own default weights.
    """

    def __init__(
        self,
        base: PoseTransferGenerator,
        refiner: Refiner,
        *,
        steps: int = 20,
        sampler: str = "dpmsolver++",
        guidance: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not callable(getattr(refiner, "refine", None)):
            raise TypeError(f"{type(refiner).__name__} has no refine(source, coarse, target_kps) method")
        stages = untrained_refine_stage(refiner)
        if stages is not None:
            raise ValueError(
                f"the refiner ({type(refiner).__name__}) has trained only {', '.join(stages)}, never its refine "
                "stage, so it would put every image through random weights; "
                + _TRAIN_REFINE.format(ckpt="ITS_CHECKPOINT")
                + ", or pass another refiner"
            )
        if tuple(refiner.image_size) != tuple(base.image_size):
            raise ValueError(
                f"the refiner works at {tuple(refiner.image_size)} but the generator at "
                f"{tuple(base.image_size)}; use a refiner trained at the generator's image size"
            )
        self.base = base
        self.refiner = refiner
        self.refiner_steps = int(steps)
        self.refiner_sampler = sampler
        self.refiner_guidance = None if guidance is None else tuple(float(g) for g in guidance)
        self.family = f"{getattr(base, 'family', 'generator')}+refiner"

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.base.image_size)  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.base.device

    @torch.no_grad()
    def generate(
        self, source: torch.Tensor, target_kps: torch.Tensor, source_kps: torch.Tensor | None = None, **opts: Any
    ) -> torch.Tensor:  # fmt: skip
        """The base's images for the targets (``opts`` go to the base's ``generate``), then refined with
        the refiner's settings and per-sample seeds derived from ``seeds`` (:func:`refiner_seeds`)."""
        coarse = self.base.generate(source, target_kps, source_kps, **opts)
        dev, seeds = self.refiner.device, opts.get("seeds")
        refine: dict[str, Any] = dict(steps=self.refiner_steps, sampler=self.refiner_sampler)
        if self.refiner_guidance is not None:
            refine["guidance"] = self.refiner_guidance
        return self.refiner.refine(
            source.to(dev), coarse.to(dev), torch.as_tensor(target_kps).to(dev),
            None if source_kps is None else torch.as_tensor(source_kps).to(dev),
            seeds=refiner_seeds(seeds), generator=None if seeds is not None else opts.get("generator"), **refine,
        )  # fmt: skip

    def sampling_defaults(self) -> dict[str, Any]:
        """The base's (its ``generate`` gets the options)."""
        return self.base.sampling_defaults()

    def training_loss(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise TypeError("a RefinedGenerator is not trained as one: train the generator and the refiner apart")

    def reinitialized(self) -> RefinedGenerator:
        """The untrained base with the same refiner (a quality report's floor)."""
        return RefinedGenerator(
            self.base.reinitialized(), self.refiner, steps=self.refiner_steps,
            sampler=self.refiner_sampler, guidance=self.refiner_guidance,
        )  # fmt: skip


def load_refiner(
    path: str | os.PathLike[str], *, device: torch.device | str | None = None, use_ema: bool = True
) -> Refiner:
    """A checkpoint directory whose family has a refiner (PCDMs), loaded for :class:`RefinedGenerator`.

    Raises ``ValueError`` naming the checkpoint when its family has no refiner, or when it records its
    trained stages (``model_index.json``) and the refine stage is not one of them."""
    family = checkpoint_family(path)
    model = load_generator(path, device=device, use_ema=use_ema)
    if not callable(getattr(model, "refine", None)):
        raise ValueError(
            f"{path}: a {family} checkpoint has no refiner; pass a PCDMs checkpoint (train-generator "
            "--family pcdms) whose refine stage is trained"
        )
    stages = untrained_refine_stage(model)
    if stages is not None:
        raise ValueError(
            f"{path}: the refine stage of this {family} checkpoint was never trained (trained_stages "
            f"{list(stages)} in {Path(path) / MODEL_INDEX_NAME}), so it would put every image through "
            f"random weights; {_TRAIN_REFINE.format(ckpt=path)} and pass DIR/final, or another refiner"
        )
    return model  # type: ignore[return-value]


def load_sampler(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    refiner: str | os.PathLike[str] | None = None,
    refiner_steps: int = 20,
    sampler: str = "dpmsolver++",
) -> PoseTransferSampler:
    """A generator checkpoint, followed by a refiner checkpoint's refine stage when ``refiner`` is given
    (what ``generate --refiner`` and ``evaluate-generator --refiner`` sample with)."""
    generator = load_generator(path, device=device)
    if refiner is None:
        return generator
    return RefinedGenerator(
        generator, load_refiner(refiner, device=device), steps=refiner_steps, sampler=sampler
    )


__all__ = [
    "RefinedGenerator",
    "Refiner",
    "load_refiner",
    "load_sampler",
    "refiner_seeds",
    "untrained_refine_stage",
]
