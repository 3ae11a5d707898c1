"""The PCDMs-style stages (Shen et al., ICLR 2024): weights only, one diffusers ``ModelMixin`` per stage.

Progressive conditional diffusion in three separately trained stages, here in pixel space and trained
from scratch (no pretrained weights are reachable):

1. :class:`PCDMsPrior` predicts a global embedding of the *target* image from the source's embedding and
   the two poses (a diffusion over a vector, diffusers' unCLIP ``PriorTransformer``).
2. :class:`PCDMsInpainter` paints the target into the right half of a ``source | target`` canvas, given
   the source on the left half, both poses, the source's appearance tokens and the stage-1 embedding.
3. :class:`PCDMsRefiner` restores texture on a coarse image given the source's appearance tokens.

**The embedding space.** The paper uses CLIP image embeddings; we have no CLIP. The space stage 1 predicts
is therefore the pooled code of a small image encoder (:class:`ImageEmbedder`, owned by the inpainter)
trained with the family in stage 2: the inpainter trains with the embedding of the *real target* (dropped
with the appearance condition for guidance), so the code learns what of the target the inpainter needs;
stage 1 then learns to predict that (frozen) embedding of the target from the source's embedding and the
two poses. The re-ID feature space was not used: ``posereid.models`` must not import
``reid_integration``, and it would tie the generator to one re-ID checkpoint.

The noise schedules are the pipeline's schedulers; losses and sampling loops are in
:mod:`posereid.models.pcdms.pipeline`. Every part saves ``config.json`` + safetensors (+ ``ema.safetensors``)
in its own folder (:class:`~posereid.models.checkpoint.CheckpointMixin`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ConfigMixin, ModelMixin, PriorTransformer
from diffusers.configuration_utils import register_to_config
from torch import nn

from posereid.models.appearance import AppearanceEncoder
from posereid.models.checkpoint import CheckpointMixin
from posereid.models.parts import build_unet, check_training_fields
from posereid.models.pose import NUM_KEYPOINTS, POSE_CHANNELS

#: per pose token of the prior: (x, y, visible) of every joint
KEYPOINT_FEATURES = NUM_KEYPOINTS * 3


# ---------------------------------------------------------------------------------------------- embedder
class ImageEmbedder(nn.Module):
    """Small CNN → global average pool → Linear → LayerNorm (no affine): one ``dim`` vector per image.

    The layer norm without affine fixes every embedding's mean (0) and scale (unit variance over its
    entries), so the prior's diffusion over it starts from the same scale as its noise.
    """

    def __init__(self, channels: Sequence[int], dim: int, *, norm_groups: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = 3
        for c in channels:
            if c % norm_groups:
                raise ValueError(f"embedder_channels {c} is not divisible by norm_num_groups={norm_groups}")
            layers += [nn.Conv2d(prev, c, 3, stride=2, padding=1), nn.GroupNorm(norm_groups, c), nn.SiLU()]
            prev = c
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(prev, dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` ``(B, 3, H, W)`` in ``[0, 1]`` → ``(B, dim)``."""
        x = images.to(self.proj.weight.dtype) * 2.0 - 1.0
        return self.norm(self.proj(self.features(x).mean(dim=(2, 3))))


# ---------------------------------------------------------------------------------------------- stage 2
class PCDMsInpainter(CheckpointMixin, ModelMixin, ConfigMixin):
    """Stage 2: a UNet over the ``source | target`` canvas (``H × 2W``) that paints the target half.

    UNet input channels: the noisy canvas (3) ⊕ the mask (1; 1 on the target half) ⊕ the masked canvas
    (3; the source on the left, zeros on the right) ⊕ the features of a small conv **pose encoder** over
    the canvas of pose maps (source pose maps left, target pose maps right). ``conv_in`` is linear, so
    concatenating the pose encoder's output to its input is exactly the paper's "pose encoder whose
    features are added after ``conv_in``". Self-attention over the joint canvas carries the dense
    source → target correspondence; cross-attention reads the source's appearance tokens
    (:class:`~posereid.models.appearance.AppearanceEncoder`) plus one token projected from the stage-1
    embedding. The inpainter also owns :class:`ImageEmbedder`, which defines that embedding's space (see
    the module docstring).

    Args:
        image_size: ``(H, W)`` of one image; the canvas is ``H × 2W``.
        block_out_channels, layers_per_block, attention_levels, attention_head_dim, norm_num_groups,
            cross_attention_dim: the UNet (as :class:`~posereid.models.pidm.PIDMModel`).
        appearance_channels, appearance_stem_stride, appearance_use_pose: the appearance encoder.
        pose_encoder_channels: hidden channels of the pose encoder's 3x3 convs.
        pose_feature_channels: pose encoder output channels (concatenated to the UNet input).
        embedder_channels: channels of the embedder's stride-2 convs; ``embedding_dim``: its output size.
        p_drop_pose, p_drop_appearance: independent training condition-dropout rates (guidance); the
            appearance condition is the tokens *and* the embedding token.
        p_drop_source_pose: training rate of empty source pose maps (sampling without source keypoints).
        p_source_embedding: training rate of the *source's* embedding in place of the target's, so that
            sampling without the prior (the source's own embedding) is in distribution.
        snr_gamma: min-SNR-γ loss weighting (None: plain MSE).
        pose_sigma: Gaussian width of pose maps in pixels (None: 2.5 % of the height).
    """

    # Kept on purpose: the size fields shared with the other families' models (image_size ... cross_attention_dim)
    # are spelled out in each, since a diffusers model's config is its __init__ signature;
    # tests/test_conformance.py::test_shared_config_fields_agree_across_families checks that they agree.
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
        pose_encoder_channels: int = 32,
        pose_feature_channels: int = 16,
        embedder_channels: Sequence[int] = (32, 64, 128, 128),
        embedding_dim: int = 64,
        p_drop_pose: float = 0.1,
        p_drop_appearance: float = 0.1,
        p_drop_source_pose: float = 0.1,
        p_source_embedding: float = 0.1,
        snr_gamma: float | None = None,
        pose_sigma: float | None = None,
    ) -> None:
        super().__init__()
        h, w = (int(v) for v in image_size)
        check_training_fields(
            p_drop_pose=p_drop_pose, p_drop_appearance=p_drop_appearance,
            p_drop_source_pose=p_drop_source_pose, p_source_embedding=p_source_embedding, snr_gamma=snr_gamma,
        )  # fmt: skip
        if int(pose_encoder_channels) < 1 or int(pose_feature_channels) < 1 or int(embedding_dim) < 1:
            raise ValueError("pose_encoder_channels, pose_feature_channels and embedding_dim must be >= 1")
        c = int(pose_encoder_channels)
        self.pose_encoder = nn.Sequential(
            nn.Conv2d(POSE_CHANNELS, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, int(pose_feature_channels), 3, padding=1),
        )  # fmt: skip
        self.unet = build_unet(
            sample_size=(h, 2 * w), in_channels=3 + 1 + 3 + int(pose_feature_channels), out_channels=3,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            attention_levels=attention_levels, attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups, cross_attention_dim=cross_attention_dim,
            what="PCDMs inpainter canvas",
        )  # fmt: skip
        self.appearance = AppearanceEncoder(
            (h, w), appearance_channels, cross_attention_dim, use_pose=appearance_use_pose,
            stem_stride=appearance_stem_stride, norm_groups=norm_num_groups,
        )  # fmt: skip
        self.embedder = ImageEmbedder(embedder_channels, int(embedding_dim), norm_groups=norm_num_groups)
        self.embedding_proj = nn.Linear(int(embedding_dim), cross_attention_dim)
        self.null_embedding_token = nn.Parameter(torch.randn(cross_attention_dim) * 0.02)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The stage-1 embedding ``(B, embedding_dim)`` of ``images`` ``(B, 3, H, W)`` in ``[0, 1]``."""
        return self.embedder(images.to(self.unet.conv_in.weight.device))

    def condition_tokens(self, tokens: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """The cross-attention sequence: appearance ``tokens`` then one token from ``embedding``."""
        emb = self.embedding_proj(embedding.to(self.embedding_proj.weight.dtype))
        return torch.cat([tokens, emb[:, None].to(tokens.dtype)], dim=1)

    def null_like(self, tokens: torch.Tensor) -> torch.Tensor:
        """The learned "appearance dropped" sequence laid out like :meth:`condition_tokens`' output."""
        b, n = tokens.shape[:2]
        null = self.appearance.null_tokens(b, n - 1)
        last = self.null_embedding_token.to(null.dtype).expand(b, 1, -1)
        return torch.cat([null, last], dim=1).to(tokens.dtype)

    def forward(
        self,
        noisy_canvas: torch.Tensor,
        timesteps: torch.Tensor,
        source: torch.Tensor,
        pose_canvas: torch.Tensor,
        tokens: torch.Tensor,
    ) -> torch.Tensor:
        """Model output over the canvas ``(B, 3, H, 2W)``.

        Args:
            noisy_canvas: ``(B, 3, H, 2W)`` in model space (``[-1, 1]`` plus noise).
            source: ``(B, 3, H, W)`` the clean source in ``[-1, 1]`` (the masked canvas's visible half).
            pose_canvas: ``(B, POSE_CHANNELS, H, 2W)`` source pose maps left, target pose maps right.
            tokens: ``(B, N + 1, cross_attention_dim)`` from :meth:`condition_tokens` (or :meth:`null_like`).
        """
        dtype = self.unet.conv_in.weight.dtype
        w = source.shape[-1]
        if noisy_canvas.shape[-1] != 2 * w or pose_canvas.shape[-1] != 2 * w:
            raise ValueError(
                f"canvas width {noisy_canvas.shape[-1]} (pose canvas {pose_canvas.shape[-1]}) must be twice "
                f"the source width {w}"
            )
        src = source.to(noisy_canvas.device, dtype)
        mask = torch.zeros_like(src[:, :1]).repeat(1, 1, 1, 2)
        mask[..., w:] = 1.0
        masked = torch.cat([src, torch.zeros_like(src)], dim=-1)
        pose = self.pose_encoder(pose_canvas.to(noisy_canvas.device, dtype))
        x = torch.cat([noisy_canvas.to(dtype), mask, masked, pose], dim=1)
        return self.unet(x, timesteps, encoder_hidden_states=tokens.to(dtype)).sample


# ---------------------------------------------------------------------------------------------- stage 1
class PCDMsPrior(CheckpointMixin, ModelMixin, ConfigMixin):
    """Stage 1: diffusion over the target's embedding given the source's embedding and both poses.

    The network is diffusers' public unCLIP ``PriorTransformer``, whose interface is exactly this task's:
    ``hidden_states`` = the noisy target embedding, ``proj_embedding`` = the source embedding,
    ``encoder_hidden_states`` = two pose tokens (source, target), each an MLP over the pose's 18 ×
    ``(x, y, visible)`` keypoint features (coordinates normalised to ``[0, 1]`` by the image size; a
    missing joint is ``(-1, -1, 0)``; a missing source pose is all-missing). Attention is bidirectional
    (no mask), the output is read off the appended ``prd`` token, and the pipeline trains it to predict
    the clean embedding (``prediction_type="sample"``). ``PriorTransformer``'s ``clip_mean`` / ``clip_std``
    (unCLIP's de-normalisation, unused by ``forward``) stay frozen at their initial values.

    Args:
        image_size: ``(H, W)`` the keypoints' frame (for normalisation).
        embedding_dim: size of the embedding (the inpainter's ``embedding_dim``).
        num_layers, num_attention_heads, attention_head_dim: the transformer.
        pose_hidden_dim: hidden width of the keypoint MLP.
        p_drop_pose: training rate of learned null pose tokens (both poses; pose guidance).
        p_drop_appearance: training rate of the learned null source embedding (appearance guidance).
        p_drop_source_pose: training rate of an all-missing source pose (sampling without source keypoints).
    """

    @register_to_config
    def __init__(
        self,
        image_size: Sequence[int] = (128, 64),
        embedding_dim: int = 64,
        num_layers: int = 6,
        num_attention_heads: int = 4,
        attention_head_dim: int = 64,
        pose_hidden_dim: int = 256,
        p_drop_pose: float = 0.1,
        p_drop_appearance: float = 0.1,
        p_drop_source_pose: float = 0.1,
    ) -> None:
        super().__init__()
        check_training_fields(
            p_drop_pose=p_drop_pose,
            p_drop_appearance=p_drop_appearance,
            p_drop_source_pose=p_drop_source_pose,
        )
        h, w = (int(v) for v in image_size)
        if h < 1 or w < 1:
            raise ValueError(f"image_size must be positive, got {h}x{w}")
        dim, hidden = int(embedding_dim), int(pose_hidden_dim)
        self.pose_mlp = nn.Sequential(
            nn.Linear(KEYPOINT_FEATURES, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, dim),
        )  # fmt: skip
        self.transformer = PriorTransformer(
            num_attention_heads=int(num_attention_heads),
            attention_head_dim=int(attention_head_dim),
            num_layers=int(num_layers),
            embedding_dim=dim,
            num_embeddings=2,  # the two pose tokens
            additional_embeddings=4,  # source embedding, timestep, noisy embedding, prd (the output)
            norm_in_type="layer",
            encoder_hid_proj_type="linear",
            added_emb_type="prd",
        )
        self.null_pose = nn.Parameter(torch.randn(2, dim) * 0.02)
        self.null_source = nn.Parameter(torch.randn(dim) * 0.02)
        self.freeze_unused()

    def freeze_unused(self) -> None:
        """Keep ``PriorTransformer``'s unused ``clip_mean`` / ``clip_std`` out of training."""
        self.transformer.clip_mean.requires_grad_(False)
        self.transformer.clip_std.requires_grad_(False)

    def keypoint_features(self, kps: torch.Tensor) -> torch.Tensor:
        """``(B, 18, 2)`` pixel keypoints (-1 missing) → ``(B, 54)`` normalised ``(x, y, visible)`` features."""
        h, w = (int(v) for v in self.config.image_size)
        kps = kps.to(self.null_pose.device, torch.float32)
        vis = (kps >= 0).all(-1, keepdim=True)
        scale = torch.tensor([w, h], device=kps.device, dtype=torch.float32)
        xy = torch.where(vis, (kps + 0.5) / scale, torch.full_like(kps, -1.0))
        return torch.cat([xy, vis.float()], dim=-1).flatten(1).to(self.null_pose.dtype)

    def encode_poses(self, source_kps: torch.Tensor, target_kps: torch.Tensor) -> torch.Tensor:
        """The two pose tokens ``(B, 2, embedding_dim)`` (source, target)."""
        feats = torch.stack([self.keypoint_features(source_kps), self.keypoint_features(target_kps)], dim=1)
        return self.pose_mlp(feats)

    def null_pose_tokens(self, batch: int) -> torch.Tensor:
        """The learned "pose dropped" tokens ``(batch, 2, embedding_dim)``."""
        return self.null_pose.expand(batch, -1, -1)

    def null_source_embedding(self, batch: int) -> torch.Tensor:
        """The learned "source embedding dropped" vector ``(batch, embedding_dim)``."""
        return self.null_source.expand(batch, -1)

    def forward(
        self,
        noisy_embedding: torch.Tensor,
        timesteps: torch.Tensor,
        source_embedding: torch.Tensor,
        pose_tokens: torch.Tensor,
    ) -> torch.Tensor:
        """The predicted clean target embedding ``(B, embedding_dim)``."""
        dtype = self.null_pose.dtype
        return self.transformer(
            hidden_states=noisy_embedding.to(dtype),
            timestep=timesteps,
            proj_embedding=source_embedding.to(dtype),
            encoder_hidden_states=pose_tokens.to(dtype),
        ).predicted_image_embedding


# ---------------------------------------------------------------------------------------------- stage 3
class PCDMsRefiner(CheckpointMixin, ModelMixin, ConfigMixin):
    """Stage 3: a UNet over the noisy target ⊕ a coarse image (⊕ the target pose maps) that restores texture.

    Cross-attention reads the source's appearance tokens (its own
    :class:`~posereid.models.appearance.AppearanceEncoder`). Training feeds as "coarse" a *degraded copy of
    the real target* (blur by down/up-sampling, colour shift, small translation, additive noise; strengths
    below), not stage 2's output: the refiner then learns to restore texture on ANY family's output of the
    same size, and trains without running the inpainter.

    Args:
        image_size, block_out_channels, layers_per_block, attention_levels, attention_head_dim,
            norm_num_groups, cross_attention_dim, appearance_channels, appearance_stem_stride,
            appearance_use_pose: as :class:`PCDMsInpainter`.
        use_target_pose: also feed the target pose maps (else the coarse image is the only pose signal).
        p_drop_pose, p_drop_appearance, p_drop_source_pose, snr_gamma: as the inpainter (pose maps are
            rendered with the pipeline's, i.e. the inpainter's, ``pose_sigma``).
        degrade_max_blur: largest down-sampling factor of the blur (a power of 2; 1 = no blur).
        degrade_color: largest per-channel gain change (± fraction); the offset is half of it.
        degrade_shift: largest translation as a fraction of the image size.
        degrade_noise: largest standard deviation of the additive Gaussian noise (images in ``[0, 1]``).
    """

    # Kept on purpose: the size fields shared with the other families' models (image_size ... cross_attention_dim)
    # are spelled out in each, since a diffusers model's config is its __init__ signature;
    # tests/test_conformance.py::test_shared_config_fields_agree_across_families checks that they agree.
    @register_to_config
    def __init__(
        self,
        image_size: Sequence[int] = (128, 64),
        block_out_channels: Sequence[int] = (64, 128, 256),
        layers_per_block: int = 2,
        attention_levels: Sequence[bool] = (False, True, True),
        attention_head_dim: int = 32,
        norm_num_groups: int = 32,
        cross_attention_dim: int = 256,
        appearance_channels: Sequence[int] = (64, 128, 256),
        appearance_stem_stride: int = 4,
        appearance_use_pose: bool = True,
        use_target_pose: bool = True,
        p_drop_pose: float = 0.1,
        p_drop_appearance: float = 0.1,
        p_drop_source_pose: float = 0.1,
        snr_gamma: float | None = None,
        degrade_max_blur: int = 4,
        degrade_color: float = 0.1,
        degrade_shift: float = 0.04,
        degrade_noise: float = 0.05,
    ) -> None:
        super().__init__()
        h, w = (int(v) for v in image_size)
        check_training_fields(
            p_drop_pose=p_drop_pose, p_drop_appearance=p_drop_appearance, p_drop_source_pose=p_drop_source_pose,
            snr_gamma=snr_gamma,
        )  # fmt: skip
        blur = int(degrade_max_blur)
        if blur < 1 or blur & (blur - 1) or h % blur or w % blur:
            raise ValueError(
                f"degrade_max_blur must be a power of 2 dividing the image size {h}x{w}, got {degrade_max_blur}"
            )
        for name, v in (("degrade_color", degrade_color), ("degrade_shift", degrade_shift),
                        ("degrade_noise", degrade_noise)):  # fmt: skip
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        in_channels = 3 + 3 + (POSE_CHANNELS if use_target_pose else 0)
        self.unet = build_unet(
            sample_size=(h, w), in_channels=in_channels, out_channels=3, block_out_channels=block_out_channels,
            layers_per_block=layers_per_block, attention_levels=attention_levels,
            attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups,
            cross_attention_dim=cross_attention_dim, what="PCDMs refiner",
        )  # fmt: skip
        self.appearance = AppearanceEncoder(
            (h, w), appearance_channels, cross_attention_dim, use_pose=appearance_use_pose,
            stem_stride=appearance_stem_stride, norm_groups=norm_num_groups,
        )  # fmt: skip

    def null_like(self, tokens: torch.Tensor) -> torch.Tensor:
        """The learned "appearance dropped" tokens laid out like ``tokens``."""
        return self.appearance.null_tokens(tokens.shape[0], tokens.shape[1]).to(tokens.dtype)

    def degrade(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A degraded copy of ``images`` ``(B, 3, H, W)`` in ``[0, 1]``: the refiner's training "coarse" input.

        Per sample: blur by area down-sampling with a random factor in ``{1, 2, …, degrade_max_blur}`` and
        bilinear up-sampling, a per-channel gain and offset, a sub-pixel translation (border pixels
        repeated) and Gaussian noise of random strength. Every draw comes from ``generator`` (on its
        device), so the degradation of a training step is reproducible.
        """
        cfg = self.config
        b, _, h, w = images.shape
        dev = images.device
        rdev = generator.device if generator is not None else dev

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=rdev).to(dev)

        levels = int(cfg.degrade_max_blur).bit_length()  # factors 1, 2, ..., max
        factor_idx = (rand(b) * levels).long().clamp_(max=levels - 1)
        gain = 1.0 + (rand(b, 3) * 2 - 1) * cfg.degrade_color
        offset = (rand(b, 3) * 2 - 1) * cfg.degrade_color / 2
        shift = (rand(b, 2) * 2 - 1) * cfg.degrade_shift
        sigma = rand(b) * cfg.degrade_noise
        noise = torch.randn(images.shape, generator=generator, device=rdev).to(dev)

        x = images.float()
        out = x.clone()
        for i in range(1, levels):
            sel = factor_idx == i
            if bool(sel.any()):
                f = 2**i
                small = torch.nn.functional.interpolate(x[sel], size=(h // f, w // f), mode="area")
                out[sel] = torch.nn.functional.interpolate(
                    small, size=(h, w), mode="bilinear", align_corners=False
                )
        out = out * gain[:, :, None, None] + offset[:, :, None, None]
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = shift * 2  # affine_grid works in [-1, 1]: a shift of s·size is 2s there
        grid = torch.nn.functional.affine_grid(theta, list(out.shape), align_corners=False)
        out = torch.nn.functional.grid_sample(out, grid, padding_mode="border", align_corners=False)
        out = out + noise * sigma[:, None, None, None]
        return out.clamp(0.0, 1.0).to(images.dtype)

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        coarse: torch.Tensor,
        pose_maps: torch.Tensor | None,
        tokens: torch.Tensor,
    ) -> torch.Tensor:
        """Model output ``(B, 3, H, W)`` for ``noisy`` in model space, given ``coarse`` in ``[-1, 1]``, the
        target ``pose_maps`` (ignored, may be ``None``, when ``use_target_pose`` is off) and ``tokens``."""
        dtype = self.unet.conv_in.weight.dtype
        parts = [noisy.to(dtype), coarse.to(noisy.device, dtype)]
        if self.config.use_target_pose:
            if pose_maps is None:
                raise ValueError("this refiner uses the target pose maps (use_target_pose=True); got None")
            parts.append(pose_maps.to(noisy.device, dtype))
        return self.unet(torch.cat(parts, dim=1), timesteps, encoder_hidden_states=tokens.to(dtype)).sample


__all__ = ["ImageEmbedder", "KEYPOINT_FEATURES", "PCDMsInpainter", "PCDMsPrior", "PCDMsRefiner"]
