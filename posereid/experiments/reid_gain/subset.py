"""The train subsets ``D_tr`` of the re-ID gain protocol: seeded, nested, ≥ 1 image per identity.

Used by :mod:`~posereid.experiments.reid_gain.protocol` (which imports this module, never the reverse):
choosing a fraction's kept images and materialising them as a Market-format folder (links to the kept
train images, the query/gallery splits, the kept images' annotation and pair rows). Every public name here
is also importable from :mod:`posereid.experiments.reid_gain`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from posereid.experiments.data import MarketSource
from posereid.experiments.reid_gain.config import ProtocolMismatchError, fraction_tag
from posereid.models.io_utils import atomic_write, is_temp_file
from posereid.reid_integration.market1501 import (
    SPLIT_DIRS,
    MarketRecord,
    read_pairs_csv,
    write_pairs_csv,
    write_patn_csv,
)

logger = logging.getLogger(__name__)


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

    @functools.cached_property
    def source(self) -> MarketSource:
        """The subset folder and its annotations, parsed once (shared by the fraction's stages)."""
        return MarketSource(self.root, self.annotations)


def materialize_subset(
    data: Path,
    annotations: Path,
    fraction: float,
    seed: int,
    out_dir: Path,
    *,
    source: MarketSource | None = None,
) -> Subset:
    """Write (or reuse) the Market-format folder of one fraction's subset.

    ``out_dir`` gets ``bounding_box_train`` with links to the kept images, ``query`` / ``bounding_box_test``
    linked to the source ones, ``market-annotation-train.csv`` with the kept images' rows (the pose bank
    and the generator's training data), ``market-pairs-train.csv`` with the pairs among kept images
    when the source has one, and ``subset.json``. Built in a temporary folder and renamed into place.

    ``source``: ``data`` and ``annotations`` already wrapped (and maybe parsed) by the run, so that every
    fraction reuses one parse; ``None`` parses them here.
    """
    if source is None:
        source = MarketSource(data, annotations)
    ds = source.market
    train = [r for r in ds.train if r.has_identity]  # junk and distractors never enter re-ID training
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
    ann = source.patn(image_hw=None)
    missing = [n for n in names if n not in ann]
    if missing:
        logger.warning(
            "%s: %d of %d kept train images have no annotation row (e.g. %s); they stay in the re-ID "
            "subset but cannot be generator sources or target poses",
            annotations,
            len(missing),
            len(names),
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
    logger.info(
        "subset %s: %d/%d images, %d identities → %s",
        fraction_tag(fraction),
        len(names),
        len(train),
        identities,
        out_dir,
    )
    return Subset(out_dir, fraction, names, identities, out_dir / "market-annotation-train.csv")
