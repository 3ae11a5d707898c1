"""Teacher soft labels for synthetic train images (issue 26; the DG-Net recipe for imperfect generated images).

A teacher re-ID model trained on the REAL train images gives every synthetic train image a soft target over
the same identities; the student's loss on a synthetic image mixes the hard source-pid label with that
distribution (:func:`soft_label_loss`). The targets are computed once per training run
(:func:`teacher_soft_targets`, the teacher in eval mode on the test transform) and looked up by image path
in each batch (:class:`SoftLabelSoftmaxEngine`, torchreid's softmax engine with the soft-label loss and the
batch hooks of :class:`~posereid.reid_integration.torchreid_plugin.BatchAugmentEngine`).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from posereid.models.runtime import resolve_device
from posereid.reid_integration.market1501 import load_image
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


def check_soft_weight(weight: float) -> None:
    """Raise ``ValueError`` naming ``soft_weight`` unless it is a finite number in ``[0, 1]``."""
    if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise ValueError(f"soft_weight must be in [0, 1], got {weight}")


def check_soft_temperature(temperature: float) -> None:
    """Raise ``ValueError`` naming ``soft_temperature`` unless it is a finite number > 0."""
    if not (math.isfinite(temperature) and temperature > 0.0):
        raise ValueError(f"soft_temperature must be a finite number > 0, got {temperature}")


def soft_label_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_probs: torch.Tensor,
    synthetic: torch.Tensor,
    *,
    weight: float,
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
    ``label_smooth = 0`` the loss equals the hard loss for any ``w``.
    """
    check_soft_weight(weight)
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
        mixed = (1.0 - weight) * per_item[synthetic] + weight * temperature**2 * kl
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
    path: str | os.PathLike[str], *, num_classes: int, pid_labels: Sequence[int] | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A posereid re-ID checkpoint (``train-reid``'s ``model.safetensors``) as a teacher: ``(model, meta)``.

    Refused with a ``ValueError`` naming the file when its classifier does not have ``num_classes`` outputs
    or when its meta's ``pid_labels`` differ from ``pid_labels`` (the teacher must be trained on the same
    real train identities with the same relabelling as the student).
    """
    path = Path(path)
    sd, meta = load_reid_checkpoint(path)
    missing = [k for k in ("model", "num_classes", "height", "width") if k not in meta]
    if missing:
        raise ValueError(f"{path}: teacher checkpoint meta lacks {missing}")
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


@torch.no_grad()
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
    check_soft_temperature(temperature)
    model, meta = load_teacher(teacher, num_classes=lists.num_train_pids, pid_labels=lists.pid_labels)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    _, test_tf = build_reid_transforms(
        int(meta["height"]),
        int(meta["width"]),
        norm_mean=meta.get("norm_mean", IMAGENET_MEAN),
        norm_std=meta.get("norm_std", IMAGENET_STD),
    )
    todo = sorted(lists.synthetic if paths is None else set(paths))
    probs: dict[str, torch.Tensor] = {}
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        x = torch.stack([test_tf(load_image(p)) for p in chunk]).to(dev)
        logits = model.classifier(model(x))  # eval mode returns the classifier's input features
        p = F.softmax(logits.float() / temperature, dim=1).cpu()
        probs.update(zip(chunk, p, strict=True))
    return SoftTargets(
        probs=probs, temperature=float(temperature), teacher=str(teacher), num_classes=lists.num_train_pids
    )


class SoftLabelSoftmaxEngine(BatchAugmentSoftmaxEngine):
    """torchreid's softmax engine whose loss on synthetic images mixes in the teacher's soft targets.

    ``soft_targets`` (from :func:`teacher_soft_targets`) are looked up by the batch's ``impath``; an item with
    a target gets :func:`soft_label_loss`'s mixed loss (weight ``soft_weight``, the targets' temperature),
    the others the hard CE with the engine's own label smoothing. A batch item flagged ``synthetic`` without
    a target is an error. The batch hooks of :class:`BatchAugmentSoftmaxEngine` run first.
    """

    def __init__(
        self, *args: Any, soft_targets: SoftTargets, soft_weight: float = 0.5, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        check_soft_weight(soft_weight)
        self.soft_targets = soft_targets
        self.soft_weight = float(soft_weight)

    def soft_loss(self, data: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, logits, labels)`` of a batch (already augmented), with gradients."""
        imgs, pids = self.parse_data_for_train(data)
        imgs, pids = imgs.to(self.device), pids.to(self.device)
        paths = list(data["impath"])
        teacher, has = self.soft_targets.lookup(paths, self.device)
        if "synthetic" in data:
            flagged = torch.as_tensor(data["synthetic"], dtype=torch.bool).to(self.device)
            lacking = [
                p for p, f, h in zip(paths, flagged.tolist(), has.tolist(), strict=True) if f and not h
            ]
            if lacking:
                raise KeyError(f"{lacking[0]}: synthetic train image without a teacher soft target")
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

    def forward_backward(self, data: dict[str, Any]) -> dict[str, float]:
        loss, logits, pids = self.soft_loss(self.augment_batch(data))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "acc": metrics.accuracy(logits, pids)[0].item()}


__all__ = [
    "SoftLabelSoftmaxEngine",
    "SoftTargets",
    "check_soft_temperature",
    "check_soft_weight",
    "load_teacher",
    "soft_label_loss",
    "teacher_soft_targets",
]
