"""Parts every family's model builds from: the pixel-space UNet with its size checks, and config checks.

Each family's weight-only model (``PIDMModel``, ``CFLDModel``, the PCDMs stages) builds its denoiser with
:func:`build_unet` and validates its training fields with :func:`check_training_fields`, so a bad size or
rate gets the same clear error in every family.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffusers import UNet2DConditionModel

#: how training timesteps are drawn: uniform, or CFLD's "cubic" t = (1 − u³)·T
TIMESTEP_SAMPLINGS = ("uniform", "cubic")

#: per preset, the sizes of a pixel UNet that cross-attends to appearance tokens and of its appearance
#: encoder: the PIDM denoiser and the PCDMs image stages share them (``tiny``: tests, ~0.4 M parameters;
#: ``small``: the CPU demo at 64x32, ~2 M; ``market``: Market-1501's 128x64 on a GPU, ~44 M for PIDM)
TOKEN_UNET_SIZES: dict[str, dict] = {
    "tiny": dict(
        image_size=(32, 16), block_out_channels=(16, 32, 32), layers_per_block=1,
        attention_levels=(False, True, True), attention_head_dim=8, norm_num_groups=8,
        cross_attention_dim=32, appearance_channels=(16, 32), appearance_stem_stride=2,
    ),
    "small": dict(
        image_size=(64, 32), block_out_channels=(32, 64, 64), layers_per_block=1,
        attention_levels=(False, True, True), attention_head_dim=16, norm_num_groups=8,
        cross_attention_dim=64, appearance_channels=(32, 64, 64), appearance_stem_stride=4,
    ),
    "market": dict(
        image_size=(128, 64), block_out_channels=(64, 128, 256, 256), layers_per_block=2,
        attention_levels=(False, True, True, True), attention_head_dim=32, norm_num_groups=32,
        cross_attention_dim=256, appearance_channels=(64, 128, 256), appearance_stem_stride=4,
    ),
}  # fmt: skip


def check_training_fields(
    *, snr_gamma: float | None = None, timestep_sampling: str | None = None, **rates: float
) -> None:
    """``ValueError`` naming the field for a rate outside ``[0, 1]`` (condition dropout and the like), a
    ``snr_gamma`` that is not ``None`` or > 0, or an unknown ``timestep_sampling``."""
    for name, p in rates.items():
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if snr_gamma is not None and not float(snr_gamma) > 0:
        raise ValueError(f"snr_gamma must be > 0 or None, got {snr_gamma}")
    if timestep_sampling is not None and timestep_sampling not in TIMESTEP_SAMPLINGS:
        raise ValueError(f"timestep_sampling must be 'uniform' or 'cubic', got {timestep_sampling!r}")


def build_unet(
    *,
    sample_size: tuple[int, int],
    in_channels: int,
    out_channels: int,
    block_out_channels: Sequence[int],
    layers_per_block: int,
    attention_head_dim: int,
    norm_num_groups: int,
    cross_attention_dim: int,
    attention_levels: Sequence[bool] | None = None,
    self_attention_levels: Sequence[bool] | None = None,
    what: str = "the UNet",
) -> UNet2DConditionModel:
    """A diffusers ``UNet2DConditionModel`` over ``sample_size``, its sizes checked with errors naming ``what``.

    Give exactly one of:

    * ``attention_levels``: per level, whether it has (self + cross) attention blocks; the others are
      plain ResNet levels (PIDM, PCDMs);
    * ``self_attention_levels``: every level cross-attends (CFLD: its pose adapter adds features only in
      cross-attention down blocks); these levels also self-attend, the others only cross-attend.

    The mid block always has both. ``attention_head_dim`` is channels per head (diffusers' own argument of
    that name is the number of heads per level, for historical reasons; converted here).
    """
    if (attention_levels is None) == (self_attention_levels is None):
        raise TypeError("give exactly one of attention_levels and self_attention_levels")
    chans = [int(c) for c in block_out_channels]
    levels = [bool(a) for a in (attention_levels if attention_levels is not None else self_attention_levels)]
    field = "attention_levels" if attention_levels is not None else "self_attention_levels"
    if len(levels) != len(chans):
        raise ValueError(f"{what}: {field} has {len(levels)} entries for {len(chans)} block_out_channels")
    factor = 2 ** (len(chans) - 1)
    h, w = (int(v) for v in sample_size)
    if h % factor or w % factor:
        raise ValueError(
            f"{what}: size {h}x{w} must be divisible by the UNet's total down-sampling {factor} "
            f"({len(chans)} levels)"
        )
    bad = [c for c in chans if c % int(norm_num_groups)]
    if bad:
        raise ValueError(
            f"{what}: block_out_channels {bad} are not divisible by norm_num_groups={norm_num_groups}"
        )
    if attention_levels is not None:
        blocks = dict(
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in levels),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels)),
        )
    else:
        blocks = dict(
            down_block_types=("CrossAttnDownBlock2D",) * len(chans),
            up_block_types=("CrossAttnUpBlock2D",) * len(chans),
            only_cross_attention=tuple(not a for a in levels),
            mid_block_only_cross_attention=False,
        )
    return UNet2DConditionModel(
        sample_size=(h, w),
        in_channels=int(in_channels),
        out_channels=int(out_channels),
        block_out_channels=tuple(chans),
        layers_per_block=int(layers_per_block),
        norm_num_groups=int(norm_num_groups),
        cross_attention_dim=int(cross_attention_dim),
        attention_head_dim=tuple(max(1, c // int(attention_head_dim)) for c in chans),
        **blocks,
    )


__all__ = ["TIMESTEP_SAMPLINGS", "TOKEN_UNET_SIZES", "build_unet", "check_training_fields"]
