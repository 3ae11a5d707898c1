"""The CFLD-style pipeline: training loss and guided sampling around :class:`CFLDModel`, optional latent mode.

Training draws timesteps as ``t = (1 − u³)·T`` by default (CFLD: more weight on high noise, where the
coarse layout is decided) and drops the pose (zero adapter residuals) and the appearance (learned null
prompt, zero HGA biases) independently, so one network learns the four branches of disentangled
guidance (:mod:`posereid.models.guidance`). At sampling time the source pyramid + PRD + HGA projections
and the pose adapter run ONCE per ``generate`` call, before the loop; every step is one batched UNet call
over the guidance branches.

**Latent mode** (``latent=True``, for users with Stable Diffusion weights on disk):
:meth:`CFLDPipeline.from_sd_components` loads a local ``AutoencoderKL`` (frozen) and optionally a UNet in
the SD-1.5 layout; the model diffuses ``(vae.encode(x) − shift)·scaling_factor`` and ``generate`` decodes
at the end, so ``image_size`` and the images in and out stay in pixels. The VAE is saved in a ``vae/``
folder of the checkpoint (its own ``save_pretrained``), so :func:`~posereid.models.contract.load_generator`
needs nothing else. Nothing is ever downloaded.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from posereid.models.cfld.model import CFLDModel
from posereid.models.guidance import GuidanceFormula, condition_dropout, guided_denoiser
from posereid.models.pipeline import GeneratorPipeline, autocast_context, load_scheduler
from posereid.models.sampling import (
    SamplerName,
    TrainingScheduler,
    diffusion_loss,
    initial_noise,
    make_sampler,
    model_timesteps,
    noisy_sample,
    sample_loop,
    sample_timesteps,
    training_scheduler,
)

logger = logging.getLogger(__name__)

VAE_DIR = "vae"
#: the noise recipe of the presets (trained from scratch): flow matching, as the PIDM presets; in the
#: family ablation (results/generator_v2, 320 steps) it took CFLD's PCKh from 0.166 (v-prediction) to 0.724.
#: A Stable Diffusion UNet loaded by :meth:`CFLDPipeline.from_sd_components` keeps its own ε-prediction DDPM
#: schedule instead.
RECIPE: dict[str, str] = {"prediction_type": "flow"}
#: the training schedule of Stable Diffusion 1.x, which its UNet weights were trained under
SD_SCHEDULE: dict[str, Any] = {
    "prediction_type": "epsilon", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
}  # fmt: skip
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _load_local(cls: type, path: str | os.PathLike[str], what: str, example: str) -> Any:
    """``cls.from_pretrained`` of a local diffusers folder only; a missing folder or file names the path."""
    directory = Path(path)
    hint = f"put a diffusers {cls.__name__} there ({example}); weights are never downloaded"
    if not directory.is_dir() or not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{what} directory {str(directory)!r} not found or has no config.json; {hint}"
        )
    if not any((directory / name).is_file() for name in _WEIGHT_FILES):
        raise FileNotFoundError(
            f"{what} directory {str(directory)!r} has config.json but no weights "
            f"(expected {' or '.join(_WEIGHT_FILES)}); {hint}"
        )
    return cls.from_pretrained(str(directory), local_files_only=True)


def load_local_vae(path: str | os.PathLike[str]) -> AutoencoderKL:
    """A frozen ``AutoencoderKL`` from a local directory (e.g. the ``vae/`` folder of an SD-1.5 copy)."""
    vae = _load_local(AutoencoderKL, path, "VAE", "vae.save_pretrained(dir), e.g. the vae/ folder of SD 1.5")
    return vae.requires_grad_(False).eval()


def load_local_unet(path: str | os.PathLike[str]) -> UNet2DConditionModel:
    """A ``UNet2DConditionModel`` from a local directory (e.g. the ``unet/`` folder of an SD-1.5 copy)."""
    return _load_local(
        UNet2DConditionModel, path, "UNet", "unet.save_pretrained(dir), e.g. the unet/ folder of SD 1.5"
    )


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell of ``vae`` (8 for Stable Diffusion's)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


class CFLDPipeline(GeneratorPipeline):
    """Source image + target pose → the same person in the target pose (CFLD line; pixels or VAE latents).

    Presets: ``tiny`` (tests, 32×16), ``small`` (CPU, 64×32), ``market`` (GPU, 128×64), all pixel space,
    trained from scratch by flow matching (:data:`RECIPE`; a flow model samples with ``dpmsolver++``, ``unipc``
    or ``euler``). Schedule fields go to the scheduler, every other field to :class:`CFLDModel`.
    ``vae``: the frozen ``AutoencoderKL`` of a latent-mode model (``None`` in pixel mode).
    """

    family = "cfld"
    model_class = CFLDModel
    model: CFLDModel

    PRESETS: ClassVar[dict[str, dict]] = {
        # tests: ~0.5 M parameters
        "tiny": dict(
            image_size=(32, 16), block_out_channels=(16, 32, 32), layers_per_block=1,
            self_attention_levels=(False, True, True), attention_head_dim=8, norm_num_groups=8,
            cross_attention_dim=32, source_channels=(16, 32), source_stem_stride=2,
            num_queries=16, prd_layers=1, prd_heads=2, adapter_res_blocks=1, **RECIPE,
        ),
        # CPU demo at 64x32: ~2 M parameters (as PIDM small)
        "small": dict(
            image_size=(64, 32), block_out_channels=(32, 64, 64), layers_per_block=1,
            self_attention_levels=(False, True, True), attention_head_dim=16, norm_num_groups=8,
            cross_attention_dim=64, source_channels=(32, 64, 64), source_stem_stride=2,
            num_queries=16, prd_layers=2, prd_heads=4, adapter_res_blocks=1, **RECIPE,
        ),
        # Market-1501 native 128x64, GPU; 8 PRD layers as in the paper
        "market": dict(
            image_size=(128, 64), block_out_channels=(64, 128, 256, 256), layers_per_block=2,
            self_attention_levels=(False, True, True, True), attention_head_dim=32, norm_num_groups=32,
            cross_attention_dim=256, source_channels=(64, 128, 256, 256), source_stem_stride=2,
            num_queries=16, prd_layers=8, prd_heads=8, adapter_res_blocks=2, **RECIPE,
        ),
    }  # fmt: skip

    def __init__(
        self, model: CFLDModel, scheduler: TrainingScheduler | None = None, vae: AutoencoderKL | None = None
    ) -> None:
        super().__init__(model, scheduler)
        if model.latent and vae is None:
            raise ValueError(
                "a latent-mode CFLD model needs its VAE: build it with CFLDPipeline.from_sd_components(vae_dir)"
            )
        if not model.latent and vae is not None:
            raise ValueError("a VAE was given for a pixel-space CFLD model (config latent=False)")
        if vae is not None:
            cfg = model.config
            if int(vae.config.latent_channels) != int(cfg.latent_channels) or vae_scale_factor(vae) != int(
                cfg.vae_scale_factor
            ):
                raise ValueError(
                    f"the VAE has {vae.config.latent_channels} latent channels and factor {vae_scale_factor(vae)};"
                    f" the model was built for {cfg.latent_channels} and {cfg.vae_scale_factor}"
                )
            vae.requires_grad_(False).eval()
        self.vae = vae

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> CFLDPipeline:
        """A fresh pixel-space pipeline from preset ``name``; any model or schedule field can be overridden."""
        known = set(inspect.signature(CFLDModel.__init__).parameters) | set(cls.SCHEDULE_KEYS)
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"the cfld family has no setting {', '.join(unknown)}")
        return super().from_preset(name, **overrides)  # type: ignore[return-value]

    @classmethod
    def from_sd_components(
        cls,
        vae_dir: str | os.PathLike[str],
        unet_dir: str | os.PathLike[str] | None = None,
        *,
        preset: str = "market",
        **overrides: Any,
    ) -> CFLDPipeline:
        """A latent-mode pipeline over a local ``AutoencoderKL`` (frozen) and optionally a local UNet.

        ``vae_dir``: a diffusers ``AutoencoderKL`` folder (e.g. SD 1.5's ``vae/``). ``unet_dir``: a
        ``UNet2DConditionModel`` folder in the SD layout (e.g. SD 1.5's ``unet/``) whose weights start the
        denoiser; ``cross_attention_dim`` then follows it and the schedule defaults to SD's
        (:data:`SD_SCHEDULE`: ε-prediction, scaled-linear betas 0.00085..0.012), not the presets' flow.
        Without it the preset's UNet is built at the latent size. Other fields come from ``preset`` and
        ``overrides`` (``image_size`` is in pixels). Missing folders raise
        ``FileNotFoundError`` naming the path; nothing is downloaded.
        """
        if preset not in cls.PRESETS:
            raise ValueError(f"unknown cfld preset {preset!r}; choose from {', '.join(cls.PRESETS)}")
        vae = load_local_vae(vae_dir)
        unet = load_local_unet(unet_dir) if unet_dir is not None else None
        config = {**cls.PRESETS[preset], **overrides}
        config.update(
            latent=True,
            latent_channels=int(vae.config.latent_channels),
            vae_scale_factor=vae_scale_factor(vae),
        )
        schedule = {k: config.pop(k) for k in cls.SCHEDULE_KEYS if k in config}
        if unet is not None:
            config["unet_config"] = {k: v for k, v in unet.config.items() if not k.startswith("_")}
            config["cross_attention_dim"] = int(unet.config.cross_attention_dim)
            # the UNet's own (SD) schedule, not the preset's, unless the caller asked for another
            schedule = {k: v for k, v in overrides.items() if k in cls.SCHEDULE_KEYS}
            if schedule.get("prediction_type") != "flow":  # a flow schedule has no betas
                schedule = {**SD_SCHEDULE, **schedule}
                if schedule["beta_schedule"] != "scaled_linear":
                    del schedule["beta_start"], schedule["beta_end"]
        model = CFLDModel(**config)
        if unet is not None:
            model.unet.load_state_dict(unet.state_dict())
        return cls(model, training_scheduler(**schedule), vae=vae)

    def reinitialized(self) -> CFLDPipeline:
        """A fresh, untrained pipeline with the same configuration (and the same frozen VAE)."""
        return type(self)(type(self.model).from_config(self.model.config), self.scheduler, vae=self.vae)

    def train(self, mode: bool = True) -> CFLDPipeline:
        super().train(mode)
        if self.vae is not None:  # frozen
            self.vae.eval()
        return self

    # ------------------------------------------------------------------ model space
    @property
    def latent(self) -> bool:
        return self.model.latent

    def encode_target(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in ``[0, 1]`` → what the UNet denoises: ``[-1, 1]`` pixels, or scaled
        VAE latents (a posterior sample drawn from ``generator``)."""
        x = images.to(self.device, torch.float32) * 2.0 - 1.0
        if self.vae is None:
            return x
        with torch.no_grad():
            dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
            z = dist.sample(generator=generator).float()
        shift = self.vae.config.get("shift_factor") or 0.0
        return (z - shift) * float(self.vae.config.scaling_factor)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space → ``[-1, 1]`` pixels (identity in pixel mode)."""
        if self.vae is None:
            return x
        shift = self.vae.config.get("shift_factor") or 0.0
        z = x / float(self.vae.config.scaling_factor) + shift
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()

    def sampler(self, name: str) -> SchedulerMixin:
        """The sampling scheduler ``name``; in latent mode without clipping x0 to ``[-1, 1]`` (a pixel range)."""
        return make_sampler(name, self.scheduler, clip_x0=not self.latent)

    # ------------------------------------------------------------------ training
    def training_loss(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        source_kps: torch.Tensor,
        target_kps: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Denoising MSE (on ε, v or the flow velocity) for a batch of pairs; images ``(B, 3, H, W)`` in ``[0, 1]``.

        Timesteps, noise, the VAE posterior sample and the independent pose / appearance dropout all come
        from ``generator`` when given, so a loss is reproducible. ``source_kps`` is not used (CFLD's source
        branch reads the image alone).
        """
        self.check_images(source, "source")
        self.check_images(target, "target")
        cfg, dev, b = self.model.config, self.device, target.shape[0]
        rand_dev = generator.device if generator is not None else dev
        x0 = self.encode_target(target, generator)
        draws = sample_timesteps(
            b,
            self.scheduler.config.num_train_timesteps,
            cfg.timestep_sampling,
            generator=generator,
            device=dev,
        )
        t = model_timesteps(self.scheduler, draws)  # DDPM: the draws; flow: σ·T
        noise = initial_noise(x0.shape, generator, dev)
        noisy = noisy_sample(self.scheduler, x0, noise, t)
        drop_pose = torch.rand(b, generator=generator, device=rand_dev).to(dev) < cfg.p_drop_pose
        drop_app = torch.rand(b, generator=generator, device=rand_dev).to(dev) < cfg.p_drop_appearance
        appearance = self.model.encode_source(source.to(dev))
        pose = self.model.encode_pose(self.pose_maps(target_kps, batch=b))
        pose, appearance = condition_dropout(
            pose,
            appearance,
            self.model.null_pose(pose),
            self.model.null_source(appearance),
            drop_pose,
            drop_app,
        )
        out = self.model(noisy, t, pose, appearance[0], appearance[1:])
        return diffusion_loss(self.scheduler, out, x0, noise, t, snr_gamma=cfg.snr_gamma)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        source: torch.Tensor,
        target_kps: torch.Tensor,
        source_kps: torch.Tensor | None = None,
        *,
        steps: int = 20,
        sampler: SamplerName = "dpmsolver++",
        guidance: Sequence[float] = (2.0, 2.0),
        seeds: Sequence[int] | None = None,
        generator: list[torch.Generator] | torch.Generator | None = None,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        autocast_dtype: torch.dtype | None = None,
        progress: bool = False,
        guidance_formula: GuidanceFormula = "anchored",
    ) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` in ``[0, 1]`` of the source people in the target poses.

        Args:
            source: ``(B, 3, H, W)`` in ``[0, 1]`` at :attr:`image_size` (resizing is the caller's job).
            target_kps: ``(B, 18, 2)`` keypoints in that frame (-1 missing).
            source_kps: accepted for the common contract and ignored (CFLD reads the source image alone).
            steps, sampler: number of steps and sampler (see :data:`posereid.models.sampling.SAMPLERS`);
                the paper samples 50 DDPM steps with guidance 2.
            guidance: ``(w_pose, w_appearance)``; ``(1, 1)`` is the plain conditional model.
            seeds / generator: one seed or ``torch.Generator`` per sample makes each image independent
                of the rest of the batch; a single generator or ``None`` draws batch noise.
            callback: ``callback(step_index, timestep, x_t)`` after every step (``x_t`` latent in latent mode).
            autocast_dtype: e.g. ``torch.bfloat16``; ``None`` runs in the model's dtype.
            guidance_formula: ``"anchored"`` (default) or ``"pidm"``; see :mod:`posereid.models.guidance`.

        Raises :class:`~posereid.models.sampling.NonFiniteSampleError` rather than return a NaN image.
        """
        self.check_images(source, "source")
        b, dev = source.shape[0], self.device
        gens = self.generators(seeds, generator, b)
        amp = autocast_context(dev, autocast_dtype)
        model = self.model

        def model_fn(
            x: torch.Tensor, t: torch.Tensor, pose: tuple[torch.Tensor, ...], app: tuple[torch.Tensor, ...]
        ) -> torch.Tensor:
            with amp:
                return model(x, t, pose, app[0], app[1:])

        with amp:  # source pyramid + PRD + HGA projections and the pose adapter: ONCE, before the loop
            appearance = model.encode_source(source.to(dev))
            pose = model.encode_pose(self.pose_maps(target_kps, batch=b))
        denoise = guided_denoiser(
            model_fn, pose, appearance, model.null_pose(pose), model.null_source(appearance), guidance,
            formula=guidance_formula,
        )  # fmt: skip
        x = initial_noise((b, *model.sample_shape), gens, dev)
        x = sample_loop(
            denoise, self.sampler(sampler), x, steps, generator=gens, callback=callback, progress=progress
        )
        return self.to_images(self.decode(x))

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(
        self, save_directory: str | os.PathLike[str], ema_state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """The base layout (model files + ``scheduler_config.json``), plus the VAE's own folder ``vae/``."""
        directory = Path(save_directory)
        super().save_pretrained(directory, ema_state_dict)
        if self.vae is not None:
            tmp = directory / f"{VAE_DIR}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            self.vae.save_pretrained(str(tmp))
            shutil.rmtree(directory / VAE_DIR, ignore_errors=True)
            os.replace(tmp, directory / VAE_DIR)
        elif (directory / VAE_DIR).is_dir():  # a stale VAE from an earlier latent model
            shutil.rmtree(directory / VAE_DIR)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], *, use_ema: bool = True
    ) -> CFLDPipeline:
        """Load a directory written by :meth:`save_pretrained` (EMA weights preferred; ``vae/`` in latent mode)."""
        directory = Path(pretrained_model_name_or_path)
        model = CFLDModel.from_pretrained(directory, use_ema=use_ema)
        vae = load_local_vae(directory / VAE_DIR) if model.latent else None
        pipe = cls(model, load_scheduler(directory), vae=vae)
        logger.info("loaded %s generator from %s", cls.family, directory)
        return pipe.eval()


__all__ = [
    "CFLDPipeline",
    "RECIPE",
    "SD_SCHEDULE",
    "VAE_DIR",
    "load_local_unet",
    "load_local_vae",
    "vae_scale_factor",
]
