"""Noise schedules, samplers and the sampling loop shared by every generator family.

The split follows diffusers: a family's model holds weights, a diffusers scheduler holds the noise math,
and this module holds the loop, which is one short function:

    x = sample_loop(denoise_fn, scheduler, x, steps, callback=..., generator=...)

``denoise_fn(x_t, t) -> model output`` (ε, v, x0 or the flow velocity, whatever the training scheduler's
:func:`prediction_type` says) is the
**extension point**: the PIDM-style pipeline passes a closure over its UNet, pose maps and appearance
tokens (:func:`posereid.models.guidance.guided_denoiser`); a PCDMs-style stage (prior / inpainting
canvas / refiner) or a CFLD-style latent UNet passes its own closure (and decodes latents afterwards) and reuses the same samplers,
guidance and per-sample noise unchanged.

Guidance lives in :mod:`posereid.models.guidance`; training-time noise (the training scheduler, the
timestep draw, :func:`noisy_sample` and :func:`diffusion_target`) is here too, so every family shares one
schedule format (``scheduler_config.json``) and every family's ``training_loss`` works with both kinds of
training scheduler:

* DDPM (``prediction_type`` ``"epsilon"`` / ``"v_prediction"`` / ``"sample"``): a diffusers
  ``DDPMScheduler``; the network sees the integer timestep ``t``.
* Flow matching / rectified flow (``prediction_type="flow"``; Lipman et al. 2023, Liu et al. 2023, as in
  SD3): a diffusers ``FlowMatchEulerDiscreteScheduler``. ``x_t = (1 − σ)·x0 + σ·ε``, the network sees
  ``σ·T`` (a float) and regresses the velocity ``ε − x0`` (``FlowMatchEulerDiscreteScheduler.step`` does
  ``x_next = x_t + (σ_next − σ)·output``, which is exact for that target).

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

SamplerName = Literal["dpmsolver++", "ddim", "unipc", "euler", "ddpm", "few-step"]
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None]
TimestepSampling = Literal["uniform", "cubic"]
PredictionType = Literal["epsilon", "v_prediction", "sample", "flow"]
#: the two kinds of training scheduler (DDPM for ε / v / x0, flow matching for ``"flow"``)
TrainingScheduler = DDPMScheduler | FlowMatchEulerDiscreteScheduler
#: the training scheduler classes a checkpoint's ``scheduler_config.json`` may name
TRAINING_SCHEDULER_CLASSES: dict[str, type[SchedulerMixin]] = {
    DDPMScheduler.__name__: DDPMScheduler,
    FlowMatchEulerDiscreteScheduler.__name__: FlowMatchEulerDiscreteScheduler,
}

#: every noise-schedule field a preset or a command may set (they go to the scheduler, not the model)
SCHEDULE_KEYS = ("prediction_type", "num_train_timesteps", "beta_schedule", "rescale_betas_zero_snr")


#: the error of asking a model without a few-step embedding for the few-step sampler
NOT_FEW_STEP = (
    "sampler 'few-step' needs a few-step checkpoint (a few_step/ folder, written by "
    "posereid train-generator --few-step-from TEACHER); use another sampler for this model"
)


class NonFiniteSampleError(FloatingPointError):
    """Sampling produced NaN/Inf (names the step and the batch items); such an image is never returned."""


def training_scheduler(
    prediction_type: PredictionType = "epsilon",
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    **overrides: Any,
) -> TrainingScheduler:
    """The training noise schedule: PIDM's DDPM (linear betas 1e-4..2e-2, T = 1000), or flow matching.

    It is saved beside the weights (``scheduler_config.json``); samplers are built from its config, so
    ``rescale_betas_zero_snr=True`` (zero terminal SNR, Lin et al. 2024: the last step is pure noise, as
    at sampling time) reaches every sampler too. Zero terminal SNR needs ``v_prediction`` (ε is undefined
    at SNR 0).

    ``prediction_type="flow"`` gives diffusers' ``FlowMatchEulerDiscreteScheduler(num_train_timesteps=T,
    shift=1.0)``. It has no betas: a beta field or ``rescale_betas_zero_snr`` is an error (the flow path
    already ends in pure noise at σ = 1); other overrides must be that scheduler's own fields.
    """
    if prediction_type == "flow":
        return _flow_training_scheduler(int(num_train_timesteps), beta_schedule, overrides)
    if overrides.get("rescale_betas_zero_snr") and prediction_type == "epsilon":
        raise ValueError(
            "rescale_betas_zero_snr needs prediction_type='v_prediction' (ε is undefined at SNR 0)"
        )
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(
            f"prediction_type must be 'epsilon', 'v_prediction', 'sample' or 'flow', got {prediction_type!r}"
        )
    kwargs = dict(beta_start=1e-4, beta_end=2e-2, clip_sample=False)
    kwargs.update(overrides)
    return DDPMScheduler(
        num_train_timesteps=int(num_train_timesteps),
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        **kwargs,
    )


def _flow_training_scheduler(
    num_train_timesteps: int, beta_schedule: str, overrides: dict[str, Any]
) -> FlowMatchEulerDiscreteScheduler:
    """``training_scheduler(prediction_type="flow")``: refuses the DDPM-only fields instead of ignoring them."""
    if overrides.get("rescale_betas_zero_snr"):
        raise ValueError(
            "rescale_betas_zero_snr does not apply to prediction_type='flow': the flow path "
            "x_t = (1 - σ)·x0 + σ·ε already reaches pure noise at σ = 1"
        )
    overrides = {k: v for k, v in overrides.items() if k != "rescale_betas_zero_snr"}
    betas = [k for k in ("beta_start", "beta_end", "trained_betas") if k in overrides]
    if beta_schedule != "linear" or betas:
        fields = [*(["beta_schedule"] if beta_schedule != "linear" else []), *betas]
        raise ValueError(f"prediction_type='flow' has no betas; drop {', '.join(fields)}")
    if overrides.get("use_dynamic_shifting"):
        raise ValueError(
            "use_dynamic_shifting is not supported for training (σ must not depend on the input)"
        )
    params = set(inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - params)
    if unknown:
        raise ValueError(
            f"prediction_type='flow': FlowMatchEulerDiscreteScheduler has no field(s) {', '.join(unknown)}"
        )
    kwargs: dict[str, Any] = {"shift": 1.0, **overrides}
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, **kwargs)


def is_flow(scheduler: SchedulerMixin) -> bool:
    """Whether ``scheduler`` is a flow-matching training scheduler (``prediction_type="flow"``)."""
    return isinstance(scheduler, FlowMatchEulerDiscreteScheduler)


def prediction_type(scheduler: SchedulerMixin) -> str:
    """What a network trained with ``scheduler`` outputs: ``"epsilon"``, ``"v_prediction"``, ``"sample"``
    or ``"flow"`` (diffusers' flow scheduler has no ``prediction_type`` field; it always takes a velocity)."""
    return "flow" if is_flow(scheduler) else str(scheduler.config.prediction_type)


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


def flow_sigmas(scheduler: FlowMatchEulerDiscreteScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """σ of training draws ``timesteps`` (integers in ``[0, T)`` from :func:`sample_timesteps`).

    Index ``i`` gives ``σ = shift((i + 1) / T)``, the scheduler's own training sigmas (``scheduler.sigmas``
    before any ``set_timesteps``: ``1/T … 1`` shifted by ``config.shift``), so a uniform draw is uniform
    over them and CFLD's cubic draw still favours high noise. σ > 0, so ``x_t`` is never exactly ``x0``.
    """
    t = int(scheduler.config.num_train_timesteps)
    shift = float(scheduler.config.shift)
    s = (timesteps.to(torch.float32) + 1.0) / t
    return shift * s / (1.0 + (shift - 1.0) * s)


def model_timesteps(scheduler: TrainingScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """The network's timestep input for training draws ``timesteps`` (from :func:`sample_timesteps`).

    DDPM: the draws themselves (integers). Flow: ``σ·T`` as floats, the values the flow samplers'
    ``scheduler.timesteps`` take, so training and sampling feed the network the same scale. Pass the
    result to :func:`noisy_sample` and :func:`diffusion_loss`.
    """
    if is_flow(scheduler):
        return flow_sigmas(scheduler, timesteps) * float(scheduler.config.num_train_timesteps)
    return timesteps


def _ddpm_index(timesteps: torch.Tensor) -> torch.Tensor:
    """Integer DDPM timesteps (a sampler's float timestep, e.g. Euler's, rounded to its training index)."""
    t = torch.as_tensor(timesteps)
    return t.round().long() if t.is_floating_point() else t


def _flow_sigma_of(
    scheduler: FlowMatchEulerDiscreteScheduler, timesteps: torch.Tensor, like: torch.Tensor
) -> torch.Tensor:
    """σ = timestep / T for model timesteps, shaped to broadcast over ``like`` ``(B, ...)``."""
    sigma = torch.as_tensor(timesteps, device=like.device).to(torch.float32)
    sigma = sigma / float(scheduler.config.num_train_timesteps)
    if sigma.ndim == 0:
        sigma = sigma.expand(like.shape[0])
    return sigma.view(-1, *([1] * (like.ndim - 1)))


def noisy_sample(
    scheduler: TrainingScheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """``x_t`` at model timesteps ``timesteps`` (:func:`model_timesteps`; a sampler's timesteps work too).

    DDPM: ``scheduler.add_noise`` (``√ᾱ·x0 + √(1 − ᾱ)·ε``). Flow: ``(1 − σ)·x0 + σ·ε`` with ``σ = t / T``
    (what ``FlowMatchEulerDiscreteScheduler.scale_noise`` computes, without its lookup of ``t`` in the
    scheduler's own table, which a training draw or another sampler's timestep is not always in).
    """
    if is_flow(scheduler):
        sigma = _flow_sigma_of(scheduler, timesteps, x0)
        return ((1.0 - sigma) * x0.float() + sigma * noise.float()).to(x0.dtype)
    return scheduler.add_noise(x0, noise, _ddpm_index(timesteps).to(x0.device))


def min_snr_weights(
    scheduler: TrainingScheduler, timesteps: torch.Tensor, gamma: float | None
) -> torch.Tensor | None:
    """Min-SNR-γ loss weights per sample (Hang et al. 2023): ``min(SNR, γ) / SNR`` for ε, ``/(SNR + 1)`` for v,
    1 for x0; ``None`` when ``gamma`` is ``None`` (plain MSE). SNR from diffusers' ``compute_snr``.

    Not defined here for flow matching (a ValueError): its velocity target would need its own weighting
    derivation, and SD3-style recipes weight through the σ draw instead.
    """
    if gamma is None:
        return None
    if is_flow(scheduler):
        raise ValueError(
            "min-SNR-γ weighting (snr_gamma) is not defined for prediction_type='flow'; use snr_gamma=None"
        )
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps.to(scheduler.alphas_cumprod.device)).to(timesteps.device).float()
    clipped = torch.clamp(snr, max=float(gamma))
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return clipped / snr.clamp(min=1e-8)
    if kind == "v_prediction":
        return clipped / (snr + 1.0)
    return torch.ones_like(snr)


def check_loss_weighting(scheduler: TrainingScheduler, snr_gamma: float | None, what: str = "model") -> None:
    """Refuse ``snr_gamma`` with a flow scheduler when a pipeline is built, not at its first training step."""
    if snr_gamma is not None and is_flow(scheduler):
        raise ValueError(
            f"{what}: snr_gamma={snr_gamma} (min-SNR-γ weighting) is not defined for prediction_type='flow'; "
            "use snr_gamma=None"
        )


def diffusion_loss(
    scheduler: TrainingScheduler,
    prediction: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """MSE between the network output and :func:`diffusion_target`, optionally min-SNR-γ weighted.

    ``timesteps``: the model timesteps the network saw (:func:`model_timesteps`).
    """
    target = diffusion_target(scheduler, x0, noise, timesteps).float()
    weights = min_snr_weights(scheduler, timesteps, snr_gamma)
    if weights is None:
        return torch.nn.functional.mse_loss(prediction.float(), target)
    per_sample = ((prediction.float() - target) ** 2).flatten(1).mean(1)
    return (per_sample * weights).mean()


def diffusion_target(
    scheduler: TrainingScheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the network regresses under ``scheduler``: ε, v, x0, or the flow velocity ``ε − x0``.

    The velocity's sign is the one ``FlowMatchEulerDiscreteScheduler.step`` (``x + (σ_next − σ)·v``) and
    the ``flow_prediction`` solvers (``x0 = x_t − σ·v``) expect: ``d x_t / dσ`` of ``(1 − σ)·x0 + σ·ε``.
    """
    kind = prediction_type(scheduler)
    if kind == "flow":
        return noise - x0
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, _ddpm_index(timesteps).to(x0.device))
    return x0


def clean_estimate(
    scheduler: TrainingScheduler, noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0_hat, signal)``: the clean sample the network's ``prediction`` implies at ``noisy`` = x_t, and per
    sample the share of signal in x_t (``(1 − σ)²`` for flow, ``ᾱ_t`` for DDPM), a weight under which very
    noisy timesteps count little.

    Flow: ``x0 = x_t − σ·v``; ε: ``x0 = (x_t − √(1 − ᾱ)·ε) / √ᾱ``; v: ``x0 = √ᾱ·x_t − √(1 − ᾱ)·v``
    (Salimans & Ho 2022); sample: the prediction itself.
    """
    x_t, out = noisy.float(), prediction.float()
    if is_flow(scheduler):
        sigma = _flow_sigma_of(scheduler, timesteps, x_t)
        return x_t - sigma * out, ((1.0 - sigma) ** 2).flatten()
    alpha = scheduler.alphas_cumprod.to(x_t.device)[_ddpm_index(timesteps).to(x_t.device)].float()
    a = alpha.view(-1, *([1] * (x_t.ndim - 1)))
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        x0 = (x_t - (1.0 - a).sqrt() * out) / a.sqrt().clamp(min=1e-4)
    elif kind == "v_prediction":
        x0 = a.sqrt() * x_t - (1.0 - a).sqrt() * out
    else:
        x0 = out
    return x0, alpha


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
    # a few-step checkpoint's own sampler (posereid.models.few_step): uniform flow Euler jumps, one
    # conditional call each; GeneratorPipeline.generate runs it, make_sampler refuses it for other models
    "few-step": (FlowMatchEulerDiscreteScheduler, {}),
}


#: flow-matching samplers (``prediction_type="flow"``): name → (scheduler class, its settings). They are
#: built from ``num_train_timesteps`` and the training ``shift`` alone (a flow training config has no
#: betas); DPM-Solver++ and UniPC use diffusers' public flow options (``use_flow_sigmas``,
#: ``prediction_type="flow_prediction"``, ``flow_shift``) and keep the pixel-space x0 clipping of
#: :data:`SAMPLERS`; the flow Euler scheduler has no x0 clipping. DDIM and DDPM have no flow form.
FLOW_SAMPLERS: dict[str, tuple[type[SchedulerMixin], dict]] = {
    "dpmsolver++": (
        DPMSolverMultistepScheduler,
        {
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "use_flow_sigmas": True,
            "prediction_type": "flow_prediction",
            "thresholding": True,
            "sample_max_value": 1.0,
        },
    ),
    "unipc": (
        UniPCMultistepScheduler,
        {
            "use_flow_sigmas": True,
            "prediction_type": "flow_prediction",
            "thresholding": True,
            "sample_max_value": 1.0,
        },
    ),
    "euler": (FlowMatchEulerDiscreteScheduler, {}),
    "few-step": (FlowMatchEulerDiscreteScheduler, {}),
}

_CLIP_FIELDS = ("clip_sample", "thresholding")


def make_sampler(name: str, train_scheduler: SchedulerMixin, *, clip_x0: bool = True) -> SchedulerMixin:
    """A fresh sampling scheduler for ``train_scheduler`` (same betas and prediction type, or the same flow).

    ``clip_x0=False`` turns off the x0 clipping to ``[-1, 1]`` (``clip_sample`` / ``thresholding``): it
    suits pixel space only, not latents or embeddings. A flow training scheduler takes only the
    :data:`FLOW_SAMPLERS` names; ``"ddim"`` / ``"ddpm"`` then raise a ValueError saying so.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    if name == "few-step":
        raise ValueError(NOT_FEW_STEP)
    if is_flow(train_scheduler):
        if name not in FLOW_SAMPLERS:
            raise ValueError(
                f"sampler {name!r} does not support prediction_type='flow' (flow matching); "
                f"use one of {', '.join(FLOW_SAMPLERS)}"
            )
        cls, overrides = FLOW_SAMPLERS[name]
        config = train_scheduler.config
        base: Mapping[str, Any] = config
        # a solver with flow sigmas: only T and the shift carry over (the training config has no betas)
        if cls is not FlowMatchEulerDiscreteScheduler:
            base = {"num_train_timesteps": int(config.num_train_timesteps), "flow_shift": float(config.shift)}
    else:
        cls, overrides = SAMPLERS[name]
        base = train_scheduler.config
    kwargs = dict(overrides)
    if not clip_x0:
        params = inspect.signature(cls.__init__).parameters
        kwargs.update({k: False for k in _CLIP_FIELDS if k in params})
    return cls.from_config(base, **kwargs)


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
    sigmas: Sequence[float] | None = None,
) -> torch.Tensor:
    """Integrate from unit-variance noise ``x`` to a clean sample with ``scheduler`` in ``steps`` steps.

    ``sigmas``: the grid of a flow scheduler that takes one (``steps`` values, descending; the few-step
    sampler's uniform jumps), instead of the scheduler's own spacing.

    ``x`` is scaled by the scheduler's ``init_noise_sigma`` (Euler needs it), every model input goes
    through ``scale_model_input``, and model outputs are cast to ``x``'s dtype (fp32) before the scheduler
    step. The flow Euler scheduler has neither (its state starts as the noise itself and is the model
    input); its timesteps, ``σ·T``, are floats and reach ``denoise_fn`` as they are. ``callback(i, t, x)``
    runs after each step (``t`` as an int). A NaN/Inf in the state stops the loop with
    :class:`NonFiniteSampleError` naming the step and batch items (never a grey image downstream).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if sigmas is not None:
        if len(sigmas) != steps:
            raise ValueError(f"{len(sigmas)} sigmas for {steps} steps")
        scheduler.set_timesteps(sigmas=[float(s) for s in sigmas], device=x.device)
    else:
        scheduler.set_timesteps(steps, device=x.device)
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)
    scale_input = getattr(scheduler, "scale_model_input", None)
    step_kwargs = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        step_kwargs["generator"] = generator
    for i, t in enumerate(tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False)):
        model_in = scale_input(x, t) if scale_input is not None else x
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
    "FLOW_SAMPLERS",
    "SAMPLERS",
    "SCHEDULE_KEYS",
    "TRAINING_SCHEDULER_CLASSES",
    "NOT_FEW_STEP",
    "NonFiniteSampleError",
    "PredictionType",
    "SamplerName",
    "TimestepSampling",
    "TrainingScheduler",
    "check_loss_weighting",
    "clean_estimate",
    "diffusion_loss",
    "diffusion_target",
    "flow_sigmas",
    "initial_noise",
    "is_flow",
    "make_generators",
    "make_sampler",
    "min_snr_weights",
    "model_timesteps",
    "noisy_sample",
    "prediction_type",
    "sample_loop",
    "sample_timesteps",
    "training_scheduler",
]
