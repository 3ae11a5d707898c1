"""Checkpoint files shared by every generator family: names, JSON configs and safetensors weights.

A checkpoint is a directory, as in diffusers: ``config.json`` + ``diffusion_pytorch_model.safetensors``
(+ ``ema.safetensors``) for one model, ``scheduler_config.json`` for its noise schedule, and a
``model_index.json`` naming the pipeline class and one sub-folder per further component (a stage, a VAE,
a vision backbone), each written by that component's own ``save_pretrained``. No pickle anywhere.

Every model class of the project (each family's weights, the pose judge) gets ``save_pretrained`` /
``from_pretrained`` from :class:`CheckpointMixin`; foreign components (a diffusers VAE, a
``transformers`` backbone) go through :func:`save_component` / :func:`require_local_weights`.

Every read names the file it failed on: a truncated or renamed-pickle ``.safetensors``, invalid JSON, a
config field of the wrong type or size (named field, checked before anything is built), a state dict that
does not fit the config, a weight that is not floating point or holds a NaN/Inf value (named tensor)
raise :class:`CheckpointError`, never a bare library error. Loading the EMA weights also checks the plain
weights file beside them (what ``use_ema=False`` and a resumed training read): a damaged one is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from posereid.models.io_utils import atomic_save, atomic_write
from posereid.models.parts import check_config_fields

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
EMA_WEIGHTS_NAME = "ema.safetensors"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
MODEL_INDEX_NAME = "model_index.json"
#: weight files a diffusers / transformers component folder may hold
COMPONENT_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors", "pytorch_model.bin",
)  # fmt: skip

_M = TypeVar("_M", bound="CheckpointMixin")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, damaged or does not fit its config (the message names it)."""


class CheckpointMismatchError(CheckpointError):
    """A state dict does not fit the model built from the config (names the offending keys)."""


def read_json(path: str | os.PathLike[str]) -> dict:
    """The JSON object in ``path``; a missing file raises ``FileNotFoundError``, a bad one :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text ({err.reason})") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid JSON (line {err.lineno}): {err.msg}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


@contextlib.contextmanager
def refused_as(
    path: str | os.PathLike[str], what: str, *, also: tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """Turn a ``TypeError`` / ``ValueError`` (and the ``also`` types) raised inside (a constructor refusing
    a config) into :class:`CheckpointError` ``"<path>: <what> (<the error>)"``, so the user learns which
    file is wrong."""
    try:
        yield
    except (TypeError, ValueError, *also) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path}: {what} ({err})") from err


def read_class_json(
    path: str | os.PathLike[str], names: tuple[str, ...], *, default: str | None = None
) -> dict:
    """The JSON object in ``path`` (a ``config.json`` or ``model_index.json``), refused with
    :class:`CheckpointError` naming the file when its ``_class_name`` (``default`` when absent) is not one of
    ``names``."""
    data = read_json(path)
    name = data.get("_class_name", default)
    if name not in names:
        raise CheckpointError(f"{path}: is a {name!r} checkpoint, not {names[0]}")
    return data


def check_finite(state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise :class:`CheckpointError` naming the first tensors holding NaN or Inf (they would give NaN images)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise CheckpointError(f"{source}: non-finite values (NaN/Inf) in {shown}; the checkpoint is damaged")


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Raise :class:`CheckpointMismatchError` listing missing, unexpected and wrongly shaped keys, and
    :class:`CheckpointError` naming the tensors whose dtype is not floating point where the model's is
    (int32 weights would load as whole numbers) or the reverse."""
    expected = model.state_dict()
    kinds = sorted(
        f"{k} ({state[k].dtype})"
        for k in set(state) & set(expected)
        if state[k].is_floating_point() != expected[k].is_floating_point()
    )
    if kinds:
        shown = ", ".join(kinds[:5]) + (f", ... ({len(kinds)} in all)" if len(kinds) > 5 else "")
        raise CheckpointError(
            f"{source}: tensors of the wrong kind of dtype: {shown}; weights are floating point (the model's "
            "buffers keep their dtype), so the file is damaged or not written by save_pretrained"
        )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    parts = []
    for label, keys in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatch", shapes),
    ):
        if keys:
            shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
            parts.append(f"{label}: {shown}")
    if parts:
        raise CheckpointMismatchError(f"{source} does not match the model config; " + "; ".join(parts))


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, checked to be finite; damaged files raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({err}); the file is damaged"
        ) from err
    check_finite(state, source=str(path))
    return state


def save_weights(path: str | os.PathLike[str], state: Mapping[str, torch.Tensor]) -> None:
    """Write ``state`` (moved to CPU, contiguous) as safetensors, atomically."""
    cpu = {k: torch.as_tensor(v).detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_save(path, lambda tmp: save_file(cpu, str(tmp), metadata={"format": "pt"}))


def save_model(
    model: torch.nn.Module,
    directory: str | os.PathLike[str],
    ema_state_dict: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Weights (+ EMA weights) of ``model`` into ``directory``; a stale EMA file is removed.

    ``ema_state_dict`` maps the same names as ``model.state_dict()`` to EMA tensors. The config is the
    caller's (``to_json_string`` of a diffusers ``ConfigMixin``), written last by :func:`save_config`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(directory / WEIGHTS_NAME, model.state_dict())
    ema_path = directory / EMA_WEIGHTS_NAME
    if ema_state_dict is not None:
        check_state_dict(model, ema_state_dict, source="ema_state_dict")
        save_weights(ema_path, ema_state_dict)
    elif ema_path.exists():  # a stale EMA file would be preferred on load
        ema_path.unlink()


def check_weights_file(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Check a safetensors file against ``model`` without reading its values: the header parses, every
    tensor's bytes are there, and names, shapes and kinds of dtype fit (:class:`CheckpointError` naming
    the file otherwise). NaN/Inf values are found only when the file is loaded."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = {k: fh.get_slice(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
            shapes = {
                k: torch.empty(s.get_shape(), dtype=_dtype(s.get_dtype()), device="meta")
                for k, s in meta.items()
            }
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({err}); the file is damaged"
        ) from err
    check_state_dict(model, shapes, source=str(path))


def _dtype(name: str) -> torch.dtype:
    """A torch dtype of the same kind (floating or not) as a safetensors dtype name (``F32``, ``I64`` …)."""
    known = {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool,
    }  # fmt: skip
    return known.get(name, torch.float32 if name.startswith(("F", "BF")) else torch.uint8)


def load_model_weights(model: torch.nn.Module, directory: str | os.PathLike[str], *, use_ema: bool) -> Path:
    """Load ``directory``'s EMA weights (when present and ``use_ema``) or plain weights into ``model``.

    With the EMA weights, the plain weights file is checked too (:func:`check_weights_file`: header,
    sizes, names, shapes, dtypes; no values read): ``use_ema=False`` and a resumed training read it, so a
    damaged one is reported by a warning naming it (the EMA weights still load).
    """
    directory = Path(directory)
    weights = directory / EMA_WEIGHTS_NAME
    if not (use_ema and weights.is_file()):
        weights = directory / WEIGHTS_NAME
    state = load_weights(weights)
    check_state_dict(model, state, source=str(weights))
    model.load_state_dict(state, strict=True)
    if weights.name == EMA_WEIGHTS_NAME:
        try:
            check_weights_file(model, directory / WEIGHTS_NAME)
        except CheckpointError as err:
            logger.warning(
                "%s; the EMA weights (%s) are used, but use_ema=False and resuming training will refuse "
                "this checkpoint", err, weights.name,
            )  # fmt: skip
    return weights


def require_local_weights(
    path: str | os.PathLike[str],
    what: str,
    hint: str,
    *,
    weight_files: tuple[str, ...] = COMPONENT_WEIGHT_FILES,
    error: type[FileNotFoundError] = FileNotFoundError,
) -> Path:
    """``path`` as a local component folder with ``config.json`` and weights, or ``error`` naming the path.

    The one check before a foreign ``from_pretrained(dir, local_files_only=True)`` (a VAE, a UNet, a vision
    backbone): nothing is ever downloaded, and a missing folder or file says what to put there (``hint``).
    """
    directory = Path(path)
    if not directory.is_dir() or not (directory / CONFIG_NAME).is_file():
        raise error(f"{what} directory {str(directory)!r} not found or has no {CONFIG_NAME}; {hint}")
    if not any((directory / name).is_file() for name in weight_files):
        raise error(
            f"{what} directory {str(directory)!r} has {CONFIG_NAME} but no weights "
            f"(expected one of {', '.join(weight_files)}); {hint}"
        )
    return directory


def save_component(
    module: Any, directory: str | os.PathLike[str], *, extra_files: tuple[Path, ...] = ()
) -> None:
    """Write a foreign component (``module.save_pretrained(dir)``, e.g. a VAE or a vision backbone) as one
    folder that appears whole or not at all: written beside, then swapped in (their savers write in place).

    ``extra_files``: files copied in with it (e.g. a backbone's ``preprocessor_config.json``).
    """
    target = Path(directory)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    module.save_pretrained(str(tmp))
    for src in extra_files:
        if Path(src).is_file():
            shutil.copy(src, tmp / Path(src).name)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def _library(cls: type) -> str:
    """Where ``model_index.json`` says a class comes from: its package for ours (``posereid.models.pcdms``),
    the top-level library for a foreign one (``diffusers``, ``transformers``), as diffusers writes it."""
    module = cls.__module__
    return module.rsplit(".", 1)[0] if module.startswith("posereid.") else module.split(".")[0]


def write_model_index(
    directory: str | os.PathLike[str], class_name: str, components: Mapping[str, Any], **extra: Any
) -> None:
    """``model_index.json`` (diffusers' layout): the pipeline class, then ``folder: [library, class]`` per
    component (``None`` for an absent optional one), then ``extra`` fields; written atomically, last."""
    import diffusers

    index: dict[str, Any] = {"_class_name": class_name, "_diffusers_version": diffusers.__version__}
    for folder, module in components.items():
        index[folder] = [None, None] if module is None else [_library(type(module)), type(module).__name__]
    index.update(extra)
    with atomic_write(Path(directory) / MODEL_INDEX_NAME) as fh:
        fh.write(json.dumps(index, indent=2, sort_keys=True) + "\n")


class CheckpointMixin:
    """``save_pretrained`` / ``from_pretrained`` of one model folder for a diffusers ``ModelMixin`` +
    ``ConfigMixin``: ``config.json`` + safetensors weights (+ ``ema.safetensors``), each written atomically
    (the config last), read back with the finite and shape checks of this module.

    Put it first among the bases (``class M(CheckpointMixin, ModelMixin, ConfigMixin)``) so its methods
    replace diffusers' (which would accept hub ids and pickles). Hooks: :attr:`LEGACY_CLASS_NAMES` (older
    ``_class_name`` values still read), :meth:`_checkpoint_config` (adapt a read config, e.g. point a
    path field at a folder of the checkpoint), :meth:`_save_components` (write sub-folders beside the
    weights).
    """

    config_name = CONFIG_NAME
    #: ``_class_name`` values of checkpoints written before a rename, still loaded by this class
    LEGACY_CLASS_NAMES: ClassVar[tuple[str, ...]] = ()

    def save_pretrained(  # type: ignore[override]
        self, save_directory: str | os.PathLike[str], ema_state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Write the weights (+ EMA weights, + components), then ``config.json``, each file atomically."""
        directory = Path(save_directory)
        save_model(self, directory, ema_state_dict)  # type: ignore[arg-type]
        self._save_components(directory)
        with atomic_write(directory / CONFIG_NAME) as fh:
            fh.write(self.to_json_string())  # type: ignore[attr-defined]

    def _save_components(self, directory: Path) -> None:
        """Write sub-folders a model keeps beside its weights (none by default)."""

    @classmethod
    def _checkpoint_config(cls, config: dict[str, Any], directory: Path) -> dict[str, Any]:
        """The config read from ``directory`` as :meth:`from_config` should see it (unchanged by default)."""
        return config

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls: type[_M], pretrained_model_name_or_path: str | os.PathLike[str], *, use_ema: bool = True
    ) -> _M:
        """Load a local folder written by :meth:`save_pretrained` (EMA weights preferred), in eval mode.

        A folder of another class, a config the constructor refuses, a damaged or mismatched weights file
        raise :class:`CheckpointError` naming the file.
        """
        directory = Path(pretrained_model_name_or_path)
        cfg_path = directory / CONFIG_NAME
        config = read_class_json(cfg_path, (cls.__name__, *cls.LEGACY_CLASS_NAMES), default=cls.__name__)
        config = {**cls._checkpoint_config(config, directory), "_class_name": cls.__name__}
        # fields checked before anything is built: a size of 0 divides by zero, a huge one exhausts memory
        with refused_as(cfg_path, f"invalid {cls.__name__} config", also=(ArithmeticError, RuntimeError)):
            check_config_fields(cls.__init__, config)
            model = cls.from_config(config)  # type: ignore[attr-defined]
        weights = load_model_weights(model, directory, use_ema=use_ema)
        logger.info("loaded %s from %s", cls.__name__, weights)
        return model.eval()


__all__ = [
    "COMPONENT_WEIGHT_FILES",
    "CheckpointMixin",
    "require_local_weights",
    "save_component",
    "write_model_index",
    "CONFIG_NAME",
    "EMA_WEIGHTS_NAME",
    "MODEL_INDEX_NAME",
    "SCHEDULER_CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "CheckpointMismatchError",
    "check_finite",
    "check_state_dict",
    "check_weights_file",
    "load_model_weights",
    "load_weights",
    "read_class_json",
    "refused_as",
    "read_json",
    "save_model",
    "save_weights",
]
