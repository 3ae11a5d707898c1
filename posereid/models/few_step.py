"""Few-step sampling trained into a flow model: one network call per image.

A flow-matching generator samples by integrating its velocity field, 20 guided steps at the quality
table's setting (three conditions per step: 60 network calls per image). A *few-step* checkpoint adds a
small **step-size embedding** to the denoiser's timestep embedding, so that the network, told the jump
``d``, predicts the *average* velocity that takes ``x_σ`` to ``x_{σ−d}`` (the flow map of consistency-
trajectory, shortcut and MeanFlow models) instead of the instantaneous one. It is fine-tuned from a
trained flow checkpoint (the teacher) on the teacher's own sampling trajectories at the teacher's
guidance weights, so the guidance is folded in: one conditional call replaces three, and 1, 2 or 4 calls
replace 60.

The recipe (trajectory distillation; ``posereid train-generator --few-step-from TEACHER``):

1. :func:`record_trajectories`: the teacher samples training pairs with the reference setting
   (DPM-Solver++, 20 steps, guidance (2, 2)) and every intermediate state is kept, in chunks on disk
   (resumable, each written atomically).
2. :meth:`GeneratorPipeline.few_step_loss <posereid.models.pipeline.GeneratorPipeline.few_step_loss>`:
   for each item, two states ``a < b`` of its trajectory: mostly the jumps the few-step sampler makes
   (σ 1 → 0; 1 → ½ → 0; quarters), otherwise any pair; the student regresses ``(x_a − x_b) / (σ_a − σ_b)``.
3. Sampling (``generate(..., sampler="few-step", steps=K)``): K uniform jumps ``σ = 1, 1 − 1/K, …, 0``
   (diffusers' ``FlowMatchEulerDiscreteScheduler`` with those sigmas), one conditional call each.

The embedding's last layer starts at zero, so the student starts as the teacher. It is saved in the
checkpoint's ``few_step/`` folder, whose config says which step counts it was trained for, the guidance it
folded in and its default: the checkpoint declares its sampler, and ``generate`` uses it by default.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from posereid.models.checkpoint import CheckpointError, CheckpointMixin
from posereid.models.io_utils import atomic_save

logger = logging.getLogger(__name__)

#: the sampler name of the few-step path
FEW_STEP = "few-step"
#: the checkpoint folder of the step-size embedding (its presence makes a checkpoint few-step)
FEW_STEP_FOLDER = "few_step"
#: what the teacher samples with when it records trajectories (the quality table's reference setting)
TEACHER_SAMPLING: dict[str, Any] = {"steps": 20, "sampler": "dpmsolver++", "guidance": (2.0, 2.0)}
#: files of :func:`record_trajectories`
TRAJECTORY_DIR = "trajectories"


class StepSizeEmbedding(CheckpointMixin, ModelMixin, ConfigMixin):
    """The jump size ``d`` → a vector added to the denoiser's timestep embedding (zero at the start).

    Args:
        time_embed_dim: width of the denoiser's timestep embedding (``unet.time_embedding``'s output).
        channels: sinusoidal features of ``d`` (as for timesteps, of ``d·1000``).
        steps: the step counts the few-step sampler was trained for (the checkpoint's promise).
        default_steps: what ``generate`` uses when no ``steps`` are given.
        guidance: the teacher's guidance weights folded in (sampling it runs at ``(1, 1)``).
        teacher_steps, teacher_sampler: how the teacher sampled the trajectories.
    """

    @register_to_config
    def __init__(
        self,
        time_embed_dim: int = 128,
        channels: int = 64,
        steps: Sequence[int] = (1, 2, 4),
        default_steps: int = 1,
        guidance: Sequence[float] = (2.0, 2.0),
        teacher_steps: int = 20,
        teacher_sampler: str = "dpmsolver++",
    ) -> None:
        super().__init__()
        counts = [int(s) for s in steps]
        if not counts or any(s < 1 for s in counts) or int(default_steps) not in counts:
            raise ValueError(
                f"few-step steps must be counts >= 1 that include default_steps, got {list(steps)} "
                f"and {default_steps}"
            )
        if len(guidance) != 2 or not all(math.isfinite(float(g)) and float(g) >= 0 for g in guidance):
            raise ValueError(f"few-step guidance must be two finite weights >= 0, got {list(guidance)}")
        self.proj = Timesteps(int(channels), flip_sin_to_cos=True, downscale_freq_shift=0)
        self.embed = TimestepEmbedding(int(channels), int(time_embed_dim))
        nn.init.zeros_(self.embed.linear_2.weight)
        nn.init.zeros_(self.embed.linear_2.bias)
        self._jump: torch.Tensor | None = None

    def forward(self, jump: torch.Tensor) -> torch.Tensor:
        """``(B,)`` jump sizes in σ units → ``(B, time_embed_dim)``."""
        weight = self.embed.linear_1.weight
        return self.embed(self.proj(jump.to(weight.device).float() * 1000.0).to(weight.dtype))

    @contextlib.contextmanager
    def jumping(self, jump: float | torch.Tensor) -> Iterator[None]:
        """Within the block, every denoiser call is told the jump ``jump`` (a number or one per sample)."""
        previous = self._jump
        self._jump = torch.as_tensor(jump, dtype=torch.float32)
        try:
            yield
        finally:
            self._jump = previous

    def add_to(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        """Forward hook of the denoiser's ``time_embedding``: adds the embedding of the current jump
        (nothing outside :meth:`jumping`, where the model is the plain flow model it was)."""
        if self._jump is None:
            return output
        jump = self._jump.to(output.device).flatten()
        if jump.numel() == 1:
            jump = jump.expand(output.shape[0])
        elif output.shape[0] % jump.numel() == 0:  # guidance branches stacked along the batch
            jump = jump.repeat(output.shape[0] // jump.numel())
        else:
            raise ValueError(f"{jump.numel()} jump sizes for a batch of {output.shape[0]}")
        return output + self(jump).to(output.dtype)

    def check_steps(self, steps: int) -> int:
        """``steps`` when the checkpoint was trained for it, else a ValueError naming the ones it was."""
        trained = [int(s) for s in self.config.steps]
        if int(steps) not in trained:
            raise ValueError(
                f"this few-step checkpoint was trained for {', '.join(map(str, trained))} step(s), not {steps}; "
                "pass one of those, or another sampler"
            )
        return int(steps)


def jump_grid(steps: int) -> list[float]:
    """The few-step sampler's σ grid without its final 0: ``1, 1 − 1/K, …, 1/K``."""
    return [1.0 - i / steps for i in range(steps)]


def grid_pairs(sigmas: torch.Tensor, steps: Sequence[int]) -> list[tuple[int, int]]:
    """Index pairs ``(a, b)`` of a recorded σ grid (descending, ending at 0) nearest to the jumps of the
    few-step sampler with each of ``steps`` (``K`` jumps ``1 − i/K → 1 − (i+1)/K``)."""
    pairs: set[tuple[int, int]] = set()
    for k in steps:
        points = [int((sigmas - (1.0 - i / k)).abs().argmin()) for i in range(k + 1)]
        pairs.update((a, b) for a, b in zip(points, points[1:]) if a < b)
    return sorted(pairs)


# ---------------------------------------------------------------------------------------- trajectories
def record_trajectories(
    teacher: Any,
    pairs: Any,
    out_dir: str | Path,
    count: int,
    *,
    chunk: int = 32,
    seed: int = 0,
    sampling: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Let ``teacher`` (a flow pipeline) sample ``count`` items of ``pairs`` (a
    :class:`~posereid.models.training_data.PosePairDataset`) at ``sampling`` (default
    :data:`TEACHER_SAMPLING`) and keep every state of each trajectory, in
    ``out_dir/trajectories/chunk-NNNNN.safetensors`` (items ``chunk·n`` …).

    Resumable: a chunk already on disk is kept (each is written atomically). Each item stores its source
    and target images and keypoints, the ``(S + 1)`` states (noise first, σ = 1, the teacher's sample last)
    and the σ grid, so the dataset needs nothing else. Items are drawn with a fixed rule from ``seed``.
    """
    from posereid.models.sampling import is_flow

    if not is_flow(teacher.scheduler):
        raise ValueError("few-step distillation needs a flow-matching teacher (prediction_type='flow')")
    if count < 1 or chunk < 1:
        raise ValueError(f"need count >= 1 and chunk >= 1, got {count} and {chunk}")
    sampling = {**TEACHER_SAMPLING, **(sampling or {})}
    folder = Path(out_dir) / TRAJECTORY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    order = (order * math.ceil(count / len(order)))[:count]
    bar = tqdm(total=count, desc="teacher trajectories", disable=not progress)
    for c in range(math.ceil(count / chunk)):
        path = folder / f"chunk-{c:05d}.safetensors"
        items = order[c * chunk : (c + 1) * chunk]
        if not path.is_file():
            seeds = [seed * 1_000_003 + c * chunk + i for i in range(len(items))]
            tensors = _trajectory_chunk(teacher, [pairs.get(k, flip=False) for k in items], seeds, sampling)
            atomic_save(path, lambda tmp, tensors=tensors: save_file(tensors, str(tmp)))
        bar.update(len(items))
    bar.close()
    return folder


def _trajectory_chunk(
    teacher: Any, items: list[dict[str, torch.Tensor]], seeds: list[int], sampling: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """One chunk of :func:`record_trajectories`: the items' tensors and the states of their samples."""
    from posereid.models.sampling import initial_noise, make_generators

    batch = torch.utils.data.default_collate(items)
    device = teacher.device
    states: list[torch.Tensor] = []
    noise = initial_noise(
        (len(items), *teacher.sample_shape), make_generators(seeds, None, len(items)), device
    )
    teacher.generate(
        batch["source"].to(device), batch["target_kps"], batch["source_kps"], seeds=seeds,
        steps=sampling["steps"], sampler=sampling["sampler"], guidance=sampling["guidance"],
        callback=lambda i, t, x: states.append(x.detach().float().cpu()),
    )  # fmt: skip
    sampler = teacher.sampler(sampling["sampler"])
    sampler.set_timesteps(sampling["steps"])
    sigmas = torch.as_tensor(sampler.sigmas, dtype=torch.float32).clone()
    sigmas[0] = 1.0  # the noise the teacher starts from is the σ = 1 state of the few-step sampler
    if len(states) + 1 != len(sigmas):
        raise RuntimeError(f"recorded {len(states) + 1} states for a grid of {len(sigmas)} sigmas")
    return {
        "states": torch.stack([noise.float().cpu(), *states], dim=1).contiguous(),
        "sigmas": sigmas.contiguous(),
        **{k: batch[k].float().contiguous() for k in ("source", "target", "source_kps", "target_kps")},
    }


class TrajectoryDataset(torch.utils.data.Dataset):
    """The teacher trajectories of :func:`record_trajectories` as training items (what
    :func:`~posereid.models.training.train_generator` iterates for a few-step fine-tune): the pair's
    images and keypoints, plus ``trajectory`` (the states) and ``sigmas``.

    It carries the fingerprint fields of the pair dataset it was drawn from (``records``, ``pairs``,
    ``seed``), so a resume on other data is refused as for any training run.
    """

    def __init__(self, folder: str | Path, pairs: Any, count: int) -> None:
        folder = Path(folder)
        files = sorted(folder.glob("chunk-*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{folder}: no trajectory chunks (record_trajectories writes them)")
        parts: dict[str, list[torch.Tensor]] = {}
        sigmas = None
        for f in files:
            try:
                data = load_file(str(f))
            except Exception as exc:  # noqa: BLE001 - re-raised naming the file
                raise CheckpointError(f"{f}: cannot read the trajectory chunk ({exc})") from exc
            for key, value in data.items():
                if key == "sigmas":
                    if sigmas is not None and not torch.equal(sigmas, value):
                        raise CheckpointError(f"{f}: another σ grid than the chunks before it")
                    sigmas = value
                elif not bool(torch.isfinite(value).all()):
                    raise CheckpointError(f"{f}: tensor {key!r} holds NaN/Inf")
                else:
                    parts.setdefault(key, []).append(value)
        self.items = {k: torch.cat(v)[:count] for k, v in parts.items()}
        self.sigmas = sigmas
        self.image_size = tuple(self.items["source"].shape[-2:])
        if len(self) < count:
            raise ValueError(f"{folder}: {len(self)} trajectories on disk, {count} asked for")
        self.records, self.pairs, self.flip_prob, self.seed = pairs.records, pairs.pairs, 0.0, pairs.seed

    def __len__(self) -> int:
        return int(self.items["states"].shape[0])

    def set_epoch(self, epoch: int) -> None:
        """No per-epoch draws (the items are fixed)."""

    def get(self, k: int, *, epoch: int = 0, flip: bool | None = None) -> dict[str, torch.Tensor]:
        """Item ``k``: ``source``, ``target`` (the real image, for grids), keypoints, ``trajectory``,
        ``sigmas`` (never flipped: the states are the teacher's)."""
        item = {
            "source": self.items["source"][k], "target": self.items["target"][k],
            "source_kps": self.items["source_kps"][k], "target_kps": self.items["target_kps"][k],
            "trajectory": self.items["states"][k], "sigmas": self.sigmas,
        }  # fmt: skip
        return item

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        k = key[1] if isinstance(key, tuple) else key
        return self.get(int(k))


def few_step_description(teacher_dir: str | Path, count: int, steps: Sequence[int]) -> str:
    """What a few-step fine-tune distils (recorded in ``train_config.json``, so a resume with another
    teacher, trajectory count or step set is refused)."""
    from posereid.models.io_utils import file_sha256

    root = Path(teacher_dir)
    weights = sorted(root.glob("*.safetensors"))
    digest = file_sha256(weights[0])[:12] if weights else "none"
    return (
        f"teacher {root.name} ({digest}), {count} trajectories at {TEACHER_SAMPLING['sampler']} "
        f"{TEACHER_SAMPLING['steps']} steps guidance {TEACHER_SAMPLING['guidance'][0]:g},"
        f"{TEACHER_SAMPLING['guidance'][1]:g}; jumps for {','.join(map(str, steps))} step(s)"
    )


__all__ = [
    "FEW_STEP",
    "FEW_STEP_FOLDER",
    "TEACHER_SAMPLING",
    "TRAJECTORY_DIR",
    "StepSizeEmbedding",
    "TrajectoryDataset",
    "few_step_description",
    "grid_pairs",
    "jump_grid",
    "record_trajectories",
]
