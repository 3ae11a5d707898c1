"""Noise schedules, samplers and the sampling loop shared by every generator family.

The split follows diffusers: a family's model holds weights, a diffusers scheduler holds the noise math,
and this module holds the loop, which is one short function:

    x = sample_loop(denoise_fn, scheduler, x, steps, callback=..., generator=...)

``denoise_fn(x_t, t) -> model output`` (ε or v, whatever the scheduler's ``prediction_type`` says) is the
**extension point**: the PIDM-style pipeline passes a closure over its UNet, pose maps and appearance
tokens (:func:`posereid.models.guidance.guided_denoiser`); a PCDMs-style stage (prior / inpainting
canvas / refiner) or a CFLD-style latent UNet passes its own closure (and decodes latents afterwards) and reuses the same samplers,
guidance and per-sample noise unchanged.

Guidance lives in :mod:`posereid.models.guidance`; training-time noise (the training scheduler and the
timestep draw) is here too, so every family shares one schedule format (``scheduler_config.json``).

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
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None]
TimestepSampling = Literal["uniform", "cubic"]

#: the noise-schedule fields a pre-scheduler checkpoint kept in its model config.json
LEGACY_SCHEDULE_KEYS = ("prediction_type", "num_train_timesteps", "beta_schedule")
#: every noise-schedule field a preset or a command may set (they go to the scheduler, not the model)
SCHEDULE_KEYS = (*LEGACY_SCHEDULE_KEYS, "rescale_betas_zero_snr")


class NonFiniteSampleError(FloatingPointError):
    """Sampling produced NaN/Inf (names the step and the batch items); such an image is never returned."""


def training_scheduler(
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon",
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    **overrides,
) -> DDPMScheduler:
    """The training noise schedule (PIDM's: linear betas 1e-4..2e-2, T = 1000), a diffusers ``DDPMScheduler``.

    It is saved beside the weights (``scheduler_config.json``); samplers are built from its config, so
    ``rescale_betas_zero_snr=True`` (zero terminal SNR, Lin et al. 2024: the last step is pure noise, as
    at sampling time) reaches every sampler too. Zero terminal SNR needs ``v_prediction`` (ε is undefined
    at SNR 0).
    """
    if overrides.get("rescale_betas_zero_snr") and prediction_type == "epsilon":
        raise ValueError(
            "rescale_betas_zero_snr needs prediction_type='v_prediction' (ε is undefined at SNR 0)"
        )
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(
            f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}"
        )
    kwargs = dict(beta_start=1e-4, beta_end=2e-2, clip_sample=False)
    kwargs.update(overrides)
    return DDPMScheduler(
        num_train_timesteps=int(num_train_timesteps),
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        **kwargs,
    )


def sample_timesteps(
    batch: int,
    num_train_timesteps: int,
    mode: TimestepSampling = "uniform",
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Training timesteps ``(batch,)``: uniform, or CFLD's cubic ``t = (1 − u³)·T`` (more weight on high noise)."""
    if mode not in ("uniform", "cubic"):
        raise ValueError(f"timestep_sampling must be 'uniform' or 'cubic', got {mode!r}")
    dev = generator.device if generator is not None else torch.device(device)
    u = torch.rand(batch, generator=generator, device=dev).to(device)
    if mode == "cubic":
        u = 1.0 - u**3
    return (u * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)


def min_snr_weights(
    scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float | None
) -> torch.Tensor | None:
    """Min-SNR-γ loss weights per sample (Hang et al. 2023): ``min(SNR, γ) / SNR`` for ε, ``/(SNR + 1)`` for v,
    1 for x0; ``None`` when ``gamma`` is ``None`` (plain MSE). SNR from diffusers' ``compute_snr``."""
    if gamma is None:
        return None
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps.to(scheduler.alphas_cumprod.device)).to(timesteps.device).float()
    clipped = torch.clamp(snr, max=float(gamma))
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return clipped / snr.clamp(min=1e-8)
    if kind == "v_prediction":
        return clipped / (snr + 1.0)
    return torch.ones_like(snr)


def diffusion_loss(
    scheduler: DDPMScheduler,
    prediction: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """MSE between the network output and :func:`diffusion_target`, optionally min-SNR-γ weighted."""
    target = diffusion_target(scheduler, x0, noise, timesteps).float()
    weights = min_snr_weights(scheduler, timesteps, snr_gamma)
    if weights is None:
        return torch.nn.functional.mse_loss(prediction.float(), target)
    per_sample = ((prediction.float() - target) ** 2).flatten(1).mean(1)
    return (per_sample * weights).mean()


def diffusion_target(
    scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the network regresses under ``scheduler``'s ``prediction_type``: ε, v or x0."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    return x0


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
    step. ``callback(i, t, x)`` runs after each step. A NaN/Inf in the state stops the loop with
    :class:`NonFiniteSampleError` naming the step and batch items (never a grey image downstream).
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
        finite = torch.isfinite(x.flatten(1)).all(dim=1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()
            raise NonFiniteSampleError(
                f"sampling produced NaN/Inf at step {i + 1} of {steps} (t={int(t)}) for batch items {bad}: "
                "check the weights and the guidance weights"
            )
        if callback is not None:
            callback(i, int(t), x)
    return x


__all__ = [
    "LEGACY_SCHEDULE_KEYS",
    "SAMPLERS",
    "NonFiniteSampleError",
    "TimestepSampling",
    "SCHEDULE_KEYS",
    "diffusion_loss",
    "diffusion_target",
    "min_snr_weights",
    "sample_timesteps",
    "training_scheduler",
    "SamplerName",
    "initial_noise",
    "make_generators",
    "make_sampler",
    "sample_loop",
]
