"""Offline generation of synthetic people into a Market-1501-format folder: ``posereid generate``.

For every real train image (pid > 0) of a Market-1501 folder, ``per_image`` images of the same person in
target poses from a :class:`~posereid.augment.pose_bank.PoseBank` are written to
``OUT/bounding_box_train/`` under the SOURCE pid (torchreid reads them as more images of that identity,
never as new identities), with one JSON line per image in ``OUT/manifest.jsonl``. This module holds the
plan, the generation loop and the CLI; the folder's file names, manifest format, run config and resume
clean-up are in :mod:`posereid.augment.manifest` (its names are re-exported here).

**Plan.** Output item ``i = source_index * per_image + k`` uses the pose and seed drawn from
``numpy.random.default_rng([seed, source_index, k])``: a deterministic function of (seed, source, k),
independent of batching, sharding and interruptions. Sources are the train records sorted by name.

**Crash safety / resume.** Killed at any moment (SIGKILL included) and rerun with the same settings, a run
reconciles the folder (see :mod:`posereid.augment.manifest`) and then skips every item already done;
resuming with different settings is an error (use a new ``--out``).

**Keypoint frame.** The source annotations (and a pose bank built from them) are read in the frame of the
images they annotate, or ``annotation_hw`` / ``--annotation-size HxW`` when given; a keypoint outside it,
or annotated images of mixed sizes without an explicit frame, stop the run with an error naming the file
(and line) — see :func:`~posereid.reid_integration.market1501.load_annotations`.

**Shards.** ``shard=(i, n)`` takes the items with ``index % n == i`` and appends to
``manifest.shard-i-of-n.jsonl``; shards can run at the same time on one folder (one process per shard).
Each run holds its shard's lock ``OUT/.lock-shard-i-of-n`` (:mod:`posereid.models.locks`) while it works:
a second run of the same shard on the same folder, on this host or another sharing the disk, stops at once
naming the first; a killed run's lock is taken over by the next run.
Under ``accelerate launch`` the shard defaults to ``(process_index, num_processes)``.
:func:`read_manifest` reads all parts.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from posereid import argtypes
from posereid.argtypes import finite_float, non_negative_int, positive_int
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
from posereid.models.images import pil_to_tensor01, tensor01_to_pil
from posereid.models.io_utils import atomic_save, atomic_write
from posereid.models.locks import output_lock, shard_lock_name
from posereid.models.pose import missing_pose, resize_keypoints, skeleton_tensor
from posereid.models.sampling import SAMPLERS
from posereid.reid_integration.market1501 import (
    BadInputPolicy,
    ImageReadError,
    Market1501,
    MarketFormatError,
    MarketRecord,
    add_annotation_size_arg,
    add_strict_arg,
    image_size_problem,
    load_annotations,
    load_image,
)

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
# Generation
# --------------------------------------------------------------------------------------------------
def plan_draws(seed: int, source_index: int, k: int, bank: PoseBank, sampling: str) -> tuple[int, int]:
    """``(pose index, generation seed)`` of output ``k`` of source ``source_index``: a pure function of
    its arguments, which is what makes generation resumable and shardable."""
    rng = np.random.default_rng([int(seed), int(source_index), int(k)])
    pose_index = int(bank.sample_indices(1, rng, sampling=sampling)[0])
    return pose_index, int(rng.integers(0, _SEED_HIGH))


@dataclass
class _Prepared:
    item: PlanItem
    source: torch.Tensor  # (3, H, W) at the generator's size, [0, 1]
    source_hw: tuple[int, int]
    source_kps: np.ndarray  # (18, 2) at the generator's size
    pose_index: int
    seed: int


class _Run:
    """The per-run context of :func:`generate_offline`: loads sources, writes images and manifest lines."""

    def __init__(self, generator, sources, ann, annotation_hw, bank, sampling, seed, summary, bad) -> None:
        self.sources, self.ann, self.annotation_hw = sources, ann, annotation_hw
        self.bank, self.sampling, self.seed, self.summary = bank, sampling, seed, summary
        self.bad: BadInputPolicy = bad
        self.gen_hw = tuple(int(v) for v in generator.image_size)
        self.device = torch.device(generator.device)

    def prepare(self, items: Sequence[PlanItem]) -> list[_Prepared]:
        """Load the sources of ``items`` (an unreadable one is counted, logged and skipped; with
        ``strict`` it raises, naming the file)."""
        out = []
        for it in items:
            rec = self.sources[it.source_index]
            try:
                im = load_image(rec.path)
            except ImageReadError as exc:
                self.bad.skip_or_raise(exc, "unreadable source image(s)")
                self.summary.failed_items += 1
                self.summary.failures.append(str(exc))
                logger.warning("skipping %s: %s", it.name, exc)
                continue
            problem = image_size_problem((im.height, im.width), self.annotation_hw or self.gen_hw)
            if problem is not None:
                self.bad.skip_or_raise(
                    ImageReadError(f"{rec.path}: {problem}"), "source image(s) of a bad size"
                )
                self.summary.failed_items += 1
                self.summary.failures.append(f"{rec.path}: {problem}")
                logger.warning("skipping %s: %s: %s", it.name, rec.path, problem)
                continue
            kps = self.ann.get(rec.name)
            if kps is None or self.annotation_hw is None:
                kps = missing_pose()
            else:  # checked to lie in annotation_hw when read: the rescale never drops a joint
                kps = resize_keypoints(kps, self.annotation_hw, self.gen_hw)
            pose_index, seed = plan_draws(self.seed, it.source_index, it.k, self.bank, self.sampling)
            src = pil_to_tensor01(im.resize((self.gen_hw[1], self.gen_hw[0]), Image.Resampling.BILINEAR))
            out.append(_Prepared(it, src, (im.height, im.width), kps, pose_index, seed))
        return out

    def write(self, b: _Prepared, image: torch.Tensor, dest: Path, part: Path, extra: dict, out_size) -> None:
        """Image into place first, then its manifest line (fsynced): a kill never leaves a line without
        its image."""
        rec = self.sources[b.item.source_index]
        dest.mkdir(exist_ok=True)
        _write_image(dest / b.item.name, _to_pil(image, out_size or b.source_hw))
        entry = {
            "name": b.item.name, "index": b.item.index, "k": b.item.k, "source": rec.name,
            "source_pid": rec.pid, "camid": rec.camid,
            "target_pose": np.round(self.bank.get(b.pose_index), 2).tolist(),
            "pose_frame": list(self.bank.image_hw), "target_source": self.bank.names[b.pose_index],
            "seed": b.seed, **extra,
        }  # fmt: skip
        append_manifest_line(part, entry)
        self.summary.generated += 1
        self.summary.rejected += int(not extra["kept"])


def generate_offline(
    generator: Any,
    market_root: str | os.PathLike[str],
    annotations: str | os.PathLike[str] | Mapping[str, np.ndarray],
    out_dir: str | os.PathLike[str],
    *,
    per_image: int,
    pose_bank: PoseBank | None = None,
    sampling: str = "uniform",
    steps: int = 20,
    sampler: str = "dpmsolver++",
    guidance: tuple[float, float] = (2.0, 2.0),
    batch_size: int = 16,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    identity_filter: Any = None,
    filter_threshold: float | None = None,
    filter_score: str = "similarity",
    annotation_hw: tuple[int, int] | None = None,
    out_size: tuple[int, int] | None = None,
    grid_items: int = 8,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    strict: bool = False,
) -> GenerateSummary:
    """Generate ``per_image`` synthetic images per real train image into ``out_dir`` (resumable).

    Args:
        generator: any family's :class:`~posereid.models.contract.PoseTransferGenerator` (on the device to run on).
        market_root: Market-1501 folder; its ``bounding_box_train`` images (pid > 0) are the sources.
        annotations: PATN CSV (or ``name → (18, 2)`` mapping) with source keypoints in ``annotation_hw``;
            sources without a row are given no source pose.
        annotation_hw: the ``(H, W)`` frame of ``annotations``' coordinates; ``None`` (default): the size of
            the images of ``market_root`` they annotate (mixed sizes are an error then; see
            :func:`~posereid.reid_integration.market1501.annotation_frame`). A keypoint outside the frame
            raises :class:`MarketFormatError` naming the file and line; nothing is squeezed or clamped.
        pose_bank: target poses (default: the annotated train images of ``market_root``, in the same frame).
        sampling: pose bank strategy (``uniform``, ``cluster``, ``view``).
        steps, sampler, guidance: passed to ``generator.generate``.
        seed: the plan's seed. shard: ``(i, n)``; ``None`` → from accelerate, else ``(0, 1)``.
        identity_filter: an :class:`~posereid.augment.filter.IdentityFilter`; scores go into the
            manifest, and with ``filter_threshold`` images scoring below it go to ``out_dir/rejected/``.
        filter_score: ``similarity`` or ``margin`` (what the threshold applies to).
        out_size: ``(H, W)`` of the written images (default: the source image's size).
        grid_items: rows of the ``samples*.png`` grid (source | target skeleton | generated); 0 = none.
        strict: stop at the first unreadable source image (or stray file in ``market_root``) with an
            error naming it, instead of skipping it and counting it in ``failed_items`` (the default).
    """
    t_start = time.perf_counter()
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if filter_threshold is not None and identity_filter is None:
        raise ValueError("filter_threshold needs an identity_filter (a re-ID checkpoint)")
    shard = _auto_shard() if shard is None else (int(shard[0]), int(shard[1]))
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard {shard}: need 0 <= i < n")
    out_dir = Path(out_dir)
    part = out_dir / manifest_part_name(shard)
    summary = GenerateSummary(shard=f"{shard[0]}/{shard[1]}", manifest=str(part))

    market = Market1501(market_root, strict=strict)
    sources: list[MarketRecord] = [r for r in market.train if r.pid > 0]
    if not sources:
        raise ValueError(f"{market.root}: no train image with a pid > 0 to generate from")
    # the frame of the keypoints is that of the images they annotate (or the explicit annotation_hw), and
    # every keypoint is checked to lie in it; frame None: no row annotates an image of market_root
    ann, frame = load_annotations(annotations, market, frame=annotation_hw, required=False)
    bank = pose_bank if pose_bank is not None else PoseBank.from_market(market_root, ann, image_hw=frame)

    items = [
        PlanItem(s * per_image + k, s, k, synthetic_name(rec.name, k))
        for s, rec in enumerate(sources)
        for k in range(per_image)
    ]
    real_names = {r.name for split in ("train", "query", "gallery", "gt_bbox") for r in market.split(split)}
    clash = sorted({it.name for it in items} & real_names)
    if clash:
        raise MarketFormatError(f"{market.root}: synthetic names collide with real images, e.g. {clash[0]}")
    mine = [it for it in items if it.index % shard[1] == shard[0]]
    summary.planned = len(mine)

    gen_hash = generator_sha256(generator)
    bank_hash = hashlib.sha256(bank.keypoints.tobytes() + "\n".join(bank.names).encode()).hexdigest()
    src_hash = hashlib.sha256("\n".join(r.name for r in sources).encode()).hexdigest()
    config = {
        "format": 1, "seed": int(seed), "per_image": int(per_image), "sampling": sampling,
        "generator_sha256": gen_hash, "steps": int(steps), "sampler": sampler,
        "guidance": [float(guidance[0]), float(guidance[1])], "pose_bank_sha256": bank_hash,
        "pose_frame": list(bank.image_hw), "sources": len(sources), "sources_sha256": src_hash,
        "out_size": None if out_size is None else list(out_size),
        # what decides kept/rejected and the source keypoints of items still to come: a resume with other
        # values would mix two runs in one folder
        "annotation_hw": None if frame is None else list(frame), "filter": identity_filter is not None,
        "filter_threshold": None if filter_threshold is None else float(filter_threshold),
        "filter_score": filter_score,
    }  # fmt: skip
    # one process per shard and folder: a second run of this shard stops here, naming the first
    with output_lock(
        out_dir,
        shard_lock_name(shard),
        what="posereid generate",
        advice="wait for it to finish, or use another --out or --shard",
    ):
        (out_dir / TRAIN_DIR).mkdir(exist_ok=True)
        check_run_config(out_dir, config)

        done = reconcile(out_dir, part, {it.name for it in mine}, summary)
        pending = [it for it in mine if it.name not in done]
        summary.already_done = len(mine) - len(pending)
        run = _Run(generator, sources, ann, frame, bank, sampling, int(seed), summary, BadInputPolicy(strict))
        settings = {
            "generator_sha256": gen_hash,
            "steps": int(steps),
            "sampler": sampler,
            "guidance": [float(guidance[0]), float(guidance[1])],
            "sampling": sampling,
        }
        grid_rows: list[torch.Tensor] = []
        bar = tqdm(total=len(pending), desc=f"generate {summary.shard}", unit="img", disable=not progress)
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            batch = run.prepare(chunk)
            if batch:
                src = torch.stack([b.source for b in batch]).to(run.device)
                targets = bank.get([b.pose_index for b in batch], size=run.gen_hw)
                images = generator.generate(
                    src,
                    torch.from_numpy(targets).to(run.device),
                    torch.from_numpy(np.stack([b.source_kps for b in batch])).to(run.device),
                    steps=steps,
                    sampler=sampler,
                    guidance=tuple(guidance),
                    seeds=[b.seed for b in batch],
                    autocast_dtype=autocast_dtype,
                ).cpu()
                sims = margins = None
                if identity_filter is not None:
                    sims, margins = identity_filter.score(
                        images, [sources[b.item.source_index].pid for b in batch]
                    )
                for j, b in enumerate(batch):
                    score = (
                        None
                        if sims is None
                        else float((sims if filter_score == "similarity" else margins)[j])
                    )
                    kept = filter_threshold is None or score is None or score >= filter_threshold
                    entry = {
                        **settings,
                        "filter_score": None if sims is None else round(float(sims[j]), 6),
                        "filter_margin": None if margins is None else round(float(margins[j]), 6),
                        "kept": bool(kept),
                    }
                    run.write(
                        b, images[j], out_dir / (TRAIN_DIR if kept else REJECTED_DIR), part, entry, out_size
                    )
                if len(grid_rows) < grid_items * 3:
                    skel = skeleton_tensor(targets, *run.gen_hw)
                    for j in range(len(batch)):
                        grid_rows.extend([src[j].cpu(), skel[j], images[j]])
                    grid_rows = grid_rows[: grid_items * 3]
            bar.update(len(chunk))
        bar.close()
        if grid_rows:
            _save_grid(out_dir / f"samples{part.stem[len('manifest') :]}.png", grid_rows)
    summary.seconds = time.perf_counter() - t_start
    summary.images_per_s = summary.generated / summary.seconds if summary.seconds > 0 else 0.0
    logger.info("generate %s: %s", out_dir, {k: v for k, v in summary.as_dict().items() if k != "failures"})
    return summary


def _save_grid(path: Path, tiles: list[torch.Tensor]) -> None:
    from torchvision.utils import make_grid, save_image

    grid = make_grid(torch.stack(tiles), nrow=3, padding=2, pad_value=1.0)
    atomic_save(path, lambda tmp: save_image(grid, str(tmp), format="png"))


# --------------------------------------------------------------------------------------------------
# CLI: posereid generate
# --------------------------------------------------------------------------------------------------
def add_generate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", required=True, help="generator checkpoint directory (save_pretrained)")
    parser.add_argument("--data", required=True, help="Market-1501 folder whose train images are the sources")
    parser.add_argument("--annotations", required=True, help="PATN annotation CSV of the source images")
    parser.add_argument(
        "--per-image", type=positive_int, required=True, help="synthetic images per source image"
    )
    parser.add_argument("--out", required=True, help="output folder (Market format + manifest.jsonl)")
    parser.add_argument(
        "--pose-bank", help="target poses: PATN CSV or PoseBank .npz (default: train annotations)"
    )
    add_annotation_size_arg(parser, what="--annotations (and of a --pose-bank CSV)")
    parser.add_argument("--sampling", choices=SAMPLINGS, default="uniform", help="pose sampling strategy")
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--sampler", default="dpmsolver++", choices=sorted(SAMPLERS))
    parser.add_argument("--guidance-pose", type=finite_float, default=2.0)
    parser.add_argument("--guidance-appearance", type=finite_float, default=2.0)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--shard",
        type=argtypes.shard,
        help="i/n: generate items with index %% n == i (default: accelerate rank)",
    )
    parser.add_argument(
        "--refiner", help="checkpoint with a refiner (PCDMs) run on every generated image (any family's)"
    )
    parser.add_argument("--refiner-steps", type=positive_int, default=20, help="sampler steps of the refiner")
    parser.add_argument("--filter-checkpoint", help="re-ID checkpoint: score each image by identity")
    parser.add_argument("--filter-threshold", type=finite_float, help="reject images scoring below this")
    parser.add_argument("--filter-score", choices=("similarity", "margin"), default="similarity")
    parser.add_argument(
        "--out-size", type=positive_int, nargs=2, metavar=("H", "W"), help="size of written images"
    )
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--autocast", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_strict_arg(parser)


def run_generate(args: argparse.Namespace) -> int:
    from posereid.models.contract import load_generator
    from posereid.models.runtime import resolve_device

    shard = args.shard
    device = resolve_device(args.device)
    generator = load_generator(args.generator, device=device)
    if args.refiner:
        from posereid.models.refine import RefinedGenerator, load_refiner

        generator = RefinedGenerator(
            generator, load_refiner(args.refiner, device=device), steps=args.refiner_steps,
            sampler=args.sampler,
        )  # fmt: skip
    bank = None
    if args.pose_bank:
        bank = (
            PoseBank.load(args.pose_bank)
            if args.pose_bank.endswith(".npz")
            else PoseBank.from_csv(args.pose_bank, image_hw=args.annotation_size, images=args.data)
        )
    identity_filter = None
    if args.filter_checkpoint:
        from posereid.augment.filter import IdentityFilter, load_extractor

        identity_filter = IdentityFilter(load_extractor(args.filter_checkpoint, device)).fit_market(
            args.data, strict=args.strict
        )
    summary = generate_offline(
        generator, args.data, args.annotations, args.out, per_image=args.per_image, pose_bank=bank,
        sampling=args.sampling, steps=args.steps, sampler=args.sampler,
        guidance=(args.guidance_pose, args.guidance_appearance), batch_size=args.batch_size, seed=args.seed,
        shard=shard, identity_filter=identity_filter, filter_threshold=args.filter_threshold,
        filter_score=args.filter_score, annotation_hw=args.annotation_size,
        out_size=tuple(args.out_size) if args.out_size else None,
        autocast_dtype={"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.autocast],
        progress=not args.no_progress, strict=args.strict,
    )  # fmt: skip
    print(
        f"shard {summary.shard}: {summary.generated} generated, {summary.already_done} already done, "
        f"{summary.rejected} rejected, {summary.failed_items} failed of {summary.planned} planned "
        f"({summary.images_per_s:.2f} images/s); manifest {summary.manifest}"
    )
    return 1 if summary.failed_items else 0


__all__ = [
    "CONFIG_FILE",
    "MANIFEST_NAME",
    "REJECTED_DIR",
    "SYNTHETIC_SEQ",
    "TRAIN_DIR",
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
