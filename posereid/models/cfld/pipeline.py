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
at the end, so ``image_size`` and the images in and out stay in pixels. The VAE is a component of the
checkpoint (its own folder ``vae/``, named in ``model_index.json``), so
:func:`~posereid.models.contract.load_generator` needs nothing else. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from posereid.models.cfld.model import CFLDModel
from posereid.models.checkpoint import require_local_weights
from posereid.models.guidance import Condition
from posereid.models.pipeline import Component, GeneratorPipeline
from posereid.models.sampling import TrainingScheduler, make_sampler, training_scheduler

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
    hint = f"put a diffusers {cls.__name__} there ({example}); weights are never downloaded"
    directory = require_local_weights(path, what, hint, weight_files=_WEIGHT_FILES)
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
    COMPONENTS: ClassVar[dict[str, Component]] = {
        VAE_DIR: Component("vae", load=load_local_vae, optional=True)
    }

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

    # ------------------------------------------------------------------ conditioning
    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(C, h, w)`` of what the UNet denoises (RGB pixels, or VAE latents)."""
        return self.model.sample_shape

    def conditions(
        self, source: torch.Tensor, target_kps: torch.Tensor, source_kps: torch.Tensor | None
    ) -> tuple[Condition, Condition]:
        """The pose adapter's features of the target pose maps, and ``(coarse prompt, *HGA biases)`` of the
        source image (source pyramid + PRD + HGA projections). ``source_kps`` is not used: CFLD's source
        branch reads the image alone."""
        self.check_images(source, "source")
        appearance = self.model.encode_source(source)
        return self.model.encode_pose(self.pose_maps(target_kps, batch=source.shape[0])), appearance

    def null_conditions(self, pose: Condition, appearance: Condition) -> tuple[Condition, Condition]:
        """Zero adapter residuals (no pose at all); the learned null prompt with zero HGA biases."""
        return self.model.null_pose(pose), self.model.null_source(appearance)

    def model_output(
        self, x: torch.Tensor, t: torch.Tensor, pose: Condition, appearance: Condition
    ) -> torch.Tensor:
        """The UNet over ``x`` with the adapter residuals, the prompt and the HGA query biases."""
        return self.model(x, t, pose, appearance[0], appearance[1:])


__all__ = [
    "CFLDPipeline",
    "RECIPE",
    "SD_SCHEDULE",
    "VAE_DIR",
    "load_local_unet",
    "load_local_vae",
    "vae_scale_factor",
]
