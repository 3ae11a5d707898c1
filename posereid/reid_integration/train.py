"""Train a torchreid model for a fixed number of optimisation steps, then evaluate (the library of
``posereid train-reid``, whose command line is in :mod:`posereid.reid_integration.cli`).

The re-ID gain protocol compares a baseline with an augmented training set (DESIGN.md §6). For that
comparison to be fair both arms must get the same number of updates, so training is a fixed budget of
``steps`` optimiser steps whatever the dataset size (torchreid's engine counts epochs instead). Each
step is one call of a torchreid engine's ``forward_backward`` (softmax or triplet + softmax loss, with
the optional batch hook of :class:`~posereid.reid_integration.torchreid_plugin.BatchAugmentEngine`);
the data loader restarts when an epoch ends. Evaluation uses posereid's fast evaluator on the query and
gallery splits. Outputs in ``--out``: ``results.json`` and ``model.safetensors`` (+ ``.json`` meta).

:class:`PosereidDataManager` stands in for torchreid's ``ImageDataManager`` (which drops the last batch,
so a set smaller than one batch trains nothing): it caps the batch to what the set can fill.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate.utils import set_seed
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torchvision.transforms import v2
from tqdm.auto import tqdm

from posereid.models.io_utils import atomic_write
from posereid.models.runtime import resolve_device
from posereid.reid_integration.evaluate import evaluate_features
from posereid.reid_integration.soft_labels import (
    SoftLabelSoftmaxEngine,
    check_soft_temperature,
    check_soft_weight,
    teacher_soft_targets,
)
from posereid.reid_integration.torchreid_plugin import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchAugmentSoftmaxEngine,
    BatchAugmentTripletEngine,
    BatchTransform,
    PosereidMarketDataset,
    ReidLists,
    build_reid_model,
    build_reid_transforms,
    save_reid_checkpoint,
    scan_reid_lists,
)

with warnings.catch_warnings():  # torchreid's "Cython evaluation is unavailable" (we do not use it)
    warnings.filterwarnings("ignore", message="Cython evaluation", category=UserWarning)
    from torchreid.reid.data.sampler import RandomIdentitySampler
    from torchreid.reid.optim import build_optimizer

logger = logging.getLogger(__name__)


def check_synthetic_ratio(ratio: float | None) -> None:
    """Raise ``ValueError`` unless ``ratio`` is ``None`` or a share in ``[0, 1)`` (1 would leave no real image)."""
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise ValueError(f"synthetic_ratio must be in [0, 1), got {ratio}")


@dataclass
class ReidTrainConfig:
    """Everything one re-ID training run depends on (written into results.json)."""

    data: str
    synthetic: Sequence[str] = ()
    model: str = "osnet_x0_25"
    loss: Literal["softmax", "triplet"] = "softmax"
    steps: int = 1000
    batch_size: int = 32
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    optimizer: str = "adam"
    warmup_frac: float = 0.1  # linear warm-up share of the steps, then cosine decay to 1 % of lr
    height: int = 128
    width: int = 64
    augment: Literal["plain", "strong"] = "plain"  # strong = random flip + random erasing
    # share of synthetic images in the batches (in expectation); None: uniform over real ∪ synthetic
    synthetic_ratio: float | None = None
    seed: int = 0
    out: str | None = None
    pretrained: str | None = None
    device: str | None = None
    num_instances: int = 4  # triplet loss: images per identity in a batch
    margin: float = 0.3
    workers: int = 0
    eval_batch_size: int = 128
    metric: Literal["euclidean", "cosine"] = "cosine"
    check_images: bool = True
    # the batch policy (BadInputPolicy): an unreadable image or a stray file in a folder is skipped and
    # counted in the results' "skipped"; strict stops at the first one with an error naming it
    strict: bool = False
    # teacher soft labels for the synthetic images (posereid.reid_integration.soft_labels): a re-ID
    # checkpoint trained on the same real train identities; None: hard labels only
    soft_teacher: Path | None = None
    soft_weight: float | str = (
        0.5  # w: the soft term's share of a synthetic image's loss, in [0, 1], or 'agree'
    )
    soft_temperature: float = 1.0  # T > 0 of the teacher's and the student's softmax
    extra: dict[str, Any] = field(default_factory=dict)  # free-form tags recorded with the results

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.loss not in ("softmax", "triplet"):
            raise ValueError(f"loss must be 'softmax' or 'triplet', got {self.loss!r}")
        if self.augment not in ("plain", "strong"):
            raise ValueError(f"augment must be 'plain' or 'strong', got {self.augment!r}")
        check_synthetic_ratio(self.synthetic_ratio)
        if self.synthetic_ratio is not None:
            if self.loss == "triplet":
                raise ValueError(
                    "synthetic_ratio needs the softmax loss (the triplet loss samples by identity)"
                )
        if not 0.0 <= self.warmup_frac < 1.0:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")  # numpy's seed range
        self.synthetic = tuple(str(s) for s in self.synthetic)
        self.soft_weight = check_soft_weight(self.soft_weight)
        check_soft_temperature(self.soft_temperature)
        if self.soft_teacher is not None:
            self.soft_teacher = Path(self.soft_teacher)
            if self.loss != "softmax":
                raise ValueError(
                    "soft_teacher needs the softmax loss (the soft-label engine is a softmax engine)"
                )
            if not self.synthetic:
                raise ValueError(
                    "soft_teacher needs synthetic folders (its soft labels are for synthetic images)"
                )

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["synthetic"] = list(self.synthetic)
        d["soft_teacher"] = None if self.soft_teacher is None else str(self.soft_teacher)
        return d


class PosereidDataManager:
    """The parts of ``torchreid.data.ImageDataManager`` an engine uses, for one posereid dataset.

    Unlike torchreid's manager it never drops a whole tiny train set: the train batch is capped to what
    the set (and, for the identity sampler, ``identities × num_instances``) can fill, so every batch is
    full and every epoch has at least one batch. Sampling is seeded by ``seed``.
    """

    data_type = "image"

    def __init__(
        self,
        lists: ReidLists,
        *,
        train_transform: Callable,
        test_transform: Callable,
        batch_size: int = 32,
        batch_size_test: int = 128,
        sampler: Literal["RandomSampler", "RandomIdentitySampler"] = "RandomSampler",
        num_instances: int = 4,
        workers: int = 0,
        seed: int = 0,
        name: str = "posereid",
        use_gpu: bool = False,
        synthetic_ratio: float | None = None,
    ) -> None:
        def ds(mode: str, tf: Callable) -> PosereidMarketDataset:
            return PosereidMarketDataset(lists=lists, transform=tf, mode=mode)

        train = ds("train", train_transform)
        n = len(train.train)
        if n < 2:
            raise ValueError(f"need at least 2 training images (batch norm), got {n}")
        # Cap on the REAL images: an arm with synthetic images added must train on the same batch size as
        # its baseline, or the two would differ in more than the data.
        n_real = n - lists.num_synthetic
        self.batch_size = max(2, min(int(batch_size), n_real))
        self.generator = torch.Generator().manual_seed(int(seed))
        if sampler == "RandomIdentitySampler":
            k = max(1, min(int(num_instances), self.batch_size))
            pids_per_batch = max(1, min(self.batch_size // k, lists.num_train_pids))
            self.batch_size = pids_per_batch * k
            if self.batch_size < 2:
                raise ValueError("the identity sampler needs batch_size >= 2 and num_instances >= 1")
            train_sampler = RandomIdentitySampler(train.train, self.batch_size, k)
        elif sampler == "RandomSampler" and synthetic_ratio is not None and 0 < lists.num_synthetic < n:
            # epochs keep their length; each draw is synthetic with probability synthetic_ratio
            is_syn = torch.tensor([item[0] in lists.synthetic for item in train.train], dtype=torch.bool)
            weights = torch.where(
                is_syn, synthetic_ratio / lists.num_synthetic, (1.0 - synthetic_ratio) / n_real
            ).double()
            train_sampler = torch.utils.data.WeightedRandomSampler(
                weights, num_samples=n, replacement=True, generator=self.generator
            )
        elif sampler == "RandomSampler":
            train_sampler = torch.utils.data.RandomSampler(train, generator=self.generator)
        else:
            raise ValueError(f"sampler must be RandomSampler or RandomIdentitySampler, got {sampler!r}")
        if self.batch_size != batch_size:
            logger.info("train batch size capped from %d to %d for this set", batch_size, self.batch_size)
        loader_kw = {"num_workers": workers, "pin_memory": use_gpu, "generator": self.generator}
        self.train_loader = torch.utils.data.DataLoader(
            train, sampler=train_sampler, batch_size=self.batch_size, drop_last=True, **loader_kw
        )
        self.test_loader = {
            name: {
                mode: torch.utils.data.DataLoader(
                    ds(mode, test_transform),
                    batch_size=batch_size_test,
                    shuffle=False,
                    drop_last=False,
                    **loader_kw,
                )
                for mode in ("query", "gallery")
            }
        }
        self.sources = self.targets = [name]
        self.train_set = train
        self._num_train_pids = lists.num_train_pids
        self._num_train_cams = train.num_train_cams

    @property
    def num_train_pids(self) -> int:
        return self._num_train_pids

    @property
    def num_train_cams(self) -> int:
        return self._num_train_cams

    def fetch_test_loaders(self, name: str):
        return self.test_loader[name]["query"], self.test_loader[name]["gallery"]


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, steps: int, warmup_frac: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up over ``round(steps · warmup_frac)`` steps (from ``lr / warm`` to ``lr``), then cosine
    decay to 1 % of ``lr`` at ``steps`` (torch's ``LinearLR`` → ``CosineAnnealingLR``)."""
    warm = int(round(steps * warmup_frac))
    base = optimizer.param_groups[0]["lr"]
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, steps - warm), eta_min=0.01 * base)
    if warm == 0:
        return cosine
    linear = LinearLR(optimizer, start_factor=1.0 / warm, end_factor=1.0, total_iters=max(1, warm - 1))
    return SequentialLR(optimizer, [linear, cosine], milestones=[warm])


@torch.no_grad()
def extract_loader_features(
    model: torch.nn.Module, loader, device: torch.device
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Eval-mode features, pids and camids of a torchreid-style loader (images already normalised)."""
    model.eval()
    feats, pids, camids = [], [], []
    for data in loader:
        feats.append(model(data["img"].to(device)).float().cpu())
        pids.append(np.asarray(data["pid"]))
        camids.append(np.asarray(data["camid"]))
    return torch.cat(feats), np.concatenate(pids), np.concatenate(camids)


def check_output_dir(out: str | os.PathLike[str]) -> None:
    """Refuse, before any training, an output folder that cannot be one: ``out`` or the nearest of its
    parents that exists is a file, or that parent cannot be written to (an OS error naming the path)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            "--out is a file, not a folder (train-reid writes results.json and model.safetensors into "
            "a folder); choose another --out",
            str(path),
        )
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, f"--out {path} cannot be created: this part of it is a file", str(parent)
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"--out {path} cannot be written", str(parent))


def train_reid(
    config: ReidTrainConfig,
    *,
    batch_transform: BatchTransform | None = None,
    dataset_transform: Callable | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train for exactly ``config.steps`` optimiser steps, evaluate, save; return the results dict.

    An ``config.out`` that cannot be a folder is refused before anything is trained (:func:`check_output_dir`).

    Args:
        batch_transform: ``(imgs in [0, 1] on device, pids) -> imgs`` run on every training batch before
            the forward pass (e.g. online pose-transfer augmentation).
        dataset_transform: a per-image transform on ``(3, H, W)`` float tensors in ``[0, 1]`` (any
            torchvision v2 transform), applied after resizing in the train pipeline.
    """
    t0 = time.perf_counter()
    if config.out:
        check_output_dir(config.out)  # not after the training: an --out that is a file fails now
    set_seed(config.seed)  # python, numpy (torchreid's identity sampler uses both) and torch
    device = resolve_device(config.device)
    use_gpu = device.type == "cuda"
    if use_gpu and device.index is not None:
        torch.cuda.set_device(device)  # torchreid's engine and loss move tensors with a bare .cuda()
    lists = scan_reid_lists(
        config.data,
        config.synthetic,
        check_images=config.check_images,
        strict=config.strict,
        progress=progress,
    )
    strong = config.augment == "strong"
    # erasing runs after the batch hook, so a generator never sees erased patches
    train_tf, test_tf = build_reid_transforms(
        config.height, config.width, flip=strong, extra=dataset_transform
    )
    post_tf = v2.RandomErasing(p=0.5, value=0) if strong else None
    manager = PosereidDataManager(
        lists,
        train_transform=train_tf,
        test_transform=test_tf,
        batch_size=config.batch_size,
        batch_size_test=config.eval_batch_size,
        sampler="RandomIdentitySampler" if config.loss == "triplet" else "RandomSampler",
        num_instances=config.num_instances,
        workers=config.workers,
        seed=config.seed,
        use_gpu=use_gpu,
        synthetic_ratio=config.synthetic_ratio,
    )
    model = build_reid_model(
        config.model, lists.num_train_pids, loss=config.loss, pretrained=config.pretrained
    ).to(device)
    optimizer = build_optimizer(model, optim=config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = build_lr_scheduler(optimizer, config.steps, config.warmup_frac)
    hooks = {"batch_transform": batch_transform, "post_transform": post_tf}
    if config.loss == "triplet":
        engine = BatchAugmentTripletEngine(
            manager, model, optimizer, margin=config.margin, use_gpu=use_gpu, **hooks
        )
    elif config.soft_teacher is not None:
        with torch.random.fork_rng(devices=[]):  # building the teacher draws no number the student's run uses
            soft = teacher_soft_targets(
                config.soft_teacher,
                lists,
                temperature=config.soft_temperature,
                device=device,
                batch_size=config.eval_batch_size,
            )
        engine = SoftLabelSoftmaxEngine(
            manager,
            model,
            optimizer,
            use_gpu=use_gpu,
            soft_targets=soft,
            soft_weight=config.soft_weight,
            **hooks,
        )
    else:
        engine = BatchAugmentSoftmaxEngine(manager, model, optimizer, use_gpu=use_gpu, **hooks)

    counter = {"steps": 0, "synthetic_seen": 0, "images_seen": 0}
    handle = optimizer.register_step_post_hook(lambda *_: counter.__setitem__("steps", counter["steps"] + 1))
    losses: list[float] = []
    model.train()
    batches = iter(manager.train_loader)
    bar = tqdm(range(config.steps), desc=f"train-reid {config.model}", unit="step", disable=not progress)
    for step in bar:
        try:
            data = next(batches)
        except StopIteration:
            batches = iter(manager.train_loader)
            data = next(batches)
        summary = engine.forward_backward(data)
        scheduler.step()
        loss = float(sum(v for k, v in summary.items() if k.startswith("loss")))
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss} at step {step + 1}")
        losses.append(loss)
        counter["images_seen"] += len(data["pid"])
        counter["synthetic_seen"] += int(torch.as_tensor(data["synthetic"]).sum())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")
    handle.remove()
    train_time = time.perf_counter() - t0

    query_loader, gallery_loader = manager.fetch_test_loaders("posereid")
    qf, q_pids, q_cams = extract_loader_features(model, query_loader, device)
    gf, g_pids, g_cams = extract_loader_features(model, gallery_loader, device)
    metrics = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=config.metric)

    results: dict[str, Any] = {
        **metrics,
        "steps": counter["steps"],
        "batch_size": manager.batch_size,
        "images": len(lists.train),
        "real_images": len(lists.train) - lists.num_synthetic,
        "synthetic_images": lists.num_synthetic,
        "identities": lists.num_train_pids,
        "images_seen": counter["images_seen"],
        "synthetic_seen": counter["synthetic_seen"],
        "query_images": len(lists.query),
        "gallery_images": len(lists.gallery),
        "skipped": lists.skipped,
        "soft_labels": None
        if config.soft_teacher is None
        else {
            "teacher": str(config.soft_teacher),
            "weight": config.soft_weight,
            "temperature": config.soft_temperature,
            "targets": len(soft),
            # share of synthetic images whose teacher argmax is their source pid
            "teacher_agreement": soft.agreement({path: label for path, label, _, _ in lists.train}),
        },
        "final_loss": float(np.mean(losses[-10:])),
        "seed": config.seed,
        "config": config.to_json(),
        "train_time_s": round(train_time, 3),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "device": str(device),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    if config.out:
        out = Path(config.out)
        meta = {
            "model": config.model,
            "num_classes": lists.num_train_pids,
            "loss": config.loss,
            "height": config.height,
            "width": config.width,
            "norm_mean": list(IMAGENET_MEAN),
            "norm_std": list(IMAGENET_STD),
            "pid_labels": lists.pid_labels,
            "steps": counter["steps"],
            "seed": config.seed,
            "rank1": metrics["rank1"],
            "mAP": metrics["mAP"],
        }
        save_reid_checkpoint(out / "model.safetensors", model, meta=meta)
        with atomic_write(out / "results.json") as fh:
            fh.write(json.dumps(results, indent=2, sort_keys=True) + "\n")
        results["checkpoint"] = str(out / "model.safetensors")
    logger.info(
        "train-reid: rank1 %.4f  mAP %.4f  (%d steps, %d images, %d synthetic)",
        metrics["rank1"],
        metrics["mAP"],
        counter["steps"],
        results["images"],
        results["synthetic_images"],
    )
    return results
