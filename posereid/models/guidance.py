"""Disentangled classifier-free guidance over two conditions, and the condition dropout that trains it.

Every family conditions on a target pose ``p`` and a source appearance ``s`` (PIDM: pose maps and
appearance tokens; CFLD: pose maps and coarse prompt + biases; PCDMs stages: pose and source tokens).
Training drops each independently (:func:`condition_dropout`), so one network learns ε(p,s), ε(∅,s),
ε(p,∅) and ε(∅,∅); sampling combines them (``∅`` = dropped). The default ``"anchored"`` form is

    ε = ε(p,s) + (w_p − 1)·[ε(p,s) − ε(∅,s)] + (w_s − 1)·[ε(p,s) − ε(p,∅)]

so ``(w_p, w_s) = (1, 1)`` is *exactly* the conditional model (and then only ``ε(p,s)`` is evaluated),
and each weight scales one condition's contribution alone. PIDM's published form (its eq. for ε),

    ε = ε(∅,∅) + w_p·[ε(p,∅) − ε(∅,∅)] + w_s·[ε(∅,s) − ε(∅,∅)],

is available as ``formula="pidm"``; it assumes the two conditions act additively and with (1, 1) gives
ε(p,∅) + ε(∅,s) − ε(∅,∅), not ε(p,s). Both are affine combinations (coefficients sum to 1), so they are
equally valid for v-prediction. All branches go through ONE batched model call per step.

A condition is a tensor or a tuple of tensors (batch first), so a family with a composite condition
(CFLD's prompt + per-level biases) uses the same wrapper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

import torch

GuidanceFormula = Literal["anchored", "pidm"]
Condition: TypeAlias = torch.Tensor | tuple[torch.Tensor, ...]
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_guidance(guidance: Sequence[float]) -> tuple[float, float]:
    """``(w_pose, w_appearance)`` as floats; non-finite or malformed weights raise ``ValueError``."""
    try:
        w_p, w_s = (float(w) for w in guidance)
    except (TypeError, ValueError) as err:
        raise ValueError(f"guidance must be two numbers (w_pose, w_appearance), got {guidance!r}") from err
    if not (math.isfinite(w_p) and math.isfinite(w_s)):
        raise ValueError(f"guidance weights must be finite, got ({w_p}, {w_s})")
    return w_p, w_s


def _cat(conds: Sequence[Condition]) -> Condition:
    if isinstance(conds[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*conds))
    return torch.cat(list(conds))  # type: ignore[arg-type]


def _where(mask: torch.Tensor, null: Condition, cond: Condition) -> Condition:
    if isinstance(cond, tuple):
        return tuple(_where(mask, n, c) for n, c in zip(null, cond))  # type: ignore[misc]
    m = mask.to(cond.device, torch.bool).view(-1, *([1] * (cond.ndim - 1)))
    return torch.where(m, null.to(cond.dtype), cond)  # type: ignore[union-attr]


def condition_dropout(
    pose: Condition,
    appearance: Condition,
    null_pose: Condition,
    null_appearance: Condition,
    drop_pose: torch.Tensor,
    drop_appearance: torch.Tensor,
) -> tuple[Condition, Condition]:
    """Replace the conditions of the samples flagged in the ``(B,)`` bool masks by their null versions."""
    return _where(drop_pose, null_pose, pose), _where(drop_appearance, null_appearance, appearance)


def guided_denoiser(
    model_fn: Callable[[torch.Tensor, torch.Tensor, Condition, Condition], torch.Tensor],
    pose: Condition,
    appearance: Condition,
    null_pose: Condition,
    null_appearance: Condition,
    guidance: Sequence[float] = (2.0, 2.0),
    *,
    formula: GuidanceFormula = "anchored",
) -> DenoiseFn:
    """Wrap ``model_fn(x, t, pose, appearance)`` into ``denoise_fn(x, t)`` with disentangled guidance.

    The conditions are precomputed once (and their null versions); every call stacks the needed branches
    along the batch and runs ``model_fn`` once. See the module docstring for the formulas.
    """
    w_p, w_s = check_guidance(guidance)
    if formula == "anchored":
        branches = [(pose, appearance)]  # ε(p,s)
        if w_p != 1.0:
            branches.append((null_pose, appearance))  # ε(∅,s)
        if w_s != 1.0:
            branches.append((pose, null_appearance))  # ε(p,∅)
    elif formula == "pidm":
        branches = [(null_pose, null_appearance), (pose, null_appearance), (null_pose, appearance)]
    else:
        raise ValueError(f"unknown guidance formula {formula!r}; choose 'anchored' or 'pidm'")
    k = len(branches)
    all_pose = _cat([b[0] for b in branches]) if k > 1 else pose
    all_app = _cat([b[1] for b in branches]) if k > 1 else appearance

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if k == 1:
            return model_fn(x, t, all_pose, all_app)
        out = model_fn(torch.cat([x] * k), t, all_pose, all_app).chunk(k)
        if formula == "pidm":
            uncond, p_only, s_only = out
            return uncond + w_p * (p_only - uncond) + w_s * (s_only - uncond)
        cond, rest = out[0], list(out[1:])
        guided = cond
        if w_p != 1.0:
            guided = guided + (w_p - 1.0) * (cond - rest.pop(0))
        if w_s != 1.0:
            guided = guided + (w_s - 1.0) * (cond - rest.pop(0))
        return guided

    denoise.num_branches = k  # type: ignore[attr-defined]
    return denoise


__all__ = ["Condition", "GuidanceFormula", "check_guidance", "condition_dropout", "guided_denoiser"]
