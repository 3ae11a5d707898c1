"""Synthetic Market-1501-format datasets where pose is the re-ID nuisance.

Every test, the demo and the benchmarks need people (no real data can be downloaded). An identity is a
fixed appearance (:class:`Identity`) rendered by :func:`render_person` in varied poses (view direction,
gait phase, scale, shift) by cameras with their own background, tint, blur and noise. The renderer lives
in :mod:`posereid.experiments.synthetic.people`; the ``synth-market`` / ``synth-grid`` commands in
:mod:`posereid.experiments.synthetic.cli`.

:func:`write_synthetic_market` follows the Market-1501 protocol: train identities are disjoint from test
identities; every test identity has one query image per camera it appears in (the first of that camera)
and gallery images from its other cameras; distractors (pid 0, partial people) and junk (pid -1,
background or a cut-off person) are gallery-only. ``train_views`` restricts each training identity to
some view directions while query and gallery show all four, so a re-ID model must generalise across
views it never saw for that identity (what pose-transfer augmentation is meant to fix).

Besides the three split folders the output holds ``market-annotation-{train,test}.csv`` (exact keypoints
in the images' own pixel frame; PATN format), ``market-pairs-{train,test}.csv`` (same-pid pairs whose
images both show >= 8 joints), ``synthetic-meta.csv`` (split, view, pose per image) and
``synthetic-identities.json`` (appearance per pid and the cameras). The same seed gives identical bytes.

**The oracle.** :func:`write_oracle_views` renders train identities of such a dataset in the view
directions its train split hides (same appearance, same cameras, random streams of their own): what a
perfect pose-transfer generator would produce. The re-ID gain protocol's ``strong+oracle`` arm trains on
them: the ceiling of what pose augmentation can give. Only a dataset written here has them, since they need
the renderer's metadata (``synthetic-identities.json``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from posereid.experiments.synthetic.params import (
    VIEWS,
    Camera,
    Identity,
    PoseParams,
    make_cameras,
    sample_identity,
    sample_pose,
)
from posereid.experiments.synthetic.people import render_background, render_person
from posereid.models.io_utils import atomic_save, atomic_write
from posereid.models.pose import draw_skeleton, visible_mask
from posereid.reid_integration.market1501 import (
    SPLIT_DIRS,
    MarketFormatError,
    MarketWriter,
    format_market_name,
    parse_market_name,
    resolve_data_dir,
    write_pairs_csv,
    write_patn_csv,
)

logger = logging.getLogger(__name__)

META_CSV = "synthetic-meta.csv"
IDENTITIES_JSON = "synthetic-identities.json"
META_FIELDS = ("name", "split", "pid", "cam", "kind", "view", "yaw", "phase", "stride", "scale", "dx", "dy",
               "visible")  # fmt: skip
MIN_PAIR_JOINTS = 8  # both images of a pair must show at least this many joints
ORACLE_JSON = "oracle.json"
ORACLE_META_CSV = "oracle-meta.csv"
#: Market sequence of oracle images (real Market-1501 uses s1-s6, generated images s9).
ORACLE_SEQ = 8
#: Tag of the oracle's random streams, ``default_rng([seed, ORACLE_TAG, ...])``: the dataset uses tags
#: 1-6 and 0xCA, the grid 9, the pose judge 0x7A1 / 0xE7A, so no oracle pose shares a stream with them.
ORACLE_TAG = 0x0AC1E


@dataclass
class SynthConfig:
    """What :func:`write_synthetic_market` renders.

    Args:
        n_train_ids / n_test_ids: identities in the train split / in query + gallery (disjoint).
        per_camera: images of an identity per camera it appears in.
        cameras: number of cameras (2-9); each identity appears in a random ``min_cameras``..``cameras`` of them.
        n_distractors / n_junk: gallery images with pid 0 / pid -1.
        height / width: image size (Market-1501 is 128 x 64).
        train_views: ``"all"`` or how many of the 4 view directions each train identity is shown in.
        max_pairs_per_id: cap on same-pid pairs per identity in the pairs CSVs (``None``: all).
    """

    n_train_ids: int = 40
    n_test_ids: int = 40
    per_camera: int = 4
    cameras: int = 6
    min_cameras: int = 2
    n_distractors: int = 40
    n_junk: int = 10
    height: int = 128
    width: int = 64
    train_views: int | str = 2
    seed: int = 0
    max_pairs_per_id: int | None = 200

    def __post_init__(self) -> None:
        if isinstance(self.train_views, str) and self.train_views.isdigit():
            self.train_views = int(self.train_views)
        checks = [
            (self.n_train_ids >= 0 and self.n_test_ids >= 0, "n_train_ids and n_test_ids must be >= 0"),
            (self.n_train_ids + self.n_test_ids <= 9999, "at most 9999 identities (4-digit Market pids)"),
            (self.per_camera >= 1, "per_camera must be >= 1"),
            (2 <= self.cameras <= 9, "cameras must be 2..9 (one digit, query and gallery need two)"),
            (2 <= self.min_cameras <= self.cameras, "min_cameras must be 2..cameras"),
            (self.n_distractors >= 0 and self.n_junk >= 0, "n_distractors and n_junk must be >= 0"),
            (self.height >= 8 and self.width >= 4, "height x width must be at least 8 x 4"),
            (
                self.train_views == "all" or self.train_views in range(1, 5),
                "train_views must be 'all' or 1..4",
            ),
            (self.max_pairs_per_id is None or self.max_pairs_per_id >= 0, "max_pairs_per_id must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"SynthConfig: {msg} (got {self})")


@dataclass
class SynthSample:
    """One planned (and, from :func:`iter_synthetic`, rendered) image. ``cam`` is 1-based like the name."""

    split: str  # train | query | gallery
    pid: int
    cam: int
    name: str
    kind: str  # person | partial | background
    pose: PoseParams | None
    identity: Identity | None
    stream: int  # images of one stream are rendered in order from one random generator
    image: np.ndarray | None = None
    keypoints: np.ndarray | None = None


def _views_for(rng: np.random.Generator, train: bool, train_views: int | str) -> tuple[str, ...]:
    if not train or train_views == "all":
        return VIEWS
    picked = set(rng.choice(len(VIEWS), int(train_views), replace=False).tolist())
    return tuple(v for i, v in enumerate(VIEWS) if i in picked)


def plan_synthetic(config: SynthConfig) -> tuple[list[SynthSample], list[Camera], dict[int, Identity]]:
    """Decide every image (split, pid, camera, name, pose) without rendering; deterministic in the seed."""
    cams = make_cameras(config.cameras, config.seed)
    frames: dict[tuple[int, int], int] = defaultdict(int)
    plan: list[SynthSample] = []
    identities: dict[int, Identity] = {}

    def name_for(pid: int, cam: int) -> str:
        frames[(pid, cam)] += 1
        return format_market_name(pid, cam, 1, frames[(pid, cam)] * 7, 1)

    pids = range(1, config.n_train_ids + config.n_test_ids + 1)
    for stream, pid in enumerate(pids):
        rng = np.random.default_rng([config.seed, 1, pid])
        train = pid <= config.n_train_ids
        identities[pid] = idn = sample_identity(rng)
        n_cams = int(rng.integers(config.min_cameras, config.cameras + 1))
        id_cams = sorted(rng.choice(config.cameras, n_cams, replace=False).tolist())
        views = _views_for(rng, train, config.train_views)
        for cam in id_cams:
            for j in range(config.per_camera):
                if train:
                    split = "train"
                else:  # the first image of each camera is a query, unless it would leave no gallery image
                    split = (
                        "query"
                        if j == 0 and not (config.per_camera == 1 and cam == id_cams[-1])
                        else "gallery"
                    )
                pose = sample_pose(rng, views)
                plan.append(
                    SynthSample(split, pid, cam + 1, name_for(pid, cam + 1), "person", pose, idn, stream)
                )
    stream = len(pids)
    for i in range(config.n_distractors):  # badly cropped people nobody is looking for
        rng = np.random.default_rng([config.seed, 3, i])
        pose = dataclasses.replace(
            sample_pose(rng),
            scale=float(rng.uniform(1.2, 2.0)),
            dx=float(rng.choice([-1, 1]) * rng.uniform(0.25, 0.5)),
            dy=float(rng.uniform(-0.5, 0.3)),
        )
        cam = int(rng.integers(config.cameras)) + 1
        plan.append(
            SynthSample(
                "gallery", 0, cam, name_for(0, cam), "partial", pose, sample_identity(rng), stream + i
            )
        )
    stream += config.n_distractors
    for i in range(config.n_junk):  # background only, or just the feet of a passer-by
        rng = np.random.default_rng([config.seed, 4, i])
        cam = int(rng.integers(config.cameras)) + 1
        if rng.random() < 0.5:
            plan.append(
                SynthSample("gallery", -1, cam, name_for(-1, cam), "background", None, None, stream + i)
            )
        else:
            pose = dataclasses.replace(sample_pose(rng), dy=float(rng.uniform(-0.75, -0.6)))
            plan.append(
                SynthSample(
                    "gallery", -1, cam, name_for(-1, cam), "partial", pose, sample_identity(rng), stream + i
                )
            )
    return plan, cams, identities


def iter_synthetic(config: SynthConfig, plan: list[SynthSample] | None = None) -> Iterator[SynthSample]:
    """Render the planned images in order (``image`` uint8 HxWx3, ``keypoints`` (18, 2), -1 missing)."""
    if plan is None:
        plan = plan_synthetic(config)[0]
    cams = make_cameras(config.cameras, config.seed)
    h, w = config.height, config.width
    rng, current = None, None
    for s in plan:
        if s.stream != current:
            rng, current = np.random.default_rng([config.seed, 2, s.stream]), s.stream
        camera = cams[s.cam - 1]
        if s.kind == "background":
            s.image = render_background(camera, height=h, width=w, rng=rng)
            s.keypoints = np.full((18, 2), -1.0, dtype=np.float32)
        else:
            s.image, s.keypoints = render_person(s.identity, s.pose, camera, height=h, width=w, rng=rng)
        yield s


def _pairs(names: dict[int, list[str]], seed: int, tag: int, cap: int | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for pid in sorted(names):
        pairs = list(itertools.combinations(names[pid], 2))
        if cap is not None and len(pairs) > cap:
            keep = np.random.default_rng([seed, tag, pid]).choice(len(pairs), cap, replace=False)
            pairs = [pairs[i] for i in sorted(keep.tolist())]
        out += pairs
    return out


def _pose_columns(p: PoseParams | None) -> list[str]:
    if p is None:
        return [""] * 7
    return [
        p.view,
        f"{p.yaw:.2f}",
        f"{p.phase:.4f}",
        f"{p.stride:.3f}",
        f"{p.scale:.3f}",
        f"{p.dx:.3f}",
        f"{p.dy:.3f}",
    ]


def write_synthetic_market(
    out_dir: str | Path, config: SynthConfig | None = None, *, progress: bool = True
) -> dict[str, object]:
    """Render ``config`` into a Market-1501-format folder ``out_dir`` (see the module docstring).

    Refuses a folder whose split folders already hold images (the same seed must give the same files).

    Returns:
        Counts per split, like :meth:`Market1501.summary`: ``{"train"|"query"|"gallery": {"images",
        "identities", "cameras", "junk", "distractors"}}``, plus ``"pairs_train"``, ``"pairs_test"`` and
        ``"views_per_train_id"`` (pid -> sorted views shown in train).
    """
    config = config or SynthConfig()
    out = Path(out_dir)
    for split in ("train", "query", "gallery"):
        folder = out / SPLIT_DIRS[split]
        if folder.is_dir() and any(folder.iterdir()):
            raise FileExistsError(
                f"{folder} is not empty; write a synthetic dataset into a new folder (or delete this one)"
            )
    plan, cams, identities = plan_synthetic(config)
    writer = MarketWriter(out)
    ann: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
    pair_names: dict[str, dict[int, list[str]]] = {"train": defaultdict(list), "test": defaultdict(list)}
    meta = io.StringIO()
    mw = csv.writer(meta, lineterminator="\n")
    mw.writerow(META_FIELDS)
    counts = {
        s: {"images": 0, "identities": set(), "cameras": set(), "junk": 0, "distractors": 0}
        for s in ("train", "query", "gallery")
    }
    views: dict[int, set[str]] = defaultdict(set)
    bar = tqdm(
        iter_synthetic(config, plan),
        total=len(plan),
        desc="synthetic market",
        unit="img",
        disable=not progress,
    )
    for s in bar:
        writer.add(s.split, s.image, s.pid, s.cam, name=s.name)
        group = "train" if s.split == "train" else "test"
        ann[group][s.name] = s.keypoints
        n_vis = int(visible_mask(s.keypoints).sum())
        if s.pid > 0 and n_vis >= MIN_PAIR_JOINTS:
            pair_names[group][s.pid].append(s.name)
        c = counts[s.split]
        c["images"] += 1
        c["junk"] += s.pid == -1
        c["distractors"] += s.pid == 0
        if s.pid > 0:
            c["identities"].add(s.pid)
        if s.pid != -1:
            c["cameras"].add(s.cam)
        if s.split == "train":
            views[s.pid].add(s.pose.view)
        mw.writerow([s.name, s.split, s.pid, s.cam, s.kind, *_pose_columns(s.pose), n_vis])
        s.image = None  # keep memory flat on large runs
    write_patn_csv(out / "market-annotation-train.csv", ann["train"])
    write_patn_csv(out / "market-annotation-test.csv", ann["test"])
    pairs_train = _pairs(pair_names["train"], config.seed, 5, config.max_pairs_per_id)
    pairs_test = _pairs(pair_names["test"], config.seed, 6, config.max_pairs_per_id)
    write_pairs_csv(out / "market-pairs-train.csv", pairs_train)
    write_pairs_csv(out / "market-pairs-test.csv", pairs_test)
    with atomic_write(out / META_CSV, "w", encoding="utf-8", newline="") as fh:
        fh.write(meta.getvalue())
    doc = {
        "config": dataclasses.asdict(config),
        "cameras": [dataclasses.asdict(c) for c in cams],
        "identities": {str(pid): dataclasses.asdict(idn) for pid, idn in identities.items()},
    }
    with atomic_write(out / IDENTITIES_JSON, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    summary: dict[str, object] = {
        split: {k: len(v) if isinstance(v, set) else int(v) for k, v in c.items()}
        for split, c in counts.items()
    }
    summary["pairs_train"], summary["pairs_test"] = len(pairs_train), len(pairs_test)
    summary["views_per_train_id"] = {pid: sorted(v, key=VIEWS.index) for pid, v in sorted(views.items())}
    logger.info("wrote %s: %s", out, {k: summary[k] for k in ("train", "query", "gallery")})
    return summary


def read_synthetic_meta(path: str | Path) -> list[dict[str, str]]:
    """Rows of ``synthetic-meta.csv`` (a folder or the file itself), as dicts of strings."""
    path = Path(path)
    if path.is_dir():
        path = path / META_CSV
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != META_FIELDS:
            raise ValueError(
                f"{path} line 1: expected header {','.join(META_FIELDS)}, got {reader.fieldnames}"
            )
        return list(reader)


# --------------------------------------------------------------------------------------------------
# The oracle: train identities in the views the train split hides
# --------------------------------------------------------------------------------------------------
class SyntheticMetadataError(ValueError):
    """A folder lacks the renderer's metadata (not written by ``synth-market``), or the renderer no longer
    reproduces the identities that metadata records."""


def find_synthetic_metadata(data: str | Path) -> Path | None:
    """``synthetic-identities.json`` of the synthetic dataset at ``data`` (the folder, its Market data dir,
    or their parents), or ``None`` when there is none (e.g. real Market-1501)."""
    data = Path(data)
    cands = [data, data.parent]
    try:
        d = resolve_data_dir(data)
        cands += [d, d.parent, d.parent.parent]
    except MarketFormatError:
        pass
    for c in dict.fromkeys(cands):
        if (c / IDENTITIES_JSON).is_file() and (c / META_CSV).is_file():
            return c / IDENTITIES_JSON
    return None


def hidden_train_views(data: str | Path) -> dict[int, tuple[str, ...]]:
    """Per train pid of a synthetic dataset: the view directions its train images never show."""
    shown: dict[int, set[str]] = defaultdict(set)
    for r in read_synthetic_meta(data):
        if r["split"] == "train" and int(r["pid"]) > 0:
            shown[int(r["pid"])].add(r["view"])
    return {pid: tuple(v for v in VIEWS if v not in views) for pid, views in sorted(shown.items())}


def oracle_name(source_name: str, k: int) -> str:
    """Name of oracle image ``k`` for the real train image ``source_name``: its pid and camera, sequence
    :data:`ORACLE_SEQ`, the source's sequence/frame/box in a 9-digit frame, ``k`` in the box field (the
    layout of generated names, so it never equals a real or a generated name)."""
    pid, cam, seq, frame, bbox = parse_market_name(source_name)
    if not (1 <= seq <= 9 and frame < 10**6 and bbox < 100):
        raise MarketFormatError(f"{source_name!r}: oracle sources need seq 1..9, a frame < 1e6, a box < 100")
    return format_market_name(pid, cam, ORACLE_SEQ, seq * 10**8 + frame * 100 + bbox, int(k), "jpg")


def _renderer_state(meta_json: Path) -> tuple[SynthConfig, list[Camera], dict[int, Identity]]:
    """The dataset's config, cameras and identities, re-planned from its seed and checked against the
    JSON it recorded (so an oracle image shows exactly the identity of the dataset)."""
    doc = json.loads(meta_json.read_text(encoding="utf-8"))
    try:
        config = SynthConfig(**doc["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SyntheticMetadataError(f"{meta_json}: not a synth-market metadata file ({exc})") from None
    _, cams, identities = plan_synthetic(config)

    def same(a: object, b: object) -> bool:
        return json.loads(json.dumps(a)) == json.loads(json.dumps(b))

    recorded = doc.get("identities", {})
    bad = [
        pid for pid, idn in identities.items() if not same(dataclasses.asdict(idn), recorded.get(str(pid)))
    ]
    if bad or not same([dataclasses.asdict(c) for c in cams], doc.get("cameras")):
        what = f"identity {bad[0]}" if bad else "the cameras"
        raise SyntheticMetadataError(
            f"{meta_json}: this version of the renderer no longer reproduces {what} of that dataset; "
            "render the dataset again (posereid synth-market) to get oracle views of it"
        )
    return config, cams, identities


def write_oracle_views(
    data: str | Path,
    out_dir: str | Path,
    sources: Iterable[str] | None = None,
    *,
    per_image: int = 1,
    progress: bool = False,
) -> dict[str, object]:
    """Render train identities of the synthetic dataset ``data`` in the views its train split hides.

    For every source name (a train image of ``data``; default: all of them) ``per_image`` images of the
    source's identity, seen by the source's camera, in a pose drawn from the view directions that
    identity's train images never show (every view when none is hidden, i.e. ``train_views="all"``). The
    identity and camera parameters are the dataset's own (re-planned from its seed and checked against
    ``synthetic-identities.json``); each image draws from ``default_rng([seed, ORACLE_TAG, source, k])``, a
    stream disjoint from every other render. So the set is as large as the synthetic images generated
    from the same sources with ``per_image`` each, under the same pids.

    Writes ``out_dir/bounding_box_train`` (names from :func:`oracle_name`), the images' keypoints
    (``market-annotation-train.csv``), ``oracle-meta.csv`` (``synthetic-meta.csv`` columns) and
    ``oracle.json``; built in a temporary sibling and renamed into place. Refuses an ``out_dir`` that
    already holds images.

    Raises:
        SyntheticMetadataError: ``data`` has no ``synthetic-identities.json`` / ``synthetic-meta.csv``
            (it was not written by ``synth-market``), or the renderer no longer reproduces it.
        ValueError: a source is not a train image of an identity of ``data``.

    Returns:
        ``{"images", "identities", "per_image", "hidden_views": {pid: views}}``.
    """
    if int(per_image) < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    meta_json = find_synthetic_metadata(data)
    if meta_json is None:
        raise SyntheticMetadataError(
            f"{data}: no {IDENTITIES_JSON} + {META_CSV} here or in a parent folder; oracle views need the "
            "renderer's metadata, which only a dataset written by `posereid synth-market` has"
        )
    config, cams, identities = _renderer_state(meta_json)
    hidden = hidden_train_views(meta_json.parent)
    train_rows = [r["name"] for r in read_synthetic_meta(meta_json.parent) if r["split"] == "train"]
    names = sorted(set(train_rows if sources is None else sources))
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; write the oracle into a new one")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        writer = MarketWriter(tmp)
        ann: dict[str, np.ndarray] = {}
        meta = io.StringIO()
        mw = csv.writer(meta, lineterminator="\n")
        mw.writerow(META_FIELDS)
        for name in tqdm(names, desc="oracle views", unit="src", disable=not progress):
            pid, cam, seq, frame, bbox = parse_market_name(name)
            if pid not in hidden or pid not in identities or not 1 <= cam <= len(cams):
                raise ValueError(
                    f"{name}: not a train image of {meta_json.parent} (pid {pid} has no train images there)"
                )
            views = hidden[pid] or VIEWS
            for k in range(int(per_image)):
                rng = np.random.default_rng([config.seed, ORACLE_TAG, pid, cam, seq, frame, bbox, k])
                pose = sample_pose(rng, views)
                image, kps = render_person(
                    identities[pid], pose, cams[cam - 1], height=config.height, width=config.width, rng=rng
                )
                oname = writer.add("train", image, pid, cam, name=oracle_name(name, k))
                ann[oname] = kps
                n_vis = int(visible_mask(kps).sum())
                mw.writerow([oname, "train", pid, cam, "person", *_pose_columns(pose), n_vis])
        write_patn_csv(tmp / "market-annotation-train.csv", ann)
        with atomic_write(tmp / ORACLE_META_CSV, "w", encoding="utf-8", newline="") as fh:
            fh.write(meta.getvalue())
        used = sorted({parse_market_name(n)[0] for n in names})
        summary: dict[str, object] = {
            "images": len(ann), "identities": len(used), "per_image": int(per_image),
            "hidden_views": {pid: list(hidden[pid]) for pid in used}, "dataset": str(meta_json.parent),
            "seed": config.seed,
        }  # fmt: skip
        with atomic_write(tmp / ORACLE_JSON, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1)
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "oracle views: %d images of %d identities → %s", summary["images"], summary["identities"], out
    )
    return summary


# --------------------------------------------------------------------------------------------------
# A grid for people to look at
# --------------------------------------------------------------------------------------------------
def render_grid(
    out_png: str | Path,
    *,
    n_ids: int = 6,
    n_cols: int = 8,
    seed: int = 0,
    skeleton: bool = True,
    scale: int = 2,
    height: int = 128,
    width: int = 64,
) -> Image.Image:
    """Save a PNG grid: rows = identities, columns = views cycling front/left/back/right over the cameras.

    Each cell is upscaled ``scale`` x (nearest neighbour); with ``skeleton`` the keypoints are drawn on a
    copy beside it. Labels name the view and camera. Returns the grid image.
    """
    rng = np.random.default_rng([seed, 9])
    cams = make_cameras(6, seed)
    cell_w = width * scale * (2 if skeleton else 1)
    label_h, left = 12, 34
    grid = Image.new(
        "RGB", (left + n_cols * (cell_w + 4), n_ids * (height * scale + label_h + 4)), (255, 255, 255)
    )
    draw = ImageDraw.Draw(grid)
    for r in range(n_ids):
        idn = sample_identity(rng)
        y = r * (height * scale + label_h + 4)
        draw.text((2, y + label_h + height * scale // 2 - 6), f"id {r + 1}", fill=(0, 0, 0))
        for c in range(n_cols):
            view, cam = VIEWS[c % len(VIEWS)], cams[(c + r) % len(cams)]
            img, kps = render_person(idn, sample_pose(rng, [view]), cam, height=height, width=width, rng=rng)
            big = Image.fromarray(img).resize((width * scale, height * scale), Image.NEAREST)
            x = left + c * (cell_w + 4)
            draw.text((x + 2, y), f"{view}, cam {cam.index + 1}", fill=(0, 0, 0))
            grid.paste(big, (x, y + label_h))
            if skeleton:
                up = np.where(kps >= 0, (kps + 0.5) * scale - 0.5, -1.0)
                grid.paste(draw_skeleton(big, up), (x + width * scale, y + label_h))
    atomic_save(out_png, lambda tmp: grid.save(tmp, format="PNG"))
    return grid


__all__ = [
    "IDENTITIES_JSON",
    "META_CSV",
    "ORACLE_JSON",
    "SynthConfig",
    "SynthSample",
    "SyntheticMetadataError",
    "find_synthetic_metadata",
    "hidden_train_views",
    "iter_synthetic",
    "oracle_name",
    "plan_synthetic",
    "read_synthetic_meta",
    "render_grid",
    "write_oracle_views",
    "write_synthetic_market",
]
