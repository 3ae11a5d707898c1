"""Training loop for the pose-transfer generator: config, checkpoints, grids and an exactly resumable loop.

Reproducibility is by construction, not by saved RNG state: every random draw of a step (which pairs,
which source image of the identity, the flip, the timesteps/noise/condition dropout inside
``model.training_loss``, and the global torch RNG for any dropout) is derived from
``(config.seed, step, micro-batch, rank)``. A run killed after N steps and resumed from its checkpoint
therefore ends with the same weights as an uninterrupted run (checked on CPU in ``tests/test_training.py``).

Output directory layout::

    checkpoints/step-0000500/   model/ (save_pretrained, EMA included) + training_state.pt
    samples/step-0000500.png    rows: source | target skeleton | generated (EMA) | ground truth
    train_log.csv               step,loss,lr,grad_norm,skipped
    tensorboard/                SummaryWriter events
    final/                      save_pretrained of the last step (EMA included); only once ``steps`` are done

Checkpoints are written into ``step-XXXXXXX.tmp-<pid>`` and renamed into place, so a kill never leaves a
half checkpoint; leftovers are deleted on resume. ``training_state.pt`` holds only tensors and plain
Python values and is read with ``torch.load(weights_only=True)``.

The data side (:class:`PoseRecord`, :class:`PosePairDataset`, :class:`ImageLoadError` and the step batch
sampler) lives in :mod:`posereid.models.training_data` and is re-exported here.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from posereid.models.io_utils import atomic_save, atomic_write, is_temp_file
from posereid.models.locks import LOCK_NAME, output_lock
from posereid.models.pose import skeleton_tensor
from posereid.models.training_data import ImageLoadError, PosePairDataset, PoseRecord, _StepBatchSampler

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
#: what ``train_generator(overwrite=True)`` (``train-generator --overwrite``) removes from its output folder
TRAIN_OUTPUTS = (
    CHECKPOINT_DIR,
    "final",
    "samples",
    "tensorboard",
    "train_log.csv",
    "train_config.json",
    "loss.png",
)
STATE_FILE = "training_state.pt"
LOG_FILE = "train_log.csv"
LOG_COLUMNS = ("step", "loss", "lr", "grad_norm", "skipped")
_STEP_RE = re.compile(r"^step-(\d{7,})$")


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient: training diverged."""


class ResumeMismatchError(ValueError):
    """An output directory's checkpoint was trained with other settings than the ones asked for now."""


def derive_seed(*values: int) -> int:
    """A 63-bit seed that is a pure function of the given non-negative integers (numpy SeedSequence)."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


# -------------------- Config and result ----------------------------------------------------------
@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_generator` (defaults as PCDMs/PIDM: AdamW 1e-4, clip 1, EMA 0.9999).

    ``steps`` counts optimizer steps; each consumes ``grad_accum`` micro-batches of ``batch_size`` per
    process. ``ema_start``: EMA updates begin after this many steps. The last step is always
    checkpointed (``checkpoint_every = 0``: only it); ``sample_every = 0`` draws no grids. Grids use
    ``sample_sampler`` (DDIM clips its x0 estimate, so grids of an under-trained model stay
    informative; a flow-matching model, which DDIM cannot sample, draws them with DPM-Solver++, which
    clips x0 too). ``max_nonfinite_in_row``: abort with :class:`NonFiniteLossError` after more
    consecutive non-finite steps than this. ``max_minutes``: wall-clock budget of one call; when it runs
    out, training checkpoints, draws a grid and returns early without a ``final/`` (the LR schedule
    still spans ``steps``, so a later call with ``resume`` carries on where it stopped: a job under a
    cluster time limit). ``identity_loss``: what the model's identity loss is
    (``GeneratorPipeline.set_identity_loss``; e.g. the re-ID checkpoint's hash and the weight), recorded so
    that a resume with another one is refused. ``few_step``: what a few-step fine-tune distils
    (:func:`~posereid.models.few_step.few_step_description`), recorded for the same reason.
    """

    steps: int = 10000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    ema_decay: float = 0.9999
    ema_start: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    sample_every: int = 1000
    num_samples: int = 4
    sample_steps: int = 20
    sample_sampler: str = "ddim"
    log_every: int = 10
    max_nonfinite_in_row: int = 20
    seed: int = 0
    num_workers: int = 0
    tensorboard: bool = True
    max_minutes: float | None = None
    identity_loss: str | None = None
    few_step: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "log_every", "num_samples", "sample_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "ema_start", "checkpoint_every", "sample_every", "num_workers",
                     "max_nonfinite_in_row", "keep_checkpoints", "seed"):  # fmt: skip
            if int(getattr(self, name)) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        choices = {"lr_schedule": ("cosine", "linear", "constant"), "mixed_precision": ("no", "fp16", "bf16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"TrainConfig.max_minutes must be > 0 or None, got {self.max_minutes}")
        if not 0.0 <= self.ema_decay < 1.0 or not self.lr > 0:
            raise ValueError(f"need 0 <= ema_decay < 1 and lr > 0, got {self.ema_decay}, {self.lr}")


@dataclass
class TrainResult:
    """``steps``: global step reached; ``losses``: one per step run in THIS call (``nan`` when skipped),
    i.e. steps ``start_step + 1 … steps``; ``out_of_time``: stopped by ``max_minutes`` before
    ``config.steps``."""

    steps: int
    losses: list[float] = field(default_factory=list)
    skipped_nonfinite: int = 0
    final_loss: float = float("nan")
    output_dir: Path = Path(".")
    start_step: int = 0
    out_of_time: bool = False


# -------------------- Checkpoints ----------------------------------------------------------------
def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, dir)`` in ``output_dir/checkpoints``, oldest first."""
    root = Path(output_dir) / CHECKPOINT_DIR
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            m = _STEP_RE.match(entry.name)
            if m and entry.is_dir():
                if (entry / STATE_FILE).is_file() and (entry / "model").is_dir():
                    found.append((int(m.group(1)), entry))
                else:
                    logger.warning("ignoring incomplete checkpoint %s (no %s or model/)", entry, STATE_FILE)
    return sorted(found)


def _clean_temp_checkpoints(output_dir: Path) -> None:
    root = output_dir / CHECKPOINT_DIR
    if root.is_dir():
        for entry in root.iterdir():
            if is_temp_file(entry.name):
                logger.warning("removing leftover partial checkpoint %s", entry)
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _write_dir(target: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a fresh temporary sibling directory, then rename it over ``target``."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ema_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The parameters the EMA averages, by name: those that train. Averaging a frozen VAE or a finished
    PCDMs stage would only cost memory and time (their EMA is themselves)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _ema_state_dict(model: nn.Module, ema: Any) -> dict[str, torch.Tensor]:
    """The model's state dict with the :func:`_ema_params` replaced by their EMA (frozen parameters and
    buffers as they are)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    for (name, _), shadow in zip(_ema_params(model), ema.shadow_params, strict=True):
        state[name] = shadow.detach().cpu().clone()
    return state


# -------------------- Logging helpers ------------------------------------------------------------
def _truncate_log(path: Path, last_step: int) -> None:
    """Keep well-formed rows with ``step <= last_step`` (steps after the resumed checkpoint are redone)."""
    if not path.exists():
        return
    with open(path, encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.reader(fh)]
    keep = [list(LOG_COLUMNS)]
    for r in rows[1:]:
        if len(r) == len(LOG_COLUMNS) and r[0].isdigit() and int(r[0]) <= last_step:
            keep.append(r)
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(keep)


def _append_log(path: Path, rows: list[tuple]) -> None:
    new = not path.exists()
    with open(path, "a", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(LOG_COLUMNS)
        w.writerows(rows)
    rows.clear()


@torch.no_grad()
def save_sample_grid(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    path: Path,
    *,
    steps: int,
    seed: int,
    sampler: str = "ddim",
) -> None:
    """PNG grid, one row per pair: source | target skeleton | generated | ground truth.

    A flow-matching model (``prediction_type="flow"``) has no DDIM/DDPM form: such a ``sampler`` is
    replaced by ``"dpmsolver++"`` (these grids are a diagnostic).
    """
    from torchvision.utils import make_grid, save_image

    from posereid.models.sampling import FLOW_SAMPLERS, is_flow

    scheduler = getattr(model, "scheduler", None)
    if scheduler is not None and is_flow(scheduler) and sampler not in FLOW_SAMPLERS:
        sampler = "dpmsolver++"
    device = next(model.parameters()).device
    n = batch["source"].shape[0]
    gen = model.generate(
        batch["source"].to(device), batch["target_kps"].to(device), batch["source_kps"].to(device),
        steps=steps, sampler=sampler, seeds=[seed + i for i in range(n)],
    ).float().cpu()  # fmt: skip
    h, w = batch["source"].shape[-2:]
    skel = skeleton_tensor(batch["target_kps"], h, w)
    tiles = torch.stack([batch["source"], skel, gen.clamp(0, 1), batch["target"]], dim=1).flatten(0, 1)
    grid = make_grid(tiles, nrow=4, padding=1, pad_value=1.0)
    atomic_save(path, lambda tmp: save_image(grid, tmp))


# -------------------- Training loop --------------------------------------------------------------
_clock = time.monotonic  # the time budget's clock (tests replace it)


#: TrainConfig fields a resumed job may change (run control, not the optimisation it continues)
RUN_CONTROL_FIELDS = ("max_minutes", "num_workers", "tensorboard", "log_every")


def data_fingerprint(dataset: PosePairDataset) -> dict[str, Any]:
    """What a resume must find unchanged about the training data: counts and short hashes.

    ``records``: SHA-256 (12 hex digits) of every record's name, identity and keypoints in dataset order
    (what ``--data`` / ``--annotations`` / ``--min-joints`` select); ``pair_list``: the same of the explicit
    pairs (``--pairs``), else ``"auto"``; ``images`` / ``identities`` / ``pairs``: counts, so a message
    says how the data differ. Image bytes are not read (a folder may move; its names are compared).
    """
    rec_hash = hashlib.sha256()
    for i, rec in enumerate(dataset.records):
        name = rec.name or (Path(rec.image).name if isinstance(rec.image, (str, Path)) else str(i))
        rec_hash.update(f"{name}\0{int(rec.pid)}\0".encode())
        rec_hash.update(np.ascontiguousarray(rec.keypoints, dtype=np.float32).tobytes())
    pairs = "auto"
    if dataset.pairs is not None:
        pairs = hashlib.sha256(json.dumps(dataset.pairs).encode()).hexdigest()[:12]
    return {
        "images": len(dataset.records),
        "identities": len({int(r.pid) for r in dataset.records}),
        "pairs": len(dataset),
        "records": rec_hash.hexdigest()[:12],
        "pair_list": pairs,
        "flip_prob": dataset.flip_prob,
        "seed": dataset.seed,
    }


def check_resume_data(saved: dict | None, current: dict, *, source: str | Path) -> None:
    """Raise :class:`ResumeMismatchError` when the checkpoint was trained on other data (a
    :func:`data_fingerprint` field differs), naming each such field; a checkpoint written before
    fingerprints existed (``saved`` is ``None``) resumes with a warning."""
    if saved is None:
        logger.warning("%s: no record of its training data (an older checkpoint); the data are not checked",
                       source)  # fmt: skip
        return
    diff = [
        f"data.{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    ]
    if diff:
        raise ResumeMismatchError(
            f"{source}: this run was trained on other data ({'; '.join(diff)}); rerun with the same --data, "
            "--annotations and --pairs to resume, or start over (--overwrite, or a new --out)"
        )


def check_resume_config(saved: dict, current: dict, *, source: str | Path) -> None:
    """Raise :class:`ResumeMismatchError` naming every hyper-parameter that differs from the checkpoint's.

    Resuming with another LR, batch size or schedule would silently train a mix of two runs.
    """
    diff = [
        f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}"
        for k in sorted(set(saved) | set(current))
        if k not in RUN_CONTROL_FIELDS and saved.get(k) != current.get(k)
    ]
    if diff:
        raise ResumeMismatchError(
            f"{source}: this run was started with other settings ({'; '.join(diff)}); rerun with the same "
            "settings to resume, or start over (--overwrite, or a new --out)"
        )


class _LossModule(nn.Module):
    """Routes ``forward`` to ``model.training_loss`` so DDP (``accelerate launch``) sees a forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, source, target, source_kps, target_kps, generator=None, **extra):  # noqa: ANN001, ANN003
        # extra: what a dataset adds for the model's loss (a few-step fine-tune's teacher trajectory)
        return self.model.training_loss(source, target, source_kps, target_kps, generator=generator, **extra)


class _Trainer:
    """State of one :func:`train_generator` call (accelerator, optimizer, EMA, counters)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, out: Path) -> None:
        from accelerate import Accelerator
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        self.cfg, self.out = cfg, out
        kwargs = dict(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum)
        try:
            self.acc = Accelerator(**kwargs)
        except ValueError as exc:  # an earlier call in this process used another precision
            if "already been initialized" not in str(exc):
                raise
            from accelerate.state import AcceleratorState

            # No public API resets the process-wide AcceleratorState singleton; this keeps PartialState
            # (the process group) and is what accelerate's own tests call between configurations.
            AcceleratorState._reset_state()
            self.acc = Accelerator(**kwargs)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        schedule = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
        self.scheduler = get_scheduler(
            schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps
        )
        self.wrapper, self.optimizer = self.acc.prepare(_LossModule(model), optimizer)
        self.net = self.acc.unwrap_model(self.wrapper).model
        self.params = [p for _, p in _ema_params(self.net)]
        self.ema = EMAModel(self.params, decay=cfg.ema_decay, update_after_step=cfg.ema_start, foreach=True)
        self.step, self.skipped, self.in_row = 0, 0, 0
        self.data: dict[str, Any] = {}  # the data_fingerprint of this run's dataset

    def resume(self, ckpt: Path) -> None:
        """Restore weights, EMA, optimizer, LR schedule, grad scaler and counters from a checkpoint."""
        try:
            state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised naming the file
            raise RuntimeError(f"{ckpt / STATE_FILE}: cannot read the training state ({exc})") from exc
        check_resume_config(state.get("config") or {}, asdict(self.cfg), source=ckpt / STATE_FILE)
        check_resume_data(state.get("data"), self.data, source=ckpt / STATE_FILE)
        cls = type(self.net)
        self.net.load_state_dict(cls.from_pretrained(ckpt / "model", use_ema=False).state_dict())
        loaded = dict(cls.from_pretrained(ckpt / "model", use_ema=True).named_parameters())
        averaged = [loaded[name] for name, _ in _ema_params(self.net)]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.ema.load_state_dict(state["ema"])  # counters; the averaged weights are model/'s EMA weights
        self.ema.shadow_params = [p.detach().to(self.acc.device).clone() for p in averaged]
        if self.acc.scaler is not None and "scaler" in state:
            self.acc.scaler.load_state_dict(state["scaler"])
        self.step, self.skipped, self.in_row = int(state["step"]), int(state["skipped"]), int(state["in_row"])
        logger.info("resuming from %s (step %d)", ckpt, self.step)

    def train_step(self, batches: Iterator[dict[str, torch.Tensor]]) -> tuple[float, float, float, bool]:
        """One optimizer step over ``grad_accum`` micro-batches → ``(loss, grad_norm, lr, skipped)``."""
        acc, cfg, rank = self.acc, self.cfg, self.acc.process_index
        torch.manual_seed(derive_seed(cfg.seed, 2, self.step, rank))  # any global-RNG use (dropout)
        bad, total = False, torch.zeros((), device=acc.device)
        for micro in range(cfg.grad_accum):
            batch = {k: v.to(acc.device) for k, v in next(batches).items() if k != "pid"}
            gen = torch.Generator(device=acc.device).manual_seed(
                derive_seed(cfg.seed, 3, self.step, micro, rank)
            )
            last = micro == cfg.grad_accum - 1 or acc.num_processes == 1
            with contextlib.nullcontext() if last else acc.no_sync(self.wrapper):
                loss = self.wrapper(**batch, generator=gen)
                flag = torch.tensor(float(not torch.isfinite(loss.detach()).all()), device=acc.device)
                bad = bad or bool(acc.reduce(flag, "sum") > 0)  # every rank agrees on skipping
                if loss.requires_grad:  # a bad step still runs backward (on zero) to keep DDP in step
                    acc.backward(loss.nan_to_num(0.0, 0.0, 0.0) * 0.0 if bad else loss)
            total = total + loss.detach().float() / cfg.grad_accum
        grad_norm = float("nan")
        if not bad:
            clip = cfg.grad_clip if cfg.grad_clip and cfg.grad_clip > 0 else float("inf")
            grad_norm = float(acc.clip_grad_norm_(self.wrapper.parameters(), clip))
            bad = not math.isfinite(grad_norm) and acc.scaler is None  # fp16: the grad scaler skips it
        if not bad:
            self.optimizer.step()
            if not acc.optimizer_step_was_skipped:
                self.ema.step(self.params)
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        with warnings.catch_warnings():  # the LR schedule follows the step count, updates or not
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.step += 1
        return (float("nan") if bad else float(acc.reduce(total, "mean"))), grad_norm, lr, bad

    def count_nonfinite(self, bad: bool) -> None:
        if not bad:
            self.in_row = 0
            return
        self.skipped += 1
        self.in_row += 1
        logger.warning(
            "step %d: non-finite loss/gradient, update skipped (%d in a row)", self.step, self.in_row
        )
        if self.in_row > self.cfg.max_nonfinite_in_row:
            raise NonFiniteLossError(
                f"{self.in_row} consecutive steps (up to step {self.step}) had a non-finite loss or gradient "
                f"(limit max_nonfinite_in_row={self.cfg.max_nonfinite_in_row}); training diverged. Lower the "
                "learning rate, use bf16 instead of fp16, or check the data"
            )

    def checkpoint(self) -> None:
        """Write ``checkpoints/step-XXXXXXX`` (temp dir + rename); keep the newest ``keep_checkpoints``."""
        state = {
            "step": self.step, "skipped": self.skipped, "in_row": self.in_row, "config": asdict(self.cfg),
            "data": dict(self.data),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "ema": {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"},  # in model/
        }  # fmt: skip
        if self.acc.scaler is not None:
            state["scaler"] = self.acc.scaler.state_dict()

        def write(tmp: Path) -> None:
            self.net.save_pretrained(tmp / "model", ema_state_dict=_ema_state_dict(self.net, self.ema))
            torch.save(state, tmp / STATE_FILE)  # last: its presence marks a complete checkpoint

        _write_dir(self.out / CHECKPOINT_DIR / f"step-{self.step:07d}", write)
        done = list_checkpoints(self.out)
        if self.cfg.keep_checkpoints:
            for _, old in done[: max(0, len(done) - self.cfg.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)

    def samples(self, batch: dict[str, torch.Tensor]) -> None:
        """Sample grid with the EMA weights (swapped in and back)."""
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        self.net.eval()
        try:
            path = self.out / "samples" / f"step-{self.step:07d}.png"
            cfg = self.cfg
            save_sample_grid(
                self.net, batch, path, steps=cfg.sample_steps, seed=cfg.seed, sampler=cfg.sample_sampler
            )
        finally:
            self.ema.restore(self.params)
            self.net.train()


def train_generator(
    model: nn.Module,
    dataset: PosePairDataset,
    config: TrainConfig,
    output_dir: str | Path,
    *,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` (any family's pipeline, see :class:`~posereid.models.contract.PoseTransferGenerator`)
    on ``dataset``; outputs as in the module docstring.

    Runs under ``accelerate`` (mixed precision, gradient accumulation, ``accelerate launch``/``torchrun``
    multi-GPU; only the main process writes files). With ``resume=True`` training continues from the
    latest complete checkpoint in ``output_dir`` (its saved settings must match ``config``, else
    :class:`ResumeMismatchError`); with ``resume=False`` the directory must hold none. ``overwrite=True``
    first deletes this function's earlier outputs there (:data:`TRAIN_OUTPUTS`, never other files), under
    the lock, so it cannot delete the checkpoints of a run still going.
    A step whose loss (or gradient norm) is non-finite makes no update and is counted; more than
    ``config.max_nonfinite_in_row`` in a row raise :class:`NonFiniteLossError`. When
    ``config.max_minutes`` runs out the call checkpoints and returns with ``out_of_time=True`` and no
    ``final/`` (the model is unfinished). The checkpoints record :func:`data_fingerprint` of ``dataset``:
    a resume on other data raises :class:`ResumeMismatchError` too.
    While it runs, the main process holds the lock ``output_dir/.lock`` (:mod:`posereid.models.locks`): a
    second call on the same ``output_dir`` raises :class:`~posereid.models.locks.OutputLockedError`
    naming the first.
    """
    t_start = _clock()
    out, cfg = Path(output_dir), config
    size = tuple(getattr(model, "image_size", dataset.image_size))
    if size != dataset.image_size:
        raise ValueError(f"dataset image_size {dataset.image_size} differs from the model's {size}")
    tr = _Trainer(model, cfg, out)
    tr.data = data_fingerprint(dataset)
    # one run per output folder, held by the main process (the other ranks are the same run)
    lock = (
        output_lock(out, LOCK_NAME, what="posereid train-generator")
        if tr.acc.is_main_process
        else contextlib.nullcontext()
    )
    with lock:
        if overwrite and tr.acc.is_main_process:
            for name in TRAIN_OUTPUTS:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        tr.acc.wait_for_everyone()
        return _train_locked(tr, dataset, cfg, out, resume=resume, progress=progress, t_start=t_start)


def _train_locked(
    tr: _Trainer,
    dataset: PosePairDataset,
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool,
    progress: bool,
    t_start: float,
) -> TrainResult:
    """The body of :func:`train_generator`, run while its main process holds the output's lock."""
    acc, main = tr.acc, tr.acc.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _clean_temp_checkpoints(out)
    acc.wait_for_everyone()
    existing = list_checkpoints(out)
    if existing and not resume:
        raise FileExistsError(
            f"{out} already holds checkpoints up to step {existing[-1][0]}; pass resume=True (--resume) to "
            "continue, or choose an empty output directory"
        )
    if existing:
        tr.resume(existing[-1][1])
    start = tr.step
    log = out / LOG_FILE
    sample_batch, writer = None, None
    if main:
        with atomic_write(out / "train_config.json") as fh:
            fh.write(json.dumps({**asdict(cfg), "data": tr.data}, indent=2) + "\n")
        _truncate_log(log, start)
        if cfg.sample_every:
            n = min(cfg.num_samples, len(dataset))
            sample_batch = torch.utils.data.default_collate([dataset.get(k, flip=False) for k in range(n)])
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1)
    sampler = _StepBatchSampler(
        len(dataset), cfg.batch_size, cfg.seed, start * cfg.grad_accum, acc.process_index, acc.num_processes
    )
    batches = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers))
    rows: list[tuple] = []
    losses: list[float] = []
    bar = tqdm(total=cfg.steps, initial=start, desc="train generator", disable=not (progress and main))
    tr.wrapper.train()
    out_of_time = False
    try:
        while tr.step < cfg.steps:
            loss, grad_norm, lr, bad = tr.train_step(batches)
            losses.append(loss)
            tr.count_nonfinite(bad)
            step = tr.step
            if cfg.max_minutes is not None and step < cfg.steps:
                late = torch.tensor(float(_clock() - t_start > 60.0 * cfg.max_minutes))
                out_of_time = bool(acc.reduce(late.to(acc.device), "sum") > 0)  # all ranks stop together
            if main:
                rows.append((step, f"{loss:.6g}", f"{lr:.6g}", f"{grad_norm:.6g}", int(bad)))
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if writer is not None and not bad and step % cfg.log_every == 0:
                    for key, value in (("loss", loss), ("lr", lr), ("grad_norm", grad_norm)):
                        writer.add_scalar(f"train/{key}", value, step)
                if step % cfg.log_every == 0:
                    _append_log(log, rows)
            if (
                step == cfg.steps
                or out_of_time
                or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
            ):
                if main:
                    _append_log(log, rows)
                    tr.checkpoint()
                acc.wait_for_everyone()
            if sample_batch is not None and (step % cfg.sample_every == 0 or out_of_time):
                tr.samples(sample_batch)
            if out_of_time:
                logger.warning(
                    "max_minutes=%g reached at step %d of %d: checkpointed, no final/; rerun to continue",
                    cfg.max_minutes, step, cfg.steps,
                )  # fmt: skip
                break
    finally:
        bar.close()
        if main and rows:
            _append_log(log, rows)
        if writer is not None:
            writer.close()
    if main and out_of_time:  # an unfinished model is no final/ (a stale one, of an earlier stop, goes)
        if (out / "final").exists():
            logger.warning("removing %s: written before step %d of %d", out / "final", tr.step, cfg.steps)
            shutil.rmtree(out / "final")
    elif main:
        _write_dir(
            out / "final", lambda d: tr.net.save_pretrained(d, ema_state_dict=_ema_state_dict(tr.net, tr.ema))
        )
        logger.info("trained to step %d; final model (EMA included) in %s", tr.step, out / "final")
    if main:
        if log.is_file():
            plot_loss_curve(log, out / "loss.png")
    acc.wait_for_everyone()
    finite = [v for v in losses if math.isfinite(v)]
    return TrainResult(
        steps=tr.step, losses=losses, skipped_nonfinite=tr.skipped,
        final_loss=finite[-1] if finite else float("nan"), output_dir=out, start_step=start,
        out_of_time=out_of_time,
    )  # fmt: skip


def stage_done(out: Path, steps: int) -> bool:
    """``out`` (one stage's folder) holds a ``final/`` of a run that reached ``steps`` (a run stopped early by
    ``max_minutes`` writes no ``final/``; one of an older version did, so the last checkpoint's step
    decides too)."""
    done = list_checkpoints(out)
    return (out / "final").is_dir() and bool(done) and done[-1][0] == steps


def train_stages(
    load: Callable[[Path | None], nn.Module],
    dataset: PosePairDataset,
    configs: dict[str, TrainConfig],
    output_dir: str | Path,
    *,
    stages: tuple[str, ...] | None = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult | None:
    """Train a multi-stage family (a pipeline with ``TRAINING_STAGES`` and ``set_training_stage``) stage by
    stage through :func:`train_generator`, each into ``output_dir/<stage>/``; the last stage's ``final/`` is
    copied to ``output_dir/final``.

    ``load(path)`` builds the pipeline: ``None`` → a fresh one (or the caller's ``--init``), else the
    previous stage's ``final/`` (EMA weights). ``configs`` maps every stage in ``stages`` (default: all
    of ``configs``, in its order) to its settings. A stage whose ``final/`` reached its steps is skipped, so
    a rerun after ``max_minutes`` continues the sequence. Returns the last stage's result (``None`` when
    every stage was already done); one that ran out of time returns early without ``output_dir/final``.
    """
    out_root = Path(output_dir)
    todo = tuple(configs) if stages is None else tuple(stages)
    missing = [s for s in todo if s not in configs]
    if missing:
        raise ValueError(f"no TrainConfig for stage(s) {missing}")
    prev: Path | None = None
    result: TrainResult | None = None
    for stage in todo:
        out = out_root / stage
        if not overwrite and stage_done(out, configs[stage].steps):
            logger.info(
                "stage %s: %s already trained to step %d; skipped", stage, out / "final", configs[stage].steps
            )
            prev = out / "final"
            continue
        model = load(prev)
        model.set_training_stage(stage)  # a one-model family refuses every stage name
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(
            "stage %s: %d training pairs; %.2f M trainable parameters", stage, len(dataset), trainable / 1e6
        )
        result = train_generator(
            model, dataset, configs[stage], out, resume=resume, overwrite=overwrite, progress=progress
        )
        if result.out_of_time:
            return result
        prev = out / "final"
    if prev is not None:
        src = prev  # copied through a temporary sibling and a rename: never a half copy at final/
        _write_dir(out_root / "final", lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))
    return result


def plot_loss_curve(log_csv: str | Path, png: str | Path, *, window: int = 50) -> Path:
    """Plot ``train_log.csv`` (raw loss and a running mean over ``window`` steps, LR on a second axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.genfromtxt(log_csv, delimiter=",", names=True)
    data = np.atleast_1d(data)
    steps, loss, lr = data["step"], data["loss"], data["lr"]
    ok = np.isfinite(loss)
    k = max(1, min(window, int(ok.sum()) // 5 or 1))
    smooth = np.convolve(loss[ok], np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    ax.plot(steps[ok], loss[ok], lw=0.5, alpha=0.35, color="tab:blue", label="loss")
    ax.plot(steps[ok][k - 1 :], smooth, lw=1.8, color="tab:blue", label=f"running mean ({k} steps)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax2 = ax.twinx()
    ax2.plot(steps, lr, color="tab:orange", lw=1, label="learning rate")
    ax2.set_ylabel("learning rate", color="tab:orange")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{Path(log_csv).parent.name}: {int(steps[-1])} steps")
    fig.tight_layout()
    png = Path(png)
    atomic_save(png, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return png


__all__ = [
    "plot_loss_curve",
    "ImageLoadError",
    "NonFiniteLossError",
    "ResumeMismatchError",
    "check_resume_config",
    "check_resume_data",
    "data_fingerprint",
    "PosePairDataset",
    "PoseRecord",
    "TrainConfig",
    "TrainResult",
    "derive_seed",
    "list_checkpoints",
    "save_sample_grid",
    "train_generator",
    "stage_done",
    "train_stages",
]
