"""Checkpoint files shared by every generator family: names, JSON configs and safetensors weights.

A checkpoint is a directory, as in diffusers: ``config.json`` + ``diffusion_pytorch_model.safetensors``
(+ ``ema.safetensors``) for one model, ``scheduler_config.json`` for its noise schedule, and for a
multi-stage pipeline a ``model_index.json`` naming one such folder per stage. No pickle anywhere.

Every read names the file it failed on: a truncated or renamed-pickle ``.safetensors``, invalid JSON, a
state dict that does not fit the config, or a weight with a NaN/Inf value (named tensor) raise
:class:`CheckpointError`, never a bare library error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from posereid.models.io_utils import atomic_save

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
EMA_WEIGHTS_NAME = "ema.safetensors"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
MODEL_INDEX_NAME = "model_index.json"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, damaged or does not fit its config (the message names it)."""


class CheckpointMismatchError(CheckpointError):
    """A state dict does not fit the model built from the config (names the offending keys)."""


def read_json(path: str | os.PathLike[str]) -> dict:
    """The JSON object in ``path``; a missing file raises ``FileNotFoundError``, a bad one :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text ({err.reason})") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid JSON (line {err.lineno}): {err.msg}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_finite(state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise :class:`CheckpointError` naming the first tensors holding NaN or Inf (they would give NaN images)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise CheckpointError(f"{source}: non-finite values (NaN/Inf) in {shown}; the checkpoint is damaged")


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
    parts = []
    for label, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatch", shapes),
    ):
        if keys:
            shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
            parts.append(f"{label}: {shown}")
    if parts:
        raise CheckpointMismatchError(f"{source} does not match the model config; " + "; ".join(parts))


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, checked to be finite; damaged files raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({err}); the file is damaged"
        ) from err
    check_finite(state, source=str(path))
    return state


def save_weights(path: str | os.PathLike[str], state: Mapping[str, torch.Tensor]) -> None:
    """Write ``state`` (moved to CPU, contiguous) as safetensors, atomically."""
    cpu = {k: torch.as_tensor(v).detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_save(path, lambda tmp: save_file(cpu, str(tmp), metadata={"format": "pt"}))


def save_model(
    model: torch.nn.Module,
    directory: str | os.PathLike[str],
    ema_state_dict: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Weights (+ EMA weights) of ``model`` into ``directory``; a stale EMA file is removed.

    ``ema_state_dict`` maps the same names as ``model.state_dict()`` to EMA tensors. The config is the
    caller's (``to_json_string`` of a diffusers ``ConfigMixin``), written last by :func:`save_config`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(directory / WEIGHTS_NAME, model.state_dict())
    ema_path = directory / EMA_WEIGHTS_NAME
    if ema_state_dict is not None:
        check_state_dict(model, ema_state_dict, source="ema_state_dict")
        save_weights(ema_path, ema_state_dict)
    elif ema_path.exists():  # a stale EMA file would be preferred on load
        ema_path.unlink()


def load_model_weights(model: torch.nn.Module, directory: str | os.PathLike[str], *, use_ema: bool) -> Path:
    """Load ``directory``'s EMA weights (when present and ``use_ema``) or plain weights into ``model``."""
    directory = Path(directory)
    weights = directory / EMA_WEIGHTS_NAME
    if not (use_ema and weights.is_file()):
        weights = directory / WEIGHTS_NAME
    state = load_weights(weights)
    check_state_dict(model, state, source=str(weights))
    model.load_state_dict(state, strict=True)
    return weights


__all__ = [
    "CONFIG_NAME",
    "EMA_WEIGHTS_NAME",
    "MODEL_INDEX_NAME",
    "SCHEDULER_CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "CheckpointMismatchError",
    "check_finite",
    "check_state_dict",
    "load_model_weights",
    "load_weights",
    "read_json",
    "save_model",
    "save_weights",
]
