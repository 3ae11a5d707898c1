"""Teacher soft labels for synthetic train images (issue 26; the DG-Net recipe for imperfect generated images).

A teacher re-ID model trained on the REAL train images gives every synthetic train image a soft target over
the same identities; the student's loss on a synthetic image mixes the hard source-pid label with that
distribution (:func:`soft_label_loss`). Images that exist as files get targets computed once per training run
(:func:`teacher_soft_targets` for a ``ReidLists``, :func:`soft_targets_for_paths` for any paths, e.g. a
``PoseAugmentedDataset``'s offline images ``[p for p, _, _ in ds.synthetic]``; the teacher in eval mode on
the test transform), looked up by image path in each batch. Images rendered on the fly exist only in the
batch (their ``impath`` is the real source image), so :class:`OnlineSoftTargets` runs the frozen teacher on
each batch's synthetic images instead. :class:`SoftLabelSoftmaxEngine` (torchreid's softmax engine with the
soft-label loss and the batch hooks of
:class:`~posereid.reid_integration.torchreid_plugin.BatchAugmentEngine`) takes either.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from posereid.models.runtime import resolve_device
from posereid.reid_integration.market1501 import load_image
from posereid.reid_integration.soft_settings import (
    SOFT_AGREE,
    check_soft_temperature,
    check_soft_weight,
)
from posereid.reid_integration.torchreid_plugin import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchAugmentSoftmaxEngine,
    ReidLists,
    build_reid_model,
    build_reid_transforms,
    load_reid_checkpoint,
)

with warnings.catch_warnings():  # torchreid's "Cython evaluation is unavailable" (we do not use it)
    warnings.filterwarnings("ignore", message="Cython evaluation", category=UserWarning)
    from torchreid.reid import metrics


def soft_label_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_probs: torch.Tensor,
    synthetic: torch.Tensor,
    *,
    weight: float | str,
    temperature: float,
    label_smooth: float = 0.0,
) -> torch.Tensor:
    """Mean over the batch of the per-item loss, hard CE on real items and a hard/soft mix on synthetic ones.

    For a synthetic item ``i`` (``synthetic[i]`` true)::

        loss_i = (1 - w) * CE(student_logits_i, labels_i)
                 + w * T² * KL(softmax(teacher_logits_i / T) || softmax(student_logits_i / T))

    and ``loss_i = CE(student_logits_i, labels_i)`` for a real item. ``teacher_probs`` holds
    ``softmax(teacher_logits / T)`` (``(B, C)``; rows of real items are ignored), ``w`` = ``weight`` in
    ``[0, 1]``, ``T`` = ``temperature`` > 0 (the ``T²`` keeps the soft term's gradient scale independent of
    ``T``, Hinton et al. 2015). ``label_smooth`` is the CE's label smoothing ``eps`` (torchreid's softmax
    engine trains with 0.1; 0 is the plain CE). With a one-hot teacher on ``labels``, ``T = 1`` and
    ``label_smooth = 0`` the loss equals the hard loss for any ``w``. ``weight="agree"`` (:data:`SOFT_AGREE`)
    sets ``w`` per item: 0 where the teacher's most probable identity is ``labels_i``, else 1.
    """
    weight = check_soft_weight(weight)
    check_soft_temperature(temperature)
    if student_logits.ndim != 2 or teacher_probs.shape != student_logits.shape:
        raise ValueError(
            f"student logits and teacher probabilities must both be (B, C), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}"
        )
    num_classes = student_logits.shape[1]
    log_p = F.log_softmax(student_logits.float(), dim=1)
    target = F.one_hot(labels.long(), num_classes).to(log_p.dtype)
    if label_smooth:
        target = (1.0 - label_smooth) * target + label_smooth / num_classes
    per_item = -(target * log_p).sum(dim=1)
    synthetic = synthetic.to(device=per_item.device, dtype=torch.bool)
    if synthetic.any():
        log_q = F.log_softmax(student_logits[synthetic].float() / temperature, dim=1)
        # kl_div(log q, p) = sum p (log p - log q), with 0 log 0 = 0 (a teacher certain of one class)
        kl = F.kl_div(log_q, teacher_probs[synthetic].to(log_q), reduction="none").sum(dim=1)
        if weight == SOFT_AGREE:
            recognised = teacher_probs[synthetic].argmax(dim=1) == labels[synthetic].to(teacher_probs.device)
            w: torch.Tensor | float = (~recognised).to(kl.dtype)
        else:
            w = float(weight)
        mixed = (1.0 - w) * per_item[synthetic] + w * temperature**2 * kl
        per_item = per_item.masked_scatter(synthetic, mixed)
    return per_item.mean()


@dataclass(frozen=True)
class SoftTargets:
    """The teacher's probabilities ``softmax(teacher_logits / temperature)`` of each synthetic train image.

    ``probs`` maps an image path (as the dataset lists it, i.e. torchreid's ``impath``) to a ``(C,)`` float32
    CPU tensor over the student's label space; ``teacher`` is the checkpoint they came from.
    """

    probs: dict[str, torch.Tensor]
    temperature: float
    teacher: str
    num_classes: int

    def __len__(self) -> int:
        return len(self.probs)

    def lookup(
        self, paths: Sequence[str], device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs (B, C), has_target (B,) bool)`` for a batch's paths; rows without a target are zeros."""
        zeros = torch.zeros(self.num_classes)
        rows = [self.probs.get(p, zeros) for p in paths]
        has = torch.tensor([p in self.probs for p in paths], dtype=torch.bool)
        probs = torch.stack(rows) if rows else torch.zeros(0, self.num_classes)
        return probs.to(device), has.to(device)

    def agreement(self, labels: dict[str, int]) -> float:
        """Share of the images whose teacher argmax is their hard (source-pid) label (NaN when empty)."""
        if not self.probs:
            return float("nan")
        return sum(int(p.argmax()) == labels[path] for path, p in self.probs.items()) / len(self.probs)


def load_teacher(
    path: str | os.PathLike[str], *, num_classes: int | None = None, pid_labels: Sequence[int] | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A posereid re-ID checkpoint (``train-reid``'s ``model.safetensors``) as a teacher: ``(model, meta)``.

    Refused with a ``ValueError`` naming the file when its classifier does not have ``num_classes`` outputs
    (``None``: the checkpoint's own count, checked against the student's at the first batch) or when its
    meta's ``pid_labels`` differ from ``pid_labels`` (the teacher must be trained on the same real train
    identities with the same relabelling as the student).
    """
    path = Path(path)
    sd, meta = load_reid_checkpoint(path)
    missing = [k for k in ("model", "num_classes", "height", "width") if k not in meta]
    if missing:
        raise ValueError(f"{path}: teacher checkpoint meta lacks {missing}")
    if num_classes is None:
        num_classes = int(meta["num_classes"])
    weight = sd.get("classifier.weight")
    if weight is None or weight.ndim != 2:
        raise ValueError(
            f"{path}: the teacher has no linear classifier ('classifier.weight'); it cannot give soft labels"
        )
    sizes = {int(weight.shape[0]), int(meta["num_classes"])}
    if sizes != {int(num_classes)}:
        raise ValueError(
            f"{path}: the teacher's classifier has {int(weight.shape[0])} classes but the student's train split "
            f"has {num_classes} identities; a soft-label teacher must be trained on the same real train "
            "identities (the same data folder, or the same subset of it)"
        )
    if pid_labels is not None and "pid_labels" in meta and list(meta["pid_labels"]) != list(pid_labels):
        raise ValueError(
            f"{path}: the teacher was trained on other identities (its pid_labels differ from the student's "
            "train split), so its classes would mean other people"
        )
    model = build_reid_model(meta["model"], int(num_classes), loss=meta.get("loss", "softmax"))
    model.load_state_dict(sd)
    return model, meta


def teacher_soft_targets(
    teacher: str | os.PathLike[str],
    lists: ReidLists,
    *,
    temperature: float = 1.0,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    paths: Iterable[str] | None = None,
) -> SoftTargets:
    """Run ``teacher`` (a posereid re-ID checkpoint, see :func:`load_teacher`) once on every synthetic train
    image of ``lists`` (or on ``paths``), in eval mode on the test transform at the teacher's own input size,
    and return its probabilities ``softmax(logits / temperature)`` per image path."""
    return soft_targets_for_paths(
        teacher,
        lists.synthetic if paths is None else paths,
        num_classes=lists.num_train_pids,
        pid_labels=lists.pid_labels,
        temperature=temperature,
        device=device,
        batch_size=batch_size,
    )


@torch.no_grad()
def soft_targets_for_paths(
    teacher: str | os.PathLike[str],
    paths: Iterable[str],
    *,
    num_classes: int | None = None,
    pid_labels: Sequence[int] | None = None,
    temperature: float = 1.0,
    device: str | torch.device | None = None,
    batch_size: int = 64,
) -> SoftTargets:
    """:func:`teacher_soft_targets` without a ``ReidLists``: the teacher's probabilities of image files.

    For datasets that list their synthetic files themselves, e.g. a ``PoseAugmentedDataset`` over an offline
    folder: ``soft_targets_for_paths(ckpt, [p for p, _, _ in ds.synthetic])``. ``num_classes`` /
    ``pid_labels`` are checked against the checkpoint as in :func:`load_teacher` (``None``: its own).
    """
    check_soft_temperature(temperature)
    model, meta = load_teacher(teacher, num_classes=num_classes, pid_labels=pid_labels)
    num_classes = int(meta["num_classes"])
    dev = resolve_device(device)
    model = model.to(dev).eval()
    _, test_tf = build_reid_transforms(
        int(meta["height"]),
        int(meta["width"]),
        norm_mean=meta.get("norm_mean", IMAGENET_MEAN),
        norm_std=meta.get("norm_std", IMAGENET_STD),
    )
    todo = sorted({str(p) for p in paths})
    probs: dict[str, torch.Tensor] = {}
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        x = torch.stack([test_tf(load_image(p)) for p in chunk]).to(dev)
        logits = model.classifier(model(x))  # eval mode returns the classifier's input features
        p = F.softmax(logits.float() / temperature, dim=1).cpu()
        probs.update(zip(chunk, p, strict=True))
    return SoftTargets(
        probs=probs, temperature=float(temperature), teacher=str(teacher), num_classes=num_classes
    )


class OnlineSoftTargets:
    """Teacher soft targets computed per batch, for synthetic images that exist only in the batch.

    A :class:`~posereid.augment.dataset.PoseAugmentedDataset` on the fly renders its synthetic items in
    memory and gives them the real source image's ``impath``, so a per-path table would score the wrong
    image. :meth:`lookup` runs the frozen ``model`` (eval mode, no gradients, its own ``classifier``) on the
    batch's synthetic items as the student sees them (resized to ``size`` when given) and returns
    ``softmax(logits / temperature)``, with :meth:`SoftTargets.lookup`'s shape contract.
    ``model`` is a torchreid-style re-ID model (eval mode returns the classifier's input features); it is
    put in eval mode and its parameters stop requiring gradients.
    """

    def __init__(
        self, model: torch.nn.Module, *, temperature: float = 1.0, size: tuple[int, int] | None = None
    ) -> None:
        check_soft_temperature(temperature)
        weight = getattr(getattr(model, "classifier", None), "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise ValueError(
                f"{type(model).__name__}: an online teacher needs a linear 'classifier' to give soft labels"
            )
        self.model = model.eval().requires_grad_(False)
        self.temperature = float(temperature)
        self.num_classes = int(weight.shape[0])
        self.size = None if size is None else (int(size[0]), int(size[1]))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        num_classes: int | None = None,
        pid_labels: Sequence[int] | None = None,
        temperature: float = 1.0,
        device: str | torch.device | None = None,
    ) -> OnlineSoftTargets:
        """A posereid re-ID checkpoint (checked as in :func:`load_teacher`) as an online teacher at its own
        input size (the batch keeps the student's normalisation)."""
        model, meta = load_teacher(path, num_classes=num_classes, pid_labels=pid_labels)
        model = model.to(resolve_device(device))
        return cls(model, temperature=temperature, size=(int(meta["height"]), int(meta["width"])))

    @torch.no_grad()
    def lookup(self, imgs: torch.Tensor, synthetic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs (B, C), has_target (B,) bool)`` on ``imgs``' device: the teacher's probabilities of the
        ``(B, 3, H, W)`` batch's items flagged in ``synthetic``, zeros (and ``False``) for the others."""
        has = torch.as_tensor(synthetic, dtype=torch.bool).to(imgs.device)
        if has.shape != imgs.shape[:1]:
            raise ValueError(
                f"synthetic flags {tuple(has.shape)} do not match a batch of {imgs.shape[0]} images"
            )
        probs = torch.zeros(imgs.shape[0], self.num_classes, device=imgs.device)
        if has.any():
            # eval on each call: a caller's .train() (e.g. of a model holding the teacher) must not reach it
            self.model.eval().to(imgs.device)
            x = imgs[has].float()
            if self.size is not None and tuple(x.shape[-2:]) != self.size:
                x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
            logits = self.model.classifier(self.model(x))
            probs[has] = F.softmax(logits.float() / self.temperature, dim=1)
        return probs, has


SYNTHETIC_KEYS = ("synthetic", "is_synthetic")
"""Batch keys of the synthetic flag: posereid's train-reid datasets use the first, ``PoseAugmentedDataset``
the second."""


def synthetic_flags(data: Mapping[str, Any]) -> torch.Tensor | None:
    """A batch's ``(B,)`` bool synthetic flags from any of :data:`SYNTHETIC_KEYS` (or-ed when several are
    present); ``None`` when the batch has none."""
    flags = [torch.as_tensor(data[k], dtype=torch.bool) for k in SYNTHETIC_KEYS if k in data]
    if not flags:
        return None
    out = flags[0]
    for f in flags[1:]:
        out = out | f
    return out


class SoftLabelSoftmaxEngine(BatchAugmentSoftmaxEngine):
    """torchreid's softmax engine whose loss on synthetic images mixes in the teacher's soft targets.

    ``soft_targets`` is either a :class:`SoftTargets` table (from :func:`teacher_soft_targets` or
    :func:`soft_targets_for_paths`), looked up by the batch's ``impath``, or :class:`OnlineSoftTargets`, which
    scores the batch's flagged synthetic images themselves (images rendered on the fly). An item with a target
    gets :func:`soft_label_loss`'s mixed loss (weight ``soft_weight``, the targets' temperature), the others the
    hard CE with the engine's own label smoothing. A batch item flagged synthetic (``synthetic`` or
    ``is_synthetic``) without a path target is an error, and online targets need the flag. The batch hooks
    of :class:`BatchAugmentSoftmaxEngine` run first.
    """

    def __init__(
        self,
        *args: Any,
        soft_targets: SoftTargets | OnlineSoftTargets,
        soft_weight: float | str = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.soft_targets = soft_targets
        self.soft_weight = check_soft_weight(soft_weight)

    def soft_loss(self, data: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, logits, labels)`` of a batch (already augmented), with gradients."""
        imgs, pids = self.parse_data_for_train(data)
        imgs, pids = imgs.to(self.device), pids.to(self.device)
        teacher, has = self.batch_targets(data, imgs)
        logits = self.model(imgs)
        if isinstance(logits, tuple):  # a model built for the triplet loss: (logits, features)
            logits = logits[0]
        loss = soft_label_loss(
            logits,
            pids,
            teacher,
            has,
            weight=self.soft_weight,
            temperature=self.soft_targets.temperature,
            label_smooth=float(getattr(self.criterion, "eps", 0.0)),
        )
        return loss, logits, pids

    def batch_targets(self, data: dict[str, Any], imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(teacher probs (B, C), has_target (B,))`` of a batch whose images ``imgs`` are on the device."""
        flagged = synthetic_flags(data)
        if isinstance(self.soft_targets, OnlineSoftTargets):
            if flagged is None:
                raise ValueError(
                    f"online soft targets need the batch's synthetic flag (one of {list(SYNTHETIC_KEYS)}); "
                    f"the batch has {sorted(data)}"
                )
            return self.soft_targets.lookup(imgs, flagged)
        paths = list(data["impath"])
        teacher, has = self.soft_targets.lookup(paths, self.device)
        if flagged is not None:
            lacking = [
                p for p, f, h in zip(paths, flagged.tolist(), has.tolist(), strict=True) if f and not h
            ]
            if lacking:
                raise KeyError(f"{lacking[0]}: synthetic train image without a teacher soft target")
        return teacher, has

    def forward_backward(self, data: dict[str, Any]) -> dict[str, float]:
        loss, logits, pids = self.soft_loss(self.augment_batch(data))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "acc": metrics.accuracy(logits, pids)[0].item()}


__all__ = [
    "SYNTHETIC_KEYS",
    "OnlineSoftTargets",
    "SoftLabelSoftmaxEngine",
    "SoftTargets",
    "load_teacher",
    "soft_label_loss",
    "soft_targets_for_paths",
    "synthetic_flags",
    "teacher_soft_targets",
]
