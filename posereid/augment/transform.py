"""``PoseTransferAugment``: a torchvision v2 transform that re-renders people in new poses.

It replaces (with probability ``p`` per item) the person in an image by the generator's rendering of the
same person in a target pose drawn from a :class:`~posereid.augment.pose_bank.PoseBank`. It composes
with the other v2 transforms (``v2.Compose([PoseTransferAugment(...), v2.RandomHorizontalFlip(), ...])``)
and follows their rules: every random draw happens once per call in :meth:`make_params`, the work in
:meth:`transform`, and ``forward`` is torchvision's.

Inputs: a PIL image, a ``(3, H, W)`` tensor / ``tv_tensors.Image``, or a ``(B, 3, H, W)`` batch. The batch
is the fast path: all selected items go through ONE ``generator.generate`` call on the generator's device.
Images are resized to ``generator.image_size`` and back; dtype (uint8 / float) and type (PIL, tensor,
tv_tensor) are preserved. Labels and other entries pass through. ``tv_tensors.KeyPoints`` /
:class:`~posereid.models.pose.PoseKeypoints` entries are replaced by the target pose in their own frame,
and a ``PoseKeypoints`` entry is also given to the generator as the source pose.

What is accepted: image tensors ``uint8`` (0-255) or floating point in ``[0, 1]`` (values up to
:data:`RANGE_TOLERANCE` outside, e.g. from resampling, are clamped), PIL images of any mode (converted to
RGB). Anything else is refused whatever ``p`` is, before any draw: other dtypes (int64, bool, …) with a
``TypeError``; floats outside ``[0, 1]`` (``[0, 255]``, ``[-1, 1]``), NaN, empty or non-RGB shapes with a
``ValueError`` naming what was seen. A NumPy array is not taken for an image (``TypeError``; convert it with
``torch.from_numpy(array).permute(2, 0, 1)``), and a call with no image at all is refused.

Reproducibility: with ``seed=<int>`` the draws of the k-th call come from a generator seeded by
``(seed, DataLoader worker id, k)``; with ``seed=<torch.Generator>`` they come from that generator; with
``seed=None`` from torch's global RNG (so ``torch.manual_seed`` and the DataLoader's per-worker seeding
apply, like every torchvision transform). The per-item generation seed is one of the draws, and the
generator gives the same image for a seed whatever else is in the batch.

DataLoader caveat: a transform inside a dataset runs in the DataLoader's worker processes, one item at a
time. With the generator on a GPU that is slow (batch of one) and fragile (CUDA in forked workers fails;
use ``multiprocessing_context="spawn"`` and each worker holds its own copy of the model). For training,
call the transform on the collated ``(B, 3, H, W)`` batch in the training loop instead (e.g. the
torchreid batch hook of :mod:`posereid.reid_integration`). The per-item path is for CPU use and debugging.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import PIL.Image
import torch
from torch.utils.data import get_worker_info
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform
from torchvision.transforms.v2 import functional as F

from posereid.augment.pose_bank import SAMPLINGS, PoseBank
from posereid.models.images import pil_to_tensor01, tensor01_to_pil
from posereid.models.pose import NUM_KEYPOINTS, PoseKeypoints, as_keypoints, resize_keypoints

if TYPE_CHECKING:
    from posereid.models.contract import PoseTransferSampler

logger = logging.getLogger(__name__)

_SEED_HIGH = 2**31 - 1
#: How far outside ``[0, 1]`` a float image may go (resampling overshoot) before it is refused.
RANGE_TOLERANCE = 0.01


def _is_real(value: Any) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _probability(value: Any) -> float:
    if not _is_real(value):
        raise TypeError(f"PoseTransferAugment: p must be a number in [0, 1], got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:  # NaN fails too
        raise ValueError(f"PoseTransferAugment: p must be in [0, 1], got {value}")
    return float(value)


def _whole(name: str, value: Any, low: int) -> int:
    """An integer ``>= low`` (Python or NumPy int; no bool, no float)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"PoseTransferAugment: {name} must be an integer >= {low}, got {value!r}")
    if int(value) < low:
        raise ValueError(f"PoseTransferAugment: {name} must be an integer >= {low}, got {value}")
    return int(value)


def as_guidance(guidance: Any) -> tuple[float, float]:
    """``(w_pose, w_appearance)`` from a number ``w`` (both weights ``w``) or a pair of numbers; finite.

    ``TypeError`` for anything that is not a number or a sequence of numbers, ``ValueError`` for a
    sequence of another length or a non-finite weight.
    """
    what = "a number w (both weights) or a pair (w_pose, w_appearance) of finite numbers"
    if _is_real(guidance):
        pair: tuple[Any, ...] = (guidance, guidance)
    elif isinstance(guidance, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(
        guidance, (str, bytes)
    ):
        pair = tuple(guidance.tolist() if isinstance(guidance, (np.ndarray, torch.Tensor)) else guidance)
        if len(pair) != 2:
            raise ValueError(
                f"PoseTransferAugment: guidance must be {what}; got {len(pair)} values {guidance!r}"
            )
        if not all(_is_real(w) for w in pair):
            raise TypeError(f"PoseTransferAugment: guidance must be {what}; got {guidance!r}")
    else:
        raise TypeError(f"PoseTransferAugment: guidance must be {what}; got {type(guidance).__name__}")
    w_p, w_s = float(pair[0]), float(pair[1])
    if not (math.isfinite(w_p) and math.isfinite(w_s)):
        raise ValueError(f"PoseTransferAugment: guidance weights must be finite, got ({w_p}, {w_s})")
    return w_p, w_s


def _check_image_tensor(images: torch.Tensor, where: str = "PoseTransferAugment") -> None:
    """Refuse an image tensor the transform cannot use (see the module docstring), naming what it saw."""
    if images.ndim not in (3, 4):
        raise ValueError(
            f"{where}: image tensors must be (3, H, W) or (B, 3, H, W), got {tuple(images.shape)}"
        )
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise TypeError(
            f"{where}: image tensors must be uint8 (0-255) or floating point in [0, 1], got {images.dtype}; "
            "convert them first (e.g. v2.ToDtype(torch.float32, scale=True) on uint8 data)"
        )
    if images.shape[-3] != 3:
        raise ValueError(f"{where}: expected 3-channel RGB images, got shape {tuple(images.shape)}")
    if images.shape[-2] == 0 or images.shape[-1] == 0:
        raise ValueError(
            f"{where}: empty image of shape {tuple(images.shape)} (height and width must be >= 1)"
        )
    if images.dtype.is_floating_point and images.numel():
        lo, hi = (float(v) for v in torch.aminmax(images.detach().float()))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{where}: the image holds NaN or infinite values")
        if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
            raise ValueError(
                f"{where}: float images must lie in [0, 1], got values in [{lo:g}, {hi:g}]; divide [0, 255] data "
                "by 255, map [-1, 1] data with (x + 1) / 2, or pass uint8"
            )


def _is_image_tensor(inpt: Any) -> bool:
    """A ``tv_tensors.Image`` or a plain tensor (a tensor that is no other tv_tensor, as torchvision treats
    it: the image of the sample when no explicit image is there)."""
    if isinstance(inpt, tv_tensors.Image):
        return True
    return isinstance(inpt, torch.Tensor) and not isinstance(inpt, tv_tensors.TVTensor)


def _image_batch_size(inpt: Any) -> int | None:
    """Items in an image input (``None`` for a non-image)."""
    if isinstance(inpt, PIL.Image.Image):
        if inpt.width == 0 or inpt.height == 0:
            raise ValueError(f"PoseTransferAugment: empty PIL image of size {inpt.size}")
        return 1
    if _is_image_tensor(inpt):
        _check_image_tensor(inpt.as_subclass(torch.Tensor))
        return 1 if inpt.ndim == 3 else int(inpt.shape[0])
    return None


class PoseTransferAugment(Transform):
    """Replace people by the generator's rendering of them in a pose drawn from ``pose_bank``.

    Args:
        generator: a ``PoseTransferGenerator`` (anything with ``image_size``, ``device`` and
            ``generate(source, target_kps, source_kps, *, steps, sampler, guidance, seeds)``).
        pose_bank: the target poses.
        p: probability that an item is replaced (``0`` → identity, ``1`` → every item).
        steps, guidance, sampler: passed to ``generator.generate``; ``guidance=(w_pose, w_appearance)``, or
            one number ``w`` for ``(w, w)`` (finite; see :func:`as_guidance`). ``None`` (the default): the
            checkpoint's, resolved once here (:func:`~posereid.augment.sampling_settings.resolve_sampling`):
            a few-step checkpoint samples with its own sampler (``"few-step"``, its default step count,
            guidance ``(1, 1)``: one network call per step), any other with 20 DPM-Solver++ steps at
            guidance ``(2, 2)``. :attr:`steps`, :attr:`sampler`, :attr:`guidance` and the repr hold the
            resolved values; a few-step setting the checkpoint cannot sample is refused here.
        sampling: pose bank strategy: ``uniform``, ``cluster`` or ``view``.
        seed: ``int`` (reproducible per call counter), ``torch.Generator`` or ``None`` (global RNG).
        source_keypoints: ``"sample"`` gives the generator the sample's ``PoseKeypoints`` entry as the
            source pose when there is one; ``"none"`` never does (the model then conditions on appearance
            only).
        refiner: a refiner (e.g. a PCDMs pipeline, :func:`posereid.models.refine.load_refiner`) run on the
            generator's output with ``refiner_steps`` steps (:class:`~posereid.models.refine.RefinedGenerator`)
            of ``sampler`` (DPM-Solver++ when that is the few-step one).

    Arguments it cannot use raise ``TypeError`` (wrong type) or ``ValueError`` (bad value) naming the
    argument and what it accepts.

    After each call, :attr:`last_params` holds the draws (``apply`` mask, ``pose_index``, ``seeds``) so a
    caller can log which pose and seed produced an image.
    """

    def __init__(
        self,
        generator: PoseTransferSampler,
        pose_bank: PoseBank,
        p: float = 0.5,
        steps: int | None = None,
        guidance: float | tuple[float, float] | None = None,
        sampler: str | None = None,
        sampling: Literal["uniform", "cluster", "view"] = "uniform",
        seed: int | torch.Generator | None = None,
        source_keypoints: Literal["sample", "none"] = "sample",
        refiner: Any = None,
        refiner_steps: int = 20,
    ) -> None:
        super().__init__()
        # lazily: diffusers is imported by then anyway
        from posereid.augment.sampling_settings import refiner_sampler, resolve_sampling
        from posereid.models.sampling import SAMPLERS

        for attr in ("generate", "image_size", "device"):
            if not hasattr(generator, attr):
                raise TypeError(
                    f"PoseTransferAugment: generator must be a PoseTransferGenerator (with generate, image_size "
                    f"and device), got {type(generator).__name__} without {attr!r}"
                )
        if not isinstance(pose_bank, PoseBank):
            raise TypeError(
                f"PoseTransferAugment: pose_bank must be a PoseBank, got {type(pose_bank).__name__}"
            )
        p = _probability(p)
        steps = None if steps is None else _whole("steps", steps, 1)
        refiner_steps = _whole("refiner_steps", refiner_steps, 1)
        guidance = None if guidance is None else as_guidance(guidance)
        if sampler is not None and (not isinstance(sampler, str) or sampler not in SAMPLERS):
            raise ValueError(
                f"PoseTransferAugment: sampler must be one of {', '.join(SAMPLERS)} or None (the checkpoint's), "
                f"got {sampler!r}"
            )
        if not isinstance(sampling, str) or sampling not in SAMPLINGS:
            raise ValueError(f"PoseTransferAugment: sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if not isinstance(source_keypoints, str) or source_keypoints not in ("sample", "none"):
            raise ValueError(
                f"PoseTransferAugment: source_keypoints must be 'sample' or 'none', got {source_keypoints!r}"
            )
        if len(pose_bank) == 0:
            raise ValueError("PoseTransferAugment: the pose bank is empty")
        if seed is not None and not isinstance(seed, torch.Generator):
            seed = _whole("seed", seed, 0)  # an int, a torch.Generator or None
        try:  # None → the checkpoint's; a few-step setting it cannot sample stops here, not in a training loop
            setting = resolve_sampling(generator, steps=steps, sampler=sampler, guidance=guidance)
        except ValueError as exc:
            raise ValueError(f"PoseTransferAugment: {exc}") from None
        if refiner is not None:
            from posereid.models.refine import RefinedGenerator

            generator = RefinedGenerator(
                generator, refiner, steps=refiner_steps, sampler=refiner_sampler(setting["sampler"])
            )
        self.generator = generator
        self.pose_bank = pose_bank
        self.p = p
        #: the sampling setting every call uses (resolved: the checkpoint's where none was given)
        self.steps: int = setting["steps"]
        self.guidance: tuple[float, float] = setting["guidance"]
        self.sampler: str = setting["sampler"]
        self.sampling = sampling
        self.source_keypoints = source_keypoints
        self._seed = seed
        self.calls = 0
        self.last_params: dict[str, Any] | None = None

    # ------------------------------------------------------------------ randomness
    def reset(self, calls: int = 0) -> None:
        """Restart the per-call counter (with an int seed, the next call repeats call ``calls``'s draws)."""
        self.calls = int(calls)

    def _rng(self) -> np.random.Generator:
        if isinstance(self._seed, int):
            info = get_worker_info()
            worker = 0 if info is None else info.id + 1
            return np.random.default_rng([self._seed, worker, self.calls])
        # one draw from torch (global RNG or the user's Generator) seeds this call's numpy stream
        device = (
            self._seed.device if isinstance(self._seed, torch.Generator) else None
        )  # a CUDA generator too
        entropy = int(torch.randint(0, 2**62, (1,), generator=self._seed, device=device).item())
        return np.random.default_rng(entropy)

    def check_inputs(self, flat_inputs: list[Any]) -> None:
        """Refuse a call without an image, and a NumPy array standing where the image should be."""
        if any(
            isinstance(x, (PIL.Image.Image, tv_tensors.Image)) or _is_image_tensor(x) for x in flat_inputs
        ):
            return
        if any(isinstance(x, np.ndarray) for x in flat_inputs):
            raise TypeError(
                "PoseTransferAugment: a NumPy array is not an image input; pass a PIL image, a uint8 or float "
                "[0, 1] tensor (3, H, W) / (B, 3, H, W) (e.g. torch.from_numpy(array).permute(2, 0, 1)) or a "
                "tv_tensors.Image"
            )
        raise TypeError(
            "PoseTransferAugment: no image in the input (a PIL image, a (3, H, W) / (B, 3, H, W) tensor or a "
            f"tv_tensors.Image); got {', '.join(type(x).__name__ for x in flat_inputs) or 'nothing'}"
        )

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        sizes = {b for b in (_image_batch_size(x) for x in flat_inputs) if b is not None}
        if len(sizes) > 1:
            raise ValueError(f"PoseTransferAugment: image inputs of different batch sizes {sorted(sizes)}")
        n = sizes.pop() if sizes else 0
        rng = self._rng()
        self.calls += 1
        apply = rng.random(n) < self.p
        pose_index = self.pose_bank.sample_indices(n, rng, sampling=self.sampling)
        seeds = rng.integers(0, _SEED_HIGH, size=n)
        source = None
        if self.source_keypoints == "sample":
            source = next((x for x in flat_inputs if isinstance(x, PoseKeypoints)), None)
        params = {"apply": apply, "pose_index": pose_index, "seeds": seeds, "source_kps": source}
        self.last_params = {k: v for k, v in params.items() if k != "source_kps"}
        return params

    # ------------------------------------------------------------------ work
    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        apply: np.ndarray = params["apply"]
        if not apply.any():
            return inpt
        if isinstance(inpt, tv_tensors.KeyPoints):
            return self._replace_keypoints(inpt, params)
        if isinstance(inpt, PIL.Image.Image):
            out = self._generate_into(pil_to_tensor01(inpt)[None], params)
            return tensor01_to_pil(out[0])
        if _is_image_tensor(inpt):
            plain = inpt.as_subclass(torch.Tensor)
            single = plain.ndim == 3
            out = self._generate_into(plain[None] if single else plain, params)
            out = out[0] if single else out
            return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out
        # masks, boxes, videos: not re-rendered (a pose change invalidates them; we do not guess)
        return inpt

    def _generate_into(self, images: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """Replace the selected items of a ``(B, 3, H, W)`` batch (checked by :meth:`make_params`); returns a
        new tensor of the same dtype."""
        apply = params["apply"]
        sel = np.flatnonzero(apply)
        in_hw = (int(images.shape[-2]), int(images.shape[-1]))
        gen_hw = tuple(int(v) for v in self.generator.image_size)
        device = torch.device(self.generator.device)
        src = F.to_dtype(images[torch.as_tensor(sel)], torch.float32, scale=True).to(device)
        if in_hw != gen_hw:
            src = F.resize(src, list(gen_hw), antialias=True)
        src = src.clamp(0, 1)
        target = self.pose_bank.get(params["pose_index"][sel], size=gen_hw)
        source_kps = self._source_keypoints(params["source_kps"], sel, len(apply), gen_hw)
        with torch.no_grad():
            gen = self.generator.generate(
                src,
                torch.from_numpy(target).to(device),
                None if source_kps is None else torch.from_numpy(source_kps).to(device),
                steps=self.steps,
                sampler=self.sampler,
                guidance=self.guidance,
                seeds=[int(s) for s in params["seeds"][sel]],
            )
        if in_hw != gen_hw:
            gen = F.resize(gen, list(in_hw), antialias=True)
        gen = F.to_dtype(gen.clamp(0, 1).to(images.device), images.dtype, scale=True)
        out = images.clone()
        out[torch.as_tensor(sel, device=images.device)] = gen
        return out

    def _source_keypoints(
        self, kps: Any, sel: np.ndarray, n: int, gen_hw: tuple[int, int]
    ) -> np.ndarray | None:
        if kps is None:
            return None
        arr = as_keypoints(kps.as_subclass(torch.Tensor), source="source PoseKeypoints")
        arr = arr.reshape(-1, NUM_KEYPOINTS, 2)
        if len(arr) != n:
            raise ValueError(
                f"PoseTransferAugment: {len(arr)} source pose(s) for a batch of {n} images; "
                "give one (18, 2) pose per image"
            )
        return resize_keypoints(arr[sel], tuple(kps.canvas_size), gen_hw)

    def _replace_keypoints(self, inpt: tv_tensors.KeyPoints, params: dict[str, Any]) -> tv_tensors.KeyPoints:
        plain = inpt.as_subclass(torch.Tensor)
        if plain.shape[-2:] != (NUM_KEYPOINTS, 2):
            raise ValueError(
                f"PoseTransferAugment: keypoints of shape {tuple(plain.shape)} are not COCO-18 (…, 18, 2); "
                "they cannot be replaced by the target pose"
            )
        apply = params["apply"]
        flat = plain.reshape(-1, NUM_KEYPOINTS, 2)
        if flat.shape[0] != len(apply):
            raise ValueError(
                f"PoseTransferAugment: {flat.shape[0]} keypoint sets for a batch of {len(apply)} images"
            )
        target = self.pose_bank.get(params["pose_index"], size=tuple(inpt.canvas_size))
        out = flat.clone()
        sel = torch.as_tensor(np.flatnonzero(apply), device=out.device)
        out[sel] = torch.from_numpy(target[apply]).to(out.device, out.dtype)
        return tv_tensors.wrap(out.reshape(plain.shape), like=inpt)

    def batch_transform(self, images: torch.Tensor, pids: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 3, H, W)`` → same shape: the hook signature ``(imgs, pids) -> imgs`` of
        :class:`posereid.reid_integration.torchreid_plugin.BatchAugmentEngine` (pids are not needed: the
        generated person keeps the source identity, but there must be one per image when given). Pass
        ``batch_transform=augment.batch_transform``."""
        if not _is_image_tensor(images):
            raise TypeError(
                "PoseTransferAugment.batch_transform: images must be a (B, 3, H, W) tensor, got "
                f"{type(images).__name__}"
            )
        if images.ndim != 4:
            raise ValueError(
                "PoseTransferAugment.batch_transform: images must be a (B, 3, H, W) tensor, got shape "
                f"{tuple(images.shape)}"
            )
        if pids is not None:
            try:
                n: int | None = len(pids)
            except TypeError:  # a number, a 0-d tensor or array
                n = None
            if n != images.shape[0]:
                raise ValueError(
                    "PoseTransferAugment.batch_transform: pids must hold one id per image, got "
                    f"{'no sequence' if n is None else n} for a batch of {images.shape[0]} images"
                )
        return self(images)

    def extra_repr(self) -> str:
        return (
            f"p={self.p}, steps={self.steps}, guidance={self.guidance}, sampler={self.sampler!r}, "
            f"sampling={self.sampling!r}, poses={len(self.pose_bank)}"
        )


__all__ = ["PoseTransferAugment"]
