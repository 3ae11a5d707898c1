"""Pose-transfer diffusion generator (PIDM line, built from diffusers parts).

:class:`PoseTransferGenerator` is a diffusers ``ModelMixin``/``ConfigMixin``: it holds the weights and a
self-describing config, nothing else. The denoiser is a ``UNet2DConditionModel`` in pixel space whose input
is the noisy target ⊕ the target pose maps (:func:`posereid.models.pose.render_pose_maps`) and whose
cross-attention reads the appearance tokens of the source image (:mod:`posereid.models.appearance`).
The noise math lives in diffusers schedulers and the sampling loop in :mod:`posereid.models.sampling`.

Training drops the pose (zero maps) and the appearance (learned null tokens) independently, so one network
learns ε(p,s), ε(∅,s), ε(p,∅) and ε(∅,∅) for disentangled classifier-free guidance at sampling time.

Checkpoints are a directory: ``config.json`` + ``diffusion_pytorch_model.safetensors`` (+
``ema.safetensors``; + ``backbone/`` when a local vision backbone is used). No pickle anywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, DDPMScheduler, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from safetensors.torch import load_file, save_file

from posereid.models.appearance import AppearanceEncoder
from posereid.models.io_utils import atomic_save, atomic_write
from posereid.models.pose import NUM_KEYPOINTS, POSE_CHANNELS, render_pose_maps
from posereid.models.sampling import (
    GuidanceFormula,
    SamplerName,
    guided_denoiser,
    initial_noise,
    make_generators,
    make_sampler,
    sample_loop,
)

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
EMA_WEIGHTS_NAME = "ema.safetensors"
BACKBONE_DIR = "backbone"


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the model built from the config (names the offending keys)."""


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise :class:`CheckpointMismatchError` listing missing, unexpected and wrongly shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", shapes),
        ):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointMismatchError(f"{source} does not match the model config; " + "; ".join(parts))


class PoseTransferGenerator(ModelMixin, ConfigMixin):
    """Source image + target pose → image of the same person in the target pose.

    Args:
        image_size: ``(H, W)`` of every image the model sees (both divisible by the UNet's down-sampling).
        block_out_channels: UNet channels per resolution level.
        layers_per_block: ResNet layers per UNet level.
        attention_levels: per UNet level, whether it has (self + cross) attention; the mid block always has.
        attention_head_dim: channels per attention head.
        norm_num_groups: GroupNorm groups (UNet and appearance encoder).
        cross_attention_dim: appearance token width.
        appearance_channels: channels of the appearance pyramid's levels.
        appearance_stem_stride: stride of the appearance pyramid's first level.
        appearance_use_pose: feed the source pose maps to the appearance encoder too.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        num_train_timesteps, beta_schedule: training noise schedule (linear betas 1e-4..2e-2 as PIDM).
        timestep_sampling: ``"uniform"`` or ``"cubic"`` (t = (1 − u³)·T, CFLD: more weight on high noise).
        p_drop_pose, p_drop_appearance: independent condition-dropout rates for guidance.
        pose_sigma: Gaussian width of pose maps in pixels (None: 2.5 % of the height).
        backbone_path: local directory of a ``transformers`` vision model adding appearance tokens.
    """

    config_name = CONFIG_NAME
    _supports_gradient_checkpointing = True

    PRESETS: ClassVar[dict[str, dict]] = {
        # tests / CPU: ~0.4 M parameters; also usable at 64x32 via image_size=(64, 32)
        "tiny": dict(
            image_size=(32, 16), block_out_channels=(16, 32, 32), layers_per_block=1,
            attention_levels=(False, True, True), attention_head_dim=8, norm_num_groups=8,
            cross_attention_dim=32, appearance_channels=(16, 32), appearance_stem_stride=2,
        ),
        # CPU demo at 64x32: ~2 M parameters
        "small": dict(
            image_size=(64, 32), block_out_channels=(32, 64, 64), layers_per_block=1,
            attention_levels=(False, True, True), attention_head_dim=16, norm_num_groups=8,
            cross_attention_dim=64, appearance_channels=(32, 64, 64), appearance_stem_stride=4,
        ),
        # Market-1501 native 128x64, GPU: ~44 M parameters
        "market": dict(
            image_size=(128, 64), block_out_channels=(64, 128, 256, 256), layers_per_block=2,
            attention_levels=(False, True, True, True), attention_head_dim=32, norm_num_groups=32,
            cross_attention_dim=256, appearance_channels=(64, 128, 256), appearance_stem_stride=4,
        ),
        # DeepFashion 256x176, GPU: ~115 M parameters
        "deepfashion": dict(
            image_size=(256, 176), block_out_channels=(64, 128, 256, 256, 512), layers_per_block=2,
            attention_levels=(False, False, True, True, True), attention_head_dim=64, norm_num_groups=32,
            cross_attention_dim=256, appearance_channels=(64, 128, 256), appearance_stem_stride=8,
        ),
    }  # fmt: skip

    @register_to_config
    def __init__(
        self,
        image_size: Sequence[int] = (128, 64),
        block_out_channels: Sequence[int] = (64, 128, 256, 256),
        layers_per_block: int = 2,
        attention_levels: Sequence[bool] = (False, True, True, True),
        attention_head_dim: int = 32,
        norm_num_groups: int = 32,
        cross_attention_dim: int = 256,
        appearance_channels: Sequence[int] = (64, 128, 256),
        appearance_stem_stride: int = 4,
        appearance_use_pose: bool = True,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        timestep_sampling: Literal["uniform", "cubic"] = "uniform",
        p_drop_pose: float = 0.1,
        p_drop_appearance: float = 0.1,
        pose_sigma: float | None = None,
        backbone_path: str | None = None,
    ) -> None:
        super().__init__()
        h, w = (int(v) for v in image_size)
        chans = [int(c) for c in block_out_channels]
        attn = [bool(a) for a in attention_levels]
        if len(attn) != len(chans):
            raise ValueError(f"attention_levels has {len(attn)} entries for {len(chans)} block_out_channels")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        if timestep_sampling not in ("uniform", "cubic"):
            raise ValueError(f"timestep_sampling must be 'uniform' or 'cubic', got {timestep_sampling!r}")
        factor = 2 ** (len(chans) - 1)
        if h % factor or w % factor:
            raise ValueError(
                f"image_size {h}x{w} must be divisible by the UNet's total down-sampling {factor} "
                f"({len(chans)} levels)"
            )
        bad = [c for c in chans if c % norm_num_groups]
        if bad:
            raise ValueError(
                f"block_out_channels {bad} are not divisible by norm_num_groups={norm_num_groups}"
            )
        self.unet = UNet2DConditionModel(
            sample_size=(h, w),
            in_channels=3 + POSE_CHANNELS,
            out_channels=3,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            block_out_channels=tuple(chans),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            cross_attention_dim=cross_attention_dim,
            # diffusers' historical naming: this argument is the number of heads per level
            attention_head_dim=tuple(max(1, c // attention_head_dim) for c in chans),
        )
        self.appearance = AppearanceEncoder(
            (h, w),
            appearance_channels,
            cross_attention_dim,
            in_channels=3 + (POSE_CHANNELS if appearance_use_pose else 0),
            stem_stride=appearance_stem_stride,
            norm_groups=norm_num_groups,
            backbone_path=backbone_path,
        )
        self._train_scheduler: DDPMScheduler | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, **overrides) -> PoseTransferGenerator:
        """Build a preset (``tiny``, ``small``, ``market``, ``deepfashion``), overriding any config field."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    @property
    def device(self) -> torch.device:
        """Device of the weights. Read straight off one parameter: ``ModelMixin.device`` walks every module
        looking for offload hooks, which cost ~13 % of a CPU training step when called per step."""
        return self.unet.conv_in.weight.device

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the images this model works on."""
        return int(self.config.image_size[0]), int(self.config.image_size[1])

    def noise_scheduler(self) -> DDPMScheduler:
        """The training noise schedule (``add_noise``, ``get_velocity``); samplers are built from its config."""
        if self._train_scheduler is None:
            self._train_scheduler = DDPMScheduler(
                num_train_timesteps=self.config.num_train_timesteps,
                beta_start=1e-4,
                beta_end=2e-2,
                beta_schedule=self.config.beta_schedule,
                prediction_type=self.config.prediction_type,
                clip_sample=False,
            )
        return self._train_scheduler

    # ------------------------------------------------------------------ conditioning
    def _check_images(self, images: torch.Tensor, name: str) -> None:
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
        """Render ``(B, 18, 2)`` keypoints at :attr:`image_size` on the model's device."""
        kps = torch.as_tensor(kps)
        if (
            kps.ndim != 3
            or tuple(kps.shape[1:]) != (NUM_KEYPOINTS, 2)
            or (batch is not None and len(kps) != batch)
        ):
            want = f"({batch if batch is not None else 'B'}, {NUM_KEYPOINTS}, 2)"
            raise ValueError(f"keypoints: expected shape {want}, got {tuple(kps.shape)}")
        h, w = self.image_size
        return render_pose_maps(kps, h, w, sigma=self.config.pose_sigma, device=self.device)

    def encode_appearance(self, source: torch.Tensor, source_kps: torch.Tensor | None = None) -> torch.Tensor:
        """Appearance tokens ``(B, N, cross_attention_dim)`` of ``source`` ``(B, 3, H, W)`` in ``[0, 1]``.

        ``source_kps`` feeds the source pose maps when the config uses them; ``None`` gives empty maps.
        """
        self._check_images(source, "source")
        maps = None
        if self.config.appearance_use_pose and source_kps is not None:
            maps = self.pose_maps(source_kps, batch=source.shape[0])
        return self.appearance(source.to(self.device), maps)

    def denoise(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, pose_maps: torch.Tensor, tokens: torch.Tensor
    ) -> torch.Tensor:
        """UNet call on precomputed conditions (the sampler's inner function)."""
        dtype = self.unet.conv_in.weight.dtype  # a half-precision model takes half inputs; autocast recasts
        x = torch.cat([noisy.to(dtype), pose_maps.to(dtype)], dim=1)
        return self.unet(x, timesteps, encoder_hidden_states=tokens.to(dtype)).sample

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        target_kps: torch.Tensor,
        appearance_tokens: torch.Tensor,
        *,
        drop_pose: torch.Tensor | None = None,
        drop_appearance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Model output (ε or v) for ``noisy`` ``(B, 3, H, W)`` in ``[-1, 1]`` space.

        ``target_kps`` is ``(B, 18, 2)`` keypoints or already-rendered ``(B, POSE_CHANNELS, H, W)`` maps.
        ``drop_pose`` / ``drop_appearance`` are ``(B,)`` bool masks: dropped samples get zero pose maps /
        the learned null appearance tokens.
        """
        pose = target_kps if target_kps.ndim == 4 else self.pose_maps(target_kps, batch=noisy.shape[0])
        pose = pose.to(self.device)
        tokens = appearance_tokens
        if drop_pose is not None:
            pose = pose * (~drop_pose.to(pose.device, torch.bool)).view(-1, 1, 1, 1).to(pose.dtype)
        if drop_appearance is not None:
            null = self.appearance.null_tokens(tokens.shape[0], tokens.shape[1]).to(tokens.dtype)
            tokens = torch.where(drop_appearance.to(tokens.device, torch.bool).view(-1, 1, 1), null, tokens)
        return self.denoise(noisy, timesteps, pose, tokens)

    # ------------------------------------------------------------------ training
    def _rand(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        dev = generator.device if generator is not None else self.device
        return torch.rand(n, generator=generator, device=dev).to(self.device)

    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training timesteps: uniform, or CFLD's cubic ``t = (1 − u³)·T``."""
        T = self.config.num_train_timesteps
        u = self._rand(batch, generator)
        if self.config.timestep_sampling == "cubic":
            u = 1.0 - u**3
        return (u * T).long().clamp_(0, T - 1)

    def training_loss(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        source_kps: torch.Tensor,
        target_kps: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Denoising MSE (on ε or v) for a batch of pairs; images ``(B, 3, H, W)`` in ``[0, 1]``.

        Samples timesteps, noise and the independent pose / appearance dropout (all from ``generator``
        when given, so a loss is reproducible).
        """
        self._check_images(target, "target")
        b = target.shape[0]
        x0 = target.to(self.device, torch.float32) * 2.0 - 1.0
        tokens = self.encode_appearance(source, source_kps)
        t = self.sample_timesteps(b, generator)
        noise = initial_noise(x0.shape, generator, self.device)
        sched = self.noise_scheduler()
        noisy = sched.add_noise(x0, noise, t)
        drop_pose = self._rand(b, generator) < self.config.p_drop_pose
        drop_app = self._rand(b, generator) < self.config.p_drop_appearance
        out = self(noisy, t, target_kps, tokens, drop_pose=drop_pose, drop_appearance=drop_app)
        goal = noise if self.config.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
        return F.mse_loss(out.float(), goal.float())

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
        guidance: tuple[float, float] = (2.0, 2.0),
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
            target_kps / source_kps: ``(B, 18, 2)`` keypoints in that frame (-1 missing).
            steps, sampler: number of steps and sampler (see :data:`posereid.models.sampling.SAMPLERS`).
            guidance: ``(w_pose, w_appearance)``; ``(1, 1)`` is the plain conditional model.
            seeds / generator: one seed or ``torch.Generator`` per sample makes each image independent
                of the rest of the batch; a single generator or ``None`` draws batch noise.
            callback: ``callback(step_index, timestep, x_t)`` after every step.
            autocast_dtype: e.g. ``torch.bfloat16`` on CUDA; ``None`` runs in the model's dtype.
            guidance_formula: ``"anchored"`` (default) or ``"pidm"``; see :mod:`posereid.models.sampling`.
        """
        self._check_images(source, "source")
        b = source.shape[0]
        gens = make_generators(seeds, generator, b)
        dev = self.device
        amp = (
            torch.autocast(dev.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )

        def model_fn(
            x: torch.Tensor, t: torch.Tensor, pose: torch.Tensor, tokens: torch.Tensor
        ) -> torch.Tensor:
            with amp:
                return self.denoise(x, t, pose, tokens)

        with amp:  # appearance tokens: ONCE per generate call, before the loop
            tokens = self.encode_appearance(source.to(dev), source_kps)
            null_tokens = self.appearance.null_tokens(b, tokens.shape[1]).to(tokens.dtype)
        pose = self.pose_maps(target_kps, batch=b)
        denoise = guided_denoiser(
            model_fn, pose, tokens, torch.zeros_like(pose), null_tokens, guidance, formula=guidance_formula
        )
        scheduler = make_sampler(sampler, self.noise_scheduler())
        x = initial_noise((b, 3, *self.image_size), gens, dev)
        x = sample_loop(denoise, scheduler, x, steps, generator=gens, callback=callback, progress=progress)
        return ((x.float().clamp(-1.0, 1.0) + 1.0) / 2.0).nan_to_num_(0.5)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(  # type: ignore[override]
        self, save_directory: str | os.PathLike[str], ema_state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Write ``config.json`` + safetensors weights (+ EMA weights, + ``backbone/``), each file atomically.

        ``ema_state_dict`` maps the same parameter names as ``state_dict()`` to EMA tensors.
        """
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        atomic_save(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        ema_path = directory / EMA_WEIGHTS_NAME
        if ema_state_dict is not None:
            check_state_dict(self, ema_state_dict, source="ema_state_dict")
            ema = {k: torch.as_tensor(v).detach().to("cpu").contiguous() for k, v in ema_state_dict.items()}
            atomic_save(ema_path, lambda p: save_file(ema, str(p), metadata={"format": "pt"}))
        elif ema_path.exists():  # a stale EMA file would be preferred on load
            ema_path.unlink()
        backbone = self.appearance.backbone
        if backbone is not None:
            tmp = directory / f"{BACKBONE_DIR}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            backbone.save_pretrained(str(tmp))
            src_proc = Path(self.config.backbone_path) / "preprocessor_config.json"
            if src_proc.is_file():
                shutil.copy(src_proc, tmp / src_proc.name)
            shutil.rmtree(directory / BACKBONE_DIR, ignore_errors=True)
            os.replace(tmp, directory / BACKBONE_DIR)
        with atomic_write(directory / CONFIG_NAME) as fh:
            fh.write(self.to_json_string())

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, pretrained_model_name_or_path: str | os.PathLike[str], *, use_ema: bool = True
    ) -> PoseTransferGenerator:
        """Load a directory written by :meth:`save_pretrained` (EMA weights preferred when present).

        Only local directories; a config/weights mismatch raises :class:`CheckpointMismatchError`.
        """
        directory = Path(pretrained_model_name_or_path)
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path}: not found; expected a directory written by save_pretrained")
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{cfg_path}: invalid JSON (line {err.lineno}): {err.msg}") from err
        if config.get("_class_name", cls.__name__) != cls.__name__:
            raise ValueError(f"{cfg_path}: is a {config['_class_name']} checkpoint, not {cls.__name__}")
        if config.get("backbone_path") is not None:
            config["backbone_path"] = str(directory / BACKBONE_DIR)
        model = cls.from_config(config)
        weights = directory / EMA_WEIGHTS_NAME
        if not (use_ema and weights.is_file()):
            weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: weights file not found")
        state = load_file(str(weights))
        check_state_dict(model, state, source=str(weights))
        model.load_state_dict(state, strict=True)
        logger.info("loaded %s from %s", cls.__name__, weights)
        return model.eval()


__all__ = [
    "CONFIG_NAME",
    "EMA_WEIGHTS_NAME",
    "WEIGHTS_NAME",
    "CheckpointMismatchError",
    "PoseTransferGenerator",
    "check_state_dict",
]
