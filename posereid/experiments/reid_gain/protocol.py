"""The re-ID gain protocol: does training on pose-transfer images help a re-ID model, honestly measured?

PIDM §4.5 keeps a fraction of the Market-1501 train images (≥ 1 per identity), trains a re-ID model on
that subset ``D_tr`` with and without generated images, and compares mAP. This module runs that protocol
with three corrections (``docs/DESIGN.md`` §6):

- a **strong** baseline (flip + random erasing) beside the plain one, so a gain is not just "any
  augmentation helps";
- the generator is trained **only on D_tr** (leakage-free; ``generator_data="full"`` or a given checkpoint
  are options, and the results record which was used);
- several **seeds** (mean ± std, paired 95 % intervals) and the **same number of optimisation steps** for
  every arm;
- on synthetic people an **oracle** arm (``strong+oracle``: real renders of the train identities in the
  views the train split hides, as many as the synthetic images): the ceiling of pose augmentation, against
  which a synthetic arm is reported as the share of the oracle's gain it recovers; and a **floor**
  (``strong+noise``: as many pixel-noise images with each kept image's colour statistics), which a
  generator must beat to be worth more than noise.

Every fraction's subset is materialised as a Market-format folder (hard links, symlinks or copies) plus
its PATN annotation / pair rows, so the generator trainer, the offline generator and the re-ID trainer all
read it like any Market folder. Subsets are nested (the 20 % subset is inside the 40 % one) and depend only
on ``subset_seed``.

Outputs under ``out``: ``results.csv`` (one row per fraction × arm × seed), ``results.md`` (mean ± std,
paired deltas vs the ``plain`` and ``strong`` baselines with 95 % intervals and whether they are settled,
and the share of the oracle's gain each synthetic arm recovers), ``results.png`` (mAP / rank-1 vs
fraction, and the paired ΔmAP vs ``strong`` with its interval) and ``work/`` (subsets, generators,
synthetic and oracle folders; reused on a rerun). A rerun reads finished cells back
from the CSV and computes only the missing ones.

The settings (:class:`GainConfig`, the arms) live in :mod:`~posereid.experiments.reid_gain.config`, the
nested train subsets in :mod:`~posereid.experiments.reid_gain.subset`, the results CSV, summary, table and
plot in :mod:`~posereid.experiments.reid_gain.report` and the ``reid-gain`` command in
:mod:`~posereid.experiments.reid_gain.cli`. This module holds the protocol itself (generator, synthetic
and filter stages, one re-ID cell, :func:`run_gain`); :mod:`posereid.experiments.reid_gain` re-exports the
public names of all of them.

The source Market folder and its annotations are parsed once per run (a
:class:`~posereid.experiments.data.MarketSource` that :func:`run_gain` builds, or is given, and passes to
every fraction and stage).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from posereid.experiments.data import MarketSource
from posereid.experiments.reid_gain.config import (
    BASELINE_FIELDS,
    ORACLE_ARM,
    GainConfig,
    GainOutOfTimeError,
    ProtocolMismatchError,
    arm_extra,
    find_annotations,
    fraction_tag,
    is_filtered,
    is_soft,
    with_unrecorded,
)
from posereid.experiments.reid_gain.report import (
    cell_key,
    read_results,
    read_run,
    write_reports,
    write_results,
)
from posereid.experiments.reid_gain.subset import Subset, _link_or_copy, materialize_subset
from posereid.models.io_utils import atomic_write
from posereid.models.locks import LOCK_NAME, output_lock
from posereid.reid_integration.market1501 import Market1501, read_pairs_csv

logger = logging.getLogger(__name__)
_clock = time.monotonic  # the ``max_minutes`` clock (tests replace it)


# --------------------------------------------------------------------------------------------------
# Stages: generator, synthetic folder, filter, one re-ID cell
# --------------------------------------------------------------------------------------------------
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


def oracle_dir(config: GainConfig, fraction: float) -> Path:
    """The Market-format folder of ``fraction``'s oracle images (the ``strong+oracle`` arm)."""
    return config.work / f"oracle-{fraction_tag(fraction)}"


def noise_dir(config: GainConfig, fraction: float, *, filtered: bool = False) -> Path:
    """The Market-format folder of ``fraction``'s noise images (the ``strong+noise`` floor; ``filtered``:
    after the identity filter, the ``strong+noise+filtered`` arm)."""
    return config.work / f"noise-{fraction_tag(fraction)}{'-filtered' if filtered else ''}"


def ensure_noise(config: GainConfig, fraction: float, subset: Subset) -> int:
    """Write (or reuse) ``fraction``'s noise folder; return its image count.

    ``per_image`` images per kept image, under its pid and camera (synthetic names), each i.i.d. Gaussian
    pixel noise with that image's per-channel mean and standard deviation: as many images as the synthetic
    arm adds, with the colour statistics of the person they are labelled as and nothing else. Seeded by the
    image name, so a rerun writes the same folder.
    """
    import zlib

    import numpy as np
    from PIL import Image

    from posereid.augment.manifest import synthetic_name

    out = noise_dir(config, fraction)
    done = out / "gain_done.json"
    if done.is_file():
        return int(json.loads(done.read_text())["images"])
    shutil.rmtree(out, ignore_errors=True)  # complete but unmarked: write again (it is deterministic)
    train = out / "bounding_box_train"
    train.mkdir(parents=True)
    src_dir = subset.root / "bounding_box_train"
    for name in subset.names:
        with Image.open(src_dir / name) as im:
            px = np.asarray(im.convert("RGB"), dtype=np.float64)
        mean, std = px.mean(axis=(0, 1)), px.std(axis=(0, 1))
        for k in range(config.per_image):
            rng = np.random.default_rng([zlib.crc32(name.encode()), k])
            noise = rng.normal(mean, std, size=px.shape).clip(0, 255).round().astype(np.uint8)
            target = train / synthetic_name(name, k)
            with atomic_write(target, "wb") as fh:
                Image.fromarray(noise).save(fh, format="JPEG", quality=95)
    images = len(subset.names) * config.per_image
    with atomic_write(done) as fh:
        json.dump({"images": images, "per_image": config.per_image}, fh)
    return images


class OracleUnavailableError(ValueError):
    """``strong+oracle`` was asked for on a dataset without the synthetic renderer's metadata."""


def check_oracle(config: GainConfig) -> None:
    """Refuse the ``strong+oracle`` arm unless ``config.data`` is a dataset written by ``synth-market``
    (oracle views need the renderer's identities and cameras, ``synthetic-identities.json``)."""
    if ORACLE_ARM not in config.arms:
        return
    from posereid.experiments.synthetic.dataset import IDENTITIES_JSON, find_synthetic_metadata

    if find_synthetic_metadata(config.data) is None:
        raise OracleUnavailableError(
            f"arm '{ORACLE_ARM}' needs a synthetic dataset: it renders the train identities in the views the "
            f"train split hides, from the renderer's metadata ({IDENTITIES_JSON}), and {config.data} has none "
            "(real data cannot have an oracle); drop the arm, or use a folder written by `posereid synth-market`"
        )


def ensure_oracle(config: GainConfig, fraction: float, subset: Subset) -> int:
    """Render (or reuse) ``fraction``'s oracle folder; return its image count.

    ``per_image`` oracle images per kept image, under the kept image's pid and camera, in the view
    directions the train split hides (:func:`~posereid.experiments.synthetic.dataset.write_oracle_views`):
    as many as the synthetic arm is asked to generate from the same sources.
    """
    from posereid.experiments.synthetic.dataset import write_oracle_views

    out = oracle_dir(config, fraction)
    done = out / "gain_done.json"
    if done.is_file():
        return int(json.loads(done.read_text())["images"])
    shutil.rmtree(out, ignore_errors=True)  # complete but unmarked: render again (it is deterministic)
    summary = write_oracle_views(config.data, out, subset.names, per_image=config.per_image)
    images = len(Market1501(out).train)
    with atomic_write(done) as fh:
        json.dump({"images": images, "per_image": config.per_image, "identities": summary["identities"]}, fh)
    return images


def ensure_generator(
    config: GainConfig,
    fraction: float,
    subset: Subset,
    *,
    device: str,
    source: MarketSource | None = None,
    max_minutes: float | None = None,
) -> Path:
    """Train (or reuse) the generator for ``fraction`` and return its checkpoint directory.

    ``generator_data="kept"`` trains on ``subset`` only (leakage-free); ``"full"`` on all train images
    (``source``: the run's parsed Market folder, see :func:`market_source`); a given ``config.generator``
    is returned as is. A finished ``final/`` directory is reused; an interrupted run resumes from its last
    checkpoint (``train_generator(resume=True)``). ``max_minutes``: the training's wall budget; when it
    runs out the training checkpoints and :class:`GainOutOfTimeError` is raised (a rerun resumes it).
    """
    from posereid.experiments.data import market_pose_records
    from posereid.models import training
    from posereid.models.contract import is_checkpoint_dir

    final = generator_dir(config, fraction)
    if config.generator is not None:
        if not is_checkpoint_dir(final):
            raise FileNotFoundError(
                f"{final}: no generator checkpoint (model_index.json or config.json) there"
            )
        return final
    if is_checkpoint_dir(final):
        return final
    if config.generator_data == "full":
        data = source if source is not None else market_source(config)
    else:
        data = subset.source
    root, annotations = data.root, data.annotations
    records = market_pose_records(data, annotation_size=config.annotation_hw, progress=config.progress)
    if not records:
        raise ValueError(f"{root}: no annotated train image to train the generator on ({annotations})")
    pairs_csv = Path(annotations).with_name("market-pairs-train.csv")
    pairs = read_pairs_csv(pairs_csv) if config.generator_data == "kept" and pairs_csv.is_file() else None
    model = new_generator(config)
    pipeline = type(model)
    identity = None
    if config.generator_identity_weight > 0:  # against a re-ID model of the kept images only (no leakage)
        from posereid.experiments.identity_loss import IdentityLoss

        identity = IdentityLoss(
            ensure_identity_model(config, subset, device=device), config.generator_identity_weight
        )
        model = identity.apply(model, device="cpu" if device == "cpu" else None)
    dataset = training.PosePairDataset(
        records, model.image_size, pairs=pairs or None, seed=config.subset_seed
    )
    steps = config.generator_steps
    tcfg = training.TrainConfig(
        steps=steps, batch_size=config.generator_batch_size, lr=config.generator_lr,
        warmup_steps=min(500, steps // 10), checkpoint_every=max(1, steps // 5) if steps >= 50 else 0,
        sample_every=0, seed=config.subset_seed, tensorboard=False, num_workers=config.num_workers,
        mixed_precision="bf16" if device.startswith("cuda") and _bf16_ok() else "no", max_minutes=max_minutes,
        identity_loss=identity.description() if identity is not None else None,
    )  # fmt: skip
    logger.info(
        "training the %s generator on %d images (%s) for %d steps → %s",
        config.generator_preset,
        len(records),
        root,
        steps,
        final.parent,
    )
    stages = pipeline.TRAINING_STAGES
    with _device_env(device):
        if stages:  # a multi-stage family (PCDMs): each stage in order, the last copied to final/
            result = training.train_stages(
                lambda prev: model if prev is None else pipeline.from_pretrained(prev).train(),
                dataset, dict.fromkeys(stages, tcfg), final.parent, progress=config.progress,
            )  # fmt: skip
        else:
            result = training.train_generator(
                model, dataset, tcfg, final.parent, resume=True, progress=config.progress
            )
    if result is not None and result.out_of_time:
        raise GainOutOfTimeError(
            f"the generator of {fraction_tag(fraction)} stopped at step {result.steps} of {steps} "
            f"({final.parent}) when the time budget ran out; rerun to resume it"
        )
    if not is_checkpoint_dir(final):
        raise RuntimeError(f"generator training finished without writing {final}")
    return final


def new_generator(config: GainConfig) -> Any:
    """A fresh, untrained generator of ``config``'s family, preset and options at the re-ID image size."""
    from posereid.models.contract import family_class

    options = {"image_size": (config.height, config.width), **config.generator_options}
    try:
        return family_class(config.generator_family).from_preset(config.generator_preset, **options)
    except TypeError as err:  # a model's __init__ refusing an unknown keyword
        raise ValueError(
            f"generator options {config.generator_options}: the {config.generator_family} preset "
            f"{config.generator_preset!r} does not take them ({err})"
        ) from None


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


def ensure_synthetic(
    config: GainConfig, fraction: float, subset: Subset, generator: Path, *, device: str
) -> int:
    """Generate (or finish) ``fraction``'s synthetic folder from the kept images; return its image count.

    Sources are the kept images and target poses come from the kept images' annotations, so nothing
    outside ``D_tr`` enters. ``generate_offline`` resumes an interrupted folder and refuses one made with
    other settings.
    """
    from posereid.augment.generate import GenerateConfig, generate_offline
    from posereid.models.contract import load_generator

    out = synthetic_dir(config, fraction)
    done = out / "gain_done.json"
    if done.is_file():
        return int(json.loads(done.read_text())["images"])
    model = load_generator(generator, device=device)
    settings = GenerateConfig(
        out, per_image=config.per_image, sampling=config.pose_sampling, steps=config.steps,
        sampler=config.sampler, guidance=config.guidance, batch_size=config.gen_batch_size,
        seed=config.subset_seed, annotation_hw=config.annotation_hw, progress=config.progress,
    )  # fmt: skip
    summary = generate_offline(settings, model, subset.root, subset.annotations)
    if summary.failed_items:
        logger.warning("%s: %d source image(s) failed: %s", out, summary.failed_items, summary.failures[:3])
    images = len(Market1501(out).train)
    with atomic_write(done) as fh:
        json.dump({"images": images, "generator": str(generator), **summary.as_dict()}, fh)
    return images


def ensure_filtered(
    config: GainConfig, fraction: float, subset: Subset, *, device: str, extra: str = "synthetic"
) -> int:
    """Copy (hard links) the synthetic folder (``extra="noise"``: the floor's noise folder) and drop images whose
    re-ID features look like another identity (``filter_folder``, centroids of the KEPT real images); return the
    kept count."""
    from posereid.augment.filter import IdentityFilter, filter_folder
    from posereid.reid_integration.torchreid_plugin import ReidFeatureExtractor

    folder = {"synthetic": synthetic_dir, "noise": noise_dir}[extra]
    src, out = folder(config, fraction), folder(config, fraction, filtered=True)
    done = out / "gain_done.json"
    if done.is_file():
        return int(json.loads(done.read_text())["images"])
    ckpt = config.filter_checkpoint
    if str(ckpt) == "auto":
        ckpt = ensure_filter_model(config, fraction, subset, device=device)
    extractor = ReidFeatureExtractor.from_checkpoint(ckpt, device=device)
    ident = IdentityFilter(extractor, image_size=extractor.size, progress=config.progress)
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(
        src, tmp, copy_function=_link_or_copy_str, ignore=shutil.ignore_patterns("gain_done.json")
    )
    if extra == "noise":
        _write_noise_manifest(tmp)
    summary = filter_folder(
        tmp, subset.root, ident, threshold=config.filter_threshold, score=config.filter_score
    )
    os.replace(tmp, out)
    images = len(Market1501(out).train)
    with atomic_write(done) as fh:
        json.dump({"images": images, "checkpoint": str(ckpt), **summary.as_dict()}, fh)
    logger.info("filter %s: kept %d of %d", out, summary.kept, summary.scored)
    return images


def _write_noise_manifest(folder: Path) -> None:
    """The manifest ``filter_folder`` reads, for a noise folder (written without one): each image's name, its
    source image and that image's pid, all read from the synthetic name."""
    from posereid.augment.manifest import MANIFEST_NAME, parse_synthetic_name, write_manifest_file
    from posereid.reid_integration.market1501 import parse_market_name

    entries = []
    for img in sorted((folder / "bounding_box_train").glob("*.jpg")):
        stem, k = parse_synthetic_name(img.name)
        entries.append(
            {"name": img.name, "source": f"{stem}.jpg", "source_pid": parse_market_name(img.name)[0], "k": k}
        )
    write_manifest_file(folder / MANIFEST_NAME, entries)


def _link_or_copy_str(src: str, dst: str) -> str:
    """Images are hard-linked (never modified in place); manifests and configs are copied."""
    if src.lower().endswith((".jpg", ".jpeg", ".png")):
        _link_or_copy(Path(src), Path(dst))
    else:
        shutil.copy2(src, dst)
    return dst


def _kept_reid_model(config: GainConfig, subset: Subset, name: str, seed: int, *, device: str) -> Path:
    """A strong-baseline re-ID model trained on the kept images only, once (``work/<name>-<fraction>``)."""
    from posereid.reid_integration import train as reid_train

    out = config.work / f"{name}-{fraction_tag(subset.fraction)}"
    ckpt = out / "model.safetensors"
    if not ckpt.is_file():
        cfg = _reid_config(config, subset, "strong", seed, (), device)
        cfg.out = str(out)
        reid_train.train_reid(cfg, progress=config.progress)
    return ckpt


def ensure_filter_model(config: GainConfig, fraction: float, subset: Subset, *, device: str) -> Path:
    """The ``auto`` filter model of ``fraction``: a strong-baseline re-ID model trained on the kept images only,
    once (``work/filter-model-<fraction>``); ``filter_checkpoint="auto"`` filters with it and the generator
    gate (:class:`~posereid.experiments.reid_gain.gate.GainGate`) judges with it."""
    return _kept_reid_model(config, subset, "filter-model", config.subset_seed, device=device)


#: added to ``subset_seed`` for the identity model's seed, so the generator is not trained against the very
#: network (the filter model) that gates and filters its images
IDENTITY_MODEL_SEED_OFFSET = 1000


def ensure_identity_model(config: GainConfig, subset: Subset, *, device: str) -> Path:
    """The re-ID model of the protocol generator's identity loss (``generator_identity_weight``): trained on
    the kept images only, as the filter model, but with another seed (``work/identity-model-<fraction>``), so
    the gate and the filter judge the generator with a network it was not trained against."""
    seed = config.subset_seed + IDENTITY_MODEL_SEED_OFFSET
    return _kept_reid_model(config, subset, "identity-model", seed, device=device)


def cell_dir(config: GainConfig, fraction: float, arm: str, seed: int) -> Path:
    """The folder of one cell's saved model (only ``strong`` cells of a run with a soft-label arm keep one)."""
    return config.work / "cells" / f"{fraction_tag(fraction)}_{arm}_s{int(seed)}"


def teacher_checkpoint(config: GainConfig, fraction: float, seed: int) -> Path:
    """Where the ``strong`` cell of ``fraction`` and ``seed`` keeps its model: the soft arm's teacher."""
    return cell_dir(config, fraction, "strong", seed) / "model.safetensors"


def _keeps_model(config: GainConfig, arm: str) -> bool:
    """Whether a cell of ``arm`` saves its model: ``strong`` cells, when the run has a soft-label arm."""
    return arm == "strong" and any(is_soft(a) for a in config.arms)


def ensure_teacher(config: GainConfig, subset: Subset, seed: int, *, device: str) -> Path:
    """A soft-label cell's teacher (:data:`SOFT_ARM`, :data:`NOISE_SOFT_ARM`): the model of the ``strong`` cell
    of the same seed and fraction.

    In order: this run's strong cell model; the strong cell model of ``baselines_from`` (the very model whose
    row this run reads); otherwise (a strong cell run before the soft arm was asked for, or read from a run
    that kept no model) a strong model trained here with that cell's exact settings (same kept images,
    seed and steps: nothing outside the kept real images enters) and kept where this run's strong cell
    keeps its model, so a rerun reuses it. Its row is not touched: the soft arm stays paired with the
    strong cell in ``results.csv``.
    """
    from posereid.reid_integration import train as reid_train

    fraction = subset.fraction
    mine = teacher_checkpoint(config, fraction, seed)
    if mine.is_file():
        return mine
    if config.baselines_from is not None:
        theirs = Path(config.baselines_from) / mine.relative_to(config.out)
        if theirs.is_file():
            return theirs
    logger.warning(
        "reid-gain: the strong cell %s seed %s kept no model (%s); training its teacher here with the same "
        "settings → %s",
        fraction_tag(fraction), seed,
        f"read from {config.baselines_from}" if config.baselines_from is not None else "run without the soft arm",
        mine,
    )  # fmt: skip
    cfg = _reid_config(config, subset, "strong", seed, (), device)
    cfg.out = str(mine.parent)
    reid_train.train_reid(cfg, progress=config.progress)
    _drop_results_json(mine.parent)
    return mine


def _drop_results_json(folder: Path) -> None:
    """A cell's model folder keeps only the model and its meta (the results are in the cell's JSON)."""
    (folder / "results.json").unlink(missing_ok=True)


def _reid_config(
    config: GainConfig,
    subset: Subset,
    arm: str,
    seed: int,
    synthetic: Sequence[Path],
    device: str,
    teacher: Path | None = None,
):
    from posereid.reid_integration.train import ReidTrainConfig

    soft = {} if teacher is None else {
        "soft_teacher": teacher, "soft_weight": config.soft_weight, "soft_temperature": config.soft_temperature,
    }  # fmt: skip
    return ReidTrainConfig(
        data=str(subset.root), synthetic=[str(s) for s in synthetic], model=config.reid_model,
        steps=config.reid_steps, batch_size=config.reid_batch_size, lr=config.reid_lr, height=config.height,
        width=config.width, augment="strong" if arm.startswith("strong") else "plain", seed=int(seed),
        device=device, workers=config.num_workers, extra={"fraction": subset.fraction, "arm": arm},
        synthetic_ratio=batch_share(config, arm) if synthetic else None, **soft,
    )  # fmt: skip


def batch_share(config: GainConfig, arm: str) -> float | None:
    """The share of extra images in ``arm``'s batches: ``soft_synthetic_ratio`` for a soft-label arm,
    ``synthetic_ratio`` for the others (``None``: uniform over all images)."""
    return config.soft_synthetic_ratio if is_soft(arm) else config.synthetic_ratio


def run_cell(
    config: GainConfig,
    subset: Subset,
    arm: str,
    seed: int,
    synthetic: Sequence[Path],
    *,
    device: str,
    teacher: Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate one re-ID model (``reid_steps`` steps whatever the arm); return its CSV row.

    ``teacher``: a soft-label cell's teacher (:func:`ensure_teacher`; required for that
    arm). A ``strong`` cell of a run with the soft arm keeps its model (:func:`teacher_checkpoint`).
    """
    from posereid.reid_integration import train as reid_train

    if is_soft(arm) and teacher is None:
        raise ValueError(f"arm '{arm}' needs its teacher (the strong cell model of the same seed)")
    cfg = _reid_config(config, subset, arm, seed, synthetic, device, teacher if is_soft(arm) else None)
    keep = _keeps_model(config, arm)
    if keep:
        cfg.out = str(cell_dir(config, subset.fraction, arm, seed))
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
        "generator": {"oracle": "oracle", "noise": "noise"}.get(arm_extra(arm), config.generator_source()) if synthetic else "",
    }  # fmt: skip
    if keep:
        _drop_results_json(cell_dir(config, subset.fraction, arm, seed))
    detail = {k: v for k, v in res.items() if k != "checkpoint" or keep}
    with atomic_write(config.work / "cells" / f"{fraction_tag(subset.fraction)}_{arm}_s{seed}.json") as fh:
        json.dump(detail, fh, indent=1, default=str)
    return row


# --------------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------------
#: the settings a floor cell with soft labels or the identity filter depends on beyond :data:`BASELINE_FIELDS`
_SOFT_FIELDS: tuple[str, ...] = ("soft_weight", "soft_temperature")
_FILTER_FIELDS: tuple[str, ...] = ("filter_checkpoint", "filter_score", "filter_threshold")
#: the settings only the soft-label cells depend on
_SOFT_SETTING_FIELDS: tuple[str, ...] = ("soft_synthetic_ratio", *_SOFT_FIELDS)


def _check_protocol(config: GainConfig) -> None:
    """Refuse to mix results of different protocol settings in one output folder, then record the settings.

    A folder whose ``gain_config.json`` differs but which holds neither a result (``results.csv`` rows)
    nor ``work/`` (subsets, generators, images made with the old settings) takes the new settings: nothing
    made with the old ones would be mixed in. The soft-label settings shape only soft-label cells: a folder
    without one takes new ones whatever it holds (e.g. a run made before the soft arms' default mix changed).
    """
    path = config.out / "gain_config.json"
    now = config.protocol()
    if path.is_file():
        saved = json.loads(path.read_text())
        saved = with_unrecorded(saved)
        diff = {k: (saved.get(k), now[k]) for k in now if _jsonable(saved.get(k)) != _jsonable(now[k])}
        rows = read_results(config.out / "results.csv")
        if not any(is_soft(r["arm"]) for r in rows):
            benign = {k: diff.pop(k) for k in _SOFT_SETTING_FIELDS if k in diff}
            if benign and not diff:
                logger.info(
                    "%s: no soft-label cell yet; its soft-label settings are replaced (%s)", path, benign
                )
        if not diff:
            with atomic_write(path) as fh:
                json.dump(now, fh, indent=2)
            return
        changes = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in diff.items())
        if rows:
            raise ProtocolMismatchError(
                f"{config.out} holds results made with other settings {changes}; use a new --out (or delete "
                "the folder)"
            )
        if config.work.exists():
            raise ProtocolMismatchError(
                f"{config.out} holds no result yet, but its {config.work} (subsets, generators, images) was made "
                f"with other settings {changes}; delete {config.work} to start with these settings, or use a "
                "new --out"
            )
        logger.info("%s: no result and no work/ yet; its settings are replaced (%s)", path, changes)
    with atomic_write(path) as fh:
        json.dump(now, fh, indent=2)


def validate_run(config: GainConfig) -> None:
    """Everything a run can be refused for before it starts, checked before anything is written: the
    oracle's metadata, the generator options, the device, the Market folder and its annotation CSV, a given
    generator or filter checkpoint, and ``baselines_from``'s settings."""
    from posereid.models.contract import is_checkpoint_dir
    from posereid.models.runtime import resolve_device
    from posereid.reid_integration.market1501 import resolve_data_dir

    check_oracle(config)  # before any work: a missing oracle must not surface hours into a run
    if config.generator_options and config.generator is None:
        new_generator(config)  # an unknown option fails now, not after the baselines
    resolve_device(config.device)
    resolve_data_dir(config.data)
    annotations = config.annotations or find_annotations(config.data)
    if not Path(annotations).is_file():
        raise FileNotFoundError(f"--annotations {annotations}: no such file")
    synthetic = any(arm_extra(a) == "synthetic" for a in config.arms)
    if synthetic and config.generator is not None and not is_checkpoint_dir(config.generator):
        raise FileNotFoundError(
            f"--generator {config.generator}: no generator checkpoint (model_index.json or config.json) there"
        )
    ckpt = config.filter_checkpoint
    filtered = any(is_filtered(a) for a in config.arms)
    if filtered and ckpt is not None and str(ckpt) != "auto" and not Path(ckpt).is_file():
        raise FileNotFoundError(f"--filter-checkpoint {ckpt}: no such file")
    _baselines_source(config)


def _baselines_source(config: GainConfig) -> list[dict[str, Any]]:
    """The result rows of ``config.baselines_from`` (``[]`` without one), refused
    (:class:`ProtocolMismatchError`) when its :data:`BASELINE_FIELDS` differ from this run's: its cells would
    not be the models this run would train."""
    src = config.baselines_from
    if src is None:
        return []
    saved, theirs = read_run(src)
    now = config.protocol()
    diff = {
        k: (saved.get(k), now[k]) for k in BASELINE_FIELDS if _jsonable(saved.get(k)) != _jsonable(now[k])
    }
    if diff:
        raise ProtocolMismatchError(
            f"--baselines-from {src}: its baseline cells were made with other settings "
            + ", ".join(f"{k}: {a!r} (there) vs {b!r} (here)" for k, (a, b) in diff.items())
        )
    return theirs


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v))


def import_baselines(
    config: GainConfig, plan: Sequence[tuple[str, str, int]], done: set[tuple[str, str, int]]
) -> list[dict[str, Any]]:
    """The baseline, oracle and floor rows of ``config.baselines_from`` that ``plan`` asks for and ``done`` lacks,
    each marked ``read_from`` (the folder; the report tells them from the cells trained here).

    Refuses (:class:`ProtocolMismatchError`) a folder whose :data:`BASELINE_FIELDS` differ from this run's:
    its cells would not be the models this run would train. Oracle and floor cells are read only when its
    ``synthetic_ratio`` is this run's too (their batches mix extra images by it; a soft floor's by
    ``soft_synthetic_ratio``, and it needs the same soft-label settings; a filtered floor the same filter). The
    asked-for cells it lacks are trained here.
    """
    src = config.baselines_from
    if src is None:
        return []
    theirs = _baselines_source(config)
    saved, _ = read_run(src)
    saved, now = with_unrecorded(saved), config.protocol()

    def same(keys: Sequence[str]) -> bool:
        return all(_jsonable(saved.get(k)) == _jsonable(now[k]) for k in keys)

    def readable(arm: str) -> bool:
        # the oracle and floor arms add images, so their batches follow the arm's share of extra images (a
        # soft-label arm's own); a floor variant also depends on the soft-label or filter settings. The
        # baselines add none and are the same models whatever these settings.
        if arm_extra(arm) not in ("oracle", "noise"):
            return arm_extra(arm) == ""
        mix = ("soft_synthetic_ratio", *_SOFT_FIELDS) if is_soft(arm) else ("synthetic_ratio",)
        return same(mix) and (not is_filtered(arm) or same(_FILTER_FIELDS))

    if not same(("synthetic_ratio",)):
        logger.info(
            "reid-gain: %s mixed extra images with synthetic_ratio %r (here %r): its oracle and floor cells are "
            "other models, trained here instead", src, saved.get("synthetic_ratio"), config.synthetic_ratio,
        )  # fmt: skip
    wanted = {c for c in set(plan) - done if readable(c[1])}
    rows = [
        {**r, "read_from": str(src)} for r in theirs
        if cell_key(r["fraction"], r["arm"], r["seed"]) in wanted
    ]  # fmt: skip
    missing = sorted(wanted - {cell_key(r["fraction"], r["arm"], r["seed"]) for r in rows})
    logger.info("reid-gain: %d baseline, oracle and floor cell(s) read from %s", len(rows), src)
    if missing:
        logger.warning(
            "reid-gain: %d baseline, oracle or floor cell(s) are not in %s and are trained here: %s",
            len(missing), src, ", ".join(f"{f} {a} seed {s}" for f, a, s in missing),
        )  # fmt: skip
    return rows


def planned_cells(config: GainConfig) -> list[tuple[str, str, int]]:
    """Every ``(fraction tag, arm, seed)`` the config asks for, in run order."""
    return [cell_key(f, a, s) for f in sorted(config.fractions) for a in config.arms for s in config.seeds]


def market_source(config: GainConfig) -> MarketSource:
    """The run's source Market folder and its annotation CSV (``config.annotations`` or the one found
    beside the data), to be parsed once and shared by every fraction and stage."""
    return MarketSource(config.data, config.annotations or find_annotations(config.data))


def prepare_fraction(config: GainConfig, fraction: float, *, source: MarketSource | None = None) -> Subset:
    """Materialise (or reuse) ``fraction``'s subset folder under ``config.work``.

    ``source``: the run's :func:`market_source` (parsed once per run); ``None`` parses the folder here.
    """
    source = source if source is not None else market_source(config)
    return materialize_subset(
        source.root,
        source.annotations,
        fraction,
        config.subset_seed,
        config.work / f"subset-{fraction_tag(fraction)}",
        source=source,
    )


def run_gain(
    config: GainConfig,
    *,
    source: MarketSource | None = None,
    gate: Callable[..., MarketSource | None] | None = None,
) -> list[dict[str, Any]]:
    """Run every missing cell of the protocol and write ``results.csv`` / ``.md`` / ``.png``.

    Cells already in ``results.csv`` are not recomputed; subsets, generators and synthetic folders in
    ``work/`` are reused. Within a fraction the baselines run first, then the generator is trained (only
    if a synthetic cell is missing), then the synthetic arms. Returns the rows of the asked-for cells.

    ``source`` is the parsed ``config.data`` (:func:`market_source`) when the caller already has it;
    otherwise it is made when the first missing cell needs it. Either way the folder is parsed once per run.

    The run holds the lock ``out/.lock`` (:mod:`posereid.models.locks`): a second run on the same ``out``
    raises :class:`~posereid.models.locks.OutputLockedError` naming the first.

    With ``config.max_minutes``, no cell starts once the budget is spent and a generator training stops at
    a checkpoint; the reports of the cells done are written, then :class:`GainOutOfTimeError` is raised.

    ``gate``: called once before the first cell as ``gate(config, todo, device=, source=, budget=)`` with the
    cells still to run; it returns the run's parsed source and may stop the run by raising (the command's
    :class:`~posereid.experiments.reid_gain.gate.GainGate`). ``None`` (the default): no gate.
    """
    with output_lock(config.out, LOCK_NAME, what="posereid reid-gain"):
        return _run_gain(config, source=source, gate=gate)


def _run_gain(
    config: GainConfig, *, source: MarketSource | None, gate: Callable[..., MarketSource | None] | None = None
) -> list[dict[str, Any]]:
    """The body of :func:`run_gain`, run while holding the lock of ``config.out``."""
    validate_run(config)  # a refused run writes nothing, so the corrected one is not taken for another
    config.out.mkdir(parents=True, exist_ok=True)
    _check_protocol(config)
    from posereid.models.runtime import resolve_device

    # "auto" (the default) is this process's accelerator; the stages take the device's name as text
    device = str(resolve_device(config.device))
    csv_path = config.out / "results.csv"
    rows = read_results(csv_path)
    done = {cell_key(r["fraction"], r["arm"], r["seed"]) for r in rows}
    plan = planned_cells(config)
    imported = import_baselines(config, plan, done)
    if imported:
        rows += imported
        done |= {cell_key(r["fraction"], r["arm"], r["seed"]) for r in imported}
        write_results(csv_path, rows)
    logger.info("reid-gain: %d cell(s) planned, %d already in %s", len(plan), len(set(plan) & done), csv_path)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(plan),
        initial=len(set(plan) & done),
        desc="reid-gain cells",
        unit="run",
        disable=not config.progress,
    )
    deadline = None if config.max_minutes is None else _clock() + 60.0 * float(config.max_minutes)

    def minutes_left() -> float | None:
        if deadline is None:
            return None
        left = (deadline - _clock()) / 60.0
        if left <= 0:
            raise GainOutOfTimeError(
                f"max_minutes={config.max_minutes} spent with {len(set(plan) & done)} of {len(plan)} cells "
                f"done in {csv_path}; rerun the same command to continue"
            )
        return left

    try:
        if gate is not None:  # before any cell: a stopped run has spent nothing on the arms
            source = gate(config, set(plan) - done, device=device, source=source, budget=minutes_left)
        for fraction in sorted(config.fractions):
            todo = [(a, s) for a in config.arms for s in config.seeds if cell_key(fraction, a, s) not in done]
            if not todo:
                continue
            if source is None:
                source = market_source(config)
            subset = prepare_fraction(config, fraction, source=source)
            # baselines first, then the oracle and the floor, then what needs the generator (stable: arm order kept)
            todo.sort(key=lambda c: ("", "oracle", "noise", "synthetic").index(arm_extra(c[0])))
            extra: dict[str, list[Path]] = {}
            for arm, seed in todo:
                minutes_left()
                if arm == ORACLE_ARM and arm not in extra:
                    ensure_oracle(config, fraction, subset)
                    extra[arm] = [oracle_dir(config, fraction)]
                elif arm_extra(arm) == "noise" and arm not in extra:
                    ensure_noise(config, fraction, subset)
                    if is_filtered(arm):
                        ensure_filtered(config, fraction, subset, device=device, extra="noise")
                    extra[arm] = [noise_dir(config, fraction, filtered=is_filtered(arm))]
                elif arm_extra(arm) == "synthetic" and arm not in extra:
                    extra[arm] = _synthetic_folders(
                        config, fraction, subset, arm, device=device, source=source, budget=minutes_left
                    )
                    minutes_left()
                bar.set_postfix_str(f"{fraction_tag(fraction)} {arm} seed {seed}")
                # the strong cell of this seed ran before (baselines first) or was read: its model teaches
                teacher = ensure_teacher(config, subset, seed, device=device) if is_soft(arm) else None
                row = run_cell(config, subset, arm, seed, extra.get(arm, []), device=device, teacher=teacher)
                rows.append(row)
                done.add(cell_key(fraction, arm, seed))
                write_results(csv_path, rows)
                bar.update(1)
    except GainOutOfTimeError:
        if rows:
            write_reports(config, rows)
        raise
    finally:
        bar.close()
    write_reports(config, rows)
    wanted = set(plan)
    return [r for r in read_results(csv_path) if cell_key(r["fraction"], r["arm"], r["seed"]) in wanted]


def _synthetic_folders(
    config: GainConfig,
    fraction: float,
    subset: Subset,
    arm: str,
    *,
    device: str,
    source: MarketSource,
    budget: Callable[[], float | None] = lambda: None,
) -> list[Path]:
    gen = ensure_generator(config, fraction, subset, device=device, source=source, max_minutes=budget())
    ensure_synthetic(config, fraction, subset, gen, device=device)
    if is_filtered(arm):
        ensure_filtered(config, fraction, subset, device=device)
        return [synthetic_dir(config, fraction, filtered=True)]
    return [synthetic_dir(config, fraction)]


__all__ = [
    "OracleUnavailableError",
    "cell_dir",
    "check_oracle",
    "ensure_filter_model",
    "ensure_filtered",
    "ensure_generator",
    "ensure_noise",
    "ensure_oracle",
    "ensure_synthetic",
    "ensure_teacher",
    "generator_dir",
    "import_baselines",
    "new_generator",
    "market_source",
    "noise_dir",
    "oracle_dir",
    "planned_cells",
    "prepare_fraction",
    "run_cell",
    "run_gain",
    "synthetic_dir",
    "teacher_checkpoint",
    "validate_run",
]
