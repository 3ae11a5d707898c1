"""Parts every family's model builds from: the pixel-space UNet with its size checks, and config checks.

Each family's weight-only model (``PIDMModel``, ``CFLDModel``, the PCDMs stages) builds its denoiser with
:func:`build_unet` and validates its training fields with :func:`check_training_fields`, so a bad size or
rate gets the same clear error in every family. :func:`check_config_fields` checks a config read from a
file (a checkpoint's ``config.json``, ``scheduler_config.json``, ``model_index.json``) against the
constructor's annotations and :data:`SIZE_LIMITS` before anything is built, so a wrong type or a size that
would divide by zero or exhaust memory is refused naming the field.
"""

from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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


#: sizes a config may hold: ``field: (min, max)`` for an int, or for each int of a list field. The upper
#: bounds are far above any model this project builds (a market UNet has 256 channels) and stop a mistyped
#: size before it allocates terabytes.
SIZE_LIMITS: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("image_size", "input_height"), (1, 4096)),
    **dict.fromkeys(
        ("block_out_channels", "appearance_channels", "source_channels", "embedder_channels", "channels",
         "cross_attention_dim", "attention_head_dim", "embedding_dim", "pose_hidden_dim",
         "pose_encoder_channels", "pose_feature_channels", "latent_channels"),
        (1, 4096),
    ),
    **dict.fromkeys(("layers_per_block", "num_layers", "num_attention_heads", "prd_heads", "num_queries",
                     "norm_num_groups"), (1, 1024)),
    **dict.fromkeys(("prd_layers", "adapter_res_blocks", "degrade_max_blur", "blocks"), (0, 1024)),
    **dict.fromkeys(("appearance_stem_stride", "source_stem_stride", "vae_scale_factor", "output_stride"), (1, 64)),
    "num_train_timesteps": (1, 100_000),
}  # fmt: skip
#: list fields of :data:`SIZE_LIMITS` with a fixed length
SIZE_LENGTHS: dict[str, int] = {"image_size": 2}
#: float fields of a config with a range ``(min, max)`` (scheduler betas)
FLOAT_LIMITS: dict[str, tuple[float, float]] = {"beta_start": (0.0, 0.999), "beta_end": (0.0, 0.999)}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_sizes(**fields: Any) -> None:
    """``ValueError`` naming the field for a size outside :data:`SIZE_LIMITS` or of the wrong type (an int,
    or a non-empty list of ints; ``image_size``: two). Fields not in the table are ignored."""
    for name, value in fields.items():
        if name not in SIZE_LIMITS:
            continue
        lo, hi = SIZE_LIMITS[name]
        if isinstance(value, (list, tuple)):
            want = SIZE_LENGTHS.get(name)
            if (want is not None and len(value) != want) or not value:
                count = f"{want} integers" if want is not None else "a non-empty list of integers"
                raise ValueError(f"{name} must be {count} in [{lo}, {hi}], got {list(value)!r}")
            items = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        elif name in SIZE_LENGTHS:
            raise ValueError(f"{name} must be {SIZE_LENGTHS[name]} integers in [{lo}, {hi}], got {value!r}")
        else:
            items = [(name, value)]
        for label, v in items:
            if not _is_int(v) or not lo <= v <= hi:
                raise ValueError(f"{label} must be an integer in [{lo}, {hi}], got {v!r}")


def _hints(func: Callable) -> dict[str, Any]:
    """``func``'s parameter annotations, each resolved on its own (one that cannot be is left out); a
    parameter whose default is ``None`` may be ``None`` whatever its annotation says."""
    found: dict[str, Any] = {}
    namespace = getattr(func, "__globals__", {})
    for name, param in inspect.signature(func).parameters.items():
        hint = param.annotation
        if hint is inspect.Parameter.empty:
            continue
        if isinstance(hint, str):
            try:
                hint = eval(hint, dict(namespace), {})  # noqa: S307 - the annotation text of our own code
            except Exception:  # noqa: BLE001 - an annotation naming a TYPE_CHECKING import: not checked
                continue
        found[name] = typing.Optional[hint] if param.default is None else hint  # noqa: UP045 - any hint
    return found


def _type_error(name: str, hint: Any, value: Any) -> str | None:
    """Why ``value`` is not a ``hint`` (``None`` when it is, or when ``hint`` is not one checked here)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return None
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        whys = [_type_error(name, a, value) for a in args if a is not type(None)]
        return None if any(w is None for w in whys) else whys[0]
    if origin is typing.Literal:
        return None if value in args else f"{name} must be one of {', '.join(map(repr, args))}, got {value!r}"
    if hint is bool:
        return None if isinstance(value, bool) else f"{name} must be true or false, got {value!r}"
    if hint is int:
        return None if _is_int(value) else f"{name} must be an integer, got {value!r}"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else f"{name} must be a finite number, got {value!r}"
    if hint is str:
        return None if isinstance(value, str) else f"{name} must be a string, got {value!r}"
    if origin in (Sequence, list, tuple):
        if not isinstance(value, (list, tuple)):
            what = f"the string {value!r}" if isinstance(value, str) else repr(value)
            return f"{name} must be a list, got {what}"
        item = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else None
        if item is not None:
            for i, v in enumerate(value):
                if why := _type_error(f"{name}[{i}]", item, v):
                    return why
        return None
    if origin in (Mapping, dict):
        return None if isinstance(value, dict) else f"{name} must be a mapping, got {value!r}"
    return None


def check_config_fields(init: Callable, config: Mapping[str, Any]) -> None:
    """Check the fields of ``config`` (as read from JSON) that ``init`` takes: each of its annotated type
    (``int`` is not ``1.5`` nor ``true``, ``Sequence[int]`` is a list of ints, a ``Literal`` one of its
    values, ``X | None`` may be null), sizes within :data:`SIZE_LIMITS`, floats within
    :data:`FLOAT_LIMITS`. ``TypeError`` / ``ValueError`` naming the field; fields ``init`` does not take are
    not looked at."""
    hints = _hints(init)
    for name, value in config.items():
        if name in hints and (why := _type_error(name, hints[name], value)):
            raise TypeError(why)
        if name in SIZE_LIMITS and value is not None:
            check_sizes(**{name: value})
        if name in FLOAT_LIMITS and value is not None:
            lo, hi = FLOAT_LIMITS[name]
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
            if not ok:
                raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")


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
    try:
        check_sizes(
            block_out_channels=list(block_out_channels), layers_per_block=layers_per_block,
            attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups,
            cross_attention_dim=cross_attention_dim,
        )  # fmt: skip
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None
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


__all__ = [
    "FLOAT_LIMITS",
    "SIZE_LIMITS",
    "TIMESTEP_SAMPLINGS",
    "TOKEN_UNET_SIZES",
    "build_unet",
    "check_config_fields",
    "check_sizes",
    "check_training_fields",
]
