"""torchreid-pip 0.2.5 integration: datasets with synthetic images, batch hooks, offline models, safe checkpoints.

What this module fixes or adds around torchreid (see DESIGN.md §5):

* :class:`PosereidMarketDataset` is a ``torchreid.reid.data.ImageDataset`` built from posereid's own
  Market-1501 parser, never touching torchreid's download path. Synthetic Market-format folders are
  appended to the SAME train list under their SOURCE pid before relabelling, so they add images, never
  identities. Every image is decoded once up front (torchreid's ``read_image`` loops forever on a
  corrupt JPEG); items stay torchreid 4-tuples ``(path, pid, camid, dsetid)`` and the real/synthetic
  flag is kept beside them (:meth:`PosereidMarketDataset.is_synthetic`, ``item["synthetic"]``).
* :func:`register_posereid_dataset` puts such a dataset in torchreid's global registry (re-registering
  one of our names replaces it; torchreid's built-in names are refused).
* :class:`BatchAugmentEngine` runs a user ``batch_transform(imgs, pids)`` on each training batch, on the
  device, in ``[0, 1]`` pixel space, right before the forward pass (dataset-level transforms go in the
  dataset's ``transform=``).
* :func:`build_reid_model` never downloads; :func:`save_reid_checkpoint` / :func:`load_reid_checkpoint`
  write safetensors that need no unpickling; :func:`load_torchreid_checkpoint` reads torchreid's own
  ``.pth.tar`` files under ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2
from tqdm.auto import tqdm

from posereid.models.images import pil_to_tensor01
from posereid.models.io_utils import atomic_save, atomic_write
from posereid.models.runtime import resolve_device
from posereid.reid_integration.market1501 import (
    BadInputPolicy,
    ImageReadError,
    Market1501,
    check_image,
    load_image,
)

with warnings.catch_warnings():
    # torchreid warns on import that its Cython evaluator is missing; posereid.evaluate replaces it
    warnings.filterwarnings("ignore", message="Cython evaluation", category=UserWarning)
    from torchreid.reid.data import register_image_dataset
    from torchreid.reid.data.datasets.dataset import ImageDataset
    from torchreid.reid.engine import ImageSoftmaxEngine, ImageTripletEngine
    from torchreid.reid.models import build_model

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_META_KEY = "posereid_meta"


class SyntheticPidError(ValueError):
    """A synthetic image whose pid is not an identity of the real train split."""


# --------------------------------------------------------------------------------------------------
# Dataset lists
# --------------------------------------------------------------------------------------------------
@dataclass
class ReidLists:
    """Parsed, checked, relabelled torchreid lists of one Market folder (+ synthetic folders).

    ``train`` holds ``(path, label, camid, 0)`` with labels ``0..num_train_pids-1`` (``pid_labels[label]``
    is the original pid); ``query``/``gallery`` keep original pids (distractors 0 in the gallery, junk
    dropped). ``synthetic`` is the set of train paths that came from a synthetic folder.
    """

    train: list[tuple[str, int, int, int]]
    query: list[tuple[str, int, int, int]]
    gallery: list[tuple[str, int, int, int]]
    synthetic: frozenset[str]
    pid_labels: list[int]
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_train_pids(self) -> int:
        return len(self.pid_labels)

    @property
    def num_synthetic(self) -> int:
        return sum(item[0] in self.synthetic for item in self.train)


def _check_all(paths: Sequence[str], policy: BadInputPolicy, desc: str, *, progress: bool = True) -> set[str]:
    """Decode every image; return the unreadable ones (skipped and counted by ``policy``, or it raises
    on the first when strict)."""
    bad: set[str] = set()
    for path in tqdm(paths, desc=desc, unit="img", disable=not progress or len(paths) < 200, leave=False):
        try:
            check_image(path)
        except ImageReadError as exc:
            policy.skip_or_raise(exc)
            bad.add(path)
    policy.warn("re-ID images", logger)
    return bad


def scan_reid_lists(
    root: str | os.PathLike[str],
    synthetic_dirs: Iterable[str | os.PathLike[str]] = (),
    *,
    check_images: bool = True,
    on_corrupt: Literal["raise", "skip"] | None = None,
    strict: bool = False,
    progress: bool = True,
) -> ReidLists:
    """Parse ``root`` (+ synthetic folders' ``bounding_box_train``) into :class:`ReidLists`.

    Junk (pid -1) and distractor (pid 0) images are kept out of train; junk is kept out of the gallery.
    A synthetic image must carry a pid of the real train split (its source identity), else
    :class:`SyntheticPidError` names the file. With ``check_images`` every image is fully decoded first.
    Bad inputs follow the batch policy (:class:`~posereid.reid_integration.market1501.BadInputPolicy`):
    an unreadable image is dropped and counted (``skipped["corrupt"]``), a stray entry of a folder (bad
    name, broken symlink) too (``skipped["stray_file"]``); ``strict=True`` raises at the first, naming
    the file. ``on_corrupt`` (``"raise"`` / ``"skip"``) overrides ``strict`` for unreadable images only.
    """
    if on_corrupt not in (None, "raise", "skip"):
        raise ValueError(f"on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
    corrupt = BadInputPolicy(strict if on_corrupt is None else on_corrupt == "raise")
    market = Market1501(root, strict=strict)
    real = [r for r in market.train if r.has_identity]
    skipped = {
        "train_junk_or_distractor": len(market.train) - len(real),
        "corrupt": 0,
        "stray_file": market.total_skipped,
    }
    if not real:
        raise ValueError(f"{market.root}: the train split (bounding_box_train) has no identity images")
    pid_labels = sorted({r.pid for r in real})
    label_of = {pid: i for i, pid in enumerate(pid_labels)}

    synth = []
    for sdir in synthetic_dirs:
        smarket = Market1501(sdir, strict=strict)
        skipped["stray_file"] += smarket.total_skipped
        others = len(smarket.query) + len(smarket.gallery) + len(smarket.gt_bbox)
        if others:
            logger.warning("%s: ignoring %d non-train synthetic image(s)", smarket.root, others)
        for rec in smarket.train:
            if rec.pid not in label_of:
                raise SyntheticPidError(
                    f"{rec.path}: synthetic image has pid {rec.pid}, which is not an identity of the real "
                    f"train split of {market.root} (synthetic images must keep their SOURCE pid; junk -1 "
                    "and distractors 0 never enter train)"
                )
        synth.extend(smarket.train)

    query = [r for r in market.query if not r.is_junk]
    gallery = [r for r in market.gallery if not r.is_junk]
    for split, recs in (("query", query), ("gallery", gallery)):
        if not recs:
            raise ValueError(f"{market.root}: the {split} split has no usable images")
    bad: set[str] = set()
    if check_images:
        every = [str(r.path) for r in (*real, *synth, *query, *gallery)]
        bad = _check_all(every, corrupt, "checking images", progress=progress)
        skipped["corrupt"] = len(bad)

    def items(recs, relabel: bool) -> list[tuple[str, int, int, int]]:
        return [
            (str(r.path), label_of[r.pid] if relabel else r.pid, r.camid, 0)
            for r in recs
            if str(r.path) not in bad
        ]

    lists = ReidLists(
        train=items(real, True) + items(synth, True),
        query=items(query, False),
        gallery=items(gallery, False),
        synthetic=frozenset(str(r.path) for r in synth) - bad,
        pid_labels=pid_labels,
        skipped=skipped,
    )
    for split in ("train", "query", "gallery"):
        if not getattr(lists, split):
            raise ValueError(f"{market.root}: every {split} image was unreadable")
    if len({label for _, label, _, _ in lists.train}) != len(pid_labels):
        raise ValueError(f"{market.root}: an identity lost all its train images to unreadable files")
    return lists


# --------------------------------------------------------------------------------------------------
# torchreid dataset + registry
# --------------------------------------------------------------------------------------------------
class PosereidMarketDataset(ImageDataset):
    """A torchreid ``ImageDataset`` over :class:`ReidLists` (one Market folder + synthetic folders).

    Args:
        root: Market folder (ignored when ``lists`` is given).
        synthetic_dirs: Market-format folders of generated images (their ``bounding_box_train``).
        lists: already scanned lists (skips parsing and image checks).
        transform: any callable on a PIL RGB image (e.g. a torchvision v2 pipeline, see
            :func:`build_reid_transforms`); torchreid's data manager passes its own here.
        mode: ``train``, ``query`` or ``gallery``; other keyword arguments go to torchreid's ``Dataset``
            (``k_tfm``, ``combineall``, ``verbose``) or are ignored (``split_id``, ``market1501_500k``, …).
    """

    _junk_pids = [0, -1]

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        synthetic_dirs: Iterable[str | os.PathLike[str]] = (),
        *,
        lists: ReidLists | None = None,
        check_images: bool = True,
        on_corrupt: Literal["raise", "skip"] | None = None,
        strict: bool = False,
        transform: Callable | None = None,
        mode: str = "train",
        k_tfm: int = 1,
        combineall: bool = False,
        verbose: bool = False,
        **ignored: Any,
    ) -> None:
        if lists is None:
            if root is None:
                raise ValueError("give a Market folder (root) or scanned lists")
            lists = scan_reid_lists(
                root, synthetic_dirs, check_images=check_images, on_corrupt=on_corrupt, strict=strict
            )
        self.lists = lists
        self.pid_labels = list(lists.pid_labels)
        self._synthetic = lists.synthetic
        super().__init__(
            list(lists.train),
            list(lists.query),
            list(lists.gallery),
            transform=transform,
            mode=mode,
            k_tfm=k_tfm,
            combineall=combineall,
            verbose=verbose,
        )

    def is_synthetic(self, index: int) -> bool:
        """Whether item ``index`` of the current mode's data came from a synthetic folder."""
        return self.data[index][0] in self._synthetic

    @property
    def num_synthetic(self) -> int:
        return sum(item[0] in self._synthetic for item in self.train)

    def __getitem__(self, index: int) -> dict[str, Any]:
        img_path, pid, camid, dsetid = self.data[index]
        img = load_image(img_path)  # raises ImageReadError instead of torchreid's endless retry
        if self.transform is not None:
            img = self._transform_image(self.transform, self.k_tfm, img)
        return {
            "img": img,
            "pid": pid,
            "camid": camid,
            "impath": img_path,
            "dsetid": dsetid,
            "synthetic": img_path in self._synthetic,
        }

    def show_summary(self) -> None:
        logger.info(
            "%s: train %d images (%d synthetic) / %d ids, query %d, gallery %d",
            type(self).__name__,
            len(self.train),
            self.num_synthetic,
            self.num_train_pids,
            len(self.query),
            len(self.gallery),
        )


#: The classes behind the names :func:`register_posereid_dataset` gave torchreid (``None``: unregistered).
#: torchreid's public ``register_image_dataset`` refuses a name twice and has no way back, so each name is
#: registered once, with a factory that builds whatever class this table holds for it now.
_REGISTERED: dict[str, type[PosereidMarketDataset] | None] = {}


def _dataset_factory(name: str) -> Callable[..., PosereidMarketDataset]:
    def build(**kwargs: Any) -> PosereidMarketDataset:
        cls = _REGISTERED.get(name)
        if cls is None:
            raise ValueError(
                f"dataset {name!r} was unregistered (unregister_posereid_dataset); register it again to use it"
            )
        return cls(**kwargs)

    return build


def register_posereid_dataset(
    name: str,
    root: str | os.PathLike[str],
    synthetic_dirs: Iterable[str | os.PathLike[str]] = (),
    *,
    train_transform: Callable | None = None,
    test_transform: Callable | None = None,
    **kw: Any,
) -> type[PosereidMarketDataset]:
    """Register a Market folder (+ synthetic folders) under ``name`` for ``torchreid.data.ImageDataManager``.

    The folder is parsed and checked once, on the first construction, and shared by the train, query and
    gallery datasets the manager builds (the manager's own ``root=`` is ignored). ``train_transform`` /
    ``test_transform`` replace the manager's name-only transforms (any callable on a PIL image).
    Registering an existing posereid name again replaces it; a name torchreid already has (its built-in
    datasets, or one registered by other code) raises ValueError. Extra ``kw`` (``check_images``,
    ``strict``, ``on_corrupt``) go to :func:`scan_reid_lists`.
    """
    if name not in _REGISTERED:
        try:
            register_image_dataset(name, _dataset_factory(name))
        except ValueError:  # torchreid's only refusal: the name is taken
            raise ValueError(
                f"{name!r} is a torchreid dataset already (a built-in, or registered by other code); "
                "choose another name"
            ) from None
        _REGISTERED[name] = None
    synthetic_dirs = tuple(synthetic_dirs)
    cache: dict[str, ReidLists] = {}

    def __init__(self, **kwargs: Any) -> None:  # noqa: N807
        kwargs.pop("root", None)  # the manager's root; this registration is bound to its own folder
        if "lists" not in cache:
            cache["lists"] = scan_reid_lists(root, synthetic_dirs, **kw)
        mode = kwargs.get("mode", "train")
        tf = train_transform if mode == "train" else test_transform
        if tf is not None:
            kwargs["transform"] = tf
        PosereidMarketDataset.__init__(self, lists=cache["lists"], **kwargs)

    cls = type(
        f"PosereidDataset_{name}",
        (PosereidMarketDataset,),
        {"__init__": __init__, "_posereid_root": str(root)},
    )
    _REGISTERED[name] = cls
    return cls


def unregister_posereid_dataset(name: str) -> None:
    """Withdraw a dataset registered by :func:`register_posereid_dataset` (no-op if absent).

    torchreid keeps the name (it has no public way to drop one), but building it raises ValueError until
    it is registered again.
    """
    if name in _REGISTERED:
        _REGISTERED[name] = None


def registered_posereid_dataset(name: str) -> type[PosereidMarketDataset] | None:
    """The class currently registered under ``name`` by :func:`register_posereid_dataset`, or ``None``."""
    return _REGISTERED.get(name)


# --------------------------------------------------------------------------------------------------
# Transforms and batch hooks
# --------------------------------------------------------------------------------------------------
def build_reid_transforms(
    height: int,
    width: int,
    *,
    flip: bool = False,
    erasing: bool = False,
    extra: Callable | None = None,
    norm_mean: Sequence[float] = IMAGENET_MEAN,
    norm_std: Sequence[float] = IMAGENET_STD,
) -> tuple[v2.Compose, v2.Compose]:
    """(train, test) torchvision v2 pipelines: resize → float [0, 1] → ``extra`` → flip → normalise → erase.

    ``extra`` is any transform on a ``(3, H, W)`` float tensor in ``[0, 1]`` (e.g. a v2 transform such as
    ``PoseTransferAugment``). Random erasing fills with 0 after normalisation (the mean colour).
    """
    head = [v2.ToImage(), v2.Resize((height, width), antialias=True), v2.ToDtype(torch.float32, scale=True)]
    train = list(head)
    if extra is not None:
        train.append(extra)
    if flip:
        train.append(v2.RandomHorizontalFlip())
    train.append(v2.Normalize(list(norm_mean), list(norm_std)))
    if erasing:
        train.append(v2.RandomErasing(p=0.5, value=0))
    return v2.Compose(train), v2.Compose([*head, v2.Normalize(list(norm_mean), list(norm_std))])


def _stats(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def denormalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Normalised ``(B, 3, H, W)`` batch → ``[0, 1]`` pixels (clamped)."""
    return (x * _stats(std, x) + _stats(mean, x)).clamp(0.0, 1.0)


def normalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``[0, 1]`` ``(B, 3, H, W)`` batch → the model's normalised input."""
    return (x - _stats(mean, x)) / _stats(std, x)


BatchTransform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class BatchAugmentEngine:
    """Mixin for torchreid engines: transform each training batch on the device before the forward pass.

    ``batch_transform(imgs, pids) -> imgs`` receives ``imgs`` as a ``(B, 3, H, W)`` float tensor in
    ``[0, 1]`` (de-normalised with ``norm_mean``/``norm_std``) on the engine's device and ``pids`` (train
    labels) on the same device; it must return a batch of the same shape in ``[0, 1]``, which is
    re-normalised and is exactly what the model sees. ``post_transform`` (optional) is applied per image
    after re-normalisation (e.g. random erasing, so that erased patches are not fed to a generator).
    Use :class:`BatchAugmentSoftmaxEngine` / :class:`BatchAugmentTripletEngine`.
    """

    def __init__(
        self,
        *args: Any,
        batch_transform: BatchTransform | None = None,
        post_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        norm_mean: Sequence[float] = IMAGENET_MEAN,
        norm_std: Sequence[float] = IMAGENET_STD,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.batch_transform = batch_transform
        self.post_transform = post_transform
        self.norm_mean, self.norm_std = tuple(norm_mean), tuple(norm_std)
        self.device = torch.device("cuda" if self.use_gpu else "cpu")

    def forward_backward(self, data: dict[str, Any]) -> dict[str, float]:
        return super().forward_backward(self.augment_batch(data))

    def augment_batch(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with its ``img`` run through ``batch_transform`` and ``post_transform`` (unchanged when
        neither is set); subclasses with their own ``forward_backward`` call this first."""
        if self.batch_transform is not None or self.post_transform is not None:
            imgs, pids = self.parse_data_for_train(data)
            imgs = imgs.to(self.device, non_blocking=True)
            if self.batch_transform is not None:
                x = denormalize(imgs, self.norm_mean, self.norm_std)
                out = self.batch_transform(x, pids.to(self.device))
                if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise ValueError(
                        f"batch_transform must return a tensor of shape {tuple(x.shape)}, got {got}"
                    )
                imgs = normalize(out.to(device=self.device, dtype=x.dtype), self.norm_mean, self.norm_std)
            if self.post_transform is not None:
                imgs = torch.stack([self.post_transform(im) for im in imgs])
            data = {**data, "img": imgs}
        return data


class BatchAugmentSoftmaxEngine(BatchAugmentEngine, ImageSoftmaxEngine):
    """torchreid's softmax engine with a batch hook (see :class:`BatchAugmentEngine`)."""


class BatchAugmentTripletEngine(BatchAugmentEngine, ImageTripletEngine):
    """torchreid's triplet + softmax engine with a batch hook (see :class:`BatchAugmentEngine`)."""


# --------------------------------------------------------------------------------------------------
# Models and checkpoints
# --------------------------------------------------------------------------------------------------
def _numpy_safe_globals() -> list:
    """Globals torchreid checkpoints need beyond tensors: numpy scalars (``rank1``) and dtypes."""
    scalar = np.float64(0).__reduce__()[0]  # numpy.core.multiarray.scalar, reached through public pickling

    allowed: list = [scalar, np.dtype, (scalar, "numpy.core.multiarray.scalar")]
    allowed += [type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "?")]
    return allowed


def load_torchreid_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a torchreid ``.pth.tar`` (``save_checkpoint``) with ``torch.load(weights_only=True)``.

    Only numpy scalar/dtype globals are allow-listed; anything else still refuses to unpickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    return obj


def _strip_module(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Weights from a ``.safetensors`` file or a torch state dict / torchreid checkpoint (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: weights file not found (put a local .safetensors or torch state-dict file there; "
            "posereid never downloads weights)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = load_torchreid_checkpoint(path)
    sd = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: no tensor state dict found (keys: {sorted(obj)[:8]})")
    return _strip_module(sd)


def build_reid_model(
    name: str,
    num_classes: int,
    *,
    loss: Literal["softmax", "triplet"] = "softmax",
    pretrained: str | os.PathLike[str] | None = None,
) -> torch.nn.Module:
    """A torchreid model built with ``pretrained=False`` (no download), then local weights if given.

    ``pretrained`` may hold a backbone (e.g. torchvision's ImageNet ResNet-50 state dict) or a full
    re-ID checkpoint: tensors whose name and shape match are loaded, the rest (e.g. a classifier with
    another number of classes) keep their initialisation. No matching tensor at all raises ValueError.
    """
    model = build_model(name, num_classes, loss=loss, pretrained=False, use_gpu=False)
    if pretrained is not None:
        sd = load_state_dict_file(pretrained)
        own = model.state_dict()
        matched = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        if not matched:
            raise ValueError(f"{pretrained}: no tensor matches {name}'s parameters (wrong architecture?)")
        model.load_state_dict(matched, strict=False)
        logger.info(
            "%s: loaded %d/%d tensors from %s (%d skipped)",
            name,
            len(matched),
            len(own),
            pretrained,
            len(sd) - len(matched),
        )
    return model


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"checkpoint meta value of type {type(obj).__name__} is not JSON-serialisable")


def save_reid_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    *,
    meta: Mapping[str, Any],
) -> Path:
    """Write ``model``'s weights as safetensors with ``meta`` (JSON) in its header; atomic.

    A readable copy of ``meta`` goes to ``<path>.json``. Loading needs no unpickling at all.
    """
    from safetensors.torch import save_file

    path = Path(path)
    sd = model.state_dict() if isinstance(model, torch.nn.Module) else model
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in sd.items()}
    meta_json = json.dumps(dict(meta), default=_json_default, sort_keys=True)
    atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata={_META_KEY: meta_json}))
    with atomic_write(path.with_name(path.name + ".json")) as fh:
        fh.write(json.dumps(json.loads(meta_json), indent=2) + "\n")
    return path


def load_reid_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` from :func:`save_reid_checkpoint`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: re-ID checkpoint not found")
    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata() or {}
    if _META_KEY not in header:
        raise ValueError(f"{path}: not a posereid re-ID checkpoint (no {_META_KEY!r} in the header)")
    return load_file(str(path)), json.loads(header[_META_KEY])


# --------------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------------
class ReidFeatureExtractor:
    """L2-normalised re-ID features of images in ``[0, 1]`` (tensors) or PIL images.

    Images are resized to the model's ``(height, width)``, normalised with ``norm_mean``/``norm_std``
    and run in eval mode in batches of ``batch_size`` on ``device``. Output ``(B, D)`` float32 on the
    input tensor's device (CPU for PIL input).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        height: int = 256,
        width: int = 128,
        norm_mean: Sequence[float] = IMAGENET_MEAN,
        norm_std: Sequence[float] = IMAGENET_STD,
        device: str | torch.device | None = None,
        batch_size: int = 64,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.size = (int(height), int(width))
        self.norm_mean, self.norm_std = tuple(norm_mean), tuple(norm_std)
        self.batch_size = int(batch_size)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], *, device: str | torch.device | None = None, batch_size: int = 64
    ) -> ReidFeatureExtractor:
        """Build from a :func:`save_reid_checkpoint` file (its meta names model, classes, input size)."""
        sd, meta = load_reid_checkpoint(path)
        missing = [k for k in ("model", "num_classes", "height", "width") if k not in meta]
        if missing:
            raise ValueError(f"{path}: checkpoint meta lacks {missing}")
        model = build_model(
            meta["model"],
            int(meta["num_classes"]),
            loss=meta.get("loss", "softmax"),
            pretrained=False,
            use_gpu=False,
        )
        model.load_state_dict(sd)
        return cls(
            model,
            height=meta["height"],
            width=meta["width"],
            norm_mean=meta.get("norm_mean", IMAGENET_MEAN),
            norm_std=meta.get("norm_std", IMAGENET_STD),
            device=device,
            batch_size=batch_size,
        )

    def _prepare(self, images: torch.Tensor | Sequence[Image.Image]) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            x = images.unsqueeze(0) if images.ndim == 3 else images
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"expected (B, 3, H, W) images in [0, 1], got shape {tuple(images.shape)}")
            return x.float()
        tensors = [pil_to_tensor01(im) for im in images]
        return torch.stack(
            [
                F.interpolate(t[None], size=self.size, mode="bilinear", antialias=True, align_corners=False)[
                    0
                ]
                for t in tensors
            ]
        )

    @torch.no_grad()
    def __call__(self, images: torch.Tensor | Sequence[Image.Image]) -> torch.Tensor:
        x = self._prepare(images)
        out_device = images.device if isinstance(images, torch.Tensor) else torch.device("cpu")
        feats = []
        for i in range(0, x.shape[0], self.batch_size):
            b = x[i : i + self.batch_size].to(self.device)
            if tuple(b.shape[-2:]) != self.size:
                b = F.interpolate(b, size=self.size, mode="bilinear", antialias=True, align_corners=False)
            f = self.model(normalize(b, self.norm_mean, self.norm_std))
            feats.append(F.normalize(f.float(), dim=1).to(out_device))
        if not feats:
            return torch.empty((0, 0))
        return torch.cat(feats)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The same L2-normalised features of a ``(B, 3, H, W)`` tensor in ``[0, 1]``, with gradients flowing
        to the images (the model stays frozen and in eval mode): what a training loss through the re-ID
        network needs, e.g. the generator's identity loss (``GeneratorPipeline.set_identity_loss``)."""
        x = self._prepare(images)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        self.model.eval().requires_grad_(False)
        f = self.model(normalize(x.to(self.device), self.norm_mean, self.norm_std))
        return F.normalize(f.float(), dim=1).to(images.device)
