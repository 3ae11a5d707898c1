"""The demo (``posereid demo``, ``make demo``): the whole pipeline on synthetic people within a time budget.

:func:`run_pipeline` runs it for a :class:`DemoOptions` (the command line is in
:mod:`posereid.experiments.demo_cli`), in five named stages:

1. render a synthetic Market-1501-format dataset in which every TRAIN identity is shown in only two of the
   four view directions (query and gallery show all four), so a re-ID model must recognise people from
   views it never saw them in;
2. get a generator: ``--generator DIR``, else the checkpoint shipped in ``posereid/assets/generator-small``,
   else train the ``small`` preset on the train split for what the budget allows;
3. generate one (or more) image per train image under its identity, in target poses drawn view-balanced
   from the train pose bank, so the unseen views appear;
4. train re-ID models for the SAME number of steps with the same seed(s) and evaluate (the
   :mod:`posereid.experiments.reid_gain` machinery, one fraction = 100 %): always the strong baseline
   (flip + random erasing) and strong + synthetic, the comparison that says whether the generator pays
   for itself; the oracle (strong + real renders of the train identities in the views the train split
   hides, as many as the synthetic images) when it fits, so the synthetic arm is also reported as the
   share of the oracle's gain it recovers; plain arms, the identity filter and more seeds on a budget
   that allows them;
5. print the table, the comparison and the recovered share, and write the plot, a sample grid (source |
   target skeleton | generated) and a grid of the synthetic identities (real train views | generated).

**Budget.** ``--budget-minutes`` (default 10) is split between the stages: each stage gets its share of
the time actually left when it starts (:func:`stage_budget`). Its step counts (generator training,
sampling steps and images per source, re-ID steps) come from timing a few steps of each model on this
machine (so a GPU gets proportionally more steps); the demo fits its budget by cutting steps and images,
never the strong / strong + synthetic pair. It re-plans as it goes (:class:`Budget`): a stage that takes
longer than its plan predicted (a machine slower than its start-up probe, another process on the cores)
leaves less time to the later stages and makes them assume the measured slowdown; inside the re-ID stage,
an optional run (the oracle, plain arms, more seeds) that no longer fits the time left is skipped, and
the report says so. The plan (:class:`DemoPlan`), with each stage's share, prediction and actual time, is
saved in ``OUT/demo_plan.json``; a rerun with the same options reuses it and every finished stage (data,
generator, synthetic images, re-ID results), so it completes in seconds. ``--tiny`` runs everything at
toy sizes in seconds (tests).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posereid.experiments import reid_gain as rg
from posereid.experiments.data import MarketSource
from posereid.models.contract import SHIPPED_GENERATOR, is_checkpoint_dir
from posereid.models.io_utils import atomic_save, atomic_write
from posereid.reid_integration.market1501 import load_image

if TYPE_CHECKING:
    from posereid.models.contract import PoseTransferSampler

logger = logging.getLogger(__name__)

#: The generator checkpoint the package may ship (``config.json`` + safetensors).
ASSET_DIR = SHIPPED_GENERATOR
ASSET_META = "trained_on.json"  # which synthetic train split the shipped generator saw
PLAN_FILE = "demo_plan.json"
#: 2: strong / strong+synthetic always, the oracle, re-planning (an older plan starts over);
#: 3: DPM-Solver++ instead of DDIM (DDIM has no flow-matching form, and the shipped generator is flow)
PLAN_VERSION = 3
DATA_DONE = "synthetic-identities.json"  # written last by write_synthetic_market

#: Share of the budget per stage (the rest covers imports, rendering, timing, evaluation, reports). The
#: later stages share what is actually left when they start, so an overrun early is absorbed later.
SHARES_TRAIN = {"generator": 0.36, "generate": 0.16, "reid": 0.34}
SHARES_SHIPPED = {"generator": 0.0, "generate": 0.26, "reid": 0.60}
STAGES: tuple[str, ...] = ("generator", "generate", "reid")  # the planned stages, in order
FINAL_RESERVE = 0.05  # of the budget, kept for the reports
MAX_SLOWDOWN = 8.0  # a stage this many times slower than predicted says more about the plan than the machine

#: The comparison the demo exists for: always run, whatever the budget (it cuts steps and images instead).
REQUIRED_ARMS: tuple[str, ...] = ("strong", "strong+synthetic")
#: An optional arm is planned only while every run keeps at least this many re-ID steps (osnet_x0_25 from
#: scratch on the demo's ~250 images is still far from converged below that).
MIN_OPTIONAL_ARM_STEPS = 200
#: Plain arms and the identity filter need this many steps per run (a GPU, a long budget): on a CPU the
#: time goes to the steps of the comparison that matters instead.
RICH_STEPS = 1000
MORE_SEEDS_STEPS = 600  # 3 or 5 seeds, each run keeping this many steps

_clock = time.perf_counter  # the demo's clock (tests replace it)


def stage_budget(shares: dict[str, float], stage: str, budget: float, elapsed: float) -> float:
    """Seconds for ``stage`` (one of :data:`STAGES`): its share of the time still left, the later stages
    and the final reserve sharing the rest in proportion."""
    later = STAGES[STAGES.index(stage) :]
    left = budget * (1.0 - FINAL_RESERVE) - elapsed
    total = sum(shares[s] for s in later)
    return max(0.0, left) * shares[stage] / total if total > 0 else 0.0


class Budget:
    """The demo's time budget as it is spent, read from :data:`_clock`.

    Each stage gets its share of the time actually left (:func:`stage_budget`); :meth:`start` /
    :meth:`finish` record what the stage's plan predicted from the start-up probes and what it took. A
    stage that took longer than predicted sets :attr:`slowdown` (actual / predicted, at least 1): the later
    stages multiply their probed per-step costs by it, so a machine slower than its probe (or one that
    became busy) gets fewer steps there instead of overrunning. ``log`` (the plan's ``"stages"``) keeps,
    per stage, its share, prediction and actual seconds.
    """

    def __init__(
        self, total_s: float, shares: dict[str, float], *, log: dict[str, Any] | None = None
    ) -> None:
        self.total_s = float(total_s)
        self.shares = shares
        self.t0 = _clock()
        self.slowdown = 1.0
        self.log: dict[str, Any] = {} if log is None else log
        self._started: dict[str, float] = {}

    def elapsed(self) -> float:
        return _clock() - self.t0

    def left(self) -> float:
        """Seconds until the final reserve (the reports' time) starts."""
        return self.total_s * (1.0 - FINAL_RESERVE) - self.elapsed()

    def share(self, stage: str) -> float:
        """Seconds ``stage`` may take if it starts now."""
        return stage_budget(self.shares, stage, self.total_s, self.elapsed())

    def start(self, stage: str, predicted_s: float) -> None:
        """``stage`` starts now; its plan predicted ``predicted_s`` seconds (0: it has nothing to do)."""
        self.log[stage] = {
            "share_s": round(self.share(stage), 1),
            "predicted_s": round(float(predicted_s), 1),
        }
        self._started[stage] = _clock()

    def finish(self, stage: str, *, worked: bool = True) -> float:
        """``stage`` is done; return its actual seconds. When it did work (``worked``: not reused from an
        earlier run) and had a prediction, its actual / predicted ratio becomes the slowdown."""
        actual = _clock() - self._started.pop(stage)
        entry = self.log[stage]
        entry["actual_s"] = round(actual, 1)
        predicted = float(entry["predicted_s"])
        if worked and predicted > 0:
            self.slowdown = min(MAX_SLOWDOWN, max(1.0, actual / predicted))
            entry["slowdown_after"] = round(self.slowdown, 2)
        return actual


def _say(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------------------------------
# Timing a few steps of each model (the budget → step counts)
# --------------------------------------------------------------------------------------------------
def _timed(fn: Callable[[], object], repeats: int) -> float:
    """Seconds per call of ``fn`` (one untimed warm-up call first)."""
    import torch

    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def time_generator_step(preset: str, hw: tuple[int, int], batch_size: int, device: str) -> float:
    """Seconds per optimisation step of a fresh ``preset`` generator (loss, backward, AdamW step)."""
    import torch

    from posereid.models.pidm import PIDMPipeline

    model = PIDMPipeline.from_preset(preset, image_size=hw).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch_size, 3, *hw, device=device)
    k = torch.rand(batch_size, 18, 2, device=device) * torch.tensor([hw[1] - 1, hw[0] - 1], device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model.training_loss(x, x, k, k).backward()
        opt.step()

    return _timed(step, 2)


def time_generation(generator: PoseTransferSampler, batch_size: int) -> float:
    """Seconds per image per sampling step of ``generator`` without guidance (one model pass)."""
    import torch

    hw = generator.image_size
    dev = generator.device
    x = torch.rand(batch_size, 3, *hw, device=dev)
    k = torch.rand(batch_size, 18, 2, device=dev) * torch.tensor([hw[1] - 1, hw[0] - 1], device=dev)
    with torch.no_grad():  # a plain sampler: every checkpoint has one, whatever its own default
        probe = dict(steps=2, sampler="dpmsolver++", guidance=(1.0, 1.0))
        per_call = _timed(lambda: generator.generate(x, k, k, **probe), 1)
    return per_call / (2 * batch_size)


def reid_step_fn(model_name: str, hw: tuple[int, int], batch_size: int, classes: int, device: str):
    """One optimisation step of a fresh torchreid model on random images (no data loading), as a closure."""
    import torch

    from posereid.reid_integration.torchreid_plugin import build_reid_model

    model = build_reid_model(model_name, classes).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=3.5e-4)
    x = torch.rand(batch_size, 3, *hw, device=device)
    y = torch.randint(0, classes, (batch_size,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def time_reid_step(model_name: str, hw: tuple[int, int], batch_size: int, classes: int, device: str) -> float:
    """Seconds per optimisation step of a fresh torchreid model (see :func:`reid_step_fn`)."""
    return _timed(reid_step_fn(model_name, hw, batch_size, classes, device), 3)


def pick_cpu_threads(probe: Callable[[], object]) -> int:
    """Set torch's CPU threads to whichever of 1 or all cores runs ``probe`` faster, and return it.

    On a busy machine, threads that wait for each other at every parallel region can make N threads
    several times slower than one (measured here: 8.8 vs 1.4 s per generator step on 2 shared cores).
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    options = sorted({1, cores})
    if len(options) == 1:
        return 1
    times = {}
    for n in options:
        torch.set_num_threads(n)
        times[n] = _timed(probe, 2)
    best = min(times, key=times.get)
    torch.set_num_threads(best)
    logger.info("CPU threads: %s s per probe → using %d", {k: round(v, 3) for k, v in times.items()}, best)
    return best


def _clamp(v: float, lo: int, hi: int) -> int:
    return int(max(lo, min(hi, v)))


# --------------------------------------------------------------------------------------------------
# The request and the plan
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoOptions:
    """What the demo is asked for (the flags of ``posereid demo``).

    Args:
        out: output folder (the plan, data, generator, synthetic images, re-ID results, pictures).
        budget_minutes: time budget of the whole demo (at least one minute is used).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, …
        seed: seed of the synthetic dataset, the subset and the first re-ID seed.
        generator: use this generator checkpoint directory (any family) instead of the shipped or a
            trained one. train_generator: train one even when one is shipped.
        height / width: image size when training a generator (a given or shipped one sets its own).
        arms: the re-ID arms, all required (default: strong and strong+synthetic always, the oracle when
            it fits, more on a budget that allows them).
        tiny: toy sizes and step counts: the whole pipeline in seconds (tests).
    """

    out: Path = Path("demo_out")
    budget_minutes: float = 10.0
    device: str = "auto"
    seed: int = 0
    generator: Path | None = None
    train_generator: bool = False
    height: int = 64
    width: int = 32
    arms: tuple[str, ...] | None = None
    tiny: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if self.generator is not None:
            object.__setattr__(self, "generator", Path(self.generator))
        if not math.isfinite(float(self.budget_minutes)) or float(self.budget_minutes) <= 0:
            raise ValueError(f"DemoOptions.budget_minutes must be a number > 0, got {self.budget_minutes!r}")
        for name in ("height", "width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DemoOptions.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.arms is not None:
            arms = tuple(self.arms)
            unknown = [a for a in arms if a not in rg.ARMS]
            if unknown or not arms:
                raise ValueError(
                    f"DemoOptions.arms: unknown arm(s) {unknown or '(none given)'}; choose from "
                    f"{', '.join(rg.ARMS)}"
                )
            object.__setattr__(self, "arms", arms)


@dataclass(frozen=True)
class PlanKey:
    """What must match for a rerun to reuse an earlier run's plan and finished stages."""

    tiny: bool
    budget_minutes: float
    device: str
    generator: str  # the checkpoint directory, or "train"
    seed: int
    hw: tuple[int, int]
    arms: str | None  # the requested arms, comma-separated
    plan_version: int = PLAN_VERSION

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanKey:
        return cls(**{**data, "hw": tuple(int(v) for v in data["hw"])})


@dataclass
class DemoPlan:
    """The demo's plan, saved as ``OUT/demo_plan.json`` after every stage.

    The fixed part comes from the request (:func:`new_plan`); the step counts of each stage are planned
    when it starts (``None`` until then: :func:`plan_generator`, :func:`plan_generation`,
    :func:`plan_reid`); ``timing`` / ``predicted_s`` hold the start-up probes and what they predicted,
    ``stages`` each stage's share, prediction and actual seconds (:class:`Budget`).
    """

    key: PlanKey
    generator: str | None  # checkpoint directory; None: train one
    generator_how: str  # "given", "shipped" or "train"
    hw: tuple[int, int]
    synth: dict[str, Any]  # the SynthConfig fields of the dataset
    generator_preset: str
    generator_batch_size: int
    sampler: str
    reid_model: str
    reid_batch_size: int
    reid_lr: float = 3.5e-4
    generator_steps: int | None = None
    steps: int | None = None
    guidance: tuple[float, float] | None = None
    per_image: int | None = None
    reid_steps: int | None = None
    arms: tuple[str, ...] | None = None
    required: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None
    filter: str | None = None
    timing: dict[str, float] = field(default_factory=dict)
    predicted_s: dict[str, float] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    slowdown: float = 1.0
    skipped: list[tuple[str, int]] = field(default_factory=list)
    seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DemoPlan:
        """A plan read back from ``demo_plan.json`` (lists become tuples)."""
        d = {**data, "key": PlanKey.from_json(data["key"]), "hw": tuple(data["hw"])}
        for name in ("guidance", "arms", "required", "seeds"):
            if d.get(name) is not None:
                d[name] = tuple(d[name])
        d["skipped"] = [(str(a), int(s)) for a, s in d.get("skipped", [])]
        return cls(**d)


def _synth_kwargs(tiny: bool, hw: tuple[int, int], seed: int) -> dict[str, Any]:
    if tiny:
        return dict(n_train_ids=6, n_test_ids=4, per_camera=2, cameras=2, n_distractors=2, n_junk=1,
                    height=hw[0], width=hw[1], train_views=2, seed=seed)  # fmt: skip
    return dict(n_train_ids=30, n_test_ids=30, per_camera=3, cameras=4, n_distractors=20, n_junk=5,
                height=hw[0], width=hw[1], train_views=2, seed=seed)  # fmt: skip


def write_asset_meta(asset_dir: str | Path, seed: int = 0) -> Path:
    """Record in a shipped generator which synthetic train split it saw (``make generator-asset``)."""
    cfg = json.loads((Path(asset_dir) / "config.json").read_text())
    hw = tuple(int(v) for v in cfg["image_size"])
    path = Path(asset_dir) / ASSET_META
    with atomic_write(path) as fh:
        json.dump({"synthetic_train_split": _synth_kwargs(False, hw, seed)}, fh, indent=2)
    return path


def _shipped_generator_fits(hw: tuple[int, int], seed: int) -> bool:
    """The shipped generator saw the train split of one synthetic dataset (one seed). Used with another
    one it would be a generator trained on images this demo's re-ID never sees — not the protocol."""
    meta = ASSET_DIR / ASSET_META
    if not meta.is_file():
        return False
    trained_on = json.loads(meta.read_text()).get("synthetic_train_split")
    if trained_on != _synth_kwargs(False, hw, seed):
        _say(f"  the shipped generator was trained on another synthetic split ({meta}); training one instead")
        return False
    return True


def _generator_source(options: DemoOptions) -> tuple[str | None, str]:
    """``(checkpoint dir or None, how it was chosen)``."""
    if options.generator is not None:
        return str(options.generator), "given"
    if not options.tiny and not options.train_generator and (ASSET_DIR / "config.json").is_file():
        cfg = json.loads((ASSET_DIR / "config.json").read_text())
        if _shipped_generator_fits(tuple(int(v) for v in cfg["image_size"]), int(options.seed)):
            return str(ASSET_DIR), "shipped"
    return None, "train"


def new_plan(options: DemoOptions, device: str) -> DemoPlan:
    """The request (what must match for a rerun to reuse results) and the fixed part of the plan."""
    gen, how = _generator_source(options)
    if gen is not None:
        from posereid.models.contract import load_generator

        hw = tuple(load_generator(gen, device="cpu").image_size)  # any family's checkpoint
    else:
        hw = (32, 16) if options.tiny else (int(options.height), int(options.width))
    key = PlanKey(
        tiny=bool(options.tiny), budget_minutes=float(options.budget_minutes), device=device,
        generator=gen or "train", seed=int(options.seed), hw=hw,
        arms=",".join(options.arms) if options.arms else None,
    )  # fmt: skip
    fixed = dict(
        key=key, generator=gen, generator_how=how, hw=hw, synth=_synth_kwargs(options.tiny, hw, options.seed)
    )
    if options.tiny:
        return DemoPlan(
            **fixed, generator_preset="tiny", generator_steps=3, generator_batch_size=4, per_image=1,
            sampler="dpmsolver++", steps=2, guidance=(1.0, 1.0), reid_model="osnet_x0_25", reid_steps=4,
            reid_batch_size=8, arms=(*REQUIRED_ARMS, rg.ORACLE_ARM), required=REQUIRED_ARMS,
            seeds=(int(options.seed),), filter=None,
        )  # fmt: skip
    # osnet_x0_25 from scratch on ~250 images: Adam at 1e-2 reaches ~45 % mAP in 600 steps on the
    # synthetic test split where 3.5e-4 (the ImageNet-pretrained recipe) stays near chance (measured).
    return DemoPlan(
        **fixed, generator_preset="small", generator_batch_size=16, sampler="dpmsolver++",
        reid_model="osnet_x0_25", reid_batch_size=32, reid_lr=1e-2,
    )  # fmt: skip


def _gain_config(plan: DemoPlan, out: Path, device: str, *, progress: bool = True) -> rg.GainConfig:
    """The :class:`~posereid.experiments.reid_gain.GainConfig` of the plan (fields not yet planned get
    placeholders; they are only read by the stages that come after planning them)."""
    h, w = plan.hw
    return rg.GainConfig(
        data=out / "data", out=out / "gain", fractions=(1.0,), arms=plan.arms or ("plain",),
        seeds=plan.seeds or (plan.key.seed,), subset_seed=plan.key.seed, reid_steps=plan.reid_steps or 1,
        reid_model=plan.reid_model, reid_batch_size=plan.reid_batch_size, reid_lr=plan.reid_lr, height=h,
        width=w, generator_preset=plan.generator_preset, generator_steps=max(1, plan.generator_steps or 1),
        generator_batch_size=plan.generator_batch_size, generator=plan.generator,
        per_image=plan.per_image or 1, sampler=plan.sampler, steps=plan.steps or 1,
        guidance=plan.guidance or (1.0, 1.0), pose_sampling="view", annotation_hw=(h, w),
        filter_checkpoint=plan.filter, device=device, progress=progress,
    )  # fmt: skip


def save_plan(out: Path, plan: DemoPlan) -> None:
    """Write ``plan`` to ``out/demo_plan.json`` (atomically)."""
    with atomic_write(out / PLAN_FILE) as fh:
        json.dump(plan.to_json(), fh, indent=2)


def _read_plan(path: Path) -> DemoPlan | None:
    """The plan in ``path``, or ``None`` when it is not one this version can read (it then starts over)."""
    try:
        return DemoPlan.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        logger.info("%s: not a plan of this demo version (%s)", path, exc)
        return None


def load_or_start_plan(options: DemoOptions, out: Path, device: str) -> DemoPlan:
    """Reuse ``OUT/demo_plan.json`` when the request matches; otherwise clear the demo's own outputs."""
    fresh = new_plan(options, device)
    path = out / PLAN_FILE
    if path.is_file():
        old = _read_plan(path)
        if old is not None and old.key == fresh.key:
            _say(f"reusing the plan and finished stages in {out} (same options as before)")
            return old
        _say(f"{out}: earlier demo run with other options; starting over")
        for sub in ("data", "gain"):
            shutil.rmtree(out / sub, ignore_errors=True)
    elif (out / "data").exists() or (out / "gain").exists():
        raise FileExistsError(f"{out} holds data/ or gain/ not written by the demo; choose another --out")
    save_plan(out, fresh)
    return fresh


# --------------------------------------------------------------------------------------------------
# Planning each stage
# --------------------------------------------------------------------------------------------------
def stage_data(plan: DemoPlan, out: Path) -> dict[str, Any] | None:
    """Render the synthetic dataset into ``out/data``; return its summary, or ``None`` when it was already
    there (the caller takes the summary from its one parse of the folder)."""
    from posereid.experiments.synthetic.dataset import SynthConfig, write_synthetic_market

    data = out / "data"
    if (data / DATA_DONE).is_file():
        _say(f"  already rendered: {data}")
        return None
    shutil.rmtree(data, ignore_errors=True)  # an interrupted render of ours
    return write_synthetic_market(data, SynthConfig(**plan.synth), progress=True)


def plan_generator(plan: DemoPlan, budget_s: float, device: str) -> None:
    """Generator training steps that fit ``budget_s`` (none for a given or shipped generator)."""
    if plan.generator_steps is not None:
        return
    if plan.generator is not None:
        plan.generator_steps = 0
        return
    sps = time_generator_step(plan.generator_preset, plan.hw, plan.generator_batch_size, device)
    plan.generator_steps = _clamp(budget_s / (sps * 1.15), 20, 4000)
    plan.timing["generator_s_per_step"] = round(sps, 4)
    _predict(plan, "generator", plan.generator_steps * sps * 1.15)


def _predict(plan: DemoPlan, stage: str, seconds: float) -> None:
    """Record what the probes predict ``stage`` takes on an unloaded machine (no slowdown applied)."""
    plan.predicted_s[stage] = round(float(seconds), 2)


def plan_generation(
    plan: DemoPlan,
    generator_path: Path,
    n_sources: int,
    budget_s: float,
    device: str,
    *,
    slowdown: float = 1.0,
) -> None:
    """Sampling steps, guidance and images per source that fit ``budget_s`` on a machine ``slowdown``
    times slower than the probe says.

    This is where the demo decides how the generator samples. A checkpoint with a sampler of its own (a
    few-step checkpoint: :func:`~posereid.augment.sampling_settings.own_sampling`, e.g. the shipped
    generator once it is one) samples with it: its sampler, default step count and guidance (1, 1), one
    network call per step; the time it saves buys images per source (up to the cap), and what is left
    over goes to the re-ID stage, which shares the time actually left. Any other checkpoint gets the
    budget's DPM-Solver++ setting below. (``--tiny`` keeps its fixed toy setting.)"""
    if plan.steps is not None:
        return
    from posereid.augment.sampling_settings import own_sampling
    from posereid.models.contract import load_generator

    model = load_generator(generator_path, device=device)
    probe = time_generation(model, min(32, n_sources)) * 1.15
    c1 = probe * max(1.0, slowdown)
    own = own_sampling(model)
    if own is not None:  # the checkpoint's own sampler: guidance folded in, one pass per step
        plan.sampler, steps, guidance, passes = own["sampler"], own["steps"], own["guidance"], 1
    else:
        choice = (4, 1.0)
        for steps, g in ((25, 2.0), (15, 2.0), (12, 1.0), (8, 1.0), (6, 1.0)):
            if n_sources * steps * c1 * (3 if g != 1.0 else 1) <= budget_s:
                choice = (steps, g)
                break
        steps, g = choice
        guidance, passes = (g, g), 3 if g != 1.0 else 1
    per_set = n_sources * steps * c1 * passes
    plan.steps, plan.guidance, plan.per_image = steps, guidance, _clamp(budget_s / per_set, 1, 4)
    plan.timing["generate_s_per_image_step"] = round(probe / 1.15, 5)
    _predict(plan, "generate", plan.per_image * per_set / max(1.0, slowdown))


FILTERED_ARM = "strong+synthetic+filtered"


def _runs(arms: Sequence[str]) -> int:
    """Re-ID trainings one seed of ``arms`` costs (the filtered arm also trains its filter model)."""
    return len(arms) + (1 if FILTERED_ARM in arms else 0)


def plan_reid(
    plan: DemoPlan,
    classes: int,
    budget_s: float,
    device: str,
    arms_asked: Sequence[str] | None,
    *,
    slowdown: float = 1.0,
) -> None:
    """Arms, seeds and the (shared) number of re-ID steps that fit ``budget_s`` on a machine ``slowdown``
    times slower than the probe says.

    Always :data:`REQUIRED_ARMS` (strong, strong + synthetic); the oracle while every run keeps
    :data:`MIN_OPTIONAL_ARM_STEPS` steps; plain arms, the identity filter and 3 or 5 seeds on rich budgets.
    A tight budget cuts steps (down to a floor), never the required pair. ``arms_asked``
    (:attr:`DemoOptions.arms`) replaces the choice of arms, and all of them are then required.
    """
    if plan.reid_steps is not None:
        return
    sps = time_reid_step(plan.reid_model, plan.hw, plan.reid_batch_size, classes, device)
    raw = sps * 1.6 + 0.02  # data loading, transforms, scheduler; measured overhead on CPU
    cost = raw * max(1.0, slowdown)
    if arms_asked:
        arms, required = list(arms_asked), tuple(arms_asked)
    else:
        arms, required = list(REQUIRED_ARMS), REQUIRED_ARMS
        if budget_s / (3 * cost) >= MIN_OPTIONAL_ARM_STEPS:  # the oracle, when it fits
            arms.append(rg.ORACLE_ARM)
            if budget_s / (5 * cost) >= RICH_STEPS:
                arms += ["plain", "plain+synthetic"]
                if _filter_available() and budget_s / (7 * cost) >= RICH_STEPS:
                    arms.append(FILTERED_ARM)
    runs = _runs(arms)
    n_seeds = next((n for n in (5, 3) if budget_s / (n * runs * cost) >= MORE_SEEDS_STEPS), 1)
    plan.arms, plan.required = tuple(arms), required
    plan.seeds = tuple(plan.key.seed + i for i in range(n_seeds))
    plan.reid_steps = _clamp(budget_s / (n_seeds * runs * cost), 40, 3000)
    plan.filter = "auto" if FILTERED_ARM in arms else None
    plan.timing.update(reid_s_per_step=round(sps, 4), reid_s_per_step_cost=round(raw, 4))
    _predict(plan, "reid", plan.reid_steps * raw * n_seeds * runs)


def reid_runs(plan: DemoPlan) -> list[list[tuple[str, int]]]:
    """The planned re-ID cells, grouped by seed, in the order they run (the required arms first)."""
    required = plan.required or REQUIRED_ARMS
    arms = plan.arms or ()
    ordered = [a for a in arms if a in required] + [a for a in arms if a not in required]
    return [[(a, int(s)) for a in ordered] for s in plan.seeds or ()]


def run_reid_stage(
    plan: DemoPlan,
    budget: Budget,
    run_cell: Callable[[str, int], object],
    done: Collection[tuple[str, int]] = (),
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Run the planned re-ID cells (``run_cell(arm, seed)``) while they fit; return ``(ran, skipped)``.

    The first seed's required arms always run. Every other cell runs only if the time it is expected to
    take still fits ``budget.left()``: an optional arm of the first seed on its own, a further seed as a
    whole (a seed without its comparison would be of no use). The expected time of a run is the last
    measured one (the plan's prediction × the slowdown before any), twice for the filtered arm (which
    also trains its filter model). Cells in ``done`` (finished by an earlier run) cost nothing.
    """
    required = set(plan.required or REQUIRED_ARMS)
    cost = plan.timing.get("reid_s_per_step_cost")
    per_run = (plan.reid_steps or 0) * float(cost) * budget.slowdown if cost else 0.0
    first_seed = plan.seeds[0] if plan.seeds else None
    ran: list[tuple[str, int]] = []
    skipped: list[tuple[str, int]] = []

    def weight(arm: str, seed: int) -> int:
        return 2 if arm == FILTERED_ARM and seed == first_seed else 1

    def run(cell: tuple[str, int]) -> None:
        nonlocal per_run
        t0 = _clock()
        run_cell(*cell)
        if cell not in done:
            per_run = (_clock() - t0) / weight(*cell)
        ran.append(cell)

    for i, seed_cells in enumerate(reid_runs(plan)):
        if i == 0:
            for cell in seed_cells:
                todo = cell not in done and cell[0] not in required
                if todo and weight(*cell) * per_run > budget.left():
                    skipped.append(cell)
                else:
                    run(cell)
            continue
        todo = [c for c in seed_cells if c not in done]
        need = sum(weight(*c) * per_run for c in todo)
        if todo and (skipped or need > budget.left()):
            skipped += seed_cells
            continue
        for cell in seed_cells:
            run(cell)
    return ran, skipped


def _filter_available() -> bool:
    """The identity filter is optional: the demo runs without it."""
    try:
        from posereid.augment.filter import IdentityFilter, filter_folder  # noqa: F401
        from posereid.reid_integration.torchreid_plugin import ReidFeatureExtractor  # noqa: F401
    except ImportError as exc:
        logger.info("identity filter unavailable (%s); skipping the filtered arm", exc)
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------
def _upscale(im: Any, scale: int) -> Any:
    from PIL import Image

    return im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)


def _views_by_name(data: Path) -> dict[str, str]:
    from posereid.experiments.synthetic.dataset import read_synthetic_meta

    return {r["name"]: r["view"] for r in read_synthetic_meta(data) if r["split"] == "train"}


def sample_grid(gain_cfg: rg.GainConfig, path: Path, *, rows: int = 8, scale: int = 3) -> int:
    """Rows of source | target skeleton | generated, preferring target views the identity never showed in
    train; returns the number of rows drawn."""
    from PIL import Image, ImageDraw

    from posereid.augment.manifest import read_manifest
    from posereid.models.pose import draw_skeleton, resize_keypoints
    from posereid.reid_integration.market1501 import parse_market_name

    syn = rg.synthetic_dir(gain_cfg, 1.0)
    entries = read_manifest(syn)
    if not entries:
        return 0
    views = _views_by_name(gain_cfg.data)
    seen: dict[int, set[str]] = defaultdict(set)
    for name, v in views.items():
        seen[parse_market_name(name)[0]].add(v)
    unseen = [e for e in entries if views.get(e["target_source"]) not in seen[int(e["source_pid"])]]
    pick, pids = [], set()
    for e in unseen + entries:  # one row per identity first, unseen views first
        if int(e["source_pid"]) not in pids and (syn / "bounding_box_train" / e["name"]).is_file():
            pick.append(e)
            pids.add(int(e["source_pid"]))
        if len(pick) == rows:
            break
    h, w = gain_cfg.height, gain_cfg.width
    cw, ch, label = w * scale, h * scale, 26
    sheet = Image.new("RGB", (max(3 * (cw + 4) + 4, 190), len(pick) * (ch + label + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, e in enumerate(pick):
        y = 4 + i * (ch + label + 4)
        src = load_image(gain_cfg.data / "bounding_box_train" / e["source"]).resize((w, h))
        kps = resize_keypoints(e["target_pose"], tuple(e["pose_frame"]), (h, w))
        skel = draw_skeleton(None, kps, size=(h, w))
        gen = load_image(syn / "bounding_box_train" / e["name"]).resize((w, h))
        for j, im in enumerate((src, skel, gen)):
            sheet.paste(_upscale(im, scale), (4 + j * (cw + 4), y + label))
        pid = int(e["source_pid"])
        tv = views.get(e["target_source"], "?")
        mark = "" if tv in seen[pid] else " (unseen)"
        draw.text((4, y), f"id {pid}: train views {','.join(sorted(seen[pid]))}", fill=(0, 0, 0))
        draw.text((4, y + 12), f"source {views.get(e['source'], '?')} -> target {tv}{mark}", fill=(0, 0, 0))
    atomic_save(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return len(pick)


def identity_grid(
    gain_cfg: rg.GainConfig,
    path: Path,
    *,
    ids: int = 6,
    per_side: int = 4,
    scale: int = 2,
    source: MarketSource | None = None,
) -> int:
    """Per synthetic train identity: its real train images (restricted views) | generated images.

    ``source``: the run's parsed ``gain_cfg.data`` (``None`` parses it here)."""
    from PIL import Image, ImageDraw

    from posereid.augment.manifest import read_manifest

    views = _views_by_name(gain_cfg.data)
    real: dict[int, list[Path]] = defaultdict(list)
    market = (source if source is not None else MarketSource(gain_cfg.data)).market
    for r in market.train:
        if r.has_identity:
            real[r.pid].append(r.path)
    syn = rg.synthetic_dir(gain_cfg, 1.0)
    fake: dict[int, list[dict]] = defaultdict(list)
    for e in read_manifest(syn):
        if (syn / "bounding_box_train" / e["name"]).is_file():
            fake[int(e["source_pid"])].append(e)
    pids = [p for p in sorted(real) if fake.get(p)][:ids]
    h, w = gain_cfg.height * scale, gain_cfg.width * scale
    gap, label = 12, 14
    width = 2 * per_side * (w + 2) + gap + 8
    sheet = Image.new("RGB", (width, label + len(pids) * (h + label + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 1), "real train images", fill=(0, 0, 0))
    draw.text((4 + per_side * (w + 2) + gap, 1), "generated (new poses)", fill=(0, 0, 0))
    for i, pid in enumerate(pids):
        y = label + i * (h + label + 4)
        for j, p in enumerate(real[pid][:per_side]):
            x = 4 + j * (w + 2)
            sheet.paste(load_image(p).resize((w, h), Image.Resampling.NEAREST), (x, y + label))
            draw.text((x, y), views.get(p.name, "?")[:5], fill=(0, 0, 0))
        for j, e in enumerate(fake[pid][:per_side]):
            x = 4 + per_side * (w + 2) + gap + j * (w + 2)
            im = load_image(syn / "bounding_box_train" / e["name"])
            sheet.paste(im.resize((w, h), Image.Resampling.NEAREST), (x, y + label))
            draw.text((x, y), views.get(e["target_source"], "?")[:5], fill=(0, 0, 120))
    atomic_save(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return len(pids)


# --------------------------------------------------------------------------------------------------
# The run, stage by stage
# --------------------------------------------------------------------------------------------------
def comparison_lines(summary: list[dict[str, Any]], oracle_ran: bool) -> list[str]:
    """The demo's answer: every augmented arm against its baseline (paired, with its interval when there
    are several seeds), then the share of the oracle's gain strong + synthetic recovers."""
    lines = []
    for e in summary:
        extra = rg.arm_extra(e["arm"])
        if not extra:
            continue
        base = "strong" if e["arm"].startswith("strong") else "plain"
        if not any(x["arm"] == base for x in summary):
            continue
        ivs = {
            name: rg.Interval(*(e[f"d_{metric}_{base}{x}"] for x in ("", "_lo", "_hi", "_n")))
            for metric, name in (("mAP", "ΔmAP"), ("rank1", "Δrank-1"))
        }
        if max(iv.n for iv in ivs.values()) < 2:  # one seed: no interval
            parts = ", ".join(f"{name} {iv.mean:+.1f}" for name, iv in ivs.items())
            lines.append(f"  {e['arm']} vs {base}: {parts} (1 seed: no interval, not settled; same steps)")
        else:
            parts = ", ".join(f"{name} {rg.format_interval(iv)}" for name, iv in ivs.items())
            lines.append(f"  {e['arm']} vs {base}: {parts} ({e['seeds']} seeds, 95 % intervals; same steps)")
    shares = [e for e in summary if "share_mAP" in e]
    if not oracle_ran:
        lines.append(
            f"  recovered share of the oracle's gain: skipped for time (the {rg.ORACLE_ARM} arm did not fit this "
            "budget; a longer --budget-minutes or a GPU runs it)"
        )
    for e in shares:
        sh = e["share_mAP"]
        gains = ", ".join(f"seed {s}: {g:+.1f}" for s, g in sorted(sh.oracle_gain.items()))
        if not sh.per_seed:
            lines.append(
                f"  recovered share of the oracle's gain ({e['arm']}): undefined, the oracle did not beat strong "
                f"(ΔmAP {gains}); runs this short cannot tell"
            )
            continue
        per = ", ".join(f"seed {s}: {v:.2f}" for s, v in sorted(sh.per_seed.items()))
        lines.append(
            f"  recovered share of the oracle's gain ({e['arm']}, mAP): {rg.format_interval(sh.interval, 2, False)}"
            f" — per seed {per} (the oracle over strong: {gains})"
        )
    return lines


@dataclass
class _Run:
    """One demo run in progress: where it writes, its device, budget and plan, and the parsed dataset."""

    options: DemoOptions
    out: Path
    device: str
    budget: Budget
    plan: DemoPlan
    source: MarketSource | None = None  # the run's one parse of the dataset and its annotations
    n_train: int = 0  # train images
    n_ids: int = 0  # train identities

    def config(self) -> rg.GainConfig:
        """The gain protocol's config for what is planned so far."""
        return _gain_config(self.plan, self.out, self.device)

    def save(self) -> None:
        save_plan(self.out, self.plan)

    def finish(self, stage: str, *, worked: bool) -> None:
        """Close ``stage`` on the budget; say so when it ran over its share or slower than its probe (the
        later stages then re-plan for the slowdown)."""
        budget = self.budget
        before = budget.slowdown
        actual = budget.finish(stage, worked=worked)
        self.plan.slowdown = round(budget.slowdown, 3)
        entry = budget.log[stage]
        if not worked:
            return
        share, predicted = float(entry["share_s"]), float(entry["predicted_s"])
        if actual > 1.05 * share > 0 or budget.slowdown > max(1.1, 1.05 * before):
            _say(
                f"  the {stage} stage took {actual:.0f} s ({share:.0f} s share, {predicted:.0f} s predicted "
                f"by the start-up probe): the later stages plan for a machine {budget.slowdown:.1f}x slower "
                f"than its probe, in the {max(0.0, budget.left()):.0f} s left"
            )


def run_pipeline(options: DemoOptions) -> dict[str, Path]:
    """Run the demo (see the module docstring) within ``options.budget_minutes``; return its outputs
    (description → path), which it also prints."""
    run = _start(options)
    _data_stage(run)
    generator, subset = _generator_stage(run)
    _generate_stage(run, generator, subset)
    config, ran = _reid_stage(run)
    return _report_stage(run, config, ran, generator)


def _start(options: DemoOptions) -> _Run:
    """The budget starts; the device, the plan (new or reused) and the CPU threads are settled."""
    from posereid.models.runtime import resolve_device

    budget = Budget(max(1.0, float(options.budget_minutes)) * 60.0, SHARES_TRAIN)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device(options.device))
    plan = load_or_start_plan(options, out, device)
    budget.shares = SHARES_SHIPPED if plan.generator is not None else SHARES_TRAIN
    budget.log = plan.stages
    h, w = plan.hw
    threads = ""
    if device == "cpu" and not options.tiny:
        n = pick_cpu_threads(reid_step_fn(plan.reid_model, plan.hw, plan.reid_batch_size, 8, "cpu"))
        threads = f", {n} CPU thread{'s' if n > 1 else ''}"
    _say(f"posereid demo → {out}  (device {device}{threads}, budget {budget.total_s / 60:.0f} min"
         f"{', tiny' if options.tiny else ''}, images {h}x{w})")  # fmt: skip
    return _Run(options, out, device, budget, plan)


def _data_stage(run: _Run) -> None:
    """[1/5] Render the synthetic dataset (or reuse it) and parse it once for every later stage."""
    s = run.plan.synth
    _say(
        f"\n[1/5] rendering a synthetic Market-1501 dataset: {s['n_train_ids']} train identities, each "
        f"seen in only {s['train_views']} of 4 view directions; {s['n_test_ids']} test identities in all views"
    )
    rendered = stage_data(run.plan, run.out)
    data = run.out / "data"
    run.source = MarketSource(data, rg.find_annotations(data))
    summary = rendered if rendered is not None else run.source.market.summary()
    run.n_train = int(summary["train"]["images"])
    run.n_ids = int(summary["train"]["identities"])
    _say("  " + ", ".join(f"{k}: {summary[k]['images']} images / {summary[k]['identities']} ids"
                          for k in ("train", "query", "gallery")))  # fmt: skip


def _generator_stage(run: _Run) -> tuple[Path, Any]:
    """[2/5] The generator: given, shipped, trained before, or trained now for its share of the budget.
    Returns its checkpoint and the (full) train subset."""
    plan, budget = run.plan, run.budget
    plan_generator(plan, budget.share("generator"), run.device)
    run.save()
    cfg = run.config()
    subset = rg.prepare_fraction(cfg, 1.0, source=run.source)
    train_now = plan.generator is None and not is_checkpoint_dir(rg.generator_dir(cfg, 1.0))
    if plan.generator is not None:
        _say(f"\n[2/5] generator: using the {plan.generator_how} checkpoint {plan.generator}")
    elif not train_now:
        _say(f"\n[2/5] generator: reusing the one trained before ({plan.generator_steps} steps)")
    else:
        timing = plan.timing.get("generator_s_per_step")
        _say(f"\n[2/5] generator: training the '{plan.generator_preset}' preset on the {run.n_train} train "
             f"images for {plan.generator_steps} steps (batch {plan.generator_batch_size}"
             + (f", {timing:.2f} s/step measured, ~{budget.share('generator') / 60:.1f} min budget" if timing else "")
             + ")")  # fmt: skip
    budget.start("generator", plan.predicted_s.get("generator", 0.0) if train_now else 0.0)
    generator = rg.ensure_generator(cfg, 1.0, subset, device=run.device, source=run.source)
    run.finish("generator", worked=train_now)
    _say(f"  generator: {generator}")
    return generator, subset


def _generate_stage(run: _Run, generator: Path, subset: Any) -> None:
    """[3/5] Synthetic images of every train image in new, view-balanced poses (or reuse them)."""
    plan, budget = run.plan, run.budget
    plan_generation(
        plan, generator, run.n_train, budget.share("generate"), run.device, slowdown=budget.slowdown
    )
    run.save()
    cfg = run.config()
    generate_now = not (rg.synthetic_dir(cfg, 1.0) / "gain_done.json").is_file()
    _say(
        f"\n[3/5] generating{'' if generate_now else ' (already done)'} {plan.per_image} image(s) per train "
        f"image in new poses (view-balanced pose sampling, {plan.sampler} {plan.steps} steps, guidance "
        f"{plan.guidance[0]:g})"
    )
    budget.start("generate", plan.predicted_s.get("generate", 0.0) if generate_now else 0.0)
    n_syn = rg.ensure_synthetic(cfg, 1.0, subset, generator, device=run.device)
    run.finish("generate", worked=generate_now)
    _say(f"  {n_syn} synthetic images under their source identities: {rg.synthetic_dir(cfg, 1.0)}")


def _reid_stage(run: _Run) -> tuple[rg.GainConfig, list[tuple[str, int]]]:
    """[4/5] The planned re-ID cells that fit (same steps for every run); returns the config and the
    cells that ran (or had run before)."""
    plan, budget = run.plan, run.budget
    plan_reid(plan, run.n_ids, budget.share("reid"), run.device, run.options.arms, slowdown=budget.slowdown)
    run.save()
    cfg = run.config()
    h, w = plan.hw
    _say(
        f"\n[4/5] re-ID: {cfg.reid_model} at {h}x{w}, {cfg.reid_steps} steps for EVERY run; arms "
        f"{', '.join(cfg.arms)}; seed(s) {', '.join(map(str, cfg.seeds))}"
    )
    rows = rg.read_results(cfg.out / "results.csv")
    done = {(r["arm"], int(r["seed"])) for r in rows if float(r["fraction"]) == 1.0}
    budget.start("reid", plan.predicted_s.get("reid", 0.0))

    def cell(arm: str, seed: int) -> object:
        return rg.run_gain(dataclasses.replace(cfg, arms=(arm,), seeds=(seed,)), source=run.source)

    ran, skipped = run_reid_stage(plan, budget, cell, done)
    run.finish("reid", worked=bool(set(ran) - done))
    plan.skipped = list(skipped)
    run.save()
    for arm, seed in skipped:
        _say(
            f"  skipped for time: {arm}, seed {seed} (it no longer fit the {max(0.0, budget.left()):.0f} s left)"
        )
    return cfg, ran


def _report_stage(
    run: _Run, cfg: rg.GainConfig, ran: list[tuple[str, int]], generator: Path
) -> dict[str, Path]:
    """[5/5] The table, the comparison and the recovered share, the reports and pictures; returns and
    prints where every output is."""
    _say("\n[5/5] results (mAP / rank-1 in %, on query/gallery identities never seen in training)\n")
    cells = set(ran)
    rows = [
        r
        for r in rg.read_results(cfg.out / "results.csv")
        if float(r["fraction"]) == 1.0 and (r["arm"], int(r["seed"])) in cells
    ]
    cfg = dataclasses.replace(
        cfg,
        arms=tuple(a for a in cfg.arms if any(c[0] == a for c in cells)),
        seeds=tuple(s for s in cfg.seeds if any(c[1] == s for c in cells)),
    )
    rg.write_reports(cfg, rows)  # exactly the cells reported here
    summary_rows = rg.summarize(rows)
    _say(rg.markdown_table(summary_rows))
    for line in comparison_lines(summary_rows, oracle_ran=rg.ORACLE_ARM in cfg.arms):
        _say(line)
    pictures = _write_pictures(run, cfg)
    run.plan.seconds = round(run.budget.elapsed(), 1)
    run.save()
    outputs = {
        "results table": cfg.out / "results.md",
        "results CSV": cfg.out / "results.csv",
        "plot (mAP/rank-1 per arm, Δ vs strong)": cfg.out / "results.png",
        **pictures,
        "synthetic dataset": cfg.data,
        "generator": generator,
        "synthetic images + manifest": rg.synthetic_dir(cfg, 1.0),
        "plan and timings": run.out / PLAN_FILE,
    }
    if rg.ORACLE_ARM in cfg.arms:
        outputs["oracle images (hidden views, rendered)"] = rg.oracle_dir(cfg, 1.0)
    _say(f"\ndone in {run.plan.seconds / 60:.1f} min. Outputs:")
    for what, path in outputs.items():
        _say(f"  {what:<58} {path}")
    return outputs


def _write_pictures(run: _Run, cfg: rg.GainConfig) -> dict[str, Path]:
    """The sample grid, the identity grid and a grid of synthetic people; description → path."""
    from posereid.experiments.synthetic.dataset import render_grid

    samples, identities, people = run.out / "samples.png", run.out / "identities.png", run.out / "people.png"
    n_rows = sample_grid(cfg, samples)
    n_ids = identity_grid(cfg, identities, source=run.source)
    h, w = run.plan.hw
    render_grid(people, n_ids=4, n_cols=8, seed=run.plan.key.seed, height=h, width=w)
    return {
        f"sample grid ({n_rows} rows: source | target skeleton | generated)": samples,
        f"identity grid ({n_ids} ids: real train views | generated)": identities,
        "synthetic people (views x cameras)": people,
    }


__all__ = [
    "ASSET_DIR",
    "Budget",
    "DemoOptions",
    "DemoPlan",
    "PlanKey",
    "comparison_lines",
    "identity_grid",
    "load_or_start_plan",
    "new_plan",
    "pick_cpu_threads",
    "plan_generation",
    "plan_generator",
    "plan_reid",
    "run_pipeline",
    "run_reid_stage",
    "sample_grid",
    "save_plan",
    "stage_budget",
    "write_asset_meta",
]
