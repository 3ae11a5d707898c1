"""The re-ID gain protocol: does training on pose-transfer images help a re-ID model, honestly measured?

PIDM §4.5 keeps a fraction of the Market-1501 train images (≥ 1 per identity), trains a re-ID model on
that subset ``D_tr`` with and without generated images, and compares mAP. This module runs that protocol
with three corrections (``docs/DESIGN.md`` §6):

- a **strong** baseline (flip + random erasing) beside the plain one, so a gain is not just "any
  augmentation helps";
- the generator is trained **only on D_tr** (leakage-free; ``generator_data="full"`` or a given checkpoint
  are options, and the results record which was used);
- several **seeds** (mean ± std) and the **same number of optimisation steps** for every arm.

Every fraction's subset is materialised as a Market-format folder (hard links, symlinks or copies) plus
its PATN annotation / pair rows, so the generator trainer, the offline generator and the re-ID trainer all
read it like any Market folder. Subsets are nested (the 20 % subset is inside the 40 % one) and depend only
on ``subset_seed``.

Outputs under ``out``: ``results.csv`` (one row per fraction × arm × seed), ``results.md`` (mean ± std and
deltas vs the ``plain`` and ``strong`` baselines), ``results.png`` (mAP / rank-1 vs fraction) and
``work/`` (subsets, generators, synthetic folders; reused on a rerun). A rerun reads finished cells back
from the CSV and computes only the missing ones.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import random
import shutil
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from posereid.models.io_utils import atomic_save, atomic_write, file_sha256, is_temp_file
from posereid.reid_integration.market1501 import (
    SPLIT_DIRS,
    Market1501,
    MarketRecord,
    read_pairs_csv,
    read_patn_csv,
    resolve_data_dir,
    write_pairs_csv,
    write_patn_csv,
)

logger = logging.getLogger(__name__)

#: every arm the protocol knows; ``strong+synthetic+filtered`` needs the identity filter.
ARMS: tuple[str, ...] = ("plain", "strong", "plain+synthetic", "strong+synthetic", "strong+synthetic+filtered")
DEFAULT_ARMS: tuple[str, ...] = ARMS[:4]
DEFAULT_FRACTIONS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
BASELINES: tuple[str, ...] = ("plain", "strong")

#: results.csv columns, in order.
CSV_FIELDS: tuple[str, ...] = (
    "fraction", "arm", "seed", "mAP", "rank1", "rank5", "rank10", "images", "identities",
    "synthetic_images", "steps", "batch_size", "wall_s", "reid_model", "generator",
)  # fmt: skip

#: config fields that change what a cached subset / generator / result means; a rerun must agree on them.
_PROTOCOL_FIELDS: tuple[str, ...] = (
    "subset_seed", "reid_steps", "reid_model", "reid_batch_size", "reid_lr", "height", "width",
    "generator_preset", "generator_steps", "generator_batch_size", "generator_lr", "generator",
    "generator_data", "per_image", "sampler", "steps", "guidance", "pose_sampling", "annotation_hw",
    "filter_checkpoint", "filter_score", "filter_threshold",
)  # fmt: skip


class ProtocolMismatchError(RuntimeError):
    """The output folder holds results made with different protocol settings."""


@dataclass
class GainConfig:
    """Settings of one gain experiment (see the module docstring).

    Args:
        data: a Market-1501-format folder (``bounding_box_train``, ``query``, ``bounding_box_test``).
        out: output folder (results + ``work/`` cache).
        annotations: PATN CSV with keypoints of the train images; default: ``market-annotation-train.csv``
            in ``data`` or its parents.
        fractions: fractions of the train images kept (``1.0`` = all).
        arms: subset of :data:`ARMS`.
        seeds: re-ID seeds (each arm × fraction is trained once per seed).
        subset_seed: seed of the subset choice (shared by all arms and seeds, so arms compare on the
            same ``D_tr``).
        reid_steps: optimisation steps of EVERY re-ID run (baseline and augmented alike).
        generator: reuse this generator checkpoint for every fraction instead of training one.
        generator_data: ``"kept"`` trains one generator per fraction on that fraction's images only;
            ``"full"`` trains one on all train images (PIDM's leaky setting, for comparison).
        per_image: synthetic images generated per kept source image.
        sampler / steps / guidance: diffusion sampler name, sampling steps and guidance weight.
        pose_sampling: how target poses are drawn from the kept images' pose bank
            (``uniform``/``cluster``/``view``).
        gen_batch_size: images per generator call.
        annotation_hw: the ``(H, W)`` frame of the PATN annotation coordinates; ``None``: the train images'
            own size (the PATN convention; Market-1501 crops are all 128×64).
        filter_checkpoint: re-ID checkpoint for the identity-consistency filter of the
            ``strong+synthetic+filtered`` arm, or ``"auto"``: a strong-baseline model trained on each kept
            fraction (leakage-free). filter_score / filter_threshold: keep images scoring ≥ threshold
            (default: margin ≥ 0, i.e. closer to their own identity than to any other).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, …
    """

    data: Path
    out: Path
    annotations: Path | None = None
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    arms: tuple[str, ...] = DEFAULT_ARMS
    seeds: tuple[int, ...] = (0, 1, 2)
    subset_seed: int = 0
    reid_steps: int = 3000
    reid_model: str = "resnet50"
    reid_batch_size: int = 32
    reid_lr: float = 3.5e-4
    height: int = 128
    width: int = 64
    generator_preset: str = "small"
    generator_steps: int = 20000
    generator_batch_size: int = 16
    generator_lr: float = 1e-4
    generator: Path | None = None
    generator_data: Literal["kept", "full"] = "kept"
    per_image: int = 1
    sampler: str = "dpmsolver++"
    steps: int = 20
    guidance: tuple[float, float] = (2.0, 2.0)
    pose_sampling: str = "uniform"
    gen_batch_size: int = 32
    annotation_hw: tuple[int, int] | None = None
    filter_checkpoint: Path | str | None = None
    filter_score: Literal["similarity", "margin"] = "margin"
    filter_threshold: float = 0.0
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.out = Path(self.out)
        self.annotations = None if self.annotations is None else Path(self.annotations)
        self.generator = None if self.generator is None else Path(self.generator)
        if self.filter_checkpoint is not None and str(self.filter_checkpoint) != "auto":
            self.filter_checkpoint = Path(self.filter_checkpoint)
        g = (self.guidance, self.guidance) if isinstance(self.guidance, (int, float)) else tuple(self.guidance)
        if len(g) != 2:
            raise ValueError(f"guidance must be one weight or (pose, appearance), got {self.guidance!r}")
        self.guidance = (float(g[0]), float(g[1]))
        if self.annotation_hw is not None:
            self.annotation_hw = (int(self.annotation_hw[0]), int(self.annotation_hw[1]))
        self.fractions = tuple(float(f) for f in self.fractions)
        self.arms = tuple(self.arms)
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.fractions or any(not 0.0 < f <= 1.0 for f in self.fractions):
            raise ValueError(f"fractions must be in (0, 1], got {self.fractions}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"unknown arm(s) {unknown or '(none given)'}; choose from {', '.join(ARMS)}")
        if "strong+synthetic+filtered" in self.arms and self.filter_checkpoint is None:
            raise ValueError(
                "arm 'strong+synthetic+filtered' needs filter_checkpoint: a re-ID checkpoint, or 'auto' to "
                "train a strong-baseline filter model on each kept fraction"
            )
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if self.generator_data not in ("kept", "full"):
            raise ValueError(f"generator_data must be 'kept' or 'full', got {self.generator_data!r}")
        for name in ("reid_steps", "generator_steps", "per_image", "steps", "height", "width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def work(self) -> Path:
        return self.out / "work"

    def generator_source(self) -> str:
        """What generator the synthetic arms use, as written in the results (``kept``/``full``/``given:…``)."""
        if self.generator is not None:
            return f"given:{self.generator}"
        return self.generator_data

    def protocol(self) -> dict[str, Any]:
        """The settings a rerun into the same ``out`` must share (JSON-ready)."""
        d = {k: getattr(self, k) for k in _PROTOCOL_FIELDS}
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
        # The data itself: cached subsets, generators and results are only valid for the same images and
        # keypoints, so a rerun with another folder or re-annotated images must not reuse them.
        d["data"] = str(Path(self.data).resolve())
        try:
            ann: Path | None = self.annotations or find_annotations(self.data)
        except FileNotFoundError:
            ann = None
        d["annotations_sha256"] = file_sha256(ann) if ann is not None and Path(ann).is_file() else None
        return d


# --------------------------------------------------------------------------------------------------
# Subsets
# --------------------------------------------------------------------------------------------------
def fraction_tag(fraction: float) -> str:
    """Stable folder/CSV key of a fraction: ``0.2`` → ``'0.2'``, ``1.0`` → ``'1'``."""
    return f"{float(fraction):.6g}"


def subset_order(records: Sequence[MarketRecord], seed: int) -> list[MarketRecord]:
    """A seeded order of the train records: one random image per identity first, then the rest.

    Taking the first ``k`` (``k`` ≥ number of identities) keeps every identity, and the subsets of a seed
    are nested across fractions.
    """
    rng = random.Random(int(seed))
    by_pid: dict[int, list[MarketRecord]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r.name):
        by_pid[r.pid].append(r)
    firsts: list[MarketRecord] = []
    rest: list[MarketRecord] = []
    for pid in sorted(by_pid):
        group = by_pid[pid]
        pick = rng.randrange(len(group))
        firsts.append(group[pick])
        rest.extend(g for i, g in enumerate(group) if i != pick)
    rng.shuffle(firsts)
    rng.shuffle(rest)
    return firsts + rest


def select_subset(records: Sequence[MarketRecord], fraction: float, seed: int) -> list[MarketRecord]:
    """``max(#identities, round(fraction × N))`` train records, ≥ 1 per identity, sorted by name."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    order = subset_order(records, seed)
    n_ids = len({r.pid for r in records})
    k = min(len(order), max(n_ids, round(fraction * len(order))))
    return sorted(order[:k], key=lambda r: r.name)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _link_dir(src: Path, dst: Path) -> None:
    """``dst`` → ``src`` as a directory symlink, or per-file links/copies where symlinks are refused."""
    try:
        os.symlink(src.resolve(), dst, target_is_directory=True)
    except OSError:
        dst.mkdir()
        for entry in os.scandir(src):
            if entry.is_file() and not is_temp_file(entry.name):
                _link_or_copy(Path(entry.path), dst / entry.name)


def find_annotations(data: Path, split: str = "train") -> Path:
    """``market-annotation-<split>.csv`` in ``data``, its Market data dir, or their parents."""
    name = f"market-annotation-{split}.csv"
    cands: list[Path] = [data, data.parent]
    try:
        d = resolve_data_dir(data)
        cands += [d, d.parent, d.parent.parent]
    except ValueError:
        pass
    for c in cands:
        if (c / name).is_file():
            return c / name
    raise FileNotFoundError(
        f"no {name} found in {', '.join(dict.fromkeys(str(c) for c in cands))}; pass --annotations "
        "(a PATN CSV, e.g. from `posereid annotate`)"
    )


@dataclass
class Subset:
    """A materialised train subset: a Market folder whose train split holds only the kept images."""

    root: Path
    fraction: float
    names: list[str]
    identities: int
    annotations: Path

    @property
    def images(self) -> int:
        return len(self.names)


def materialize_subset(
    data: Path, annotations: Path, fraction: float, seed: int, out_dir: Path
) -> Subset:
    """Write (or reuse) the Market-format folder of one fraction's subset.

    ``out_dir`` gets ``bounding_box_train`` with links to the kept images, ``query`` / ``bounding_box_test``
    linked to the source ones, ``market-annotation-train.csv`` with the kept images' rows (the pose bank
    and the generator's training data), ``market-pairs-train.csv`` with the pairs among kept images
    when the source has one, and ``subset.json``. Built in a temporary folder and renamed into place.
    """
    ds = Market1501(data)
    train = [r for r in ds.train if r.pid > 0]  # junk and distractors never enter re-ID training
    if not train:
        raise ValueError(f"{ds.root}: the train split has no identity images (pid > 0)")
    kept = select_subset(train, fraction, seed)
    names = [r.name for r in kept]
    meta_path = out_dir / "subset.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("names") != names:
            raise ProtocolMismatchError(
                f"{out_dir}: cached subset differs from the one selected now (the train folder or the "
                "subset seed changed); delete it or use a new output folder"
            )
        return Subset(out_dir, fraction, names, meta["identities"], out_dir / "market-annotation-train.csv")
    ann = read_patn_csv(annotations, image_hw=None)
    missing = [n for n in names if n not in ann]
    if missing:
        logger.warning(
            "%s: %d of %d kept train images have no annotation row (e.g. %s); they stay in the re-ID "
            "subset but cannot be generator sources or target poses", annotations, len(missing), len(names),
            missing[0],
        )
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        train_dir = tmp / SPLIT_DIRS["train"]
        train_dir.mkdir()
        for r in kept:
            _link_or_copy(r.path, train_dir / r.name)
        for split in ("query", "gallery"):
            src = ds.root / SPLIT_DIRS[split]
            if src.is_dir():
                _link_dir(src, tmp / SPLIT_DIRS[split])
        write_patn_csv(tmp / "market-annotation-train.csv", {n: ann[n] for n in names if n in ann})
        pairs_src = annotations.with_name("market-pairs-train.csv")
        if pairs_src.is_file():
            keep = set(names)
            pairs = [p for p in read_pairs_csv(pairs_src) if p[0] in keep and p[1] in keep]
            write_pairs_csv(tmp / "market-pairs-train.csv", pairs)
        identities = len({r.pid for r in kept})
        meta = {
            "source": str(ds.root), "annotations": str(annotations), "fraction": fraction, "seed": seed,
            "images": len(names), "of": len(train), "identities": identities, "names": names,
        }  # fmt: skip
        with atomic_write(tmp / "subset.json") as fh:
            json.dump(meta, fh)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    logger.info("subset %s: %d/%d images, %d identities → %s", fraction_tag(fraction), len(names),
                len(train), identities, out_dir)
    return Subset(out_dir, fraction, names, identities, out_dir / "market-annotation-train.csv")


# --------------------------------------------------------------------------------------------------
# Results: CSV rows, aggregation, markdown, plot
# --------------------------------------------------------------------------------------------------
def cell_key(fraction: float | str, arm: str, seed: int | str) -> tuple[str, str, int]:
    """The identity of one result row: ``(fraction tag, arm, seed)``."""
    return fraction_tag(float(fraction)), str(arm), int(seed)


_INT_FIELDS = ("seed", "images", "identities", "synthetic_images", "steps")
_FLOAT_FIELDS = ("fraction", "mAP", "rank1", "rank5", "rank10", "wall_s")


def read_results(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``results.csv`` (numbers parsed); ``[]`` if the file does not exist."""
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [f for f in ("fraction", "arm", "seed", "mAP", "rank1") if f not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} line 1: not a results file (missing column(s) {', '.join(missing)})")
        for row in reader:
            try:
                out: dict[str, Any] = dict(row)
                for k in _INT_FIELDS:
                    if row.get(k) not in (None, ""):
                        out[k] = int(float(row[k]))
                for k in _FLOAT_FIELDS:
                    if row.get(k) not in (None, ""):
                        out[k] = float(row[k])
            except ValueError as exc:
                raise ValueError(f"{path} line {reader.line_num}: {exc}") from None
            rows.append(out)
    return rows


def write_results(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows (sorted by fraction, arm order, seed) as ``results.csv``; atomic."""
    order = {a: i for i, a in enumerate(ARMS)}
    rows = sorted(rows, key=lambda r: (float(r["fraction"]), order.get(r["arm"], 99), int(r["seed"])))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and k != "fraction" else v) for k, v in r.items()})
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(buf.getvalue())


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fraction × arm: seeds, mean ± std of mAP and rank-1, and deltas vs ``plain`` / ``strong``.

    A delta is the mean over the seeds both arms have of the per-seed difference (paired: same seed, same
    subset), with the std of those differences; ``nan`` when no seed is shared.
    """
    cells: dict[tuple[str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        f, a, s = cell_key(r["fraction"], r["arm"], r["seed"])
        cells[(f, a)][s] = r
    order = {a: i for i, a in enumerate(ARMS)}
    out: list[dict[str, Any]] = []
    for (f, a) in sorted(cells, key=lambda k: (float(k[0]), order.get(k[1], 99))):
        by_seed = cells[(f, a)]
        first = next(iter(by_seed.values()))
        entry: dict[str, Any] = {
            "fraction": float(f), "arm": a, "seeds": len(by_seed),
            "images": first.get("images"), "synthetic_images": first.get("synthetic_images"),
        }  # fmt: skip
        for metric in ("mAP", "rank1"):
            entry[metric], entry[f"{metric}_std"] = _mean_std([float(r[metric]) for r in by_seed.values()])
            for base in BASELINES:
                ref = cells.get((f, base), {})
                diffs = [float(by_seed[s][metric]) - float(ref[s][metric]) for s in by_seed if s in ref]
                entry[f"d_{metric}_{base}"], entry[f"d_{metric}_{base}_std"] = _mean_std(diffs)
        out.append(entry)
    return out


def _pm(mean: float, std: float, signed: bool = False) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:+.1f} ± {std:.1f}" if signed else f"{mean:.1f} ± {std:.1f}"


def markdown_table(summary: Sequence[dict[str, Any]], header: str = "") -> str:
    """The summary as a markdown table (metrics in %, mean ± std over seeds; deltas paired by seed)."""
    lines = [header.rstrip() + "\n"] if header else []
    lines += [
        "| kept | arm | seeds | images (+synthetic) | mAP | rank-1 | ΔmAP vs plain | ΔmAP vs strong "
        "| Δrank-1 vs plain | Δrank-1 vs strong |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in summary:
        syn = e.get("synthetic_images") or 0
        imgs = f"{e['images']}" + (f" (+{syn})" if syn else "")
        deltas = []
        for metric in ("mAP", "rank1"):
            for base in BASELINES:
                same = e["arm"] == base
                deltas.append("–" if same else _pm(e[f"d_{metric}_{base}"], e[f"d_{metric}_{base}_std"], True))
        lines.append(
            f"| {e['fraction'] * 100:.0f}% | {e['arm']} | {e['seeds']} | {imgs} | {_pm(e['mAP'], e['mAP_std'])} "
            f"| {_pm(e['rank1'], e['rank1_std'])} | " + " | ".join(deltas) + " |"
        )
    return "\n".join(lines) + "\n"


def plot_results(summary: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """mAP and rank-1 vs kept fraction, one line per arm with ±std error bars; PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if any(e["arm"] == a for e in summary)]
    fractions = sorted({e["fraction"] for e in summary})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, metric, label in zip(axes, ("mAP", "rank1"), ("mAP (%)", "rank-1 (%)")):
        if len(fractions) == 1:  # one fraction: bars per arm (a line needs two points)
            pts = [next(e for e in summary if e["arm"] == a) for a in arms]
            colours = [f"C{i}" for i in range(len(arms))]
            ax.bar(range(len(arms)), [e[metric] for e in pts], yerr=[e[f"{metric}_std"] for e in pts],
                   capsize=4, color=colours, label=arms)
            ax.set_xticks(range(len(arms)), arms, rotation=15, fontsize=8)
            ax.set_xlabel(f"arm ({fractions[0] * 100:.0f}% of the train images kept)")
        else:
            for arm in arms:
                pts = sorted((e["fraction"], e[metric], e[f"{metric}_std"]) for e in summary if e["arm"] == arm)
                ax.errorbar([p[0] * 100 for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                            marker="o", capsize=3, linestyle="--" if "synthetic" not in arm else "-", label=arm)
            ax.set_xlabel("train images kept (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Stages: generator, synthetic folder, filter, one re-ID cell
# --------------------------------------------------------------------------------------------------
def resolve_device(device: str | None) -> str:
    """``"auto"``/``None`` → ``"cuda"`` when available, else ``"cpu"``; anything else unchanged."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def generator_dir(config: GainConfig, fraction: float) -> Path:
    """Where the generator used for ``fraction`` lives (a ``save_pretrained`` directory)."""
    if config.generator is not None:
        return config.generator
    if config.generator_data == "full":
        return config.work / "generator-full" / "final"
    return config.work / f"generator-{fraction_tag(fraction)}" / "final"


def synthetic_dir(config: GainConfig, fraction: float, *, filtered: bool = False) -> Path:
    """The Market-format folder of ``fraction``'s synthetic images (``filtered``: after the filter)."""
    return config.work / f"synthetic-{fraction_tag(fraction)}{'-filtered' if filtered else ''}"


def ensure_generator(config: GainConfig, fraction: float, subset: Subset, *, device: str) -> Path:
    """Train (or reuse) the generator for ``fraction`` and return its checkpoint directory.

    ``generator_data="kept"`` trains on ``subset`` only (leakage-free); ``"full"`` on all train images;
    a given ``config.generator`` is returned as is. A finished ``final/`` directory is reused; an
    interrupted run resumes from its last checkpoint (``train_generator(resume=True)``).
    """
    from posereid.experiments.train_generator import market_pose_records
    from posereid.models import training
    from posereid.models.generator import PoseTransferGenerator

    final = generator_dir(config, fraction)
    if config.generator is not None:
        if not (final / "config.json").is_file():
            raise FileNotFoundError(f"{final}: no generator checkpoint (config.json) there")
        return final
    if (final / "config.json").is_file():
        return final
    if config.generator_data == "full":
        root, annotations = config.data, config.annotations or find_annotations(config.data)
    else:
        root, annotations = subset.root, subset.annotations
    records = market_pose_records(root, annotations, annotation_size=config.annotation_hw)
    if not records:
        raise ValueError(f"{root}: no annotated train image to train the generator on ({annotations})")
    pairs_csv = Path(annotations).with_name("market-pairs-train.csv")
    pairs = read_pairs_csv(pairs_csv) if config.generator_data == "kept" and pairs_csv.is_file() else None
    model = PoseTransferGenerator.from_preset(config.generator_preset, image_size=(config.height, config.width))
    dataset = training.PosePairDataset(records, model.image_size, pairs=pairs or None, seed=config.subset_seed)
    steps = config.generator_steps
    tcfg = training.TrainConfig(
        steps=steps, batch_size=config.generator_batch_size, lr=config.generator_lr,
        warmup_steps=min(500, steps // 10), checkpoint_every=max(1, steps // 5) if steps >= 50 else 0,
        sample_every=0, seed=config.subset_seed, tensorboard=False, num_workers=config.num_workers,
        mixed_precision="bf16" if device.startswith("cuda") and _bf16_ok() else "no",
    )  # fmt: skip
    logger.info("training the %s generator on %d images (%s) for %d steps → %s", config.generator_preset,
                len(records), root, steps, final.parent)
    with _device_env(device):
        training.train_generator(model, dataset, tcfg, final.parent, resume=True, progress=config.progress)
    if not (final / "config.json").is_file():
        raise RuntimeError(f"generator training finished without writing {final}")
    return final


def _bf16_ok() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


class _device_env:
    """Hide CUDA from accelerate when the run is asked to use the CPU (accelerate picks CUDA otherwise)."""

    def __init__(self, device: str) -> None:
        self.cpu = device == "cpu"
        self.old: str | None = None

    def __enter__(self) -> None:
        if self.cpu:
            self.old = os.environ.get("ACCELERATE_USE_CPU")
            os.environ["ACCELERATE_USE_CPU"] = "true"

    def __exit__(self, *exc: object) -> None:
        if self.cpu:
            if self.old is None:
                os.environ.pop("ACCELERATE_USE_CPU", None)
            else:
                os.environ["ACCELERATE_USE_CPU"] = self.old


def ensure_synthetic(config: GainConfig, fraction: float, subset: Subset, generator: Path, *, device: str) -> int:
    """Generate (or finish) ``fraction``'s synthetic folder from the kept images; return its image count.

    Sources are the kept images and target poses come from the kept images' annotations, so nothing
    outside ``D_tr`` enters. ``generate_offline`` resumes an interrupted folder and refuses one made with
    other settings.
    """
    from posereid.augment.generate import generate_offline
    from posereid.models.generator import PoseTransferGenerator

    out = synthetic_dir(config, fraction)
    done = out / "gain_done.json"
    if done.is_file():
        return int(json.loads(done.read_text())["images"])
    model = PoseTransferGenerator.from_pretrained(generator).to(device).eval()
    summary = generate_offline(
        model, subset.root, subset.annotations, out, per_image=config.per_image, sampling=config.pose_sampling,
        steps=config.steps, sampler=config.sampler, guidance=config.guidance, batch_size=config.gen_batch_size,
        seed=config.subset_seed, annotation_hw=_annotation_frame(config, subset.root), progress=config.progress,
    )  # fmt: skip
    if summary.failed_items:
        logger.warning("%s: %d source image(s) failed: %s", out, summary.failed_items, summary.failures[:3])
    images = len(Market1501(out).train)
    with atomic_write(done) as fh:
        json.dump({"images": images, "generator": str(generator), **summary.as_dict()}, fh)
    return images


def _annotation_frame(config: GainConfig, root: Path) -> tuple[int, int]:
    """``config.annotation_hw``, else the size of the first train image of ``root``."""
    if config.annotation_hw is not None:
        return config.annotation_hw
    from PIL import Image

    first = next((r for r in Market1501(root).train if r.pid > 0), None)
    if first is None:
        raise ValueError(f"{root}: no train image to take the annotation frame from")
    with Image.open(first.path) as im:
        return im.height, im.width


def ensure_filtered(config: GainConfig, fraction: float, subset: Subset, *, device: str) -> int:
    """Copy (hard links) the synthetic folder and drop images whose re-ID features look like another
    identity (``filter_folder``, centroids of the KEPT real images); return the kept count."""
    from posereid.augment.filter import IdentityFilter, filter_folder
    from posereid.reid_integration.torchreid_plugin import ReidFeatureExtractor

    src, out = synthetic_dir(config, fraction), synthetic_dir(config, fraction, filtered=True)
    done = out / "gain_done.json"
    if done.is_file():
        return int(json.loads(done.read_text())["images"])
    ckpt = config.filter_checkpoint
    if str(ckpt) == "auto":
        ckpt = _filter_model(config, fraction, subset, device=device)
    extractor = ReidFeatureExtractor.from_checkpoint(ckpt, device=device)
    ident = IdentityFilter(extractor, image_size=extractor.size)
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=_link_or_copy_str, ignore=shutil.ignore_patterns("gain_done.json"))
    summary = filter_folder(tmp, subset.root, ident, threshold=config.filter_threshold, score=config.filter_score)
    os.replace(tmp, out)
    images = len(Market1501(out).train)
    with atomic_write(done) as fh:
        json.dump({"images": images, "checkpoint": str(ckpt), **summary.as_dict()}, fh)
    logger.info("filter %s: kept %d of %d", out, summary.kept, summary.scored)
    return images


def _link_or_copy_str(src: str, dst: str) -> str:
    """Images are hard-linked (never modified in place); manifests and configs are copied."""
    if src.lower().endswith((".jpg", ".jpeg", ".png")):
        _link_or_copy(Path(src), Path(dst))
    else:
        shutil.copy2(src, dst)
    return dst


def _filter_model(config: GainConfig, fraction: float, subset: Subset, *, device: str) -> Path:
    """``filter_checkpoint="auto"``: a strong-baseline re-ID model trained on the kept images only."""
    from posereid.reid_integration import train as reid_train

    out = config.work / f"filter-model-{fraction_tag(fraction)}"
    ckpt = out / "model.safetensors"
    if not ckpt.is_file():
        cfg = _reid_config(config, subset, "strong", config.subset_seed, (), device)
        cfg.out = str(out)
        reid_train.train_reid(cfg, progress=config.progress)
    return ckpt


def _reid_config(config: GainConfig, subset: Subset, arm: str, seed: int, synthetic: Sequence[Path], device: str):
    from posereid.reid_integration.train import ReidTrainConfig

    return ReidTrainConfig(
        data=str(subset.root), synthetic=[str(s) for s in synthetic], model=config.reid_model,
        steps=config.reid_steps, batch_size=config.reid_batch_size, lr=config.reid_lr, height=config.height,
        width=config.width, augment="strong" if arm.startswith("strong") else "plain", seed=int(seed),
        device=device, workers=config.num_workers, extra={"fraction": subset.fraction, "arm": arm},
    )  # fmt: skip


def run_cell(
    config: GainConfig, subset: Subset, arm: str, seed: int, synthetic: Sequence[Path], *, device: str
) -> dict[str, Any]:
    """Train and evaluate one re-ID model (``reid_steps`` steps whatever the arm); return its CSV row."""
    from posereid.reid_integration import train as reid_train

    cfg = _reid_config(config, subset, arm, seed, synthetic, device)
    t0 = time.perf_counter()
    res = reid_train.train_reid(cfg, progress=config.progress)
    wall = time.perf_counter() - t0
    row = {
        "fraction": subset.fraction, "arm": arm, "seed": int(seed),
        "mAP": 100.0 * float(res["mAP"]), "rank1": 100.0 * float(res["rank1"]),
        "rank5": 100.0 * float(res["rank5"]), "rank10": 100.0 * float(res["rank10"]),
        "images": int(res.get("real_images", subset.images)), "identities": int(res.get("identities", subset.identities)),
        "synthetic_images": int(res.get("synthetic_images", 0)), "steps": int(res.get("steps", config.reid_steps)),
        "batch_size": int(res.get("batch_size", config.reid_batch_size)), "wall_s": round(wall, 2), "reid_model": config.reid_model,
        "generator": config.generator_source() if synthetic else "",
    }  # fmt: skip
    detail = {k: v for k, v in res.items() if k != "checkpoint"}
    with atomic_write(config.work / "cells" / f"{fraction_tag(subset.fraction)}_{arm}_s{seed}.json") as fh:
        json.dump(detail, fh, indent=1, default=str)
    return row


# --------------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------------
def _check_protocol(config: GainConfig) -> None:
    """Refuse to mix results of different protocol settings in one output folder."""
    path = config.out / "gain_config.json"
    now = config.protocol()
    if path.is_file():
        saved = json.loads(path.read_text())
        diff = {k: (saved.get(k), now[k]) for k in now if _jsonable(saved.get(k)) != _jsonable(now[k])}
        if diff:
            raise ProtocolMismatchError(
                f"{config.out} holds results made with other settings "
                + ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in diff.items())
                + "; use a new --out (or delete the folder)"
            )
    else:
        with atomic_write(path) as fh:
            json.dump(now, fh, indent=2)


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v))


def planned_cells(config: GainConfig) -> list[tuple[str, str, int]]:
    """Every ``(fraction tag, arm, seed)`` the config asks for, in run order."""
    return [cell_key(f, a, s) for f in sorted(config.fractions) for a in config.arms for s in config.seeds]


def prepare_fraction(config: GainConfig, fraction: float) -> Subset:
    """Materialise (or reuse) ``fraction``'s subset folder under ``config.work``."""
    annotations = config.annotations or find_annotations(config.data)
    return materialize_subset(
        config.data, annotations, fraction, config.subset_seed, config.work / f"subset-{fraction_tag(fraction)}"
    )


def run_gain(config: GainConfig) -> list[dict[str, Any]]:
    """Run every missing cell of the protocol and write ``results.csv`` / ``.md`` / ``.png``.

    Cells already in ``results.csv`` are not recomputed; subsets, generators and synthetic folders in
    ``work/`` are reused. Within a fraction the baselines run first, then the generator is trained (only
    if a synthetic cell is missing), then the synthetic arms. Returns the rows of the asked-for cells.
    """
    config.out.mkdir(parents=True, exist_ok=True)
    _check_protocol(config)
    device = resolve_device(config.device)
    csv_path = config.out / "results.csv"
    rows = read_results(csv_path)
    done = {cell_key(r["fraction"], r["arm"], r["seed"]) for r in rows}
    plan = planned_cells(config)
    logger.info("reid-gain: %d cell(s) planned, %d already in %s", len(plan), len(set(plan) & done), csv_path)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(plan), initial=len(set(plan) & done), desc="reid-gain cells", unit="run",
               disable=not config.progress)
    try:
        for fraction in sorted(config.fractions):
            todo = [(a, s) for a in config.arms for s in config.seeds if cell_key(fraction, a, s) not in done]
            if not todo:
                continue
            subset = prepare_fraction(config, fraction)
            todo.sort(key=lambda c: "synthetic" in c[0])  # baselines first (stable: arm order kept)
            extra: dict[str, list[Path]] = {}
            for arm, seed in todo:
                if "synthetic" in arm and arm not in extra:
                    extra[arm] = _synthetic_folders(config, fraction, subset, arm, device=device)
                bar.set_postfix_str(f"{fraction_tag(fraction)} {arm} seed {seed}")
                row = run_cell(config, subset, arm, seed, extra.get(arm, []), device=device)
                rows.append(row)
                done.add(cell_key(fraction, arm, seed))
                write_results(csv_path, rows)
                bar.update(1)
    finally:
        bar.close()
    write_reports(config, rows)
    wanted = set(plan)
    return [r for r in read_results(csv_path) if cell_key(r["fraction"], r["arm"], r["seed"]) in wanted]


def _synthetic_folders(config: GainConfig, fraction: float, subset: Subset, arm: str, *, device: str) -> list[Path]:
    gen = ensure_generator(config, fraction, subset, device=device)
    ensure_synthetic(config, fraction, subset, gen, device=device)
    if arm.endswith("+filtered"):
        ensure_filtered(config, fraction, subset, device=device)
        return [synthetic_dir(config, fraction, filtered=True)]
    return [synthetic_dir(config, fraction)]


def write_reports(config: GainConfig, rows: Sequence[dict[str, Any]]) -> dict[str, Path]:
    """``results.md`` and ``results.png`` from the CSV rows; returns their paths."""
    summary = summarize(rows)
    md_path, png_path = config.out / "results.md", config.out / "results.png"
    gen = config.generator_source()
    gen_text = {
        "kept": f"trained on the kept fraction only (leakage-free), preset `{config.generator_preset}`, "
        f"{config.generator_steps} steps",
        "full": f"trained on ALL train images (leaky, PIDM's setting), preset `{config.generator_preset}`, "
        f"{config.generator_steps} steps",
    }.get(gen, f"given checkpoint `{config.generator}`")
    header = (
        "# Re-ID gain\n\n"
        f"- data: `{config.data}`; re-ID model `{config.reid_model}` at {config.height}x{config.width}, "
        f"{config.reid_steps} optimisation steps in EVERY run (batch {config.reid_batch_size})\n"
        f"- generator: {gen_text}; {config.per_image} image(s) per kept image, `{config.sampler}` "
        f"{config.steps} steps, guidance {tuple(config.guidance)}, pose sampling `{config.pose_sampling}`\n"
        f"- subset seed {config.subset_seed}; metrics in %, mean ± std over seeds; deltas are paired by seed\n"
    )
    with atomic_write(md_path, "w", encoding="utf-8") as fh:
        fh.write(markdown_table(summary, header))
    if summary:
        plot_results(summary, png_path, title=f"{config.reid_model}, {config.reid_steps} steps, generator: {gen}")
    return {"markdown": md_path, "plot": png_path, "csv": config.out / "results.csv"}


# --------------------------------------------------------------------------------------------------
# CLI: posereid reid-gain
# --------------------------------------------------------------------------------------------------
def parse_fractions(text: str) -> tuple[float, ...]:
    """``"0.2,0.4"`` or ``"20,40"`` (values above 1 are percentages) → ``(0.2, 0.4)``."""
    out = []
    for part in str(text).split(","):
        part = part.strip().rstrip("%")
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"fraction {part!r} is not a number") from None
        v = v / 100.0 if v > 1.0 else v
        if not 0.0 < v <= 1.0:
            raise argparse.ArgumentTypeError(f"fraction {part!r} must be in (0, 1] or (0, 100] %")
        out.append(v)
    if not out:
        raise argparse.ArgumentTypeError("no fraction given")
    return tuple(out)


def _csv_list(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(p.strip()) for p in text.split(",") if p.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_reid_gain_args(parser: argparse.ArgumentParser) -> None:
    d = GainConfig(data=Path("."), out=Path("."))
    parser.add_argument("--data", required=True, help="Market-1501-format folder")
    parser.add_argument("--annotations", help="PATN CSV of the train images (default: found next to --data)")
    parser.add_argument("--out", required=True, help="output folder (results.csv/.md/.png + work/ cache)")
    parser.add_argument("--fractions", type=parse_fractions, default=d.fractions,
                        help="kept fractions, e.g. 0.2,0.4 or 20,40 (default: 20..100%%)")
    parser.add_argument("--arms", type=_csv_list(str), default=d.arms, help=f"comma list from {', '.join(ARMS)}")
    parser.add_argument("--seeds", type=_csv_list(int), default=d.seeds, help="re-ID seeds, e.g. 0,1,2")
    parser.add_argument("--subset-seed", type=int, default=d.subset_seed, help="seed of the subset choice")
    parser.add_argument("--reid-steps", type=int, default=d.reid_steps, help="optimisation steps of EVERY run")
    parser.add_argument("--reid-model", default=d.reid_model, help="torchreid model name")
    parser.add_argument("--reid-batch-size", type=int, default=d.reid_batch_size)
    parser.add_argument("--reid-lr", type=float, default=d.reid_lr)
    parser.add_argument("--generator-preset", default=d.generator_preset, help="tiny|small|market|deepfashion")
    parser.add_argument("--generator-steps", type=int, default=d.generator_steps)
    parser.add_argument("--generator-batch-size", type=int, default=d.generator_batch_size)
    parser.add_argument("--generator-lr", type=float, default=d.generator_lr)
    parser.add_argument("--generator", help="reuse this generator checkpoint for every fraction")
    parser.add_argument("--generator-data", choices=("kept", "full"), default=d.generator_data,
                        help="train the generator on the kept fraction only (default) or on all train images")
    parser.add_argument("--per-image", type=int, default=d.per_image, help="synthetic images per kept image")
    parser.add_argument("--sampler", default=d.sampler, help="diffusion sampler (dpmsolver++, ddim, unipc, …)")
    parser.add_argument("--steps", type=int, default=d.steps, help="sampling steps")
    parser.add_argument("--guidance", type=_csv_list(float), default=d.guidance,
                        help="guidance weight, or pose,appearance weights")
    parser.add_argument("--pose-sampling", choices=("uniform", "cluster", "view"), default=d.pose_sampling)
    parser.add_argument("--gen-batch-size", type=int, default=d.gen_batch_size)
    parser.add_argument("--annotation-hw", type=int, nargs=2, metavar=("H", "W"),
                        help="frame of the annotation coordinates (default: the train images' own size)")
    parser.add_argument("--filter-checkpoint",
                        help="re-ID checkpoint for the strong+synthetic+filtered arm, or 'auto'")
    parser.add_argument("--filter-score", choices=("similarity", "margin"), default=d.filter_score)
    parser.add_argument("--filter-threshold", type=float, default=d.filter_threshold)
    parser.add_argument("--height", type=int, default=d.height)
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument("--device", default=d.device, help="auto (cuda if available), cpu, cuda, cuda:1, …")
    parser.add_argument("--workers", type=int, default=d.num_workers, help="data loader workers")
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> GainConfig:
    """A :class:`GainConfig` from parsed ``posereid reid-gain`` arguments."""
    guidance = tuple(args.guidance)
    return GainConfig(
        data=Path(args.data), out=Path(args.out), annotations=args.annotations, fractions=args.fractions,
        arms=args.arms, seeds=args.seeds, subset_seed=args.subset_seed, reid_steps=args.reid_steps,
        reid_model=args.reid_model, reid_batch_size=args.reid_batch_size, reid_lr=args.reid_lr,
        height=args.height, width=args.width, generator_preset=args.generator_preset,
        generator_steps=args.generator_steps, generator_batch_size=args.generator_batch_size,
        generator_lr=args.generator_lr, generator=args.generator, generator_data=args.generator_data,
        per_image=args.per_image, sampler=args.sampler, steps=args.steps,
        guidance=guidance * 2 if len(guidance) == 1 else guidance, pose_sampling=args.pose_sampling,
        gen_batch_size=args.gen_batch_size, annotation_hw=args.annotation_hw,
        filter_checkpoint=args.filter_checkpoint, filter_score=args.filter_score,
        filter_threshold=args.filter_threshold, device=args.device, num_workers=args.workers,
        progress=not args.no_progress,
    )  # fmt: skip


def run_reid_gain(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    rows = run_gain(config)
    print(markdown_table(summarize(rows)))
    for what, path in (("results", config.out / "results.csv"), ("table", config.out / "results.md"),
                       ("plot", config.out / "results.png")):
        print(f"{what:>8}: {path}")
    return 0


__all__ = [
    "ARMS",
    "CSV_FIELDS",
    "DEFAULT_ARMS",
    "GainConfig",
    "ProtocolMismatchError",
    "Subset",
    "ensure_filtered",
    "ensure_generator",
    "ensure_synthetic",
    "generator_dir",
    "markdown_table",
    "materialize_subset",
    "parse_fractions",
    "plot_results",
    "prepare_fraction",
    "read_results",
    "resolve_device",
    "run_cell",
    "run_gain",
    "select_subset",
    "summarize",
    "synthetic_dir",
    "write_reports",
    "write_results",
]
