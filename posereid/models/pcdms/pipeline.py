"""The PCDMs-style pipeline: three stage losses, the staged sampling and a folder per stage on disk.

``generate`` runs prior → inpainter → refiner (any subset that contains the inpainter):

* **prior** (:class:`~posereid.models.pcdms.model.PCDMsPrior`): samples the target's embedding from the
  source's embedding and both poses (``prior_steps`` steps, ``prior_guidance``). Without it the
  inpainter gets the source's own embedding (trained with rate ``p_source_embedding``).
* **inpaint** (:class:`~posereid.models.pcdms.model.PCDMsInpainter`): samples the ``source | target``
  canvas. At every step the source half of the model input is the real source noised to that step's level
  (one fixed noise per sample: the forward process the training saw), the model output there is replaced
  by its exact regression target, and the returned canvas's source half is the source itself, so only the
  target half is generated (:meth:`PCDMsPipeline.inpaint`).
* **refine** (:class:`~posereid.models.pcdms.model.PCDMsRefiner`): samples the target again given the
  coarse image; :meth:`PCDMsPipeline.refine` also takes any other family's output of the same size.

Each image stage has disentangled guidance over (pose, appearance) as the PIDM pipeline
(:mod:`posereid.models.guidance`); the prior's "appearance" is the source embedding. The stages train
separately: :meth:`PCDMsPipeline.set_training_stage` leaves only one stage's weights trainable and
``training_loss`` is that stage's diffusion loss, so the shared training loop
(:func:`posereid.models.training.train_generator`) trains any stage unchanged.

Names: a *stage* is what runs or trains (``"prior"``, ``"inpaint"``, ``"refine"``); the model it runs is
a *part* (:data:`STAGE_PARTS`: ``prior``, ``inpainter``, ``refiner``), which is both the pipeline
attribute and the checkpoint folder. ``self.model`` is the inpainter (the base's main model), also
reachable as ``self.inpainter``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from posereid.models.guidance import check_guidance, condition_dropout, guided_denoiser
from posereid.models.parts import TOKEN_UNET_SIZES
from posereid.models.pcdms.model import PCDMsInpainter, PCDMsPrior, PCDMsRefiner
from posereid.models.pipeline import (
    Component,
    GeneratorPipeline,
    PairBatch,
    autocast_context,
    init_fields,
    sampling_options,
)
from posereid.models.pose import MISSING, NUM_KEYPOINTS, POSE_CHANNELS
from posereid.models.sampling import (
    SCHEDULE_KEYS,
    TrainingScheduler,
    check_loss_weighting,
    diffusion_loss,
    diffusion_target,
    initial_noise,
    make_sampler,
    noisy_sample,
    prediction_type,
    sample_loop,
    training_scheduler,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from posereid.models.pipeline import SamplingOptions

#: training stages in the order they are trained (``set_training_stage``)
TRAINING_STAGES = ("inpaint", "prior", "refine")
#: sampling stages in the order they run (``generate(stages=...)``)
SAMPLING_STAGES = ("prior", "inpaint", "refine")
#: stage → the part it runs (the pipeline attribute and the checkpoint folder of its model)
STAGE_PARTS: dict[str, str] = {"inpaint": "inpainter", "prior": "prior", "refine": "refiner"}
#: part → its model class
PART_CLASSES: dict[str, type] = {"inpainter": PCDMsInpainter, "prior": PCDMsPrior, "refiner": PCDMsRefiner}


def unclipped_sampler(name: str, train_scheduler: SchedulerMixin) -> SchedulerMixin:
    """The sampler ``name`` of :data:`~posereid.models.sampling.SAMPLERS` without clipping its x0 estimate.

    The image samplers clip x0 to ``[-1, 1]`` (pixels); the prior's state is an embedding with unit
    variance per entry, which that clipping would destroy.
    """
    return make_sampler(name, train_scheduler, clip_x0=False)


class PCDMsPipeline(GeneratorPipeline):
    """Source image + target pose → the same person in the target pose, in three stages (PCDMs line).

    ``self.model`` (also ``self.inpainter``) is the inpainter (it gives :attr:`image_size` and
    ``pose_sigma``); ``self.prior`` and ``self.refiner`` the other parts, each with its own training
    scheduler (``self.scheduler``, ``self.prior_scheduler``: always DDPM with ``prediction_type="sample"``,
    ``self.refiner_scheduler``); the two image stages may train by flow matching (``prediction_type="flow"``).

    Presets: ``tiny`` (tests, 32×16), ``small`` (CPU, 64×32), ``market`` (GPU, 128×64). See
    :meth:`from_preset` for how overrides reach the parts.

    ``trained_stages``: the stages :meth:`set_training_stage` has selected (saved with the checkpoint);
    ``generate`` runs those by default (with the inpainter), so a checkpoint trained only up to the
    inpainter does not sample through an untrained prior or refiner.
    """

    family = "pcdms"
    model_class = PCDMsInpainter
    model: PCDMsInpainter
    TRAINING_STAGES: ClassVar[tuple[str, ...]] = TRAINING_STAGES
    MODEL_FOLDER: ClassVar[str] = "inpainter"
    COMPONENTS: ClassVar[dict[str, Component]] = {
        "prior": Component("prior", PCDMsPrior, scheduler="prior_scheduler"),
        "refiner": Component("refiner", PCDMsRefiner, scheduler="refiner_scheduler"),
    }
    SHARED_SCHEDULE: ClassVar[tuple[str, ...]] = ("refiner",)  # the prior always predicts the clean embedding

    PRESETS: ClassVar[dict[str, dict]] = {
        # tests / CPU; the image stages have the sizes of PIDM's preset of the same name (parts.TOKEN_UNET_SIZES)
        "tiny": dict(
            inpainter=dict(
                **TOKEN_UNET_SIZES["tiny"], pose_encoder_channels=16, pose_feature_channels=8,
                embedder_channels=(16, 32), embedding_dim=32,
            ),
            prior=dict(
                image_size=(32, 16), embedding_dim=32, num_layers=2, num_attention_heads=2, attention_head_dim=16,
                pose_hidden_dim=64,
            ),
            refiner=dict(**TOKEN_UNET_SIZES["tiny"], degrade_max_blur=4),
        ),
        # CPU demo at 64x32 (the inpainter's canvas is 64x64)
        "small": dict(
            inpainter=dict(
                **TOKEN_UNET_SIZES["small"], pose_encoder_channels=32, pose_feature_channels=16,
                embedder_channels=(32, 64, 64), embedding_dim=64,
            ),
            prior=dict(
                image_size=(64, 32), embedding_dim=64, num_layers=4, num_attention_heads=4, attention_head_dim=32,
                pose_hidden_dim=128,
            ),
            refiner=dict(TOKEN_UNET_SIZES["small"]),
        ),
        # Market-1501 native 128x64, GPU (the inpainter's canvas is 128x128; the refiner has one level less)
        "market": dict(
            inpainter=dict(
                **TOKEN_UNET_SIZES["market"], pose_encoder_channels=32, pose_feature_channels=16,
                embedder_channels=(32, 64, 128, 128), embedding_dim=64,
            ),
            prior=dict(
                image_size=(128, 64), embedding_dim=64, num_layers=6, num_attention_heads=4, attention_head_dim=64,
                pose_hidden_dim=256,
            ),
            refiner=dict(
                TOKEN_UNET_SIZES["market"], block_out_channels=(64, 128, 256), attention_levels=(False, True, True)
            ),
        ),
    }  # fmt: skip

    def __init__(
        self,
        model: PCDMsInpainter,
        scheduler: TrainingScheduler | None = None,
        *,
        prior: PCDMsPrior,
        refiner: PCDMsRefiner,
        prior_scheduler: DDPMScheduler | None = None,
        refiner_scheduler: TrainingScheduler | None = None,
        training_stage: str = "inpaint",
        trained_stages: Sequence[str] = (),
    ) -> None:
        super().__init__(model, scheduler)
        self.prior = prior
        self.refiner = refiner
        self.prior_scheduler = (
            prior_scheduler if prior_scheduler is not None else training_scheduler(prediction_type="sample")
        )
        self.refiner_scheduler = refiner_scheduler if refiner_scheduler is not None else training_scheduler()
        size = tuple(int(v) for v in model.config.image_size)
        for name, part in (("prior", prior), ("refiner", refiner)):
            if tuple(int(v) for v in part.config.image_size) != size:
                raise ValueError(
                    f"the {name}'s image_size {tuple(part.config.image_size)} differs from the inpainter's {size}"
                )
        if int(prior.config.embedding_dim) != int(model.config.embedding_dim):
            raise ValueError(
                f"the prior's embedding_dim {prior.config.embedding_dim} differs from the inpainter's "
                f"{model.config.embedding_dim} (the prior predicts the inpainter's embedding)"
            )
        if prediction_type(self.prior_scheduler) != "sample":
            raise ValueError(
                "the prior's scheduler must use prediction_type='sample' (it predicts the clean embedding), "
                f"got {prediction_type(self.prior_scheduler)!r}"
            )
        check_loss_weighting(self.refiner_scheduler, refiner.config.get("snr_gamma"), "the refiner")
        if isinstance(trained_stages, str):
            raise ValueError(
                f"trained_stages must be a list of stage names, got the string {trained_stages!r}"
            )
        bad = [s for s in trained_stages if s not in TRAINING_STAGES]
        if bad:
            raise ValueError(f"unknown PCDMs stage(s) {bad}; stages: {', '.join(TRAINING_STAGES)}")
        self.trained_stages: tuple[str, ...] = tuple(s for s in TRAINING_STAGES if s in trained_stages)
        self.training_stage = ""
        self._select(training_stage)

    @property
    def inpainter(self) -> PCDMsInpainter:
        """The stage-2 part (the base's ``self.model``)."""
        return self.model

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PCDMsPipeline:
        """A fresh pipeline from preset ``name``.

        An override ``prior_<field>``, ``inpainter_<field>`` or ``refiner_<field>`` reaches that part only
        (a schedule field its scheduler); a plain model field reaches every part that has it (e.g.
        ``image_size``, ``p_drop_source_pose``, ``embedding_dim``); a plain schedule field
        (``prediction_type``, ``num_train_timesteps``, ``beta_schedule``, ``rescale_betas_zero_snr``)
        reaches the two image stages' schedulers (the prior always predicts the clean embedding).
        """
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.family} preset {name!r}; choose from {', '.join(cls.PRESETS)}")
        configs = copy.deepcopy(cls.PRESETS[name])
        schedules: dict[str, dict] = {"inpainter": {}, "prior": {"prediction_type": "sample"}, "refiner": {}}
        fields = {part: init_fields(klass) for part, klass in PART_CLASSES.items()}
        for key, value in overrides.items():
            part, _, field = key.partition("_")
            if part in fields and field:
                if field in SCHEDULE_KEYS:
                    if part == "prior" and field == "prediction_type" and value != "sample":
                        raise ValueError(f"{key}: the PCDMs prior predicts the clean embedding ('sample')")
                    schedules[part][field] = value
                elif field in fields[part]:
                    configs[part][field] = value
                else:
                    raise ValueError(f"{key}: {part} has no config field {field!r}")
            elif key in SCHEDULE_KEYS:
                schedules["inpainter"][key] = schedules["refiner"][key] = value
            else:
                owners = [f for f, names in fields.items() if key in names]
                if not owners:
                    raise ValueError(
                        f"unknown PCDMs config field {key!r} (prefix it with prior_, inpainter_ or refiner_ for "
                        "one part)"
                    )
                for f in owners:
                    configs[f][key] = value
        return cls(
            PCDMsInpainter(**configs["inpainter"]),
            training_scheduler(**schedules["inpainter"]),
            prior=PCDMsPrior(**configs["prior"]),
            refiner=PCDMsRefiner(**configs["refiner"]),
            prior_scheduler=training_scheduler(**schedules["prior"]),
            refiner_scheduler=training_scheduler(**schedules["refiner"]),
        )

    def reinitialized(self) -> PCDMsPipeline:
        """A fresh, untrained pipeline with the same configuration and stages (a quality report's floor)."""
        return type(self)(
            type(self.model).from_config(self.model.config),
            self.scheduler,
            prior=type(self.prior).from_config(self.prior.config),
            refiner=type(self.refiner).from_config(self.refiner.config),
            prior_scheduler=self.prior_scheduler,
            refiner_scheduler=self.refiner_scheduler,
            training_stage=self.training_stage,
            trained_stages=self.trained_stages,
        )

    # ------------------------------------------------------------------ stages
    def _select(self, stage: str) -> None:
        if stage not in TRAINING_STAGES:
            raise ValueError(
                f"unknown PCDMs training stage {stage!r}; choose from {', '.join(TRAINING_STAGES)}"
            )
        self.requires_grad_(False)
        getattr(self, STAGE_PARTS[stage]).requires_grad_(True)
        self.prior.freeze_unused()
        self.training_stage = stage

    def set_training_stage(self, stage: str) -> PCDMsPipeline:
        """Train ``stage`` next: only its weights keep ``requires_grad`` (training the prior freezes the
        inpainter's embedder, whose output it learns to predict) and ``training_loss`` is its loss."""
        self._select(stage)
        if stage not in self.trained_stages:
            self.trained_stages = tuple(s for s in TRAINING_STAGES if s in (*self.trained_stages, stage))
        return self

    @property
    def default_stages(self) -> tuple[str, ...]:
        """What ``generate`` runs by default: the trained stages (always with the inpainter), or all."""
        if not self.trained_stages:
            return SAMPLING_STAGES
        return tuple(s for s in SAMPLING_STAGES if s in self.trained_stages or s == "inpaint")

    def _index_fields(self) -> dict[str, Any]:
        return {"training_stage": self.training_stage, "trained_stages": list(self.trained_stages)}

    @classmethod
    def _index_kwargs(cls, index: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "training_stage": index.get("training_stage", "inpaint"),
            "trained_stages": index.get("trained_stages", ()),
        }

    # ------------------------------------------------------------------ conditioning
    def keypoints(self, kps: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``(B, 18, 2)`` keypoints as float32 on the device (``None``: all missing); bad input names the problem."""
        if kps is None:
            return torch.full((batch, NUM_KEYPOINTS, 2), MISSING, device=self.device)
        kps = torch.as_tensor(kps)
        if kps.ndim != 3 or tuple(kps.shape[1:]) != (NUM_KEYPOINTS, 2) or len(kps) != batch:
            raise ValueError(
                f"keypoints: expected shape ({batch}, {NUM_KEYPOINTS}, 2), got {tuple(kps.shape)}"
            )
        kps = kps.to(self.device, torch.float32)
        if not bool(torch.isfinite(kps).all()):
            raise ValueError("keypoints: NaN/Inf coordinates (use -1 for a missing joint)")
        return kps

    def source_maps(
        self, source_kps: torch.Tensor | None, batch: int, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Source pose maps ``(B, C, H, W)``: empty for ``source_kps=None`` and for the samples flagged in ``drop``."""
        if source_kps is None:
            return torch.zeros(batch, POSE_CHANNELS, *self.image_size, device=self.device)
        maps = self.pose_maps(source_kps, batch=batch)
        if drop is not None:
            maps = maps * (~drop).to(maps.dtype).view(-1, 1, 1, 1)
        return maps

    def pose_canvas(
        self,
        source_kps: torch.Tensor | None,
        target_kps: torch.Tensor,
        batch: int,
        drop_source: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The inpainter's pose condition ``(B, C, H, 2W)``: source pose maps left, target pose maps right."""
        return torch.cat(
            [self.source_maps(source_kps, batch, drop_source), self.pose_maps(target_kps, batch=batch)],
            dim=-1,
        )

    @staticmethod
    def stage_tokens(
        part: PCDMsInpainter | PCDMsRefiner, source: torch.Tensor, source_maps: torch.Tensor
    ) -> torch.Tensor:
        """``part``'s appearance tokens of ``source`` in ``[0, 1]`` (fed its pose maps when it uses them)."""
        return part.appearance(source, source_maps if part.config.appearance_use_pose else None)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The stage-1 embedding ``(B, embedding_dim)`` of ``images`` ``(B, 3, H, W)`` in ``[0, 1]``."""
        self.check_images(images, "images")
        return self.model.embed(images.to(self.device, torch.float32))

    # ------------------------------------------------------------------ training
    def batch_loss(self, batch: PairBatch, generator: torch.Generator | None) -> torch.Tensor:
        """The diffusion loss of :attr:`training_stage` (every draw, the refiner's degradation included,
        from ``generator`` when given)."""
        loss_fn = {"inpaint": self.inpaint_loss, "prior": self.prior_loss, "refine": self.refine_loss}
        return loss_fn[self.training_stage](batch, generator)

    def inpaint_loss(self, batch: PairBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stage 2: denoising loss over the target half of the canvas (the source half is given).

        Conditions: the target's embedding (the source's with rate ``p_source_embedding``), the source's
        appearance tokens, both poses (source pose dropped with rate ``p_drop_source_pose``); pose and
        appearance are dropped independently for guidance.
        """
        cfg, (src, tgt, source_kps, target_kps) = self.model.config, batch
        b, w = tgt.shape[0], tgt.shape[-1]
        drop_src = self.draw(b, generator) < cfg.p_drop_source_pose
        use_src_emb = self.draw(b, generator) < cfg.p_source_embedding
        x0 = torch.cat([src, tgt], dim=-1) * 2.0 - 1.0
        t, noise, noisy = self.noised(self.scheduler, x0, generator)
        drop_pose, drop_app = self.dropout_draws(b, cfg, generator)
        emb_src, emb_tgt = self.model.embed(torch.cat([src, tgt])).chunk(2)
        emb = torch.where(use_src_emb[:, None], emb_src, emb_tgt)
        src_maps = self.source_maps(source_kps, b, drop_src)
        tokens = self.model.condition_tokens(self.stage_tokens(self.model, src, src_maps), emb)
        pose = torch.cat([src_maps, self.pose_maps(target_kps, batch=b)], dim=-1)
        pose, tokens = condition_dropout(
            pose, tokens, torch.zeros_like(pose), self.model.null_like(tokens), drop_pose, drop_app
        )
        out = self.model(noisy, t, x0[..., :w], pose, tokens)
        loss = diffusion_loss(
            self.scheduler, out[..., w:], x0[..., w:], noise[..., w:], t, snr_gamma=cfg.snr_gamma
        )
        return self.with_identity_loss(loss, noisy[..., w:], out[..., w:], t, tgt, drop_app)

    def prior_loss(self, batch: PairBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stage 1: MSE of the predicted clean target embedding (the frozen embedder's code of the target).
        No identity loss here: the prior predicts an embedding, not an image."""
        cfg, (src, tgt, source_kps, target_kps) = self.prior.config, batch
        b = tgt.shape[0]
        with torch.no_grad():
            emb_src, emb_tgt = self.model.embed(torch.cat([src, tgt])).chunk(2)
        drop_src = self.draw(b, generator) < cfg.p_drop_source_pose
        t, noise, noisy = self.noised(self.prior_scheduler, emb_tgt, generator)
        drop_pose, drop_app = self.dropout_draws(b, cfg, generator)
        ks = self.keypoints(source_kps, b)
        ks = torch.where(drop_src[:, None, None], torch.full_like(ks, MISSING), ks)
        poses = self.prior.encode_poses(ks, self.keypoints(target_kps, b))
        poses, src_emb = condition_dropout(
            poses, emb_src, self.prior.null_pose_tokens(b), self.prior.null_source_embedding(b), drop_pose,
            drop_app,
        )  # fmt: skip
        out = self.prior(noisy, t, src_emb, poses)
        return diffusion_loss(self.prior_scheduler, out, emb_tgt, noise, t)

    def refine_loss(self, batch: PairBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stage 3: denoising loss of the target given a degraded copy of it (:meth:`PCDMsRefiner.degrade`)."""
        cfg, (src, tgt, source_kps, target_kps) = self.refiner.config, batch
        b = tgt.shape[0]
        coarse = self.refiner.degrade(tgt, generator) * 2.0 - 1.0
        drop_src = self.draw(b, generator) < cfg.p_drop_source_pose
        t, noise, noisy = self.noised(self.refiner_scheduler, tgt * 2.0 - 1.0, generator)
        drop_pose, drop_app = self.dropout_draws(b, cfg, generator)
        tokens = self.stage_tokens(self.refiner, src, self.source_maps(source_kps, b, drop_src))
        pose = self.pose_maps(target_kps, batch=b)
        pose, tokens = condition_dropout(
            pose, tokens, torch.zeros_like(pose), self.refiner.null_like(tokens), drop_pose, drop_app
        )
        out = self.refiner(noisy, t, coarse, pose, tokens)
        loss = diffusion_loss(self.refiner_scheduler, out, tgt * 2.0 - 1.0, noise, t, snr_gamma=cfg.snr_gamma)
        return self.with_identity_loss(loss, noisy, out, t, tgt, drop_app, self.refiner_scheduler)

    # ------------------------------------------------------------------ sampling: stage 1
    @torch.no_grad()
    def predict_embedding(
        self,
        source: torch.Tensor,
        target_kps: torch.Tensor,
        source_kps: torch.Tensor | None = None,
        **options: Unpack[SamplingOptions],
    ) -> torch.Tensor:
        """Stage 1: the target's embedding ``(B, embedding_dim)`` sampled by the prior.

        ``options``: as :meth:`generate`'s (``callback`` and ``progress`` are not used); ``guidance``:
        ``(w_pose, w_source_embedding)``, by default ``(1, 1)``, the plain conditional prior. The sampler
        is ``sampler`` without x0 clipping (:func:`unclipped_sampler`).
        """
        opts = sampling_options(options, "predict_embedding", guidance=(1.0, 1.0))
        self.check_images(source, "source")
        b, dev = source.shape[0], self.device
        gens = self.generators(opts["seeds"], opts["generator"], b)
        amp = autocast_context(dev, opts["autocast_dtype"])
        with amp:
            src_emb = self.model.embed(source.to(dev, torch.float32))
            poses = self.prior.encode_poses(self.keypoints(source_kps, b), self.keypoints(target_kps, b))

        def model_fn(x: torch.Tensor, t: torch.Tensor, pose: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
            with amp:
                return self.prior(x, t, emb, pose)

        denoise = guided_denoiser(
            model_fn, poses, src_emb, self.prior.null_pose_tokens(b), self.prior.null_source_embedding(b),
            opts["guidance"],
        )  # fmt: skip
        x = initial_noise((b, int(self.prior.config.embedding_dim)), gens, dev)
        sampler = unclipped_sampler(opts["sampler"], self.prior_scheduler)
        return sample_loop(denoise, sampler, x, opts["steps"], generator=gens).float()

    # ------------------------------------------------------------------ sampling: stages 2 and 3
    def _image_stage(
        self,
        part: PCDMsInpainter | PCDMsRefiner,
        source: torch.Tensor,
        source_kps: torch.Tensor | None,
        pose: torch.Tensor,
        opts: Mapping[str, Any],
        call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor],
        tokens_of: Callable[[torch.Tensor], torch.Tensor] = lambda tokens: tokens,
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The guided ``denoise(x_t, t)`` of an image stage: ``part``'s appearance tokens of ``source``
        (through ``tokens_of``) and their null version, the pose condition ``pose`` (dropped: zeros), and
        ``call(x, t, pose, tokens, k)`` for ``k`` guidance branches stacked in the batch."""
        b = source.shape[0]
        amp = autocast_context(self.device, opts["autocast_dtype"])
        with amp:
            maps = self.source_maps(source_kps, b)
            tokens = tokens_of(self.stage_tokens(part, source.to(self.device, torch.float32), maps))
            null_tokens = part.null_like(tokens)

        def model_fn(x: torch.Tensor, t: torch.Tensor, p: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
            with amp:
                return call(x, t, p, tok, x.shape[0] // b)

        return guided_denoiser(model_fn, pose, tokens, torch.zeros_like(pose), null_tokens, opts["guidance"])

    def inpaint_denoiser(
        self,
        source: torch.Tensor,
        target_kps: torch.Tensor,
        source_kps: torch.Tensor | None = None,
        **opts: Any,
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``denoise(canvas_t, t)`` of the inpainter with guidance, as :meth:`inpaint` uses it.

        ``opts``: ``guidance`` (default ``(2, 2)``), ``autocast_dtype``, ``embedding`` (the stage-1 embedding;
        ``None``: the source's own) and ``source_noise`` (``(B, 3, H, W)``; zeros when ``None``). The source
        half of the input is replaced by the source noised to ``t`` with ``source_noise`` and the output's
        source half by its exact regression target. ``denoise.num_branches`` is the number of guidance
        branches stacked in its one model call per step.
        """
        unknown = set(opts) - {"guidance", "autocast_dtype", "embedding", "source_noise"}
        if unknown:
            raise TypeError(
                f"inpaint_denoiser() got unexpected keyword argument(s) {', '.join(sorted(unknown))}"
            )
        guidance, autocast_dtype = opts.get("guidance", (2.0, 2.0)), opts.get("autocast_dtype")
        embedding, source_noise = opts.get("embedding"), opts.get("source_noise")
        self.check_images(source, "source")
        b, dev = source.shape[0], self.device
        src01 = source.to(dev, torch.float32)
        src = src01 * 2.0 - 1.0
        w = src.shape[-1]
        eps = torch.zeros_like(src) if source_noise is None else source_noise.to(dev, torch.float32)
        with autocast_context(dev, autocast_dtype):
            emb = self.model.embed(src01) if embedding is None else embedding.to(dev)
        guided = self._image_stage(
            self.model, source, source_kps, self.pose_canvas(source_kps, target_kps, b),
            dict(autocast_dtype=autocast_dtype, guidance=guidance),
            lambda x, t, p, tok, k: self.model(x, t, src.repeat(k, 1, 1, 1), p, tok),
            lambda tokens: self.model.condition_tokens(tokens, emb),
        )  # fmt: skip

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            t_src = torch.as_tensor(t, device=dev)  # a DDPM sampler's float t is rounded to its index
            noisy_src = noisy_sample(self.scheduler, src, eps, t_src)
            out = guided(torch.cat([noisy_src.to(x.dtype), x[..., w:]], dim=-1), t)
            exact = diffusion_target(self.scheduler, src, eps, t_src).to(out.dtype)
            return torch.cat([exact, out[..., w:]], dim=-1)

        denoise.num_branches = guided.num_branches  # type: ignore[attr-defined]
        return denoise

    @torch.no_grad()
    def inpaint(
        self,
        source: torch.Tensor,
        target_kps: torch.Tensor,
        source_kps: torch.Tensor | None = None,
        *,
        embedding: torch.Tensor | None = None,
        **options: Unpack[SamplingOptions],
    ) -> torch.Tensor:
        """Stage 2: the whole canvas ``(B, 3, H, 2W)`` in ``[0, 1]``; its left half IS ``source`` (bit for bit).

        ``embedding``: the stage-1 embedding (``None``: the source's own, i.e. no prior). ``options``: as
        :meth:`generate`'s; ``callback`` sees the target half of the state.
        """
        opts = sampling_options(options, "inpaint")
        self.check_images(source, "source")
        b, dev = source.shape[0], self.device
        h, w = self.image_size
        gens = self.generators(opts["seeds"], opts["generator"], b)
        x = initial_noise((b, 3, h, 2 * w), gens, dev)
        denoise = self.inpaint_denoiser(
            source, target_kps, source_kps, embedding=embedding, guidance=opts["guidance"],
            source_noise=x[..., :w].clone(), autocast_dtype=opts["autocast_dtype"],
        )  # fmt: skip
        callback = opts["callback"]
        hook = None if callback is None else lambda i, t, state: callback(i, t, state[..., w:])
        x = sample_loop(
            denoise, make_sampler(opts["sampler"], self.scheduler), x, opts["steps"], generator=gens,
            callback=hook, progress=opts["progress"],
        )  # fmt: skip
        canvas = self.to_images(x)
        canvas[..., :w] = source.to(dev, torch.float32)
        return canvas

    @torch.no_grad()
    def refine(
        self,
        source: torch.Tensor,
        coarse: torch.Tensor,
        target_kps: torch.Tensor,
        source_kps: torch.Tensor | None = None,
        **options: Unpack[SamplingOptions],
    ) -> torch.Tensor:
        """Stage 3: refined images ``(B, 3, H, W)`` in ``[0, 1]`` from ``coarse`` images in ``[0, 1]``.

        ``coarse`` may be any generator's output at :attr:`image_size` (the refiner trained on degraded
        real images, not on stage 2's output). ``options``: as :meth:`generate`'s; ``guidance`` (default
        ``(1, 2)``): ``(w_pose, w_appearance)`` over the target pose maps and the source's appearance tokens
        (the coarse image is always given); without ``use_target_pose`` ``w_pose`` has nothing to act on
        and is ignored.
        """
        opts = sampling_options(options, "refine", guidance=(1.0, 2.0))
        self.check_images(source, "source")
        self.check_images(coarse, "coarse")
        if coarse.shape[0] != source.shape[0]:
            raise ValueError(
                f"coarse batch {coarse.shape[0]} differs from the source batch {source.shape[0]}"
            )
        b, dev = source.shape[0], self.device
        w_p, w_s = check_guidance(opts["guidance"])
        gens = self.generators(opts["seeds"], opts["generator"], b)
        coarse_m = coarse.to(dev, torch.float32) * 2.0 - 1.0
        if self.refiner.config.use_target_pose:
            pose = self.pose_maps(target_kps, batch=b)
        else:
            self.keypoints(target_kps, b)  # still checked
            pose, w_p = torch.zeros(b, 0, *self.image_size, device=dev), 1.0
        denoise = self._image_stage(
            self.refiner, source, source_kps, pose, {**opts, "guidance": (w_p, w_s)},
            lambda x, t, p, tok, k: self.refiner(x, t, coarse_m.repeat(k, 1, 1, 1), p, tok),
        )  # fmt: skip
        x = initial_noise((b, 3, *self.image_size), gens, dev)
        x = sample_loop(
            denoise, make_sampler(opts["sampler"], self.refiner_scheduler), x, opts["steps"], generator=gens,
            callback=opts["callback"], progress=opts["progress"],
        )  # fmt: skip
        return self.to_images(x)

    # ------------------------------------------------------------------ sampling: all stages
    @torch.no_grad()
    def generate(  # type: ignore[override]
        self,
        source: torch.Tensor,
        target_kps: torch.Tensor,
        source_kps: torch.Tensor | None = None,
        *,
        prior_steps: int = 20,
        prior_guidance: Sequence[float] = (1.0, 1.0),
        refiner_guidance: Sequence[float] = (1.0, 2.0),
        stages: Sequence[str] | None = None,
        **options: Unpack[SamplingOptions],
    ) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in ``[0, 1]`` of the source people in the target poses.

        Args:
            source, target_kps, source_kps, options: as :meth:`GeneratorPipeline.generate`; ``steps`` /
                ``sampler`` drive the image stages, ``prior_steps`` (and ``sampler``, unclipped) the prior;
                ``guidance`` is the inpainter's ``(w_pose, w_appearance)`` (``(1, 1)``: its conditional model).
            prior_guidance, refiner_guidance: the other stages' ``(w_pose, w_appearance)``.
            stages: which of ``("prior", "inpaint", "refine")`` to run (always in that order, and the
                inpainter must be one); ``None``: :attr:`default_stages`. Without ``"prior"`` the inpainter
                gets the source's own embedding; without ``"refine"`` its output is returned.

        ``callback(step_index, timestep, x_t)`` runs after every step of the image stages (the canvas's
        target half while inpainting). Per-sample seeds make each image independent of the batch: every
        stage draws its noise from the same per-sample generators, in order. Raises
        :class:`~posereid.models.sampling.NonFiniteSampleError` rather than return a NaN image.
        """
        opts = sampling_options(options, "generate")
        run = self._check_stages(stages)
        for weights in (opts["guidance"], prior_guidance, refiner_guidance):
            check_guidance(weights)
        self.check_images(source, "source")
        gens = self.generators(opts["seeds"], opts["generator"], source.shape[0])
        common = dict(sampler=opts["sampler"], generator=gens, autocast_dtype=opts["autocast_dtype"])
        image = dict(common, steps=opts["steps"], callback=opts["callback"], progress=opts["progress"])
        embedding = None
        if "prior" in run:
            embedding = self.predict_embedding(
                source, target_kps, source_kps, steps=prior_steps, guidance=prior_guidance, **common
            )
        coarse = self.inpaint(
            source, target_kps, source_kps, embedding=embedding, guidance=opts["guidance"], **image
        )[..., self.image_size[1] :]
        if "refine" not in run:
            return coarse.contiguous()
        return self.refine(source, coarse, target_kps, source_kps, guidance=refiner_guidance, **image)

    def _check_stages(self, stages: Sequence[str] | None) -> tuple[str, ...]:
        if stages is None:
            return self.default_stages
        if isinstance(stages, str):
            stages = (stages,)
        bad = [s for s in stages if s not in SAMPLING_STAGES]
        if bad:
            raise ValueError(f"unknown PCDMs stage(s) {bad}; choose from {', '.join(SAMPLING_STAGES)}")
        if "inpaint" not in stages:
            raise ValueError(
                f"stages {tuple(stages)} lack 'inpaint', which draws the image; to refine another generator's "
                "output call refine(source, coarse, target_kps)"
            )
        return tuple(s for s in SAMPLING_STAGES if s in stages)


__all__ = [
    "PART_CLASSES",
    "PCDMsPipeline",
    "SAMPLING_STAGES",
    "STAGE_PARTS",
    "TRAINING_STAGES",
    "unclipped_sampler",
]
