"""The PIDM-style pipeline: the training loss and the guided sampling loop around :class:`PIDMModel`.

Training drops the pose (zero maps) and the appearance (learned null tokens) independently, so one network
learns ε(p,s), ε(∅,s), ε(p,∅) and ε(∅,∅) for disentangled classifier-free guidance at sampling time
(:mod:`posereid.models.guidance`). Appearance tokens are computed once per ``generate`` call, before the
loop; every step is one batched UNet call over the guidance branches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from posereid.models.guidance import GuidanceFormula, condition_dropout, guided_denoiser
from posereid.models.pidm.model import PIDMModel
from posereid.models.pipeline import GeneratorPipeline, autocast_context
from posereid.models.sampling import (
    SamplerName,
    diffusion_loss,
    initial_noise,
    make_sampler,
    model_timesteps,
    noisy_sample,
    sample_loop,
    sample_timesteps,
)

#: the noise recipe of every preset, chosen by the ablation (results/generator_v2, 2 seeds at an equal
#: CPU budget): flow matching gave the best identity (rank-1 0.055 vs 0.016) and SSIM (0.200 vs 0.179) at
#: the same pose (PCKh 0.812 vs 0.814) as v-prediction + min-SNR-5, and beat ε by 0.26 → 0.81 PCKh
RECIPE: dict[str, str] = {"prediction_type": "flow"}


class PIDMPipeline(GeneratorPipeline):
    """Source image + target pose → the same person in the target pose (PIDM line, pixel space).

    Presets: ``tiny`` (tests, 32×16), ``small`` (CPU, 64×32), ``market`` (GPU, 128×64), ``deepfashion``
    (GPU, 256×176), all with :data:`RECIPE`. Schedule fields (``prediction_type``, ``num_train_timesteps``,
    ``beta_schedule``) go to the scheduler, every other field to :class:`PIDMModel`;
    ``prediction_type="flow"`` trains by flow matching (:func:`~posereid.models.sampling.training_scheduler`),
    so only the ``dpmsolver++``, ``unipc`` and ``euler`` samplers apply; override ``prediction_type`` for a
    DDPM model (``"v_prediction"`` or ``"epsilon"``).
    """

    family = "pidm"
    model_class = PIDMModel
    model: PIDMModel

    PRESETS: ClassVar[dict[str, dict]] = {
        # tests / CPU: ~0.4 M parameters; also usable at 64x32 via image_size=(64, 32)
        "tiny": dict(
            image_size=(32, 16), block_out_channels=(16, 32, 32), layers_per_block=1,
            attention_levels=(False, True, True), attention_head_dim=8, norm_num_groups=8,
            cross_attention_dim=32, appearance_channels=(16, 32), appearance_stem_stride=2,
            **RECIPE,
        ),
        # CPU demo at 64x32: ~2 M parameters
        "small": dict(
            image_size=(64, 32), block_out_channels=(32, 64, 64), layers_per_block=1,
            attention_levels=(False, True, True), attention_head_dim=16, norm_num_groups=8,
            cross_attention_dim=64, appearance_channels=(32, 64, 64), appearance_stem_stride=4,
            **RECIPE,
        ),
        # Market-1501 native 128x64, GPU: ~44 M parameters
        "market": dict(
            image_size=(128, 64), block_out_channels=(64, 128, 256, 256), layers_per_block=2,
            attention_levels=(False, True, True, True), attention_head_dim=32, norm_num_groups=32,
            cross_attention_dim=256, appearance_channels=(64, 128, 256), appearance_stem_stride=4,
            **RECIPE,
        ),
        # DeepFashion 256x176, GPU: ~115 M parameters
        "deepfashion": dict(
            image_size=(256, 176), block_out_channels=(64, 128, 256, 256, 512), layers_per_block=2,
            attention_levels=(False, False, True, True, True), attention_head_dim=64, norm_num_groups=32,
            cross_attention_dim=256, appearance_channels=(64, 128, 256), appearance_stem_stride=8,
            **RECIPE,
        ),
    }  # fmt: skip

    # ------------------------------------------------------------------ conditioning
    def encode_appearance(
        self,
        source: torch.Tensor,
        source_kps: torch.Tensor | None = None,
        *,
        drop_source_pose: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Appearance tokens of ``source`` ``(B, 3, H, W)`` in ``[0, 1]``; ``source_kps`` feeds the source
        pose maps when the model uses them (``None``: empty maps; so do the samples flagged in the
        ``(B,)`` bool mask ``drop_source_pose``)."""
        self.check_images(source, "source")
        maps = None
        if self.model.config.appearance_use_pose and source_kps is not None:
            maps = self.pose_maps(source_kps, batch=source.shape[0])
            if drop_source_pose is not None:
                maps = maps * (~drop_source_pose).to(maps.dtype).view(-1, 1, 1, 1)
        return self.model.encode_appearance(source, maps)

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

        Draws timesteps, noise and the independent pose / appearance dropout, all from ``generator`` when
        given, so a loss is reproducible.
        """
        self.check_images(target, "target")
        cfg, dev, b = self.model.config, self.device, target.shape[0]
        x0 = target.to(dev, torch.float32) * 2.0 - 1.0
        rand_dev = generator.device if generator is not None else dev
        drop_src = None
        if cfg.p_drop_source_pose > 0:  # drawn only when used, so older recipes draw the same numbers
            drop_src = torch.rand(b, generator=generator, device=rand_dev).to(dev) < cfg.p_drop_source_pose
        tokens = self.encode_appearance(source, source_kps, drop_source_pose=drop_src)
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
        pose = self.pose_maps(target_kps, batch=b)
        pose, tokens = condition_dropout(
            pose, tokens, torch.zeros_like(pose), self.model.null_like(tokens), drop_pose, drop_app
        )
        out = self.model(noisy, t, pose, tokens)
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
            target_kps / source_kps: ``(B, 18, 2)`` keypoints in that frame (-1 missing).
            steps, sampler: number of steps and sampler (see :data:`posereid.models.sampling.SAMPLERS`).
            guidance: ``(w_pose, w_appearance)``; ``(1, 1)`` is the plain conditional model.
            seeds / generator: one seed or ``torch.Generator`` per sample makes each image independent
                of the rest of the batch; a single generator or ``None`` draws batch noise.
            callback: ``callback(step_index, timestep, x_t)`` after every step.
            autocast_dtype: e.g. ``torch.bfloat16``; ``None`` runs in the model's dtype.
            guidance_formula: ``"anchored"`` (default) or ``"pidm"``; see :mod:`posereid.models.guidance`.

        Raises :class:`~posereid.models.sampling.NonFiniteSampleError` rather than return a NaN image.
        """
        self.check_images(source, "source")
        b, dev = source.shape[0], self.device
        gens = self.generators(seeds, generator, b)
        amp = autocast_context(dev, autocast_dtype)

        def model_fn(
            x: torch.Tensor, t: torch.Tensor, pose: torch.Tensor, tokens: torch.Tensor
        ) -> torch.Tensor:
            with amp:
                return self.model(x, t, pose, tokens)

        with amp:  # appearance tokens: ONCE per generate call, before the loop
            tokens = self.encode_appearance(source.to(dev), source_kps)
            null_tokens = self.model.null_like(tokens)
        pose = self.pose_maps(target_kps, batch=b)
        denoise = guided_denoiser(
            model_fn, pose, tokens, torch.zeros_like(pose), null_tokens, guidance, formula=guidance_formula
        )
        x = initial_noise((b, 3, *self.image_size), gens, dev)
        x = sample_loop(
            denoise, make_sampler(sampler, self.scheduler), x, steps, generator=gens, callback=callback,
            progress=progress,
        )  # fmt: skip
        return self.to_images(x)


__all__ = ["PIDMPipeline"]
