"""The base of every family's pipeline: conditioning checks, the sampling frame and checkpoint directories.

A family's pipeline holds its weight-only model(s) (diffusers ``ModelMixin``) and a diffusers training
scheduler, and implements two methods: ``training_loss`` (the shared training loop's hook) and
``generate`` (the loop and guidance over :func:`posereid.models.sampling.sample_loop`). Everything else
lives here once: image and keypoint checks, pose maps at the model's size, per-sample seeds, autocast,
the non-finite check, ``save_pretrained`` / ``from_pretrained`` (model files + ``scheduler_config.json``)
and presets. A pipeline is a ``torch.nn.Module`` so that ``.to()``, ``.eval()``, ``.parameters()``, the
optimizer, EMA and DDP see every stage's weights; the scheduler holds no weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import DDPMScheduler, ModelMixin
from torch import nn

from posereid.models.checkpoint import (
    CONFIG_NAME,
    SCHEDULER_CONFIG_NAME,
    CheckpointError,
    read_json,
)
from posereid.models.io_utils import atomic_write
from posereid.models.pose import NUM_KEYPOINTS, render_pose_maps
from posereid.models.sampling import (
    LEGACY_SCHEDULE_KEYS,
    SCHEDULE_KEYS,
    TRAINING_SCHEDULER_CLASSES,
    NonFiniteSampleError,
    TrainingScheduler,
    check_loss_weighting,
    make_generators,
    prediction_type,
    training_scheduler,
)

logger = logging.getLogger(__name__)


def save_scheduler(scheduler: TrainingScheduler, directory: str | os.PathLike[str]) -> None:
    """Write ``directory/scheduler_config.json`` atomically (the scheduler's own ``save_pretrained`` writes in
    place, so a killed job could leave half a config that :func:`load_scheduler` then refuses)."""
    with atomic_write(Path(directory) / SCHEDULER_CONFIG_NAME) as fh:
        fh.write(scheduler.to_json_string())


def load_scheduler(directory: str | os.PathLike[str]) -> TrainingScheduler:
    """``directory``'s ``scheduler_config.json``; without it, the schedule a pre-scheduler checkpoint used.

    The file may name a ``DDPMScheduler`` or a ``FlowMatchEulerDiscreteScheduler`` (flow matching); any
    other class is refused naming the file. A pre-scheduler checkpoint kept the noise fields (prediction
    type, T, beta schedule) in its model ``config.json``, read only in that case; the betas were PIDM's
    linear 1e-4..2e-2.
    """
    path = Path(directory) / SCHEDULER_CONFIG_NAME
    if not path.is_file():
        legacy = read_json(Path(directory) / CONFIG_NAME)
        return training_scheduler(**{k: v for k, v in legacy.items() if k in LEGACY_SCHEDULE_KEYS})
    config = read_json(path)
    name = config.get("_class_name", DDPMScheduler.__name__)
    cls = TRAINING_SCHEDULER_CLASSES.get(name)
    if cls is None:
        raise CheckpointError(
            f"{path}: training scheduler {name!r} is not supported "
            f"(expected {' or '.join(TRAINING_SCHEDULER_CLASSES)})"
        )
    return cls.from_config(config)


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` for ``dtype`` (e.g. bf16), or a no-op for ``None``."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class GeneratorPipeline(nn.Module):
    """Shared part of a family pipeline: one main model (``self.model``) and a training ``scheduler``.

    Subclasses set :attr:`family`, :attr:`model_class`, :attr:`PRESETS` and implement ``training_loss``
    and ``generate`` (see :class:`posereid.models.contract.PoseTransferGenerator`). Multi-stage families
    override :meth:`save_pretrained` / :meth:`from_pretrained` (a ``model_index.json`` and a folder per
    stage).
    """

    family: ClassVar[str] = ""
    model_class: ClassVar[type[ModelMixin]]
    PRESETS: ClassVar[dict[str, dict]] = {}
    #: config fields that belong to the noise schedule, not the model (``from_preset`` routes them)
    SCHEDULE_KEYS: ClassVar[tuple[str, ...]] = SCHEDULE_KEYS

    def __init__(self, model: ModelMixin, scheduler: TrainingScheduler | None = None) -> None:
        super().__init__()
        self.model = model
        self.scheduler = scheduler if scheduler is not None else training_scheduler()
        check_loss_weighting(self.scheduler, model.config.get("snr_gamma"), type(model).__name__)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GeneratorPipeline:
        """A fresh pipeline from preset ``name``; any model or schedule field can be overridden."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.family} preset {name!r}; choose from {', '.join(cls.PRESETS)}")
        config = {**cls.PRESETS[name], **overrides}
        schedule = {k: config.pop(k) for k in cls.SCHEDULE_KEYS if k in config}
        return cls(cls.model_class(**config), training_scheduler(**schedule))

    def reinitialized(self) -> GeneratorPipeline:
        """A fresh, untrained pipeline with the same configuration (the floor of a quality report)."""
        return type(self)(type(self.model).from_config(self.model.config), self.scheduler)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        """Device of the weights, read off one parameter (``ModelMixin.device`` walks every module)."""
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the images this generator works on."""
        h, w = self.model.config.image_size
        return int(h), int(w)

    @property
    def prediction_type(self) -> str:
        """``"epsilon"``, ``"v_prediction"``, ``"sample"`` or ``"flow"`` (the training scheduler's)."""
        return prediction_type(self.scheduler)

    # ------------------------------------------------------------------ conditioning
    def check_images(self, images: torch.Tensor, name: str) -> None:
        """``images`` must be ``(B, 3, H, W)`` at :attr:`image_size`; the error says what to do otherwise."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{name}: expected a (B, 3, H, W) tensor in [0, 1], got {shape}")
        if tuple(images.shape[-2:]) != self.image_size:
            h, w = images.shape[-2:]
            raise ValueError(
                f"{name} images are {h}x{w} but this generator works at {self.image_size[0]}x{self.image_size[1]}"
                " (config image_size); resize them (and their keypoints, posereid.models.pose.resize_keypoints)"
                " first"
            )

    def pose_maps(self, kps: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """Render ``(B, 18, 2)`` keypoints at :attr:`image_size` on the pipeline's device."""
        kps = torch.as_tensor(kps)
        if (
            kps.ndim != 3
            or tuple(kps.shape[1:]) != (NUM_KEYPOINTS, 2)
            or (batch is not None and len(kps) != batch)
        ):
            want = f"({batch if batch is not None else 'B'}, {NUM_KEYPOINTS}, 2)"
            raise ValueError(f"keypoints: expected shape {want}, got {tuple(kps.shape)}")
        if kps.is_floating_point() and not bool(torch.isfinite(kps).all()):
            raise ValueError("keypoints: NaN/Inf coordinates (use -1 for a missing joint)")
        h, w = self.image_size
        return render_pose_maps(kps, h, w, sigma=self.model.config.pose_sigma, device=self.device)

    @staticmethod
    def to_images(x: torch.Tensor) -> torch.Tensor:
        """Model space ``[-1, 1]`` → images in ``[0, 1]`` (float32); refuses NaN instead of hiding it."""
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteSampleError("sampling produced NaN/Inf values; no image is returned")
        return (x.float().clamp(-1.0, 1.0) + 1.0) / 2.0

    @staticmethod
    def generators(
        seeds: Sequence[int] | None, generator: list[torch.Generator] | torch.Generator | None, batch: int
    ) -> list[torch.Generator] | torch.Generator | None:
        """One ``torch.Generator`` per sample from ``seeds`` (see :func:`~posereid.models.sampling.make_generators`)."""
        return make_generators(seeds, generator, batch)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(
        self, save_directory: str | os.PathLike[str], ema_state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Write the model (``config.json`` + safetensors, + EMA) and ``scheduler_config.json``, each atomically.

        ``ema_state_dict`` uses this pipeline's parameter names (``model.…``), as the training loop's EMA does.
        """
        directory = Path(save_directory)
        ema = None
        if ema_state_dict is not None:
            ema = {k.removeprefix("model."): v for k, v in ema_state_dict.items() if k.startswith("model.")}
        self.model.save_pretrained(directory, ema_state_dict=ema)
        save_scheduler(self.scheduler, directory)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], *, use_ema: bool = True
    ) -> GeneratorPipeline:
        """Load a directory written by :meth:`save_pretrained` (EMA weights preferred when present).

        Only local directories. A checkpoint without ``scheduler_config.json`` (written before the schedule
        was saved on its own) loads with the schedule its model config recorded.
        """
        directory = Path(pretrained_model_name_or_path)
        model = cls.model_class.from_pretrained(directory, use_ema=use_ema)
        pipe = cls(model, load_scheduler(directory))
        logger.info("loaded %s generator from %s", cls.family, directory)
        return pipe.eval()


__all__ = ["GeneratorPipeline", "autocast_context", "load_scheduler"]
