"""Metric code for ``posereid evaluate-generator`` (:mod:`posereid.experiments.quality`).

Everything here is a pure function of tensors/arrays, or a small wrapper that loads a pretrained
backbone from a **local** file, so it can be tested without data or downloads:

* image similarity — :func:`ssim_scores` (torchmetrics SSIM, Gaussian 11×11, σ 1.5, data range 1),
  :class:`Lpips` (torchmetrics' LPIPS network, backbone + linear layers from local files) and
  :class:`FidScorer` (torchmetrics ``FrechetInceptionDistance`` with the standard TF-ported Inception
  weights from a local file, or any feature ``nn.Module``);
* masked variants — :func:`body_mask` builds a person mask from keypoints (PATN / Deformable-GAN idea:
  thick limbs, filled torso and head, dilated); Mask-SSIM / Mask-LPIPS multiply both images by it;
* pose fidelity — :func:`pose_fidelity` (PCKh and joint error) of keypoints detected on the generated
  image against the target keypoints; the detector runs elsewhere;
* identity fidelity — :func:`identity_fidelity` (cosine to the own identity's centroid vs the nearest
  other identity's centroid).

No weight file is ever downloaded: a missing one raises :class:`MissingWeightsError` whose message names
the file, where it is looked for, and the flag that points to it.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from posereid.models.images import tensor01_to_pil
from posereid.models.pose import NUM_KEYPOINTS, as_keypoints, torso_length, visible_mask
from posereid.reid_integration.evaluate import IdentityCentroids

logger = logging.getLogger(__name__)

LpipsNet = Literal["alex", "vgg", "squeeze"]

#: torchvision weight enums of the LPIPS backbones (the file names come from their download URLs).
_LPIPS_TV_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}

#: The standard FID Inception-v3 weights (converted from TensorFlow's 2015-12-05 graph), under the name
#: torch-fidelity caches them and the name pytorch-fid publishes them.
FID_WEIGHTS_FILENAMES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")

HEAD_JOINTS = (0, 14, 15, 16, 17)  # nose, eyes, ears
TORSO_JOINTS = (2, 5, 11, 8)  # r_shoulder, l_shoulder, l_hip, r_hip (polygon order)


class MissingWeightsError(FileNotFoundError):
    """A metric's pretrained weights are not on disk (they are never downloaded)."""


def default_weights_dir() -> Path:
    """Where torchvision / torch-fidelity cache downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


# --------------------------------------------------------------------------------------------------
# Body mask
# --------------------------------------------------------------------------------------------------
def body_mask(
    kps: np.ndarray,
    height: int,
    width: int,
    *,
    limb_width: float = 0.10,
    head_radius: float = 0.08,
    dilate: float = 0.03,
) -> torch.Tensor:
    """Binary person masks ``(N, 1, H, W)`` from COCO-18 keypoints (the target pose).

    PATN's Mask-SSIM / Mask-LPIPS score only the person: both images are multiplied by a mask drawn from
    the pose. Ours draws every limb of :data:`~posereid.models.pose.LIMBS` as a line ``limb_width·H``
    thick, fills the torso polygon (shoulders and hips), puts a disc of radius ``head_radius·H`` on each
    head joint and on the neck, then dilates by ``dilate·H`` pixels (max-pooling). Sizes are fractions of
    the image height so the mask scales with the image. A pose with no visible joint gives an empty mask.
    """
    from posereid.models.pose import LIMBS  # local: keeps the import list short and explicit

    arr = as_keypoints(kps)
    if arr.ndim == 2:
        arr = arr[None]
    vis = visible_mask(arr)
    lw = max(1, round(limb_width * height))
    hr = max(1.0, head_radius * height)
    masks = []
    for p, v in zip(arr, vis):
        im = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(im)
        torso = [tuple(p[j]) for j in TORSO_JOINTS if v[j]]
        if len(torso) >= 3:
            draw.polygon(torso, fill=255)
        for a, b in LIMBS:
            if v[a] and v[b]:
                draw.line([tuple(p[a]), tuple(p[b])], fill=255, width=lw)
        for j in np.flatnonzero(v):
            r = hr if j in HEAD_JOINTS or j == 1 else lw / 2
            x, y = p[j]
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        masks.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()))
    m = (torch.stack(masks)[:, None].float() / 255.0 > 0.5).float()
    k = round(dilate * height)
    if k > 0:
        m = torch.nn.functional.max_pool2d(m, kernel_size=2 * k + 1, stride=1, padding=k)
    return m


# --------------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------------
def _check_pair(preds: torch.Tensor, target: torch.Tensor) -> None:
    if preds.shape != target.shape or preds.ndim != 4 or preds.shape[1] != 3:
        raise ValueError(
            f"expected two (N, 3, H, W) image batches of equal shape, got {tuple(preds.shape)} and "
            f"{tuple(target.shape)}"
        )


def ssim_scores(
    preds: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image SSIM ``(N,)`` of ``[0, 1]`` images (Gaussian window 11, σ 1.5, as PATN/PIDM report it).

    With ``mask`` ``(N, 1, H, W)`` both images are multiplied by it first (Mask-SSIM).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(preds, target)
    if mask is not None:
        mask = mask.to(preds)
        preds, target = preds * mask, target * mask
    return structural_similarity_index_measure(
        preds.float(), target.float(), data_range=1.0, reduction="none"
    ).reshape(-1)


# --------------------------------------------------------------------------------------------------
# LPIPS
# --------------------------------------------------------------------------------------------------
def lpips_backbone_filename(net: LpipsNet = "alex") -> str:
    """File name torchvision gives the ImageNet weights of LPIPS backbone ``net`` (e.g. ``alexnet-owt-7be5be79.pth``)."""
    import torchvision

    if net not in _LPIPS_TV_WEIGHTS:
        raise ValueError(f"LPIPS net must be one of {', '.join(_LPIPS_TV_WEIGHTS)}, got {net!r}")
    enum = getattr(torchvision.models, _LPIPS_TV_WEIGHTS[net])
    return os.path.basename(enum.DEFAULT.url)


def bundled_lpips_linear(net: LpipsNet = "alex") -> Path:
    """The LPIPS linear-layer weights torchmetrics ships in its wheel (``lpips_models/<net>.pth``)."""
    import torchmetrics.functional.image.lpips as tm_lpips

    return Path(tm_lpips.__file__).parent / "lpips_models" / f"{net}.pth"


def _load_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except Exception as exc:  # noqa: BLE001 - report which file could not be read
        raise ValueError(f"{path}: cannot read {what} as a torch state dict ({exc})") from exc
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: {what} must be a state dict (a mapping of names to tensors)")
    return dict(sd)


def _lpips_missing_message(net: str, looked: list[Path], flag: str) -> str:
    fname = lpips_backbone_filename(net)  # type: ignore[arg-type]
    return (
        f"LPIPS needs the torchvision ImageNet weights of its {net} backbone, file {fname!r}; looked in "
        f"{', '.join(str(p) for p in looked)}. Put {fname} in {default_weights_dir()} (where torchvision "
        f"caches it) or pass {flag} PATH (the file, or a directory holding it and optionally the LPIPS "
        f"linear layers as {net}.pth). Nothing is downloaded."
    )


class Lpips(nn.Module):
    """LPIPS distance (torchmetrics' network) with every weight read from local files.

    torchmetrics' own ``LearnedPerceptualImagePatchSimilarity`` would fetch the backbone from the
    internet; here the backbone is built empty (``weights=None``) and filled from a torchvision state dict
    on disk, and the linear layers come from torchmetrics' bundled ``lpips_models/<net>.pth`` (or a file
    you give). Use :meth:`from_local`. ``forward(a, b, mask=None)`` takes ``[0, 1]`` images and returns
    ``(N,)`` distances (0 for identical images); images whose shorter side is below :attr:`min_side` are
    enlarged first, since the backbones downsample 16-32x.
    """

    #: images with a shorter side are enlarged (bilinear, aspect kept) before the backbone
    min_side = 64

    def __init__(self, network: nn.Module, net: str, sources: dict[str, str]) -> None:
        super().__init__()
        self.network = network
        self.net_name = net
        self.sources = sources

    @classmethod
    def from_local(
        cls,
        weights: str | os.PathLike[str] | None = None,
        *,
        net: LpipsNet = "alex",
        linear: str | os.PathLike[str] | None = None,
        flag: str = "--lpips-weights",
    ) -> Lpips:
        """Load LPIPS from local files.

        Args:
            weights: the backbone's torchvision state dict (``features.*`` keys, e.g.
                ``alexnet-owt-7be5be79.pth``), or a directory holding that file (and optionally the LPIPS
                linear layers as ``<net>.pth``). ``None`` looks in :func:`default_weights_dir`.
            linear: LPIPS linear-layer state dict (``lin0.model.1.weight`` …); default: the one in
                ``weights``' directory if present, else torchmetrics' bundled file.

        Raises:
            MissingWeightsError: a file is not there (message names the file, the folder and ``flag``).
            ValueError: a file is not a matching state dict.
        """
        try:
            # private: torchmetrics' public LPIPS (metric and functional) always loads its backbone through
            # torchvision's download cache; only this network class can be built empty and filled from a file
            from torchmetrics.functional.image.lpips import _NoTrainLpips
        except ImportError as exc:  # pragma: no cover - depends on the torchmetrics version
            raise ImportError(
                f"this torchmetrics has no LPIPS network class ({exc}); need torchmetrics>=1.4"
            ) from exc

        fname = lpips_backbone_filename(net)
        if weights is None:
            backbone = default_weights_dir() / fname
            if not backbone.is_file():
                raise MissingWeightsError(_lpips_missing_message(net, [backbone], flag))
        else:
            given = Path(weights).expanduser()
            if given.is_dir():
                backbone = given / fname
                if linear is None and (given / f"{net}.pth").is_file():
                    linear = given / f"{net}.pth"
            else:
                backbone = given
            if not backbone.is_file():
                raise MissingWeightsError(_lpips_missing_message(net, [backbone], flag))
        linear_path = Path(linear).expanduser() if linear is not None else bundled_lpips_linear(net)
        if not linear_path.is_file():
            raise MissingWeightsError(
                f"LPIPS linear layers {linear_path} not found (torchmetrics ships them as "
                f"lpips_models/{net}.pth; reinstall torchmetrics or put {net}.pth beside the backbone)"
            )

        network = _NoTrainLpips(pretrained=False, net=net, pnet_rand=True)  # weights=None: no download
        # Backbone: torchvision ``features.<i>.*`` → the LPIPS slices, which keep the index as module name.
        src = _load_state_dict(backbone, f"the LPIPS {net} backbone")
        feats = {k[len("features.") :]: v for k, v in src.items() if k.startswith("features.")}
        if not feats:
            raise ValueError(
                f"{backbone}: no 'features.*' keys; expected the torchvision {net} state dict ({fname})"
            )
        mapped = {}
        for key in network.net.state_dict():
            m = re.match(r"^(?:slices\.\d+|slice\d+)\.(.+)$", key)
            if m is None or m.group(1) not in feats:
                raise ValueError(f"{backbone}: missing backbone weight 'features.{m.group(1) if m else key}'")
            mapped[key] = feats[m.group(1)]
        try:
            network.net.load_state_dict(mapped, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{backbone}: does not fit the LPIPS {net} backbone ({exc})") from exc
        # Linear layers: check every lin* weight is there (torchmetrics itself loads them non-strictly).
        lin = _load_state_dict(linear_path, "LPIPS linear layers")
        expected = [k for k in network.state_dict() if re.match(r"^lin\d+\.", k)]
        absent = [k for k in expected if k not in lin]
        if absent:
            raise ValueError(f"{linear_path}: LPIPS linear-layer file lacks {absent[:3]} (net {net!r})")
        try:
            network.load_state_dict({k: lin[k] for k in expected}, strict=False)
        except RuntimeError as exc:
            raise ValueError(f"{linear_path}: linear layers do not fit LPIPS {net} ({exc})") from exc
        network.eval()
        return cls(network, net, {"backbone": str(backbone), "linear": str(linear_path)})

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_pair(a, b)
        if mask is not None:
            mask = mask.to(a)
            a, b = a * mask, b * mask
        p = next(self.network.parameters())
        a, b = a.to(p).clamp(0, 1), b.to(p).clamp(0, 1)
        short = min(a.shape[-2:])
        if short < self.min_side:  # the backbones downsample 16-32x: enlarge tiny images first
            f = self.min_side / short
            size = (round(a.shape[-2] * f), round(a.shape[-1] * f))
            a, b = (
                nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in (a, b)
            )
        out = self.network(a, b, normalize=True)
        return out.reshape(-1).float().cpu()


# --------------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------------
def torch_fidelity_available() -> bool:
    return importlib.util.find_spec("torch_fidelity") is not None


def find_fid_weights(weights: str | os.PathLike[str] | None, *, flag: str = "--fid-weights") -> Path:
    """Resolve the FID Inception weights file (a path, a directory holding it, or the torch hub cache).

    Raises :class:`MissingWeightsError` naming the file names, the folder and ``flag``.
    """
    if weights is None:
        looked = [default_weights_dir() / n for n in FID_WEIGHTS_FILENAMES]
    else:
        p = Path(weights).expanduser()
        looked = [p / n for n in FID_WEIGHTS_FILENAMES] if p.is_dir() else [p]
    for cand in looked:
        if cand.is_file():
            return cand
    raise MissingWeightsError(
        f"FID needs the Inception-v3 FID weights, file {FID_WEIGHTS_FILENAMES[0]!r} (torch-fidelity's name; "
        f"pytorch-fid calls it {FID_WEIGHTS_FILENAMES[1]!r}); looked at {', '.join(str(p) for p in looked)}. "
        f"Put it in {default_weights_dir()} (where torch-fidelity caches it) or pass {flag} PATH. "
        "Nothing is downloaded."
    )


class FidScorer:
    """FID of several generated sets against one real reference set (real statistics computed once).

    Wraps torchmetrics' ``FrechetInceptionDistance``. Build with :meth:`from_weights` (standard Inception
    FID from a local weights file; needs ``torch-fidelity``) or :meth:`from_module` (any feature network,
    e.g. a re-ID backbone, mapping ``(N, 3, H, W)`` ``[0, 1]`` images to ``(N, D)``).
    """

    def __init__(self, metric: Any, description: str) -> None:
        self.metric = metric
        self.description = description
        self.n_real = 0

    @classmethod
    def from_weights(
        cls, weights: str | os.PathLike[str] | None = None, *, flag: str = "--fid-weights"
    ) -> FidScorer:
        from torchmetrics.image.fid import FrechetInceptionDistance

        path = find_fid_weights(weights, flag=flag)
        if not torch_fidelity_available():
            from posereid.models.pose_estimation import MissingExtraError

            raise MissingExtraError(
                f"FID with the Inception weights ({path}) needs the torch-fidelity package, which torchmetrics "
                "uses for its Inception network: pip install torch-fidelity"
            )
        metric = FrechetInceptionDistance(
            feature=2048, reset_real_features=False, normalize=True, feature_extractor_weights_path=str(path)
        )
        return cls(metric, f"Inception-v3 pool3 (2048-d), weights {path.name}")

    @classmethod
    def from_module(cls, module: nn.Module, image_size: tuple[int, int]) -> FidScorer:
        from torchmetrics.image.fid import FrechetInceptionDistance

        module.eval()
        metric = FrechetInceptionDistance(
            feature=module, reset_real_features=False, normalize=True, input_img_size=(3, *image_size)
        )
        return cls(metric, f"custom features ({type(module).__name__})")

    def to(self, device: torch.device | str) -> FidScorer:
        self.metric = self.metric.to(device)
        return self

    def _device(self) -> torch.device:
        return self.metric.real_features_sum.device

    @torch.no_grad()
    def add_real(self, images: torch.Tensor) -> None:
        """Add ``[0, 1]`` real images to the reference statistics."""
        self.metric.update(images.to(self._device()).clamp(0, 1), real=True)
        self.n_real += images.shape[0]

    @torch.no_grad()
    def score(self, images: torch.Tensor, batch_size: int = 64) -> float:
        """FID of a generated set against the reference (needs ≥ 2 images on each side)."""
        if self.n_real < 2 or images.shape[0] < 2:
            raise ValueError(
                f"FID needs at least 2 real and 2 generated images (got {self.n_real}, {images.shape[0]})"
            )
        self.metric.reset()  # keeps the real statistics (reset_real_features=False)
        for i in range(0, images.shape[0], batch_size):
            self.metric.update(images[i : i + batch_size].to(self._device()).clamp(0, 1), real=False)
        return max(0.0, float(self.metric.compute()))  # a distance: below 0 only by rounding


# --------------------------------------------------------------------------------------------------
# Realism without Inception: Fréchet distances in a judge's feature space, and sharpness
# --------------------------------------------------------------------------------------------------
class CallableFeatures(nn.Module):
    """A feature function ``(N, 3, H, W) [0, 1] → (N, d)`` (e.g. a re-ID extractor) as the ``nn.Module``
    that :meth:`FidScorer.from_module` needs; the features come back on the input's device."""

    def __init__(self, fn: Any, name: str | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images.float()).float().to(images.device)


class JudgeFeatures(nn.Module):
    """The pose judge's globally pooled stage-3 features (:meth:`PoseJudge.pooled_features
    <posereid.experiments.quality.judge.model.PoseJudge.pooled_features>`) as a feature module."""

    def __init__(self, judge: nn.Module) -> None:
        super().__init__()
        self.judge = judge.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.pooled_features(images.float()).to(images.device)


def laplacian_energy(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute Laplacian ``(N,)`` of ``[0, 1]`` images ``(N, 3, H, W)``: the 4-neighbour kernel
    ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` on each channel, valid positions only (no padded border)."""
    if images.ndim != 4 or images.shape[1] != 3 or min(images.shape[-2:]) < 3:
        raise ValueError(f"expected (N, 3, H, W) images with H, W >= 3, got {tuple(images.shape)}")
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    x = images.detach().to(torch.float64).cpu()
    lap = nn.functional.conv2d(x, k.expand(3, 1, 3, 3).contiguous(), groups=3)
    return lap.abs().mean((1, 2, 3))


def sharpness_ratio(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Mean :func:`laplacian_energy` of ``generated`` over that of ``real``: 1 = as sharp as the real
    images, below 1 = blurrier, above 1 = more high-frequency content (noise, ringing)."""
    ref = float(laplacian_energy(real).mean())
    if ref <= 0:
        return float("nan")
    return float(laplacian_energy(generated).mean()) / ref


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``images`` blurred by a Gaussian of ``sigma`` pixels (kernel ``2·ceil(3σ) + 1``, reflected border)."""
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    k = 2 * math.ceil(3 * sigma) + 1
    return tv_blur(images.float(), kernel_size=[k, k], sigma=[sigma, sigma])


# --------------------------------------------------------------------------------------------------
# Pose fidelity
# --------------------------------------------------------------------------------------------------
def pose_normaliser(target: np.ndarray, *, torso_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-image PCKh length ``(N,)`` and which rule gave it (``(N,)`` str: ``head``, ``torso`` or ``none``).

    COCO-18 has no head-top joint, so MPII's head segment is not available. We use the **head height
    estimated as twice the neck-to-nose distance** (the nose sits about half a head above the neck), so
    PCKh@0.5 accepts a joint within one neck-to-nose distance. Without neck or nose the length is
    ``torso_fraction`` × :func:`~posereid.models.pose.torso_length` (neck — or the shoulders' midpoint —
    to the hips' midpoint, or to the one visible hip); an adult's head is about half the neck-to-hip length. Without either the
    length is NaN and the image is not scored.
    """
    t = as_keypoints(target)
    if t.ndim == 2:
        t = t[None]
    vis = visible_mask(t)
    n = t.shape[0]
    torso = torso_length(t)
    size = np.full(n, np.nan, dtype=np.float64)
    rule = np.full(n, "none", dtype=object)
    for i in range(n):
        p, v = t[i].astype(np.float64), vis[i]
        if v[0] and v[1]:
            d = float(np.linalg.norm(p[1] - p[0]))
            if d > 0:
                size[i], rule[i] = 2.0 * d, "head"
                continue
        if np.isfinite(torso[i]):
            size[i], rule[i] = torso_fraction * torso[i], "torso"
    return size, rule


def pose_fidelity(detected: np.ndarray, target: np.ndarray, *, alpha: float = 0.5) -> dict[str, float]:
    """PCKh@``alpha`` and joint error of keypoints detected on generated images vs the target pose.

    A pure function of ``detected`` and ``target`` (both ``(N, 18, 2)``, ``-1`` missing); run the pose
    estimator separately. Joints that are visible in the target are scored; one the detector did not
    find counts as wrong. An image where the detector found nobody (all ``-1``) is counted in
    ``no_person`` and all its joints are wrong.

    Returns:
        ``pckh``: correct / scored joints over all scored images; ``pckh_found``: the same over the
        images with a person found; ``joint_error_px``: mean distance (pixels) over joints found in both;
        ``n_images``, ``no_person``, ``no_scale`` (images without a normaliser, not scored),
        ``n_joints``, ``head_rule`` / ``torso_rule`` (images per normaliser rule).
    """
    d, t = as_keypoints(detected), as_keypoints(target)
    if d.shape != t.shape or d.ndim != 3:
        raise ValueError(f"detected and target must both be (N, 18, 2), got {d.shape} and {t.shape}")
    size, rule = pose_normaliser(t)
    dv, tv = visible_mask(d), visible_mask(t)
    found = dv.any(-1)
    dist = np.linalg.norm(d.astype(np.float64) - t.astype(np.float64), axis=-1)  # (N, 18)
    scored = tv & np.isfinite(size)[:, None]
    correct = scored & dv & (dist <= alpha * np.nan_to_num(size, nan=0.0)[:, None])
    both = scored & dv
    n_sc = int(scored.sum())
    n_sc_found = int(scored[found].sum())
    nan = float("nan")
    return {
        "pckh": float(correct.sum() / n_sc) if n_sc else nan,
        "pckh_found": float(correct[found].sum() / n_sc_found) if n_sc_found else nan,
        "joint_error_px": float(dist[both].mean()) if both.any() else nan,
        "n_images": int(d.shape[0]),
        "no_person": int((~found).sum()),
        "no_scale": int((~np.isfinite(size) & tv.any(-1)).sum()),
        "n_joints": n_sc,
        "head_rule": int((rule == "head").sum()),
        "torso_rule": int((rule == "torso").sum()),
    }


def detect_keypoints(estimator: Any, images: torch.Tensor, *, upscale: int = 1) -> np.ndarray:
    """Run a pose estimator (``uint8 HxWx3 → (18, 2)``) on ``(N, 3, H, W)`` ``[0, 1]`` images.

    ``upscale > 1`` enlarges each image (bicubic) before detection and maps the keypoints back to the
    original pixel grid; mediapipe already works on 128×64 crops, so the default is 1.
    """
    from tqdm.auto import tqdm

    from posereid.models.pose import resize_keypoints

    if upscale < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    h, w = images.shape[-2:]
    out = np.empty((images.shape[0], NUM_KEYPOINTS, 2), dtype=np.float32)
    for i, im in enumerate(tqdm(images, desc="pose", leave=False, disable=len(images) < 16)):
        pil = tensor01_to_pil(im)
        if upscale > 1:
            big = pil.resize((w * upscale, h * upscale), Image.Resampling.BICUBIC)
            kp = np.asarray(estimator(np.array(big)), dtype=np.float32)
            out[i] = resize_keypoints(kp, (h * upscale, w * upscale), (h, w))
        else:
            out[i] = as_keypoints(estimator(np.array(pil)))
    return out


# --------------------------------------------------------------------------------------------------
# Identity fidelity
# --------------------------------------------------------------------------------------------------
@dataclass
class IdentityScores:
    """Per-query identity similarities (NaN where the query's own identity has no reference image)."""

    own: np.ndarray
    other: np.ndarray

    def summary(self) -> dict[str, float]:
        ok = np.isfinite(self.own) & np.isfinite(self.other)
        nan = float("nan")
        return {
            "own_centroid_cos": float(self.own[ok].mean()) if ok.any() else nan,
            "other_centroid_cos": float(self.other[ok].mean()) if ok.any() else nan,
            "margin": float((self.own - self.other)[ok].mean()) if ok.any() else nan,
            "closer_to_own": float((self.own > self.other)[ok].mean()) if ok.any() else nan,
            "n_scored": int(ok.sum()),
            "n_skipped": int((~ok).sum()),
        }


def identity_fidelity(
    query: torch.Tensor,
    query_pids: np.ndarray,
    reference: torch.Tensor,
    reference_pids: np.ndarray,
    *,
    exclude: np.ndarray | None = None,
) -> IdentityScores:
    """Cosine similarity of each query to its own identity's centroid and to the nearest other centroid.

    Centroids and exclusion as in :class:`~posereid.reid_integration.evaluate.IdentityCentroids` (the
    identity filter's scoring): pids ≤ 0 make none, and ``exclude[i]`` (reference rows, -1 for none) are
    left out of query ``i``'s own centroid, so a real image scored "as if generated" is not compared with
    itself.
    """
    own, other = IdentityCentroids(reference, reference_pids).similarities(query, query_pids, exclude=exclude)
    return IdentityScores(own, other)


__all__ = [
    "FID_WEIGHTS_FILENAMES",
    "CallableFeatures",
    "FidScorer",
    "IdentityScores",
    "JudgeFeatures",
    "Lpips",
    "MissingWeightsError",
    "body_mask",
    "bundled_lpips_linear",
    "default_weights_dir",
    "detect_keypoints",
    "find_fid_weights",
    "gaussian_blur",
    "identity_fidelity",
    "laplacian_energy",
    "lpips_backbone_filename",
    "pose_fidelity",
    "pose_normaliser",
    "sharpness_ratio",
    "ssim_scores",
    "torch_fidelity_available",
]
