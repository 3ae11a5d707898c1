"""A bank of target poses to sample from when generating synthetic people.

Poses come from a PATN annotation CSV, a Market-1501 folder with annotations, or any list of keypoints.
They are stored in one reference frame ``image_hw = (H, W)`` and rescaled on request, so one bank serves a
generator at any resolution. Built from annotations, the frame is that of the images they annotate
(128×64 for Market-1501; 64×32 for a 64×32 synthetic set) unless given explicitly, and a pose with a
keypoint outside the frame is an error naming the file and line (see
:func:`posereid.reid_integration.market1501.load_annotations`).

Only poses a generator can use are kept: a hip, a shoulder and ``min_visible`` joints in
all (a pose with no torso gives the model nothing to place the body on). Rejected poses are counted.

Three sampling strategies:

- ``uniform``: every pose equally likely (the pose distribution of the data, dominated by its most common
  views and walking poses);
- ``cluster``: k-means (:func:`scipy.cluster.vq.kmeans2`, seeded) on translation/scale-normalised pose
  vectors (:func:`posereid.models.pose.normalize_pose`); a cluster is drawn uniformly, then a pose within
  it, so rare poses are drawn as often as common ones;
- ``view``: the view direction (front/back/left/right, see :func:`estimate_view`) is drawn uniformly over
  the views present, then a pose of that view.
"""

from __future__ import annotations

import errno
import inspect
import json
import logging
import os
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from posereid.models.io_utils import atomic_save
from posereid.models.pose import (
    NUM_KEYPOINTS,
    as_keypoints,
    normalize_pose,
    resize_keypoints,
    torso_length,
    visible_mask,
)

logger = logging.getLogger(__name__)

Sampling = Literal["uniform", "cluster", "view"]
SAMPLINGS: tuple[str, ...] = ("uniform", "cluster", "view")
VIEWS: tuple[str, ...] = ("front", "back", "left", "right")

# Joint indices (COCO-18, subject's own left/right).
_NOSE, _NECK, _RSH, _LSH, _RHIP, _LHIP, _REYE, _LEYE, _REAR, _LEAR = 0, 1, 2, 5, 8, 11, 14, 15, 16, 17

_FORMAT_VERSION = 1
#: Fields of a saved bank's ``meta`` JSON.
_META_FIELDS = (
    "format_version",
    "image_hw",
    "min_visible",
    "n_clusters",
    "seed",
    "rejected",
    "rejected_names",
)


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def valid_pose_mask(kps: np.ndarray, *, min_visible: int = 8) -> np.ndarray:
    """``(N,)`` bool: a hip, a shoulder and at least ``min_visible`` joints visible.

    One hip (not both) is enough: in a side view the far hip is hidden, and requiring it would drop every
    profile pose from the bank, so view-balanced sampling could never ask for one.
    """
    vis = visible_mask(as_keypoints(kps).reshape(-1, NUM_KEYPOINTS, 2))
    torso = (vis[:, _RHIP] | vis[:, _LHIP]) & (vis[:, _RSH] | vis[:, _LSH])
    return torso & (vis.sum(-1) >= int(min_visible))


def estimate_view(kps: np.ndarray, *, side_ratio: float = 0.35) -> str:
    """Estimate the view direction of one ``(18, 2)`` pose: ``front``, ``back``, ``left`` or ``right``.

    ``left`` / ``right`` name the side of the subject that faces the camera (a person walking towards the
    image's right shows the camera their right side).

    Rule (documented because it is a heuristic):

    1. Shoulders both visible and at least ``side_ratio`` × torso length apart horizontally → frontal or
       back. Facing the camera, the subject's left shoulder is on the image's right (``x_l > x_r``) →
       ``front``; reversed → ``back``. Face joints override the order when they contradict it strongly:
       no nose and no eye visible → ``back`` (keypoint detectors often mislabel the sides of a back
       view); nose and both eyes visible → ``front``.
    2. Otherwise the person is seen from the side. The facing direction comes from the nose relative to
       the neck (nose right of the neck → facing image-right → ``right``), else from which ear is
       visible, else from which shoulder is visible, else from the shoulder order.
    """
    k = as_keypoints(kps)
    if k.shape != (NUM_KEYPOINTS, 2):
        raise ValueError(f"estimate_view expects one (18, 2) pose, got {k.shape}")
    vis = visible_mask(k)
    face = bool(vis[_NOSE] or vis[_REYE] or vis[_LEYE])
    full_face = bool(vis[_NOSE] and vis[_REYE] and vis[_LEYE])
    torso = max(float(torso_length(k, fallback=True)), 1.0)
    if vis[_RSH] and vis[_LSH]:
        sw = float(k[_LSH, 0] - k[_RSH, 0])
        if abs(sw) >= side_ratio * torso:
            if sw > 0:
                return "front" if face else "back"
            return "front" if full_face else "back"
    # side view: which way is the subject facing?
    if vis[_NOSE] and vis[_NECK] and abs(k[_NOSE, 0] - k[_NECK, 0]) >= 0.05 * torso:
        return "right" if k[_NOSE, 0] > k[_NECK, 0] else "left"
    if vis[_REAR] != vis[_LEAR]:
        return "right" if vis[_REAR] else "left"
    if vis[_RSH] != vis[_LSH]:
        return "right" if vis[_RSH] else "left"
    if vis[_RSH] and vis[_LSH]:
        return "front" if k[_LSH, 0] >= k[_RSH, 0] else "back"
    return "front" if face else "back"


def _subset(annotations: Mapping[str, np.ndarray], names: Sequence[str]) -> Mapping[str, np.ndarray]:
    """``annotations`` restricted to ``names``, keeping a PATN file's path and line numbers for messages."""
    from posereid.reid_integration.market1501 import PatnAnnotations

    out = PatnAnnotations((n, annotations[n]) for n in names)
    if isinstance(annotations, PatnAnnotations):
        out.path, out.lines = (
            annotations.path,
            {n: annotations.lines[n] for n in names if n in annotations.lines},
        )
    return out


class PoseBank:
    """Target poses in one reference frame, with validity filtering and seeded sampling.

    Args:
        keypoints: ``(N, 18, 2)`` (x, y) keypoints in the ``image_hw`` frame, ``-1`` missing.
        names: one name per pose (e.g. the image it was annotated on); default ``pose_00000``, …
        image_hw: the reference frame ``(H, W)`` of ``keypoints``.
        min_visible: minimum number of visible joints for a pose to be kept (besides a hip and a
            shoulder); ``0`` keeps every pose with a torso.
        n_clusters: k for ``cluster`` sampling (capped at the bank size).
        seed: seed of the k-means initialisation (cluster labels are a deterministic function of it).

    Attributes:
        rejected: number of input poses dropped by the validity filter.
        rejected_names: their names.
    """

    def __init__(
        self,
        keypoints: np.ndarray | Sequence[np.ndarray],
        names: Sequence[str] | None = None,
        *,
        image_hw: tuple[int, int] = (128, 64),
        min_visible: int = 8,
        n_clusters: int = 16,
        seed: int = 0,
    ) -> None:
        kps = as_keypoints(np.asarray(keypoints, dtype=np.float32).reshape(-1, NUM_KEYPOINTS, 2))
        if names is None:
            names = [f"pose_{i:05d}" for i in range(len(kps))]
        names = [str(n) for n in names]
        if len(names) != len(kps):
            raise ValueError(f"PoseBank: {len(names)} names for {len(kps)} poses")
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.min_visible = int(min_visible)
        self.n_clusters = int(n_clusters)
        self.seed = int(seed)
        keep = valid_pose_mask(kps, min_visible=self.min_visible)
        self.rejected = int((~keep).sum())
        self.rejected_names = [n for n, k in zip(names, keep) if not k]
        self.keypoints = kps[keep]
        self.names = [n for n, k in zip(names, keep) if k]
        if self.rejected:
            logger.info("PoseBank: kept %d pose(s), rejected %d invalid", len(self), self.rejected)
        if len(self) == 0:
            raise ValueError(
                f"PoseBank: no valid pose among {len(kps)} (each needs a hip, a shoulder and "
                f"≥ {self.min_visible} visible joints)"
            )
        self.views = [estimate_view(k) for k in self.keypoints]
        self._clusters: np.ndarray | None = None
        self._group_cache: dict[str, list[np.ndarray]] = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike[str],
        image_hw: tuple[int, int] | None = None,
        *,
        images: str | os.PathLike[str] | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        **kwargs,
    ) -> PoseBank:
        """Poses of a PATN annotation CSV (``name:keypoints_y:keypoints_x``).

        Args:
            image_hw: the ``(H, W)`` frame of the CSV's coordinates; ``None`` (default): the size of the
                images it annotates, looked up in ``images``.
            images: the folder (Market-1501 or plain) holding the annotated images. ``None``: the CSV's own
                folder, and when no annotated image is there, PATN's 128×64 frame (with a warning). Given
                explicitly, not finding them is an error (pass ``image_hw``).
            on_error: a malformed row or one with a keypoint outside the frame raises naming the file and
                line (``"raise"``), or is skipped and counted (``"skip"``).
        """
        from posereid.reid_integration.market1501 import PATN_FRAME, load_annotations

        ann, frame = load_annotations(
            path,
            Path(path).parent if images is None else images,
            frame=image_hw,
            on_error=on_error,
            default_frame=PATN_FRAME if images is None else None,
        )
        if not ann:
            raise ValueError(f"{path}: the annotation file holds no poses")
        return cls.from_mapping(ann, image_hw=frame, **kwargs)

    @classmethod
    def from_mapping(
        cls, annotations: Mapping[str, np.ndarray], image_hw: tuple[int, int] = (128, 64), **kwargs
    ) -> PoseBank:
        """Poses of a ``name → (18, 2)`` mapping (e.g. :func:`read_patn_csv`'s result)."""
        names = list(annotations)
        kps = np.stack([np.asarray(annotations[n], dtype=np.float32) for n in names]) if names else []
        return cls(kps, names, image_hw=image_hw, **kwargs)

    @classmethod
    def from_market(
        cls,
        root: str | os.PathLike[str],
        annotations: str | os.PathLike[str] | Mapping[str, np.ndarray],
        *,
        split: str = "train",
        image_hw: tuple[int, int] | None = None,
        **kwargs,
    ) -> PoseBank:
        """Poses of the images of one split of a Market-1501 folder that have annotations.

        ``annotations`` is a PATN CSV path or a ``name → keypoints`` mapping; images without a row are
        skipped (logged), so a pose bank built from ``train`` never leaks query/gallery poses.
        ``image_hw`` is the frame of the annotations' coordinates; ``None`` (default): the size of the
        split's annotated images (mixed sizes are an error then). A keypoint of those images outside the
        frame is an error naming the file and line.
        """
        from posereid.reid_integration.market1501 import Market1501, load_annotations, read_patn_csv

        records = Market1501(root).split(split)
        if not isinstance(annotations, Mapping):
            annotations = read_patn_csv(annotations, image_hw=None)  # the frame is checked below
        names = [r.name for r in records if r.name in annotations]
        missing = len(records) - len(names)
        if missing:
            logger.info("PoseBank.from_market: %d %s image(s) have no annotation row", missing, split)
        if not names:
            raise ValueError(f"{root}: no {split} image has an annotation row")
        ann, frame = load_annotations(_subset(annotations, names), [r.path for r in records], frame=image_hw)
        return cls.from_mapping(ann, image_hw=frame, **kwargs)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.keypoints)

    def __repr__(self) -> str:
        return (
            f"PoseBank({len(self)} poses, frame={self.image_hw}, rejected={self.rejected}, "
            f"views={self.view_counts()})"
        )

    def view_counts(self) -> dict[str, int]:
        """Number of poses per view direction (``front``, ``back``, ``left``, ``right``)."""
        c = Counter(self.views)
        return {v: c.get(v, 0) for v in VIEWS}

    def get(
        self, indices: int | Sequence[int] | np.ndarray, size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Poses by index, rescaled to ``size=(H, W)`` (default: the reference frame)."""
        kps = self.keypoints[np.asarray(indices, dtype=np.int64)]
        if size is not None and tuple(size) != self.image_hw:
            kps = resize_keypoints(kps, self.image_hw, (int(size[0]), int(size[1])))
        return kps.copy()

    # ------------------------------------------------------------------ clustering
    def cluster_labels(self) -> np.ndarray:
        """``(N,)`` k-means labels of the normalised poses (computed once, seeded by ``seed``)."""
        if self._clusters is None:
            self._clusters = self._kmeans()
        return self._clusters

    def _kmeans(self) -> np.ndarray:
        from scipy.cluster.vq import kmeans2

        k = max(1, min(self.n_clusters, len(self)))
        if k == 1:
            return np.zeros(len(self), dtype=np.int64)
        vecs, _ = normalize_pose(self.keypoints)
        data = vecs.astype(np.float64)
        # distinct poses only as candidate centroids: k-means++ on duplicates can leave clusters empty
        uniq = np.unique(data, axis=0)
        k = min(k, len(uniq))
        if k == 1:
            return np.zeros(len(self), dtype=np.int64)
        # scipy >= 1.15 takes rng=, older versions seed= (asked of the signature: catching TypeError would
        # also swallow a genuine error inside kmeans2)
        if "rng" in inspect.signature(kmeans2).parameters:
            _, labels = kmeans2(data, k, iter=20, minit="++", rng=np.random.default_rng(self.seed))
        else:  # pragma: no cover - old scipy
            _, labels = kmeans2(data, k, iter=20, minit="++", seed=self.seed)
        # renumber to 0..k'-1 in order of first appearance (empty clusters vanish)
        _, labels = np.unique(labels, return_inverse=True)
        return labels.astype(np.int64)

    # ------------------------------------------------------------------ sampling
    def sample_indices(
        self, n: int, rng: np.random.Generator | int | None = None, *, sampling: Sampling = "uniform"
    ) -> np.ndarray:
        """Draw ``n`` pose indices with the given strategy (with replacement)."""
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        rng = _as_rng(rng)
        n = int(n)
        if sampling == "uniform":
            return rng.integers(0, len(self), size=n)
        members = self._groups(sampling)
        chosen = rng.integers(0, len(members), size=n)
        out = np.empty(n, dtype=np.int64)
        for i, g in enumerate(chosen):
            m = members[g]
            out[i] = m[rng.integers(0, len(m))]
        return out

    def _groups(self, sampling: str) -> list[np.ndarray]:
        """Pose indices of each non-empty cluster / view (cached: sampling runs once per generated image)."""
        if sampling not in self._group_cache:
            if sampling == "cluster":
                labels = self.cluster_labels()
            else:
                labels = np.array([VIEWS.index(v) for v in self.views])
            self._group_cache[sampling] = [np.flatnonzero(labels == g) for g in np.unique(labels)]
        return self._group_cache[sampling]

    def sample(
        self,
        n: int,
        rng: np.random.Generator | int | None = None,
        *,
        size: tuple[int, int] | None = None,
        sampling: Sampling = "uniform",
    ) -> np.ndarray:
        """Draw ``n`` poses ``(n, 18, 2)`` rescaled to ``size=(H, W)``; ``rng`` is a seed or a Generator."""
        return self.get(self.sample_indices(n, rng, sampling=sampling), size)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the bank as ``.npz`` (plain arrays + a JSON string; loads without pickle). Atomic."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"{path}: PoseBank files use the .npz extension")
        meta = {
            "format_version": _FORMAT_VERSION,
            "image_hw": list(self.image_hw),
            "min_visible": self.min_visible,
            "n_clusters": self.n_clusters,
            "seed": self.seed,
            "rejected": self.rejected,
            "rejected_names": self.rejected_names,
        }
        arrays = {
            "keypoints": self.keypoints.astype(np.float32),
            "names": np.array(self.names, dtype=np.str_),
            "meta": np.array(json.dumps(meta)),
        }
        if self._clusters is not None:
            arrays["clusters"] = self._clusters

        def _write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a path
                np.savez(fh, **arrays)

        atomic_save(path, _write)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PoseBank:
        """Read a bank written by :meth:`save` (``allow_pickle=False``).

        A missing file raises ``FileNotFoundError``; a file that is not a PoseBank (not an ``.npz``, a
        damaged archive, missing or malformed fields) raises ``ValueError`` naming the file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                errno.ENOENT, "no such PoseBank file (PoseBank.save writes one)", str(path)
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                if not isinstance(z, np.lib.npyio.NpzFile):
                    raise ValueError("a .npy array, not an .npz archive")
                meta = json.loads(str(z["meta"]))
                kps = np.asarray(z["keypoints"])
                names = [str(n) for n in z["names"]]
                clusters = z["clusters"] if "clusters" in z.files else None
        except (
            KeyError,
            ValueError,
            TypeError,
            AttributeError,
            OSError,
            EOFError,
            zipfile.BadZipFile,
        ) as exc:
            raise ValueError(f"{path}: not a PoseBank file ({type(exc).__name__}: {exc})") from None
        try:
            return cls._from_saved(path, meta, kps, names, clusters)
        except (KeyError, ValueError, TypeError) as exc:
            if str(exc).startswith(str(path)):
                raise  # names the file already (an unsafe name stays an UnsafeNameError)
            raise ValueError(f"{path}: damaged PoseBank file ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_saved(
        cls, path: Path, meta: object, kps: np.ndarray, names: list[str], clusters: np.ndarray | None
    ) -> PoseBank:
        """The bank of :meth:`load`'s fields, each checked (errors name ``path`` and the field)."""
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: the 'meta' field is not a JSON object")
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported PoseBank format version {meta.get('format_version')!r}")
        missing = [k for k in _META_FIELDS if k not in meta]
        if missing:
            raise ValueError(f"{path}: the 'meta' field lacks {', '.join(missing)}")
        hw = meta["image_hw"]
        ints = [meta[k] for k in ("n_clusters", "seed", "min_visible", "rejected")]
        if not (
            isinstance(hw, list) and len(hw) == 2 and all(isinstance(v, int) and v > 0 for v in hw)
        ) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
            raise ValueError(
                f"{path}: 'meta' holds a bad image_hw, n_clusters, seed, min_visible or rejected "
                "(positive height and width, integers >= 0)"
            )
        if not isinstance(meta["rejected_names"], list):
            raise ValueError(f"{path}: 'meta' rejected_names is not a list")
        if kps.dtype.kind not in "fiu" or kps.ndim != 3 or kps.shape[1:] != (NUM_KEYPOINTS, 2):
            raise ValueError(
                f"{path}: 'keypoints' must be numbers of shape (N, {NUM_KEYPOINTS}, 2), got {kps.dtype} "
                f"{kps.shape}"
            )
        if clusters is not None and (
            clusters.dtype.kind not in "iu" or clusters.shape != (len(kps),) or (clusters < 0).any()
        ):
            raise ValueError(
                f"{path}: 'clusters' must be {len(kps)} integer labels >= 0, got {clusters.dtype} {clusters.shape}"
            )
        from posereid.reid_integration.market1501 import check_file_name

        for i, name in enumerate(names):  # names are image names (they go into manifests as target_source)
            check_file_name(name, source=f"{path} names[{i}]")
        bank = cls(
            kps,
            names,
            image_hw=(hw[0], hw[1]),
            min_visible=0,  # already filtered when saved
            n_clusters=meta["n_clusters"],
            seed=meta["seed"],
        )
        if bank.rejected:
            raise ValueError(f"{path}: {bank.rejected} saved pose(s) are not valid poses")
        bank.min_visible = int(meta["min_visible"])
        bank.rejected = int(meta["rejected"])
        bank.rejected_names = [str(n) for n in meta["rejected_names"]]
        if clusters is not None:
            bank._clusters = clusters.astype(np.int64)
            bank._group_cache.clear()
        return bank


__all__ = ["SAMPLINGS", "VIEWS", "PoseBank", "estimate_view", "valid_pose_mask"]
