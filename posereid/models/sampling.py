"""Samplers and disentangled classifier-free guidance for pose-transfer diffusion.

The split follows diffusers: the model holds weights (:mod:`posereid.models.generator`), a diffusers
scheduler holds the noise math, and this module holds the loop, which is one short function:

    x = sample_loop(denoise_fn, scheduler, x, steps, callback=..., generator=...)

``denoise_fn(x_t, t) -> model output`` (ε or v, whatever the scheduler's ``prediction_type`` says) is the
**extension point**: the PIDM-style generator passes a closure over its UNet, pose maps and appearance
tokens (:func:`guided_denoiser`); a PCDMs-style stage (prior / inpainting canvas / refiner) or a CFLD-style
latent UNet passes its own closure (and decodes latents afterwards) and reuses the same samplers,
guidance and per-sample noise unchanged.

Guidance (two conditions: pose ``p`` and source appearance ``s``; ``∅`` = dropped). The default
``"anchored"`` form is

    ε = ε(p,s) + (w_p − 1)·[ε(p,s) − ε(∅,s)] + (w_s − 1)·[ε(p,s) − ε(p,∅)]

so ``(w_p, w_s) = (1, 1)`` is *exactly* the conditional model (and then only ``ε(p,s)`` is evaluated),
and each weight scales one condition's contribution alone. PIDM's published form (its eq. for ε),

    ε = ε(∅,∅) + w_p·[ε(p,∅) − ε(∅,∅)] + w_s·[ε(∅,s) − ε(∅,∅)],

is available as ``formula="pidm"``; it assumes the two conditions act additively and with (1, 1) gives
ε(p,∅) + ε(∅,s) − ε(∅,∅), not ε(p,s). Both are affine combinations (coefficients sum to 1), so they are
equally valid for v-prediction. All branches go through ONE batched model call per step.

Reproducibility: pass one ``torch.Generator`` per sample (:func:`make_generators`). The initial noise and
the stochastic samplers' per-step noise (``ddpm``) are drawn per sample from its own generator
(diffusers' ``randn_tensor`` with a generator list), so a seed gives the same image whatever else is in
the batch. ``ddim`` (η = 0), ``dpmsolver++``, ``unipc`` and ``euler`` (no churn) draw no noise after the
start. "Same" means up to float rounding: batched kernels (oneDNN/cuDNN convolutions, GEMV vs GEMM) are
not bitwise batch-invariant, and the x0 estimate at t = T−1 multiplies model-output differences by
1/√ᾱ_T ≈ 156. Measured on CPU fp32: ~1e-4 after a few steps with random weights, ~1e-5 after 50 steps
with a briefly trained model (random weights make long trajectories chaotic, trained ones do not).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

SamplerName = Literal["dpmsolver++", "ddim", "unipc", "euler", "ddpm"]
GuidanceFormula = Literal["anchored", "pidm"]
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None]

#: sampler name → (scheduler class, overrides of the training scheduler's config)
SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict]] = {
    # "trailing" spacing starts every schedule at t = T-1 (Lin et al. 2024), which matters at few steps.
    "dpmsolver++": (
        DPMSolverMultistepScheduler,
        {
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "timestep_spacing": "trailing",
            "variance_type": None,
            # Pixel space: clip each predicted x0 to the image range [-1, 1] (dynamic thresholding with
            # sample_max_value=1 reduces to that). Without it an under-trained model's multistep
            # extrapolation saturates into noise, where DDIM (clip_sample) still gives images.
            "thresholding": True,
            "sample_max_value": 1.0,
        },
    ),
    "ddim": (DDIMScheduler, {"clip_sample": True, "set_alpha_to_one": True, "timestep_spacing": "trailing"}),
    "unipc": (
        UniPCMultistepScheduler,
        {"timestep_spacing": "trailing", "thresholding": True, "sample_max_value": 1.0},
    ),
    "euler": (EulerDiscreteScheduler, {"timestep_spacing": "trailing"}),
    "ddpm": (DDPMScheduler, {"clip_sample": True, "timestep_spacing": "trailing"}),
}


def make_sampler(name: str, train_scheduler: SchedulerMixin) -> SchedulerMixin:
    """A fresh sampling scheduler built from the training scheduler's config (same betas, prediction type)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    cls, overrides = SAMPLERS[name]
    return cls.from_config(train_scheduler.config, **overrides)


def make_generators(
    seeds: Sequence[int] | None,
    generator: list[torch.Generator] | torch.Generator | None,
    batch: int,
) -> list[torch.Generator] | torch.Generator | None:
    """Resolve ``seeds`` / ``generator`` into what :func:`randn_tensor` takes (one generator per sample)."""
    if seeds is not None and generator is not None:
        raise ValueError("pass either seeds or generator, not both")
    if seeds is not None:
        seeds = list(seeds)
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")
        return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
        return list(generator)
    return generator


def guided_denoiser(
    model_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    pose: torch.Tensor,
    tokens: torch.Tensor,
    null_pose: torch.Tensor,
    null_tokens: torch.Tensor,
    guidance: tuple[float, float] = (2.0, 2.0),
    *,
    formula: GuidanceFormula = "anchored",
) -> DenoiseFn:
    """Wrap ``model_fn(x, t, pose, tokens)`` into ``denoise_fn(x, t)`` with disentangled guidance.

    The conditions are precomputed once (pose maps, appearance tokens and their null versions); every call
    stacks the needed branches along the batch and runs ``model_fn`` once. See the module docstring for
    the formulas.
    """
    w_p, w_s = float(guidance[0]), float(guidance[1])
    if formula == "anchored":
        branches = [(pose, tokens)]  # ε(p,s)
        if w_p != 1.0:
            branches.append((null_pose, tokens))  # ε(∅,s)
        if w_s != 1.0:
            branches.append((pose, null_tokens))  # ε(p,∅)
    elif formula == "pidm":
        branches = [(null_pose, null_tokens), (pose, null_tokens), (null_pose, tokens)]
    else:
        raise ValueError(f"unknown guidance formula {formula!r}; choose 'anchored' or 'pidm'")
    k = len(branches)
    all_pose = torch.cat([b[0] for b in branches]) if k > 1 else pose
    all_tokens = torch.cat([b[1] for b in branches]) if k > 1 else tokens

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if k == 1:
            return model_fn(x, t, all_pose, all_tokens)
        out = model_fn(torch.cat([x] * k), t, all_pose, all_tokens).chunk(k)
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


def initial_noise(
    shape: Sequence[int],
    generator: list[torch.Generator] | torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal ``shape``; with a generator list each sample comes from its own generator."""
    return randn_tensor(tuple(shape), generator=generator, device=torch.device(device), dtype=dtype)


def sample_loop(
    denoise_fn: DenoiseFn,
    scheduler: SchedulerMixin,
    x: torch.Tensor,
    steps: int,
    *,
    generator: list[torch.Generator] | torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Integrate from unit-variance noise ``x`` to a clean sample with ``scheduler`` in ``steps`` steps.

    ``x`` is scaled by the scheduler's ``init_noise_sigma`` (Euler needs it), every model input goes
    through ``scale_model_input``, and model outputs are cast to ``x``'s dtype (fp32) before the scheduler
    step. ``callback(i, t, x)`` runs after each step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    scheduler.set_timesteps(steps, device=x.device)
    x = x * scheduler.init_noise_sigma
    step_kwargs = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = generator
    for i, t in enumerate(tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False)):
        model_in = scheduler.scale_model_input(x, t)
        out = denoise_fn(model_in, t).to(x.dtype)
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
        if callback is not None:
            callback(i, int(t), x)
    return x


__all__ = [
    "SAMPLERS",
    "GuidanceFormula",
    "SamplerName",
    "guided_denoiser",
    "initial_noise",
    "make_generators",
    "make_sampler",
    "sample_loop",
]
