"""The base of every family's pipeline: conditioning checks, the training and sampling templates, and
checkpoint directories with their components.

A family's pipeline holds its weight-only model(s) (diffusers ``ModelMixin`` with
:class:`~posereid.models.checkpoint.CheckpointMixin`) and a diffusers training scheduler. For a family whose
every sampling step is one (guided) call of one model, the pipeline supplies only what differs:
:meth:`GeneratorPipeline.conditions` (source image + poses → a pose and an appearance condition),
:meth:`GeneratorPipeline.null_conditions` (the "dropped" versions, for guidance) and
:meth:`GeneratorPipeline.model_output` (one denoiser call); optionally :attr:`sample_shape`,
:meth:`encode_target` / :meth:`decode` (a latent space) and :meth:`sampler`. ``training_loss`` and
``generate`` are then the templates here (timesteps, noise, condition dropout, the loss; per-sample
seeds, autocast, guidance, the sampling loop, the non-finite check). A multi-stage family (PCDMs)
overrides those two and keeps the rest.

Checkpoints: the main model and its scheduler live in :attr:`MODEL_FOLDER` (the root by default), every
further component (:attr:`COMPONENTS`: stages, a VAE) in its own folder, all named in ``model_index.json``
(diffusers' layout) — one way to save and load them. A pipeline is a ``torch.nn.Module`` so that
``.to()``, ``.eval()``, ``.parameters()``, the optimizer, EMA and DDP see every stage's weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypedDict

import torch
from diffusers import DDPMScheduler, ModelMixin
from torch import nn

from posereid.models.checkpoint import (
    MODEL_INDEX_NAME,
    SCHEDULER_CONFIG_NAME,
    CheckpointError,
    CheckpointMixin,
    read_class_json,
    read_json,
    refused_as,
    save_component,
    write_model_index,
)
from posereid.models.few_step import FEW_STEP, FEW_STEP_FOLDER, StepSizeEmbedding, grid_pairs, jump_grid
from posereid.models.guidance import Condition, GuidanceFormula, condition_dropout, guided_denoiser
from posereid.models.io_utils import atomic_write
from posereid.models.parts import check_config_fields
from posereid.models.pose import NUM_KEYPOINTS, render_pose_maps
from posereid.models.sampling import (
    NOT_FEW_STEP,
    SCHEDULE_KEYS,
    TRAINING_SCHEDULER_CLASSES,
    NonFiniteSampleError,
    SamplerName,
    TrainingScheduler,
    check_loss_weighting,
    clean_estimate,
    diffusion_loss,
    initial_noise,
    is_flow,
    make_generators,
    make_sampler,
    model_timesteps,
    noisy_sample,
    prediction_type,
    sample_loop,
    sample_timesteps,
    training_scheduler,
)

logger = logging.getLogger(__name__)

Generators = list[torch.Generator] | torch.Generator | None
Callback = Callable[[int, int, torch.Tensor], None]


class PairBatch(NamedTuple):
    """A checked training batch: images ``(B, 3, H, W)`` in ``[0, 1]`` (float32, on the pipeline's device)
    and their keypoints ``(B, 18, 2)``."""

    source: torch.Tensor
    target: torch.Tensor
    source_kps: torch.Tensor
    target_kps: torch.Tensor


class SamplingOptions(TypedDict, total=False):
    """The keyword options every generator's ``generate`` takes (see :meth:`GeneratorPipeline.generate`);
    a multi-stage family's stage samplers take them as ``**options``."""

    steps: int
    sampler: SamplerName
    guidance: Sequence[float]
    seeds: Sequence[int] | None
    generator: Generators
    callback: Callback | None
    autocast_dtype: torch.dtype | None
    progress: bool


#: the defaults of :class:`SamplingOptions` for a checkpoint without a few-step sampler. Kept on purpose
#: beside the spelled-out signature of :meth:`GeneratorPipeline.generate` (for readers and type checkers),
#: where ``steps`` / ``sampler`` / ``guidance`` are ``None`` ("the checkpoint's":
#: :meth:`GeneratorPipeline.sampling_defaults`); tests/test_conformance.py checks that they agree.
SAMPLING_DEFAULTS: dict[str, Any] = dict(
    steps=20, sampler="dpmsolver++", guidance=(2.0, 2.0), seeds=None, generator=None, callback=None,
    autocast_dtype=None, progress=False,
)  # fmt: skip


#: the options whose default the checkpoint decides (``None`` in ``generate``'s signature): a few-step
#: checkpoint samples with its own sampler (:meth:`GeneratorPipeline.sampling_defaults`)
CHECKPOINT_DEFAULTED = ("steps", "sampler", "guidance")


def sampling_options(options: Mapping[str, Any], where: str, **defaults: Any) -> dict[str, Any]:
    """``options`` completed with :data:`SAMPLING_DEFAULTS` (``defaults`` first; ``steps`` / ``sampler`` /
    ``guidance`` given as ``None`` mean the default, as in :meth:`GeneratorPipeline.generate`); an unknown
    name raises ``TypeError`` as Python would for ``where(...)``."""
    unknown = sorted(set(options) - set(SAMPLING_DEFAULTS))
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s) {', '.join(unknown)}")
    given = {k: v for k, v in options.items() if not (v is None and k in CHECKPOINT_DEFAULTED)}
    return {**SAMPLING_DEFAULTS, **defaults, **given}


def save_scheduler(scheduler: TrainingScheduler, directory: str | os.PathLike[str]) -> None:
    """Write ``directory/scheduler_config.json`` atomically (the scheduler's own ``save_pretrained`` writes in
    place, so a killed job could leave half a config that :func:`load_scheduler` then refuses)."""
    with atomic_write(Path(directory) / SCHEDULER_CONFIG_NAME) as fh:
        fh.write(scheduler.to_json_string())


def load_scheduler(directory: str | os.PathLike[str]) -> TrainingScheduler:
    """``directory``'s ``scheduler_config.json``: a ``DDPMScheduler`` or a ``FlowMatchEulerDiscreteScheduler``
    (flow matching); a missing file, any other class, or a field of the wrong type or range
    (``num_train_timesteps`` >= 1, betas in [0, 1), see :func:`~posereid.models.parts.check_config_fields`)
    is refused naming the file and the field."""
    path = Path(directory) / SCHEDULER_CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: not found; every model folder of a generator checkpoint holds its training scheduler "
            "(written by save_pretrained)"
        )
    config = read_json(path)
    name = config.get("_class_name", DDPMScheduler.__name__)
    cls = TRAINING_SCHEDULER_CLASSES.get(name)
    if cls is None:
        raise CheckpointError(
            f"{path}: training scheduler {name!r} is not supported "
            f"(expected {' or '.join(TRAINING_SCHEDULER_CLASSES)})"
        )
    with refused_as(path, f"invalid {name} config", also=(ArithmeticError, RuntimeError)):
        check_config_fields(cls.__init__, config)
        return cls.from_config(config)


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` for ``dtype`` (e.g. bf16), or a no-op for ``None``."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def init_fields(cls: type) -> set[str]:
    """The keyword arguments of ``cls.__init__`` (a model's config fields)."""
    return {k for k in inspect.signature(cls.__init__).parameters if k != "self"}


@dataclasses.dataclass(frozen=True)
class Component:
    """A part of a pipeline saved in its own checkpoint folder (the key of :attr:`GeneratorPipeline.COMPONENTS`).

    Args:
        attr: the pipeline attribute (and constructor keyword) holding it.
        model_class: a :class:`~posereid.models.checkpoint.CheckpointMixin` model class (trainable, with
            EMA weights), or ``None`` for a foreign frozen module read by ``load``.
        load: ``load(folder)`` for a foreign module (e.g. a local diffusers ``AutoencoderKL``).
        scheduler: the attribute (and constructor keyword) of the training scheduler saved beside it.
        optional: the attribute may be ``None`` (no folder is written, the index says ``[null, null]``).
    """

    attr: str
    model_class: type[CheckpointMixin] | None = None
    load: Callable[[Path], Any] | None = None
    scheduler: str | None = None
    optional: bool = False

    def read(self, folder: Path, *, use_ema: bool) -> Any:
        """The component saved in ``folder``."""
        if self.model_class is not None:
            return self.model_class.from_pretrained(folder, use_ema=use_ema)
        assert self.load is not None, f"component {self.attr!r} needs a model_class or a load function"
        return self.load(folder)


class GeneratorPipeline(nn.Module):
    """Shared part of a family pipeline: one main model (``self.model``) and its training ``scheduler``.

    A family sets :attr:`family`, :attr:`model_class` and :attr:`PRESETS` and implements
    :meth:`conditions`, :meth:`null_conditions` and :meth:`model_output` (see the module docstring and
    ``docs/ARCHITECTURE.md``). ``model_class``'s config must have ``image_size`` ``(H, W)``,
    ``p_drop_pose`` and ``p_drop_appearance``; ``pose_sigma``, ``snr_gamma`` and ``timestep_sampling`` are
    read when present.
    """

    family: ClassVar[str] = ""
    model_class: ClassVar[type[ModelMixin]]
    PRESETS: ClassVar[dict[str, dict]] = {}
    #: config fields that belong to the noise schedule, not the model (``from_preset`` routes them)
    SCHEDULE_KEYS: ClassVar[tuple[str, ...]] = SCHEDULE_KEYS
    #: stages a multi-stage family trains one at a time (:meth:`set_training_stage`); empty: one model
    TRAINING_STAGES: ClassVar[tuple[str, ...]] = ()
    #: folder of ``self.model`` and ``self.scheduler`` in a checkpoint ("": the checkpoint directory itself)
    MODEL_FOLDER: ClassVar[str] = ""
    #: further components, by checkpoint folder
    COMPONENTS: ClassVar[dict[str, Component]] = {}
    #: components whose training scheduler takes the plain schedule fields (``prediction_type``, …) with the
    #: main one (:meth:`from_preset`), so a check of those fields covers them too
    SHARED_SCHEDULE: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: ModelMixin, scheduler: TrainingScheduler | None = None) -> None:
        super().__init__()
        self.model = model
        self.scheduler = scheduler if scheduler is not None else training_scheduler()
        check_loss_weighting(self.scheduler, model.config.get("snr_gamma"), type(model).__name__)
        # (features, weight) of the identity loss; a tuple, so a re-ID network given as features is not
        # registered as a submodule (the optimizer, EMA and checkpoints must not see it)
        self._identity: tuple[Callable[[torch.Tensor], torch.Tensor] | None, float] = (None, 0.0)
        #: the step-size embedding of a few-step checkpoint (:mod:`posereid.models.few_step`), else None
        self.few_step: StepSizeEmbedding | None = None
        self._few_step_hook: Any = None

    def set_identity_loss(
        self, features: Callable[[torch.Tensor], torch.Tensor] | None, weight: float = 0.1
    ) -> GeneratorPipeline:
        """Add an identity loss to training: ``weight`` × the signal-weighted ``1 − cos`` between ``features``
        of the clean image the model predicts and of the real target (:func:`~posereid.models.sampling.
        clean_estimate`). ``features``: a frozen re-ID network, images ``(B, 3, H, W)`` in ``[0, 1]`` →
        ``(B, D)`` (trained on the generator's own training images only, so nothing leaks); ``None``
        switches it off. Not saved with the checkpoint and not moved by ``.to()``: a training setting, on the
        caller's device."""
        if features is not None and not callable(features):
            raise TypeError(
                f"features must be callable (images -> (B, D) features), got {type(features).__name__}"
            )
        if not (math.isfinite(float(weight)) and float(weight) >= 0):
            raise ValueError(f"identity loss weight must be a finite number >= 0, got {weight!r}")
        self._identity = (features, float(weight))
        return self

    def identity_loss(
        self,
        noisy: torch.Tensor,
        out: torch.Tensor,
        t: torch.Tensor,
        target: torch.Tensor,
        keep: torch.Tensor | None = None,
        scheduler: TrainingScheduler | None = None,
    ) -> torch.Tensor:
        """The signal-weighted ``1 − cos`` between the identity features of the predicted clean image and of
        the real ``target`` (images in ``[0, 1]``), averaged over the batch; 0 when no identity loss is set.

        ``keep`` ``(B,)`` bool: the samples that were given the source's appearance. A sample whose appearance
        was dropped (the unconditional branch guidance needs) cannot know whom to draw, so it is left out of
        the loss rather than pulled towards a person it never saw. ``scheduler``: the one ``noisy`` was made
        with (default: the main model's).
        """
        features, weight = self._identity
        if features is None or weight == 0:
            return out.new_zeros(())
        x0, signal = clean_estimate(scheduler if scheduler is not None else self.scheduler, noisy, out, t)
        predicted = (self.decode(x0).clamp(-1.0, 1.0) + 1.0) / 2.0
        with torch.no_grad():
            reference = features(target)
        cos = torch.nn.functional.cosine_similarity(features(predicted), reference, dim=-1)
        w = signal.to(cos.dtype)
        if keep is not None:
            w = w * keep.to(device=w.device, dtype=w.dtype)
        return (w * (1.0 - cos)).mean()

    def with_identity_loss(
        self,
        loss: torch.Tensor,
        noisy: torch.Tensor,
        out: torch.Tensor,
        t: torch.Tensor,
        target: torch.Tensor,
        drop_appearance: torch.Tensor,
        scheduler: TrainingScheduler | None = None,
    ) -> torch.Tensor:
        """``loss`` plus the weighted :meth:`identity_loss` of the samples that kept their appearance (every
        family's denoising stage adds it this way); ``loss`` unchanged when no identity loss is set."""
        features, weight = self._identity
        if features is None or weight == 0:
            return loss
        return loss + weight * self.identity_loss(noisy, out, t, target, ~drop_appearance, scheduler)

    # ------------------------------------------------------------------ few-step sampling
    def denoiser(self) -> nn.Module:
        """The diffusers UNet of the main model (``self.model.unet``): where a few-step checkpoint's
        step-size embedding joins the timestep embedding. A family whose denoiser lives elsewhere overrides
        this."""
        unet = getattr(self.model, "unet", None)
        if unet is None or not hasattr(unet, "time_embedding"):
            raise ValueError(
                f"the {self.family} family has no UNet with a time_embedding for few-step sampling"
            )
        return unet

    def enable_few_step(self, embedding: StepSizeEmbedding) -> GeneratorPipeline:
        """Make this (flow) pipeline a few-step one: ``embedding``'s output joins the denoiser's timestep
        embedding (a forward hook) whenever a jump is set (:meth:`StepSizeEmbedding.jumping`)."""
        if not is_flow(self.scheduler):
            raise ValueError(
                f"few-step sampling needs a flow-matching model; this {self.family} model has "
                f"prediction_type={self.prediction_type!r}"
            )
        unet = self.denoiser()
        width = int(unet.time_embedding.linear_2.out_features)
        if int(embedding.config.time_embed_dim) != width:
            raise ValueError(
                f"the step-size embedding is {embedding.config.time_embed_dim} wide, the denoiser's timestep "
                f"embedding {width}: it belongs to another model"
            )
        if self._few_step_hook is not None:
            self._few_step_hook.remove()
        self.few_step = embedding.to(self.device)
        self._few_step_hook = unet.time_embedding.register_forward_hook(embedding.add_to)
        return self

    def sampling_defaults(self) -> dict[str, Any]:
        """``steps``, ``sampler`` and ``guidance`` when a caller gives none: the few-step sampler at the
        checkpoint's default step count (guidance folded in) for a few-step checkpoint, else
        :data:`SAMPLING_DEFAULTS`' (20 DPM-Solver++ steps at guidance 2)."""
        if self.few_step is not None:
            steps = int(self.few_step.config.default_steps)
            return {"steps": steps, "sampler": FEW_STEP, "guidance": (1.0, 1.0)}
        return {k: SAMPLING_DEFAULTS[k] for k in CHECKPOINT_DEFAULTED}

    def few_step_loss(
        self,
        batch: PairBatch,
        trajectory: torch.Tensor,
        sigmas: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """The distillation loss of a few-step fine-tune (:mod:`posereid.models.few_step`).

        ``trajectory`` ``(B, S + 1, *sample_shape)``: the teacher's states on the grid ``sigmas`` ``(S + 1,)``
        (or ``(B, S + 1)``). Per item two states ``a < b``: with probability 3/4 a jump of the few-step
        sampler (a step count of the embedding's, then one of its jumps), else any pair; the model, told
        the jump ``d = σ_a − σ_b`` (conditional call, no dropout: the guidance is in the targets), regresses
        the average velocity ``(x_a − x_b) / d``.
        """
        if self.few_step is None:
            raise ValueError("a few-step loss needs enable_few_step() first")
        b, dev = trajectory.shape[0], self.device
        grid = sigmas[0] if sigmas.ndim == 2 else sigmas
        grid = grid.to(torch.float32).cpu()
        steps = [int(k) for k in self.few_step.config.steps]
        by_steps = [grid_pairs(grid, [k]) for k in steps]
        n = grid.numel()
        a_idx, b_idx = [], []
        u = self.draw(b, generator).cpu()
        v = self.draw(b, generator).cpu()
        w = self.draw(b, generator).cpu()
        x = self.draw(b, generator).cpu()
        for i in range(b):
            if u[i] < 0.75:
                jumps = by_steps[min(int(v[i] * len(steps)), len(steps) - 1)]
                a, c = jumps[min(int(w[i] * len(jumps)), len(jumps) - 1)]
            else:
                a = min(int(w[i] * (n - 1)), n - 2)
                c = a + 1 + min(int(x[i] * (n - 1 - a)), n - 2 - a)
            a_idx.append(a)
            b_idx.append(c)
        rows = torch.arange(b)
        traj = trajectory.to(dev, torch.float32)
        x_a, x_b = traj[rows, a_idx], traj[rows, b_idx]
        s_a, s_b = grid[a_idx].to(dev), grid[b_idx].to(dev)
        jump = (s_a - s_b).clamp_min(1e-4)
        target = (x_a - x_b) / jump.view(-1, *([1] * (x_a.ndim - 1)))
        pose, appearance = self.conditions(batch.source, batch.target_kps, batch.source_kps)
        t = s_a * float(self.scheduler.config.num_train_timesteps)
        with self.few_step.jumping(jump):
            out = self.model_output(x_a, t, pose, appearance)
        return torch.nn.functional.mse_loss(out.float(), target)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GeneratorPipeline:
        """A fresh pipeline from preset ``name``; any model or schedule field can be overridden."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.family} preset {name!r}; choose from {', '.join(cls.PRESETS)}")
        unknown = sorted(set(overrides) - init_fields(cls.model_class) - set(cls.SCHEDULE_KEYS))
        if unknown:
            raise ValueError(f"the {cls.family} family has no setting {', '.join(unknown)}")
        config = {**cls.PRESETS[name], **overrides}
        schedule = {k: config.pop(k) for k in cls.SCHEDULE_KEYS if k in config}
        return cls(cls.model_class(**config), training_scheduler(**schedule))

    def reinitialized(self) -> GeneratorPipeline:
        """A fresh, untrained pipeline with the same configuration (the floor of a quality report); a
        few-step one keeps a fresh (zero) step-size embedding, so the floor samples the same way."""
        fresh = type(self)(type(self.model).from_config(self.model.config), self.scheduler)
        if self.few_step is not None:
            fresh.enable_few_step(StepSizeEmbedding.from_config(self.few_step.config))
        return fresh

    def set_training_stage(self, stage: str) -> GeneratorPipeline:
        """Train ``stage`` of :attr:`TRAINING_STAGES` next (a multi-stage family overrides this)."""
        raise ValueError(
            f"the {self.family} family trains as one model; it has no training stage {stage!r}"
            if not self.TRAINING_STAGES
            else f"{type(self).__name__} must implement set_training_stage"
        )

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
    def sample_shape(self) -> tuple[int, ...]:
        """What the sampling loop denoises, per sample: ``(3, H, W)`` pixels unless a family says otherwise."""
        return (3, *self.image_size)

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
        return render_pose_maps(kps, h, w, sigma=self.model.config.get("pose_sigma"), device=self.device)

    def draw(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """``(batch,)`` uniform draws on the pipeline's device, from ``generator`` (on its own device) when given."""
        dev = generator.device if generator is not None else self.device
        return torch.rand(batch, generator=generator, device=dev).to(self.device)

    def noised(
        self,
        scheduler: TrainingScheduler,
        x0: torch.Tensor,
        generator: torch.Generator | None,
        timestep_sampling: str = "uniform",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(t, noise, x_t)`` of one training step: timesteps drawn as ``timestep_sampling`` says, then
        noise, both from ``generator`` (model timesteps: DDPM's integers, flow's σ·T)."""
        draws = sample_timesteps(
            x0.shape[0], scheduler.config.num_train_timesteps, timestep_sampling, generator=generator,
            device=self.device,
        )  # fmt: skip
        t = model_timesteps(scheduler, draws)
        noise = initial_noise(x0.shape, generator, self.device)
        return t, noise, noisy_sample(scheduler, x0, noise, t)

    def dropout_draws(
        self, batch: int, config: Any, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(batch,)`` masks of dropped poses and dropped appearances (rates ``config.p_drop_pose`` and
        ``config.p_drop_appearance``), drawn independently: what disentangled guidance trains on."""
        drop_pose = self.draw(batch, generator) < config.p_drop_pose
        return drop_pose, self.draw(batch, generator) < config.p_drop_appearance

    @staticmethod
    def to_images(x: torch.Tensor) -> torch.Tensor:
        """Model space ``[-1, 1]`` → images in ``[0, 1]`` (float32); refuses NaN instead of hiding it."""
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteSampleError("sampling produced NaN/Inf values; no image is returned")
        return (x.float().clamp(-1.0, 1.0) + 1.0) / 2.0

    @staticmethod
    def generators(seeds: Sequence[int] | None, generator: Generators, batch: int) -> Generators:
        """One ``torch.Generator`` per sample from ``seeds`` (see :func:`~posereid.models.sampling.make_generators`)."""
        return make_generators(seeds, generator, batch)

    # ------------------------------------------------------------------ what a family supplies
    def conditions(
        self, source: torch.Tensor, target_kps: torch.Tensor, source_kps: torch.Tensor | None
    ) -> tuple[Condition, Condition]:
        """``(pose, appearance)``: the target-pose and source-appearance conditions of one batch.

        ``source`` ``(B, 3, H, W)`` in ``[0, 1]`` on the device; keypoints ``(B, 18, 2)`` (``source_kps``
        may be ``None``). Each condition is a tensor or a tuple of tensors, batch first.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement conditions()")

    def training_conditions(
        self, batch: PairBatch, generator: torch.Generator | None
    ) -> tuple[Condition, Condition]:
        """The conditions of a training batch: :meth:`conditions` unless a family draws something for
        training (e.g. dropping the source pose), from ``generator``."""
        return self.conditions(batch.source, batch.target_kps, batch.source_kps)

    def null_conditions(self, pose: Condition, appearance: Condition) -> tuple[Condition, Condition]:
        """The "pose dropped" and "appearance dropped" conditions laid out like ``pose`` and ``appearance``."""
        raise NotImplementedError(f"{type(self).__name__} must implement null_conditions()")

    def model_output(
        self, x: torch.Tensor, t: torch.Tensor, pose: Condition, appearance: Condition
    ) -> torch.Tensor:
        """One denoiser call: the model's prediction (ε, v, x0 or velocity) for the noisy ``x`` at ``t``."""
        raise NotImplementedError(f"{type(self).__name__} must implement model_output()")

    def encode_target(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in ``[0, 1]`` → the clean sample the model denoises (``[-1, 1]`` pixels)."""
        return images.to(self.device, torch.float32) * 2.0 - 1.0

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """What the model denoises → ``[-1, 1]`` pixels (identity in pixel space)."""
        return x

    def sampler(self, name: str) -> Any:
        """The sampling scheduler ``name`` (:data:`~posereid.models.sampling.SAMPLERS`) for this model."""
        return make_sampler(name, self.scheduler)

    # ------------------------------------------------------------------ training
    def training_loss(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        source_kps: torch.Tensor,
        target_kps: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        trajectory: torch.Tensor | None = None,
        sigmas: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar training loss of a batch of same-identity pairs, images ``(B, 3, H, W)`` in ``[0, 1]``.

        Checks the batch, then :meth:`batch_loss`, or with a teacher ``trajectory`` and its ``sigmas`` (a
        few-step fine-tune) :meth:`few_step_loss`. Every random draw comes from ``generator`` when given,
        so a loss is reproducible.
        """
        self.check_images(source, "source")
        self.check_images(target, "target")
        if source.shape[0] != target.shape[0]:
            raise ValueError(f"source and target batches differ: {source.shape[0]} vs {target.shape[0]}")
        dev = self.device
        batch = PairBatch(
            source.to(dev, torch.float32), target.to(dev, torch.float32), source_kps, target_kps
        )
        if trajectory is not None:
            if sigmas is None:
                raise ValueError("a few-step batch needs the trajectory's sigmas")
            return self.few_step_loss(batch, trajectory, sigmas, generator)
        return self.batch_loss(batch, generator)

    def batch_loss(self, batch: PairBatch, generator: torch.Generator | None) -> torch.Tensor:
        """Denoising MSE (on ε, v or the flow velocity) of a checked batch: timesteps, noise and the
        independent pose / appearance dropout (the four branches disentangled guidance needs). A
        multi-stage family overrides this with its current stage's loss."""
        cfg, b = self.model.config, batch.target.shape[0]
        x0 = self.encode_target(batch.target, generator)
        pose, appearance = self.training_conditions(batch, generator)
        t, noise, noisy = self.noised(self.scheduler, x0, generator, cfg.get("timestep_sampling", "uniform"))
        drop_pose, drop_app = self.dropout_draws(b, cfg, generator)
        pose, appearance = condition_dropout(
            pose, appearance, *self.null_conditions(pose, appearance), drop_pose, drop_app
        )
        out = self.model_output(noisy, t, pose, appearance)
        loss = diffusion_loss(self.scheduler, out, x0, noise, t, snr_gamma=cfg.get("snr_gamma"))
        return self.with_identity_loss(loss, noisy, out, t, batch.target, drop_app)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        source: torch.Tensor,
        target_kps: torch.Tensor,
        source_kps: torch.Tensor | None = None,
        *,
        steps: int | None = None,
        sampler: SamplerName | None = None,
        guidance: Sequence[float] | None = None,
        seeds: Sequence[int] | None = None,
        generator: Generators = None,
        callback: Callback | None = None,
        autocast_dtype: torch.dtype | None = None,
        progress: bool = False,
        guidance_formula: GuidanceFormula = "anchored",
    ) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in ``[0, 1]`` of the source people in the target poses.

        Args:
            source: ``(B, 3, H, W)`` in ``[0, 1]`` at :attr:`image_size` (resizing is the caller's job).
            target_kps / source_kps: ``(B, 18, 2)`` keypoints in that frame (-1 missing); a family that
                reads the source image alone ignores ``source_kps``.
            steps, sampler: number of steps and sampler (see :data:`posereid.models.sampling.SAMPLERS`);
                ``"few-step"`` for a few-step checkpoint (:mod:`posereid.models.few_step`, 1 call per step).
                ``None``: the checkpoint's default (:meth:`sampling_defaults`).
            guidance: ``(w_pose, w_appearance)``; ``(1, 1)`` is the plain conditional model (a few-step
                checkpoint has its guidance folded in and takes only ``(1, 1)``).
            seeds / generator: one seed or ``torch.Generator`` per sample makes each image independent
                of the rest of the batch; a single generator or ``None`` draws batch noise.
            callback: ``callback(step_index, timestep, x_t)`` after every step.
            autocast_dtype: e.g. ``torch.bfloat16``; ``None`` runs in the model's dtype.
            guidance_formula: ``"anchored"`` (default) or ``"pidm"``; see :mod:`posereid.models.guidance`.

        The conditions are computed ONCE, before the loop; every step is one batched model call over the
        guidance branches. Raises :class:`~posereid.models.sampling.NonFiniteSampleError` rather than
        return a NaN image.
        """
        self.check_images(source, "source")
        defaults = self.sampling_defaults()
        sampler = defaults["sampler"] if sampler is None else sampler
        few = sampler == FEW_STEP
        if few and self.few_step is None:
            raise ValueError(NOT_FEW_STEP)
        if steps is None:
            steps = int(self.few_step.config.default_steps) if few else SAMPLING_DEFAULTS["steps"]
        if guidance is None:
            guidance = (1.0, 1.0) if few else SAMPLING_DEFAULTS["guidance"]
        sigmas = None
        if few:
            steps = self.few_step.check_steps(steps)
            if tuple(float(g) for g in guidance) != (1.0, 1.0):
                folded = ",".join(f"{float(g):g}" for g in self.few_step.config.guidance)
                raise ValueError(
                    f"a few-step checkpoint has its guidance folded in (trained at {folded}); sample it with "
                    "guidance (1, 1) or leave guidance unset"
                )
            sigmas = jump_grid(steps)
        b, dev = source.shape[0], self.device
        gens = self.generators(seeds, generator, b)
        amp = autocast_context(dev, autocast_dtype)
        with amp:
            pose, appearance = self.conditions(source.to(dev), target_kps, source_kps)
            null_pose, null_appearance = self.null_conditions(pose, appearance)

        def model_fn(x: torch.Tensor, t: torch.Tensor, p: Condition, a: Condition) -> torch.Tensor:
            jump = self.few_step.jumping(1.0 / steps) if few else contextlib.nullcontext()
            with amp, jump:
                return self.model_output(x, t, p, a)

        denoise = guided_denoiser(
            model_fn, pose, appearance, null_pose, null_appearance, guidance, formula=guidance_formula
        )
        x = initial_noise((b, *self.sample_shape), gens, dev)
        scheduler = self.sampler("euler" if few else sampler)
        x = sample_loop(
            denoise, scheduler, x, steps, generator=gens, callback=callback, progress=progress, sigmas=sigmas
        )
        return self.to_images(self.decode(x))

    # ------------------------------------------------------------------ checkpoints
    def _index_fields(self) -> dict[str, Any]:
        """Extra fields of ``model_index.json`` (a multi-stage family records its trained stages)."""
        return {}

    @classmethod
    def _index_kwargs(cls, index: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor keywords read back from :meth:`_index_fields`' fields."""
        return {}

    def save_pretrained(
        self, save_directory: str | os.PathLike[str], ema_state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Write the main model + its scheduler (in :attr:`MODEL_FOLDER`), one folder per component, then
        ``model_index.json`` naming them; every file atomically.

        ``ema_state_dict`` uses this pipeline's parameter names (``model.…``, ``<component>.…``), as the
        training loop's EMA does; each model gets its own part.
        """
        directory = Path(save_directory)

        def ema_of(attr: str) -> dict[str, torch.Tensor] | None:
            if ema_state_dict is None:
                return None
            return {
                k.removeprefix(f"{attr}."): v for k, v in ema_state_dict.items() if k.startswith(f"{attr}.")
            }

        main = directory / self.MODEL_FOLDER
        self.model.save_pretrained(main, ema_state_dict=ema_of("model"))
        save_scheduler(self.scheduler, main)
        parts: dict[str, Any] = {self.MODEL_FOLDER: self.model} if self.MODEL_FOLDER else {}
        for folder, spec in self.COMPONENTS.items():
            module = getattr(self, spec.attr)
            parts[folder] = module
            if module is None:
                shutil.rmtree(directory / folder, ignore_errors=True)  # a stale one would be loaded
                continue
            if spec.model_class is not None:
                module.save_pretrained(directory / folder, ema_state_dict=ema_of(spec.attr))
            else:
                save_component(module, directory / folder)
            if spec.scheduler is not None:
                save_scheduler(getattr(self, spec.scheduler), directory / folder)
        if self.few_step is not None:
            self.few_step.save_pretrained(directory / FEW_STEP_FOLDER, ema_state_dict=ema_of("few_step"))
            parts[FEW_STEP_FOLDER] = self.few_step
        else:
            shutil.rmtree(directory / FEW_STEP_FOLDER, ignore_errors=True)  # a stale one would be loaded
        write_model_index(directory, type(self).__name__, parts, **self._index_fields())

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], *, use_ema: bool = True
    ) -> GeneratorPipeline:
        """Load a local directory written by :meth:`save_pretrained` (EMA weights preferred when present).

        A directory of another pipeline, a missing component folder, or components that do not fit
        together raise :class:`~posereid.models.checkpoint.CheckpointError` (or ``FileNotFoundError``)
        naming the path.
        """
        directory = Path(pretrained_model_name_or_path)
        index_path = directory / MODEL_INDEX_NAME
        index: dict[str, Any] = {}
        if index_path.is_file():
            index = read_class_json(index_path, (cls.__name__,))
        elif cls.MODEL_FOLDER or cls.COMPONENTS:
            raise FileNotFoundError(
                f"{index_path}: not found; expected a {cls.family} pipeline directory written by "
                f"save_pretrained ({MODEL_INDEX_NAME} + {', '.join([cls.MODEL_FOLDER, *cls.COMPONENTS])})"
            )
        main = directory / cls.MODEL_FOLDER
        if cls.MODEL_FOLDER and not main.is_dir():
            raise FileNotFoundError(f"{main}: model folder missing from the {cls.family} checkpoint")
        index_kwargs = cls._index_kwargs(index)
        with refused_as(index_path, f"invalid {cls.__name__} field"):  # e.g. a string for a list of stages
            check_config_fields(cls.__init__, index_kwargs)
        model = cls.model_class.from_pretrained(main, use_ema=use_ema)
        scheduler = load_scheduler(main)
        kwargs: dict[str, Any] = {}
        for folder, spec in cls.COMPONENTS.items():
            path = directory / folder
            if not path.is_dir():
                if spec.optional:
                    kwargs[spec.attr] = None
                    continue
                raise FileNotFoundError(f"{path}: component folder missing from the {cls.family} checkpoint")
            kwargs[spec.attr] = spec.read(path, use_ema=use_ema)
            if spec.scheduler is not None:
                kwargs[spec.scheduler] = load_scheduler(path)
        with refused_as(directory, f"the {cls.family} components do not fit together"):
            pipe = cls(model, scheduler, **kwargs, **index_kwargs)
            if (directory / FEW_STEP_FOLDER).is_dir():
                pipe.enable_few_step(
                    StepSizeEmbedding.from_pretrained(directory / FEW_STEP_FOLDER, use_ema=use_ema)
                )
        return pipe.eval()  # each model logged where its weights came from


__all__ = [
    "CHECKPOINT_DEFAULTED",
    "SAMPLING_DEFAULTS",
    "Component",
    "SamplingOptions",
    "sampling_options",
    "GeneratorPipeline",
    "autocast_context",
    "init_fields",
    "load_scheduler",
    "save_scheduler",
]
