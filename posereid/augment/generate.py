"""Offline generation of synthetic people into a Market-1501-format folder (the library of ``posereid
generate``, whose command line is in :mod:`posereid.augment.cli`).

For every real train image (pid > 0) of a Market-1501 folder, ``per_image`` images of the same person in
target poses from a :class:`~posereid.augment.pose_bank.PoseBank` are written to
``OUT/bounding_box_train/`` under the SOURCE pid (torchreid reads them as more images of that identity,
never as new identities), with one JSON line per image in ``OUT/manifest.jsonl``. This module holds the
run's settings (:class:`GenerateConfig`), the plan and the generation loop (:func:`generate_offline`); the
folder's file names, manifest format, run config and resume clean-up are in
:mod:`posereid.augment.manifest` (its names are re-exported here).

**Plan.** Output item ``i = source_index * per_image + k`` uses the pose and seed drawn from
``numpy.random.default_rng([seed, source_index, k])``: a deterministic function of (seed, source, k),
independent of batching, sharding and interruptions. Sources are the train records sorted by name.

**Crash safety / resume.** Killed at any moment (SIGKILL included) and rerun with the same settings, a run
reconciles the folder (see :mod:`posereid.augment.manifest`) and then skips every item already done;
resuming with different settings is an error (use a new ``--out``).

**Keypoint frame.** The source annotations (and a pose bank built from them) are read in the frame of the
images they annotate, or ``GenerateConfig.annotation_hw`` / ``--annotation-size HxW`` when given; a
keypoint outside it, or annotated images of mixed sizes without an explicit frame, stop the run with an
error naming the file (and line) — see :func:`~posereid.reid_integration.market1501.load_annotations`.

**Shards.** ``GenerateConfig.shard=(i, n)`` takes the items with ``index % n == i`` and appends to
``manifest.shard-i-of-n.jsonl``; shards can run at the same time on one folder (one process per shard).
Each run holds the folder's locks for a shard (:class:`~posereid.models.locks.GeneratedFolderLock`) while it
works: the folder lock shared and its shard's lock ``OUT/.lock-shard-i-of-n``. A second run of the same
shard, a run with another shard count, or a ``filter`` on the same folder, on this host or another sharing
the disk, stops at once naming the first; a killed run's locks are taken over by the next run.
Under ``accelerate launch`` the shard defaults to ``(process_index, num_processes)``.
:func:`read_manifest` reads all parts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from posereid.argtypes import MAX_PER_IMAGE
from posereid.augment.manifest import (
    CONFIG_FILE,
    MANIFEST_NAME,
    REJECTED_DIR,
    SYNTHETIC_SEQ,
    TRAIN_DIR,
    GenerateConfigError,
    GenerateSummary,
    append_manifest_line,
    check_run_config,
    manifest_part_name,
    manifest_paths,
    parse_synthetic_name,
    read_manifest,
    read_manifest_file,
    reconcile,
    synthetic_name,
    write_manifest_file,
)
from posereid.augment.pose_bank import SAMPLINGS, PoseBank
from posereid.augment.sampling_settings import resolve_sampling
from posereid.models.images import pil_to_tensor01, tensor01_to_pil
from posereid.models.io_utils import atomic_save, atomic_write
from posereid.models.locks import GeneratedFolderLock
from posereid.models.pose import missing_pose, resize_keypoints, skeleton_tensor
from posereid.models.sampling import SAMPLERS
from posereid.reid_integration.market1501 import (
    BadInputPolicy,
    ImageReadError,
    Market1501,
    MarketFormatError,
    MarketRecord,
    image_size_problem,
    load_annotations,
    load_image,
)

if TYPE_CHECKING:
    from posereid.models.contract import PoseTransferSampler

logger = logging.getLogger(__name__)

_SEED_HIGH = 2**31 - 1


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def generator_sha256(generator: torch.nn.Module) -> str:
    """SHA-256 of the generator's weights serialised as safetensors (``{"format": "pt"}`` metadata).

    For a one-model pipeline (``model.*`` names) this equals the sha256 of the
    ``diffusion_pytorch_model.safetensors`` that ``save_pretrained`` writes for the same weights, and
    identifies the weights actually used (EMA ones when loaded from EMA).
    """
    from safetensors.torch import save

    state = {
        k.removeprefix("model."): v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()
    }
    return hashlib.sha256(save(state, metadata={"format": "pt"})).hexdigest()


def _write_image(path: Path, image: Image.Image, quality: int = 95) -> None:
    """JPEG via :func:`atomic_write`: the temp name ``NAME.tmp-<pid>`` never matches torchreid's ``*.jpg``."""
    with atomic_write(path, "wb") as fh:
        image.save(fh, format="JPEG", quality=quality)


def _to_pil(img: torch.Tensor, size: tuple[int, int] | None) -> Image.Image:
    im = tensor01_to_pil(img)
    if size is not None and (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return im


def _auto_shard() -> tuple[int, int]:
    """``(process_index, num_processes)`` under ``accelerate launch`` / ``torchrun``, else ``(0, 1)``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState()
        return state.process_index, state.num_processes
    return 0, 1


@dataclass(frozen=True)
class PlanItem:
    """One output: item ``index`` = ``source_index * per_image + k``."""

    index: int
    source_index: int
    k: int
    name: str


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------
def _whole(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"GenerateConfig.{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def _finite(name: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"GenerateConfig.{name} must be a finite number, got {value!r}")
    return number


def _size(name: str, value: object) -> tuple[int, int] | None:
    """``None`` or two whole numbers >= 1, as a tuple."""
    if value is None:
        return None
    try:
        h, w = value  # type: ignore[misc]
        return _whole(name, h, 1), _whole(name, w, 1)
    except (TypeError, ValueError):
        raise ValueError(
            f"GenerateConfig.{name} must be (H, W) with H, W >= 1, or None, got {value!r}"
        ) from None


@dataclass
class GenerateConfig:
    """The settings of one offline generation run (:func:`generate_offline`), checked when made: a bad
    value raises ``ValueError`` naming the field.

    Everything that decides which images are written, and how, is here; the generator, the Market folder
    and its annotations, the pose bank and the identity filter are :func:`generate_offline`'s arguments.

    Attributes:
        out_dir: the output folder (Market format + manifest).
        per_image: synthetic images per source image (>= 1).
        sampling: pose bank strategy (:data:`~posereid.augment.pose_bank.SAMPLINGS`).
        steps, sampler, guidance: passed to ``generator.generate`` (``guidance``: (pose, appearance));
            ``None`` (the default): the checkpoint's, i.e. a few-step checkpoint's own sampler at its default
            step count and guidance (1, 1), else 20 DPM-Solver++ steps at guidance 2
            (:func:`~posereid.augment.sampling_settings.resolve_sampling`). :func:`generate_offline` records
            the resolved values in the folder's run config and every manifest line.
        batch_size: sources per ``generator.generate`` call.
        seed: the plan's seed (>= 0). shard: ``(i, n)`` with ``0 <= i < n``; ``None`` → from accelerate,
            else ``(0, 1)``.
        filter_threshold: with an identity filter, images scoring below it go to ``out_dir/rejected/``.
        filter_score: ``similarity`` or ``margin`` (what the threshold applies to).
        annotation_hw: the ``(H, W)`` frame of the annotations' coordinates; ``None``: the size of the images
            they annotate (mixed sizes are an error then; see
            :func:`~posereid.reid_integration.market1501.annotation_frame`).
        out_size: ``(H, W)`` of the written images (default: the source image's size).
        grid_items: rows of the ``samples*.png`` grid (source | target skeleton | generated); 0 = none.
        autocast_dtype: autocast dtype of the generator's forward passes (``None``: none).
        progress: show a progress bar.
        strict: stop at the first unreadable source image (or stray file in the Market folder) with an
            error naming it, instead of skipping it and counting it in ``failed_items`` (the default).
    """

    out_dir: Path
    per_image: int
    sampling: str = "uniform"
    steps: int | None = None
    sampler: str | None = None
    guidance: tuple[float, float] | None = None
    batch_size: int = 16
    seed: int = 0
    shard: tuple[int, int] | None = None
    filter_threshold: float | None = None
    filter_score: Literal["similarity", "margin"] = "similarity"
    annotation_hw: tuple[int, int] | None = None
    out_size: tuple[int, int] | None = None
    grid_items: int = 8
    autocast_dtype: torch.dtype | None = None
    progress: bool = True
    strict: bool = False

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.per_image = _whole("per_image", self.per_image, 1)
        if self.per_image > MAX_PER_IMAGE:
            raise ValueError(
                f"GenerateConfig.per_image must be <= {MAX_PER_IMAGE} (the 2-digit box field of a synthetic "
                f"name numbers the images of one source), got {self.per_image}"
            )
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"GenerateConfig.sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.steps is not None:
            self.steps = _whole("steps", self.steps, 1)
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(
                f"GenerateConfig.sampler must be one of {sorted(SAMPLERS)} or None (the checkpoint's), got "
                f"{self.sampler!r}"
            )
        if self.guidance is not None:
            try:
                pose, appearance = self.guidance
            except (TypeError, ValueError):
                raise ValueError(
                    "GenerateConfig.guidance must be two numbers (pose, appearance) or None (the checkpoint's), "
                    f"got {self.guidance!r}"
                ) from None
            self.guidance = (_finite("guidance", pose), _finite("guidance", appearance))
        self.batch_size = _whole("batch_size", self.batch_size, 1)
        self.seed = _whole("seed", self.seed, 0)
        if self.shard is not None:
            try:
                i, n = (int(v) for v in self.shard)
            except (TypeError, ValueError):
                raise ValueError(f"GenerateConfig.shard must be (i, n) or None, got {self.shard!r}") from None
            if not 0 <= i < n:
                raise ValueError(f"GenerateConfig.shard {self.shard}: need 0 <= i < n")
            self.shard = (i, n)
        if self.filter_threshold is not None:
            self.filter_threshold = _finite("filter_threshold", self.filter_threshold)
        if self.filter_score not in ("similarity", "margin"):
            raise ValueError(
                f"GenerateConfig.filter_score must be 'similarity' or 'margin', got {self.filter_score!r}"
            )
        self.annotation_hw = _size("annotation_hw", self.annotation_hw)
        self.out_size = _size("out_size", self.out_size)
        self.grid_items = _whole("grid_items", self.grid_items, 0)
        if self.autocast_dtype is not None and not isinstance(self.autocast_dtype, torch.dtype):
            raise ValueError(
                f"GenerateConfig.autocast_dtype must be a torch.dtype or None, got {self.autocast_dtype!r}"
            )

    def resolved(self, generator: Any) -> GenerateConfig:
        """This config with ``steps`` / ``sampler`` / ``guidance`` resolved for ``generator`` (``None``: the
        checkpoint's; a few-step setting it cannot sample raises ``ValueError``): what is sampled and
        recorded."""
        setting = resolve_sampling(generator, steps=self.steps, sampler=self.sampler, guidance=self.guidance)
        return dataclasses.replace(self, **setting)


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------
def plan_draws(seed: int, source_index: int, k: int, bank: PoseBank, sampling: str) -> tuple[int, int]:
    """``(pose index, generation seed)`` of output ``k`` of source ``source_index``: a pure function of
    its arguments, which is what makes generation resumable and shardable."""
    rng = np.random.default_rng([int(seed), int(source_index), int(k)])
    pose_index = int(bank.sample_indices(1, rng, sampling=sampling)[0])
    return pose_index, int(rng.integers(0, _SEED_HIGH))


@dataclass
class _Plan:
    """What a run generates: its sources, their keypoints (in ``frame``), the pose bank and this shard's
    items."""

    market: Market1501
    sources: list[MarketRecord]
    ann: Mapping[str, np.ndarray]
    frame: tuple[int, int] | None  # None: no annotation row is an image of the folder
    bank: PoseBank
    mine: list[PlanItem]


def _plan(
    config: GenerateConfig,
    market_root: str | os.PathLike[str],
    annotations: str | os.PathLike[str] | Mapping[str, np.ndarray],
    pose_bank: PoseBank | None,
    shard: tuple[int, int],
) -> _Plan:
    """Parse the folder and its annotations, and plan every item (this shard's are returned)."""
    market = Market1501(market_root, strict=config.strict)
    sources = [r for r in market.train if r.has_identity]
    if not sources:
        raise ValueError(f"{market.root}: no train image with a pid > 0 to generate from")
    # the frame of the keypoints is that of the images they annotate (or the explicit annotation_hw), and
    # every keypoint is checked to lie in it; frame None: no row annotates an image of market_root
    ann, frame = load_annotations(annotations, market, frame=config.annotation_hw, required=False)
    bank = pose_bank if pose_bank is not None else PoseBank.from_market(market_root, ann, image_hw=frame)
    items = [
        PlanItem(s * config.per_image + k, s, k, synthetic_name(rec.name, k))
        for s, rec in enumerate(sources)
        for k in range(config.per_image)
    ]
    real_names = {r.name for split in ("train", "query", "gallery", "gt_bbox") for r in market.split(split)}
    clash = sorted({it.name for it in items} & real_names)
    if clash:
        raise MarketFormatError(f"{market.root}: synthetic names collide with real images, e.g. {clash[0]}")
    mine = [it for it in items if it.index % shard[1] == shard[0]]
    return _Plan(market, sources, ann, frame, bank, mine)


def _run_config(config: GenerateConfig, plan: _Plan, gen_hash: str, filtered: bool) -> dict[str, Any]:
    """The settings recorded in the folder's run config; a resume must match them all."""
    bank, sources = plan.bank, plan.sources
    bank_hash = hashlib.sha256(bank.keypoints.tobytes() + "\n".join(bank.names).encode()).hexdigest()
    src_hash = hashlib.sha256("\n".join(r.name for r in sources).encode()).hexdigest()
    return {
        "format": 1, "seed": config.seed, "per_image": config.per_image, "sampling": config.sampling,
        "generator_sha256": gen_hash, "steps": config.steps, "sampler": config.sampler,
        "guidance": list(config.guidance), "pose_bank_sha256": bank_hash,
        "pose_frame": list(bank.image_hw), "sources": len(sources), "sources_sha256": src_hash,
        "out_size": None if config.out_size is None else list(config.out_size),
        # what decides kept/rejected and the source keypoints of items still to come: a resume with other
        # values would mix two runs in one folder
        "annotation_hw": None if plan.frame is None else list(plan.frame), "filter": filtered,
        "filter_threshold": config.filter_threshold, "filter_score": config.filter_score,
    }  # fmt: skip


def _resume(
    out_dir: Path, part: Path, mine: list[PlanItem], run_config: dict[str, Any], summary: GenerateSummary
) -> list[PlanItem]:
    """Check the run config against the folder's, clean up what a killed run left, and return the items
    still to do (the shard's lock is held)."""
    (out_dir / TRAIN_DIR).mkdir(exist_ok=True)
    check_run_config(out_dir, run_config)
    done = reconcile(out_dir, part, {it.name for it in mine}, summary)
    pending = [it for it in mine if it.name not in done]
    summary.already_done = len(mine) - len(pending)
    return pending


@dataclass
class _Prepared:
    item: PlanItem
    source: torch.Tensor  # (3, H, W) at the generator's size, [0, 1]
    source_hw: tuple[int, int]
    source_kps: np.ndarray  # (18, 2) at the generator's size
    pose_index: int
    seed: int


class _Run:
    """The generation loop of :func:`generate_offline`: loads sources, generates, scores, and writes
    images and manifest lines."""

    def __init__(
        self,
        config: GenerateConfig,
        generator: PoseTransferSampler,
        plan: _Plan,
        part: Path,
        summary: GenerateSummary,
        identity_filter: Any,
        gen_hash: str,
    ) -> None:
        self.config, self.generator, self.plan, self.part = config, generator, plan, part
        self.summary, self.identity_filter = summary, identity_filter
        self.bad = BadInputPolicy(config.strict)
        self.gen_hw = tuple(int(v) for v in generator.image_size)
        self.device = torch.device(generator.device)
        #: what every manifest line records about how its image was made
        self.settings = {
            "generator_sha256": gen_hash,
            "steps": config.steps,
            "sampler": config.sampler,
            "guidance": list(config.guidance),
            "sampling": config.sampling,
        }

    def run(self, pending: Sequence[PlanItem]) -> None:
        """Generate ``pending`` in batches, then save the sample grid."""
        cfg = self.config
        grid: list[torch.Tensor] = []
        bar = tqdm(
            total=len(pending), desc=f"generate {self.summary.shard}", unit="img", disable=not cfg.progress
        )
        for start in range(0, len(pending), cfg.batch_size):
            chunk = pending[start : start + cfg.batch_size]
            tiles = self.generate_batch(chunk, tiles=len(grid) < cfg.grid_items * 3)
            grid = [*grid, *tiles][: cfg.grid_items * 3]
            bar.update(len(chunk))
        bar.close()
        if grid:
            _save_grid(cfg.out_dir / f"samples{self.part.stem[len('manifest') :]}.png", grid)

    def generate_batch(self, chunk: Sequence[PlanItem], *, tiles: bool = False) -> list[torch.Tensor]:
        """Generate, score and write the items of ``chunk``; with ``tiles``, return their sample grid tiles
        (source | target skeleton | generated, per item)."""
        cfg, bank = self.config, self.plan.bank
        batch = self.prepare(chunk)
        if not batch:
            return []
        src = torch.stack([b.source for b in batch]).to(self.device)
        targets = bank.get([b.pose_index for b in batch], size=self.gen_hw)
        images = self.generator.generate(
            src,
            torch.from_numpy(targets).to(self.device),
            torch.from_numpy(np.stack([b.source_kps for b in batch])).to(self.device),
            steps=cfg.steps,
            sampler=cfg.sampler,
            guidance=tuple(cfg.guidance),
            seeds=[b.seed for b in batch],
            autocast_dtype=cfg.autocast_dtype,
        ).cpu()
        sims = margins = None
        if self.identity_filter is not None:
            sims, margins = self.identity_filter.score(
                images, [self.plan.sources[b.item.source_index].pid for b in batch]
            )
        for j, b in enumerate(batch):
            score = (
                None if sims is None else float((sims if cfg.filter_score == "similarity" else margins)[j])
            )
            kept = cfg.filter_threshold is None or score is None or score >= cfg.filter_threshold
            entry = {
                **self.settings,
                "filter_score": None if sims is None else round(float(sims[j]), 6),
                "filter_margin": None if margins is None else round(float(margins[j]), 6),
                "kept": bool(kept),
            }
            self.write(b, images[j], cfg.out_dir / (TRAIN_DIR if kept else REJECTED_DIR), entry)
        if not tiles:
            return []
        skel = skeleton_tensor(targets, *self.gen_hw)
        return [tile for j in range(len(batch)) for tile in (src[j].cpu(), skel[j], images[j])]

    def prepare(self, items: Sequence[PlanItem]) -> list[_Prepared]:
        """Load the sources of ``items`` (an unreadable one is counted, logged and skipped; with
        ``strict`` it raises, naming the file)."""
        frame, out = self.plan.frame, []
        for it in items:
            rec = self.plan.sources[it.source_index]
            try:
                im = load_image(rec.path)
            except ImageReadError as exc:
                self._skip(it, exc, "unreadable source image(s)")
                continue
            problem = image_size_problem((im.height, im.width), frame or self.gen_hw)
            if problem is not None:
                self._skip(it, ImageReadError(f"{rec.path}: {problem}"), "source image(s) of a bad size")
                continue
            kps = self.plan.ann.get(rec.name)
            if kps is None or frame is None:
                kps = missing_pose()
            else:  # checked to lie in the frame when read: the rescale never drops a joint
                kps = resize_keypoints(kps, frame, self.gen_hw)
            pose_index, seed = plan_draws(
                self.config.seed, it.source_index, it.k, self.plan.bank, self.config.sampling
            )
            src = pil_to_tensor01(im.resize((self.gen_hw[1], self.gen_hw[0]), Image.Resampling.BILINEAR))
            out.append(_Prepared(it, src, (im.height, im.width), kps, pose_index, seed))
        return out

    def _skip(self, item: PlanItem, exc: ImageReadError, kind: str) -> None:
        """A source that cannot be used: raised when strict, else counted as a failed item and logged."""
        self.bad.skip_or_raise(exc, kind)
        self.summary.failed_items += 1
        self.summary.failures.append(str(exc))
        logger.warning("skipping %s: %s", item.name, exc)

    def write(self, b: _Prepared, image: torch.Tensor, dest: Path, extra: dict) -> None:
        """Image into place first, then its manifest line (fsynced): a kill never leaves a line without
        its image."""
        rec, bank = self.plan.sources[b.item.source_index], self.plan.bank
        dest.mkdir(exist_ok=True)
        _write_image(dest / b.item.name, _to_pil(image, self.config.out_size or b.source_hw))
        entry = {
            "name": b.item.name, "index": b.item.index, "k": b.item.k, "source": rec.name,
            "source_pid": rec.pid, "camid": rec.camid,
            "target_pose": np.round(bank.get(b.pose_index), 2).tolist(),
            "pose_frame": list(bank.image_hw), "target_source": bank.names[b.pose_index],
            "seed": b.seed, **extra,
        }  # fmt: skip
        append_manifest_line(self.part, entry)
        self.summary.generated += 1
        self.summary.rejected += int(not extra["kept"])


def generate_offline(
    config: GenerateConfig,
    generator: PoseTransferSampler,
    market_root: str | os.PathLike[str],
    annotations: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    pose_bank: PoseBank | None = None,
    identity_filter: Any = None,
) -> GenerateSummary:
    """Generate ``config.per_image`` synthetic images per real train image into ``config.out_dir``
    (resumable; see the module docstring).

    Args:
        config: the run's settings (:class:`GenerateConfig`).
        generator: any family's :class:`~posereid.models.contract.PoseTransferGenerator` (on the device to run on).
        market_root: Market-1501 folder; its ``bounding_box_train`` images (pid > 0) are the sources.
        annotations: PATN CSV (or ``name → (18, 2)`` mapping) with source keypoints in
            ``config.annotation_hw``; sources without a row are given no source pose. A keypoint outside
            the frame raises :class:`MarketFormatError` naming the file and line; nothing is squeezed or
            clamped.
        pose_bank: target poses (default: the annotated train images of ``market_root``, in the same frame).
        identity_filter: an :class:`~posereid.augment.filter.IdentityFilter`; scores go into the
            manifest, and with ``config.filter_threshold`` images scoring below it go to ``rejected/``.
    """
    t_start = time.perf_counter()
    if config.filter_threshold is not None and identity_filter is None:
        raise ValueError("filter_threshold needs an identity_filter (a re-ID checkpoint)")
    shard = _auto_shard() if config.shard is None else config.shard
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard {shard}: need 0 <= i < n")
    out_dir = config.out_dir
    part = out_dir / manifest_part_name(shard)
    summary = GenerateSummary(shard=f"{shard[0]}/{shard[1]}", manifest=str(part))

    config = config.resolved(generator)  # the checkpoint's setting where none was given, recorded as used
    summary.sampling = {"steps": config.steps, "sampler": config.sampler, "guidance": list(config.guidance)}
    plan = _plan(config, market_root, annotations, pose_bank, shard)
    summary.planned = len(plan.mine)
    gen_hash = generator_sha256(generator)
    run_config = _run_config(config, plan, gen_hash, filtered=identity_filter is not None)
    # one process per shard, one shard count per folder and no filter meanwhile: a run in the way of
    # another stops here, naming it
    with GeneratedFolderLock(out_dir, what="posereid generate", shard=shard):
        pending = _resume(out_dir, part, plan.mine, run_config, summary)
        _Run(config, generator, plan, part, summary, identity_filter, gen_hash).run(pending)
    summary.seconds = time.perf_counter() - t_start
    summary.images_per_s = summary.generated / summary.seconds if summary.seconds > 0 else 0.0
    logger.info("generate %s: %s", out_dir, {k: v for k, v in summary.as_dict().items() if k != "failures"})
    return summary


def _save_grid(path: Path, tiles: list[torch.Tensor]) -> None:
    from torchvision.utils import make_grid, save_image

    grid = make_grid(torch.stack(tiles), nrow=3, padding=2, pad_value=1.0)
    atomic_save(path, lambda tmp: save_image(grid, str(tmp), format="png"))


__all__ = [
    "CONFIG_FILE",
    "MANIFEST_NAME",
    "REJECTED_DIR",
    "SYNTHETIC_SEQ",
    "TRAIN_DIR",
    "GenerateConfig",
    "GenerateConfigError",
    "GenerateSummary",
    "PlanItem",
    "generate_offline",
    "generator_sha256",
    "manifest_paths",
    "parse_synthetic_name",
    "plan_draws",
    "read_manifest",
    "read_manifest_file",
    "synthetic_name",
    "write_manifest_file",
]
