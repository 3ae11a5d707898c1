"""Where and how a run executes: one rule for picking the device, shared by every command."""

from __future__ import annotations

import os

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` or ``"auto"`` picks this process's accelerator.

    Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1) that is the process's own GPU
    (accelerate's ``PartialState``), otherwise CUDA when available, else the CPU. An unknown name raises
    ``ValueError`` naming it.
    """
    if device is not None and device not in ("", "auto"):
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"unknown device {device!r} (e.g. cpu, cuda, cuda:1): {err}") from err
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        return PartialState().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["resolve_device"]
